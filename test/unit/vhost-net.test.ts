/**
 * `--net tap=NAME,vhost=on` without KVM: the option's parsing, what the guest is offered and what the kernel is
 * told from vhost-net's features, and the one clear error where /dev/vhost-net is missing (this machine has none;
 * a missing path stands in for it where it exists). The rings served by the kernel are tested in the emulated
 * KVM host: test/kvm/vhost-net.test.ts.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { test } from "node:test";
import { featureBit, VIRTIO_F } from "../../src/devices/virtio/constants.ts";
import { VIRTIO_NET_F } from "../../src/devices/virtio/net.ts";
import { ConfigError } from "../../src/errors.ts";
import { VHOST_F_LOG_ALL, VHOST_NET_F_VIRTIO_NET_HDR } from "../../src/vhost-net/abi.ts";
import { kernelAck, prepareVhostNet } from "../../src/vhost-net/device.ts";
import { openFailure, VhostNet, VhostNetError } from "../../src/vhost-net/kernel.ts";
import { guestFeatures } from "../../src/vhost-user/frontend-net.ts";
import { parseNet } from "../../src/vmm/pci-devices.ts";

test("--net tap=NAME,vhost=on parses; vhost= with anything but a virtio TAP is refused", () => {
  assert.deepEqual(parseNet("tap=vt0,vhost=on"), {
    tap: "vt0",
    mac: undefined,
    model: "virtio",
    vhost: true,
  });
  assert.deepEqual(parseNet("tap=vt0,vhost=off"), { tap: "vt0", mac: undefined, model: "virtio" });
  assert.throws(() => parseNet("tap=vt0,vhost=yes"), /want vhost=on or vhost=off/);
  assert.throws(() => parseNet("tap=vt0,vhost=on,model=e1000"), /virtio-net only/);
  assert.throws(() => parseNet("vhost-user=/tmp/s,vhost=on"), /goes with tap=NAME/);
});

// What drivers/vhost/net.c offers in Linux 6.1 (VHOST_NET_FEATURES): VHOST_FEATURES (NOTIFY_ON_EMPTY, INDIRECT_DESC,
// EVENT_IDX, LOG_ALL, ANY_LAYOUT, VERSION_1), VHOST_NET_F_VIRTIO_NET_HDR, MRG_RXBUF and ACCESS_PLATFORM.
const KERNEL =
  featureBit(24) |
  featureBit(VIRTIO_F.INDIRECT_DESC) |
  featureBit(VIRTIO_F.RING_EVENT_IDX) |
  featureBit(VHOST_F_LOG_ALL) |
  featureBit(VHOST_NET_F_VIRTIO_NET_HDR) |
  featureBit(VIRTIO_F.VERSION_1) |
  featureBit(VIRTIO_NET_F.MRG_RXBUF) |
  featureBit(VIRTIO_F.ACCESS_PLATFORM);

test("the guest is offered vhost-net's features that vireo's transport serves, plus the MAC and link status", () => {
  const o = guestFeatures(KERNEL);
  assert.equal(
    o.device,
    featureBit(VIRTIO_NET_F.MRG_RXBUF) | featureBit(VIRTIO_NET_F.MAC) | featureBit(VIRTIO_NET_F.STATUS),
  );
  assert.equal(
    o.transport,
    featureBit(VIRTIO_F.VERSION_1) | featureBit(VIRTIO_F.RING_EVENT_IDX) | featureBit(VIRTIO_F.INDIRECT_DESC),
  );
  // No IOMMU (ACCESS_PLATFORM), no dirty log, no notify-on-empty for the guest.
  assert.equal(o.transport & featureBit(VIRTIO_F.ACCESS_PLATFORM), 0n);
});

test("the kernel is told its share of what the guest negotiated: never the MAC, the dirty log or its own header", () => {
  const negotiated =
    featureBit(VIRTIO_F.VERSION_1) |
    featureBit(VIRTIO_F.RING_EVENT_IDX) |
    featureBit(VIRTIO_NET_F.MRG_RXBUF) |
    featureBit(VIRTIO_NET_F.MAC) |
    featureBit(VIRTIO_NET_F.STATUS);
  assert.equal(
    kernelAck(negotiated, KERNEL),
    featureBit(VIRTIO_F.VERSION_1) | featureBit(VIRTIO_F.RING_EVENT_IDX) | featureBit(VIRTIO_NET_F.MRG_RXBUF),
  );
  assert.equal(kernelAck(KERNEL, KERNEL) & (featureBit(VHOST_F_LOG_ALL) | featureBit(27)), 0n);
});

test("a host without /dev/vhost-net gets one line naming the device and the module", () => {
  assert.match(
    openFailure("/dev/vhost-net", "ENOENT", ""),
    /there is no \/dev\/vhost-net \(load the vhost_net module: modprobe vhost_net\)/,
  );
  const missing = "/dev/vireo-no-such-vhost-net";
  assert.throws(
    () => VhostNet.open(missing),
    (e: unknown) =>
      e instanceof VhostNetError && e.code === "VHOST_NET_OPEN" && /modprobe vhost_net/.test(e.message),
  );
});

test("vireo's setup stops at the missing device before it opens the TAP", {
  skip: existsSync("/dev/vhost-net") && "this host has /dev/vhost-net",
}, () => {
  const fds: number[] = [];
  assert.throws(
    () =>
      prepareVhostNet(
        {
          name: "net0",
          slot: 1,
          tap: "vt0",
          mac: new Uint8Array(6),
          ram: { fd: -1, size: 4096, hostAddress: 0n },
        },
        () => assert.fail("no eventfd before the device is open"),
        fds,
      ),
    (e: unknown) =>
      e instanceof ConfigError &&
      e.message ===
        "--net tap=vt0,vhost=on: there is no /dev/vhost-net (load the vhost_net module: modprobe vhost_net)",
  );
  assert.deepEqual(fds, []);
});
