/**
 * PCI bus 0, its host bridge at 00:00.0, and the two ways the guest reaches configuration space:
 *
 * - Configuration Mechanism #1 (PCI Local Bus Specification 3.0, §3.2.2.3.2): CONFIG_ADDRESS at I/O 0xCF8 (a
 *   dword register: enable bit 31, bus 23:16, device 15:11, function 10:8, register 7:2; bits 30:24 and 1:0 are
 *   reserved and read 0) and CONFIG_DATA at 0xCFC-0xCFF, where an access at 0xCFC+n of 1, 2 or 4 bytes reaches
 *   configuration offset register+n. Only dword accesses to 0xCF8 reach CONFIG_ADDRESS; narrower ones are
 *   ordinary I/O (the chipset reset register lives at 0xCF9), so CONFIG_ADDRESS is registered for one port and
 *   the bus routes dword accesses by their first byte.
 * - ECAM, the PCI Express Enhanced Configuration Access Mechanism (PCIe §7.2.2): a memory window in which
 *   offset bus << 20 | device << 15 | function << 12 | register addresses the 4 KiB space of every function.
 *
 * A function that does not exist reads as all ones (vendor ID 0xFFFF, which is how software finds empty slots,
 * PCI §6.1) and ignores writes; so does any bus but 0 (vireo has no PCI-to-PCI bridges yet).
 *
 * Threads: every thread builds the same PciBus (same functions at the same slots, in the same order) over one
 * shared bus state (`PciBus.createState()`), which holds the CONFIG_ADDRESS latch (one for the machine: Linux
 * takes a global lock around each 0xCF8/0xCFC pair), a bus-wide BAR decode generation, and the host bridge
 * function's state. The set of functions is not shared: add and remove them at setup, identically everywhere.
 * Then `attach()` every function (`PciBus.attach()`), and call `syncBars()` before dispatching exits (see
 * `PciFunction.syncBars`).
 */
import type { Bus, BusDevice } from "../../bus/bus.ts";
import { type DeviceState, nested, StateReader } from "../../shared/device-state.ts";
import { checkStateBuffer, PciFunction, type PciFunctionOptions } from "./config.ts";
import { PciSlotError, PciStateError } from "./errors.ts";

export const PCI_CONFIG_ADDRESS_PORT = 0xcf8;
export const PCI_CONFIG_DATA_PORT = 0xcfc;
export const PCI_DEVICES_PER_BUS = 32;
export const PCI_FUNCTIONS_PER_DEVICE = 8;

/** CONFIG_ADDRESS fields (PCI §3.2.2.3.2, figure 3-2). */
const CONFIG_ADDRESS_ENABLE = 0x8000_0000;
/** Bits 30:24 and 1:0 are reserved and read as 0. */
const CONFIG_ADDRESS_WRITABLE = 0x80ff_fffc;

/** ECAM bytes per bus: 32 devices x 8 functions x 4 KiB (PCIe §7.2.2). */
export const ECAM_BUS_SIZE = 1 << 20;

/** The CONFIG_ADDRESS value (enable bit set) that selects `reg` (dword aligned) of bus:device.function. */
export function configAddress(bus: number, device: number, func: number, reg: number): number {
  return (
    (CONFIG_ADDRESS_ENABLE |
      ((bus & 0xff) << 16) |
      ((device & 0x1f) << 11) |
      ((func & 7) << 8) |
      (reg & 0xfc)) >>>
    0
  );
}

/** The offset in an ECAM window starting at bus 0 of `reg` of bus:device.function. */
export function ecamOffset(bus: number, device: number, func: number, reg: number): number {
  return (bus & 0xff) * ECAM_BUS_SIZE + (((device & 0x1f) << 15) | ((func & 7) << 12) | (reg & 0xfff));
}

/** Host bridge identity: Intel 82G33/G31/P35/P31 Express DRAM Controller (8086:29C0), class 06/00/00. */
export const HOST_BRIDGE_IDS: PciFunctionOptions = {
  vendorId: 0x8086,
  deviceId: 0x29c0,
  classCode: 0x060000,
  revisionId: 0x00,
  subsystemVendorId: 0x0000,
  subsystemId: 0x0000,
};

/** A host-to-PCI bridge function with no BARs and no interrupt, for 00:00.0. */
export function createHostBridge(options: Partial<PciFunctionOptions> = {}): PciFunction {
  return new PciFunction("pci-host-bridge", { ...HOST_BRIDGE_IDS, ...options, headerType: 0 });
}

export interface PciSlot {
  readonly device: number;
  readonly function: number;
  readonly fn: PciFunction;
}

