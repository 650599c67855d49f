/**
 * Frame ends for `vireo vhost-user net` without a host interface, for tests and benchmarks: a sink that counts
 * what the guest transmits and drops it, and a loopback that hands every transmitted frame back to the guest's
 * receive queue. Both implement the NetBackend contract (src/net/backend.ts) that virtio-net drives.
 */
import type { NetBackend, Receiver } from "../net/backend.ts";

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
  /** VirtioNetBackend.readsFrames: frames are counted, not read, so transmit reads none of them ahead. */
  readonly readsFrames = false;
  constructor(readonly counts: FrameCounts = zeroCounts()) {}
  send(frame: Uint8Array): boolean {
    this.counts.txFrames++;
    this.counts.txBytes += frame.length;
    return true;
  }
  /** VirtioNetBackend.sendFrom: the device need not make a view of a frame that is only counted. */
  sendFrom(_bytes: Uint8Array, _offset: number, length: number): boolean {
    this.counts.txFrames++;
    this.counts.txBytes += length;
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

/** Frames one rxReady() offers at most: a driver that refills as fast as it drains cannot hold the loop. */
const GENERATOR_BURST = 4096;

/**
 * Offers the guest the same frame (`size` bytes: an Ethernet/IPv4/UDP frame, no FCS) whenever it has receive
 * buffers, as fast as buffers allow: a load generator for the receive path. Each rxReady() (the driver posted
 * buffers and kicked) fills what the ring holds, up to GENERATOR_BURST frames; the driver's next kick brings it
 * back. Never sends what the guest transmits anywhere (counted as in the sink).
 */
export class GeneratorBackend implements NetBackend {
  readonly name = "generator";
  readonly frame: Uint8Array;
  private receiver: Receiver | null = null;
  constructor(
    size: number,
    readonly counts: FrameCounts = zeroCounts(),
  ) {
    this.frame = udpFrame(size);
  }

  send(frame: Uint8Array): boolean {
    this.counts.txFrames++;
    this.counts.txBytes += frame.length;
    return true;
  }

  attach(receiver: Receiver): void {
    this.receiver = receiver;
    this.rxReady();
  }

  private readonly peek = (): Uint8Array => this.frame;
  private readonly take = (): void => {};

  rxReady(): void {
    const rx = this.receiver;
    if (rx === null) return;
    const f = this.frame;
    let n = 0;
    if (rx.burst) {
      // Bursts while the device takes whole ones (a short one means the guest ran out of buffers).
      for (;;) {
        const k = rx.burst(this.peek, this.take);
        n += k;
        if (k === 0 || n >= GENERATOR_BURST) break;
      }
    } else {
      // Every frame but the burst's last says another follows; a refused one ends the burst as well.
      while (n < GENERATOR_BURST && rx(f, n + 1 < GENERATOR_BURST)) n++;
    }
    this.counts.rxFrames += n;
    this.counts.rxBytes += n * f.length;
  }

  close(): void {
    this.receiver = null;
  }
}

/** Smallest and largest frame the generator builds (Ethernet + IPv4 + UDP headers; a jumbo-free 1518). */
export const GENERATOR_MIN = 42;
export const GENERATOR_MAX = 1518;

/**
 * A broadcast Ethernet frame carrying IPv4/UDP (10.0.0.1:9 -> 10.0.0.2:9, the discard port) of `size` bytes
 * in all, payload zeros, IPv4 header checksum set, UDP checksum 0 (none, RFC 768).
 */
export function udpFrame(size: number): Uint8Array {
  if (!Number.isInteger(size) || size < GENERATOR_MIN || size > GENERATOR_MAX) {
    throw new RangeError(`frame size ${size} is not an integer from ${GENERATOR_MIN} to ${GENERATOR_MAX}`);
  }
  const f = new Uint8Array(size);
  const v = new DataView(f.buffer);
  f.fill(0xff, 0, 6);
  f.set([0x02, 0x00, 0x00, 0x00, 0x00, 0x01], 6);
  v.setUint16(12, 0x0800);
  const ip = 14;
  f[ip] = 0x45;
  v.setUint16(ip + 2, size - ip);
  f[ip + 8] = 64; // TTL
  f[ip + 9] = 17; // UDP
  f.set([10, 0, 0, 1, 10, 0, 0, 2], ip + 12);
  let sum = 0;
  for (let i = ip; i < ip + 20; i += 2) sum += v.getUint16(i);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  v.setUint16(ip + 10, ~sum & 0xffff);
  const udp = ip + 20;
  v.setUint16(udp, 9);
  v.setUint16(udp + 2, 9);
  v.setUint16(udp + 4, size - udp);
  return f;
}
