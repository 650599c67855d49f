/**
 * Runs one KVM test tier (test/kvm, test/slow; test/emulated, which boots the emulated host itself) where KVM is: directly on this host when its /dev/kvm can serve
 * the tier, otherwise inside one emulated KVM host (QEMU TCG with kvm_amd) for the whole tier, from the compiled
 * JavaScript. Either way node's test runner reports each test as usual, a TAP copy goes to
 * .cache/test-reports/TIER.tap, and the tier fails when it ran no test or skipped any (VIREO_ALLOW_SKIPS=1
 * allows skips, for a machine that cannot run some of them).
 *
 *   node --import tsx test/realkvm/tier.ts emulated|kvm|slow [FILE...]
 * VIREO_TIER_HOST=direct|emulated forces where it runs.
 *
 * A test file whose source has the line `vireo-tier: native` needs no KVM (QEMU under TCG is the VMM in it): it
 * runs directly on this host even when the rest of the tier goes to the emulated host, where it would be
 * emulation nested in emulation (minutes instead of seconds). Its results count with the tier's.
 */
import { spawn, spawnSync } from "node:child_process";
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { availableParallelism } from "node:os";
import { join, relative } from "node:path";
import {
  consoleTail,
  emulatedHostUnavailable,
  makeRunDir,
  runInEmulatedHost,
} from "../../src/emulated-host/host.ts";
import { KvmSystem } from "../../src/kvm/system.ts";
import { BUILD_DIR_NAME, repoPath } from "../../src/paths.ts";

const TIERS = {
  // The emulated host's own tests boot QEMU from here: always direct.
  emulated: { canRunDirectly: () => true },
  kvm: { canRunDirectly: () => KvmSystem.available() },
  // Linux guests need real (VMX/SVM) KVM: under PVM their supervisor code runs emulated.
  slow: { canRunDirectly: () => KvmSystem.available() && !KvmSystem.isPvm() },
} as const;

const [tier, ...only] = process.argv.slice(2);
if (tier !== "kvm" && tier !== "slow" && tier !== "emulated") {
  process.stderr.write("usage: tier.ts emulated|kvm|slow [FILE...]\n");
  process.exit(2);
}
const files = (
  only.length
    ? only
    : readdirSync(repoPath("test", tier))
        .filter((f) => f.endsWith(".test.ts"))
        .sort()
        .map((f) => join("test", tier, f))
).map((f) => relative(repoPath(), repoPath(f)));
const reports = repoPath(".cache", "test-reports");
mkdirSync(reports, { recursive: true });
const report = join(reports, `${tier}.tap`);
const nodeTestArgs = (out: string) => [
  "--test",
  "--test-concurrency=1",
  "--test-reporter=spec",
  "--test-reporter-destination=stdout",
  "--test-reporter=tap",
  `--test-reporter-destination=${out}`,
];

/**
 * How long a tier's emulated host may print nothing before it is killed. node's spec reporter prints a test only
 * when it ends, so this must exceed the longest test's own time-out (LINUX_TEST_TIMEOUT_MS, 600 s): a stuck test
 * is then reported by itself, with its output, instead of the whole host being killed without a word.
 */
const TIER_SILENCE_MS = 720_000;
const forced = process.env.VIREO_TIER_HOST;
const direct = forced ? forced === "direct" : TIERS[tier].canRunDirectly();
const started = Date.now();
const nativeFiles = direct
  ? []
  : files.filter((f) => /^[\s*/]*vireo-tier: native$/m.test(readFileSync(repoPath(f), "utf8")));
