/**
 * `vireo bench boot`: how long a stock Debian kernel takes from vCPU start to its init running, under vireo and
 * under `qemu-system-x86_64 -enable-kvm` with the same kernel, initramfs and command line, rounds interleaved.
 *
 * The guest image's init writes boot marker 1 (byte 0x01 to the debug console port 0xE9 through /dev/port) as
 * soon as it starts. vireo timestamps it with its debugcon device; QEMU gets an isa-debugcon at 0xE9 whose output
 * (a file we poll). Not 0x510-0x51F: QEMU's fw_cfg lives there. QEMU gets `-serial null` so the guest has a ttyS0
 * (without a console, init has nowhere to write and the guest never powers off).
 * For vireo the interval starts when the boot vCPU first enters KVM_RUN. QEMU does not report that moment, so
 * its interval starts when the process is spawned (which includes QEMU's own start-up); vireo's spawn-based
 * figure is reported too, and the ratio uses the spawn-based figures of both, like for like.
 *
 * Needs real KVM: on a PVM host run it in the real-KVM harness (`npm run realkvm -- './bin/vireo bench boot'`).
 */
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { VireoError } from "../src/errors.ts";
import { findGuestImage } from "../src/image/guest-image.ts";
import { FAST_BOOT_CMDLINE } from "../src/image/init-scripts.ts";
import { KvmSystem } from "../src/kvm/system.ts";
import { Machine } from "../src/vmm/machine.ts";
import type { BenchOptions } from "./index.ts";
import { formatTable, median } from "./stats.ts";

/** A QEMU that never reaches init is killed after this long, and the round fails with its stderr. */
const QEMU_TIMEOUT_MS = 600_000;

export const BOOT_CMDLINE = `${FAST_BOOT_CMDLINE} vireo.run="true"`;

interface Round {
  vireoFromVcpuMs: number;
  vireoFromStartMs: number;
  qemuFromStartMs: number;
}

async function vireoRound(
  kernel: string,
  initrd: string,
  cpus: number,
): Promise<Omit<Round, "qemuFromStartMs">> {
  const startNs = Number(process.hrtime.bigint());
  const result = await new Machine({
    kernel,
    initrd,
    cmdline: BOOT_CMDLINE,
    memMiB: 512,
    cpus,
    serial: { kind: "none" },
    timeoutMs: 1_800_000,
    force: true,
  }).run();
  const marker = result.markers.get(1);
  if (marker === undefined || result.vcpuStartNs === undefined) {
    throw new VireoError(
      "VIREO_BENCH_FAILED",
      `vireo: the guest's init never wrote its marker (${result.outcome} ${result.message ?? ""})`,
    );
  }
  return { vireoFromVcpuMs: (marker - result.vcpuStartNs) / 1e6, vireoFromStartMs: (marker - startNs) / 1e6 };
}

function qemuRound(kernel: string, initrd: string, cpus: number): Promise<number> {
  // The debug console goes to a file we poll: QEMU's stdio chardev misbehaves without a terminal on stdin.
  const markerFile = join(mkdtempSync(join(tmpdir(), "vireo-boot-")), "marker");
  writeFileSync(markerFile, "");
  const args = [
    "-enable-kvm",
    "-cpu",
    // The same CPUID policy as vireo's (CpuidPolicy.hideXsave): in the emulated host a guest's XSETBV is not
    // trapped, so neither VMM offers XSAVE there.
    KvmSystem.hostKind() === "emulated"
      ? "host,-xsave,-xsaveopt,-xsavec,-xgetbv1,-avx,-avx2,-fma,-f16c,-pku"
      : "host",
    "-m",
    "512",
    "-smp",
    String(cpus),
    "-nodefaults",
    "-no-user-config",
    "-display",
    "none",
    "-serial",
    "null",
    "-no-reboot",
    "-kernel",
    kernel,
    "-initrd",
    initrd,
    "-append",
    BOOT_CMDLINE,
    "-chardev",
    `file,id=marker,path=${markerFile}`,
    "-device",
    "isa-debugcon,iobase=0xe9,chardev=marker",
  ];
  const started = process.hrtime.bigint();
  const child = spawn("qemu-system-x86_64", args, { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (d: Buffer) => {
    stderr += d.toString();
  });
  let seen: number | undefined;
  const poll = setInterval(() => {
    if (seen === undefined && readFileSync(markerFile).includes(1)) {
      seen = Number(process.hrtime.bigint() - started) / 1e6;
    }
  }, 2);
  const killer = setTimeout(() => child.kill("SIGKILL"), QEMU_TIMEOUT_MS);
  return new Promise((resolve, reject) => {
    child.on("error", (e) =>
      reject(new VireoError("VIREO_BENCH_FAILED", `qemu-system-x86_64: ${e.message}`)),
    );
    child.on("close", (code) => {
      clearTimeout(killer);
      clearInterval(poll);
      if (seen === undefined && readFileSync(markerFile).includes(1))
        seen = Number(process.hrtime.bigint() - started) / 1e6;
      rmSync(markerFile, { force: true });
      if (seen !== undefined) resolve(seen);
      else
        reject(
          new VireoError(
            "VIREO_BENCH_FAILED",
            `qemu-system-x86_64 exited ${code} before the marker: ${stderr.trim()}`,
          ),
        );
    });
  });
}

export async function benchBoot(opts: BenchOptions & { force?: boolean }) {
  const image = findGuestImage();
  if (!image) throw new VireoError("VIREO_BENCH_FAILED", "no guest image: run ./bin/vireo image build");
  if (KvmSystem.isPvm() && !opts.force) {
    throw new VireoError(
      "VIREO_PVM_SLOW",
      "this host's KVM is PVM, where a stock kernel boots emulated; run the benchmark in the real-KVM harness: npm run realkvm -- './bin/vireo bench boot'",
    );
  }
  const cpus = 1;
  const rounds: Round[] = [];
  for (let i = 0; i < opts.rounds; i++) {
    const v = await vireoRound(image.kernel, image.guestInitrd, cpus);
    const q = await qemuRound(image.kernel, image.guestInitrd, cpus);
    rounds.push({ ...v, qemuFromStartMs: q });
    if (!opts.json && process.stderr.isTTY) process.stderr.write(`\rround ${i + 1}/${opts.rounds}`);
  }
  if (!opts.json && process.stderr.isTTY) process.stderr.write("\n");
  const vireoFromVcpuMs = median(rounds.map((r) => r.vireoFromVcpuMs));
  const vireoFromStartMs = median(rounds.map((r) => r.vireoFromStartMs));
  const qemuFromStartMs = median(rounds.map((r) => r.qemuFromStartMs));
  return {
    kernel: image.kernelVersion,
    cpus,
    rounds,
    medians: { vireoFromVcpuMs, vireoFromStartMs, qemuFromStartMs },
    ratio: vireoFromStartMs / qemuFromStartMs,
  };
}

export function formatBoot(r: Awaited<ReturnType<typeof benchBoot>>): string {
  const m = r.medians;
  return [
    `boot to init, Linux ${r.kernel}, ${r.cpus} vCPU, median of ${r.rounds.length} interleaved rounds`,
    formatTable(
      ["VMM", "from vCPU start", "from process start", "vs QEMU"],
      [
        [
          "vireo",
          `${m.vireoFromVcpuMs.toFixed(0)} ms`,
          `${m.vireoFromStartMs.toFixed(0)} ms`,
          `${r.ratio.toFixed(2)}x`,
        ],
        ["qemu -enable-kvm", "(not reported)", `${m.qemuFromStartMs.toFixed(0)} ms`, "1.00x"],
      ],
    ),
  ].join("\n");
}
