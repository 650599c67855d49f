/**
 * Device side of a packed virtqueue (virtio 1.2, 2.8 Packed Virtqueues): one descriptor ring shared by driver
 * and device, a Driver Event Suppression structure (Driver Area) and a Device Event Suppression structure
 * (Device Area).
 */
import type { GuestMemory } from "../../../memory/guest-memory.ts";
import type { StateObject, StateReader } from "../../../shared/device-state.ts";
import {
  bufferError,
  ChainBuilder,
  checkConfig,
  hex,
  MutableChain,
  type NotifyDecision,
  QueueBase,
} from "./core.ts";
import {
  DESC_SIZE,
  type DescriptorChain,
  type QueueConfig,
  type QueueFeatures,
  RING_EVENT_FLAGS_DESC,
  RING_EVENT_FLAGS_DISABLE,
  RING_EVENT_FLAGS_ENABLE,
  VIRTQ_DESC_F_AVAIL,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_USED,
  VIRTQ_DESC_F_WRITE,
  type VirtqueueOptions,
} from "./types.ts";

/** Byte sizes of the three parts (2.8.10.1 Structure Size and Alignment). */
export function packedAreaSizes(size: number): { desc: number; driver: number; device: number } {
  return { desc: DESC_SIZE * size, driver: 4, device: 4 };
}

/**
 * 2.8.1 Driver and Device Ring Wrap Counters: a descriptor is available when its AVAIL bit equals the wrap
 * counter of its lap and its USED bit does not.
 */
function isAvailable(flags: number, wrap: number): boolean {
  return ((flags >>> 7) & 1) === wrap && ((flags >>> 15) & 1) !== wrap;
}

export class PackedQueue extends QueueBase {
  readonly kind = "packed" as const;
  private readonly descOff: number;
  /**
   * Chain objects, reused so that a pop allocates nothing: the one each in-flight buffer id was popped into, and a
   * spare the next pop builds into (the id is known only at the end of the list). A popped chain takes its id's
   * slot and the object there becomes the spare: an id is never popped again while in flight (checked), so no
   * in-flight chain is overwritten; as with split rings, a chain stays as popped until it is used.
   */
  private readonly byId: Array<MutableChain | undefined>;
  private spare = new MutableChain();
  private readonly builder: ChainBuilder;
  private readonly driverOff: number;
  private readonly deviceOff: number;

  // Run-time state, in the state words (VirtqueueOptions.state) so that it can be shared between threads.
  /** Next ring slot to read, and the Driver Ring Wrap Counter value descriptors there carry when available. */
  private get nextAvail(): number {
    return this.st[0] as number;
  }
  private set nextAvail(v: number) {
    this.st[0] = v;
  }
  private get availWrap(): number {
    return this.st[1] as number;
  }
  private set availWrap(v: number) {
    this.st[1] = v;
  }
  /** Next ring slot to write a used descriptor to, and the Device Ring Wrap Counter. */
  private get nextUsed(): number {
    return this.st[2] as number;
  }
  private set nextUsed(v: number) {
    this.st[2] = v;
  }
  private get usedWrap(): number {
    return this.st[3] as number;
  }
  private set usedWrap(v: number) {
    this.st[3] = v;
  }
  /** Ring position (see `linear`) at the previous shouldNotifyDriver(), and slots used since. */
  private get usedAtCheck(): number {
    return this.st[4] as number;
  }
  private set usedAtCheck(v: number) {
    this.st[4] = v;
  }
  private get slotsSinceCheck(): number {
    return this.st[5] as number;
  }
  private set slotsSinceCheck(v: number) {
    this.st[5] = v;
  }
  private get driverNotifications(): boolean {
    return this.st[6] === 1;
  }
  private set driverNotifications(v: boolean) {
    this.st[6] = v ? 1 : 0;
  }

  /** The state words as named values, for a snapshot: ring positions and the two wrap counters (2.8.1). */
  static saveState(words: Int32Array): StateObject {
    return {
      nextAvail: words[0] as number,
      availWrap: words[1] as number,
      nextUsed: words[2] as number,
      usedWrap: words[3] as number,
      usedAtCheck: words[4] as number,
      slotsSinceCheck: words[5] as number,
      driverNotifications: words[6] === 1,
      started: words[7] === 1,
    };
  }

