/**
 * Reliability of the emulated KVM host: boots a fresh emulated host N times in a row, each running one test file
 * (default: the slow tier's Linux boot test), and reports every run and a summary. A run that hangs is caught by
 * the host's watchdog (no output from the tests for --idle seconds) and counted as a hang, not retried.
 *
 *   node --import tsx test/realkvm/repeat.ts [--runs 20] [--idle 300] [--json] [FILE]
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { consoleTail, makeRunDir, runInEmulatedHost } from "../../src/emulated-host/host.ts";
import { BUILD_DIR_NAME, repoPath } from "../../src/paths.ts";

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { runs: { type: "string" }, idle: { type: "string" }, json: { type: "boolean" } },
});
const runs = Number(values.runs ?? 20);
const idleS = Number(values.idle ?? 300);
const file = positionals[0] ?? "test/slow/linux-boot.test.ts";
const compiled = join(BUILD_DIR_NAME, file.replace(/\.ts$/, ".js"));

interface Run {
  run: number;
  outcome: "pass" | "fail" | "hang" | "no-status";
  bootS: number;
  wallS: number;
  tests?: string;
  failure?: string;
}
const results: Run[] = [];
for (let i = 1; i <= runs; i++) {
  const runDir = makeRunDir();
  const report = join(runDir, "report.tap");
  let output = "";
  const r = await runInEmulatedHost({
    runDir,
    script: `node --test --test-reporter=spec --test-reporter-destination=stdout --test-reporter=tap --test-reporter-destination=${report} ${compiled}`,
    cwd: repoPath(),
    idleTimeoutMs: idleS * 1000,
    onStdout: (d) => {
      output += d;
    },
    onStderr: (d) => {
      output += d;
    },
  });
  const tap = existsSync(report) ? readFileSync(report, "utf8") : "";
  const pass = /^# pass (\d+)$/m.exec(tap)?.[1];
  const fail = /^# fail (\d+)$/m.exec(tap)?.[1];
  const outcome: Run["outcome"] =
    r.status === null
      ? r.failure?.includes("printed nothing")
        ? "hang"
        : "no-status"
      : r.status === 0
        ? "pass"
        : "fail";
  const one: Run = {
    run: i,
    outcome,
    bootS: Math.round((r.bootMs ?? 0) / 100) / 10,
    wallS: Math.round(r.wallMs / 100) / 10,
    tests: pass === undefined ? undefined : `${pass} passed, ${fail} failed`,
    failure: r.status === 0 ? undefined : (r.failure ?? consoleTail(output, 20)),
  };
  results.push(one);
  if (one.outcome !== "pass") {
    // The whole console of a run that failed and what its tests printed, for its diagnosis (a soft-lockup
    // report carries a stack trace).
    mkdirSync(repoPath(".cache", "test-reports"), { recursive: true });
    const saved = repoPath(".cache", "test-reports", `repeat-run-${i}.console`);
    writeFileSync(saved, `${r.console}\n--- the tests' output ---\n${output}`);
    one.failure = `${one.failure ?? ""}\n  console: ${saved}`;
  }
  r.cleanup();
  if (!values.json)
    process.stdout.write(
      `run ${i}/${runs}: ${one.outcome}, boot ${one.bootS} s, wall ${one.wallS} s${one.tests ? `, ${one.tests}` : ""}${one.failure ? `\n  ${one.failure}` : ""}\n`,
    );
}
const walls = results.map((r) => r.wallS).sort((a, b) => a - b);
const boots = results.map((r) => r.bootS).sort((a, b) => a - b);
const median = (xs: number[]) => xs[Math.floor(xs.length / 2)] ?? 0;
const summary = {
  file,
  runs,
  passed: results.filter((r) => r.outcome === "pass").length,
  hangs: results.filter((r) => r.outcome === "hang").length,
  bootMedianS: median(boots),
  wallMedianS: median(walls),
  wallMaxS: walls[walls.length - 1] ?? 0,
};
process.stdout.write(
  values.json
    ? `${JSON.stringify({ summary, results }, null, 2)}\n`
    : `${summary.passed} of ${runs} runs passed, ${summary.hangs} hung; boot median ${summary.bootMedianS} s; wall median ${summary.wallMedianS} s, max ${summary.wallMaxS} s\n`,
);
process.exit(summary.passed === runs ? 0 : 1);
