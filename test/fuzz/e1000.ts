/**
 * A hostile e1000 driver for the fuzzer: random register writes and reads (MMIO and the IOADDR/IODATA window),
 * transmit rings full of random, maximal and aliased descriptors (legacy, context with TSO, data), receive rings
 * whose buffers point anywhere (into the transmit ring, past RAM), frames from the wire of every length, clock
 * steps and polls. Each case is a fresh E1000 over a guarded guest RAM (engine.ts).
 *
 * Checks besides the engine's: no "internal" guest-error count (an exception the device contained is a bug), the
 * transmit work one call does (frames and bytes handed to the backend) stays within a bound, and the device stops
 * owing transmit work (nextDeadline() at or before now) within a bounded number of polls.
 */
import { E1000 } from "../../src/devices/e1000/e1000.ts";
import { REG, STAT } from "../../src/devices/e1000/regs.ts";
import type { NetBackend } from "../../src/net/backend.ts";
import {
  type CaseResult,
  type CheckedMemory,
  CountingMetrics,
  type Family,
  guardedRam,
  Probe,
  type ProbeOptions,
  Rng,
} from "./engine.ts";

const KiB = 1024;
const MiB = 1024 * 1024;

export interface E1000FuzzLimits {
  /** Polls at the end of a case before a device still owing transmit work is a hang. */
  maxPolls: number;
  /** The most one call may hand to the backend (bytes, frames); beyond is a budget failure. */
  maxCallBytes: number;
  maxCallFrames: number;
}

/**
 * Defaults: the device's transmit slice (1 MiB, 256 frames) plus what its documentation says a slice may
 * overshoot by (one descriptor's data, up to 256 KiB, or one 16 KiB packet), rounded up.
 */
export const DEFAULT_E1000_LIMITS: E1000FuzzLimits = {
  maxPolls: 4096,
  maxCallBytes: 1 * MiB + 320 * KiB,
  maxCallFrames: 256 + 64,
};

const NIC_MAC = Uint8Array.of(0x52, 0x54, 0x00, 0x12, 0x34, 0x56);
const CTRL_RST = 1 << 26;
const TCTL_EN = 1 << 1;
const TCTL_PSP = 1 << 3;
const RCTL_EN = 1 << 1;
const TXD_EOP = 0x01;
const TXD_IFCS = 0x02;
const TXD_IC_TSE = 0x04;
const TXD_RS = 0x08;
const TXD_DEXT = 0x20;
const TXD_VLE = 0x40;
const TXD_IDE = 0x80;

/**
 * A deterministic backend: counts what the device sends; frames for it wait in a bounded queue. As in vireo, where
 * the vCPU thread's backend is a proxy that wakes the NIC's I/O thread, `rxReady()` only marks the queue ready;
 * the fuzzer then offers the frames in a call of their own (`offer`), not inside the register access that asked.
 */
class FuzzBackend implements NetBackend {
  readonly name = "fuzz-e1000";
  sentFrames = 0;
  sentBytes = 0;
  private receiver: ((f: Uint8Array) => boolean) | null = null;
  private readonly queue: Uint8Array[] = [];
  constructor(private readonly capacity: number) {}
  send(frame: Uint8Array): boolean {
    this.sentFrames++;
    this.sentBytes += frame.length;
    return true;
  }
  attach(receiver: (f: Uint8Array) => boolean): void {
    this.receiver = receiver;
  }
  close(): void {}
  /** Frames offered since the last rxReady() and refused: waiting for the next one. */
  ready = false;
  inject(frame: Uint8Array): void {
    if (this.queue.length >= this.capacity) return;
    this.queue.push(frame);
    this.ready = true;
  }
  rxReady(): void {
    this.ready = true;
  }
  /** The I/O thread's turn: each queued frame goes to the receiver (one device entry point each) until refused. */
  offer(call: (what: string, fn: () => void) => void): void {
    if (!this.ready || !this.receiver) return;
    this.ready = false;
    const rx = this.receiver;
    while (this.queue.length > 0) {
      const f = this.queue[0] as Uint8Array;
      let took = false;
      call("e1000 receive", () => {
        took = rx(f);
      });
      if (!took) break;
      this.queue.shift();
    }
  }
}

