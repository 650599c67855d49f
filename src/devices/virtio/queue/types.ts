/**
 * The device side of a virtqueue, common to both ring layouts of the OASIS virtio 1.2 specification:
 * 2.7 Split Virtqueues and 2.8 Packed Virtqueues.
 *
 * A Virtqueue depends only on GuestMemory, so the same code can run on a vCPU thread, a vhost worker thread or
 * a vhost-user process. Everything it reads from the rings is written by the guest and treated as hostile: a
 * malformed ring raises VirtqueueError, never another exception, never a hang, never an access outside guest RAM.
 */
import { VireoError } from "../../../errors.ts";
import type { MetricsSink } from "../../../metrics/registry.ts";

/** Where the driver placed the three areas of the queue (2.6 Virtqueues), as the transport reports them. */
export interface QueueConfig {
  /** Queue Size: number of descriptors. */
  size: number;
  /** Descriptor Area: the descriptor table (split) or descriptor ring (packed). */
  descAddr: number;
  /** Driver Area: the available ring (split) or the driver event suppression structure (packed). */
  driverAddr: number;
  /** Device Area: the used ring (split) or the device event suppression structure (packed). */
  deviceAddr: number;
}

/** The negotiated ring features that change how the queue is parsed. */
export interface QueueFeatures {
  /** VIRTIO_F_RING_EVENT_IDX (bit 29). */
  eventIdx: boolean;
  /** VIRTIO_F_INDIRECT_DESC (bit 28). */
  indirect: boolean;
  /**
   * VIRTIO_F_IN_ORDER (bit 35): the device uses buffers in the order they were made available (its model offers the
   * bit only if it does), so a split ring may answer a run of device-readable buffers with one used element (2.7.9).
   */
  inOrder?: boolean;
}

export type QueueKind = "split" | "packed";

/** One physically-contiguous guest buffer element. Always lies inside guest RAM. */
export interface BufferSegment {
  readonly addr: number;
  readonly len: number;
}

/**
 * A buffer the driver made available, as validated and copied out of the ring when it was popped. Later guest
 * writes to the descriptors do not change it.
 */
export interface DescriptorChain {
  /** Head descriptor index (split) or Buffer ID (packed): what goes back in the used element. */
  readonly id: number;
  /** Device-readable elements, in order. Zero-length elements are left out. */
  readonly readable: readonly BufferSegment[];
  /** Device-writable elements, in order. Zero-length elements are left out. */
  readonly writable: readonly BufferSegment[];
  readonly readableLength: number;
  readonly writableLength: number;
  /**
   * Descriptor Area slots the chain occupied: descriptors walked in the descriptor table or ring, counting a
   * descriptor that points at an indirect table once and the table's entries not at all. The packed ring skips
   * this many slots after writing the used descriptor (2.8.6 Next Flag: Descriptor Chaining).
   */
  readonly descriptorCount: number;
  /**
   * Descriptors read to build the chain: every element (zero-length ones included), in the ring or in an indirect
   * table, plus the descriptor that points at the table. What walking the chain cost, whatever its byte length.
   */
  readonly descriptorsRead: number;
}

export interface Virtqueue {
  readonly kind: QueueKind;
  readonly size: number;
  /** Chains popped and not yet returned with pushUsed. */
  readonly inFlight: number;
  /**
   * Next available chain, or null when the driver has made none available. Throws VirtqueueError (code
   * VIREO_VIRTQUEUE_MALFORMED) on a malformed one; the queue's state is then unchanged, so a further pop()
   * looks at the same place again (the device is expected to set DEVICE_NEEDS_RESET).
   */
  pop(): DescriptorChain | null;
  /**
   * pop() up to `max` times into out[0..n), stopping at the first null; returns n. A malformed chain after some
   * were popped ends the batch without an error (those chains are the caller's; the next pop() or popBatch()
   * throws for it, as the queue's state stays in front of it); one at the start throws as pop() does. The chains
   * are unpopped, if need be, last first.
   */
  popBatch(out: DescriptorChain[], max: number): number;
  /**
   * Returns a popped chain to the driver with `written` bytes written to its writable part; with `publish` false
   * (default true) the driver sees it only at the next publishUsed() or shouldNotifyDriver(), so that a batch of
   * used buffers moves the used idx once. Throws VirtqueueError
   * (code VIREO_VIRTQUEUE_USAGE) if the chain is not in flight on this queue or `written` is out of range.
   */
  pushUsed(chain: DescriptorChain, written: number, publish?: boolean): void;
  /**
   * Makes used buffers pushed with `publish` false visible to the driver (split: the used idx moves once for all
   * of them, after their elements, 2.7.8.2). shouldNotifyDriver() publishes first, so a device that pushes a batch
   * with publish false and then asks about notification needs no other call. No-op when nothing is pending (and
   * on packed rings, where each used descriptor is published as it is written).
   */
  publishUsed(): void;
  /**
   * After pushing used buffers: must the device send a used buffer notification now? Considers the buffers used
   * since the previous call (false if there were none), per 2.7.7 Used Buffer Notification Suppression (split)
   * or 2.8.10 Driver and Device Event Suppression (packed).
   */
  shouldNotifyDriver(): boolean;
  /**
   * Asks the driver to send (true) or not to send (false) available buffer notifications. Unreliable by design:
   * after enabling, pop() again before sleeping, or a buffer made available in between can be missed.
   */
  setDriverNotifications(enabled: boolean): void;
  /**
   * Gives back the most recently popped chain, not yet used, as if it had never been popped: the next pop()
   * returns it again. For a device that took buffers and then found it cannot use them yet (a received frame
   * that needs more buffers than the driver has made available). Throws VirtqueueError (code
   * VIREO_VIRTQUEUE_USAGE) if `chain` is not the last chain popped and still in flight.
   */
  unpop(chain: DescriptorChain): void;
  /**
   * Pops, like popBatch, up to `max` chains (and at most out's capacity) that are each one direct descriptor,
   * device-writable if `writable` and device-readable if not, without a chain object: out.ids, out.offs and
   * out.lens [0, n) get each one's id, its buffer's offset in the memory's bytes (the whole buffer checked inside
   * guest memory) and its length (never 0). Stops, without taking it, at the first chain of any other shape, or
   * one pop() would refuse: pop() or popBatch() take that one (and throw for it). Returns n; 0 also where the
   * queue does not serve this form (packed rings, a memory it cannot read as words, chains to resubmit).
   * Each is answered with pushUsedSingle or given back with unpopSingles.
   */
  popSingles(out: SingleBuffers, max: number, writable: boolean): number;
  /**
   * pushUsed for a chain popSingles took: `written` bytes written into its buffer (0 for a device-readable one).
   * Throws VirtqueueError (code VIREO_VIRTQUEUE_USAGE) if `id` is not a chain popSingles took and still in
   * flight, or `written` is out of range.
   */
  pushUsedSingle(id: number, written: number, publish?: boolean): void;
  /**
   * unpop for chains popSingles took: gives back out's entries [from, end), last first; they must be the chains
   * popped most recently, none used. Throws VirtqueueError (code VIREO_VIRTQUEUE_USAGE) otherwise.
   */
  unpopSingles(out: SingleBuffers, from: number, end: number): void;
}

