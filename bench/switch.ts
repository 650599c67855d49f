/**
 * `vireo bench switch`: frames per second through a software switch, natively (no KVM), for each frame size and
 * each number of port pairs, through three switches under the same load:
 *
 *   testpmd  DPDK's testpmd, io forwarding between two `net_vhost` ports per pair (the reference: DPDK's own
 *            vhost-user back-end and the simplest forwarding there is, no lookup);
 *   vireo    `vireo switch` with two vhost-user ports per pair (each pair in a VLAN of its own, so that a frame
 *            to a MAC not learned yet floods only to its partner, as testpmd's pairs are wired);
 *   vireo-shm  `vireo switch` with two shm ports per pair (shared-memory frame rings, src/switch/ports/
 *            shm-port.ts): no virtqueue on the switch's side, the work a vhost-user port does for its peer (rings
 *            of descriptors) is the peer's; loaded by bench/shm-loop.ts, the same io loop as testpmd's, in JS;
 *   bridge   a Linux bridge between veth pairs in a network namespace of its own, loaded with netsniff-ng's
 *            trafgen (the host's networking is untouched; the namespace is deleted however the run ends);
 *   js-floor   bench/js-floor.ts: not a switch but JavaScript's floor on this machine, the least per-frame work a
 *            vhost-user switch in JavaScript can do (each port's frames straight into its partner's ring: no lookup,
 *            no staging copy, one-descriptor chains of split rings only), under the vhost-user load. vireo's row
 *            over it is the share of that floor vireo's switch reaches; its row over testpmd's is what JavaScript
 *            itself leaves of DPDK's rate here.
 *   wasm-floor bench/wasm-floor.ts: the JS floor's loop in WebAssembly (the front-ends' memory mapped into a wasm
 *            memory as well), under the same load: what a data path in WebAssembly would win back of what
 *            JavaScript leaves. Neither floor is a switch; vireo's switch is JavaScript only.
 *
 * The vhost-user load: ONE testpmd with two `net_virtio_user` ports per pair, in io forwarding, pinned to CPU 1,
 * started with `start tx_first 4` (four bursts of 32 frames on every port), so 128 frames per port circulate:
 * port A sends to B's MAC, the switch delivers to B, testpmd sends what B received out of A again, and the same
 * the other way. The frames per second are what that testpmd received from the switch over the window (both
 * directions of every pair, as the issue's "in total"). The switch under test runs alone on CPU 0.
 *
 * Why not one txonly and one rxonly testpmd per pair, each its own process: with two CPUs, the sender and the
 * receiver then share one, and testpmd polls without ever sleeping, so each runs only while the other is
 * descheduled: measured here (64 B, one pair, testpmd switch) 0.03 Mpps with 256-entry rings and 0.53 Mpps with
 * 4096, the scheduler's time slice times the ring size, not any switch's speed. A closed loop of busy pollers
 * needs one CPU for the load and one for the switch. (test/slow/switch-dpdk.test.ts does use a txonly and an
 * rxonly testpmd: there only the counts matter, not the rate.)
 *
 * The bridge cannot be loaded by virtio_user; trafgen sends the same frames (IPv4/UDP, testpmd txonly's
 * addresses, one direction per pair) from one veth of each pair to the other's MAC, with a static forwarding entry
 * so nothing floods; the count is the receiving veths' rx_packets. trafgen and the bridge (which runs in the
 * sender's softirq) share CPU 1: one core, as the issue's reference figure.
 *
 * Needs root, dpdk-testpmd (hugepages reserved and given back, bench/dpdk.ts), trafgen (Debian's netsniff-ng,
 * scripts/setup.sh installs both) and `vireo switch`; a row that cannot run says why instead of a number.
 *
 * Interposition costs (capture, 10 and 1000 filter rules, a rate limit) are further vireo rows: VARIANTS below,
 * one entry each, measured at one pair beside the plain vireo row.
 */
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { VireoError } from "../src/errors.ts";
import { repoPath } from "../src/paths.ts";
import {
  forwardCount,
  hasCommand,
  IS_ROOT,
  type Proc,
  ProcessSet,
  prepareDpdk,
  quitTestpmd,
  startTestpmd,
  until,
} from "./dpdk.ts";
import { formatTable } from "./stats.ts";

export interface SwitchBenchOptions {
  json: boolean;
  /** Length of each measured window (default 5). */
  seconds?: number;
  /** Frame sizes in bytes, Ethernet header to payload, no FCS (default 64 and 1518). */
  sizes?: number[];
  /** Numbers of port pairs (default 1, 2, 4). */
  pairs?: number[];
  /** The vhost-user load (default "loop"). */
  load?: LoadKind;
  /** Rounds, each running every configuration once in the same order; each row is the median round (default 1). */
  rounds?: number;
}

/** vireo-shm: `vireo switch` with shm ports (netmap-style rings, no virtqueues), loaded by bench/shm-loop.ts. */
export type SwitchPath = "testpmd" | "vireo" | "vireo-shm" | "bridge" | "js-floor" | "wasm-floor";

export interface SwitchBenchRow {
  path: SwitchPath;
  /** vireo rows: "plain", or the interposition measured (VARIANTS). */
  variant: string;
  frameBytes: number;
  pairs: number;
  /** False when the row could not run here; `note` says why. */
  available: boolean;
  /** Frames the receiving side counted in the window, and the window's length. */
  frames: number;
  seconds: number;
  mpps: number;
  gbps: number;
  countedBy: string;
  note?: string;
  /** Every round's Mpps (the row's figures are the median round's). */
  samples?: number[];
  /**
   * vireo rows: the switch process's CPU time (user + system, /proc/PID/stat) over the window, per frame the load
   * counted: what a frame costs the switch whether or not it was the bottleneck.
   */
  switchCpuNsPerFrame?: number;
  /** vireo rows: what the switch itself counted (its switch-end line): frames delivered to its ports, drops. */
  switchCounts?: {
    delivered: number;
    received: number;
    drops: Record<string, number>;
    /** Frames the interposition features handled (filter decisions, rate-limit admissions, captured frames). */
    interposed: number;
  };
}

