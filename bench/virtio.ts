/**
 * `vireo bench virtio`: what one virtio operation costs, measured with the micro guest's drivers — a 4 KiB
 * virtio-blk read (bench-virtio-blk: one request at a time, served in the vCPU's own notify exit, or with
 * `iothread` on a data-plane thread woken by an ioeventfd) and a 1500-byte
 * virtio-net transmit (bench-virtio-net: the ring kept full, served by the data-plane thread woken by an
 * ioeventfd) — each with and without VIRTIO_F_RING_EVENT_IDX, on split and packed rings. Per operation: vCPU
 * exits, interrupts, guest notifications (doorbells the device saw) and host microseconds between the guest's
 * markers. Host time is also given as a multiple of a PIO exit round trip measured in the same run (bench-pio),
 * because absolute times on these hosts mean little.
 *
 * The same workloads also run with the rings served outside vireo, so each step stands beside the others: by
 * another process over vhost-user (`vireo vhost-user blk --file`, `vireo vhost-user net --sink`; vireo's
 * front-end passes split rings only, so those rows are split) and by the host kernel (`--net tap=,vhost=on`,
 * where /dev/vhost-net exists; split rings too). There the guest's doorbells are ioeventfds the back-end reads, so vireo never
 * sees them: a vhost-user row's notifications are the back-end's own count of kicks over its whole connection,
 * and a vhost-net row has none (NaN, null in JSON).
 */
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { VireoError } from "../src/errors.ts";
import { repoPath } from "../src/paths.ts";
import { Machine } from "../src/vmm/machine.ts";
import { microGuest } from "../src/vmm/micro-guest.ts";
import { connectionEnd, ProcessSet, until } from "./dpdk.ts";
import { type PerOp, runWorkload, scratchDisk, scratchTap, type WorkloadSpec } from "./io-workload.ts";
import { formatTable, median } from "./stats.ts";

/** Where a row's queues are served. */
export const SERVED_BY = ["vcpu-exit", "io-thread", "vhost-user", "vhost-net"] as const;
export type ServedBy = (typeof SERVED_BY)[number];

export interface VirtioBenchOptions {
  rounds: number;
  iterations?: number;
  json: boolean;
  /** Only rows served these ways (default: all). */
  servedBy?: ServedBy[];
}

export interface VirtioBenchRow {
  workload: "blk-read-4k" | "net-tx-1500";
  /**
   * Where the queues are served: in the vCPU's notify exit, on a data-plane thread woken by an ioeventfd, by
   * another process over vhost-user, or by the host kernel's vhost-net.
   */
  servedBy: ServedBy;
  /** Who counted the notifications: vireo (its exits and data plane), the vhost-user back-end, or nobody. */
  notificationsFrom: "vireo" | "back-end" | "unseen";
  ring: "split" | "packed";
  eventIdx: boolean;
  iterations: number;
  /** Medians over the rounds. */
  perOp: PerOp;
  /** Host µs per operation / PIO exit µs, both medians of this run. */
  hostPerPioExit: number;
  samples: PerOp[];
}

export interface VirtioBenchResult {
  rounds: number;
  pioExitUs: number;
  rows: VirtioBenchRow[];
  skipped: string[];
}

async function pioExitUs(iterations: number): Promise<number> {
  const { kernel, cmdline } = microGuest("micro:bench-pio", [String(iterations)]);
  const r = await new Machine({ kernel, cmdline, memMiB: 16, cpus: 1, serial: { kind: "none" } }).run();
  const a = r.markers.get(1);
  const b = r.markers.get(2);
  if (a === undefined || b === undefined)
    throw new VireoError("VIREO_BENCH_FAILED", "bench-pio gave no markers");
  return (b - a) / iterations / 1000;
}

function medianOp(samples: PerOp[]): PerOp {
  return {
    exits: median(samples.map((s) => s.exits)),
    interrupts: median(samples.map((s) => s.interrupts)),
    notifications: median(samples.map((s) => s.notifications)),
    hostUs: median(samples.map((s) => s.hostUs)),
  };
}

const VIREO_BIN = process.env.VIREO_BENCH_VIREO || repoPath("bin", "vireo");
/** Starting a process takes seconds in the emulated KVM host. */
const BACKEND_START_MS = 180_000;

