/**
 * PCI devices of a machine, as plain data every thread builds from. The main thread acts as firmware: it opens
 * the backends, creates the shared states, assigns the BARs (so a guest without a PCI allocator of its own, like
 * the micro guest, finds its devices already placed), and hands the manifest to the vCPU workers. Each worker
 * builds its own PciBus and transports over the same shared state and re-syncs BAR windows cheaply before it
 * dispatches an exit (PciBus.syncBars).
 */

import { ftruncateSync } from "node:fs";
import { FileBlockBackend } from "../block/file.ts";
import type { Bus } from "../bus/bus.ts";
import { E1000Pci, type E1000PciState } from "../devices/e1000/pci.ts";
import { assignBars } from "../devices/pci/bar-allocator.ts";
import { connectBars } from "../devices/pci/bars.ts";
import { PciBus, PciConfigIo } from "../devices/pci/host-bridge.ts";
import type { MsixRoute } from "../devices/pci/msix.ts";
import { VirtioBlk } from "../devices/virtio/blk.ts";
import { VirtioConsole } from "../devices/virtio/console.ts";
import type { VirtioDeviceModel } from "../devices/virtio/device.ts";
import { VirtioNet, type VirtioNetBackend } from "../devices/virtio/net.ts";
import { type VirtioPciState, VirtioPciTransport } from "../devices/virtio/pci-transport.ts";
import { VirtioRng } from "../devices/virtio/rng.ts";
import type { Defer } from "../devices/virtio/work-budget.ts";
import { ConfigError } from "../errors.ts";
import { createDataPlaneBlock, RemoteQueues } from "../io-thread/remote-queues.ts";
import { Vm } from "../kvm/vm.ts";
import type { GuestMemory } from "../memory/guest-memory.ts";
import type { MetricsSink } from "../metrics/registry.ts";
import { EFD_CLOEXEC, EFD_NONBLOCK, MFD_CLOEXEC, native, signalEventFd } from "../native.ts";
import type { NetBackend } from "../net/backend.ts";
import { ShmNetBackend } from "../net/shm-backend.ts";
import { connectShmChannelFds, mapShmChannel, type ShmChannelFds } from "../net/shm-channel.ts";
import { checkTapName, openTap, type Tap, TapBackend } from "../net/tap.ts";
import { prepareVhostNet, type VhostNetSpec, vhostNetModel } from "../vhost-net/device.ts";
import { logBytesFor } from "../vhost-user/dirty-log.ts";
import {
  DEFAULT_PROTOCOL_FEATURES,
  type NegotiatedBackend,
  VhostUserFrontend,
  VhostUserFrontendError,
} from "../vhost-user/frontend.ts";
import {
  BLK_CONFIG_BYTES,
  BLK_PROTOCOL_FEATURES,
  blkFace,
  blkGuestFeatures,
  blkQueues,
} from "../vhost-user/frontend-blk.ts";
import {
  createFrontendBlock,
  FRONTEND_WORDS,
  type OfferedFeatures,
  VhostUserDevice,
} from "../vhost-user/frontend-device.ts";
import { guestFeatures, netFace } from "../vhost-user/frontend-net.ts";
import { PROTOCOL_F } from "../vhost-user/protocol.ts";
import { writeAll } from "./device-manifest.ts";
import { kvmIrqLine, pciIntxGsi } from "./irq.ts";
import { FIRST_MSI_GSI, type IrqfdGsi, MsiRouteTable } from "./msi-routes.ts";

export interface DiskConfig {
  /** The image file, or with vhostUser the back-end's socket. */
  path: string;
  /** `--disk vhost-user=SOCKET`: a vhost-user back-end serves the disk (src/vhost-user/frontend-blk.ts). */
  vhostUser?: boolean;
  readOnly: boolean;
  direct: boolean;
  /** Serve the queues on a data-plane thread woken by ioeventfds instead of in the vCPU's notify exit. */
  iothread?: boolean;
}

/** `--net tap=NAME[,vhost=on][,mac=xx:xx:xx:xx:xx:xx][,model=virtio|e1000]` or `--net vhost-user=SOCKET[,mac=...]` */
export interface NetConfig {
  /** The host TAP (empty with vhostUser). */
  tap: string;
  /** A vhost-user back-end's socket: the rings are served there, not by a TAP of vireo's. */
  vhostUser?: string;
  /** A `vireo switch` shm port's socket: frames go through its shared-memory rings (src/net/shm-backend.ts). */
  shm?: string;
  mac?: Uint8Array;
  model: "virtio" | "e1000";
  /** `vhost=on`: the host kernel serves the rings (/dev/vhost-net, src/vhost-net/). */
  vhost?: boolean;
}

