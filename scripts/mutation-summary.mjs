// Prints the mutation score of each family from its Stryker JSON report (reports/mutation/FAMILY/mutation.json).
// Arguments: FAMILY[:SECONDS[:failed]]... as scripts/mutation.sh passes them; with none, every family that has a
// report. Score = (killed + timeout) / (killed + timeout + survived + no coverage), as Stryker counts it;
// "covered" leaves the mutants no test reached out of the denominator.
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

const root = join(import.meta.dirname, "..", "reports", "mutation");
let args = process.argv.slice(2);
if (args.length === 0 && existsSync(root)) {
  args = readdirSync(root).filter((f) => existsSync(join(root, f, "mutation.json")));
}

const rows = [];
let bad = false;
for (const arg of args) {
  const [family, seconds, failed] = arg.split(":");
  const file = join(root, family, "mutation.json");
  if (failed || !existsSync(file)) {
    rows.push([family, "failed", "", "", "", "", "", "", "", seconds ?? ""]);
    bad = true;
    continue;
  }
  const report = JSON.parse(readFileSync(file, "utf8"));
  const n = { Killed: 0, Timeout: 0, Survived: 0, NoCoverage: 0, CompileError: 0, RuntimeError: 0, Ignored: 0 };
  for (const f of Object.values(report.files)) {
    for (const m of f.mutants) n[m.status] = (n[m.status] ?? 0) + 1;
  }
  const detected = n.Killed + n.Timeout;
  const valid = detected + n.Survived + n.NoCoverage;
  const pct = (a, b) => (b === 0 ? "n/a" : ((100 * a) / b).toFixed(2));
  rows.push([
    family,
    String(valid),
    String(n.Killed),
    String(n.Timeout),
    String(n.Survived),
    String(n.NoCoverage),
    String(n.CompileError + n.RuntimeError),
    pct(detected, valid),
    pct(detected, detected + n.Survived),
    seconds === undefined ? "" : `${seconds} s`,
  ]);
}

const head = ["family", "mutants", "killed", "timeout", "survived", "no cov", "errors", "score %", "covered %", "time"];
const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
const line = (r) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ");
console.log(`mutation: ${line(head)}`);
for (const r of rows) console.log(`mutation: ${line(r)}`);
process.exit(bad ? 1 : 0);
