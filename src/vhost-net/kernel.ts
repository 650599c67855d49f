/**
 * /dev/vhost-net (drivers/vhost/net.c): the host kernel serves a virtio-net device's rings, moving frames between
 * guest memory and a TAP with no exit to vireo and no copy through it. This is the ioctl conversation only
 * (include/uapi/linux/vhost.h), synchronous: each call is one ioctl, and a failure is a VhostNetError naming it.
 *
 * Ownership: VHOST_SET_OWNER binds the device to this process's address space (its worker thread reads guest RAM
 * through the user addresses of the memory table), so any thread of vireo may issue the later calls.
 */
import { closeSync, constants, openSync } from "node:fs";
import { VireoError } from "../errors.ts";
import { native } from "../native.ts";
import { memoryTable, VHOST, type VhostMemRegion, vringAddr, vringFile, vringState } from "./abi.ts";

/** The device; VIREO_VHOST_NET names another path (tests: a missing device, on a host that has one). */
export const VHOST_NET_PATH = process.env.VIREO_VHOST_NET ?? "/dev/vhost-net";

export type VhostNetErrorCode =
  /** /dev/vhost-net is missing or cannot be opened. */
  | "VHOST_NET_OPEN"
  /** An ioctl the kernel refused. */
  | "VHOST_NET_IOCTL";

export class VhostNetError extends VireoError {
  declare readonly code: VhostNetErrorCode;
  constructor(code: VhostNetErrorCode, message: string) {
    super(code, message);
  }
}

/** Why /dev/vhost-net cannot be opened, as one line that says what to do. */
export function openFailure(path: string, code: string | undefined, message: string): string {
  if (code === "ENOENT" || code === "ENODEV" || code === "ENXIO")
    return `there is no ${path} (load the vhost_net module: modprobe vhost_net)`;
  if (code === "EACCES" || code === "EPERM") return `no permission to open ${path} (run as root)`;
  return `cannot open ${path}: ${message}`;
}

export interface VringSetup {
  num: number;
  /** The next available index the kernel reads. */
  base: number;
  /** User addresses (this process's mapping of guest RAM) of the ring's parts. */
  desc: bigint;
  avail: bigint;
  used: bigint;
  kickFd: number;
  /** -1: no interrupts (a polling driver). */
  callFd: number;
}

export class VhostNet {
  private readonly n = native();
  private closedFd = false;

  private constructor(readonly fd: number) {}

  /** Opens the device (`path` for tests) and makes this process its owner. */
  static open(path = VHOST_NET_PATH): VhostNet {
    let fd: number;
    try {
      fd = openSync(path, constants.O_RDWR);
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      throw new VhostNetError("VHOST_NET_OPEN", openFailure(path, err.code, err.message));
    }
    const v = new VhostNet(fd);
    try {
      v.io(VHOST.SET_OWNER, 0, "VHOST_SET_OWNER");
    } catch (e) {
      v.close();
      throw e;
    }
    return v;
  }

  /** An fd opened (and owned) elsewhere in this process: another thread's handle on the same device. */
  static adopt(fd: number): VhostNet {
    return new VhostNet(fd);
  }

  /** VHOST_GET_FEATURES: the virtio features the kernel's vhost-net serves. */
  getFeatures(): bigint {
    const f = new BigUint64Array(1);
    this.io(VHOST.GET_FEATURES, f, "VHOST_GET_FEATURES");
    return f[0] as bigint;
  }

  setFeatures(features: bigint): void {
    this.io(VHOST.SET_FEATURES, BigUint64Array.of(features), "VHOST_SET_FEATURES");
  }

  setMemTable(regions: readonly VhostMemRegion[]): void {
    this.io(VHOST.SET_MEM_TABLE, memoryTable(regions), "VHOST_SET_MEM_TABLE");
  }

  /** Ring q: size, base, addresses, call (before kick: the kernel may serve the ring once it has a kick). */
  setVring(q: number, r: VringSetup): void {
    this.io(VHOST.SET_VRING_NUM, vringState(q, r.num), "VHOST_SET_VRING_NUM");
    this.io(VHOST.SET_VRING_BASE, vringState(q, r.base), "VHOST_SET_VRING_BASE");
    this.io(VHOST.SET_VRING_ADDR, vringAddr(q, r), "VHOST_SET_VRING_ADDR");
    this.setCall(q, r.callFd);
    this.io(VHOST.SET_VRING_KICK, vringFile(q, r.kickFd), "VHOST_SET_VRING_KICK");
  }

  setCall(q: number, callFd: number): void {
    this.io(VHOST.SET_VRING_CALL, vringFile(q, callFd), "VHOST_SET_VRING_CALL");
  }

  /** VHOST_NET_SET_BACKEND: ring q moves frames to and from the TAP `fd`; -1 stops it. */
  setBackend(q: number, fd: number): void {
    this.io(VHOST.NET_SET_BACKEND, vringFile(q, fd), "VHOST_NET_SET_BACKEND");
  }

  /** VHOST_GET_VRING_BASE: the next available index the kernel would have read (call after the backend stops). */
  getVringBase(q: number): number {
    const s = vringState(q, 0);
    this.io(VHOST.GET_VRING_BASE, s, "VHOST_GET_VRING_BASE");
    return s[1] as number;
  }

  close(): void {
    if (this.closedFd) return;
    this.closedFd = true;
    closeSync(this.fd);
  }

  private io(request: number, arg: number | ArrayBufferView, name: string): void {
    try {
      this.n.ioctl(this.fd, request, arg, name);
    } catch (e) {
      throw new VhostNetError("VHOST_NET_IOCTL", `vhost-net: ${(e as Error).message}`);
    }
  }
}