/** What a data-plane thread (src/io-thread/io-thread.ts) needs besides the device: its wake-up eventfds. */
export interface DataPlaneSpec {
  /** One eventfd per queue: KVM's ioeventfd on the queue's notify address, or a vCPU thread, signals it. */
  kicks: number[];
  /** Signalled on DRIVER_OK and when another thread has work for the data plane. */
  wake: number;
  /** Shared control words (remote-queues.ts DATA_PLANE). */
  block: SharedArrayBuffer;
  /**
   * MSI-X through irqfds (msi-routes.ts): the machine's shared route table and this device's GSIs, each with an
   * eventfd KVM_IRQFD binds to it. Absent for the e1000 (INTx only).
   */
  msi?: { routes: SharedArrayBuffer; pool: IrqfdGsi[] };
}

/** A NIC's link to a switch's shm port: the channel's checked fds, the socket's path and the connection. */
export type ShmLink = ShmChannelFds & { socket: string; conn: number };

export type PciDeviceSpec =
  | {
      kind: "virtio-blk";
      name: string;
      slot: number;
      fd: number;
      size: number;
      readOnly: boolean;
      state: VirtioPciState;
      /** With `--disk ...,iothread`. */
      dataPlane?: DataPlaneSpec;
    }
  | { kind: "virtio-rng"; name: string; slot: number; state: VirtioPciState }
  /** The terminal: output to outputFd (null: discarded), input from the main thread (Machine's stdin). */
  | { kind: "virtio-console"; name: string; slot: number; state: VirtioPciState; outputFd: number | null }
  | {
      kind: "virtio-net";
      name: string;
      slot: number;
      state: VirtioPciState;
      mac: number[];
      /** The TAP; with `shm` a stand-in naming the socket (fd -1), the frames going through the channel. */
      tap: Tap;
      /** `--net shm=`: the channel's fds (mapped by the data-plane thread) and the connection to the switch. */
      shm?: ShmLink;
      dataPlane: DataPlaneSpec;
    }
  /** A virtio device served by a vhost-user back-end (src/vhost-user/frontend-device.ts). */
  | VhostUserSpec
  /** A virtio-net card whose rings the host kernel serves (src/vhost-net/device.ts). */
  | VhostNetSpec
  /** Intel 82540EM: register accesses on the vCPU threads, receive and timers on its data-plane thread. */
  | {
      kind: "e1000";
      name: string;
      slot: number;
      state: E1000PciState;
      tap: Tap;
      /** kicks is empty: the e1000 has no doorbell to spare its exit (TDT writes are served in the exit). */
      dataPlane: DataPlaneSpec;
    };

/**
 * A virtio device served by a vhost-user back-end (src/vhost-user/frontend-device.ts): vireo keeps the transport
 * and the configuration space; the device's vhost-user thread (frontend-thread.ts) owns the connection.
 */
export type VhostUserSpec = {
  name: string;
  slot: number;
  state: VirtioPciState;
  socket: string;
  /** The connection the main thread opened and negotiated on; the vhost-user thread owns it from then on. */
  connFd: number;
  /** The back-end's GET_FEATURES and the protocol features in use on connFd. */
  backendFeatures: bigint;
  protocolFeatures: bigint;
  /** What the guest is offered (from the back-end's features and vireo's own). */
  offered: OfferedFeatures;
  /** KVM ioeventfds on the queues' notify addresses, handed to the back-end as kick fds. */
  kicks: number[];
  /**
   * Per MSI-X vector: a GSI whose route is the vector's message and an eventfd KVM_IRQFD binds to it while
   * the vector is deliverable (msix onRouteChange): the back-end's call fd for queues on that vector.
   */
  irq: { routes: SharedArrayBuffer; pool: IrqfdGsi[]; assigned: SharedArrayBuffer };
  /** Per queue: a call fd the vhost-user thread turns into INTx (MSI-X disabled). */
  relays: number[];
  wake: number;
  block: SharedArrayBuffer;
  ram: { fd: number; size: number; hostAddress: bigint };
  /**
   * The dirty log every vhost-user device's back-end marks during a live migration (src/vhost-user/dirty-log.ts):
   * one memfd for the machine, `size` bytes covering guest RAM.
   */
  dirtyLog: { fd: number; size: number };
} & (
  | { kind: "vhost-user-net"; mac: number[] }
  /** config: the back-end's configuration space (GET_CONFIG at connect time); numQueues request queues. */
  | { kind: "vhost-user-blk"; config: number[]; numQueues: number; readOnly: boolean }
);

export function isVhostUser(spec: PciDeviceSpec): spec is VhostUserSpec {
  return spec.kind === "vhost-user-net" || spec.kind === "vhost-user-blk";
}

/** Devices whose queues or receive side are served by a data-plane thread of their own. */
export type DataPlaneDeviceSpec =
  | Extract<PciDeviceSpec, { kind: "virtio-net" | "e1000" }>
  | (Extract<PciDeviceSpec, { kind: "virtio-blk" }> & { dataPlane: DataPlaneSpec });

