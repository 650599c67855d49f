/**
 * One vhost-user back-end socket as a part of a poll(2) loop: it listens on a Unix socket, serves one front-end
 * connection at a time, and serves that connection's rings from their kick eventfds. A loop asks each endpoint
 * for its fds (`addPollFds`), polls them all together, and hands the results back (`handlePoll`); so one thread
 * can serve one endpoint (`serveVhostUser`, src/vhost-user/server.ts) or many (a switch with a port per socket).
 *
 * Device work a spent budget left for later runs on the next turn, and the loop then does not sleep
 * (`wantsImmediate`), so a flooding ring gets its turn and no more; the control socket is always looked at
 * between slices.
 *
 * Control messages are read with recvmsg, never past the end of the current message (VhostUserParser.wanted), so
 * the fds that arrive with a read belong to that message. A framing error, a refused request the front-end cannot
 * be told about, a reply that cannot be sent at once, or end of stream closes the connection; the endpoint then
 * listens for the next one.
 */
import type { VirtioDeviceModel } from "../devices/virtio/device.ts";
import {
  closeListening,
  EAGAIN,
  EINTR,
  listenUnix,
  native,
  POLLERR,
  POLLHUP,
  POLLIN,
  takeEventFd,
} from "../native.ts";
import { DeferredWork } from "../shared/deferred-work.ts";
import { type ProtocolExtensions, VhostUserBackend } from "./backend.ts";
import { MAX_MESSAGE_FDS, MAX_PAYLOAD, VhostUserParser, VhostUserProtocolError } from "./protocol.ts";

export interface EndpointOptions {
  /** Listen here (a stale socket file is replaced). */
  socketPath: string;
  /** A fresh device model; called for each memory table of each connection. */
  model: () => VirtioDeviceModel;
  log: (message: string) => void;
  /** Protocol features offered besides REPLY_ACK (CONFIG, MQ, INFLIGHT_SHMFD). */
  extensions?: ProtocolExtensions;
  /**
   * After a turn that moved a ring, serve the rings without waiting for a kick for this many milliseconds
   * (default 0: sleep until the next kick). The device may use available buffers whenever it likes; a driver
   * cannot tell a polling back-end from a fast one.
   */
  busyPollMs?: number;
  /** Called when a front-end connects. */
  onConnect?: () => void;
  /** Called when a connection ends, with what its back-end did. */
  onConnectionEnd?: (stats: VhostUserBackend["stats"], reason: string) => void;
  /**
   * A host fd the device reads frames from (a TAP): polled for POLLIN while `wants()` says so (not while a frame
   * waits for receive buffers, so an idle or full guest does not make the loop spin); `onReadable` does at most
   * one slice of work and returns true if it left more (it then runs again on the next turn, which does not
   * sleep).
   */
  input?: { fd: number; wants(): boolean; onReadable(): boolean };
  /** Kick fds polled at most (rings beyond are served only by busy polling); default ENDPOINT_MAX_KICKS. */
  maxKicks?: number;
}

/**
 * A good busyPollMs for a net back-end: after a turn in which a ring moved, the rings are polled without sleeping
 * for this long (busy polling, as DPDK's back-ends do all the time, and bounded, as the kernel's vhost-net
 * busyloop is): on a loaded machine a wake-up from poll(2) can cost a millisecond, far more than a ring of frames
 * takes to serve.
 */
export const BUSY_POLL_MS = 0.1;

/**
 * A loop whose endpoints all want an immediate turn (busy polling, deferred work) calls poll(2) only every this
 * many turns: kicks, control messages and input wait at most that long, and the rings are served meanwhile.
 */
export const TURNS_PER_POLL = 32;

/**
 * Whether a loop's turn calls poll(2): always when it may sleep; while busy (`immediate`) only every
 * TURNS_PER_POLL-th turn, since a system call costs more than a turn over rings with work (1.6 µs here). On the
 * turns it skips, the loop hands its endpoints the slots as addPollFds left them (no events).
 */
export class PollPacer {
  private sincePoll = 0;
  due(immediate: boolean): boolean {
    if (immediate && this.sincePoll < TURNS_PER_POLL) {
      this.sincePoll++;
      return false;
    }
    this.sincePoll = 0;
    return true;
  }
}

/** Control messages handled before the loop looks at the rings again. */
const MESSAGES_PER_TURN = 64;

/** Kick fds an endpoint polls by default: a switch's ports each take 2 + this many of poll(2)'s 64 slots. */
export const ENDPOINT_MAX_KICKS = 16;

