/**
 * One PCI function's configuration space: the predefined header (type 0 endpoint or type 1 bridge layout), the
 * capability lists, BARs and INTx state, with the read-only / read-write / RW1C rules of each bit.
 *
 * Section references are to the PCI Local Bus Specification 3.0 ("PCI §x") and the PCI Express Base
 * Specification ("PCIe §x"): PCI §6.1 header layout, §6.2.2 Command, §6.2.3 Status, §6.2.5 BARs, §6.7
 * capability list; PCIe §7.9/7.6.3 extended capabilities (chained from 0x100, reachable only through ECAM).
 *
 * Every bit is stored in a 4 KiB byte array with two per-byte masks built when the function is defined: `wmask`
 * (the guest may write the bit) and `w1cmask` (the guest clears the bit by writing 1). A guest write of any size
 * at any offset is applied byte by byte through those masks, which is how hardware behaves for a byte-enable
 * pattern: a write never disturbs bytes it does not enable, and read-only bits keep their value. Side effects
 * (BAR decode changes, the INTx line, capability owners' hooks) run after the bytes are stored.
 *
 * Emulation choices:
 * - A BAR decodes (and `onBarRemap` reports an address) only while its space is enabled in COMMAND, its address
 *   is non-zero, the range fits its address space (below 4 GiB for 32-bit memory, below 2^52 for 64-bit memory,
 *   below 64 KiB for I/O), and the low dword's address bits are not all ones. The last rule keeps the transient
 *   all-ones value of the sizing protocol from being mapped over the top of the 4 GiB hole when a guest sizes a
 *   BAR with decode left enabled.
 * - I/O BARs decode 16 address bits: the upper 16 bits are hardwired to 0 (PCI §6.2.5.1 permits this for
 *   devices that decode only the 64 KiB x86 I/O space).
 * - There is no expansion ROM (its BAR reads 0), no BIST, and no Cardbus CIS.
 * - Command bits that have no meaning for a virtual device are hardwired to 0: special cycles, MWI, VGA palette
 *   snoop, fast back-to-back. IDSEL stepping (bit 7) is reserved. Parity error response and SERR# enable are
 *   stored (RW) but nothing in vireo raises parity or system errors unless a device calls `raiseStatus`.
 */
import type { BusDevice } from "../../bus/bus.ts";
import type { IrqLine } from "../../vmm/irq.ts";
import { PciBarError, PciCapabilityError } from "./errors.ts";

export const PCI_CONFIG_SIZE = 0x100;
/** PCI Express configuration space, 4 KiB per function (PCIe §7.2.2, ECAM). */
export const PCIE_CONFIG_SIZE = 0x1000;

/** Register offsets of the predefined header (PCI §6.1, figures 6-1 and the bridge header). */
export const PCI_REG = {
  VENDOR_ID: 0x00,
  DEVICE_ID: 0x02,
  COMMAND: 0x04,
  STATUS: 0x06,
  REVISION_ID: 0x08,
  CLASS_CODE: 0x09, // 3 bytes: programming interface, sub-class, base class
  CACHE_LINE_SIZE: 0x0c,
  LATENCY_TIMER: 0x0d,
  HEADER_TYPE: 0x0e,
  BIST: 0x0f,
  BAR0: 0x10,
  CARDBUS_CIS: 0x28,
  SUBSYSTEM_VENDOR_ID: 0x2c,
  SUBSYSTEM_ID: 0x2e,
  EXPANSION_ROM: 0x30,
  CAPABILITIES_POINTER: 0x34,
  INTERRUPT_LINE: 0x3c,
  INTERRUPT_PIN: 0x3d,
  MIN_GNT: 0x3e,
  MAX_LAT: 0x3f,
  // Type 1 (PCI-to-PCI bridge) header
  PRIMARY_BUS: 0x18,
  SECONDARY_BUS: 0x19,
  SUBORDINATE_BUS: 0x1a,
  SECONDARY_LATENCY: 0x1b,
  IO_BASE: 0x1c,
  IO_LIMIT: 0x1d,
  SECONDARY_STATUS: 0x1e,
  MEMORY_BASE: 0x20,
  MEMORY_LIMIT: 0x22,
  PREF_MEMORY_BASE: 0x24,
  PREF_MEMORY_LIMIT: 0x26,
  PREF_BASE_UPPER32: 0x28,
  PREF_LIMIT_UPPER32: 0x2c,
  IO_BASE_UPPER16: 0x30,
  IO_LIMIT_UPPER16: 0x32,
  BRIDGE_EXPANSION_ROM: 0x38,
  BRIDGE_CONTROL: 0x3e,
} as const;

