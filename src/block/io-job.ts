/**
 * One job of a BlockIoPool's shared slots (io-pool-layout.ts), carried out on the calling thread: a worker
 * (io-worker.ts), or the pool's owner for a request it runs itself (a lone request: no hand-off). Data moves with
 * preadv/pwritev between the image and views of the job's guest memory buffer; the owner checked every range
 * against guest memory before it wrote the job, and the view is checked against the buffer here again.
 */
import { fdatasyncSync, readSync, readvSync, writeSync, writevSync } from "node:fs";
import {
  EFAULT,
  EIO,
  OP_FLUSH,
  OP_READ,
  OP_WRITE,
  S_MEM,
  S_NSEGS,
  S_OFFSET_HI,
  S_OFFSET_LO,
  S_OP,
  S_SEGS,
  SLOT_WORDS,
  SLOTS_AT,
} from "./io-pool-layout.ts";

function errnoOf(e: unknown): number {
  const n =
    typeof e === "object" && e !== null && "errno" in e ? Number((e as { errno: unknown }).errno) : NaN;
  return Number.isInteger(n) && n !== 0 ? Math.abs(n) : EIO;
}

function isEinval(e: unknown): boolean {
  return typeof e === "object" && e !== null && (e as { code?: unknown }).code === "EINVAL";
}

/** Moves all of `views` at `position`: one preadv/pwritev, then single calls for what a short transfer left. */
function transfer(fd: number, write: boolean, views: Uint8Array[], position: number, total: number): number {
  let done =
    views.length === 1
      ? write
        ? writeSync(fd, views[0] as Uint8Array, 0, total, position)
        : readSync(fd, views[0] as Uint8Array, 0, total, position)
      : write
        ? writevSync(fd, views, position)
        : readvSync(fd, views, position);
  if (done === total) return done;
  let skip = done;
  for (const v of views) {
    if (skip >= v.length) {
      skip -= v.length;
      continue;
    }
    let at = skip;
    skip = 0;
    while (at < v.length) {
      const n = write
        ? writeSync(fd, v, at, v.length - at, position + done)
        : readSync(fd, v, at, v.length - at, position + done);
      if (n <= 0) {
        // A read past the end of a file that shrank underneath: the rest reads as zeroes (as FileBlockBackend).
        if (write) throw Object.assign(new Error("no progress"), { errno: EIO });
        v.fill(0, at);
        for (const rest of views.slice(views.indexOf(v) + 1)) rest.fill(0);
        return total;
      }
      at += n;
      done += n;
    }
  }
  return done;
}

/** A job's guest memory: the whole buffer as bytes (offsets in the job are into it). */
export type JobMemory = (id: number) => Uint8Array | undefined;

/**
 * Runs the job in `slot`: the bytes moved (0 for a flush), or -errno. `fd` is the image (O_DIRECT or not),
 * `bufferedFd` a buffered descriptor for what O_DIRECT refuses (EINVAL), or -1. `u32` views the same words as
 * `ctl`.
 */
export function runJob(
  ctl: Int32Array,
  u32: Uint32Array,
  slot: number,
  memory: JobMemory,
  fd: number,
  bufferedFd: number,
): number {
  try {
    return run(ctl, u32, slot, memory, fd, bufferedFd);
  } catch (e) {
    return -errnoOf(e);
  }
}

function run(
  ctl: Int32Array,
  u32: Uint32Array,
  slot: number,
  memory: JobMemory,
  fd: number,
  bufferedFd: number,
): number {
  const s = SLOTS_AT + slot * SLOT_WORDS;
  const op = ctl[s + S_OP] as number;
  if (op === OP_FLUSH) {
    fdatasyncSync(fd);
    if (bufferedFd >= 0) fdatasyncSync(bufferedFd);
    return 0;
  }
  const write = op === OP_WRITE;
  if (!write && op !== OP_READ) return -EIO;
  const bytes = memory(ctl[s + S_MEM] as number);
  if (bytes === undefined) return -EFAULT;
  const n = ctl[s + S_NSEGS] as number;
  const position = (u32[s + S_OFFSET_LO] as number) + (u32[s + S_OFFSET_HI] as number) * 2 ** 32;
  if (n === 1) {
    // One piece (the common 4 KiB request): a call on the whole buffer at its offset, no view made.
    const off = u32[s + S_SEGS] as number;
    const len = u32[s + S_SEGS + 1] as number;
    if (off + len > bytes.length) return -EFAULT;
    try {
      return single(fd, write, bytes, off, len, position);
    } catch (e) {
      // O_DIRECT refuses buffers or offsets not aligned to the file system's block: the buffered descriptor.
      if (isEinval(e) && bufferedFd >= 0) return single(bufferedFd, write, bytes, off, len, position);
      throw e;
    }
  }
  const views: Uint8Array[] = [];
  let total = 0;
  for (let i = 0; i < n; i++) {
    const off = u32[s + S_SEGS + 2 * i] as number;
    const len = u32[s + S_SEGS + 2 * i + 1] as number;
    if (off + len > bytes.length) return -EFAULT;
    views.push(bytes.subarray(off, off + len));
    total += len;
  }
  try {
    return transfer(fd, write, views, position, total);
  } catch (e) {
    if (isEinval(e) && bufferedFd >= 0) return transfer(bufferedFd, write, views, position, total);
    throw e;
  }
}

/** One piece: pread/pwrite until all of it moved (a read past the end of the file reads zeroes). */
function single(
  fd: number,
  write: boolean,
  bytes: Uint8Array,
  off: number,
  len: number,
  position: number,
): number {
  let done = 0;
  while (done < len) {
    const k = write
      ? writeSync(fd, bytes, off + done, len - done, position + done)
      : readSync(fd, bytes, off + done, len - done, position + done);
    if (k <= 0) {
      if (write) throw Object.assign(new Error("no progress"), { errno: EIO });
      bytes.fill(0, off + done, off + len);
      return len;
    }
    done += k;
  }
  return done;
}
