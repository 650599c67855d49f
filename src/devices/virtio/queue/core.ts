/**
 * Pieces shared by the split and packed implementations: checked access to the ring areas, the chain builder
 * that enforces the buffer rules common to both layouts, in-flight bookkeeping, metrics and error conversion.
 */
import type { GuestMemory } from "../../../memory/guest-memory.ts";
import { type Counter, type MetricsSink, NO_COUNTER } from "../../../metrics/registry.ts";
import {
  type BufferSegment,
  type DescriptorChain,
  MAX_QUEUE_SIZE,
  QUEUE_STATE_WORDS,
  type QueueConfig,
  type QueueFeatures,
  type QueueKind,
  type SingleBuffers,
  type Virtqueue,
  VirtqueueError,
  type VirtqueueOptions,
} from "./types.ts";

export const TWO_POW_32 = 2 ** 32;
/** A 64-bit address whose high word exceeds this is above 2^53 - 1 and cannot be held exactly in a number. */
export const MAX_SAFE_HIGH_WORD = 0x1fffff;

const littleEndianHost = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

export function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

/**
 * Guest memory as the rings see it. Ring areas and indirect tables are range-checked once, as a whole, against
 * guest RAM; fields inside them are then read through buffer offsets. The 16-bit fields that publish or consume
 * a ring update (split avail/used idx, packed descriptor flags) go through Atomics when guest RAM is a
 * SharedArrayBuffer: a sequentially consistent load or store is the barrier the specification asks for around
 * them ("Supplying Buffers to The Device" in 2.7; 2.8.21.1 Placing Available Buffers Into The Descriptor Ring).
 */
export class QueueMemory {
  readonly mem: GuestMemory;
  readonly view: DataView;
  /** Guest memory as 16-bit words (a SharedArrayBuffer at an even base), else null. */
  readonly u16: Uint16Array | null;
  /** Guest memory as 32-bit words (a SharedArrayBuffer at a 4-aligned base), else null. */
  readonly u32: Uint32Array | null;

  constructor(mem: GuestMemory) {
    this.mem = mem;
    const bytes = mem.bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const shared = typeof SharedArrayBuffer !== "undefined" && bytes.buffer instanceof SharedArrayBuffer;
    // Offsets of 2-aligned guest addresses are even only if the region base is; otherwise fall back to DataView.
    this.u16 =
      shared && littleEndianHost && bytes.byteOffset % 2 === 0 && mem.base % 2 === 0
        ? new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >>> 1)
        : null;
    this.u32 =
      this.u16 !== null && bytes.byteOffset % 4 === 0 && mem.base % 4 === 0
        ? new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >>> 2)
        : null;
  }

  /**
   * Buffer offset of [gpa, gpa + len) if it lies inside guest RAM, else -1 (GuestMemory.offsetOf: for a
   * vhost-user front-end's memory, inside one of its regions). Never throws.
   */
  offsetOf(gpa: number, len: number): number {
    return this.mem.offsetOf(gpa, len);
  }

  u8(off: number): number {
    return this.view.getUint8(off);
  }
  u16le(off: number): number {
    return this.view.getUint16(off, true);
  }
  u32le(off: number): number {
    return this.view.getUint32(off, true);
  }
  /** A 64-bit little-endian address as a number, or -1 if it is above 2^53 - 1. */
  addr64(off: number): number {
    const lo = this.view.getUint32(off, true);
    const hi = this.view.getUint32(off + 4, true);
    if (hi > MAX_SAFE_HIGH_WORD) return -1;
    return hi * TWO_POW_32 + lo;
  }
  setU16(off: number, v: number): void {
    this.view.setUint16(off, v, true);
  }
  setU32(off: number, v: number): void {
    this.view.setUint32(off, v, true);
  }

  /** A 16-bit load that later loads cannot move before (acquire). `off` must be even. */
  load16Acquire(off: number): number {
    const u16 = this.u16;
    return u16 ? Atomics.load(u16, off >>> 1) : this.view.getUint16(off, true);
  }

  /** A 16-bit store that earlier stores cannot move after, and later loads cannot move before. `off` even. */
  store16Release(off: number, v: number): void {
    const u16 = this.u16;
    if (u16) Atomics.store(u16, off >>> 1, v);
    else this.view.setUint16(off, v, true);
  }

  /**
   * store16Release, unless the field already holds `v` (it was stored, and made visible, before). For fields the
   * device writes and the driver polls (suppression flags, avail_event) on a line beside the used idx: a polled
   * device sets them at every pass, and a store of the same value still takes the line from the driver's CPU.
   */
  store16Changed(off: number, v: number): void {
    const u16 = this.u16;
    if (u16) {
      if (u16[off >>> 1] !== v) Atomics.store(u16, off >>> 1, v);
    } else if (this.view.getUint16(off, true) !== v) {
      this.view.setUint16(off, v, true);
    }
  }
}

