/**
 * Work a thread has promised to come back to: device slices left for later when a work budget ran out
 * (src/devices/virtio/work-budget.ts). The thread runs what was queued before the run started, once each, at a
 * point where it has also looked at everything else it serves (a vCPU thread before its next guest entry, a
 * data-plane thread after its next poll), so a device that always has more work still gets only its turn.
 */
export class DeferredWork {
  private items: Array<() => void> = [];

  /** Queue `work` (a Defer for VirtioDeviceOptions.defer). */
  readonly add = (work: () => void): void => {
    this.items.push(work);
  };

  get pending(): boolean {
    return this.items.length > 0;
  }

  /** Runs what was queued so far, once each (work queued meanwhile waits for the next call); `onError` per failure. */
  runOnce(onError: (e: unknown) => void): void {
    const items = this.items;
    this.items = [];
    for (const fn of items) {
      try {
        fn();
      } catch (e) {
        onError(e);
      }
    }
  }
}
