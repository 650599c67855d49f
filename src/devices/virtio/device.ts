/**
 * The virtio device core (OASIS virtio 1.2, 2 Basic Facilities of a Virtio Device and 3 General Initialization
 * And Device Operation), independent of the transport and of the thread it runs on.
 *
 * A VirtioDevice joins a device-type model (blk, net, console, rng: features, configuration space, queue
 * processing; see VirtioDeviceModel) to the state every virtio device has: the device status state machine
 * (2.1), feature negotiation (2.2), the configuration generation (2.5), the virtqueues' configuration (2.6) and
 * interrupt delivery. A transport (pci-transport.ts) maps its registers onto the methods here.
 *
 * All mutable state lives in a SharedArrayBuffer (createState): every thread that may serve the device (each
 * vCPU thread trapping a register access, an ioeventfd worker serving a queue notification, a backend I/O thread
 * injecting received data) builds its own VirtioDevice, with its own model object, over the same state. Locks in
 * the state keep them one device:
 * - the device lock serializes register accesses (status, features, queue configuration, device config);
 * - each queue has a lock held while the queue is processed, so different queues run in parallel on different
 *   threads. Lock order: device lock, then queue locks in ascending order; queue processing never takes the
 *   device lock (it reads the status with atomics and sets DEVICE_NEEDS_RESET with an atomic OR).
 *
 * The guest is hostile: a malformed ring (VirtqueueError), a malformed request (VirtioRequestError) or anything
 * else thrown while serving a notification sets DEVICE_NEEDS_RESET and sends a configuration change
 * notification (2.1.2), reported once through `log`; nothing is thrown out of a register access or `notify`.
 */
import { VireoError } from "../../errors.ts";
import type { GuestMemory } from "../../memory/guest-memory.ts";
import { type Counter, type MetricsSink, NO_COUNTER } from "../../metrics/registry.ts";
import {
  DeviceBusyError,
  type DeviceState,
  DeviceStateError,
  type StateObject,
  StateReader,
} from "../../shared/device-state.ts";
import { SharedLock } from "../../shared/shared-lock.ts";
import {
  hasFeature,
  TRANSPORT_FEATURES,
  VIRTIO_F,
  VIRTIO_MSI_NO_VECTOR,
  VIRTIO_STATUS,
} from "./constants.ts";
import {
  createVirtqueue,
  type DescriptorChain,
  PackedQueue,
  QUEUE_STATE_WORDS,
  ReadAhead,
  SingleBuffers,
  SplitQueue,
  unpopRange,
  type Virtqueue,
  VirtqueueError,
} from "./queue/index.ts";
import {
  type ChainResult,
  checkBudget,
  DEFAULT_NOTIFY_BUDGET,
  DETACHED,
  type Defer,
  IN_PROGRESS,
  type NotifyBudget,
  type SliceStats,
  WorkBudget,
} from "./work-budget.ts";

/** How a device's interrupts leave it; the transport turns them into MSI-X messages or INTx plus ISR bits. */
export interface VirtioInterrupts {
  /** A used buffer notification for a queue whose vector (queue_msix_vector) is `vector`. */
  queue(vector: number): void;
  /** A configuration change notification; `vector` is config_msix_vector. */
  config(vector: number): void;
}

/** How VirtioContext.drain serves a queue, beyond handing each chain to the handler. */
export interface DrainOptions {
  /**
   * Bytes at the start of each buffer the handler reads (a transmit queue: the header and what the backend reads
   * of the frame): before each batch of POP_BATCH chains, those bytes of their buffers are read ahead
   * (ReadAhead, after the chains are popped), so that their transfers from the driver's CPU overlap instead of stalling each chain
   * in turn. Default 0: none.
   */
  readAhead?: number;
  /**
   * Optional: the handler for chains of one device-readable descriptor, served without a chain object
   * (Virtqueue.popSingles): it gets the buffer's offset in mem.bytes (the whole buffer checked inside guest
   * memory), its length and the chain's id (for messages), and returns the bytes it wrote (0: the buffer is
   * device-readable). It finishes the chain (no IN_PROGRESS or DETACHED) and charges its work with work.spend.
   * Chains of any other shape go to the chain handler, in ring order.
   */
  readableSingle?: (off: number, len: number, id: number, work: WorkBudget) => number;
}

/**
 * What a device type provides. One object per thread, all over the same VirtioDevice state; whatever a model
 * must share between threads goes in its `stateBytes` region (VirtioContext.state).
 */
export interface VirtioDeviceModel {
  /** Virtio Device ID (5 Device Types). */
  readonly type: number;
  readonly name: string;
  readonly numQueues: number;
  /** Queue Size the device offers (queue_size after reset). */
  readonly maxQueueSize: number;
  /** Device-type feature bits offered; the core adds the transport features (TRANSPORT_FEATURES). */
  readonly features: bigint;
  /**
   * The transport features this model's place can serve, when not all of TRANSPORT_FEATURES (a vhost-user
   * front-end offers only what its back-end serves). Default TRANSPORT_FEATURES.
   */
  readonly transportFeatures?: bigint;
  /**
   * The rings are served by another process (a vhost-user back-end): this device's own ring indices are never
   * moved, so a snapshot does not check them for requests in flight (the back-end's rings are stopped instead,
   * and the used rings in guest memory say where each resumes).
   */
  readonly externalRings?: boolean;
  /** Bytes of device-specific configuration space. */
  readonly configSize: number;
  /** Bytes of shared state the model needs (zeroed when the state is created). */
  readonly stateBytes: number;
  /** Called once by the VirtioDevice constructor. */
  bind(ctx: VirtioContext): void;
  /** Reads device-specific configuration (offset and data within configSize). Runs under the device lock. */
  readConfig(offset: number, data: Uint8Array): void;
  /** Writes device-specific configuration; most fields are read-only. Runs under the device lock. */
  writeConfig?(offset: number, data: Uint8Array): void;
  /** Device-type feature rules (dependencies between bits): a reason to refuse FEATURES_OK, or null. */
  validateFeatures?(accepted: bigint): string | null;
  /**
   * An available buffer notification for queue `q` (or the device just became live). Called with no lock held;
   * the model processes the queue inside ctx.withQueue / ctx.drain.
   */
  queueNotified(q: number): void;
  /** The driver set DRIVER_OK. Called with no lock held. Default: queueNotified for every queue. */
  activate?(): void;
  /** The device was reset. Runs under the device lock with every queue idle. */
  reset?(): void;
  /**
   * Models that detach chains (DETACHED): blocks until every chain of queue q handed to other threads is back and
   * returned with completeDetached (a host about to stop the ring: vhost-user GET_VRING_BASE). Called with no lock
   * held.
   */
  settleDetached?(q: number): void;
  /**
   * Snapshots: checks a saved copy of the model's shared state region (stateBytes bytes, from a file that may be
   * hostile) before it is restored; a reason to refuse it, or null. Models without a region need none.
   */
  checkState?(region: Uint8Array): string | null;
}

