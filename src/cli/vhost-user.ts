/** `vireo vhost-user net`: a vhost-user back-end process for virtio-net (src/vhost-user). */
import { parseArgs } from "node:util";
import { VirtioNet } from "../devices/virtio/net.ts";
import { ConfigError } from "../errors.ts";
import { rarpFrame } from "../net/announce.ts";
import {
  GENERATOR_MAX,
  GENERATOR_MIN,
  GeneratorBackend,
  LoopbackBackend,
  SinkBackend,
  zeroCounts,
} from "../vhost-user/net-backends.ts";
import { BUSY_POLL_MS, serveVhostUser } from "../vhost-user/server.ts";
import { openShmNet } from "../vhost-user/shm-net.ts";
import { openTapNet } from "../vhost-user/tap-net.ts";
import { cmdVhostUserBlk } from "./vhost-user-blk.ts";

export const VHOST_USER_HELP = `Usage: vireo vhost-user net --socket PATH (--tap NAME | --shm SOCKET | --sink | --loopback | --gen SIZE) [--once] [--queue-size N]
       vireo vhost-user blk --socket PATH --file IMG [--readonly] [...]   (see vireo vhost-user blk --help)

A vhost-user back-end (QEMU docs/interop/vhost-user.rst) serving a virtio-net device over a Unix socket, with
vireo's own virtio-net and virtqueue code. It listens on PATH and serves one front-end at a time (QEMU's
-netdev vhost-user, DPDK's net_virtio_user, ...): split rings, REPLY_ACK.

Options:
  --socket PATH      the Unix socket to listen on (a stale socket file there is replaced)
  --tap NAME         forward the guest's frames to host TAP device NAME and NAME's frames to the guest (the
                     TAP is created if missing, which needs CAP_NET_ADMIN; virtio-net headers pass through, so
                     the guest's checksum and TSO offloads reach the host kernel)
  --shm SOCKET       forward the guest's frames through a vireo switch shm port listening on SOCKET (its
                     shared-memory rings; plain Ethernet frames, no offloads), as vireo run --net shm= does
  --sink             count the frames the guest transmits and drop them
  --loopback         send every frame the guest transmits back to its receive queue
  --gen SIZE         offer the guest one SIZE-byte UDP frame (42 to 1518) whenever it has a receive buffer, as
                     fast as buffers allow (a receive-path load generator); what it transmits is counted, dropped
  --once             exit when the first connection ends
  --queue-size N     the largest ring size accepted (a power of 2 up to 32768; default 1024)
  -h, --help         this help

When a connection ends, one JSON line on stdout gives its counts:
  {"event":"connection-end","reason":...,"txFrames":N,"txBytes":N,"rxFrames":N,"rxBytes":N,"dropped":N,...}
Errors the front-end causes are logged on stderr and end its connection (or are NACKed, with REPLY_ACK).`;

export async function cmdVhostUser(argv: string[]): Promise<number> {
  if (argv[0] === "blk") return cmdVhostUserBlk(argv.slice(1));
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      socket: { type: "string" },
      tap: { type: "string" },
      shm: { type: "string" },
      sink: { type: "boolean" },
      loopback: { type: "boolean" },
      gen: { type: "string" },
      once: { type: "boolean" },
      "queue-size": { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(VHOST_USER_HELP);
    return 0;
  }
  if (positionals[0] !== "net" || positionals.length > 1) {
    throw new ConfigError(
      "usage: vireo vhost-user net --socket PATH (--tap NAME | --shm SOCKET | --sink | --loopback | --gen SIZE) (see --help)",
    );
  }
  const socketPath = values.socket;
  if (!socketPath) throw new ConfigError("vhost-user net: --socket PATH is required");
  if (Buffer.byteLength(socketPath) > 107) {
    throw new ConfigError(
      `vhost-user net: --socket path is ${Buffer.byteLength(socketPath)} bytes, at most 107`,
    );
  }
  if (
    [
      values.tap !== undefined,
      values.shm !== undefined,
      values.sink,
      values.loopback,
      values.gen !== undefined,
    ].filter(Boolean).length !== 1
  ) {
    throw new ConfigError(
      "vhost-user net: give exactly one of --tap NAME, --shm SOCKET, --sink, --loopback and --gen SIZE",
    );
  }
  const genSize = values.gen === undefined ? 0 : Number(values.gen);
  if (
    values.gen !== undefined &&
    !(Number.isInteger(genSize) && genSize >= GENERATOR_MIN && genSize <= GENERATOR_MAX)
  ) {
    throw new ConfigError(
      `vhost-user net: --gen ${values.gen} is not a frame size from ${GENERATOR_MIN} to ${GENERATOR_MAX}`,
    );
  }
  let queueSize = 1024;
  if (values["queue-size"] !== undefined) {
    const q = Number(values["queue-size"]);
    if (!Number.isInteger(q) || q < 1 || q > 32768 || (q & (q - 1)) !== 0) {
      throw new ConfigError(
        `vhost-user net: --queue-size ${values["queue-size"]} is not a power of 2 up to 32768`,
      );
    }
    queueSize = q;
  }
  const counts = zeroCounts();
  const tap =
    values.tap !== undefined
      ? openTapNet(values.tap, counts)
      : values.shm !== undefined
        ? openShmNet(values.shm, counts)
        : null;
  const backend = tap
    ? tap.backend
    : values.sink
      ? new SinkBackend(counts)
      : values.loopback
        ? new LoopbackBackend(counts)
        : new GeneratorBackend(genSize, counts);
  const log = (m: string) => process.stderr.write(`vireo: ${m}\n`);
  serveVhostUser({
    socketPath,
    once: values.once === true,
    log,
    busyPollMs: BUSY_POLL_MS,
    input: tap?.backend.input(),
    // SEND_RARP: the announcement goes out as if the guest had sent it (into the TAP, or counted by a sink).
    extensions: { mq: true, rarp: (mac) => void backend.send(rarpFrame(mac)) },
    model: () => new VirtioNet({ backend, name: "net0", queueSize }),
    onListening: () => log(`vhost-user net (${backend.name}) listening on ${socketPath}`),
    onConnectionEnd: (stats, reason) => {
      process.stdout.write(`${JSON.stringify({ event: "connection-end", reason, ...counts, ...stats })}\n`);
      Object.assign(counts, zeroCounts());
      if (backend instanceof LoopbackBackend) backend.clear();
    },
  });
  tap?.close();
  return 0;
}
