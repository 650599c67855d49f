/**
 * A switch port on a host TAP device (opened without virtio-net headers: the switch carries plain Ethernet
 * frames). Frames the host sends into the TAP are read, at most TAP_READ_BUDGET per turn of the loop, into one
 * buffer and handed to the switch, which stages its own copy; frames for the host are written with one write(2)
 * each. A TAP whose queue toward the host is full (EAGAIN) drops the frame (`noBuffers`).
 */
import { EAGAIN, EINTR, native } from "../../native.ts";
import { openTap } from "../../net/tap.ts";
import type { PortIo, Switch } from "../switch.ts";

/** Frames read from the TAP per turn: a host flooding the TAP gets its share of the loop and no more. */
export const TAP_READ_BUDGET = 256;

export class TapPort implements PortIo {
  readonly kind = "tap";
  readonly fd: number;
  private index = -1;
  private readonly buf = new Uint8Array(65536 + 64);
  private closed = false;
  readErrors = 0;

  constructor(
    private readonly sw: Switch,
    readonly ifname: string,
  ) {
    this.fd = openTap(ifname, { vnetHdr: false }).fd;
  }

  bind(index: number): void {
    this.index = index;
  }

  deliver(frame: Uint8Array): boolean | null {
    if (this.closed) return null;
    for (;;) {
      const n = native().writeFd(this.fd, frame);
      if (n === frame.length) return true;
      if (n === -EINTR) continue;
      return false;
    }
  }

  flush(): void {}

  /** Reads what the TAP has, up to TAP_READ_BUDGET frames; true if it may have more. */
  read(): boolean {
    if (this.closed) return false;
    const n = native();
    for (let i = 0; i < TAP_READ_BUDGET; i++) {
      const r = n.readFd(this.fd, this.buf);
      if (r === -EINTR) continue;
      if (r === -EAGAIN || r === 0) return false;
      if (r < 0) {
        this.readErrors++;
        return false;
      }
      this.sw.receive(this.index, this.buf, 0, r);
    }
    return true;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    native().close(this.fd);
  }
}
