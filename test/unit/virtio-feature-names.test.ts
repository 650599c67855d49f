/**
 * featureNames: how `vireo switch show` reports what a front-end negotiated. Reserved bits (6 Reserved Feature
 * Bits) by their names, a device type's bits by the names given, anything else as "bit N", lowest bit first.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { featureBit, featureNames, VIRTIO_F } from "../../src/devices/virtio/constants.ts";
import { VIRTIO_NET_F } from "../../src/devices/virtio/net.ts";

test("reserved bits by name, the device's by the names given, the rest as bit N, lowest first", () => {
  const f =
    featureBit(VIRTIO_NET_F.MRG_RXBUF) |
    featureBit(VIRTIO_F.VERSION_1) |
    featureBit(VIRTIO_F.IN_ORDER) |
    featureBit(30) |
    featureBit(63);
  assert.deepEqual(featureNames(f, VIRTIO_NET_F), ["MRG_RXBUF", "bit 30", "VERSION_1", "IN_ORDER", "bit 63"]);
  assert.deepEqual(featureNames(f, { ...VIRTIO_NET_F, PROTOCOL_FEATURES: 30 }), [
    "MRG_RXBUF",
    "PROTOCOL_FEATURES",
    "VERSION_1",
    "IN_ORDER",
    "bit 63",
  ]);
  // Without device names a device bit is only a number.
  assert.deepEqual(featureNames(featureBit(VIRTIO_NET_F.MRG_RXBUF)), ["bit 15"]);
  assert.deepEqual(featureNames(0n), []);
});