/** What the core offers a model. */
export interface VirtioContext {
  readonly mem: GuestMemory;
  readonly name: string;
  /** The model's shared state region (stateBytes bytes). */
  readonly state: DataView;
  readonly stateBuffer: SharedArrayBuffer;
  /** Byte offset of `state` in stateBuffer (8-aligned). */
  readonly stateOffset: number;
  readonly metrics: MetricsSink | undefined;
  /** Negotiated features (meaningful once FEATURES_OK is set). */
  features(): bigint;
  hasFeature(bit: number): boolean;
  /** DRIVER_OK set and DEVICE_NEEDS_RESET clear: the device may use its queues. */
  running(): boolean;
  /**
   * Runs `fn` under queue q's lock with the queue (null if the device is not running or the queue is not
   * enabled). Anything `fn` throws sets DEVICE_NEEDS_RESET; withQueue then returns undefined.
   */
  withQueue<T>(q: number, fn: (vq: Virtqueue | null) => T): T | undefined;
  /**
   * The standard handling loop for queue q (see queue/index.ts), within the device's work budget: available
   * chains go to `handle`, which returns the bytes it wrote (the chain is then used) or IN_PROGRESS (the device
   * keeps the chain and hands it to `handle` again, first, in the next slice; `work.spend` says how far it got).
   * When the budget is spent the rest of the ring waits for the next slice, which the device has arranged
   * (VirtioDeviceOptions.defer). Sends the used buffer notification if the driver wants one.
   */
  drain(
    q: number,
    handle: (chain: DescriptorChain, work: WorkBudget) => ChainResult,
    opts?: DrainOptions,
  ): void;
  /** After pushing used buffers on `vq` outside drain: notify the driver if it asked to be. */
  notifyUsed(q: number, vq: Virtqueue): void;
  /**
   * Returns chains of queue q whose handler returned DETACHED, in any order, as one used batch: each is pushed
   * with its `written` bytes (`beforePush` first: inflight tracking links it), the used idx moves once, and the
   * driver is notified if it asked to be. A chain whose queue was reset since it was taken is dropped (its ring
   * is gone). Returns the chains pushed.
   */
  completeDetached(
    q: number,
    done: ReadonlyArray<{ chain: DescriptorChain; written: number }>,
    beforePush?: (chain: DescriptorChain) => void,
  ): number;
  /** The device changed its configuration space: bump config_generation and notify the driver (2.5). */
  configChanged(): void;
  /** The device cannot go on: set DEVICE_NEEDS_RESET and tell the driver (2.1.2). */
  needsReset(reason: string): void;
  /** A warning for the log (for problems that do not stop the device). */
  warn(message: string): void;
}

/** A request the driver formed in a way the device type forbids; the device sets DEVICE_NEEDS_RESET. */
export class VirtioRequestError extends VireoError {
  constructor(message: string) {
    super("VIREO_VIRTIO_REQUEST", message);
  }
}

export class VirtioStateError extends VireoError {
  constructor(message: string) {
    super("VIREO_VIRTIO_STATE", message);
  }
}

// ---- shared state layout (Int32 words) ----------------------------------------------------------------------

const H_LOCK = 0;
const H_MAGIC = 1;
const H_STATUS = 2;
const H_GENERATION = 3;
const H_DEVICE_FEATURE_SELECT = 4;
const H_DRIVER_FEATURE_SELECT = 5;
const H_DRIVER_FEATURES_LO = 6;
const H_DRIVER_FEATURES_HI = 7;
const H_QUEUE_SELECT = 8;
const H_CONFIG_VECTOR = 9;
const H_ISR = 10;
const H_NUM_QUEUES = 11;
const HEADER_WORDS = 16;

const Q_LOCK = 0;
const Q_SIZE = 1;
const Q_ENABLE = 2;
const Q_VECTOR = 3;
const Q_DESC = 4; // lo, hi
const Q_DRIVER = 6; // lo, hi
const Q_DEVICE = 8; // lo, hi
const Q_EPOCH = 10;
const Q_STATE = 16;
const QUEUE_WORDS = Q_STATE + QUEUE_STATE_WORDS;

const MAGIC = 0x76697274; // "virt"
const STATE_KIND = "virtio-device";
const STATE_VERSION = 1;
/** Status bits a device can hold (2.1). */
const STATUS_BITS =
  VIRTIO_STATUS.ACKNOWLEDGE |
  VIRTIO_STATUS.DRIVER |
  VIRTIO_STATUS.DRIVER_OK |
  VIRTIO_STATUS.FEATURES_OK |
  VIRTIO_STATUS.DEVICE_NEEDS_RESET |
  VIRTIO_STATUS.FAILED;

/** Per-queue fields of the common configuration, as transports name them (4.1.4.3). */
export type QueueField =
  | "size"
  | "msix_vector"
  | "enable"
  | "desc_lo"
  | "desc_hi"
  | "driver_lo"
  | "driver_hi"
  | "device_lo"
  | "device_hi"
  | "reset";

const QUEUE_FIELD_WORD: Record<Exclude<QueueField, "enable" | "reset">, number> = {
  size: Q_SIZE,
  msix_vector: Q_VECTOR,
  desc_lo: Q_DESC,
  desc_hi: Q_DESC + 1,
  driver_lo: Q_DRIVER,
  driver_hi: Q_DRIVER + 1,
  device_lo: Q_DEVICE,
  device_hi: Q_DEVICE + 1,
};

export interface VirtioStateLayout {
  numQueues: number;
  /** The model's shared state bytes. */
  stateBytes?: number;
}

function align8(n: number): number {
  return Math.ceil(n / 8) * 8;
}

function layoutBytes(numQueues: number): number {
  return align8(4 * (HEADER_WORDS + numQueues * QUEUE_WORDS));
}

/** Bytes of shared state a device with this layout needs. */
export function virtioStateBytes(layout: VirtioStateLayout): number {
  return layoutBytes(layout.numQueues) + align8(layout.stateBytes ?? 0);
}

/** Writes the reset state of the core part (not the model's region) into `words`. */
function initCore(words: Int32Array, numQueues: number, maxQueueSize: number): void {
  words.fill(0, 0, HEADER_WORDS + numQueues * QUEUE_WORDS);
  SharedLock.init(words.buffer as SharedArrayBuffer, words.byteOffset + 4 * H_LOCK);
  words[H_CONFIG_VECTOR] = VIRTIO_MSI_NO_VECTOR;
  words[H_NUM_QUEUES] = numQueues;
  for (let q = 0; q < numQueues; q++) {
    const b = HEADER_WORDS + q * QUEUE_WORDS;
    words[b + Q_SIZE] = maxQueueSize;
    words[b + Q_VECTOR] = VIRTIO_MSI_NO_VECTOR;
  }
}

export interface VirtioDeviceOptions {
  /** From VirtioDevice.createState (or any buffer of virtioStateBytes, with `init: true` on exactly one thread). */
  state: SharedArrayBuffer;
  /** Reset the state here. Exactly one constructor, before the state is shared, passes true. */
  init?: boolean;
  model: VirtioDeviceModel;
  /** Guest RAM as this thread sees it. */
  mem: GuestMemory;
  interrupts: VirtioInterrupts;
  metrics?: MetricsSink;
  /** Problems the guest caused (once per DEVICE_NEEDS_RESET) and warnings. Default: stderr. */
  log?: (message: string) => void;
  /** The work one notification (one slice) may cost; default DEFAULT_NOTIFY_BUDGET. */
  budget?: NotifyBudget;
  /**
   * How the place the device runs on brings it back to a queue it left unfinished. Default: an internal list,
   * run by `serveDeferred()` (for callers that drive the device themselves, like tests).
   */
  defer?: Defer;
}

/**
 * The feature bits a model's device offers: its device-type features and the transport features it serves (all of
 * TRANSPORT_FEATURES unless it says otherwise). One definition for the device and for a vhost-user back-end's
 * GET_FEATURES, so that the two cannot disagree.
 */
export function modelFeatures(model: VirtioDeviceModel): bigint {
  return model.features | (model.transportFeatures ?? TRANSPORT_FEATURES);
}

const defaultLog = (message: string): void => {
  process.stderr.write(`vireo: ${message}\n`);
};

interface CachedQueue {
  epoch: number;
  vq: Virtqueue;
}

/** A chain a handler has not finished, kept by the queue object that popped it (this thread's). */
interface PartialChain {
  vq: Virtqueue;
  chain: DescriptorChain;
}

