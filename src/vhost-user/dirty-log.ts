/**
 * The dirty log a vhost-user front-end shares with its back-ends during a live migration (vhost-user.rst,
 * "Migration", PROTOCOL_F_LOG_SHMFD): one bit per 4 KiB page of guest-physical address space from address 0,
 * "page = addr / VHOST_LOG_PAGE; log[page / 8] |= 1 << page % 8", set with atomic operations because the log
 * is shared. The back-end marks the pages it writes while VHOST_F_LOG_ALL is negotiated, and the used ring of a
 * ring whose SET_VRING_ADDR carried VHOST_VRING_F_LOG at its log address; the front-end takes and clears the
 * marks each round of the migration.
 *
 * The same class serves both sides: a back-end over the log it mapped from SET_LOG_BASE's fd, the front-end
 * over the memfd it made. As a GuestMemory's page log (device-page-log.ts PageWriteLog) its marks take buffer
 * offsets, which `base` turns into guest addresses.
 */
import { fstatSync } from "node:fs";
import type { PageWriteLog } from "../memory/device-page-log.ts";
import { native } from "../native.ts";
import { VhostUserRequestError } from "./protocol.ts";

/** "Dirty pages are of size VHOST_LOG_PAGE 0x1000". */
export const VHOST_LOG_PAGE = 4096;
/** VHOST_F_LOG_ALL: the feature bit that turns logging on (SET_FEATURES). */
export const VHOST_F_LOG_ALL = 26;
/** VHOST_VRING_F_LOG: SET_VRING_ADDR's flag for logging the ring's used-ring writes at its log address. */
export const VHOST_VRING_F_LOG = 1;
/** The largest log a back-end maps: 64 MiB of bits covers 2 TiB of guest-physical space. */
export const MAX_LOG_BYTES = 64 << 20;

/** Bytes of log covering guest addresses [0, end). */
export function logBytesFor(end: number): number {
  return Math.ceil(Math.ceil(end / VHOST_LOG_PAGE) / 8);
}

export class VhostUserDirtyLog implements PageWriteLog {
  private readonly bits: Uint8Array;
  /** Marks are made only while this is true (VHOST_F_LOG_ALL negotiated). */
  enabled = false;
  /** The guest address of offset 0 of the GuestMemory whose writes are marked through `mark`. */
  base = 0;

  constructor(bits: Uint8Array) {
    this.bits = bits;
  }

  /**
   * Maps SET_LOG_BASE's log: `size` bytes at `offset` in `fd` ("offset from start of supplied file descriptor
   * where logging starts"). Refused: an empty or oversized log, or one past the file's end (touching it would
   * raise SIGBUS). The fd is not closed here; the mapping keeps the file.
   */
  static map(fd: number, size: bigint, offset: bigint): VhostUserDirtyLog {
    if (size < 1n || size > BigInt(MAX_LOG_BYTES))
      throw new VhostUserRequestError(`SET_LOG_BASE: log size ${size} is not 1 to ${MAX_LOG_BYTES} bytes`);
    if (offset > BigInt(Number.MAX_SAFE_INTEGER))
      throw new VhostUserRequestError(`SET_LOG_BASE: log offset 0x${offset.toString(16)} is above 2^53`);
    const len = Number(size);
    const off = Number(offset);
    let fileSize: number;
    try {
      const st = fstatSync(fd);
      if (!st.isFile()) throw new Error("the fd is not a regular file");
      fileSize = st.size;
    } catch (e) {
      throw new VhostUserRequestError(`SET_LOG_BASE: ${(e as Error).message}`);
    }
    if (fileSize < off + len)
      throw new VhostUserRequestError(
        `SET_LOG_BASE: the file has ${fileSize} bytes, the log needs ${off + len}`,
      );
    // mmap takes a page-aligned offset: map from the page holding the log's start.
    const skip = off % VHOST_LOG_PAGE;
    const { buffer } = native().mmap(fd, skip + len, off - skip);
    return new VhostUserDirtyLog(new Uint8Array(buffer, skip, len));
  }

  /** The number of pages the log covers. */
  get pages(): number {
    return this.bits.length * 8;
  }

  get on(): boolean {
    return this.enabled;
  }

  /** PageWriteLog: [offset, offset + len) of the GuestMemory whose guest address `base` is offset 0. */
  mark(offset: number, len: number): void {
    if (this.enabled) this.markGuest(this.base + offset, len);
  }

  /** Marks the pages of guest addresses [gpa, gpa + len); pages past the log are not marked (it cannot say). */
  markGuest(gpa: number, len: number): void {
    if (len <= 0) return;
    const first = Math.floor(gpa / VHOST_LOG_PAGE);
    const last = Math.min(Math.floor((gpa + len - 1) / VHOST_LOG_PAGE), this.pages - 1);
    const bits = this.bits;
    for (let p = first; p <= last; p++) {
      const byte = p >>> 3;
      const bit = 1 << (p & 7);
      if (((bits[byte] as number) & bit) === 0) Atomics.or(bits, byte, bit);
    }
  }

  /** Takes the marked pages and clears them: `page(n)` for each, ascending. A mark made meanwhile is kept or taken. */
  take(page: (n: number) => void): void {
    const bits = this.bits;
    for (let i = 0; i < bits.length; i++) {
      if (bits[i] === 0) continue;
      let b = Atomics.exchange(bits, i, 0);
      while (b !== 0) {
        const low = b & -b;
        page(i * 8 + (31 - Math.clz32(low)));
        b ^= low;
      }
    }
  }
}