export function hasDataPlane(spec: PciDeviceSpec): spec is DataPlaneDeviceSpec {
  return "dataPlane" in spec && spec.dataPlane !== undefined;
}

export interface PciManifest {
  busState: SharedArrayBuffer;
  devices: PciDeviceSpec[];
}

/** The GSI of INTA# of slot n (every vireo PCI function uses pin A). */
export function intxGsi(slot: number): number {
  return pciIntxGsi(slot, 0);
}

const MAC_RE = /^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$/;

/** `--net tap=NAME[,mac=..][,model=virtio|e1000]`, `--net vhost-user=SOCKET[,mac=..]` or `--net shm=SOCKET[,mac=..]` */
export function parseNet(spec: string): NetConfig {
  let tap: string | undefined;
  let vhost = false;
  let vhostUser: string | undefined;
  let shm: string | undefined;
  let modelGiven = false;
  let mac: Uint8Array | undefined;
  let model: NetConfig["model"] = "virtio";
  for (const part of spec.split(",")) {
    const eq = part.indexOf("=");
    const key = eq < 0 ? part : part.slice(0, eq);
    const value = eq < 0 ? "" : part.slice(eq + 1);
    if (key === "tap") {
      if (!value) throw new ConfigError(`--net ${spec}: tap= needs an interface name`);
      checkTapName(value);
      tap = value;
    } else if (key === "vhost-user") {
      vhostUser = netSocketPath(spec, key, value);
    } else if (key === "shm") {
      shm = netSocketPath(spec, key, value);
    } else if (key === "vhost") {
      if (value !== "on" && value !== "off")
        throw new ConfigError(`--net ${spec}: vhost=${value}: want vhost=on or vhost=off`);
      vhost = value === "on";
    } else if (key === "mac") {
      if (!MAC_RE.test(value))
        throw new ConfigError(`--net ${spec}: bad MAC '${value}' (want xx:xx:xx:xx:xx:xx)`);
      mac = Uint8Array.from(value.split(":").map((h) => Number.parseInt(h, 16)));
      if (((mac[0] as number) & 1) !== 0)
        throw new ConfigError(
          `--net ${spec}: MAC ${value} is a multicast address; a NIC needs a unicast one`,
        );
    } else if (key === "model") {
      if (value !== "virtio" && value !== "e1000")
        throw new ConfigError(`--net ${spec}: unknown model '${value}' (known: virtio, e1000)`);
      model = value;
      modelGiven = true;
    } else {
      throw new ConfigError(
        `--net ${spec}: unknown option '${key}' (known: tap=NAME, vhost=on|off, vhost-user=SOCKET, shm=SOCKET, mac=MAC, model=virtio|e1000)`,
      );
    }
  }
  if (shm !== undefined) {
    if (tap !== undefined || vhostUser !== undefined)
      throw new ConfigError(`--net ${spec}: give one of tap=NAME, vhost-user=SOCKET or shm=SOCKET`);
    if (vhost) throw new ConfigError(`--net ${spec}: vhost=on goes with tap=NAME, not shm=`);
    // The e1000 transmits from the vCPU threads (one ring producer each); the ring has a single producer.
    if (modelGiven && model !== "virtio")
      throw new ConfigError(`--net ${spec}: shm= serves virtio-net only (not model=${model})`);
    return { tap: "", shm, mac, model: "virtio" };
  }
  if (vhostUser !== undefined) {
    if (vhost) throw new ConfigError(`--net ${spec}: vhost=on goes with tap=NAME, not vhost-user=`);
    if (tap !== undefined)
      throw new ConfigError(`--net ${spec}: give either tap=NAME or vhost-user=SOCKET, not both`);
    if (modelGiven && model !== "virtio")
      throw new ConfigError(
        `--net ${spec}: a vhost-user back-end serves virtio-net only (not model=${model})`,
      );
    return { tap: "", vhostUser, mac, model: "virtio" };
  }
  if (tap === undefined)
    throw new ConfigError(
      `--net ${spec}: which backend? (--net tap=NAME, --net vhost-user=SOCKET or --net shm=SOCKET)`,
    );
  if (vhost && model !== "virtio")
    throw new ConfigError(`--net ${spec}: vhost=on serves virtio-net only (not model=${model})`);
  return vhost ? { tap, mac, model, vhost } : { tap, mac, model };
}

/** The socket path of `--net KEY=PATH`: there, and short enough for a sockaddr_un (107 bytes). */
function netSocketPath(spec: string, key: string, value: string): string {
  if (!value) throw new ConfigError(`--net ${spec}: ${key}= needs a socket path`);
  if (Buffer.byteLength(value) > 107)
    throw new ConfigError(`--net ${spec}: socket path is ${Buffer.byteLength(value)} bytes, at most 107`);
  return value;
}

