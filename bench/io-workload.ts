/**
 * One micro-guest I/O workload run, measured between the guest's markers: the guest sets its device up, writes
 * marker 1, does N operations, writes marker 2. Everything counted in between (vCPU exits, interrupts, guest
 * notifications) is divided by N, as is the host time between the markers. `vireo bench virtio` and
 * `vireo bench nic` are built from these.
 */
import { spawnSync } from "node:child_process";
import { closeSync, ftruncateSync, mkdtempSync, openSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { VireoError } from "../src/errors.ts";
import { Machine, type MachineConfig } from "../src/vmm/machine.ts";
import { microGuest } from "../src/vmm/micro-guest.ts";
import type { DiskConfig, NetConfig } from "../src/vmm/pci-devices.ts";

export interface PerOp {
  exits: number;
  interrupts: number;
  notifications: number;
  hostUs: number;
}

export interface WorkloadSpec {
  program: string;
  args: string[];
  iterations: number;
  disk?: DiskConfig;
  net?: NetConfig;
}

function sumWhere(m: Record<string, number>, pick: (name: string) => boolean): number {
  let n = 0;
  for (const [k, v] of Object.entries(m)) if (pick(k)) n += v;
  return n;
}

/** Runs the workload once and returns what one operation cost. */
export async function runWorkload(w: WorkloadSpec): Promise<PerOp> {
  const { kernel, cmdline } = microGuest(`micro:${w.program}`, [String(w.iterations), ...w.args]);
  const config: MachineConfig = {
    kernel,
    cmdline,
    memMiB: 64,
    cpus: 1,
    serial: { kind: "none" },
    timeoutMs: 300_000,
    disks: w.disk ? [w.disk] : [],
    nets: w.net ? [w.net] : [],
  };
  const result = await new Machine(config).run();
  const t1 = result.markers.get(1);
  const t2 = result.markers.get(2);
  const m1 = result.markerMetrics.get(1);
  const m2 = result.markerMetrics.get(2);
  if (result.outcome !== "guest-exit" || result.guestCode !== 0 || !t1 || !t2 || !m1 || !m2) {
    throw new VireoError(
      "VIREO_BENCH_FAILED",
      `${w.program} ${w.args.join(" ")} failed: ${result.outcome} ${result.guestCode ?? ""} ${result.message ?? ""} ${result.deviceErrors.join("; ")}`,
    );
  }
  const delta = (pick: (name: string) => boolean) => (sumWhere(m2, pick) - sumWhere(m1, pick)) / w.iterations;
  return {
    exits: delta((k) => k.startsWith("exits.")),
    interrupts: delta(
      (k) => (k.startsWith("msix.") && k.endsWith(".sent")) || /^irq\.gsi\d+\.raised$/.test(k),
    ),
    notifications: delta((k) => /^virtio\.[^.]+\.notifications$/.test(k)),
    hostUs: (t2 - t1) / w.iterations / 1000,
  };
}

/** A scratch raw disk image of `mib` MiB; remove() deletes it. */
export function scratchDisk(mib: number): { path: string; remove(): void } {
  const dir = mkdtempSync(join(tmpdir(), "vireo-bench-"));
  const path = join(dir, "disk.img");
  const fd = openSync(path, "w");
  ftruncateSync(fd, mib * 1024 * 1024);
  closeSync(fd);
  return { path, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/**
 * A TAP in the host's namespace for transmit workloads, up and without addresses: the kernel drops the guest's
 * frames (an EtherType nobody listens to) right after taking them. Null with a reason where that needs root.
 */
export function scratchTap(): { name: string; remove(): void } | { unavailable: string } {
  if (process.getuid?.() !== 0) return { unavailable: "network workloads need root (a TAP device)" };
  const name = `vrb${process.pid % 100000}`;
  const ip = (...args: string[]) => spawnSync("ip", args, { encoding: "utf8" });
  const add = ip("tuntap", "add", "dev", name, "mode", "tap", "vnet_hdr");
  if (add.status !== 0) return { unavailable: `cannot create a TAP: ${add.stderr.trim()}` };
  ip("link", "set", name, "up");
  return { name, remove: () => void ip("link", "del", name) };
}
