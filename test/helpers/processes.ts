/**
 * Processes a test starts and reads as they run (a back-end, a switch, a peer): their output collected, their exit
 * awaited, and every one still running killed when the test file ends.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { after } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

export interface Proc {
  child: ChildProcess;
  exited: Promise<number | null>;
  out(): string;
  err(): string;
}

const children: ChildProcess[] = [];
after(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
});

/** Starts argv[0] with argv's rest, stdin closed, stdout and stderr collected. */
export function startProcess(argv: string[]): Proc {
  const [cmd, ...args] = argv as [string, ...string[]];
  const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
  children.push(child);
  let out = "";
  let err = "";
  child.stdout?.on("data", (d) => (out += d));
  child.stderr?.on("data", (d) => (err += d));
  const exited = new Promise<number | null>((r) => child.on("exit", (code) => r(code)));
  return { child, exited, out: () => out, err: () => err };
}

/** Polls `ok` every 50 ms; throws with `why()` once `ms` have passed without it. */
export async function waitFor(ok: () => boolean, ms: number, why: () => string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(why());
    await sleep(50);
  }
}

/** Starts a server process (a vhost-user back-end, a switch) and waits until it says "listening on". */
export async function startListening(argv: string[], what: string, ms = 120_000): Promise<Proc> {
  const p = startProcess(argv);
  await waitFor(
    () => /listening on/.test(p.err()) || p.child.exitCode !== null,
    ms,
    () => `${what} did not start: ${p.err()}`,
  );
  if (p.child.exitCode !== null) throw new Error(`${what} did not start: ${p.err()}`);
  return p;
}
