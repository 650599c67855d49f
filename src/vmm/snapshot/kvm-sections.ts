/**
 * The KVM half of a state file (docs/snapshot.md): a section per vCPU ("vcpu-N", kind kvm-vcpu-x86), one for the
 * in-kernel irqchip/PIT/clock ("kvm", kind kvm-vm-x86), the machine's configuration ("machine") and the memory
 * file's extents ("memory"). Reading goes through StateReader, so a wrong length, a missing field or an MSR this
 * vireo does not save is refused by name before KVM sees anything.
 */
import { SIZEOF } from "../../kvm/abi.ts";
import {
  MAX_SAVED_MSRS,
  type MsrEntry,
  SNAPSHOT_MSRS,
  type VcpuState,
  type VmState,
} from "../../kvm/state.ts";
import { MAX_MEM_MIB, MIN_MEM_MIB } from "../../memory/guest-ram.ts";
import { type DeviceState, DeviceStateError, StateReader } from "../../shared/device-state.ts";

export const VCPU_KIND = "kvm-vcpu-x86";
export const VCPU_VERSION = 1;
export const VM_KIND = "kvm-vm-x86";
export const VM_VERSION = 1;
export const MACHINE_KIND = "vireo-machine";
/**
 * 2: the PCI devices (disks, NICs, rng, console) the machine was built with. 3: disks and NICs a vhost-user
 * back-end serves (`vhostUser`). Version 2 is still read (it has none).
 */
export const MACHINE_VERSION = 3;
const MACHINE_VERSIONS_READ = [2, 3];
export const MEMORY_KIND = "guest-memory";
export const MEMORY_VERSION = 1;
export const PAGE = 4096;
/** KVM_MP_STATE_RUNNABLE .. KVM_MP_STATE_AP_RESET_HOLD (include/uapi/linux/kvm.h). */
const MAX_MP_STATE = 10;

const MSR_ENTRY = SIZEOF.kvm_msr_entry;

export function vcpuSection(s: VcpuState): DeviceState {
  const msrs = new Uint8Array(s.msrs.length * MSR_ENTRY);
  const view = new DataView(msrs.buffer);
  s.msrs.forEach((m, i) => {
    view.setUint32(i * MSR_ENTRY, m.index, true);
    view.setBigUint64(i * MSR_ENTRY + 8, m.value, true);
  });
  return {
    kind: VCPU_KIND,
    version: VCPU_VERSION,
    data: {
      regs: s.regs,
      sregs: s.sregs,
      fpu: s.fpu,
      xsave: s.xsave,
      xcrs: s.xcrs,
      msrCount: s.msrs.length,
      msrs,
      lapic: s.lapic,
      events: s.events,
      mpState: s.mpState,
    },
  };
}

export function readVcpuSection(name: string, ds: DeviceState): VcpuState {
  const r = StateReader.open(name, ds, VCPU_KIND, VCPU_VERSION);
  const count = r.int("msrCount", 0, MAX_SAVED_MSRS);
  const raw = r.bytes("msrs", count * MSR_ENTRY);
  const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const known = new Set(SNAPSHOT_MSRS.map(([i]) => i));
  const msrs: MsrEntry[] = [];
  for (let i = 0; i < count; i++) {
    const index = view.getUint32(i * MSR_ENTRY, true);
    if (!known.has(index)) r.fail("msrs", `MSR 0x${index.toString(16)}, which a snapshot does not carry`);
    if (view.getUint32(i * MSR_ENTRY + 4, true) !== 0) r.fail("msrs", "a reserved word that is not 0");
    if (msrs.some((m) => m.index === index)) r.fail("msrs", `MSR 0x${index.toString(16)} twice`);
    msrs.push({ index, value: view.getBigUint64(i * MSR_ENTRY + 8, true) });
  }
  return {
    regs: r.bytes("regs", SIZEOF.kvm_regs),
    sregs: r.bytes("sregs", SIZEOF.kvm_sregs),
    fpu: r.bytes("fpu", SIZEOF.kvm_fpu),
    xsave: r.isNull("xsave") ? null : r.bytes("xsave", SIZEOF.kvm_xsave),
    xcrs: r.isNull("xcrs") ? null : r.bytes("xcrs", SIZEOF.kvm_xcrs),
    msrs,
    lapic: r.bytes("lapic", SIZEOF.kvm_lapic_state),
    events: r.bytes("events", SIZEOF.kvm_vcpu_events),
    mpState: r.int("mpState", 0, MAX_MP_STATE),
  };
}