/** Command register bits (PCI §6.2.2). */
export const PCI_COMMAND = {
  IO: 0x0001,
  MEMORY: 0x0002,
  BUS_MASTER: 0x0004,
  PARITY_ERROR_RESPONSE: 0x0040,
  SERR: 0x0100,
  INTX_DISABLE: 0x0400,
} as const;

/** Status register bits (PCI §6.2.3). */
export const PCI_STATUS = {
  INTERRUPT: 0x0008,
  CAPABILITIES_LIST: 0x0010,
  MASTER_DATA_PARITY_ERROR: 0x0100,
  SIGNALED_TARGET_ABORT: 0x0800,
  RECEIVED_TARGET_ABORT: 0x1000,
  RECEIVED_MASTER_ABORT: 0x2000,
  SIGNALED_SYSTEM_ERROR: 0x4000,
  DETECTED_PARITY_ERROR: 0x8000,
} as const;

/** Capability IDs used in vireo (PCI Code and ID Assignment Specification). */
export const PCI_CAP_ID = {
  POWER_MANAGEMENT: 0x01,
  MSI: 0x05,
  VENDOR_SPECIFIC: 0x09,
  PCI_EXPRESS: 0x10,
  MSIX: 0x11,
} as const;

// PCI §6.2.2: IO, memory, bus master, parity error response, SERR# enable, interrupt disable are RW.
const COMMAND_WMASK =
  PCI_COMMAND.IO |
  PCI_COMMAND.MEMORY |
  PCI_COMMAND.BUS_MASTER |
  PCI_COMMAND.PARITY_ERROR_RESPONSE |
  PCI_COMMAND.SERR |
  PCI_COMMAND.INTX_DISABLE;
// PCI §6.2.3: the error bits are "set by the device, cleared by writing 1"; everything else is read-only.
const STATUS_W1C =
  PCI_STATUS.MASTER_DATA_PARITY_ERROR |
  PCI_STATUS.SIGNALED_TARGET_ABORT |
  PCI_STATUS.RECEIVED_TARGET_ABORT |
  PCI_STATUS.RECEIVED_MASTER_ABORT |
  PCI_STATUS.SIGNALED_SYSTEM_ERROR |
  PCI_STATUS.DETECTED_PARITY_ERROR;

/** Standard capabilities live after the header, dword aligned (PCI §6.7). */
const CAP_START = 0x40;
/** Extended capabilities start at 0x100 (PCIe §7.6.3). */
const EXT_CAP_START = 0x100;

const TWO32 = 0x1_0000_0000;
/** The MMIO bus limit (bus.ts): x86-64's 52-bit physical address width. */
const MMIO64_LIMIT = 2 ** 52;
const IO_LIMIT = 0x10000;

export type BarKind = "mmio32" | "mmio64" | "io";

export interface BarDefinition {
  kind: BarKind;
  /** Bytes; a power of two, at least 16 for memory and 4 for I/O (PCI §6.2.5.1). */
  size: number;
  /** Memory BARs only: reads have no side effects and writes may be merged (PCI §6.2.5.1, bit 3). */
  prefetchable?: boolean;
  /** What answers accesses inside the BAR, offset relative to the BAR base (used by `connectBars`). */
  device?: BusDevice;
}

export interface BarInfo {
  readonly index: number;
  readonly kind: BarKind;
  readonly size: number;
  readonly prefetchable: boolean;
  readonly device: BusDevice | undefined;
}

/**
 * Called when the guest-visible decode of BAR `index` changes: it moved, or its space was enabled or disabled in
 * COMMAND. `oldAddr` is where it decoded before (null: nowhere), `newAddr` where it decodes now.
 */
export type BarRemapHandler = (index: number, oldAddr: number | null, newAddr: number | null) => void;

