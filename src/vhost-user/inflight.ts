/**
 * Inflight I/O tracking for split rings (QEMU docs/interop/vhost-user.rst, "Inflight I/O tracking", with
 * VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD): a shared buffer, kept by the front-end across back-end restarts, in
 * which the back-end marks each request it takes from a ring and unmarks it once the used ring says it is done.
 * A back-end that dies leaves the requests it had taken marked; the next one, given the same buffer
 * (VHOST_USER_SET_INFLIGHT_FD), resubmits them in the order they were taken, so none is lost or done twice.
 *
 * The buffer is one QueueRegionSplit per queue (the spec's layout; each region padded to 64 bytes here, which is
 * this back-end's choice: the front-end never reads the buffer):
 *
 *   features u64 (0) | version u16 (1; 0 = not initialized) | desc_num u16 | last_batch_head u16 | used_idx u16
 *   desc[desc_num]: inflight u8 | padding[5] | next u16 | counter u64
 *
 * The front-end is hostile and the buffer is its memory: every index read from it is bounds-checked, a region
 * that does not fit is refused, and the worst a corrupt buffer does is resubmit requests the front-end's own
 * ring then describes (each checked as any request is).
 *
 * The device model is not changed: `InflightTracker.wrap` wraps it so that every chain its handler is given is marked
 * taken, and every chain it finishes is linked into the last batch just before the queue writes its used element.
 * A batch is what the queue publishes with one used idx store (a drain slice's chains); its marks are cleared once
 * the used ring's idx, as the front-end sees it, covers them (checked before each link and when a slice ends).
 * Chains a handler detaches (DETACHED: virtio-blk with an I/O pool) stay marked while they are out, and are
 * linked when they come back through VirtioContext.completeDetached, in whatever order they end: each
 * completeDetached call is one batch (one used idx store), linked, published and settled as a slice's chains
 * are. Models that push used buffers any other way outside VirtioContext.drain are not tracked.
 */
import { fstatSync, ftruncateSync } from "node:fs";
import type { DrainOptions, VirtioContext, VirtioDeviceModel } from "../devices/virtio/device.ts";
import { type DescriptorChain, SplitQueue } from "../devices/virtio/queue/index.ts";
import { type ChainResult, DETACHED, IN_PROGRESS, type WorkBudget } from "../devices/virtio/work-budget.ts";
import { MFD_CLOEXEC, native } from "../native.ts";
import { VhostUserRequestError } from "./protocol.ts";

/** QueueRegionSplit header fields. */
const QR_FEATURES = 0;
const QR_VERSION = 8;
const QR_DESC_NUM = 10;
const QR_LAST_BATCH_HEAD = 12;
const QR_USED_IDX = 14;
const QR_HEADER = 16;
/** DescStateSplit: inflight u8 at 0, next u16 at 6, counter u64 at 8. */
const DS_SIZE = 16;
const DS_INFLIGHT = 0;
const DS_NEXT = 6;
const DS_COUNTER = 8;
/** "The version of this region. It's 1 currently. Zero value indicates an uninitialized buffer". */
const INFLIGHT_VERSION = 1;
const REGION_ALIGN = 64;
const PAGE = 4096;
/** 2.7: a split ring has at most 32768 entries. */
const MAX_QUEUE_SIZE = 32768;

/** Bytes of one queue's region for a ring of `queueSize` descriptors. */
export function queueRegionBytes(queueSize: number): number {
  const raw = QR_HEADER + DS_SIZE * queueSize;
  return Math.ceil(raw / REGION_ALIGN) * REGION_ALIGN;
}

/** The inflight description of GET/SET_INFLIGHT_FD ("Inflight description"). */
export interface InflightDescription {
  mmapSize: bigint;
  mmapOffset: bigint;
  numQueues: number;
  queueSize: number;
}

export function decodeInflight(bytes: Uint8Array): InflightDescription {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return {
    mmapSize: v.getBigUint64(0, true),
    mmapOffset: v.getBigUint64(8, true),
    numQueues: v.getUint16(16, true),
    queueSize: v.getUint16(18, true),
  };
}

