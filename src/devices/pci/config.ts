/**
 * One PCI function's configuration space: the predefined header (type 0 endpoint or type 1 bridge layout), the
 * capability lists, BARs and INTx state, with the read-only / read-write / RW1C rules of each bit.
 *
 * Section references are to the PCI Local Bus Specification 3.0 ("PCI §x") and the PCI Express Base
 * Specification ("PCIe §x"): PCI §6.1 header layout, §6.2.2 Command, §6.2.3 Status, §6.2.5 BARs, §6.7
 * capability list; PCIe §7.9/7.6.3 extended capabilities (chained from 0x100, reachable only through ECAM).
 *
 * Every bit is stored in a 4 KiB byte array (in the function's shared state, see PciFunction) with two per-byte
 * masks built when the function is defined: `wmask` (the guest may write the bit) and `w1cmask` (the guest
 * clears the bit by writing 1). A guest write of any size at any offset is applied byte by byte through those
 * masks, which is how hardware behaves for a byte-enable pattern: a write never disturbs bytes it does not
 * enable, and read-only bits keep their value. Side effects (BAR decode changes, the INTx line, capability
 * owners' hooks) run after the bytes are stored.
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
import { type DeviceState, DeviceStateError, StateReader } from "../../shared/device-state.ts";
import type { IrqLine } from "../../shared/irq-line.ts";
import { SharedLock } from "../../shared/shared-lock.ts";
import { PciBarError, PciCapabilityError, PciLayoutError, PciStateError } from "./errors.ts";

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
   * first byte (its ID), and [offset, offset + length) is the part of the capability the write covered. Runs
   * without the function's lock held (see PciFunction): take it with `withLock` if the hook needs several
   * reads and writes to be atomic.
   */
  onWrite?: (offset: number, length: number) => void;
  /**
   * Runs before a guest read touching the capability, so the owner can refresh the bytes it returns. Runs
   * without the function's lock held, like onWrite.
   */
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
  /**
   * The function's run-time state, shared by every thread's PciFunction for this function (see the class
   * comment): `PciFunction.STATE_BYTES` bytes at `stateOffset`, from `PciFunction.createState()` or reset with
   * `init`. Absent: the function gets a private state and is usable at once by this thread alone.
   */
  state?: SharedArrayBuffer;
  /** Where the state starts in `state` (a multiple of 8). Default 0. */
  stateOffset?: number;
  /** Reset the state. Exactly one constructor (before the state is shared) passes true; or use createState. */
  init?: boolean;
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && 2 ** Math.round(Math.log2(n)) === n;
}

// Shared state layout (byte offsets from the state's start). Int32 header words first, then the decode
// addresses as Float64 (0: not decoding; address 0 never decodes), then configuration space.
const S_LOCK = 0;
const S_MAGIC = 4;
const S_SEALED = 8; // 1 once the first attach() recorded the layout and copied in the reset image
const S_GEN = 12; // BAR decode generation: +1 whenever any BAR's decode changes
const S_HASH = 16; // LAYOUT_PARTS.length Uint32 layout hashes
const S_FLAGS = 40;
const S_MAPPED = 48; // 8 Float64 slots (6 used)
const S_CFG = 128;
const STATE_BYTES = S_CFG + PCIE_CONFIG_SIZE;
const MAGIC = 0x50434946; // "PCIF"
const PCI_FUNCTION_STATE_KIND = "pci-function";
const PCI_FUNCTION_STATE_VERSION = 1;

const F_INTX_REQUEST = 0x1;
const F_INTX_SUPPRESSED = 0x2;
const F_INTX_ASSERTED = 0x4;

/** What each layout hash covers, for the mismatch message. */
const LAYOUT_PARTS = [
  "name",
  "header and capability contents",
  "writable/RW1C masks",
  "BAR definitions",
  "capability list and hooks",
] as const;

const HEADER_TYPE_MULTI_FUNCTION = 0x80;

/** 32-bit FNV-1a, enough to tell two construction runs apart. */
export class LayoutHash {
  private h = 0x811c9dc5;
  byte(b: number): this {
    this.h = Math.imul(this.h ^ (b & 0xff), 0x01000193) >>> 0;
    return this;
  }
  bytes(a: Uint8Array): this {
    for (let i = 0; i < a.length; i++) this.byte(a[i] as number);
    return this;
  }
  u32(v: number): this {
    for (let i = 0; i < 4; i++) this.byte(v >>> (8 * i));
    return this;
  }
  /** Any safe integer (BAR sizes go past 32 bits). */
  num(v: number): this {
    return this.u32(v % 0x1_0000_0000).u32(Math.floor(v / 0x1_0000_0000));
  }
  str(s: string): this {
    this.u32(s.length);
    for (let i = 0; i < s.length; i++) this.byte(s.charCodeAt(i)).byte(s.charCodeAt(i) >>> 8);
    return this;
  }
  get value(): number {
    return this.h;
  }
}

