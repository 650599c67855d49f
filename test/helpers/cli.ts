/** Runs the real `bin/vireo` command as a user would, capturing its output and status. */
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";

export const VIREO_BIN = fileURLToPath(new URL("../../bin/vireo", import.meta.url));

export interface CliResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

export function vireo(
  args: string[],
  opts: { env?: Record<string, string>; timeoutMs?: number; input?: string } = {},
): CliResult {
  const r = spawnSync(VIREO_BIN, args, {
    encoding: "utf8",
    env: { ...process.env, ...opts.env },
    timeout: opts.timeoutMs ?? 60_000,
    input: opts.input ?? "",
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}
