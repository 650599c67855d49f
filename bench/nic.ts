/**
 * `vireo bench nic`: the same micro-guest transmit workload over the emulated e1000 (bench-e1000: legacy
 * descriptors, a TDT register write per batch, every register access an exit) and over virtio-net
 * (bench-virtio-net: split ring with EVENT_IDX, doorbells through an ioeventfd to the data-plane thread), both to
 * a TAP, in two shapes: one frame per doorbell (BURST 1: a TDT write, or a notification unless suppressed, per
 * frame, as a driver under light load does) and the ring kept full (BURST 0: one doorbell for up to a ring of
 * frames). Per packet: vCPU exits, interrupts, host microseconds, and packets per second; plus the e1000/virtio
 * ratio of each shape, rounds interleaved. Where the host has /dev/vhost-net, virtio-net once more with its rings
 * served by the kernel (`--net tap=NAME,vhost=on`): the same guest program, no frame through vireo.
 */

import { existsSync } from "node:fs";
import { VireoError } from "../src/errors.ts";
import { type PerOp, runWorkload, scratchTap, type WorkloadSpec } from "./io-workload.ts";
import { formatTable, median } from "./stats.ts";

export interface NicBenchOptions {
  rounds: number;
  iterations?: number;
  json: boolean;
}

export interface NicBenchRow {
  nic: "e1000" | "virtio-net" | "vhost-net";
  /** Frames per doorbell at most; 0: as many as the ring holds. */
  burst: number;
  frameBytes: number;
  iterations: number;
  perPacket: PerOp;
  packetsPerSecond: number;
  samples: PerOp[];
}

export interface NicBenchResult {
  rounds: number;
  rows: NicBenchRow[];
  /** e1000 / virtio-net per burst shape, per column (medians). */
  ratios: Array<{ burst: number; exits: number; hostUs: number; packetsPerSecond: number }>;
}

export async function benchNic(opts: NicBenchOptions): Promise<NicBenchResult> {
  const tap = scratchTap();
  if (!("name" in tap)) throw new VireoError("VIREO_BENCH_UNAVAILABLE", `bench nic: ${tap.unavailable}`);
  const n = opts.iterations ?? 5000;
  const frameBytes = 1500;
  const configs: Array<{ nic: NicBenchRow["nic"]; burst: number; spec: WorkloadSpec }> = [];
  for (const burst of [1, 0]) {
    configs.push({
      nic: "e1000",
      burst,
      spec: {
        program: "bench-e1000",
        args: [String(frameBytes), String(burst)],
        iterations: n,
        net: { tap: tap.name, model: "e1000" },
      },
    });
    configs.push({
      nic: "virtio-net",
      burst,
      spec: {
        program: "bench-virtio-net",
        args: [String(frameBytes), String(burst), "event-idx"],
        iterations: n,
        net: { tap: tap.name, model: "virtio" },
      },
    });
    if (existsSync("/dev/vhost-net")) {
      configs.push({
        nic: "vhost-net",
        burst,
        spec: {
          program: "bench-virtio-net",
          args: [String(frameBytes), String(burst), "event-idx"],
          iterations: n,
          net: { tap: tap.name, model: "virtio", vhost: true },
        },
      });
    }
  }
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
        burst: c.burst,
        frameBytes,
        iterations: n,
        perPacket,
        packetsPerSecond: 1e6 / perPacket.hostUs,
        samples: s,
      };
    });
    const ratios = [1, 0].map((burst) => {
      const e = rows.find((r) => r.nic === "e1000" && r.burst === burst) as NicBenchRow;
      const v = rows.find((r) => r.nic === "virtio-net" && r.burst === burst) as NicBenchRow;
      return {
        burst,
        exits: e.perPacket.exits / v.perPacket.exits,
        hostUs: e.perPacket.hostUs / v.perPacket.hostUs,
        packetsPerSecond: e.packetsPerSecond / v.packetsPerSecond,
      };
    });
    return { rounds: opts.rounds, rows, ratios };
  } finally {
    tap.remove();
  }
}

export function formatNic(r: NicBenchResult): string {
  const shape = (burst: number) => (burst === 0 ? "ring full" : `${burst}/doorbell`);
  const rows = r.rows.map((row) => [
    row.nic,
    shape(row.burst),
    String(row.frameBytes),
    row.perPacket.exits.toFixed(3),
    row.perPacket.interrupts.toFixed(3),
    row.perPacket.hostUs.toFixed(2),
    row.packetsPerSecond.toFixed(0),
  ]);
  for (const q of r.ratios) {
    rows.push([
      "e1000/virtio",
      shape(q.burst),
      "",
      // A ratio over (nearly) zero exits says nothing: virtio-net's doorbells do not exit.
      Number.isFinite(q.exits) && q.exits < 1000 ? `${q.exits.toFixed(1)}x` : "-",
      "",
      `${q.hostUs.toFixed(2)}x`,
      `${q.packetsPerSecond.toFixed(2)}x`,
    ]);
  }
  return [
    `per packet sent to a TAP, median of ${r.rounds} interleaved rounds of ${r.rows[0]?.iterations} packets`,
    formatTable(["nic", "frames", "bytes", "exits", "interrupts", "host µs", "packets/s"], rows),
  ].join("\n");
}
