/**
 * Hostile virtio drivers for the fuzzer: every device model (blk, net, console, rng) through the virtio-pci
 * transport, and a "pci" family that picks a model per case and spends most of its operations on the transport's
 * registers (common configuration, ISR, device configuration, notify addresses, the MSI-X table and PBA, PCI
 * configuration space and the pci_cfg access window).
 *
 * A case builds a fresh device (transport, VirtioDevice, model, backend) over a guarded guest RAM, negotiates
 * random features (split or packed rings, EVENT_IDX, indirect descriptors, RING_RESET, IN_ORDER, device bits, sometimes
 * garbage), sets queues up (sometimes at misaligned, overlapping or out-of-RAM addresses), then runs a random
 * script: well-formed requests, garbage descriptors, indirect tables, floods where every avail slot names one
 * chain whose descriptors cover the same guest pages again and again, ring corruption, kicks, deferred slices,
 * register garbage, queue resets, device resets mid-request, MSI-X writes and backend input. At the end it serves
 * deferred slices until the device owes nothing (bounded: a device that keeps owing work fails as a hang), then
 * checks the canaries, the memory escapes, the device's log and its slice statistics.
 */
import type { BlockBackend } from "../../src/block/backend.ts";
import { BlockIoError } from "../../src/block/backend.ts";
import { MemoryBlockBackend } from "../../src/block/memory.ts";
import { VIRTIO_BLK_T, VirtioBlk } from "../../src/devices/virtio/blk.ts";
import { VirtioConsole } from "../../src/devices/virtio/console.ts";
import { VIRTIO_F, VIRTIO_STATUS } from "../../src/devices/virtio/constants.ts";
import type { VirtioDeviceModel } from "../../src/devices/virtio/device.ts";
import { VirtioNet, type VirtioNetBackend } from "../../src/devices/virtio/net.ts";
import {
  COMMON,
  COMMON_CFG_OFFSET,
  DEVICE_CFG_OFFSET,
  ISR_OFFSET,
  NOTIFY_OFF_MULTIPLIER,
  NOTIFY_OFFSET,
  VirtioPciTransport,
} from "../../src/devices/virtio/pci-transport.ts";
import {
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
} from "../../src/devices/virtio/queue/index.ts";
import { VirtioRng } from "../../src/devices/virtio/rng.ts";
import { DEFAULT_NOTIFY_BUDGET, MAX_CHAIN_WORK } from "../../src/devices/virtio/work-budget.ts";
import { type RawDescriptor, VirtioTestDriver } from "../helpers/virtio-driver.ts";
import {
  type CaseResult,
  type CheckedMemory,
  CountingMetrics,
  type Family,
  guardedRam,
  isInternalLog,
  Probe,
  type ProbeOptions,
  Rng,
} from "./engine.ts";

export type VirtioKind = "blk" | "net" | "console" | "rng";

export interface VirtioFuzzLimits {
  /** Deferred slices served at the end of a case before a device still owing work is a hang. */
  maxDrainSlices: number;
}

export const DEFAULT_VIRTIO_LIMITS: VirtioFuzzLimits = { maxDrainSlices: 4096 };

const SLICE_BYTES_LIMIT = DEFAULT_NOTIFY_BUDGET.bytes + MAX_CHAIN_WORK;
const SLICE_CHAINS_LIMIT = DEFAULT_NOTIFY_BUDGET.chains;
const KiB = 1024;
const MiB = 1024 * 1024;

const S = VIRTIO_STATUS;
const F_PACKED = 1n << BigInt(VIRTIO_F.RING_PACKED);
const F_VERSION_1 = 1n << BigInt(VIRTIO_F.VERSION_1);

// ---- backends ----------------------------------------------------------------------------------------------

/** A block backend that fails on demand (every operation throws BlockIoError while `failing`). */
class FlakyBackend implements BlockBackend {
  failing = false;
  constructor(private readonly inner: MemoryBlockBackend) {}
  get size(): number {
    return this.inner.size;
  }
  get readOnly(): boolean {
    return this.inner.readOnly;
  }
  get canDiscard(): boolean {
    return this.inner.canDiscard;
  }
  private gate(what: string): void {
    if (this.failing) throw new BlockIoError(`${what}: injected failure`);
  }
  read(offset: number, dst: Uint8Array): void {
    this.gate("read");
    this.inner.read(offset, dst);
  }
  write(offset: number, src: Uint8Array): void {
    this.gate("write");
    this.inner.write(offset, src);
  }
  flush(): void {
    this.gate("flush");
    this.inner.flush();
  }
  discard(offset: number, length: number): void {
    this.gate("discard");
    this.inner.discard(offset, length);
  }
  writeZeroes(offset: number, length: number, mayUnmap: boolean): void {
    this.gate("write zeroes");
    this.inner.writeZeroes(offset, length, mayUnmap);
  }
  close(): void {}
}

/**
 * A deterministic network backend: frames for the guest wait in a bounded queue and are offered to the device's
 * receiver (a call into the device, probed) until it refuses one; sent frames are counted.
 */
class FuzzNetBackend implements VirtioNetBackend {
  readonly name = "fuzz-net";
  sent = 0;
  sentBytes = 0;
  dropped = 0;
  private receiver: ((f: Uint8Array) => boolean) | null = null;
  private readonly queue: Uint8Array[] = [];
  probe: Probe | null = null;

  constructor(
    readonly vnetHdr: boolean,
    private readonly capacity: number,
  ) {}

  send(frame: Uint8Array): boolean {
    this.sent++;
    this.sentBytes += frame.length;
    return true;
  }
  attach(receiver: (f: Uint8Array) => boolean): void {
    this.receiver = receiver;
  }
  setOffloads(): void {}
  close(): void {}

  /** A frame arrives from the outside. */
  inject(frame: Uint8Array): void {
    if (this.queue.length >= this.capacity) {
      this.dropped++;
      return;
    }
    this.queue.push(frame);
    this.deliver();
  }

  rxReady(): void {
    this.deliver();
  }

  private delivering = false;
  private deliver(): void {
    if (this.delivering || !this.receiver) return;
    this.delivering = true;
    try {
      while (this.queue.length > 0) {
        const f = this.queue[0] as Uint8Array;
        const rx = this.receiver;
        const took = this.probe ? this.probe.call("net receive", () => rx(f)) : rx(f);
        if (took !== true) break;
        this.queue.shift();
      }
    } finally {
      this.delivering = false;
    }
  }
}