export interface CapabilityOptions {
  /**
   * Per-byte masks of the bits the guest may write, aligned with `body` (so `writableMask[0]` covers the byte
   * after the ID and next pointer). Absent: the whole capability is read-only.
   */
  writableMask?: Uint8Array;
  /** Per-byte RW1C masks, aligned with `body`. */
  w1cMask?: Uint8Array;
  /**
   * Runs after a guest write touching the capability has been stored. `offset` is relative to the capability's
   * first byte (its ID), and [offset, offset + length) is the part of the capability the write covered.
   */
  onWrite?: (offset: number, length: number) => void;
  /** Runs before a guest read touching the capability, so the owner can refresh the bytes it returns. */
  onRead?: (offset: number, length: number) => void;
}

export interface CapabilityInfo {
  readonly id: number;
  /** Offset of the capability's first byte in configuration space. */
  readonly offset: number;
  /** Bytes, including the header. */
  readonly length: number;
  readonly extended: boolean;
}

interface CapRegion extends CapabilityInfo {
  readonly onWrite: ((offset: number, length: number) => void) | undefined;
  readonly onRead: ((offset: number, length: number) => void) | undefined;
}

export interface PciFunctionOptions {
  vendorId: number;
  deviceId: number;
  /** 24 bits: base class << 16 | sub-class << 8 | programming interface. */
  classCode: number;
  revisionId?: number;
  subsystemVendorId?: number;
  subsystemId?: number;
  /** 0: endpoint (6 BARs); 1: PCI-to-PCI bridge layout (2 BARs, bus numbers, windows). Default 0. */
  headerType?: 0 | 1;
  /** 0: no INTx pin; 1-4: INTA#-INTD# (PCI §6.2.4). Default 0. */
  interruptPin?: 0 | 1 | 2 | 3 | 4;
  /** The line INTx# drives. Can also be set later through the `intx` property. */
  intx?: IrqLine;
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && 2 ** Math.round(Math.log2(n)) === n;
}

export class PciFunction {
  readonly name: string;
  /** Fires when a BAR's decode changes; see BarRemapHandler. */
  onBarRemap: BarRemapHandler | undefined;
  /** The INTx# line; the pin is asserted only while COMMAND.INTX_DISABLE is clear. */
  intx: IrqLine | undefined;

  private readonly cfg = new Uint8Array(PCIE_CONFIG_SIZE);
  private readonly view = new DataView(this.cfg.buffer);
  private readonly wmask = new Uint8Array(PCIE_CONFIG_SIZE);
  private readonly w1cmask = new Uint8Array(PCIE_CONFIG_SIZE);
  private readonly barCount: number;
  private readonly bars: Array<BarInfo | undefined>;
  /** The second dword of a 64-bit BAR points back at the BAR it belongs to. */
  private readonly barUpperOf: Array<number | undefined>;
  private readonly mapped: Array<number | null>;
  private readonly caps: CapRegion[] = [];
  private nextCap = CAP_START;
  private nextExtCap = EXT_CAP_START;
  private intxRequest = false;
  private intxSuppressed = false;
  private intxAsserted = false;

