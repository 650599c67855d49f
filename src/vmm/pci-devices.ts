/**
 * PCI devices of a machine, as plain data every thread builds from. The main thread acts as firmware: it opens
 * the backends, creates the shared states, assigns the BARs (so a guest without a PCI allocator of its own, like
 * the micro guest, finds its devices already placed), and hands the manifest to the vCPU workers. Each worker
 * builds its own PciBus and transports over the same shared state and re-syncs BAR windows cheaply before it
 * dispatches an exit (PciBus.syncBars).
 */
import { FileBlockBackend } from "../block/file.ts";
import type { Bus } from "../bus/bus.ts";
import { assignBars } from "../devices/pci/bar-allocator.ts";
import { connectBars } from "../devices/pci/bars.ts";
import { PciBus, PciConfigIo } from "../devices/pci/host-bridge.ts";
import { VirtioBlk } from "../devices/virtio/blk.ts";
import type { VirtioDeviceModel } from "../devices/virtio/device.ts";
import { type VirtioPciState, VirtioPciTransport } from "../devices/virtio/pci-transport.ts";
import { VirtioRng } from "../devices/virtio/rng.ts";
import { ConfigError } from "../errors.ts";
import type { GuestMemory } from "../memory/guest-memory.ts";
import type { MetricsSink } from "../metrics/registry.ts";
import { kvmIrqLine } from "./irq.ts";

export interface DiskConfig {
  path: string;
  readOnly: boolean;
  direct: boolean;
}

export type PciDeviceSpec =
  | {
      kind: "virtio-blk";
      name: string;
      slot: number;
      fd: number;
      size: number;
      readOnly: boolean;
      state: VirtioPciState;
    }
  | { kind: "virtio-rng"; name: string; slot: number; state: VirtioPciState };

export interface PciManifest {
  busState: SharedArrayBuffer;
  devices: PciDeviceSpec[];
}

/** PCI INTx pin A of slot n: IOAPIC inputs 16-19, swizzled by slot as on a PC's bus 0. */
export function intxGsi(slot: number): number {
  return 16 + (slot % 4);
}

/** `--disk PATH[,readonly][,direct]` */
export function parseDisk(spec: string): DiskConfig {
  const [path, ...flags] = spec.split(",");
  if (!path) throw new ConfigError(`--disk needs a file path, got '${spec}'`);
  const disk: DiskConfig = { path, readOnly: false, direct: false };
  for (const f of flags) {
    if (f === "readonly" || f === "ro") disk.readOnly = true;
    else if (f === "direct") disk.direct = true;
    else throw new ConfigError(`unknown --disk option '${f}' (known: readonly, direct)`);
  }
  return disk;
}

interface PciBuildContext {
  mem: GuestMemory;
  vmFd: number;
  metrics?: MetricsSink;
  pio: Bus;
  mmio: Bus;
  signalMsi(addressLo: number, addressHi: number, data: number): void;
  log?: (message: string) => void;
}

export interface BuiltPci {
  bus: PciBus;
  transports: VirtioPciTransport[];
}

function modelFor(spec: PciDeviceSpec): VirtioDeviceModel {
  switch (spec.kind) {
    case "virtio-blk": {
      const backend = new FileBlockBackend(spec.fd, { readOnly: spec.readOnly, size: spec.size });
      return new VirtioBlk({ backend, name: spec.name, serial: `vireo-${spec.name}` });
    }
    case "virtio-rng":
      return new VirtioRng({ name: spec.name });
  }
}

function transportFor(spec: PciDeviceSpec, ctx: PciBuildContext, init: boolean): VirtioPciTransport {
  const model = modelFor(spec);
  return new VirtioPciTransport({
    state: spec.state,
    init,
    model,
    mem: ctx.mem,
    msiSink: { signal: ctx.signalMsi },
    intx: kvmIrqLine(ctx.vmFd, intxGsi(spec.slot), ctx.metrics),
    name: spec.name,
    metrics: ctx.metrics,
    log: ctx.log,
  });
}

/** A thread's view of the machine's PCI devices, registered on its buses. */
export function buildPci(manifest: PciManifest, ctx: PciBuildContext, init = false): BuiltPci {
  const bus = new PciBus({ state: manifest.busState, init });
  new PciConfigIo(bus).register(ctx.pio);
  const transports = manifest.devices.map((spec) => {
    const t = transportFor(spec, ctx, init);
    bus.add(t.pci, spec.slot);
    connectBars(t.pci, { pio: ctx.pio, mmio: ctx.mmio });
    return t;
  });
  return { bus, transports };
}

/**
 * Main thread, before the vCPUs start: open the disks, create the shared states, and assign BARs as firmware
 * would (64-bit BARs below 4 GiB, decode enabled, interrupt lines set).
 */
export function preparePci(
  devicesWanted: { disks: readonly DiskConfig[]; rng: boolean },
  ctx: PciBuildContext,
): { manifest: PciManifest; close(): void } {
  const disks = devicesWanted.disks;
  const devices: PciDeviceSpec[] = [];
  const backends: FileBlockBackend[] = [];
  disks.forEach((disk, i) => {
    let backend: FileBlockBackend;
    try {
      backend = FileBlockBackend.open(disk.path, { readOnly: disk.readOnly, direct: disk.direct });
    } catch (e) {
      throw new ConfigError(`--disk ${disk.path}: ${(e as Error).message}`);
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
    });
  });
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
  return {
    manifest,
    close: () => {
      for (const b of backends) b.close();
    },
  };
}
