/** The benchmarks `vireo bench NAME` knows. Each prints a table, or JSON with --json. */

import { type HostKind, KvmSystem } from "../src/kvm/system.ts";
import { benchBoot, formatBoot } from "./boot.ts";
import { benchExits, formatExits } from "./exits.ts";
import { benchNic, formatNic } from "./nic.ts";
import { benchSnapshot, formatSnapshot } from "./snapshot.ts";
import { benchSwitch, formatSwitch } from "./switch.ts";
import { benchVhostUser, formatVhostUser } from "./vhost-user.ts";
import { benchVhostUserBlk, formatVhostUserBlk } from "./vhost-user-blk.ts";
import { benchVirtio, formatVirtio, SERVED_BY, type ServedBy } from "./virtio.ts";

export { SERVED_BY, type ServedBy };

export interface BenchOptions {
  json: boolean;
  rounds: number;
  iterations?: number;
  force?: boolean;
  /** Length of a measured window, for benchmarks that run for a fixed time (vhost-user, switch). */
  seconds?: number;
  /** switch: frame sizes in bytes and numbers of port pairs. */
  sizes?: number[];
  pairs?: number[];
  /** vhost-user-blk: queue depths (requests in flight). */
  depths?: number[];
  /** vhost-user-blk: both back-ends through the page cache, or both with O_DIRECT. */
  cache?: "page" | "direct";
  /** switch: the vhost-user load, a testpmd loop (default) or a txonly and an rxonly testpmd per pair. */
  load?: "loop" | "open";
  /** virtio: only rows served these ways. */
  servedBy?: ServedBy[];
  /** vhost-user: the driver's rings. */
  ring?: "split" | "packed";
}

interface Benchmark {
  description: string;
  /** Runs natively, never inside the emulated KVM host (it needs no KVM). */
  native?: boolean;
  /** Rounds when --rounds is not given (5 unless it says otherwise). */
  defaultRounds?: number;
  run(opts: BenchOptions): Promise<{ table: string; result: object }>;
}

function bench<R extends object>(
  description: string,
  measure: (opts: BenchOptions) => Promise<R>,
  format: (r: R) => string,
  native = false,
  defaultRounds?: number,
): Benchmark {
  return {
    description,
    native,
    defaultRounds,
    async run(opts) {
      const result = await measure(opts);
      return { table: format(result), result };
    },
  };
}

export const BENCHMARKS: Record<string, Benchmark> = {
  exits: bench(
    "guest PIO and MMIO exit round trip: vireo vs the C reference VMM (bench/ref)",
    benchExits,
    formatExits,
  ),
  virtio: bench(
    "per 4 KiB virtio-blk read and per 1500-byte virtio-net packet: exits, interrupts, notifications, host µs; with and without EVENT_IDX, split and packed; served in the vCPU exit, a data-plane thread, a vhost-user process, the kernel's vhost-net",
    benchVirtio,
    formatVirtio,
  ),
  nic: bench(
    "the same transmit workload over the emulated e1000 and over virtio-net: exits, interrupts, host µs and packets/s per packet (needs root: a TAP)",
    benchNic,
    formatNic,
  ),
  "vhost-user": bench(
    "vireo vhost-user net vs DPDK's net_vhost, one DPDK virtio_user driver, 64 and 1518-byte frames both ways: Mpps, Gbit/s, ratio (natively; needs root and dpdk-testpmd)",
    benchVhostUser,
    formatVhostUser,
    true,
  ),
  "vhost-user-blk": bench(
    "vireo vhost-user blk vs qemu-storage-daemon's vhost-user-blk export of the same file, one C driver (bench/ref/vub-driver.c): 4 KiB random reads and writes at queue depth 1 and 32, IOPS, latency percentiles, ratios (natively)",
    benchVhostUserBlk,
    formatVhostUserBlk,
    true,
    1,
  ),
  switch: bench(
    "frames/s between vhost-user port pairs through vireo switch vs dpdk-testpmd io forwarding, and a Linux bridge between veths (trafgen); a row for vireo switch's shm ports (bench/shm-loop.ts), one for JavaScript's floor (bench/js-floor.ts: the least a JS vhost-user switch can do) and one for the same loop in WebAssembly (bench/wasm-floor.ts); 64 and 1518 B, 1/2/4 pairs, ratios, the switch's CPU per frame, interposition costs (natively; needs root, dpdk-testpmd, trafgen)",
    benchSwitch,
    formatSwitch,
    true,
    1, // 20-odd configurations of 5 s and a few seconds' start each: one round is minutes already
  ),
  snapshot: bench(
    "snapshot, restore (to the first guest instruction) and live migration (idle and busy guest) of 128 MiB and 1 GiB guests with half their RAM in use: times, file sizes, rounds, pages, bytes, downtime (--sizes MIB,MIB for other guests)",
    benchSnapshot,
    formatSnapshot,
    false,
    1,
  ),
  boot: bench(
    "stock Debian kernel, vCPU start to init: vireo vs qemu-system-x86_64 -enable-kvm (needs real KVM)",
    benchBoot,
    formatBoot,
  ),
};

/** What a figure from each kind of host means; printed above every table so no one compares across kinds. */
export const HOST_NOTES: Record<HostKind, string> = {
  kvm: "real KVM (VMX/SVM)",
  pvm: "PVM KVM: guest CPL 0 code is emulated, exits cost several times real KVM's",
  emulated:
    "KVM inside vireo's emulated host (QEMU TCG, nested): every instruction is emulated and JIT-generated code is retranslated, so compare only ratios measured in the same run",
  none: "no KVM",
};

export async function runBenchmark(name: string, opts: BenchOptions): Promise<void> {
  const b = BENCHMARKS[name];
  if (!b) throw new Error(`unknown benchmark ${name}`);
  const host = KvmSystem.hostKind();
  const { table, result } = await b.run(opts);
  console.log(
    opts.json
      ? JSON.stringify({ benchmark: name, host, ...result }, null, 2)
      : `host: ${host} — ${HOST_NOTES[host]}\n${table}`,
  );
}
