/**
 * A switch port served as a vhost-user back-end: the switch listens on the port's socket and a front-end (QEMU,
 * DPDK's virtio_user, a vireo VM) plugs in. The port runs vireo's own VirtioNet over the front-end's rings: the
 * frames the front-end transmits come to the switch through the device's backend (`sendFrom` hands a range of the
 * front-end's memory, which the switch copies once into its staging slab); frames for the front-end go into its
 * receive ring through the device's Receiver, held back (`more`) until the switch ends its batch (`flush`).
 */
import { featureNames } from "../../devices/virtio/constants.ts";
import { VIRTIO_NET_F, VirtioNet, type VirtioNetBackend } from "../../devices/virtio/net.ts";
import { rarpFrame } from "../../net/announce.ts";
import type { Receiver } from "../../net/backend.ts";
import { VHOST_F_LOG_ALL } from "../../vhost-user/dirty-log.ts";
import { BUSY_POLL_MS, VhostUserEndpoint } from "../../vhost-user/endpoint.ts";
import { VHOST_USER_F_PROTOCOL_FEATURES } from "../../vhost-user/protocol.ts";
import type { PortIo, PortPeer, Switch } from "../switch.ts";

/** Names of the bits a front-end's SET_FEATURES may hold besides the reserved ones (constants.ts's VIRTIO_F). */
const NAMED_BITS = {
  ...VIRTIO_NET_F,
  PROTOCOL_FEATURES: VHOST_USER_F_PROTOCOL_FEATURES,
  LOG_ALL: VHOST_F_LOG_ALL,
};

/** The virtio-net device's backend: the switch on the other side. */
class SwitchNetBackend implements VirtioNetBackend {
  receiver: Receiver | null = null;
  /** The switch port's index, set once the port is added. */
  index = -1;
  constructor(
    readonly name: string,
    private readonly sw: Switch,
  ) {}
  send(frame: Uint8Array): boolean {
    this.sw.receive(this.index, frame, 0, frame.length);
    return true;
  }
  sendFrom(bytes: Uint8Array, offset: number, length: number): boolean {
    this.sw.receive(this.index, bytes, offset, length);
    return true;
  }
  attach(receiver: Receiver): void {
    this.receiver = receiver;
  }
  rxReady(): void {
    // Nothing waits: a frame the ring had no room for was dropped (and counted) when it came.
  }
  close(): void {
    this.receiver = null;
  }
}

export interface VhostUserPortOptions {
  name: string;
  socketPath: string;
  log: (m: string) => void;
  /** Largest ring the front-end may set. */
  queueSize?: number;
}

export class VhostUserPort implements PortIo {
  readonly kind = "vhost-user";
  readonly endpoint: VhostUserEndpoint;
  private readonly backend: SwitchNetBackend;

  constructor(sw: Switch, opts: VhostUserPortOptions) {
    const backend = new SwitchNetBackend(`switch:${opts.name}`, sw);
    this.backend = backend;
    this.endpoint = new VhostUserEndpoint({
      socketPath: opts.socketPath,
      log: (m) => opts.log(`port ${opts.name}: ${m}`),
      busyPollMs: BUSY_POLL_MS,
      maxKicks: 3,
      // SEND_RARP (after the front-end's VM moved): a RARP from the guest's MAC enters the switch from this port,
      // so the MAC is learnt here and the broadcast floods the others, as a frame the guest sent would.
      extensions: { mq: true, rarp: (mac) => void backend.send(rarpFrame(mac)) },
      model: () => new VirtioNet({ backend, name: opts.name, queueSize: opts.queueSize ?? 1024 }),
    });
  }

  /** Called with the index the switch gave the port. */
  bind(index: number): void {
    this.backend.index = index;
  }

  deliver(frame: Uint8Array, more: boolean): boolean | null {
    const r = this.backend.receiver;
    if (r === null || !this.endpoint.connected) return null;
    return r(frame, more);
  }

  deliverBurst(peek: () => Uint8Array | null, take: () => void, expected: number): number | null {
    const r = this.backend.receiver;
    // Without a peer, or a device without bursts, the switch delivers frame by frame (deliver says which).
    if (r?.burst === undefined || !this.endpoint.connected) return null;
    return r.burst(peek, take, expected);
  }

  /** Connected or not, and the features the front-end set (SET_FEATURES). */
  peer(): PortPeer {
    const acked = this.endpoint.connected ? (this.endpoint.backend?.ackedFeatures ?? null) : null;
    return {
      connected: this.endpoint.connected,
      features: acked === null ? [] : featureNames(acked, NAMED_BITS),
    };
  }

  flush(): void {
    this.backend.receiver?.flush?.();
  }

  close(): void {
    this.endpoint.close("port detached");
  }
}