/** Who counts a row's notifications follows from where its queues are served. */
function notificationsFrom(servedBy: ServedBy): VirtioBenchRow["notificationsFrom"] {
  if (servedBy === "vhost-user") return "back-end";
  return servedBy === "vhost-net" ? "unseen" : "vireo";
}

interface Config {
  row: Omit<VirtioBenchRow, "perOp" | "hostPerPioExit" | "samples" | "notificationsFrom">;
  spec: WorkloadSpec;
  /** A vhost-user back-end to start for each run: its `vireo vhost-user` arguments after the socket. */
  backend?: string[];
}

/**
 * One run of a configuration. With a back-end: `vireo vhost-user ... --once` on a fresh socket, the workload
 * pointed at it, and the back-end's kicks (from its connection-end line) as the notifications.
 */
async function runConfig(c: Config): Promise<PerOp> {
  if (!c.backend) {
    const perOp = await runWorkload(c.spec);
    // vhost-net: the kernel reads the doorbells; vireo's count (0) would say there were none.
    return notificationsFrom(c.row.servedBy) === "unseen" ? { ...perOp, notifications: Number.NaN } : perOp;
  }
  const dir = mkdtempSync(join(tmpdir(), "vireo-bench-vu-"));
  const socket = join(dir, "s.sock");
  const children = new ProcessSet();
  try {
    const [kind, ...rest] = c.backend as [string, ...string[]];
    const p = children.start(
      "vireo",
      VIREO_BIN,
      ["vhost-user", kind, "--socket", socket, "--once", ...rest],
      // Not boosted: the in-process rows' threads are not either.
      { boost: false },
    );
    await until(
      `the vireo vhost-user ${kind} socket`,
      () => existsSync(socket) && /listening on/.test(p.out.text),
      BACKEND_START_MS,
      () => p.out.text,
    );
    const spec: WorkloadSpec = c.spec.disk
      ? { ...c.spec, disk: { ...c.spec.disk, path: socket, vhostUser: true } }
      : { ...c.spec, net: { tap: "", vhostUser: socket, model: "virtio" } };
    const perOp = await runWorkload(spec);
    const { end } = await connectionEnd<{ kicks?: number }>(p, 60_000);
    return { ...perOp, notifications: (end.kicks ?? Number.NaN) / c.spec.iterations };
  } finally {
    children.killAll();
    rmSync(dir, { recursive: true, force: true });
  }
}