export class VhostUserEndpoint {
  readonly socketPath: string;
  private readonly n = native();
  private listenFd = -1;
  private conn = -1;
  private parser: VhostUserParser | null = null;
  private backendObj: VhostUserBackend | null = null;
  private readonly later = new DeferredWork();
  private readonly buf = new Uint8Array(MAX_PAYLOAD);
  private readonly kicks: Array<{ q: number; fd: number }> = [];
  /** Where this endpoint's fds sit in the loop's pollfd array (set by addPollFds). */
  private firstSlot = 0;
  private inputOwed = false;
  /** Until when (performance.now()) the rings are polled without sleeping: traffic moved recently. */
  private busyUntil = 0;
  private lastProgress = 0;
  /** The back-end is in polled mode (the driver asked not to kick) until busy polling ends. */
  private polling = false;
  /** Polling just ended: the rings are served once more before the loop sleeps. */
  private recheck = false;
  private closed = false;
  /** Connections that have ended. */
  served = 0;
  private readonly closeFd = (fd: number) => this.n.close(fd);

  constructor(private readonly opts: EndpointOptions) {
    this.socketPath = opts.socketPath;
  }

  /** Starts listening (replacing a stale socket file at the path). */
  listen(): void {
    this.listenFd = listenUnix(this.opts.socketPath);
  }

  get connected(): boolean {
    return this.conn >= 0;
  }

  /** The live connection's back-end, if any. */
  get backend(): VhostUserBackend | null {
    return this.backendObj;
  }

  /** True when the loop must not sleep in its next poll: work left from a slice, input owed, or busy polling. */
  wantsImmediate(): boolean {
    // Polling (busy, the driver asked not to kick) ends only in a turn, never in a sleep; it lasts while busyUntil
    // is ahead, and ends with the connection.
    return this.later.pending || this.inputOwed || this.recheck || this.polling;
  }

  /**
   * Writes this endpoint's [fd, events, revents] triples into `pollfds` from slot `slot` on and returns the
   * number of slots used (at most 2 + maxKicks).
   */
  addPollFds(pollfds: Int32Array, slot: number): number {
    this.firstSlot = slot;
    let i = slot;
    const put = (fd: number) => {
      pollfds[3 * i] = fd;
      pollfds[3 * i + 1] = POLLIN;
      pollfds[3 * i + 2] = 0;
      i++;
    };
    put(this.conn >= 0 ? this.conn : this.listenFd);
    const input = this.opts.input;
    put(input && this.conn >= 0 && !this.inputOwed && input.wants() ? input.fd : -1);
    this.kicks.length = 0;
    const b = this.backendObj;
    if (b) {
      const k = b.kickFds();
      const max = this.opts.maxKicks ?? ENDPOINT_MAX_KICKS;
      for (let j = 0; j < k.length && j < max; j++) this.kicks.push(k[j] as { q: number; fd: number });
    }
    for (const k of this.kicks) put(k.fd);
    return i - slot;
  }

  /**
   * Serves what the last poll reported for this endpoint's slots: a new connection, kicks (first: they were
   * ready in this poll), control messages, input, then work left from earlier slices. Returns true when a ring was
   * kicked or moved (traffic).
   */
  handlePoll(pollfds: Int32Array): boolean {
    const s = this.firstSlot;
    const rev = (i: number) => pollfds[3 * (s + i) + 2] as number;
    if (this.conn < 0) {
      if (rev(0) !== 0) this.accept();
      this.inputOwed = false;
      this.later.runOnce(this.logError);
      return false;
    }
    const now = performance.now();
    const busy = now < this.busyUntil;
    let kicked = false;
    for (let i = 0; i < this.kicks.length; i++) {
      const k = this.kicks[i] as { q: number; fd: number };
      if (rev(2 + i) === 0 || this.backendObj === null) continue;
      if (takeEventFd(k.fd) > 0) {
        kicked = true;
        this.backendObj.kick(k.q);
      }
    }
    if (rev(0) & (POLLIN | POLLHUP | POLLERR)) this.readControl();
    const input = this.opts.input;
    if (input && this.conn >= 0 && (this.inputOwed || rev(1) !== 0)) {
      try {
        this.inputOwed = input.onReadable();
      } catch (e) {
        this.inputOwed = false;
        this.logError(e);
      }
    } else if (this.conn < 0) {
      this.inputOwed = false;
    }
    this.later.runOnce(this.logError);
    const b = this.backendObj;
    if (b === null) return kicked;
    // While busy, the rings are served whether or not a kick came (the driver is asked not to kick then).
    if (busy || this.recheck) b.pollRings();
    this.recheck = false;
    b.afterWork();
    const progress = b.ringProgress();
    const moved = progress !== this.lastProgress || kicked;
    const busyPollMs = this.opts.busyPollMs ?? 0;
    if (busyPollMs > 0 && moved) {
      this.busyUntil = now + busyPollMs;
      if (!this.polling) {
        this.polling = true;
        b.setPolled(true);
      }
    } else if (this.polling && now >= this.busyUntil) {
      // Before sleeping: kicks back on, then one more look (buffers made available meanwhile were not kicked).
      this.polling = false;
      b.setPolled(false);
      this.recheck = true;
    }
    this.lastProgress = progress;
    return moved;
  }

