/**
 * `vireo bench vhost-user-blk`: vireo's vhost-user blk back-end against qemu-storage-daemon's vhost-user-blk
 * export of the same file, with one driver for both, natively (no KVM): bench/ref/vub-driver.c, a small C
 * vhost-user-blk front-end (memfd guest memory, one split ring, EVENT_IDX when offered, kick and call eventfds).
 *
 * For each mode and queue depth (default 1 and 32), each back-end in turn gets a fresh process and one
 * connection that runs two rows, 4 KiB random writes then reads, each a warm-up and a fixed window (`--seconds`),
 * so the two back-ends' rows are close in time on a machine whose load changes. The driver reports IOPS, latency
 * percentiles (submit to used), its own CPU per request (/proc/thread-self/schedstat: whether the driver could
 * have limited a row) and the back-end's (all its threads, /proc/PID/stat), and checks a sample of reads of blocks
 * it wrote against what it wrote (writes come first so that reads find the driver's data).
 *
 * Both back-ends serve the same file (random bytes, in a fresh directory under the system's temporary
 * directory) with the same cache mode (`cache`): through the host page cache (default: vireo without --direct,
 * qsd cache.direct=off) or not (vireo --direct, qsd cache.direct=on); qsd with its default aio=threads; one
 * request queue of 128 entries each. Two modes: "event", both
 * back-ends sleep until kicked (vireo's default; qsd's main loop, which does not poll); "poll", both poll the
 * rings for a while after work before sleeping (vireo --busy-poll-us 100; qsd in an iothread with
 * poll-max-ns=100000, QEMU's adaptive polling, which stops polling when it does not pay). The back-end runs on CPU 0
 * and the driver on CPU 1 when there are two CPUs. Rounds interleave (vireo, qsd, vireo, qsd, ...); each row
 * reports the round with the median IOPS. The machine is shared: ratios from one run are the result, and the load
 * average before and after is reported with them.
 *
 * $VIREO_BENCH_VIREO names another vireo to serve the rings: another checkout, to compare versions, or a script
 * running `node --cpu-prof --import .../tsx/dist/loader.mjs src/cli/main.ts "$@"` for a CPU profile of the back-end
 * (Node refuses --cpu-prof in NODE_OPTIONS; the profile is written when vireo exits after the connection, --once).
 */
import { execFileSync } from "node:child_process";
import { randomFillSync } from "node:crypto";
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { ConfigError } from "../src/errors.ts";
import { repoPath } from "../src/paths.ts";
import { hasCommand, IS_ROOT, type Proc, ProcessSet, until } from "./dpdk.ts";
import { formatTable } from "./stats.ts";
import { processTicks } from "./vhost-user.ts";

export interface VhostUserBlkBenchOptions {
  json?: boolean;
  /** Rounds; each runs every back-end once, in the same order. */
  rounds?: number;
  /** Length of each row's measured window (may be fractional when called from code). */
  seconds?: number;
  /** Queue depths (requests in flight); default 1 and 32. */
  depths?: number[];
  /** Warm-up before each row's window; default 1 s (a fifth of the window when that is shorter). */
  warmupSeconds?: number;
  /** Size of the image file; default 256 MiB. */
  fileBytes?: number;
  /** Back-ends to run; default both (qsd is skipped, saying why, when it is not installed). */
  backends?: Backend[];
  /** Modes to run; default both. */
  modes?: Mode[];
  /** page: both through the host page cache (default); direct: both with O_DIRECT. */
  cache?: Cache;
}

export type Backend = "vireo" | "qsd";
export type Rw = "read" | "write";
/** event: the back-end sleeps until kicked; poll: it polls the rings for a while after work (see above). */
export type Mode = "event" | "poll";
export type Cache = "page" | "direct";

/** One row as the driver reports it (bench/ref/vub-driver.c). */
export interface DriverRow {
  rw: Rw;
  depth: number;
  requests: number;
  seconds: number;
  iops: number;
  meanUs: number;
  p50Us: number;
  p90Us: number;
  p99Us: number;
  p999Us: number;
  maxUs: number;
  /** The driver thread's CPU time per request, and its share of the window. */
  driverCpuNsPerRequest: number;
  driverCpuShare: number;
  kicksPerRequest: number;
  /** Times the driver slept on the call eventfd, per request. */
  waitsPerRequest: number;
  /** The back-end process's CPU time (all threads, /proc/PID/stat, 10 ms ticks) per request, and its share. */
  backendCpuNsPerRequest: number;
  backendCpuShare: number;
  /** Reads of blocks written in this connection that were compared with the data written, and how many differed. */
  verified: number;
  mismatches: number;
  errors: number;
}