const kvmFiles = files.filter((f) => !nativeFiles.includes(f));
const nativeReport = join(reports, `${tier}-native.tap`);
// A report left by an earlier run must not stand in for one this run failed to write.
rmSync(report, { force: true });
rmSync(nativeReport, { force: true });
const streams = shardCount();
// With more than one CPU, the native files run beside the emulated hosts (one CPU each), not before them.
const nativeBeside = streams > 1 && kvmFiles.length > 0 && !direct;
let nativeDone: Promise<number> = Promise.resolve(0);
if (nativeFiles.length > 0) {
  process.stdout.write(
    `${tier} tier: ${nativeFiles.join(" ")} need no KVM: running directly on this host${nativeBeside ? ", beside the emulated hosts" : ""}\n`,
  );
  const argv = ["--import", "tsx", ...nodeTestArgs(nativeReport), ...nativeFiles];
  if (nativeBeside) {
    const prefix = linePrefixer("[native] ");
    const child = spawn(process.execPath, argv, { stdio: ["ignore", "pipe", "pipe"], cwd: repoPath() });
    child.stdout.on("data", (d: Buffer) => process.stdout.write(prefix.out(d)));
    child.stderr.on("data", (d: Buffer) => process.stderr.write(prefix.err(d)));
    nativeDone = new Promise((done) =>
      child.on("close", (code) => {
        process.stdout.write(prefix.flush());
        done(code ?? 1);
      }),
    );
  } else {
    nativeDone = Promise.resolve(
      spawnSync(process.execPath, argv, { stdio: "inherit", cwd: repoPath() }).status ?? 1,
    );
  }
}
let where: string;
let runnerStatus: number;
/** With several emulated hosts: one TAP report per test file, in the order of kvmFiles. */
const shardReports: string[] = [];
if (kvmFiles.length === 0) {
  where = "directly on this host (no file needs KVM)";
  runnerStatus = 0;
} else if (direct) {
  where =
    tier === "emulated"
      ? "on this host (it boots the emulated KVM host itself)"
      : `directly on this host's /dev/kvm (${KvmSystem.isPvm() ? "PVM" : "KVM"})`;
  const r = spawnSync(process.execPath, ["--import", "tsx", ...nodeTestArgs(report), ...kvmFiles], {
    stdio: "inherit",
    cwd: repoPath(),
  });
  runnerStatus = r.status ?? 1;
} else {
  const why = emulatedHostUnavailable();
  if (why) {
    process.stderr.write(
      `${tier} tier: this host has no usable /dev/kvm, and the emulated KVM host cannot run: ${why}\n`,
    );
    process.exit(1);
  }
  // One emulated host per CPU, less one while native files run beside them (it starts once they are done).
  const shards = Math.min(streams, kvmFiles.length);
  const late = nativeBeside && nativeFiles.length > 0 ? Math.min(1, shards - 1) : 0;
  where = `in the emulated KVM host (QEMU TCG -cpu max, kvm_amd)${shards > 1 ? `, ${shards} of them side by side` : ""}`;
  if (late > 0) where += ` (the last once the native files were done)`;
  process.stdout.write(`${tier} tier: no usable /dev/kvm here; running it ${where}\n`);
  const compiled = kvmFiles.map((f) => join(BUILD_DIR_NAME, f.replace(/\.ts$/, ".js")));
  if (shards === 1 && !nativeBeside) {
    const runDir = makeRunDir();
    const r = await runInEmulatedHost({
      runDir,
      script: `node ${nodeTestArgs(join(runDir, "report.tap")).join(" ")} ${compiled.join(" ")}`,
      cwd: repoPath(),
      env: passThroughEnv(),
      idleTimeoutMs: TIER_SILENCE_MS,
      onStdout: (d) => process.stdout.write(d),
      onStderr: (d) => process.stderr.write(d),
    });
    if (existsSync(join(runDir, "report.tap"))) copyFileSync(join(runDir, "report.tap"), report);
    r.cleanup();
    reportHost(r);
    runnerStatus = r.status ?? 1;
  } else {
    runnerStatus = await runSharded(compiled, shards - late, late, nativeDone);
  }
}

const nativeStatus = await nativeDone;
const seconds = ((Date.now() - started) / 1000).toFixed(0);
const parts: Array<NonNullable<ReturnType<typeof tapCounts>>> = [];
for (const [ran, file] of [
  ...(shardReports.length > 0
    ? shardReports.map((f) => [true, f] as const)
    : [[kvmFiles.length > 0, report] as const]),
  [nativeFiles.length > 0, nativeReport] as const,
]) {
  if (!ran) continue;
  const c = existsSync(file) ? tapCounts(readFileSync(file, "utf8")) : undefined;
  if (!c) {
    process.stdout.write(`${tier} tier: no test report (${file}): the tier did not run\n`);
    process.exit(1);
  }
  parts.push(c);
}
const counts = parts.reduce(
  (a, c) => ({
    tests: a.tests + c.tests,
    pass: a.pass + c.pass,
    fail: a.fail + c.fail,
    skipped: a.skipped + c.skipped,
    skips: [...a.skips, ...c.skips],
  }),
  { tests: 0, pass: 0, fail: 0, skipped: 0, skips: [] as string[] },
);
if (nativeFiles.length > 0 && kvmFiles.length > 0)
  where += `, and ${nativeFiles.length} file(s) directly on this host`;
process.stdout.write(
  `${tier} tier ran ${where} in ${seconds} s: ${counts.tests} tests\n${tier}: ${counts.pass} passed, ${counts.fail} failed, ${counts.skipped} skipped\n`,
);
let status = runnerStatus || nativeStatus;
if (counts.tests === 0) {
  process.stdout.write(`${tier} tier: no test ran\n`);
  status = 1;
}
if (counts.skipped > 0 && process.env.VIREO_ALLOW_SKIPS !== "1") {
  process.stdout.write(
    `${tier} tier: ${counts.skipped} tests were skipped, and a skipped test proves nothing (VIREO_ALLOW_SKIPS=1 allows it):\n${counts.skips.join("\n")}\n`,
  );
  status = 1;
}
process.exit(status);