/** A DescriptorChain a queue fills again and again (see ChainBuilder.begin): one per head id, reused. */
export class MutableChain implements DescriptorChain {
  id = 0;
  readonly readable: BufferSegment[] = [];
  readonly writable: BufferSegment[] = [];
  readableLength = 0;
  writableLength = 0;
  descriptorCount = 0;
  descriptorsRead = 0;

  /**
   * Makes this the chain of one direct descriptor at `id` (checked by the caller with bufferError, as
   * ChainBuilder.add checks an element): what ChainBuilder would build for it, without its bookkeeping. A zero-length element carries no
   * segment.
   */
  setSingle(id: number, addr: number, len: number, writable: boolean): this {
    const fill = writable ? this.writable : this.readable;
    const empty = writable ? this.readable : this.writable;
    if (empty.length > 0) empty.length = 0;
    if (len === 0) {
      if (fill.length > 0) fill.length = 0;
    } else {
      if (fill.length > 1) fill.length = 1;
      setSegment(fill, 0, addr, len);
    }
    this.id = id;
    this.readableLength = writable ? 0 : len;
    this.writableLength = writable ? len : 0;
    this.descriptorCount = 1;
    this.descriptorsRead = 1;
    return this;
  }
}

const NO_SEGMENTS: readonly BufferSegment[] = Object.freeze([]);

/**
 * What a queue records, in place of a chain object, for a chain popSingles took: one per head id, never handed
 * out, so no caller can pass it to pushUsed or unpop.
 */
class SingleMark implements DescriptorChain {
  readonly readable = NO_SEGMENTS;
  readonly writable = NO_SEGMENTS;
  readonly readableLength = 0;
  readonly writableLength = 0;
  readonly descriptorCount = 1;
  readonly descriptorsRead = 1;
  constructor(readonly id: number) {}
}

interface MutableSegment {
  addr: number;
  len: number;
}

/**
 * Accumulates the elements of one chain and enforces the rules both layouts share. `add` returns null or the
 * reason the element is refused; the caller adds where it was.
 *
 * The chain is written into a MutableChain given to `begin`, reusing its segment objects and arrays, so a queue
 * that hands out one chain object per head id allocates nothing per chain once its chains have their shapes
 * (a chain in flight keeps its head id, so its object is not refilled before it is used).
 */
export class ChainBuilder {
  private target: MutableChain = new MutableChain();
  private nReadable = 0;
  private nWritable = 0;
  readableLength = 0;
  writableLength = 0;
  /** Buffer elements (descriptors that are not indirect-table pointers), including zero-length ones. */
  elements = 0;
  /** Descriptors pointing at an indirect table (at most one per chain). */
  tables = 0;
  private sawWritable = false;

  constructor(
    private readonly qm: QueueMemory,
    private readonly maxElements: number,
  ) {}

  /** Starts a chain written into `target` (whatever it held before is overwritten). */
  begin(target: MutableChain): void {
    this.target = target;
    this.nReadable = 0;
    this.nWritable = 0;
    this.readableLength = 0;
    this.writableLength = 0;
    this.elements = 0;
    this.tables = 0;
    this.sawWritable = false;
  }