  constructor(name: string, options: PciFunctionOptions) {
    this.name = name;
    const headerType = options.headerType ?? 0;
    this.barCount = headerType === 0 ? 6 : 2;
    this.bars = new Array(this.barCount).fill(undefined);
    this.barUpperOf = new Array(this.barCount).fill(undefined);
    this.mapped = new Array(this.barCount).fill(null);
    this.intx = options.intx;

    const v = this.view;
    v.setUint16(PCI_REG.VENDOR_ID, options.vendorId & 0xffff, true);
    v.setUint16(PCI_REG.DEVICE_ID, options.deviceId & 0xffff, true);
    v.setUint8(PCI_REG.REVISION_ID, (options.revisionId ?? 0) & 0xff);
    v.setUint8(PCI_REG.CLASS_CODE, options.classCode & 0xff);
    v.setUint16(PCI_REG.CLASS_CODE + 1, (options.classCode >>> 8) & 0xffff, true);
    v.setUint8(PCI_REG.HEADER_TYPE, headerType);
    v.setUint8(PCI_REG.INTERRUPT_PIN, options.interruptPin ?? 0);

    this.setMask(this.wmask, PCI_REG.COMMAND, 2, COMMAND_WMASK);
    this.setMask(this.w1cmask, PCI_REG.STATUS, 2, STATUS_W1C);
    // Cache line size: RW, no effect (PCI §6.2.4). Latency timer: RW for a bus master on conventional PCI.
    this.wmask[PCI_REG.CACHE_LINE_SIZE] = 0xff;
    this.wmask[PCI_REG.LATENCY_TIMER] = 0xff;
    // Interrupt line: RW scratch for the OS, "no effect on the device" (PCI §6.2.4). Pin: RO.
    this.wmask[PCI_REG.INTERRUPT_LINE] = 0xff;

    if (headerType === 0) {
      v.setUint16(PCI_REG.SUBSYSTEM_VENDOR_ID, (options.subsystemVendorId ?? 0) & 0xffff, true);
      v.setUint16(PCI_REG.SUBSYSTEM_ID, (options.subsystemId ?? 0) & 0xffff, true);
    } else {
      this.initBridgeHeader();
    }
  }

  /** The type 1 header's writable fields (PCI-to-PCI Bridge Architecture Specification 1.2, §3.2). */
  private initBridgeHeader(): void {
    const w = this.wmask;
    w[PCI_REG.PRIMARY_BUS] = 0xff;
    w[PCI_REG.SECONDARY_BUS] = 0xff;
    w[PCI_REG.SUBORDINATE_BUS] = 0xff;
    w[PCI_REG.SECONDARY_LATENCY] = 0xff;
    // I/O base/limit: bits 7:4 are address bits 15:12; bits 3:0 = 0 (16-bit I/O decode), so the upper-16
    // registers at 0x30/0x32 are read-only 0.
    w[PCI_REG.IO_BASE] = 0xf0;
    w[PCI_REG.IO_LIMIT] = 0xf0;
    // Secondary status: the same RW1C error bits as the primary status (bit 14 is "received system error").
    this.setMask(this.w1cmask, PCI_REG.SECONDARY_STATUS, 2, STATUS_W1C);
    // Memory and prefetchable base/limit: bits 15:4 are address bits 31:20.
    this.setMask(w, PCI_REG.MEMORY_BASE, 2, 0xfff0);
    this.setMask(w, PCI_REG.MEMORY_LIMIT, 2, 0xfff0);
    this.setMask(w, PCI_REG.PREF_MEMORY_BASE, 2, 0xfff0);
    this.setMask(w, PCI_REG.PREF_MEMORY_LIMIT, 2, 0xfff0);
    // Bits 3:0 = 1: the prefetchable window is 64-bit, with upper 32 bits in 0x28 / 0x2C.
    this.cfg[PCI_REG.PREF_MEMORY_BASE] = 0x01;
    this.cfg[PCI_REG.PREF_MEMORY_LIMIT] = 0x01;
    this.setMask(w, PCI_REG.PREF_BASE_UPPER32, 4, 0xffffffff);
    this.setMask(w, PCI_REG.PREF_LIMIT_UPPER32, 4, 0xffffffff);
    // Bridge control: parity error response, SERR#, ISA, VGA, VGA 16-bit decode, master abort mode, secondary
    // bus reset. Fast back-to-back and the discard timers are hardwired to 0.
    this.setMask(w, PCI_REG.BRIDGE_CONTROL, 2, 0x007f);
  }

  private setMask(mask: Uint8Array, offset: number, size: number, value: number): void {
    for (let i = 0; i < size; i++) mask[offset + i] = (value >>> (8 * i)) & 0xff;
  }

  // ---- identity -------------------------------------------------------------------------------------------

