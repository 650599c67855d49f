/**
 * virtio-blk's part of a vhost-user front-end (`--disk vhost-user=PATH[,readonly]`; the device-agnostic rest is
 * frontend-device.ts): which block features are the back-end's, and the configuration space, which only the
 * back-end knows (capacity, seg_max, blk_size, ...): read once with VHOST_USER_GET_CONFIG (PROTOCOL_F_CONFIG) when
 * vireo connects, checked, and served from that copy.
 */

import { BLK_CONFIG, VIRTIO_BLK_F } from "../devices/virtio/blk.ts";
import { featureBit, hasFeature, VIRTIO_ID } from "../devices/virtio/constants.ts";
import { type OfferedFeatures, offerFeatures, type VhostUserFace } from "./frontend-device.ts";
import { PROTOCOL_F } from "./protocol.ts";

/** Block features the back-end serves (it does the I/O and wrote the configuration space they describe). */
export const BACKEND_BLK_FEATURES = [
  VIRTIO_BLK_F.SIZE_MAX,
  VIRTIO_BLK_F.SEG_MAX,
  VIRTIO_BLK_F.GEOMETRY,
  VIRTIO_BLK_F.RO,
  VIRTIO_BLK_F.BLK_SIZE,
  VIRTIO_BLK_F.FLUSH,
  VIRTIO_BLK_F.TOPOLOGY,
  VIRTIO_BLK_F.MQ,
  VIRTIO_BLK_F.DISCARD,
  VIRTIO_BLK_F.WRITE_ZEROES,
].reduce((m, b) => m | featureBit(b), 0n);

/** Protocol features the blk front-end asks for: REPLY_ACK, CONFIG (needed), INFLIGHT_SHMFD (used if offered). */
export const BLK_PROTOCOL_FEATURES =
  featureBit(PROTOCOL_F.REPLY_ACK) |
  featureBit(PROTOCOL_F.CONFIG) |
  featureBit(PROTOCOL_F.INFLIGHT_SHMFD) |
  featureBit(PROTOCOL_F.LOG_SHMFD);

/** The ring size offered to the guest: QEMU's vhost-user-blk-pci default and vireo vhost-user blk's largest. */
export const VHOST_USER_BLK_QUEUE_SIZE = 128;

/** Request queues taken at most from a back-end's num_queues (one kick and call fd each). */
export const MAX_VHOST_USER_BLK_QUEUES = 16;

/** The configuration space read from the back-end: struct virtio_blk_config up to the write-zeroes fields (5.2.4). */
export const BLK_CONFIG_BYTES = BLK_CONFIG.SIZE;

/**
 * What the guest is offered: the back-end's block features, VIRTIO_BLK_F_RO too when the disk is given
 * `readonly` (the guest's driver then writes nothing; the back-end, which does the I/O, is what enforces it).
 */
export function blkGuestFeatures(backend: bigint, readOnly: boolean): OfferedFeatures {
  return offerFeatures(backend, BACKEND_BLK_FEATURES, readOnly ? featureBit(VIRTIO_BLK_F.RO) : 0n);
}

/**
 * The request queues a back-end's configuration describes: num_queues with VIRTIO_BLK_F_MQ (5.2.4), else 1. A
 * value vireo cannot serve is a reason (string); the back-end is another program and may send anything.
 */
export function blkQueues(config: Uint8Array, backendFeatures: bigint): number | string {
  if (config.length < BLK_CONFIG_BYTES) return `the configuration space has ${config.length} bytes`;
  if (!hasFeature(backendFeatures, VIRTIO_BLK_F.MQ)) return 1;
  const n = new DataView(config.buffer, config.byteOffset).getUint16(BLK_CONFIG.NUM_QUEUES, true);
  if (n < 1 || n > MAX_VHOST_USER_BLK_QUEUES)
    return `num_queues ${n} is not 1 to ${MAX_VHOST_USER_BLK_QUEUES}`;
  return n;
}

/** The face of a vhost-user virtio-blk: the back-end's configuration space as read at connect time. */
export function blkFace(config: readonly number[], numQueues: number): VhostUserFace {
  const bytes = Uint8Array.from(config);
  return {
    type: VIRTIO_ID.BLOCK,
    numQueues,
    maxQueueSize: VHOST_USER_BLK_QUEUE_SIZE,
    configSize: bytes.length,
    stateBytes: 0,
    readConfig: (offset, data) => {
      data.fill(0);
      if (offset < 0 || offset >= bytes.length) return;
      data.set(bytes.subarray(offset, offset + data.length));
    },
  };
}