  /** Ends the current connection, if any (the endpoint goes on listening). */
  endConnection(reason: string): void {
    if (this.conn < 0) return;
    this.parser?.dispose();
    this.backendObj?.close();
    this.n.close(this.conn);
    this.conn = -1;
    // No rings to poll: the loop may sleep until the next front-end.
    this.polling = false;
    this.recheck = false;
    this.busyUntil = 0;
    this.served++;
    this.opts.log(`vhost-user: connection closed: ${reason}`);
    if (this.backendObj) this.opts.onConnectionEnd?.(this.backendObj.stats, reason);
    this.backendObj = null;
    this.parser = null;
  }

  /** Ends the connection, stops listening and removes the socket file. */
  close(reason = "stopped"): void {
    if (this.closed) return;
    this.closed = true;
    this.endConnection(reason);
    if (this.listenFd >= 0) closeListening(this.listenFd, this.opts.socketPath);
    this.listenFd = -1;
  }

  private readonly logError = (e: unknown): void => {
    this.opts.log(`vhost-user: ${e instanceof Error ? e.message : String(e)}`);
  };

  private accept(): void {
    const fd = this.n.accept(this.listenFd);
    if (fd < 0) return;
    this.conn = fd;
    this.parser = new VhostUserParser({ closeFd: this.closeFd });
    this.backendObj = new VhostUserBackend({
      model: this.opts.model,
      log: this.opts.log,
      defer: this.later.add,
      closeFd: this.closeFd,
      extensions: this.opts.extensions,
    });
    this.lastProgress = 0;
    this.busyUntil = 0;
    this.polling = false;
    this.recheck = false;
    this.opts.log("vhost-user: front-end connected");
    this.opts.onConnect?.();
  }

  /**
   * Reads and handles what the connection has, at most MESSAGES_PER_TURN messages (a front-end that never stops
   * sending does not keep the rings waiting); false once the connection ended.
   */
  private readControl(): boolean {
    const n = this.n;
    const buf = this.buf;
    for (let handled = 0; handled < MESSAGES_PER_TURN; ) {
      const p = this.parser as VhostUserParser;
      const b = this.backendObj as VhostUserBackend;
      const r = n.recvmsg(this.conn, buf.subarray(0, p.wanted), MAX_MESSAGE_FDS);
      if (r.bytes === -EAGAIN) return true;
      if (r.bytes === -EINTR) continue;
      if (r.bytes < 0 || r.truncated) {
        for (const fd of r.fds) this.closeFd(fd);
        this.endConnection(r.truncated ? "more than 8 fds in one message" : `recvmsg: errno ${-r.bytes}`);
        return false;
      }
      if (r.bytes === 0) {
        for (const fd of r.fds) this.closeFd(fd);
        this.endConnection(p.midMessage ? "end of stream in the middle of a message" : "end of stream");
        return false;
      }
      try {
        const msg = p.push(buf.subarray(0, r.bytes), r.fds);
        if (msg === null) continue;
        handled++;
        const reply = b.handle(msg);
        if (reply !== null) {
          // A reply may carry fds (GET_INFLIGHT_FD); the peer gets its own copies, ours are closed.
          const fds = b.takeReplyFds();
          const sent = n.sendmsg(this.conn, reply, fds);
          for (const fd of fds) this.closeFd(fd);
          if (sent !== reply.length) {
            this.endConnection(`reply not sent at once (${sent < 0 ? `errno ${-sent}` : `${sent} bytes`})`);
            return false;
          }
        }
      } catch (e) {
        const why = e instanceof Error ? e.message : String(e);
        this.opts.log(e instanceof VhostUserProtocolError ? why : `vhost-user: ${why}`);
        this.endConnection("error");
        return false;
      }
    }
    return true;
  }
}