  add(addr: number, len: number, writable: boolean): string | null {
    // 2.7.5.3.1 / 2.8.17: a chain (counting indirect entries) is no longer than the Queue Size.
    if (++this.elements > this.maxElements) {
      return `chain has more than ${this.maxElements} descriptors (queue size); a loop or an overlong chain`;
    }
    // 2.7.4.2 Driver Requirements: Message Framing / 2.8.17: device-writable elements come after the readable.
    if (writable) this.sawWritable = true;
    else if (this.sawWritable) return "device-readable descriptor follows a device-writable one";
    const bad = bufferError(this.qm, addr, len);
    if (bad !== null) return bad;
    if (len === 0) return null;
    // 2.7.5.2 Driver Requirements: The Virtqueue Descriptor Table: no chain longer than 2^32 bytes in total.
    if (this.readableLength + this.writableLength + len > TWO_POW_32)
      return "chain is longer than 2^32 bytes";
    if (writable) {
      setSegment(this.target.writable, this.nWritable++, addr, len);
      this.writableLength += len;
    } else {
      setSegment(this.target.readable, this.nReadable++, addr, len);
      this.readableLength += len;
    }
    return null;
  }

  finish(id: number, descriptorCount: number): DescriptorChain {
    const c = this.target;
    // Segments past this chain's count belong to an earlier, longer chain of the same object.
    if (c.readable.length > this.nReadable) c.readable.length = this.nReadable;
    if (c.writable.length > this.nWritable) c.writable.length = this.nWritable;
    c.id = id;
    c.readableLength = this.readableLength;
    c.writableLength = this.writableLength;
    c.descriptorCount = descriptorCount;
    c.descriptorsRead = this.elements + this.tables;
    return c;
  }
}

/**
 * Why one buffer element [addr, addr + len) cannot be used, or null: an address above 2^53 - 1 (addr64 gives -1),
 * or a range outside guest RAM. The specification does not forbid zero-length elements; they carry no bytes, so
 * their address, which nothing will access, is not checked further.
 */
export function bufferError(qm: QueueMemory, addr: number, len: number): string | null {
  if (addr < 0) return "buffer address is above 2^53-1";
  if (len === 0 || qm.offsetOf(addr, len) >= 0) return null;
  const mem = qm.mem;
  return `buffer ${hex(addr)}+${len} is outside guest RAM (${hex(mem.base)}-${hex(mem.end)})`;
}

function setSegment(list: BufferSegment[], i: number, addr: number, len: number): void {
  const seg = list[i] as MutableSegment | undefined;
  if (seg === undefined) {
    list.push({ addr, len });
  } else {
    seg.addr = addr;
    seg.len = len;
  }
}

function counter(metrics: MetricsSink | undefined, name: string, what: string): Counter {
  return metrics ? metrics.counter(`virtq.${name}.${what}`) : NO_COUNTER;
}

export interface AreaSpec {
  what: string;
  addr: number;
  align: number;
  len: number;
}

/** Queue Size and area checks shared by both layouts; throws VirtqueueError naming the offending value. */
export function checkConfig(
  name: string,
  kind: QueueKind,
  mem: GuestMemory,
  config: QueueConfig,
  areas: AreaSpec[],
): void {
  const { size } = config;
  if (!Number.isInteger(size) || size < 1 || size > MAX_QUEUE_SIZE) {
    throw new VirtqueueError(`virtq ${name}: queue size ${size} is not in 1..${MAX_QUEUE_SIZE}`);
  }
  // 2.7 Split Virtqueues: "Queue Size value is always a power of 2". Packed rings need not be (2.8.10.1).
  if (kind === "split" && (size & (size - 1)) !== 0) {
    throw new VirtqueueError(`virtq ${name}: split queue size ${size} is not a power of 2`);
  }
  for (const a of areas) {
    if (!Number.isSafeInteger(a.addr) || a.addr < 0) {
      throw new VirtqueueError(`virtq ${name}: ${a.what} address ${a.addr} is not a guest-physical address`);
    }
    // 2.7.1 / 2.8.11 Driver Requirements: Virtqueues: each part is aligned as the alignment table says.
    if (a.addr % a.align !== 0) {
      throw new VirtqueueError(`virtq ${name}: ${a.what} at ${hex(a.addr)} is not ${a.align}-byte aligned`);
    }
    const off = a.addr - mem.base;
    if (!(off >= 0 && off <= mem.size - a.len)) {
      throw new VirtqueueError(
        `virtq ${name}: ${a.what} ${hex(a.addr)}+${a.len} is outside guest RAM (${hex(mem.base)}-${hex(mem.end)})`,
      );
    }
  }
}