export function inflightPayload(d: InflightDescription): Uint8Array {
  const p = new Uint8Array(24);
  const v = new DataView(p.buffer);
  v.setBigUint64(0, d.mmapSize, true);
  v.setBigUint64(8, d.mmapOffset, true);
  v.setUint16(16, d.numQueues, true);
  v.setUint16(18, d.queueSize, true);
  return p;
}

function checkShape(numQueues: number, queueSize: number, maxQueues: number): void {
  if (numQueues < 1 || numQueues > maxQueues) {
    throw new VhostUserRequestError(`inflight: num queues ${numQueues} is not 1 to ${maxQueues}`);
  }
  if (queueSize < 1 || queueSize > MAX_QUEUE_SIZE) {
    throw new VhostUserRequestError(`inflight: queue size ${queueSize} is not 1 to ${MAX_QUEUE_SIZE}`);
  }
}

/** The mapped inflight buffer: numQueues regions of queueRegionBytes(queueSize). */
export class InflightRegion {
  readonly view: DataView;
  readonly numQueues: number;
  readonly queueSize: number;

  private constructor(buffer: SharedArrayBuffer, numQueues: number, queueSize: number) {
    this.view = new DataView(buffer);
    this.numQueues = numQueues;
    this.queueSize = queueSize;
  }

  static bytes(numQueues: number, queueSize: number): number {
    return numQueues * queueRegionBytes(queueSize);
  }

  /**
   * VHOST_USER_GET_INFLIGHT_FD: a fresh zeroed buffer (every region version 0, "uninitialized") in a memfd.
   * Returns the fd (the caller sends it and closes it) and the reply's description.
   */
  static create(
    request: InflightDescription,
    maxQueues: number,
  ): { fd: number; description: InflightDescription } {
    checkShape(request.numQueues, request.queueSize, maxQueues);
    const size = InflightRegion.bytes(request.numQueues, request.queueSize);
    const fd = native().memfdCreate("vireo-vhost-user-inflight", MFD_CLOEXEC);
    try {
      // A new memfd reads as zeroes: every region starts uninitialized.
      ftruncateSync(fd, size);
    } catch (e) {
      native().close(fd);
      throw new VhostUserRequestError(`inflight: ftruncate: ${(e as Error).message}`);
    }
    return {
      fd,
      description: {
        mmapSize: BigInt(size),
        mmapOffset: 0n,
        numQueues: request.numQueues,
        queueSize: request.queueSize,
      },
    };
  }

  /**
   * VHOST_USER_SET_INFLIGHT_FD: maps the front-end's buffer after checking that it holds numQueues regions of
   * its queue size and that the file really has those bytes (touching past its end would raise SIGBUS). The fd
   * is not closed here.
   */
  static map(fd: number, d: InflightDescription, maxQueues: number): InflightRegion {
    checkShape(d.numQueues, d.queueSize, maxQueues);
    const need = InflightRegion.bytes(d.numQueues, d.queueSize);
    if (d.mmapSize < BigInt(need) || d.mmapSize > BigInt(need + PAGE)) {
      throw new VhostUserRequestError(
        `inflight: mmap size ${d.mmapSize} does not fit ${d.numQueues} queues of ${d.queueSize} (${need} bytes)`,
      );
    }
    if (d.mmapOffset % BigInt(PAGE) !== 0n || d.mmapOffset > BigInt(Number.MAX_SAFE_INTEGER - 2 * need)) {
      throw new VhostUserRequestError(`inflight: mmap offset 0x${d.mmapOffset.toString(16)} is not usable`);
    }
    const offset = Number(d.mmapOffset);
    let st: ReturnType<typeof fstatSync>;
    try {
      st = fstatSync(fd);
    } catch (e) {
      throw new VhostUserRequestError(`inflight: fstat: ${(e as Error).message}`);
    }
    if (!st.isFile()) throw new VhostUserRequestError("inflight: the fd is not a regular file (a memfd)");
    if (st.size < offset + need) {
      throw new VhostUserRequestError(
        `inflight: the file has ${st.size} bytes, the buffer needs ${offset + need}`,
      );
    }
    let buffer: SharedArrayBuffer;
    try {
      buffer = native().mmap(fd, need, offset).buffer;
    } catch (e) {
      throw new VhostUserRequestError(`inflight: mmap: ${(e as Error).message}`);
    }
    return new InflightRegion(buffer, d.numQueues, d.queueSize);
  }