export interface PciBusOptions {
  /** Put a host bridge at 00:00.0 (default true). */
  hostBridge?: boolean;
  /**
   * The bus state shared by every thread's PciBus (`PciBus.STATE_BYTES`, from `PciBus.createState()` or reset
   * with `init`). Absent: a private state, for a single thread. With a shared state the host bridge is built over
   * the function state inside it and attached at once.
   */
  state?: SharedArrayBuffer;
  /** Reset the state. Exactly one constructor (before the state is shared) passes true; or use createState. */
  init?: boolean;
}

// Bus state layout: Int32 words, then the host bridge's function state.
const B_MAGIC = 0;
const B_GEN = 1; // bus-wide BAR decode generation, bumped by every function on the bus with its own
const B_CONFIG_ADDRESS = 2; // the CONFIG_ADDRESS latch at 0xCF8
const B_HEADER_BYTES = 64;
const BUS_STATE_BYTES = B_HEADER_BYTES + PciFunction.STATE_BYTES;
const BUS_MAGIC = 0x50434942; // "PCIB"

function resetBusState(state: SharedArrayBuffer): void {
  new Uint8Array(state, 0, B_HEADER_BYTES).fill(0);
  PciFunction.initState(state, B_HEADER_BYTES);
  Atomics.store(new Int32Array(state, 0, B_HEADER_BYTES / 4), B_MAGIC, BUS_MAGIC);
}

/** Bus 0: up to 32 devices of up to 8 functions each. */
export class PciBus {
  /** Bytes of shared bus state (see PciBusOptions.state). */
  static readonly STATE_BYTES = BUS_STATE_BYTES;

  readonly number = 0;
  /** Indexed by device << 3 | function. */
  private readonly slots: Array<PciFunction | undefined> = new Array(PCI_DEVICES_PER_BUS * 8).fill(undefined);
  private readonly words: Int32Array;
  /** The bus generation this thread last synchronised its functions' BARs to; -1: never. */
  private seenGen = -1;

  /** A fresh bus state to hand to every thread's PciBus. */
  static createState(): SharedArrayBuffer {
    const state = new SharedArrayBuffer(BUS_STATE_BYTES);
    resetBusState(state);
    return state;
  }

  constructor(options: PciBusOptions = {}) {
    const { state } = options;
    if (state !== undefined) {
      checkStateBuffer("PciBus", state, 0, BUS_STATE_BYTES);
      if (options.init) resetBusState(state);
    }
    const s = state ?? PciBus.createState();
    this.words = new Int32Array(s, 0, B_HEADER_BYTES / 4);
    if (Atomics.load(this.words, B_MAGIC) !== BUS_MAGIC) {
      throw new PciStateError("PciBus: state is not initialised (use PciBus.createState() or init: true)");
    }
    if (options.hostBridge ?? true) {
      const bridge =
        state === undefined
          ? createHostBridge()
          : createHostBridge({ state, stateOffset: B_HEADER_BYTES }).attach();
      this.add(bridge, 0, 0);
    }
  }

  /** Places `fn` at device:function. Keeps function 0's multi-function bit in step (PCI §6.2.1). */
  add(fn: PciFunction, device: number, func = 0): void {
    checkSlot(device, func);
    const i = (device << 3) | func;
    const taken = this.slots[i];
    if (taken !== undefined) {
      throw new PciSlotError(
        `PCI 00:${slotName(device, func)} is taken by ${taken.name} (adding ${fn.name})`,
      );
    }
    if (this.slots.includes(fn)) throw new PciSlotError(`${fn.name} is already on the bus`);
    this.slots[i] = fn;
    fn.setBusGeneration(this.words, B_GEN);
    this.updateMultiFunction(device);
  }

  /** Places `fn` as function 0 of the lowest free device number and returns that number. */
  addNext(fn: PciFunction): number {
    for (let d = 0; d < PCI_DEVICES_PER_BUS; d++) {
      if (this.slots.slice(d << 3, (d << 3) + 8).every((s) => s === undefined)) {
        this.add(fn, d, 0);
        return d;
      }
    }
    throw new PciSlotError(`no free PCI device number for ${fn.name}`);
  }

  remove(device: number, func = 0): PciFunction | undefined {
    checkSlot(device, func);
    const i = (device << 3) | func;
    const fn = this.slots[i];
    this.slots[i] = undefined;
    if (fn !== undefined) {
      fn.setMultiFunction(false);
      fn.setBusGeneration(undefined);
    }
    this.updateMultiFunction(device);
    return fn;
  }

  get(device: number, func = 0): PciFunction | undefined {
    if (!isSlot(device, func)) return undefined;
    return this.slots[(device << 3) | func];
  }

