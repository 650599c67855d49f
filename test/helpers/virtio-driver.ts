/**
 * The driver side of a virtqueue, for tests: writes real split or packed rings into a GuestMemory the way the
 * virtio 1.2 specification tells a driver to ("Supplying Buffers to The Device" and "Receiving Used Buffers From
 * The Device" in 2.7 and 2.8), so device models can be tested against guest memory exactly as a guest would lay it out.
 *
 *   const drv = new VirtioTestDriver(mem, { kind: "split", size: 8 });
 *   const q = createVirtqueue("split", mem, drv.config, drv.features);
 *   const id = drv.addChain([header], [512, 1]);          // readable bytes, writable lengths
 *   ... device pops, writes, pushUsed ...
 *   const [done] = drv.usedChains();                       // { id, len, data, written }
 *
 * Notification is left to the caller (`kickNeeded()` says whether the device asked for one). For malformed-ring
 * tests the raw methods (`writeDesc`, `writeTable`, `pushAvail`, `setAvailIdx`, `makeAvailableRaw`) write
 * whatever they are given.
 */

import { Bus } from "../../src/bus/bus.ts";
import { connectBars } from "../../src/devices/pci/bars.ts";
import type { VirtioDeviceModel } from "../../src/devices/virtio/device.ts";
import { type VirtioPciState, VirtioPciTransport } from "../../src/devices/virtio/pci-transport.ts";
import {
  DESC_SIZE,
  needEvent,
  type QueueConfig,
  type QueueFeatures,
  type QueueKind,
  RING_EVENT_FLAGS_DESC,
  RING_EVENT_FLAGS_DISABLE,
  RING_EVENT_FLAGS_ENABLE,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_DESC_F_AVAIL,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_USED,
  VIRTQ_DESC_F_WRITE,
  VIRTQ_USED_F_NO_NOTIFY,
} from "../../src/devices/virtio/queue/index.ts";
import { GuestMemory } from "../../src/memory/guest-memory.ts";
import { MetricsSegment, SLOTS_PER_SEGMENT } from "../../src/metrics/registry.ts";

export interface DriverOptions {
  kind: QueueKind;
  size: number;
  features?: Partial<QueueFeatures>;
  /** First guest-physical address the driver may use (rings first, then buffers). Default: mem.base. */
  base?: number;
  /** One past the last address the driver may use. Default: mem.end. */
  limit?: number;
}

/** Guest-physical addresses of the rings and of the buffer heap that follows them. */
export interface RingLayout {
  descAddr: number;
  driverAddr: number;
  deviceAddr: number;
  heapAddr: number;
  heapEnd: number;
}

/** A descriptor exactly as written into a table or ring. `next` is split-only, `id` packed-only. */
export interface RawDescriptor {
  addr: number | bigint;
  len: number;
  flags: number;
  next?: number;
  id?: number;
}

export interface UsedChain {
  /** Head index (split) or buffer id (packed), as addChain returned it. */
  id: number;
  /** Bytes the device says it wrote. */
  len: number;
  /** Used descriptor flags (packed only; 0 for split). */
  flags: number;
  /** Contents of each writable buffer, whole. */
  data: Uint8Array[];
  /** The first `len` bytes of the writable buffers, concatenated. */
  written: Uint8Array;
}

export interface AddChainOptions {
  /** Put the elements in an indirect table (not checked against the negotiated features). */
  indirect?: boolean;
  /** Make the chain visible to the device now (default). With false, call publish() later. */
  publish?: boolean;
  /** Byte to fill writable buffers with beforehand (default 0). */
  fill?: number;
}

interface Segment {
  addr: number;
  len: number;
}

interface Outstanding {
  /** Split: descriptor table indices; packed: ring slots occupied. */
  descs: number[];
  writable: Segment[];
  allocations: number[];
}

/** First-fit allocator over [start, end) with 16-byte granularity, coalescing on free. */
class Heap {
  private free: Segment[];
  private readonly sizes = new Map<number, number>();

  constructor(start: number, end: number) {
    this.free = [{ addr: start, len: end - start }];
  }

  alloc(len: number): number {
    const n = Math.max(16, Math.ceil(len / 16) * 16);
    const i = this.free.findIndex((f) => f.len >= n);
    const f = this.free[i];
    if (!f) throw new Error(`test driver heap exhausted (${len} bytes)`);
    const addr = f.addr;
    if (f.len === n) this.free.splice(i, 1);
    else this.free[i] = { addr: f.addr + n, len: f.len - n };
    this.sizes.set(addr, n);
    return addr;
  }