  /** Saved positions checked against a ring of `size` slots and turned back into state words. */
  static restoreState(r: StateReader, size: number): Int32Array {
    const words = new Int32Array(8);
    words[0] = r.int("nextAvail", 0, size - 1);
    words[1] = r.int("availWrap", 0, 1);
    words[2] = r.int("nextUsed", 0, size - 1);
    words[3] = r.int("usedWrap", 0, 1);
    words[4] = r.int("usedAtCheck", 0, 2 * size - 1);
    words[5] = r.int("slotsSinceCheck", 0, 2 * size);
    words[6] = r.bool("driverNotifications") ? 1 : 0;
    words[7] = r.bool("started") ? 1 : 0;
    if (words[7] === 0 && words.some((w) => w !== 0))
      r.fail("started", "is false, but the queue has positions");
    return words;
  }

  /**
   * Seeds state words so that a queue over them resumes a ring the driver has been using (a vhost-user back-end's
   * SET_VRING_BASE): the next slot to read and its wrap counter, the next slot to write a used descriptor to and
   * the device's wrap counter (2.8.1). After the queue is enabled and before it is served, as SplitQueue's.
   */
  static seedState(
    words: Int32Array,
    size: number,
    avail: { slot: number; wrap: number },
    used: { slot: number; wrap: number },
  ): void {
    if (avail.slot >= size || used.slot >= size)
      throw new RangeError(`packed ring of ${size}: slot ${Math.max(avail.slot, used.slot)} is outside it`);
    words.fill(0, 0, 8);
    words[0] = avail.slot;
    words[1] = avail.wrap & 1;
    words[2] = used.slot;
    words[3] = used.wrap & 1;
    words[4] = used.wrap & 1 ? used.slot : size + used.slot; // usedAtCheck: the linear position of nextUsed
    words[6] = 1; // driver notifications on
    words[7] = 1; // started
  }

  /** The ring positions in state words: the next slot to read and the next to write used, with their wrap counters. */
  static positions(words: Int32Array): {
    avail: { slot: number; wrap: number };
    used: { slot: number; wrap: number };
  } {
    return {
      avail: { slot: words[0] as number, wrap: (words[1] as number) & 1 },
      used: { slot: words[2] as number, wrap: (words[3] as number) & 1 },
    };
  }

  /** Ring slots taken by lists popped and not yet used, from state words. */
  static inFlight(words: Int32Array, size: number): number {
    if (words[7] !== 1) return 0;
    const linear = (slot: number, wrap: number) => (wrap ? slot : size + slot);
    const span = 2 * size;
    return (
      (linear(words[0] as number, words[1] as number) -
        linear(words[2] as number, words[3] as number) +
        span) %
      span
    );
  }

  constructor(mem: GuestMemory, config: QueueConfig, features: QueueFeatures, opts?: VirtqueueOptions) {
    const sizes = packedAreaSizes(config.size);
    checkConfig(opts?.name ?? "unnamed", "packed", mem, config, [
      { what: "descriptor ring", addr: config.descAddr, align: 16, len: sizes.desc },
      { what: "driver event suppression area", addr: config.driverAddr, align: 4, len: sizes.driver },
      { what: "device event suppression area", addr: config.deviceAddr, align: 4, len: sizes.device },
    ]);
    super(mem, config, features, opts);
    this.byId = new Array<MutableChain | undefined>(config.size);
    this.builder = new ChainBuilder(this.qm, config.size);
    this.descOff = config.descAddr - mem.base;
    this.driverOff = config.driverAddr - mem.base;
    this.deviceOff = config.deviceAddr - mem.base;
    if (!this.started) {
      // 2.8.1: both wrap counters start at 1.
      this.st.fill(0, 0, 7);
      this.availWrap = 1;
      this.usedWrap = 1;
      this.writeDriverNotifications(true);
      this.markStarted();
    }
  }

  protected rewindChain(chain: DescriptorChain): void {
    let slot = this.nextAvail - chain.descriptorCount;
    if (slot < 0) {
      slot += this.size;
      this.availWrap ^= 1;
    }
    this.nextAvail = slot;
    // The device event stays on the slot the pop left it on (the next one not yet seen): moved back onto a slot
    // the driver already made available, it would never be notified again (2.8.10; see SplitQueue.rewindChain).
  }

