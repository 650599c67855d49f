/**
 * Device side of a split virtqueue (virtio 1.2, 2.7 Split Virtqueues): descriptor table, available ring (Driver
 * Area) and used ring (Device Area).
 */
import type { GuestMemory } from "../../../memory/guest-memory.ts";
import type { StateObject, StateReader } from "../../../shared/device-state.ts";
import {
  bufferError,
  ChainBuilder,
  checkConfig,
  hex,
  MAX_SAFE_HIGH_WORD,
  MutableChain,
  type NotifyDecision,
  needEvent,
  QueueBase,
  TWO_POW_32,
} from "./core.ts";
import {
  DESC_SIZE,
  type DescriptorChain,
  type QueueConfig,
  type QueueFeatures,
  type SingleBuffers,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VIRTQ_USED_F_NO_NOTIFY,
  VirtqueueError,
  type VirtqueueOptions,
} from "./types.ts";

/** Byte sizes of the three parts (2.7 Split Virtqueues, alignment and size table). */
export function splitAreaSizes(size: number): { desc: number; avail: number; used: number } {
  return { desc: DESC_SIZE * size, avail: 6 + 2 * size, used: 6 + 8 * size };
}

export class SplitQueue extends QueueBase {
  readonly kind = "split" as const;
  private readonly mask: number;
  /** Buffer offsets of the three parts and of the event index fields. */
  private readonly descOff: number;
  private readonly availOff: number;
  private readonly usedOff: number;
  private readonly usedEventOff: number;
  private readonly availEventOff: number;
  /**
   * One chain object per head index, refilled at each pop of that head: a head is not popped again while its
   * chain is in flight (popChain refuses it), so a chain stays as popped until it is used. No allocation per pop.
   */
  private readonly chains: Array<MutableChain | undefined>;
  private readonly builder: ChainBuilder;
  /** Used elements written and not yet published (pushUsed with publish false). */
  private unpublished = false;
  /**
   * An in-order batch not yet written (features.inOrder, writeUsedSingle): the used idx of its first buffer, or -1
   * for none, and its last buffer's head id. It is written before the idx is published.
   */
  private runStart = -1;
  private runId = 0;
  /**
   * avail->idx as this queue object last read it, or -1: the entries before it are the driver's (2.7.6), so pops
   * take them without reading idx again, and idx is read once they are taken. The driver's core writes idx for
   * each burst, so reading it at every pop cost a cache-line transfer a chain. Per object: another object over
   * the same state words (a queue handed to another thread) may have taken entries since, which makes the count
   * below 0 or past the size, and idx is read again.
   */
  private availSeen = -1;
  /** What popChains' descriptor loads add up to: kept, so that the compiler cannot drop them. */
  private touched = 0;

  // Run-time state, in the state words (VirtqueueOptions.state) so that it can be shared between threads.
  /** Free-running index of the next available ring entry to read. */
  private get lastAvail(): number {
    return this.st[0] as number;
  }
  private set lastAvail(v: number) {
    this.st[0] = v;
  }
  /** Free-running used idx as last published. */
  private get usedIdx(): number {
    return this.st[1] as number;
  }
  private set usedIdx(v: number) {
    this.st[1] = v;
  }
  /** used idx at the previous shouldNotifyDriver(), and how many entries were written since. */
  private get usedAtCheck(): number {
    return this.st[2] as number;
  }
  private set usedAtCheck(v: number) {
    this.st[2] = v;
  }
  private get usedSinceCheck(): number {
    return this.st[3] as number;
  }
  private set usedSinceCheck(v: number) {
    this.st[3] = v;
  }
  /**
   * Heads to hand out again, in this order, before the available ring is read (resubmit): requests a previous
   * back-end took and never completed (vhost-user.rst, "Inflight I/O tracking"). Per queue object, not shared.
   */
  private resubmitHeads: number[] = [];
  /** The chain the last pop took from resubmitHeads (so unpop puts it back there). */
  private lastResubmitted: DescriptorChain | null = null;
  private get driverNotifications(): boolean {
    return this.st[4] === 1;
  }
  private set driverNotifications(v: boolean) {
    this.st[4] = v ? 1 : 0;
  }