/** A locally administered unicast MAC for NIC n of this machine: 52:54:00 is taken by QEMU, vireo uses 02:76:69. */
export function defaultMac(n: number): Uint8Array {
  const r = new Uint8Array(2);
  crypto.getRandomValues(r);
  return Uint8Array.from([0x02, 0x76, 0x69, r[0] as number, r[1] as number, n & 0xff]);
}

/** `--disk PATH[,readonly][,direct][,iothread]` or `--disk vhost-user=SOCKET[,readonly]` */
export function parseDisk(spec: string): DiskConfig {
  const [path, ...flags] = spec.split(",");
  if (!path) throw new ConfigError(`--disk needs a file path, got '${spec}'`);
  if (path.startsWith("vhost-user=")) {
    const socket = path.slice("vhost-user=".length);
    if (!socket) throw new ConfigError(`--disk ${spec}: vhost-user= needs a socket path`);
    if (Buffer.byteLength(socket) > 107)
      throw new ConfigError(`--disk ${spec}: socket path is ${Buffer.byteLength(socket)} bytes, at most 107`);
    const disk: DiskConfig = { path: socket, vhostUser: true, readOnly: false, direct: false };
    for (const f of flags) {
      if (f === "readonly" || f === "ro") disk.readOnly = true;
      else
        throw new ConfigError(
          `--disk ${spec}: unknown option '${f}' (known with vhost-user=: readonly; the back-end does the I/O)`,
        );
    }
    return disk;
  }
  const disk: DiskConfig = { path, readOnly: false, direct: false };
  for (const f of flags) {
    if (f === "readonly" || f === "ro") disk.readOnly = true;
    else if (f === "direct") disk.direct = true;
    else if (f === "iothread") disk.iothread = true;
    else throw new ConfigError(`unknown --disk option '${f}' (known: readonly, direct, iothread)`);
  }
  return disk;
}

export interface PciBuildContext {
  mem: GuestMemory;
  vmFd: number;
  metrics?: MetricsSink;
  pio: Bus;
  mmio: Bus;
  signalMsi(addressLo: number, addressHi: number, data: number): void;
  log?: (message: string) => void;
  /** How this thread comes back to device work left for later (a spent work budget). */
  defer?: Defer;
}

export interface BuiltPci {
  bus: PciBus;
  /** One per manifest device, in manifest order. */
  functions: Array<VirtioPciTransport | E1000Pci>;
}

/** A backend for a model whose data plane runs elsewhere: it is never asked to move frames. */
function detachedBackend(tap: Tap): VirtioNetBackend {
  return {
    name: tap.name,
    vnetHdr: tap.vnetHdr,
    send: () => false,
    attach() {},
    rxReady() {},
    close() {},
  };
}

/**
 * The device model for a thread. "vcpu": the register side (a data-plane device's queues are only kicked from
 * here); "io": the data-plane thread's model, which does the work.
 */
function modelFor(
  spec: Exclude<PciDeviceSpec, { kind: "e1000" }>,
  role: "vcpu" | "io",
  metrics?: MetricsSink,
  log?: (message: string) => void,
): VirtioDeviceModel {
  switch (spec.kind) {
    case "virtio-blk": {
      const backend = new FileBlockBackend(spec.fd, { readOnly: spec.readOnly, size: spec.size });
      const blk = new VirtioBlk({ backend, name: spec.name, serial: `vireo-${spec.name}` });
      const dp = spec.dataPlane;
      return dp && role === "vcpu" ? new RemoteQueues(blk, dp.kicks, dp.wake, dp.block) : blk;
    }
    case "virtio-rng":
      return new VirtioRng({ name: spec.name });
    case "virtio-console": {
      const fd = spec.outputFd;
      return new VirtioConsole({
        name: spec.name,
        output: fd === null ? () => {} : (bytes) => writeAll(fd, bytes),
      });
    }
    case "virtio-net": {
      const mac = Uint8Array.from(spec.mac);
      if (role === "io") {
        const backend = spec.shm
          ? new ShmNetBackend(mapShmChannel(spec.shm, `--net shm=${spec.shm.socket}`), {
              name: `shm:${spec.shm.socket}`,
              metrics,
              metricsName: spec.name,
              log,
            })
          : new TapBackend(spec.tap, { metrics, metricsName: spec.name });
        return new VirtioNet({ backend, mac, name: spec.name });
      }
      const dp = spec.dataPlane;
      const inner = new VirtioNet({ backend: detachedBackend(spec.tap), mac, name: spec.name });
      return new RemoteQueues(inner, dp.kicks, dp.wake, dp.block);
    }
    case "vhost-user-net":
    case "vhost-user-blk":
      return vhostUserModel(spec, role === "io" ? "thread" : "vcpu");
    case "vhost-net":
      return vhostNetModel(spec, role === "io" ? "thread" : "vcpu");
  }
}

