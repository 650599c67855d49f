/**
 * Slow tier: Linux's virtio_net on a card whose rings the host kernel serves (`--net tap=NAME,vhost=on`,
 * /dev/vhost-net, which the emulated KVM host loads). The guest brings eth0 up, pings the TAP's address in a
 * network namespace, takes the link down and up again (the driver resets the device: the kernel lets go of the
 * rings, VHOST_GET_VRING_BASE, and gets them again on the next DRIVER_OK) and pings again. No frame passes
 * through vireo: its own virtio-net counters stay 0.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { test } from "node:test";
import { metricsPath, readMetrics } from "../helpers/cli.ts";
import { LINUX_TEST_TIMEOUT_MS, linuxGuestSkip, runLinux } from "../helpers/linux-guest.ts";
import { netnsMaker, netnsUnavailable } from "../helpers/netns.ts";

const skip =
  linuxGuestSkip() ||
  (netnsUnavailable() ?? false) ||
  (existsSync("/dev/vhost-net") ? false : "no /dev/vhost-net on this host (modprobe vhost_net): skipped");
const makeNs = netnsMaker();

test("Linux's virtio_net pings the host through vhost-net, before and after a device reset", {
  skip,
  timeout: LINUX_TEST_TIMEOUT_MS,
}, () => {
  const ns = makeNs();
  ns.addTapAddress("10.0.2.1/24");
  const metricsFile = metricsPath("vireo-vhost-net-linux-");
  const guest = [
    "basename $(readlink /sys/class/net/eth0/device/driver)",
    "ip link set eth0 up",
    "ip addr add 10.0.2.15/24 dev eth0",
    "ping -c 3 -W 30 10.0.2.1",
    // Unbinding and binding the driver resets the device and starts it again.
    "d=$(basename $(readlink /sys/class/net/eth0/device))",
    "echo $d > /sys/bus/virtio/drivers/virtio_net/unbind",
    "echo $d > /sys/bus/virtio/drivers/virtio_net/bind",
    "ip link set eth0 up",
    "ip addr add 10.0.2.15/24 dev eth0",
    "ping -c 3 -W 30 10.0.2.1",
  ].join("; ");
  const r = runLinux(
    guest,
    ["--net", `tap=${ns.tap},vhost=on,mac=02:76:69:00:00:1f`, "--metrics", metricsFile],
    {
      prefix: ns.exec([]),
    },
  );
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /^virtio_net\r?$/m, r.stdout);
  const pings = r.stdout.match(/3 packets transmitted, 3 packets received/g) ?? [];
  assert.equal(pings.length, 2, `both pings answered:\n${r.stdout}`);
  const m = readMetrics(metricsFile);
  assert.ok(
    (m["vhost-net.net0.ring_starts"] ?? 0) >= 4,
    `rings started twice: ${m["vhost-net.net0.ring_starts"]}`,
  );
  assert.ok(
    (m["vhost-net.net0.ring_stops"] ?? 0) >= 2,
    `rings stopped on the reset: ${m["vhost-net.net0.ring_stops"]}`,
  );
  assert.equal(m["virtio.net0.tx_packets"] ?? 0, 0, "vireo transmitted nothing itself");
  assert.equal(m["virtio.net0.rx_packets"] ?? 0, 0, "vireo received nothing itself");
});
