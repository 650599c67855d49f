/**
 * Block storage behind a disk device (virtio-blk today): byte-addressed, synchronous. Synchronous because a
 * device serves a queue on whatever thread the notification arrived on (a vCPU thread, an ioeventfd worker, a
 * vhost-user process) and completes each request before the next; blocking that thread is the point.
 */
import { VireoError } from "../errors.ts";

export interface BlockBackend {
  /** Size in bytes. */
  readonly size: number;
  readonly readOnly: boolean;
  /** Whether discard() can really deallocate (else it is accepted and does nothing). */
  readonly canDiscard: boolean;
  /** Reads dst.length bytes at `offset` into dst. Throws BlockIoError (range, I/O failure). */
  read(offset: number, dst: Uint8Array): void;
  /** Writes src at `offset`. Throws BlockIoError (range, read-only, I/O failure). */
  write(offset: number, src: Uint8Array): void;
  /** Makes every completed write stable (fdatasync for a file). */
  flush(): void;
  /** The range's contents become undefined and its storage may be released. */
  discard(offset: number, length: number): void;
  /** The range reads as zeroes afterwards; with `mayUnmap` its storage may be released too. */
  writeZeroes(offset: number, length: number, mayUnmap: boolean): void;
  close(): void;
}

/** A block request the backend could not carry out. */
export class BlockIoError extends VireoError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("VIREO_BLOCK_IO", message, options);
  }
}

/** Throws BlockIoError unless [offset, offset + length) lies inside a backend of `size` bytes. */
export function checkRange(what: string, offset: number, length: number, size: number): void {
  if (
    !Number.isSafeInteger(offset) ||
    !Number.isSafeInteger(length) ||
    offset < 0 ||
    length < 0 ||
    offset > size - length
  ) {
    throw new BlockIoError(`${what}: range ${offset}+${length} is outside the disk (${size} bytes)`);
  }
}