export interface SwitchBenchResult {
  cpus: number;
  hostNote: string;
  load: string;
  pinning: string;
  seconds: number;
  rounds: number;
  rows: SwitchBenchRow[];
  /**
   * vireo (plain) over testpmd and over the bridge, per frame size and pair count; the same for shm ports and for
   * JavaScript's floor (js-floor) and WebAssembly's (wasm-floor); vireo (plain) over the JS floor, and the wasm
   * floor over the JS floor.
   */
  ratios: Array<{
    frameBytes: number;
    pairs: number;
    vireoOverTestpmd: number | null;
    vireoOverBridge: number | null;
    shmOverTestpmd: number | null;
    shmOverBridge: number | null;
    floorOverTestpmd: number | null;
    floorOverBridge: number | null;
    vireoOverFloor: number | null;
    wasmFloorOverTestpmd: number | null;
    wasmFloorOverBridge: number | null;
    wasmOverJsFloor: number | null;
  }>;
  /** Interposition rows: their rate as a share of the plain vireo row at the same size and pairs. */
  interposition: Array<{ variant: string; frameBytes: number; pairs: number; ofPlain: number }>;
  /** Signs in the run itself that its rows are not comparable (speedWarnings). */
  warnings: string[];
  loadavgBefore: string;
  loadavgAfter: string;
}

const VIREO_BIN = process.env.VIREO_BENCH_VIREO || repoPath("bin", "vireo");
const RING = 256; // virtio_user queue_size: vireo's and DPDK's default
const BURSTS = 4; // `start tx_first 4`: 128 frames per port in flight, half a ring
const HUGEPAGES = 384; // 2 MiB pages: the load testpmd and the testpmd switch, 16384 mbufs each, with room
const DUT_CPU = 0;
const LOAD_CPU = 1;

const mac = (side: "a" | "b", pair: number) => `02:00:00:00:0${side}:${pair.toString(16).padStart(2, "0")}`;

/**
 * A vireo switch configuration measured against the plain one: more `vireo switch` arguments, and commands run
 * once its ports are up (rules through the control socket). Add an entry to measure a feature's cost.
 */
export interface SwitchVariant {
  name: string;
  /** More arguments for `vireo switch NAME` (after the ports). */
  args(ctx: VariantContext): string[];
  /** Run after the switch is ready, before the load starts. */
  setup?(ctx: VariantContext): void;
}

export interface VariantContext {
  dir: string;
  switchName: string;
  control: string;
  /** Port names, a0 b0 a1 b1 ... */
  ports: string[];
}

function vireoCtl(ctx: VariantContext, args: string[]): void {
  const r = spawnSync(
    VIREO_BIN,
    ["switch", ...args.slice(0, 1), ctx.switchName, ...args.slice(1), "--control", ctx.control],
    {
      encoding: "utf8",
    },
  );
  if (r.status !== 0)
    throw new VireoError("VIREO_BENCH_FAILED", `vireo switch ${args.join(" ")}: ${r.stderr}${r.stdout}`);
}

/** `n` allow rules that never match the load (other UDP ports), then one that does: every frame walks them all. */
function rules(n: number): string[] {
  const out: string[] = [];
  for (let i = 0; i < n - 1; i++) out.push(`allow proto=udp dst-port=${10_000 + i}`);
  out.push("allow ethertype=ipv4 proto=udp");
  return out;
}

/**
 * Each applies to every frame once: capture on the first port, both directions (the pair's A side: every frame of
 * the loop enters or leaves there); filters and rate limits on every port's ingress.
 */
export const VARIANTS: SwitchVariant[] = [
  {
    name: "capture",
    args: (ctx) => [`--pcap`, `${ctx.ports[0]}=${join(ctx.dir, "capture.pcap")},max=268435456,files=2`],
  },
  {
    name: "10 rules",
    args: () => [],
    setup: (ctx) => {
      for (const p of ctx.ports) vireoCtl(ctx, ["filter", p, "--in", "--default", "deny", ...rules(10)]);
    },
  },
  {
    name: "1000 rules",
    args: () => [],
    setup: (ctx) => {
      for (const p of ctx.ports) vireoCtl(ctx, ["filter", p, "--in", "--default", "deny", ...rules(1000)]);
    },
  },
  {
    name: "rate limit",
    args: () => [],
    // Far above what the switch moves: the bucket's bookkeeping is measured, not its drops.
    setup: (ctx) => {
      for (const p of ctx.ports)
        vireoCtl(ctx, ["rate", p, "--in", "--frames-per-sec", "1000000000", "--burst-frames", "1000000"]);
    },
  },
];

/** Whether this vireo has `vireo switch`, or why not. */
function vireoSwitchMissing(): string | null {
  const r = spawnSync(VIREO_BIN, ["switch", "--help"], { encoding: "utf8", timeout: 60_000 });
  if (r.status === 0 && /vhost-user=SOCKET/.test(r.stdout)) return null;
  return `vireo switch is not available in this build (${VIREO_BIN} switch --help: ${(r.stderr || r.stdout).trim().split("\n")[0] ?? r.status})`;
}

/**
 * How the vhost-user rows are loaded: "loop" (the default, above), or "open": per pair, one txonly testpmd (to the
 * B side's MAC) and one rxonly testpmd, each its own process, all on the load CPU; the count is the rxonly
 * testpmds' frames. On two CPUs "open" measures the scheduler more than the switch (see the top of this file).
 */
