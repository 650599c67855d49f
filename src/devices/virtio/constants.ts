/**
 * Numbers from the OASIS virtio 1.2 specification shared by the core, the transports and the device types.
 */

/** Device Status Field bits (2.1). */
export const VIRTIO_STATUS = {
  ACKNOWLEDGE: 1,
  DRIVER: 2,
  DRIVER_OK: 4,
  FEATURES_OK: 8,
  DEVICE_NEEDS_RESET: 0x40,
  FAILED: 0x80,
} as const;

/** Reserved (device-independent) feature bits (6 Reserved Feature Bits). */
export const VIRTIO_F = {
  INDIRECT_DESC: 28,
  RING_EVENT_IDX: 29,
  VERSION_1: 32,
  ACCESS_PLATFORM: 33,
  RING_PACKED: 34,
  IN_ORDER: 35,
  NOTIFICATION_DATA: 38,
  RING_RESET: 40,
} as const;

/** Virtio Device IDs (5 Device Types). */
export const VIRTIO_ID = {
  NET: 1,
  BLOCK: 2,
  CONSOLE: 3,
  ENTROPY: 4,
} as const;

/** "Vector value used to disable MSI for queue" (4.1.5.1.2 MSI-X Vector Configuration). */
export const VIRTIO_MSI_NO_VECTOR = 0xffff;

/** The feature bit `n` as a 64-bit mask. */
export function featureBit(n: number): bigint {
  return 1n << BigInt(n);
}

/**
 * The names of the bits set in `features`: reserved bits by VIRTIO_F's names, others by `named`'s (a device
 * type's bits, a protocol's), and any bit neither names as "bit N". Lowest bit first.
 */
export function featureNames(features: bigint, named: Readonly<Record<string, number>> = {}): string[] {
  const byBit = new Map<number, string>();
  for (const [name, bit] of Object.entries(named)) byBit.set(bit, name);
  for (const [name, bit] of Object.entries(VIRTIO_F)) byBit.set(bit, name);
  const out: string[] = [];
  for (let bit = 0; bit < 64; bit++) {
    if ((features >> BigInt(bit)) & 1n) out.push(byBit.get(bit) ?? `bit ${bit}`);
  }
  return out;
}

/** Whether `features` has bit `n`. */
export function hasFeature(features: bigint, n: number): boolean {
  return (features & featureBit(n)) !== 0n;
}

/** The device-independent features every vireo device offers (6 Reserved Feature Bits). */
export const TRANSPORT_FEATURES =
  featureBit(VIRTIO_F.VERSION_1) |
  featureBit(VIRTIO_F.RING_PACKED) |
  featureBit(VIRTIO_F.RING_EVENT_IDX) |
  featureBit(VIRTIO_F.INDIRECT_DESC) |
  featureBit(VIRTIO_F.RING_RESET);