  release(addr: number): void {
    const n = this.sizes.get(addr);
    if (n === undefined) throw new Error(`test driver heap: ${addr} not allocated`);
    this.sizes.delete(addr);
    this.free.push({ addr, len: n });
    this.free.sort((a, b) => a.addr - b.addr);
    const merged: Segment[] = [];
    for (const f of this.free) {
      const last = merged[merged.length - 1];
      if (last && last.addr + last.len === f.addr) last.len += f.len;
      else merged.push({ ...f });
    }
    this.free = merged;
  }
}

const align = (x: number, a: number) => Math.ceil(x / a) * a;

export class VirtioTestDriver {
  readonly mem: GuestMemory;
  readonly kind: QueueKind;
  readonly size: number;
  readonly features: QueueFeatures;
  readonly layout: RingLayout;
  private readonly heap: Heap;
  private readonly outstanding = new Map<number, Outstanding>();

  // Split state.
  private freeDescs: number[] = [];
  /** Avail idx including entries written but not yet published; and as last published. */
  private availShadow = 0;
  private availPublished = 0;
  private lastUsed = 0;
  private kickCheckIdx = 0;
  /** IN_ORDER (split): the heads made available and not yet used, in the order they were. */
  private availOrder: number[] = [];

  // Packed state.
  private nextAvail = 0;
  private availWrap = 1;
  private nextUsed = 0;
  private usedWrap = 1;
  private slotsInUse = 0;
  private freeIds: number[] = [];
  private pendingHeads: Array<{ slot: number; flags: number }> = [];
  private kickCheckPos = 0;
  private madeAvailableSinceCheck = 0;

  constructor(mem: GuestMemory, opts: DriverOptions) {
    this.mem = mem;
    this.kind = opts.kind;
    this.size = opts.size;
    this.features = {
      eventIdx: opts.features?.eventIdx ?? false,
      indirect: opts.features?.indirect ?? false,
      inOrder: opts.features?.inOrder ?? false,
    };
    const base = align(opts.base ?? mem.base, 16);
    const limit = opts.limit ?? mem.end;
    const n = opts.size;
    let layout: RingLayout;
    if (opts.kind === "split") {
      // 2.7: descriptor table 16-aligned (16*N), available ring 2-aligned (6+2N), used ring 4-aligned (6+8N).
      const descAddr = base;
      const driverAddr = descAddr + 16 * n;
      const deviceAddr = align(driverAddr + 6 + 2 * n, 4);
      const heapAddr = align(deviceAddr + 6 + 8 * n, 16);
      layout = { descAddr, driverAddr, deviceAddr, heapAddr, heapEnd: limit };
      this.freeDescs = Array.from({ length: n }, (_, i) => i);
    } else {
      // 2.8.10.1: descriptor ring 16-aligned (16*N), both event suppression structures 4-aligned (4 bytes).
      const descAddr = base;
      const driverAddr = descAddr + 16 * n;
      const deviceAddr = driverAddr + 4;
      const heapAddr = align(deviceAddr + 4, 16);
      layout = { descAddr, driverAddr, deviceAddr, heapAddr, heapEnd: limit };
      this.freeIds = Array.from({ length: n }, (_, i) => n - 1 - i);
    }
    this.layout = layout;
    // The driver zero-initializes its rings (2.8.13: "The descriptor ring is zero-initialized"; 2.7: used
    // flags start at 0).
    mem.fill(layout.descAddr, layout.heapAddr - layout.descAddr, 0);
    this.heap = new Heap(layout.heapAddr, limit);
  }

  /** What the transport would tell the device. */
  get config(): QueueConfig {
    return {
      size: this.size,
      descAddr: this.layout.descAddr,
      driverAddr: this.layout.driverAddr,
      deviceAddr: this.layout.deviceAddr,
    };
  }

  /** Buffers made available and not yet seen used. */
  get outstandingCount(): number {
    return this.outstanding.size;
  }

  /** Descriptor table entries (split) or ring slots (packed) free for new chains. */
  get freeSlots(): number {
    return this.kind === "split" ? this.freeDescs.length : this.size - this.slotsInUse;
  }

