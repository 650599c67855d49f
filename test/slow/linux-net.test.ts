/**
 * Slow tier: Linux's own NIC drivers against vireo's virtio-net and e1000. Each test makes a network namespace
 * with a TAP that has an address; vireo attaches the guest's NIC to it; the guest brings eth0 up and pings it.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { LINUX_TEST_TIMEOUT_MS, linuxGuestSkip, runLinux } from "../helpers/linux-guest.ts";
import { netnsMaker, netnsUnavailable } from "../helpers/netns.ts";

const skip = linuxGuestSkip() || (netnsUnavailable() ?? false);
const makeNs = netnsMaker();

for (const { model, driver } of [
  { model: "virtio", driver: "virtio_net" },
  { model: "e1000", driver: "e1000" },
] as const) {
  test(`eth0 (${driver}) pings the host through a TAP`, { skip, timeout: LINUX_TEST_TIMEOUT_MS }, () => {
    const ns = makeNs();
    ns.addTapAddress("10.0.2.1/24");
    const guest = [
      "basename $(readlink /sys/class/net/eth0/device/driver)",
      "ip link set eth0 up",
      "ip addr add 10.0.2.15/24 dev eth0",
      "ping -c 3 -W 30 10.0.2.1",
    ].join("; ");
    const r = runLinux(guest, ["--net", `tap=${ns.tap},model=${model},mac=02:76:69:00:00:0f`], {
      prefix: ns.exec([]),
    });
    assert.equal(r.status, 0, r.stdout + r.stderr);
    assert.match(r.stdout, new RegExp(`^${driver}\\r?$`, "m"), r.stdout);
    assert.match(r.stdout, /3 packets transmitted, 3 packets received/, r.stdout);
  });
}
