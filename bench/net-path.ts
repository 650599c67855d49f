/**
 * The per-frame cost of vireo's virtio-net path on its own, with no process, socket or eventfd in between: a
 * split-ring driver in this process (written here, lean, allocating nothing per frame, as DPDK's virtio PMD keeps
 * its rings) drives the same VirtioDevice and VirtioNet that `vireo vhost-user net` serves, through the same
 * calls the back-end makes for a kick (VirtioDevice.notify).
 *
 * - transmit: one descriptor per frame (virtio-net header and frame together, as DPDK's virtio_user sends a
 *   small frame), the ring refilled and kicked after every drain, into a SinkBackend;
 * - receive: one device-writable descriptor of 2 KiB per buffer, reposted after every drain, filled by a
 *   GeneratorBackend (`--gen`).
 *
 * Features as DPDK's virtio_user negotiates them with vireo: VERSION_1 and MRG_RXBUF, no EVENT_IDX; the driver
 * asks for no interrupts (VRING_AVAIL_F_NO_INTERRUPT), as a polling driver does. Reported: nanoseconds per frame
 * of wall time and of this thread's CPU time (the driver's share included; it is a few array stores per frame).
 */
import { readFileSync } from "node:fs";
import { VIRTIO_F, VIRTIO_STATUS } from "../src/devices/virtio/constants.ts";
import { VirtioDevice } from "../src/devices/virtio/device.ts";
import { NET_RX_QUEUE, NET_TX_QUEUE, VIRTIO_NET_F, VirtioNet } from "../src/devices/virtio/net.ts";
import { splitAreaSizes } from "../src/devices/virtio/queue/index.ts";
import { GuestMemory } from "../src/memory/guest-memory.ts";
import { GeneratorBackend, SinkBackend, zeroCounts } from "../src/vhost-user/net-backends.ts";

const HDR = 12;
const BUF = 2048;
const VRING_AVAIL_F_NO_INTERRUPT = 1;

export interface NetPathResult {
  direction: "tx" | "rx";
  frameBytes: number;
  frames: number;
  /** Wall-clock and thread-CPU nanoseconds per frame. */
  wallNs: number;
  cpuNs: number;
  /** Frames per second of thread CPU time, in millions. */
  cpuMpps: number;
}

/** This thread's CPU time in ns (schedstat), or process CPU time where schedstat is missing. */
function threadCpuNs(): number {
  try {
    return Number(readFileSync("/proc/thread-self/schedstat", "utf8").split(" ")[0]);
  } catch {
    const u = process.cpuUsage();
    return (u.user + u.system) * 1000;
  }
}

/** A split ring in guest memory as a driver keeps it: addresses and its own free-running indices. */
class Ring {
  readonly desc: number;
  readonly avail: number;
  readonly used: number;
  availIdx = 0;
  lastUsed = 0;
  constructor(
    private readonly dv: DataView,
    at: number,
    readonly size: number,
  ) {
    const s = splitAreaSizes(size);
    this.desc = at;
    this.avail = at + s.desc;
    this.used = (this.avail + s.avail + 3) & ~3;
  }
  get end(): number {
    return this.used + splitAreaSizes(this.size).used;
  }
  setDesc(i: number, addr: number, len: number, flags: number): void {
    const o = this.desc + 16 * i;
    this.dv.setUint32(o, addr, true);
    this.dv.setUint32(o + 4, 0, true);
    this.dv.setUint32(o + 8, len, true);
    this.dv.setUint16(o + 12, flags, true);
    this.dv.setUint16(o + 14, 0, true);
  }
  offer(head: number): void {
    this.dv.setUint16(this.avail + 4 + 2 * (this.availIdx & (this.size - 1)), head, true);
    this.availIdx = (this.availIdx + 1) & 0xffff;
  }
  publish(): void {
    this.dv.setUint16(this.avail + 2, this.availIdx, true);
  }
  /** Takes used entries back and offers their heads again; returns how many. */
  recycle(): number {
    const usedIdx = this.dv.getUint16(this.used + 2, true);
    let n = 0;
    while (this.lastUsed !== usedIdx) {
      this.offer(this.dv.getUint32(this.used + 4 + 8 * (this.lastUsed & (this.size - 1)), true));
      this.lastUsed = (this.lastUsed + 1) & 0xffff;
      n++;
    }
    this.publish();
    return n;
  }
}