export class VirtioDevice {
  readonly model: VirtioDeviceModel;
  readonly name: string;
  readonly numQueues: number;
  readonly maxQueueSize: number;
  /** Every feature offered: the model's plus TRANSPORT_FEATURES. */
  readonly offeredFeatures: bigint;
  readonly mem: GuestMemory;
  private readonly words: Int32Array;
  private readonly lock: SharedLock;
  private readonly queueLocks: SharedLock[];
  private readonly queueCache: Array<CachedQueue | undefined>;
  private readonly interrupts: VirtioInterrupts;
  private readonly log: (message: string) => void;
  private readonly metrics: MetricsSink | undefined;
  /** Work to run once the device lock is released (model callbacks that may call out of the device). */
  private deferred: Array<() => void> = [];
  private readonly cNotifications: Counter;
  private readonly cQueueInterrupts: Counter;
  private readonly cConfigInterrupts: Counter;
  private readonly cErrors: Counter;
  private readonly cNegotiationFailures: Counter;
  private readonly ctx: VirtioContext;
  private readonly budget: Readonly<Required<NotifyBudget>>;
  private readonly deferTo: Defer;
  /** Work handed to the default defer hook, run by serveDeferred(). */
  private laterList: Array<() => void> = [];
  /** Per queue: a slice is already scheduled on this thread. */
  private readonly resumeScheduled: boolean[];
  private readonly partial: Array<PartialChain | undefined>;
  /** A poller serves the queues without waiting for kicks: see setPolled. */
  private polled = false;
  /** Per queue, the chains handed to other threads (DETACHED) and the queue object that popped each. */
  private readonly detached: Array<Map<DescriptorChain, Virtqueue>>;
  private readonly cSlicesCut: Counter;
  /** The cost of this object's slices of queue work so far. */
  readonly sliceStats: SliceStats = { slices: 0, maxBytes: 0, maxChains: 0, maxDescriptors: 0 };

  /** A fresh state buffer for a device with `layout` (a model object has the right shape). */
  static createState(layout: VirtioStateLayout & { maxQueueSize?: number }): SharedArrayBuffer {
    const state = new SharedArrayBuffer(virtioStateBytes(layout));
    const words = new Int32Array(state);
    initCore(words, layout.numQueues, layout.maxQueueSize ?? 0);
    // The magic goes last: a thread that sees it sees the rest.
    Atomics.store(words, H_MAGIC, MAGIC);
    return state;
  }

  constructor(opts: VirtioDeviceOptions) {
    const { state, model } = opts;
    if (!(state instanceof SharedArrayBuffer)) {
      throw new VirtioStateError(
        "VirtioDevice: state must be a SharedArrayBuffer (it is shared between threads)",
      );
    }
    const need = virtioStateBytes(model);
    if (state.byteLength < need) {
      throw new VirtioStateError(
        `VirtioDevice ${model.name}: state has ${state.byteLength} bytes, needs ${need}`,
      );
    }
    const n = model.numQueues;
    if (!Number.isInteger(n) || n < 1 || n > 0x8000) {
      throw new VirtioStateError(`VirtioDevice ${model.name}: ${n} queues is not in 1..32768`);
    }
    this.words = new Int32Array(state, 0, HEADER_WORDS + n * QUEUE_WORDS);
    if (opts.init) {
      initCore(this.words, n, model.maxQueueSize);
      new Uint8Array(state, layoutBytes(n), align8(model.stateBytes)).fill(0);
      Atomics.store(this.words, H_MAGIC, MAGIC);
    }
    if (Atomics.load(this.words, H_MAGIC) !== MAGIC) {
      throw new VirtioStateError(
        `VirtioDevice ${model.name}: state is not initialized (use VirtioDevice.createState or init: true)`,
      );
    }
    if (this.words[H_NUM_QUEUES] !== n) {
      throw new VirtioStateError(
        `VirtioDevice ${model.name}: state was made for ${this.words[H_NUM_QUEUES]} queues, the model has ${n}`,
      );
    }
    // createState without maxQueueSize leaves queue sizes 0: fill them in once (idempotent across threads).
    for (let q = 0; q < n; q++) {
      Atomics.compareExchange(this.words, this.qb(q) + Q_SIZE, 0, model.maxQueueSize);
    }
    this.model = model;
    this.name = model.name;
    this.numQueues = n;
    this.maxQueueSize = model.maxQueueSize;
    this.offeredFeatures = modelFeatures(model);
    this.mem = opts.mem;
    this.interrupts = opts.interrupts;
    this.log = opts.log ?? defaultLog;
    this.metrics = opts.metrics;
    this.lock = new SharedLock(state, 4 * H_LOCK);
    this.queueLocks = [];
    for (let q = 0; q < n; q++) this.queueLocks.push(new SharedLock(state, 4 * (this.qb(q) + Q_LOCK)));
    this.queueCache = new Array(n).fill(undefined);
    this.partial = new Array(n).fill(undefined);
    this.detached = Array.from({ length: n }, () => new Map());
    this.resumeScheduled = new Array(n).fill(false);
    const budget = opts.budget ?? DEFAULT_NOTIFY_BUDGET;
    const bad = checkBudget(budget);
    if (bad !== null) throw new VirtioStateError(`VirtioDevice ${model.name}: budget: ${bad}`);
    this.budget = {
      chains: budget.chains,
      bytes: budget.bytes,
      descriptors: budget.descriptors ?? DEFAULT_NOTIFY_BUDGET.descriptors,
    };
    this.deferTo = opts.defer ?? ((work) => this.laterList.push(work));
    const m = opts.metrics;
    const prefix = `virtio.${this.name}`;
    this.cNotifications = m?.counter(`${prefix}.notifications`) ?? NO_COUNTER;
    this.cQueueInterrupts = m?.counter(`${prefix}.queue_interrupts`) ?? NO_COUNTER;
    this.cConfigInterrupts = m?.counter(`${prefix}.config_interrupts`) ?? NO_COUNTER;
    this.cErrors = m?.counter(`${prefix}.errors`) ?? NO_COUNTER;
    this.cNegotiationFailures = m?.counter(`${prefix}.negotiation_failures`) ?? NO_COUNTER;
    this.cSlicesCut = m?.counter(`${prefix}.budget_exhausted`) ?? NO_COUNTER;
    const stateOffset = layoutBytes(n);
    const stateView = new DataView(state, stateOffset, align8(model.stateBytes));
    this.ctx = {
      mem: opts.mem,
      name: this.name,
      state: stateView,
      stateBuffer: state,
      stateOffset,
      metrics: m,
      features: () => this.negotiatedFeatures,
      hasFeature: (bit) => this.negotiated(bit),
      running: () => this.running,
      withQueue: (q, fn) => this.withQueue(q, fn),
      drain: (q, handle, opts) => this.drain(q, handle, opts),
      notifyUsed: (q, vq) => {
        if (vq.shouldNotifyDriver()) this.raiseQueue(q);
      },
      completeDetached: (q, done, beforePush) => this.completeDetached(q, done, beforePush),
      configChanged: () => this.configChanged(),
      needsReset: (reason) => this.needsReset(reason),
      warn: (message) => this.log(`virtio ${this.name}: ${message}`),
    };
    model.bind(this.ctx);
  }

  private qb(q: number): number {
    return HEADER_WORDS + q * QUEUE_WORDS;
  }

  /** Runs `fn` under the device lock, then whatever it deferred. */
  private locked<T>(fn: () => T): T {
    this.lock.lock();
    let result: T;
    try {
      result = fn();
    } finally {
      this.lock.unlock();
    }
    this.runDeferred();
    return result;
  }

  private runDeferred(): void {
    while (this.deferred.length > 0) {
      const work = this.deferred;
      this.deferred = [];
      for (const fn of work) this.guard("deferred work", fn);
    }
  }

  /** Runs a model callback; anything it throws sets DEVICE_NEEDS_RESET instead of leaving the device. */
  private guard(what: string, fn: () => void): void {
    try {
      fn();
    } catch (e) {
      this.needsReset(`${what}: ${describeError(e)}`);
    }
  }

  // ---- device status (2.1) ----------------------------------------------------------------------------------

  get status(): number {
    return Atomics.load(this.words, H_STATUS) & 0xff;
  }

  /** DRIVER_OK set and DEVICE_NEEDS_RESET clear. */
  get running(): boolean {
    const s = this.status;
    return (s & (VIRTIO_STATUS.DRIVER_OK | VIRTIO_STATUS.DEVICE_NEEDS_RESET)) === VIRTIO_STATUS.DRIVER_OK;
  }