export function vhostUserModel(spec: VhostUserSpec, role: "vcpu" | "thread"): VhostUserDevice {
  return new VhostUserDevice({
    name: spec.name,
    face:
      spec.kind === "vhost-user-net"
        ? netFace(spec.name, Uint8Array.from(spec.mac))
        : blkFace(spec.config, spec.numQueues),
    offered: spec.offered,
    kicks: spec.kicks,
    wake: spec.wake,
    block: spec.block,
    role,
  });
}

/**
 * A vhost-user device's interrupts are the back-end's writes to irqfds: each MSI-X vector's GSI follows the
 * vector's route (msix.ts onRouteChange, which runs in whichever thread changed it, under the function's lock),
 * and its irqfd is bound only while the vector is deliverable. While it is masked the back-end's signals wait in
 * the eventfd, and KVM delivers them when the irqfd is bound again on unmask (KVM_IRQFD checks for a pending
 * event on assignment), as a masked MSI-X vector's pending bit would.
 */
function vhostUserRoutes(
  spec: Pick<VhostUserSpec, "name" | "irq">,
  vmFd: number,
  log: (message: string) => void,
): (vector: number, route: MsixRoute | null) => void {
  const vm = Vm.fromFd(vmFd);
  // Made on first use: the main thread's firmware build runs before the GSIs are allocated.
  let table: MsiRouteTable | null = null;
  let assigned: Int32Array | null = null;
  return (vector, route) => {
    const g = spec.irq.pool[vector];
    if (g === undefined) return;
    table ??= new MsiRouteTable(spec.irq.routes, vm);
    assigned ??= new Int32Array(spec.irq.assigned);
    try {
      if (route !== null) {
        table.set(g.gsi, route.addressLo, route.addressHi, route.data);
        if (Atomics.load(assigned, vector) === 0) {
          vm.irqfd(g.fd, g.gsi);
          Atomics.store(assigned, vector, 1);
        }
      } else if (Atomics.load(assigned, vector) === 1) {
        vm.irqfd(g.fd, g.gsi, { deassign: true });
        Atomics.store(assigned, vector, 0);
      }
    } catch (e) {
      log(`${spec.name}: MSI-X vector ${vector}: irqfd: ${(e as Error).message}`);
    }
  };
}

export function transportFor(
  spec: Exclude<PciDeviceSpec, { kind: "e1000" }>,
  ctx: PciBuildContext,
  init: boolean,
  role: "vcpu" | "io" = "vcpu",
): VirtioPciTransport {
  const model = modelFor(spec, role, ctx.metrics, ctx.log);
  const transport = new VirtioPciTransport({
    state: spec.state,
    init,
    model,
    mem: ctx.mem,
    msiSink: { signal: ctx.signalMsi },
    intx: kvmIrqLine(ctx.vmFd, intxGsi(spec.slot), ctx.metrics),
    name: spec.name,
    metrics: ctx.metrics,
    log: ctx.log,
    defer: ctx.defer,
  });
  if (isVhostUser(spec) || spec.kind === "vhost-net") {
    const log = ctx.log ?? ((m: string) => process.stderr.write(`vireo: ${m}\n`));
    transport.msix.onRouteChange = vhostUserRoutes(spec, ctx.vmFd, log);
  }
  return transport;
}

/**
 * The e1000 as a thread sees it. On a vCPU thread (no `backend` given) frames it transmits go straight to the TAP
 * fd, while receiving and timers belong to the data-plane thread, which this thread wakes when the guest posts
 * receive buffers or arms a timer.
 */
export function e1000For(
  spec: Extract<PciDeviceSpec, { kind: "e1000" }>,
  ctx: PciBuildContext,
  init: boolean,
  backend?: NetBackend,
): E1000Pci {
  const wake = () => signalEventFd(spec.dataPlane.wake);
  let own = backend;
  if (own === undefined) {
    const tx = new TapBackend(spec.tap, { metrics: ctx.metrics, metricsName: spec.name });
    own = { name: spec.tap.name, send: (f) => tx.send(f), attach() {}, rxReady: wake, close() {} };
  }
  return new E1000Pci({
    state: spec.state,
    init,
    mem: ctx.mem,
    backend: own,
    intx: kvmIrqLine(ctx.vmFd, intxGsi(spec.slot), ctx.metrics),
    name: spec.name,
    metrics: ctx.metrics,
    log: ctx.log,
    onDeadlineChanged: backend === undefined ? wake : undefined,
  });
}

/** A thread's view of the machine's PCI devices, registered on its buses. */
export function buildPci(manifest: PciManifest, ctx: PciBuildContext, init = false): BuiltPci {
  const bus = new PciBus({ state: manifest.busState, init });
  new PciConfigIo(bus).register(ctx.pio);
  const functions = manifest.devices.map((spec) => {
    const f = spec.kind === "e1000" ? e1000For(spec, ctx, init) : transportFor(spec, ctx, init);
    bus.add(f.pci, spec.slot);
    connectBars(f.pci, { pio: ctx.pio, mmio: ctx.mmio });
    return f;
  });
  return { bus, functions };
}

