/**
 * The emulated KVM host: a QEMU TCG VM with `-cpu max` (which offers SVM) booting the Debian kernel that
 * `vireo image build` fetched, with kvm_amd loaded inside, so vireo meets real KVM on a machine whose own kernel
 * has none (or only PVM). The host's root is shared read-only over 9p and the work runs chrooted into it, so it
 * sees the same files at the same paths; directories it must write are shared read-write at their own paths.
 *
 * The work's stdin, stdout and stderr are virtio-serial ports (not the console), so what the work prints is told
 * apart from the kernel's messages, and a watchdog can judge progress by the work's own output.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import {
  appendFileSync,
  existsSync,
  mkdtempSync,
  readFileSync,
  realpathSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { createConnection, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { VireoError } from "../errors.ts";
import { findGuestImage, type GuestImage } from "../image/guest-image.ts";
import { repoPath } from "../paths.ts";
import { ensureCompiled } from "./compile.ts";

export const QEMU = "qemu-system-x86_64";
const STAGE2 = repoPath("src", "emulated-host", "stage2.sh");

export class EmulatedHostError extends VireoError {
  constructor(message: string) {
    super("VIREO_EMULATED_HOST", message);
  }
}

/** Why the emulated host cannot run here, or undefined when it can. */
export function emulatedHostUnavailable(): string | undefined {
  if (spawnSync(QEMU, ["--version"]).status !== 0)
    return `${QEMU} is not installed (scripts/setup.sh installs it)`;
  if (!findGuestImage()) return "no guest image for the emulated host: run ./bin/vireo image build";
  return undefined;
}

export interface EmulatedRunOptions {
  /** A POSIX sh script, run from `cwd` inside the emulated host as root. */
  script: string;
  /** Directory the script starts in (default: the current one); visible at the same path inside. */
  cwd?: string;
  /** Extra environment for the script (inside, the environment is otherwise clean, with VIREO_JS=1). */
  env?: Record<string, string>;
  /** Host directories the script may write, shared read-write at the same path. */
  writable?: string[];
  /** What the script reads on stdin; undefined: nothing (end of file at once). */
  stdin?: NodeJS.ReadableStream;
  /** Where the script's output goes, as it comes. */
  onStdout?: (chunk: Buffer) => void;
  onStderr?: (chunk: Buffer) => void;
  memMiB?: number;
  cpus?: number;
  /** Kill the VM after this long (default 1 h). */
  timeoutMs?: number;
  /** Kill the VM when the script has printed nothing for this long (default 10 min). Kernel messages do not count. */
  idleTimeoutMs?: number;
  /** Called once QEMU runs, with a function that ends the VM at once. */
  onStart?: (kill: () => void) => void;
  /** Stream the VM's console here as it runs (also VIREO_HARNESS_LOG). */
  logFile?: string;
  image?: GuestImage;
}

export interface EmulatedRunResult {
  /** The script's exit status, or null when it never reported one (see `failure`). */
  status: number | null;
  /** Why there is no status: the VM was killed for silence or time, or the VM ended early. */
  failure?: string;
  /** The VM's console (kernel messages, stage markers), for diagnosis. */
  console: string;
  /** From starting QEMU to the script starting inside. */
  bootMs?: number;
  wallMs: number;
  /** The run directory (shared read-write): the script may leave files here for the caller. Removed by `cleanup`. */
  runDir: string;
  cleanup(): void;
}

/**
 * QEMU's TCG threading: "multi" (MTTCG, QEMU's default) gives each vCPU of the emulated host its own thread.
 * With one vCPU (the default, see emulatedCpus) there is one thread either way. VIREO_EMU_TCG=single|multi.
 */
export function tcgThreads(): "single" | "multi" {
  return process.env.VIREO_EMU_TCG === "single" ? "single" : "multi";
}