const HOT_REGS = [
  REG.CTRL,
  REG.STATUS,
  REG.EECD,
  REG.EERD,
  REG.CTRL_EXT,
  REG.MDIC,
  REG.ICR,
  REG.ITR,
  REG.ICS,
  REG.IMS,
  REG.IMC,
  REG.RCTL,
  REG.TCTL,
  REG.RDBAL,
  REG.RDBAH,
  REG.RDLEN,
  REG.RDH,
  REG.RDT,
  REG.RDTR,
  REG.RADV,
  REG.TDBAL,
  REG.TDBAH,
  REG.TDLEN,
  REG.TDH,
  REG.TDT,
  REG.TIDV,
  REG.TADV,
  REG.TXDCTL,
  REG.RXDCTL,
  REG.RXCSUM,
  REG.VET,
  REG.RAL0,
  REG.RAH0,
  REG.MTA,
  REG.VFTA,
];

const STAT_REGS = Object.values(STAT) as number[];

export class E1000Case {
  readonly r: Rng;
  readonly probe: Probe;
  readonly mem: CheckedMemory;
  readonly host: CheckedMemory;
  readonly ram: ReturnType<typeof guardedRam>;
  readonly dev: E1000;
  readonly backend: FuzzBackend;
  readonly metrics = new CountingMetrics();
  readonly logs: string[] = [];
  readonly clock = { t: 1000 };
  /** The most one call handed to the backend. */
  maxCallBytes = 0;
  maxCallFrames = 0;
  maxCallWhat = "";
  txCount = 0;
  txBase = 0;
  txTail = 0;
  rxCount = 0;
  rxBase = 0;
  polls = 0;
  resets = 0;
  private bufBase: number;

  constructor(seed: number, opts: ProbeOptions) {
    const r = new Rng(seed);
    this.r = r;
    this.probe = new Probe(opts);
    const size = [64 * KiB, 256 * KiB, 1 * MiB, 4 * MiB][r.weighted([35, 40, 22, 3])] as number;
    this.ram = guardedRam(size);
    const base = r.pick([0, 0, 0x10000, 2 ** 32 - size / 2, 2 ** 53 - size - 64 * KiB]);
    const { device, host } = this.ram.open(base);
    this.mem = device;
    this.host = host;
    this.backend = new FuzzBackend(r.pick([1, 8, 64]));
    this.dev = new E1000({
      state: E1000.createState({ mac: NIC_MAC }),
      mem: device,
      backend: this.backend,
      irq: { set: () => {} },
      metrics: this.metrics,
      now: () => this.clock.t,
      log: (m) => {
        if (this.logs.length < 100) this.logs.push(m);
      },
    });
    this.bufBase = host.base + Math.floor(size / 2);
    this.probe.opts.trace?.(
      `case 0x${seed.toString(16)}: e1000, RAM ${size} bytes at 0x${base.toString(16)}`,
    );
  }

  /** A call into the device: probed, and its transmit work measured. */
  call(what: string, fn: () => void): void {
    const b0 = this.backend.sentBytes;
    const f0 = this.backend.sentFrames;
    this.probe.call(what, fn);
    const bytes = this.backend.sentBytes - b0;
    const frames = this.backend.sentFrames - f0;
    if (frames > 0) this.probe.opts.trace?.(`    ${what} sent ${frames} frames, ${bytes} bytes`);
    if (bytes > this.maxCallBytes || frames > this.maxCallFrames) this.maxCallWhat = what;
    this.maxCallBytes = Math.max(this.maxCallBytes, bytes);
    this.maxCallFrames = Math.max(this.maxCallFrames, frames);
  }

  w32(off: number, v: number): void {
    const d = new Uint8Array(4);
    new DataView(d.buffer).setUint32(0, v >>> 0, true);
    this.call(`write 0x${off.toString(16)}`, () => this.dev.write(off, d));
  }

  r32(off: number): number {
    const d = new Uint8Array(4);
    this.call(`read 0x${off.toString(16)}`, () => this.dev.read(off, d));
    return new DataView(d.buffer).getUint32(0, true);
  }