/**
 * Main thread, before the vCPUs start: open the disks, create the shared states, and assign BARs as firmware
 * would (64-bit BARs below 4 GiB, decode enabled, interrupt lines set).
 */
export function preparePci(
  devicesWanted: {
    disks: readonly DiskConfig[];
    rng: boolean;
    nets?: readonly NetConfig[];
    /** A virtio-console whose output goes to this fd (null: discarded). */
    console?: { outputFd: number | null };
    /** Guest RAM's memfd and mapping (a vhost-user back-end maps it: SET_MEM_TABLE). */
    ram?: { fd: number; size: number; hostAddress: bigint };
  },
  ctx: PciBuildContext,
): { manifest: PciManifest; firmware: BuiltPci; close(): void } {
  const fds: number[] = [];
  const closeFds = () => {
    for (const fd of fds.splice(0)) native().close(fd);
  };
  const disks = devicesWanted.disks;
  const devices: PciDeviceSpec[] = [];
  const eventFd = () => {
    const fd = native().eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    fds.push(fd);
    return fd;
  };
  const backends: FileBlockBackend[] = [];
  const vhostUserConns: Array<{ fd: number; block: SharedArrayBuffer }> = [];
  /** The machine's one dirty log for its vhost-user back-ends, made with the first of them. */
  let dirtyLog: { fd: number; size: number } | null = null;
  const vhostUserLog = (ram: Ram | undefined) => {
    if (dirtyLog === null && ram !== undefined) {
      // Whole 8-byte words, so the reader may take it a word at a time.
      const size = Math.ceil(logBytesFor(ram.size) / 8) * 8;
      const fd = native().memfdCreate("vireo-dirty-log", MFD_CLOEXEC);
      fds.push(fd);
      ftruncateSync(fd, size);
      dirtyLog = { fd, size };
    }
    return dirtyLog;
  };
  const closeConns = () => {
    for (const c of vhostUserConns.splice(0)) {
      // The vhost-user thread takes the connection over when it starts; until then it is ours to close.
      if (Atomics.compareExchange(new Int32Array(c.block), FRONTEND_WORDS.connTaken, 0, 1) === 0)
        native().close(c.fd);
    }
  };
  const failed = (e: unknown): never => {
    for (const b of backends) b.close();
    closeConns();
    closeFds();
    throw e;
  };
  disks.forEach((disk, i) => {
    if (disk.vhostUser) {
      const at = { name: `blk${i}`, slot: 1 + devices.length, ram: devicesWanted.ram };
      try {
        devices.push(
          vhostUserSpec(
            `--disk vhost-user=${disk.path}`,
            disk.path,
            at,
            BLK_PROTOCOL_FEATURES,
            (conn, n) => vhostUserBlkPart(disk, conn, n),
            eventFd,
            vhostUserConns,
            vhostUserLog(at.ram),
          ),
        );
      } catch (e) {
        failed(e);
      }
      return;
    }
    let backend: FileBlockBackend;
    try {
      backend = FileBlockBackend.open(disk.path, { readOnly: disk.readOnly, direct: disk.direct });
    } catch (e) {
      failed(new ConfigError(`--disk ${disk.path}: ${(e as Error).message}`));
      return;
    }
    backends.push(backend);
    const model = new VirtioBlk({ backend, name: `blk${i}` });
    devices.push({
      kind: "virtio-blk",
      name: `blk${i}`,
      slot: 1 + i,
      fd: backend.descriptor,
      size: backend.size,
      readOnly: disk.readOnly,
      state: VirtioPciTransport.createState(model),
      dataPlane: disk.iothread
        ? {
            kicks: Array.from({ length: model.numQueues }, eventFd),
            wake: eventFd(),
            block: createDataPlaneBlock(),
          }
        : undefined,
    });
  });
  try {
    (devicesWanted.nets ?? []).forEach((net, i) => {
      if (net.vhostUser !== undefined) {
        const at = { name: `net${i}`, slot: 1 + devices.length, ram: devicesWanted.ram };
        devices.push(
          vhostUserSpec(
            `--net vhost-user=${net.vhostUser}`,
            net.vhostUser,
            at,
            DEFAULT_PROTOCOL_FEATURES |
              (1n << BigInt(PROTOCOL_F.LOG_SHMFD)) |
              (1n << BigInt(PROTOCOL_F.RARP)),
            (_conn, n) => vhostUserNetPart(net, i, n),
            eventFd,
            vhostUserConns,
            vhostUserLog(at.ram),
          ),
        );
        return;
      }
      if (net.vhost) {
        const at = { name: `net${i}`, slot: 1 + devices.length, ram: devicesWanted.ram };
        devices.push(prepareVhostNet({ ...at, tap: net.tap, mac: net.mac ?? defaultMac(i) }, eventFd, fds));
        return;
      }
      let tap: Tap;
      let shm: ShmLink | undefined;
      if (net.shm !== undefined) {
        // Frames through a switch's shm port (virtio only: parseNet); the fds are mapped by the data-plane thread.
        let c: ReturnType<typeof connectShmChannelFds>;
        try {
          c = connectShmChannelFds(net.shm, `--net shm=${net.shm}`);
        } catch (e) {
          throw new ConfigError((e as Error).message);
        }
        fds.push(c.conn, c.fds.memFd, c.fds.kickServer, c.fds.kickPeer);
        shm = { ...c.fds, socket: net.shm, conn: c.conn };
        tap = { fd: -1, name: `shm:${net.shm}`, vnetHdr: false };
      } else {
        // virtio-net passes virtio_net_hdr through to the TAP (offloads); the e1000 does its own offloads.
        tap = openTap(net.tap, { vnetHdr: net.model === "virtio" });
        fds.push(tap.fd);
      }
      const name = `net${i}`;
      const mac = net.mac ?? defaultMac(i);
      if (net.model === "e1000") {
        devices.push({
          kind: "e1000",
          name,
          slot: 1 + devices.length,
          state: E1000Pci.createState({ mac }),
          tap,
          dataPlane: { kicks: [], wake: eventFd(), block: createDataPlaneBlock() },
        });
        return;
      }
      devices.push({
        kind: "virtio-net",
        name,
        slot: 1 + devices.length,
        state: VirtioPciTransport.createState({ numQueues: 2, stateBytes: 8 }),
        mac: Array.from(mac),
        tap,
        ...(shm ? { shm } : {}),
        dataPlane: { kicks: [eventFd(), eventFd()], wake: eventFd(), block: createDataPlaneBlock() },
      });
    });
  } catch (e) {
    failed(e);
  }
  if (devicesWanted.console) {
    const model = new VirtioConsole({ name: "console0", output: () => {} });
    devices.push({
      kind: "virtio-console",
      name: "console0",
      slot: 1 + devices.length,
      state: VirtioPciTransport.createState(model),
      outputFd: devicesWanted.console.outputFd,
    });
  }
  if (devicesWanted.rng) {
    const model = new VirtioRng({ name: "rng0" });
    devices.push({
      kind: "virtio-rng",
      name: "rng0",
      slot: 1 + devices.length,
      state: VirtioPciTransport.createState(model),
    });
  }
  const manifest: PciManifest = { busState: PciBus.createState(), devices };
  const firmware = buildPci(manifest, ctx, true);
  assignBars(firmware.bus, {
    mmio64Placement: "low",
    enableDecode: true,
    interruptLine: (device) => intxGsi(device),
  });
  // Doorbells of data-plane devices never exit to vireo: KVM signals the queue's eventfd itself (KVM_IOEVENTFD).
  // If the guest moves the BAR later, its notifications exit and the vCPU thread signals the same eventfd.
  // Their interrupts go out through irqfds: one GSI per MSI-X vector, routed when the device first sends a message.
  const vm = Vm.fromFd(ctx.vmFd);
  let nextGsi = FIRST_MSI_GSI;
  const vectors = manifest.devices.reduce((n, spec, i) => {
    const f = firmware.functions[i];
    const irqfds = hasDataPlane(spec) || isVhostUser(spec) || spec.kind === "vhost-net";
    return n + (irqfds && f instanceof VirtioPciTransport ? f.msix.vectors : 0);
  }, 0);
  const routes = MsiRouteTable.createState(Math.max(1, vectors));
  manifest.devices.forEach((spec, i) => {
    const f = firmware.functions[i];
    if ((isVhostUser(spec) || spec.kind === "vhost-net") && f instanceof VirtioPciTransport) {
      // GSIs and eventfds per vector; KVM_IRQFD binds them once the guest makes the vector deliverable.
      spec.irq.routes = routes;
      spec.irq.assigned = new SharedArrayBuffer(4 * f.msix.vectors);
      for (let v = 0; v < f.msix.vectors; v++) spec.irq.pool.push({ gsi: nextGsi++, fd: eventFd() });
      for (const n of f.notifyAddresses()) {
        const fd = spec.kicks[n.queue];
        if (n.address !== null && fd !== undefined) vm.ioeventfd({ addr: n.address, len: 2, fd, pio: false });
      }
      return;
    }
    if (!hasDataPlane(spec) || !(f instanceof VirtioPciTransport)) return;
    const pool: IrqfdGsi[] = [];
    for (let v = 0; v < f.msix.vectors; v++) {
      const g = { gsi: nextGsi++, fd: eventFd() };
      vm.irqfd(g.fd, g.gsi);
      pool.push(g);
    }
    spec.dataPlane.msi = { routes, pool };
    for (const n of f.notifyAddresses()) {
      const fd = spec.dataPlane.kicks[n.queue];
      if (n.address !== null && fd !== undefined) vm.ioeventfd({ addr: n.address, len: 2, fd, pio: false });
    }
  });
  return {
    manifest,
    firmware,
    close: () => {
      for (const b of backends) b.close();
      closeConns();
      closeFds();
    },
  };
}

