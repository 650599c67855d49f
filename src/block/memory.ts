/** A BlockBackend in memory, for tests and scratch disks. */
import { type BlockBackend, BlockIoError, checkRange } from "./backend.ts";

export interface MemoryBlockBackendOptions {
  readOnly?: boolean;
  /** Initial contents (copied); default zeroes. */
  contents?: Uint8Array;
}

export class MemoryBlockBackend implements BlockBackend {
  readonly size: number;
  readonly readOnly: boolean;
  readonly canDiscard = true;
  readonly data: Uint8Array;
  flushes = 0;

  constructor(size: number, opts: MemoryBlockBackendOptions = {}) {
    if (!Number.isSafeInteger(size) || size < 0) throw new BlockIoError(`bad disk size ${size}`);
    this.size = size;
    this.readOnly = opts.readOnly ?? false;
    this.data = new Uint8Array(size);
    if (opts.contents) this.data.set(opts.contents.subarray(0, size));
  }

  read(offset: number, dst: Uint8Array): void {
    checkRange("read", offset, dst.length, this.size);
    dst.set(this.data.subarray(offset, offset + dst.length));
  }

  write(offset: number, src: Uint8Array): void {
    this.writable("write");
    checkRange("write", offset, src.length, this.size);
    this.data.set(src, offset);
  }

  flush(): void {
    this.flushes++;
  }

  discard(offset: number, length: number): void {
    this.writable("discard");
    checkRange("discard", offset, length, this.size);
    this.data.fill(0, offset, offset + length);
  }

  writeZeroes(offset: number, length: number, _mayUnmap: boolean): void {
    this.writable("write zeroes");
    checkRange("write zeroes", offset, length, this.size);
    this.data.fill(0, offset, offset + length);
  }

  close(): void {}

  private writable(what: string): void {
    if (this.readOnly) throw new BlockIoError(`${what}: the disk is read-only`);
  }
}
