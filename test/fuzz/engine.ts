/**
 * The hostile-driver fuzzer's machinery, shared by every device family (virtio.ts, e1000.ts) and by its two
 * entry points (test/fuzz/run.ts for long campaigns, test/unit/hostile-fuzz.test.ts for the unit suite):
 *
 * - Rng: a seeded generator (sfc32). A case is a pure function of its 32-bit case seed, so any case replays alone.
 * - GuardedRam: guest RAM as a view into a larger SharedArrayBuffer with canary bytes on both sides, and a
 *   GuestMemory whose every public accessor checks the range independently: an out-of-range access the memory
 *   did not refuse is recorded (an escape), one it refused is counted (rejected: not a failure).
 * - Probe: wraps every call into a device (register access, notify, deferred slice, backend callback). Nothing
 *   may escape it; each call is timed (wall clock, cheaply; CPU time after a forced gc when confirming).
 *
 * What fails a case: an exception out of a device; an internal error the device contained (a TypeError or a
 * RangeError it turned into DEVICE_NEEDS_RESET is still a bug); an access outside guest RAM that was not
 * refused, or a canary byte changed; a slice whose work exceeds the budget; a call slower than the threshold in
 * CPU time (confirmed by replaying the case with a gc before every call); a device still owing work after the
 * bounded number of slices.
 */
import { openSync, readSync } from "node:fs";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { GuestMemory } from "../../src/memory/guest-memory.ts";
import type { Counter, MetricsSink } from "../../src/metrics/registry.ts";

// ---- seeded generator --------------------------------------------------------------------------------------

/** murmur3's finalizer: spreads a 32-bit value over all bits. */
export function mix32(x: number): number {
  let h = x >>> 0;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b) >>> 0;
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35) >>> 0;
  h ^= h >>> 16;
  return h >>> 0;
}

/** The seed of case `index` of a campaign (campaign seed, family): what a failure report names. */
export function caseSeed(campaign: number, family: string, index: number): number {
  let f = 0;
  for (let i = 0; i < family.length; i++) f = mix32(f ^ family.charCodeAt(i));
  return mix32(mix32((campaign >>> 0) ^ f) + Math.imul(index + 1, 0x9e3779b9));
}

/** sfc32, seeded through splitmix-like mixing of one 32-bit seed. */
export class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(seed: number) {
    this.a = mix32(seed ^ 0x9e3779b9);
    this.b = mix32(seed + 0x6a09e667);
    this.c = mix32(seed ^ 0xbb67ae85);
    this.d = 1;
    for (let i = 0; i < 12; i++) this.u32();
  }

  u32(): number {
    const t = (((this.a + this.b) >>> 0) + this.d) >>> 0;
    this.d = (this.d + 1) >>> 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) >>> 0;
    this.c = ((this.c << 21) | (this.c >>> 11)) >>> 0;
    this.c = (this.c + t) >>> 0;
    return t;
  }

  /** An integer in [0, n) (n up to 2^53). */
  below(n: number): number {
    if (n <= 0x100000000) return Math.floor((this.u32() / 0x100000000) * n);
    return Math.floor(((this.u32() * 0x100000000 + this.u32()) / 2 ** 64) * n);
  }

  /** An integer in [lo, hi]. */
  range(lo: number, hi: number): number {
    return lo + this.below(hi - lo + 1);
  }

  chance(p: number): boolean {
    return this.u32() < p * 0x100000000;
  }

  pick<T>(items: readonly T[]): T {
    return items[this.below(items.length)] as T;
  }

  /** An index into `weights`, chosen with probability proportional to its weight. */
  weighted(weights: readonly number[]): number {
    let total = 0;
    for (const w of weights) total += w;
    let x = this.below(total);
    for (let i = 0; i < weights.length; i++) {
      x -= weights[i] as number;
      if (x < 0) return i;
    }
    return weights.length - 1;
  }

  bytes(n: number): Uint8Array {
    const out = new Uint8Array(n);
    let i = 0;
    for (; i + 4 <= n; i += 4) {
      const v = this.u32();
      out[i] = v;
      out[i + 1] = v >>> 8;
      out[i + 2] = v >>> 16;
      out[i + 3] = v >>> 24;
    }
    for (; i < n; i++) out[i] = this.u32();
    return out;
  }

  /** A 32-bit value biased toward the ones that break code: 0, 1, all ones, powers of two and their neighbours. */
  edgy32(): number {
    switch (this.below(6)) {
      case 0:
        return this.pick([0, 1, 2, 0xff, 0xffff, 0x10000, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff]);
      case 1: {
        const p = 2 ** this.below(32);
        return (p + this.range(-1, 1)) >>> 0;
      }
      case 2:
        return this.below(16);
      default:
        return this.u32();
    }
  }
}