  get vendorId(): number {
    return this.peek16(PCI_REG.VENDOR_ID);
  }
  get deviceId(): number {
    return this.peek16(PCI_REG.DEVICE_ID);
  }
  get classCode(): number {
    return this.peek32(PCI_REG.REVISION_ID) >>> 8;
  }
  /** Header layout, without the multi-function bit. */
  get headerType(): 0 | 1 {
    return (this.peek8(PCI_REG.HEADER_TYPE) & 0x7f) === 1 ? 1 : 0;
  }
  get command(): number {
    return this.peek16(PCI_REG.COMMAND);
  }
  get status(): number {
    return this.peek16(PCI_REG.STATUS);
  }
  get ioEnabled(): boolean {
    return (this.command & PCI_COMMAND.IO) !== 0;
  }
  get memoryEnabled(): boolean {
    return (this.command & PCI_COMMAND.MEMORY) !== 0;
  }
  /** Devices must not start DMA while this is clear (PCI §6.2.2, bit 2). */
  get busMasterEnabled(): boolean {
    return (this.command & PCI_COMMAND.BUS_MASTER) !== 0;
  }
  get intxDisabled(): boolean {
    return (this.command & PCI_COMMAND.INTX_DISABLE) !== 0;
  }
  get interruptPin(): number {
    return this.peek8(PCI_REG.INTERRUPT_PIN);
  }

  /** Header type bit 7: the device has functions other than 0 (PCI §6.2.1). Set by PciBus. */
  setMultiFunction(on: boolean): void {
    const h = this.peek8(PCI_REG.HEADER_TYPE);
    this.cfg[PCI_REG.HEADER_TYPE] = on ? h | 0x80 : h & 0x7f;
  }

  // ---- guest access ---------------------------------------------------------------------------------------

  /**
   * A configuration read of `data.length` bytes at `offset` (any size, any alignment). Bytes past the 4 KiB
   * space read as 0xff.
   */
  readConfig(offset: number, data: Uint8Array): void {
    const end = Math.min(offset + data.length, PCIE_CONFIG_SIZE);
    if (offset < end) this.runCapHooks(offset, end, "read");
    for (let i = 0; i < data.length; i++) {
      const o = offset + i;
      data[i] = o < PCIE_CONFIG_SIZE ? (this.cfg[o] as number) : 0xff;
    }
  }

  /** A configuration write of `data` at `offset`: each byte goes through the RW and RW1C masks. */
  writeConfig(offset: number, data: Uint8Array): void {
    const end = Math.min(offset + data.length, PCIE_CONFIG_SIZE);
    if (offset >= end) return;
    const cfg = this.cfg;
    for (let o = offset; o < end; o++) {
      const value = data[o - offset] as number;
      const w = this.wmask[o] as number;
      const c = this.w1cmask[o] as number;
      let b = ((cfg[o] as number) & ~w) | (value & w);
      b &= ~(value & c);
      cfg[o] = b;
    }
    if (offset < PCI_REG.COMMAND + 2 && end > PCI_REG.COMMAND) {
      this.updateIntx();
    }
    if (offset < PCI_REG.BAR0 + 4 * this.barCount && end > PCI_REG.COMMAND) {
      this.updateMappings();
    }
    this.runCapHooks(offset, end, "write");
  }

  /** `readConfig` for 1, 2 or 4 bytes, as a little-endian number. */
  configRead(offset: number, size: 1 | 2 | 4): number {
    const data = new Uint8Array(size);
    this.readConfig(offset, data);
    let v = 0;
    for (let i = size - 1; i >= 0; i--) v = v * 256 + (data[i] as number);
    return v;
  }

  /** `writeConfig` for 1, 2 or 4 bytes of a little-endian number; what firmware does through 0xCFC. */
  configWrite(offset: number, size: 1 | 2 | 4, value: number): void {
    const data = new Uint8Array(size);
    for (let i = 0; i < size; i++) data[i] = Math.floor(value / 2 ** (8 * i)) & 0xff;
    this.writeConfig(offset, data);
  }

  private runCapHooks(start: number, end: number, kind: "read" | "write"): void {
    for (const cap of this.caps) {
      const hook = kind === "read" ? cap.onRead : cap.onWrite;
      if (hook === undefined) continue;
      const from = Math.max(start, cap.offset);
      const to = Math.min(end, cap.offset + cap.length);
      if (from < to) hook(from - cap.offset, to - from);
    }
  }

  // ---- host-side raw access (no masks, no side effects) ---------------------------------------------------

