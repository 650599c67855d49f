/**
 * JavaScript's floor, for `vireo bench switch`: the least per-frame work a vhost-user switch written in JavaScript
 * can do, under the same load as `vireo switch`. It answers how much of the gap between vireo's switch and
 * testpmd is JavaScript on this machine and how much is vireo's own work.
 *
 * Per pair of sockets (A, B), what A's driver transmits goes into B's receive ring and the other way round. Nothing
 * a switch must do is done: no MAC lookup, VLANs, staging copy, interposition or counters. Only split rings are
 * served, and only chains of one direct descriptor (what DPDK's virtio_user posts). A chain of any other shape is
 * used with nothing written and counted. Per batch of up to BATCH frames the loop works in two passes:
 * 1. It reads the descriptors and checks that each buffer lies inside one region of the front-end's memory
 *    (RegionGuestMemory.offsetOf). It then loads the first two cache lines of each frame and stores into the same
 *    lines of its receive buffer (the second only where the frame reaches it), in a loop of those loads and stores alone. JavaScript has no prefetch, and
 *    this loop lets the CPU fetch the lines, which the driver's CPU last wrote, together (measured here with one
 *    pair at 64 B: 3.9 Mpps without this pass, 5.6 with it).
 * 2. It copies each frame behind a 12-byte virtio-net header (virtio 1.2, 5.1.6: num_buffers 1), then writes the
 *    used elements and publishes each ring's used idx once. With VIRTIO_F_IN_ORDER negotiated (offered, as vireo's
 *    virtio-net offers it; DPDK's virtio_user takes it) a transmit batch gets one used element (2.7.9).
 * The driver is asked not to notify (VIRTQ_USED_F_NO_NOTIFY, 2.7.10): the loop polls without sleeping, as
 * testpmd's does. vireo's protocol code (VhostUserEndpoint) serves the sockets. The rings are served here, not by
 * vireo's virtqueue and virtio-net code (SplitQueue.rawLayout gives where they are).
 *
 * This is a benchmark reference, not a switch: frames go to the partner port whatever their address, and a
 * hostile front-end is only kept inside its own memory. The ring indices live here, not in the device's state: a
 * front-end that sends a second memory table mid-connection is not followed.
 *
 *   node --import tsx bench/js-floor.ts SOCKET_A0 SOCKET_B0 [SOCKET_A1 SOCKET_B1 ...]
 *
 * It prints `js-floor ready` once it listens and runs until it is killed.
 */
import { featureBit, VIRTIO_F } from "../src/devices/virtio/constants.ts";
import type { VirtioContext, VirtioDeviceModel } from "../src/devices/virtio/device.ts";
import { SplitQueue } from "../src/devices/virtio/queue/split.ts";
import type { Virtqueue } from "../src/devices/virtio/queue/types.ts";
import type { GuestMemory } from "../src/memory/guest-memory.ts";
import { native } from "../src/native.ts";
import { BUSY_POLL_MS, TURNS_PER_POLL, VhostUserEndpoint } from "../src/vhost-user/endpoint.ts";

/**
 * Frames a pass over one ring takes at most: 64 moved more than 32, 128 or 256 here (the driver gets its buffers
 * back sooner, while the loop serves the other ring).
 */
const BATCH = 64;
const HDR = 12;
const RX = 0;
const TX = 1;
const VIRTQ_DESC_F_NEXT = 1;
const VIRTQ_DESC_F_WRITE = 2;
const VIRTQ_DESC_F_INDIRECT = 4;
const VIRTQ_USED_F_NO_NOTIFY = 1;

/** One ring as the loop serves it: views of its memory, its parts' offsets, and its indices. */
class RawRing {
  readonly u16: Uint16Array;
  readonly u32: Uint32Array;
  readonly bytes: Uint8Array;
  readonly mask: number;
  readonly size: number;
  readonly descOff: number;
  readonly availOff: number;
  readonly usedOff: number;
  lastAvail: number;
  usedIdx: number;