// ---- guest RAM with canaries and a checking GuestMemory ----------------------------------------------------

export const CANARY_BYTES = 4096;

function canaryByte(i: number): number {
  return (0xa5 ^ (i * 29)) & 0xff;
}

/** One access outside guest RAM that GuestMemory performed instead of refusing. */
export interface Escape {
  op: string;
  gpa: number;
  len: number;
}

/**
 * A GuestMemory over [CANARY_BYTES, CANARY_BYTES + size) of `sab`. With `instrument`, each public accessor checks
 * the range itself before delegating: an out-of-range access that GuestMemory does not refuse is an escape.
 */
export class CheckedMemory extends GuestMemory {
  escapes: Escape[] = [];
  rejected = 0;
  private readonly instrument: boolean;
  /** RAM's bounds as the fuzzer knows them, kept apart from GuestMemory's own fields (which are under test). */
  private readonly ramBase: number;
  private readonly ramSize: number;

  constructor(sab: SharedArrayBuffer, base: number, size: number, instrument: boolean) {
    super(sab, base);
    // GuestMemory covers a whole buffer: narrow it to the RAM view between the canaries. Its fields are plain
    // properties at run time; the constructor check below proves the narrowing took.
    const self = this as unknown as { size: number; bytes: Uint8Array; dataView: DataView };
    self.size = size;
    self.bytes = new Uint8Array(sab, CANARY_BYTES, size);
    self.dataView = new DataView(sab, CANARY_BYTES, size);
    this.instrument = instrument;
    this.ramBase = base;
    this.ramSize = size;
    const raw = new Uint8Array(sab);
    const keep = [raw[CANARY_BYTES], raw[CANARY_BYTES + size - 1]] as number[];
    super.writeU8(base, 0x5a);
    super.writeU16(base + size - 2, 0xc33c);
    const ok =
      raw[CANARY_BYTES] === 0x5a &&
      raw[CANARY_BYTES + size - 1] === 0xc3 &&
      super.readU8(base + size - 2) === 0x3c &&
      this.end === base + size;
    raw[CANARY_BYTES] = keep[0] as number;
    raw[CANARY_BYTES + size - 1] = keep[1] as number;
    if (!ok)
      throw new Error("CheckedMemory: GuestMemory's layout changed; the RAM view could not be narrowed");
  }

  /** Is [gpa, gpa + len) inside RAM? Computed independently of GuestMemory (exactly, with BigInt when large). */
  inside(gpa: number, len: number): boolean {
    if (!Number.isInteger(gpa) || !Number.isInteger(len) || len < 0) return false;
    const base = this.ramBase;
    const size = this.ramSize;
    if (Math.abs(gpa) < 2 ** 52 && len < 2 ** 52 && base < 2 ** 52)
      return gpa >= base && gpa + len <= base + size;
    if (!Number.isSafeInteger(gpa) || !Number.isSafeInteger(len)) return false;
    const g = BigInt(gpa);
    return g >= BigInt(base) && g + BigInt(len) <= BigInt(base) + BigInt(size);
  }

  /** Nesting depth of checked accessors (read() calls check(), and so on): only the outermost one counts. */
  private depth = 0;

