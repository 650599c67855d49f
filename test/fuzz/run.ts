/**
 * The hostile-driver fuzz campaign (see engine.ts, virtio.ts, e1000.ts):
 *
 *   npm run fuzz -- --family blk --cases 1000000 [--seed N] [--slow-ms 50] [--json FILE]
 *   npm run fuzz -- --family all --cases 10000
 *   npm run fuzz -- --family net --replay SEED        # one case, every call traced with its CPU time
 *   npm run fuzz -- --merge A.json B.json ... [--json OUT]   # sums the reports of a campaign run in parts
 *
 * Families: blk, net, console, rng (each device model through virtio-pci), pci (the transport's registers, a
 * random model per case), e1000. Prints a table and the JSON report; exits 1 if any case failed.
 */
import { readFileSync, writeFileSync } from "node:fs";
import { e1000Family } from "./e1000.ts";
import { type Family, type FamilyReport, mergeReports, replay, runCampaign } from "./engine.ts";
import { virtioFamily } from "./virtio.ts";

export const FAMILIES = ["blk", "net", "console", "rng", "pci", "e1000"] as const;

export function family(name: string, opts: { maxDrainSlices?: number } = {}): Family {
  if (name === "e1000") return e1000Family({ maxPolls: opts.maxDrainSlices });
  if (name === "blk" || name === "net" || name === "console" || name === "rng" || name === "pci") {
    return virtioFamily(name, { limits: { maxDrainSlices: opts.maxDrainSlices ?? 4096 } });
  }
  throw new Error(`no fuzz family '${name}' (${FAMILIES.join(", ")}, all)`);
}

function fmt(n: number): string {
  return n.toLocaleString("en-US");
}

/** The per-family table, as Markdown. */
export function table(reports: FamilyReport[]): string {
  const rows = [
    "| family | cases | outcomes | failures | chains / frames served | slices / polls | most work in one slice or call | slowest call µs (CPU) | seed of slowest | cases/s |",
    "|---|---|---|---|---|---|---|---|---|---|",
  ];
  for (const r of reports) {
    const outcomes = Object.entries(r.outcomes)
      .sort((a, b) => b[1] - a[1])
      .map(([k, v]) => `${k} ${fmt(v)}`)
      .join(", ");
    const served =
      r.family === "e1000"
        ? (r.events["tx frames"] ?? 0) + (r.events["rx frames"] ?? 0)
        : (r.events.chains ?? 0);
    const most =
      r.family === "e1000"
        ? `${fmt(r.maxSliceBytes)} B, ${fmt(r.maxSliceChains)} frames`
        : `${fmt(r.maxSliceBytes)} B, ${fmt(r.maxSliceChains)} chains, ${fmt(r.maxSliceDescriptors ?? 0)} descriptors`;
    rows.push(
      `| ${r.family} | ${fmt(r.cases)} | ${outcomes} | ${r.failures} | ${fmt(served)} | ${fmt(r.slices)} | ${most} | ${Math.round(r.slowestUs)} | 0x${r.slowestSeed.toString(16)} | ${r.casesPerSecond.toFixed(0)} |`,
    );
  }
  return rows.join("\n");
}

function main(argv: string[]): number {
  if (argv[0] === "--merge") {
    const files = argv.slice(1).filter((a, i, all) => a !== "--json" && all[i - 1] !== "--json");
    const outAt = argv.indexOf("--json");
    const parts = files.flatMap(
      (f) => (JSON.parse(readFileSync(f, "utf8")) as { reports: FamilyReport[] }).reports,
    );
    const reports = mergeReports(parts);
    console.log(table(reports));
    const out = { merged: files, reports };
    console.log(JSON.stringify(out, null, 2));
    if (outAt >= 0) writeFileSync(argv[outAt + 1] as string, `${JSON.stringify(out, null, 2)}\n`);
    return reports.some((r) => r.failures > 0) ? 1 : 0;
  }
  const args = new Map<string, string>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (!a.startsWith("--")) throw new Error(`unexpected argument ${a}`);
    const v = argv[i + 1];
    if (v === undefined || v.startsWith("--")) args.set(a.slice(2), "true");
    else {
      args.set(a.slice(2), v);
      i++;
    }
  }
  const num = (k: string, d: number): number => {
    const v = args.get(k);
    if (v === undefined) return d;
    const n = Number(v);
    if (!Number.isFinite(n)) throw new Error(`--${k} ${v} is not a number`);
    return n;
  };
  const famArg = args.get("family") ?? "all";
  const names = famArg === "all" ? [...FAMILIES] : famArg.split(",");
  const slowMs = num("slow-ms", 50);
  const maxDrainSlices = num("max-slices", 4096);
  if (args.has("replay")) {
    const seed = Number(args.get("replay")) >>> 0;
    const name = names[0] as string;
    const r = replay(family(name, { maxDrainSlices }), seed, slowMs, (line) => console.log(line));
    console.log(JSON.stringify(r, null, 2));
    return r.failures.length > 0 ? 1 : 0;
  }
  const seed = num("seed", 1) >>> 0;
  const cases = num("cases", 10000);
  const jsonPath = args.get("json");
  const reports: FamilyReport[] = [];
  const started = new Date().toISOString();
  for (const name of names) {
    const rep = runCampaign(family(name, { maxDrainSlices }), {
      seed,
      cases,
      slowMs,
      startIndex: num("start", 0),
      maxFailures: num("max-failures", 1000),
      progress: (r) => {
        process.stderr.write(
          `fuzz ${r.family}: ${fmt(r.cases)} cases, ${r.failures} failing, ${r.casesPerSecond.toFixed(0)}/s, ${Math.round(r.seconds)} s\n`,
        );
        if (jsonPath)
          writeFileSync(
            jsonPath,
            `${JSON.stringify({ started, partial: true, reports: [...reports, r] }, null, 2)}\n`,
          );
      },
    });
    reports.push(rep);
    for (const f of rep.failing.slice(0, 10)) {
      console.log(
        `FAILING ${rep.family} case ${f.index} seed 0x${f.seed.toString(16)}: ${f.failures.map((x) => `${x.kind}: ${x.detail}`).join("; ")}`,
      );
      console.log(`  replay: npm run fuzz -- --family ${rep.family} --replay 0x${f.seed.toString(16)}`);
    }
  }
  console.log(table(reports));
  const out = {
    started,
    finished: new Date().toISOString(),
    command: `npm run fuzz -- ${argv.join(" ")}`,
    node: process.version,
    reports,
  };
  console.log(JSON.stringify(out, null, 2));
  if (jsonPath) writeFileSync(jsonPath, `${JSON.stringify(out, null, 2)}\n`);
  return reports.some((r) => r.failures > 0) ? 1 : 0;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  process.exitCode = main(process.argv.slice(2));
}
