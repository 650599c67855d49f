/**
 * `vireo bench vhost-user`: vireo's vhost-user net back-end against DPDK's own, with one driver for both, natively
 * (no KVM): DPDK's testpmd with a `net_virtio_user` vdev (a virtio-net driver in user space that speaks vhost-user).
 *
 * - guest transmit: the virtio_user testpmd in txonly mode (64-byte and 1518-byte frames) against
 *   (a) `vireo vhost-user net --sink` and (b) a second testpmd with a `net_vhost` vdev in rxonly mode;
 * - guest receive: (a) `vireo vhost-user net --gen SIZE` and (b) a `net_vhost` testpmd in txonly mode, each
 *   filling the receive ring of a virtio_user testpmd in rxonly mode.
 *
 * Every count is the receiving side's own: vireo's connection-end line (its sink's frames) for (a) transmit,
 * the receiving testpmd's accumulated forward statistics otherwise, over a fixed window (`--seconds`). The
 * back-end (vireo, or the net_vhost testpmd) runs on CPU 0 and the virtio_user testpmd on CPU 1 (taskset, and
 * testpmd's --lcores), when the machine has them; what else used the CPUs meanwhile is measured from /proc and
 * reported with the results. Mpps and Gbit/s count frame bytes (Ethernet header to payload, no FCS).
 *
 * Needs root (hugepages: hugetlbfs is mounted on /dev/hugepages if needed and pages reserved, given back after)
 * and dpdk-testpmd (scripts/setup.sh installs Debian's dpdk); without them the DPDK rows are skipped, saying why.
 * The in-process figures (bench/net-path.ts: ns per frame of VirtioNet driven from a split-ring driver in the
 * same process) are measured everywhere.
 * $VIREO_BENCH_VIREO names another vireo to serve the rings (another checkout, to compare versions).
 */
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { repoPath } from "../src/paths.ts";
import {
  connectionEnd,
  type ForwardMode,
  forwardCount,
  IS_ROOT,
  type Proc,
  ProcessSet,
  prepareDpdk,
  quitTestpmd,
  startTestpmd,
  until,
} from "./dpdk.ts";
import { measureNetPath, type NetPathResult } from "./net-path.ts";
import { formatTable } from "./stats.ts";

export interface VhostUserBenchOptions {
  json: boolean;
  /** Rounds; each runs every configuration once, in the same order (A B C ... A B C ...). */
  rounds?: number;
  /** Length of each measured window. */
  seconds?: number;
  /** The virtio_user driver's rings: split (default) or packed (`packed_vq=1`; both back-ends serve either). */
  ring?: "split" | "packed";
}

export type Direction = "guest-tx" | "guest-rx";

export interface VhostUserBenchRow {
  /** guest-tx: the virtio_user driver transmits, the back-end receives; guest-rx: the other way. */
  direction: Direction;
  backend: "vireo" | "dpdk";
  frameBytes: number;
  /** Frames the receiving side counted in the window, and the window's length. */
  frames: number;
  seconds: number;
  mpps: number;
  gbps: number;
  /** Who counted: "vireo sink" or "testpmd net_vhost rxonly" / "testpmd virtio_user rxonly". */
  countedBy: string;
  /** Every round's Mpps (the row's figures are the round with the median Mpps). */
  samples: number[];
}

export interface VhostUserBenchResult {
  rounds: number;
  ring: "split" | "packed";
  cpus: number;
  pinning: string;
  seconds: number;
  rows: VhostUserBenchRow[];
  /** vireo / DPDK Mpps, per direction and frame size. */
  ratios: Array<{ direction: Direction; frameBytes: number; vireoOverDpdk: number }>;
  /** ns per frame of VirtioNet alone (bench/net-path.ts), this thread's CPU time. */
  inProcess: NetPathResult[];
  /** Processes other than this benchmark's that used CPU while it ran (CPU seconds), and the load average. */
  otherLoad: {
    loadavgBefore: string;
    loadavgAfter: string;
    busiest: Array<{ command: string; cpuSeconds: number }>;
  };
  skipped: string[];
}

