/**
 * TAP devices (Linux Documentation/networking/tuntap.rst): a network interface in the host whose other end is a
 * file descriptor. `openTap` attaches to (or creates) the interface; `TapBackend` is the NetBackend over the fd.
 *
 * With IFF_VNET_HDR every frame read or written starts with a struct virtio_net_hdr (include/uapi/linux/
 * virtio_net.h). vireo sets its size to 12 bytes (TUNSETVNETHDRSZ), the VIRTIO_F_VERSION_1 layout with
 * num_buffers, so virtio-net can pass headers through unchanged and the kernel does checksum and segmentation
 * offloads the guest negotiated (TUNSETOFFLOAD).
 *
 * The fd is non-blocking and belongs to the process, so any thread may use it: the I/O thread that owns the
 * backend reads it when poll(2) says it is readable (`pump`), and other threads may write frames to it (`send`,
 * one write per frame is atomic for a TAP).
 */
import { closeSync, constants, openSync } from "node:fs";
import type { NetOffloads, VirtioNetBackend } from "../devices/virtio/net.ts";
import { VireoError } from "../errors.ts";
import { type Counter, counterSet, type MetricsSink } from "../metrics/registry.ts";
import { EAGAIN, EINTR, native } from "../native.ts";

// <linux/if_tun.h>
const TUNSETIFF = 0x400454ca;
const TUNSETOFFLOAD = 0x400454d0;
const TUNSETVNETHDRSZ = 0x400454d8;
const IFF_TAP = 0x0002;
const IFF_NO_PI = 0x1000;
const IFF_VNET_HDR = 0x4000;
const TUN_F_CSUM = 0x01;
const TUN_F_TSO4 = 0x02;
const TUN_F_TSO6 = 0x04;
const TUN_F_TSO_ECN = 0x08;
const IFNAMSIZ = 16;
const IFREQ_SIZE = 40;

export const TAP_VNET_HDR_SIZE = 12;

/** The interface name rules of the kernel (dev_valid_name): 1-15 bytes, no '/', ':' or whitespace. */
const TAP_NAME = /^[A-Za-z0-9_.-]{1,15}$/;

export class TapError extends VireoError {}

export interface Tap {
  fd: number;
  name: string;
  vnetHdr: boolean;
}

/** Throws TapError unless `name` can be a network interface name. */
export function checkTapName(name: string): void {
  if (!TAP_NAME.test(name) || name === "." || name === "..") {
    throw new TapError(
      "VIREO_TAP_NAME",
      `tap=${name}: an interface name is 1 to 15 letters, digits, '_', '.' or '-'`,
    );
  }
}