export type LoadKind = "loop" | "open";

interface RunContext {
  set: ProcessSet;
  dir: string;
  seconds: number;
  load: LoadKind;
}

/** A started load: run the window, then the frames its receivers counted and the window's length. */
interface Load {
  /** Resolves when the measured window starts, where that is not at measure() (a load with a warm-up). */
  windowStarted?(): Promise<void>;
  measure(): Promise<{ frames: number; seconds: number }>;
  countedBy: string;
}

const virtioUser = (ctx: RunContext, port: number, side: "a" | "b", pair: number) =>
  `net_virtio_user${port},path=${join(ctx.dir, `${side}${pair}.sock`)},queues=1,queue_size=${RING},mac=${mac(side, pair)}`;

/** Starts the load on the switch's sockets (the switch must be serving them already). */
function startLoad(ctx: RunContext, size: number, pairs: number): Promise<Load> {
  return ctx.load === "open" ? startOpenLoad(ctx, size, pairs) : startLoopLoad(ctx, size, pairs);
}

/** The loop: one testpmd, two virtio_user ports per pair, io forwarding. */
async function startLoopLoad(ctx: RunContext, size: number, pairs: number): Promise<Load> {
  const vdevs: string[] = [];
  const extra: string[] = [`--rxd=${RING}`, `--txd=${RING}`];
  for (let i = 0; i < pairs; i++) {
    for (const side of ["a", "b"] as const) {
      const port = vdevs.length;
      vdevs.push(virtioUser(ctx, port, side, i));
      extra.push(`--eth-peer=${port},${mac(side === "a" ? "b" : "a", i)}`);
    }
  }
  const load = await startTestpmd(ctx.set, {
    name: `bench-switch-load-${process.pid}`,
    cpu: LOAD_CPU,
    vdevs,
    mode: "io",
    txpkts: size,
    mbufs: 8192 + 4 * RING * 2 * pairs,
    extra,
  });
  return {
    countedBy: "load testpmd (virtio_user io loop) rx",
    async measure() {
      const t0 = process.hrtime.bigint();
      load.send(`start tx_first ${BURSTS}`);
      await sleep(ctx.seconds * 1000);
      load.send("stop");
      const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
      return { frames: forwardCount(load, await quitTestpmd(load), "rxPackets"), seconds };
    },
  };
}

/** Open: a txonly and an rxonly testpmd per pair, A to B only. */
async function startOpenLoad(ctx: RunContext, size: number, pairs: number): Promise<Load> {
  const receivers: Proc[] = [];
  const senders: Proc[] = [];
  for (let i = 0; i < pairs; i++) {
    const common = { cpu: LOAD_CPU, mbufs: 8192, extra: [`--rxd=${RING}`, `--txd=${RING}`] };
    receivers.push(
      await startTestpmd(ctx.set, {
        ...common,
        name: `bench-switch-rx${i}-${process.pid}`,
        vdevs: [virtioUser(ctx, 0, "b", i)],
        mode: "rxonly",
      }),
    );
    senders.push(
      await startTestpmd(ctx.set, {
        ...common,
        name: `bench-switch-tx${i}-${process.pid}`,
        vdevs: [virtioUser(ctx, 0, "a", i)],
        mode: "txonly",
        txpkts: size,
        extra: [...common.extra, `--eth-peer=0,${mac("b", i)}`],
      }),
    );
  }
  return {
    countedBy: "rxonly testpmds (virtio_user) rx",
    async measure() {
      for (const r of receivers) r.send("start");
      await sleep(200);
      const t0 = process.hrtime.bigint();
      for (const t of senders) t.send("start");
      await sleep(ctx.seconds * 1000);
      for (const t of senders) t.send("stop");
      const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
      await sleep(500); // what the rings still hold
      let frames = 0;
      for (const r of receivers) frames += forwardCount(r, await quitTestpmd(r), "rxPackets");
      for (const t of senders) await quitTestpmd(t);
      return { frames, seconds };
    },
  };
}

function row(
  path: SwitchPath,
  variant: string,
  size: number,
  pairs: number,
  m: { frames: number; seconds: number },
  countedBy: string,
): SwitchBenchRow {
  const mpps = m.frames / m.seconds / 1e6;
  return {
    path,
    variant,
    frameBytes: size,
    pairs,
    available: true,
    frames: m.frames,
    seconds: m.seconds,
    mpps,
    gbps: (mpps * 1e6 * size * 8) / 1e9,
    countedBy,
  };
}

function unavailable(
  path: SwitchPath,
  variant: string,
  size: number,
  pairs: number,
  why: string,
): SwitchBenchRow {
  return {
    path,
    variant,
    frameBytes: size,
    pairs,
    available: false,
    frames: 0,
    seconds: 0,
    mpps: Number.NaN,
    gbps: Number.NaN,
    countedBy: "",
    note: why,
  };
}

async function runTestpmdSwitch(ctx: RunContext, size: number, pairs: number): Promise<SwitchBenchRow> {
  const vdevs: string[] = [];
  for (let i = 0; i < pairs; i++)
    for (const side of ["a", "b"])
      vdevs.push(`net_vhost${vdevs.length},iface=${join(ctx.dir, `${side}${i}.sock`)},queues=1`);
  // Ports 2i and 2i+1 are paired (testpmd's default topology): what one receives, the other sends.
  const dut = await startTestpmd(ctx.set, {
    name: `bench-switch-dut-${process.pid}`,
    cpu: DUT_CPU,
    vdevs,
    mode: "io",
    mbufs: 16384,
  });
  dut.send("start");
  const load = await startLoad(ctx, size, pairs);
  const m = await load.measure();
  await quitTestpmd(dut);
  return row("testpmd", "plain", size, pairs, m, load.countedBy);
}