/**
 * Stores a zero into the first `span` bytes of the first device-writable buffer of popped chains, one store per
 * cache line and the last byte, where that buffer is at least `span` long and the chain has no readable part: a
 * device about to write a batch of buffers (a receive queue) claims their lines, which the driver's CPU last
 * held, together rather than one chain at a time. The driver has given the device these buffers and reads only
 * the length a used element reports (2.7.8, 2.8.7), so bytes written and never reported are not seen; the
 * addresses come from chains pop() checked.
 */
export function claimBuffers(
  mem: GuestMemory,
  chains: readonly DescriptorChain[],
  n: number,
  span: number,
): void {
  const bytes = mem.bytes;
  const base = mem.base;
  for (let i = 0; i < n; i++) {
    const c = chains[i] as DescriptorChain;
    const w = c.writable[0];
    if (w === undefined || w.len < span || c.readableLength > 0) continue;
    claimSpan(bytes, w.addr - base, span);
  }
}

/** Stores a zero into bytes[off, off + span): one per cache line, and the last byte (claimBuffers). */
function claimSpan(bytes: Uint8Array, off: number, span: number): void {
  const last = off + span - 1;
  for (let at = off; at < last; at += 64) bytes[at] = 0;
  bytes[last] = 0;
}

/** claimBuffers for device-writable buffers in their flat form (Virtqueue.popSingles). */
export function claimSingles(mem: GuestMemory, s: SingleBuffers, n: number, span: number): void {
  const bytes = mem.bytes;
  for (let i = 0; i < n; i++) {
    if ((s.lens[i] as number) >= span) claimSpan(bytes, s.offs[i] as number, span);
  }
}

/**
 * Reads the first `span` bytes of the first device-readable buffer of popped chains, one load per cache line and
 * the last byte (DrainOptions.readAhead): for a device about to read a batch of buffers the driver's CPU wrote
 * (a transmit queue), so that their transfers overlap instead of stalling each chain in turn. The addresses come
 * from chains pop() checked, so nothing outside guest memory is read. Two passes: the offsets first, then a loop
 * of loads alone, small enough that the CPU keeps many of the misses in flight.
 */
export class ReadAhead {
  private first: Float64Array;
  private last: Float64Array;
  constructor(max: number) {
    this.first = new Float64Array(max);
    this.last = new Float64Array(max);
  }

  /** The sum of the bytes read (returned so that the loads cannot be dropped). */
  touch(mem: GuestMemory, chains: readonly DescriptorChain[], n: number, span: number): number {
    this.reserve(n);
    const first = this.first;
    const last = this.last;
    const base = mem.base;
    let m = 0;
    for (let i = 0; i < n; i++) {
      const seg = (chains[i] as DescriptorChain).readable[0];
      if (seg === undefined) continue;
      first[m] = seg.addr - base;
      last[m++] = seg.addr - base + Math.min(seg.len, span) - 1;
    }
    return this.load(mem.bytes, m);
  }

  /** touch for chains in their flat form (Virtqueue.popSingles); the sum of the bytes read. */
  touchSingles(mem: GuestMemory, s: SingleBuffers, n: number, span: number): number {
    this.reserve(n);
    const first = this.first;
    const last = this.last;
    for (let i = 0; i < n; i++) {
      const off = s.offs[i] as number;
      first[i] = off;
      last[i] = off + Math.min(s.lens[i] as number, span) - 1;
    }
    return this.load(mem.bytes, n);
  }

  private reserve(n: number): void {
    if (this.first.length < n) {
      this.first = new Float64Array(n);
      this.last = new Float64Array(n);
    }
  }

  /** The second pass: loads of the first `m` spans [first, last] alone, one per cache line and the last byte. */
  private load(bytes: Uint8Array, m: number): number {
    const first = this.first;
    const last = this.last;
    let sum = 0;
    for (let i = 0; i < m; i++) {
      const end = last[i] as number;
      sum += bytes[end] as number;
      for (let at = first[i] as number; at < end; at += 64) sum += bytes[at] as number;
    }
    return sum;
  }
}

export type NotifyDecision = "none" | "notify" | "suppress";

