/**
 * The native addon (native/vireo_native.cc): the syscalls Node lacks, nothing more. Loaded once per thread;
 * the shared library itself (and its kick table) is shared by every thread of the process.
 */
import { existsSync, lstatSync, unlinkSync } from "node:fs";
import { createRequire } from "node:module";
import { VireoError } from "./errors.ts";
import { repoPath } from "./paths.ts";

export interface NativeErrnoError extends Error {
  errno: number;
  code: string;
  syscall: string;
}

export interface NativeAddon {
  ioctl(fd: number, request: number, arg?: number | bigint | ArrayBufferView, name?: string): number;
  /** MAP_SHARED, or with `priv` MAP_PRIVATE: a file's pages read as first touched, writes kept in this process. */
  mmap(
    fd: number,
    length: number,
    offset: number,
    priv?: boolean,
  ): { buffer: SharedArrayBuffer; address: bigint };
  memfdCreate(name: string, flags?: number): number;
  /** Seals a memfd's size (F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_SEAL); it must have been made with MFD_ALLOW_SEALING. */
  sealSize(fd: number): void;
  eventfd(initval?: number, flags?: number): number;
  addressOf(view: ArrayBufferView): bigint;
  close(fd: number): void;
  /** poll(2) over [fd, events, revents] triples (revents written back); 0 on timeout or EINTR. */
  poll(pollfds: Int32Array, timeoutMs: number): number;
  /** read(2): bytes read, or -errno (no exception, e.g. -EAGAIN on a non-blocking fd). */
  readFd(fd: number, view: ArrayBufferView): number;
  /** write(2): bytes written, or -errno. */
  writeFd(fd: number, view: ArrayBufferView): number;
  /**
   * MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE zero pages at an `align`-aligned address: a range that mmapFixed
   * places shared mappings over (vhost-user maps a frontend's memory regions at their offsets in one buffer).
   */
  mmapReserve(length: number, align: number): { buffer: SharedArrayBuffer; address: bigint };
  /** MAP_SHARED|MAP_FIXED of `fd` at `offset` over exactly the bytes of `view` (page-aligned address and length). */
  mmapFixed(view: Uint8Array, fd: number, offset: number): void;
  /** A non-blocking, close-on-exec AF_UNIX stream socket bound to `path` and listening. */
  unixListen(path: string, backlog?: number): number;
  /** A blocking, close-on-exec AF_UNIX stream socket connected to `path`. */
  unixConnect(path: string): number;
  /** accept4 (non-blocking, close-on-exec): the connection's fd, or -errno (-EAGAIN when none is waiting). */
  accept(fd: number): number;
  /** A connected AF_UNIX stream socket pair (close-on-exec; both non-blocking if asked). */
  socketpair(nonblock?: boolean): [number, number];
  setNonBlocking(fd: number, on: boolean): void;
  /** One sendmsg(2) with `fds` (at most 8) as SCM_RIGHTS: bytes sent, or -errno. */
  sendmsg(fd: number, view: ArrayBufferView, fds?: number[]): number;
  /**
   * One recvmsg(2) taking at most `maxFds` (0..8, default 8) fds, close-on-exec: `bytes` read (0 at end of stream)
   * or -errno; `truncated` when the sender passed more fds than that (the kernel closed the rest).
   */
  recvmsg(
    fd: number,
    view: ArrayBufferView,
    maxFds?: number,
  ): { bytes: number; fds: number[]; truncated: boolean };
  /** `immediateExit`: a 1-byte view of this thread's kvm_run.immediate_exit, set by every kick. */
  threadRegister(immediateExit?: Uint8Array): number;
  threadKick(id: number): boolean;
  /** One-shot kick `usec` microseconds from now (replacing an armed one); 0 disarms. */
  threadKickAfter(id: number, usec: number): void;
  /** Stops kicks from touching the thread's kvm_run (call before unmapping it). */
  threadUnregister(id: number): void;
}

export const NATIVE_ADDON_PATH = repoPath("native", "build", "Release", "vireo_native.node");

let addon: NativeAddon | undefined;

export function native(): NativeAddon {
  if (addon) return addon;
  if (!existsSync(NATIVE_ADDON_PATH)) {
    throw new VireoError(
      "VIREO_NATIVE_MISSING",
      `the native addon is not built (${NATIVE_ADDON_PATH}); run: npm run build:native`,
    );
  }
  addon = createRequire(import.meta.url)(NATIVE_ADDON_PATH) as NativeAddon;
  return addon;
}

export function isErrno(e: unknown, code?: string): e is NativeErrnoError {
  return (
    e instanceof Error &&
    typeof (e as NativeErrnoError).errno === "number" &&
    (!code || (e as NativeErrnoError).code === code)
  );
}

export const MFD_CLOEXEC = 1;
export const MFD_ALLOW_SEALING = 2;
export const EFD_CLOEXEC = 0o2000000;
export const EFD_NONBLOCK = 0o4000;

export const POLLIN = 0x1;
export const POLLOUT = 0x4;
export const POLLERR = 0x8;
export const POLLHUP = 0x10;
export const EAGAIN = 11;
export const EINTR = 4;

const ONE = new BigUint64Array([1n]);
const counterValue = new BigUint64Array(1);

/**
 * A listening AF_UNIX socket at `path` (unixListen): a stale socket file left there by an earlier process is
 * replaced; any other file stays, and bind refuses the path.
 */
export function listenUnix(path: string, backlog = 1): number {
  if (existsSync(path) && lstatSync(path).isSocket()) unlinkSync(path);
  return native().unixListen(path, backlog);
}

/** Closes a socket listenUnix made and removes its file (if something else removed it already, nothing more). */
export function closeListening(fd: number, path: string): void {
  native().close(fd);
  try {
    unlinkSync(path);
  } catch {
    // already gone
  }
}

/** Adds 1 to an eventfd's counter: wakes whoever polls it. Never throws (EAGAIN means it is already signalled). */
export function signalEventFd(fd: number): void {
  native().writeFd(fd, ONE);
}

/** Reads and resets a non-blocking eventfd's counter: the signals since the last read, 0 if none. */
export function takeEventFd(fd: number): number {
  return native().readFd(fd, counterValue) === 8 ? Number(counterValue[0]) : 0;
}