  /**
   * Adds a buffer: `readable` elements (copied into fresh guest buffers) followed by writable elements of the
   * given lengths; returns its id (split: head index; packed: buffer id).
   */
  addChain(readable: Uint8Array[], writableLens: number[], opts: AddChainOptions = {}): number {
    const allocations: number[] = [];
    const elems: Array<Segment & { write: boolean }> = [];
    for (const bytes of readable) {
      const addr = this.heap.alloc(bytes.length);
      allocations.push(addr);
      this.mem.write(addr, bytes);
      elems.push({ addr, len: bytes.length, write: false });
    }
    const writable: Segment[] = [];
    for (const len of writableLens) {
      const addr = this.heap.alloc(len);
      allocations.push(addr);
      this.mem.fill(addr, len, opts.fill ?? 0);
      elems.push({ addr, len, write: true });
      writable.push({ addr, len });
    }
    if (elems.length === 0) throw new Error("a buffer has at least one element");
    let ringDescs: RawDescriptor[];
    if (opts.indirect) {
      const table = this.writeTable(
        elems.map((e, i) => ({
          addr: e.addr,
          len: e.len,
          flags:
            (e.write ? VIRTQ_DESC_F_WRITE : 0) |
            (this.kind === "split" && i < elems.length - 1 ? VIRTQ_DESC_F_NEXT : 0),
          next: i + 1 < elems.length ? i + 1 : 0,
        })),
      );
      allocations.push(table);
      ringDescs = [{ addr: table, len: DESC_SIZE * elems.length, flags: VIRTQ_DESC_F_INDIRECT }];
    } else {
      ringDescs = elems.map((e) => ({ addr: e.addr, len: e.len, flags: e.write ? VIRTQ_DESC_F_WRITE : 0 }));
    }
    const id =
      this.kind === "split" ? this.placeSplit(ringDescs, opts.publish ?? true) : this.placePacked(ringDescs);
    const entry = this.outstanding.get(id);
    if (!entry) throw new Error("unreachable");
    entry.writable = writable;
    entry.allocations = allocations;
    if (this.kind === "packed" && (opts.publish ?? true)) this.publish();
    return id;
  }

  /** Makes every chain added with `publish: false` visible to the device. */
  publish(): void {
    if (this.kind === "split") {
      // 2.7 "Updating idx": the ring entries were written before; idx moves last.
      this.mem.writeU16(this.layout.driverAddr + 2, this.availShadow);
      this.availPublished = this.availShadow;
    } else {
      // 2.8.21.1: a list's first descriptor is made available last.
      for (const h of this.pendingHeads) this.mem.writeU16(this.descOff(h.slot) + 14, h.flags);
      this.pendingHeads = [];
    }
  }

  /** Reads every used buffer the device returned since the last call, and frees its descriptors. */
  usedChains(): UsedChain[] {
    const out: UsedChain[] = [];
    if (this.kind === "split") {
      const usedIdx = this.mem.readU16(this.layout.deviceAddr + 2);
      while (this.lastUsed !== usedIdx) {
        const e = this.layout.deviceAddr + 4 + 8 * (this.lastUsed % this.size);
        const id = this.mem.readU32(e);
        const len = this.mem.readU32(e + 4);
        if (!this.features.inOrder) {
          out.push(this.complete(id, len, 0));
          this.lastUsed = (this.lastUsed + 1) & 0xffff;
          continue;
        }
        // 2.7.9: one element may answer a batch: `id` is the batch's last buffer, and every buffer made available
        // before it is used too, wholly (a writable one as if filled); the next element is past the batch.
        const k = this.availOrder.indexOf(id);
        const room = (usedIdx - this.lastUsed) & 0xffff;
        if (k < 0) throw new Error(`device returned id ${id}, which is not outstanding`);
        if (k + 1 > room) {
          throw new Error(
            `used element for id ${id} ends a batch of ${k + 1} buffers, but idx moved by ${room}`,
          );
        }
        for (const h of this.availOrder.splice(0, k + 1)) {
          const whole = (this.outstanding.get(h)?.writable ?? []).reduce((n, w) => n + w.len, 0);
          out.push(this.complete(h, h === id ? len : whole, 0));
        }
        this.lastUsed = (this.lastUsed + k + 1) & 0xffff;
      }
      return out;
    }
    for (;;) {
      const d = this.descOff(this.nextUsed);
      const flags = this.mem.readU16(d + 14);
      const avail = (flags >>> 7) & 1;
      const used = (flags >>> 15) & 1;
      // 2.8.1: used when AVAIL and USED both equal the wrap counter the driver expects for used descriptors.
      if (avail !== this.usedWrap || used !== this.usedWrap) break;
      const id = this.mem.readU16(d + 12);
      const len = this.mem.readU32(d + 8);
      const entry = this.outstanding.get(id);
      if (!entry) throw new Error(`device returned buffer id ${id}, which is not outstanding`);
      const slots = entry.descs.length;
      out.push(this.complete(id, flags & VIRTQ_DESC_F_WRITE ? len : 0, flags));
      this.slotsInUse -= slots;
      this.nextUsed += slots;
      if (this.nextUsed >= this.size) {
        this.nextUsed -= this.size;
        this.usedWrap ^= 1;
      }
    }
    return out;
  }

  // ---- Notification suppression, driver side ----

