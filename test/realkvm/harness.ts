/**
 * The real-KVM harness: a QEMU TCG VM with `-cpu max` (which offers SVM) booting the same Debian kernel that
 * `vireo image build` fetched, with kvm_amd loaded inside and the host's root mounted read-only over 9p. A script
 * runs there, chrooted into the host root, so vireo meets real KVM semantics (VMX/SVM-style, not PVM) on a host
 * that has no such KVM of its own. Slow (tens of seconds to minutes): used by the slow suite only.
 */
import { spawn, spawnSync } from "node:child_process";
import { appendFileSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { findGuestImage, type GuestImage } from "../../src/image/guest-image.ts";

export const REPO_ROOT = fileURLToPath(new URL("../../", import.meta.url));
export const QEMU = "qemu-system-x86_64";
/** Linux command line for guests booted in the harness: fewer exits (a quiet console, no port-0x80 delays, no TSC
 * recalibration) are what make a nested boot fast. */
export const FAST_BOOT =
  "console=ttyS0 quiet io_delay=none lpj=5000000 tsc=reliable no_timer_check i8042.noaux";

export interface HarnessResult {
  /** Exit status of the script inside the VM, or null if it never reported one. */
  status: number | null;
  /** What the script printed (between the harness's begin and exit markers). */
  output: string;
  /** Everything the VM printed, for diagnosis. */
  console: string;
  wallMs: number;
  /** True when the first VM went silent and this is the result of a second one. */
  retried?: boolean;
}

/** Why the harness cannot run here, or undefined when it can. */
export function harnessUnavailable(): string | undefined {
  if (spawnSync(QEMU, ["--version"]).status !== 0)
    return `${QEMU} is not installed (scripts/setup.sh --slow installs it)`;
  if (!findGuestImage()) return "no guest image: run ./bin/vireo image build";
  return undefined;
}

let counter = 0;

export async function runInRealKvm(
  script: string,
  opts: {
    timeoutMs?: number;
    /** Kill a VM that prints nothing for this long (default 240 s) and try once more. */
    idleTimeoutMs?: number;
    memMiB?: number;
    cpus?: number;
    image?: GuestImage;
    logFile?: string;
  } = {},
): Promise<HarnessResult> {
  const first = await runOnce(script, opts);
  if (!first.idle) return first;
  // Seen here: a harness VM that goes silent right after starting the script and never recovers. A silent VM
  // says nothing about vireo, so it gets one more chance; the result says it was retried.
  process.stderr.write(
    `realkvm: the harness VM printed nothing for ${(opts.idleTimeoutMs ?? 240_000) / 1000} s; retrying once\n`,
  );
  const second = await runOnce(script, opts);
  return {
    ...second,
    console: `${first.console}\n--- retry after an idle VM ---\n${second.console}`,
    retried: true,
  };
}

async function runOnce(
  script: string,
  opts: Parameters<typeof runInRealKvm>[1] & object,
): Promise<HarnessResult & { idle: boolean }> {
  const image = opts.image ?? findGuestImage();
  if (!image) throw new Error("no guest image: run ./bin/vireo image build");
  // The script lives on the host's filesystem, which the VM sees read-only at the same path.
  const dir = join(REPO_ROOT, ".cache", "harness");
  mkdirSync(dir, { recursive: true });
  const path = join(dir, `run-${process.pid}-${counter++}.sh`);
  writeFileSync(path, `set -e\ncd ${JSON.stringify(REPO_ROOT)}\n${script}\n`);
  const args = [
    "-accel",
    "tcg",
    "-cpu",
    "max",
    "-m",
    String(opts.memMiB ?? 3072),
    "-smp",
    String(opts.cpus ?? 2),
    "-nographic",
    "-no-reboot",
    "-kernel",
    image.kernel,
    "-initrd",
    image.harnessInitrd,
    "-append",
    `console=ttyS0 quiet panic=-1 vireo.script=${path} vireo.keep=${REPO_ROOT.replace(/\/$/, "")}`,
    "-virtfs",
    "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
  ];
  const started = Date.now();
  const child = spawn(QEMU, args, { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let lastOutput = Date.now();
  let idle = false;
  // VIREO_HARNESS_LOG=FILE streams the VM's console there as it runs, for watching a long run.
  const log = opts.logFile ?? process.env.VIREO_HARNESS_LOG;
  const take = (d: Buffer) => {
    out += d.toString("latin1");
    lastOutput = Date.now();
    if (log) appendFileSync(log, d);
  };
  child.stdout.on("data", take);
  child.stderr.on("data", take);
  const timer = setTimeout(() => child.kill("SIGKILL"), opts.timeoutMs ?? 600_000);
  const idleLimit = opts.idleTimeoutMs ?? 240_000;
  const watchdog = setInterval(() => {
    if (Date.now() - lastOutput > idleLimit) {
      idle = true;
      child.kill("SIGKILL");
    }
  }, 5_000);
  await new Promise((resolve) => child.on("close", resolve));
  clearTimeout(timer);
  clearInterval(watchdog);
  rmSync(path, { force: true });
  const text = out.replace(/\r/g, "");
  const begin = text.indexOf("VIREO-HARNESS-BEGIN\n");
  const exit = /VIREO-HARNESS-EXIT=(\d+)/.exec(text);
  const output =
    begin < 0 ? "" : text.slice(begin + "VIREO-HARNESS-BEGIN\n".length, exit ? exit.index : undefined);
  return {
    status: exit ? Number(exit[1]) : null,
    output,
    console: text,
    wallMs: Date.now() - started,
    idle: idle && !exit,
  };
}
