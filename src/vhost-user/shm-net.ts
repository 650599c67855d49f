/**
 * `vireo vhost-user net --shm SOCKET`: the back-end's frame end is a `vireo switch` shm port (src/net/shm-backend.ts
 * over src/net/shm-channel.ts). The back-end then does for its front-end what a VM's data-plane thread does with
 * `vireo run --net shm=`: serves the virtio rings with vireo's VirtioNet and copies frames through the switch's
 * shared-memory rings. `vireo bench switch` uses it to load the switch's shm ports the way VMs would, with DPDK's
 * virtio_user standing in for the guests' drivers.
 *
 * The channel's kick eventfd is the server loop's input fd (ServeOptions.input), read at most one work budget of
 * frames per turn, as a TAP is (tap-net.ts).
 */
import type { VirtioNetBackend } from "../devices/virtio/net.ts";
import { ConfigError } from "../errors.ts";
import { native } from "../native.ts";
import type { Receiver } from "../net/backend.ts";
import { SHM_RX_SLICE, ShmNetBackend } from "../net/shm-backend.ts";
import { connectShmChannel } from "../net/shm-channel.ts";
import type { FrameCounts } from "./net-backends.ts";

/** An ShmNetBackend that counts what passes each way in the connection's FrameCounts. */
export class ShmNetCounted implements VirtioNetBackend {
  readonly name: string;
  readonly vnetHdr = false;

  constructor(
    private readonly shm: ShmNetBackend,
    readonly counts: FrameCounts,
  ) {
    this.name = shm.name;
  }

  send(frame: Uint8Array): boolean {
    return this.sendFrom(frame, 0, frame.length);
  }

  sendFrom(bytes: Uint8Array, offset: number, length: number): boolean {
    const ok = this.shm.sendFrom(bytes, offset, length);
    if (ok) {
      this.counts.txFrames++;
      this.counts.txBytes += length;
    } else {
      this.counts.dropped++;
    }
    return ok;
  }

  attach(receiver: Receiver): void {
    const counted: Receiver = (frame, more) => {
      if (!receiver(frame, more)) return false;
      this.counts.rxFrames++;
      this.counts.rxBytes += frame.length;
      return true;
    };
    if (receiver.flush) counted.flush = () => receiver.flush?.();
    this.shm.attach(counted);
  }

  rxReady(): void {
    this.shm.rxReady();
  }

  close(): void {
    this.shm.close();
  }

  /** The server loop's input (ServeOptions.input): true from onReadable when a full slice was read. */
  input(): { fd: number; wants(): boolean; onReadable(): boolean } {
    return {
      fd: this.shm.fd,
      wants: () => this.shm.wantsInput(),
      onReadable: () => this.shm.pump(SHM_RX_SLICE) >= SHM_RX_SLICE,
    };
  }
}

/** Connects to the shm port at `path`; every failure is a ConfigError naming the option. */
export function openShmNet(path: string, counts: FrameCounts): { backend: ShmNetCounted; close(): void } {
  let c: ReturnType<typeof connectShmChannel>;
  try {
    c = connectShmChannel(path, `vhost-user net: --shm ${path}`);
  } catch (e) {
    throw new ConfigError((e as Error).message);
  }
  const shm = new ShmNetBackend(c.channel, {
    name: `shm:${path}`,
    log: (m) => process.stderr.write(`vireo: ${m}\n`),
  });
  const backend = new ShmNetCounted(shm, counts);
  return {
    backend,
    close: () => {
      backend.close();
      c.channel.close();
      native().close(c.conn);
    },
  };
}
