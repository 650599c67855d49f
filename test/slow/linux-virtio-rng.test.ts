/** Slow suite: Linux's virtio_rng against vireo's virtio-rng, in the real-KVM harness. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { findGuestImage } from "../../src/image/guest-image.ts";
import { FAST_BOOT, harnessUnavailable, runInRealKvm } from "../realkvm/harness.ts";

const skip = harnessUnavailable() ?? false;

test("/dev/hwrng is virtio_rng and yields data", { skip, timeout: 2_400_000 }, async () => {
  const image = findGuestImage();
  const run =
    "cat /sys/class/misc/hw_random/rng_current; head -c 4096 /dev/hwrng | wc -c; head -c 32 /dev/hwrng | od -An -tx1";
  const r = await runInRealKvm(
    `./bin/vireo run --kernel ${image?.kernel} --initrd ${image?.guestInitrd} --rng --timeout 1500 --stats 20 --cmdline '${FAST_BOOT} vireo.run="${run}"'`,
    { timeoutMs: 2_400_000 },
  );
  assert.equal(r.status, 0, r.console.slice(-4000));
  assert.match(r.output, /^virtio_rng\.\d+$/m, r.output);
  assert.match(r.output, /^\s*4096$/m, r.output);
  const bytes =
    /((?:\s[0-9a-f]{2}){16}\n(?:\s[0-9a-f]{2}){16})/.exec(r.output)?.[1]?.trim().split(/\s+/) ?? [];
  assert.equal(bytes.length, 32, r.output);
  assert.ok(new Set(bytes).size > 8, `32 random bytes are not this repetitive: ${bytes.join(" ")}`);
});