  /** A plausible driver bring-up, with hostile variations. */
  start(): void {
    const r = this.r;
    const host = this.host;
    this.w32(REG.CTRL, CTRL_RST);
    this.resets++;
    this.w32(REG.IMC, 0xffffffff);
    this.w32(REG.CTRL, 1 << 6);
    // Transmit ring: its count is TDLEN / 16, a multiple of 8.
    this.txCount = r.chance(0.97) ? 8 * r.range(1, 32) : 8 * r.range(1, 4096);
    this.txBase = r.chance(0.9) ? host.base + 16 * r.below(host.size / 4 / 16) : this.hostileAddr();
    this.w32(REG.TDBAL, this.txBase % 2 ** 32);
    this.w32(REG.TDBAH, Math.floor(this.txBase / 2 ** 32));
    this.w32(REG.TDLEN, r.chance(0.95) ? 16 * this.txCount : r.edgy32());
    this.w32(REG.TDH, 0);
    this.w32(REG.TDT, 0);
    this.txTail = 0;
    this.w32(REG.TIDV, r.below(64));
    this.w32(REG.TADV, r.below(64));
    this.w32(REG.TCTL, r.chance(0.95) ? TCTL_EN | TCTL_PSP : r.edgy32());
    // Receive ring.
    this.rxCount = 8 * r.range(1, 32);
    this.rxBase = r.chance(0.9)
      ? host.base + host.size / 4 + 16 * r.below(host.size / 4 / 16)
      : this.hostileAddr();
    for (let i = 0; i < this.rxCount; i++) this.rxDesc(i);
    this.w32(REG.RDBAL, this.rxBase % 2 ** 32);
    this.w32(REG.RDBAH, Math.floor(this.rxBase / 2 ** 32));
    this.w32(REG.RDLEN, 16 * this.rxCount);
    this.w32(REG.RDH, 0);
    this.w32(REG.RDT, this.rxCount - 1);
    this.w32(REG.RDTR, r.below(64));
    this.w32(REG.RXCSUM, r.below(0x800));
    // Buffer size (BSIZE/BSEX), long packets, broadcast, promiscuity, strip CRC: random.
    this.w32(REG.RCTL, RCTL_EN | (r.u32() & 0x0e03803c));
    this.w32(REG.IMS, r.u32());
    this.w32(REG.ITR, r.chance(0.5) ? 0 : r.below(5000));
  }

  private hostileAddr(): number {
    const r = this.r;
    const m = this.host;
    return r.pick([m.end - 16 * r.range(0, 8), m.base - 16, 2 ** 52, m.end, 0, r.u32() * 2 ** 16]);
  }

  /** A receive descriptor: buffer anywhere in RAM, in the transmit ring, at its own ring, or outside RAM. */
  rxDesc(i: number): void {
    const r = this.r;
    const host = this.host;
    let addr: number;
    switch (r.weighted([70, 10, 5, 5, 10])) {
      case 0:
        addr = this.bufBase + 2048 * r.below(Math.max(1, (host.end - this.bufBase) / 2048 - 8));
        break;
      case 1:
        addr = this.txBase;
        break;
      case 2:
        addr = this.rxBase;
        break;
      case 3:
        addr = host.end - r.below(64);
        break;
      default:
        addr = host.base + r.below(host.size);
    }
    const at = this.rxBase + 16 * i;
    // A ring outside RAM gets no descriptors (the driver could not write them either).
    if (!this.host.inside(at, 16)) return;
    this.host.writeU64(at, BigInt(Math.max(0, addr)));
    this.host.writeU64(at + 8, 0n);
  }

