/**
 * A virtio device whose rings a vhost-user back-end serves (vireo as the front-end: `--net vhost-user=PATH`,
 * `--disk vhost-user=PATH`), whatever the device type. What stays in vireo is the virtio-pci transport, the status
 * state machine and the device's face: its type, queues, the features it offers and its configuration space,
 * which a small per-device part gives (frontend-net.ts, frontend-blk.ts). The rings are the back-end's: the
 * guest's doorbells are KVM ioeventfds the back-end polls (kick fds), its interrupts irqfds the back-end signals
 * (call fds), and guest RAM is shared with it, so no request passes through vireo.
 *
 * Threads: every vCPU thread builds this model over the shared device state. A vCPU thread never touches a ring:
 * on DRIVER_OK it tells the device's vhost-user thread (src/vhost-user/frontend-thread.ts), which owns the
 * connection and starts the rings; on reset it asks that thread to stop them (GET_VRING_BASE) and waits, so the
 * back-end has let go of the rings before the driver reuses their memory (virtio 1.2, 2.4: the reset is done
 * when device_status reads 0).
 */
import { featureBit, VIRTIO_F } from "../devices/virtio/constants.ts";
import type { VirtioContext, VirtioDeviceModel } from "../devices/virtio/device.ts";
import { signalEventFd } from "../native.ts";
import { VHOST_USER_F_PROTOCOL_FEATURES } from "./protocol.ts";

/**
 * Ring features vireo's front-end passes through: EVENT_IDX and indirect descriptors are the back-end's to honour.
 * Packed rings are not (a packed ring's base carries wrap counters this front-end does not restore yet), nor
 * RING_RESET (one ring stopped alone).
 */
export const BACKEND_TRANSPORT_FEATURES =
  featureBit(VIRTIO_F.VERSION_1) | featureBit(VIRTIO_F.RING_EVENT_IDX) | featureBit(VIRTIO_F.INDIRECT_DESC);

/** The features a guest is offered: device-type bits and transport bits. */
export interface OfferedFeatures {
  device: bigint;
  transport: bigint;
}

/**
 * What the guest is offered for a back-end offering `backend` (GET_FEATURES): the device bits in `deviceMask` the
 * back-end offers, the ones vireo serves itself (`own`, e.g. the configuration space's MAC), and the transport
 * bits both can serve.
 */
export function offerFeatures(backend: bigint, deviceMask: bigint, own: bigint): OfferedFeatures {
  return { device: (backend & deviceMask) | own, transport: backend & BACKEND_TRANSPORT_FEATURES };
}

/**
 * What SET_FEATURES says, given what the guest negotiated: the back-end's share of it (features vireo serves
 * itself, like MAC, only if the back-end offered them too) and bit 30 when the back-end speaks protocol features.
 */
export function backendAck(negotiated: bigint, backend: bigint): bigint {
  const proto = featureBit(VHOST_USER_F_PROTOCOL_FEATURES);
  return (negotiated & backend & ~proto) | (backend & proto);
}

/** The features from the back-end the guest was offered: what a back-end after a reconnect must serve too. */
export function offeredFromBackend(offered: OfferedFeatures, backend: bigint): bigint {
  const proto = featureBit(VHOST_USER_F_PROTOCOL_FEATURES);
  return ((offered.device | offered.transport) & backend) | (backend & proto);
}

/** Int32 words of the control block the vCPU threads and the vhost-user thread share. */
export const FRONTEND_WORDS = {
  /** Bumped on every DRIVER_OK. */
  activations: 0,
  /** Bumped on every device reset; the vhost-user thread copies it to resetsDone once the rings are stopped. */
  resets: 1,
  resetsDone: 2,
  /** 1 while a back-end is connected (for tests and the log). */
  connected: 3,
  /** 1 once the vhost-user thread owns the first connection (the main thread closes it otherwise). */
  connTaken: 4,
  /**
   * Set by the main thread to quiesce the device for a snapshot (1) or a migration's switch-over (2): the
   * vhost-user thread stops every started ring (GET_VRING_BASE: the back-end finishes what it took and lets go of
   * guest RAM), with 2 also closes the connection (so the destination's vireo can connect to the same back-end),
   * then sets `quiesced`; cleared, it connects again if it must and starts the rings from the used indices (if the
   * device still runs). No reconnect is tried while quiesced.
   */
  quiesce: 5,
  quiesced: 6,
  /**
   * Set by the main thread while a live migration logs dirty pages: the vhost-user thread hands the back-end the
   * machine's dirty log (SET_LOG_BASE), negotiates VHOST_F_LOG_ALL and logs the started rings' used rings; cleared,
   * it turns them off. It answers in `loggingAck`: 1 on, 0 off, -1 the back-end refused (reported as an error).
   */
  logging: 7,
  loggingAck: 8,
  /**
   * Bumped by the main thread after a restore or an incoming migration: a net device's thread sends SEND_RARP
   * with the guest's MAC (PROTOCOL_F_RARP), now or once a back-end is connected.
   */
  announces: 9,
  count: 10,
} as const;

