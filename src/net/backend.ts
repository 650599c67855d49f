/**
 * The host side of a guest network device: something that carries whole Ethernet frames (destination MAC
 * through payload, no FCS) between a device model (e1000, virtio-net) and the outside (another device, a
 * software switch, a tap).
 *
 * Flow control runs in both directions without losing frames:
 * - Guest to backend: `send` takes the frame at once. It returns false only when the backend dropped it (peer
 *   gone, queue full); drops are counted by the backend.
 * - Backend to guest: the backend calls the receiver registered with `attach`. The receiver returns false when
 *   the guest has no buffer for the frame; the backend then keeps that frame (and everything after it, in order)
 *   queued and offers it again when the device calls `rxReady()` (the guest posted buffers). Queues are bounded:
 *   frames beyond the bound are dropped and counted.
 *
 * Frames are not shared: `send` must not keep a reference to its argument after returning (copy it if it needs
 * to be queued), and a receiver must copy what it keeps of the frame it is given.
 */
/**
 * Takes one frame for the guest; false when the guest has no buffer for it. `more` says the backend is about to
 * offer another frame at once: a device may then hold back making this one visible (and interrupting the guest)
 * until a call without `more`, or one that returns false, so that a burst moves the guest's ring once. A backend
 * that passes `more` must end every burst with such a call.
 */
export interface Receiver {
  (frame: Uint8Array, more?: boolean): boolean;
  /**
   * Optional, where the device offers it: places frames while `peek` returns one and the guest has buffers,
   * calling `take` after each frame placed (the backend then drops it from its queue), up to a bound the device
   * sets; returns how many it placed. The device's queue is held meanwhile, so one lock and one ring update serve
   * the burst: `peek` and `take` must not call into the device. `expected`, when the backend knows it, is how many
   * frames it has to offer: the device prepares that many buffers ahead (not more than it would anyway), where a
   * burst of one or two would waste the work of preparing a full batch.
   */
  burst?: (peek: () => Uint8Array | null, take: () => void, expected?: number) => number;
  /**
   * Optional, where the device offers it: publishes (and notifies) the frames held back by earlier calls with
   * `more`, for a backend that only learns a burst has ended after its last frame went in (a switch ends its
   * batch when the source's slice is done).
   */
  flush?: () => void;
}

export interface NetBackend {
  readonly name: string;
  /** Send one Ethernet frame (no FCS) from the guest out of the backend. Returns false if the backend dropped it (counted). */
  send(frame: Uint8Array): boolean;
  /**
   * Register the receiver: the backend calls it with frames for the guest; it returns false when the guest has
   * no buffer (the backend keeps the frame queued and retries when `rxReady()` is called — nothing lost up to a
   * bounded queue, drops beyond are counted). Attaching replaces any previous receiver and offers queued frames.
   */
  attach(receiver: Receiver): void;
  /** The device has new receive buffers: offer queued frames again. */
  rxReady(): void;
  /** Stop: later sends return false, queued frames are discarded, the receiver is never called again. */
  close(): void;
}

/** Minimum Ethernet frame without FCS (IEEE 802.3 minimum of 64 bytes on the wire, less the 4-byte FCS). */
export const ETH_MIN_FRAME = 60;
/** Destination MAC, source MAC and EtherType. */
export const ETH_HEADER_LEN = 14;
