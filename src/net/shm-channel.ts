/**
 * A pair of shared-memory frame rings (shm-ring.ts) between a server and one peer, set up over a Unix socket: the
 * server (a `vireo switch` shm port) listens; when a peer connects it makes the memory (a memfd holding two rings)
 * and two eventfds and sends them in one message:
 *
 *   bytes 0-3   "VSHM"
 *   4-7         version (1)
 *   8-11        slots per ring
 *   12-15       slot size in bytes
 *   fds         [memory, kick the server, kick the peer] (SCM_RIGHTS)
 *
 * Ring 0 (at offset 0) carries frames from the peer to the server, ring 1 (right after it) from the server to the
 * peer. Each side kicks the other's eventfd after publishing when the other asked for it (ShmRing.publish). The
 * connection carries nothing else; either side closing it ends the channel.
 */
import { fstatSync, ftruncateSync } from "node:fs";
import { EFD_CLOEXEC, EFD_NONBLOCK, MFD_ALLOW_SEALING, MFD_CLOEXEC, native, POLLIN } from "../native.ts";
import {
  checkShmGeometry,
  SHM_DEFAULT_SLOT_SIZE,
  SHM_DEFAULT_SLOTS,
  ShmRing,
  ShmRingError,
  shmRingBytes,
} from "./shm-ring.ts";

const MAGIC = 0x4d485356; // "VSHM" little-endian
const VERSION = 1;
const HELLO_BYTES = 16;
/** How long a peer waits for the server's hello: the switch sends it on its next turn, well under a second. */
const HELLO_TIMEOUT_MS = 10_000;

/** The two rings and eventfds one side of a channel holds. */
export interface ShmChannelEnd {
  /** Frames this side sends. */
  out: ShmRing;
  /** Frames this side receives. */
  in: ShmRing;
  /** Signal it after publishing to `out` when publish() says so. */
  kickOther: number;
  /** Poll it (POLLIN) to sleep until the other side published to `in`; read it (takeEventFd) to clear it. */
  kickMe: number;
  /** The mapping's fd, closed by close(). */
  memFd: number;
  close(): void;
}

function end(
  memFd: number,
  buffer: SharedArrayBuffer,
  slots: number,
  slotSize: number,
  server: boolean,
  kickServer: number,
  kickPeer: number,
  init: boolean,
): ShmChannelEnd {
  const ring0 = new ShmRing(buffer, 0, slots, slotSize, init);
  const ring1 = new ShmRing(buffer, shmRingBytes(slots, slotSize), slots, slotSize, init);
  let closed = false;
  return {
    out: server ? ring1 : ring0,
    in: server ? ring0 : ring1,
    kickOther: server ? kickPeer : kickServer,
    kickMe: server ? kickServer : kickPeer,
    memFd,
    close: () => {
      if (closed) return;
      closed = true;
      for (const fd of [memFd, kickServer, kickPeer]) native().close(fd);
    },
  };
}

/**
 * The server's side for a peer connected on `conn`: makes the memory and eventfds, sends them, and returns the
 * server's end (the peer's copies of the fds are closed here once sent).
 */
