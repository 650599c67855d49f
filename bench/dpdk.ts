/**
 * DPDK plumbing shared by the benchmarks (bench/vhost-user.ts, bench/switch.ts) and the DPDK interop tests:
 * hugepages (hugetlbfs mounted on /dev/hugepages if nothing is, pages reserved and given back after), testpmd
 * processes with vdevs (`net_virtio_user`, `net_vhost`; no PCI device is touched), and testpmd's statistics.
 *
 * testpmd: `--single-file-segments` keeps its memory to a few regions (vhost-user carries at most 8 per table),
 * `--in-memory` leaves no hugepage files behind, and a distinct `--file-prefix` per process keeps any runtime
 * state apart. Its main and forwarding lcores share one CPU (`--lcores 0@N,1@N`). Its stdout is a pipe, so
 * fully buffered: what it prints (statistics included) is read once it has quit; only the prompt (written by
 * its command line library, unbuffered) shows while it runs.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import { VireoError } from "../src/errors.ts";

const NR_HUGEPAGES = "/proc/sys/vm/nr_hugepages";

export function meminfo(field: string): number {
  const m = readFileSync("/proc/meminfo", "utf8").match(new RegExp(`^${field}:\\s+(\\d+)`, "m"));
  return m ? Number(m[1]) : 0;
}

export function hasCommand(cmd: string): boolean {
  return spawnSync("sh", ["-c", `command -v ${cmd}`]).status === 0;
}

export const IS_ROOT = process.getuid?.() === 0;

/**
 * Mounts hugetlbfs and reserves `pages` free 2 MiB hugepages when it can: the reason it cannot, or a release
 * function that gives back only what this call added (the kernel frees only pages nobody uses).
 */
export function prepareDpdk(pages: number): { why: string } | { release: () => void } {
  if (!hasCommand("dpdk-testpmd"))
    return { why: "dpdk-testpmd is not installed (scripts/setup.sh installs Debian's dpdk-dev)" };
  if (!IS_ROOT) return { why: "hugepages need root" };
  if (!/ \/dev\/hugepages hugetlbfs /.test(readFileSync("/proc/mounts", "utf8"))) {
    mkdirSync("/dev/hugepages", { recursive: true });
    const r = spawnSync("mount", ["-t", "hugetlbfs", "nodev", "/dev/hugepages"]);
    if (r.status !== 0) return { why: `cannot mount hugetlbfs: ${r.stderr}` };
  }
  let raised = 0;
  const free = meminfo("HugePages_Free");
  if (free < pages) {
    const total = meminfo("HugePages_Total");
    try {
      writeFileSync(NR_HUGEPAGES, String(total + pages - free));
    } catch (e) {
      return { why: `cannot reserve hugepages: ${(e as Error).message}` };
    }
    raised = meminfo("HugePages_Total") - total;
  }
  let released = false;
  const release = () => {
    if (released) return;
    released = true;
    if (raised <= 0) return;
    try {
      writeFileSync(NR_HUGEPAGES, String(Math.max(0, meminfo("HugePages_Total") - raised)));
    } catch {
      // nothing more to give back
    }
  };
  if (meminfo("HugePages_Free") < pages) {
    release();
    return { why: `could not reserve ${pages} hugepages` };
  }
  return { release };
}

export interface Proc {
  name: string;
  child: ChildProcess;
  /** stdout and stderr together, as they came (for logs). */
  out: { text: string };
  /**
   * stdout alone: what is parsed (testpmd's prompt and statistics, vireo's JSON lines). In `out` a line of one
   * stream can be cut by the other's: testpmd's "testpmd> " prompt has been seen split by a warning on stderr
   * ("tes" + "Error during enabling promiscuous mode..." + "tpmd> "), and a wait for it then timed out.
   */
  stdout: { text: string };
  exited: Promise<number | null>;
  /** Writes a line to its stdin (a testpmd command). */
  send(line: string): void;
}

export interface StartOptions {
  /** The CPU to pin it to (taskset), or null for none. */
  cpu?: number | null;
  /**
   * Its own session (so its own autogroup, where the kernel groups by session) at nice -20 and autogroup nice
   * -20, when root: on a machine other work keeps busy (a fuzz campaign here) each measured process then gets
   * nearly all of its CPU instead of a fair share with every other session.
   */
  boost?: boolean;
  /** A command to run it under, e.g. ["ip", "netns", "exec", NS]. */
  prefix?: string[];
}

/** The processes a benchmark or test started, so that every one of them is ended however the run ends. */
export class ProcessSet {
  readonly procs: Proc[] = [];

