import { GuestMemoryError } from "../errors.ts";
import type { PageWriteLog } from "./device-page-log.ts";

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

/**
 * Copies up to this many bytes go byte by byte: below it a loop costs less than the view TypedArray.set needs
 * (measured with Node 20: a 12-byte loop about 25 ns, a view and set about 50-70 ns).
 */
const SHORT_COPY = 16;

/** GuestMemoryError's own message assumes RAM starts at 0; a region may not, so state its real bounds. */
function rangeError(gpa: number, len: number, base: number, end: number): GuestMemoryError {
  const err = new GuestMemoryError(gpa, len, end);
  err.message = `guest-physical range 0x${gpa.toString(16)}+${len} is outside guest RAM region 0x${base.toString(16)}-0x${end.toString(16)}`;
  return err;
}

/**
 * Converts a 64-bit guest value (a descriptor address, a register) to a JS number for use as a guest-physical
 * address. Values a double cannot hold exactly are refused rather than rounded: a rounded address would silently
 * point at different guest memory.
 */
export function gpaFromBigInt(v: bigint): number {
  if (v < 0n || v > MAX_SAFE) {
    // The error's gpa field is a number; the nearest double is the best it can hold, so the message carries the
    // exact value.
    const err = new GuestMemoryError(Number(v), 0, 0);
    const hex = v < 0n ? `-0x${(-v).toString(16)}` : `0x${v.toString(16)}`;
    err.message = `guest value ${hex} is not a usable guest-physical address (above 2^53-1 or negative)`;
    throw err;
  }
  return Number(v);
}

/**
 * The offset of [gpa, gpa + len) in a region of `size` bytes at `base`, or -1 (GuestMemory.check's rule: whole
 * numbers, `off <= size - len` so that nothing wraps or loses precision past 2^53).
 */
function rangeOffset(base: number, size: number, gpa: number, len: number): number {
  const off = gpa - base;
  if (!(off >= 0 && len >= 0 && off <= size - len) || !Number.isInteger(off) || !Number.isInteger(len))
    return -1;
  return off;
}

/**
 * One contiguous region of guest RAM, covering guest-physical addresses [base, base + size).
 *
 * Device models read guest-controlled addresses (descriptor rings, buffers) through this class, so every access
 * is bounds-checked and a bad address raises GuestMemoryError instead of touching host memory outside the
 * buffer. The checks are written as single comparisons on the region offset so that the hot accessors allocate
 * nothing and stay monomorphic: the DataView and Uint8Array are created once.
 *
 * Stores of out-of-range values follow typed-array semantics (truncated modulo 2^n), like a guest store would.
 */
export class GuestMemory {
  readonly base: number;
  readonly size: number;
  /** The whole region as bytes; index 0 is GPA `base`. */
  readonly bytes: Uint8Array;
  /** The same bytes as a DataView (multi-byte stores in one step); writers mark their own pages, as with bytes. */
  readonly dataView: DataView;
  /**
   * Where this thread's device writes are logged for live migration (device-page-log.ts), or null. Every write
   * method below marks its pages while the log is on; code that writes through `bytes` or `slice` marks its own
   * (the virtio queue layer marks each answered chain's writable buffers).
   */
  pageLog: PageWriteLog | null = null;

  constructor(buffer: SharedArrayBuffer | ArrayBuffer, base = 0) {
    const size = buffer.byteLength;
    if (!Number.isSafeInteger(base) || base < 0 || !Number.isSafeInteger(base + size)) {
      throw rangeError(base, size, 0, Number.MAX_SAFE_INTEGER);
    }
    this.base = base;
    this.size = size;
    this.bytes = new Uint8Array(buffer);
    this.dataView = new DataView(buffer);
  }

  /** One past the last guest-physical address of the region. */
  get end(): number {
    return this.base + this.size;
  }

  /**
   * Validates [gpa, gpa + len) and returns the offset of gpa inside the buffer.
   *
   * The upper bound is tested as `off <= size - len` rather than `off + len <= size` so that a huge len or gpa
   * cannot wrap or lose precision past 2^53. A zero-length range is valid anywhere in [base, end].
   */
  check(gpa: number, len: number): number {
    const off = rangeOffset(this.base, this.size, gpa, len);
    if (off < 0) this.fail(gpa, len);
    return off;
  }

  /** The offset `check` would return, or -1 where it would throw: for callers that skip a bad range. */
  offsetOf(gpa: number, len: number): number {
    return rangeOffset(this.base, this.size, gpa, len);
  }

  /** Single-width accesses inline this instead of `check` to avoid a second call frame on the hot path. */
  private at(gpa: number, width: number): number {
    const off = gpa - this.base;
    if (!(off >= 0 && off <= this.size - width) || !Number.isInteger(off)) this.fail(gpa, width);
    return off;
  }