  /** A driver write of device_status. */
  writeStatus(value: number): void {
    this.locked(() => {
      const v = value & 0xff;
      // 4.1.4.3.1 / 2.4: writing 0 resets the device.
      if (v === 0) {
        this.resetLocked();
        return;
      }
      for (;;) {
        const old = Atomics.load(this.words, H_STATUS);
        // DEVICE_NEEDS_RESET belongs to the device: the driver neither sets nor clears it.
        let next = (v & ~VIRTIO_STATUS.DEVICE_NEEDS_RESET) | (old & VIRTIO_STATUS.DEVICE_NEEDS_RESET);
        if (next & VIRTIO_STATUS.FEATURES_OK && !(old & VIRTIO_STATUS.FEATURES_OK)) {
          // 2.2.2 / 3.1.1: the device refuses FEATURES_OK (it reads back clear) for features it cannot accept.
          const reason = this.checkFeatures(this.driverFeatures);
          if (reason !== null) {
            next &= ~VIRTIO_STATUS.FEATURES_OK;
            this.cNegotiationFailures.add();
            this.log(`virtio ${this.name}: FEATURES_OK refused: ${reason}`);
          }
        }
        // 3.1.1: DRIVER_OK comes after FEATURES_OK; without it the device stays unusable.
        if (next & VIRTIO_STATUS.DRIVER_OK && !(next & VIRTIO_STATUS.FEATURES_OK)) {
          next &= ~VIRTIO_STATUS.DRIVER_OK;
        }
        if (Atomics.compareExchange(this.words, H_STATUS, old, next) !== old) continue;
        if (next & VIRTIO_STATUS.DRIVER_OK && !(old & VIRTIO_STATUS.DRIVER_OK)) {
          this.deferred.push(() => this.activate());
        }
        return;
      }
    });
  }

  /**
   * The device just became live (DRIVER_OK): the model's activation, or else the buffers the driver made available
   * before DRIVER_OK are served now. Runs after a status write; a data-plane thread calls it when it learns of one.
   */
  activate(): void {
    if (!this.running) return;
    if (this.model.activate) {
      this.model.activate();
      return;
    }
    for (let q = 0; q < this.numQueues; q++) this.model.queueNotified(q);
  }

  private checkFeatures(accepted: bigint): string | null {
    const extra = accepted & ~this.offeredFeatures;
    if (extra !== 0n) return `driver accepted features not offered (0x${extra.toString(16)})`;
    // 6.1 Driver Requirements: Reserved Feature Bits: a driver of this (non-legacy) device accepts VERSION_1.
    if (!hasFeature(accepted, VIRTIO_F.VERSION_1)) return "driver did not accept VIRTIO_F_VERSION_1";
    return this.model.validateFeatures?.(accepted) ?? null;
  }

  /**
   * The device cannot go on (2.1.2): sets DEVICE_NEEDS_RESET and, if DRIVER_OK was set, sends a configuration
   * change notification. Reported once until the next reset. Safe from any thread, with or without locks.
   */
  needsReset(reason: string): void {
    const old = Atomics.or(this.words, H_STATUS, VIRTIO_STATUS.DEVICE_NEEDS_RESET);
    if (old & VIRTIO_STATUS.DEVICE_NEEDS_RESET) return;
    this.cErrors.add();
    this.log(`virtio ${this.name}: device needs reset: ${reason}`);
    if (old & VIRTIO_STATUS.DRIVER_OK) this.raiseConfig();
  }

  // ---- features (2.2) ---------------------------------------------------------------------------------------

  get deviceFeatureSelect(): number {
    return Atomics.load(this.words, H_DEVICE_FEATURE_SELECT) >>> 0;
  }

  set deviceFeatureSelect(v: number) {
    Atomics.store(this.words, H_DEVICE_FEATURE_SELECT, v | 0);
  }

  get driverFeatureSelect(): number {
    return Atomics.load(this.words, H_DRIVER_FEATURE_SELECT) >>> 0;
  }

  set driverFeatureSelect(v: number) {
    Atomics.store(this.words, H_DRIVER_FEATURE_SELECT, v | 0);
  }

  /** device_feature: the 32 offered bits starting at bit 32 * deviceFeatureSelect (0 past bit 63). */
  readDeviceFeatures(): number {
    const sel = this.deviceFeatureSelect;
    if (sel > 1) return 0;
    return Number((this.offeredFeatures >> BigInt(32 * sel)) & 0xffffffffn);
  }

  /** driver_feature as the driver wrote it (word driverFeatureSelect; 0 past bit 63). */
  readDriverFeatures(): number {
    const sel = this.driverFeatureSelect;
    if (sel > 1) return 0;
    return Atomics.load(this.words, sel === 0 ? H_DRIVER_FEATURES_LO : H_DRIVER_FEATURES_HI) >>> 0;
  }

  /** A driver write of driver_feature. Ignored once FEATURES_OK is set (3.1.1: negotiation is over). */
  writeDriverFeatures(value: number): void {
    this.locked(() => {
      if (this.status & VIRTIO_STATUS.FEATURES_OK) return;
      const sel = this.driverFeatureSelect;
      if (sel > 1) return;
      Atomics.store(this.words, sel === 0 ? H_DRIVER_FEATURES_LO : H_DRIVER_FEATURES_HI, value | 0);
    });
  }

  /** What the driver has written to driver_feature, all 64 bits. */
  get driverFeatures(): bigint {
    const lo = BigInt(Atomics.load(this.words, H_DRIVER_FEATURES_LO) >>> 0);
    const hi = BigInt(Atomics.load(this.words, H_DRIVER_FEATURES_HI) >>> 0);
    return (hi << 32n) | lo;
  }

  /**
   * Whether feature `bit` is negotiated (as hasFeature(negotiatedFeatures, bit)), read from the two words
   * without building a bigint: models ask per packet.
   */
  private negotiated(bit: number): boolean {
    if (!(this.status & VIRTIO_STATUS.FEATURES_OK) || !(bit >= 0 && bit < 64)) return false;
    const word = Atomics.load(this.words, bit < 32 ? H_DRIVER_FEATURES_LO : H_DRIVER_FEATURES_HI);
    return ((word >>> (bit & 31)) & 1) === 1;
  }

  /** The negotiated features: what the driver accepted, once FEATURES_OK is set; 0 before. */
  get negotiatedFeatures(): bigint {
    return this.status & VIRTIO_STATUS.FEATURES_OK ? this.driverFeatures : 0n;
  }

  // ---- configuration space (2.5) ----------------------------------------------------------------------------

  /** config_generation (8 bits). */
  get configGeneration(): number {
    return Atomics.load(this.words, H_GENERATION) & 0xff;
  }

  /**
   * The device changed its configuration space. config_generation changes at every change (2.5.1: the driver
   * rereads until two generation reads agree), then a configuration change notification goes out if the driver
   * is live.
   */
  configChanged(): void {
    Atomics.add(this.words, H_GENERATION, 1);
    if (this.status & VIRTIO_STATUS.DRIVER_OK) this.raiseConfig();
  }

  readConfig(offset: number, data: Uint8Array): void {
    this.locked(() => {
      data.fill(0);
      const size = this.model.configSize;
      if (offset >= size || offset < 0) return;
      const n = Math.min(data.length, size - offset);
      this.model.readConfig(offset, data.subarray(0, n));
    });
  }

  writeConfig(offset: number, data: Uint8Array): void {
    this.locked(() => {
      const size = this.model.configSize;
      if (offset >= size || offset < 0) return;
      const n = Math.min(data.length, size - offset);
      this.guard("configuration write", () => this.model.writeConfig?.(offset, data.subarray(0, n)));
    });
  }

  // ---- interrupts ---------------------------------------------------------------------------------------------

  get configVector(): number {
    return Atomics.load(this.words, H_CONFIG_VECTOR) & 0xffff;
  }

  /** config_msix_vector; the transport has mapped an unsupported vector to NO_VECTOR already. */
  set configVector(v: number) {
    Atomics.store(this.words, H_CONFIG_VECTOR, v & 0xffff);
  }

  /** ORs `bits` into the ISR status (kept here for the transport); returns the previous value. */
  isrOr(bits: number): number {
    return Atomics.or(this.words, H_ISR, bits);
  }

  /** Reads and clears the ISR status (4.1.4.5: reading resets it to 0). */
  isrTake(): number {
    return Atomics.exchange(this.words, H_ISR, 0) & 0xff;
  }

  get isr(): number {
    return Atomics.load(this.words, H_ISR) & 0xff;
  }