  /**
   * A ring position as one number in [0, 2 * size): slot `i` in a lap with wrap counter 1 is `i`, with wrap
   * counter 0 is `size + i`. Both counters start at 1 and flip after the last slot, so positions advance modulo
   * 2 * size.
   */
  private linear(slot: number, wrap: number): number {
    return wrap ? slot : this.size + slot;
  }

  protected popChain(): DescriptorChain | null {
    const qm = this.qm;
    const size = this.size;
    const first = this.nextAvail;
    let slot = first;
    let wrap = this.availWrap;
    // 2.8.2 Polling: only the next slot in ring order is tested. Reading its flags first (acquire) orders the
    // reads of the rest of the list after it; the driver makes the first descriptor available last (2.8.6).
    let flags = qm.load16Acquire(this.descOff + DESC_SIZE * slot + 14);
    if (!isAvailable(flags, wrap)) {
      if (((flags >>> 7) & 1) === wrap) {
        throw this.malformed(
          `ring slot ${slot} has AVAIL and USED both ${wrap} (flags ${hex(flags)}): a used descriptor where the ` +
            "next available one is expected",
        );
      }
      return null;
    }
    // A list of one direct descriptor (what DPDK and Linux post for a frame): filled in place, with the checks
    // ChainBuilder.add makes for it, without the builder's bookkeeping.
    if ((flags & (VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_INDIRECT)) === 0) {
      const off = this.descOff + DESC_SIZE * slot;
      const addr = qm.addr64(off);
      const len = qm.u32le(off + 8);
      const err = bufferError(qm, addr, len);
      if (err) throw this.malformed(`${err} (ring slot ${slot}, list at slot ${first})`);
      const id = qm.u16le(off + 12);
      return this.takeList(first, id, 1).setSingle(id, addr, len, (flags & VIRTQ_DESC_F_WRITE) !== 0);
    }
    const b = this.builder;
    b.begin(this.spare);
    let count = 0;
    let id = 0;
    for (;;) {
      const off = this.descOff + DESC_SIZE * slot;
      if (count > 0) {
        flags = qm.u16le(off + 14);
        // 2.8.6: every descriptor of a list is made available (with the wrap counter of its own lap).
        if (!isAvailable(flags, wrap)) {
          throw this.malformed(
            `ring slot ${slot} (descriptor ${count} of the list at slot ${first}) is not available for wrap ` +
              `counter ${wrap} (flags ${hex(flags)})`,
          );
        }
      }
      count++;
      const addr = qm.addr64(off);
      const len = qm.u32le(off + 8);
      // 2.8.6: the Buffer ID is in the last descriptor of the list; read each time, the last one wins.
      id = qm.u16le(off + 12);
      if (flags & VIRTQ_DESC_F_INDIRECT) {
        // 2.8.19 Driver Requirements: Indirect Descriptors.
        if (!this.features.indirect) {
          throw this.malformed(
            `ring slot ${slot} sets VIRTQ_DESC_F_INDIRECT but VIRTIO_F_INDIRECT_DESC is not negotiated`,
          );
        }
        if (count > 1 || flags & VIRTQ_DESC_F_NEXT) {
          throw this.malformed(
            `ring slot ${slot} sets VIRTQ_DESC_F_INDIRECT inside a list linked by VIRTQ_DESC_F_NEXT (list at slot ${first})`,
          );
        }
        b.tables++;
        this.walkIndirect(b, addr, len, slot);
        break;
      }
      const err = b.add(addr, len, (flags & VIRTQ_DESC_F_WRITE) !== 0);
      if (err) throw this.malformed(`${err} (ring slot ${slot}, list at slot ${first})`);
      if (!(flags & VIRTQ_DESC_F_NEXT)) break;
      // 2.8.17: a list is no longer than the Queue Size (so it cannot lap the ring onto itself).
      if (count === size) {
        throw this.malformed(`list at slot ${first} is longer than the queue size ${size}`);
      }
      slot++;
      if (slot === size) {
        slot = 0;
        wrap ^= 1;
      }
    }
    this.takeList(first, id, count);
    return b.finish(id, count);
  }