  /**
   * Seeds state words (VirtqueueOptions.state) so that queues over them resume a ring the driver has been using:
   * the next available entry to read is `lastAvail`, the used ring's idx is `usedIdx`. For a host that starts
   * rings at given indices (vhost-user SET_VRING_BASE; the used idx read from the ring), after the queue is
   * enabled and before it is served (queue objects read the words live).
   */
  static seedState(words: Int32Array, lastAvail: number, usedIdx: number): void {
    words.fill(0, 0, 8);
    words[0] = lastAvail & 0xffff;
    words[1] = usedIdx & 0xffff;
    words[2] = usedIdx & 0xffff;
    words[4] = 1; // driver notifications on
    words[7] = 1; // started
  }

  /** The state words as named values, for a snapshot (words 5 and 6 are unused by split rings). */
  static saveState(words: Int32Array): StateObject {
    return {
      lastAvail: (words[0] as number) & 0xffff,
      usedIdx: (words[1] as number) & 0xffff,
      usedAtCheck: (words[2] as number) & 0xffff,
      usedSinceCheck: words[3] as number,
      driverNotifications: words[4] === 1,
      started: words[7] === 1,
    };
  }

  /**
   * Saved indices checked (16-bit free-running indices, 2.7.6 / 2.7.8) and turned back into state words. The
   * count of used entries since the last notification check is at most 2^16 (it is reset at every check).
   */
  static restoreState(r: StateReader): Int32Array {
    const words = new Int32Array(8);
    words[0] = r.int("lastAvail", 0, 0xffff);
    words[1] = r.int("usedIdx", 0, 0xffff);
    words[2] = r.int("usedAtCheck", 0, 0xffff);
    words[3] = r.int("usedSinceCheck", 0, 0x10000);
    words[4] = r.bool("driverNotifications") ? 1 : 0;
    words[7] = r.bool("started") ? 1 : 0;
    if (words[7] === 0 && words.some((w) => w !== 0))
      r.fail("started", "is false, but the queue has indices");
    return words;
  }

  /** Chains popped and not yet used, from state words (the available entries read minus the used entries written). */
  static inFlight(words: Int32Array): number {
    return ((words[0] as number) - (words[1] as number)) & 0xffff;
  }

  /**
   * Where the ring's parts are in the memory's bytes, and its indices now: for a program that serves the ring
   * itself instead of through pop and pushUsed (bench/js-floor.ts, which measures the least a JavaScript switch
   * can do per frame). Such a program takes over the ring: this object's own pops and used entries no longer
   * follow it.
   */
  rawLayout(): { descOff: number; availOff: number; usedOff: number; lastAvail: number; usedIdx: number } {
    const { lastAvail, usedIdx } = SplitQueue.indices(this.st);
    return { descOff: this.descOff, availOff: this.availOff, usedOff: this.usedOff, lastAvail, usedIdx };
  }

  /** The indices in state words: the next available entry to read and the used idx last published. */
  static indices(words: Int32Array): { lastAvail: number; usedIdx: number } {
    return { lastAvail: (words[0] as number) & 0xffff, usedIdx: (words[1] as number) & 0xffff };
  }

  constructor(mem: GuestMemory, config: QueueConfig, features: QueueFeatures, opts?: VirtqueueOptions) {
    const sizes = splitAreaSizes(config.size);
    checkConfig(opts?.name ?? "unnamed", "split", mem, config, [
      { what: "descriptor table", addr: config.descAddr, align: 16, len: sizes.desc },
      { what: "available ring", addr: config.driverAddr, align: 2, len: sizes.avail },
      { what: "used ring", addr: config.deviceAddr, align: 4, len: sizes.used },
    ]);
    super(mem, config, features, opts);
    this.mask = config.size - 1;
    this.chains = new Array(config.size).fill(undefined);
    this.builder = new ChainBuilder(this.qm, config.size);
    this.descOff = config.descAddr - mem.base;
    this.availOff = config.driverAddr - mem.base;
    this.usedOff = config.deviceAddr - mem.base;
    // 2.7.6 / 2.7.8: used_event follows avail->ring[size], avail_event follows used->ring[size].
    this.usedEventOff = this.availOff + 4 + 2 * config.size;
    this.availEventOff = this.usedOff + 4 + 8 * config.size;
    if (!this.started) {
      this.st.fill(0, 0, 7);
      this.writeDriverNotifications(true);
      this.markStarted();
    }
  }