  private wrap<T>(op: string, gpa: number, len: number, fn: () => T): T {
    if (!this.instrument || this.depth > 0) return fn();
    const ok = this.inside(gpa, len);
    this.depth = 1;
    let v: T;
    try {
      v = fn();
    } catch (e) {
      if (!ok) this.rejected++;
      throw e;
    } finally {
      this.depth = 0;
    }
    if (!ok) this.escapes.push({ op, gpa, len });
    return v;
  }

  override check(gpa: number, len: number): number {
    return this.wrap("check", gpa, len, () => {
      const off = super.check(gpa, len);
      if (this.instrument && !(off >= 0 && off + len <= this.ramSize)) {
        this.escapes.push({ op: "check (offset)", gpa, len });
      }
      return off;
    });
  }
  /** offsetOf refuses with -1, not by throwing: a refusal outside RAM is counted, an offset given there escapes. */
  override offsetOf(gpa: number, len: number): number {
    const off = super.offsetOf(gpa, len);
    if (this.instrument && this.depth === 0) {
      const ok = this.inside(gpa, len);
      if (off < 0) {
        if (!ok) this.rejected++;
      } else if (!ok || off + len > this.ramSize) {
        this.escapes.push({ op: "offsetOf", gpa, len });
      }
    }
    return off;
  }
  override readU8(gpa: number): number {
    return this.wrap("readU8", gpa, 1, () => super.readU8(gpa));
  }
  override readU16(gpa: number): number {
    return this.wrap("readU16", gpa, 2, () => super.readU16(gpa));
  }
  override readU32(gpa: number): number {
    return this.wrap("readU32", gpa, 4, () => super.readU32(gpa));
  }
  override readU64(gpa: number): bigint {
    return this.wrap("readU64", gpa, 8, () => super.readU64(gpa));
  }
  override writeU8(gpa: number, value: number): void {
    this.wrap("writeU8", gpa, 1, () => super.writeU8(gpa, value));
  }
  override writeU16(gpa: number, value: number): void {
    this.wrap("writeU16", gpa, 2, () => super.writeU16(gpa, value));
  }
  override writeU32(gpa: number, value: number): void {
    this.wrap("writeU32", gpa, 4, () => super.writeU32(gpa, value));
  }
  override writeU64(gpa: number, value: bigint): void {
    this.wrap("writeU64", gpa, 8, () => super.writeU64(gpa, value));
  }
  override read(gpa: number, dst: Uint8Array): void {
    this.wrap("read", gpa, dst.length, () => super.read(gpa, dst));
  }
  override write(gpa: number, src: Uint8Array): void {
    this.wrap("write", gpa, src.length, () => super.write(gpa, src));
  }
  override fill(gpa: number, len: number, byte: number): void {
    this.wrap("fill", gpa, len, () => super.fill(gpa, len, byte));
  }
  override slice(gpa: number, len: number): Uint8Array {
    return this.wrap("slice", gpa, len, () => {
      const v = super.slice(gpa, len);
      const off = v.byteOffset - CANARY_BYTES;
      if (this.instrument && (v.buffer !== this.bytes.buffer || off < 0 || off + v.length > this.ramSize)) {
        this.escapes.push({ op: "slice (view)", gpa, len });
      }
      return v;
    });
  }
}

/**
 * One guest RAM buffer, reused from case to case: `device` is the instrumented memory a device gets, `host` an
 * unchecked one over the same bytes for the fuzzer's own driver writes (which must not count as the device's).
 */
export class GuardedRam {
  readonly sab: SharedArrayBuffer;
  readonly raw: Uint8Array;
  readonly size: number;
  private dirty = 0;

  constructor(size: number) {
    this.size = size;
    this.sab = new SharedArrayBuffer(size + 2 * CANARY_BYTES);
    this.raw = new Uint8Array(this.sab);
    for (let i = 0; i < CANARY_BYTES; i++) {
      this.raw[i] = canaryByte(i);
      this.raw[CANARY_BYTES + size + i] = canaryByte(i + 7);
    }
    this.dirty = size;
  }