/** The summary node's TAP reporter ends with, and the skipped tests' lines. */
function tapCounts(tap: string) {
  const n = (key: string) => Number(new RegExp(`^# ${key} (\\d+)$`, "m").exec(tap)?.[1] ?? Number.NaN);
  const c = { tests: n("tests"), pass: n("pass"), fail: n("fail"), skipped: n("skipped") };
  if (Object.values(c).some(Number.isNaN)) return undefined;
  const skips = tap
    .split("\n")
    .filter((l) => /^\s*ok \d+ .*# SKIP/.test(l))
    .map((l) => l.trim());
  return { ...c, skips };
}

/** The environment a test run inside the emulated host keeps from ours: vireo's own knobs. */
function passThroughEnv(): Record<string, string> {
  return Object.fromEntries(
    Object.entries(process.env).filter(
      (e): e is [string, string] => /^(VIREO_(?!JS$|TIER_HOST$)|CI$)/.test(e[0]) && e[1] !== undefined,
    ),
  );
}

/**
 * How many emulated hosts run a tier side by side: VIREO_TIER_SHARDS, else one per CPU of this host (at most 4).
 * Each host has one vCPU (see emulatedCpus), which is one TCG thread: a second host is the only way a tier uses
 * a second core here.
 */
function shardCount(): number {
  const n = Number(process.env.VIREO_TIER_SHARDS ?? Math.min(availableParallelism(), 4));
  return Number.isInteger(n) && n >= 1 && n <= 8 ? n : 1;
}

/**
 * Runs the files over `shards` emulated hosts. The files form one queue, largest first (a rough guess at the
 * longest): each host takes the next file not yet taken (an atomic mkdir in a directory they all share) and runs
 * it with its own TAP report, until none is left, so a host that drew short files takes more of them.
 */
async function runSharded(
  compiled: string[],
  shards: number,
  late: number,
  gate: Promise<unknown>,
): Promise<number> {
  const queue = makeRunDir();
  const order = compiled
    .map((f, i) => ({ f, i, size: statSync(repoPath(kvmFiles[i] as string)).size }))
    .sort((a, b) => b.size - a.size);
  const script = [
    "status=0",
    ...order.map(
      ({ f, i }) =>
        `if mkdir ${queue}/taken-${i} 2>/dev/null; then echo '== ${kvmFiles[i]}'; node ${nodeTestArgs(`${queue}/report-${i}.tap`).join(" ")} ${f} || status=1; fi`,
    ),
    "exit $status",
  ].join("\n");
  const untaken = () => readdirSync(queue).filter((f) => f.startsWith("taken-")).length < compiled.length;
  const results = await Promise.all(
    Array.from({ length: shards + late }, async (_, host) => {
      const tag = `[host ${host + 1}] `;
      const prefix = linePrefixer(tag);
      if (host >= shards) {
        // A late host: it would only boot to find the queue empty.
        await gate;
        if (!untaken()) return 0;
        process.stdout.write(`${tag}starting: the native files are done and test files are left\n`);
      }
      return runInEmulatedHost({
        script,
        cwd: repoPath(),
        env: passThroughEnv(),
        idleTimeoutMs: TIER_SILENCE_MS,
        writable: [queue],
        onStdout: (d) => process.stdout.write(prefix.out(d)),
        onStderr: (d) => process.stderr.write(prefix.err(d)),
      }).then((r) => {
        process.stdout.write(prefix.flush());
        process.stdout.write(tag);
        reportHost(r);
        r.cleanup();
        return r.status ?? 1;
      });
    }),
  );
  const tap: string[] = [];
  for (let i = 0; i < compiled.length; i++) {
    const file = join(queue, `report-${i}.tap`);
    const kept = join(reports, `${tier}-${i}.tap`);
    rmSync(kept, { force: true });
    if (existsSync(file)) {
      copyFileSync(file, kept);
      tap.push(readFileSync(file, "utf8"));
    } else process.stdout.write(`${tier} tier: ${kvmFiles[i]} left no report\n`);
    // A missing report makes the count below fail, as it should: that file did not run.
    shardReports.push(kept);
  }
  writeFileSync(report, tap.join("\n"));
  rmSync(queue, { recursive: true, force: true });
  return results.some((s) => s !== 0) ? 1 : 0;
}

function reportHost(r: Awaited<ReturnType<typeof runInEmulatedHost>>): void {
  if (r.status === null)
    process.stderr.write(
      `${tier} tier: ${r.failure}; the emulated host's console ended with:\n${consoleTail(r.console)}\n`,
    );
  process.stdout.write(
    `${tier} tier: emulated host booted in ${((r.bootMs ?? 0) / 1000).toFixed(1)} s, ran ${(r.wallMs / 1000).toFixed(0)} s in all\n`,
  );
}

/** Prefixes every whole line of two output streams with `tag`, so the hosts' output can be told apart. */
function linePrefixer(tag: string) {
  const partial = { out: "", err: "" };
  const take = (which: "out" | "err", d: Buffer) => {
    const text = partial[which] + d.toString("utf8");
    const cut = text.lastIndexOf("\n") + 1;
    partial[which] = text.slice(cut);
    return text
      .slice(0, cut)
      .split(/(?<=\n)/)
      .map((l) => (l ? tag + l : l))
      .join("");
  };
  return {
    out: (d: Buffer) => take("out", d),
    err: (d: Buffer) => take("err", d),
    flush: () => {
      const rest = [partial.out, partial.err]
        .filter((x) => x)
        .map((x) => `${tag}${x}\n`)
        .join("");
      partial.out = partial.err = "";
      return rest;
    },
  };
}