  constructor(
    readonly vq: SplitQueue,
    readonly mem: GuestMemory,
    /** VIRTIO_F_IN_ORDER negotiated: a batch of transmit buffers is answered with one used element (2.7.9). */
    readonly inOrder: boolean,
  ) {
    const b = mem.bytes;
    this.bytes = b;
    this.u16 = new Uint16Array(b.buffer, b.byteOffset, b.byteLength >>> 1);
    this.u32 = new Uint32Array(b.buffer, b.byteOffset, b.byteLength >>> 2);
    const l = vq.rawLayout();
    this.size = vq.size;
    this.mask = vq.size - 1;
    this.descOff = l.descOff;
    this.availOff = l.availOff;
    this.usedOff = l.usedOff;
    this.lastAvail = l.lastAvail;
    this.usedIdx = l.usedIdx;
    this.u16[this.usedOff >>> 1] = VIRTQ_USED_F_NO_NOTIFY;
  }

  /** Entries the driver made available and the loop has not taken. */
  pending(): number {
    return ((this.u16[(this.availOff + 2) >>> 1] as number) - this.lastAvail) & 0xffff;
  }

  /** The head in available entry lastAvail + i, or -1 if it is not below the size. */
  head(i: number): number {
    const h = this.u16[((this.availOff + 4) >>> 1) + ((this.lastAvail + i) & this.mask)] as number;
    return h < this.size ? h : -1;
  }

  /** The offset in `bytes` of descriptor `h`'s buffer if it is a lone one of the right direction and fits, or -1. */
  buffer(h: number, writable: boolean): number {
    const d = (this.descOff + 16 * h) >>> 2;
    const flags = (this.u32[d + 3] as number) & 0xffff;
    if ((flags & (VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_INDIRECT)) !== 0) return -1;
    if (((flags & VIRTQ_DESC_F_WRITE) !== 0) !== writable) return -1;
    const len = this.u32[d + 2] as number;
    if (len < HDR) return -1;
    const addr = (this.u32[d] as number) + (this.u32[d + 1] as number) * 2 ** 32;
    return this.mem.offsetOf(addr, len);
  }

  length(h: number): number {
    return this.u32[((this.descOff + 16 * h) >>> 2) + 2] as number;
  }

  /**
   * Writes a used element (not yet published). In order (2.7.9), `count` buffers used as one batch: one element at
   * the batch's first slot, holding the last one's head `h`.
   */
  use(h: number, len: number, count = 1): void {
    const at = (this.usedOff + 4 + 8 * (this.usedIdx & this.mask)) >>> 2;
    this.u32[at] = h;
    this.u32[at + 1] = len;
    this.usedIdx = (this.usedIdx + count) & 0xffff;
  }

  publish(): void {
    Atomics.store(this.u16, (this.usedOff + 2) >>> 1, this.usedIdx);
  }
}

/**
 * A port's device: virtio-net with no features of its own, whose rings a floor's loop serves (this file's, and
 * bench/wasm-floor.ts's). `R` is how that loop holds a ring: made once per ring, from the device's indices then;
 * a ring the loop cannot serve is null (made once too, and left alone).
 */