  peek8(offset: number): number {
    return this.view.getUint8(offset);
  }
  peek16(offset: number): number {
    return this.view.getUint16(offset, true);
  }
  peek32(offset: number): number {
    return this.view.getUint32(offset, true);
  }
  poke8(offset: number, value: number): void {
    this.view.setUint8(offset, value & 0xff);
  }
  poke16(offset: number, value: number): void {
    this.view.setUint16(offset, value & 0xffff, true);
  }
  poke32(offset: number, value: number): void {
    this.view.setUint32(offset, value >>> 0, true);
  }

  /** Sets RW1C status bits from the device side (e.g. RECEIVED_MASTER_ABORT after a failed DMA). */
  raiseStatus(bits: number): void {
    this.poke16(PCI_REG.STATUS, this.status | (bits & STATUS_W1C));
  }

  // ---- capabilities ---------------------------------------------------------------------------------------

  /**
   * Appends a capability to the list at 0x34 (PCI §6.7) and returns the offset of its first byte. `body` is
   * what follows the ID and next-pointer bytes; the capability occupies 2 + body.length bytes, dword aligned.
   * ID and next pointer are read-only; the rest is read-only unless `writableMask` / `w1cMask` say otherwise.
   * A vendor-specific capability (ID 0x09) carries its own length in body[0] (PCI §6.7, "Capability Length").
   */
  addCapability(id: number, body: Uint8Array, options: CapabilityOptions = {}): number {
    const length = 2 + body.length;
    const offset = this.nextCap;
    if (offset + length > PCI_CONFIG_SIZE) {
      throw new PciCapabilityError(
        `${this.name}: capability ${hex(id)} (${length} bytes) does not fit at ${hex(offset)} in the 256-byte space`,
      );
    }
    if (id < 0 || id > 0xff) throw new PciCapabilityError(`${this.name}: bad capability ID ${id}`);
    this.checkMasks(body, options);
    this.cfg[offset] = id;
    this.cfg[offset + 1] = 0; // end of list until another capability follows
    this.cfg.set(body, offset + 2);
    if (options.writableMask) this.wmask.set(options.writableMask, offset + 2);
    if (options.w1cMask) this.w1cmask.set(options.w1cMask, offset + 2);

    const standard = this.caps.filter((c) => !c.extended);
    const last = standard[standard.length - 1];
    if (last === undefined) {
      this.cfg[PCI_REG.CAPABILITIES_POINTER] = offset;
      this.poke16(PCI_REG.STATUS, this.status | PCI_STATUS.CAPABILITIES_LIST);
    } else {
      this.cfg[last.offset + 1] = offset;
    }
    this.caps.push({ id, offset, length, extended: false, onWrite: options.onWrite, onRead: options.onRead });
    this.nextCap = (offset + length + 3) & ~3;
    return offset;
  }

  /**
   * Appends an extended capability (PCIe §7.6.3) in 0x100-0xFFF: a dword header (ID 15:0, version 19:16, next
   * 31:20) followed by `body`. Returns its offset. Only ECAM reaches it.
   */
  addExtendedCapability(
    id: number,
    version: number,
    body: Uint8Array,
    options: CapabilityOptions = {},
  ): number {
    const length = 4 + body.length;
    const offset = this.nextExtCap;
    if (offset + length > PCIE_CONFIG_SIZE) {
      throw new PciCapabilityError(
        `${this.name}: extended capability ${hex(id)} does not fit at ${hex(offset)}`,
      );
    }
    if (id < 0 || id > 0xffff || version < 0 || version > 0xf) {
      throw new PciCapabilityError(`${this.name}: bad extended capability ID ${id} / version ${version}`);
    }
    this.checkMasks(body, options);
    this.poke32(offset, id | (version << 16));
    this.cfg.set(body, offset + 4);
    if (options.writableMask) this.wmask.set(options.writableMask, offset + 4);
    if (options.w1cMask) this.w1cmask.set(options.w1cMask, offset + 4);
    const extended = this.caps.filter((c) => c.extended);
    const last = extended[extended.length - 1];
    if (last !== undefined) {
      this.poke32(last.offset, (this.peek32(last.offset) & 0xfffff) | (offset << 20));
    }
    this.caps.push({ id, offset, length, extended: true, onWrite: options.onWrite, onRead: options.onRead });
    this.nextExtCap = (offset + length + 3) & ~3;
    return offset;
  }

