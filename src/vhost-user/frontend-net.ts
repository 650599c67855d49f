/**
 * virtio-net's part of a vhost-user front-end (`--net vhost-user=PATH`; the device-agnostic rest is
 * frontend-device.ts): the features that are the back-end's business and the configuration space (MAC, link
 * status), which is vireo's own VirtioNet's.
 */
import { featureBit } from "../devices/virtio/constants.ts";
import { VIRTIO_NET_F, VirtioNet, type VirtioNetBackend } from "../devices/virtio/net.ts";
import { type OfferedFeatures, offerFeatures, type VhostUserFace } from "./frontend-device.ts";

/** Net features that are the back-end's business (it moves the frames): offered when the back-end offers them. */
export const BACKEND_NET_FEATURES = [
  VIRTIO_NET_F.CSUM,
  VIRTIO_NET_F.GUEST_CSUM,
  VIRTIO_NET_F.GUEST_TSO4,
  VIRTIO_NET_F.GUEST_TSO6,
  VIRTIO_NET_F.GUEST_ECN,
  VIRTIO_NET_F.GUEST_UFO,
  VIRTIO_NET_F.HOST_TSO4,
  VIRTIO_NET_F.HOST_TSO6,
  VIRTIO_NET_F.HOST_ECN,
  VIRTIO_NET_F.HOST_UFO,
  VIRTIO_NET_F.MRG_RXBUF,
].reduce((m, b) => m | featureBit(b), 0n);

/** Features vireo itself serves (the configuration space): offered whatever the back-end says. */
export const VIREO_NET_FEATURES = featureBit(VIRTIO_NET_F.MAC) | featureBit(VIRTIO_NET_F.STATUS);

/** The queue size offered to the guest (QEMU's default for vhost-user net too). */
export const VHOST_USER_NET_QUEUE_SIZE = 256;

/** What the guest is offered for a back-end offering `backend` (GET_FEATURES). */
export function guestFeatures(backend: bigint): OfferedFeatures {
  return offerFeatures(backend, BACKEND_NET_FEATURES, VIREO_NET_FEATURES);
}

/** A backend for the configuration-space VirtioNet: its rings are never served here. */
const NO_FRAMES: VirtioNetBackend = {
  name: "vhost-user",
  send: () => false,
  attach() {},
  rxReady() {},
  close() {},
};

/** The face of a vhost-user virtio-net: vireo's VirtioNet for the configuration space, link state and rules. */
export function netFace(name: string, mac: Uint8Array): VhostUserFace {
  const net = new VirtioNet({ backend: NO_FRAMES, mac, name, queueSize: VHOST_USER_NET_QUEUE_SIZE });
  return {
    type: net.type,
    numQueues: 2,
    maxQueueSize: VHOST_USER_NET_QUEUE_SIZE,
    configSize: net.configSize,
    stateBytes: net.stateBytes,
    bind: (ctx) => net.bind(ctx),
    readConfig: (o, d) => net.readConfig(o, d),
    validateFeatures: (a) => net.validateFeatures(a),
  };
}