  private raiseQueue(q: number): void {
    this.cQueueInterrupts.add();
    this.interrupts.queue(Atomics.load(this.words, this.qb(q) + Q_VECTOR) & 0xffff);
  }

  private raiseConfig(): void {
    this.cConfigInterrupts.add();
    this.interrupts.config(this.configVector);
  }

  // ---- virtqueue configuration (2.6, 4.1.4.3) ----------------------------------------------------------------

  get queueSelect(): number {
    return Atomics.load(this.words, H_QUEUE_SELECT) & 0xffff;
  }

  set queueSelect(v: number) {
    Atomics.store(this.words, H_QUEUE_SELECT, v & 0xffff);
  }

  /**
   * A per-queue field of queue `q` (for a transport: usually queueSelect). An absent queue reads 0 everywhere
   * (4.1.4.3.1: queue_size 0 means unavailable); msix_vector reads NO_VECTOR there.
   */
  readQueue(q: number, field: QueueField): number {
    if (!(q >= 0 && q < this.numQueues)) return field === "msix_vector" ? VIRTIO_MSI_NO_VECTOR : 0;
    const b = this.qb(q);
    if (field === "enable") return Atomics.load(this.words, b + Q_ENABLE);
    // 4.1.4.3.2: queue_reset reads 0 once the reset is done, and ours completes at once.
    if (field === "reset") return 0;
    const v = Atomics.load(this.words, b + QUEUE_FIELD_WORD[field]) >>> 0;
    return field === "size" || field === "msix_vector" ? v & 0xffff : v;
  }

  /** A driver write of a per-queue field. */
  writeQueue(q: number, field: QueueField, value: number): void {
    if (!(q >= 0 && q < this.numQueues)) return;
    this.locked(() => {
      const b = this.qb(q);
      const enabled = Atomics.load(this.words, b + Q_ENABLE) !== 0;
      switch (field) {
        case "enable":
          // 4.1.4.3.2: the driver MUST NOT write 0 to queue_enable; a 0 is ignored.
          if ((value & 0xffff) === 1 && !enabled) this.enableQueueLocked(q);
          return;
        case "reset":
          // 2.6.1 Virtqueue Reset, with VIRTIO_F_RING_RESET.
          if ((value & 0xffff) === 1 && hasFeature(this.negotiatedFeatures, VIRTIO_F.RING_RESET)) {
            this.resetQueueLocked(q);
          }
          return;
        case "msix_vector":
          Atomics.store(this.words, b + Q_VECTOR, value & 0xffff);
          return;
        default:
          // The driver configures a queue before enabling it (4.1.4.3.2); later writes are ignored.
          if (enabled) return;
          Atomics.store(
            this.words,
            b + QUEUE_FIELD_WORD[field],
            field === "size" ? value & 0xffff : value | 0,
          );
      }
    });
  }

  private addr(b: number, word: number): number {
    const lo = (this.words[b + word] as number) >>> 0;
    const hi = (this.words[b + word + 1] as number) >>> 0;
    return hi * 2 ** 32 + lo;
  }

  /** queue_enable = 1: checks the configuration and starts the queue; a bad one makes the device need reset. */
  private enableQueueLocked(q: number): void {
    const lock = this.queueLocks[q] as SharedLock;
    lock.lock();
    try {
      const b = this.qb(q);
      this.words.fill(0, b + Q_STATE, b + Q_STATE + QUEUE_STATE_WORDS);
      Atomics.add(this.words, b + Q_EPOCH, 1);
      Atomics.store(this.words, b + Q_ENABLE, 1);
      if (!(this.status & VIRTIO_STATUS.FEATURES_OK)) {
        // 3.1.1: queues are set up after FEATURES_OK; before it the ring layout is not even known.
        this.needsReset(`queue ${q} enabled before FEATURES_OK`);
        return;
      }
      const size = this.words[b + Q_SIZE] as number;
      if (size < 1 || size > this.maxQueueSize) {
        this.needsReset(
          `queue ${q} enabled with queue_size ${size} (the device offers up to ${this.maxQueueSize})`,
        );
        return;
      }
      try {
        this.queueLocked(q);
      } catch (e) {
        this.needsReset(`queue ${q} enabled with a bad configuration: ${describeError(e)}`);
      }
    } finally {
      lock.unlock();
    }
  }

  /** Back to the reset values of one queue (2.6.1, and as part of a device reset). Caller holds the device lock. */
  private resetQueueLocked(q: number): void {
    const lock = this.queueLocks[q] as SharedLock;
    lock.lock();
    try {
      const b = this.qb(q);
      const w = this.words;
      const epoch = w[b + Q_EPOCH] as number;
      w.fill(0, b + Q_SIZE, b + QUEUE_WORDS);
      w[b + Q_SIZE] = this.maxQueueSize;
      w[b + Q_VECTOR] = VIRTIO_MSI_NO_VECTOR;
      Atomics.store(w, b + Q_EPOCH, (epoch + 1) | 0);
      this.queueCache[q] = undefined;
    } finally {
      lock.unlock();
    }
  }

  /** The queue object of this thread for queue q, built when the queue's configuration changed. Queue lock held. */
  private queueLocked(q: number): Virtqueue {
    const b = this.qb(q);
    const epoch = Atomics.load(this.words, b + Q_EPOCH);
    const cached = this.queueCache[q];
    if (cached !== undefined && cached.epoch === epoch) return cached.vq;
    const features = this.negotiatedFeatures;
    const kind = hasFeature(features, VIRTIO_F.RING_PACKED) ? "packed" : "split";
    const vq = createVirtqueue(
      kind,
      this.mem,
      {
        size: (this.words[b + Q_SIZE] as number) & 0xffff,
        descAddr: this.addr(b, Q_DESC),
        driverAddr: this.addr(b, Q_DRIVER),
        deviceAddr: this.addr(b, Q_DEVICE),
      },
      {
        eventIdx: hasFeature(features, VIRTIO_F.RING_EVENT_IDX),
        indirect: hasFeature(features, VIRTIO_F.INDIRECT_DESC),
        inOrder: hasFeature(features, VIRTIO_F.IN_ORDER),
      },
      {
        metrics: this.metrics,
        name: `${this.name}.q${q}`,
        state: this.words.subarray(b + Q_STATE, b + Q_STATE + QUEUE_STATE_WORDS),
      },
    );
    this.queueCache[q] = { epoch, vq };
    return vq;
  }

  /** Device reset (2.4): everything back to its initial value. Caller holds the device lock. */
  private resetLocked(): void {
    for (let q = 0; q < this.numQueues; q++) this.resetQueueLocked(q);
    const w = this.words;
    Atomics.store(w, H_DRIVER_FEATURES_LO, 0);
    Atomics.store(w, H_DRIVER_FEATURES_HI, 0);
    Atomics.store(w, H_DEVICE_FEATURE_SELECT, 0);
    Atomics.store(w, H_DRIVER_FEATURE_SELECT, 0);
    Atomics.store(w, H_QUEUE_SELECT, 0);
    // 4.1.5.1.2: all events are unmapped on reset.
    Atomics.store(w, H_CONFIG_VECTOR, VIRTIO_MSI_NO_VECTOR);
    Atomics.store(w, H_ISR, 0);
    this.guard("reset", () => this.model.reset?.());
    // 4.1.4.3.1: the device presents 0 in device_status once the reset is done.
    Atomics.store(w, H_STATUS, 0);
  }

  /** A device reset from the host side (the same as the driver writing 0 to device_status). */
  reset(): void {
    this.locked(() => this.resetLocked());
  }

  // ---- for hosts that start and stop rings themselves (vhost-user) ------------------------------------------

  /**
   * Queue q back to its reset values (as 2.6.1 Virtqueue Reset does), whatever the driver negotiated: a host that
   * stops a ring on the front-end's word (vhost-user GET_VRING_BASE) so it can be configured again.
   */
  resetQueue(q: number): void {
    if (!(Number.isInteger(q) && q >= 0 && q < this.numQueues)) return;
    this.locked(() => this.resetQueueLocked(q));
  }

