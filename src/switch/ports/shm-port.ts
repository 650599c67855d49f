/**
 * A switch port whose peer exchanges frames with the switch through shared-memory rings (src/net/shm-channel.ts),
 * as VALE's ports are netmap rings: the switch listens on the port's socket; a peer that connects gets two rings
 * (one each way) and two eventfds. No virtqueue, descriptor or guest address is involved: the peer (a program, or
 * a VM's own I/O thread serving its virtio rings) copies frames in and out of fixed slots.
 *
 * Frames the peer sends are read, at most SHM_READ_BUDGET per turn, and staged by the switch (its own copy: the
 * peer may rewrite a slot at any time); frames for the peer are copied into the ring toward it, made visible and
 * kicked for once per batch (`flush`). A full ring toward the peer drops the frame (`noBuffers`); a peer that
 * breaks its ring (a length past its slot, an index that cannot be) is disconnected, with the reason in the log.
 */
import {
  closeListening,
  EAGAIN,
  EINTR,
  listenUnix,
  native,
  POLLHUP,
  POLLIN,
  signalEventFd,
  takeEventFd,
} from "../../native.ts";
import { offerShmChannel, type ShmChannelEnd } from "../../net/shm-channel.ts";
import { ShmRingError } from "../../net/shm-ring.ts";
import { BUSY_POLL_MS } from "../../vhost-user/endpoint.ts";
import type { PortIo, Switch } from "../switch.ts";

/** Frames read from the peer's ring per turn: a flooding peer gets its share of the loop and no more. */
export const SHM_READ_BUDGET = 256;

export interface ShmPortOptions {
  name: string;
  socketPath: string;
  log: (m: string) => void;
}

export class ShmPort implements PortIo {
  readonly kind = "shm";
  readonly socketPath: string;
  private index = -1;
  private listenFd = -1;
  private conn = -1;
  private ch: ShmChannelEnd | null = null;
  /** Frames written toward the peer and not yet published. */
  private unpublished = 0;
  private readonly probe = new Uint8Array(64);
  private closed = false;
  /** performance.now() until which the port is polled without sleeping (0: not busy). */
  private busyUntil = 0;

  constructor(
    private readonly sw: Switch,
    private readonly opts: ShmPortOptions,
  ) {
    this.socketPath = opts.socketPath;
  }

  bind(index: number): void {
    this.index = index;
  }

  /** Listens on the socket (a stale socket file left at the path is replaced; any other file is refused). */
  listen(): void {
    this.listenFd = listenUnix(this.socketPath);
  }

  get connected(): boolean {
    return this.ch !== null;
  }

  /** True while the port is busy-polled: the loop's next turn must not sleep. */
  wantsImmediate(): boolean {
    return this.busyUntil > 0;
  }

  /** Adds [fd, events, revents] triples from `at`: the listening socket or the connection, and the kick. */
  addPollFds(p: Int32Array, at: number): number {
    if (this.ch === null) {
      p[3 * at] = this.listenFd;
      p[3 * at + 1] = POLLIN;
      p[3 * at + 2] = 0;
      return 1;
    }
    p[3 * at] = this.conn;
    p[3 * at + 1] = POLLIN;
    p[3 * at + 2] = 0;
    p[3 * at + 3] = this.ch.kickMe;
    p[3 * at + 4] = POLLIN;
    p[3 * at + 5] = 0;
    return 2;
  }

  /** After a poll: accepts a peer, notices one that left, clears the kick. */
  handlePoll(p: Int32Array, at: number): void {
    if (this.closed) return;
    const rev = p[3 * at + 2] as number;
    if (this.ch === null) {
      if (rev !== 0) this.accept();
      return;
    }
    if (rev & (POLLIN | POLLHUP)) {
      // The connection carries nothing after the hello: readable means the peer closed it (or wrote junk).
      const r = native().readFd(this.conn, this.probe);
      if (r !== -EAGAIN && r !== -EINTR)
        this.disconnect(r === 0 ? "peer closed the connection" : "peer wrote on the connection");
      return;
    }
    if ((p[3 * at + 5] as number) !== 0) takeEventFd(this.ch.kickMe);
  }

  private accept(): void {
    const fd = native().accept(this.listenFd);
    if (fd < 0) return;
    try {
      this.ch = offerShmChannel(fd);
      this.conn = fd;
      this.opts.log(`port ${this.opts.name}: shm: peer connected`);
    } catch (e) {
      native().close(fd);
      this.opts.log(`port ${this.opts.name}: shm: could not offer the rings: ${(e as Error).message}`);
    }
  }

  private disconnect(why: string): void {
    this.ch?.close();
    this.ch = null;
    if (this.conn >= 0) native().close(this.conn);
    this.conn = -1;
    this.unpublished = 0;
    this.busyUntil = 0;
    this.opts.log(`port ${this.opts.name}: shm: ${why}`);
  }

  /**
   * Reads what the peer published, up to SHM_READ_BUDGET frames, into the switch; true if it may have more. With
   * nothing to read it asks the peer for a kick (ShmRing.sleep), so that the loop may sleep in poll(2).
   */
  read(): boolean {
    const ch = this.ch;
    if (ch === null) return false;
    const ring = ch.in;
    try {
      let n = ring.available();
      if (n === 0) {
        // Busy for BUSY_POLL_MS after the last frame, as vhost-user ports are: a wake-up through the eventfd costs
        // more than a burst's gap (most of a millisecond on these PVM guests, measured).
        if (this.busyUntil > 0 && performance.now() < this.busyUntil) return false;
        this.busyUntil = 0;
        if (!ring.sleep()) return false;
        n = ring.available();
      }
      ring.awake();
      this.busyUntil = performance.now() + BUSY_POLL_MS;
      const take = Math.min(n, SHM_READ_BUDGET);
      const bytes = ring.bytes;
      for (let i = 0; i < take; i++) {
        const at = ring.frameAt();
        this.sw.receive(this.index, bytes, at, ring.frameLength);
        ring.next();
      }
      ring.release();
      return n > take;
    } catch (e) {
      if (!(e instanceof ShmRingError)) throw e;
      this.disconnect(`the peer broke its ring: ${e.message}`);
      return false;
    }
  }

  deliver(frame: Uint8Array, more: boolean): boolean | null {
    const ch = this.ch;
    if (ch === null) return null;
    if (frame.length > ch.out.maxFrame) return false;
    let ok: boolean;
    try {
      ok = ch.out.push(frame, 0, frame.length);
    } catch (e) {
      if (!(e instanceof ShmRingError)) throw e;
      this.disconnect(`the peer broke its ring: ${e.message}`);
      return null;
    }
    if (ok) this.unpublished++;
    if (!more) this.flush();
    return ok;
  }

  flush(): void {
    const ch = this.ch;
    if (ch === null || this.unpublished === 0) return;
    this.unpublished = 0;
    if (ch.out.publish()) signalEventFd(ch.kickOther);
  }

  close(): void {
    if (this.closed) return;
    if (this.ch !== null) this.disconnect("port detached");
    this.closed = true;
    if (this.listenFd >= 0) closeListening(this.listenFd, this.socketPath);
    this.listenFd = -1;
  }
}