/**
 * Chains of one direct descriptor as Virtqueue.popSingles hands them out: parallel arrays, reused from batch to
 * batch, so that serving one allocates nothing and reads no chain object.
 */
export class SingleBuffers {
  /** Head ids (what pushUsedSingle takes). */
  readonly ids: Int32Array;
  /** Offsets of the buffers in the memory's bytes (GuestMemory.bytes), checked inside guest memory. */
  readonly offs: Float64Array;
  /** Buffer lengths in bytes (1 to 2^32 - 1). */
  readonly lens: Float64Array;
  constructor(readonly capacity: number) {
    this.ids = new Int32Array(capacity);
    this.offs = new Float64Array(capacity);
    this.lens = new Float64Array(capacity);
  }
}

export interface VirtqueueOptions {
  metrics?: MetricsSink;
  /** Used in error messages and metric names (`virtq.<name>.popped`). */
  name?: string;
  /**
   * Where the queue keeps its run-time indices (QUEUE_STATE_WORDS Int32 words, e.g. a slot of a
   * SharedArrayBuffer), so that queue objects on several threads, each built over the same words, act as one
   * queue. All zero means "not yet started": the first queue object built over the words initializes them (and
   * the device's notification suppression fields in the ring); later ones pick up where the indices are.
   * Callers serialize access (one lock per queue). Default: private words.
   */
  state?: Int32Array;
}

/** Int32 words a queue's run-time state takes (VirtqueueOptions.state). */
export const QUEUE_STATE_WORDS = 8;

/**
 * A virtqueue problem. Code VIREO_VIRTQUEUE_MALFORMED: the driver broke the ring (the device should set
 * DEVICE_NEEDS_RESET); code VIREO_VIRTQUEUE_USAGE: the device model misused the queue API.
 */
export class VirtqueueError extends VireoError {
  constructor(
    message: string,
    code: VirtqueueErrorCode = "VIREO_VIRTQUEUE_MALFORMED",
    options?: { cause?: unknown },
  ) {
    super(code, message, options);
  }
}

export type VirtqueueErrorCode = "VIREO_VIRTQUEUE_MALFORMED" | "VIREO_VIRTQUEUE_USAGE";

/** Largest Queue Size of either layout (2.7 Split Virtqueues, 2.8 Packed Virtqueues). */
export const MAX_QUEUE_SIZE = 32768;

/** Descriptor flag bits shared by both layouts (2.7.5, 2.8.6, 2.8.7, 2.8.1). */
export const VIRTQ_DESC_F_NEXT = 1;
export const VIRTQ_DESC_F_WRITE = 2;
export const VIRTQ_DESC_F_INDIRECT = 4;
export const VIRTQ_DESC_F_AVAIL = 1 << 7;
export const VIRTQ_DESC_F_USED = 1 << 15;

/** Split ring flag bits (2.7.6, 2.7.8). */
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
export const VIRTQ_USED_F_NO_NOTIFY = 1;

/** Packed ring event suppression flags (2.8.10 Driver and Device Event Suppression). */
export const RING_EVENT_FLAGS_ENABLE = 0;
export const RING_EVENT_FLAGS_DISABLE = 1;
export const RING_EVENT_FLAGS_DESC = 2;

/** Size of one descriptor in either layout (struct virtq_desc / struct pvirtq_desc). */
export const DESC_SIZE = 16;
