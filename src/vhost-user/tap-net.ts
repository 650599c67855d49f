/**
 * `vireo vhost-user net --tap NAME`: the back-end's frame end is a host TAP device, vireo's own TapBackend
 * (src/net/tap.ts, opened with IFF_VNET_HDR, so the guest's virtio_net_hdr and its checksum and TSO offloads pass
 * through to the host kernel unchanged). The guest's transmitted frames are written to the TAP; the TAP's frames
 * are offered to the guest's receive ring.
 *
 * The TAP fd is served by the back-end's one poll loop (src/vhost-user/server.ts) as its input fd: polled for
 * POLLIN only while no frame waits for receive buffers (so an idle guest, or one whose ring is full, costs no
 * CPU), and read at most one work budget's worth of frames (DEFAULT_NOTIFY_BUDGET.chains) per turn, so a host
 * flooding the TAP gets its share of the loop and no more; the kicks and the control socket are looked at
 * between slices. The same limit holds when the guest posts receive buffers (rxReady).
 */
import type { NetOffloads, VirtioNetBackend } from "../devices/virtio/net.ts";
import { DEFAULT_NOTIFY_BUDGET } from "../devices/virtio/work-budget.ts";
import { ConfigError, VireoError } from "../errors.ts";
import { native } from "../native.ts";
import { openTap, TAP_VNET_HDR_SIZE, TapBackend } from "../net/tap.ts";
import type { FrameCounts } from "./net-backends.ts";

/** Frames read from the TAP per turn of the loop. */
export const TAP_RX_SLICE = DEFAULT_NOTIFY_BUDGET.chains;

/** IFNAMSIZ (16) less the terminating NUL (<linux/if.h>). */
const MAX_TAP_NAME = 15;

/** A TapBackend that counts what passes each way in the connection's FrameCounts (bytes without the header). */
export class TapNetBackend implements VirtioNetBackend {
  readonly name: string;
  readonly vnetHdr = true;
  readonly fd: number;
  private readonly tap: TapBackend;

  constructor(
    tap: TapBackend,
    readonly counts: FrameCounts,
  ) {
    this.tap = tap;
    this.name = `tap:${tap.name}`;
    this.fd = tap.fd;
  }

  send(frame: Uint8Array): boolean {
    const ok = this.tap.send(frame);
    if (ok) {
      this.counts.txFrames++;
      this.counts.txBytes += frame.length - TAP_VNET_HDR_SIZE;
    } else {
      this.counts.dropped++;
    }
    return ok;
  }

  attach(receiver: (frame: Uint8Array) => boolean): void {
    this.tap.attach((frame) => {
      if (!receiver(frame)) return false;
      this.counts.rxFrames++;
      this.counts.rxBytes += frame.length - TAP_VNET_HDR_SIZE;
      return true;
    });
  }

  rxReady(): void {
    this.tap.pump(TAP_RX_SLICE);
  }

  setOffloads(o: NetOffloads): void {
    this.tap.setOffloads(o);
  }

  close(): void {
    this.tap.close();
  }

  /** The server loop's input (ServeOptions.input): true from onReadable when a full slice was read. */
  input(): { fd: number; wants(): boolean; onReadable(): boolean } {
    return {
      fd: this.fd,
      wants: () => this.tap.wantsInput(),
      onReadable: () => this.tap.pump(TAP_RX_SLICE) >= TAP_RX_SLICE,
    };
  }
}

/**
 * Opens (or creates) TAP `name` with virtio-net headers. Every failure is a ConfigError naming the option and
 * the cause (no /dev/net/tun, a bad or too long name, no permission, the device busy). Returns the backend and a
 * close for the fd.
 */
export function openTapNet(name: string, counts: FrameCounts): { backend: TapNetBackend; close(): void } {
  const bytes = Buffer.byteLength(name);
  if (bytes > MAX_TAP_NAME) {
    throw new ConfigError(
      `vhost-user net: --tap ${name}: the name is ${bytes} bytes, an interface name is at most ${MAX_TAP_NAME}`,
    );
  }
  let tap: ReturnType<typeof openTap>;
  try {
    tap = openTap(name, { vnetHdr: true });
  } catch (e) {
    if (!(e instanceof VireoError)) throw e;
    // TapError messages start with "tap=NAME: "; say it as this command's option.
    const why = e.message.startsWith(`tap=${name}: `) ? e.message.slice(`tap=${name}: `.length) : e.message;
    throw new ConfigError(`vhost-user net: --tap ${name}: ${why}`);
  }
  const backend = new TapNetBackend(new TapBackend(tap), counts);
  return {
    backend,
    close: () => {
      backend.close();
      native().close(tap.fd);
    },
  };
}