// ---- one case ----------------------------------------------------------------------------------------------

interface QueueState {
  q: number;
  drv: VirtioTestDriver | null;
  base: number;
  limit: number;
  size: number;
}

interface Model {
  kind: VirtioKind;
  model: VirtioDeviceModel;
  /** The backend input an outside world would give (net frames, console keystrokes, blk failures). */
  backendEvent(c: VirtioCase): void;
  /** A well-formed (mostly) request for queue q. */
  request(c: VirtioCase, q: QueueState): void;
  /** Descriptors for a flood on queue q: which direction each element has. */
  floodShape(c: VirtioCase, q: number): { writable: (i: number, n: number) => boolean; header?: Uint8Array };
  events(c: VirtioCase): Record<string, number>;
}

const RAM_SIZES = [64 * KiB, 256 * KiB, 1 * MiB, 4 * MiB] as const;
const RAM_WEIGHTS = [45, 35, 17, 3];

function ramBase(r: Rng, size: number): number {
  switch (r.weighted([60, 15, 15, 10])) {
    case 0:
      return 0x10000;
    case 1:
      return 0;
    case 2:
      // RAM that crosses the 4 GiB line: descriptor addresses need both halves.
      return 2 ** 32 - size / 2;
    default:
      // The top of the range a double holds exactly: lengths past it must be refused, not rounded.
      return 2 ** 53 - size - 64 * KiB;
  }
}