  /** Fresh views at `base` for one case; RAM is zeroed first. */
  open(base: number): { device: CheckedMemory; host: CheckedMemory } {
    if (this.dirty > 0) this.raw.fill(0, CANARY_BYTES, CANARY_BYTES + this.size);
    this.dirty = this.size;
    return {
      device: new CheckedMemory(this.sab, base, this.size, true),
      host: new CheckedMemory(this.sab, base, this.size, false),
    };
  }

  /** Offsets (negative: below RAM; >= size: above) of canary bytes that changed; restores them. */
  checkCanaries(): number[] {
    const bad: number[] = [];
    const raw = this.raw;
    const top = CANARY_BYTES + this.size;
    for (let i = 0; i < CANARY_BYTES; i++) {
      if (raw[i] !== canaryByte(i)) {
        bad.push(i - CANARY_BYTES);
        raw[i] = canaryByte(i);
      }
      if (raw[top + i] !== canaryByte(i + 7)) {
        bad.push(this.size + i);
        raw[top + i] = canaryByte(i + 7);
      }
    }
    return bad;
  }
}

/** GuardedRam objects by size, one per process. */
const rams = new Map<number, GuardedRam>();
export function guardedRam(size: number): GuardedRam {
  let r = rams.get(size);
  if (!r) {
    r = new GuardedRam(size);
    rams.set(size, r);
  }
  return r;
}

// ---- metrics the devices count into ------------------------------------------------------------------------

class PlainCounter implements Counter {
  value = 0;
  add(n = 1): void {
    this.value += n;
  }
}

export class CountingMetrics implements MetricsSink {
  readonly counters = new Map<string, PlainCounter>();
  counter(name: string): Counter {
    let c = this.counters.get(name);
    if (!c) {
      c = new PlainCounter();
      this.counters.set(name, c);
    }
    return c;
  }
  value(name: string): number {
    return this.counters.get(name)?.value ?? 0;
  }
  /** Sum of every counter whose name ends with `suffix`. */
  sum(suffix: string): number {
    let n = 0;
    for (const [k, c] of this.counters) if (k.endsWith(suffix)) n += c.value;
    return n;
  }
}

// ---- probing calls into a device ---------------------------------------------------------------------------

export type FailureKind = "exception" | "internal" | "escape" | "canary" | "budget" | "slow" | "hang";

export interface Failure {
  kind: FailureKind;
  detail: string;
}

let gcFn: (() => void) | undefined;
/** A full collection (the flag is set on first use). */
export function forceGc(): void {
  if (!gcFn) {
    setFlagsFromString("--expose-gc");
    gcFn = runInNewContext("gc") as () => void;
  }
  gcFn();
}

/**
 * CPU time of this thread in µs. /proc/thread-self/schedstat counts the time the thread ran, in nanoseconds; unlike
 * process.cpuUsage() it leaves out V8's helper threads (the concurrent marking and sweeping a forced gc sets off
 * would otherwise be charged to the next call). Falls back to process.cpuUsage() where there is no schedstat.
 */
export const threadCpuUs: () => number = (() => {
  try {
    const fd = openSync("/proc/thread-self/schedstat", "r");
    const buf = Buffer.alloc(128);
    const read = (): number => {
      const n = readSync(fd, buf, 0, buf.length, 0);
      const text = buf.toString("latin1", 0, n);
      return Number(text.slice(0, text.indexOf(" "))) / 1000;
    };
    if (!Number.isFinite(read())) throw new Error("schedstat unreadable");
    return read;
  } catch {
    return () => {
      const u = process.cpuUsage();
      return u.user + u.system;
    };
  }
})();

function describe(e: unknown): string {
  if (e instanceof Error) return `${e.name}: ${e.message}`;
  return String(e);
}

export interface ProbeOptions {
  /** A call at least this slow (µs) is a failure once confirmed in CPU time. */
  slowUs: number;
  /** Measure CPU time around every call (confirmation and replay runs). */
  cpu: boolean;
  /**
   * With `cpu`: the calls (by index in the case) to run after a forced gc; undefined: every call. A gc costs
   * milliseconds, so confirmation finds the slow calls without gc first, then measures just those after one.
   */
  gcBefore?: ReadonlySet<number> | undefined;
  trace?: ((line: string) => void) | undefined;
}