/** In-flight tracking, pushUsed argument checks, metrics and error conversion; the layouts do the ring work. */
export abstract class QueueBase implements Virtqueue {
  abstract readonly kind: QueueKind;
  readonly size: number;
  readonly name: string;
  protected readonly qm: QueueMemory;
  protected readonly features: QueueFeatures;
  /** Chains handed out by pop() and not yet used, by id: pushUsed accepts only these exact objects. */
  private readonly inFlightChains: Array<DescriptorChain | undefined>;
  private inFlightCount = 0;
  /**
   * What unpop() may give back: the chain popped last, if still in flight, then the one before it, and so on.
   * Each pop gets the next number of `popSeq`, kept per id in `popOrder`, and an unpop takes the number back: the
   * chain unpop() may give back is the one in flight whose number is popSeq - 1. A chain used is no longer in
   * flight, so neither it nor any chain popped before it can be given back (popSeq stays above them). No array
   * moves and nothing is searched per pop or use.
   */
  private popSeq = 0;
  private readonly popOrder: Float64Array;
  /** Per head id, the mark recorded for a chain popSingles took (made on first use). */
  private readonly marks: Array<SingleMark | undefined>;
  /** Per head id popSingles took: its buffer's offset, and its length if device-writable (else 0). */
  private readonly singleOff: Float64Array;
  private readonly singleWritable: Float64Array;
  /** Run-time indices (VirtqueueOptions.state); word 7 says whether they have been initialized. */
  protected readonly st: Int32Array;
  protected readonly cPopped: Counter;
  protected readonly cUsed: Counter;
  protected readonly cNotifySuppressed: Counter;
  protected readonly cErrors: Counter;

  constructor(
    mem: GuestMemory,
    config: QueueConfig,
    features: QueueFeatures,
    opts: VirtqueueOptions | undefined,
  ) {
    this.size = config.size;
    this.name = opts?.name ?? "unnamed";
    this.qm = new QueueMemory(mem);
    this.features = {
      eventIdx: features.eventIdx,
      indirect: features.indirect,
      inOrder: features.inOrder === true,
    };
    this.inFlightChains = new Array(config.size);
    this.popOrder = new Float64Array(config.size);
    this.marks = new Array(config.size).fill(undefined);
    this.singleOff = new Float64Array(config.size);
    this.singleWritable = new Float64Array(config.size);
    const st = opts?.state;
    if (st !== undefined && st.length < QUEUE_STATE_WORDS) {
      throw new VirtqueueError(
        `virtq ${this.name}: state has ${st.length} words, ${QUEUE_STATE_WORDS} are needed`,
        "VIREO_VIRTQUEUE_USAGE",
      );
    }
    this.st = st ?? new Int32Array(QUEUE_STATE_WORDS);
    const m = opts?.metrics;
    this.cPopped = counter(m, this.name, "popped");
    this.cUsed = counter(m, this.name, "used");
    this.cNotifySuppressed = counter(m, this.name, "notify_suppressed");
    this.cErrors = counter(m, this.name, "errors");
  }

  get inFlight(): number {
    return this.inFlightCount;
  }

  pop(): DescriptorChain | null {
    let chain: DescriptorChain | null;
    try {
      chain = this.popChain();
    } catch (e) {
      throw this.asQueueError(e);
    }
    if (chain) {
      this.popped(chain);
      this.cPopped.add();
    }
    return chain;
  }

  popBatch(out: DescriptorChain[], max: number): number {
    let n = 0;
    try {
      n = this.popChains(out, max);
    } catch (e) {
      throw this.asQueueError(e);
    }
    if (n > 0) this.cPopped.add(n);
    return n;
  }

  /**
   * Layouts' popBatch: chains into out[0..n), each recorded with `popped` as it is taken (so that a head made
   * available twice in one batch is refused); a malformed one ends the batch, and throws only if it is the first.
   * This default pops one chain at a time.
   */
  protected popChains(out: DescriptorChain[], max: number): number {
    let n = 0;
    while (n < max) {
      let chain: DescriptorChain | null;
      try {
        chain = this.popChain();
      } catch (e) {
        if (n === 0) throw e;
        break;
      }
      if (chain === null) break;
      this.popped(chain);
      out[n++] = chain;
    }
    return n;
  }

