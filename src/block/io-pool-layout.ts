/**
 * The shared control block of a BlockIoPool (io-pool.ts) and its worker threads (io-worker.ts): Int32 words in
 * one SharedArrayBuffer. Nothing of guest memory is in it, only offsets into the guest memory buffers the workers
 * were given once (per memory table) through their message ports.
 *
 *   header (HEADER_WORDS): stop flag, submission head/tail, completion tail, "completion signalled" flag,
 *                          memory generation (bumped when a memory buffer is added or dropped), workers ready,
 *                          workers idle
 *   submission ring (RING words): slot numbers; the main thread writes at tail, workers take at head (CAS)
 *   completion ring (RING words): slot number + 1 (0 = not written yet); workers reserve at the completion tail
 *                          (Atomics.add), the main thread reads from its own head and clears each entry
 *   SLOTS slots of SLOT_WORDS: op, memory id, segment count, result (bytes moved, or -errno), file offset (lo,
 *                          hi), then per segment its offset in the memory buffer and its length (u32 each)
 */
import type { MessagePort } from "node:worker_threads";

export const C_STOP = 0;
export const C_SQ_HEAD = 1;
export const C_SQ_TAIL = 2;
export const C_CQ_TAIL = 3;
export const C_SIGNALLED = 4;
export const C_MEM_GEN = 5;
/** Workers that have started and wait for jobs. */
export const C_READY = 6;
/** Workers asleep (or about to sleep) in Atomics.wait on the submission tail: the main thread wakes only these. */
export const C_IDLE = 7;
export const HEADER_WORDS = 16;

/** Jobs in flight at most (a power of 2: the rings index with & (RING - 1)). */
export const SLOTS = 256;
export const RING = SLOTS;
/** Segments a job carries at most (a request with more is served on the calling thread). */
export const MAX_SEGMENTS = 128;

export const S_OP = 0;
export const S_MEM = 1;
export const S_NSEGS = 2;
export const S_RESULT = 3;
export const S_OFFSET_LO = 4;
export const S_OFFSET_HI = 5;
export const S_SEGS = 8;
export const SLOT_WORDS = S_SEGS + 2 * MAX_SEGMENTS;

export const SQ_AT = HEADER_WORDS;
export const CQ_AT = SQ_AT + RING;
export const SLOTS_AT = CQ_AT + RING;
export const CONTROL_WORDS = SLOTS_AT + SLOTS * SLOT_WORDS;

export const OP_READ = 1;
export const OP_WRITE = 2;
export const OP_FLUSH = 3;

/** What a worker is started with. */
export interface IoWorkerData {
  control: SharedArrayBuffer;
  /** The image's main descriptor, and a buffered one for accesses O_DIRECT refuses (or -1). */
  fd: number;
  bufferedFd: number;
  /** An eventfd the worker adds 1 to when it posts a completion the main thread has not been told about. */
  completionFd: number;
  /** The port memory buffers arrive on (io-pool.ts MemoryMessage). */
  port: MessagePort;
}

/** Sent to each worker's port: a guest memory buffer to use under an id, or an id to forget. */
export type MemoryMessage =
  | { kind: "memory"; id: number; buffer: SharedArrayBuffer }
  | { kind: "drop"; id: number };

/** errno values a worker reports without a better one. */
export const EIO = 5;
export const EFAULT = 14;