  /** Every function, in device/function order. */
  list(): PciSlot[] {
    const out: PciSlot[] = [];
    this.slots.forEach((fn, i) => {
      if (fn !== undefined) out.push({ device: i >> 3, function: i & 7, fn });
    });
    return out;
  }

  /** Attaches every function on the bus to its state (see PciFunction.attach). Returns `this`. */
  attach(): this {
    for (const fn of this.slots) fn?.attach();
    return this;
  }

  /**
   * `syncBars()` of every function on the bus, but only if some function's BAR decode changed since this
   * object last looked: one Atomics.load while nothing changed. Call it before dispatching each MMIO or
   * port-I/O exit to this thread's buses (see PciFunction.syncBars). Returns whether anything was applied.
   */
  syncBars(): boolean {
    const g = Atomics.load(this.words, B_GEN);
    if (g === this.seenGen) return false;
    // Loaded before the functions are read: a change made meanwhile leaves the generation ahead of seenGen.
    this.seenGen = g;
    let any = false;
    for (const fn of this.slots) if (fn?.syncBars()) any = true;
    return any;
  }

  /**
   * The bus's own state, for a snapshot: the CONFIG_ADDRESS latch and the host bridge's function. The other
   * functions are saved by their devices (virtio-pci, e1000), each with its PciFunction.
   */
  saveState(): DeviceState {
    const bridge = this.get(0, 0);
    return {
      kind: "pci-bus",
      version: 1,
      data: {
        configAddress: this.configAddressLatch,
        hostBridge: bridge === undefined ? null : nested(bridge.saveState()),
      },
    };
  }

  restoreState(s: DeviceState): void {
    const r = StateReader.open("PciBus", s, "pci-bus", 1);
    const latch = r.int("configAddress", 0, 0xffff_ffff);
    if ((latch & ~CONFIG_ADDRESS_WRITABLE) >>> 0 !== 0) r.fail("configAddress", "has reserved bits set");
    const bridge = this.get(0, 0);
    if (bridge === undefined) {
      if (r.isNull("hostBridge") === false) r.fail("hostBridge", "is saved, but this bus has none");
    } else {
      bridge.restoreState(r.state("hostBridge"));
    }
    this.latchConfigAddress(latch);
  }

  /** The CONFIG_ADDRESS latch at 0xCF8 (machine-wide). */
  get configAddressLatch(): number {
    return Atomics.load(this.words, B_CONFIG_ADDRESS) >>> 0;
  }

  /** Sets the CONFIG_ADDRESS latch; reserved bits are dropped (PCI §3.2.2.3.2). */
  latchConfigAddress(value: number): void {
    Atomics.store(this.words, B_CONFIG_ADDRESS, (value & CONFIG_ADDRESS_WRITABLE) | 0);
  }

  /** A configuration read; all ones if no function answers (PCI §6.1). */
  readConfig(bus: number, device: number, func: number, offset: number, data: Uint8Array): void {
    const fn = bus === this.number ? this.get(device, func) : undefined;
    if (fn === undefined) data.fill(0xff);
    else fn.readConfig(offset, data);
  }

  /** A configuration write; dropped if no function answers. */
  writeConfig(bus: number, device: number, func: number, offset: number, data: Uint8Array): void {
    const fn = bus === this.number ? this.get(device, func) : undefined;
    fn?.writeConfig(offset, data);
  }

  private updateMultiFunction(device: number): void {
    const f0 = this.slots[device << 3];
    if (f0 === undefined) return;
    let others = false;
    for (let f = 1; f < 8; f++) others ||= this.slots[(device << 3) | f] !== undefined;
    f0.setMultiFunction(others);
  }
}

function isSlot(device: number, func: number): boolean {
  return (
    Number.isInteger(device) &&
    Number.isInteger(func) &&
    device >= 0 &&
    device < PCI_DEVICES_PER_BUS &&
    func >= 0 &&
    func < PCI_FUNCTIONS_PER_DEVICE
  );
}

function checkSlot(device: number, func: number): void {
  if (!isSlot(device, func))
    throw new PciSlotError(`no PCI slot ${device}.${func} (devices 0-31, functions 0-7)`);
}

function slotName(device: number, func: number): string {
  return `${device.toString(16).padStart(2, "0")}.${func}`;
}

/**
 * Configuration Mechanism #1. Register `address` at 0xCF8 for one port and `data` at 0xCFC for four (see
 * `register`). The CONFIG_ADDRESS latch is the bus's (`PciBus.configAddressLatch`), so with a shared bus state
 * a latch written by one vCPU thread selects the register another thread's 0xCFC access reaches.
 */
export class PciConfigIo {
  readonly address: BusDevice;
  readonly data: BusDevice;
  private readonly bus: PciBus;