  private checkMasks(body: Uint8Array, options: CapabilityOptions): void {
    for (const mask of [options.writableMask, options.w1cMask]) {
      if (mask !== undefined && mask.length !== body.length) {
        throw new PciCapabilityError(
          `${this.name}: capability mask is ${mask.length} bytes, body is ${body.length} bytes`,
        );
      }
    }
  }

  /** The first capability with `id` (standard list unless `extended`). */
  findCapability(id: number, extended = false): CapabilityInfo | undefined {
    const c = this.caps.find((cap) => cap.id === id && cap.extended === extended);
    return c === undefined
      ? undefined
      : { id: c.id, offset: c.offset, length: c.length, extended: c.extended };
  }

  capabilities(): CapabilityInfo[] {
    return this.caps.map((c) => ({ id: c.id, offset: c.offset, length: c.length, extended: c.extended }));
  }

  // ---- BARs -----------------------------------------------------------------------------------------------

  /**
   * Defines BAR `index` (PCI §6.2.5.1). A 64-bit memory BAR takes slots `index` and `index + 1`. The BAR starts
   * unassigned (address 0); firmware (see `assignBars`) or the guest programs it.
   */
  defineBar(index: number, def: BarDefinition): void {
    const { kind, size } = def;
    const slots = kind === "mmio64" ? 2 : 1;
    if (!Number.isInteger(index) || index < 0 || index + slots > this.barCount) {
      throw new PciBarError(
        `${this.name}: BAR ${index} (${kind}) does not exist in a type ${this.headerType} header`,
      );
    }
    for (let i = index; i < index + slots; i++) {
      if (this.bars[i] !== undefined || this.barUpperOf[i] !== undefined) {
        throw new PciBarError(`${this.name}: BAR slot ${i} is already in use`);
      }
    }
    if (!isPowerOfTwo(size))
      throw new PciBarError(`${this.name}: BAR ${index} size ${size} is not a power of two`);
    if (kind === "io") {
      // PCI §6.2.5.1: at least 4 bytes; "devices ... should not use more than 256 bytes per I/O BAR".
      if (size < 4 || size > 256)
        throw new PciBarError(`${this.name}: I/O BAR ${index} size ${size} not in 4-256`);
      if (def.prefetchable) throw new PciBarError(`${this.name}: I/O BAR ${index} cannot be prefetchable`);
    } else {
      // PCI §6.2.5.1: memory BARs are at least 16 bytes; a 32-bit BAR cannot exceed 2 GiB in a 4 GiB space.
      const max = kind === "mmio32" ? 2 ** 31 : 2 ** 51;
      if (size < 16 || size > max)
        throw new PciBarError(`${this.name}: BAR ${index} size ${hex(size)} out of range`);
    }

    const off = PCI_REG.BAR0 + 4 * index;
    if (kind === "io") {
      // Bit 0 = 1 (I/O), bit 1 reserved; address bits 15:2 above the size are writable.
      this.poke32(off, 0x1);
      this.setMask(this.wmask, off, 4, ~(size - 1) & 0xfffc);
    } else {
      // Bit 0 = 0 (memory), bits 2:1 = type (00: 32-bit, 10: 64-bit), bit 3 = prefetchable.
      const low = (kind === "mmio64" ? 0x4 : 0) | (def.prefetchable ? 0x8 : 0);
      this.poke32(off, low);
      this.setMask(this.wmask, off, 4, size >= TWO32 ? 0 : ~(size - 1) & 0xfffffff0);
      if (kind === "mmio64") {
        this.poke32(off + 4, 0);
        this.setMask(this.wmask, off + 4, 4, size > TWO32 ? ~(size / TWO32 - 1) : 0xffffffff);
        this.barUpperOf[index + 1] = index;
      }
    }
    this.bars[index] = {
      index,
      kind,
      size,
      prefetchable: def.prefetchable ?? false,
      device: def.device,
    };
  }

  /** BAR `index` as defined, or undefined (also for the upper half of a 64-bit BAR). */
  bar(index: number): BarInfo | undefined {
    return this.bars[index];
  }

  /** Every defined BAR, by index. */
  definedBars(): BarInfo[] {
    return this.bars.filter((b): b is BarInfo => b !== undefined);
  }