interface FilterStats {
  rules: Array<{ matches: number }>;
  defaultMatches: number;
}

interface SwitchEndPort {
  name: string;
  rx: { frames: number; bytes: number };
  tx: { frames: number; bytes: number };
  drops: Record<string, number>;
  filters?: { in: FilterStats | null; out: FilterStats | null };
  rates?: {
    in: { admitted: number; dropped: number } | null;
    out: { admitted: number; dropped: number } | null;
  };
  pcap?: { frames: number } | null;
}

/** Frames an interposition feature handled on a port (filter decisions, bucket admissions, captured frames). */
function interposed(p: SwitchEndPort): number {
  const f = (x: FilterStats | null | undefined) =>
    x ? x.defaultMatches + x.rules.reduce((s, r) => s + r.matches, 0) : 0;
  const b = (x: { admitted: number; dropped: number } | null | undefined) => (x ? x.admitted + x.dropped : 0);
  return f(p.filters?.in) + f(p.filters?.out) + b(p.rates?.in) + b(p.rates?.out) + (p.pcap?.frames ?? 0);
}

/** The shm ports' load: bench/shm-loop.ts, testpmd's io loop over the rings (BURSTS x 32 frames per port). */
async function startShmLoad(ctx: RunContext, size: number, pairs: number): Promise<Load> {
  const sockets: string[] = [];
  for (let i = 0; i < pairs; i++)
    for (const side of ["a", "b"]) sockets.push(join(ctx.dir, `${side}${i}.sock`));
  const ms = ctx.seconds * 1000;
  const args = [
    "--import",
    "tsx",
    repoPath("bench", "shm-loop.ts"),
    "--size",
    String(size),
    "--burst",
    String(BURSTS * 32),
    "--warmup-ms",
    "500",
    "--ms",
    String(ms),
    ...sockets,
  ];
  const load = ctx.set.start("shm loop", process.execPath, args, { cpu: LOAD_CPU });
  return {
    countedBy: "bench/shm-loop.ts (io loop over shm rings) rx",
    windowStarted: () =>
      until(
        "the shm loop's window",
        () => load.stdout.text.includes('"shm-loop-counting"') || load.child.exitCode !== null,
        60_000,
        () => load.out.text,
      ),
    async measure() {
      await until(
        "the shm loop's end line",
        () => load.stdout.text.includes('"shm-loop-end"') || load.child.exitCode !== null,
        ms + 60_000,
        () => load.out.text,
      );
      const line = load.stdout.text.split("\n").find((l) => l.includes('"shm-loop-end"'));
      if (!line)
        throw new VireoError("VIREO_BENCH_FAILED", `the shm loop ended without its line:\n${load.out.text}`);
      const end = JSON.parse(line) as { received: number; ms: number };
      return { frames: end.received, seconds: end.ms / 1000 };
    },
  };
}

/** A process's user + system CPU time in ns (/proc/PID/stat), or NaN. */
function cpuNs(pid: number | undefined): number {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.split(" ") ?? [];
    return ((Number(f[11]) + Number(f[12])) * 1e9) / CLOCK_TICKS;
  } catch {
    return Number.NaN;
  }
}
const CLOCK_TICKS = 100;

async function runVireoSwitch(
  ctx: RunContext,
  size: number,
  pairs: number,
  variant: SwitchVariant | null,
  kind: "vhost-user" | "shm" = "vhost-user",
): Promise<SwitchBenchRow> {
  const switchName = `bench${process.pid}`;
  const control = join(ctx.dir, "control.sock");
  const ports: string[] = [];
  const args = ["switch", switchName, "--control", control];
  for (let i = 0; i < pairs; i++) {
    for (const side of ["a", "b"]) {
      ports.push(`${side}${i}`);
      args.push("--port", `${kind}=${join(ctx.dir, `${side}${i}.sock`)},name=${side}${i},vlan=${i + 1}`);
    }
  }
  const vctx: VariantContext = { dir: ctx.dir, switchName, control, ports };
  if (variant) args.push(...variant.args(vctx));
  const sw = ctx.set.start("vireo switch", VIREO_BIN, args, { cpu: DUT_CPU });
  await until(
    "vireo switch ready",
    () => /switch \S+ ready/.test(sw.out.text) || sw.child.exitCode !== null,
    60_000,
    () => sw.out.text,
  );
  if (sw.child.exitCode !== null)
    throw new VireoError("VIREO_BENCH_FAILED", `vireo switch exited (${sw.child.exitCode}):\n${sw.out.text}`);
  variant?.setup?.(vctx);
  const load = kind === "shm" ? await startShmLoad(ctx, size, pairs) : await startLoad(ctx, size, pairs);
  // The switch's CPU over the measured window, per frame counted in it.
  await load.windowStarted?.();
  const cpu0 = cpuNs(sw.child.pid);
  const m = await load.measure();
  const cpu1 = cpuNs(sw.child.pid);
  sw.child.kill("SIGTERM");
  await until(
    "vireo switch's switch-end line",
    () => sw.stdout.text.includes('"switch-end"') || sw.child.exitCode !== null,
    30_000,
    () => sw.out.text,
  );
  const r = row(
    kind === "shm" ? "vireo-shm" : "vireo",
    variant?.name ?? "plain",
    size,
    pairs,
    m,
    load.countedBy,
  );
  if (m.frames > 0 && Number.isFinite(cpu1 - cpu0)) r.switchCpuNsPerFrame = (cpu1 - cpu0) / m.frames;
  const line = sw.stdout.text.split("\n").find((l) => l.includes('"switch-end"'));
  if (line) {
    const end = JSON.parse(line) as { ports: SwitchEndPort[] };
    const drops: Record<string, number> = {};
    for (const p of end.ports)
      for (const [k, v] of Object.entries(p.drops ?? {}))
        if (typeof v === "number") drops[k] = (drops[k] ?? 0) + v;
    r.switchCounts = {
      delivered: end.ports.reduce((s, p) => s + p.tx.frames, 0),
      received: end.ports.reduce((s, p) => s + p.rx.frames, 0),
      drops,
      interposed: end.ports.reduce((s, p) => s + interposed(p), 0),
    };
  }
  await Promise.race([sw.exited, sleep(10_000, undefined, { ref: false })]);
  return r;
}