  start(name: string, cmd: string, args: string[], opts: StartOptions = {}): Proc {
    const boost = (opts.boost ?? true) && IS_ROOT;
    const nice = boost ? ["nice", "-n", "-20"] : [];
    const pin =
      opts.cpu !== undefined && opts.cpu !== null && hasCommand("taskset")
        ? ["taskset", "-c", String(opts.cpu)]
        : [];
    const argv = [...(opts.prefix ?? []), ...nice, ...pin, cmd, ...args];
    const child = spawn(argv[0] as string, argv.slice(1), {
      stdio: ["pipe", "pipe", "pipe"],
      detached: true,
    });
    if (boost && child.pid !== undefined) {
      try {
        writeFileSync(`/proc/${child.pid}/autogroup`, "-20");
      } catch {
        // no autogroups in this kernel: nice alone
      }
    }
    const out = { text: "" };
    const stdout = { text: "" };
    child.stdout?.on("data", (d) => {
      out.text += d;
      stdout.text += d;
    });
    child.stderr?.on("data", (d) => {
      out.text += d;
    });
    child.stdin?.on("error", () => {
      // it quit while a command was on its way: its exit tells
    });
    const exited = new Promise<number | null>((resolve) => {
      child.on("exit", (code) => resolve(code));
      child.on("error", () => resolve(null));
    });
    const p: Proc = {
      name,
      child,
      out,
      stdout,
      exited,
      send: (line) => {
        if (child.stdin?.writable) child.stdin.write(`${line}\n`);
      },
    };
    this.procs.push(p);
    return p;
  }

  /** SIGKILLs (the whole process group: taskset/nice exec, but `ip netns exec` may fork) what still runs. */
  killAll(): void {
    for (const p of this.procs.splice(0)) {
      if (p.child.exitCode !== null || p.child.signalCode !== null || p.child.pid === undefined) continue;
      try {
        process.kill(-p.child.pid, "SIGKILL");
      } catch {
        p.child.kill("SIGKILL");
      }
    }
  }
}

export async function until(what: string, cond: () => boolean, ms: number, log: () => string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline)
      throw new VireoError("VIREO_BENCH_FAILED", `timed out waiting for ${what}:\n${log()}`);
    await sleep(50);
  }
}

/**
 * A `vireo vhost-user` back-end's counts for its first connection: the `"connection-end"` JSON line it prints when
 * the connection ends, waited for up to `ms`; the line as printed and parsed.
 */
export async function connectionEnd<T>(p: Proc, ms = 30_000): Promise<{ line: string; end: T }> {
  const find = () => p.stdout.text.split("\n").find((l) => l.includes('"connection-end"'));
  await until(
    "vireo's connection-end line",
    () => find() !== undefined,
    ms,
    () => p.out.text,
  );
  const line = find() as string;
  return { line, end: JSON.parse(line) as T };
}

export type ForwardMode = "io" | "txonly" | "rxonly";

export interface TestpmdConfig {
  /** Names the process in errors and makes its --file-prefix (vireo-NAME). */
  name: string;
  /** The CPU its main and forwarding lcores share, or null (no pinning). */
  cpu: number | null;
  /** --vdev arguments, one per port, e.g. `net_virtio_user0,path=SOCK,queues=1`. */
  vdevs: string[];
  mode: ForwardMode;
  /** txonly frame length in bytes (Ethernet header to payload, no FCS); testpmd's default is 64. */
  txpkts?: number;
  /** Size of its mbuf pool; it must cover every ring it fills plus the per-lcore caches. */
  mbufs?: number;
  /** More testpmd application arguments (after `--`), e.g. `--eth-peer=0,MAC`. */
  extra?: string[];
}

/** testpmd's command line for `cfg`, interactive (commands on stdin). */
export function testpmdArgs(cfg: TestpmdConfig): string[] {
  const lcores = cfg.cpu === null ? [] : ["--lcores", `0@${cfg.cpu},1@${cfg.cpu}`];
  return [
    ...lcores,
    "--no-pci",
    "--in-memory",
    "--single-file-segments",
    `--file-prefix=vireo-${cfg.name}`,
    ...cfg.vdevs.flatMap((v) => ["--vdev", v]),
    "--",
    "-i",
    `--total-num-mbufs=${cfg.mbufs ?? 32768}`,
    `--forward-mode=${cfg.mode}`,
    ...(cfg.txpkts === undefined ? [] : [`--txpkts=${cfg.txpkts}`]),
    ...(cfg.extra ?? []),
  ];
}

