/** Runs the real `bin/vireo` command as a user would, capturing its output and status. */
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { repoPath } from "../../src/paths.ts";

export const VIREO_BIN = repoPath("bin", "vireo");

export interface CliResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

export function vireo(
  args: string[],
  opts: { env?: Record<string, string>; timeoutMs?: number; input?: string; prefix?: string[] } = {},
): CliResult {
  // prefix: a command that runs vireo, e.g. `ip netns exec NAME`.
  const argv = [...(opts.prefix ?? []), VIREO_BIN, ...args];
  // Inside the emulated KVM host (QEMU TCG, one CPU) everything runs tens of times slower than natively.
  const timeout = opts.timeoutMs ?? (process.env.VIREO_EMULATED_HOST === "1" ? 300_000 : 60_000);
  const r = spawnSync(argv[0] as string, argv.slice(1), {
    encoding: "utf8",
    env: { ...process.env, ...opts.env },
    timeout,
    input: opts.input ?? "",
    // SIGTERM only asks vireo to stop; a run whose stop is what hangs would keep spawnSync (and with it the whole
    // test process, its own time-outs included) waiting without a word. SIGKILL ends it, and the partial output
    // comes back for the test to show.
    killSignal: "SIGKILL",
  });
  if (r.error && (r.error as NodeJS.ErrnoException).code === "ETIMEDOUT")
    r.stderr = `${r.stderr ?? ""}\n[test helper: vireo was killed after ${timeout / 1000} s: ${argv.join(" ")}]\n`;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** A fresh path for `vireo run --metrics FILE`. */
export function metricsPath(prefix = "vireo-metrics-"): string {
  return join(mkdtempSync(join(tmpdir(), prefix)), "metrics.json");
}

/** The counters of a `--metrics` file. */
export function readMetrics(file: string): Record<string, number> {
  return (JSON.parse(readFileSync(file, "utf8")) as { metrics: Record<string, number> }).metrics;
}