  /** Ask for (or not) used buffer notifications via avail flags (split) or driver event flags (packed). */
  setUsedNotifications(enabled: boolean): void {
    if (this.kind === "split") {
      this.mem.writeU16(this.layout.driverAddr, enabled ? 0 : VIRTQ_AVAIL_F_NO_INTERRUPT);
    } else {
      this.mem.writeU16(
        this.layout.driverAddr + 2,
        enabled ? RING_EVENT_FLAGS_ENABLE : RING_EVENT_FLAGS_DISABLE,
      );
    }
  }

  /**
   * EVENT_IDX: split writes used_event = index; packed sets the driver event to slot `index` with wrap counter
   * `wrap` (default: the driver's current used wrap counter) and flags RING_EVENT_FLAGS_DESC.
   */
  setUsedEvent(index: number, wrap?: number): void {
    if (this.kind === "split") {
      this.mem.writeU16(this.layout.driverAddr + 4 + 2 * this.size, index & 0xffff);
    } else {
      this.mem.writeU16(this.layout.driverAddr, (index & 0x7fff) | ((wrap ?? this.usedWrap) << 15));
      this.mem.writeU16(this.layout.driverAddr + 2, RING_EVENT_FLAGS_DESC);
    }
  }

  /** Where the next used element will appear: split used idx; packed slot and wrap counter. */
  get nextUsedPosition(): { index: number; wrap: number } {
    return this.kind === "split"
      ? { index: this.lastUsed, wrap: 0 }
      : { index: this.nextUsed, wrap: this.usedWrap };
  }

  /**
   * After publishing: does the device want an available buffer notification for what was published since the
   * previous call? ("Available Buffer Notification Suppression" in 2.7; 2.8.10 for packed.)
   */
  kickNeeded(): boolean {
    if (this.kind === "split") {
      const old = this.kickCheckIdx;
      const now = this.availPublished;
      this.kickCheckIdx = now;
      if (old === now) return false;
      if (!this.features.eventIdx) {
        return (this.mem.readU16(this.layout.deviceAddr) & VIRTQ_USED_F_NO_NOTIFY) === 0;
      }
      const availEvent = this.mem.readU16(this.layout.deviceAddr + 4 + 8 * this.size);
      return needEvent(availEvent, now, old);
    }
    const moved = this.madeAvailableSinceCheck;
    const oldPos = this.kickCheckPos;
    this.madeAvailableSinceCheck = 0;
    this.kickCheckPos = this.linear(this.nextAvail, this.availWrap);
    if (moved === 0) return false;
    const flags = this.mem.readU16(this.layout.deviceAddr + 2) & 3;
    if (flags === RING_EVENT_FLAGS_DISABLE) return false;
    if (flags !== RING_EVENT_FLAGS_DESC) return true;
    const desc = this.mem.readU16(this.layout.deviceAddr);
    const span = 2 * this.size;
    const pos = this.linear(desc & 0x7fff, desc >>> 15);
    return (pos - oldPos + span) % span < moved;
  }

  // ---- Raw access for malformed-ring tests ----

  /** Allocates `len` bytes (16-aligned) of guest memory from the driver's heap. */
  alloc(len: number): number {
    return this.heap.alloc(len);
  }

  /** Returns memory from alloc() to the heap. */
  free(addr: number): void {
    this.heap.release(addr);
  }

  /** Writes one descriptor of the descriptor table (split) or ring (packed) verbatim. */
  writeDesc(index: number, d: RawDescriptor): void {
    this.writeDescAt(this.descOff(index), d);
  }

  /** Allocates and writes an indirect table in this ring's descriptor format; returns its address. */
  writeTable(descs: RawDescriptor[]): number {
    const addr = this.heap.alloc(Math.max(1, descs.length) * DESC_SIZE);
    descs.forEach((d, i) => {
      this.writeDescAt(addr + DESC_SIZE * i, d);
    });
    return addr;
  }

  /** Split: writes `head` into the next available ring entry and publishes idx + 1. */
  pushAvail(head: number): void {
    this.requireKind("split");
    this.mem.writeU16(this.layout.driverAddr + 4 + 2 * (this.availShadow % this.size), head);
    this.availShadow = (this.availShadow + 1) & 0xffff;
    this.publish();
  }

  /** Split: the avail idx the driver has published. */
  get availIdx(): number {
    return this.availPublished;
  }

  /** Split: overwrites avail idx. */
  setAvailIdx(idx: number): void {
    this.requireKind("split");
    this.availShadow = idx & 0xffff;
    this.publish();
  }