  /** A transmit descriptor at the tail: legacy, context (maybe TSO) or data, plausible or maximal or random. */
  txDesc(): void {
    const r = this.r;
    const host = this.host;
    const d = new Uint8Array(16);
    const v = new DataView(d.buffer);
    const aliased = r.chance(0.3);
    const addr = aliased
      ? r.pick([host.base, this.bufBase, this.txBase, host.base + 4096 * r.below(host.size / 4096)])
      : r.chance(0.9)
        ? this.bufBase + r.below(Math.max(1, host.end - this.bufBase - 16 * KiB))
        : this.hostileAddr();
    v.setBigUint64(0, BigInt(Math.max(0, addr)), true);
    const maximal = r.chance(0.15);
    switch (r.weighted([40, 20, 40])) {
      case 0: {
        // Legacy: length 15:0, CSO, CMD, STA, CSS, special.
        v.setUint16(8, maximal ? 0xffff : r.chance(0.8) ? r.range(14, 1514) : r.below(0x10000), true);
        d[10] = r.below(256);
        d[11] = (r.chance(0.7) ? TXD_EOP | TXD_IFCS | TXD_RS : r.below(256)) & ~TXD_DEXT;
        d[13] = r.below(256);
        v.setUint16(14, r.u32() & 0xffff, true);
        break;
      }
      case 1: {
        // Context: IPCSS, IPCSO, IPCSE, TUCSS, TUCSO, TUCSE, PAYLEN 19:0 | DTYP 0 | TUCMD, STA, HDRLEN, MSS.
        const plausible = r.chance(0.6);
        d[0] = plausible ? 14 : r.below(256);
        d[1] = plausible ? 24 : r.below(256);
        v.setUint16(2, plausible ? 33 : r.u32() & 0xffff, true);
        d[4] = plausible ? 34 : r.below(256);
        d[5] = plausible ? 50 : r.below(256);
        v.setUint16(6, r.chance(0.7) ? 0 : r.u32() & 0xffff, true);
        const paylen = maximal ? 0xfffff : r.chance(0.7) ? r.below(65536) : r.below(0x100000);
        const tucmd = TXD_DEXT | (r.chance(0.5) ? TXD_IC_TSE : 0) | (r.below(256) & ~TXD_DEXT & 0xdf);
        v.setUint32(8, paylen | (tucmd << 24), true);
        d[13] = plausible ? 54 : r.below(256);
        v.setUint16(
          14,
          maximal ? r.pick([1, 2, 8]) : r.chance(0.7) ? r.pick([536, 1460, 8960]) : r.u32() & 0xffff,
          true,
        );
        break;
      }
      default: {
        // Data: DTALEN 19:0 | DTYP 1 | DCMD, STA, POPTS, special.
        const len = maximal
          ? r.pick([0xfffff, 0x3ffff, 0xffff])
          : r.chance(0.8)
            ? r.range(1, 9000)
            : r.below(0x100000);
        const dcmd =
          TXD_DEXT |
          (r.chance(0.7) ? TXD_EOP : 0) |
          (r.chance(0.5) ? TXD_IC_TSE : 0) |
          (r.chance(0.6) ? TXD_RS : 0) |
          (r.chance(0.2) ? TXD_VLE : 0) |
          (r.chance(0.2) ? TXD_IDE : 0) |
          (r.chance(0.7) ? TXD_IFCS : 0);
        v.setUint32(8, (len & 0xfffff) | (1 << 20) | (dcmd << 24), true);
        d[13] = r.below(8);
        v.setUint16(14, r.u32() & 0xffff, true);
      }
    }
    if (r.chance(0.05)) d.set(r.bytes(16));
    const at = this.txBase + 16 * (this.txTail % Math.max(1, this.txCount));
    if (this.host.inside(at, 16)) this.host.write(at, d);
    this.txTail = (this.txTail + 1) % Math.max(1, this.txCount);
  }

