/**
 * Network tests against a real TAP device: each test gets its own network namespace (so it can neither see nor
 * disturb the host's interfaces), a persistent TAP in it that is up, and runs vireo and the host-side peer
 * (netpeer.py) inside it. Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN for `ip netns`).
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after } from "node:test";
import { repoPath } from "../../src/paths.ts";

import { VIREO_BIN } from "./cli.ts";

/** Inside the emulated KVM host (QEMU TCG), where a process start alone can take seconds. */
const EMULATED = process.env.VIREO_EMULATED_HOST === "1";

export const NETPEER = repoPath("test", "helpers", "netpeer.py");

/** Why network tests cannot run here, or null if they can. */
export function netnsUnavailable(): string | null {
  if (process.getuid?.() !== 0) return "network tests need root (ip netns, TAP devices)";
  if (!existsSync("/dev/net/tun")) return "no /dev/net/tun on this host";
  const ip = spawnSync("ip", ["-V"], { encoding: "utf8" });
  if (ip.status !== 0) return "the ip command (iproute2) is missing";
  return null;
}

/**
 * How long one `ip` command may take. They are synchronous, so one that never returns would block the test file's
 * event loop, its time-out included, and the tier would see only silence (a CI run lost 720 s that way in the
 * emulated host); bounded, it becomes this test's failure naming the command.
 */
const IP_COMMAND_MS = EMULATED ? 120_000 : 30_000;

function run(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { encoding: "utf8", timeout: IP_COMMAND_MS, killSignal: "SIGKILL" });
  if (r.error || r.status !== 0) {
    const why = r.error
      ? `did not finish in ${IP_COMMAND_MS / 1000} s (${r.error.message})`
      : r.stderr.trim() || `status ${r.status}`;
    throw new Error(`${cmd} ${args.join(" ")}: ${why}`);
  }
}

export interface NetNs {
  name: string;
  tap: string;
  /** argv prefix that runs a command inside the namespace. */
  exec(argv: string[]): string[];
  /** Runs a command inside the namespace, bounded in time; throws with its stderr if it fails. */
  run(argv: string[]): void;
  /** Gives the namespace's TAP the address `cidr` (the host side of the guest's network). */
  addTapAddress(cidr: string): void;
  remove(): void;
}

/** A fresh namespace with TAP `tap` up in it (IPv6 off, so the kernel does not chatter on it). */
export function createNetNs(tap = "vt0"): NetNs {
  const name = `vireo-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
  run("ip", ["netns", "add", name]);
  const ns: NetNs = {
    name,
    tap,
    exec: (argv) => ["ip", "netns", "exec", name, ...argv],
    run: (argv) => run("ip", ["netns", "exec", name, ...argv]),
    addTapAddress: (cidr) => run("ip", ["netns", "exec", name, "ip", "addr", "add", cidr, "dev", tap]),
    remove: () => {
      spawnSync("ip", ["netns", "del", name], { timeout: IP_COMMAND_MS, killSignal: "SIGKILL" });
    },
  };
  try {
    run("ip", ["netns", "exec", name, "ip", "tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr"]);
    run("ip", ["netns", "exec", name, "sysctl", "-qw", `net.ipv6.conf.${tap}.disable_ipv6=1`]);
    run("ip", ["netns", "exec", name, "ip", "link", "set", tap, "up"]);
  } catch (e) {
    ns.remove();
    throw e;
  }
  return ns;
}

/** For a test file: a maker of namespaces, each removed once the file's tests are done. */
export function netnsMaker(): () => NetNs {
  const made: NetNs[] = [];
  after(() => {
    for (const ns of made) ns.remove();
  });
  return () => {
    const ns = createNetNs();
    made.push(ns);
    return ns;
  };
}

export interface ProcResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

function runAsync(argv: string[], timeoutMs: number): { done: Promise<ProcResult>; kill(): void } {
  const [cmd, ...args] = argv as [string, ...string[]];
  const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (d) => (stdout += d));
  child.stderr.on("data", (d) => (stderr += d));
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  const done = new Promise<ProcResult>((resolve) => {
    child.on("close", (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
  });
  return { done, kill: () => child.kill("SIGTERM") };
}

export interface NetExchange {
  vireo: ProcResult;
  peer: ProcResult;
  /** The peer's JSON report (netpeer.py), or null if it printed none. */
  report: {
    ok: boolean;
    phase1: number;
    phase2: number;
    errors: string[];
    guest_mac: string | null;
    phase1_seconds?: number;
    phase2_seconds?: number;
  } | null;
}

/**
 * Starts the peer on the TAP, waits until its socket is bound, then runs `vireo run ARGS` in the namespace; both
 * must finish within timeoutMs.
 */
export async function exchangeFrames(
  ns: NetNs,
  vireoArgs: string[],
  peer: { count: number; size: number; window?: number },
  timeoutMs = 120_000,
): Promise<NetExchange> {
  const dir = mkdtempSync(join(tmpdir(), "vireo-net-"));
  const ready = join(dir, "ready");
  try {
    const peerProc = runAsync(
      ns.exec([
        "python3",
        NETPEER,
        "--iface",
        ns.tap,
        "--count",
        String(peer.count),
        "--size",
        String(peer.size),
        "--window",
        String(peer.window ?? 32),
        "--timeout",
        // Seconds of silence before the peer gives up: it starts before vireo, whose start and the guest's setup
        // take tens of seconds in the emulated KVM host when the machine's cores are shared with other hosts.
        EMULATED ? "150" : "30",
        "--ready-file",
        ready,
      ]),
      timeoutMs,
    );
    const started = Date.now();
    while (!existsSync(ready)) {
      if (Date.now() - started > (EMULATED ? 90_000 : 10_000)) {
        peerProc.kill();
        const p = await peerProc.done;
        throw new Error(`netpeer.py did not start: ${p.stderr}`);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    const vm = runAsync(ns.exec([VIREO_BIN, "run", ...vireoArgs]), timeoutMs);
    const vireo = await vm.done;
    // The peer ends on its own once it has everything; if the guest failed it would wait for its timeout.
    if (vireo.status !== 0) peerProc.kill();
    const p = await peerProc.done;
    let report: NetExchange["report"] = null;
    try {
      report = JSON.parse(p.stdout.trim().split("\n").pop() ?? "");
    } catch {
      report = null;
    }
    return { vireo, peer: p, report };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** vireo exited 0 and the peer received `count` intact frames each way, in order, from a guest using `mac`. */
export function assertFramesExchanged(r: NetExchange, count: number, mac: string, macWhy: string): void {
  assert.equal(
    r.vireo.status,
    0,
    `vireo: ${r.vireo.stdout}\n${r.vireo.stderr}\npeer: ${r.peer.stdout}${r.peer.stderr}`,
  );
  assert.ok(r.report, `netpeer printed no report: ${r.peer.stderr}`);
  assert.deepEqual(r.report.errors, []);
  assert.equal(r.report.phase1, count, "frames the host received from the guest");
  assert.equal(r.report.phase2, count, "frames the guest echoed back");
  assert.equal(r.report.guest_mac, mac, macWhy);
}