  constructor(bus: PciBus) {
    this.bus = bus;
    this.address = {
      name: "pci-config-address",
      read: (offset, data) => {
        // Only a dword access at 0xCF8 is CONFIG_ADDRESS; anything else floats.
        if (offset === 0 && data.length === 4) writeLe32(data, this.bus.configAddressLatch);
        else data.fill(0xff);
      },
      write: (offset, data) => {
        if (offset === 0 && data.length === 4) this.bus.latchConfigAddress(readLe32(data));
      },
    };
    this.data = {
      name: "pci-config-data",
      read: (offset, data) => this.access(offset, data, "read"),
      write: (offset, data) => this.access(offset, data, "write"),
    };
  }

  /** Claims 0xCF8 (one port, see the module comment) and 0xCFC-0xCFF on `pio`. */
  register(pio: Bus): void {
    pio.register(PCI_CONFIG_ADDRESS_PORT, 1, this.address);
    pio.register(PCI_CONFIG_DATA_PORT, 4, this.data);
  }

  /** The CONFIG_ADDRESS latch, as the guest last wrote it. */
  get latchedAddress(): number {
    return this.bus.configAddressLatch;
  }

  private access(port: number, data: Uint8Array, op: "read" | "write"): void {
    const a = this.bus.configAddressLatch;
    // Bytes past 0xCFF are not part of CONFIG_DATA (an x86 port access straddling it is split by the CPU).
    const inside = Math.max(0, Math.min(data.length, 4 - port));
    if (op === "read") data.fill(0xff);
    if ((a & CONFIG_ADDRESS_ENABLE) === 0 || inside === 0) return; // disabled: ordinary I/O, nothing there
    const bus = (a >>> 16) & 0xff;
    const device = (a >>> 11) & 0x1f;
    const func = (a >>> 8) & 0x7;
    const offset = (a & 0xfc) + port;
    const part = data.subarray(0, inside);
    if (op === "read") this.bus.readConfig(bus, device, func, offset, part);
    else this.bus.writeConfig(bus, device, func, offset, part);
  }
}

export interface PciEcamOptions {
  /** First and last bus number the window decodes (the ACPI MCFG entry's range). Default 0-0: one MiB. */
  startBus?: number;
  endBus?: number;
}

/**
 * The ECAM window as an MMIO BusDevice of `size` bytes. Accesses are split at dword boundaries, each part going
 * to the function it addresses (PCIe §7.2.2 leaves accesses that cross a dword undefined; this is what a root
 * complex that splits them would do). 8-byte accesses therefore touch two consecutive dwords.
 */
export class PciEcam implements BusDevice {
  readonly name = "pci-ecam";
  readonly startBus: number;
  readonly endBus: number;
  readonly size: number;
  private readonly bus: PciBus;

  constructor(bus: PciBus, options: PciEcamOptions = {}) {
    this.bus = bus;
    this.startBus = options.startBus ?? 0;
    this.endBus = options.endBus ?? this.startBus;
    if (
      !Number.isInteger(this.startBus) ||
      !Number.isInteger(this.endBus) ||
      this.startBus < 0 ||
      this.endBus > 255 ||
      this.endBus < this.startBus
    ) {
      throw new PciSlotError(`bad ECAM bus range ${this.startBus}-${this.endBus}`);
    }
    this.size = (this.endBus - this.startBus + 1) * ECAM_BUS_SIZE;
  }

  read(offset: number, data: Uint8Array): void {
    this.access(offset, data, "read");
  }

  write(offset: number, data: Uint8Array): void {
    this.access(offset, data, "write");
  }

  private access(offset: number, data: Uint8Array, op: "read" | "write"): void {
    let i = 0;
    while (i < data.length) {
      const addr = offset + i;
      const chunk = Math.min(data.length - i, 4 - (addr % 4));
      const part = data.subarray(i, i + chunk);
      i += chunk;
      if (addr >= this.size) {
        if (op === "read") part.fill(0xff);
        continue;
      }
      const bus = this.startBus + Math.floor(addr / ECAM_BUS_SIZE);
      const device = (addr >>> 15) & 0x1f;
      const func = (addr >>> 12) & 0x7;
      const reg = addr & 0xfff;
      if (op === "read") this.bus.readConfig(bus, device, func, reg, part);
      else this.bus.writeConfig(bus, device, func, reg, part);
    }
  }
}

function readLe32(data: Uint8Array): number {
  return (
    ((data[0] as number) |
      ((data[1] as number) << 8) |
      ((data[2] as number) << 16) |
      ((data[3] as number) << 24)) >>>
    0
  );
}

function writeLe32(data: Uint8Array, value: number): void {
  for (let i = 0; i < 4; i++) data[i] = (value >>> (8 * i)) & 0xff;
}