  /** Byte offset of queue q's region. */
  regionOf(q: number): number {
    return q * queueRegionBytes(this.queueSize);
  }
}

/** How a ring resumes under inflight tracking. */
export interface ResumePlan {
  /** The next available index to read (used idx + requests in flight), or null to keep the front-end's base. */
  lastAvail: number | null;
  /** Heads to resubmit, oldest first. */
  resubmit: number[];
  /** Entries of the last batch cleared because the used ring already holds them. */
  settled: number;
}

/** One started ring's bookkeeping in its region. */
export class InflightQueue {
  private readonly v: DataView;
  private readonly base: number;
  private readonly descNum: number;
  /** "global counter": orders the requests taken. */
  private counter = 1;
  /** Heads linked into the last batch and not settled yet, oldest first. */
  private batch: number[] = [];
  /** Heads still to be resubmitted, in order. */
  readonly pending: number[] = [];
  /** Requests resubmitted at the start of this ring. */
  resubmitted = 0;

  constructor(
    region: InflightRegion,
    q: number,
    private readonly num: number,
  ) {
    this.v = region.view;
    this.base = region.regionOf(q);
    this.descNum = region.queueSize;
  }

  private ds(head: number): number {
    return this.base + QR_HEADER + DS_SIZE * head;
  }

  /**
   * At ring start, with the used ring's idx ("When reconnecting"): a fresh region is initialized; a used one has
   * its last batch settled and its inflight entries listed for resubmission, oldest first.
   */
  start(usedIdx: number, log: (m: string) => void): ResumePlan {
    const v = this.v;
    const b = this.base;
    const version = v.getUint16(b + QR_VERSION, true);
    if (version === 0) {
      v.setBigUint64(b + QR_FEATURES, 0n, true);
      v.setUint16(b + QR_DESC_NUM, this.descNum, true);
      v.setUint16(b + QR_LAST_BATCH_HEAD, 0, true);
      v.setUint16(b + QR_USED_IDX, usedIdx, true);
      for (let h = 0; h < this.descNum; h++) v.setUint8(this.ds(h) + DS_INFLIGHT, 0);
      v.setUint16(b + QR_VERSION, INFLIGHT_VERSION, true);
      return { lastAvail: null, resubmit: [], settled: 0 };
    }
    if (version !== INFLIGHT_VERSION) {
      throw new VhostUserRequestError(`inflight: region version ${version}, this back-end knows 1`);
    }
    const descNum = v.getUint16(b + QR_DESC_NUM, true);
    if (descNum !== this.descNum) {
      throw new VhostUserRequestError(
        `inflight: region desc_num ${descNum}, the buffer was made for queue size ${this.descNum}`,
      );
    }
    // 1. used_idx behind the used ring: the last batch reached the ring; its inflight marks are stale.
    let settled = 0;
    const regionUsed = v.getUint16(b + QR_USED_IDX, true);
    if (regionUsed !== usedIdx) {
      const batch = (usedIdx - regionUsed) & 0xffff;
      let h = v.getUint16(b + QR_LAST_BATCH_HEAD, true);
      // A batch is at most a ring's worth; the list is the front-end's memory, so it is walked with bounds.
      for (let k = 0; k < Math.min(batch, this.descNum) && h < this.descNum; k++) {
        v.setUint8(this.ds(h) + DS_INFLIGHT, 0);
        settled++;
        h = v.getUint16(this.ds(h) + DS_NEXT, true);
      }
      v.setUint16(b + QR_USED_IDX, usedIdx, true);
    }
    // 2. "Resubmit inflight DescStateSplit entries in order of their counter value".
    const found: Array<{ head: number; counter: bigint }> = [];
    for (let h = 0; h < this.descNum; h++) {
      const flag = v.getUint8(this.ds(h) + DS_INFLIGHT);
      if (flag === 0) continue;
      if (flag !== 1 || h >= this.num) {
        log(`inflight: entry ${h} (flag ${flag}) is not a request of this ring of ${this.num}: cleared`);
        v.setUint8(this.ds(h) + DS_INFLIGHT, 0);
        continue;
      }
      found.push({ head: h, counter: v.getBigUint64(this.ds(h) + DS_COUNTER, true) });
    }
    found.sort((x, y) => (x.counter < y.counter ? -1 : x.counter > y.counter ? 1 : x.head - y.head));
    const last = found[found.length - 1];
    // The next counter follows the newest one kept (a number is exact far beyond any real count).
    if (last !== undefined && last.counter < 2n ** 52n) this.counter = Number(last.counter) + 1;
    this.pending.push(...found.map((f) => f.head));
    this.resubmitted = found.length;
    return { lastAvail: (usedIdx + found.length) & 0xffff, resubmit: this.pending.slice(), settled };
  }