  /**
   * Packed: writes `descs` into consecutive slots from the driver's next slot, each with the AVAIL/USED bits for
   * the wrap counter of its lap OR-ed in (unless `rawFlags`), the first descriptor last; advances the driver.
   * Returns the first slot.
   */
  makeAvailableRaw(descs: Array<RawDescriptor & { rawFlags?: boolean }>): number {
    this.requireKind("packed");
    const first = this.nextAvail;
    let head: { slot: number; flags: number } | null = null;
    for (const d of descs) {
      const flags = d.rawFlags ? d.flags : d.flags | this.availBits(this.availWrap);
      const slot = this.nextAvail;
      if (head === null) {
        // Keep the head's old flags until the rest of the list is written.
        head = { slot, flags };
        this.writeDescBody(slot, d);
      } else {
        this.writeDesc(slot, { ...d, flags });
      }
      this.advanceAvail();
    }
    if (head) this.mem.writeU16(this.descOff(head.slot) + 14, head.flags);
    return first;
  }

  /** Packed: the AVAIL/USED bits marking a descriptor available for driver wrap counter `wrap` (2.8.1). */
  availBits(wrap: number): number {
    return wrap ? VIRTQ_DESC_F_AVAIL : VIRTQ_DESC_F_USED;
  }

  /** Packed: the driver's next slot and wrap counter. */
  get availPosition(): { slot: number; wrap: number } {
    return { slot: this.nextAvail, wrap: this.availWrap };
  }

  // ---- internals ----

  private descOff(index: number): number {
    return this.layout.descAddr + DESC_SIZE * index;
  }

  private writeDescAt(at: number, d: RawDescriptor): void {
    this.mem.writeU64(at, typeof d.addr === "bigint" ? d.addr : BigInt(d.addr));
    this.mem.writeU32(at + 8, d.len >>> 0);
    if (this.kind === "split") {
      this.mem.writeU16(at + 12, d.flags);
      this.mem.writeU16(at + 14, d.next ?? 0);
    } else {
      this.mem.writeU16(at + 12, d.id ?? 0);
      this.mem.writeU16(at + 14, d.flags);
    }
  }

  /** Packed: everything but the flags, which publish the descriptor. */
  private writeDescBody(slot: number, d: RawDescriptor): void {
    const at = this.descOff(slot);
    this.mem.writeU64(at, typeof d.addr === "bigint" ? d.addr : BigInt(d.addr));
    this.mem.writeU32(at + 8, d.len >>> 0);
    this.mem.writeU16(at + 12, d.id ?? 0);
  }

  private requireKind(kind: QueueKind): void {
    if (this.kind !== kind) throw new Error(`only for ${kind} rings`);
  }

  private linear(slot: number, wrap: number): number {
    return wrap ? slot : this.size + slot;
  }

  /** 2.7 "Placing Buffers Into The Descriptor Table", then "Updating The Available Ring". */
  private placeSplit(descs: RawDescriptor[], publish: boolean): number {
    if (descs.length > this.freeDescs.length) throw new Error("split ring full");
    const indices = this.freeDescs.splice(0, descs.length);
    descs.forEach((d, i) => {
      const last = i === descs.length - 1;
      this.writeDesc(indices[i] as number, {
        ...d,
        flags: d.flags | (last ? 0 : VIRTQ_DESC_F_NEXT),
        next: last ? 0 : (indices[i + 1] as number),
      });
    });
    const head = indices[0] as number;
    this.outstanding.set(head, { descs: indices, writable: [], allocations: [] });
    if (this.features.inOrder) this.availOrder.push(head);
    this.mem.writeU16(this.layout.driverAddr + 4 + 2 * (this.availShadow % this.size), head);
    this.availShadow = (this.availShadow + 1) & 0xffff;
    if (publish) this.publish();
    return head;
  }

  /** 2.8.21.1 Placing Available Buffers Into The Descriptor Ring. The head's flags wait for publish(). */
  private placePacked(descs: RawDescriptor[]): number {
    if (descs.length > this.size - this.slotsInUse) throw new Error("packed ring full");
    const id = this.freeIds.pop();
    if (id === undefined) throw new Error("packed ring out of buffer ids");
    const slots: number[] = [];
    descs.forEach((d, i) => {
      const last = i === descs.length - 1;
      const slot = this.nextAvail;
      const flags = d.flags | (last ? 0 : VIRTQ_DESC_F_NEXT) | this.availBits(this.availWrap);
      // 2.8.6: the Buffer ID goes in the last descriptor; the others get a value the device must not use.
      const descId = last ? id : 0xffff;
      if (i === 0) {
        this.writeDescBody(slot, { ...d, id: descId });
        this.pendingHeads.push({ slot, flags });
      } else {
        this.writeDesc(slot, { ...d, id: descId, flags });
      }
      slots.push(slot);
      this.advanceAvail();
    });
    this.slotsInUse += descs.length;
    this.outstanding.set(id, { descs: slots, writable: [], allocations: [] });
    return id;
  }

  private advanceAvail(): void {
    this.madeAvailableSinceCheck++;
    this.nextAvail++;
    if (this.nextAvail === this.size) {
      this.nextAvail = 0;
      this.availWrap ^= 1;
    }
  }

