/**
 * A virtio-net device whose rings a vhost-user back-end serves (vireo as the front-end, `--net vhost-user=PATH`).
 * What stays in vireo is the virtio-pci transport and the device's own face: features, the configuration space
 * (MAC, link status, from vireo's VirtioNet) and the status state machine. The rings are the back-end's: the
 * guest's doorbells are KVM ioeventfds the back-end polls (kick fds), its interrupts irqfds the back-end signals
 * (call fds), and guest RAM is shared with it, so no frame passes through vireo.
 *
 * Threads: every vCPU thread builds this model over the shared device state. A vCPU thread never touches a ring:
 * on DRIVER_OK it tells the device's vhost-user thread (src/vhost-user/frontend-thread.ts), which owns the
 * connection and starts the rings; on reset it asks that thread to stop them (GET_VRING_BASE) and waits, so the
 * back-end has let go of the rings before the driver reuses their memory (virtio 1.2, 2.4: the reset is done
 * when device_status reads 0).
 */
import { featureBit, VIRTIO_F } from "../devices/virtio/constants.ts";
import type { VirtioContext, VirtioDeviceModel } from "../devices/virtio/device.ts";
import { VIRTIO_NET_F, VirtioNet, type VirtioNetBackend } from "../devices/virtio/net.ts";
import { signalEventFd } from "../native.ts";
import { VHOST_USER_F_PROTOCOL_FEATURES } from "./protocol.ts";

/** Net features that are the back-end's business (it moves the frames): offered when the back-end offers them. */
export const BACKEND_NET_FEATURES = [
  VIRTIO_NET_F.CSUM,
  VIRTIO_NET_F.GUEST_CSUM,
  VIRTIO_NET_F.GUEST_TSO4,
  VIRTIO_NET_F.GUEST_TSO6,
  VIRTIO_NET_F.GUEST_ECN,
  VIRTIO_NET_F.GUEST_UFO,
  VIRTIO_NET_F.HOST_TSO4,
  VIRTIO_NET_F.HOST_TSO6,
  VIRTIO_NET_F.HOST_ECN,
  VIRTIO_NET_F.HOST_UFO,
  VIRTIO_NET_F.MRG_RXBUF,
].reduce((m, b) => m | featureBit(b), 0n);

/**
 * Ring features vireo's front-end passes through: EVENT_IDX and indirect descriptors are the back-end's to honour.
 * Packed rings are not (a packed ring's base carries wrap counters this front-end does not restore yet), nor
 * RING_RESET (one ring stopped alone).
 */
export const BACKEND_TRANSPORT_FEATURES =
  featureBit(VIRTIO_F.VERSION_1) | featureBit(VIRTIO_F.RING_EVENT_IDX) | featureBit(VIRTIO_F.INDIRECT_DESC);

/** Features vireo itself serves (the configuration space): offered whatever the back-end says. */
export const VIREO_NET_FEATURES = featureBit(VIRTIO_NET_F.MAC) | featureBit(VIRTIO_NET_F.STATUS);

/** The queue size offered to the guest (QEMU's default for vhost-user net too). */
export const VHOST_USER_NET_QUEUE_SIZE = 256;

/** What the guest is offered for a back-end offering `backend` (GET_FEATURES). */
export function guestFeatures(backend: bigint): { device: bigint; transport: bigint } {
  return {
    device: (backend & BACKEND_NET_FEATURES) | VIREO_NET_FEATURES,
    transport: backend & BACKEND_TRANSPORT_FEATURES,
  };
}

/**
 * What SET_FEATURES says, given what the guest negotiated: the back-end's share of it (features vireo serves
 * itself, like MAC, only if the back-end offered them too) and bit 30 when the back-end speaks protocol features.
 */
export function backendAck(negotiated: bigint, backend: bigint): bigint {
  const proto = featureBit(VHOST_USER_F_PROTOCOL_FEATURES);
  return (negotiated & backend & ~proto) | (backend & proto);
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
  count: 5,
} as const;

export function createFrontendBlock(): SharedArrayBuffer {
  return new SharedArrayBuffer(FRONTEND_WORDS.count * 4);
}

/** How long a vCPU's reset waits for the rings to stop: a little over one reply timeout of the back-end. */
export const RESET_WAIT_MS = 6000;

export interface VhostUserNetOptions {
  name: string;
  mac: Uint8Array;
  /** The back-end's GET_FEATURES. */
  backendFeatures: bigint;
  /** Eventfd per queue: KVM's ioeventfd on its notify address, and the back-end's kick fd. */
  kicks: readonly number[];
  /** Wakes the vhost-user thread. */
  wake: number;
  block: SharedArrayBuffer;
  /** "vcpu": the register side (tells the vhost-user thread); "thread": the vhost-user thread's own view. */
  role: "vcpu" | "thread";
}

/** A backend for the configuration-space VirtioNet: its rings are never served here. */
const NO_FRAMES: VirtioNetBackend = {
  name: "vhost-user",
  send: () => false,
  attach() {},
  rxReady() {},
  close() {},
};

export class VhostUserNet implements VirtioDeviceModel {
  readonly type: number;
  readonly name: string;
  readonly numQueues = 2;
  readonly maxQueueSize = VHOST_USER_NET_QUEUE_SIZE;
  readonly features: bigint;
  readonly transportFeatures: bigint;
  readonly configSize: number;
  readonly stateBytes: number;
  /** The configuration space, link state and feature rules are vireo's VirtioNet's. */
  readonly net: VirtioNet;
  private readonly words: Int32Array;
  private ctx: VirtioContext | null = null;

  constructor(private readonly opts: VhostUserNetOptions) {
    this.net = new VirtioNet({
      backend: NO_FRAMES,
      mac: opts.mac,
      name: opts.name,
      queueSize: VHOST_USER_NET_QUEUE_SIZE,
    });
    this.type = this.net.type;
    this.name = opts.name;
    this.configSize = this.net.configSize;
    this.stateBytes = this.net.stateBytes;
    const f = guestFeatures(opts.backendFeatures);
    this.features = f.device;
    this.transportFeatures = f.transport;
    this.words = new Int32Array(opts.block);
  }

  bind(ctx: VirtioContext): void {
    this.ctx = ctx;
    this.net.bind(ctx);
  }

  readConfig(offset: number, data: Uint8Array): void {
    this.net.readConfig(offset, data);
  }

  validateFeatures(accepted: bigint): string | null {
    return this.net.validateFeatures(accepted);
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
