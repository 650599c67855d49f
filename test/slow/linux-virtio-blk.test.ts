/**
 * Slow tier: Linux's virtio_pci + virtio_blk drivers against vireo's virtio-blk. The guest writes 1 MiB of random
 * data to /dev/vda and prints its SHA-256; the test then hashes the image file itself.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { LINUX_TEST_TIMEOUT_MS, linuxGuestSkip, runLinux } from "../helpers/linux-guest.ts";

test("a Debian guest sees /dev/vda and the host finds exactly the data it wrote", {
  skip: linuxGuestSkip(),
  timeout: LINUX_TEST_TIMEOUT_MS,
}, () => {
  const dir = mkdtempSync(join(tmpdir(), "vireo-blk-"));
  try {
    const disk = join(dir, "vda.img");
    writeFileSync(disk, "");
    truncateSync(disk, 16 << 20);
    const r = runLinux(
      [
        "cat /sys/block/vda/size",
        "head -c 1048576 /dev/urandom > /tmp/f",
        "sha256sum /tmp/f",
        "dd if=/tmp/f of=/dev/vda bs=65536 conv=fsync 2>/dev/null",
      ].join("; "),
      ["--disk", disk],
    );
    assert.equal(r.status, 0, r.stdout + r.stderr);
    const out = r.stdout.replace(/\r/g, "");
    assert.match(out, /^32768$/m, "16 MiB = 32768 sectors");
    const guest = /^([0-9a-f]{64})\s+\/tmp\/f$/m.exec(out)?.[1];
    assert.ok(guest, out);
    const host = createHash("sha256")
      .update(readFileSync(disk).subarray(0, 1 << 20))
      .digest("hex");
    assert.equal(host, guest, "the image file holds what the guest wrote");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