export class FloorPort<R> implements VirtioDeviceModel {
  readonly type = 1;
  readonly numQueues = 2;
  readonly maxQueueSize = 1024;
  readonly features = 0n;
  // Split rings, no event index, no indirect tables: the shape the loop serves. IN_ORDER as vireo's virtio-net
  // offers it: the loop uses buffers in ring order, and answers a transmit batch with one used element.
  readonly transportFeatures = featureBit(VIRTIO_F.VERSION_1) | featureBit(VIRTIO_F.IN_ORDER);
  readonly configSize = 20;
  readonly stateBytes = 8;
  ctx: VirtioContext | null = null;
  private readonly rings = new WeakMap<Virtqueue, R | null>();
  constructor(
    readonly name: string,
    /** The loop's hold of a split ring over `mem`, or null; `inOrder`: VIRTIO_F_IN_ORDER negotiated. */
    private readonly makeRing: (vq: SplitQueue, mem: GuestMemory, inOrder: boolean) => R | null,
  ) {}
  bind(ctx: VirtioContext): void {
    this.ctx = ctx;
  }
  readConfig(_offset: number, data: Uint8Array): void {
    data.fill(0);
  }
  queueNotified(): void {
    // The loop serves the rings every turn.
  }
  ring(vq: Virtqueue | null): R | null {
    if (vq === null || !(vq instanceof SplitQueue) || this.ctx === null) return null;
    let r = this.rings.get(vq);
    if (r === undefined) {
      r = this.makeRing(vq, this.ctx.mem, this.ctx.hasFeature(VIRTIO_F.IN_ORDER));
      this.rings.set(vq, r);
    }
    return r;
  }
}

/** What the loop did; `touched` sums pass 1's loads, so that the compiler cannot drop them. */
export const floorStats = { frames: 0, notLone: 0, noRoom: 0, touched: 0 };
const txHead = new Int32Array(BATCH);
const txOff = new Float64Array(BATCH);
const rxHead = new Int32Array(BATCH);
const rxOff = new Float64Array(BATCH);

/** Moves what `tx` holds into `rx` (one batch). */
function forward(tx: RawRing, rx: RawRing): void {
  let n = tx.pending();
  if (n === 0) return;
  if (n > BATCH) n = BATCH;
  const rxPending = rx.pending();
  const tb = tx.bytes;
  const rb = rx.bytes;
  // Pass 1: descriptors, checks, and the lines of every buffer of the batch together.
  let j = 0;
  for (let i = 0; i < n; i++) {
    const th = tx.head(i);
    const t = th < 0 ? -1 : tx.buffer(th, false);
    txHead[i] = th;
    txOff[i] = t;
    rxHead[i] = -1;
    if (t < 0) continue;
    // The second line only where the frame reaches it: past its end lies memory the driver did not give us.
    const len = tx.length(th);
    floorStats.touched += (tb[t] as number) + (len > 64 ? (tb[t + 64] as number) : 0);
    while (j < rxPending) {
      const rh = rx.head(j++);
      const r = rh < 0 ? -1 : rx.buffer(rh, true);
      if (r >= 0 && rx.length(rh) >= len) {
        rxHead[i] = rh;
        rxOff[i] = r;
        // Stores the copy below overwrites.
        rb[r] = 0;
        if (len > 64) rb[r + 64] = 0;
        break;
      }
      // A buffer the frame does not fit goes back empty; a head past the ring has no element to go back in.
      if (rh >= 0) rx.use(rh, 0);
    }
  }
  // Pass 2: copies and used elements.
  let txLast = -1;
  let txUsed = 0;
  for (let i = 0; i < n; i++) {
    const th = txHead[i] as number;
    const rh = rxHead[i] as number;
    if (rh >= 0) {
      const t = txOff[i] as number;
      const r = rxOff[i] as number;
      const len = tx.length(th);
      for (let k = 0; k < HDR - 2; k++) rb[r + k] = 0;
      rb[r + HDR - 2] = 1; // num_buffers
      rb[r + HDR - 1] = 0;
      if (((t | r) & 3) === 0) {
        // By 32-bit words where both buffers allow it, then the last bytes: more than TypedArray.set's call and
        // view moved here (64 B: about 8.7 against 7.8 Mpps).
        const tw = tx.u32;
        const rw = rx.u32;
        const from = (t + HDR) >>> 2;
        const to = (r + HDR) >>> 2;
        const words = (len - HDR) >>> 2;
        for (let w = 0; w < words; w++) rw[to + w] = tw[from + w] as number;
        for (let k = HDR + 4 * words; k < len; k++) rb[r + k] = tb[t + k] as number;
      } else {
        rb.set(tb.subarray(t + HDR, t + len), r + HDR);
      }
      rx.use(rh, len);
      floorStats.frames++;
    } else if ((txOff[i] as number) < 0) {
      floorStats.notLone++;
    } else {
      floorStats.noRoom++;
    }
    if (th < 0) continue;
    if (tx.inOrder) {
      txLast = th;
      txUsed++;
    } else {
      tx.use(th, 0);
    }
  }
  if (txUsed > 0) tx.use(txLast, 0, txUsed);
  tx.lastAvail = (tx.lastAvail + n) & 0xffff;
  rx.lastAvail = (rx.lastAvail + j) & 0xffff;
  tx.publish();
  if (j > 0) rx.publish();
}

