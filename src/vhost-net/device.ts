/**
 * `--net tap=NAME,vhost=on`: a virtio-net card whose rings the host kernel serves (/dev/vhost-net), the fourth
 * place a device's data plane runs (after the vCPU thread, a data-plane thread, and another process over
 * vhost-user). vireo keeps what it keeps for a vhost-user card — the virtio-pci transport, the status state
 * machine and the configuration space (the same VhostUserDevice model and virtio-net face) — and the kernel is
 * the back-end instead of a socket: the guest's doorbells are KVM ioeventfds given as VHOST_SET_VRING_KICK, its
 * interrupts irqfds given as VHOST_SET_VRING_CALL, and the TAP is attached with VHOST_NET_SET_BACKEND, so no
 * frame passes through vireo. The device's thread (thread.ts) starts the rings on DRIVER_OK and stops them on
 * reset.
 */
import { featureBit } from "../devices/virtio/constants.ts";
import { type VirtioPciState, VirtioPciTransport } from "../devices/virtio/pci-transport.ts";
import { ConfigError } from "../errors.ts";
import { openTap } from "../net/tap.ts";
import { createFrontendBlock, type OfferedFeatures, VhostUserDevice } from "../vhost-user/frontend-device.ts";
import { guestFeatures, netFace } from "../vhost-user/frontend-net.ts";
import type { IrqfdGsi } from "../vmm/msi-routes.ts";
import { VHOST_F_LOG_ALL, VHOST_NET_F_VIRTIO_NET_HDR } from "./abi.ts";
import { VhostNet, VhostNetError } from "./kernel.ts";

export interface VhostNetSpec {
  kind: "vhost-net";
  name: string;
  slot: number;
  state: VirtioPciState;
  mac: number[];
  /** /dev/vhost-net, owned by this process (VHOST_SET_OWNER done). */
  vhostFd: number;
  /** The TAP (IFF_VNET_HDR, 12-byte headers), handed to the kernel as each ring's backend. */
  tapFd: number;
  tapName: string;
  /** VHOST_GET_FEATURES. */
  backendFeatures: bigint;
  offered: OfferedFeatures;
  /** KVM ioeventfds on the queues' notify addresses: the rings' kick fds. */
  kicks: number[];
  /** Per MSI-X vector: a GSI and the eventfd KVM_IRQFD binds to it, the call fd of queues on that vector. */
  irq: { routes: SharedArrayBuffer; pool: IrqfdGsi[]; assigned: SharedArrayBuffer };
  /** Per queue: a call fd the device's thread turns into INTx (MSI-X disabled). */
  relays: number[];
  wake: number;
  block: SharedArrayBuffer;
  ram: { fd: number; size: number; hostAddress: bigint };
}

/** Feature bits never acked to vhost-net: dirty logging, and vhost adding the header itself (the TAP does). */
const NEVER_ACKED = featureBit(VHOST_F_LOG_ALL) | featureBit(VHOST_NET_F_VIRTIO_NET_HDR);

/** What VHOST_SET_FEATURES says: the kernel's share of what the guest negotiated. */
export function kernelAck(negotiated: bigint, backend: bigint): bigint {
  return negotiated & backend & ~NEVER_ACKED;
}

/**
 * Main thread: opens /dev/vhost-net (one clear error when it is missing) and the TAP, and reads what the kernel
 * serves. `eventFd` makes eventfds the caller closes with the machine; the vhost and TAP fds go to `fds` too.
 */
export function prepareVhostNet(
  o: { name: string; slot: number; tap: string; mac: Uint8Array; ram: VhostNetSpec["ram"] | undefined },
  eventFd: () => number,
  fds: number[],
): VhostNetSpec {
  const what = `--net tap=${o.tap},vhost=on`;
  if (o.ram === undefined) throw new ConfigError(`${what}: guest RAM cannot be handed to the kernel here`);
  let vhost: VhostNet;
  try {
    vhost = VhostNet.open();
  } catch (e) {
    if (e instanceof VhostNetError) throw new ConfigError(`${what}: ${e.message}`);
    throw e;
  }
  let features: bigint;
  let tap: ReturnType<typeof openTap>;
  try {
    features = vhost.getFeatures();
    tap = openTap(o.tap, { vnetHdr: true });
  } catch (e) {
    vhost.close();
    throw new ConfigError(`${what}: ${(e as Error).message}`);
  }
  fds.push(vhost.fd, tap.fd);
  const offered = guestFeatures(features);
  const perQueue = () => [eventFd(), eventFd()];
  return {
    kind: "vhost-net",
    name: o.name,
    slot: o.slot,
    state: VirtioPciTransport.createState({ numQueues: 2, stateBytes: 8 }),
    mac: Array.from(o.mac),
    vhostFd: vhost.fd,
    tapFd: tap.fd,
    tapName: tap.name,
    backendFeatures: features,
    offered,
    kicks: perQueue(),
    // Filled in once the MSI-X table size is known (after the transport is built).
    irq: { routes: new SharedArrayBuffer(0), pool: [], assigned: new SharedArrayBuffer(0) },
    relays: perQueue(),
    wake: eventFd(),
    block: createFrontendBlock(),
    ram: o.ram,
  };
}

/** The device model: vireo's virtio-net face over the shared state; the rings are the kernel's. */
export function vhostNetModel(spec: VhostNetSpec, role: "vcpu" | "thread"): VhostUserDevice {
  return new VhostUserDevice({
    name: spec.name,
    face: netFace(spec.name, Uint8Array.from(spec.mac)),
    offered: spec.offered,
    kicks: spec.kicks,
    wake: spec.wake,
    block: spec.block,
    role,
  });
}