/** Resets a function state at `base`: lock free, no layout recorded, nothing decoding, config space zero. */
function resetFunctionState(state: SharedArrayBuffer, base: number): void {
  new Uint8Array(state, base, STATE_BYTES).fill(0);
  SharedLock.init(state, base + S_LOCK);
  // The magic goes last: an attaching thread that sees it sees the rest.
  Atomics.store(new Int32Array(state, base, S_CFG / 4), S_MAGIC / 4, MAGIC);
}

/**
 * One PCI function.
 *
 * Threads. Each vCPU thread (and any device I/O thread) builds its own PciFunction for the same guest function:
 * the *static description* (IDs, BAR definitions, capability layout and masks, hooks, callbacks) is built by
 * code in every thread identically from the same inputs, while the *run-time state* (the configuration space
 * bytes, where each BAR decodes and the decode generation, the INTx request/suppression/pin level) lives in a
 * SharedArrayBuffer given as `state`, guarded by a SharedLock kept in it. So:
 *
 * 1. Every thread constructs the function with the same `state` (one of them with `init: true`, or the state
 *    from `PciFunction.createState()`), then runs the same `defineBar` / `addCapability` / `new Msix` calls.
 *    Until `attach()` these only build the thread's description; guest and device access throws.
 * 2. Every thread calls `attach()` (or `PciBus.attach()`). The first attach, in any thread, copies the reset
 *    image into the shared configuration space and records the layout's hashes; every later one checks its own
 *    layout against them and throws PciLayoutError, naming what differs, if the thread built something else.
 *    After attach the layout is fixed: `defineBar` and `addCapability` throw.
 * 3. Every public method then runs under the lock; a configuration access takes it once, whatever its size.
 *    The lock is a leaf, so device models may call into the function (`setIntx`, `Msix.notify`, ...) while
 *    holding their own locks: the callbacks run with it held (`intx.set`, `onBarRemap`, MSI-X `sink.signal`
 *    and `onRouteChange`, in the thread that caused them) must not take device locks or call into another
 *    thread's objects. Capability hooks run outside it (`onRead` before the read's lock, `onWrite` after the
 *    write's), so they may take their owner's locks and call back into the function. The lock is re-entrant
 *    for this object in this thread (`withLock`), for device models that want to group calls.
 *
 * Without `state` the function has a private state and is attached from the start; it can then still be built
 * further at any time (for a single-threaded user, such as the unit tests).
 *
 * BAR decode changes are seen by all threads through the shared state, but `onBarRemap` fires only in the thread
 * that handled the guest's write. Other threads call `syncBars()` (or `PciBus.syncBars()`), which costs one
 * Atomics.load while nothing changed, to bring their own buses up to date; see `syncBars`.
 */
export class PciFunction {
  /** Bytes of shared state a function needs (configuration space plus a header). */
  static readonly STATE_BYTES = STATE_BYTES;

  readonly name: string;
  /** The INTx# line; the pin is asserted only while COMMAND.INTX_DISABLE is clear. */
  intx: IrqLine | undefined;
  /** Whether the state was given (shared between threads) rather than private to this object. */
  readonly shared: boolean;

  // Static description: built identically by every thread, never shared.
  /** The reset image of configuration space, as construction left it. */
  private readonly image = new Uint8Array(PCIE_CONFIG_SIZE);
  private readonly imageView = new DataView(this.image.buffer);
  private readonly wmask = new Uint8Array(PCIE_CONFIG_SIZE);
  private readonly w1cmask = new Uint8Array(PCIE_CONFIG_SIZE);
  private readonly barCount: number;
  private readonly bars: Array<BarInfo | undefined>;
  /** The second dword of a 64-bit BAR points back at the BAR it belongs to. */
  private readonly barUpperOf: Array<number | undefined>;
  private readonly caps: CapRegion[] = [];
  private nextCap = CAP_START;
  private nextExtCap = EXT_CAP_START;

  // Shared run-time state.
  private readonly lock: SharedLock;
  private readonly words: Int32Array;
  private readonly header: DataView;
  private readonly cfg: Uint8Array;
  private readonly cfgView: DataView;

  // This thread's view.
  private isAttached = false;
  private remap: BarRemapHandler | undefined;
  /** Where this object's onBarRemap handler was last told each BAR decodes. */
  private readonly applied: Array<number | null>;
  /** The decode generation `applied` reflects; -1: catch up on the next sync. */
  private appliedGen = -1;
  /** The bus-wide decode generation (PciBus), bumped with ours. */
  private busGeneration: { words: Int32Array; index: number } | undefined;

  /** A fresh function state to hand to every thread's PciFunction for one function. */
  static createState(): SharedArrayBuffer {
    const state = new SharedArrayBuffer(STATE_BYTES);
    resetFunctionState(state, 0);
    return state;
  }

