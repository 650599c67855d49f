/**
 * How much work one available buffer notification may cost, in chains, bytes and descriptors, wherever the device
 * runs.
 *
 * The specification lets a driver name the same guest pages again and again: a chain may declare up to 2^32
 * bytes and every avail slot may point at it (2.7.5, 2.8.17), so "serve everything that is available" has no
 * bound a host can afford on a vCPU thread. A device therefore serves a notification up to its budget, leaves
 * the rest of the ring where it is, and the place it runs on brings it back later with a fresh budget (the
 * `defer` hook of VirtioDeviceOptions): a flooding driver gets its share of the thread and no more, as the
 * quotas of QEMU's and the kernel vhost's net paths do.
 */

/** The limits of one slice of queue work. */
export interface NotifyBudget {
  /** Chains popped per slice (at least 1 is always served, so every slice makes progress). */
  chains: number;
  /** Bytes moved per slice: guest memory read or written, or given to a backend. */
  bytes: number;
  /**
   * Descriptors read per slice (DescriptorChain.descriptorsRead), ring and indirect entries alike. A chain may
   * have up to Queue Size descriptors of zero length, or all failing its request before any byte moves, so
   * chains and bytes alone do not bound the walk: 256 chains of 256 descriptors each cost tens of milliseconds.
   * Default DEFAULT_NOTIFY_BUDGET.descriptors.
   */
  descriptors?: number;
}

/**
 * The default: 256 chains, 1 MiB or 4096 descriptors, whichever comes first. Measured on these machines, a slice
 * of that size costs well under a millisecond on every device (the budget tests assert under 10 ms for the worst
 * inputs). Ordinary traffic meets the chain or byte limit first (a 256-descriptor blk request moves far more than
 * 1 MiB / 16 of data); the descriptor limit stops chains that are long and move nothing.
 */
export const DEFAULT_NOTIFY_BUDGET: Readonly<Required<NotifyBudget>> = Object.freeze({
  chains: 256,
  bytes: 1 << 20,
  descriptors: 4096,
});

/**
 * The most work any device does for one chain within one slice: a chain is started whenever the slice has budget
 * left, so a slice moves at most `bytes + MAX_CHAIN_WORK` (console: its longest transmit buffer; blk: what is left
 * of the slice, at least 64 KiB; net: one frame; rng: 64 KiB). The fuzzer's hang detector holds devices to it.
 */
export const MAX_CHAIN_WORK = 1 << 20;

/** What the slices of one device object cost so far (for tests, the fuzzer and metrics). */
export interface SliceStats {
  slices: number;
  /** The most bytes, chains and descriptors one slice moved or read. */
  maxBytes: number;
  maxChains: number;
  /** At most `descriptors` + one chain's (Queue Size + 1): a chain is started while the slice has budget left. */
  maxDescriptors: number;
}

/**
 * The work left in the current slice. A handler that moves bytes itself says so with `spend`; one that does not
 * is charged its chain's declared length when it returns.
 */
export class WorkBudget {
  chainsLeft: number;
  bytesLeft: number;
  descriptorsLeft: number;
  /** Bytes spent on the chain being served (reset by the core before each chain). */
  spentOnChain = 0;

  constructor(limits: Readonly<NotifyBudget>) {
    this.chainsLeft = limits.chains;
    this.bytesLeft = limits.bytes;
    this.descriptorsLeft = limits.descriptors ?? DEFAULT_NOTIFY_BUDGET.descriptors;
  }

  /** Records `bytes` of work done on the current chain. */
  spend(bytes: number): void {
    this.bytesLeft -= bytes;
    this.spentOnChain += bytes;
  }

  /** Bytes a sliced handler may still move in this slice; at least `min`, so a continued request advances. */
  allowance(min: number): number {
    return Math.max(this.bytesLeft, min);
  }

  get exhausted(): boolean {
    return this.chainsLeft <= 0 || this.bytesLeft <= 0 || this.descriptorsLeft <= 0;
  }
}

/** Returned by a chain handler that has not finished the chain: the device keeps it and continues next slice. */
export const IN_PROGRESS: unique symbol = Symbol("virtio chain in progress");
/**
 * Returned by a chain handler that handed the chain to other threads (a block I/O pool): the device leaves it in
 * flight, goes on with the ring, and the model returns it later, in any order (2.7.8: the device may use buffers
 * in a different order than they were made available), with VirtioContext.completeDetached.
 */
export const DETACHED: unique symbol = Symbol("virtio chain detached");
export type ChainResult = number | typeof IN_PROGRESS | typeof DETACHED;

/**
 * Where a device hands work it must come back to: "run this again on this thread soon, after others have had a
 * turn". A vCPU thread runs it before its next guest entry (and arms a kick so that entry does not last long);
 * a data-plane thread runs it after its next poll of its other fds.
 */
export type Defer = (work: () => void) => void;

/** Validates a budget given by a user or a caller: every limit a positive integer. */
export function checkBudget(b: NotifyBudget): string | null {
  if (!Number.isSafeInteger(b.chains) || b.chains < 1) return `chains ${b.chains} is not a positive integer`;
  if (!Number.isSafeInteger(b.bytes) || b.bytes < 1) return `bytes ${b.bytes} is not a positive integer`;
  if (b.descriptors !== undefined && (!Number.isSafeInteger(b.descriptors) || b.descriptors < 1)) {
    return `descriptors ${b.descriptors} is not a positive integer`;
  }
  return null;
}