  /**
   * Takes the list of `count` slots at `first` with buffer id `id` off the ring, once it has been read and
   * checked: the id below the size and not in flight, no slot of a list still in flight reused. Returns the chain
   * object to fill (the spare; the object the id had becomes the next spare).
   */
  private takeList(first: number, id: number, count: number): MutableChain {
    const size = this.size;
    if (id >= size) {
      throw this.malformed(`list at slot ${first} has buffer id ${id}, not below the queue size ${size}`);
    }
    if (this.isInFlight(id)) {
      throw this.malformed(`buffer id ${id} (list at slot ${first}) is made available again while in flight`);
    }
    // The device has not yet written used descriptors over the slots of lists still in flight, so a driver
    // cannot have made them available again (2.8.16: it changes a descriptor only after seeing it used).
    const span = 2 * size;
    const outstanding =
      (this.linear(first, this.availWrap) - this.linear(this.nextUsed, this.usedWrap) + span) % span;
    if (outstanding + count > size) {
      throw this.malformed(
        `list at slot ${first} reuses ring slots of buffers still in flight (${outstanding} slots outstanding, ` +
          `${count} more, queue size ${size})`,
      );
    }
    let next = first + count;
    if (next >= size) {
      next -= size;
      this.availWrap ^= 1;
    }
    this.nextAvail = next;
    if (!this.inBatch && this.features.eventIdx && this.driverNotifications) this.writeDeviceEventDesc();
    const target = this.spare;
    this.spare = this.byId[id] ?? new MutableChain();
    this.byId[id] = target;
    return target;
  }

  /** True while popChains takes a batch: the device event is written once, after it. */
  private inBatch = false;

  /**
   * popChain for a batch: the same lists in the same order, the Device Event Suppression structure written once
   * at the end (2.8.14: it names the next slot the device will read) instead of after every list.
   */
  protected override popChains(out: DescriptorChain[], max: number): number {
    let n = 0;
    this.inBatch = true;
    try {
      for (; n < max; n++) {
        const chain = this.popChain();
        if (chain === null) break;
        this.popped(chain);
        out[n] = chain;
      }
    } catch (e) {
      if (n === 0) throw e;
    } finally {
      this.inBatch = false;
      if (n > 0 && this.features.eventIdx && this.driverNotifications) this.writeDeviceEventDesc();
    }
    return n;
  }

  /**
   * 2.8.7 Indirect Flag: a table of len/16 descriptors used in order, no `next` chaining. VIRTQ_DESC_F_WRITE is
   * the only valid flag in it; the others and the Buffer ID are reserved and ignored by the device, as the
   * specification says (so a nested VIRTQ_DESC_F_INDIRECT is ignored, unlike in a split ring).
   */
  private walkIndirect(b: ChainBuilder, addr: number, len: number, slot: number): void {
    const qm = this.qm;
    const where = `indirect table ${addr < 0 ? "above 2^53" : hex(addr)} (ring slot ${slot})`;
    if (len === 0 || len % DESC_SIZE !== 0) {
      throw this.malformed(`${where} has length ${len}, not a non-zero multiple of ${DESC_SIZE}`);
    }
    const entries = len / DESC_SIZE;
    // 2.8.5 Scatter-Gather Support: unless the device says otherwise, a list is at most Queue Size descriptors.
    if (entries > this.size) {
      throw this.malformed(`${where} has ${entries} entries, more than the queue size ${this.size}`);
    }
    const tableOff = addr < 0 ? -1 : qm.offsetOf(addr, len);
    if (tableOff < 0) {
      const mem = qm.mem;
      throw this.malformed(`${where}+${len} is outside guest RAM (${hex(mem.base)}-${hex(mem.end)})`);
    }
    for (let j = 0; j < entries; j++) {
      const off = tableOff + DESC_SIZE * j;
      const flags = qm.u16le(off + 14);
      const err = b.add(qm.addr64(off), qm.u32le(off + 8), (flags & VIRTQ_DESC_F_WRITE) !== 0);
      if (err) throw this.malformed(`${err} (entry ${j} of ${where})`);
    }
  }

