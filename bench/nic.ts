/**
 * `vireo bench nic`: the same micro-guest transmit workload over the emulated e1000 (bench-e1000: legacy
 * descriptors, a TDT register write per batch, every register access an exit) and over virtio-net
 * (bench-virtio-net: split ring with EVENT_IDX, doorbells through an ioeventfd to the data-plane thread), both to
 * a TAP. Per packet: vCPU exits, interrupts, host microseconds, and packets per second; plus the e1000/virtio
 * ratio of each, rounds interleaved.
 */

import { VireoError } from "../src/errors.ts";
import { type PerOp, runWorkload, scratchTap, type WorkloadSpec } from "./io-workload.ts";
import { formatTable, median } from "./stats.ts";

export interface NicBenchOptions {
  rounds: number;
  iterations?: number;
  json: boolean;
}

export interface NicBenchRow {
  nic: "e1000" | "virtio-net";
  frameBytes: number;
  iterations: number;
  perPacket: PerOp;
  packetsPerSecond: number;
  samples: PerOp[];
}

export interface NicBenchResult {
  rounds: number;
  rows: NicBenchRow[];
  /** e1000 / virtio-net, per column (medians). */
  ratio: { exits: number; hostUs: number; packetsPerSecond: number };
}

export async function benchNic(opts: NicBenchOptions): Promise<NicBenchResult> {
  const tap = scratchTap();
  if (!("name" in tap)) throw new VireoError("VIREO_BENCH_UNAVAILABLE", `bench nic: ${tap.unavailable}`);
  const n = opts.iterations ?? 5000;
  const frameBytes = 1500;
  const configs: Array<{ nic: NicBenchRow["nic"]; spec: WorkloadSpec }> = [
    {
      nic: "e1000",
      spec: {
        program: "bench-e1000",
        args: [String(frameBytes)],
        iterations: n,
        net: { tap: tap.name, model: "e1000" },
      },
    },
    {
      nic: "virtio-net",
      spec: {
        program: "bench-virtio-net",
        args: [String(frameBytes), "event-idx"],
        iterations: n,
        net: { tap: tap.name, model: "virtio" },
      },
    },
  ];
  try {
    const samples = configs.map(() => [] as PerOp[]);
    for (let round = 0; round < opts.rounds; round++) {
      for (const [i, c] of configs.entries()) {
        samples[i]?.push(await runWorkload(c.spec));
        if (!opts.json && process.stderr.isTTY) process.stderr.write(`\rround ${round + 1}/${opts.rounds} `);
      }
    }
    if (!opts.json && process.stderr.isTTY) process.stderr.write("\n");
    const rows = configs.map((c, i): NicBenchRow => {
      const s = samples[i] ?? [];
      const perPacket: PerOp = {
        exits: median(s.map((x) => x.exits)),
        interrupts: median(s.map((x) => x.interrupts)),
        notifications: median(s.map((x) => x.notifications)),
        hostUs: median(s.map((x) => x.hostUs)),
      };
      return {
        nic: c.nic,
        frameBytes,
        iterations: n,
        perPacket,
        packetsPerSecond: 1e6 / perPacket.hostUs,
        samples: s,
      };
    });
    const [e, v] = rows as [NicBenchRow, NicBenchRow];
    return {
      rounds: opts.rounds,
      rows,
      ratio: {
        exits: e.perPacket.exits / v.perPacket.exits,
        hostUs: e.perPacket.hostUs / v.perPacket.hostUs,
        packetsPerSecond: e.packetsPerSecond / v.packetsPerSecond,
      },
    };
  } finally {
    tap.remove();
  }
}

export function formatNic(r: NicBenchResult): string {
  const rows = r.rows.map((row) => [
    row.nic,
    String(row.frameBytes),
    row.perPacket.exits.toFixed(3),
    row.perPacket.interrupts.toFixed(3),
    row.perPacket.hostUs.toFixed(2),
    row.packetsPerSecond.toFixed(0),
  ]);
  rows.push([
    "e1000/virtio",
    "",
    `${r.ratio.exits.toFixed(1)}x`,
    "",
    `${r.ratio.hostUs.toFixed(1)}x`,
    `${r.ratio.packetsPerSecond.toFixed(2)}x`,
  ]);
  return [
    `per packet sent to a TAP, median of ${r.rounds} interleaved rounds of ${r.rows[0]?.iterations} packets`,
    formatTable(["nic", "bytes", "exits", "interrupts", "host µs", "packets/s"], rows),
  ].join("\n");
}