type Ram = { fd: number; size: number; hostAddress: bigint };

/** What a vhost-user device kind adds to the spec, worked out on the negotiated connection. */
interface VhostUserPart {
  part:
    | { kind: "vhost-user-net"; mac: number[] }
    | {
        kind: "vhost-user-blk";
        config: number[];
        numQueues: number;
        readOnly: boolean;
      };
  offered: OfferedFeatures;
  numQueues: number;
  stateBytes: number;
}

/**
 * A vhost-user device: connects to the back-end now, so a missing one is an error before the guest starts, and
 * the guest is offered what this back-end has (GET_FEATURES, and what `describe` asks it).
 */
function vhostUserSpec(
  what: string,
  path: string,
  at: { name: string; slot: number; ram: Ram | undefined },
  wanted: bigint,
  describe: (conn: VhostUserFrontend, n: NegotiatedBackend) => VhostUserPart,
  eventFd: () => number,
  conns: Array<{ fd: number; block: SharedArrayBuffer }>,
  dirtyLog: { fd: number; size: number } | null,
): VhostUserSpec {
  const ram = at.ram;
  if (ram === undefined || dirtyLog === null)
    throw new ConfigError(`${what}: guest RAM is not shareable here`);
  let conn: VhostUserFrontend;
  try {
    conn = VhostUserFrontend.connect(path);
  } catch (e) {
    throw new ConfigError(`${what}: ${(e as Error).message}`);
  }
  let negotiated: NegotiatedBackend;
  let d: VhostUserPart;
  try {
    negotiated = conn.negotiate(wanted);
    d = describe(conn, negotiated);
  } catch (e) {
    conn.close();
    throw new ConfigError(`${what}: ${(e as Error).message}`);
  }
  const block = createFrontendBlock();
  conns.push({ fd: conn.fd, block });
  const perQueue = () => Array.from({ length: d.numQueues }, eventFd);
  return {
    ...d.part,
    name: at.name,
    slot: at.slot,
    state: VirtioPciTransport.createState({ numQueues: d.numQueues, stateBytes: d.stateBytes }),
    socket: path,
    connFd: conn.fd,
    backendFeatures: negotiated.features,
    protocolFeatures: negotiated.protocolFeatures,
    offered: d.offered,
    kicks: perQueue(),
    // Filled in once the MSI-X table size is known (after the transport is built).
    irq: { routes: new SharedArrayBuffer(0), pool: [], assigned: new SharedArrayBuffer(0) },
    relays: perQueue(),
    wake: eventFd(),
    block,
    ram,
    dirtyLog,
  };
}

