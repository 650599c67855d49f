/**
 * The virtqueue layer: one device-side queue interface, two ring layouts (virtio 1.2, 2.7 Split Virtqueues and
 * 2.8 Packed Virtqueues). Depends only on GuestMemory, so it runs on any thread or in any process.
 *
 * A device's queue handler, on an available buffer notification, where handle(c) reads the request with a
 * ChainReader, writes the response with a ChainWriter and calls q.pushUsed(c, writer.position):
 *
 *   for (;;) {
 *     q.setDriverNotifications(false);
 *     for (let c = q.pop(); c; c = q.pop()) handle(c);
 *     q.setDriverNotifications(true);
 *     const late = q.pop(); // re-check: a buffer may have come before notifications were re-enabled
 *     if (!late) break;
 *     handle(late);
 *   }
 *   if (q.shouldNotifyDriver()) raiseInterrupt();
 *
 * A VirtqueueError with code VIREO_VIRTQUEUE_MALFORMED from pop() means the driver broke the ring: the device
 * sets DEVICE_NEEDS_RESET and stops using the queue until the driver resets it.
 */
import type { GuestMemory } from "../../../memory/guest-memory.ts";
import { PackedQueue } from "./packed.ts";
import { SplitQueue } from "./split.ts";
import {
  type QueueConfig,
  type QueueFeatures,
  type QueueKind,
  type Virtqueue,
  VirtqueueError,
  type VirtqueueOptions,
} from "./types.ts";

export { ChainReader, ChainWriter, copyFromChain, copyToChain, readChain, writeChain } from "./chain.ts";
export { claimBuffers, claimSingles, needEvent, ReadAhead, unpopRange } from "./core.ts";
export { PackedQueue, packedAreaSizes } from "./packed.ts";
export { SplitQueue, splitAreaSizes } from "./split.ts";
export * from "./types.ts";

/**
 * Creates the device side of a queue once the driver has configured it. Throws VirtqueueError if the Queue
 * Size or an area is invalid (not a power of 2 for split, 0 or above 32768, misaligned, outside guest RAM).
 */
export function createVirtqueue(
  kind: QueueKind,
  mem: GuestMemory,
  config: QueueConfig,
  features: QueueFeatures,
  opts?: VirtqueueOptions,
): Virtqueue {
  if (kind === "split") return new SplitQueue(mem, config, features, opts);
  if (kind === "packed") return new PackedQueue(mem, config, features, opts);
  throw new VirtqueueError(`unknown virtqueue layout ${String(kind)}`, "VIREO_VIRTQUEUE_USAGE");
}