/** A floor (bench/js-floor.ts or bench/wasm-floor.ts) on the switch's CPU, under the vhost-user load. */
async function runFloor(
  ctx: RunContext,
  path: "js-floor" | "wasm-floor",
  size: number,
  pairs: number,
): Promise<SwitchBenchRow> {
  const sockets: string[] = [];
  for (let i = 0; i < pairs; i++)
    for (const side of ["a", "b"]) sockets.push(join(ctx.dir, `${side}${i}.sock`));
  const floor = ctx.set.start(
    path,
    process.execPath,
    ["--import", "tsx", repoPath("bench", `${path}.ts`), ...sockets],
    { cpu: DUT_CPU },
  );
  await until(
    `${path} ready`,
    () => floor.out.text.includes(`${path} ready`) || floor.child.exitCode !== null,
    60_000,
    () => floor.out.text,
  );
  if (floor.child.exitCode !== null)
    throw new VireoError(
      "VIREO_BENCH_FAILED",
      `bench/${path}.ts exited (${floor.child.exitCode}):\n${floor.out.text}`,
    );
  const load = await startLoad(ctx, size, pairs);
  const cpu0 = cpuNs(floor.child.pid);
  const m = await load.measure();
  const cpu1 = cpuNs(floor.child.pid);
  const r = row(path, "plain", size, pairs, m, load.countedBy);
  if (m.frames > 0 && Number.isFinite(cpu1 - cpu0)) r.switchCpuNsPerFrame = (cpu1 - cpu0) / m.frames;
  return r;
}

// ---- the Linux bridge ----

function sh(cmd: string[], what: string): string {
  const r = spawnSync(cmd[0] as string, cmd.slice(1), { encoding: "utf8" });
  if (r.status !== 0) throw new VireoError("VIREO_BENCH_FAILED", `${what}: ${cmd.join(" ")}: ${r.stderr}`);
  return r.stdout;
}

/** testpmd txonly's frame (IPv4/UDP 198.18.0.1:9 -> 198.18.0.2:9, zero payload) as `size` bytes. */
export function udpFrame(size: number, dst: string, src: string): Uint8Array {
  const f = new Uint8Array(size);
  const macBytes = (m: string) => m.split(":").map((h) => Number.parseInt(h, 16));
  f.set(macBytes(dst), 0);
  f.set(macBytes(src), 6);
  f[12] = 0x08; // IPv4
  const ip = 14;
  const ipLen = size - ip;
  f.set([0x45, 0, ipLen >> 8, ipLen & 0xff, 0, 0, 0, 0, 64, 17, 0, 0, 198, 18, 0, 1, 198, 18, 0, 2], ip);
  let sum = 0; // RFC 791: the one's complement sum of the header's 16-bit words
  for (let i = 0; i < 20; i += 2) sum += ((f[ip + i] as number) << 8) | (f[ip + i + 1] as number);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >> 16);
  const csum = ~sum & 0xffff;
  f[ip + 10] = csum >> 8;
  f[ip + 11] = csum & 0xff;
  const udp = ip + 20;
  const udpLen = size - udp;
  f.set([0, 9, 0, 9, udpLen >> 8, udpLen & 0xff, 0, 0], udp); // checksum 0: none (RFC 768)
  return f;
}

function bridgeMissing(): string | null {
  if (!IS_ROOT) return "a network namespace and veths need root";
  if (!hasCommand("trafgen"))
    return "trafgen is not installed (scripts/setup.sh installs Debian's netsniff-ng)";
  if (!hasCommand("ip")) return "ip (iproute2) is not installed";
  return null;
}

const bridgeNamespace = () => `vireo-bench-switch-${process.pid}`;