export function createFrontendBlock(): SharedArrayBuffer {
  return new SharedArrayBuffer(FRONTEND_WORDS.count * 4);
}

/** How long a vCPU's reset waits for the rings to stop: a little over one reply timeout of the back-end. */
export const RESET_WAIT_MS = 6000;

/** The device's own face: what vireo serves of it, given by the per-device part. */
export interface VhostUserFace {
  readonly type: number;
  readonly numQueues: number;
  readonly maxQueueSize: number;
  readonly configSize: number;
  readonly stateBytes: number;
  bind?(ctx: VirtioContext): void;
  readConfig(offset: number, data: Uint8Array): void;
  validateFeatures?(accepted: bigint): string | null;
}

export interface VhostUserDeviceOptions {
  name: string;
  face: VhostUserFace;
  offered: OfferedFeatures;
  /** Eventfd per queue: KVM's ioeventfd on its notify address, and the back-end's kick fd. */
  kicks: readonly number[];
  /** Wakes the vhost-user thread. */
  wake: number;
  block: SharedArrayBuffer;
  /** "vcpu": the register side (tells the vhost-user thread); "thread": the vhost-user thread's own view. */
  role: "vcpu" | "thread";
}

export class VhostUserDevice implements VirtioDeviceModel {
  readonly type: number;
  readonly name: string;
  readonly numQueues: number;
  readonly maxQueueSize: number;
  readonly features: bigint;
  readonly transportFeatures: bigint;
  readonly configSize: number;
  readonly stateBytes: number;
  /** The back-end serves the rings (snapshots stop them instead of checking vireo's indices). */
  readonly externalRings = true;
  readonly face: VhostUserFace;
  private readonly words: Int32Array;
  private ctx: VirtioContext | null = null;

  constructor(private readonly opts: VhostUserDeviceOptions) {
    const face = opts.face;
    this.face = face;
    this.type = face.type;
    this.name = opts.name;
    this.numQueues = face.numQueues;
    this.maxQueueSize = face.maxQueueSize;
    this.configSize = face.configSize;
    this.stateBytes = face.stateBytes;
    this.features = opts.offered.device;
    this.transportFeatures = opts.offered.transport;
    this.words = new Int32Array(opts.block);
  }

  bind(ctx: VirtioContext): void {
    this.ctx = ctx;
    this.face.bind?.(ctx);
  }

  readConfig(offset: number, data: Uint8Array): void {
    this.face.readConfig(offset, data);
  }

  validateFeatures(accepted: bigint): string | null {
    return this.face.validateFeatures?.(accepted) ?? null;
  }

  /** A notification that exited to vireo (the BAR moved away from KVM's ioeventfd): the same eventfd, signalled. */
  queueNotified(q: number): void {
    if (this.opts.role !== "vcpu") return;
    const fd = this.opts.kicks[q];
    if (fd !== undefined) signalEventFd(fd);
  }

  activate(): void {
    if (this.opts.role !== "vcpu") return;
    Atomics.add(this.words, FRONTEND_WORDS.activations, 1);
    signalEventFd(this.opts.wake);
  }

  /**
   * The device is being reset (device lock held): the vhost-user thread stops the rings and this waits until it
   * has, bounded, so a stuck back-end cannot hold the vCPU for long.
   */
  reset(): void {
    if (this.opts.role !== "vcpu") return;
    const w = this.words;
    const want = Atomics.add(w, FRONTEND_WORDS.resets, 1) + 1;
    signalEventFd(this.opts.wake);
    const deadline = performance.now() + RESET_WAIT_MS;
    for (;;) {
      const done = Atomics.load(w, FRONTEND_WORDS.resetsDone);
      if (done - want >= 0) return;
      const left = deadline - performance.now();
      if (left <= 0) {
        this.ctx?.warn(`vhost-user: the rings did not stop within ${RESET_WAIT_MS} ms of the reset`);
        return;
      }
      Atomics.wait(w, FRONTEND_WORDS.resetsDone, done, left);
    }
  }
}
