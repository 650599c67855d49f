/** `vireo switch` as a test's own process: started with its ports, ready when it says so, killed with the file. */
import { join } from "node:path";
import { VIREO_BIN } from "./cli.ts";
import { type Proc, startProcess, waitFor } from "./processes.ts";

export interface SwitchProc extends Proc {
  /** Its control socket (in `dir`, named after the switch). */
  control: string;
  stdout(): string;
  stderr(): string;
}

/** Starts `vireo switch NAME --control DIR/NAME.sock --port P...` and waits for its "ready" line. */
export async function startSwitch(dir: string, name: string, ports: string[]): Promise<SwitchProc> {
  const control = join(dir, `${name}.sock`);
  const p = startProcess([
    VIREO_BIN,
    "switch",
    name,
    "--control",
    control,
    ...ports.flatMap((port) => ["--port", port]),
  ]);
  await waitFor(
    () => p.err().includes("ready") || p.child.exitCode !== null,
    60_000,
    () => `switch did not start: ${p.err()}`,
  );
  if (p.child.exitCode !== null) throw new Error(`switch did not start: ${p.err()}`);
  return { ...p, control, stdout: p.out, stderr: p.err };
}
