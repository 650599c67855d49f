/**
 * An in-process pair of connected NetBackends: what one end sends, the other end's receiver gets. Used to wire
 * two guest NICs together and by tests as the "wire" a device model transmits onto.
 *
 * Each direction has a bounded FIFO (the receiving end's inbox). A frame goes straight to the receiver when the
 * inbox is empty; otherwise, or when the receiver refuses it (no guest buffer), it waits in the inbox, behind any
 * earlier frame, until the receiving end calls `rxReady()`. A full inbox drops the new frame and counts it.
 *
 * Delivery is synchronous: `send` may call the peer's receiver before returning. A receiver may itself call
 * `send` or `rxReady` (a device answering a frame at once); re-entrant drains of the same inbox are folded into
 * the one already running, so frames stay in order and the stack stays shallow.
 */
import { type Counter, type MetricsSink, NO_COUNTER } from "../metrics/registry.ts";
import type { NetBackend } from "./backend.ts";

export const DEFAULT_PAIR_CAPACITY = 1024;

export interface PairOptions {
  /** Frames each end's inbox holds before dropping. Default 1024. */
  capacity?: number;
  /** Names of the two ends (metrics are `net.<name>.*`). Default ["pair0.a", "pair0.b"]-style names. */
  names?: [string, string];
  metrics?: MetricsSink;
}

/** Counts for one end; "sent"/"send_dropped" are frames this end's user sent, the rest concern its inbox. */
export interface PairEndStats {
  /** Frames accepted by `send` (delivered or queued at the peer). */
  sent: number;
  /** Frames `send` refused: peer closed or its inbox full. */
  sendDropped: number;
  /** Frames this end's receiver accepted. */
  delivered: number;
  /** Frames waiting in this end's inbox. */
  queued: number;
  /** Frames lost at this end's inbox: arrived while it was full, or discarded by `close`. */
  dropped: number;
}

/** A bounded FIFO of frames: an array used as a ring, so push and shift are O(1). */
class FrameQueue {
  private items: Array<Uint8Array | undefined>;
  private head = 0;
  length = 0;

  constructor(readonly capacity: number) {
    this.items = new Array(Math.min(capacity, 64));
  }

  push(frame: Uint8Array): boolean {
    if (this.length >= this.capacity) return false;
    if (this.length === this.items.length) this.grow();
    this.items[(this.head + this.length) % this.items.length] = frame;
    this.length++;
    return true;
  }

  peek(): Uint8Array | undefined {
    return this.length === 0 ? undefined : this.items[this.head];
  }

  shift(): void {
    if (this.length === 0) return;
    this.items[this.head] = undefined;
    this.head = (this.head + 1) % this.items.length;
    this.length--;
  }

  clear(): number {
    const n = this.length;
    this.items = new Array(Math.min(this.capacity, 64));
    this.head = 0;
    this.length = 0;
    return n;
  }

  private grow(): void {
    const size = Math.min(this.capacity, this.items.length * 2);
    const next: Array<Uint8Array | undefined> = new Array(size);
    for (let i = 0; i < this.length; i++) next[i] = this.items[(this.head + i) % this.items.length];
    this.items = next;
    this.head = 0;
  }
}

/** One end of a pair. */
export class PairBackend implements NetBackend {
  readonly name: string;
  peer!: PairBackend;
  private receiver: ((frame: Uint8Array) => boolean) | undefined;
  private readonly inbox: FrameQueue;
  private closed = false;
  private draining = false;
  private drainAgain = false;
  private readonly counts = { sent: 0, sendDropped: 0, delivered: 0, dropped: 0 };
  private readonly mSent: Counter;
  private readonly mSendDropped: Counter;
  private readonly mDelivered: Counter;
  private readonly mDropped: Counter;

  constructor(name: string, capacity: number, metrics?: MetricsSink) {
    this.name = name;
    this.inbox = new FrameQueue(capacity);
    this.mSent = metrics?.counter(`net.${name}.sent`) ?? NO_COUNTER;
    this.mSendDropped = metrics?.counter(`net.${name}.send_dropped`) ?? NO_COUNTER;
    this.mDelivered = metrics?.counter(`net.${name}.delivered`) ?? NO_COUNTER;
    this.mDropped = metrics?.counter(`net.${name}.dropped`) ?? NO_COUNTER;
  }

  send(frame: Uint8Array): boolean {
    if (this.closed || !this.peer.accept(frame.slice())) {
      this.counts.sendDropped++;
      this.mSendDropped.add();
      return false;
    }
    this.counts.sent++;
    this.mSent.add();
    return true;
  }

  attach(receiver: (frame: Uint8Array) => boolean): void {
    if (this.closed) return;
    this.receiver = receiver;
    this.drain();
  }

  rxReady(): void {
    this.drain();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.receiver = undefined;
    const lost = this.inbox.clear();
    this.counts.dropped += lost;
    this.mDropped.add(lost);
  }

  stats(): PairEndStats {
    return { ...this.counts, queued: this.inbox.length };
  }

  /** A frame from the peer (already copied). False: dropped here (closed or inbox full), counted here. */
  private accept(frame: Uint8Array): boolean {
    if (this.closed) return false;
    let ok = true;
    // Straight to the receiver only when nothing is waiting ahead of this frame.
    const direct = this.inbox.length === 0 && !this.draining && this.receiver !== undefined;
    if (!(direct && this.deliver(frame)) && !this.inbox.push(frame)) {
      this.counts.dropped++;
      this.mDropped.add();
      ok = false;
    }
    // The receiver may have called rxReady() while it was running; honour that now.
    if (this.drainAgain) this.drain();
    return ok;
  }

  private deliver(frame: Uint8Array): boolean {
    const receiver = this.receiver;
    if (receiver === undefined) return false;
    this.draining = true;
    let ok: boolean;
    try {
      ok = receiver(frame);
    } finally {
      this.draining = false;
    }
    if (ok) {
      this.counts.delivered++;
      this.mDelivered.add();
    }
    return ok;
  }

  private drain(): void {
    if (this.draining) {
      this.drainAgain = true;
      return;
    }
    this.draining = true;
    try {
      do {
        this.drainAgain = false;
        for (let frame = this.inbox.peek(); frame !== undefined; frame = this.inbox.peek()) {
          const receiver = this.receiver;
          if (receiver === undefined || this.closed || !receiver(frame)) break;
          this.inbox.shift();
          this.counts.delivered++;
          this.mDelivered.add();
        }
      } while (this.drainAgain && this.inbox.length > 0 && !this.closed);
    } finally {
      this.draining = false;
      this.drainAgain = false;
    }
  }
}

let pairs = 0;

/** Two connected backends: frames sent on one arrive at the other's receiver. */
export function createPair(options: PairOptions = {}): [PairBackend, PairBackend] {
  const capacity = options.capacity ?? DEFAULT_PAIR_CAPACITY;
  if (!Number.isSafeInteger(capacity) || capacity < 1) {
    throw new RangeError(`pair capacity must be a positive integer, got ${capacity}`);
  }
  const id = pairs++;
  const [nameA, nameB] = options.names ?? [`pair${id}.a`, `pair${id}.b`];
  const a = new PairBackend(nameA, capacity, options.metrics);
  const b = new PairBackend(nameB, capacity, options.metrics);
  a.peer = b;
  b.peer = a;
  return [a, b];
}
