/**
 * `vireo bench snapshot`: what a snapshot, a restore and a live migration cost, for a 128 MiB and a 1 GiB guest.
 *
 * The guest is the micro guest's `dirty` program (guest/micro/dirty.c) with half of its RAM filled with data, so
 * the memory file and the migration have something to carry. Each size:
 * - snapshot (paused) through the control API: its time, the state file's size, the memory file's bytes written;
 * - restore of that snapshot in a new process: the time from the start of `Machine.run` until the vCPUs are let
 *   go (vireo's "restored DIR in N ms": the first guest instruction follows), and the RAM bytes read; then the
 *   same with `--lazy` (the memory file mapped private, pages read as touched);
 * - live migration over a Unix socket to `vireo run --incoming` on the same host, once with the guest idle (it
 *   filled its memory and rewrites nothing) and once busy (rewriting 16 MiB/s, `dirty ... 16`): rounds, pages and
 *   bytes sent, downtime (guest stopped until the destination runs it) and total time; the destination checks a
 *   SHA-256 of all of RAM (--verify), so every figure is of a migration that moved the RAM exactly.
 *
 * Anchors (from their documentation, not measured here): Firecracker's restore target is under 8 ms (p90 5 ms) for
 * a 2-vCPU, 512 MiB guest with memory mapped lazily; Cloud Hypervisor restores 1 GiB in about 6 ms on demand and
 * 730 ms copying; QEMU's and Cloud Hypervisor's default migration downtime limit is 300 ms. vireo restores by
 * copying the memory file's data by default, so that restore time grows with the RAM that holds data; --lazy
 * does not. In the emulated KVM host every time is TCG-distorted: compare sizes, pages, bytes and rounds, not times.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { callApi } from "../src/cli/ctl.ts";
import { VireoError } from "../src/errors.ts";
import { repoPath } from "../src/paths.ts";
import type { SnapshotResult } from "../src/vmm/api-server.ts";
import type { MigrationResult } from "../src/vmm/migration/source.ts";
import type { BenchOptions } from "./index.ts";
import { formatTable } from "./stats.ts";

const VIREO_BIN = process.env.VIREO_BENCH_VIREO || repoPath("bin", "vireo");
const SIZES_MIB = [128, 1024];
/** The busy guest's rewrite rate, KiB per millisecond of guest time (16 MiB/s). */
const BUSY_KIB_PER_MS = 16;

interface Proc {
  child: ChildProcess;
  err(): string;
  exited: Promise<number | null>;
}

function start(args: string[]): Proc {
  const child = spawn(VIREO_BIN, args, { stdio: ["ignore", "ignore", "pipe"] });
  let err = "";
  child.stderr?.on("data", (d) => (err += d));
  const exited = new Promise<number | null>((r) => child.on("exit", (code) => r(code)));
  return { child, err: () => err, exited };
}

async function until(ok: () => boolean, ms: number, what: () => string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > deadline) throw new VireoError("VIREO_BENCH_FAILED", what());
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A `dirty` guest of `mib` MiB with half of it filled, its API socket up. */
async function dirtyGuest(dir: string, tag: string, mib: number, kibPerMs: number) {
  const sock = join(dir, `${tag}.sock`);
  const out = join(dir, `${tag}.out`);
  const p = start([
    "run",
    "--guest",
    "micro:dirty",
    String(mib / 2),
    String(kibPerMs),
    "3600",
    "--mem",
    String(mib),
    "--serial",
    `file:${out}`,
    "--api-socket",
    sock,
  ]);
  const text = () => (existsSync(out) ? readFileSync(out, "utf8") : "");
  await until(
    () => (existsSync(sock) && /dirty filled/.test(text())) || p.child.exitCode !== null,
    1_800_000,
    () => `the ${mib} MiB guest did not fill its memory: ${p.err()} ${text()}`,
  );
  if (p.child.exitCode !== null) throw new VireoError("VIREO_BENCH_FAILED", `vireo exited: ${p.err()}`);
  return { p, sock, out, text };
}

async function api<T>(sock: string, path: string, body: Record<string, unknown>): Promise<T> {
  const r = await callApi(sock, "PUT", path, 1_800_000, body);
  if (r.status !== 200) throw new VireoError("VIREO_BENCH_FAILED", `${path}: ${JSON.stringify(r.body)}`);
  return r.body as T;
}

export interface SnapshotBenchRow {
  memMiB: number;
  filledMiB: number;
  snapshot: SnapshotResult;
  restoreMs: number;
  restoreBytesRead: number;
  /** --restore --lazy: the memory file mapped, nothing read before the first instruction. */
  lazyRestoreMs: number;
  idle: MigrationResult;
  busy: MigrationResult & { busyKibPerMs: number };
}

/** A line on stderr per step: the emulated KVM host ends a script that prints nothing for 10 minutes. */
function progress(mib: number, what: string): void {
  process.stderr.write(`bench snapshot: ${mib} MiB guest: ${what}\n`);
}

