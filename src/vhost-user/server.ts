/**
 * The vhost-user back-end process's loop: listen on a Unix socket, serve one front-end connection at a time,
 * and serve the rings from their kick eventfds, all from one poll(2) on this thread (as the data-plane thread of
 * src/io-thread does). Device work a spent budget left for later runs after the next poll, which then does not
 * sleep, so a flooding ring gets its turn and no more; the control socket is always looked at between slices.
 *
 * Control messages are read with recvmsg, never past the end of the current message (VhostUserParser.wanted),
 * so the fds that arrive with a read belong to that message. A framing error, a refused request the front-end
 * cannot be told about, a reply that cannot be sent at once, or end of stream closes the connection; the back-end
 * then waits for the next one (or returns, with `once`).
 */
import { existsSync, lstatSync, unlinkSync } from "node:fs";
import type { VirtioDeviceModel } from "../devices/virtio/device.ts";
import { EAGAIN, EINTR, native, POLLERR, POLLHUP, POLLIN, takeEventFd } from "../native.ts";
import { DeferredWork } from "../shared/deferred-work.ts";
import { type ProtocolExtensions, VhostUserBackend } from "./backend.ts";
import { MAX_MESSAGE_FDS, MAX_PAYLOAD, VhostUserParser, VhostUserProtocolError } from "./protocol.ts";

export interface ServeOptions {
  /** Listen here (a stale socket file is replaced). */
  socketPath: string;
  /** A fresh device model; called for each memory table of each connection. */
  model: () => VirtioDeviceModel;
  log: (message: string) => void;
  /** Protocol features offered besides REPLY_ACK (CONFIG, MQ, INFLIGHT_SHMFD). */
  extensions?: ProtocolExtensions;
  /** Return after the first connection ends. */
  once?: boolean;
  /** An eventfd that ends the loop when signalled (between polls). */
  stopFd?: number;
  /** Called once listening. */
  onListening?: () => void;
  /**
   * After a turn that moved a ring, serve the rings without waiting for a kick for this many milliseconds
   * (default 0: sleep until the next kick). The device may use available buffers whenever it likes; a driver
   * cannot tell a polling back-end from a fast one.
   */
  busyPollMs?: number;
  /** Called when a connection ends, with what its back-end did. */
  onConnectionEnd?: (stats: VhostUserBackend["stats"], reason: string) => void;
  /**
   * A host fd the device reads frames from (a TAP): polled for POLLIN while `wants()` says so (not while a frame
   * waits for receive buffers, so an idle or full guest does not make the loop spin); `onReadable` does at most
   * one slice of work and returns true if it left more (it then runs again after the next poll, which does not
   * sleep).
   */
  input?: { fd: number; wants(): boolean; onReadable(): boolean };
}

/**
 * A good ServeOptions.busyPollMs for a net back-end: after a turn in which a ring moved, the loop keeps polling the
 * rings without sleeping for this long (busy polling, as DPDK's back-ends do all the time, and bounded, as the
 * kernel's vhost-net busyloop is): on a loaded machine a wake-up from poll(2) can cost a millisecond, far more
 * than a ring of frames takes to serve.
 */
export const BUSY_POLL_MS = 0.1;

/** Control messages handled before the loop looks at the rings again. */
const MESSAGES_PER_TURN = 64;

/** poll(2) takes at most 64 fds: stop, listen, connection, input, and the kicks. */
const MAX_POLL = 64;

