/**
 * Frame ends for `vireo vhost-user net` without a host interface, for tests and benchmarks: a sink that counts
 * what the guest transmits and drops it, and a loopback that hands every transmitted frame back to the guest's
 * receive queue. Both implement the NetBackend contract (src/net/backend.ts) that virtio-net drives.
 */
import type { NetBackend } from "../net/backend.ts";

export interface FrameCounts {
  txFrames: number;
  txBytes: number;
  rxFrames: number;
  rxBytes: number;
  dropped: number;
}

export function zeroCounts(): FrameCounts {
  return { txFrames: 0, txBytes: 0, rxFrames: 0, rxBytes: 0, dropped: 0 };
}

/** Counts and drops every frame the guest sends; never delivers any. */
export class SinkBackend implements NetBackend {
  readonly name = "sink";
  constructor(readonly counts: FrameCounts = zeroCounts()) {}
  send(frame: Uint8Array): boolean {
    this.counts.txFrames++;
    this.counts.txBytes += frame.length;
    return true;
  }
  attach(): void {}
  rxReady(): void {}
  close(): void {}
}

/** Frames queued for the guest while it has no receive buffers (beyond this they are dropped and counted). */
const LOOPBACK_QUEUE = 1024;

/** Every frame the guest sends comes back on its receive queue, in order; none lost within LOOPBACK_QUEUE. */
export class LoopbackBackend implements NetBackend {
  readonly name = "loopback";
  private receiver: ((frame: Uint8Array) => boolean) | null = null;
  private readonly queue: Uint8Array[] = [];
  private closed = false;
  constructor(readonly counts: FrameCounts = zeroCounts()) {}

  send(frame: Uint8Array): boolean {
    if (this.closed) return false;
    this.counts.txFrames++;
    this.counts.txBytes += frame.length;
    if (this.queue.length >= LOOPBACK_QUEUE) {
      this.counts.dropped++;
      return false;
    }
    // NetBackend.send may not keep its argument: a copy waits for the guest's receive buffers.
    this.queue.push(frame.slice());
    this.flush();
    return true;
  }

  attach(receiver: (frame: Uint8Array) => boolean): void {
    this.receiver = receiver;
    this.flush();
  }

  rxReady(): void {
    this.flush();
  }

  close(): void {
    this.closed = true;
    this.receiver = null;
    this.queue.length = 0;
  }

  /** Drops frames still waiting for the guest (the front-end went away). */
  clear(): void {
    this.queue.length = 0;
  }

  private flush(): void {
    const rx = this.receiver;
    if (rx === null) return;
    while (this.queue.length > 0) {
      const f = this.queue[0] as Uint8Array;
      if (!rx(f)) return;
      this.queue.shift();
      this.counts.rxFrames++;
      this.counts.rxBytes += f.length;
    }
  }
}