/** Serves the sockets' pairs until killed: this file's loop, in JavaScript. */
export function runFloor(sockets: string[], log: (m: string) => void): never {
  return runFloorLoop("js-floor", sockets, log, (vq, mem, inOrder) => new RawRing(vq, mem, inOrder), forward);
}

/**
 * A floor's loop over the sockets' pairs, until killed: per pair, `forward` moves one batch from each side's
 * transmit ring into the other's receive ring, each ring held as the device's queues are. `name` is what the
 * ready line says (`NAME ready`).
 */
export function runFloorLoop<R>(
  name: string,
  sockets: string[],
  log: (m: string) => void,
  makeRing: (vq: SplitQueue, mem: GuestMemory, inOrder: boolean) => R | null,
  forward: (tx: R, rx: R) => void,
): never {
  if (sockets.length === 0 || sockets.length % 2 !== 0)
    throw new Error("give the sockets of whole pairs (A0 B0 A1 B1 ...)");
  const ports = sockets.map((_, i) => new FloorPort(`port ${i}`, makeRing));
  const endpoints = sockets.map((socketPath, i) => {
    const port = ports[i] as FloorPort<R>;
    const e = new VhostUserEndpoint({
      socketPath,
      log: (m) => log(`${port.name}: ${m}`),
      busyPollMs: BUSY_POLL_MS,
      model: () => port,
    });
    e.listen();
    return e;
  });
  const pollfds = new Int32Array(3 * 64);
  const n = native();
  // One batch from `from`'s transmit ring into `to`'s receive ring.
  const serve = (from: FloorPort<R>, to: FloorPort<R>): void => {
    const fc = from.ctx;
    const tc = to.ctx;
    if (fc === null || tc === null) return;
    fc.withQueue(TX, (txq) => {
      const tx = from.ring(txq);
      if (tx === null) return;
      tc.withQueue(RX, (rxq) => {
        const rx = to.ring(rxq);
        if (rx !== null) forward(tx, rx);
      });
    });
  };
  log(`${name} ready`);
  for (let turn = 0; ; turn++) {
    // Connections and control messages every TURNS_PER_POLL turns (sleeping only while no pair is connected).
    if (turn % TURNS_PER_POLL === 0) {
      let used = 0;
      for (const e of endpoints) used += e.addPollFds(pollfds, used);
      const anyone = endpoints.some((e) => e.connected);
      n.poll(pollfds.subarray(0, 3 * used), anyone ? 0 : 100);
      for (const [i, e] of endpoints.entries()) {
        e.handlePoll(pollfds);
        // The front-end left: its memory is unmapped with the connection, so nothing may touch its rings.
        if (!e.connected) (ports[i] as FloorPort<R>).ctx = null;
      }
    }
    for (let p = 0; p < ports.length; p += 2) {
      const a = ports[p] as FloorPort<R>;
      const b = ports[p + 1] as FloorPort<R>;
      serve(a, b);
      serve(b, a);
    }
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  runFloor(process.argv.slice(2), (m) => process.stdout.write(`${m}\n`));
}