  private fail(gpa: number, len: number): never {
    throw rangeError(gpa, len, this.base, this.end);
  }

  gpaFromBigInt(v: bigint): number {
    return gpaFromBigInt(v);
  }

  readU8(gpa: number): number {
    return this.bytes[this.at(gpa, 1)] as number;
  }

  readU16(gpa: number): number {
    return this.dataView.getUint16(this.at(gpa, 2), true);
  }

  readU32(gpa: number): number {
    return this.dataView.getUint32(this.at(gpa, 4), true);
  }

  readU64(gpa: number): bigint {
    return this.dataView.getBigUint64(this.at(gpa, 8), true);
  }

  writeU8(gpa: number, value: number): void {
    const off = this.at(gpa, 1);
    this.bytes[off] = value;
    this.pageLog?.mark(off, 1);
  }

  writeU16(gpa: number, value: number): void {
    const off = this.at(gpa, 2);
    this.dataView.setUint16(off, value, true);
    this.pageLog?.mark(off, 2);
  }

  writeU32(gpa: number, value: number): void {
    const off = this.at(gpa, 4);
    this.dataView.setUint32(off, value, true);
    this.pageLog?.mark(off, 4);
  }

  writeU64(gpa: number, value: bigint): void {
    const off = this.at(gpa, 8);
    this.dataView.setBigUint64(off, value, true);
    this.pageLog?.mark(off, 8);
  }

  /** Copies guest memory into `dst` (dst.length bytes). */
  read(gpa: number, dst: Uint8Array): void {
    const len = dst.length;
    const off = this.check(gpa, len);
    const bytes = this.bytes;
    if (len <= 16 && dst.buffer !== bytes.buffer) {
      // Descriptor-sized copies: a loop is cheaper than allocating a subarray for TypedArray.set. Views of the
      // same buffer take the TypedArray.set path, which is defined to copy correctly when ranges overlap.
      for (let i = 0; i < len; i++) dst[i] = bytes[off + i] as number;
    } else {
      dst.set(bytes.subarray(off, off + len));
    }
  }

  /** Copies `src` into guest memory. Overlapping views of the same buffer are handled (TypedArray.set copies). */
  write(gpa: number, src: Uint8Array): void {
    const len = src.length;
    const off = this.check(gpa, len);
    const bytes = this.bytes;
    if (len <= 16 && src.buffer !== bytes.buffer) {
      for (let i = 0; i < len; i++) bytes[off + i] = src[i] as number;
    } else {
      bytes.set(src, off);
    }
    this.pageLog?.mark(off, len);
  }

  /**
   * Copies `len` guest bytes at `gpa` into dst[at, at + len) (which must lie inside dst), without a view of dst:
   * for paths that copy many small pieces and must not allocate per piece.
   */
  readTo(gpa: number, dst: Uint8Array, at: number, len: number): void {
    const off = this.check(gpa, len);
    const bytes = this.bytes;
    if (!(at >= 0 && at <= dst.length - len)) throw new RangeError(`readTo: ${at}+${len} is outside dst`);
    // Views of the same buffer take TypedArray.set, which copies overlapping ranges correctly.
    if (len <= SHORT_COPY && dst.buffer !== bytes.buffer) {
      for (let i = 0; i < len; i++) dst[at + i] = bytes[off + i] as number;
    } else {
      dst.set(bytes.subarray(off, off + len), at);
    }
  }

  /** Copies src[from, from + len) (which must lie inside src) to guest memory at `gpa`. */
  writeFrom(gpa: number, src: Uint8Array, from: number, len: number): void {
    const off = this.check(gpa, len);
    const bytes = this.bytes;
    if (!(from >= 0 && from <= src.length - len))
      throw new RangeError(`writeFrom: ${from}+${len} is outside src`);
    if (len <= SHORT_COPY && src.buffer !== bytes.buffer) {
      for (let i = 0; i < len; i++) bytes[off + i] = src[from + i] as number;
    } else if (from === 0 && len === src.length) {
      bytes.set(src, off);
    } else {
      bytes.set(src.subarray(from, from + len), off);
    }
    this.pageLog?.mark(off, len);
  }

  fill(gpa: number, len: number, byte: number): void {
    const off = this.check(gpa, len);
    this.bytes.fill(byte, off, off + len);
    this.pageLog?.mark(off, len);
  }

  /** A live view of [gpa, gpa + len): writes through it reach the guest, and guest writes show in it. */
  slice(gpa: number, len: number): Uint8Array {
    const off = this.check(gpa, len);
    return this.bytes.subarray(off, off + len);
  }
}