function setup(direction: "tx" | "rx", frameBytes: number, ringSize: number) {
  const mem = new GuestMemory(new SharedArrayBuffer(8 << 20));
  const dv = new DataView(mem.bytes.buffer);
  const counts = zeroCounts();
  const backend = direction === "tx" ? new SinkBackend(counts) : new GeneratorBackend(frameBytes, counts);
  const model = new VirtioNet({ backend, queueSize: ringSize });
  const dev = new VirtioDevice({
    state: VirtioDevice.createState({ numQueues: 2, stateBytes: model.stateBytes }),
    model,
    mem,
    interrupts: { queue: () => {}, config: () => {} },
  });
  const rx = new Ring(dv, 0x1000, ringSize);
  const tx = new Ring(dv, (rx.end + 0xfff) & ~0xfff, ringSize);
  const bufs = (tx.end + 0xfff) & ~0xfff;
  for (let i = 0; i < ringSize; i++) {
    rx.setDesc(i, bufs + BUF * i, BUF, 2 /* VIRTQ_DESC_F_WRITE */);
    const t = bufs + BUF * (ringSize + i);
    tx.setDesc(i, t, HDR + frameBytes, 0);
    mem.bytes.set(backend instanceof GeneratorBackend ? backend.frame : new Uint8Array(frameBytes), t + HDR);
  }
  dv.setUint16(rx.avail, VRING_AVAIL_F_NO_INTERRUPT, true);
  dv.setUint16(tx.avail, VRING_AVAIL_F_NO_INTERRUPT, true);
  const features =
    (1n << BigInt(VIRTIO_F.VERSION_1)) |
    (1n << BigInt(VIRTIO_NET_F.MRG_RXBUF)) |
    (1n << BigInt(VIRTIO_NET_F.MAC));
  dev.writeStatus(VIRTIO_STATUS.ACKNOWLEDGE | VIRTIO_STATUS.DRIVER);
  for (const sel of [0, 1]) {
    dev.driverFeatureSelect = sel;
    dev.writeDriverFeatures(Number((features >> BigInt(32 * sel)) & 0xffffffffn));
  }
  const ok = VIRTIO_STATUS.ACKNOWLEDGE | VIRTIO_STATUS.DRIVER | VIRTIO_STATUS.FEATURES_OK;
  dev.writeStatus(ok);
  for (const [q, r] of [
    [NET_RX_QUEUE, rx],
    [NET_TX_QUEUE, tx],
  ] as const) {
    dev.writeQueue(q, "size", ringSize);
    dev.writeQueue(q, "desc_lo", r.desc);
    dev.writeQueue(q, "driver_lo", r.avail);
    dev.writeQueue(q, "device_lo", r.used);
    dev.writeQueue(q, "enable", 1);
  }
  // Every receive buffer posted before DRIVER_OK; transmit buffers are offered by the loop.
  for (let i = 0; i < ringSize; i++) rx.offer(i);
  rx.publish();
  dev.writeStatus(ok | VIRTIO_STATUS.DRIVER_OK);
  return { dev, rx, tx, counts };
}

/** Runs `frames` frames one way; returns the cost per frame. */
export function measureNetPath(
  direction: "tx" | "rx",
  frameBytes: number,
  frames: number,
  ringSize = 256,
): NetPathResult {
  const { dev, rx, tx, counts } = setup(direction, frameBytes, ringSize);
  const counted = () => (direction === "tx" ? counts.txFrames : counts.rxFrames);
  const step =
    direction === "tx"
      ? () => {
          tx.recycle();
          dev.notify(NET_TX_QUEUE);
          while (dev.serveDeferred()) {}
        }
      : () => {
          rx.recycle();
          dev.notify(NET_RX_QUEUE);
        };
  if (direction === "tx") for (let i = 0; i < ringSize; i++) tx.offer(i);
  // Warm up (JIT, ring state), then measure.
  while (counted() < Math.min(frames, 200_000)) step();
  const start = counted();
  const t0 = process.hrtime.bigint();
  const c0 = threadCpuNs();
  while (counted() - start < frames) step();
  const cpu = threadCpuNs() - c0;
  const wall = Number(process.hrtime.bigint() - t0);
  const n = counted() - start;
  if (dev.status & VIRTIO_STATUS.DEVICE_NEEDS_RESET) throw new Error("net-path: the device failed");
  return { direction, frameBytes, frames: n, wallNs: wall / n, cpuNs: cpu / n, cpuMpps: (n / cpu) * 1000 };
}

// `node --import tsx bench/net-path.ts [FRAMES [tx|rx [SIZE]]]`: print the cases (profile with --cpu-prof).
if (import.meta.url === `file://${process.argv[1]}`) {
  const frames = Number(process.argv[2] ?? 2_000_000);
  const dirs = process.argv[3] ? [process.argv[3] as "tx" | "rx"] : (["tx", "rx"] as const);
  const sizes = process.argv[4] ? [Number(process.argv[4])] : [64, 1518];
  for (const dir of dirs) {
    for (const size of sizes) {
      const r = measureNetPath(dir, size, frames);
      console.log(
        `${dir} ${String(size).padStart(4)} B: ${r.cpuNs.toFixed(0).padStart(5)} ns/frame CPU, ${r.wallNs.toFixed(0).padStart(5)} ns wall, ${r.cpuMpps.toFixed(2)} Mpps of CPU`,
      );
    }
  }
}
