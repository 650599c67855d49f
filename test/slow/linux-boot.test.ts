/**
 * Slow suite (VIREO_SLOW=1): vireo boots the stock Debian kernel with the initramfs `vireo image build` made, on
 * real KVM semantics — inside the harness VM (QEMU TCG, -cpu max, kvm_amd), since this host's own KVM is PVM.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { findGuestImage } from "../../src/image/guest-image.ts";
import { FAST_BOOT, harnessUnavailable, runInRealKvm } from "../realkvm/harness.ts";

const skip = harnessUnavailable() ?? false;

function vireoLinux(run: string, extra = ""): string {
  const image = findGuestImage();
  return `./bin/vireo run --kernel ${image?.kernel} --initrd ${image?.guestInitrd} ${extra} --timeout 1500 --stats 20 --cmdline '${FAST_BOOT} vireo.run="${run}"'`;
}

test("a stock Debian kernel boots on 2 vCPUs, runs the command, powers off, and vireo exits 0", {
  skip,
  timeout: 2_400_000,
}, async () => {
  const image = findGuestImage();
  const r = await runInRealKvm(`${vireoLinux("uname -r; nproc", "--cpus 2")}\necho "vireo-status=$?"`, {
    timeoutMs: 2_400_000,
  });
  assert.equal(r.status, 0, r.console.slice(-4000));
  assert.match(r.output, new RegExp(`^${image?.kernelVersion.replace(/\./g, "\\.")}$`, "m"), r.output);
  assert.match(r.output, /^2$/m, r.output);
  assert.match(r.output, /VIREO-RUN-EXIT=0/);
  assert.match(r.output, /vireo-status=0/);
});

test("reboot -f in the guest ends vireo run with status 0", { skip, timeout: 2_400_000 }, async () => {
  const r = await runInRealKvm(`${vireoLinux("echo rebooting; reboot -f")}\necho "vireo-status=$?"`, {
    timeoutMs: 2_400_000,
  });
  assert.equal(r.status, 0, r.console.slice(-4000));
  assert.match(r.output, /rebooting/);
  assert.match(r.output, /vireo-status=0/);
});