  /**
   * Queue q's run-time state words (QUEUE_STATE_WORDS; see VirtqueueOptions.state): a host reads a stopped ring's
   * indices there, or seeds them before enabling it (SplitQueue.seedState). Not for use while q is served.
   */
  queueStateWords(q: number): Int32Array {
    if (!(Number.isInteger(q) && q >= 0 && q < this.numQueues)) {
      throw new VirtioStateError(`VirtioDevice ${this.name}: no queue ${q}`);
    }
    const b = this.qb(q);
    return this.words.subarray(b + Q_STATE, b + Q_STATE + QUEUE_STATE_WORDS);
  }

  /**
   * Whether this object holds a chain of queue q its handler has not finished (it goes on in the next slice): a
   * host about to stop the ring can serve it to its end first (vhost-user GET_VRING_BASE).
   */
  hasUnfinished(q: number): boolean {
    return this.partial[q] !== undefined || (this.detached[q]?.size ?? 0) > 0;
  }

  /** Waits for queue q's detached chains (the model's settleDetached), leaving the ring as it is. */
  settleDetached(q: number): void {
    if (this.detachedCount(q) > 0) this.guard(`queue ${q}`, () => this.model.settleDetached?.(q));
  }

  /** Chains of queue q handed to other threads (DETACHED) and not returned yet. */
  detachedCount(q: number): number {
    return this.detached[q]?.size ?? 0;
  }

  /**
   * Serves queue q's unfinished work to its end, as far as `rounds` slices go: detached chains are waited for
   * (the model's settleDetached), a chain kept across slices gets more slices. Returns whether anything is left.
   */
  finishUnfinished(q: number, rounds: number): boolean {
    for (let i = 0; i < rounds && this.hasUnfinished(q); i++) {
      // Waited for even on a failed device: the other threads may still be writing guest memory.
      this.settleDetached(q);
      if (this.partial[q] !== undefined) {
        if (!this.running) break;
        this.notify(q);
      }
    }
    return this.hasUnfinished(q);
  }

  // ---- snapshots --------------------------------------------------------------------------------------------

  /**
   * Everything the device keeps, for a snapshot: status, features, selectors, configuration vector and
   * generation, ISR, each queue's configuration and device-side ring indices, the model's shared region, and the
   * device configuration as the driver reads it (so a restore into a device with other options is refused).
   *
   * Requests in flight (docs/snapshot.md): the caller pauses the guest and lets the device finish what it has
   * taken from its rings first (serveDeferred / the data-plane thread's slices, the net receiver's flush). A
   * queue with a chain popped and not yet used, or used and not yet published to the driver, is refused with
   * DeviceBusyError, so a saved state never has a request both taken off the ring and unanswered: after restore
   * nothing is lost (every request answered before the snapshot is in the used ring, in guest memory) and
   * nothing is done twice (last_avail says where the next unanswered request is).
   */
  saveState(): DeviceState {
    return this.locked(() => {
      for (let q = 0; q < this.numQueues; q++) {
        if (this.partial[q] !== undefined || (this.detached[q]?.size ?? 0) > 0) {
          throw new DeviceBusyError(
            `virtio ${this.name}: queue ${q} has a request in progress; serve it, then save`,
          );
        }
      }
      const w = this.words;
      const packed = this.negotiated(VIRTIO_F.RING_PACKED);
      const queues: StateObject[] = [];
      for (let q = 0; q < this.numQueues; q++) {
        const b = this.qb(q);
        const lock = this.queueLocks[q] as SharedLock;
        lock.lock();
        try {
          const st = w.subarray(b + Q_STATE, b + Q_STATE + QUEUE_STATE_WORDS);
          const size = (w[b + Q_SIZE] as number) & 0xffff;
          const enabled = w[b + Q_ENABLE] !== 0;
          if (enabled && st[7] === 1 && this.running && this.model.externalRings !== true)
            this.checkQuiet(q, packed, st, size, b);
          queues.push({
            size,
            enable: enabled,
            vector: (w[b + Q_VECTOR] as number) & 0xffff,
            desc: this.addr(b, Q_DESC),
            driver: this.addr(b, Q_DRIVER),
            device: this.addr(b, Q_DEVICE),
            ring: packed ? PackedQueue.saveState(st) : SplitQueue.saveState(st),
          });
        } finally {
          lock.unlock();
        }
      }
      const config = new Uint8Array(this.model.configSize);
      this.model.readConfig(0, config);
      return {
        kind: STATE_KIND,
        version: STATE_VERSION,
        data: {
          model: this.model.name,
          type: this.model.type,
          numQueues: this.numQueues,
          status: this.status,
          generation: w[H_GENERATION] as number,
          deviceFeatureSelect: this.deviceFeatureSelect,
          driverFeatureSelect: this.driverFeatureSelect,
          driverFeaturesLo: (w[H_DRIVER_FEATURES_LO] as number) >>> 0,
          driverFeaturesHi: (w[H_DRIVER_FEATURES_HI] as number) >>> 0,
          queueSelect: this.queueSelect,
          configVector: this.configVector,
          isr: this.isr,
          queues,
          region: this.regionBytes().slice(),
          config,
        },
      };
    });
  }

  /** Refuses to save a queue with a chain taken and not answered (queue lock held). */
  private checkQuiet(q: number, packed: boolean, st: Int32Array, size: number, b: number): void {
    const taken = packed ? PackedQueue.inFlight(st, size) : SplitQueue.inFlight(st);
    if (taken !== 0) {
      throw new DeviceBusyError(
        `virtio ${this.name}: queue ${q} has ${taken} ${packed ? "ring slots" : "requests"} taken and not yet answered; ` +
          "let the device finish them (pause the guest, serve the queues), then save",
      );
    }
    if (!packed) {
      // Used entries written but not yet published (a batch whose end has not come): the used idx in the ring lags.
      const ringIdx = this.mem.readU16(this.addr(b, Q_DEVICE) + 2);
      const usedIdx = SplitQueue.indices(st).usedIdx;
      if (ringIdx !== usedIdx) {
        throw new DeviceBusyError(
          `virtio ${this.name}: queue ${q} has ${(usedIdx - ringIdx) & 0xffff} answers not yet published to the ` +
            "driver; flush them, then save",
        );
      }
    }
  }

  private regionBytes(): Uint8Array {
    const words = this.words;
    return new Uint8Array(
      words.buffer,
      words.byteOffset + layoutBytes(this.numQueues),
      this.model.stateBytes,
    );
  }