  /** Records a chain handed out (pop, popBatch). */
  protected popped(chain: DescriptorChain): void {
    this.inFlightChains[chain.id] = chain;
    this.inFlightCount++;
    this.popOrder[chain.id] = this.popSeq++;
  }

  popSingles(out: SingleBuffers, max: number, writable: boolean): number {
    let n = 0;
    try {
      n = this.popSinglesRaw(out, Math.min(max, out.capacity), writable);
    } catch (e) {
      throw this.asQueueError(e);
    }
    if (n > 0) this.cPopped.add(n);
    return n;
  }

  /**
   * Layouts' popSingles (see Virtqueue.popSingles): entries recorded with `poppedSingle` as they are taken; a
   * chain of another shape or a malformed one ends the batch, untaken. Default: this layout serves none (0).
   */
  protected popSinglesRaw(_out: SingleBuffers, _max: number, _writable: boolean): number {
    return 0;
  }

  /** Records a chain popSingles took: head `id`, its buffer at `off`, `len` bytes. */
  protected poppedSingle(id: number, off: number, len: number, writable: boolean): void {
    let mark = this.marks[id];
    if (mark === undefined) {
      mark = new SingleMark(id);
      this.marks[id] = mark;
    }
    this.singleOff[id] = off;
    this.singleWritable[id] = writable ? len : 0;
    this.popped(mark);
  }

  pushUsedSingle(id: number, written: number, publish = true): void {
    const mark = this.marks[id];
    if (mark === undefined || this.inFlightChains[id] !== mark) {
      throw this.usageError(`pushUsedSingle: ${id} is not a chain popSingles took and still in flight`);
    }
    const room = this.singleWritable[id] as number;
    if (!(written >= 0 && written <= room && Number.isInteger(written))) {
      throw this.usageError(
        `pushUsedSingle: chain ${id} written=${written}, but its writable part is ${room} bytes`,
      );
    }
    try {
      this.writeUsedSingle(id, written, publish, room === 0);
    } catch (e) {
      throw this.asQueueError(e);
    }
    // Live migration: its writable buffer is marked written, as pushUsed marks a chain's.
    const log = this.qm.mem.pageLog;
    if (room > 0 && log?.on) log.mark(this.singleOff[id] as number, room);
    this.used(mark);
  }

  unpopSingles(out: SingleBuffers, from: number, end: number): void {
    for (let k = end - 1; k >= from; k--) {
      const mark = this.marks[out.ids[k] as number];
      if (mark === undefined) {
        throw this.usageError(`unpopSingles: ${out.ids[k]} is not a chain popSingles took`);
      }
      this.unpop(mark);
    }
  }

  unpop(chain: DescriptorChain): void {
    if (this.inFlightChains[chain.id] !== chain || this.popOrder[chain.id] !== this.popSeq - 1) {
      throw this.usageError(`unpop: chain ${chain.id} is not the last chain popped (or it was used)`);
    }
    try {
      this.rewindChain(chain);
    } catch (e) {
      throw this.asQueueError(e);
    }
    this.popSeq--;
    this.inFlightChains[chain.id] = undefined;
    this.inFlightCount--;
  }

  pushUsed(chain: DescriptorChain, written: number, publish = true): void {
    if (this.inFlightChains[chain.id] !== chain) {
      throw this.usageError(
        `pushUsed: chain ${chain.id} is not in flight on this queue (never popped, or used twice)`,
      );
    }
    if (!Number.isInteger(written) || written < 0 || written > chain.writableLength) {
      throw this.usageError(
        `pushUsed: chain ${chain.id} written=${written}, but its writable part is ${chain.writableLength} bytes`,
      );
    }
    try {
      this.writeUsed(chain, written, publish);
    } catch (e) {
      throw this.asQueueError(e);
    }
    // Live migration (src/memory/device-page-log.ts): devices write a chain's buffers through views of guest
    // memory, which no write method sees; every writable buffer of an answered chain is marked, whatever was
    // written (an IOERR read may have filled part of it).
    const log = this.qm.mem.pageLog;
    if (log?.on) {
      const base = this.qm.mem.base;
      for (const seg of chain.writable) log.mark(seg.addr - base, seg.len);
    }
    this.used(chain);
  }