export function vmSection(s: VmState): DeviceState {
  return { kind: VM_KIND, version: VM_VERSION, data: { ...s } };
}

export function readVmSection(name: string, ds: DeviceState): VmState {
  const r = StateReader.open(name, ds, VM_KIND, VM_VERSION);
  const chip = (key: string, id: number) => {
    const b = r.bytes(key, SIZEOF.kvm_irqchip);
    const got = new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(0, true);
    if (got !== id) r.fail(key, `chip id ${got}, expected ${id}`);
    return b;
  };
  return {
    picMaster: chip("picMaster", 0),
    picSlave: chip("picSlave", 1),
    ioapic: chip("ioapic", 2),
    pit: r.bytes("pit", SIZEOF.kvm_pit_state2),
    clock: r.bytes("clock", SIZEOF.kvm_clock_data),
  };
}

/**
 * The PCI devices `vireo run --restore` builds again, with the options they had: disks by path (shared storage:
 * the restoring host must reach the same file, absolute paths), NICs by TAP name (a TAP reattaches by name) and
 * MAC (the guest's driver knows it). A vhost-user disk or NIC is its back-end's socket path (`path` with
 * `vhostUser` true, or `vhostUser`), where the restoring host's back-end listens.
 */
export interface SavedDevices {
  disks: Array<{ path: string; readOnly: boolean; direct: boolean; iothread: boolean; vhostUser: boolean }>;
  nets: Array<{ tap: string; mac: string; model: "virtio" | "e1000"; vhostUser: string }>;
  rng: boolean;
  console: "serial" | "virtio";
}

/** What `vireo run --restore` rebuilds: the machine the snapshot was taken of. */
export interface SavedMachine {
  memMiB: number;
  cpus: number;
  /** For `info` only: the restored guest's image is in the memory file, the kernel file is not read again. */
  kernel: string;
  cmdline: string;
  platform: "micro" | "pc";
  devices: SavedDevices;
}

/** At most this many disks and NICs each (the PCI bus has 31 slots for all of them). */
const MAX_SAVED_DEVICES = 31;
const MAC_RE = /^([0-9a-f]{2}:){5}[0-9a-f]{2}$/;

export function machineSection(m: SavedMachine): DeviceState {
  const d = m.devices;
  return {
    kind: MACHINE_KIND,
    version: MACHINE_VERSION,
    data: {
      ...m,
      devices: {
        disks: d.disks.map((x) => ({ ...x })),
        nets: d.nets.map((x) => ({ ...x })),
        rng: d.rng,
        console: d.console,
      },
    },
  };
}

/** A Unix socket's path: absolute, and what sun_path holds (108 bytes with the NUL). */
function checkSocketPath(r: StateReader, key: string, path: string): void {
  if (!path.startsWith("/") || path.includes("\0") || Buffer.byteLength(path) > 107)
    r.fail(key, "is not an absolute Unix socket path of at most 107 bytes");
}

function savedList(r: StateReader, raw: unknown, key: string): StateReader[] {
  if (!Array.isArray(raw) || raw.length > MAX_SAVED_DEVICES)
    r.fail(key, `is not a list of at most ${MAX_SAVED_DEVICES} devices`);
  return r.objects(key, raw.length);
}