  private complete(id: number, len: number, flags: number): UsedChain {
    const entry = this.outstanding.get(id);
    if (!entry) throw new Error(`device returned id ${id}, which is not outstanding`);
    this.outstanding.delete(id);
    const data = entry.writable.map((s) => this.mem.slice(s.addr, s.len).slice());
    const total = data.reduce((n, d) => n + d.length, 0);
    if (len > total) throw new Error(`device reports ${len} bytes written into ${total} writable bytes`);
    const written = new Uint8Array(len);
    let at = 0;
    for (const d of data) {
      if (at >= len) break;
      const take = Math.min(d.length, len - at);
      written.set(d.subarray(0, take), at);
      at += take;
    }
    for (const a of entry.allocations) this.heap.release(a);
    if (this.kind === "split") this.freeDescs.push(...entry.descs);
    else this.freeIds.push(id);
    return { id, len, flags, data, written };
  }
}

/** Guest RAM for queue tests: `size` bytes at guest-physical `base` (default 1 MiB at 0x10000). */
export function makeTestMemory(opts: { size?: number; base?: number; shared?: boolean } = {}): GuestMemory {
  const size = opts.size ?? 1 << 20;
  const buffer = opts.shared ? new SharedArrayBuffer(size) : new ArrayBuffer(size);
  return new GuestMemory(buffer, opts.base ?? 0x10000);
}

// ---- Driving a whole virtio-pci device, as a Linux driver does (virtio 1.2, 4.1 and 3.1) ----

/** What a virtio vendor-specific capability says (4.1.4 struct virtio_pci_cap). */
export interface VirtioPciCapInfo {
  capOffset: number;
  cfgType: number;
  bar: number;
  offset: number;
  length: number;
  /** NOTIFY_CFG only. */
  notifyOffMultiplier?: number;
}

/** The PCI side a test needs: configuration space access and BAR programming (a PciFunction has these). */
export interface PciConfigAccess {
  configRead(offset: number, size: 1 | 2 | 4): number;
  configWrite(offset: number, size: 1 | 2 | 4, value: number): void;
}

/** The MMIO bus the BARs decode on (a Bus has these). */
export interface MmioAccess {
  read(addr: number, data: Uint8Array): boolean;
  write(addr: number, data: Uint8Array): boolean;
}

const VIRTIO_STATUS_ACKNOWLEDGE = 1;
const VIRTIO_STATUS_DRIVER = 2;
const VIRTIO_STATUS_DRIVER_OK = 4;
const VIRTIO_STATUS_FEATURES_OK = 8;

/**
 * A virtio-pci driver for tests, written from the specification rather than from vireo's transport: it assigns
 * BARs and enables decoding like firmware, walks the capability list for the virtio structures (4.1.4), then
 * initializes the device (3.1.1), sets queues up (4.1.5.1.3) and notifies (4.1.5.2) through MMIO accesses.
 */
export class VirtioPciTestDriver {
  readonly caps = new Map<number, VirtioPciCapInfo>();
  private readonly bars = new Map<number, number>();
  readonly queues = new Map<number, VirtioTestDriver>();
  private nextQueueMem: number;

  constructor(
    readonly cfg: PciConfigAccess,
    readonly mmio: MmioAccess,
    readonly mem: GuestMemory,
    opts: { barBase?: number } = {},
  ) {
    this.nextQueueMem = mem.base;
    this.assignBars(opts.barBase ?? 0xe000_0000);
    this.walkCapabilities();
  }

  /** Sizes and places every memory BAR (PCI 3.0 6.2.5.1), then enables memory decoding and bus mastering. */
  private assignBars(base: number): void {
    let next = base;
    for (let i = 0; i < 6; i++) {
      const reg = 0x10 + 4 * i;
      const orig = this.cfg.configRead(reg, 4);
      if (orig & 1) continue; // I/O
      const is64 = ((orig >>> 1) & 3) === 2;
      this.cfg.configWrite(reg, 4, 0xffffffff);
      const lo = this.cfg.configRead(reg, 4) & 0xfffffff0;
      if (lo === 0) {
        if (is64) i++;
        continue;
      }
      const size = (~lo >>> 0) + 1;
      next = Math.ceil(next / size) * size;
      this.cfg.configWrite(reg, 4, next);
      if (is64) this.cfg.configWrite(reg + 4, 4, 0);
      this.bars.set(i, next);
      next += size;
      if (is64) i++;
    }
    this.cfg.configWrite(0x04, 2, this.cfg.configRead(0x04, 2) | 0x6);
  }