/** Attaches to TAP interface `name`, creating it if it does not exist (that needs CAP_NET_ADMIN). */
export function openTap(name: string, opts: { vnetHdr: boolean }): Tap {
  checkTapName(name);
  let fd: number;
  try {
    fd = openSync("/dev/net/tun", constants.O_RDWR | constants.O_NONBLOCK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const why =
      code === "ENOENT"
        ? "there is no /dev/net/tun (load the tun module: modprobe tun)"
        : code === "EACCES" || code === "EPERM"
          ? "no permission to open /dev/net/tun (run as root or with CAP_NET_ADMIN)"
          : `cannot open /dev/net/tun: ${(e as Error).message}`;
    throw new TapError("VIREO_TAP_OPEN", `tap=${name}: ${why}`);
  }
  try {
    const ifr = new Uint8Array(IFREQ_SIZE);
    ifr.set(new TextEncoder().encode(name).subarray(0, IFNAMSIZ - 1));
    new DataView(ifr.buffer).setUint16(
      IFNAMSIZ,
      IFF_TAP | IFF_NO_PI | (opts.vnetHdr ? IFF_VNET_HDR : 0),
      true,
    );
    try {
      native().ioctl(fd, TUNSETIFF, ifr, "TUNSETIFF");
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      const why =
        code === "EBUSY"
          ? `TAP device ${name} is busy (another process has it open)`
          : code === "EPERM"
            ? `no permission to attach to or create TAP device ${name} (needs CAP_NET_ADMIN, or a persistent TAP owned by this user)`
            : code === "EINVAL"
              ? `${name} exists and is not a TAP device that can be attached with these flags`
              : (e as Error).message;
      throw new TapError("VIREO_TAP_ATTACH", `tap=${name}: ${why}`);
    }
    if (opts.vnetHdr) {
      const size = new Int32Array([TAP_VNET_HDR_SIZE]);
      native().ioctl(fd, TUNSETVNETHDRSZ, size, "TUNSETVNETHDRSZ");
      // No offloads until a driver accepts them.
      native().ioctl(fd, TUNSETOFFLOAD, 0, "TUNSETOFFLOAD");
    }
  } catch (e) {
    closeSync(fd);
    throw e;
  }
  return { fd, name, vnetHdr: opts.vnetHdr };
}

/** TUNSETOFFLOAD: what the kernel may hand us in frames read from the TAP (what the guest's driver accepts). */
export function setTapOffloads(fd: number, o: NetOffloads): void {
  let flags = 0;
  if (o.csum) {
    flags |= TUN_F_CSUM;
    if (o.tso4) flags |= TUN_F_TSO4;
    if (o.tso6) flags |= TUN_F_TSO6;
    if ((o.tso4 || o.tso6) && o.ecn) flags |= TUN_F_TSO_ECN;
  }
  native().ioctl(fd, TUNSETOFFLOAD, flags, "TUNSETOFFLOAD");
}

/**
 * A NetBackend over a TAP fd. The receive side is driven by its owner thread: `pump()` when the fd is readable
 * (it reads until EAGAIN or until the guest has no buffer), `wantsInput()` to decide whether to poll for
 * POLLIN at all (not while a refused frame waits for buffers: the kernel queues the rest meanwhile).
 */
export class TapBackend implements VirtioNetBackend {
  readonly name: string;
  readonly vnetHdr: boolean;
  readonly fd: number;
  private receiver: ((frame: Uint8Array) => boolean) | null = null;
  private readonly buf = new Uint8Array(65536 + TAP_VNET_HDR_SIZE + 64);
  /** Length of a frame in `buf` the receiver refused; 0 if none. */
  private pendingLength = 0;
  private closed = false;
  private readonly c: Record<"txPackets" | "txDropped" | "rxPackets" | "readErrors", Counter>;

  constructor(tap: Tap, opts: { metrics?: MetricsSink; metricsName?: string } = {}) {
    this.name = tap.name;
    this.vnetHdr = tap.vnetHdr;
    this.fd = tap.fd;
    this.c = counterSet(opts.metrics, `net.tap.${opts.metricsName ?? tap.name}`, {
      txPackets: "tx_packets",
      txDropped: "tx_dropped",
      rxPackets: "rx_packets",
      readErrors: "read_errors",
    });
  }

  send(frame: Uint8Array): boolean {
    if (this.closed) return false;
    for (;;) {
      const n = native().writeFd(this.fd, frame);
      if (n === frame.length) {
        this.c.txPackets.add();
        return true;
      }
      if (n === -EINTR) continue;
      // EAGAIN (the kernel's queue toward the host is full) or an error: the frame is dropped, as a wire would.
      this.c.txDropped.add();
      return false;
    }
  }

  setOffloads(o: NetOffloads): void {
    if (this.vnetHdr && !this.closed) setTapOffloads(this.fd, o);
  }

  attach(receiver: (frame: Uint8Array) => boolean): void {
    this.receiver = receiver;
  }

  rxReady(): void {
    this.pump();
  }

  wantsInput(): boolean {
    return !this.closed && this.receiver !== null && this.pendingLength === 0;
  }

  /**
   * Delivers frames from the TAP until it is empty, the guest has no buffer, or `max` frames were delivered (a
   * caller with a work budget comes back for the rest). Returns the frames delivered.
   */
  pump(max = Number.POSITIVE_INFINITY): number {
    const receiver = this.receiver;
    if (this.closed || receiver === null) return 0;
    let delivered = 0;
    while (delivered < max) {
      let len = this.pendingLength;
      if (len === 0) {
        const n = native().readFd(this.fd, this.buf);
        if (n === -EINTR) continue;
        if (n === -EAGAIN || n === 0) return delivered;
        if (n < 0) {
          this.c.readErrors.add();
          return delivered;
        }
        len = n;
      }
      if (!receiver(this.buf.subarray(0, len))) {
        this.pendingLength = len;
        return delivered;
      }
      this.pendingLength = 0;
      this.c.rxPackets.add();
      delivered++;
    }
    return delivered;
  }

  /** Stops using the fd (the owner of the fd closes it). */
  close(): void {
    this.closed = true;
    this.receiver = null;
    this.pendingLength = 0;
  }
}