async function runBridge(ctx: RunContext, size: number, pairs: number): Promise<SwitchBenchRow> {
  const ns = bridgeNamespace();
  const nsx = (args: string[], what: string) => sh(["ip", "-n", ns, ...args], what);
  sh(["ip", "netns", "add", ns], "network namespace");
  try {
    nsx(["link", "add", "br0", "type", "bridge"], "bridge");
    const counted: string[] = [];
    const senders: string[] = [];
    for (let i = 0; i < pairs; i++) {
      for (const side of ["a", "b"] as const) {
        // v<side><i> is the host end (the generator's or the receiver's), s<side><i> the bridge's port.
        const v = `v${side}${i}`;
        const s = `s${side}${i}`;
        nsx(
          [
            "link",
            "add",
            v,
            "mtu",
            "1518",
            "address",
            mac(side, i),
            "type",
            "veth",
            "peer",
            "name",
            s,
            "mtu",
            "1518",
          ],
          "veth",
        );
        nsx(["link", "set", s, "master", "br0"], "bridge port");
        nsx(["link", "set", s, "up"], "link up");
        nsx(["link", "set", v, "up"], "link up");
        (side === "a" ? senders : counted).push(v);
      }
      // The receiver never sends, so the bridge would never learn it and would flood: a static entry.
      sh(["bridge", "-n", ns, "fdb", "add", mac("b", i), "dev", `sb${i}`, "master", "static"], "fdb entry");
    }
    nsx(["link", "set", "br0", "up"], "bridge up");
    const rxPackets = () =>
      counted.reduce((sum, dev) => {
        const j = JSON.parse(nsx(["-s", "-j", "link", "show", "dev", dev], "counters")) as Array<{
          stats64: { rx: { packets: number } };
        }>;
        return sum + (j[0]?.stats64.rx.packets ?? 0);
      }, 0);
    const gens: Proc[] = [];
    for (let i = 0; i < pairs; i++) {
      const frame = udpFrame(size, mac("b", i), mac("a", i));
      const conf = join(ctx.dir, `trafgen${i}.cfg`);
      writeFileSync(
        conf,
        `{ ${[...frame].map((b) => `0x${b.toString(16).padStart(2, "0")}`).join(", ")} }\n`,
      );
      // -P 1: one process; -C: no CPU statistics; the socket's queue bypass is trafgen's default.
      gens.push(
        ctx.set.start(
          `trafgen ${i}`,
          "ip",
          ["netns", "exec", ns, "trafgen", "-o", `va${i}`, "-i", conf, "-P", "1", "-C", "-Q"],
          {
            cpu: LOAD_CPU,
          },
        ),
      );
    }
    // trafgen spends a moment setting its ring up: the window starts once frames arrive.
    await until(
      "trafgen's first frames",
      () => rxPackets() > 0 || gens.some((g) => g.child.exitCode !== null),
      30_000,
      () => gens.map((g) => g.out.text).join("\n"),
    );
    const before = rxPackets();
    const t0 = process.hrtime.bigint();
    await sleep(ctx.seconds * 1000);
    const after = rxPackets();
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    for (const g of gens) if (g.child.pid !== undefined) process.kill(-g.child.pid, "SIGINT");
    await Promise.race([Promise.all(gens.map((g) => g.exited)), sleep(10_000, undefined, { ref: false })]);
    return row(
      "bridge",
      "plain",
      size,
      pairs,
      { frames: after - before, seconds },
      "receiving veths' rx_packets",
    );
  } finally {
    spawnSync("ip", ["netns", "del", ns]);
  }
}

// ---- the run ----

/** What kind of machine runs the benchmark: the kernel's "Hypervisor detected" line, or the CPU's hypervisor flag. */
export function hostMachine(ncpu: number): string {
  const dmesg = spawnSync("dmesg", [], { encoding: "utf8" });
  const hv = /Hypervisor detected: (\S+)/.exec(dmesg.stdout ?? "")?.[1];
  const guest = /^flags\s*:.*\bhypervisor\b/m.test(readFileSync("/proc/cpuinfo", "utf8"));
  const kind = hv
    ? `a ${hv} guest`
    : guest
      ? "a virtual machine (the CPU's hypervisor flag)"
      : "no hypervisor seen";
  return `${kind}, ${ncpu} CPU${ncpu === 1 ? "" : "s"}`;
}