export interface VhostUserBlkRow extends DriverRow {
  backend: Backend;
  mode: Mode;
  /** Every round's IOPS (the row's figures are the round with the median). */
  samples: number[];
}

export interface Negotiated {
  backend: Backend;
  offered: string;
  acked: string;
  eventIdx: boolean;
  replyAck: boolean;
  queueSize: number;
}

export interface VhostUserBlkBenchResult {
  rounds: number;
  seconds: number;
  warmupSeconds: number;
  depths: number[];
  modes: Mode[];
  cpus: number;
  pinning: string;
  setup: {
    fileBytes: number;
    filesystem: string;
    cache: Cache;
    cacheDetail: string;
    queues: number;
    queueSize: number;
    qsd: string | null;
    qsdCommand: Record<Mode, string> | null;
    vireoCommand: Record<Mode, string>;
  };
  negotiated: Negotiated[];
  rows: VhostUserBlkRow[];
  /** vireo / qsd: IOPS (above 1: vireo faster) and p50/p99 latency (below 1: vireo faster). */
  ratios: Array<{ mode: Mode; rw: Rw; depth: number; iops: number; p50: number; p99: number }>;
  /** Rows whose driver used more than 80% of a CPU in the window: the driver may have limited them. */
  driverLimited: string[];
  otherLoad: {
    loadavgBefore: string;
    loadavgAfter: string;
    busiest: Array<{ command: string; cpuSeconds: number }>;
  };
  skipped: string[];
}

const VIREO_BIN = process.env.VIREO_BENCH_VIREO || repoPath("bin", "vireo");
export const DRIVER = repoPath("bench", "ref", "build", "vub-driver");
const QUEUE_SIZE = 128;
/** poll mode: how long each back-end polls after work (vireo fixed, qsd at most: it adapts). */
const POLL_US = 100;

const children = new ProcessSet();

/** Builds the driver if it is missing or older than its source (make does both checks). */
export function buildDriver(): void {
  execFileSync("make", ["-s", "-C", repoPath("bench", "ref"), "build/vub-driver"], { stdio: "pipe" });
  if (!existsSync(DRIVER)) throw new Error(`${DRIVER} was not built`);
}

function makeImage(path: string, bytes: number): void {
  const fd = openSync(path, "w");
  try {
    const chunk = Buffer.alloc(1 << 20);
    for (let at = 0; at < bytes; at += chunk.length) {
      randomFillSync(chunk);
      writeSync(fd, chunk, 0, Math.min(chunk.length, bytes - at));
    }
  } finally {
    closeSync(fd);
  }
}

function qsdVersion(): string | null {
  if (!hasCommand("qemu-storage-daemon")) return null;
  try {
    return execFileSync("qemu-storage-daemon", ["--version"], { encoding: "utf8" }).split("\n")[0] ?? "";
  } catch {
    return null;
  }
}

function qsdArgs(img: string, socket: string, mode: Mode, cache: Cache): string[] {
  return [
    ...(mode === "poll" ? ["--object", `iothread,id=io0,poll-max-ns=${POLL_US * 1000}`] : []),
    "--blockdev",
    `driver=file,node-name=f,filename=${img},cache.direct=${cache === "direct" ? "on" : "off"}`,
    "--export",
    `type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path=${socket},writable=on,num-queues=1${mode === "poll" ? ",iothread=io0" : ""}`,
  ];
}

function vireoArgs(img: string, socket: string, mode: Mode, cache: Cache): string[] {
  return [
    "vhost-user",
    "blk",
    "--socket",
    socket,
    "--file",
    img,
    "--once",
    "--queue-size",
    String(QUEUE_SIZE),
    "--num-queues",
    "1",
    ...(mode === "poll" ? ["--busy-poll-us", String(POLL_US)] : []),
    ...(cache === "direct" ? ["--direct"] : []),
  ];
}