export async function benchVirtio(opts: VirtioBenchOptions): Promise<VirtioBenchResult> {
  const wanted = new Set<ServedBy>(opts.servedBy ?? SERVED_BY);
  const disk = scratchDisk(64);
  const tap = scratchTap();
  const skipped: string[] = [];
  try {
    const configs: Config[] = [];
    const vhostNet = existsSync("/dev/vhost-net");
    for (const ring of ["split", "packed"] as const) {
      for (const eventIdx of [false, true]) {
        const flags = [...(ring === "packed" ? ["packed"] : []), ...(eventIdx ? ["event-idx"] : [])];
        const blkN = opts.iterations ?? 2000;
        const netN = opts.iterations ?? 5000;
        const blkRow = { workload: "blk-read-4k", ring, eventIdx, iterations: blkN } as const;
        const netRow = { workload: "net-tx-1500", ring, eventIdx, iterations: netN } as const;
        const blkSpec = (iothread: boolean): WorkloadSpec => ({
          program: "bench-virtio-blk",
          args: flags,
          iterations: blkN,
          disk: { path: disk.path, readOnly: false, direct: false, iothread },
        });
        const netSpec = (net: WorkloadSpec["net"]): WorkloadSpec => ({
          program: "bench-virtio-net",
          args: ["1500", ...flags],
          iterations: netN,
          net,
        });
        for (const servedBy of ["vcpu-exit", "io-thread"] as const) {
          if (!wanted.has(servedBy)) continue;
          configs.push({
            row: { ...blkRow, servedBy },
            spec: blkSpec(servedBy === "io-thread"),
          });
        }
        if ("name" in tap && wanted.has("io-thread"))
          configs.push({
            row: { ...netRow, servedBy: "io-thread" },
            spec: netSpec({ tap: tap.name, model: "virtio" }),
          });
        // vireo's vhost-user front-end does not pass VIRTIO_F_RING_PACKED through: split rows only.
        if (wanted.has("vhost-user") && ring === "split") {
          configs.push({
            row: { ...blkRow, servedBy: "vhost-user" },
            spec: blkSpec(false),
            backend: ["blk", "--file", disk.path],
          });
          configs.push({
            row: { ...netRow, servedBy: "vhost-user" },
            spec: netSpec(undefined),
            backend: ["net", "--sink"],
          });
        }
        // The kernel's vhost-net serves split rings only (it offers no VIRTIO_F_RING_PACKED).
        if (wanted.has("vhost-net") && "name" in tap && vhostNet && ring === "split")
          configs.push({
            row: { ...netRow, servedBy: "vhost-net" },
            spec: netSpec({ tap: tap.name, model: "virtio", vhost: true }),
          });
      }
    }
    if (!("name" in tap) && (wanted.has("io-thread") || wanted.has("vhost-net")))
      skipped.push(`net-tx-1500 on a TAP (io-thread, vhost-net): ${tap.unavailable}`);
    if (wanted.has("vhost-user"))
      skipped.push("vhost-user, packed rings: vireo's vhost-user front-end passes split rings only");
    if (wanted.has("vhost-net") && !vhostNet)
      skipped.push("vhost-net: no /dev/vhost-net on this host (modprobe vhost_net)");
    else if (wanted.has("vhost-net"))
      skipped.push("vhost-net, packed rings: the kernel's vhost-net serves split rings only");
    const samples = configs.map(() => [] as PerOp[]);
    const pio: number[] = [];
    // Rounds interleave every configuration (A B C … A B C …), so drift on the host hits all of them alike.
    for (let round = 0; round < opts.rounds; round++) {
      pio.push(await pioExitUs(20_000));
      for (const [i, c] of configs.entries()) {
        samples[i]?.push(await runConfig(c));
        if (!opts.json && process.stderr.isTTY)
          process.stderr.write(`\rround ${round + 1}/${opts.rounds}: ${i + 1}/${configs.length} `);
      }
    }
    if (!opts.json && process.stderr.isTTY) process.stderr.write("\n");
    const pioUs = median(pio);
    const rows = configs.map((c, i) => {
      const s = samples[i] ?? [];
      const perOp = medianOp(s);
      return {
        ...c.row,
        notificationsFrom: notificationsFrom(c.row.servedBy),
        perOp,
        hostPerPioExit: perOp.hostUs / pioUs,
        samples: s,
      };
    });
    return { rounds: opts.rounds, pioExitUs: pioUs, rows, skipped };
  } finally {
    disk.remove();
    if ("remove" in tap) tap.remove();
  }
}

export function formatVirtio(r: VirtioBenchResult): string {
  const rows = r.rows.map((row) => [
    row.workload,
    row.servedBy,
    row.ring,
    row.eventIdx ? "yes" : "no",
    row.perOp.exits.toFixed(3),
    row.perOp.interrupts.toFixed(3),
    Number.isNaN(row.perOp.notifications)
      ? "unseen"
      : `${row.perOp.notifications.toFixed(3)}${row.notificationsFrom === "back-end" ? "*" : ""}`,
    row.perOp.hostUs.toFixed(2),
    `${row.hostPerPioExit.toFixed(2)}x`,
  ]);
  return [
    `per operation, median of ${r.rounds} interleaved rounds; PIO exit round trip in this run: ${r.pioExitUs.toFixed(2)} µs`,
    "(the micro guest's drivers poll the used ring and ask for no interrupts, so interrupts stay 0;",
    " * the vhost-user back-end's kicks over its whole connection: vireo never sees those doorbells, nor vhost-net's)",
    formatTable(
      [
        "workload",
        "served by",
        "ring",
        "EVENT_IDX",
        "exits",
        "interrupts",
        "notifications",
        "host µs",
        "host/PIO exit",
      ],
      rows,
    ),
    ...r.skipped.map((s) => `skipped: ${s}`),
  ].join("\n");
}