  /** "When receiving available buffers": counter, then the inflight flag. Idempotent for a marked head. */
  take(head: number): void {
    const at = this.ds(head);
    if (this.v.getUint8(at + DS_INFLIGHT) === 1) {
      const i = this.pending.indexOf(head);
      if (i >= 0) this.pending.splice(i, 1);
      return;
    }
    const c = this.counter++;
    this.v.setUint32(at + DS_COUNTER, c % 2 ** 32, true);
    this.v.setUint32(at + DS_COUNTER + 4, Math.floor(c / 2 ** 32), true);
    this.v.setUint8(at + DS_INFLIGHT, 1);
  }

  /**
   * "When supplying used buffers", steps 1-3, just before the queue writes the head's used element. A batch is
   * what the queue publishes with one used idx store (a drain slice's chains): if the ring's idx moved since the
   * last settle, that batch is settled first, so the list from last_batch_head holds exactly the heads written
   * since the last settle, newest first, which is what recovery walks.
   */
  link(head: number, ringIdx: number): void {
    this.settle(ringIdx);
    const b = this.base;
    this.v.setUint16(this.ds(head) + DS_NEXT, this.v.getUint16(b + QR_LAST_BATCH_HEAD, true), true);
    this.v.setUint16(b + QR_LAST_BATCH_HEAD, head, true);
    this.batch.push(head);
  }

  /**
   * Steps 5-6 once the used ring's published idx (`ringIdx`, as the driver and a later back-end see it) has moved
   * past the batch's heads: their inflight flags off, then used_idx = the ring's idx. Not moved (not yet published,
   * or the push failed and the device stopped): the heads stay in flight.
   */
  settle(ringIdx: number): void {
    if (this.batch.length === 0) return;
    const b = this.base;
    const done = Math.min((ringIdx - this.v.getUint16(b + QR_USED_IDX, true)) & 0xffff, this.batch.length);
    if (done === 0) return;
    for (let i = 0; i < done; i++) this.v.setUint8(this.ds(this.batch[i] as number) + DS_INFLIGHT, 0);
    this.v.setUint16(b + QR_USED_IDX, ringIdx, true);
    this.batch = this.batch.slice(done);
  }

  /** Requests marked in flight now (for tests and logs). */
  inflightHeads(): number[] {
    const out: number[] = [];
    for (let h = 0; h < this.descNum; h++) if (this.v.getUint8(this.ds(h) + DS_INFLIGHT) === 1) out.push(h);
    return out;
  }
}

/**
 * A connection's inflight tracking: the region the front-end set, and the started rings tracked in it. The
 * back-end calls start/stop around each ring; the model wrapper (wrap) does the per-request bookkeeping.
 */
export class InflightTracker {
  region: InflightRegion | null = null;
  private readonly queues: Array<InflightQueue | undefined>;

  constructor(
    numQueues: number,
    /** The idx ring q's used ring holds now (published: what the front-end and a later back-end see). */
    private readonly usedIdx: (q: number) => number,
  ) {
    this.queues = new Array(numQueues).fill(undefined);
  }

  queue(q: number): InflightQueue | undefined {
    return this.queues[q];
  }