  /**
   * Makes pop() return the chains at these heads first, in order, without moving the available ring: for a host
   * that resubmits requests taken from the ring earlier and never used (their avail entries are behind the ring's
   * next index). Replaces any list given before. Throws VirtqueueError (usage) for a head not below the size.
   */
  resubmit(heads: readonly number[]): void {
    for (const h of heads) {
      if (!(Number.isInteger(h) && h >= 0 && h < this.size)) {
        throw new VirtqueueError(
          `virtq ${this.name}: resubmit: head ${h} is not below the queue size ${this.size}`,
          "VIREO_VIRTQUEUE_USAGE",
        );
      }
    }
    this.resubmitHeads = heads.slice();
    this.lastResubmitted = null;
  }

  /** Heads still waiting to be resubmitted. */
  get resubmitPending(): number {
    return this.resubmitHeads.length;
  }

  protected rewindChain(chain: DescriptorChain): void {
    if (chain === this.lastResubmitted) {
      this.resubmitHeads.unshift(chain.id);
      this.lastResubmitted = null;
      return;
    }
    this.lastAvail = (this.lastAvail - 1) & 0xffff;
    // avail_event stays where the pop left it (the next entry the device has not seen). Moved back onto an entry
    // the driver has already made available, the driver would not notify again (it notifies only when it writes
    // the entry at avail_event, 2.7.10): a device that gave chains back because they were too few (virtio-net
    // receive) would wait forever for the kick that brings more.
  }

  protected popChain(): DescriptorChain | null {
    const again = this.resubmitHeads[0];
    if (again !== undefined) {
      if (this.isInFlight(again)) throw this.malformed(`resubmitted head ${again} is already in flight`);
      const chain = this.walk(again);
      this.resubmitHeads.shift();
      this.lastResubmitted = chain;
      return chain;
    }
    const pending = this.pendingAvail();
    if (pending === 0) return null;
    const chain = this.walk(this.headAt(this.lastAvail));
    this.lastResubmitted = null;
    this.lastAvail = (this.lastAvail + 1) & 0xffff;
    if (this.features.eventIdx && this.driverNotifications) {
      this.qm.store16Release(this.availEventOff, this.lastAvail);
    }
    return chain;
  }

  /**
   * popChain for a batch: avail idx read once, each chain recorded as it is taken, lastAvail and avail_event
   * written once at the end.
   */
  protected override popChains(out: DescriptorChain[], max: number): number {
    if (this.resubmitHeads.length > 0) return super.popChains(out, max);
    const end = Math.min(this.pendingAvail(), max);
    let at = this.lastAvail;
    let n = 0;
    if (end > 1) this.touchDescriptors(at, end);
    try {
      for (; n < end; n++) {
        const chain = this.walk(this.headAt(at));
        this.popped(chain);
        out[n] = chain;
        at = (at + 1) & 0xffff;
      }
    } catch (e) {
      if (n === 0) throw e;
    } finally {
      if (n > 0) {
        this.lastResubmitted = null;
        this.lastAvail = at;
        if (this.features.eventIdx && this.driverNotifications)
          this.qm.store16Release(this.availEventOff, at);
      }
    }
    return n;
  }

  /**
   * Loads the descriptors of available entries [at, at + end), one load each in a loop of loads alone, before a
   * batch is walked: their lines (the driver's CPU wrote them) come over together instead of one walk at a time.
   */
  private touchDescriptors(at: number, end: number): void {
    const u16 = this.qm.u16;
    if (u16 === null) return;
    const size = this.size;
    const ring = (this.availOff + 4) >>> 1;
    const table = (this.descOff + 12) >>> 1;
    let sum = 0;
    for (let k = 0; k < end; k++) {
      const head = u16[ring + ((at + k) & this.mask)] as number;
      if (head < size) sum += u16[table + 8 * head] as number;
    }
    this.touched += sum;
  }

