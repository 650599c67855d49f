/**
 * `vireo bench exits`: the round trip of a guest port-I/O exit and an MMIO exit through vireo, against the same
 * guest loop under the C reference VMM (bench/ref), in the same run, rounds interleaved (vireo, C, vireo, C …).
 *
 * The micro guest's bench-pio / bench-mmio programs run at CPL 3 (natively even under PVM): marker 1, N writes
 * to the test device, marker 2. Each VMM timestamps the markers on the host; per-exit time is the interval / N.
 * The "+ioeventfd" rows serve the same writes with an ioeventfd in both VMMs: the exit is handled in the kernel
 * and never reaches userspace, which is what a vhost doorbell costs.
 */
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { VireoError } from "../src/errors.ts";
import { repoPath } from "../src/paths.ts";
import { Machine } from "../src/vmm/machine.ts";
import { microGuest } from "../src/vmm/micro-guest.ts";
import { formatTable, median } from "./stats.ts";

export const REF_VMM = repoPath("bench", "ref", "build", "ref-vmm");

export interface ExitsOptions {
  rounds: number;
  iterations?: number;
  json: boolean;
}

interface KindResult {
  kind: string;
  vireoUs: number[];
  refUs: number[];
  medianVireoUs: number;
  medianRefUs: number;
  ratio: number;
}

const CONFIGURATIONS = [
  { kind: "pio", program: "bench-pio", ioeventfd: false },
  { kind: "mmio", program: "bench-mmio", ioeventfd: false },
  { kind: "pio+ioeventfd", program: "bench-pio", ioeventfd: true },
  { kind: "mmio+ioeventfd", program: "bench-mmio", ioeventfd: true },
] as const;

async function vireoRound(program: string, iterations: number, ioeventfd: boolean): Promise<number> {
  const { kernel, cmdline } = microGuest(`micro:${program}`, [String(iterations)]);
  const result = await new Machine({
    kernel,
    cmdline,
    memMiB: 16,
    cpus: 1,
    serial: { kind: "none" },
    timeoutMs: 120_000,
    testDevice: { doorbellIoeventfd: ioeventfd },
  }).run();
  const start = result.markers.get(1);
  const stop = result.markers.get(2);
  if (
    result.outcome !== "guest-exit" ||
    result.guestCode !== 0 ||
    start === undefined ||
    stop === undefined
  ) {
    throw new VireoError(
      "VIREO_BENCH_FAILED",
      `vireo run of ${program} failed: ${result.outcome} ${result.message ?? ""}`,
    );
  }
  return (stop - start) / iterations / 1000;
}

function refRound(program: string, iterations: number, ioeventfd: boolean): number {
  const { kernel, cmdline } = microGuest(`micro:${program}`, [String(iterations)]);
  const args = ["--mem", "16", ...(ioeventfd ? ["--ioeventfd"] : []), kernel, cmdline];
  const r = spawnSync(REF_VMM, args, { encoding: "utf8", timeout: 120_000 });
  const line = r.stderr.trim().split("\n").pop() ?? "";
  if (r.status !== 0 || !line.startsWith("{")) {
    throw new VireoError(
      "VIREO_BENCH_FAILED",
      `ref-vmm run of ${program} failed (status ${r.status}): ${r.stderr.trim()}`,
    );
  }
  return (JSON.parse(line) as { markerNs: number }).markerNs / iterations / 1000;
}

export async function benchExits(
  opts: ExitsOptions,
): Promise<{ iterations: number; rounds: number; results: KindResult[] }> {
  if (!existsSync(REF_VMM))
    throw new VireoError(
      "VIREO_BENCH_REF_MISSING",
      `the C reference VMM is not built (${REF_VMM}); run: npm run build:ref`,
    );
  const iterations = opts.iterations ?? 20_000;
  const results: KindResult[] = [];
  for (const { kind, program, ioeventfd } of CONFIGURATIONS) {
    const vireoUs: number[] = [];
    const refUs: number[] = [];
    for (let round = 0; round < opts.rounds; round++) {
      vireoUs.push(await vireoRound(program, iterations, ioeventfd));
      refUs.push(refRound(program, iterations, ioeventfd));
      if (!opts.json && process.stderr.isTTY)
        process.stderr.write(`\r${kind}: round ${round + 1}/${opts.rounds}`);
    }
    if (!opts.json && process.stderr.isTTY) process.stderr.write("\n");
    const mv = median(vireoUs);
    const mr = median(refUs);
    results.push({ kind, vireoUs, refUs, medianVireoUs: mv, medianRefUs: mr, ratio: mv / mr });
  }
  return { iterations, rounds: opts.rounds, results };
}

export function formatExits(r: Awaited<ReturnType<typeof benchExits>>): string {
  const rows = r.results.map((k) => [
    k.kind,
    k.medianVireoUs.toFixed(2),
    k.medianRefUs.toFixed(2),
    `${k.ratio.toFixed(2)}x`,
  ]);
  return [
    `exit round trip, median of ${r.rounds} interleaved rounds of ${r.iterations} guest writes each`,
    formatTable(["exit", "vireo µs", "C ref µs", "vireo/C"], rows),
  ].join("\n");
}