  /** A frame from the wire: any length, for us, broadcast or someone else. */
  frame(): Uint8Array {
    const r = this.r;
    const len = r.chance(0.85) ? r.range(0, 1522) : r.pick([16384, 16385, 9018, 65535, r.below(20000)]);
    const f = new Uint8Array(len);
    f.set(r.bytes(Math.min(len, 64)));
    if (len >= 6 && r.chance(0.7)) f.set(r.chance(0.8) ? NIC_MAC : [0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    if (len >= 34 && r.chance(0.5)) {
      f[12] = 0x08;
      f[13] = 0x00;
      f[14] = 0x45;
      f[23] = r.pick([6, 17]);
    }
    return f;
  }

  run(steps: number): void {
    const r = this.r;
    this.start();
    for (let i = 0; i < steps; i++) {
      const op = r.weighted([22, 8, 12, 10, 10, 8, 6, 5, 4, 3, 4]);
      this.probe.opts.trace?.(`op ${op}`);
      // The I/O thread offers queued frames whenever the device asked for it (rxReady) or a frame came.
      if (r.chance(0.7)) this.backend.offer((what, fn) => this.call(what, fn));
      switch (op) {
        case 0: {
          // Descriptors at the tail, then the doorbell.
          const n = r.chance(0.8) ? r.range(1, 8) : r.range(1, this.txCount);
          for (let k = 0; k < n; k++) this.txDesc();
          this.w32(REG.TDT, r.chance(0.95) ? this.txTail : r.edgy32());
          break;
        }
        case 1: {
          // The whole ring, every descriptor maximal and naming the same pages (or a TSO packet with a tiny MSS).
          const tso = r.chance(0.5);
          const big = r.pick([0xffff, 0x3fff, 16 * KiB]);
          const count = Math.max(1, this.txCount);
          for (let k = 0; k < count; k++) {
            const d = new Uint8Array(16);
            const v = new DataView(d.buffer);
            v.setBigUint64(0, BigInt(this.bufBase), true);
            if (tso && k === 0) {
              d[0] = 14;
              d[1] = 24;
              v.setUint16(2, 33, true);
              d[4] = 34;
              d[5] = 50;
              v.setUint32(8, 0xfffff | ((TXD_DEXT | TXD_IC_TSE | 3) << 24), true);
              d[13] = 54;
              v.setUint16(14, r.pick([1, 8, 64, 536]), true);
            } else if (tso) {
              v.setUint32(
                8,
                (0x3ffff & 0xfffff) |
                  (1 << 20) |
                  ((TXD_DEXT | TXD_IC_TSE | TXD_RS | (k === count - 1 ? TXD_EOP : 0)) << 24),
                true,
              );
              d[13] = 3;
            } else {
              v.setUint16(8, big, true);
              d[11] = TXD_EOP | TXD_RS | TXD_IFCS;
            }
            const at = this.txBase + 16 * ((this.txTail + k) % count);
            if (this.host.inside(at, 16)) this.host.write(at, d);
          }
          this.txTail = (this.txTail + count - 1) % count;
          this.w32(REG.TDT, this.txTail);
          break;
        }
        case 2:
          this.backend.inject(this.frame());
          break;
        case 3: {
          // Receive descriptors handed back.
          const n = r.range(1, this.rxCount);
          for (let k = 0; k < n; k++) this.rxDesc(r.below(this.rxCount));
          this.w32(REG.RDT, r.chance(0.9) ? r.below(this.rxCount) : r.edgy32());
          break;
        }
        case 4: {
          // A hot register, any value.
          const reg = r.pick(HOT_REGS);
          let v = r.edgy32();
          if (reg === REG.CTRL && r.chance(0.8)) v &= ~CTRL_RST;
          this.w32(reg, v);
          break;
        }
        case 5: {
          // Any offset, any size, read or write; or the I/O window.
          const size = r.pick([1, 2, 4, 8, 3]);
          const data = r.bytes(size);
          const off = r.below(0x20010);
          if (r.chance(0.6)) {
            if (r.chance(0.5))
              this.call(`write 0x${off.toString(16)}/${size}`, () => this.dev.write(off, data));
            else this.call(`read 0x${off.toString(16)}/${size}`, () => this.dev.read(off, data));
          } else {
            const io = r.below(0x44);
            if (io === 0 && size === 4 && r.chance(0.5))
              data.set([r.pick([REG.TDT, REG.RDT, REG.CTRL, REG.ICR]) & 0xff, 0, 0, 0]);
            if (r.chance(0.5))
              this.call(`io write 0x${io.toString(16)}/${size}`, () => this.dev.io.write(io, data));
            else this.call(`io read 0x${io.toString(16)}/${size}`, () => this.dev.io.read(io, data));
          }
          break;
        }
        case 6:
          this.clock.t += r.pick([0, 0.001, 0.05, 1, 100]);
          this.call("poll", () => this.dev.poll());
          this.polls++;
          break;
        case 7:
          this.r32(REG.ICR);
          if (r.chance(0.3)) this.r32(r.pick(STAT_REGS));
          break;
        case 8:
          // The ring moves (a driver's reconfiguration), or shrinks under the tail.
          this.w32(r.chance(0.5) ? REG.TDLEN : REG.RDLEN, r.chance(0.7) ? 128 * r.range(0, 64) : r.edgy32());
          break;
        case 9:
          this.start();
          break;
        default:
          this.call("link", () => this.dev.setLinkUp(r.chance(0.7)));
      }
    }
  }

  finish(limits: E1000FuzzLimits): CaseResult {
    const probe = this.probe;
    const dev = this.dev;
    // Progress: poll while the device says it has work now; then let every timer expire and poll again.
    let polls = 0;
    let owing = false;
    for (let round = 0; round < 2; round++) {
      for (;;) {
        let next: number | undefined;
        probe.call("nextDeadline", () => {
          next = dev.nextDeadline();
        });
        if (next === undefined || next > this.clock.t) {
          owing = false;
          break;
        }
        if (polls >= limits.maxPolls) {
          owing = true;
          break;
        }
        polls++;
        this.call("poll", () => dev.poll());
        this.backend.offer((what, fn) => this.call(what, fn));
      }
      if (owing) break;
      this.clock.t += 10000;
    }
    if (owing) probe.fail("hang", `the device still owes work after ${polls} polls at the end`);
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
    const errors = dev.errorCounts();
    if (errors.internal) {
      const line = this.logs.find((l) => l.includes("[internal")) ?? "internal error";
      probe.fail("internal", line);
    }
    if (this.maxCallBytes > limits.maxCallBytes) {
      probe.fail(
        "budget",
        `one call (${this.maxCallWhat}) handed ${this.maxCallBytes} bytes to the backend (limit ${limits.maxCallBytes})`,
      );
    }
    if (this.maxCallFrames > limits.maxCallFrames) {
      probe.fail(
        "budget",
        `one call (${this.maxCallWhat}) sent ${this.maxCallFrames} frames (limit ${limits.maxCallFrames})`,
      );
    }
    const guestErrors = Object.entries(errors).reduce((n, [k, v]) => (k === "internal" ? n : n + v), 0);
    const events: Record<string, number> = {
      "tx frames": this.backend.sentFrames,
      "tx bytes": this.backend.sentBytes,
      "rx frames": this.metrics.value("e1000.rx.frames"),
      "tx deferred": this.metrics.value("e1000.tx.deferred"),
      "guest errors": guestErrors,
      "dma refused": errors.dma ?? 0,
      "oob refused": this.mem.rejected,
      resets: this.resets,
      polls: this.polls + polls,
    };
    for (const [k, v] of Object.entries(errors)) if (k !== "internal") events[`err ${k}`] = v;
    const outcome =
      this.backend.sentFrames > 0 || events["rx frames"]
        ? guestErrors > 0
          ? "traffic+errors"
          : "traffic"
        : guestErrors > 0
          ? "errors only"
          : "idle";
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
      maxSliceBytes: this.maxCallBytes,
      maxSliceChains: this.maxCallFrames,
      slices: this.polls + polls,
      calls: probe.calls,
    };
  }
}

export interface E1000FamilyOptions {
  maxPolls?: number | undefined;
  /** Test only: runs on each case after it is built (the detector self-tests plant bugs with it). */
  plant?: (c: E1000Case) => void;
}

export function e1000Family(o: E1000FamilyOptions = {}): Family {
  const limits: E1000FuzzLimits = {
    ...DEFAULT_E1000_LIMITS,
    ...(o.maxPolls ? { maxPolls: o.maxPolls } : {}),
  };
  return {
    name: "e1000",
    run(seed: number, opts: ProbeOptions): CaseResult {
      let c: E1000Case | undefined;
      try {
        c = new E1000Case(seed, opts);
        o.plant?.(c);
        c.run(c.r.range(4, 40));
        const res = c.finish(limits);
        res.seed = seed;
        return res;
      } catch (e) {
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