  /**
   * popSingles: chains of one direct descriptor read as words, with the checks walk makes for one; at the first
   * entry of any other kind (a chain, an indirect table, the other direction, a zero length, a head out of range
   * or in flight, a buffer outside guest memory) the batch ends before it, and pop() walks it (and refuses it).
   */
  protected override popSinglesRaw(out: SingleBuffers, max: number, writable: boolean): number {
    const u32 = this.qm.u32;
    const u16 = this.qm.u16;
    if (u32 === null || u16 === null || (this.descOff & 3) !== 0 || this.resubmitHeads.length > 0) return 0;
    const end = Math.min(this.pendingAvail(), max);
    if (end === 0) return 0;
    const size = this.size;
    const mask = this.mask;
    const ring = (this.availOff + 4) >>> 1;
    const table = this.descOff >>> 2;
    const shape = VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_WRITE;
    const want = writable ? VIRTQ_DESC_F_WRITE : 0;
    let at = this.lastAvail;
    // A batch that does not start with such a chain takes none, and popBatch reads its descriptors ahead: not here
    // as well.
    const first = u16[ring + (at & mask)] as number;
    if (first >= size || ((u32[table + 4 * first + 3] as number) & shape) !== want) return 0;
    if (end > 1) this.touchDescriptors(at, end);
    const ids = out.ids;
    const offs = out.offs;
    const lens = out.lens;
    let n = 0;
    for (; n < end; n++) {
      const head = u16[ring + (at & mask)] as number;
      if (head >= size || this.isInFlight(head)) break;
      const d = table + 4 * head;
      const flags = (u32[d + 3] as number) & shape;
      const len = u32[d + 2] as number;
      const hi = u32[d + 1] as number;
      // As QueueMemory.addr64: an address above 2^53 - 1 is not taken.
      if (flags !== want || len === 0 || hi > MAX_SAFE_HIGH_WORD) break;
      const off = this.qm.offsetOf(hi * TWO_POW_32 + (u32[d] as number), len);
      if (off < 0) break;
      ids[n] = head;
      offs[n] = off;
      lens[n] = len;
      this.poppedSingle(head, off, len, writable);
      at = (at + 1) & 0xffff;
    }
    if (n > 0) {
      this.lastResubmitted = null;
      this.lastAvail = at;
      if (this.features.eventIdx && this.driverNotifications) this.qm.store16Release(this.availEventOff, at);
    }
    return n;
  }

  /**
   * Available entries not yet taken: counted from the avail idx as last read, which is read again (2.7.6) once
   * they are all taken (or when the count is stale).
   */
  private pendingAvail(): number {
    const size = this.size;
    const seen = (this.availSeen - this.lastAvail) & 0xffff;
    if (this.availSeen >= 0 && seen !== 0 && seen <= size) return seen;
    const availIdx = this.qm.load16Acquire(this.availOff + 2);
    const pending = (availIdx - this.lastAvail) & 0xffff;
    if (pending === 0) return 0;
    // 2.7.6.1: idx only grows, and the ring holds at most Queue Size entries, so it cannot be further ahead.
    if (pending > size) {
      throw this.malformed(
        `available idx ${availIdx} is ${pending} entries ahead of the last one seen (${this.lastAvail}), ` +
          `more than the queue size ${size} (or it moved backwards)`,
      );
    }
    this.availSeen = availIdx;
    return pending;
  }

  /** The head in available entry `at` (free-running), checked: below the size and not in flight. */
  private headAt(at: number): number {
    const slot = at & this.mask;
    const head = this.qm.u16le(this.availOff + 4 + 2 * slot);
    if (head >= this.size) {
      throw this.malformed(
        `available ring entry ${slot} holds head ${head}, not below the queue size ${this.size}`,
      );
    }
    if (this.isInFlight(head)) {
      throw this.malformed(
        `head ${head} (available ring entry ${slot}) is made available again while in flight`,
      );
    }
    return head;
  }