export function readMachineSection(name: string, ds: DeviceState, maxCpus: number): SavedMachine {
  const version = MACHINE_VERSIONS_READ.includes(ds?.version) ? ds.version : MACHINE_VERSION;
  const r = StateReader.open(name, ds, MACHINE_KIND, version);
  const v3 = version >= 3;
  const platform = r.string("platform");
  if (platform !== "micro" && platform !== "pc") r.fail("platform", `"${platform}", not micro or pc`);
  const dr = r.object("devices");
  const rawDevices = ds.data.devices as Record<string, unknown>;
  const disks = savedList(dr, rawDevices.disks, "disks").map((d) => {
    const path = d.string("path");
    if (!path.startsWith("/") || path.includes("\0")) d.fail("path", "is not an absolute path");
    const vhostUser = v3 ? d.bool("vhostUser") : false;
    if (vhostUser) checkSocketPath(d, "path", path);
    return {
      path,
      readOnly: d.bool("readOnly"),
      direct: d.bool("direct"),
      iothread: d.bool("iothread"),
      vhostUser,
    };
  });
  const nets = savedList(dr, rawDevices.nets, "nets").map((n) => {
    const vhostUser = v3 ? n.string("vhostUser") : "";
    if (vhostUser !== "") checkSocketPath(n, "vhostUser", vhostUser);
    const tap = n.string("tap");
    if (vhostUser === "" && (tap.length < 1 || tap.length > 15 || !/^[A-Za-z0-9_.:-]+$/.test(tap)))
      n.fail("tap", "is not an interface name");
    if (vhostUser !== "" && tap !== "") n.fail("tap", "is set on a vhost-user NIC (it has no TAP)");
    const mac = n.string("mac");
    if (!MAC_RE.test(mac)) n.fail("mac", "is not a MAC address (xx:xx:xx:xx:xx:xx, lower case)");
    const model = n.string("model");
    if (model !== "virtio" && model !== "e1000") n.fail("model", `is "${model}", not virtio or e1000`);
    if (vhostUser !== "" && model !== "virtio")
      n.fail("model", `is "${model}" on a vhost-user NIC, not virtio`);
    return { tap, mac, model: model as "virtio" | "e1000", vhostUser };
  });
  const console = dr.string("console");
  if (console !== "serial" && console !== "virtio")
    dr.fail("console", `is "${console}", not serial or virtio`);
  return {
    memMiB: r.int("memMiB", MIN_MEM_MIB, MAX_MEM_MIB),
    cpus: r.int("cpus", 1, maxCpus),
    kernel: r.string("kernel"),
    cmdline: r.string("cmdline"),
    platform: platform as SavedMachine["platform"],
    devices: { disks, nets, rng: dr.bool("rng"), console: console as SavedDevices["console"] },
  };
}

/** Page runs of the memory file that hold data: [offset, length] pairs, page-aligned, ascending, apart. */
export type Extents = Array<[number, number]>;

export function memorySection(size: number, extents: Extents): DeviceState {
  return { kind: MEMORY_KIND, version: MEMORY_VERSION, data: { size, extents } };
}

export function readMemorySection(name: string, ds: DeviceState, ramBytes: number): Extents {
  const r = StateReader.open(name, ds, MEMORY_KIND, MEMORY_VERSION);
  r.int("size", ramBytes, ramBytes);
  const raw = ds.data.extents;
  if (!Array.isArray(raw) || raw.length > ramBytes / PAGE)
    throw new DeviceStateError(`${name}: extents is not a list of at most ${ramBytes / PAGE} runs`);
  const out: Extents = [];
  let end = 0;
  for (const [i, e] of raw.entries()) {
    const ok =
      Array.isArray(e) &&
      e.length === 2 &&
      Number.isSafeInteger(e[0]) &&
      Number.isSafeInteger(e[1]) &&
      (e[0] as number) >= end &&
      (e[1] as number) > 0 &&
      (e[0] as number) % PAGE === 0 &&
      (e[1] as number) % PAGE === 0 &&
      (e[0] as number) + (e[1] as number) <= ramBytes;
    if (!ok)
      throw new DeviceStateError(
        `${name}: extent ${i} is not a page-aligned run after the previous one inside ${ramBytes} bytes`,
      );
    const [offset, length] = e as [number, number];
    out.push([offset, length]);
    end = offset + length;
  }
  return out;
}
