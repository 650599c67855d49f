/**
 * The vCPU threads' view of a device whose queues are served by another thread (the in-process vhost data plane,
 * src/io-thread/io-thread.ts): everything a register access needs — features, configuration space, reset — goes to
 * the real model, but an available buffer notification only wakes the data-plane thread, as a kernel vhost or a
 * vhost-user backend would be woken. The same wake happens without any exit when KVM's ioeventfd on the notify
 * address signals the eventfd directly; this path covers notifications that do exit (a BAR KVM does not know
 * about, a guest notifying through the PCI configuration access capability).
 */
import type { VirtioContext, VirtioDeviceModel } from "../devices/virtio/device.ts";
import { signalEventFd } from "../native.ts";

/** Words of a data plane's shared control block. */
export const DATA_PLANE = {
  /** Bumped on every DRIVER_OK: the data-plane thread runs the model's activation when it sees a new value. */
  activations: 0,
  /**
   * Set by the main thread to quiesce the data plane for a snapshot: the thread stops taking work (kicks, TAP
   * input, timers), finishes the slices it has left for later, then sets `quiesced` and waits until `quiesce` is
   * cleared. Both changes come with a signal of the wake eventfd.
   */
  quiesce: 1,
  quiesced: 2,
  words: 4,
} as const;

export function createDataPlaneBlock(): SharedArrayBuffer {
  return new SharedArrayBuffer(DATA_PLANE.words * 4);
}

export class RemoteQueues implements VirtioDeviceModel {
  private readonly words: Int32Array;

  constructor(
    private readonly inner: VirtioDeviceModel,
    private readonly kicks: readonly number[],
    private readonly wake: number,
    block: SharedArrayBuffer,
  ) {
    this.words = new Int32Array(block);
  }

  get type(): number {
    return this.inner.type;
  }
  get name(): string {
    return this.inner.name;
  }
  get numQueues(): number {
    return this.inner.numQueues;
  }
  get maxQueueSize(): number {
    return this.inner.maxQueueSize;
  }
  get features(): bigint {
    return this.inner.features;
  }
  get configSize(): number {
    return this.inner.configSize;
  }
  get stateBytes(): number {
    return this.inner.stateBytes;
  }

  bind(ctx: VirtioContext): void {
    this.inner.bind(ctx);
  }
  readConfig(offset: number, data: Uint8Array): void {
    this.inner.readConfig(offset, data);
  }
  writeConfig(offset: number, data: Uint8Array): void {
    this.inner.writeConfig?.(offset, data);
  }
  validateFeatures(accepted: bigint): string | null {
    return this.inner.validateFeatures?.(accepted) ?? null;
  }
  reset(): void {
    this.inner.reset?.();
  }

  queueNotified(q: number): void {
    const fd = this.kicks[q];
    if (fd !== undefined) signalEventFd(fd);
  }

  activate(): void {
    Atomics.add(this.words, DATA_PLANE.activations, 1);
    signalEventFd(this.wake);
  }
}