  /** 4.1.4: vendor-specific capabilities (ID 0x09) with cfg_type; the first of each type is the one to use. */
  private walkCapabilities(): void {
    if (!(this.cfg.configRead(0x06, 2) & 0x10)) throw new Error("no capability list");
    let at = this.cfg.configRead(0x34, 1) & 0xfc;
    let guard = 0;
    while (at !== 0 && guard++ < 48) {
      const id = this.cfg.configRead(at, 1);
      if (id === 0x09) {
        const cfgType = this.cfg.configRead(at + 3, 1);
        const info: VirtioPciCapInfo = {
          capOffset: at,
          cfgType,
          bar: this.cfg.configRead(at + 4, 1),
          offset: this.cfg.configRead(at + 8, 4),
          length: this.cfg.configRead(at + 12, 4),
        };
        if (cfgType === 2) info.notifyOffMultiplier = this.cfg.configRead(at + 16, 4);
        if (!this.caps.has(cfgType)) this.caps.set(cfgType, info);
      }
      at = this.cfg.configRead(at + 1, 1) & 0xfc;
    }
  }

  /** Offset of the first capability with `id` in configuration space, or 0. */
  findCapability(id: number): number {
    let at = this.cfg.configRead(0x34, 1) & 0xfc;
    let guard = 0;
    while (at !== 0 && guard++ < 48) {
      if (this.cfg.configRead(at, 1) === id) return at;
      at = this.cfg.configRead(at + 1, 1) & 0xfc;
    }
    return 0;
  }

  /** Guest-physical address of `offset` in the structure of `cfgType`. */
  addr(cfgType: number, offset = 0): number {
    const cap = this.caps.get(cfgType);
    if (!cap) throw new Error(`no virtio capability of type ${cfgType}`);
    const base = this.bars.get(cap.bar);
    if (base === undefined) throw new Error(`BAR ${cap.bar} not assigned`);
    return base + cap.offset + offset;
  }

  barAddress(index: number): number {
    const a = this.bars.get(index);
    if (a === undefined) throw new Error(`BAR ${index} not assigned`);
    return a;
  }

  read(addr: number, size: 1 | 2 | 4): number {
    const b = new Uint8Array(size);
    this.mmio.read(addr, b);
    let v = 0;
    for (let i = size - 1; i >= 0; i--) v = v * 256 + (b[i] as number);
    return v;
  }

  write(addr: number, size: 1 | 2 | 4, value: number): void {
    const b = new Uint8Array(size);
    for (let i = 0; i < size; i++) b[i] = Math.floor(value / 2 ** (8 * i)) & 0xff;
    this.mmio.write(addr, b);
  }

  /** A field of struct virtio_pci_common_cfg (4.1.4.3). */
  common(offset: number, size: 1 | 2 | 4): number {
    return this.read(this.addr(1, offset), size);
  }

  setCommon(offset: number, size: 1 | 2 | 4, value: number): void {
    this.write(this.addr(1, offset), size, value);
  }

  get status(): number {
    return this.common(0x14, 1);
  }

  set status(v: number) {
    this.setCommon(0x14, 1, v);
  }

  /** All 64 offered feature bits, through device_feature_select. */
  deviceFeatures(): bigint {
    this.setCommon(0x00, 4, 0);
    const lo = this.common(0x04, 4);
    this.setCommon(0x00, 4, 1);
    const hi = this.common(0x04, 4);
    return (BigInt(hi) << 32n) | BigInt(lo);
  }

  /**
   * 3.1.1 steps 1-6: reset, ACKNOWLEDGE, DRIVER, accept `features` (default: all offered), FEATURES_OK, and
   * re-read the status. Returns whether the device kept FEATURES_OK.
   */
  negotiate(features?: bigint | ((offered: bigint) => bigint)): boolean {
    this.status = 0;
    if (this.status !== 0) throw new Error("device did not reset");
    this.status = VIRTIO_STATUS_ACKNOWLEDGE;
    this.status = VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER;
    const offered = this.deviceFeatures();
    const accepted =
      features === undefined ? offered : typeof features === "function" ? features(offered) : features;
    this.setCommon(0x08, 4, 0);
    this.setCommon(0x0c, 4, Number(accepted & 0xffffffffn));
    this.setCommon(0x08, 4, 1);
    this.setCommon(0x0c, 4, Number(accepted >> 32n));
    this.status = VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK;
    this.negotiated = accepted;
    return (this.status & VIRTIO_STATUS_FEATURES_OK) !== 0;
  }

  negotiated = 0n;

  /** 3.1.1 step 8. */
  driverOk(): void {
    this.status = this.status | VIRTIO_STATUS_DRIVER_OK;
  }

