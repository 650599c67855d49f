/**
 * The front-end's memory as a vhost-user back-end sees it (vhost-user.rst, "Memory access" and
 * VHOST_USER_SET_MEM_TABLE): up to eight regions, each a file descriptor mapped from its mmap offset, with a
 * guest address (what descriptors and, through the regions, rings name) and a user address (what
 * SET_VRING_ADDR names).
 *
 * The virtqueue layer reads guest memory through one GuestMemory, a linear buffer at a base address. The regions
 * are therefore mapped at their guest-address offsets inside one reserved range (native mmapReserve, then
 * mmapFixed per region); the gaps between them stay private zero pages of this process, never the
 * front-end's memory. RegionGuestMemory refuses every copy that does not lie inside one region, so a buffer in a
 * gap fails like a buffer outside guest RAM; ring areas are checked against the regions before a ring starts.
 * A TypedArray holds at most 2^32 bytes here, so the regions must lie within 4 GiB of guest-physical space.
 */
import { fstatSync } from "node:fs";
import { GuestMemory } from "../memory/guest-memory.ts";
import { native } from "../native.ts";
import { MAX_MEM_REGIONS, type RawMemRegion, VhostUserRequestError } from "./protocol.ts";

export interface MemRegion {
  gpa: number;
  size: number;
  userAddr: number;
  mmapOffset: number;
}

const PAGE = 4096;
/** The reservation is aligned so that 2 MiB-aligned guest addresses land on 2 MiB-aligned host addresses. */
const SPAN_ALIGN = 2 << 20;
/** The largest buffer a TypedArray can cover in Node 20. */
export const MAX_SPAN = 2 ** 32;

function safe(v: bigint, what: string, i: number): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new VhostUserRequestError(`memory region ${i}: ${what} 0x${v.toString(16)} is above 2^53`);
  }
  return Number(v);
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

/**
 * Checks a memory table: 1 to `max` regions (8 in SET_MEM_TABLE; more through ADD_MEM_REG), each non-empty, page-aligned, its ranges representable; no two regions
 * overlapping in guest or in user addresses (each address must map to one region); all within MAX_SPAN.
 */
export function checkRegions(raw: readonly RawMemRegion[], max = MAX_MEM_REGIONS): MemRegion[] {
  if (raw.length < 1 || raw.length > max) {
    throw new VhostUserRequestError(`memory table has ${raw.length} regions, not 1 to ${max}`);
  }
  const regions = raw.map((r, i): MemRegion => {
    const m = {
      gpa: safe(r.guestAddr, "guest address", i),
      size: safe(r.size, "size", i),
      userAddr: safe(r.userAddr, "user address", i),
      mmapOffset: safe(r.mmapOffset, "mmap offset", i),
    };
    if (m.size === 0) throw new VhostUserRequestError(`memory region ${i} is empty`);
    for (const [what, v] of [
      ["guest end", m.gpa + m.size],
      ["user end", m.userAddr + m.size],
      ["file end", m.mmapOffset + m.size],
    ] as const) {
      if (!Number.isSafeInteger(v))
        throw new VhostUserRequestError(`memory region ${i}: ${what} is above 2^53`);
    }
    if (m.gpa % PAGE !== 0 || m.size % PAGE !== 0 || m.mmapOffset % PAGE !== 0) {
      throw new VhostUserRequestError(
        `memory region ${i}: guest address ${hex(m.gpa)}, size ${hex(m.size)} and mmap offset ${hex(m.mmapOffset)} must be multiples of ${PAGE}`,
      );
    }
    return m;
  });
  for (let i = 0; i < regions.length; i++) {
    for (let j = i + 1; j < regions.length; j++) {
      const a = regions[i] as MemRegion;
      const b = regions[j] as MemRegion;
      if (a.gpa < b.gpa + b.size && b.gpa < a.gpa + a.size) {
        throw new VhostUserRequestError(`memory regions ${i} and ${j} overlap in guest addresses`);
      }
      if (a.userAddr < b.userAddr + b.size && b.userAddr < a.userAddr + a.size) {
        throw new VhostUserRequestError(`memory regions ${i} and ${j} overlap in user addresses`);
      }
    }
  }
  const base = Math.min(...regions.map((r) => r.gpa));
  const end = Math.max(...regions.map((r) => r.gpa + r.size));
  const spanBase = base - (base % SPAN_ALIGN);
  if (end - spanBase > MAX_SPAN) {
    throw new VhostUserRequestError(
      `memory regions span ${hex(spanBase)}-${hex(end)}, more than the ${MAX_SPAN / 2 ** 30} GiB this back-end maps`,
    );
  }
  return regions;
}

/** GuestMemory whose copies must each lie inside one region (the span's gaps are not the front-end's memory). */
export class RegionGuestMemory extends GuestMemory {
  readonly regions: readonly MemRegion[];
  private readonly dv: DataView;

  constructor(buffer: SharedArrayBuffer, base: number, regions: readonly MemRegion[]) {
    super(buffer, base);
    this.regions = regions;
    this.dv = new DataView(buffer);
  }

