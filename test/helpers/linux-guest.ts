/**
 * The slow tier's Linux guests: the Debian kernel and initramfs `vireo image build` made, booted by the real
 * `vireo run` with vireo.run="COMMAND" (the guest's init runs it and powers off). They need real KVM (VMX/SVM):
 * test/realkvm/tier.ts runs the tier in the emulated KVM host where this host has none.
 */
import { findGuestImage } from "../../src/image/guest-image.ts";
import { FAST_BOOT_CMDLINE } from "../../src/image/init-scripts.ts";
import { KvmSystem } from "../../src/kvm/system.ts";
import { type CliResult, vireo } from "./cli.ts";

/** Why Linux guests cannot run here, or false. */
export function linuxGuestSkip(): string | false {
  if (KvmSystem.hostKind() !== "kvm" && KvmSystem.hostKind() !== "emulated")
    return "Linux guests need real KVM (VMX/SVM): run this tier with scripts/test.sh slow, which uses the emulated KVM host";
  if (!findGuestImage()) return "no guest image: run ./bin/vireo image build";
  return false;
}

/**
 * Generous: under TCG (the emulated host) a boot to init takes about a minute, a few with the machine loaded. It
 * stays below the emulated host's silence limit for a tier (test/realkvm/tier.ts), so a stuck guest is reported by
 * its test, with vireo's own time-out and output, not by the emulated host being killed.
 */
export const LINUX_TEST_TIMEOUT_MS = 600_000;

/** `vireo run`'s arguments for the guest image with `run` as the guest's command; `argv` adds options (devices). */
export function linuxRunArgs(run: string, argv: string[] = []): string[] {
  const image = findGuestImage();
  if (!image) throw new Error("no guest image");
  return [
    "run",
    "--kernel",
    image.kernel,
    "--initrd",
    image.guestInitrd,
    ...argv,
    // vireo's own time-out, then its bounded stop (STOP_GRACE_MS, 30 s in the emulated host, and 5 s for a thread
    // it ends), all before runLinux's kill: a stuck run then ends with vireo's own account of it.
    "--timeout",
    String(LINUX_TEST_TIMEOUT_MS / 1000 - 90),
    "--cmdline",
    `${FAST_BOOT_CMDLINE} vireo.run="${run}"`,
  ];
}

/** `vireo run` on the guest image with `run` as the guest's command; `argv` adds options (devices). */
export function runLinux(run: string, argv: string[] = [], opts: { prefix?: string[] } = {}): CliResult {
  return vireo(linuxRunArgs(run, argv), { timeoutMs: LINUX_TEST_TIMEOUT_MS - 30_000, prefix: opts.prefix });
}