const SIZES = [64, 1518] as const;

/** The vireo that serves the rings: this tree's, or $VIREO_BENCH_VIREO (another build, to compare versions). */
const VIREO_BIN = process.env.VIREO_BENCH_VIREO || repoPath("bin", "vireo");
const HUGEPAGES_NEEDED = 512; // 2 MiB pages: two testpmds of 32768 mbufs each, with room

/** Every process of the run; each measured one in its own session at nice -20 when root (bench/dpdk.ts). */
const children = new ProcessSet();

/** An interactive testpmd on `cpu` with one vdev, in `mode`, sending `size`-byte frames in txonly. */
function testpmd(
  cpu: number | null,
  name: string,
  vdev: string,
  mode: ForwardMode,
  size: number,
): Promise<Proc> {
  return startTestpmd(children, { name: `bench-${name}`, cpu, vdevs: [vdev], mode, txpkts: size });
}

/** Ends a testpmd: stop forwarding (its statistics), quit; its accumulated RX or TX packets. */
async function finish(p: Proc, f: "rxPackets" | "txPackets"): Promise<number> {
  return forwardCount(p, await quitTestpmd(p), f);
}

async function startVireo(cpu: number | null, socket: string, mode: string[]): Promise<Proc> {
  const p = children.start("vireo", VIREO_BIN, ["vhost-user", "net", "--socket", socket, ...mode, "--once"], {
    cpu,
  });
  await until(
    "the vireo vhost-user socket",
    () => existsSync(socket),
    60_000,
    () => p.out.text,
  );
  return p;
}

async function vireoEnd(p: Proc): Promise<{ txFrames: number; rxFrames: number }> {
  const { end } = await connectionEnd<{ txFrames: number; rxFrames: number }>(p);
  await Promise.race([p.exited, sleep(10_000)]);
  return end;
}

/** One measured window: `direction`, `backend`, `size`; the receiving side's count. */
async function runOne(
  dir: string,
  direction: Direction,
  backend: "vireo" | "dpdk",
  size: number,
  seconds: number,
  backendCpu: number | null,
  driverCpu: number | null,
  ring: "split" | "packed",
): Promise<VhostUserBenchRow> {
  const socket = join(dir, `${direction}-${backend}-${size}.sock`);
  const driverVdev = `net_virtio_user0,path=${socket},queues=1${ring === "packed" ? ",packed_vq=1" : ""}`;
  const vhostVdev = `net_vhost0,iface=${socket},queues=1`;
  let frames: number;
  let countedBy: string;
  let window: number;
  const timed = async (driver: Proc): Promise<number> => {
    const t0 = process.hrtime.bigint();
    driver.send("start");
    await sleep(seconds * 1000);
    driver.send("stop");
    return Number(process.hrtime.bigint() - t0) / 1e9;
  };
  if (direction === "guest-tx") {
    if (backend === "vireo") {
      const v = await startVireo(backendCpu, socket, ["--sink"]);
      const d = await testpmd(driverCpu, "drv", driverVdev, "txonly", size);
      window = await timed(d);
      // Let the back-end drain the ring before the port stops.
      await sleep(1000);
      await finish(d, "txPackets");
      frames = (await vireoEnd(v)).txFrames;
      countedBy = "vireo sink";
    } else {
      const r = await testpmd(backendCpu, "vhost", vhostVdev, "rxonly", size);
      r.send("start");
      const d = await testpmd(driverCpu, "drv", driverVdev, "txonly", size);
      window = await timed(d);
      await sleep(1000);
      frames = await finish(r, "rxPackets");
      await finish(d, "txPackets");
      countedBy = "testpmd net_vhost rxonly";
    }
  } else {
    const src =
      backend === "vireo"
        ? await startVireo(backendCpu, socket, ["--gen", String(size)])
        : await testpmd(backendCpu, "vhost", vhostVdev, "txonly", size);
    if (backend === "dpdk") src.send("start");
    const d = await testpmd(driverCpu, "drv", driverVdev, "rxonly", size);
    window = await timed(d);
    await sleep(300);
    frames = await finish(d, "rxPackets");
    if (backend === "vireo") await vireoEnd(src);
    else await finish(src, "txPackets");
    countedBy = "testpmd virtio_user rxonly";
  }
  const mpps = frames / window / 1e6;
  return {
    direction,
    backend,
    frameBytes: size,
    frames,
    seconds: window,
    mpps,
    gbps: (mpps * 1e6 * size * 8) / 1e9,
    countedBy,
    samples: [mpps],
  };
}