/** Wraps every call into a device of one case: catches what escapes, times it. */
export class Probe {
  readonly failures: Failure[] = [];
  /** The slowest call: wall-clock µs (or CPU µs with `cpu`), and what it was. */
  slowestUs = 0;
  slowestCall = "";
  /** A call took at least slowUs of wall-clock time: the case is replayed in CPU time to confirm. */
  slowCandidate = false;
  calls = 0;
  /** Indices of the calls at least slowUs long. */
  readonly slowCalls: number[] = [];
  /** Index of the slowest call. */
  slowestIndex = -1;
  private depth = 0;

  constructor(readonly opts: ProbeOptions) {}

  fail(kind: FailureKind, detail: string): void {
    if (this.failures.length < 20) this.failures.push({ kind, detail });
    this.opts.trace?.(`FAIL ${kind}: ${detail}`);
  }

  /** Runs one call into a device; undefined if it threw (a failure). Nested calls are timed with the outer one. */
  call<T>(what: string, fn: () => T): T | undefined {
    if (this.depth > 0) {
      try {
        return fn();
      } catch (e) {
        this.fail("exception", `${what} threw ${describe(e)}`);
        return undefined;
      }
    }
    this.depth = 1;
    const index = this.calls++;
    const cpu = this.opts.cpu;
    let c0 = -1;
    if (cpu) {
      const g = this.opts.gcBefore;
      if (g === undefined || g.has(index)) forceGc();
      c0 = threadCpuUs();
    }
    const t0 = performance.now();
    try {
      return fn();
    } catch (e) {
      this.fail("exception", `${what} threw ${describe(e)}`);
      return undefined;
    } finally {
      const wallUs = (performance.now() - t0) * 1000;
      const us = c0 >= 0 ? threadCpuUs() - c0 : wallUs;
      this.depth = 0;
      if (us > this.slowestUs) {
        this.slowestUs = us;
        this.slowestCall = what;
        this.slowestIndex = index;
      }
      if (us >= this.opts.slowUs) {
        this.slowCalls.push(index);
        const gced = cpu && (this.opts.gcBefore === undefined || this.opts.gcBefore.has(index));
        if (gced)
          this.fail("slow", `${what} (call ${index}) took ${(us / 1000).toFixed(1)} ms of CPU after a gc`);
        else this.slowCandidate = true;
      }
      this.opts.trace?.(`  ${what} ${Math.round(us)} µs`);
    }
  }
}

// ---- case results ------------------------------------------------------------------------------------------

export interface CaseResult {
  seed: number;
  /** The case's primary outcome (ok, NEEDS_RESET, FEATURES_REFUSED, ...). */
  outcome: string;
  /** Events counted during the case: chains served, IOERR statuses, dropped frames, rejected accesses ... */
  events: Record<string, number>;
  failures: Failure[];
  slowestUs: number;
  slowestCall: string;
  slowCandidate: boolean;
  /** Indices of calls at least the threshold long, and of the slowest call (see ProbeOptions.gcBefore). */
  slowCalls: number[];
  slowestIndex: number;
  /** Largest slice of work (bytes, chains) seen. */
  maxSliceBytes: number;
  maxSliceChains: number;
  /** virtio: the most descriptors one slice read. */
  maxSliceDescriptors?: number;
  slices: number;
  calls: number;
}

export interface Family {
  readonly name: string;
  /** Runs one case; never throws (a harness bug is reported as a failure of kind "exception"). */
  run(seed: number, opts: ProbeOptions): CaseResult;
}

/** Log lines that say a device contained an internal error (a bug), not a guest error. */
const INTERNAL =
  /\b(TypeError|RangeError|ReferenceError|SyntaxError|InternalError|AggregateError)\b|unexpected failure|internal error|\bError: /;

export function isInternalLog(line: string): boolean {
  return INTERNAL.test(line);
}

// ---- campaigns ---------------------------------------------------------------------------------------------