  /** The region the last regionOf found: buffers come in runs from the same region, so it is tried first. */
  private lastRegion = 0;

  /** The region holding all of [gpa, gpa + len), or undefined. */
  regionOf(gpa: number, len: number): MemRegion | undefined {
    const regions = this.regions;
    const last = regions[this.lastRegion] as MemRegion;
    const o = gpa - last.gpa;
    if (o >= 0 && len >= 0 && o <= last.size - len) return last;
    for (let i = 0; i < regions.length; i++) {
      const r = regions[i] as MemRegion;
      const off = gpa - r.gpa;
      if (off >= 0 && len >= 0 && off <= r.size - len) {
        this.lastRegion = i;
        return r;
      }
    }
    return undefined;
  }

  /** GuestMemory.offsetOf, and -1 also for a range that is not inside one region (a gap is not guest RAM). */
  override offsetOf(gpa: number, len: number): number {
    const off = super.offsetOf(gpa, len);
    return off >= 0 && this.regionOf(gpa, len) !== undefined ? off : -1;
  }

  override check(gpa: number, len: number): number {
    const off = super.check(gpa, len);
    if (this.regionOf(gpa, len) === undefined) {
      const err = new VhostUserRequestError(`guest range ${hex(gpa)}+${len} is not inside one memory region`);
      throw err;
    }
    return off;
  }

  override readU8(gpa: number): number {
    return this.dv.getUint8(this.check(gpa, 1));
  }
  override readU16(gpa: number): number {
    return this.dv.getUint16(this.check(gpa, 2), true);
  }
  override readU32(gpa: number): number {
    return this.dv.getUint32(this.check(gpa, 4), true);
  }
  override readU64(gpa: number): bigint {
    return this.dv.getBigUint64(this.check(gpa, 8), true);
  }
  override writeU8(gpa: number, value: number): void {
    const off = this.check(gpa, 1);
    this.dv.setUint8(off, value);
    this.pageLog?.mark(off, 1);
  }
  override writeU16(gpa: number, value: number): void {
    const off = this.check(gpa, 2);
    this.dv.setUint16(off, value, true);
    this.pageLog?.mark(off, 2);
  }
  override writeU32(gpa: number, value: number): void {
    const off = this.check(gpa, 4);
    this.dv.setUint32(off, value, true);
    this.pageLog?.mark(off, 4);
  }
  override writeU64(gpa: number, value: bigint): void {
    const off = this.check(gpa, 8);
    this.dv.setBigUint64(off, value, true);
    this.pageLog?.mark(off, 8);
  }
}

/** A mapped memory table. */
export class VhostUserMemory {
  readonly guest: RegionGuestMemory;
  readonly regions: readonly MemRegion[];

  private constructor(guest: RegionGuestMemory) {
    this.guest = guest;
    this.regions = guest.regions;
  }

  /**
   * Maps checked regions from their fds (one per region, in order). The fds are not closed here (the mapping
   * keeps the file). A file shorter than its region is refused: touching past its end would raise SIGBUS.
   */
  static map(regions: readonly MemRegion[], fds: readonly number[]): VhostUserMemory {
    if (fds.length !== regions.length) {
      throw new VhostUserRequestError(`${regions.length} memory regions but ${fds.length} fds`);
    }
    regions.forEach((r, i) => {
      let st: ReturnType<typeof fstatSync>;
      try {
        st = fstatSync(fds[i] as number);
      } catch (e) {
        throw new VhostUserRequestError(`memory region ${i}: fstat: ${(e as Error).message}`);
      }
      if (!st.isFile()) throw new VhostUserRequestError(`memory region ${i}: the fd is not a regular file`);
      if (st.size < r.mmapOffset + r.size) {
        throw new VhostUserRequestError(
          `memory region ${i}: the file has ${st.size} bytes, the region needs ${r.mmapOffset + r.size}`,
        );
      }
    });
    const base = Math.min(...regions.map((r) => r.gpa));
    const spanBase = base - (base % SPAN_ALIGN);
    const end = Math.max(...regions.map((r) => r.gpa + r.size));
    const { buffer } = native().mmapReserve(end - spanBase, SPAN_ALIGN);
    regions.forEach((r, i) => {
      try {
        native().mmapFixed(new Uint8Array(buffer, r.gpa - spanBase, r.size), fds[i] as number, r.mmapOffset);
      } catch (e) {
        throw new VhostUserRequestError(`memory region ${i}: ${(e as Error).message}`);
      }
    });
    return new VhostUserMemory(new RegionGuestMemory(buffer, spanBase, regions));
  }

  /**
   * Guest address of the front-end user address range [ua, ua + len), if one region holds all of it ("User
   * addresses map to the vhost memory region containing that user address"); else null.
   */
  userToGuest(ua: bigint, len: number): number | null {
    if (ua > BigInt(Number.MAX_SAFE_INTEGER)) return null;
    const u = Number(ua);
    for (const r of this.regions) {
      const off = u - r.userAddr;
      if (off >= 0 && off <= r.size - len) return r.gpa + off;
    }
    return null;
  }
}