/** CPU ticks (utime + stime) and command of every process, from /proc. */
export function processTicks(): Map<number, { command: string; ticks: number }> {
  const out = new Map<number, { command: string; ticks: number }>();
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, "utf8");
      const close = stat.lastIndexOf(")");
      const fields = stat.slice(close + 2).split(" ");
      const ticks = Number(fields[11]) + Number(fields[12]);
      const cmd = readFileSync(`/proc/${d}/cmdline`, "utf8").split("\0").join(" ").trim();
      out.set(Number(d), { command: cmd || stat.slice(stat.indexOf("(") + 1, close), ticks });
    } catch {
      // the process ended meanwhile
    }
  }
  return out;
}

export async function benchVhostUser(opts: VhostUserBenchOptions): Promise<VhostUserBenchResult> {
  const seconds = opts.seconds ?? 5;
  const rounds = opts.rounds ?? 1;
  const ring = opts.ring ?? "split";
  const ncpu = cpus().length;
  const [backendCpu, driverCpu] = ncpu >= 2 ? [0, 1] : [null, null];
  const pinning = `${
    ncpu >= 2
      ? `${ncpu} CPUs: back-end (vireo or the net_vhost testpmd) on CPU 0, the virtio_user testpmd on CPU 1 (taskset; testpmd --lcores 0@N,1@N)`
      : `${ncpu} CPU: nothing pinned`
  }${IS_ROOT ? ", each in its own session at nice -20 and autogroup nice -20" : ""}`;
  const loadavgBefore = readFileSync("/proc/loadavg", "utf8").trim();
  const ticksBefore = processTicks();
  const inProcess: NetPathResult[] = [];
  for (const dir of ["tx", "rx"] as const)
    for (const size of SIZES) inProcess.push(measureNetPath(dir, size, 1_000_000));
  const rows: VhostUserBenchRow[] = [];
  const skipped: string[] = [];
  const prep = prepareDpdk(HUGEPAGES_NEEDED);
  if ("why" in prep) {
    skipped.push(`DPDK rows: ${prep.why}`);
  } else {
    const dir = mkdtempSync(join(tmpdir(), "vireo-bench-vhost-user-"));
    try {
      const perConfig: VhostUserBenchRow[][] = [];
      for (let round = 0; round < rounds; round++) {
        let i = 0;
        for (const direction of ["guest-tx", "guest-rx"] as const) {
          for (const size of SIZES) {
            for (const backend of ["vireo", "dpdk"] as const) {
              if (!opts.json && process.stderr.isTTY)
                process.stderr.write(`\rround ${round + 1}/${rounds}: ${direction} ${size} B ${backend}    `);
              const row = await runOne(dir, direction, backend, size, seconds, backendCpu, driverCpu, ring);
              const runs = perConfig[i] ?? [];
              runs.push(row);
              perConfig[i++] = runs;
              children.killAll();
            }
          }
        }
      }
      for (const runs of perConfig) {
        const byMpps = [...runs].sort((a, b) => a.mpps - b.mpps);
        const mid = byMpps[(byMpps.length - 1) >> 1] as VhostUserBenchRow;
        rows.push({ ...mid, samples: runs.map((r) => r.mpps) });
      }
      if (!opts.json && process.stderr.isTTY) process.stderr.write("\n");
    } finally {
      children.killAll();
      rmSync(dir, { recursive: true, force: true });
      prep.release();
    }
  }
  const ticksAfter = processTicks();
  const hz = 100; // USER_HZ on Linux
  // This process and its parent (bin/vireo may run it under a wrapper).
  const mine = new Set<number>([process.pid, process.ppid]);
  const busiest = [...ticksAfter]
    .filter(([pid]) => !mine.has(pid))
    .map(([pid, a]) => ({
      command: a.command,
      cpuSeconds: (a.ticks - (ticksBefore.get(pid)?.ticks ?? 0)) / hz,
    }))
    .filter(
      (p) =>
        p.cpuSeconds >= 1 &&
        !/dpdk-testpmd|vhost-user net --socket .*vireo-bench-vhost-user-| bench vhost-user/.test(p.command),
    )
    .sort((a, b) => b.cpuSeconds - a.cpuSeconds)
    .slice(0, 6)
    .map((p) => ({ ...p, command: p.command.slice(0, 110) }));
  const ratios = [];
  for (const direction of ["guest-tx", "guest-rx"] as const) {
    for (const size of SIZES) {
      const v = rows.find((r) => r.direction === direction && r.frameBytes === size && r.backend === "vireo");
      const d = rows.find((r) => r.direction === direction && r.frameBytes === size && r.backend === "dpdk");
      if (v && d) ratios.push({ direction, frameBytes: size, vireoOverDpdk: v.mpps / d.mpps });
    }
  }
  return {
    rounds,
    ring,
    cpus: ncpu,
    pinning,
    seconds,
    rows,
    ratios,
    inProcess,
    otherLoad: { loadavgBefore, loadavgAfter: readFileSync("/proc/loadavg", "utf8").trim(), busiest },
    skipped,
  };
}

