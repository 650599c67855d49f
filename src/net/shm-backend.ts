/**
 * A NIC's backend on a shared-memory channel (shm-channel.ts): the peer end of a `vireo switch` shm port, for
 * `vireo run --net shm=SOCKET` (and `--net switch=NAME,transport=shm`). The device model (virtio-net) serves the
 * guest's rings on the VM's own I/O thread; frames it transmits are copied into the ring toward the switch,
 * frames from the switch are copied into the guest's receive buffers. Plain Ethernet frames, no virtio_net_hdr
 * (the switch negotiates no offloads either).
 *
 * The receive side is driven like a TAP's (TapBackend): the thread polls `fd` (the channel's kick eventfd) while
 * `wantsInput()`, and calls `pump()`. A frame the guest has no buffer for stays in the ring, and so do the ones
 * after it, until the device calls `rxReady()`: the ring toward the VM fills and the switch drops what does not
 * fit (its noBuffers counter), so nothing queues without bound. A frame the ring toward the switch has no room
 * for is dropped and counted (tx_dropped), as a full TAP queue drops.
 */
import type { VirtioNetBackend } from "../devices/virtio/net.ts";
import { DEFAULT_NOTIFY_BUDGET } from "../devices/virtio/work-budget.ts";
import { type Counter, counterSet, type MetricsSink } from "../metrics/registry.ts";
import { signalEventFd, takeEventFd } from "../native.ts";
import type { Receiver } from "./backend.ts";
import type { ShmChannelEnd } from "./shm-channel.ts";
import { ShmRingError } from "./shm-ring.ts";

/** Frames one rxReady or one readable turn takes from the ring (a work budget's worth); the rest waits for the next. */
export const SHM_RX_SLICE = DEFAULT_NOTIFY_BUDGET.chains;

export class ShmNetBackend implements VirtioNetBackend {
  readonly name: string;
  readonly vnetHdr = false;
  /** Poll for POLLIN to sleep until the switch published frames (the channel's kick toward this side). */
  readonly fd: number;
  private receiver: Receiver | null = null;
  /** A frame the receiver refused waits in the ring: no polling until the next pump (rxReady, a wake). */
  private blocked = false;
  private closed = false;
  private readonly c: Record<"txPackets" | "txDropped" | "rxPackets" | "ringErrors", Counter>;

  constructor(
    private readonly ch: ShmChannelEnd,
    opts: { name: string; metrics?: MetricsSink; metricsName?: string; log?: (m: string) => void },
  ) {
    this.name = opts.name;
    this.fd = ch.kickMe;
    this.log = opts.log ?? (() => {});
    this.c = counterSet(opts.metrics, `net.shm.${opts.metricsName ?? opts.name}`, {
      txPackets: "tx_packets",
      txDropped: "tx_dropped",
      rxPackets: "rx_packets",
      ringErrors: "ring_errors",
    });
  }

  private readonly log: (m: string) => void;

  send(frame: Uint8Array): boolean {
    return this.sendFrom(frame, 0, frame.length);
  }

  sendFrom(bytes: Uint8Array, offset: number, length: number): boolean {
    if (this.closed) return false;
    const out = this.ch.out;
    let ok = false;
    try {
      ok = length <= out.maxFrame && out.push(bytes, offset, length);
    } catch (e) {
      this.broken(e);
      return false;
    }
    if (!ok) {
      this.c.txDropped.add();
      return false;
    }
    this.c.txPackets.add();
    if (out.publish()) signalEventFd(this.ch.kickOther);
    return true;
  }

  attach(receiver: Receiver): void {
    this.receiver = receiver;
    this.blocked = false;
  }

  /** The guest posted buffers: one budget of frames now; pump() kicks this side's fd if more wait. */
  rxReady(): void {
    this.pump(SHM_RX_SLICE);
  }

  wantsInput(): boolean {
    return !this.closed && this.receiver !== null && !this.blocked;
  }

  /**
   * Delivers frames from the ring until it is empty, the guest has no buffer, or `max` were delivered; returns
   * how many. With the ring empty it asks the switch for a kick before the thread sleeps on `fd`.
   */
  pump(max = Number.POSITIVE_INFINITY): number {
    const receiver = this.receiver;
    if (this.closed || receiver === null) return 0;
    // Each pump tries again a frame refused before (buffers may have come: rxReady, or the thread's wake).
    this.blocked = false;
    takeEventFd(this.fd);
    const ring = this.ch.in;
    let delivered = 0;
    try {
      while (delivered < max) {
        let n = ring.available();
        if (n === 0) {
          // Asked for a kick; frames that came meanwhile are taken now (the kick for them may never come).
          if (!ring.sleep()) break;
          n = ring.available();
        }
        ring.awake();
        const bytes = ring.bytes;
        let taken = 0;
        const want = Math.min(n, max - delivered);
        for (; taken < want; taken++) {
          const at = ring.frameAt();
          // The receiver copies what it keeps (backend.ts): the slot is the switch's again after release.
          if (!receiver(bytes.subarray(at, at + ring.frameLength), taken + 1 < want)) {
            this.blocked = true;
            break;
          }
          ring.next();
        }
        if (taken > 0) ring.release();
        delivered += taken;
        this.c.rxPackets.add(taken);
        if (this.blocked) break;
      }
    } catch (e) {
      this.broken(e);
    }
    // A burst ended by `more` must be closed with a call without it (Receiver): publish what was placed.
    if (delivered > 0) receiver.flush?.();
    // Stopped by the budget with frames left: the kick for them was taken above, so this side kicks itself and
    // the thread's next poll(2) returns at once (a TAP's fd would simply stay readable).
    if (!this.closed && !this.blocked && delivered >= max && this.safeAvailable() > 0) signalEventFd(this.fd);
    return delivered;
  }

  private safeAvailable(): number {
    try {
      return this.ch.in.available();
    } catch (e) {
      this.broken(e);
      return 0;
    }
  }

  /** The switch broke the ring (ShmRingError): the NIC stops using it and says so once. */
  private broken(e: unknown): void {
    if (!(e instanceof ShmRingError)) throw e;
    this.c.ringErrors.add();
    this.log(
      `${this.name}: the shm channel is broken (${e.message}); the NIC sends and receives nothing more`,
    );
    this.close();
  }

  /** Stops using the channel (its owner closes the fds). */
  close(): void {
    this.closed = true;
    this.receiver = null;
  }
}