  /** Follows a chain from `head` through the descriptor table (2.7.5) and at most one indirect table. */
  private walk(head: number): DescriptorChain {
    const qm = this.qm;
    const size = this.size;
    const b = this.builder;
    let target = this.chains[head];
    if (target === undefined) {
      target = new MutableChain();
      this.chains[head] = target;
    }
    // A chain of one direct descriptor (what DPDK and Linux post for a frame): filled in place, with the checks
    // ChainBuilder.add makes for it, without the builder's bookkeeping.
    const first = this.descOff + DESC_SIZE * head;
    const firstFlags = qm.u16le(first + 12);
    if ((firstFlags & (VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_INDIRECT)) === 0) {
      const addr = qm.addr64(first);
      const len = qm.u32le(first + 8);
      const err = bufferError(qm, addr, len);
      if (err) throw this.malformed(`${err} (descriptor ${head}, chain head ${head})`);
      return target.setSingle(head, addr, len, (firstFlags & VIRTQ_DESC_F_WRITE) !== 0);
    }
    b.begin(target);
    let i = head;
    let count = 0;
    for (;;) {
      // 2.7.5.2: loops are forbidden; a chain visits each of the Queue Size descriptors at most once.
      if (count === size) {
        throw this.malformed(`chain from head ${head} visits more than ${size} descriptors: a loop`);
      }
      count++;
      const off = this.descOff + DESC_SIZE * i;
      const addr = qm.addr64(off);
      const len = qm.u32le(off + 8);
      const flags = qm.u16le(off + 12);
      const next = qm.u16le(off + 14);
      if (flags & VIRTQ_DESC_F_INDIRECT) {
        // 2.7.5.3.1 Driver Requirements: Indirect Descriptors.
        if (!this.features.indirect) {
          throw this.malformed(
            `descriptor ${i} (chain head ${head}) sets VIRTQ_DESC_F_INDIRECT but VIRTIO_F_INDIRECT_DESC is not negotiated`,
          );
        }
        if (flags & VIRTQ_DESC_F_NEXT) {
          throw this.malformed(
            `descriptor ${i} (chain head ${head}) sets both VIRTQ_DESC_F_INDIRECT and VIRTQ_DESC_F_NEXT`,
          );
        }
        // 2.7.5.3.2: zero or more direct descriptors followed by one indirect one; its WRITE flag is ignored.
        b.tables++;
        this.walkIndirect(b, addr, len, i, head);
        break;
      }
      const err = b.add(addr, len, (flags & VIRTQ_DESC_F_WRITE) !== 0);
      if (err) throw this.malformed(`${err} (descriptor ${i}, chain head ${head})`);
      if (!(flags & VIRTQ_DESC_F_NEXT)) break;
      if (next >= size) {
        throw this.malformed(
          `descriptor ${i} (chain head ${head}) has next ${next}, not below the queue size ${size}`,
        );
      }
      i = next;
    }
    return b.finish(head, count);
  }

  /** 2.7.5.3 Indirect Descriptors: a table of len/16 descriptors, chained by `next` from entry 0. */
  private walkIndirect(b: ChainBuilder, addr: number, len: number, desc: number, head: number): void {
    const qm = this.qm;
    const where = () =>
      `indirect table ${addr < 0 ? "above 2^53" : hex(addr)} (descriptor ${desc}, chain head ${head})`;
    if (len === 0 || len % DESC_SIZE !== 0) {
      throw this.malformed(`${where()} has length ${len}, not a non-zero multiple of ${DESC_SIZE}`);
    }
    const tableOff = addr < 0 ? -1 : qm.offsetOf(addr, len);
    if (tableOff < 0) {
      const mem = qm.mem;
      throw this.malformed(`${where()}+${len} is outside guest RAM (${hex(mem.base)}-${hex(mem.end)})`);
    }
    const entries = len / DESC_SIZE;
    let j = 0;
    let steps = 0;
    for (;;) {
      if (steps === entries)
        throw this.malformed(`${where()}: chain visits more than its ${entries} entries: a loop`);
      steps++;
      const off = tableOff + DESC_SIZE * j;
      const flags = qm.u16le(off + 12);
      // 2.7.5.3.1: only one table per descriptor: no VIRTQ_DESC_F_INDIRECT inside an indirect table.
      if (flags & VIRTQ_DESC_F_INDIRECT)
        throw this.malformed(`${where()}: entry ${j} sets VIRTQ_DESC_F_INDIRECT`);
      const err = b.add(qm.addr64(off), qm.u32le(off + 8), (flags & VIRTQ_DESC_F_WRITE) !== 0);
      if (err) throw this.malformed(`${err} (entry ${j} of ${where()})`);
      if (!(flags & VIRTQ_DESC_F_NEXT)) return;
      const next = qm.u16le(off + 14);
      if (next >= entries) {
        throw this.malformed(
          `${where()}: entry ${j} has next ${next}, outside the table's ${entries} entries`,
        );
      }
      j = next;
    }
  }