export function serveVhostUser(opts: ServeOptions): void {
  const n = native();
  if (existsSync(opts.socketPath) && lstatSync(opts.socketPath).isSocket()) unlinkSync(opts.socketPath);
  const listenFd = n.unixListen(opts.socketPath, 1);
  opts.onListening?.();
  const later = new DeferredWork();
  const buf = new Uint8Array(MAX_PAYLOAD);
  let conn = -1;
  let parser: VhostUserParser | null = null;
  let backend: VhostUserBackend | null = null;
  let served = 0;
  const closeFd = (fd: number) => n.close(fd);

  const endConnection = (reason: string) => {
    if (conn < 0) return;
    parser?.dispose();
    backend?.close();
    n.close(conn);
    conn = -1;
    served++;
    opts.log(`vhost-user: connection closed: ${reason}`);
    if (backend) opts.onConnectionEnd?.(backend.stats, reason);
    backend = null;
    parser = null;
  };

  /**
   * Reads and handles what the connection has, at most MESSAGES_PER_TURN messages (a front-end that never stops
   * sending does not keep the rings waiting); false once the connection ended.
   */
  const readControl = (): boolean => {
    for (let handled = 0; handled < MESSAGES_PER_TURN; ) {
      const p = parser as VhostUserParser;
      const b = backend as VhostUserBackend;
      const r = n.recvmsg(conn, buf.subarray(0, p.wanted), MAX_MESSAGE_FDS);
      if (r.bytes === -EAGAIN) return true;
      if (r.bytes === -EINTR) continue;
      if (r.bytes < 0 || r.truncated) {
        for (const fd of r.fds) closeFd(fd);
        endConnection(r.truncated ? "more than 8 fds in one message" : `recvmsg: errno ${-r.bytes}`);
        return false;
      }
      if (r.bytes === 0) {
        for (const fd of r.fds) closeFd(fd);
        endConnection(p.midMessage ? "end of stream in the middle of a message" : "end of stream");
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
          const sent = n.sendmsg(conn, reply, fds);
          for (const fd of fds) closeFd(fd);
          if (sent !== reply.length) {
            endConnection(`reply not sent at once (${sent < 0 ? `errno ${-sent}` : `${sent} bytes`})`);
            return false;
          }
        }
      } catch (e) {
        const why = e instanceof Error ? e.message : String(e);
        opts.log(e instanceof VhostUserProtocolError ? why : `vhost-user: ${why}`);
        endConnection("error");
        return false;
      }
    }
    return true;
  };

  const pollfds = new Int32Array(3 * MAX_POLL);
  const kicks: Array<{ q: number; fd: number }> = [];
  const input = opts.input;
  let inputOwed = false;
  /** Until when (performance.now()) the rings are polled without sleeping: traffic moved recently. */
  let busyUntil = 0;
  const busyPollMs = opts.busyPollMs ?? 0;
  /** ringProgress() at the end of the previous turn. */
  let lastProgress = 0;
  for (;;) {
    // [stop, listen (only while no connection), connection, input, kicks...]
    pollfds.fill(0);
    pollfds[0] = opts.stopFd ?? -1;
    pollfds[1] = POLLIN;
    pollfds[3] = conn < 0 ? listenFd : -1;
    pollfds[4] = POLLIN;
    pollfds[6] = conn;
    pollfds[7] = POLLIN;
    pollfds[9] = input && conn >= 0 && !inputOwed && input.wants() ? input.fd : -1;
    pollfds[10] = POLLIN;
    kicks.length = 0;
    if (backend) kicks.push(...backend.kickFds().slice(0, MAX_POLL - 4));
    kicks.forEach((k, i) => {
      pollfds[3 * (4 + i)] = k.fd;
      pollfds[3 * (4 + i) + 1] = POLLIN;
    });
    for (let i = 4 + kicks.length; i < MAX_POLL; i++) pollfds[3 * i] = -1;
    const busy = backend !== null && performance.now() < busyUntil;
    n.poll(pollfds, later.pending || inputOwed || busy ? 0 : -1);
    if (pollfds[2] !== 0) break;
    if (pollfds[5] !== 0) {
      const fd = n.accept(listenFd);
      if (fd >= 0) {
        conn = fd;
        parser = new VhostUserParser({ closeFd });
        backend = new VhostUserBackend({
          model: opts.model,
          log: opts.log,
          defer: later.add,
          closeFd,
          extensions: opts.extensions,
        });
        opts.log("vhost-user: front-end connected");
      }
      continue;
    }
    // Kicks first (they were ready in this poll), then the control socket, then work left from earlier slices.
    let kicked = false;
    kicks.forEach((k, i) => {
      if (pollfds[3 * (4 + i) + 2] === 0 || backend === null) return;
      if (takeEventFd(k.fd) > 0) {
        kicked = true;
        backend.kick(k.q);
      }
    });
    if (conn >= 0 && (pollfds[8] as number) & (POLLIN | POLLHUP | POLLERR)) {
      if (!readControl() && opts.once && served > 0) break;
    }
    if (input && conn >= 0 && (inputOwed || pollfds[11] !== 0)) {
      try {
        inputOwed = input.onReadable();
      } catch (e) {
        inputOwed = false;
        opts.log(`vhost-user: ${(e as Error).message}`);
      }
    } else if (conn < 0) {
      inputOwed = false;
    }
    later.runOnce((e) => opts.log(`vhost-user: ${(e as Error).message}`));
    if (backend !== null) {
      // While busy, the rings are served whether or not a kick came (the driver may not kick at all then).
      if (busy) backend.pollRings();
      backend.afterWork();
      const progress = backend.ringProgress();
      if (busyPollMs > 0 && (progress !== lastProgress || kicked)) busyUntil = performance.now() + busyPollMs;
      lastProgress = progress;
    }
  }
  endConnection("stopped");
  n.close(listenFd);
  try {
    unlinkSync(opts.socketPath);
  } catch {
    // already gone
  }
}