export function offerShmChannel(
  conn: number,
  slots = SHM_DEFAULT_SLOTS,
  slotSize = SHM_DEFAULT_SLOT_SIZE,
): ShmChannelEnd {
  const n = native();
  const size = 2 * shmRingBytes(slots, slotSize);
  const memFd = n.memfdCreate("vireo-shm-port", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  const kicks: number[] = [];
  let ch: ShmChannelEnd | null = null;
  try {
    ftruncateSync(memFd, size);
    // The peer gets this fd: sealed, it cannot shrink the memory under the server's mapping (SIGBUS).
    n.sealSize(memFd);
    kicks.push(n.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), n.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    const { buffer } = n.mmap(memFd, size, 0);
    ch = end(memFd, buffer, slots, slotSize, true, kicks[0] as number, kicks[1] as number, true);
    const sent = n.sendmsg(conn, new Uint32Array([MAGIC, VERSION, slots, slotSize]), [
      memFd,
      kicks[0] as number,
      kicks[1] as number,
    ]);
    if (sent !== HELLO_BYTES)
      throw new ShmRingError(
        `could not send the channel to the peer (${sent < 0 ? `errno ${-sent}` : `${sent} bytes sent`})`,
      );
    return ch;
  } catch (e) {
    // Whatever failed, every fd made here is closed once (by the end, once there is one).
    if (ch) ch.close();
    else for (const fd of [memFd, ...kicks]) n.close(fd);
    throw e;
  }
}

/**
 * The peer's side: connects to the server's socket, takes the memory and eventfds it sends, and returns the
 * peer's end and the connection (close it to leave; the server sees the peer go). `what` names the server in
 * errors (default: the path).
 */
export function connectShmChannel(path: string, what = path): { channel: ShmChannelEnd; conn: number } {
  const { fds, conn } = connectShmChannelFds(path, what);
  try {
    return { channel: mapShmChannel(fds, what), conn };
  } catch (e) {
    native().close(conn);
    throw e;
  }
}

/**
 * connectShmChannel without the mapping: the hello's fds, checked, and the connection (a VM's main thread takes
 * them; its data-plane thread maps them with mapShmChannel). Every failure is a ShmRingError naming `what`.
 */
export function connectShmChannelFds(path: string, what: string): { fds: ShmChannelFds; conn: number } {
  let conn: number;
  try {
    conn = native().unixConnect(path);
  } catch (e) {
    throw new ShmRingError(
      `${what}: cannot connect (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}): is a vireo switch shm port listening there?`,
    );
  }
  try {
    return { fds: receiveShmChannelFds(conn, what), conn };
  } catch (e) {
    native().close(conn);
    throw e;
  }
}

/** What a channel's hello carries, checked: the memory and eventfds, and the rings' geometry. */
export interface ShmChannelFds {
  memFd: number;
  kickServer: number;
  kickPeer: number;
  slots: number;
  slotSize: number;
}

/**
 * Takes the channel the server sends on `conn` (blocking until it comes) and maps it; everything in the hello is
 * checked before it is used (`what` names the server in errors). The connection stays open.
 */
export function receiveShmChannel(conn: number, what: string): ShmChannelEnd {
  return mapShmChannel(receiveShmChannelFds(conn, what), what);
}

/**
 * The hello alone, checked (magic, version, geometry, the memory's size), its fds kept open and not mapped: for a
 * process that maps the rings in another thread (a VM's I/O thread, mapShmChannel there).
 */
export function receiveShmChannelFds(
  conn: number,
  what: string,
  timeoutMs = HELLO_TIMEOUT_MS,
): ShmChannelFds {
  const n = native();
  const hello = new Uint32Array(HELLO_BYTES / 4);
  // A server that accepts and says nothing (not a vireo shm port) must not hang the caller.
  if (n.poll(new Int32Array([conn, POLLIN, 0]), timeoutMs) === 0)
    throw new ShmRingError(
      `${what}: no hello from the server within ${timeoutMs / 1000} s (is it a vireo switch shm port?)`,
    );
  const r = n.recvmsg(conn, hello, 3);
  const fail = (why: string) => {
    for (const fd of r.fds) n.close(fd);
    return new ShmRingError(`${what}: ${why}`);
  };
  if (r.bytes !== HELLO_BYTES || r.fds.length !== 3 || r.truncated)
    throw fail(
      `expected the channel's ${HELLO_BYTES}-byte hello with 3 fds, got ${r.bytes < 0 ? `errno ${-r.bytes}` : `${r.bytes} bytes`} and ${r.fds.length} fds (is it a vireo switch shm port?)`,
    );
  const [memFd, kickServer, kickPeer] = r.fds as [number, number, number];
  const [magic, version, slots, slotSize] = hello as unknown as [number, number, number, number];
  if (magic !== MAGIC) throw fail("not a vireo shm channel (bad magic)");
  if (version !== VERSION) throw fail(`channel version ${version}, this vireo speaks ${VERSION}`);
  try {
    checkShmGeometry(slots, slotSize);
  } catch (e) {
    throw fail((e as Error).message);
  }
  const need = 2 * shmRingBytes(slots, slotSize);
  // Checked before mapping: a memory shorter than the rings would fault (SIGBUS) where the rings run past it.
  let have = -1;
  try {
    have = fstatSync(memFd).size;
  } catch {}
  if (have < need) throw fail(`the rings (${need} bytes) do not fit the memory sent (${have} bytes)`);
  return { memFd, kickServer, kickPeer, slots, slotSize };
}

/** The peer's end over fds receiveShmChannelFds took (in any thread of the process). Closes them on failure. */
export function mapShmChannel(f: ShmChannelFds, what: string): ShmChannelEnd {
  const n = native();
  try {
    const { buffer } = n.mmap(f.memFd, 2 * shmRingBytes(f.slots, f.slotSize), 0);
    return end(f.memFd, buffer, f.slots, f.slotSize, false, f.kickServer, f.kickPeer, false);
  } catch (e) {
    for (const fd of [f.memFd, f.kickServer, f.kickPeer]) n.close(fd);
    throw new ShmRingError(`${what}: cannot map the rings: ${(e as Error).message}`);
  }
}
