/** `vireo vhost-user blk`: a vhost-user back-end process for virtio-blk over an image file (src/vhost-user). */
import { parseArgs } from "node:util";
import { BlockIoError } from "../block/backend.ts";
import { CountingBlockBackend, zeroBlockCounts } from "../block/counting.ts";
import { FileBlockBackend } from "../block/file.ts";
import { BlockIoPool, MAX_IO_THREADS } from "../block/io-pool.ts";
import { VirtioBlk } from "../devices/virtio/blk.ts";
import { ConfigError } from "../errors.ts";
import { serveVhostUser } from "../vhost-user/server.ts";
import { startTsWorker } from "../vmm/ts-worker.ts";

/** Request queues at most (the loop polls every ring's kick fd in one poll(2) of at most 64). */
export const MAX_BLK_QUEUES = 16;

/** I/O threads with --direct when --io-threads is not given (without --direct: 0, synchronous). */
export const DEFAULT_DIRECT_IO_THREADS = 8;

export const VHOST_USER_BLK_HELP = `Usage: vireo vhost-user blk --socket PATH --file IMG [--readonly] [--direct] [--once] [--queue-size N]
                            [--num-queues N] [--serial ID] [--busy-poll-us N] [--io-threads N]

A vhost-user back-end (QEMU docs/interop/vhost-user.rst) serving a virtio-blk device over a Unix socket, with
vireo's own virtio-blk, virtqueue and file block code (the same as in the VMM). It listens on PATH and serves one
front-end at a time (QEMU's -device vhost-user-blk-pci, ...): split rings, reads, writes, FLUSH (fdatasync of
the image before the request completes), DISCARD (accepted; the file keeps its blocks), WRITE_ZEROES, GET_ID.
Protocol features: REPLY_ACK, CONFIG (the device's configuration space), MQ, INFLIGHT_SHMFD (requests taken
and not completed when a back-end dies are resubmitted by the next one, given the same inflight buffer).

Options:
  --socket PATH      the Unix socket to listen on (a stale socket file there is replaced)
  --file IMG         the raw image file (it must exist; its size, in whole 512-byte sectors, is the capacity)
  --readonly         open IMG read-only and offer VIRTIO_BLK_F_RO: writes, discards and write-zeroes fail
                     with IOERR
  --direct           open IMG with O_DIRECT, bypassing the host page cache (as QEMU's cache.direct=on); an access
                     the kernel refuses unaligned goes through a buffered descriptor, and a file system that
                     refuses O_DIRECT (tmpfs) gets buffered I/O, said in the listening line
  --once             exit when the first connection ends
  --queue-size N     the largest ring size accepted (a power of 2 up to 32768; default 128, QEMU's default for
                     vhost-user-blk-pci queue-size: give the same value to both, since seg_max is N - 2)
  --num-queues N     request queues (1 to ${MAX_BLK_QUEUES}; default 1; more than 1 offers VIRTIO_BLK_F_MQ)
  --serial ID        the GET_ID string (at most 20 bytes; default vireo-vhost-user-blk)
  --busy-poll-us N   after a turn in which a ring moved, serve the rings for N microseconds without waiting for
                     a kick (0 to 10000; default 0: sleep in poll(2) until the next kick). Lower latency and more
                     IOPS at one request in flight, for a CPU kept busy while requests flow (as QEMU's iothread
                     poll-max-ns does; vireo bench vhost-user-blk measures both ways)
  --io-threads N     threads doing the image's reads, writes and flushes (0 to ${MAX_IO_THREADS}), so that up to N
                     requests are at the disk at once, completing out of order; default ${DEFAULT_DIRECT_IO_THREADS} with
                     --direct, 0 without (0: each request's pread/pwrite runs on the back-end's one thread, which
                     measures faster through the page cache). A FLUSH waits for the writes in flight, then runs
                     fdatasync; stopping a ring (GET_VRING_BASE) waits for its requests
  -h, --help         this help

Example, with QEMU as the front-end (its guest memory must be shared):
  vireo vhost-user blk --socket /tmp/vub.sock --file disk.img &
  qemu-system-x86_64 -m 512 -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \\
    -chardev socket,id=vub,path=/tmp/vub.sock -device vhost-user-blk-pci,chardev=vub ...

When a connection ends, one JSON line on stdout gives its counts:
  {"event":"connection-end","reason":...,"reads":N,"readBytes":N,"writes":N,"writtenBytes":N,"flushes":N,...}
Errors the front-end causes are logged on stderr and end its connection (or are NACKed, with REPLY_ACK).`;

function positiveInt(v: string | undefined, what: string, def: number, ok: (n: number) => boolean): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (!/^[0-9]+$/.test(v) || !Number.isSafeInteger(n) || !ok(n)) {
    throw new ConfigError(`vhost-user blk: ${what} ${v}`);
  }
  return n;
}

