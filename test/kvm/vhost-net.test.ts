/**
 * Kernel vhost-net: `vireo run --net tap=NAME,vhost=on`, the rings served by the host kernel (/dev/vhost-net,
 * loaded in the emulated KVM host: HARNESS_MODULES). The micro guest's virtio-net driver sends frames to the host
 * and echoes frames the host sends, through a TAP in a network namespace (test/helpers/netpeer.py checks every
 * one). The guest's doorbells are KVM ioeventfds the kernel's vhost worker polls and its interrupts irqfds the
 * worker signals, so no frame passes through vireo: its own virtio-net counters stay 0 and MMIO exits do not grow
 * per frame. Also: a host without the device gets one clear line (status 125) naming it and the module.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { test } from "node:test";
import { KvmSystem } from "../../src/kvm/system.ts";
import { metricsPath, readMetrics, vireo } from "../helpers/cli.ts";
import { assertFramesExchanged, exchangeFrames, netnsMaker, netnsUnavailable } from "../helpers/netns.ts";

const kvmSkip = KvmSystem.available() ? false : "no usable /dev/kvm on this host: KVM tests skipped";
const vhostSkip =
  kvmSkip ||
  (existsSync("/dev/vhost-net") ? false : "no /dev/vhost-net on this host (modprobe vhost_net): skipped") ||
  (netnsUnavailable() ?? false);
const netns = netnsMaker();

for (const features of [["event-idx"], []]) {
  test(`the micro guest's virtio-net exchanges 2,000 frames each way through vhost-net${features.length ? " (event-idx)" : ""}`, {
    skip: vhostSkip,
  }, async () => {
    const ns = netns();
    const count = 2000;
    const size = 1000;
    const mac = "02:76:69:aa:bb:0b";
    const metricsFile = metricsPath("vireo-vhost-net-");
    const t0 = performance.now();
    const r = await exchangeFrames(
      ns,
      [
        "--guest",
        "micro:virtio-net-test",
        String(count),
        String(size),
        ...features,
        "--net",
        `tap=${ns.tap},vhost=on,mac=${mac}`,
        "--timeout",
        "240",
        "--metrics",
        metricsFile,
      ],
      { count, size },
      300_000,
    );
    const seconds = ((performance.now() - t0) / 1000).toFixed(1);
    assertFramesExchanged(r, count, mac, "the guest used the MAC given with --net");
    assert.match(r.vireo.stdout, /virtio-net-test ok/);
    const metrics = readMetrics(metricsFile);
    assert.ok((metrics["vhost-net.net0.ring_starts"] ?? 0) >= 2, "both rings were given to the kernel");
    // No frame went through vireo's own virtio-net code or a data-plane thread: the kernel moved them all.
    assert.equal(metrics["virtio.net0.tx_packets"] ?? 0, 0, "vireo transmitted nothing itself");
    assert.equal(metrics["virtio.net0.rx_packets"] ?? 0, 0, "vireo received nothing itself");
    assert.equal(metrics["vhost.net0.kicks"] ?? 0, 0, "no doorbell reached a data-plane thread of vireo's");
    // Doorbells were KVM ioeventfds: MMIO exits are the driver's setup, not one per frame.
    assert.ok(metrics["exits.mmio"] !== undefined, "MMIO exits are counted");
    assert.ok(
      (metrics["exits.mmio"] ?? 0) < count,
      `MMIO exits ${metrics["exits.mmio"]} should not grow per frame`,
    );
    process.stderr.write(
      `vhost-net exchange: ${seconds} s, exits.mmio ${metrics["exits.mmio"]}, ring_starts ${metrics["vhost-net.net0.ring_starts"]}, intx_relayed ${metrics["vhost-net.net0.intx_relayed"] ?? 0}\n`,
    );
  });
}

test("--net tap=NAME,vhost=on without /dev/vhost-net is one clear line, status 125", {
  skip: kvmSkip,
}, () => {
  // VIREO_VHOST_NET points vireo at a missing device, as on a host without the module.
  const r = vireo(["run", "--guest", "micro:pci", "--net", "tap=vt9,vhost=on"], {
    env: { VIREO_VHOST_NET: "/dev/vireo-no-vhost-net" },
  });
  assert.equal(r.status, 125, r.stdout + r.stderr);
  const lines = r.stderr.trim().split("\n");
  assert.equal(lines.length, 1, r.stderr);
  assert.equal(
    lines[0],
    "vireo: --net tap=vt9,vhost=on: there is no /dev/vireo-no-vhost-net (load the vhost_net module: modprobe vhost_net)",
  );
});