  /** Resets a function state embedded in a larger buffer at `byteOffset` (see PciBus). */
  static initState(state: SharedArrayBuffer, byteOffset = 0): void {
    checkStateBuffer("PciFunction", state, byteOffset, STATE_BYTES);
    resetFunctionState(state, byteOffset);
  }

  constructor(name: string, options: PciFunctionOptions) {
    this.name = name;
    const headerType = options.headerType ?? 0;
    this.barCount = headerType === 0 ? 6 : 2;
    this.bars = new Array(this.barCount).fill(undefined);
    this.barUpperOf = new Array(this.barCount).fill(undefined);
    this.applied = new Array(this.barCount).fill(null);
    this.intx = options.intx;

    this.shared = options.state !== undefined;
    const state = options.state ?? new SharedArrayBuffer(STATE_BYTES);
    const base = options.stateOffset ?? 0;
    checkStateBuffer(`PciFunction ${name}`, state, base, STATE_BYTES);
    if (options.init || !this.shared) resetFunctionState(state, base);
    this.words = new Int32Array(state, base, S_CFG / 4);
    if (Atomics.load(this.words, S_MAGIC / 4) !== MAGIC) {
      throw new PciStateError(
        `PciFunction ${name}: state is not initialised (use PciFunction.createState() or init: true)`,
      );
    }
    this.lock = new SharedLock(state, base + S_LOCK);
    this.header = new DataView(state, base, S_CFG);
    this.cfg = new Uint8Array(state, base + S_CFG, PCIE_CONFIG_SIZE);
    this.cfgView = new DataView(state, base + S_CFG, PCIE_CONFIG_SIZE);

    const v = this.imageView;
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
    // A private state has no other user: attach now, and keep accepting construction calls afterwards.
    if (!this.shared) this.attach();
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
    this.image[PCI_REG.PREF_MEMORY_BASE] = 0x01;
    this.image[PCI_REG.PREF_MEMORY_LIMIT] = 0x01;
    this.setMask(w, PCI_REG.PREF_BASE_UPPER32, 4, 0xffffffff);
    this.setMask(w, PCI_REG.PREF_LIMIT_UPPER32, 4, 0xffffffff);
    // Bridge control: parity error response, SERR#, ISA, VGA, VGA 16-bit decode, master abort mode, secondary
    // bus reset. Fast back-to-back and the discard timers are hardwired to 0.
    this.setMask(w, PCI_REG.BRIDGE_CONTROL, 2, 0x007f);
  }

  private setMask(mask: Uint8Array, offset: number, size: number, value: number): void {
    for (let i = 0; i < size; i++) mask[offset + i] = (value >>> (8 * i)) & 0xff;
  }

  // ---- shared state: attach, lock ----------------------------------------------------------------------

  /** Whether this object is attached to its state (see the class comment); private states always are. */
  get attached(): boolean {
    return this.isAttached;
  }

  /**
   * Ends construction and attaches this thread's function to the shared state. The first attach (in any
   * thread) copies the reset image into the state and records the layout; later ones check that this thread
   * built the same layout and throw PciLayoutError if not. Idempotent; returns `this`.
   */
  attach(): this {
    if (this.isAttached) return this;
    const hashes = this.layoutHashes();
    const took = this.enter();
    try {
      const w = this.words;
      if (Atomics.load(w, S_SEALED / 4) === 0) {
        this.cfg.set(this.image);
        for (let i = 0; i < hashes.length; i++) w[S_HASH / 4 + i] = hashes[i] as number;
        Atomics.store(w, S_SEALED / 4, 1);
      } else {
        const differ: string[] = [];
        for (let i = 0; i < hashes.length; i++) {
          if (w[S_HASH / 4 + i] !== hashes[i]) differ.push(LAYOUT_PARTS[i] as string);
        }
        if (differ.length > 0) {
          const recorded = this.recordedLayoutHash();
          throw new PciLayoutError(
            `PciFunction ${this.name}: this thread built a different layout from the one recorded in the shared ` +
              `state (${listParts(differ)}; state ${hex(recorded)}, built here ${hex(combine(hashes))}). ` +
              "Every thread must build each function with the same construction code and inputs, and pass " +
              "each function its own state.",
          );
        }
      }
    } finally {
      this.exit(took);
    }
    this.isAttached = true;
    return this;
  }

  /** The layout as this thread has built it so far: one hash over the parts `attach` compares. */
  get layoutHash(): number {
    return combine(this.layoutHashes());
  }

  /** The layout recorded in the shared state by the first attach, or null if none has happened yet. */
  get recordedLayout(): number | null {
    if (Atomics.load(this.words, S_SEALED / 4) === 0) return null;
    return this.recordedLayoutHash();
  }

  private recordedLayoutHash(): number {
    const parts: number[] = [];
    for (let i = 0; i < LAYOUT_PARTS.length; i++) parts.push(this.words[S_HASH / 4 + i] as number);
    return combine(parts);
  }