  /** The address programmed into BAR `index` (whether or not it decodes), or null if the BAR is not defined. */
  barAddress(index: number): number | null {
    const bar = this.bars[index];
    if (bar === undefined) return null;
    const off = PCI_REG.BAR0 + 4 * index;
    const lo = this.peek32(off);
    if (bar.kind === "io") return lo & 0xfffc;
    const base = (lo & 0xfffffff0) >>> 0;
    return bar.kind === "mmio64" ? base + this.peek32(off + 4) * TWO32 : base;
  }

  /** Where BAR `index` decodes now (see the emulation choices above), or null. */
  barMapping(index: number): number | null {
    return this.mapped[index] ?? null;
  }

  /** Programs BAR `index` as firmware does, through the same masks as a guest write. */
  setBarAddress(index: number, address: number): void {
    const bar = this.bars[index];
    if (bar === undefined) throw new PciBarError(`${this.name}: BAR ${index} is not defined`);
    if (address % bar.size !== 0) {
      throw new PciBarError(
        `${this.name}: BAR ${index} address ${hex(address)} is not aligned to ${hex(bar.size)}`,
      );
    }
    const off = PCI_REG.BAR0 + 4 * index;
    if (bar.kind === "mmio64") this.configWrite(off + 4, 4, Math.floor(address / TWO32));
    this.configWrite(off, 4, address % TWO32);
  }

  private computeMapping(bar: BarInfo): number | null {
    const isIo = bar.kind === "io";
    if (!(isIo ? this.ioEnabled : this.memoryEnabled)) return null;
    const addr = this.barAddress(bar.index);
    if (addr === null || addr === 0) return null;
    const limit = isIo ? IO_LIMIT : bar.kind === "mmio32" ? TWO32 : MMIO64_LIMIT;
    if (addr + bar.size > limit) return null;
    const lowAddrMask = isIo ? 0xfffc : 0xfffffff0;
    const lowWritable = this.peek32(PCI_REG.BAR0 + 4 * bar.index) & lowAddrMask & this.maskAt(bar.index);
    const sizingPattern = this.maskAt(bar.index) & lowAddrMask;
    if (sizingPattern !== 0 && lowWritable >>> 0 === sizingPattern >>> 0) return null;
    return addr;
  }

  private maskAt(index: number): number {
    const o = PCI_REG.BAR0 + 4 * index;
    const w = this.wmask;
    return (
      ((w[o] as number) |
        ((w[o + 1] as number) << 8) |
        ((w[o + 2] as number) << 16) |
        ((w[o + 3] as number) << 24)) >>>
      0
    );
  }

  private updateMappings(): void {
    for (const bar of this.bars) {
      if (bar === undefined) continue;
      const before = this.mapped[bar.index] ?? null;
      const now = this.computeMapping(bar);
      if (now === before) continue;
      this.mapped[bar.index] = now;
      this.onBarRemap?.(bar.index, before, now);
    }
  }

  // ---- INTx -----------------------------------------------------------------------------------------------

  /**
   * The device's INTx# request (level). Status bit 3 follows it; the pin is asserted only while COMMAND bit 10
   * (interrupt disable) is clear (PCI §6.2.2, §6.2.3) and no MSI-X enable suppresses it (PCI §6.8).
   */
  setIntx(level: boolean): void {
    this.intxRequest = level;
    const s = this.status;
    this.poke16(PCI_REG.STATUS, level ? s | PCI_STATUS.INTERRUPT : s & ~PCI_STATUS.INTERRUPT);
    this.updateIntx();
  }

  /** While MSI or MSI-X is enabled a function must not use INTx# (PCI §6.8). Called by Msix. */
  setIntxSuppressed(suppressed: boolean): void {
    this.intxSuppressed = suppressed;
    this.updateIntx();
  }

  /** Whether the INTx# pin is asserted now. */
  get intxAssertedNow(): boolean {
    return this.intxAsserted;
  }

  private updateIntx(): void {
    const assert = this.intxRequest && !this.intxDisabled && !this.intxSuppressed;
    if (assert === this.intxAsserted) return;
    this.intxAsserted = assert;
    this.intx?.set(assert);
  }
}