  /**
   * The slot of the first used descriptor written since the last publication, whose flags wait (-1: none). The
   * used descriptors after it get their flags with plain stores; the first one's flags, stored last with release,
   * publishes them all: the driver reads used descriptors in ring order and sees none past the first before it
   * (as the driver makes a list available, 2.8.6, and DPDK's and Linux's devices batch them). One ordered store
   * per batch instead of one per buffer: a seq_cst store waits for the buffer's own stores to reach memory.
   */
  private firstUnpublished = -1;
  private firstUnpublishedFlags = 0;

  protected publishPending(): void {
    const first = this.firstUnpublished;
    if (first < 0) return;
    this.firstUnpublished = -1;
    this.qm.store16Release(this.descOff + DESC_SIZE * first + 14, this.firstUnpublishedFlags);
  }

  /**
   * 2.8.6 / 2.8.21: one used descriptor per list, written at the next used slot (buffer id and length first,
   * flags last; the first of a batch's flags wait for publishPending), then the device skips the slots the list
   * occupied. AVAIL and USED both equal the Device Ring Wrap Counter; WRITE says whether anything was written
   * (2.8.3 Write Flag).
   */
  protected writeUsed(chain: DescriptorChain, written: number, publish: boolean): void {
    const qm = this.qm;
    const slot = this.nextUsed;
    const off = this.descOff + DESC_SIZE * slot;
    qm.setU32(off + 8, written);
    qm.setU16(off + 12, chain.id);
    let flags = this.usedWrap ? VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED : 0;
    if (written > 0) flags |= VIRTQ_DESC_F_WRITE;
    if (this.firstUnpublished < 0) {
      this.firstUnpublished = slot;
      this.firstUnpublishedFlags = flags;
    } else {
      qm.setU16(off + 14, flags);
    }
    let next = slot + chain.descriptorCount;
    if (next >= this.size) {
      next -= this.size;
      this.usedWrap ^= 1;
    }
    this.nextUsed = next;
    this.slotsSinceCheck += chain.descriptorCount;
    if (publish) this.publishPending();
  }

  /** 2.8.10 Driver and Device Event Suppression, read from the Driver Event Suppression structure. */
  protected notifyDecision(): NotifyDecision {
    const moved = this.slotsSinceCheck;
    if (moved === 0) return "none";
    const oldPos = this.usedAtCheck;
    this.usedAtCheck = this.linear(this.nextUsed, this.usedWrap);
    this.slotsSinceCheck = 0;
    const qm = this.qm;
    const flags = qm.load16Acquire(this.driverOff + 2) & 3;
    if (flags === RING_EVENT_FLAGS_DISABLE) return "suppress";
    if (flags === RING_EVENT_FLAGS_DESC && this.features.eventIdx) {
      // Notify when the used descriptors written since the last decision cover the slot and wrap counter the
      // driver named. Counting every slot of a list (not only the one the used descriptor went to) can give a
      // spurious notification, never a missed one.
      const desc = qm.u16le(this.driverOff);
      const eventSlot = desc & 0x7fff;
      const span = 2 * this.size;
      if (eventSlot >= this.size || moved >= span) return "notify";
      const eventPos = this.linear(eventSlot, desc >>> 15);
      return (eventPos - oldPos + span) % span < moved ? "notify" : "suppress";
    }
    // ENABLE; DESC without VIRTIO_F_RING_EVENT_IDX; or the reserved value 3. A spurious notification is
    // harmless (the driver MUST handle them), a missed one is not.
    return "notify";
  }

  /** 2.8.10: the Device Event Suppression structure, written by the device only. */
  protected writeDriverNotifications(enabled: boolean): void {
    this.driverNotifications = enabled;
    const qm = this.qm;
    // Stored only when they change (QueueMemory.store16Changed): a polled device sets them at every pass.
    if (!enabled) {
      qm.store16Changed(this.deviceOff + 2, RING_EVENT_FLAGS_DISABLE);
    } else if (!this.features.eventIdx) {
      qm.store16Changed(this.deviceOff + 2, RING_EVENT_FLAGS_ENABLE);
    } else {
      this.writeDeviceEventDesc();
      qm.store16Changed(this.deviceOff + 2, RING_EVENT_FLAGS_DESC);
    }
  }

  /** Ask for a notification when the driver makes the next slot we will read available (2.8.14 desc field). */
  private writeDeviceEventDesc(): void {
    this.qm.store16Release(this.deviceOff, this.nextAvail | (this.availWrap << 15));
  }
}