async function startBackend(
  backend: Backend,
  mode: Mode,
  cache: Cache,
  img: string,
  socket: string,
  cpu: number | null,
): Promise<Proc> {
  let p: Proc;
  if (backend === "vireo") {
    p = children.start("vireo", VIREO_BIN, vireoArgs(img, socket, mode, cache), { cpu });
  } else {
    p = children.start("qsd", "qemu-storage-daemon", qsdArgs(img, socket, mode, cache), { cpu });
  }
  await until(
    `the ${backend} vhost-user-blk socket`,
    () => existsSync(socket),
    60_000,
    () => p.out.text,
  );
  return p;
}

/** Runs the driver over every row against one back-end; its negotiated line and rows. */
async function runDriver(
  socket: string,
  fileBytes: number,
  rows: string,
  seconds: number,
  warmup: number,
  seed: number,
  cpu: number | null,
  backendPid: number | undefined,
): Promise<{ negotiated: Omit<Negotiated, "backend">; rows: DriverRow[] }> {
  const d = children.start(
    "vub-driver",
    DRIVER,
    [
      "--socket",
      socket,
      "--size",
      String(fileBytes),
      "--rows",
      rows,
      "--seconds",
      String(seconds),
      "--warmup",
      String(warmup),
      "--seed",
      String(seed),
      "--queue-size",
      String(QUEUE_SIZE),
      ...(backendPid === undefined ? [] : ["--backend-pid", String(backendPid)]),
    ],
    { cpu },
  );
  const code = await d.exited;
  const lines = d.stdout.text
    .split("\n")
    .filter((l) => l.startsWith("{"))
    .map((l) => JSON.parse(l) as { event: string });
  if (code !== 0) throw new Error(`vub-driver exited with ${code}: ${d.out.text.trim().slice(-2000)}`);
  const neg = lines.find((l) => l.event === "negotiated") as unknown as
    | Omit<Negotiated, "backend">
    | undefined;
  if (!neg) throw new Error(`vub-driver said nothing about negotiation: ${d.out.text.slice(-2000)}`);
  return {
    negotiated: neg,
    rows: lines
      .filter((l) => l.event === "row")
      .map((l) => {
        const { event: _e, ...row } = l as unknown as DriverRow & { event: string };
        return row;
      }),
  };
}

function filesystemOf(path: string): string {
  try {
    return execFileSync("stat", ["-f", "-c", "%T", path], { encoding: "utf8" }).trim();
  } catch {
    return "unknown";
  }
}