  /** Ring q starts: null without a region (untracked), else how it resumes. Throws for a region that does not fit. */
  start(q: number, num: number, usedIdx: number, log: (m: string) => void): ResumePlan | null {
    this.queues[q] = undefined;
    const region = this.region;
    if (region === null) return null;
    if (q >= region.numQueues) {
      throw new VhostUserRequestError(`vring ${q}: the inflight buffer covers ${region.numQueues} queues`);
    }
    if (num > region.queueSize) {
      throw new VhostUserRequestError(
        `vring ${q}: size ${num} is above the inflight buffer's queue size ${region.queueSize}`,
      );
    }
    const iq = new InflightQueue(region, q, num);
    const plan = iq.start(usedIdx, log);
    this.queues[q] = iq;
    return plan;
  }

  stop(q: number): void {
    this.queues[q] = undefined;
  }

  /** The model, its chains tracked in the region while their ring is. */
  wrap(model: VirtioDeviceModel): VirtioDeviceModel {
    return new InflightModel(model, this, this.usedIdx);
  }
}

/** A device model whose drain handlers mark, link and settle each chain (see the file comment). */
class InflightModel implements VirtioDeviceModel {
  readonly type: number;
  readonly name: string;
  readonly numQueues: number;
  readonly maxQueueSize: number;
  readonly features: bigint;
  readonly configSize: number;
  readonly stateBytes: number;
  writeConfig?: (offset: number, data: Uint8Array) => void;
  validateFeatures?: (accepted: bigint) => string | null;
  activate?: () => void;
  reset?: () => void;
  settleDetached?: (q: number) => void;

  constructor(
    private readonly inner: VirtioDeviceModel,
    private readonly tracker: InflightTracker,
    private readonly usedIdx: (q: number) => number,
  ) {
    this.type = inner.type;
    this.name = inner.name;
    this.numQueues = inner.numQueues;
    this.maxQueueSize = inner.maxQueueSize;
    this.features = inner.features;
    this.configSize = inner.configSize;
    this.stateBytes = inner.stateBytes;
    if (inner.writeConfig) this.writeConfig = (o, d) => inner.writeConfig?.(o, d);
    if (inner.validateFeatures) this.validateFeatures = (a) => inner.validateFeatures?.(a) ?? null;
    if (inner.activate) this.activate = () => inner.activate?.();
    if (inner.reset) this.reset = () => inner.reset?.();
    if (inner.settleDetached) this.settleDetached = (q) => inner.settleDetached?.(q);
  }

  bind(ctx: VirtioContext): void {
    const drain = (
      q: number,
      handle: (c: DescriptorChain, w: WorkBudget) => ChainResult,
      opts?: DrainOptions,
    ): void => {
      const iq = this.tracker.queue(q);
      if (iq === undefined) {
        ctx.drain(q, handle, opts);
        return;
      }
      // The queue object may be new (a new memory table rebuilds the device): give it what is left to resubmit.
      if (iq.pending.length > 0) {
        ctx.withQueue(q, (vq) => {
          if (vq instanceof SplitQueue) vq.resubmit(iq.pending);
        });
      }
      ctx.drain(
        q,
        (chain, work) => {
          iq.take(chain.id);
          const r = handle(chain, work);
          if (r !== IN_PROGRESS && r !== DETACHED) iq.link(chain.id, this.usedIdx(q));
          return r;
        },
        // Every chain goes through the handler above, which marks it: no flat form (readableSingle) here. Options
        // without one (blk's) pass as they are, with no object made per drain.
        opts?.readableSingle === undefined ? opts : { readAhead: opts.readAhead },
      );
      iq.settle(this.usedIdx(q));
    };
    const completeDetached: VirtioContext["completeDetached"] = (q, done, beforePush) => {
      const iq = this.tracker.queue(q);
      if (iq === undefined) return ctx.completeDetached(q, done, beforePush);
      const pushed = ctx.completeDetached(q, done, (chain) => {
        beforePush?.(chain);
        iq.link(chain.id, this.usedIdx(q));
      });
      iq.settle(this.usedIdx(q));
      return pushed;
    };
    this.inner.bind(Object.assign(Object.create(ctx) as VirtioContext, { drain, completeDetached }));
  }

  readConfig(offset: number, data: Uint8Array): void {
    this.inner.readConfig(offset, data);
  }

  queueNotified(q: number): void {
    this.inner.queueNotified(q);
  }
}