async function measure(mib: number): Promise<SnapshotBenchRow> {
  const dir = mkdtempSync(join(tmpdir(), "vireo-bench-snap-"));
  try {
    progress(mib, "filling half of RAM");
    // Snapshot, then restore in a new process.
    const g = await dirtyGuest(dir, "snap", mib, 0);
    const snapDir = join(dir, "snap");
    progress(mib, "snapshot");
    let snapshot: SnapshotResult;
    try {
      snapshot = await api<SnapshotResult>(g.sock, "/v1/vm/snapshot", { path: snapDir, paused: true });
    } finally {
      g.p.child.kill("SIGKILL");
      await g.p.exited;
    }
    // Restored, copying and then lazily: each run is stopped once it says its vCPUs were let go.
    const restore = async (extra: string[]) => {
      const p = start(["run", "--restore", snapDir, ...extra, "--serial", "none"]);
      try {
        await until(
          () => /restored .* in [\d.]+ ms/.test(p.err()) || p.child.exitCode !== null,
          1_800_000,
          () => `restore ${extra.join(" ")}: ${p.err()}`,
        );
      } finally {
        p.child.kill("SIGKILL");
        await p.exited;
      }
      return p.err();
    };
    progress(mib, "restore (copying the memory file)");
    const copied = await restore([]);
    const restored = /restored .* in ([\d.]+) ms \((\d+) bytes of RAM read\)/.exec(copied);
    if (!restored) throw new VireoError("VIREO_BENCH_FAILED", `restore: ${copied}`);
    progress(mib, "restore --lazy");
    const mapped = await restore(["--lazy"]);
    const lazy = /restored .* in ([\d.]+) ms \(memory mapped lazily\)/.exec(mapped);
    if (!lazy) throw new VireoError("VIREO_BENCH_FAILED", `lazy restore: ${mapped}`);

    const migrateOnce = async (tag: string, kibPerMs: number) => {
      progress(mib, `migration, ${tag} guest`);
      const src = await dirtyGuest(dir, `${tag}-src`, mib, kibPerMs);
      const inSock = join(dir, `${tag}-in.sock`);
      const outDest = join(dir, `${tag}-dest.out`);
      const dest = start(["run", "--incoming", `unix:${inSock}`, "--serial", `file:${outDest}`]);
      try {
        await until(
          () => /waiting for a migration/.test(dest.err()) || dest.child.exitCode !== null,
          300_000,
          () => `the destination did not listen: ${dest.err()}`,
        );
        const m = await api<MigrationResult>(src.sock, "/v1/vm/migrate", {
          to: `unix:${inSock}`,
          verify: true,
        });
        await src.p.exited;
        return m;
      } finally {
        dest.child.kill("SIGKILL");
        src.p.child.kill("SIGKILL");
        await dest.exited;
      }
    };
    const idle = await migrateOnce("idle", 0);
    const busy = await migrateOnce("busy", BUSY_KIB_PER_MS);
    return {
      memMiB: mib,
      filledMiB: mib / 2,
      snapshot,
      restoreMs: Number(restored[1]),
      restoreBytesRead: Number(restored[2]),
      lazyRestoreMs: Number(lazy[1]),
      idle,
      busy: { ...busy, busyKibPerMs: BUSY_KIB_PER_MS },
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export interface SnapshotBench {
  rows: SnapshotBenchRow[];
  anchors: Record<string, string>;
}

export async function benchSnapshot(opts: BenchOptions): Promise<SnapshotBench> {
  const rows: SnapshotBenchRow[] = [];
  for (const mib of opts.sizes ?? SIZES_MIB) rows.push(await measure(mib));
  return {
    rows,
    anchors: {
      firecrackerRestore: "under 8 ms (p90 5 ms), 2 vCPUs, 512 MiB, memory mapped lazily (its docs)",
      cloudHypervisorRestore: "1 GiB: about 6 ms on demand (userfaultfd), about 730 ms copying (its docs)",
      migrationDowntimeLimit: "300 ms: QEMU's and Cloud Hypervisor's default",
    },
  };
}

export function formatSnapshot(r: SnapshotBench): string {
  const mib = (n: number) => (n / 2 ** 20).toFixed(1);
  const rounds = (m: MigrationResult) => {
    const pages = m.rounds.map((x) => x.pages);
    const shown = pages.length <= 4 ? pages.join("/") : `${pages[0]}/${pages[1]}/.../${pages.at(-1)}`;
    return `${m.rounds.length}${m.converged ? "" : "*"} (${shown}) + ${m.finalPages}`;
  };
  const table = formatTable(
    [
      "guest",
      "filled",
      "snapshot ms",
      "state KiB",
      "memory MiB",
      "restore ms",
      "read MiB",
      "migration",
      "rounds (pages) + last",
      "MiB sent",
      "downtime ms",
      "total ms",
    ],
    r.rows.flatMap((x) => [
      [
        `${x.memMiB} MiB`,
        `${x.filledMiB} MiB`,
        x.snapshot.totalMs.toFixed(0),
        (x.snapshot.stateFileBytes / 1024).toFixed(1),
        mib(x.snapshot.memoryBytesWritten),
        x.restoreMs.toFixed(0),
        mib(x.restoreBytesRead),
        x.lazyRestoreMs.toFixed(0),
        "idle",
        rounds(x.idle),
        mib(x.idle.bytesSent),
        String(x.idle.downtimeMs),
        String(x.idle.totalMs),
      ],
      [
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        `busy ${x.busy.busyKibPerMs} MiB/s`,
        rounds(x.busy),
        mib(x.busy.bytesSent),
        String(x.busy.downtimeMs),
        String(x.busy.totalMs),
      ],
    ]),
  );
  return `${table}\n* did not converge below the 300 ms downtime limit; stopped after the last round\nanchors: ${Object.values(r.anchors).join("; ")}`;
}
