/**
 * Slow suite: Linux's own virtio_pci + virtio_blk drivers against vireo's virtio-blk, in the real-KVM harness.
 * The guest writes 1 MiB of random data to /dev/vda and prints its SHA-256; vireo's host (the harness VM) then
 * hashes the image file itself. The image lives in the harness VM's /tmp, since the host root is read-only there.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { findGuestImage } from "../../src/image/guest-image.ts";
import { FAST_BOOT, harnessUnavailable, runInRealKvm } from "../realkvm/harness.ts";

const skip = harnessUnavailable() ?? false;

test("a Debian guest sees /dev/vda and the host finds exactly the data it wrote", {
  skip,
  timeout: 2_400_000,
}, async () => {
  const image = findGuestImage();
  const run = [
    "cat /sys/block/vda/size",
    "head -c 1048576 /dev/urandom > /tmp/f",
    "sha256sum /tmp/f",
    "dd if=/tmp/f of=/dev/vda bs=65536 conv=fsync 2>/dev/null",
  ].join("; ");
  const script = [
    "truncate -s 16M /tmp/vda.img",
    `./bin/vireo run --kernel ${image?.kernel} --initrd ${image?.guestInitrd} --disk /tmp/vda.img --timeout 1500 --stats 20 --cmdline '${FAST_BOOT} vireo.run="${run}"'`,
    'echo "host-sha256 $(head -c 1048576 /tmp/vda.img | sha256sum)"',
  ].join("\n");
  const r = await runInRealKvm(script, { timeoutMs: 2_400_000 });
  assert.equal(r.status, 0, r.console.slice(-4000));
  assert.match(r.output, /^32768$/m, "16 MiB = 32768 sectors");
  const guest = /^([0-9a-f]{64})\s+\/tmp\/f$/m.exec(r.output)?.[1];
  const host = /^host-sha256 ([0-9a-f]{64})/m.exec(r.output)?.[1];
  assert.ok(guest, r.output);
  assert.equal(host, guest, "the image file holds what the guest wrote");
});