export async function benchSwitch(opts: SwitchBenchOptions): Promise<SwitchBenchResult> {
  const seconds = opts.seconds ?? 5;
  const sizes = opts.sizes ?? [64, 1518];
  const pairCounts = opts.pairs ?? [1, 2, 4];
  const loadKind: LoadKind = opts.load ?? "loop";
  const rounds = opts.rounds ?? 1;
  for (const s of sizes)
    if (!Number.isInteger(s) || s < 60 || s > 1518)
      throw new VireoError("VIREO_BENCH_FAILED", `frame size ${s}: from 60 to 1518 bytes`);
  const ncpu = cpus().length;
  const loadavgBefore = readFileSync("/proc/loadavg", "utf8").trim();
  const machine = hostMachine(ncpu);
  const rows: SwitchBenchRow[] = [];
  const dpdk = prepareDpdk(HUGEPAGES);
  const noDpdk = "why" in dpdk ? dpdk.why : null;
  const noVireo = noDpdk ?? vireoSwitchMissing();
  const noBridge = bridgeMissing();
  const set = new ProcessSet();
  const dir = mkdtempSync(join(tmpdir(), "vireo-bench-switch-"));
  const cleanup = () => {
    set.killAll();
    spawnSync("ip", ["netns", "del", bridgeNamespace()], { stdio: "ignore" });
    rmSync(dir, { recursive: true, force: true });
    if ("release" in dpdk) dpdk.release();
  };
  // Interrupted (Ctrl-C, a time-out's SIGTERM): the finally below would never run; end everything, then exit.
  const onSignal = (sig: NodeJS.Signals) => {
    cleanup();
    process.exit(sig === "SIGINT" ? 130 : 143);
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  const progress = (what: string) => {
    if (!opts.json && process.stderr.isTTY) process.stderr.write(`\r${what.padEnd(70)}`);
  };
  // Every configuration, in the order each round runs them (A B C ... A B C ...: slow drifts in what else runs
  // spread over all of them). The interposition rows are at one pair, right after their plain row's size.
  interface Config {
    path: SwitchPath;
    variant: string;
    size: number;
    pairs: number;
    why: string | null;
    make: (ctx: RunContext) => Promise<SwitchBenchRow>;
  }
  const configs: Config[] = [];
  for (const size of sizes) {
    for (const pairs of pairCounts) {
      configs.push({
        path: "testpmd",
        variant: "plain",
        size,
        pairs,
        why: noDpdk,
        make: (c) => runTestpmdSwitch(c, size, pairs),
      });
      configs.push({
        path: "vireo",
        variant: "plain",
        size,
        pairs,
        why: noVireo,
        make: (c) => runVireoSwitch(c, size, pairs, null),
      });
      configs.push({
        path: "js-floor",
        variant: "plain",
        size,
        pairs,
        why: noDpdk,
        make: (c) => runFloor(c, "js-floor", size, pairs),
      });
      configs.push({
        path: "wasm-floor",
        variant: "plain",
        size,
        pairs,
        why: noDpdk,
        make: (c) => runFloor(c, "wasm-floor", size, pairs),
      });
      configs.push({
        path: "vireo-shm",
        variant: "plain",
        size,
        pairs,
        why: noVireo === noDpdk ? vireoSwitchMissing() : noVireo,
        make: (c) => runVireoSwitch(c, size, pairs, null, "shm"),
      });
      configs.push({
        path: "bridge",
        variant: "plain",
        size,
        pairs,
        why: noBridge,
        make: (c) => runBridge(c, size, pairs),
      });
    }
    if (noVireo === null && pairCounts.includes(1))
      for (const v of VARIANTS)
        configs.push({
          path: "vireo",
          variant: v.name,
          size,
          pairs: 1,
          why: null,
          make: (c) => runVireoSwitch(c, size, 1, v),
        });
  }
  const runs: SwitchBenchRow[][] = configs.map(() => []);
  try {
    for (let round = 0; round < rounds; round++) {
      for (const [i, cfg] of configs.entries()) {
        const { path, variant, size, pairs, why } = cfg;
        if (why !== null) {
          if (round === 0) runs[i]?.push(unavailable(path, variant, size, pairs, why));
          continue;
        }
        progress(
          `round ${round + 1}/${rounds}: ${size} B, ${pairs} pair(s): ${path}${variant === "plain" ? "" : ` with ${variant}`}`,
        );
        // Fresh socket names in a directory of its own, every process ended after it. A run that fails becomes
        // a row saying so (the first lines of the error), and the benchmark goes on.
        const sub = mkdtempSync(join(dir, "run-"));
        try {
          runs[i]?.push(await cfg.make({ set, dir: sub, seconds, load: loadKind }));
        } catch (e) {
          const msg = (e as Error).message.split("\n").slice(0, 3).join(" / ");
          runs[i]?.push(unavailable(path, variant, size, pairs, `failed: ${msg}`));
        } finally {
          set.killAll();
        }
      }
    }
    progress("");
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    cleanup();
  }
  // Each configuration's row is its median round by Mpps (the failed rounds left out; all failed: the first).
  for (const r of runs) {
    const ok = r.filter((x) => x.available).sort((a, b) => a.mpps - b.mpps);
    const mid = ok[(ok.length - 1) >> 1] ?? r[0];
    if (mid) rows.push({ ...mid, samples: r.filter((x) => x.available).map((x) => x.mpps) });
  }
  const find = (path: SwitchPath, size: number, pairs: number, variant = "plain") =>
    rows.find(
      (r) =>
        r.path === path && r.frameBytes === size && r.pairs === pairs && r.variant === variant && r.available,
    );
  const ratios = [];
  const interposition = [];
  for (const size of sizes) {
    for (const pairs of pairCounts) {
      const v = find("vireo", size, pairs);
      const t = find("testpmd", size, pairs);
      const b = find("bridge", size, pairs);
      const shm = find("vireo-shm", size, pairs);
      const floor = find("js-floor", size, pairs);
      const wasm = find("wasm-floor", size, pairs);
      ratios.push({
        frameBytes: size,
        pairs,
        vireoOverTestpmd: v && t ? v.mpps / t.mpps : null,
        vireoOverBridge: v && b ? v.mpps / b.mpps : null,
        shmOverTestpmd: shm && t ? shm.mpps / t.mpps : null,
        shmOverBridge: shm && b ? shm.mpps / b.mpps : null,
        floorOverTestpmd: floor && t ? floor.mpps / t.mpps : null,
        floorOverBridge: floor && b ? floor.mpps / b.mpps : null,
        vireoOverFloor: v && floor ? v.mpps / floor.mpps : null,
        wasmFloorOverTestpmd: wasm && t ? wasm.mpps / t.mpps : null,
        wasmFloorOverBridge: wasm && b ? wasm.mpps / b.mpps : null,
        wasmOverJsFloor: wasm && floor ? wasm.mpps / floor.mpps : null,
      });
      for (const variant of VARIANTS) {
        const i = find("vireo", size, pairs, variant.name);
        if (v && i)
          interposition.push({ variant: variant.name, frameBytes: size, pairs, ofPlain: i.mpps / v.mpps });
      }
    }
  }
  return {
    cpus: ncpu,
    hostNote: `this machine: ${machine}; timing on a shared, loaded guest is noisy: compare only rows of one run`,
    load: `${
      loadKind === "loop"
        ? `loop: one testpmd with 2 virtio_user ports per pair in io forwarding, ${BURSTS} bursts of 32 frames per port circulating (start tx_first ${BURSTS}), both directions`
        : "open: a txonly and an rxonly testpmd (virtio_user) per pair, each its own process, one direction"
    }, rings of ${RING}; vireo-shm: bench/shm-loop.ts, the same io loop over the switch's shm ports (rings of 512 slots), ${BURSTS * 32} frames per port; bridge: one trafgen per pair, one direction`,
    pinning:
      ncpu >= 2
        ? `switch under test on CPU ${DUT_CPU}, the load on CPU ${LOAD_CPU} (taskset, testpmd --lcores); the bridge runs in trafgen's softirq on CPU ${LOAD_CPU}${IS_ROOT ? "; each process in its own session at nice -20" : ""}`
        : "one CPU: everything shares it (figures mean little)",
    seconds,
    rounds,
    rows,
    ratios,
    interposition,
    warnings: speedWarnings(rows),
    loadavgBefore,
    loadavgAfter: readFileSync("/proc/loadavg", "utf8").trim(),
  };
}

/** testpmd's rates at one frame size (every pair count and round) further apart than this: the machine changed speed. */
const SPEED_SPREAD = 1.3;

/**
 * testpmd's loop does the same work per frame whatever the pair count, so its rates at one frame size should be
 * close across the run's rows and rounds. On this kind of guest they are not when the machine changes speed
 * (seen: 11 and 19 Mpps in one run), and it changes the rows that cross between the two CPUs (testpmd, vireo, the
 * floor) but not the bridge, which runs on one: the ratios over the bridge then differ between rows for that
 * reason alone. One warning per frame size where the spread is above SPEED_SPREAD.
 */
export function speedWarnings(rows: readonly SwitchBenchRow[]): string[] {
  const out: string[] = [];
  const sizes = [...new Set(rows.map((r) => r.frameBytes))];
  for (const size of sizes) {
    const rates = rows
      .filter((r) => r.path === "testpmd" && r.variant === "plain" && r.frameBytes === size && r.available)
      .flatMap((r) => (r.samples && r.samples.length > 0 ? r.samples : [r.mpps]));
    if (rates.length < 2) continue;
    const lo = Math.min(...rates);
    const hi = Math.max(...rates);
    if (lo > 0 && hi / lo > SPEED_SPREAD) {
      out.push(
        `${size} B: testpmd's own rate ranged ${lo.toFixed(2)}-${hi.toFixed(2)} Mpps in this run (${(hi / lo).toFixed(1)}x): the machine changed speed, which moves the rows that cross between CPUs and not the bridge (one CPU); compare ratios only between rows with similar testpmd rates`,
      );
    }
  }
  return out;
}

export function formatSwitch(r: SwitchBenchResult): string {
  const fmt = (x: number | null | undefined, d = 2) =>
    x === null || x === undefined || Number.isNaN(x) ? "" : x.toFixed(d);
  const table = r.rows.map((row) => {
    const ratio = r.ratios.find((x) => x.frameBytes === row.frameBytes && x.pairs === row.pairs);
    const plainVireo = row.path === "vireo" && row.variant === "plain";
    const shm = row.path === "vireo-shm";
    const floor = row.path === "js-floor";
    const wasm = row.path === "wasm-floor";
    // The row's own ratio, given for each kind of row that has one: vireo (plain), shm ports, JS floor, wasm floor.
    const kind = plainVireo ? 0 : shm ? 1 : floor ? 2 : wasm ? 3 : -1;
    const cell = (...byKind: Array<number | null | undefined>) => {
      const x = kind < 0 ? null : byKind[kind];
      return x ? `${fmt(x)}x` : "";
    };
    const cost = r.interposition.find(
      (x) => x.variant === row.variant && x.frameBytes === row.frameBytes && x.pairs === row.pairs,
    );
    return [
      String(row.frameBytes),
      String(row.pairs),
      row.path === "vireo" && row.variant !== "plain"
        ? `vireo + ${row.variant}`
        : row.path === "vireo-shm"
          ? "vireo (shm ports)"
          : floor
            ? "JS floor"
            : wasm
              ? "wasm floor"
              : row.path,
      row.available ? row.frames.toLocaleString("en-US") : "not available",
      row.available ? fmt(row.mpps) : "",
      row.available ? fmt(row.gbps, 1) : "",
      cell(
        ratio?.vireoOverTestpmd,
        ratio?.shmOverTestpmd,
        ratio?.floorOverTestpmd,
        ratio?.wasmFloorOverTestpmd,
      ),
      cell(ratio?.vireoOverBridge, ratio?.shmOverBridge, ratio?.floorOverBridge, ratio?.wasmFloorOverBridge),
      cell(ratio?.vireoOverFloor, null, null, ratio?.wasmOverJsFloor),
      row.switchCpuNsPerFrame === undefined ? "" : fmt(row.switchCpuNsPerFrame, 0),
      cost ? `${(cost.ofPlain * 100).toFixed(0)} %` : "",
    ];
  });
  const drops = r.rows.flatMap((x) => {
    const d = Object.entries(x.switchCounts?.drops ?? {}).filter(([, n]) => n > 0);
    return d.length
      ? [
          `${x.frameBytes} B, ${x.pairs} pair(s), vireo ${x.variant}: the switch dropped ${d.map(([k, n]) => `${n} (${k})`).join(", ")}`,
        ]
      : [];
  });
  for (const x of r.rows)
    if (x.variant !== "plain" && x.switchCounts && x.switchCounts.interposed === 0)
      drops.push(
        `${x.frameBytes} B, vireo ${x.variant}: the switch reports no frame handled by it (not in effect?)`,
      );
  const notes = [
    ...new Set(r.rows.filter((x) => !x.available && x.note).map((x) => `${x.path} ${x.variant}: ${x.note}`)),
  ];
  return [
    `${r.hostNote}`,
    `load: ${r.load}; ${r.seconds} s per window; ${r.rounds === 1 ? "one round" : `the median of ${r.rounds} interleaved rounds (every round's Mpps in the JSON)`}`,
    `pinning: ${r.pinning}`,
    formatTable(
      [
        "frame B",
        "pairs",
        "switch",
        "frames",
        "Mpps",
        "Gbit/s",
        "/testpmd",
        "/bridge",
        "/JS floor",
        "switch CPU ns/frame",
        "of plain",
      ],
      table,
    ),
    `load average ${r.loadavgBefore.split(" ").slice(0, 3).join(" ")} before, ${r.loadavgAfter.split(" ").slice(0, 3).join(" ")} after`,
    ...drops,
    ...r.warnings.map((w) => `warning: ${w}`),
    ...notes.map((n) => `not available: ${n}`),
  ].join("\n");
}
