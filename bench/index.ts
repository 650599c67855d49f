/** The benchmarks `vireo bench NAME` knows. Each prints a table, or JSON with --json. */
import { benchBoot, formatBoot } from "./boot.ts";
import { benchExits, formatExits } from "./exits.ts";
import { benchNic, formatNic } from "./nic.ts";
import { benchVirtio, formatVirtio } from "./virtio.ts";

export interface BenchOptions {
  json: boolean;
  rounds: number;
  iterations?: number;
  force?: boolean;
}

export const BENCHMARKS: Record<string, { description: string; run(opts: BenchOptions): Promise<void> }> = {
  exits: {
    description: "guest PIO and MMIO exit round trip: vireo vs the C reference VMM (bench/ref)",
    async run(opts) {
      const r = await benchExits(opts);
      console.log(opts.json ? JSON.stringify({ benchmark: "exits", ...r }, null, 2) : formatExits(r));
    },
  },
  virtio: {
    description:
      "per 4 KiB virtio-blk read and per 1500-byte virtio-net packet: exits, interrupts, notifications, host µs; with and without EVENT_IDX, split and packed",
    async run(opts) {
      const r = await benchVirtio(opts);
      console.log(opts.json ? JSON.stringify({ benchmark: "virtio", ...r }, null, 2) : formatVirtio(r));
    },
  },
  nic: {
    description:
      "the same transmit workload over the emulated e1000 and over virtio-net: exits, interrupts, host µs and packets/s per packet (needs root: a TAP)",
    async run(opts) {
      const r = await benchNic(opts);
      console.log(opts.json ? JSON.stringify({ benchmark: "nic", ...r }, null, 2) : formatNic(r));
    },
  },
  boot: {
    description:
      "stock Debian kernel, vCPU start to init: vireo vs qemu-system-x86_64 -enable-kvm (needs real KVM)",
    async run(opts) {
      const r = await benchBoot(opts);
      console.log(opts.json ? JSON.stringify({ benchmark: "boot", ...r }, null, 2) : formatBoot(r));
    },
  },
};

export async function runBenchmark(name: string, opts: BenchOptions): Promise<void> {
  const bench = BENCHMARKS[name];
  if (!bench) throw new Error(`unknown benchmark ${name}`);
  await bench.run(opts);
}