  /**
   * A chain in flight was used: no longer in flight (and, by popOrder, no chain popped before it can be given
   * back: the ring has moved past them).
   */
  private used(chain: DescriptorChain): void {
    this.inFlightChains[chain.id] = undefined;
    this.inFlightCount--;
    this.cUsed.add();
  }

  publishUsed(): void {
    try {
      this.publishPending();
    } catch (e) {
      throw this.asQueueError(e);
    }
  }

  shouldNotifyDriver(): boolean {
    let decision: NotifyDecision;
    try {
      this.publishPending();
      decision = this.notifyDecision();
    } catch (e) {
      throw this.asQueueError(e);
    }
    if (decision === "suppress") this.cNotifySuppressed.add();
    return decision === "notify";
  }

  setDriverNotifications(enabled: boolean): void {
    try {
      this.writeDriverNotifications(enabled);
    } catch (e) {
      throw this.asQueueError(e);
    }
  }

  /** Whether the state words were initialized by an earlier queue object (see VirtqueueOptions.state). */
  protected get started(): boolean {
    return this.st[7] === 1;
  }

  protected markStarted(): void {
    this.st[7] = 1;
  }

  /** Is `id` popped and not yet used? Layouts refuse a chain that reuses such an id. */
  protected isInFlight(id: number): boolean {
    return this.inFlightChains[id] !== undefined;
  }

  protected malformed(reason: string): VirtqueueError {
    return new VirtqueueError(`virtq ${this.name}: ${reason}`);
  }

  private usageError(reason: string): VirtqueueError {
    this.cErrors.add();
    return new VirtqueueError(`virtq ${this.name}: ${reason}`, "VIREO_VIRTQUEUE_USAGE");
  }

  /** Counts the error and makes sure nothing but a VirtqueueError leaves the queue. */
  private asQueueError(e: unknown): VirtqueueError {
    this.cErrors.add();
    if (e instanceof VirtqueueError) return e;
    const what = e instanceof Error ? e.message : String(e);
    return new VirtqueueError(`virtq ${this.name}: unexpected failure reading the ring: ${what}`, undefined, {
      cause: e,
    });
  }

  /** Validates and returns the next available chain without committing anything on failure. */
  protected abstract popChain(): DescriptorChain | null;
  /** Writes the used element; publishes it to the driver now only with `publish` (else publishPending does). */
  protected abstract writeUsed(chain: DescriptorChain, written: number, publish: boolean): void;
  /**
   * writeUsed for a chain popSingles took (only layouts whose popSinglesRaw takes chains are asked); `readOnly`:
   * the chain has no device-writable part.
   */
  protected writeUsedSingle(id: number, _written: number, _publish: boolean, _readOnly: boolean): void {
    throw this.usageError(`chain ${id}: this layout pops no single chains`);
  }
  /** Publishes used elements written with `publish` false (nothing if there are none). */
  protected abstract publishPending(): void;
  /** Undoes the pop of `chain`, the last chain popped. */
  protected abstract rewindChain(chain: DescriptorChain): void;
  /**
   * The driver's suppression decision for the buffers used since the previous call ("none" if there were
   * none); starts a new period.
   */
  protected abstract notifyDecision(): NotifyDecision;
  protected abstract writeDriverNotifications(enabled: boolean): void;
}

/** Gives chains[from, end) back to the queue, last first (Virtqueue.unpop): the chains of a batch not used. */
export function unpopRange(
  vq: Virtqueue,
  chains: readonly DescriptorChain[],
  from: number,
  end: number,
): void {
  for (let k = end - 1; k >= from; k--) vq.unpop(chains[k] as DescriptorChain);
}

/**
 * Has the 16-bit index moved past `eventIdx` in going from `oldIdx` to `newIdx`? True when the entry at
 * `eventIdx` is one of those written in [oldIdx, newIdx), computed modulo 2^16 so it holds across idx
 * wrap-around. This is the rule of 2.7.7 Used Buffer Notification Suppression and of "Available Buffer
 * Notification Suppression" with VIRTIO_F_EVENT_IDX (the spec's virtq_need_event helper).
 */
export function needEvent(eventIdx: number, newIdx: number, oldIdx: number): boolean {
  return ((newIdx - eventIdx - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
}