  private layoutHashes(): number[] {
    const img = new LayoutHash();
    for (let o = 0; o < PCIE_CONFIG_SIZE; o++) {
      // Function 0's multi-function bit follows the other functions PciBus adds, not the construction.
      const b = this.image[o] as number;
      img.byte(o === PCI_REG.HEADER_TYPE ? b & ~HEADER_TYPE_MULTI_FUNCTION : b);
    }
    const bars = new LayoutHash().u32(this.barCount);
    for (let i = 0; i < this.barCount; i++) {
      const bar = this.bars[i];
      const upper = this.barUpperOf[i];
      if (bar !== undefined) {
        bars
          .byte(1)
          .str(bar.kind)
          .num(bar.size)
          .byte(bar.prefetchable ? 1 : 0);
      } else if (upper !== undefined) {
        bars.byte(2).u32(upper);
      } else {
        bars.byte(0);
      }
    }
    const caps = new LayoutHash().u32(this.caps.length);
    for (const c of this.caps) {
      caps
        .u32(c.id)
        .u32(c.offset)
        .u32(c.length)
        .byte(c.extended ? 1 : 0);
      caps.byte(c.onRead !== undefined ? 1 : 0).byte(c.onWrite !== undefined ? 1 : 0);
    }
    return [
      new LayoutHash().str(this.name).value,
      img.value,
      new LayoutHash().bytes(this.wmask).bytes(this.w1cmask).value,
      bars.value,
      caps.value,
    ].map((h) => h | 0);
  }

  /**
   * Runs `fn` holding the function's lock: for device models that keep their own state next to the function's
   * and want one lock for both (Msix does). Re-entrant for this object in this thread.
   */
  withLock<T>(fn: () => T): T {
    const took = this.enter();
    try {
      return fn();
    } finally {
      this.exit(took);
    }
  }

  // ---- snapshots ----------------------------------------------------------------------------------------

  /**
   * The function's run-time state, for a snapshot: configuration space (so every BAR's address and the COMMAND
   * bits that make it decode), the INTx request and suppression, and the layout hash, which the restoring
   * function must share (the same device built the same way). Where BARs decode is derived, not saved.
   */
  saveState(): DeviceState {
    if (!this.isAttached) this.requireAttached("saveState");
    return this.withLock(() => {
      const f = Atomics.load(this.words, S_FLAGS / 4);
      return {
        kind: PCI_FUNCTION_STATE_KIND,
        version: PCI_FUNCTION_STATE_VERSION,
        data: {
          layout: this.layoutHash,
          config: this.cfg.slice(),
          intxRequest: (f & F_INTX_REQUEST) !== 0,
          intxSuppressed: (f & F_INTX_SUPPRESSED) !== 0,
        },
      };
    });
  }

  /**
   * Restores a saved state into this (attached) function. Nothing is trusted: the layout must be this function's,
   * and every bit the guest cannot write (read-only IDs, BAR type bits, capability contents and links) must hold
   * the value this function has by construction, as only the guest's writes and the device's own status bits
   * can have changed since reset. Then the BARs' decode is recomputed (onBarRemap fires for each that decodes),
   * and INTx# is driven as the restored request says.
   */
  restoreState(s: DeviceState): void {
    this.prepareRestore(s)();
  }

  /**
   * restoreState in two steps: checks `s` now (throwing DeviceStateError) and returns what applies it, which
   * cannot fail; for a composite device that checks all its parts before it changes any.
   */
  prepareRestore(s: DeviceState): () => void {
    if (!this.isAttached) this.requireAttached("restoreState");
    const r = StateReader.open(
      `PciFunction ${this.name}`,
      s,
      PCI_FUNCTION_STATE_KIND,
      PCI_FUNCTION_STATE_VERSION,
    );
    const layout = r.int("layout", 0, 0xffff_ffff);
    if (layout !== this.layoutHash) {
      throw new DeviceStateError(
        `PciFunction ${this.name}: saved state is of another layout (${hex(layout)}; this function ${hex(this.layoutHash)}): ` +
          "not the same device, or a device built with other options",
      );
    }
    const config = r.bytes("config", PCIE_CONFIG_SIZE);
    const intxRequest = r.bool("intxRequest");
    const intxSuppressed = r.bool("intxSuppressed");
    for (let o = 0; o < PCIE_CONFIG_SIZE; o++) {
      let free = (this.wmask[o] as number) | (this.w1cmask[o] as number);
      // Bits the function itself changes: the interrupt status (PCI §6.2.3) and the multi-function bit PciBus sets.
      if (o === PCI_REG.STATUS) free |= PCI_STATUS.INTERRUPT;
      if (o === PCI_REG.HEADER_TYPE) free |= HEADER_TYPE_MULTI_FUNCTION;
      if (((config[o] as number) ^ (this.image[o] as number)) & ~free) {
        throw new DeviceStateError(
          `PciFunction ${this.name}: saved configuration byte ${hex(o)} is ${hex(config[o] as number)}, ` +
            `but its read-only bits are ${hex((this.image[o] as number) & ~free)} on this device`,
        );
      }
    }
    return () => {
      const took = this.enter();
      try {
        this.cfg.set(config);
        const w = this.words;
        const f = (w[S_FLAGS / 4] as number) & ~(F_INTX_REQUEST | F_INTX_SUPPRESSED);
        Atomics.store(
          w,
          S_FLAGS / 4,
          f | (intxRequest ? F_INTX_REQUEST : 0) | (intxSuppressed ? F_INTX_SUPPRESSED : 0),
        );
        this.updateMappings();
        this.reconcileBars();
        this.updateIntx();
      } finally {
        this.exit(took);
      }
    };
  }