export async function benchVhostUserBlk(opts: VhostUserBlkBenchOptions): Promise<VhostUserBlkBenchResult> {
  const seconds = opts.seconds ?? 5;
  const rounds = opts.rounds ?? 1;
  const depths = opts.depths ?? [1, 32];
  const modes = opts.modes ?? ["event", "poll"];
  const warmup = opts.warmupSeconds ?? Math.min(1, seconds / 5);
  const fileBytes = opts.fileBytes ?? 256 << 20;
  const cache = opts.cache ?? "page";
  const ncpu = cpus().length;
  const [backendCpu, driverCpu] = ncpu >= 2 ? [0, 1] : [null, null];
  const pinning = `${
    ncpu >= 2
      ? `${ncpu} CPUs: back-end (vireo, or all of qsd's threads) on CPU 0, the driver on CPU 1 (taskset)`
      : `${ncpu} CPU: nothing pinned`
  }${IS_ROOT ? ", each in its own session at nice -20 and autogroup nice -20" : ""}`;
  for (const d of depths) {
    if (!Number.isInteger(d) || d < 1 || 3 * d > QUEUE_SIZE)
      throw new ConfigError(
        `--depths: ${d} is not 1 to ${Math.floor(QUEUE_SIZE / 3)} (3 descriptors per request)`,
      );
  }
  buildDriver();
  const qsd = qsdVersion();
  const skipped: string[] = [];
  const backends = (opts.backends ?? ["vireo", "qsd"]).filter((b) => {
    if (b === "qsd" && qsd === null) {
      skipped.push(
        "qsd rows: qemu-storage-daemon is not installed (Debian: qemu-system-common; scripts/setup.sh)",
      );
      return false;
    }
    return true;
  });
  const loadavgBefore = readFileSync("/proc/loadavg", "utf8").trim();
  const ticksBefore = processTicks();
  const dir = mkdtempSync(join(tmpdir(), "vireo-bench-vub-"));
  const img = join(dir, "disk.img");
  const negotiated: Negotiated[] = [];
  /** With cache "direct": whether vireo's listening line said O_DIRECT (a file system may refuse it). */
  let vireoDirect: boolean | null = null;
  const perConfig = new Map<string, VhostUserBlkRow[]>();
  try {
    makeImage(img, fileBytes);
    for (let round = 0; round < rounds; round++) {
      for (const mode of modes)
        for (const depth of depths)
          for (const backend of backends) {
            if (!opts.json && process.stderr.isTTY)
              process.stderr.write(`\rround ${round + 1}/${rounds}: ${mode} depth ${depth} ${backend}    `);
            const socket = join(dir, `${backend}-${mode}-${depth}-${round}.sock`);
            const p = await startBackend(backend, mode, cache, img, socket, backendCpu);
            try {
              const r = await runDriver(
                socket,
                fileBytes,
                `write:${depth},read:${depth}`,
                seconds,
                warmup,
                round + 1,
                driverCpu,
                p.child.pid,
              );
              if (round === 0 && mode === modes[0] && depth === depths[0])
                negotiated.push({ backend, ...r.negotiated });
              for (const row of r.rows) {
                const key = `${mode}:${backend}:${row.rw}:${row.depth}`;
                const list = perConfig.get(key) ?? [];
                list.push({ backend, mode, ...row, samples: [] });
                perConfig.set(key, list);
              }
              if (backend === "vireo") {
                // --once: vireo prints its connection-end line and exits (a profile is written then).
                await until(
                  "vireo's exit",
                  () => p.child.exitCode !== null,
                  30_000,
                  () => p.out.text,
                );
                if (cache === "direct") vireoDirect = /, O_DIRECT/.test(p.out.text);
              }
            } finally {
              if (backend === "qsd" && p.child.pid !== undefined) {
                try {
                  process.kill(-p.child.pid, "SIGTERM");
                } catch {
                  // gone
                }
                await Promise.race([p.exited, new Promise((r) => setTimeout(r, 5000))]);
              }
              children.killAll();
            }
          }
    }
    if (!opts.json && process.stderr.isTTY) process.stderr.write("\n");
  } finally {
    children.killAll();
    rmSync(dir, { recursive: true, force: true });
  }
  const rows: VhostUserBlkRow[] = [];
  for (const mode of modes)
    for (const backend of backends)
      for (const rw of ["write", "read"] as const)
        for (const depth of depths) {
          const runs = perConfig.get(`${mode}:${backend}:${rw}:${depth}`) ?? [];
          if (runs.length === 0) continue;
          const sorted = [...runs].sort((a, b) => a.iops - b.iops);
          const mid = sorted[(sorted.length - 1) >> 1] as VhostUserBlkRow;
          rows.push({ ...mid, samples: runs.map((r) => r.iops) });
        }
  const ratios: VhostUserBlkBenchResult["ratios"] = [];
  for (const mode of modes)
    for (const rw of ["write", "read"] as const)
      for (const depth of depths) {
        const v = rows.find(
          (r) => r.mode === mode && r.backend === "vireo" && r.rw === rw && r.depth === depth,
        );
        const q = rows.find(
          (r) => r.mode === mode && r.backend === "qsd" && r.rw === rw && r.depth === depth,
        );
        if (v && q)
          ratios.push({
            mode,
            rw,
            depth,
            iops: v.iops / q.iops,
            p50: v.p50Us / q.p50Us,
            p99: v.p99Us / q.p99Us,
          });
      }
  const ticksAfter = processTicks();
  const mine = new Set<number>([process.pid, process.ppid]);
  const busiest = [...ticksAfter]
    .filter(([pid]) => !mine.has(pid))
    .map(([pid, a]) => ({
      command: a.command,
      cpuSeconds: (a.ticks - (ticksBefore.get(pid)?.ticks ?? 0)) / 100,
    }))
    .filter((p) => p.cpuSeconds >= 1 && !/vireo-bench-vub-| bench vhost-user-blk/.test(p.command))
    .sort((a, b) => b.cpuSeconds - a.cpuSeconds)
    .slice(0, 6)
    .map((p) => ({ ...p, command: p.command.slice(0, 110) }));
  return {
    rounds,
    seconds,
    warmupSeconds: warmup,
    depths,
    modes,
    cpus: ncpu,
    pinning,
    setup: {
      fileBytes,
      filesystem: filesystemOf(tmpdir()),
      cache,
      cacheDetail:
        cache === "page"
          ? "host page cache for both: vireo without --direct, qsd cache.direct=off (aio=threads, its default)"
          : `O_DIRECT for both: vireo --direct (${vireoDirect === false ? "REFUSED by the file system: buffered" : "O_DIRECT"}), qsd cache.direct=on (aio=threads, its default)`,
      queues: 1,
      queueSize: QUEUE_SIZE,
      qsd,
      qsdCommand:
        qsd === null
          ? null
          : {
              event: `qemu-storage-daemon ${qsdArgs("IMG", "SOCK", "event", cache).join(" ")}`,
              poll: `qemu-storage-daemon ${qsdArgs("IMG", "SOCK", "poll", cache).join(" ")}`,
            },
      vireoCommand: {
        event: `vireo ${vireoArgs("IMG", "SOCK", "event", cache).join(" ")}`,
        poll: `vireo ${vireoArgs("IMG", "SOCK", "poll", cache).join(" ")}`,
      },
    },
    negotiated,
    rows,
    ratios,
    driverLimited: rows
      .filter((r) => r.driverCpuShare > 0.8)
      .map(
        (r) =>
          `${r.mode} ${r.backend} ${r.rw} depth ${r.depth}: driver ${(100 * r.driverCpuShare).toFixed(0)}% of a CPU`,
      ),
    otherLoad: { loadavgBefore, loadavgAfter: readFileSync("/proc/loadavg", "utf8").trim(), busiest },
    skipped,
  };
}

export function formatVhostUserBlk(r: VhostUserBlkBenchResult): string {
  const rows = r.rows.map((row) => {
    const ratio = r.ratios.find((x) => x.mode === row.mode && x.rw === row.rw && x.depth === row.depth);
    return [
      row.mode,
      row.rw,
      String(row.depth),
      row.backend,
      row.iops.toFixed(0),
      row.p50Us.toFixed(1),
      row.p90Us.toFixed(1),
      row.p99Us.toFixed(1),
      row.p999Us.toFixed(1),
      row.backend === "vireo" && ratio ? `${ratio.iops.toFixed(2)}x` : "",
      row.backend === "vireo" && ratio ? `${ratio.p99.toFixed(2)}x` : "",
      (row.backendCpuNsPerRequest / 1000).toFixed(1),
      (row.driverCpuNsPerRequest / 1000).toFixed(1),
      `${row.verified}/${row.mismatches}`,
    ];
  });
  const neg = r.negotiated.map(
    (n) => `${n.backend}: offered ${n.offered}, acked ${n.acked} (EVENT_IDX ${n.eventIdx ? "on" : "off"})`,
  );
  return [
    `bench/ref/vub-driver (C) as the driver for both, 4 KiB random I/O, ${r.seconds} s per row after ${r.warmupSeconds} s warm-up, the median of ${r.rounds} interleaved round(s) (all rounds' IOPS in the JSON); ${r.pinning}`,
    `file: ${(r.setup.fileBytes / (1 << 20)).toFixed(0)} MiB on ${r.setup.filesystem}; ${r.setup.cacheDetail}; ${r.setup.queues} queue of ${r.setup.queueSize}; ${r.setup.qsd ?? "no qsd"}`,
    ...neg,
    `modes: event = both sleep until kicked; poll = vireo --busy-poll-us ${POLL_US}, qsd in an iothread with poll-max-ns=${POLL_US * 1000} (adaptive)`,
    formatTable(
      [
        "mode",
        "rw",
        "depth",
        "back-end",
        "IOPS",
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "p99.9 µs",
        "IOPS v/q",
        "p99 v/q",
        "back-end µs CPU/req",
        "driver µs CPU/req",
        "verified/bad",
      ],
      rows,
    ),
    ...r.driverLimited.map((s) => `driver-limited? ${s}`),
    "",
    `also running: load average ${r.otherLoad.loadavgBefore.split(" ").slice(0, 3).join(" ")} before, ${r.otherLoad.loadavgAfter.split(" ").slice(0, 3).join(" ")} after`,
    ...r.otherLoad.busiest.map((p) => `  ${p.cpuSeconds.toFixed(0).padStart(5)} CPU s  ${p.command}`),
    ...r.skipped.map((s) => `skipped: ${s}`),
  ].join("\n");
}
