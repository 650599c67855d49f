/**
 * Slow suite: Linux's own NIC drivers against vireo's virtio-net and e1000, in the real-KVM harness. The harness
 * script makes a TAP with an address on the host side; vireo attaches the guest's NIC to it; the guest brings
 * eth0 up and pings the host.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { findGuestImage } from "../../src/image/guest-image.ts";
import { FAST_BOOT, harnessUnavailable, runInRealKvm } from "../realkvm/harness.ts";

const skip = harnessUnavailable() ?? false;

const models = [
  { model: "virtio", driver: "virtio_net" },
  { model: "e1000", driver: "e1000" },
] as const;

for (const { model, driver } of models) {
  test(`eth0 (${driver}) pings the host through a TAP`, { skip, timeout: 2_400_000 }, async () => {
    const image = findGuestImage();
    const guest = [
      "basename $(readlink /sys/class/net/eth0/device/driver)",
      "ip link set eth0 up",
      "ip addr add 10.0.2.15/24 dev eth0",
      "ping -c 3 -W 30 10.0.2.1",
    ].join("; ");
    const script = [
      "set -e",
      "ip tuntap add dev vt0 mode tap vnet_hdr",
      "ip addr add 10.0.2.1/24 dev vt0",
      "ip link set vt0 up",
      `./bin/vireo run --kernel ${image?.kernel} --initrd ${image?.guestInitrd} --net tap=vt0,model=${model},mac=02:76:69:00:00:0f --timeout 1500 --stats 30 --cmdline '${FAST_BOOT} vireo.run="${guest}"'`,
    ].join("\n");
    const r = await runInRealKvm(script, { timeoutMs: 2_400_000 });
    assert.equal(r.status, 0, r.console.slice(-4000));
    assert.match(r.output, new RegExp(`^${driver}$`, "m"), r.output);
    assert.match(r.output, /3 packets transmitted, 3 packets received/, r.output);
  });
}