  /**
   * Restores a saved state into this device (a fresh one, or one whose guest is paused: no queue may be being
   * served). Everything is checked before anything is written, as a hostile driver's register writes would be:
   * the model, its options (device configuration), status bits, features (offered, and accepted by the device's
   * rules), each queue's size (offered, a power of 2 for split rings), its ring addresses (inside guest RAM,
   * aligned: the queue is built over them), vectors, and its indices (in range, nothing in flight). Queue objects
   * other threads cached are rebuilt (the queues' epochs move). Afterwards the caller resumes the device with
   * `activate()`, which serves anything the driver made available meanwhile.
   */
  restoreState(s: DeviceState): void {
    const name = `virtio ${this.name}`;
    const r = StateReader.open(name, s, STATE_KIND, STATE_VERSION);
    const model = r.string("model");
    const type = r.int("type", 0, 0xffff);
    if (model !== this.model.name || type !== this.model.type) {
      throw new DeviceStateError(`${name}: saved state is of device "${model}" (type ${type}), not this one`);
    }
    r.int("numQueues", this.numQueues, this.numQueues);
    const status = r.int("status", 0, 0xff);
    if (status & ~STATUS_BITS) r.fail("status", `has undefined bits (0x${status.toString(16)})`);
    if (status & VIRTIO_STATUS.DRIVER_OK && !(status & VIRTIO_STATUS.FEATURES_OK)) {
      r.fail("status", "has DRIVER_OK without FEATURES_OK");
    }
    const lo = r.int("driverFeaturesLo", 0, 0xffff_ffff);
    const hi = r.int("driverFeaturesHi", 0, 0xffff_ffff);
    const features = (BigInt(hi) << 32n) | BigInt(lo);
    const negotiated = status & VIRTIO_STATUS.FEATURES_OK ? features : 0n;
    if (status & VIRTIO_STATUS.FEATURES_OK) {
      const why = this.checkFeatures(features);
      if (why !== null) r.fail("driverFeatures", `were not acceptable: ${why}`);
    }
    const header = {
      generation: r.int("generation", -0x8000_0000, 0x7fff_ffff),
      deviceFeatureSelect: r.int("deviceFeatureSelect", 0, 0xffff_ffff),
      driverFeatureSelect: r.int("driverFeatureSelect", 0, 0xffff_ffff),
      queueSelect: r.int("queueSelect", 0, 0xffff),
      configVector: r.int("configVector", 0, 0xffff),
      isr: r.int("isr", 0, 3),
    };
    const packed = hasFeature(negotiated, VIRTIO_F.RING_PACKED);
    const running =
      (status & (VIRTIO_STATUS.DRIVER_OK | VIRTIO_STATUS.DEVICE_NEEDS_RESET)) === VIRTIO_STATUS.DRIVER_OK;
    const queues = r.objects("queues", this.numQueues).map((qr, q) => {
      const size = qr.int("size", 0, this.maxQueueSize);
      const enable = qr.bool("enable");
      const vector = qr.int("vector", 0, 0xffff);
      const desc = qr.int("desc", 0, Number.MAX_SAFE_INTEGER);
      const driver = qr.int("driver", 0, Number.MAX_SAFE_INTEGER);
      const device = qr.int("device", 0, Number.MAX_SAFE_INTEGER);
      const ring = qr.object("ring");
      const st = packed ? PackedQueue.restoreState(ring, Math.max(size, 1)) : SplitQueue.restoreState(ring);
      if (enable && !(status & VIRTIO_STATUS.DEVICE_NEEDS_RESET)) {
        if (!(status & VIRTIO_STATUS.FEATURES_OK)) qr.fail("enable", "is set before FEATURES_OK");
        if (size < 1) qr.fail("size", "is 0 on an enabled queue");
        // The ring's addresses and size as the queue itself checks them (a private copy of the words, marked
        // started, so that checking writes nothing to guest memory).
        const probe = st.slice();
        probe[7] = 1;
        try {
          createVirtqueue(
            packed ? "packed" : "split",
            this.mem,
            { size, descAddr: desc, driverAddr: driver, deviceAddr: device },
            { eventIdx: false, indirect: false },
            { name: `${this.name}.q${q}`, state: probe },
          );
        } catch (e) {
          qr.fail("size", `and ring addresses are refused: ${describeError(e)}`);
        }
        if (running && st[7] === 1) {
          const taken = packed ? PackedQueue.inFlight(st, size) : SplitQueue.inFlight(st);
          if (taken !== 0) qr.fail("ring", `has ${taken} taken and unanswered (a state is saved with none)`);
        }
      } else if (st[7] === 1 && !enable) {
        qr.fail("ring", "has indices, but the queue is not enabled");
      }
      return { size, enable, vector, desc, driver, device, st };
    });
    const region = r.bytes("region", this.model.stateBytes);
    const why = this.model.checkState?.(region) ?? null;
    if (why !== null) r.fail("region", why);
    const config = r.bytes("config", this.model.configSize);

    this.lock.lock();
    try {
      for (const l of this.queueLocks) l.lock();
      try {
        const w = this.words;
        const before = new Int32Array(w);
        const regionBefore = this.regionBytes().slice();
        w[H_STATUS] = status;
        w[H_GENERATION] = header.generation;
        w[H_DEVICE_FEATURE_SELECT] = header.deviceFeatureSelect | 0;
        w[H_DRIVER_FEATURE_SELECT] = header.driverFeatureSelect | 0;
        w[H_DRIVER_FEATURES_LO] = lo | 0;
        w[H_DRIVER_FEATURES_HI] = hi | 0;
        w[H_QUEUE_SELECT] = header.queueSelect;
        w[H_CONFIG_VECTOR] = header.configVector;
        w[H_ISR] = header.isr;
        for (const [q, sq] of queues.entries()) {
          const b = this.qb(q);
          w[b + Q_SIZE] = sq.size;
          w[b + Q_ENABLE] = sq.enable ? 1 : 0;
          w[b + Q_VECTOR] = sq.vector;
          for (const [word, v] of [
            [Q_DESC, sq.desc],
            [Q_DRIVER, sq.driver],
            [Q_DEVICE, sq.device],
          ] as const) {
            w[b + word] = (v % 2 ** 32) | 0;
            w[b + word + 1] = Math.floor(v / 2 ** 32) | 0;
          }
          w.set(sq.st, b + Q_STATE);
          // Other threads' queue objects describe the old configuration: the new epoch makes them rebuild.
          Atomics.add(w, b + Q_EPOCH, 1);
          this.queueCache[q] = undefined;
          this.partial[q] = undefined;
        }
        this.regionBytes().set(region);
        // The options the device was built with must give the same configuration the driver read (capacity,
        // MAC, ...): a disk of another size under a running driver would be worse than no restore.
        const now = new Uint8Array(this.model.configSize);
        this.model.readConfig(0, now);
        const differs = now.findIndex((b, i) => b !== config[i]);
        if (differs >= 0) {
          w.set(before);
          this.regionBytes().set(regionBefore);
          throw new DeviceStateError(
            `${name}: the device configuration differs from the saved one at byte ${differs} ` +
              `(saved 0x${(config[differs] as number).toString(16)}, here 0x${(now[differs] as number).toString(16)}): ` +
              "this device was built with other options (disk size, MAC, queue count...)",
          );
        }
      } finally {
        for (let q = this.queueLocks.length - 1; q >= 0; q--) (this.queueLocks[q] as SharedLock).unlock();
      }
    } finally {
      this.lock.unlock();
    }
  }

  // ---- queue processing -------------------------------------------------------------------------------------

  /**
   * An available buffer notification for queue q: from a notify register write (exit to userspace) or from an
   * ioeventfd worker. Safe from any thread; never throws.
   */
  notify(q: number): void {
    this.cNotifications.add();
    if (!(Number.isInteger(q) && q >= 0 && q < this.numQueues)) return;
    // 3.1.1 / 2.1: before DRIVER_OK the device does not use the queues; activation serves what is pending.
    if (!this.running) return;
    this.guard(`queue ${q}`, () => this.model.queueNotified(q));
  }

  /**
   * Polled mode, for a place that serves every queue again and again while traffic flows (a busy-polling
   * vhost-user back-end) instead of sleeping until a kick: the driver's available-buffer notifications stay off on
   * every queue while it lasts (2.7.10 / 2.8.21: the device may suppress them whenever it likes), so the driver
   * does not pay a doorbell per burst. Turning it off turns them back on; the caller must then serve every queue
   * once more, since buffers made available before that were not announced.
   */
  setPolled(on: boolean): void {
    if (this.polled === on) return;
    this.polled = on;
    for (let q = 0; q < this.numQueues; q++) this.withQueue(q, (vq) => vq?.setDriverNotifications(!on));
  }

  private withQueue<T>(q: number, fn: (vq: Virtqueue | null) => T): T | undefined {
    const lock = this.queueLocks[q];
    if (lock === undefined) return undefined;
    lock.lock();
    try {
      let vq: Virtqueue | null = null;
      if (this.running && Atomics.load(this.words, this.qb(q) + Q_ENABLE) !== 0) vq = this.queueLocked(q);
      return fn(vq);
    } catch (e) {
      this.needsReset(`queue ${q}: ${describeError(e)}`);
      return undefined;
    } finally {
      lock.unlock();
    }
  }

  /**
   * Runs work the default defer hook collected (slices of queues left unfinished), each once; returns whether
   * more was deferred meanwhile. For callers that drive the device themselves; places pass their own `defer`.
   */
  serveDeferred(): boolean {
    const work = this.laterList;
    this.laterList = [];
    for (const fn of work) fn();
    return this.laterList.length > 0;
  }

  /** Arranges one more slice for queue q on this thread (once, however often it is asked before it runs). */
  private scheduleResume(q: number): void {
    if (this.resumeScheduled[q]) return;
    this.resumeScheduled[q] = true;
    this.deferTo(() => {
      this.resumeScheduled[q] = false;
      if (this.running) this.guard(`queue ${q}`, () => this.model.queueNotified(q));
    });
  }