export interface CampaignOptions {
  seed: number;
  cases: number;
  /** CPU threshold per call, ms. */
  slowMs: number;
  /** Cases re-measured in CPU time for the slowest-notification figure. */
  confirmTop?: number;
  /** Called every few thousand cases and at the end. */
  progress?: (r: FamilyReport) => void;
  /** Stop after this many failing cases. */
  maxFailures?: number;
  /** Start at this case index (to split a campaign). */
  startIndex?: number;
}

export interface FailingCase {
  seed: number;
  index: number;
  failures: Failure[];
}

export interface FamilyReport {
  family: string;
  campaignSeed: number;
  cases: number;
  outcomes: Record<string, number>;
  events: Record<string, number>;
  failures: number;
  failuresByKind: Record<string, number>;
  failing: FailingCase[];
  /** Calls whose wall time crossed the threshold but whose CPU time, replayed, did not. */
  slowByWallOnly: number;
  slices: number;
  maxSliceBytes: number;
  maxSliceChains: number;
  maxSliceDescriptors: number;
  calls: number;
  /** The slowest call in CPU µs (re-measured after gc), its case seed and what it was. */
  slowestUs: number;
  slowestSeed: number;
  slowestCall: string;
  /** The slowest call by wall clock during the run (includes descheduling on a busy machine). */
  slowestWallUs: number;
  slowestWallSeed: number;
  seconds: number;
  casesPerSecond: number;
}

function bump(into: Record<string, number>, key: string, n = 1): void {
  into[key] = (into[key] ?? 0) + n;
}

export function runCampaign(family: Family, o: CampaignOptions): FamilyReport {
  const slowUs = o.slowMs * 1000;
  const probeOpts: ProbeOptions = { slowUs, cpu: false };
  const report: FamilyReport = {
    family: family.name,
    campaignSeed: o.seed,
    cases: 0,
    outcomes: {},
    events: {},
    failures: 0,
    failuresByKind: {},
    failing: [],
    slowByWallOnly: 0,
    slices: 0,
    maxSliceBytes: 0,
    maxSliceChains: 0,
    maxSliceDescriptors: 0,
    calls: 0,
    slowestUs: 0,
    slowestSeed: 0,
    slowestCall: "",
    slowestWallUs: 0,
    slowestWallSeed: 0,
    seconds: 0,
    casesPerSecond: 0,
  };
  // The slowest cases by wall clock, re-measured in CPU time at the end.
  const topN = o.confirmTop ?? 12;
  const top: Array<{ seed: number; us: number }> = [];
  const start = performance.now();
  let lastProgress = start;
  const first = o.startIndex ?? 0;
  for (let i = first; i < first + o.cases; i++) {
    const seed = caseSeed(o.seed, family.name, i);
    let r = family.run(seed, probeOpts);
    if (r.slowCandidate) {
      const slow = confirmSlow(family, seed, slowUs);
      if (slow.length === 0) report.slowByWallOnly++;
      r = { ...r, failures: [...r.failures, ...slow] };
    }
    report.cases++;
    bump(report.outcomes, r.outcome);
    for (const [k, v] of Object.entries(r.events)) bump(report.events, k, v);
    report.slices += r.slices;
    report.calls += r.calls;
    report.maxSliceBytes = Math.max(report.maxSliceBytes, r.maxSliceBytes);
    report.maxSliceChains = Math.max(report.maxSliceChains, r.maxSliceChains);
    report.maxSliceDescriptors = Math.max(report.maxSliceDescriptors, r.maxSliceDescriptors ?? 0);
    if (r.slowestUs > report.slowestWallUs) {
      report.slowestWallUs = r.slowestUs;
      report.slowestWallSeed = seed;
    }
    if (topN > 0 && (top.length < topN || r.slowestUs > (top[top.length - 1] as { us: number }).us)) {
      top.push({ seed, us: r.slowestUs });
      top.sort((a, b) => b.us - a.us);
      if (top.length > topN) top.pop();
    }
    if (r.failures.length > 0) {
      report.failures++;
      for (const f of r.failures) bump(report.failuresByKind, f.kind);
      if (report.failing.length < 50) report.failing.push({ seed, index: i, failures: r.failures });
      if (o.maxFailures !== undefined && report.failures >= o.maxFailures) break;
    }
    const now = performance.now();
    if (o.progress && now - lastProgress > 30000) {
      lastProgress = now;
      finish(report, start);
      o.progress(report);
    }
  }
  for (const t of top) {
    const m = measureSlowest(family, t.seed, slowUs);
    if (m.us > report.slowestUs) {
      report.slowestUs = m.us;
      report.slowestSeed = t.seed;
      report.slowestCall = m.call;
    }
  }
  finish(report, start);
  o.progress?.(report);
  return report;
}