  /**
   * 2.7.8.2 Device Requirements: The Virtqueue Used Ring: the element is written before idx moves. The state's
   * usedIdx counts elements written; the ring's idx reaches it when they are published.
   */
  protected writeUsed(chain: DescriptorChain, written: number, publish: boolean): void {
    this.writeUsedSingle(chain.id, written, publish, chain.writableLength === 0);
  }

  protected override writeUsedSingle(id: number, written: number, publish: boolean, readOnly: boolean): void {
    const idx = this.usedIdx;
    if (readOnly && this.features.inOrder) {
      // 2.7.9 In-order use of descriptors: a batch of buffers is answered with one used element, at the offset of
      // the batch's first, holding the id of its last; the idx moves by the batch's size. Only device-readable
      // buffers are batched: the driver takes a skipped buffer as wholly used, and a receive buffer's length
      // matters (DPDK's in-order receive reads every element's).
      if (this.runStart < 0) this.runStart = idx;
      this.runId = id;
    } else {
      if (this.runStart >= 0) this.endRun();
      this.writeElement(idx, id, written);
    }
    this.usedIdx = (idx + 1) & 0xffff;
    this.usedSinceCheck++;
    this.unpublished = true;
    if (publish) this.publishPending();
  }

  /** Writes the one used element of the in-order batch that is open (writeUsedSingle): its last id, length 0. */
  private endRun(): void {
    this.writeElement(this.runStart, this.runId, 0);
    this.runStart = -1;
  }

  /** The used ring's element for free-running used index `idx`. */
  private writeElement(idx: number, id: number, len: number): void {
    const elem = this.usedOff + 4 + 8 * (idx & this.mask);
    this.qm.setU32(elem, id);
    this.qm.setU32(elem + 4, len);
  }

  protected publishPending(): void {
    if (!this.unpublished) return;
    this.unpublished = false;
    if (this.runStart >= 0) this.endRun();
    this.qm.store16Release(this.usedOff + 2, this.usedIdx);
  }

  /** 2.7.7.2 Device Requirements: Used Buffer Notification Suppression. */
  protected notifyDecision(): NotifyDecision {
    const count = this.usedSinceCheck;
    if (count === 0) return "none";
    const oldIdx = this.usedAtCheck;
    this.usedAtCheck = this.usedIdx;
    this.usedSinceCheck = 0;
    const qm = this.qm;
    if (!this.features.eventIdx) {
      // flags 1 (VIRTQ_AVAIL_F_NO_INTERRUPT): SHOULD NOT notify; 0: MUST notify.
      return qm.load16Acquire(this.availOff) & VIRTQ_AVAIL_F_NO_INTERRUPT ? "suppress" : "notify";
    }
    // With VIRTIO_F_EVENT_IDX the low bit of flags is ignored: notify iff one of the entries written since the
    // last decision went to index used_event. Past 2^16 entries the window covers every index.
    if (count >= 0x10000) return "notify";
    const usedEvent = qm.load16Acquire(this.usedEventOff);
    return needEvent(usedEvent, this.usedIdx, oldIdx) ? "notify" : "suppress";
  }

  /** "Available Buffer Notification Suppression", device requirements: flags, or avail_event with EVENT_IDX. */
  protected writeDriverNotifications(enabled: boolean): void {
    const qm = this.qm;
    this.driverNotifications = enabled;
    if (!this.features.eventIdx) {
      qm.store16Changed(this.usedOff, enabled ? 0 : VIRTQ_USED_F_NO_NOTIFY);
      return;
    }
    // With EVENT_IDX the device MUST set flags to 0 and uses avail_event: the driver notifies once it writes the
    // ring entry at avail_event. Enabled: the next entry we have not seen. Disabled: the entry just behind it,
    // which the driver reaches again only after 2^16 - 1 more entries.
    qm.store16Changed(this.usedOff, 0);
    qm.store16Changed(this.availEventOff, enabled ? this.lastAvail : (this.lastAvail - 1) & 0xffff);
  }
}
