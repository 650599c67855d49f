/** Slow tier: vireo boots the stock Debian kernel with the initramfs `vireo image build` made. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { findGuestImage } from "../../src/image/guest-image.ts";
import { LINUX_TEST_TIMEOUT_MS, linuxGuestSkip, runLinux } from "../helpers/linux-guest.ts";

const skip = linuxGuestSkip();
const timeout = LINUX_TEST_TIMEOUT_MS;

test("a stock Debian kernel boots on 2 vCPUs, runs the command, powers off, and vireo exits 0", {
  skip,
  timeout,
}, () => {
  const r = runLinux("uname -r; nproc", ["--cpus", "2"]);
  assert.equal(r.status, 0, r.stdout + r.stderr);
  const version = findGuestImage()?.kernelVersion ?? "?";
  assert.match(r.stdout, new RegExp(`^${version.replace(/\./g, "\\.")}\\r?$`, "m"), r.stdout);
  assert.match(r.stdout, /^2\r?$/m, r.stdout);
  assert.match(r.stdout, /VIREO-RUN-EXIT=0/);
});

test("reboot -f in the guest ends vireo run with status 0", { skip, timeout }, () => {
  const r = runLinux("echo rebooting; reboot -f", ["--cpus", "2"]);
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /rebooting/);
});