export function formatVhostUser(r: VhostUserBenchResult): string {
  const rows = r.rows.map((row) => {
    const ratio = r.ratios.find((x) => x.direction === row.direction && x.frameBytes === row.frameBytes);
    return [
      row.direction,
      String(row.frameBytes),
      row.backend,
      row.frames.toLocaleString("en-US"),
      row.mpps.toFixed(2),
      row.gbps.toFixed(1),
      row.backend === "vireo" && ratio ? `${ratio.vireoOverDpdk.toFixed(2)}x` : "",
      row.countedBy,
    ];
  });
  const inproc = r.inProcess.map((p) => [
    p.direction === "tx" ? "guest-tx" : "guest-rx",
    String(p.frameBytes),
    p.cpuNs.toFixed(0),
    p.cpuMpps.toFixed(2),
  ]);
  return [
    `DPDK testpmd net_virtio_user as the driver, ${r.ring} rings, ${r.seconds} s per window, the median of ${r.rounds} interleaved round(s) (all rounds' Mpps in the JSON); ${r.pinning}`,
    formatTable(
      ["direction", "frame B", "back-end", "frames", "Mpps", "Gbit/s", "vireo/DPDK", "counted by"],
      rows,
    ),
    "",
    "VirtioNet alone, in process (bench/net-path.ts), this thread's CPU per frame:",
    formatTable(["direction", "frame B", "ns/frame", "Mpps/CPU"], inproc),
    "",
    `also running: load average ${r.otherLoad.loadavgBefore.split(" ").slice(0, 3).join(" ")} before, ${r.otherLoad.loadavgAfter.split(" ").slice(0, 3).join(" ")} after`,
    ...r.otherLoad.busiest.map((p) => `  ${p.cpuSeconds.toFixed(0).padStart(5)} CPU s  ${p.command}`),
    ...r.skipped.map((s) => `skipped: ${s}`),
  ].join("\n");
}
