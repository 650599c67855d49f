/**
 * --accel auto|kvm|emulated: where a VM (or a benchmark) runs. `kvm` is this host's /dev/kvm; `emulated` is
 * vireo's emulated KVM host (src/emulated-host: QEMU TCG with kvm_amd), where the same vireo command runs
 * inside; `auto` takes /dev/kvm when there is one and the emulated host otherwise, saying so on stderr.
 *
 * Through the emulated host the console (input, output, Ctrl-A x), the exit status, --metrics and --serial
 * files and --disk images work as they do directly: input files are read through the shared root, and the
 * directories of files vireo writes are shared read-write at the same paths. A TAP on this host cannot reach the
 * VM in there, so --net is refused.
 */
import { existsSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { PassThrough } from "node:stream";
import {
  consoleTail,
  emulatedHostUnavailable,
  runInEmulatedHost,
  shellQuote,
} from "../emulated-host/host.ts";
import { ConfigError } from "../errors.ts";
import { KVM_DEVICE } from "../kvm/system.ts";
import { repoPath } from "../paths.ts";

export type Accel = "auto" | "kvm" | "emulated";

export function parseAccel(value: string | undefined): Accel {
  const v = value ?? "auto";
  if (v === "auto" || v === "kvm" || v === "emulated") return v;
  throw new ConfigError(`--accel must be auto, kvm or emulated, got '${v}'`);
}

/** True when the command should run in the emulated host; says so on stderr when `auto` chose it. */
export function useEmulatedHost(accel: Accel): boolean {
  if (accel === "kvm") return false;
  // auto: a /dev/kvm that is there is used, even one this user cannot open (the error then says how to fix
  // the permissions; a silent detour through an emulator tens of times slower would hide that).
  if (accel === "auto" && existsSync(KVM_DEVICE)) return false;
  const why = emulatedHostUnavailable();
  if (why)
    throw new ConfigError(
      accel === "auto"
        ? `this host has no usable /dev/kvm, and the emulated KVM host cannot run: ${why}`
        : `--accel emulated: ${why}`,
    );
  if (accel === "auto")
    process.stderr.write(
      "vireo: no usable /dev/kvm here: running inside vireo's emulated KVM host (QEMU TCG with nested KVM; about 10 s to boot it, and the guest runs tens of times slower than on real KVM)\n",
    );
  return true;
}

export interface EmulatedCommand {
  /** vireo's arguments for the inside (with --accel kvm). */
  argv: string[];
  /** Files the command writes (their directories are shared read-write). */
  writes: string[];
  /** Forward this terminal's input (with Ctrl-A x) to the inside. */
  console: boolean;
}

/** Runs `vireo ARGV` inside the emulated host and returns its exit status. */
export async function runEmulated(cmd: EmulatedCommand): Promise<number> {
  const input = new PassThrough();
  const stdin = process.stdin;
  const raw = cmd.console && stdin.isTTY === true;
  let ctrlA = false;
  let stopAsked: NodeJS.Timeout | undefined;
  let killed = false;
  const askStop = () => {
    // The inside vireo takes Ctrl-A x from its input (VIREO_CONSOLE_ESCAPE) and stops cleanly, writing its
    // files; if it cannot answer in time (still booting, or gone), the VM is ended here.
    if (!input.writableEnded) input.write(Buffer.from([0x01, 0x78]));
    stopAsked ??= setTimeout(() => {
      killed = true;
      vm.kill();
    }, 5000);
  };
  const onData = (chunk: Buffer) => {
    for (const byte of chunk) {
      if (raw && ctrlA && byte === 0x78) askStop();
      ctrlA = byte === 0x01 && !ctrlA;
    }
    input.write(chunk);
  };
  const onEnd = () => input.end();
  if (cmd.console) {
    if (raw) stdin.setRawMode(true);
    stdin.on("data", onData);
    stdin.on("end", onEnd);
  } else input.end();
  process.once("SIGINT", askStop);
  process.once("SIGTERM", askStop);
  const vm = { kill: () => {} };
  try {
    const r = await runInEmulatedHost({
      script: `exec ${[repoPath("bin", "vireo"), ...cmd.argv].map(shellQuote).join(" ")}`,
      env: { VIREO_CONSOLE_ESCAPE: "1" },
      writable: [...new Set(cmd.writes.map((f) => dirname(resolve(f))))],
      stdin: input,
      onStdout: (d) => process.stdout.write(d),
      onStderr: (d) => process.stderr.write(d),
      onStart: (kill) => {
        vm.kill = kill;
      },
    });
    r.cleanup();
    if (killed) return 130;
    if (r.status === null) {
      process.stderr.write(
        `vireo: the emulated KVM host failed: ${r.failure}\n${consoleTail(r.console, 15)}\n`,
      );
      return 125;
    }
    return r.status;
  } finally {
    if (stopAsked) clearTimeout(stopAsked);
    process.off("SIGINT", askStop);
    process.off("SIGTERM", askStop);
    if (cmd.console) {
      stdin.off("data", onData);
      stdin.off("end", onEnd);
      if (raw) stdin.setRawMode(false);
      stdin.pause();
    }
  }
}
