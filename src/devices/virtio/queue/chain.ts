/**
 * Byte access to a popped chain's buffers, so device models never compute guest addresses themselves. Every
 * access goes through GuestMemory (bounds-checked); segments were checked against guest RAM when popped.
 */
import type { GuestMemory } from "../../../memory/guest-memory.ts";
import { type BufferSegment, type DescriptorChain, VirtqueueError } from "./types.ts";

/** A cursor over a list of segments, treated as one contiguous byte range. */
class SegmentCursor {
  readonly length: number;
  private seg = 0;
  private segPos = 0;
  private pos = 0;

  constructor(
    protected readonly mem: GuestMemory,
    private readonly segments: readonly BufferSegment[],
  ) {
    let n = 0;
    for (const s of segments) n += s.len;
    this.length = n;
  }

  /** Bytes consumed so far. */
  get position(): number {
    return this.pos;
  }

  get remaining(): number {
    return this.length - this.pos;
  }

  /** Advances up to n bytes; returns how many. */
  skip(n: number): number {
    return this.walk(Math.max(0, Math.min(n, this.remaining)), null);
  }

  /** Moves `n` bytes (n <= remaining), calling `io` for each contiguous piece. */
  protected walk(n: number, io: ((gpa: number, from: number, len: number) => void) | null): number {
    let done = 0;
    while (done < n) {
      const s = this.segments[this.seg] as BufferSegment;
      const take = Math.min(s.len - this.segPos, n - done);
      if (io) io(s.addr + this.segPos, done, take);
      done += take;
      this.segPos += take;
      if (this.segPos === s.len) {
        this.seg++;
        this.segPos = 0;
      }
    }
    this.pos += done;
    return done;
  }
}

/** Reads a chain's device-readable part in order. */
export class ChainReader extends SegmentCursor {
  constructor(mem: GuestMemory, chain: DescriptorChain) {
    super(mem, chain.readable);
  }

  /** Copies up to dst.length bytes into dst; returns how many. */
  read(dst: Uint8Array): number {
    const n = Math.min(dst.length, this.remaining);
    return this.walk(n, (gpa, from, len) => this.mem.read(gpa, dst.subarray(from, from + len)));
  }

  /** The next `n` bytes, or VirtqueueError if the driver's buffer is shorter (nothing is consumed then). */
  readExact(n: number): Uint8Array {
    if (n > this.remaining) {
      throw new VirtqueueError(
        `device-readable part has ${this.remaining} bytes left at offset ${this.position}, ${n} are needed`,
      );
    }
    const out = new Uint8Array(n);
    this.read(out);
    return out;
  }
}

/** Writes a chain's device-writable part in order; `position` is what to pass to pushUsed as `written`. */
export class ChainWriter extends SegmentCursor {
  constructor(mem: GuestMemory, chain: DescriptorChain) {
    super(mem, chain.writable);
  }

  /** Writes as much of src as fits; returns how many bytes. */
  write(src: Uint8Array): number {
    const n = Math.min(src.length, this.remaining);
    return this.walk(n, (gpa, from, len) => this.mem.write(gpa, src.subarray(from, from + len)));
  }

  /** Writes all of src, or throws VirtqueueError if the driver's buffer is too short (nothing written then). */
  writeExact(src: Uint8Array): void {
    if (src.length > this.remaining) {
      throw new VirtqueueError(
        `device-writable part has ${this.remaining} bytes left at offset ${this.position}, ${src.length} are needed`,
      );
    }
    this.write(src);
  }
}

/**
 * Copies the chain's device-readable bytes into `dst` (or a new array of readableLength bytes); returns the
 * bytes copied (a view of dst: min(dst.length, readableLength) bytes).
 */
export function readChain(mem: GuestMemory, chain: DescriptorChain, dst?: Uint8Array): Uint8Array {
  const out = dst ?? new Uint8Array(chain.readableLength);
  return out.subarray(0, copyFromChain(mem, chain, 0, out, 0, out.length));
}

/**
 * Copies up to `len` device-readable bytes, starting `skip` bytes into the chain, to dst[at, ...); returns how
 * many (fewer when the chain ends first). No allocation for pieces up to 16 bytes, one view per longer piece.
 */
export function copyFromChain(
  mem: GuestMemory,
  chain: DescriptorChain,
  skip: number,
  dst: Uint8Array,
  at: number,
  len: number,
): number {
  const segs = chain.readable;
  let done = 0;
  for (let i = 0; i < segs.length && done < len; i++) {
    const s = segs[i] as BufferSegment;
    if (skip >= s.len) {
      skip -= s.len;
      continue;
    }
    const take = Math.min(s.len - skip, len - done);
    mem.readTo(s.addr + skip, dst, at + done, take);
    done += take;
    skip = 0;
  }
  return done;
}

/**
 * Copies src[from, from + len) into the device-writable part, starting `offset` bytes in; returns how many bytes
 * (fewer when the chain ends first). The caller checks that it fits.
 */
export function copyToChain(
  mem: GuestMemory,
  chain: DescriptorChain,
  offset: number,
  src: Uint8Array,
  from: number,
  len: number,
): number {
  const segs = chain.writable;
  let done = 0;
  for (let i = 0; i < segs.length && done < len; i++) {
    const s = segs[i] as BufferSegment;
    if (offset >= s.len) {
      offset -= s.len;
      continue;
    }
    const take = Math.min(s.len - offset, len - done);
    mem.writeFrom(s.addr + offset, src, from + done, take);
    done += take;
    offset = 0;
  }
  return done;
}

/**
 * Writes `src` into the chain's device-writable part starting `offset` bytes in; returns src.length. Throws
 * VirtqueueError, writing nothing, if it does not fit.
 */
export function writeChain(mem: GuestMemory, chain: DescriptorChain, src: Uint8Array, offset = 0): number {
  if (!Number.isInteger(offset) || offset < 0 || offset + src.length > chain.writableLength) {
    throw new VirtqueueError(
      `${src.length} bytes at offset ${offset} do not fit the device-writable part (${chain.writableLength} bytes)`,
    );
  }
  copyToChain(mem, chain, offset, src, 0, src.length);
  return src.length;
}