/**
 * Replays a case whose calls crossed the threshold in wall-clock time: first in CPU time without gc (to find the
 * slow calls), then with a gc before each of those; the failures of the second run stand.
 */
export function confirmSlow(family: Family, seed: number, slowUs: number): Failure[] {
  const first = family.run(seed, { slowUs, cpu: true, gcBefore: new Set() });
  if (first.slowCalls.length === 0) return [];
  const second = family.run(seed, { slowUs, cpu: true, gcBefore: new Set(first.slowCalls) });
  return second.failures.filter((f) => f.kind === "slow");
}

/** The CPU time of a case's slowest call, measured after a gc (found in a first run without gc). */
export function measureSlowest(family: Family, seed: number, slowUs: number): { us: number; call: string } {
  const first = family.run(seed, { slowUs, cpu: true, gcBefore: new Set() });
  if (first.slowestIndex < 0) return { us: 0, call: "" };
  const second = family.run(seed, { slowUs, cpu: true, gcBefore: new Set([first.slowestIndex]) });
  return { us: second.slowestUs, call: second.slowestCall };
}

function finish(report: FamilyReport, start: number): void {
  report.seconds = (performance.now() - start) / 1000;
  report.casesPerSecond = report.cases / Math.max(report.seconds, 1e-9);
}

/** Runs one case with CPU timing and a trace of every call, for replaying a reported seed. */
export function replay(
  family: Family,
  seed: number,
  slowMs: number,
  trace: (line: string) => void,
): CaseResult {
  return family.run(seed, { slowUs: slowMs * 1000, cpu: true, trace });
}

/** Sums reports of the same family (parts of one campaign run with --start, or several seeds). */
export function mergeReports(parts: FamilyReport[]): FamilyReport[] {
  const by = new Map<string, FamilyReport>();
  for (const p of parts) {
    const m = by.get(p.family);
    if (!m) {
      by.set(p.family, JSON.parse(JSON.stringify(p)) as FamilyReport);
      continue;
    }
    m.cases += p.cases;
    for (const [k, v] of Object.entries(p.outcomes)) bump(m.outcomes, k, v);
    for (const [k, v] of Object.entries(p.events)) bump(m.events, k, v);
    for (const [k, v] of Object.entries(p.failuresByKind)) bump(m.failuresByKind, k, v);
    m.failures += p.failures;
    m.failing = [...m.failing, ...p.failing].slice(0, 50);
    m.slowByWallOnly += p.slowByWallOnly;
    m.slices += p.slices;
    m.calls += p.calls;
    m.maxSliceBytes = Math.max(m.maxSliceBytes, p.maxSliceBytes);
    m.maxSliceChains = Math.max(m.maxSliceChains, p.maxSliceChains);
    m.maxSliceDescriptors = Math.max(m.maxSliceDescriptors ?? 0, p.maxSliceDescriptors ?? 0);
    if (p.slowestUs > m.slowestUs) {
      m.slowestUs = p.slowestUs;
      m.slowestSeed = p.slowestSeed;
      m.slowestCall = p.slowestCall;
    }
    if (p.slowestWallUs > m.slowestWallUs) {
      m.slowestWallUs = p.slowestWallUs;
      m.slowestWallSeed = p.slowestWallSeed;
    }
    m.seconds += p.seconds;
    m.casesPerSecond = m.cases / Math.max(m.seconds, 1e-9);
  }
  return [...by.values()];
}