/**
 * vCPUs of the emulated host: VIREO_EMU_CPUS, else 1. With two, a Linux guest with two vCPUs of its own crashed
 * at random inside it (2026-12-02: a page fault on the first instruction of an interrupt handler, then the
 * guest's stack guard page, in about one boot in three, with either TCG threading), which points at QEMU's
 * emulation of nested paging across CPUs; with one, such boots stopped failing (docs/emulated-host.md).
 */
export function emulatedCpus(): number {
  const n = Number(process.env.VIREO_EMU_CPUS ?? 1);
  return Number.isInteger(n) && n >= 1 && n <= 8 ? n : 1;
}

/** Makes a run directory before the run, so the caller can name paths in it inside the script. */
export function makeRunDir(): string {
  return realpathSync(mkdtempSync(join(tmpdir(), "vireo-emu-")));
}

/** Runs `opts.script` in a fresh emulated KVM host and resolves when the VM is gone. */
export async function runInEmulatedHost(
  opts: EmulatedRunOptions & { runDir?: string },
): Promise<EmulatedRunResult> {
  const why = emulatedHostUnavailable();
  if (why) throw new EmulatedHostError(why);
  const image = opts.image ?? (findGuestImage() as GuestImage);
  ensureCompiled();
  const runDir = opts.runDir ?? makeRunDir();
  const cleanup = () => rmSync(runDir, { recursive: true, force: true });
  const env = Object.entries(opts.env ?? {})
    .map(([k, v]) => `export ${k}=${shellQuote(v)}\n`)
    .join("");
  writeFileSync(
    join(runDir, "script.sh"),
    `cd ${shellQuote(resolve(opts.cwd ?? process.cwd()))} || exit 125\n${env}${opts.script}\n`,
  );
  const writable = [...new Set((opts.writable ?? []).map((d) => realpathSync(d)))].sort(
    (a, b) => a.length - b.length,
  );
  writeFileSync(join(runDir, "mounts"), writable.map((d, i) => `rw${i} ${d}\n`).join(""));

  const sockets = {
    stdin: join(runDir, "stdin.sock"),
    stdout: join(runDir, "stdout.sock"),
    stderr: join(runDir, "stderr.sock"),
  };
  const args = [
    "-accel",
    `tcg,thread=${tcgThreads()}`,
    "-cpu",
    "max",
    "-m",
    String(opts.memMiB ?? 3072),
    "-smp",
    String(opts.cpus ?? emulatedCpus()),
    "-nographic",
    "-no-reboot",
    "-nic",
    "none",
    "-kernel",
    image.kernel,
    "-initrd",
    image.harnessInitrd,
    "-append",
    `console=ttyS0 quiet panic=-1 vireo.stage2=${STAGE2} vireo.rundir=${runDir}`,
    "-virtfs",
    "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
    "-virtfs",
    `local,path=${runDir},mount_tag=vrun,security_model=none`,
    ...writable.flatMap((d, i) => ["-virtfs", `local,path=${d},mount_tag=rw${i},security_model=none`]),
    "-device",
    "virtio-serial-pci",
    ...Object.entries(sockets).flatMap(([name, path]) => [
      "-chardev",
      `socket,id=${name},path=${path},server=on,wait=on`,
      "-device",
      `virtserialport,chardev=${name},name=vireo.${name}`,
    ]),
  ];
  if ([runDir, STAGE2, ...writable].some((p) => /[\s,="]/.test(p)))
    throw new EmulatedHostError(
      `paths shared with the emulated host may not contain spaces, commas, quotes or '=': ${[runDir, STAGE2, ...writable].join(" ")}`,
    );

  const started = Date.now();
  const child = spawn(QEMU, args, { stdio: ["ignore", "pipe", "pipe"] });
  let consoleText = "";
  let bootMs: number | undefined;
  const log = opts.logFile ?? process.env.VIREO_HARNESS_LOG;
  const onConsole = (d: Buffer) => {
    consoleText += d.toString("latin1");
    if (log) appendFileSync(log, d);
    if (bootMs === undefined && consoleText.includes("VIREO-HARNESS-BEGIN")) bootMs = Date.now() - started;
  };
  child.stdout?.on("data", onConsole);
  child.stderr?.on("data", onConsole);
  const closed = new Promise<void>((r) => child.on("close", () => r()));

  let lastProgress = Date.now();
  const progress = () => {
    lastProgress = Date.now();
  };
  let failure: string | undefined;
  const kill = (why: string) => {
    failure ??= why;
    child.kill("SIGKILL");
  };
  opts.onStart?.(() => kill("stopped"));
  // QEMU waits for each socket in turn (wait=on), so nothing the script writes is lost before we listen.
  const input = await connectWhileRunning(sockets.stdin, child);
  const output = await connectWhileRunning(sockets.stdout, child);
  const errors = await connectWhileRunning(sockets.stderr, child);
  output?.on("data", (d: Buffer) => {
    progress();
    opts.onStdout?.(d);
  });
  errors?.on("data", (d: Buffer) => {
    progress();
    opts.onStderr?.(d);
  });
  for (const s of [input, output, errors]) s?.on("error", () => {});
  if (input) {
    if (opts.stdin) opts.stdin.pipe(input);
    else input.end();
  }

  const timeoutMs = opts.timeoutMs ?? 3_600_000;
  const idleMs = opts.idleTimeoutMs ?? 600_000;
  const timer = setTimeout(() => kill(`the emulated host ran longer than ${timeoutMs / 1000} s`), timeoutMs);
  const watchdog = setInterval(() => {
    // Silence is counted from QEMU's start (booting must fit in the limit too) until the script's first output;
    // after that only the script's own output counts, never the console.
    if (Date.now() - lastProgress > idleMs)
      kill(
        `the script printed nothing for ${idleMs / 1000} s (kernel messages do not count)${processListing(runDir)}`,
      );
  }, 1000);
  await closed;
  clearTimeout(timer);
  clearInterval(watchdog);
  if (opts.stdin && input) opts.stdin.unpipe(input);
  for (const s of [input, output, errors]) s?.destroy();

  const text = consoleText.replace(/\r/g, "");
  const exit = /VIREO-HARNESS-EXIT=(\d+)/.exec(text);
  const error = /VIREO-HARNESS-ERROR=(.*)/.exec(text)?.[1];
  if (!exit && !failure)
    failure = error ?? `the emulated host ended without the script's status (QEMU exit ${child.exitCode})`;
  return {
    status: exit ? Number(exit[1]) : null,
    failure: exit ? undefined : failure,
    console: text,
    bootMs,
    wallMs: Date.now() - started,
    runDir,
    cleanup,
  };
}

/** The last process listing stage2.sh left in the run directory (at most a minute old), for a silent run's report. */
function processListing(runDir: string): string {
  const file = join(runDir, "ps.txt");
  if (!existsSync(file)) return "";
  const age = ((Date.now() - statSync(file).mtimeMs) / 1000).toFixed(0);
  const lines = readFileSync(file, "utf8").trimEnd().split("\n");
  return `; its processes ${age} s before:\n${lines.slice(-60).join("\n")}\n`;
}

/** Connects to one of QEMU's socket chardevs once it listens; undefined if QEMU ends first. */
async function connectWhileRunning(path: string, child: ChildProcess): Promise<Socket | undefined> {
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) return undefined;
    const socket = await new Promise<Socket | undefined>((done) => {
      const s = createConnection(path);
      s.once("connect", () => done(s));
      s.once("error", () => {
        s.destroy();
        done(undefined);
      });
    });
    if (socket) return socket;
    await new Promise((r) => setTimeout(r, 20));
  }
}

export function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/** The last lines of a console, for an error message. */
export function consoleTail(text: string, lines = 30): string {
  return text.split("\n").slice(-lines).join("\n");
}
