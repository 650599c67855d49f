/**
 * The pages of guest RAM this process's devices write, for live migration. KVM's dirty log
 * (KVM_GET_DIRTY_LOG) records only the vCPUs' writes; a device writing guest memory from a vCPU thread, a
 * data-plane thread or the main thread (a virtio used element and the buffer it answers, an e1000 receive
 * buffer and descriptor write-back) is invisible to it. Every thread's GuestMemory marks its writes here while
 * the log is on, in one shared bitmap (one bit per 4 KiB page), which the migration takes and clears each round.
 *
 * A write is marked after it is made, so a page taken (and copied) between the write and its mark is copied again
 * next round: never less than what was written, sometimes a page twice.
 */

export const PAGE_SIZE = 4096;

/** Where a GuestMemory's writes are marked: this log, or a vhost-user back-end's (src/vhost-user/dirty-log.ts). */
export interface PageWriteLog {
  readonly on: boolean;
  /** Marks [offset, offset + len) of the GuestMemory's buffer (offsets, not guest addresses). */
  mark(offset: number, len: number): void;
}
/** Word 0: 1 while the log is on. Then the bitmap, 32 pages a word. */
const ON = 0;
const FIRST = 1;

export class DevicePageLog implements PageWriteLog {
  private readonly words: Int32Array;
  readonly pages: number;

  /** A log for `ramBytes` of guest RAM (a multiple of the page size), off. */
  static create(ramBytes: number): SharedArrayBuffer {
    const pages = Math.ceil(ramBytes / PAGE_SIZE);
    return new SharedArrayBuffer(4 * (FIRST + Math.ceil(pages / 32)));
  }

  constructor(buffer: SharedArrayBuffer) {
    this.words = new Int32Array(buffer);
    this.pages = (this.words.length - FIRST) * 32;
  }

  get on(): boolean {
    return Atomics.load(this.words, ON) !== 0;
  }

  /** Starts logging with an empty bitmap. */
  start(): void {
    this.words.fill(0, FIRST);
    Atomics.store(this.words, ON, 1);
  }

  stop(): void {
    Atomics.store(this.words, ON, 0);
  }

  /**
   * Marks the pages of [offset, offset + len) of guest RAM (offsets, as GuestMemory's buffer). The caller checked
   * the range against RAM; a range past the bitmap is clipped.
   */
  mark(offset: number, len: number): void {
    if (len <= 0 || Atomics.load(this.words, ON) === 0) return;
    const first = Math.floor(offset / PAGE_SIZE);
    const last = Math.min(Math.floor((offset + len - 1) / PAGE_SIZE), this.pages - 1);
    for (let p = first; p <= last; p++) {
      const w = FIRST + (p >>> 5);
      const bit = 1 << (p & 31);
      // Most marks hit a page already marked: a plain read first saves the atomic read-modify-write.
      if (((this.words[w] as number) & bit) === 0) Atomics.or(this.words, w, bit);
    }
  }

  /**
   * Takes the marked pages and clears them: calls `page(n)` for each marked page n in ascending order. A mark
   * made while this runs is either taken now or left for the next call.
   */
  take(page: (n: number) => void): void {
    const words = this.words;
    for (let w = FIRST; w < words.length; w++) {
      if (words[w] === 0) continue;
      let bits = Atomics.exchange(words, w, 0);
      const base = (w - FIRST) << 5;
      while (bits !== 0) {
        const low = bits & -bits;
        page(base + (31 - Math.clz32(low)));
        bits ^= low;
      }
    }
  }
}

/** Calls `page(n)` for each bit n set in a KVM dirty bitmap (64-bit little-endian words, bit n = page n). */
export function forEachSetBit(bitmap: BigUint64Array, page: (n: number) => void): void {
  for (let w = 0; w < bitmap.length; w++) {
    const v = bitmap[w] as bigint;
    if (v === 0n) continue;
    const lo = Number(v & 0xffffffffn);
    const hi = Number(v >> 32n);
    for (const [half, base] of [
      [lo, w * 64],
      [hi, w * 64 + 32],
    ] as const) {
      let bits = half | 0;
      while (bits !== 0) {
        const low = bits & -bits;
        page(base + (31 - Math.clz32(low)));
        bits ^= low;
      }
    }
  }
}
