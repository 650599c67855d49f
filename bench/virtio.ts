/**
 * `vireo bench virtio`: what one virtio operation costs, measured with the micro guest's drivers — a 4 KiB
 * virtio-blk read (bench-virtio-blk: one request at a time, served in the vCPU's own notify exit, or with
 * `iothread` on a data-plane thread woken by an ioeventfd) and a 1500-byte
 * virtio-net transmit (bench-virtio-net: the ring kept full, served by the data-plane thread woken by an
 * ioeventfd) — each with and without VIRTIO_F_RING_EVENT_IDX, on split and packed rings. Per operation: vCPU
 * exits, interrupts, guest notifications (doorbells the device saw) and host microseconds between the guest's
 * markers. Host time is also given as a multiple of a PIO exit round trip measured in the same run (bench-pio),
 * because absolute times on these hosts mean little.
 */
import { VireoError } from "../src/errors.ts";
import { Machine } from "../src/vmm/machine.ts";
import { microGuest } from "../src/vmm/micro-guest.ts";
import { type PerOp, runWorkload, scratchDisk, scratchTap, type WorkloadSpec } from "./io-workload.ts";
import { formatTable, median } from "./stats.ts";

export interface VirtioBenchOptions {
  rounds: number;
  iterations?: number;
  json: boolean;
}

export interface VirtioBenchRow {
  workload: "blk-read-4k" | "net-tx-1500";
  /** Where the queues are served: in the vCPU's notify exit, or on a data-plane thread woken by an ioeventfd. */
  servedBy: "vcpu-exit" | "io-thread";
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

export async function benchVirtio(opts: VirtioBenchOptions): Promise<VirtioBenchResult> {
  const disk = scratchDisk(64);
  const tap = scratchTap();
  const skipped: string[] = [];
  try {
    const configs: Array<{
      row: Omit<VirtioBenchRow, "perOp" | "hostPerPioExit" | "samples">;
      spec: WorkloadSpec;
    }> = [];
    for (const ring of ["split", "packed"] as const) {
      for (const eventIdx of [false, true]) {
        const flags = [...(ring === "packed" ? ["packed"] : []), ...(eventIdx ? ["event-idx"] : [])];
        const blkN = opts.iterations ?? 2000;
        for (const servedBy of ["vcpu-exit", "io-thread"] as const) {
          configs.push({
            row: { workload: "blk-read-4k", servedBy, ring, eventIdx, iterations: blkN },
            spec: {
              program: "bench-virtio-blk",
              args: flags,
              iterations: blkN,
              disk: { path: disk.path, readOnly: false, direct: false, iothread: servedBy === "io-thread" },
            },
          });
        }
        if ("name" in tap) {
          const netN = opts.iterations ?? 5000;
          configs.push({
            row: { workload: "net-tx-1500", servedBy: "io-thread", ring, eventIdx, iterations: netN },
            spec: {
              program: "bench-virtio-net",
              args: ["1500", ...flags],
              iterations: netN,
              net: { tap: tap.name, model: "virtio" },
            },
          });
        }
      }
    }
    if (!("name" in tap)) skipped.push(`net-tx-1500: ${tap.unavailable}`);
    const samples = configs.map(() => [] as PerOp[]);
    const pio: number[] = [];
    // Rounds interleave every configuration (A B C … A B C …), so drift on the host hits all of them alike.
    for (let round = 0; round < opts.rounds; round++) {
      pio.push(await pioExitUs(20_000));
      for (const [i, c] of configs.entries()) {
        samples[i]?.push(await runWorkload(c.spec));
        if (!opts.json && process.stderr.isTTY)
          process.stderr.write(`\rround ${round + 1}/${opts.rounds}: ${i + 1}/${configs.length} `);
      }
    }
    if (!opts.json && process.stderr.isTTY) process.stderr.write("\n");
    const pioUs = median(pio);
    const rows = configs.map((c, i) => {
      const s = samples[i] ?? [];
      const perOp = medianOp(s);
      return { ...c.row, perOp, hostPerPioExit: perOp.hostUs / pioUs, samples: s };
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
    row.perOp.notifications.toFixed(3),
    row.perOp.hostUs.toFixed(2),
    `${row.hostPerPioExit.toFixed(2)}x`,
  ]);
  return [
    `per operation, median of ${r.rounds} interleaved rounds; PIO exit round trip in this run: ${r.pioExitUs.toFixed(2)} µs`,
    "(the micro guest's drivers poll the used ring and ask for no interrupts, so interrupts stay 0)",
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