/** Starts an interactive testpmd; resolves at its first prompt (its ports are started then). */
export async function startTestpmd(
  set: ProcessSet,
  cfg: TestpmdConfig,
  opts: StartOptions = {},
): Promise<Proc> {
  const p = set.start(cfg.name, "dpdk-testpmd", testpmdArgs(cfg), { cpu: cfg.cpu, ...opts });
  await until(
    `testpmd ${cfg.name}`,
    () => p.stdout.text.includes("testpmd>") || p.child.exitCode !== null,
    60_000,
    () => p.out.text,
  );
  if (p.child.exitCode !== null)
    throw new VireoError(
      "VIREO_BENCH_FAILED",
      `testpmd ${cfg.name} exited (${p.child.exitCode}):\n${p.out.text}`,
    );
  return p;
}

export interface PortCounts {
  rxPackets: number;
  txPackets: number;
  /** Forward statistics only: what testpmd's forwarding dropped (RX-dropped: mbufs; TX-dropped: a full ring). */
  rxDropped?: number;
  txDropped?: number;
  /** Port statistics only. */
  rxBytes?: number;
  txBytes?: number;
}

export interface TestpmdStats {
  /** The last "Accumulated forward statistics for all ports" block (forwarding's start to its stop). */
  forward: PortCounts | null;
  /** The last "Forward statistics for port N" block of each port. */
  forwardPorts: Map<number, PortCounts>;
  /** The last "NIC statistics for port N" block of each port (`show port stats all`: since the port started). */
  ports: Map<number, PortCounts>;
}

function field(block: string, name: string): number | undefined {
  const m = block.match(new RegExp(`${name}:\\s+(\\d+)`));
  return m ? Number(m[1]) : undefined;
}

function counts(block: string): PortCounts {
  const c: PortCounts = {
    rxPackets: field(block, "RX-packets") ?? 0,
    txPackets: field(block, "TX-packets") ?? 0,
  };
  const extra = {
    rxDropped: field(block, "RX-dropped"),
    txDropped: field(block, "TX-dropped"),
    rxBytes: field(block, "RX-bytes"),
    txBytes: field(block, "TX-bytes"),
  };
  for (const [k, v] of Object.entries(extra))
    if (v !== undefined) (c as unknown as Record<string, number>)[k] = v;
  return c;
}

/** Parses testpmd's output: the forward statistics `stop` prints and the port statistics `show port stats`. */
export function parseTestpmdStats(text: string): TestpmdStats {
  const stats: TestpmdStats = { forward: null, forwardPorts: new Map(), ports: new Map() };
  // Each block runs from its banner to the next banner (or the end).
  const blocks = text.split(/\n(?=\s*[-#+]{4,}\s*(?:Forward statistics|Accumulated forward|NIC statistics))/);
  for (const b of blocks) {
    const fwdPort = b.match(/Forward statistics for port (\d+)/);
    const nicPort = b.match(/NIC statistics for port (\d+)/);
    if (/Accumulated forward statistics for all ports/.test(b)) stats.forward = counts(b);
    else if (fwdPort) stats.forwardPorts.set(Number(fwdPort[1]), counts(b));
    else if (nicPort) stats.ports.set(Number(nicPort[1]), counts(b));
  }
  return stats;
}

/**
 * Ends a testpmd: `stop` (forward statistics), then `show port stats all` when asked, then `quit`; SIGKILL if it
 * has not exited within 30 s. Its statistics, parsed from everything it printed.
 */
export async function quitTestpmd(p: Proc, opts: { portStats?: boolean } = {}): Promise<TestpmdStats> {
  p.send("stop");
  await sleep(300);
  if (opts.portStats) p.send("show port stats all");
  p.send("quit");
  p.child.stdin?.end();
  const code = await Promise.race([p.exited, sleep(30_000, "timeout" as const, { ref: false })]);
  if (code === "timeout") p.child.kill("SIGKILL");
  return parseTestpmdStats(p.stdout.text);
}

/** The accumulated forward count `field` of a testpmd's output, or a VIREO_BENCH_FAILED error showing it. */
export function forwardCount(p: Proc, stats: TestpmdStats, f: "rxPackets" | "txPackets"): number {
  const n = stats.forward?.[f];
  if (n === undefined)
    throw new VireoError(
      "VIREO_BENCH_FAILED",
      `testpmd ${p.name} gave no forward statistics:\n${p.out.text.slice(-3000)}`,
    );
  return n;
}