  /** Takes the lock unless this object already holds it; returns whether it did (pass that to exit). */
  private enter(): boolean {
    if (this.lock.isHeld) return false;
    this.lock.lock();
    return true;
  }

  private exit(took: boolean): void {
    if (took) this.lock.unlock();
  }

  private requireAttached(what: string): void {
    if (!this.isAttached) {
      throw new PciStateError(
        `PciFunction ${this.name}: ${what} before attach() (the function is being built)`,
      );
    }
  }

  /** Construction calls: allowed until a shared function is attached. */
  private requireBuilding(what: string): void {
    if (this.shared && this.isAttached) {
      throw new PciStateError(
        `PciFunction ${this.name}: ${what} after attach(): the layout is fixed once the function is attached ` +
          "to shared state (build it completely in every thread, then attach)",
      );
    }
  }

  /** Construction writes go to the reset image, and also to the live space of an attached private function. */
  private build8(offset: number, value: number): void {
    this.image[offset] = value;
    if (this.isAttached) this.cfg[offset] = value;
  }
  private build32(offset: number, value: number): void {
    this.imageView.setUint32(offset, value >>> 0, true);
    if (this.isAttached) this.cfgView.setUint32(offset, value >>> 0, true);
  }
  private buildBytes(offset: number, bytes: Uint8Array): void {
    this.image.set(bytes, offset);
    if (this.isAttached) this.cfg.set(bytes, offset);
  }
  private buildUpdate32(offset: number, f: (old: number) => number): void {
    this.imageView.setUint32(offset, f(this.imageView.getUint32(offset, true)) >>> 0, true);
    if (this.isAttached) this.cfgView.setUint32(offset, f(this.cfgView.getUint32(offset, true)) >>> 0, true);
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

  /**
   * Header type bit 7: the device has functions other than 0 (PCI §6.2.1). Set by PciBus, also after attach
   * (every thread's bus sets the same value).
   */
  setMultiFunction(on: boolean): void {
    const set = (h: number) => (on ? h | HEADER_TYPE_MULTI_FUNCTION : h & ~HEADER_TYPE_MULTI_FUNCTION);
    this.image[PCI_REG.HEADER_TYPE] = set(this.image[PCI_REG.HEADER_TYPE] as number);
    if (!this.isAttached) return;
    const took = this.enter();
    try {
      this.cfg[PCI_REG.HEADER_TYPE] = set(this.cfg[PCI_REG.HEADER_TYPE] as number);
    } finally {
      this.exit(took);
    }
  }

  // ---- guest access ---------------------------------------------------------------------------------------

  /**
   * A configuration read of `data.length` bytes at `offset` (any size, any alignment). Bytes past the 4 KiB
   * space read as 0xff.
   */
  readConfig(offset: number, data: Uint8Array): void {
    if (!this.isAttached) this.requireAttached("readConfig");
    const end = Math.min(offset + data.length, PCIE_CONFIG_SIZE);
    // Before taking the lock, so hooks may take their owner's locks (the function's lock is a leaf).
    if (offset < end) this.runCapHooks(offset, end, "read");
    const took = this.enter();
    try {
      const cfg = this.cfg;
      for (let i = 0; i < data.length; i++) {
        const o = offset + i;
        data[i] = o < PCIE_CONFIG_SIZE ? (cfg[o] as number) : 0xff;
      }
    } finally {
      this.exit(took);
    }
  }

  /** A configuration write of `data` at `offset`: each byte goes through the RW and RW1C masks. */
  writeConfig(offset: number, data: Uint8Array): void {
    if (!this.isAttached) this.requireAttached("writeConfig");
    const end = Math.min(offset + data.length, PCIE_CONFIG_SIZE);
    if (offset >= end) return;
    const took = this.enter();
    try {
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
        this.reconcileBars();
      }
    } finally {
      this.exit(took);
    }
    // After releasing the lock, so hooks may take their owner's locks (the function's lock is a leaf).
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
  // Before attach these read and write the reset image (construction); afterwards the shared space, locked.

  peek8(offset: number): number {
    if (!this.isAttached) return this.imageView.getUint8(offset);
    const took = this.enter();
    try {
      return this.cfgView.getUint8(offset);
    } finally {
      this.exit(took);
    }
  }
  peek16(offset: number): number {
    if (!this.isAttached) return this.imageView.getUint16(offset, true);
    const took = this.enter();
    try {
      return this.cfgView.getUint16(offset, true);
    } finally {
      this.exit(took);
    }
  }
  peek32(offset: number): number {
    if (!this.isAttached) return this.imageView.getUint32(offset, true);
    const took = this.enter();
    try {
      return this.cfgView.getUint32(offset, true);
    } finally {
      this.exit(took);
    }
  }
  poke8(offset: number, value: number): void {
    this.poke(offset, 1, value);
  }
  poke16(offset: number, value: number): void {
    this.poke(offset, 2, value);
  }
  poke32(offset: number, value: number): void {
    this.poke(offset, 4, value);
  }

  private poke(offset: number, size: 1 | 2 | 4, value: number): void {
    const write = (v: DataView) => {
      if (size === 1) v.setUint8(offset, value & 0xff);
      else if (size === 2) v.setUint16(offset, value & 0xffff, true);
      else v.setUint32(offset, value >>> 0, true);
    };
    if (!this.isAttached) {
      write(this.imageView);
      return;
    }
    const took = this.enter();
    try {
      write(this.cfgView);
    } finally {
      this.exit(took);
    }
  }

  /** Sets RW1C status bits from the device side (e.g. RECEIVED_MASTER_ABORT after a failed DMA). */
  raiseStatus(bits: number): void {
    if (!this.isAttached) this.requireAttached("raiseStatus");
    const took = this.enter();
    try {
      const v = this.cfgView;
      v.setUint16(PCI_REG.STATUS, v.getUint16(PCI_REG.STATUS, true) | (bits & STATUS_W1C), true);
    } finally {
      this.exit(took);
    }
  }

  // ---- capabilities ---------------------------------------------------------------------------------------

  /**
   * Appends a capability to the list at 0x34 (PCI §6.7) and returns the offset of its first byte. `body` is
   * what follows the ID and next-pointer bytes; the capability occupies 2 + body.length bytes, dword aligned.
   * ID and next pointer are read-only; the rest is read-only unless `writableMask` / `w1cMask` say otherwise.
   * A vendor-specific capability (ID 0x09) carries its own length in body[0] (PCI §6.7, "Capability Length").
   */
  addCapability(id: number, body: Uint8Array, options: CapabilityOptions = {}): number {
    this.requireBuilding("addCapability");
    const length = 2 + body.length;
    const offset = this.nextCap;
    if (offset + length > PCI_CONFIG_SIZE) {
      throw new PciCapabilityError(
        `${this.name}: capability ${hex(id)} (${length} bytes) does not fit at ${hex(offset)} in the 256-byte space`,
      );
    }
    if (id < 0 || id > 0xff) throw new PciCapabilityError(`${this.name}: bad capability ID ${id}`);
    this.checkMasks(body, options);
    this.build8(offset, id);
    this.build8(offset + 1, 0); // end of list until another capability follows
    this.buildBytes(offset + 2, body);
    if (options.writableMask) this.wmask.set(options.writableMask, offset + 2);
    if (options.w1cMask) this.w1cmask.set(options.w1cMask, offset + 2);

    const standard = this.caps.filter((c) => !c.extended);
    const last = standard[standard.length - 1];
    if (last === undefined) {
      this.build8(PCI_REG.CAPABILITIES_POINTER, offset);
      // STATUS is dword 0x04's upper half.
      this.buildUpdate32(PCI_REG.COMMAND, (d) => d | (PCI_STATUS.CAPABILITIES_LIST << 16));
    } else {
      this.build8(last.offset + 1, offset);
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
    this.requireBuilding("addExtendedCapability");
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
    this.build32(offset, id | (version << 16));
    this.buildBytes(offset + 4, body);
    if (options.writableMask) this.wmask.set(options.writableMask, offset + 4);
    if (options.w1cMask) this.w1cmask.set(options.w1cMask, offset + 4);
    const extended = this.caps.filter((c) => c.extended);
    const last = extended[extended.length - 1];
    if (last !== undefined) {
      this.buildUpdate32(last.offset, (d) => (d & 0xfffff) | (offset << 20));
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
    this.requireBuilding("defineBar");
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
      this.build32(off, 0x1);
      this.setMask(this.wmask, off, 4, ~(size - 1) & 0xfffc);
    } else {
      // Bit 0 = 0 (memory), bits 2:1 = type (00: 32-bit, 10: 64-bit), bit 3 = prefetchable.
      const low = (kind === "mmio64" ? 0x4 : 0) | (def.prefetchable ? 0x8 : 0);
      this.build32(off, low);
      this.setMask(this.wmask, off, 4, size >= TWO32 ? 0 : ~(size - 1) & 0xfffffff0);
      if (kind === "mmio64") {
        this.build32(off + 4, 0);
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
    if (this.bars[index] === undefined) return null;
    if (!this.isAttached) return this.barAddressIn(this.imageView, index);
    const took = this.enter();
    try {
      return this.barAddressIn(this.cfgView, index);
    } finally {
      this.exit(took);
    }
  }

  private barAddressIn(view: DataView, index: number): number | null {
    const bar = this.bars[index];
    if (bar === undefined) return null;
    const off = PCI_REG.BAR0 + 4 * index;
    const lo = view.getUint32(off, true);
    if (bar.kind === "io") return lo & 0xfffc;
    const base = (lo & 0xfffffff0) >>> 0;
    return bar.kind === "mmio64" ? base + view.getUint32(off + 4, true) * TWO32 : base;
  }

  /**
   * Where BAR `index` decodes now (see the emulation choices above), or null. This is the machine-wide decode
   * in the shared state, which this thread's buses may not reflect yet (see `syncBars`).
   */
  barMapping(index: number): number | null {
    if (index < 0 || index >= this.barCount || !this.isAttached) return null;
    const took = this.enter();
    try {
      return this.mappedAt(index);
    } finally {
      this.exit(took);
    }
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
    if (!this.isAttached) this.requireAttached("setBarAddress");
    const off = PCI_REG.BAR0 + 4 * index;
    const took = this.enter();
    try {
      if (bar.kind === "mmio64") this.configWrite(off + 4, 4, Math.floor(address / TWO32));
      this.configWrite(off, 4, address % TWO32);
    } finally {
      this.exit(took);
    }
  }

  /**
   * Fires when a BAR's decode changes; see BarRemapHandler. It fires in the thread that changed the decode
   * (the one that handled the guest's write) and, in every other thread, from `syncBars`. `oldAddr` is where
   * this object's handler was last told the BAR decodes, so each handler sees a consistent sequence for its own
   * buses. Setting a handler makes the function's next `syncBars()` catch it up with what already decodes
   * (`connectBars` calls it at once; `PciBus.syncBars` only looks again after the next decode change).
   */
  get onBarRemap(): BarRemapHandler | undefined {
    return this.remap;
  }
  set onBarRemap(handler: BarRemapHandler | undefined) {
    this.remap = handler;
    this.appliedGen = -1;
  }

  /** The decode generation: incremented (in the shared state) whenever any BAR's decode changes. */
  get barGeneration(): number {
    return Atomics.load(this.words, S_GEN / 4);
  }

  /**
   * Brings this thread's `onBarRemap` handler (and so, with `connectBars`, this thread's buses) up to date with
   * the decode in the shared state, after another thread handled the guest's BAR or COMMAND write. Returns
   * whether it found a change to apply. While nothing changed (and before any handler is set) it costs one
   * Atomics.load.
   *
   * Where the integrator calls it (each vCPU thread, for its own buses; `PciBus.syncBars` does every function
   * on the bus with a single load): before dispatching each MMIO or port-I/O exit to its buses, so no access
   * reaches a BAR at a place it has left or misses one at a place it has moved to. At the very least call it when
   * an exit hits an address no device on the thread's bus claims, and dispatch again if it returned true;
   * that alone finds moved BARs but lets a stale one keep answering at its old address.
   */
  syncBars(): boolean {
    if (Atomics.load(this.words, S_GEN / 4) === this.appliedGen || this.remap === undefined) return false;
    if (!this.isAttached) this.requireAttached("syncBars");
    const took = this.enter();
    try {
      return this.reconcileBars();
    } finally {
      this.exit(took);
    }
  }

  /** Called by PciBus: decode changes also bump the bus-wide generation at `words[index]`. */
  setBusGeneration(words: Int32Array | undefined, index = 0): void {
    this.busGeneration = words === undefined ? undefined : { words, index };
  }

  private mappedAt(index: number): number | null {
    const v = this.header.getFloat64(S_MAPPED + 8 * index, true);
    return v === 0 ? null : v;
  }

  private computeMapping(bar: BarInfo): number | null {
    const isIo = bar.kind === "io";
    const command = this.cfgView.getUint16(PCI_REG.COMMAND, true);
    if (!(command & (isIo ? PCI_COMMAND.IO : PCI_COMMAND.MEMORY))) return null;
    const addr = this.barAddressIn(this.cfgView, bar.index);
    if (addr === null || addr === 0) return null;
    const limit = isIo ? IO_LIMIT : bar.kind === "mmio32" ? TWO32 : MMIO64_LIMIT;
    if (addr + bar.size > limit) return null;
    const lowAddrMask = isIo ? 0xfffc : 0xfffffff0;
    const low = this.cfgView.getUint32(PCI_REG.BAR0 + 4 * bar.index, true);
    const lowWritable = low & lowAddrMask & this.maskAt(bar.index);
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

  /** Recomputes every BAR's decode into the shared state (lock held); bumps the generations on a change. */
  private updateMappings(): void {
    let changed = false;
    for (const bar of this.bars) {
      if (bar === undefined) continue;
      const now = this.computeMapping(bar);
      if (now === this.mappedAt(bar.index)) continue;
      this.header.setFloat64(S_MAPPED + 8 * bar.index, now ?? 0, true);
      changed = true;
    }
    if (!changed) return;
    Atomics.add(this.words, S_GEN / 4, 1);
    const bus = this.busGeneration;
    if (bus !== undefined) Atomics.add(bus.words, bus.index, 1);
  }

  /** Tells this object's handler about every BAR whose decode differs from what it was last told (lock held). */
  private reconcileBars(): boolean {
    const handler = this.remap;
    if (handler === undefined) return false;
    this.appliedGen = Atomics.load(this.words, S_GEN / 4);
    let any = false;
    for (const bar of this.bars) {
      if (bar === undefined) continue;
      const before = this.applied[bar.index] ?? null;
      const now = this.mappedAt(bar.index);
      if (now === before) continue;
      this.applied[bar.index] = now;
      any = true;
      handler(bar.index, before, now);
    }
    return any;
  }

  // ---- INTx -----------------------------------------------------------------------------------------------

  /**
   * The device's INTx# request (level). Status bit 3 follows it; the pin is asserted only while COMMAND bit 10
   * (interrupt disable) is clear (PCI §6.2.2, §6.2.3) and no MSI-X enable suppresses it (PCI §6.8).
   */
  setIntx(level: boolean): void {
    if (!this.isAttached) this.requireAttached("setIntx");
    const took = this.enter();
    try {
      this.setFlag(F_INTX_REQUEST, level);
      const v = this.cfgView;
      const s = v.getUint16(PCI_REG.STATUS, true);
      v.setUint16(PCI_REG.STATUS, level ? s | PCI_STATUS.INTERRUPT : s & ~PCI_STATUS.INTERRUPT, true);
      this.updateIntx();
    } finally {
      this.exit(took);
    }
  }

  /** While MSI or MSI-X is enabled a function must not use INTx# (PCI §6.8). Called by Msix. */
  setIntxSuppressed(suppressed: boolean): void {
    if (!this.isAttached) this.requireAttached("setIntxSuppressed");
    const took = this.enter();
    try {
      this.setFlag(F_INTX_SUPPRESSED, suppressed);
      this.updateIntx();
    } finally {
      this.exit(took);
    }
  }

  /** Whether the INTx# pin is asserted now. */
  get intxAssertedNow(): boolean {
    if (!this.isAttached) return false;
    return (Atomics.load(this.words, S_FLAGS / 4) & F_INTX_ASSERTED) !== 0;
  }

  private setFlag(flag: number, on: boolean): void {
    const w = this.words;
    const f = w[S_FLAGS / 4] as number;
    Atomics.store(w, S_FLAGS / 4, on ? f | flag : f & ~flag);
  }

  /** Drives the pin if its level changed (lock held): one transition machine-wide, in the thread causing it. */
  private updateIntx(): void {
    const f = this.words[S_FLAGS / 4] as number;
    const disabled = (this.cfgView.getUint16(PCI_REG.COMMAND, true) & PCI_COMMAND.INTX_DISABLE) !== 0;
    const assert = (f & F_INTX_REQUEST) !== 0 && !disabled && (f & F_INTX_SUPPRESSED) === 0;
    if (assert === ((f & F_INTX_ASSERTED) !== 0)) return;
    this.setFlag(F_INTX_ASSERTED, assert);
    this.intx?.set(assert);
  }
}

/** "a differs", "a and b differ", "a, b and c differ". */
function listParts(parts: readonly string[]): string {
  if (parts.length === 1) return `${parts[0]} differs`;
  return `${parts.slice(0, -1).join(", ")} and ${parts[parts.length - 1]} differ`;
}

/** One hash over a layout's part hashes. */
function combine(parts: readonly number[]): number {
  const h = new LayoutHash();
  for (const p of parts) h.u32(p);
  return h.value;
}

/** Checks that `state` can hold `bytes` of shared state at `byteOffset`. */
export function checkStateBuffer(what: string, state: unknown, byteOffset: number, bytes: number): void {
  if (!(state instanceof SharedArrayBuffer)) {
    throw new PciStateError(`${what}: state must be a SharedArrayBuffer (it is shared between threads)`);
  }
  if (!Number.isInteger(byteOffset) || byteOffset < 0 || byteOffset % 8 !== 0) {
    throw new PciStateError(`${what}: state offset ${byteOffset} is not a non-negative multiple of 8`);
  }
  if (byteOffset + bytes > state.byteLength) {
    throw new PciStateError(
      `${what}: state has ${state.byteLength} bytes, needs ${bytes}${byteOffset ? ` at offset ${byteOffset}` : ""}`,
    );
  }
}