function le(size: number, value: number | bigint): Uint8Array {
  const b = new Uint8Array(size);
  if (typeof value === "number" && size <= 4) {
    let n = value >>> 0;
    for (let i = 0; i < size; i++) {
      b[i] = n & 0xff;
      n >>>= 8;
    }
    return b;
  }
  let v = BigInt.asUintN(64, BigInt(value));
  for (let i = 0; i < size; i++) {
    b[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  return b;
}

function leValue(b: Uint8Array): number {
  let v = 0;
  for (let i = b.length - 1; i >= 0; i--) v = v * 256 + (b[i] as number);
  return v;
}

/** Weights of the script's operations (see VirtioCase.step). */
const OPS = [
  "kick",
  "request",
  "flood",
  "garbage",
  "corrupt",
  "serve",
  "commonGarbage",
  "regRead",
  "configWrite",
  "queueReset",
  "deviceReset",
  "statusGarbage",
  "msix",
  "pciConfig",
  "backend",
  "reclaim",
  "notifyGarbage",
] as const;
type Op = (typeof OPS)[number];
export const DEVICE_WEIGHTS: Record<Op, number> = {
  kick: 30,
  request: 26,
  flood: 2,
  garbage: 5,
  corrupt: 3,
  serve: 8,
  commonGarbage: 3,
  regRead: 2,
  configWrite: 1,
  queueReset: 2,
  deviceReset: 2,
  statusGarbage: 1,
  msix: 2,
  pciConfig: 1,
  backend: 7,
  reclaim: 5,
  notifyGarbage: 1,
};
const TRANSPORT_WEIGHTS: Record<Op, number> = {
  ...DEVICE_WEIGHTS,
  kick: 14,
  request: 10,
  flood: 1,
  garbage: 3,
  commonGarbage: 30,
  regRead: 10,
  configWrite: 6,
  queueReset: 6,
  deviceReset: 5,
  statusGarbage: 8,
  msix: 16,
  pciConfig: 14,
  notifyGarbage: 6,
};

export class VirtioCase {
  readonly r: Rng;
  readonly probe: Probe;
  readonly mem: CheckedMemory;
  readonly host: CheckedMemory;
  readonly ram: ReturnType<typeof guardedRam>;
  readonly transport: VirtioPciTransport;
  readonly metrics = new CountingMetrics();
  readonly logs: string[] = [];
  readonly m: Model;
  readonly queues: QueueState[] = [];
  readonly numQueues: number;
  offered = 0n;
  accepted = 0n;
  packed = false;
  negotiatedIndirect = false;
  everLive = false;
  refusedAtStart = false;
  driverResets = 0;
  queueResets = 0;
  msis = 0;
  private scratchBase: number;
  private scratchLimit: number;
  private scratchNext: number;

  constructor(seed: number, opts: ProbeOptions, kind: VirtioKind | "pci") {
    const r = new Rng(seed);
    this.r = r;
    this.probe = new Probe(opts);
    const size = RAM_SIZES[r.weighted(RAM_WEIGHTS)] as number;
    this.ram = guardedRam(size);
    const { device, host } = this.ram.open(ramBase(r, size));
    this.mem = device;
    this.host = host;
    const k: VirtioKind = kind === "pci" ? r.pick(["blk", "net", "console", "rng"] as const) : kind;
    this.m = makeModel(k, r, this);
    this.numQueues = this.m.model.numQueues;
    const msixVectors = r.chance(0.8) ? undefined : r.range(1, 6);
    const state = VirtioPciTransport.createState(this.m.model, { msixVectors });
    this.transport = new VirtioPciTransport({
      state,
      model: this.m.model,
      mem: device,
      msiSink: {
        signal: () => {
          this.msis++;
        },
      },
      intx: { set: () => {} },
      log: (line) => {
        if (this.logs.length < 200) this.logs.push(line);
      },
      metrics: this.metrics,
      msixVectors,
    });
    // Guest RAM: a region per queue (rings, then the test driver's buffer heap), and a scratch region last for
    // indirect tables and headers the fuzzer writes raw.
    const regions = this.numQueues + 1;
    const per = Math.floor(size / regions / 4096) * 4096;
    for (let q = 0; q < this.numQueues; q++) {
      this.queues.push({
        q,
        drv: null,
        base: host.base + q * per,
        limit: host.base + (q + 1) * per,
        size: 0,
      });
    }
    this.scratchBase = host.base + this.numQueues * per;
    this.scratchLimit = host.end;
    this.scratchNext = this.scratchBase;
    this.probe.opts.trace?.(
      `case 0x${seed.toString(16)}: ${k}, RAM ${size} bytes at 0x${host.base.toString(16)}, ${this.numQueues} queues`,
    );
  }

  // ---- registers ----

  write(off: number, size: number, value: number | bigint): void {
    const b = le(size, value);
    this.probe.call(`bar4 write 0x${off.toString(16)}/${size}`, () => this.transport.bar.write(off, b));
  }

  read(off: number, size: number): number {
    const b = new Uint8Array(size);
    this.probe.call(`bar4 read 0x${off.toString(16)}/${size}`, () => this.transport.bar.read(off, b));
    return leValue(b);
  }

  common(off: number, size: number, value: number | bigint): void {
    this.write(COMMON_CFG_OFFSET + off, size, value);
  }

  status(): number {
    return this.read(COMMON_CFG_OFFSET + COMMON.DEVICE_STATUS, 1);
  }

  kick(q: number): void {
    this.probe.call(`notify q${q}`, () =>
      this.transport.bar.write(NOTIFY_OFFSET + NOTIFY_OFF_MULTIPLIER * q, le(2, q)),
    );
  }

  serve(n: number): void {
    const dev = this.transport.device;
    for (let i = 0; i < n; i++) {
      const more = this.probe.call("deferred slice", () => dev.serveDeferred());
      if (!more) return;
    }
  }

  /** Whether a well-formed request goes through an indirect table (rarely when that was not negotiated). */
  indirect(): boolean {
    return this.negotiatedIndirect ? this.r.chance(0.3) : this.r.chance(0.01);
  }

  /** Bytes of guest RAM for the fuzzer's own tables and headers (reused round robin). */
  scratch(len: number, align = 16): number {
    let at = Math.ceil(this.scratchNext / align) * align;
    if (at + len > this.scratchLimit) at = this.scratchBase;
    this.scratchNext = at + len;
    return at;
  }

  // ---- initialization (3.1.1), as a driver would, with hostile variations ----

  start(): void {
    const r = this.r;
    this.common(COMMON.DEVICE_STATUS, 1, 0);
    this.common(COMMON.DEVICE_STATUS, 1, S.ACKNOWLEDGE);
    this.common(COMMON.DEVICE_STATUS, 1, S.ACKNOWLEDGE | S.DRIVER);
    this.common(COMMON.DEVICE_FEATURE_SELECT, 4, 0);
    const lo = this.read(COMMON_CFG_OFFSET + COMMON.DEVICE_FEATURE, 4);
    this.common(COMMON.DEVICE_FEATURE_SELECT, 4, 1);
    const hi = this.read(COMMON_CFG_OFFSET + COMMON.DEVICE_FEATURE, 4);
    this.offered = (BigInt(hi) << 32n) | BigInt(lo);
    let f = 0n;
    for (let b = 0n; b < 64n; b++) {
      const bit = 1n << b;
      // Ring layout and notification features half the time each, device features mostly, VERSION_1 nearly always.
      const p = bit === F_VERSION_1 ? 0.99 : b >= 28n && b < 41n ? 0.5 : 0.85;
      if (this.offered & bit && r.chance(p)) f |= bit;
    }
    if (r.chance(0.03)) f |= 1n << BigInt(r.below(64));
    this.accepted = f;
    this.common(COMMON.DRIVER_FEATURE_SELECT, 4, 0);
    this.common(COMMON.DRIVER_FEATURE, 4, Number(f & 0xffffffffn));
    this.common(COMMON.DRIVER_FEATURE_SELECT, 4, 1);
    this.common(COMMON.DRIVER_FEATURE, 4, Number(f >> 32n));
    this.common(COMMON.DEVICE_STATUS, 1, S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK);
    const ok = (this.status() & S.FEATURES_OK) !== 0;
    if (!ok && this.driverResets === 0) this.refusedAtStart = true;
    this.packed = (f & F_PACKED) !== 0n;
    this.negotiatedIndirect = ok && (f & (1n << BigInt(VIRTIO_F.INDIRECT_DESC))) !== 0n;
    this.probe.opts.trace?.(
      `features offered 0x${this.offered.toString(16)} accepted 0x${f.toString(16)}: FEATURES_OK ${ok}`,
    );
    const early = r.chance(0.04);
    if (early) this.common(COMMON.DEVICE_STATUS, 1, S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK);
    for (const qs of this.queues) if (r.chance(0.92)) this.setupQueue(qs);
    if (r.chance(0.5)) this.enableMsix();
    if (!early && r.chance(0.95)) {
      this.common(COMMON.DEVICE_STATUS, 1, S.ACKNOWLEDGE | S.DRIVER | S.FEATURES_OK | S.DRIVER_OK);
    }
    if ((this.status() & (S.DRIVER_OK | S.DEVICE_NEEDS_RESET)) === S.DRIVER_OK) this.everLive = true;
  }

  setupQueue(qs: QueueState): void {
    const r = this.r;
    this.common(COMMON.QUEUE_SELECT, 2, qs.q);
    const max = this.read(COMMON_CFG_OFFSET + COMMON.QUEUE_SIZE, 2);
    const room = qs.limit - qs.base;
    let size: number;
    if (r.chance(0.95)) {
      // A power of two the region holds (rings of about 24 bytes per entry, plus buffers).
      let s = Math.max(1, Math.min(max, 2 ** r.below(9)));
      while (s > 1 && s * 40 > room) s >>= 1;
      size = s;
    } else {
      size = r.pick([0, 3, max + 1, 0xffff, 32768, max, Math.max(1, max >> 1) + 1]);
    }
    if (size !== max) this.common(COMMON.QUEUE_SIZE, 2, size);
    qs.size = size & 0xffff;
    qs.drv = null;
    let desc = qs.base;
    let driver = qs.base + 16 * qs.size;
    let device = driver + 6 + 2 * qs.size;
    try {
      // The test driver lays the rings out from the region's start (about 24 bytes per entry); it drives only
      // queues whose rings fit there (a hostile queue_size gets raw addresses and no buffers).
      if (qs.size > 0 && 24 * qs.size + 64 <= room) {
        const drv = new VirtioTestDriver(this.host, {
          kind: this.packed ? "packed" : "split",
          size: qs.size,
          base: qs.base,
          limit: qs.limit,
          features: {
            eventIdx: (this.accepted & (1n << 29n)) !== 0n,
            indirect: (this.accepted & (1n << 28n)) !== 0n,
            inOrder: (this.accepted & (1n << 35n)) !== 0n,
          },
        });
        qs.drv = drv;
        ({ descAddr: desc, driverAddr: driver, deviceAddr: device } = drv.config);
      }
    } catch {
      // The rings do not fit where the driver put them: the device gets the addresses anyway.
    }
    if (r.chance(0.1)) {
      // Hostile placement: misaligned, overlapping another queue or the rings of this one, past the end of RAM,
      // above 4 GiB or 2^53.
      const other = this.r.pick(this.queues).base;
      const pick = () =>
        r.pick([
          desc + r.range(1, 15),
          other,
          desc,
          this.host.end - r.range(0, 64),
          this.host.base - 16,
          2 ** 52 + desc,
          r.u32() * 2 ** 21,
          this.host.base + r.below(this.host.size),
        ]);
      switch (r.below(3)) {
        case 0:
          desc = pick();
          break;
        case 1:
          driver = pick();
          break;
        default:
          device = pick();
      }
    }
    if (r.chance(0.5))
      this.common(COMMON.QUEUE_MSIX_VECTOR, 2, r.chance(0.8) ? qs.q + 1 : r.edgy32() & 0xffff);
    for (const [off, addr] of [
      [COMMON.QUEUE_DESC, desc],
      [COMMON.QUEUE_DRIVER, driver],
      [COMMON.QUEUE_DEVICE, device],
    ] as const) {
      if (r.chance(0.05)) {
        this.common(off, 8, BigInt(Math.max(0, Math.floor(addr))));
      } else {
        const a = Math.max(0, Math.floor(addr));
        this.common(off, 4, a % 2 ** 32);
        this.common(off + 4, 4, Math.floor(a / 2 ** 32) % 2 ** 32);
      }
    }
    this.common(COMMON.QUEUE_ENABLE, 2, r.chance(0.97) ? 1 : r.edgy32() & 0xffff);
  }

  enableMsix(): void {
    const t = this.transport;
    const r = this.r;
    const vectors = t.msix.vectors;
    for (let v = 0; v < vectors; v++) {
      const e = 16 * v;
      const w = (off: number, val: number) =>
        this.probe.call("msix table write", () => t.msix.table.write(e + off, le(4, val)));
      w(0, 0xfee00000);
      w(4, 0);
      w(8, 0x40 + v);
      w(12, r.chance(0.9) ? 0 : 1);
    }
    const cap = t.msix.capOffset;
    this.probe.call("pci config write (MSI-X enable)", () =>
      t.pci.configWrite(cap + 2, 2, r.chance(0.9) ? 0x8000 : 0xc000),
    );
    this.common(COMMON.CONFIG_MSIX_VECTOR, 2, r.chance(0.8) ? 0 : r.edgy32() & 0xffff);
  }

  // ---- the script ----

  run(steps: number, weights: Record<Op, number>): void {
    this.start();
    const w = OPS.map((o) => weights[o]);
    for (let i = 0; i < steps; i++) this.step(OPS[this.r.weighted(w)] as Op);
  }

  private step(op: Op): void {
    const r = this.r;
    const q = r.below(this.numQueues);
    const qs = this.queues[q] as QueueState;
    this.probe.opts.trace?.(`op ${op} (queue ${q})`);
    switch (op) {
      case "kick":
        this.kick(q);
        if (r.chance(0.5)) this.serve(r.range(1, 3));
        if (this.status() & S.DEVICE_NEEDS_RESET && r.chance(0.6)) {
          // 2.1.2: a driver that sees DEVICE_NEEDS_RESET resets the device and sets it up again.
          this.common(COMMON.DEVICE_STATUS, 1, 0);
          this.driverResets++;
          this.start();
        }
        return;
      case "request":
        if (qs.drv) {
          try {
            this.m.request(this, qs);
          } catch {
            // The test driver's ring or heap is full: nothing to send this time.
          }
        }
        if (r.chance(0.6)) this.kick(q);
        return;
      case "flood":
        this.flood(qs);
        this.kick(q);
        if (r.chance(0.5)) this.serve(r.range(1, 4));
        return;
      case "garbage":
        this.garbage(qs);
        if (r.chance(0.7)) this.kick(q);
        return;
      case "corrupt":
        this.corrupt(qs);
        if (r.chance(0.5)) this.kick(q);
        return;
      case "serve":
        this.serve(r.range(1, 4));
        return;
      case "commonGarbage":
        this.commonGarbage();
        return;
      case "regRead":
        this.regRead();
        return;
      case "configWrite": {
        const size = r.pick([1, 2, 4, 8]);
        this.write(DEVICE_CFG_OFFSET + r.below(r.chance(0.8) ? 64 : 0x1000), size, r.edgy32());
        return;
      }
      case "queueReset":
        this.common(COMMON.QUEUE_SELECT, 2, q);
        this.common(COMMON.QUEUE_RESET, 2, r.chance(0.9) ? 1 : r.edgy32() & 0xffff);
        this.queueResets++;
        if (r.chance(0.7)) this.setupQueue(qs);
        if (r.chance(0.5)) this.kick(q);
        return;
      case "deviceReset":
        this.common(COMMON.DEVICE_STATUS, 1, 0);
        this.driverResets++;
        if (r.chance(0.3)) this.serve(r.range(1, 3));
        if (r.chance(0.8)) this.start();
        return;
      case "statusGarbage":
        this.common(
          COMMON.DEVICE_STATUS,
          1,
          r.chance(0.5) ? r.below(256) : r.pick([0x0f, 0x4f, 0x80, 0x04, 0x08, 0x0b]),
        );
        return;
      case "msix":
        this.msixGarbage();
        return;
      case "pciConfig":
        this.pciConfigGarbage();
        return;
      case "backend":
        this.m.backendEvent(this);
        return;
      case "reclaim":
        try {
          qs.drv?.usedChains();
        } catch {
          // Used buffers the test driver did not make (raw ones): it cannot account for them.
        }
        return;
      case "notifyGarbage": {
        const off = NOTIFY_OFFSET + r.below(NOTIFY_OFF_MULTIPLIER * (this.numQueues + 2));
        this.write(off, r.pick([1, 2, 4]), r.edgy32());
        return;
      }
    }
  }

  /** A random write to the common configuration: a known field (any width) or anywhere. */
  private commonGarbage(): void {
    const r = this.r;
    const fields = Object.values(COMMON);
    const off = r.chance(0.8) ? (r.pick(fields) as number) : r.below(0x48);
    const size = r.chance(0.7) ? r.pick([1, 2, 4]) : r.pick([1, 2, 3, 4, 8]);
    let value: number | bigint = r.edgy32();
    if (off === COMMON.QUEUE_SELECT && r.chance(0.7)) value = r.below(this.numQueues + 2);
    if (size === 8) value = (BigInt(r.u32()) << 32n) | BigInt(r.u32());
    this.write(COMMON_CFG_OFFSET + off, size, value);
  }

  private regRead(): void {
    const r = this.r;
    switch (r.below(4)) {
      case 0:
        this.read(COMMON_CFG_OFFSET + r.below(0x48), r.pick([1, 2, 4, 8]));
        return;
      case 1:
        this.read(ISR_OFFSET + (r.chance(0.8) ? 0 : r.below(8)), r.pick([1, 2, 4]));
        return;
      case 2:
        this.read(DEVICE_CFG_OFFSET + r.below(r.chance(0.9) ? 64 : 0x1000), r.pick([1, 2, 4, 8]));
        return;
      default:
        this.read(r.below(this.transport.barSize + 16), r.pick([1, 2, 4]));
    }
  }

  private msixGarbage(): void {
    const r = this.r;
    const t = this.transport;
    const len = t.msix.tableLength;
    switch (r.below(5)) {
      case 0:
      case 1: {
        const off = r.chance(0.8) ? 4 * r.below(len / 4) : r.below(len + 32);
        const data = le(r.pick([1, 2, 4, 8]), r.edgy32());
        this.probe.call("msix table write", () => t.msix.table.write(off, data));
        return;
      }
      case 2: {
        const data = new Uint8Array(r.pick([1, 2, 4, 8]));
        this.probe.call("msix table read", () => t.msix.table.read(r.below(len + 32), data));
        this.probe.call("msix pba read", () => t.msix.pba.read(r.below(t.msix.pbaLength + 8), data));
        this.probe.call("msix pba write", () => t.msix.pba.write(r.below(t.msix.pbaLength + 8), data));
        return;
      }
      case 3: {
        const cap = t.msix.capOffset;
        const v = r.pick([0, 0x8000, 0xc000, 0x4000, r.edgy32() & 0xffff]);
        this.probe.call("pci config write (MSI-X control)", () => t.pci.configWrite(cap + 2, 2, v));
        return;
      }
      default:
        this.common(
          r.chance(0.5) ? COMMON.CONFIG_MSIX_VECTOR : COMMON.QUEUE_MSIX_VECTOR,
          2,
          r.chance(0.5) ? r.below(t.msix.vectors + 2) : r.edgy32() & 0xffff,
        );
    }
  }

  private pciCfgCap = -1;

  private pciConfigGarbage(): void {
    const r = this.r;
    const pci = this.transport.pci;
    if (r.chance(0.5)) {
      // The pci_cfg window (4.1.4.9): bar, offset, length, then an access to pci_cfg_data.
      if (this.pciCfgCap < 0) {
        this.pciCfgCap = 0;
        for (const c of pci.capabilities()) {
          if (c.id === 0x09 && pci.configRead(c.offset + 3, 1) === 5) this.pciCfgCap = c.offset;
        }
      }
      const cap = this.pciCfgCap;
      if (cap === 0) return;
      const bar = r.chance(0.85) ? 4 : r.below(8);
      const len = r.pick([1, 2, 4, 3, 0, 8]);
      const off = r.chance(0.7)
        ? r.pick([
            COMMON_CFG_OFFSET + r.pick(Object.values(COMMON) as number[]),
            ISR_OFFSET,
            NOTIFY_OFFSET,
            DEVICE_CFG_OFFSET,
          ])
        : r.edgy32();
      this.probe.call("pci_cfg setup", () => {
        pci.configWrite(cap + 4, 1, bar);
        pci.configWrite(cap + 8, 4, off >>> 0);
        pci.configWrite(cap + 12, 4, len);
      });
      if (r.chance(0.6)) this.probe.call("pci_cfg write", () => pci.configWrite(cap + 16, 4, r.edgy32()));
      else this.probe.call("pci_cfg read", () => pci.configRead(cap + 16, r.pick([1, 2, 4] as const)));
      return;
    }
    const size = r.pick([1, 2, 4] as const);
    const off = r.below(0x100) & ~(size - 1);
    const value = r.edgy32();
    if (r.chance(0.7))
      this.probe.call(`pci config write 0x${off.toString(16)}`, () => pci.configWrite(off, size, value));
    else this.probe.call(`pci config read 0x${off.toString(16)}`, () => pci.configRead(off, size));
  }

  // ---- ring abuse ----

  /** Garbage descriptors made available (split: a table entry and an avail entry; packed: a raw list). */
  private garbage(qs: QueueState): void {
    const drv = qs.drv;
    const r = this.r;
    if (!drv) return;
    const n = r.range(1, 4);
    const descs: RawDescriptor[] = [];
    for (let i = 0; i < n; i++) {
      descs.push({
        addr: this.randomAddr(),
        len: r.chance(0.7) ? r.below(5000) : r.edgy32(),
        flags: r.chance(0.6) ? r.below(8) : r.u32() & 0xffff,
        next: r.chance(0.7) ? r.below(qs.size + 1) : r.u32() & 0xffff,
        id: r.chance(0.8) ? r.below(qs.size + 1) : r.u32() & 0xffff,
      });
    }
    try {
      if (drv.kind === "split") {
        for (const d of descs) drv.writeDesc(r.below(qs.size), d);
        const pushes = r.range(1, 3);
        for (let i = 0; i < pushes; i++) drv.pushAvail(r.chance(0.8) ? r.below(qs.size) : r.u32() & 0xffff);
        if (r.chance(0.2)) drv.setAvailIdx(r.u32() & 0xffff);
      } else {
        drv.makeAvailableRaw(
          descs.map((d, i) => ({
            ...d,
            flags: r.chance(0.8) ? (d.flags & 0x7f) | (i < n - 1 ? VIRTQ_DESC_F_NEXT : 0) : d.flags,
            rawFlags: r.chance(0.1),
          })),
        );
      }
    } catch {
      // Writes outside RAM (a hostile ring placement): the driver's problem, not the device's.
    }
  }

  private randomAddr(): number | bigint {
    const r = this.r;
    const m = this.host;
    switch (r.below(8)) {
      case 0:
        return m.end - r.below(64);
      case 1:
        return Math.max(0, m.base - r.below(64));
      case 2:
        return (BigInt(r.u32()) << 32n) | BigInt(r.u32());
      case 3:
        return 2 ** 53 - r.below(4096);
      default:
        return m.base + r.below(m.size);
    }
  }

  /** Random bytes over the ring areas (descriptors, avail/used idx, event suppression fields). */
  private corrupt(qs: QueueState): void {
    const r = this.r;
    const drv = qs.drv;
    if (!drv) return;
    const { descAddr, heapAddr } = drv.layout;
    const n = r.range(1, 8);
    for (let i = 0; i < n; i++) {
      const at = descAddr + r.below(Math.max(1, heapAddr - descAddr));
      try {
        if (r.chance(0.5)) this.host.writeU8(at, r.u32() & 0xff);
        else this.host.writeU16(at & ~1, r.edgy32() & 0xffff);
      } catch {
        // Past the end of RAM.
      }
    }
  }

  /**
   * Every avail slot names the same chain: descriptors (direct, or in one indirect table) that cover the same
   * guest pages again and again, as long as the device's limits allow or absurdly longer.
   */
  private flood(qs: QueueState): void {
    const r = this.r;
    const drv = qs.drv;
    if (!drv || qs.size === 0) return;
    const host = this.host;
    const shape = this.m.floodShape(this, qs.q);
    const indirect = this.negotiatedIndirect ? r.chance(0.6) : r.chance(0.03);
    const maxN = indirect ? 64 : qs.size;
    const n = Math.max(1, Math.min(maxN, r.pick([1, 2, 4, 16, 64, maxN])));
    // The target: all of RAM, its upper half, one page, or the queue's own rings.
    let base: number;
    let len: number;
    switch (r.below(4)) {
      case 0:
        base = host.base;
        len = host.size;
        break;
      case 1:
        base = host.base + host.size / 2;
        len = host.size / 2;
        break;
      case 2:
        base = host.base + 4096 * r.below(host.size / 4096);
        len = 4096;
        break;
      default:
        base = drv.layout.descAddr;
        len = Math.max(1, Math.min(host.end - base, drv.layout.heapAddr - drv.layout.descAddr));
    }
    if (r.chance(0.3)) len = Math.max(1, Math.floor(len / r.range(2, 64)));
    // Chains stay under 2^32 bytes unless the flood is about that limit too.
    if (len * n > 2 ** 32 - 1 && r.chance(0.9)) len = Math.floor((2 ** 32 - 1) / n);
    const descs: RawDescriptor[] = [];
    let i0 = 0;
    if (shape.header) {
      const h = this.scratch(shape.header.length);
      try {
        host.write(h, shape.header);
      } catch {}
      descs.push({ addr: h, len: shape.header.length, flags: 0 });
      i0 = 1;
    }
    for (let i = i0; i < n; i++) {
      descs.push({ addr: base, len, flags: shape.writable(i, n) ? VIRTQ_DESC_F_WRITE : 0 });
    }
    if (shape.header && n > 1) {
      // The last element is the device-writable status byte (blk).
      descs[n - 1] = { addr: this.scratch(1), len: 1, flags: VIRTQ_DESC_F_WRITE };
    }
    try {
      if (drv.kind === "split") {
        if (indirect) {
          const t = this.scratch(16 * descs.length);
          this.writeTable(t, descs, true);
          drv.writeDesc(0, { addr: t, len: 16 * descs.length, flags: VIRTQ_DESC_F_INDIRECT, next: 0 });
        } else {
          descs.forEach((d, i) => {
            drv.writeDesc(i, {
              ...d,
              flags: d.flags | (i < descs.length - 1 ? VIRTQ_DESC_F_NEXT : 0),
              next: i + 1,
            });
          });
        }
        for (let i = 0; i < qs.size; i++) drv.pushAvail(0);
      } else {
        const t = indirect ? this.scratch(16 * descs.length) : 0;
        if (indirect) this.writeTable(t, descs, false);
        for (let s = 0; s < qs.size; s++) {
          if (indirect) {
            drv.makeAvailableRaw([{ addr: t, len: 16 * descs.length, flags: VIRTQ_DESC_F_INDIRECT, id: s }]);
          } else {
            const d = descs[s % descs.length] as RawDescriptor;
            drv.makeAvailableRaw([{ ...d, id: s }]);
          }
        }
      }
    } catch {
      // Scratch space or RAM ran out: the part written stands.
    }
  }

  private writeTable(at: number, descs: RawDescriptor[], split: boolean): void {
    const h = this.host;
    descs.forEach((d, i) => {
      const o = at + 16 * i;
      h.writeU64(o, BigInt(d.addr));
      h.writeU32(o + 8, d.len >>> 0);
      if (split) {
        h.writeU16(o + 12, d.flags | (i < descs.length - 1 ? VIRTQ_DESC_F_NEXT : 0));
        h.writeU16(o + 14, i + 1);
      } else {
        h.writeU16(o + 12, 0);
        h.writeU16(o + 14, d.flags);
      }
    });
  }

  // ---- the end of a case ----

  finish(limits: VirtioFuzzLimits): CaseResult {
    const probe = this.probe;
    const dev = this.transport.device;
    // Progress: the device comes back for what it owes until it owes nothing, within a bound.
    let drained = 0;
    let owing = true;
    while (drained < limits.maxDrainSlices) {
      drained++;
      owing = probe.call("deferred slice", () => dev.serveDeferred()) === true;
      if (!owing) break;
    }
    if (owing) probe.fail("hang", `the device still owes work after ${drained} deferred slices at the end`);
    const bad = this.ram.checkCanaries();
    if (bad.length > 0) {
      probe.fail(
        "canary",
        `${bad.length} canary bytes changed around guest RAM (first at RAM offset ${bad[0]})`,
      );
    }
    for (const e of this.mem.escapes.slice(0, 3)) {
      probe.fail("escape", `${e.op}(0x${e.gpa.toString(16)}, ${e.len}) outside guest RAM was not refused`);
    }
    for (const line of this.logs) if (isInternalLog(line)) probe.fail("internal", line);
    const st = dev.sliceStats;
    if (st.maxBytes > SLICE_BYTES_LIMIT) {
      probe.fail("budget", `a slice moved ${st.maxBytes} bytes (limit ${SLICE_BYTES_LIMIT})`);
    }
    if (st.maxChains > SLICE_CHAINS_LIMIT) {
      probe.fail("budget", `a slice served ${st.maxChains} chains (limit ${SLICE_CHAINS_LIMIT})`);
    }
    // A chain is started while the slice has budget left; it reads at most Queue Size + 1 descriptors.
    const descLimit = DEFAULT_NOTIFY_BUDGET.descriptors + this.m.model.maxQueueSize + 1;
    if (st.maxDescriptors > descLimit) {
      probe.fail("budget", `a slice read ${st.maxDescriptors} descriptors (limit ${descLimit})`);
    }
    const needsReset = this.logs.some((l) => l.includes("needs reset"));
    const outcome = this.refusedAtStart
      ? "FEATURES_REFUSED"
      : needsReset
        ? "NEEDS_RESET"
        : this.everLive
          ? "ok"
          : "not-live";
    const events: Record<string, number> = {
      chains: this.metrics.sum(".used"),
      notifications: this.metrics.sum(".notifications"),
      "slices cut": this.metrics.sum(".budget_exhausted"),
      "oob refused": this.mem.rejected,
      "driver resets": this.driverResets,
      "queue resets": this.queueResets,
      msi: this.msis,
      ...this.m.events(this),
    };
    return {
      seed: 0,
      outcome,
      events,
      failures: probe.failures,
      slowestUs: probe.slowestUs,
      slowestCall: probe.slowestCall,
      slowCandidate: probe.slowCandidate,
      slowCalls: probe.slowCalls,
      slowestIndex: probe.slowestIndex,
      maxSliceBytes: st.maxBytes,
      maxSliceChains: st.maxChains,
      maxSliceDescriptors: st.maxDescriptors,
      slices: st.slices,
      calls: probe.calls,
    };
  }
}

// ---- the device models -------------------------------------------------------------------------------------

function blkHeader(type: number, sector: bigint): Uint8Array {
  const h = new Uint8Array(16);
  const v = new DataView(h.buffer);
  v.setUint32(0, type, true);
  v.setBigUint64(8, BigInt.asUintN(64, sector), true);
  return h;
}

const blkDisks = new Map<string, MemoryBlockBackend>();

function makeModel(kind: VirtioKind, r: Rng, c: VirtioCase): Model {
  switch (kind) {
    case "blk": {
      const size = r.pick([4 * KiB, 64 * KiB, 64 * KiB, 256 * KiB, 1 * MiB]);
      const readOnly = r.chance(0.1);
      const key = `${size}/${readOnly}`;
      let disk = blkDisks.get(key);
      if (!disk) {
        disk = new MemoryBlockBackend(size, { readOnly });
        blkDisks.set(key, disk);
      }
      disk.data.fill(0);
      const backend = new FlakyBackend(disk);
      const sectors = BigInt(size / 512);
      const model = new VirtioBlk({
        backend,
        numQueues: r.pick([1, 1, 2, 3]),
        queueSize: r.pick([256, 256, 64, 8, 1024]),
        sizeMax: r.chance(0.8) ? undefined : r.pick([512, 4096, 65536]),
        maxDiscardSegments: r.range(1, 4),
        maxWriteZeroesSegments: r.range(1, 4),
        maxWriteZeroesSectors: r.chance(0.8) ? undefined : r.pick([1, 8, 2048]),
      });
      const sector = (): bigint =>
        r.chance(0.8)
          ? BigInt(r.below(Number(sectors)))
          : r.pick([sectors, sectors - 1n, 0xffffffffffffffffn, 1n << 40n, sectors + 1n]);
      return {
        kind,
        model,
        backendEvent: () => {
          backend.failing = !backend.failing;
        },
        request: (cs, qs) => {
          const drv = qs.drv as VirtioTestDriver;
          const type = [
            VIRTIO_BLK_T.IN,
            VIRTIO_BLK_T.OUT,
            VIRTIO_BLK_T.FLUSH,
            VIRTIO_BLK_T.GET_ID,
            VIRTIO_BLK_T.DISCARD,
            VIRTIO_BLK_T.WRITE_ZEROES,
            r.u32(),
          ][r.weighted([35, 30, 8, 8, 6, 6, 7])] as number;
          const dataLens = Array.from({ length: r.range(1, 3) }, () =>
            r.chance(0.85) ? 512 * r.range(1, 8) : r.range(0, 5000),
          );
          let readable: Uint8Array[] = [blkHeader(type, sector())];
          let writable: number[] = [1];
          if (type === VIRTIO_BLK_T.OUT) readable = readable.concat(dataLens.map((n) => r.bytes(n)));
          else if (type === VIRTIO_BLK_T.IN) writable = [...dataLens, 1];
          else if (type === VIRTIO_BLK_T.GET_ID) writable = [r.pick([20, 8, 40]), 1];
          else if (type === VIRTIO_BLK_T.DISCARD || type === VIRTIO_BLK_T.WRITE_ZEROES) {
            const segs = new Uint8Array(16 * r.range(r.chance(0.9) ? 1 : 0, 5));
            const v = new DataView(segs.buffer);
            for (let i = 0; i < segs.length / 16; i++) {
              v.setBigUint64(16 * i, sector(), true);
              v.setUint32(16 * i + 8, r.chance(0.8) ? r.range(0, 64) : r.edgy32(), true);
              v.setUint32(16 * i + 12, r.chance(0.8) ? r.below(2) : r.edgy32(), true);
            }
            readable.push(segs);
          }
          if (r.chance(0.02)) {
            // The wrong direction, no status byte, or a short header: a broken driver.
            const k = r.below(3);
            if (k === 0) [readable, writable] = [[readable[0] as Uint8Array], [...writable, 512]];
            else if (k === 1) writable = [];
            else readable = [(readable[0] as Uint8Array).subarray(0, r.below(16))];
            if (readable.length + writable.length === 0) writable = [1];
          }
          drv.addChain(readable, writable, { indirect: cs.indirect() });
        },
        floodShape: () => {
          const type = r.chance(0.7) ? VIRTIO_BLK_T.IN : VIRTIO_BLK_T.OUT;
          return {
            header: blkHeader(type, r.chance(0.9) ? 0n : sector()),
            writable: () => type === VIRTIO_BLK_T.IN,
          };
        },
        events: (cs) => ({
          IOERR: cs.metrics.sum(".io_errors"),
          UNSUPP: cs.metrics.sum(".unsupported"),
        }),
      };
    }
    case "net": {
      const backend = new FuzzNetBackend(r.chance(0.3), r.pick([1, 4, 16]));
      backend.probe = c.probe;
      const model = new VirtioNet({
        backend,
        mac: Uint8Array.of(2, 0, 0, 0, 0, 1),
        mtu: r.chance(0.3) ? r.pick([68, 1500, 9000, 65535]) : undefined,
        queueSize: r.pick([256, 256, 64, 16, 1024]),
        linkUp: r.chance(0.9),
      });
      const netHeader = (): Uint8Array => {
        const h = new Uint8Array(12);
        const v = new DataView(h.buffer);
        if (r.chance(0.3)) {
          v.setUint8(0, r.chance(0.8) ? 1 : r.below(256)); // NEEDS_CSUM
          v.setUint16(6, r.chance(0.8) ? r.range(0, 60) : r.u32() & 0xffff, true);
          v.setUint16(8, r.chance(0.8) ? r.pick([6, 16, 10]) : r.u32() & 0xffff, true);
        }
        if (r.chance(0.15)) v.setUint8(1, r.pick([1, 3, 4, 0x81, r.below(256)]));
        if (r.chance(0.1)) h.set(r.bytes(12));
        return h;
      };
      const frameLen = (): number =>
        r.chance(0.9) ? r.range(0, 1514) : r.pick([65535 + 18, 65535 + 19, 9000, r.below(70000)]);
      return {
        kind,
        model,
        backendEvent: () => {
          const len = frameLen();
          const frame = r.bytes(Math.min(len, 4096));
          const f = len > 4096 ? new Uint8Array(len) : frame;
          if (len > 4096) f.set(frame);
          backend.inject(backend.vnetHdr && r.chance(0.9) ? Uint8Array.from([...netHeader(), ...f]) : f);
        },
        request: (cs, qs) => {
          const drv = qs.drv as VirtioTestDriver;
          if (qs.q === 0) {
            const lens = Array.from({ length: r.range(1, 2) }, () =>
              r.pick([12, 64, 1526, 2048, 4096, 65562, r.below(3000)]),
            );
            if (r.chance(0.05)) drv.addChain([r.bytes(12)], lens);
            else drv.addChain([], lens, { indirect: cs.indirect() });
          } else {
            const len = frameLen();
            const body = new Uint8Array(len);
            body.set(r.bytes(Math.min(len, 64)));
            const all = new Uint8Array(12 + len);
            all.set(netHeader());
            all.set(body, 12);
            const cut = r.chance(0.3) ? r.below(all.length + 1) : all.length;
            const parts = [all.subarray(0, cut), all.subarray(cut)].filter((p) => p.length > 0);
            drv.addChain(parts.length > 0 ? parts : [all], r.chance(0.03) ? [16] : [], {
              indirect: cs.indirect(),
            });
          }
        },
        floodShape: (_cs, q) => ({ writable: () => q === 0 }),
        events: (cs) => ({
          "tx frames": backend.sent,
          "tx dropped": cs.metrics.sum(".tx_dropped"),
          "rx frames": cs.metrics.sum(".rx_packets"),
          "rx dropped": cs.metrics.sum(".rx_dropped"),
          "rx no buffers": cs.metrics.sum(".rx_no_buffers"),
        }),
      };
    }
    case "console": {
      let out = 0;
      const model = new VirtioConsole({
        output: (b) => {
          out += b.length;
        },
        queueSize: r.pick([64, 64, 8, 256]),
        size: r.chance(0.3) ? { cols: 80, rows: 25 } : undefined,
        inputCapacity: r.pick([65536, 16, 1024]),
      });
      return {
        kind,
        model,
        backendEvent: (cs) => {
          const n = r.chance(0.9) ? r.range(0, 300) : r.pick([65536, 70000, 2000]);
          const bytes = n > 300 ? new Uint8Array(n) : r.bytes(n);
          cs.probe.call("console input", () => model.input(bytes));
        },
        request: (cs, qs) => {
          const drv = qs.drv as VirtioTestDriver;
          if (qs.q === 0) drv.addChain([], [r.range(1, 256)], { indirect: cs.indirect() });
          else {
            const n = r.chance(0.95) ? r.range(1, 200) : r.range(1, 70000);
            drv.addChain([n > 200 ? new Uint8Array(n) : r.bytes(n)], r.chance(0.03) ? [4] : [], {
              indirect: cs.indirect(),
            });
          }
        },
        floodShape: (_cs, q) => ({ writable: () => q === 0 }),
        events: () => ({ "output bytes": out }),
      };
    }
    case "rng": {
      const model = new VirtioRng({
        queueSize: r.pick([64, 64, 8, 256]),
        maxBytesPerRequest: r.chance(0.8) ? undefined : r.pick([1, 4096, 1 * MiB]),
      });
      return {
        kind,
        model,
        backendEvent: () => {},
        request: (cs, qs) => {
          const drv = qs.drv as VirtioTestDriver;
          const lens = Array.from({ length: r.range(1, 3) }, () =>
            r.chance(0.95) ? r.range(1, 512) : r.range(1, 70000),
          );
          if (r.chance(0.04)) drv.addChain([r.bytes(8)], lens);
          else drv.addChain([], lens, { indirect: cs.indirect() });
        },
        floodShape: () => ({ writable: () => true }),
        events: (cs) => ({ "random bytes": cs.metrics.sum(".bytes") }),
      };
    }
  }
}

// ---- the families --------------------------------------------------------------------------------------------

export interface VirtioFamilyOptions {
  limits?: VirtioFuzzLimits;
  /** Test only: runs on each case after it is built (the detector self-tests plant bugs with it). */
  plant?: (c: VirtioCase) => void;
}

export function virtioFamily(name: VirtioKind | "pci", o: VirtioFamilyOptions = {}): Family {
  const weights = name === "pci" ? TRANSPORT_WEIGHTS : DEVICE_WEIGHTS;
  const limits = o.limits ?? DEFAULT_VIRTIO_LIMITS;
  return {
    name,
    run(seed: number, opts: ProbeOptions): CaseResult {
      let c: VirtioCase | undefined;
      try {
        c = new VirtioCase(seed, opts, name);
        o.plant?.(c);
        const steps = c.r.range(4, 40);
        c.run(steps, weights);
        const result = c.finish(limits);
        result.seed = seed;
        return result;
      } catch (e) {
        // The fuzzer itself broke (or a device threw through a path the probe does not wrap).
        const probe = c?.probe ?? new Probe(opts);
        probe.fail("exception", `harness: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
        return {
          seed,
          outcome: "harness-error",
          events: {},
          failures: probe.failures,
          slowestUs: probe.slowestUs,
          slowestCall: probe.slowestCall,
          slowCandidate: false,
          slowCalls: [],
          slowestIndex: -1,
          maxSliceBytes: 0,
          maxSliceChains: 0,
          slices: 0,
          calls: probe.calls,
        };
      }
    },
  };
}