  private drain(
    q: number,
    handle: (chain: DescriptorChain, work: WorkBudget) => ChainResult,
    opts?: DrainOptions,
  ): void {
    let unfinished = false;
    this.withQueue(q, (vq) => {
      const kept = this.partial[q];
      this.partial[q] = undefined;
      if (vq === null) return;
      const work = new WorkBudget(this.budget);
      let unpublished = 0;
      // Used buffers are published together, USED_BATCH at a time and when the slice ends (below): a driver
      // polling its used ring on another CPU gets buffers back while the slice goes on, at one store per batch.
      const pushedOne = (): void => {
        if (++unpublished >= USED_BATCH) {
          vq.publishUsed();
          unpublished = 0;
        }
      };
      // One chain through the handler; false if the handler kept it (IN_PROGRESS).
      const serve = (c: DescriptorChain): boolean => {
        work.chainsLeft--;
        // Walking the chain was work too, whatever it moves (a continued chain is charged again: conservative).
        work.descriptorsLeft -= c.descriptorsRead;
        work.spentOnChain = 0;
        const r = handle(c, work);
        if (r === IN_PROGRESS) {
          this.partial[q] = { vq, chain: c };
          return false;
        }
        if (r === DETACHED) {
          (this.detached[q] as Map<DescriptorChain, Virtqueue>).set(c, vq);
          if (work.spentOnChain === 0) work.spend(c.readableLength + c.writableLength);
          return true;
        }
        // A handler that does not account its work is charged what the chain declares.
        if (work.spentOnChain === 0) work.spend(c.readableLength + c.writableLength);
        vq.pushUsed(c, r, false);
        pushedOne();
        return true;
      };
      // The same for a chain of one readable descriptor (DrainOptions.readableSingle), in its flat form.
      const single = opts?.readableSingle;
      const serveSingle =
        single === undefined
          ? null
          : (s: SingleBuffers, i: number): void => {
              const id = s.ids[i] as number;
              const len = s.lens[i] as number;
              work.chainsLeft--;
              work.descriptorsLeft--;
              work.spentOnChain = 0;
              const r = single(s.offs[i] as number, len, id, work);
              if (work.spentOnChain === 0) work.spend(len);
              vq.pushUsedSingle(id, r, false);
              pushedOne();
            };
      try {
        this.drainSlice(q, vq, kept, work, serve, serveSingle, opts?.readAhead ?? 0);
      } finally {
        vq.publishUsed();
      }
      const st = this.sliceStats;
      st.slices++;
      st.maxBytes = Math.max(st.maxBytes, this.budget.bytes - work.bytesLeft);
      st.maxChains = Math.max(st.maxChains, this.budget.chains - work.chainsLeft);
      st.maxDescriptors = Math.max(st.maxDescriptors, this.budget.descriptors - work.descriptorsLeft);
      if (vq.shouldNotifyDriver()) this.raiseQueue(q);
      unfinished = this.partial[q] !== undefined || work.exhausted;
    });
    if (unfinished) {
      this.cSlicesCut.add();
      this.scheduleResume(q);
    }
  }

  private completeDetached(
    q: number,
    done: ReadonlyArray<{ chain: DescriptorChain; written: number }>,
    beforePush?: (chain: DescriptorChain) => void,
  ): number {
    const mine = this.detached[q];
    if (mine === undefined) return 0;
    let pushed = 0;
    this.withQueue(q, (vq) => {
      try {
        for (const { chain, written } of done) {
          const from = mine.get(chain);
          if (from === undefined) continue;
          mine.delete(chain);
          // Taken from a ring that was reset (or a device no longer running): nowhere to return it.
          if (vq === null || from !== vq) continue;
          beforePush?.(chain);
          vq.pushUsed(chain, written, false);
          pushed++;
        }
      } finally {
        vq?.publishUsed();
      }
      if (pushed > 0 && vq?.shouldNotifyDriver()) this.raiseQueue(q);
    });
    return pushed;
  }

  /** What the read-ahead reads add up to: kept, so that the compiler cannot drop the reads. */
  private touched = 0;
  private readonly readAhead = new ReadAhead(POP_BATCH);
  /** Per queue, the chains of drainSlice's current batch (reused; a queue is held while it is drained). */
  private readonly popped: Array<DescriptorChain[] | undefined> = [];
  /** Per queue, the one-descriptor chains of drainSlice's current batch, in their flat form (reused). */
  private readonly poppedSingles: Array<SingleBuffers | undefined> = [];

  /** One slice of queue q: the kept chain first, then the ring, within `work` (see drain). */
  private drainSlice(
    q: number,
    vq: Virtqueue,
    kept: PartialChain | undefined,
    work: WorkBudget,
    serve: (c: DescriptorChain) => boolean,
    serveSingle: ((s: SingleBuffers, i: number) => void) | null,
    readAhead: number,
  ): void {
    // A chain left unfinished by the previous slice goes first (unless the queue was reset since: a new
    // queue object, and the chain belongs to the old ring).
    if (kept !== undefined && kept.vq === vq && !serve(kept.chain)) return;
    drainLoop: for (;;) {
      vq.setDriverNotifications(false);
      while (!work.exhausted) {
        // Chains are taken POP_BATCH at a time (Virtqueue.popBatch: one read of the ring's index, one update of
        // the queue's for all). Those the slice does not serve (its budget ran out, a chain was kept, a handler
        // failed) go back to the ring, last first, as if never taken.
        if (serveSingle !== null) {
          // One-descriptor chains in their flat form first; a chain of another shape stops the batch before it
          // and goes through popBatch below.
          let singles = this.poppedSingles[q];
          if (singles === undefined) {
            singles = new SingleBuffers(POP_BATCH);
            this.poppedSingles[q] = singles;
          }
          const m = vq.popSingles(singles, Math.min(POP_BATCH, work.chainsLeft), false);
          if (m > 0) {
            if (readAhead > 0) this.touched += this.readAhead.touchSingles(this.mem, singles, m, readAhead);
            let i = 0;
            try {
              while (i < m) {
                serveSingle(singles, i++);
                if (work.exhausted) break;
              }
            } catch (e) {
              try {
                vq.unpopSingles(singles, i, m);
              } catch {}
              throw e;
            }
            vq.unpopSingles(singles, i, m);
            continue;
          }
        }
        let batch = this.popped[q];
        if (batch === undefined) {
          batch = [];
          this.popped[q] = batch;
        }
        const n = vq.popBatch(batch, Math.min(POP_BATCH, work.chainsLeft));
        if (n === 0) break;
        if (readAhead > 0) this.touched += this.readAhead.touch(this.mem, batch, n, readAhead);
        let i = 0;
        let stop = false;
        try {
          while (i < n) {
            if (!serve(batch[i++] as DescriptorChain)) {
              stop = true;
              break;
            }
            if (work.exhausted) break;
          }
        } catch (e) {
          // The chain that failed stays taken (as with pop()); the ones after it go back. A failure to give them
          // back must not hide the handler's.
          try {
            unpopRange(vq, batch, i, n);
          } catch {}
          throw e;
        }
        unpopRange(vq, batch, i, n);
        if (stop) break drainLoop;
      }
      // Polled: notifications stay off, the poller comes back whether or not the driver kicks.
      if (this.polled) break;
      // Notifications back on either way: if the slice ends early the driver's next kick also brings us back.
      vq.setDriverNotifications(true);
      if (work.exhausted) break;
      // Re-check: a buffer may have come before notifications were re-enabled.
      const late = vq.pop();
      if (late === null) break;
      if (!serve(late)) break;
    }
    if (this.partial[q] !== undefined) vq.setDriverNotifications(true);
  }
}

/** Used buffers a slice publishes at a time (a DPDK burst). */
const USED_BATCH = 32;
/** Chains a slice takes from the ring at a time, and buffers read ahead for them (DrainOptions.readAhead). */
const POP_BATCH = 32;

function describeError(e: unknown): string {
  if (e instanceof VirtqueueError || e instanceof VirtioRequestError) return e.message;
  if (e instanceof Error) return `${e.name}: ${e.message}`;
  return String(e);
}