export async function cmdVhostUserBlk(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      socket: { type: "string" },
      file: { type: "string" },
      readonly: { type: "boolean" },
      direct: { type: "boolean" },
      once: { type: "boolean" },
      "queue-size": { type: "string" },
      "num-queues": { type: "string" },
      serial: { type: "string" },
      "busy-poll-us": { type: "string" },
      "io-threads": { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(VHOST_USER_BLK_HELP);
    return 0;
  }
  if (positionals.length > 0) {
    throw new ConfigError(
      `vhost-user blk: unexpected argument '${positionals[0]}' (usage: vireo vhost-user blk --socket PATH --file IMG; see --help)`,
    );
  }
  const socketPath = values.socket;
  if (!socketPath) throw new ConfigError("vhost-user blk: --socket PATH is required");
  if (Buffer.byteLength(socketPath) > 107) {
    throw new ConfigError(
      `vhost-user blk: --socket path is ${Buffer.byteLength(socketPath)} bytes, at most 107`,
    );
  }
  const file = values.file;
  if (!file) throw new ConfigError("vhost-user blk: --file IMG is required");
  const queueSize = positiveInt(
    values["queue-size"],
    "--queue-size is not a power of 2 from 4 to 32768:",
    128,
    (q) => q >= 4 && q <= 32768 && (q & (q - 1)) === 0,
  );
  const numQueues = positiveInt(
    values["num-queues"],
    `--num-queues is not 1 to ${MAX_BLK_QUEUES}:`,
    1,
    (n) => n >= 1 && n <= MAX_BLK_QUEUES,
  );
  const busyPollUs = positiveInt(
    values["busy-poll-us"],
    "--busy-poll-us is not 0 to 10000:",
    0,
    (n) => n <= 10_000,
  );
  const ioThreadsGiven = values["io-threads"] !== undefined;
  const ioThreadsAsked = positiveInt(
    values["io-threads"],
    `--io-threads is not 0 to ${MAX_IO_THREADS}:`,
    0,
    (n) => n <= MAX_IO_THREADS,
  );
  const serial = values.serial ?? "vireo-vhost-user-blk";
  if (Buffer.byteLength(serial) > 20 || !/^[\x20-\x7e]*$/.test(serial)) {
    throw new ConfigError(`vhost-user blk: --serial must be at most 20 printable ASCII bytes`);
  }
  let image: FileBlockBackend;
  try {
    image = FileBlockBackend.open(file, {
      readOnly: values.readonly === true,
      direct: values.direct === true,
    });
  } catch (e) {
    throw new ConfigError(
      `vhost-user blk: ${e instanceof BlockIoError ? e.message : `cannot open ${file}: ${String(e)}`}`,
    );
  }
  if (image.size < 512) {
    image.close();
    throw new ConfigError(`vhost-user blk: ${file} has ${image.size} bytes, less than one 512-byte sector`);
  }
  const counts = zeroBlockCounts();
  const backend = new CountingBlockBackend(image, counts);
  const log = (m: string) => process.stderr.write(`vireo: ${m}\n`);
  const ioThreads = ioThreadsGiven ? ioThreadsAsked : image.direct ? DEFAULT_DIRECT_IO_THREADS : 0;
  let io: BlockIoPool | undefined;
  try {
    if (ioThreads > 0) {
      io = new BlockIoPool({
        threads: ioThreads,
        fd: image.descriptor,
        bufferedFd: image.bufferedDescriptor,
        startWorker: startTsWorker,
        counts,
      });
      if (!io.waitReady(30_000)) log(`vhost-user blk: I/O threads still starting after 30 s; going on`);
    }
  } catch (e) {
    image.close();
    throw new ConfigError(`vhost-user blk: ${e instanceof Error ? e.message : String(e)}`);
  }
  const pool = io;
  try {
    serveVhostUser({
      socketPath,
      once: values.once === true,
      log,
      extensions: { config: true, mq: true, inflight: true },
      busyPollMs: busyPollUs / 1000,
      model: () => new VirtioBlk({ backend, name: "blk0", numQueues, queueSize, serial, io: pool }),
      // The pool's completions: reaped on the loop's thread, each request used as it ends.
      input: pool && {
        fd: pool.completionFd,
        wants: () => pool.inFlight > 0,
        onReadable: () => {
          pool.reap();
          return false;
        },
      },
      onListening: () =>
        log(
          `vhost-user blk listening on ${socketPath}: ${file}, ${image.size} bytes${image.readOnly ? ", read-only" : ""}${image.direct ? ", O_DIRECT" : values.direct ? ", buffered (O_DIRECT refused)" : ""}, ${numQueues} queue(s) of up to ${queueSize}${busyPollUs > 0 ? `, busy polling ${busyPollUs} µs` : ""}${pool ? `, ${pool.threads} I/O threads` : ""}`,
        ),
      onConnectionEnd: (stats, reason) => {
        process.stdout.write(`${JSON.stringify({ event: "connection-end", reason, ...counts, ...stats })}\n`);
        Object.assign(counts, zeroBlockCounts());
      },
    });
  } finally {
    pool?.close();
    image.close();
  }
  return 0;
}
