/** Slow tier: Linux's virtio_rng against vireo's virtio-rng. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { LINUX_TEST_TIMEOUT_MS, linuxGuestSkip, runLinux } from "../helpers/linux-guest.ts";

test("/dev/hwrng is virtio_rng and yields data", {
  skip: linuxGuestSkip(),
  timeout: LINUX_TEST_TIMEOUT_MS,
}, () => {
  const r = runLinux(
    "cat /sys/class/misc/hw_random/rng_current; head -c 4096 /dev/hwrng | wc -c; head -c 32 /dev/hwrng | od -An -tx1",
    ["--rng"],
  );
  assert.equal(r.status, 0, r.stdout + r.stderr);
  const out = r.stdout.replace(/\r/g, "");
  assert.match(out, /^virtio_rng\.\d+$/m, out);
  assert.match(out, /^\s*4096$/m, out);
  const bytes = /((?:\s[0-9a-f]{2}){16}\n(?:\s[0-9a-f]{2}){16})/.exec(out)?.[1]?.trim().split(/\s+/) ?? [];
  assert.equal(bytes.length, 32, out);
  assert.ok(new Set(bytes).size > 8, `32 random bytes are not this repetitive: ${bytes.join(" ")}`);
});