/** `--net vhost-user=SOCKET`: the MAC is vireo's (its configuration space). */
function vhostUserNetPart(net: NetConfig, i: number, n: NegotiatedBackend): VhostUserPart {
  const mac = net.mac ?? defaultMac(i);
  return {
    part: { kind: "vhost-user-net", mac: Array.from(mac) },
    offered: guestFeatures(n.features),
    numQueues: 2,
    stateBytes: 8,
  };
}

/**
 * `--disk vhost-user=SOCKET[,readonly]`: the configuration space is the back-end's (GET_CONFIG, which vireo needs:
 * only the back-end knows the capacity), and so is the number of request queues.
 */
function vhostUserBlkPart(disk: DiskConfig, conn: VhostUserFrontend, n: NegotiatedBackend): VhostUserPart {
  if (!conn.hasProtocol(PROTOCOL_F.CONFIG)) {
    throw new VhostUserFrontendError(
      "VHOST_USER_INCOMPATIBLE",
      `${disk.path}: the back-end does not offer VHOST_USER_PROTOCOL_F_CONFIG (vireo reads the disk's capacity with GET_CONFIG)`,
    );
  }
  const config = conn.getConfig(BLK_CONFIG_BYTES);
  const queues = blkQueues(config, n.features);
  if (typeof queues === "string") {
    throw new VhostUserFrontendError("VHOST_USER_BAD_REPLY", `${disk.path}: GET_CONFIG: ${queues}`);
  }
  return {
    part: { kind: "vhost-user-blk", config: Array.from(config), numQueues: queues, readOnly: disk.readOnly },
    offered: blkGuestFeatures(n.features, disk.readOnly),
    numQueues: queues,
    stateBytes: 0,
  };
}