  /**
   * 4.1.5.1.3 Virtqueue Configuration for queue q: select, read the size, optionally shrink it, lay the rings
   * out (the ring layout follows the negotiated VIRTIO_F_RING_PACKED), assign the MSI-X vector, write the
   * addresses, enable. Returns the ring driver.
   */
  setupQueue(q: number, opts: { size?: number; vector?: number; memBytes?: number } = {}): VirtioTestDriver {
    this.setCommon(0x16, 2, q);
    const max = this.common(0x18, 2);
    if (max === 0) throw new Error(`queue ${q} is not available`);
    const size = opts.size ?? max;
    if (size !== max) this.setCommon(0x18, 2, size);
    const kind: QueueKind = this.negotiated & (1n << 34n) ? "packed" : "split";
    const bytes = opts.memBytes ?? 0x40000;
    const base = this.nextQueueMem;
    this.nextQueueMem += bytes;
    if (this.nextQueueMem > this.mem.end) throw new Error("test memory exhausted by queues");
    const drv = new VirtioTestDriver(this.mem, {
      kind,
      size,
      base,
      limit: base + bytes,
      features: {
        eventIdx: (this.negotiated & (1n << 29n)) !== 0n,
        indirect: (this.negotiated & (1n << 28n)) !== 0n,
        inOrder: (this.negotiated & (1n << 35n)) !== 0n,
      },
    });
    if (opts.vector !== undefined) this.setCommon(0x1a, 2, opts.vector);
    const c = drv.config;
    this.setCommon(0x20, 4, c.descAddr);
    this.setCommon(0x24, 4, 0);
    this.setCommon(0x28, 4, c.driverAddr);
    this.setCommon(0x2c, 4, 0);
    this.setCommon(0x30, 4, c.deviceAddr);
    this.setCommon(0x34, 4, 0);
    this.setCommon(0x1c, 2, 1);
    this.queues.set(q, drv);
    return drv;
  }

  /** 4.1.5.2: writes the queue index to the queue's notify address. */
  kick(q: number): void {
    this.setCommon(0x16, 2, q);
    const off = this.common(0x1e, 2);
    const mult = this.caps.get(2)?.notifyOffMultiplier ?? 0;
    this.write(this.addr(2, off * mult), 2, q);
  }

  /** Reads (and so clears) the ISR status (4.1.4.5). */
  readIsr(): number {
    return this.read(this.addr(3), 1);
  }

  /** Device-specific configuration. */
  config(offset: number, size: 1 | 2 | 4): number {
    return this.read(this.addr(4, offset), size);
  }

  /** Enables MSI-X and programs vector v's message as (addr 0xfee00000, data = 0x40 + v), unmasked. */
  enableMsix(vectors: number): void {
    const cap = this.findCapability(0x11);
    if (cap === 0) throw new Error("no MSI-X capability");
    const table = this.cfg.configRead(cap + 4, 4);
    const tableBase = this.barAddress(table & 7) + (table & ~7);
    for (let v = 0; v < vectors; v++) {
      const e = tableBase + 16 * v;
      this.write(e, 4, 0xfee00000);
      this.write(e + 4, 4, 0);
      this.write(e + 8, 4, 0x40 + v);
      this.write(e + 12, 4, 0);
    }
    this.cfg.configWrite(cap + 2, 2, 0x8000);
  }
}

/** A virtio-pci device on its own MMIO bus with a spec-following driver, recording interrupts and logs. */
export interface VirtioPciRig<M> {
  mem: GuestMemory;
  model: M;
  transport: VirtioPciTransport;
  drv: VirtioPciTestDriver;
  state: VirtioPciState;
  /** MSI data values sent (0x40 + vector with enableMsix). */
  msis: number[];
  /** INTx levels set. */
  intx: boolean[];
  logs: string[];
  metrics: MetricsSegment;
}

export function makeVirtioPciRig<M extends VirtioDeviceModel>(
  model: M,
  opts: { mem?: GuestMemory; state?: VirtioPciState; memSize?: number } = {},
): VirtioPciRig<M> {
  const mem = opts.mem ?? makeTestMemory({ size: opts.memSize ?? 8 << 20, shared: true });
  const state = opts.state ?? VirtioPciTransport.createState(model);
  const msis: number[] = [];
  const intx: boolean[] = [];
  const logs: string[] = [];
  const metrics = new MetricsSegment(new ArrayBuffer(SLOTS_PER_SEGMENT * 8), 0);
  const transport = new VirtioPciTransport({
    state,
    model,
    mem,
    msiSink: { signal: (_lo, _hi, data) => msis.push(data) },
    intx: { set: (level) => intx.push(level) },
    log: (m) => logs.push(m),
    metrics,
  });
  const mmio = new Bus("mmio");
  connectBars(transport.pci, { pio: new Bus("pio"), mmio });
  const drv = new VirtioPciTestDriver(transport.pci, mmio, mem);
  return { mem, model, transport, drv, state, msis, intx, logs, metrics };
}
