/**
 * The vhost-user back-end process's loop for one socket: listen, serve one front-end connection at a time, and
 * serve the rings from their kick eventfds, all from one poll(2) on this thread (as the data-plane thread of
 * src/io-thread does). The socket's work is a VhostUserEndpoint (src/vhost-user/endpoint.ts), which a loop serving
 * many sockets (vireo switch) uses the same way.
 */
import type { VirtioDeviceModel } from "../devices/virtio/device.ts";
import { native, POLLIN } from "../native.ts";
import type { ProtocolExtensions, VhostUserBackend } from "./backend.ts";
import { PollPacer, VhostUserEndpoint } from "./endpoint.ts";

export { BUSY_POLL_MS } from "./endpoint.ts";

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
  /** EndpointOptions.busyPollMs. */
  busyPollMs?: number;
  /** Called when a connection ends, with what its back-end did. */
  onConnectionEnd?: (stats: VhostUserBackend["stats"], reason: string) => void;
  /** EndpointOptions.input (a TAP the device reads frames from). */
  input?: { fd: number; wants(): boolean; onReadable(): boolean };
}

/** poll(2) takes at most 64 fds: the stop fd, then the endpoint's (listen or connection, input, kicks). */
const MAX_POLL = 64;

export function serveVhostUser(opts: ServeOptions): void {
  const n = native();
  const ep = new VhostUserEndpoint({ ...opts, maxKicks: MAX_POLL - 3 });
  ep.listen();
  opts.onListening?.();
  const pollfds = new Int32Array(3 * MAX_POLL);
  /** pollfds' first k triples, made once per k (no view per turn). */
  const views: Int32Array[] = [];
  const pacer = new PollPacer();
  for (;;) {
    pollfds[0] = opts.stopFd ?? -1;
    pollfds[1] = POLLIN;
    pollfds[2] = 0;
    const used = 1 + ep.addPollFds(pollfds, 1);
    views[used] ??= pollfds.subarray(0, 3 * used);
    const immediate = ep.wantsImmediate();
    if (pacer.due(immediate)) n.poll(views[used], immediate ? 0 : -1);
    if (pollfds[2] !== 0) break;
    ep.handlePoll(pollfds);
    if (opts.once && ep.served > 0) break;
  }
  ep.close("stopped");
}
