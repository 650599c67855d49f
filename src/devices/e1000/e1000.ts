/**
 * Intel 82540EM Gigabit Ethernet controller ("e1000"), transport-independent: the 128 KiB register space of BAR0
 * (`read`/`write`, also as `mmioRead`/`mmioWrite`) and the IOADDR/IODATA window of the I/O BAR (`io`). The PCI
 * function around it (IDs, BARs, INTA#) is E1000Pci (pci.ts).
 *
 * Section references ("SDM §x") are to Intel's "PCI/PCI-X Family of Gigabit Ethernet Controllers Software
 * Developer's Manual" (8254x): §3.2 receive, §3.3 transmit descriptors, §3.4 transmit interrupt delays, §3.5
 * TCP segmentation, §5 EEPROM, §13 registers.
 *
 * Threads. Every vCPU thread serves its own MMIO/PIO exits, and the NIC's I/O thread owns the network backend
 * (it receives frames and runs the timers), so one device is served by several E1000 objects, one per thread,
 * over one state. ALL mutable device state lives in the SharedArrayBuffer from `E1000.createState({ mac })`: the
 * register file, the EEPROM image and its Microwire interface, the PHY registers, the statistics counters, the
 * transmit contexts and the partly assembled transmit packet, the timers' deadlines, the link, the interrupt
 * state, IOADDR and the guest error counts. Each thread builds `new E1000({ state, mem, backend, irq, ... })`
 * over it (exactly one of them, the creating thread, with `init: true`), with its own GuestMemory view, backend
 * and interrupt line. One SharedLock in the state serializes register accesses, `receive` (the backend's receiver
 * callback), `poll()` and the other entry points, so two E1000 objects over one state behave as one device.
 * The lock is re-entrant for one object in one thread: a backend that calls the receiver from inside `send`
 * (an in-process pair answering at once) works as it did with one object.
 *
 * What runs where, and with the lock held:
 * - `irq.set` and `backend.send` are called with the lock held, on the thread that caused them (transmit starts
 *   in the TDT write, on whatever vCPU thread did it, through that thread's backend, and continues in `poll()` on
 *   the I/O thread, through its backend). They must not wait for another thread that may be waiting for this
 *   device.
 * - `backend.rxReady()` (RDT write, RCTL.EN set) and `onDeadlineChanged` are called after the lock is released,
 *   on the thread that made the access. On a vCPU thread the backend is expected to be a proxy that wakes the
 *   I/O thread, which then offers the frames it kept to its own object's receiver.
 * - The "logged once" sets (unknown register offsets, error kinds) and the metrics counters are per object.
 *
 * Emulation choices:
 * - The link is a 1000 Mb/s full-duplex copper link to a partner that always autonegotiates; `setLinkUp` pulls
 *   the cable. STATUS.LU follows that state regardless of CTRL.SLU (the driver sets SLU anyway).
 * - Transmit starts inside the guest's TDT write (or TCTL.EN) and runs in slices: one entry point does at most
 *   E1000_TX_SLICE of work (descriptors, bytes read, frames with TSO segments counted), then leaves TDH where it
 *   stopped and sets the "transmit pending" deadline (T_TX_PENDING) to now, so a hostile ring (every descriptor
 *   maximal, or TSO with a tiny MSS) costs one exit a bounded time and still gets every frame sent, in order,
 *   exactly once. Who continues it, in each configuration the model runs in:
 *   - vireo (`--net ...,model=e1000`): the vCPU thread's object has `onDeadlineChanged` = wake the NIC's I/O
 *     thread (src/vmm/pci-devices.ts e1000For); that thread (src/io-thread/io-thread.ts e1000Plane) sleeps
 *     until `nextDeadline()`, which is now, and calls `poll()`, one slice each, the lock free in between, until
 *     the ring is empty. Its own register-side object never needs the callback: it recomputes the deadline.
 *   - Without an I/O thread (the unit tests, NICs wired by an in-process pair of src/net/pair.ts) nothing calls
 *     `poll()` by itself: the integrator must, while `nextDeadline() <= now()` (or pass an `onDeadlineChanged`
 *     that schedules it). Every register access and every received frame also runs `poll()`'s work first, so a
 *     driver that touches the device keeps the ring moving even then.
 *   There is no wire, so collisions, FCS insertion (IFCS) and inter-packet gaps have no effect; frames go to the
 *   backend without FCS. TCTL.PSP pads short frames to 60 bytes. A packet whose descriptors span several TDT
 *   writes, or a TSO packet whose segments span several slices, is kept in the shared state, so the writes and
 *   slices may run on different threads.
 * - Receive runs when the backend offers a frame. A frame that cannot be stored now (no free descriptors) is
 *   refused, so the backend keeps it and offers it again on the next RDT write: nothing is lost while the
 *   backend's queue has room. RXO is raised and MPC/RNBC count every refused offer. Short frames are padded to
 *   60 bytes as the wire would have. Unless RCTL.SECRC is set the FCS is appended (computed), as the Linux driver
 *   expects 4 CRC bytes at the end of every buffer chain.
 * - ICR is cleared by any read (SDM §13.4.17: "All register bits are cleared upon read"; the IMS-dependent
 *   clearing rules belong to later parts) and by writing 1s. The interrupt line is (ICR & IMS) != 0.
 * - Time: `now()` is in milliseconds on a clock every thread shares (default `monotonicMs`, CLOCK_MONOTONIC
 *   through process.hrtime; not performance.now(), whose origin differs per thread). The delay timers
 *   (RDTR/RADV, TIDV/TADV, units of 1.024 µs) and the interrupt throttling interval (ITR, units of 256 ns) are
 *   deadlines in the shared state (as is the transmit continuation), checked at every register access and by
 *   `poll()`, which the I/O thread calls when `nextDeadline()` comes. When a call (typically a register access on
 *   a vCPU thread) leaves `nextDeadline()` earlier than it was, `onDeadlineChanged` tells the sleeping I/O thread
 *   to look again.
 * - The guest is not trusted. Ring indexes, lengths and addresses are validated before use; a bad value drops the
 *   work it concerns, counts it (shared counts, `errorCounts()`) and logs it once per kind and object. No guest
 *   value can make the model throw out of a register access, loop without bound, spend more than a slice of
 *   work in one call or touch memory outside GuestMemory.
 * - Registers the model does not know read as 0 and ignore writes, logged once per offset. Known registers with
 *   no behaviour here (flow control, wake-up, LEDs, FIFO pointers...) are plain storage.
 */
import type { BusDevice } from "../../bus/bus.ts";
import { GuestMemoryError, VireoError } from "../../errors.ts";
import type { GuestMemory } from "../../memory/guest-memory.ts";
import type { Counter, MetricsSink } from "../../metrics/registry.ts";
import { ETH_HEADER_LEN, ETH_MIN_FRAME, type NetBackend } from "../../net/backend.ts";
import { crc32, foldSum, onesSum } from "../../net/checksum.ts";
import { type DeviceState, type StateObject, StateReader } from "../../shared/device-state.ts";
import type { IrqLine } from "../../shared/irq-line.ts";
import { SharedLock } from "../../shared/shared-lock.ts";
import { buildEepromImage, EEPROM_STATE_WORDS, EEPROM_WORDS, MicrowireEeprom } from "./eeprom.ts";
import {
  insertContextChecksums,
  insertLegacyChecksum,
  MAX_TSO_PAYLOAD,
  MAX_TSO_SEGMENTS,
  MAX_TX_FRAME,
  planTso,
  type TxContext,
  tsoSegment,
} from "./offload.ts";
import { M88Phy, PHY_REG_COUNT } from "./phy.ts";
import {
  CTRL_ASDE,
  CTRL_FD,
  CTRL_PHY_RST,
  CTRL_RST,
  CTRL_SLU,
  CTRL_VME,
  DESC_SIZE,
  E1000_MMIO_SIZE,
  EECD_CS,
  EECD_DI,
  EECD_DO,
  EECD_FWE_DISABLED,
  EECD_FWE_MASK,
  EECD_GNT,
  EECD_PRES,
  EECD_REQ,
  EECD_SK,
  EERD_ADDR_SHIFT,
  EERD_DATA_SHIFT,
  EERD_DONE,
  EERD_START,
  ICR_LSC,
  ICR_MDAC,
  ICR_RXDMT0,
  ICR_RXO,
  ICR_RXT0,
  ICR_TXDW,
  ICR_TXQE,
  ICR_VALID,
  MDIC_DATA_MASK,
  MDIC_ERROR,
  MDIC_INT_EN,
  MDIC_OP_MASK,
  MDIC_OP_READ,
  MDIC_OP_WRITE,
  MDIC_PHY_SHIFT,
  MDIC_READY,
  MDIC_REG_SHIFT,
  PHY_ADDRESS,
  RA_ENTRIES,
  RAH_AV,
  RAH_WRITABLE,
  RCTL_BAM,
  RCTL_EN,
  RCTL_LPE,
  RCTL_MO_SHIFT,
  RCTL_MPE,
  RCTL_RDMTS_SHIFT,
  RCTL_SECRC,
  RCTL_UPE,
  RCTL_VFE,
  RDTR_FPD,
  REG,
  RING_LEN_ALIGN,
  RXD_STAT_DD,
  RXD_STAT_EOP,
  RXD_STAT_PIF,
  RXD_STAT_VP,
  STAT,
  STATS_64BIT_LOW,
  STATS_FIRST,
  STATS_LAST,
  STATUS_FD,
  STATUS_LU,
  STATUS_SPEED_1000,
  TCTL_EN,
  TCTL_PSP,
  TUCMD_TSE,
  TXD_CMD_DEXT,
  TXD_CMD_EOP,
  TXD_CMD_IC,
  TXD_CMD_IDE,
  TXD_CMD_RS,
  TXD_CMD_TSE,
  TXD_CMD_VLE,
  TXD_DTYP_CONTEXT,
  TXD_DTYP_DATA,
  TXD_POPTS_IXSM,
  TXD_POPTS_TXSM,
  TXD_STAT_DD,
} from "./regs.ts";
import { mtaHash, rxBufferSize, rxChecksum } from "./rx.ts";

/** What a new device state is made from. */
export interface E1000StateOptions {
  /** Station address, stored in the EEPROM image (words 0-2) and loaded into RAL0/RAH0 at reset. */
  mac: Uint8Array;
}

export interface E1000Options {
  /** From E1000.createState: the device's shared state. */
  state: SharedArrayBuffer;
  /**
   * Power-on reset of the state here. Exactly one object, on the thread that created the state, passes true,
   * before the state is shared (createState already returns a reset state, so this is only needed to start over).
   */
  init?: boolean;
  /** Guest RAM as this thread sees it: every descriptor and buffer access goes through it. */
  mem: GuestMemory;
  /**
   * This thread's side of the network backend: `send` for transmit, `rxReady` after the guest posted receive
   * buffers, and `attach`, which gets this object's receiver (see the class comment for threads).
   */
  backend: NetBackend;
  /** INTA# (or whatever line the integrator routes): set to (ICR & IMS) != 0, subject to ITR. Lock held. */
  irq: IrqLine;
  metrics?: MetricsSink;
  /** Milliseconds on a clock shared by every thread serving the device. Default: monotonicMs. */
  now?: () => number;
  /**
   * Called, on the calling thread and after the device lock is released, when a call into this object (a
   * register access, a received frame, `poll`, `setLinkUp`, `reset`) left `nextDeadline()` earlier than before
   * the call (or defined where it was undefined): the I/O thread sleeping until the old deadline should wake up
   * and look again. The callback may call back into the device.
   */
  onDeadlineChanged?: () => void;
  log?: (msg: string) => void;
  /** Device name for logs and metrics. Default "e1000". */
  name?: string;
}

/** Misuse of a device state (not a SharedArrayBuffer, too small, not initialised). */
export class E1000StateError extends VireoError {
  constructor(message: string) {
    super("VIREO_E1000_STATE", message);
  }
}

/**
 * Milliseconds on the process-wide monotonic clock (CLOCK_MONOTONIC): comparable between threads, unlike
 * performance.now(), whose origin is each thread's start.
 */
export function monotonicMs(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}

/** Guest error kinds, counted in the shared state (errorCounts) and logged once per object. */
export const E1000_ERROR_KINDS = [
  "dma",
  "internal",
  "rx-dma",
  "rx-frame-exceeds-ring",
  "rx-ring-dma",
  "rx-ring-empty",
  "rx-ring-index",
  "rx-ring-len",
  "tso-header-length",
  "tso-mss-too-big",
  "tso-mss-zero",
  "tso-no-context",
  "tso-paylen",
  "tso-too-many-segments",
  "tx-csum-range",
  "tx-desc-type",
  "tx-dma",
  "tx-empty-packet",
  "tx-no-context",
  "tx-no-eop",
  "tx-oversize",
  "tx-ring-dma",
  "tx-ring-empty",
  "tx-ring-index",
  "tx-ring-len",
] as const;
export type E1000ErrorKind = (typeof E1000_ERROR_KINDS)[number];
const ERROR_INDEX = new Map<string, number>(E1000_ERROR_KINDS.map((k, i) => [k, i]));

/** One 1.024 µs delay-timer tick (RDTR, RADV, TIDV, TADV) in milliseconds. */
const DELAY_UNIT_MS = 1.024e-3;
/** One ITR tick (256 ns) in milliseconds. */
const ITR_UNIT_MS = 256e-6;
const TWO32 = 0x1_0000_0000;
const VLAN_TAG_LEN = 4;
const FCS_LEN = 4;
/** Longest frame (with FCS) accepted without RCTL.LPE: 1518 plus an 802.1Q tag (SDM §13.4.22). */
const MAX_RX_STANDARD = 1522;
/** Longest frame (with FCS) accepted with RCTL.LPE: the 8254x's 16 KiB jumbo limit. */
const MAX_RX_JUMBO = 16384;
/** The longest transmit packet assembled from descriptors: a TSO header (HDRLEN is 8 bits) plus its payload. */
const TX_BUFFER_BYTES = MAX_TSO_PAYLOAD + 255;

/**
 * Transmit work one entry point (a register access, `poll`, a received frame) may do before it leaves the rest of
 * the ring for later: descriptors fetched, bytes of packet data read from guest RAM, and frames sent (TSO segments
 * included). Whichever runs out first ends the slice. A descriptor whose buffer is longer than the bytes left
 * waits for the next slice, unless nothing was read yet in this one (so a slice reads at most 256 KiB, or one
 * descriptor's buffer, at most 256 KiB + 255 for TSO). What is sent is at most what was read in this slice and
 * the one packet that was in progress (256 KiB and headers), within the frame count. Reading guest RAM is what
 * may cost most: a page the guest never touched is faulted in on first read, 15-80 µs a page on a PVM host, so a
 * slice of 64 such pages stays under about 5 ms even there, and costs 0.1 ms warm. A slice always does at least
 * one descriptor or segment, so every slice progresses; a 64 KiB TSO packet fits in one.
 */
export const E1000_TX_SLICE = Object.freeze({ descriptors: 256, bytes: 256 * 1024, frames: 256 });

const NO_COUNTER: Counter = { add() {}, value: 0 };

// ---- shared state layout ---------------------------------------------------------------------------------------

// Int32 words of the header.
const W_LOCK = 0;
const W_MAGIC = 1;
/** The state's layout size, so a state from another build of this file is refused. */
const W_BYTES = 2;
const W_ICR = 3;
const W_IMS = 4;
/** The level last driven on the interrupt line (0/1). */
const W_LINE = 5;
const W_LINK = 6;
const W_CLOSED = 7;
/** IOADDR of the I/O BAR window. */
const W_IOADDR = 8;
/** 1 while the normal (checksum) and the segmentation transmit context are loaded. */
const W_CSUM_CTX_VALID = 9;
const W_TSO_CTX_VALID = 10;
// The transmit packet being assembled (its data is in the TX buffer).
const W_TXP_ACTIVE = 12;
const W_TXP_SIZE = 13;
const W_TXP_DESCS = 14;
const W_TXP_EXTENDED = 15;
const W_TXP_TSE = 16;
const W_TXP_POPTS = 17;
const W_TXP_FIRST_CMD = 18;
const W_TXP_FIRST_SPECIAL = 19;
/** Set once something went wrong: the rest of the packet is consumed and dropped. */
const W_TXP_POISONED = 20;
/** The EEPROM's Microwire interface state (EEPROM_STATE_WORDS). */
const W_EEPROM = 24;
/** The two transmit contexts, CTX_FIELDS.length words each. */
const W_CSUM_CTX = 40;
const W_TSO_CTX = 52;
// A TSO packet being sent a slice at a time (its data in the TX buffer, W_TXP_ACTIVE already clear). TDH stays on
// its EOP descriptor until the last segment is sent; DD is then written back from what was read then.
const W_TXP_SEGMENTING = 64;
const W_TXP_SEG_NEXT = 65;
const W_TXP_SEG_COUNT = 66;
const W_TXP_EOP_CMD = 67;
/** The EOP descriptor's status byte as read (its upper bits are preserved on write-back). */
const W_TXP_EOP_STA = 68;
/** The EOP descriptor's guest-physical address (low and high 32 bits). */
const W_TXP_EOP_LO = 69;
const W_TXP_EOP_HI = 70;
const HEADER_WORDS = 72;

// Float64 slots: deadlines and the last assertion time (NaN: none).
const T_ITR = 0;
const T_RX_PACKET = 1;
const T_RX_ABS = 2;
const T_TX_DELAY = 3;
const T_TX_ABS = 4;
const T_LAST_ASSERT = 5;
/** Transmit work left for later (a spent slice): `poll()` continues it from then on. */
const T_TX_PENDING = 6;
const TIME_SLOTS = 8;
const DEADLINES = [T_RX_PACKET, T_RX_ABS, T_TX_DELAY, T_TX_ABS, T_ITR, T_TX_PENDING] as const;

const STATS_COUNT = (STATS_LAST - STATS_FIRST) / 4 + 1;

const CTX_FIELDS = [
  "ipcss",
  "ipcso",
  "ipcse",
  "tucss",
  "tucso",
  "tucse",
  "paylen",
  "tucmd",
  "hdrlen",
  "mss",
] as const satisfies readonly (keyof TxContext)[];

const MAGIC = 0x65316b30; // "e1k0"

// ---- snapshots ----

const STATE_KIND = "e1000";
const STATE_VERSION = 1;

/** Header words a snapshot saves by name, with the values the device itself can give them. */
const SAVED_WORDS: ReadonlyArray<readonly [name: string, word: number, min: number, max: number]> = [
  ["icr", W_ICR, 0, 0xffff_ffff],
  ["ims", W_IMS, 0, 0xffff_ffff],
  ["line", W_LINE, 0, 1],
  ["link", W_LINK, 0, 1],
  ["closed", W_CLOSED, 0, 1],
  ["ioaddr", W_IOADDR, 0, 0xffff_ffff],
  ["csumContextValid", W_CSUM_CTX_VALID, 0, 1],
  ["tsoContextValid", W_TSO_CTX_VALID, 0, 1],
  ["txPacketActive", W_TXP_ACTIVE, 0, 1],
  ["txPacketSize", W_TXP_SIZE, 0, TX_BUFFER_BYTES],
  ["txPacketDescriptors", W_TXP_DESCS, 0, 0x7fff_ffff],
  ["txPacketExtended", W_TXP_EXTENDED, 0, 1],
  ["txPacketTse", W_TXP_TSE, 0, 1],
  ["txPacketPopts", W_TXP_POPTS, 0, 0xff],
  ["txPacketFirstCmd", W_TXP_FIRST_CMD, 0, 0xff],
  ["txPacketFirstSpecial", W_TXP_FIRST_SPECIAL, 0, 0xffff],
  ["txPacketPoisoned", W_TXP_POISONED, 0, 1],
  ["txSegmenting", W_TXP_SEGMENTING, 0, 1],
  ["txSegmentNext", W_TXP_SEG_NEXT, 0, MAX_TSO_SEGMENTS],
  ["txSegmentCount", W_TXP_SEG_COUNT, 0, MAX_TSO_SEGMENTS],
  ["txEopCmd", W_TXP_EOP_CMD, 0, 0xff],
  ["txEopStatus", W_TXP_EOP_STA, 0, 0xff],
  ["txEopLo", W_TXP_EOP_LO, 0, 0xffff_ffff],
  ["txEopHi", W_TXP_EOP_HI, 0, 0xf_ffff],
];

/** The EEPROM's Microwire interface words (eeprom.ts), with their ranges. */
const EEPROM_WORD_RANGES: ReadonlyArray<readonly [name: string, max: number]> = [
  ["phase", 5],
  ["shift", 0xffff],
  ["count", 16],
  ["opcode", 3],
  ["address", EEPROM_WORDS - 1],
  ["writeEnabled", 1],
  ["cs", 1],
  ["sk", 1],
  ["dout", 1],
  ["readWord", 0xffff],
  ["readBits", 16],
];

/** A transmit context's fields as a context descriptor can load them (SDM §3.3.6). */
const CTX_FIELD_MAX: Record<(typeof CTX_FIELDS)[number], number> = {
  ipcss: 0xff,
  ipcso: 0xff,
  ipcse: 0xffff,
  tucss: 0xff,
  tucso: 0xff,
  tucse: 0xffff,
  paylen: 0xf_ffff,
  tucmd: 0xff,
  hdrlen: 0xff,
  mss: 0xffff,
};

/** Deadlines and the last assertion time, by name; saved relative to the saving host's clock. */
const SAVED_TIMES: ReadonlyArray<readonly [name: string, slot: number]> = [
  ["itr", T_ITR],
  ["rxPacketTimer", T_RX_PACKET],
  ["rxAbsoluteTimer", T_RX_ABS],
  ["txDelayTimer", T_TX_DELAY],
  ["txAbsoluteTimer", T_TX_ABS],
  ["lastAssert", T_LAST_ASSERT],
  ["txPending", T_TX_PENDING],
];

/** Byte offsets of each part of the state, 8-aligned. */
const LAYOUT = (() => {
  let at = 0;
  const take = (bytes: number): number => {
    const o = at;
    at = Math.ceil((at + bytes) / 8) * 8;
    return o;
  };
  const layout = {
    words: take(4 * HEADER_WORDS),
    times: take(8 * TIME_SLOTS),
    stats: take(8 * STATS_COUNT),
    errors: take(4 * E1000_ERROR_KINDS.length),
    eeprom: take(2 * EEPROM_WORDS),
    phy: take(2 * PHY_REG_COUNT),
    regs: take(E1000_MMIO_SIZE),
    txBuffer: take(TX_BUFFER_BYTES),
    bytes: 0,
  };
  layout.bytes = at;
  return layout;
})();

/** The typed views a thread works through; all of them over the one shared buffer. */
interface StateViews {
  words: Int32Array;
  times: Float64Array;
  stats: Float64Array;
  errors: Uint32Array;
  eeprom: Uint16Array;
  phy: Uint16Array;
  regs: Uint32Array;
  txBuffer: Uint8Array;
}

function viewsOf(state: SharedArrayBuffer): StateViews {
  return {
    words: new Int32Array(state, LAYOUT.words, HEADER_WORDS),
    times: new Float64Array(state, LAYOUT.times, TIME_SLOTS),
    stats: new Float64Array(state, LAYOUT.stats, STATS_COUNT),
    errors: new Uint32Array(state, LAYOUT.errors, E1000_ERROR_KINDS.length),
    eeprom: new Uint16Array(state, LAYOUT.eeprom, EEPROM_WORDS),
    phy: new Uint16Array(state, LAYOUT.phy, PHY_REG_COUNT),
    regs: new Uint32Array(state, LAYOUT.regs, E1000_MMIO_SIZE / 4),
    txBuffer: new Uint8Array(state, LAYOUT.txBuffer, TX_BUFFER_BYTES),
  };
}

function eepromOf(v: StateViews): MicrowireEeprom {
  return new MicrowireEeprom(v.eeprom, v.words.subarray(W_EEPROM, W_EEPROM + EEPROM_STATE_WORDS));
}

/**
 * The register file after a global reset (CTRL.RST, SDM §13.4.1) and at power-on: defaults, the station address
 * from the EEPROM, no interrupt causes, no timers, no transmit context or partial packet, statistics cleared.
 * The PHY, the EEPROM contents, the link and the error counts are not touched; neither is the interrupt line's
 * recorded level (the caller lowers the line).
 */
function resetRegisterFile(v: StateViews, eeprom: MicrowireEeprom): void {
  const r = v.regs;
  r.fill(0);
  v.stats.fill(0);
  r[REG.CTRL >> 2] = CTRL_FD | CTRL_ASDE | CTRL_SLU;
  r[REG.EECD >> 2] = EECD_FWE_DISABLED;
  r[REG.PBA >> 2] = 0x30; // 48 KiB receive, 16 KiB transmit packet buffer
  r[REG.LEDCTL >> 2] = 0x07068302;
  r[REG.VET >> 2] = 0x8100;
  // The station address is loaded from the EEPROM into RAL0/RAH0 (SDM §5.6.1).
  const w = v.eeprom;
  r[REG.RAL0 >> 2] = ((w[0] as number) | ((w[1] as number) << 16)) >>> 0;
  r[REG.RAH0 >> 2] = ((w[2] as number) | RAH_AV) >>> 0;
  eeprom.setPins(false, false, false);
  const s = v.words;
  s[W_ICR] = 0;
  s[W_IMS] = 0;
  s[W_CSUM_CTX_VALID] = 0;
  s[W_TSO_CTX_VALID] = 0;
  s[W_TXP_ACTIVE] = 0;
  s[W_TXP_SIZE] = 0;
  s[W_TXP_SEGMENTING] = 0;
  v.times.fill(Number.NaN);
}

/**
 * Power-on: everything but the EEPROM contents (and the lock and magic words, which the caller handles) to its
 * initial value: PHY defaults, EEPROM interface idle, link up, not closed, line low, no errors counted.
 */
function powerOn(v: StateViews, state: SharedArrayBuffer): void {
  v.words.fill(0, W_MAGIC + 1);
  SharedLock.init(state, LAYOUT.words + 4 * W_LOCK);
  v.words[W_BYTES] = LAYOUT.bytes;
  v.words[W_LINK] = 1;
  v.errors.fill(0);
  v.txBuffer.fill(0);
  new M88Phy(v.phy, () => true).reset();
  const eeprom = eepromOf(v);
  eeprom.reset();
  resetRegisterFile(v, eeprom);
}

/** Known registers that are plain storage here. */
const PLAIN_REGS = new Set<number>([
  REG.CTRL_EXT,
  REG.FLA,
  REG.FCAL,
  REG.FCAH,
  REG.FCT,
  REG.VET,
  REG.FCTTV,
  REG.TXCW,
  REG.RXCW,
  REG.TIPG,
  REG.AIT,
  REG.LEDCTL,
  REG.PBA,
  REG.FCRTL,
  REG.FCRTH,
  REG.RDFH,
  REG.RDFT,
  REG.RDFHS,
  REG.RDFTS,
  REG.RDFPC,
  REG.RDBAH,
  REG.RXDCTL,
  REG.RSRPD,
  REG.TXDMAC,
  REG.TDFH,
  REG.TDFT,
  REG.TDFHS,
  REG.TDFTS,
  REG.TDFPC,
  REG.TDBAH,
  REG.TXDCTL,
  REG.TSPMT,
  REG.RXCSUM,
  REG.WUC,
  REG.WUFC,
  REG.WUS,
  REG.MANC,
  REG.IPAV,
  REG.WUPL,
]);

/** Known register arrays, [start, end) in bytes. */
const PLAIN_RANGES: ReadonlyArray<readonly [number, number]> = [
  [REG.MTA, REG.MTA + 128 * 4],
  [REG.RAL0, REG.RAL0 + RA_ENTRIES * 8],
  [REG.VFTA, REG.VFTA + 128 * 4],
  [REG.IP4AT, REG.IP4AT + 0x20],
  [REG.IP6AT, REG.IP6AT + 0x10],
  [REG.WUPM, REG.WUPM + 0x80],
  [REG.FFLT, REG.FFLT + 0x20],
  [REG.FFMT, REG.FFMT + 0x400],
  [REG.FFVT, REG.FFVT + 0x400],
];

/** Registers whose writes act on set bits only (W1C, set/clear masks): a partial write leaves the rest 0. */
const MASK_REGS = new Set<number>([REG.ICR, REG.ICS, REG.IMS, REG.IMC]);

const STATS_64_LOW = new Set<number>(STATS_64BIT_LOW);
const STATS_64_HIGH = new Set<number>(STATS_64BIT_LOW.map((o) => o + 4));

interface Ring {
  base: number;
  count: number;
}

function le32(b: Uint8Array, off: number): number {
  return (
    ((b[off] as number) |
      ((b[off + 1] as number) << 8) |
      ((b[off + 2] as number) << 16) |
      ((b[off + 3] as number) << 24)) >>>
    0
  );
}

function le16(b: Uint8Array, off: number): number {
  return (b[off] as number) | ((b[off + 1] as number) << 8);
}

function be16(b: Uint8Array, off: number): number {
  return ((b[off] as number) << 8) | (b[off + 1] as number);
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

function isBroadcast(b: Uint8Array): boolean {
  for (let i = 0; i < 6; i++) if (b[i] !== 0xff) return false;
  return true;
}

/**
 * The length of the buffer a transmit descriptor names, before any check: 15:0 of a legacy descriptor (SDM
 * §3.3.3), DTALEN 19:0 of a data descriptor (SDM §3.3.7); a context descriptor has none.
 */
function txBufferLength(d: Uint8Array): number {
  const lower = le32(d, 8);
  if (!((d[11] as number) & TXD_CMD_DEXT)) return lower & 0xffff;
  return ((lower >>> 20) & 0xf) === TXD_DTYP_DATA ? lower & 0xfffff : 0;
}

function describeError(e: unknown): string {
  return e instanceof Error ? (e.stack ?? e.message) : String(e);
}

export class E1000 implements BusDevice {
  readonly name: string;
  /** The I/O BAR: IOADDR at offset 0, IODATA at offset 4 (SDM §13.2.1). */
  readonly io: E1000IoPort;

  /** Bytes of shared state a device needs. */
  static readonly STATE_BYTES = LAYOUT.bytes;

  private readonly mem: GuestMemory;
  private readonly backend: NetBackend;
  private readonly irq: IrqLine;
  private readonly now: () => number;
  private readonly onDeadlineChanged: (() => void) | undefined;
  private readonly log: ((msg: string) => void) | undefined;
  private readonly metrics: MetricsSink | undefined;

  // Shared state.
  private readonly views: StateViews;
  private readonly lock: SharedLock;
  private readonly s: Int32Array;
  private readonly times: Float64Array;
  private readonly regs: Uint32Array;
  private readonly stats: Float64Array;
  private readonly errors: Uint32Array;
  private readonly txBuffer: Uint8Array;
  private readonly eeprom: MicrowireEeprom;
  private readonly phy: M88Phy;

  // This object's own: re-entrancy guards, scratch, work for after the lock, logging and metrics.
  private txBusy = false;
  /** The transmit work left to the current entry point (E1000_TX_SLICE), reset by the outermost `locked`. */
  private txDescLeft = 0;
  private txBytesLeft = 0;
  private txFramesLeft = 0;
  private rxReadyPending = false;
  private readonly txDesc = new Uint8Array(DESC_SIZE);
  /**
   * Where each transmitted frame is built (offloads, VLAN tag, padding) and handed to the backend from, which
   * must not keep it (NetBackend.send): private, so the backend never sees shared memory, and reused, so a flood
   * of frames allocates nothing per frame.
   */
  private readonly txFrame = new Uint8Array(MAX_TX_FRAME + VLAN_TAG_LEN);
  private readonly loggedKinds = new Set<string>();
  private readonly loggedOffsets = new Set<number>();
  private readonly errorCounters = new Map<string, Counter>();
  private readonly mTxFrames: Counter;
  private readonly mTxBytes: Counter;
  private readonly mTxDropped: Counter;
  private readonly mTxBackendDropped: Counter;
  private readonly mTxDeferred: Counter;
  private readonly mRxFrames: Counter;
  private readonly mRxBytes: Counter;
  private readonly mRxDropped: Counter;
  private readonly mRxFiltered: Counter;
  private readonly mRxNoBuffer: Counter;
  private readonly mIrqRaised: Counter;

  /**
   * A fresh device state, at power-on: the EEPROM image built for `mac`, registers at their reset values, link
   * up. Hand the same buffer to every thread's E1000 (it can be posted to workers).
   */
  static createState(options: E1000StateOptions): SharedArrayBuffer {
    const image = buildEepromImage(Uint8Array.from(options.mac));
    const state = new SharedArrayBuffer(LAYOUT.bytes);
    const v = viewsOf(state);
    v.eeprom.set(image);
    powerOn(v, state);
    // The magic goes last: a thread that sees it sees the rest.
    Atomics.store(v.words, W_MAGIC, MAGIC);
    return state;
  }

  constructor(options: E1000Options) {
    this.name = options.name ?? "e1000";
    const state = options.state;
    if (!(state instanceof SharedArrayBuffer)) {
      throw new E1000StateError(
        `E1000 ${this.name}: state must be a SharedArrayBuffer from E1000.createState (it is shared between threads)`,
      );
    }
    if (state.byteLength < LAYOUT.bytes) {
      throw new E1000StateError(
        `E1000 ${this.name}: state has ${state.byteLength} bytes, needs ${LAYOUT.bytes} (use E1000.createState)`,
      );
    }
    const v = viewsOf(state);
    if (Atomics.load(v.words, W_MAGIC) !== MAGIC || v.words[W_BYTES] !== LAYOUT.bytes) {
      throw new E1000StateError(`E1000 ${this.name}: state is not initialised (use E1000.createState)`);
    }
    if (options.init) powerOn(v, state);
    this.views = v;
    this.s = v.words;
    this.times = v.times;
    this.regs = v.regs;
    this.stats = v.stats;
    this.errors = v.errors;
    this.txBuffer = v.txBuffer;
    this.eeprom = eepromOf(v);
    this.phy = new M88Phy(v.phy, () => this.s[W_LINK] !== 0);
    this.lock = new SharedLock(state, LAYOUT.words + 4 * W_LOCK);

    this.mem = options.mem;
    this.backend = options.backend;
    this.irq = options.irq;
    this.now = options.now ?? monotonicMs;
    this.onDeadlineChanged = options.onDeadlineChanged;
    this.log = options.log;
    this.metrics = options.metrics;
    const m = options.metrics;
    const c = (n: string): Counter => m?.counter(`${this.name}.${n}`) ?? NO_COUNTER;
    this.mTxFrames = c("tx.frames");
    this.mTxBytes = c("tx.bytes");
    this.mTxDropped = c("tx.dropped");
    this.mTxBackendDropped = c("tx.backend_dropped");
    this.mTxDeferred = c("tx.deferred");
    this.mRxFrames = c("rx.frames");
    this.mRxBytes = c("rx.bytes");
    this.mRxDropped = c("rx.dropped");
    this.mRxFiltered = c("rx.filtered");
    this.mRxNoBuffer = c("rx.no_buffer");
    this.mIrqRaised = c("irq.raised");
    this.io = new E1000IoPort(this);
    this.backend.attach((frame) => this.receive(frame));
  }

  // ---- Locking ----

  /**
   * Runs `fn` under the device lock; re-entrant for this object (a backend calling the receiver from inside
   * `send`). The outermost call gets a fresh transmit budget (E1000_TX_SLICE). After it releases the lock:
   * `onDeadlineChanged` if the next deadline moved earlier, then `backend.rxReady()` if the guest posted receive
   * buffers.
   */
  private locked<T>(fn: () => T): T {
    if (this.lock.isHeld) return fn();
    const watch = this.onDeadlineChanged !== undefined;
    let before: number | undefined;
    let after: number | undefined;
    let result: T;
    this.lock.lock();
    this.txDescLeft = E1000_TX_SLICE.descriptors;
    this.txBytesLeft = E1000_TX_SLICE.bytes;
    this.txFramesLeft = E1000_TX_SLICE.frames;
    try {
      if (watch) before = this.earliestDeadline();
      result = fn();
      if (watch) after = this.earliestDeadline();
    } finally {
      this.lock.unlock();
    }
    if (after !== undefined && (before === undefined || after < before)) {
      this.callOut(this.onDeadlineChanged);
    }
    if (this.rxReadyPending) {
      this.rxReadyPending = false;
      this.callOut(() => this.backend.rxReady());
    }
    return result;
  }

  /** A call out of the device after the lock is released; what it throws is counted, not thrown at the guest. */
  private callOut(fn: (() => void) | undefined): void {
    if (fn === undefined) return;
    try {
      fn();
    } catch (e) {
      this.guestError("internal", `internal error: ${describeError(e)}`);
    }
  }

  // ---- Snapshots ----

  /**
   * The device's whole state, for a snapshot: the register file, EEPROM (contents and Microwire interface), PHY,
   * statistics, error counts, interrupt cause and mask, the link, both transmit contexts, a transmit packet half
   * assembled (its descriptors' data so far) or half segmented (TSO: the segment to send next), and the timers.
   * Timers run on the monotonic clock of this host, which does not carry over: they are saved as milliseconds
   * from now and restored as that much from the restoring host's now. Transmit work left for later stays
   * pending across the snapshot and is continued by the restored device (nothing sent twice: TDH and the segment
   * index say what was sent).
   */
  saveState(): DeviceState {
    const took = !this.lock.isHeld;
    if (took) this.lock.lock();
    try {
      const s = this.s;
      const now = this.now();
      const words: StateObject = {};
      for (const [name, w] of SAVED_WORDS) words[name] = (s[w] as number) >>> 0;
      const eeprom: StateObject = {};
      EEPROM_WORD_RANGES.forEach(([name], i) => {
        eeprom[name] = s[W_EEPROM + i] as number;
      });
      const ctx = (base: number): StateObject => {
        const o: StateObject = {};
        CTX_FIELDS.forEach((f, i) => {
          o[f] = s[base + i] as number;
        });
        return o;
      };
      const times: StateObject = {};
      for (const [name, slot] of SAVED_TIMES) {
        const t = this.times[slot] as number;
        times[name] = Number.isFinite(t) ? t - now : null;
      }
      const v = this.views;
      const bytesOf = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength).slice();
      const txData = s[W_TXP_ACTIVE] || s[W_TXP_SEGMENTING] ? (s[W_TXP_SIZE] as number) : 0;
      return {
        kind: STATE_KIND,
        version: STATE_VERSION,
        data: {
          words,
          eepromInterface: eeprom,
          checksumContext: ctx(W_CSUM_CTX),
          segmentationContext: ctx(W_TSO_CTX),
          times,
          stats: bytesOf(v.stats),
          errors: bytesOf(v.errors),
          eeprom: bytesOf(v.eeprom),
          phy: bytesOf(v.phy),
          regs: bytesOf(v.regs),
          txBuffer: this.txBuffer.slice(0, txData),
        },
      };
    } finally {
      if (took) this.lock.unlock();
    }
  }

  /**
   * Restores a saved state into this device (checked first: a refused state changes nothing). The registers a
   * guest writes through masks must hold values the masks allow (ring bases 16-byte aligned, lengths multiples of
   * 128, indices 16 bits, heads and tails inside their rings), internal words their ranges, counters finite.
   * Then the interrupt line is driven as the restored state says, and transmit work left pending is continued
   * at the restored deadline (call `poll()` when `nextDeadline()` comes, as always).
   */
  restoreState(saved: DeviceState): void {
    const r = StateReader.open(`E1000 ${this.name}`, saved, STATE_KIND, STATE_VERSION);
    const wr = r.object("words");
    const words = SAVED_WORDS.map(([name, w, min, max]) => [w, wr.int(name, min, max)] as const);
    const get = (name: string) => wr.int(name, 0, 0xffff_ffff);
    if (get("txSegmentNext") > get("txSegmentCount")) wr.fail("txSegmentNext", "is past txSegmentCount");
    if (get("txPacketActive") && get("txSegmenting")) wr.fail("txSegmenting", "is set with txPacketActive");
    const er = r.object("eepromInterface");
    const eeprom = EEPROM_WORD_RANGES.map(([name, max]) => er.int(name, 0, max));
    const ctx = (key: string) => {
      const cr = r.object(key);
      return CTX_FIELDS.map((f) => cr.int(f, 0, CTX_FIELD_MAX[f]));
    };
    const csum = ctx("checksumContext");
    const tso = ctx("segmentationContext");
    const tr = r.object("times");
    const times = SAVED_TIMES.map(([name, slot]) => [slot, tr.numberOrNull(name)] as const);
    const v = this.views;
    const stats = r.bytes("stats", v.stats.byteLength);
    const statValues = new Float64Array(stats.slice().buffer);
    const badStat = statValues.findIndex((x) => !Number.isSafeInteger(x) || x < 0);
    if (badStat >= 0) r.fail("stats", `counter ${badStat} is ${statValues[badStat]}, not a count`);
    const errors = r.bytes("errors", v.errors.byteLength);
    const eepromWords = r.bytes("eeprom", v.eeprom.byteLength);
    const phy = r.bytes("phy", v.phy.byteLength);
    const regsBytes = r.bytes("regs", v.regs.byteLength);
    const regs = new Uint32Array(regsBytes.slice().buffer);
    const reg = (o: number) => regs[o >> 2] as number;
    for (const [what, base, len, head, tail] of [
      ["receive", REG.RDBAL, REG.RDLEN, REG.RDH, REG.RDT],
      ["transmit", REG.TDBAL, REG.TDLEN, REG.TDH, REG.TDT],
    ] as const) {
      const fail = (m: string) => r.fail("regs", `${what} ring: ${m}`);
      if (reg(base) & 0xf) fail(`base 0x${reg(base).toString(16)} is not 16-byte aligned`);
      if (reg(len) & ~0xfff80) fail(`length 0x${reg(len).toString(16)} is not a multiple of 128 below 1 MiB`);
      const count = reg(len) / DESC_SIZE;
      for (const [name, o] of [
        ["head", head],
        ["tail", tail],
      ] as const) {
        if (reg(o) > 0xffff) fail(`${name} ${reg(o)} is wider than 16 bits`);
        if (count > 0 && reg(o) >= count) fail(`${name} ${reg(o)} is outside the ${count}-descriptor ring`);
      }
    }
    const txLength = get("txPacketActive") || get("txSegmenting") ? get("txPacketSize") : 0;
    const txBuffer = r.bytes("txBuffer", txLength);

    const took = !this.lock.isHeld;
    if (took) this.lock.lock();
    try {
      const s = this.s;
      for (const [w, value] of words) s[w] = value | 0;
      eeprom.forEach((value, i) => {
        s[W_EEPROM + i] = value;
      });
      csum.forEach((value, i) => {
        s[W_CSUM_CTX + i] = value;
      });
      tso.forEach((value, i) => {
        s[W_TSO_CTX + i] = value;
      });
      const now = this.now();
      for (const [slot, rel] of times) this.times[slot] = rel === null ? Number.NaN : now + rel;
      new Uint8Array(v.stats.buffer, v.stats.byteOffset, v.stats.byteLength).set(stats);
      new Uint8Array(v.errors.buffer, v.errors.byteOffset, v.errors.byteLength).set(errors);
      new Uint8Array(v.eeprom.buffer, v.eeprom.byteOffset, v.eeprom.byteLength).set(eepromWords);
      new Uint8Array(v.phy.buffer, v.phy.byteOffset, v.phy.byteLength).set(phy);
      this.regs.set(regs);
      this.txBuffer.fill(0);
      this.txBuffer.set(txBuffer);
      // The line as saved (through a PCI function, its INTx request is restored with the function too).
      if (s[W_LINE]) this.irq.set(true);
    } finally {
      if (took) this.lock.unlock();
    }
    if (this.onDeadlineChanged !== undefined) this.callOut(this.onDeadlineChanged);
  }

  // ---- BusDevice (BAR0) ----

  read(offset: number, data: Uint8Array): void {
    this.mmioRead(offset, data);
  }

  write(offset: number, data: Uint8Array): void {
    this.mmioWrite(offset, data);
  }

  /** A guest read of `data.length` bytes at `offset` in the register space. */
  mmioRead(offset: number, data: Uint8Array): void {
    data.fill(0);
    this.locked(() => this.guard(() => this.regRead(offset, data)));
  }

  /** A guest write of `data.length` bytes at `offset` in the register space. */
  mmioWrite(offset: number, data: Uint8Array): void {
    this.locked(() => this.guard(() => this.regWrite(offset, data)));
  }

  /** A read in the I/O BAR (E1000IoPort): IOADDR at 0, IODATA at 4, reserved bytes read 0. */
  ioRead(offset: number, data: Uint8Array): void {
    data.fill(0);
    this.locked(() =>
      this.guard(() => {
        for (let i = 0; i < data.length; ) {
          const at = offset + i;
          if (at >= 0 && at < 4) {
            const n = Math.min(4 - at, data.length - i);
            const ioaddr = this.s[W_IOADDR] as number;
            for (let j = 0; j < n; j++) data[i + j] = (ioaddr >>> (8 * (at + j))) & 0xff;
            i += n;
          } else if (at >= 4 && at < 8) {
            const n = Math.min(8 - at, data.length - i);
            this.regRead(this.ioTarget() + (at - 4), data.subarray(i, i + n));
            i += n;
          } else {
            break; // reserved: reads 0
          }
        }
      }),
    );
  }

  /** A write in the I/O BAR (E1000IoPort). */
  ioWrite(offset: number, data: Uint8Array): void {
    this.locked(() =>
      this.guard(() => {
        for (let i = 0; i < data.length; ) {
          const at = offset + i;
          if (at >= 0 && at < 4) {
            const n = Math.min(4 - at, data.length - i);
            let ioaddr = this.s[W_IOADDR] as number;
            for (let j = 0; j < n; j++) {
              const shift = 8 * (at + j);
              ioaddr = (ioaddr & ~(0xff << shift)) | ((data[i + j] as number) << shift);
            }
            this.s[W_IOADDR] = ioaddr;
            i += n;
          } else if (at >= 4 && at < 8) {
            const n = Math.min(8 - at, data.length - i);
            this.regWrite(this.ioTarget() + (at - 4), data.subarray(i, i + n));
            i += n;
          } else {
            break; // reserved: ignored
          }
        }
      }),
    );
  }

  /** IOADDR bits 16:0 address the 128 KiB register space; accesses are to whole dwords. */
  private ioTarget(): number {
    return (this.s[W_IOADDR] as number) & (E1000_MMIO_SIZE - 1) & ~3;
  }

  /** A register-space read, lock held. `data` is zeroed. */
  private regRead(offset: number, data: Uint8Array): void {
    this.pollLocked();
    const len = data.length;
    if (len === 4 && offset % 4 === 0 && offset >= 0 && offset < E1000_MMIO_SIZE) {
      const v = this.readReg(offset);
      data[0] = v & 0xff;
      data[1] = (v >>> 8) & 0xff;
      data[2] = (v >>> 16) & 0xff;
      data[3] = v >>> 24;
      return;
    }
    // Other sizes and alignments: each dword touched is read once (with its side effects).
    for (let i = 0; i < len; ) {
      const addr = offset + i;
      const dw = addr - (addr % 4);
      const v = dw >= 0 && dw < E1000_MMIO_SIZE ? this.readReg(dw) : 0;
      for (let b = addr - dw; b < 4 && i < len; b++, i++) data[i] = (v >>> (8 * b)) & 0xff;
    }
  }

  /** A register-space write, lock held. */
  private regWrite(offset: number, data: Uint8Array): void {
    this.pollLocked();
    const len = data.length;
    if (len === 4 && offset % 4 === 0 && offset >= 0 && offset < E1000_MMIO_SIZE) {
      this.writeReg(offset, le32(data, 0));
      return;
    }
    for (let i = 0; i < len; ) {
      const addr = offset + i;
      const dw = addr - (addr % 4);
      let value = 0;
      let mask = 0;
      for (let b = addr - dw; b < 4 && i < len; b++, i++) {
        value |= (data[i] as number) << (8 * b);
        mask |= 0xff << (8 * b);
      }
      if (dw < 0 || dw >= E1000_MMIO_SIZE) continue;
      mask >>>= 0;
      if (mask !== 0xffffffff) {
        this.warnOnce("partial-access", `${hex(len)}-byte write at ${hex(offset)}: merged into the dword`);
      }
      const old = MASK_REGS.has(dw) ? 0 : this.peekReg(dw);
      this.writeReg(dw, ((old & ~mask) | (value & mask)) >>> 0);
    }
  }

  // ---- Integrator interface ----

  /**
   * Fires expired delay timers and throttled interrupts, and continues transmit work left by an earlier call
   * (one more slice). The I/O thread calls it when nextDeadline() comes; without one, whoever drives the device
   * must (see the class comment).
   */
  poll(): void {
    this.locked(() => this.guard(() => this.pollLocked()));
  }

  private pollLocked(): void {
    if (this.s[W_CLOSED]) return;
    const t = this.now();
    const tm = this.times;
    if (t >= (tm[T_RX_PACKET] as number) || t >= (tm[T_RX_ABS] as number)) {
      tm[T_RX_PACKET] = tm[T_RX_ABS] = Number.NaN;
      this.s[W_ICR] = (this.s[W_ICR] as number) | ICR_RXT0;
    }
    if (t >= (tm[T_TX_DELAY] as number) || t >= (tm[T_TX_ABS] as number)) {
      tm[T_TX_DELAY] = tm[T_TX_ABS] = Number.NaN;
      this.s[W_ICR] = (this.s[W_ICR] as number) | ICR_TXDW;
    }
    if (t >= (tm[T_ITR] as number)) tm[T_ITR] = Number.NaN;
    this.updateIrq(t);
    if (t >= (tm[T_TX_PENDING] as number)) this.processTx();
  }

  /**
   * When `poll()` next has something to do (on the `now` clock), or undefined if nothing is pending. Any thread
   * may ask; the I/O thread sleeps until then (and `onDeadlineChanged` says when to ask again).
   */
  nextDeadline(): number | undefined {
    return this.locked(() => this.earliestDeadline());
  }

  private earliestDeadline(): number | undefined {
    let next: number | undefined;
    for (const i of DEADLINES) {
      const d = this.times[i] as number;
      if (!Number.isNaN(d) && (next === undefined || d < next)) next = d;
    }
    return next;
  }

  /** Power-on / PCI reset: registers, PHY and the EEPROM interface to their initial state. */
  reset(): void {
    this.locked(() =>
      this.guard(() => {
        this.phy.reset();
        this.eeprom.reset();
        this.resetRegisters();
      }),
    );
  }

  /** Plugs or pulls the cable: STATUS.LU and the PHY follow, and LSC is raised on a change. */
  setLinkUp(up: boolean): void {
    this.locked(() =>
      this.guard(() => {
        if ((this.s[W_LINK] !== 0) === up) return;
        this.s[W_LINK] = up ? 1 : 0;
        this.raise(ICR_LSC);
      }),
    );
  }

  get linkUp(): boolean {
    return Atomics.load(this.s, W_LINK) !== 0;
  }

  /** The level the device drives on its interrupt line now (whichever object drove it). */
  get irqAsserted(): boolean {
    return Atomics.load(this.s, W_LINE) !== 0;
  }

  /**
   * Stops the device, for every object over the state: frames from the backends are dropped, transmit and timers
   * stop, the line is lowered (through this object's line).
   */
  close(): void {
    this.locked(() => {
      this.s[W_CLOSED] = 1;
      this.times.fill(Number.NaN);
      if (this.s[W_LINE]) {
        this.s[W_LINE] = 0;
        this.irq.set(false);
      }
    });
  }

  /** Guest errors seen so far by the device (all threads), by kind. */
  errorCounts(): Record<string, number> {
    const out: Record<string, number> = {};
    E1000_ERROR_KINDS.forEach((kind, i) => {
      const n = Atomics.load(this.errors, i);
      if (n !== 0) out[kind] = n;
    });
    return out;
  }

  // ---- Register file (lock held from here on) ----

  private isKnown(off: number): boolean {
    if (PLAIN_REGS.has(off)) return true;
    for (const [start, end] of PLAIN_RANGES) if (off >= start && off < end) return true;
    return false;
  }

  /** The stored value of a register, without read side effects (for merging partial writes). */
  private peekReg(off: number): number {
    switch (off) {
      case REG.CTRL:
        return (this.regs[off >> 2] as number) & ~CTRL_RST;
      case REG.STATUS:
        return this.status();
      case REG.EECD:
        return this.eecd();
      default:
        return this.regs[off >> 2] as number;
    }
  }

  private readReg(off: number): number {
    const i = off >> 2;
    switch (off) {
      case REG.CTRL:
        return (this.regs[i] as number) & ~CTRL_RST;
      case REG.STATUS:
        return this.status();
      case REG.EECD:
        return this.eecd();
      case REG.EERD:
      case REG.MDIC:
      case REG.ITR:
      case REG.RCTL:
      case REG.TCTL:
      case REG.RDBAL:
      case REG.RDLEN:
      case REG.RDH:
      case REG.RDT:
      case REG.RDTR:
      case REG.RADV:
      case REG.TDBAL:
      case REG.TDLEN:
      case REG.TDH:
      case REG.TDT:
      case REG.TIDV:
      case REG.TADV:
        return this.regs[i] as number;
      case REG.ICR: {
        // SDM §13.4.17: every bit is cleared by the read, which acknowledges the interrupt.
        const v = (this.s[W_ICR] as number) >>> 0;
        this.s[W_ICR] = 0;
        this.updateIrq(this.now());
        return v;
      }
      case REG.IMS:
        return (this.s[W_IMS] as number) >>> 0;
      case REG.ICS:
      case REG.IMC:
        return 0; // write-only
    }
    if (off >= STATS_FIRST && off <= STATS_LAST) return this.readStat(off);
    if (this.isKnown(off)) return this.regs[i] as number;
    this.unknown(off, "read");
    return 0;
  }

  private writeReg(off: number, v: number): void {
    const i = off >> 2;
    const regs = this.regs;
    const s = this.s;
    switch (off) {
      case REG.CTRL:
        if (v & CTRL_RST) {
          // SDM §13.4.1: the global reset self-clears; it does not reset the PHY or PCI configuration.
          this.resetRegisters();
          return;
        }
        if (v & CTRL_PHY_RST && !((regs[i] as number) & CTRL_PHY_RST)) this.phy.reset();
        regs[i] = v;
        return;
      case REG.STATUS:
        return; // read-only
      case REG.EECD: {
        const kept = v & (EECD_SK | EECD_CS | EECD_DI | EECD_FWE_MASK | EECD_REQ);
        regs[i] = kept;
        this.eeprom.setPins((kept & EECD_CS) !== 0, (kept & EECD_SK) !== 0, (kept & EECD_DI) !== 0);
        return;
      }
      case REG.EERD:
        this.eerd(v);
        return;
      case REG.MDIC:
        this.mdic(v);
        return;
      case REG.ICR:
        s[W_ICR] = (s[W_ICR] as number) & ~v;
        this.updateIrq(this.now());
        return;
      case REG.ICS:
        this.raise(v & ICR_VALID);
        return;
      case REG.IMS:
        s[W_IMS] = ((s[W_IMS] as number) | v) & ICR_VALID;
        this.updateIrq(this.now());
        return;
      case REG.IMC:
        s[W_IMS] = (s[W_IMS] as number) & ~v;
        this.updateIrq(this.now());
        return;
      case REG.ITR:
        regs[i] = v & 0xffff;
        return;
      case REG.RCTL: {
        const old = regs[i] as number;
        regs[i] = v;
        if (v & RCTL_EN && !(old & RCTL_EN)) this.rxReadyPending = true;
        return;
      }
      case REG.TCTL: {
        const old = regs[i] as number;
        regs[i] = v;
        if (v & TCTL_EN && !(old & TCTL_EN)) this.processTx();
        return;
      }
      case REG.RDBAL:
      case REG.TDBAL:
        regs[i] = v & ~0xf; // descriptor rings are 16-byte aligned; the low bits are ignored
        return;
      case REG.RDLEN:
        if (v % RING_LEN_ALIGN !== 0)
          this.guestError("rx-ring-len", `RDLEN ${hex(v)} is not a multiple of 128`);
        regs[i] = v & 0xfff80;
        return;
      case REG.TDLEN:
        if (v % RING_LEN_ALIGN !== 0)
          this.guestError("tx-ring-len", `TDLEN ${hex(v)} is not a multiple of 128`);
        regs[i] = v & 0xfff80;
        return;
      case REG.RDH:
        regs[i] = v & 0xffff;
        return;
      case REG.RDT:
        regs[i] = v & 0xffff;
        if ((regs[REG.RCTL >> 2] as number) & RCTL_EN) this.rxReadyPending = true;
        return;
      case REG.TDH:
        regs[i] = v & 0xffff;
        // The ring was repositioned: drop any partial packet, and the rest of a TSO packet being segmented.
        s[W_TXP_ACTIVE] = 0;
        s[W_TXP_SEGMENTING] = 0;
        return;
      case REG.TDT:
        regs[i] = v & 0xffff;
        this.processTx();
        return;
      case REG.RDTR:
        regs[i] = v & 0xffff;
        if (v & RDTR_FPD) {
          // SDM §13.4.30: FPD expires the timer at once.
          this.times[T_RX_PACKET] = this.times[T_RX_ABS] = Number.NaN;
          this.raise(ICR_RXT0);
        }
        return;
      case REG.RADV:
      case REG.TIDV:
      case REG.TADV:
        regs[i] = v & 0xffff;
        return;
    }
    if (off >= STATS_FIRST && off <= STATS_LAST) return; // read-only counters
    if (off >= REG.RAL0 && off < REG.RAL0 + RA_ENTRIES * 8 && off % 8 === 4) {
      regs[i] = v & RAH_WRITABLE;
      return;
    }
    if (this.isKnown(off)) {
      regs[i] = v;
      return;
    }
    this.unknown(off, "write");
  }

  /** Global reset (CTRL.RST): the register file to its defaults, the line lowered. */
  private resetRegisters(): void {
    resetRegisterFile(this.views, this.eeprom);
    if (this.s[W_LINE]) {
      this.s[W_LINE] = 0;
      this.irq.set(false);
    }
  }

  private status(): number {
    return STATUS_FD | STATUS_SPEED_1000 | (this.s[W_LINK] ? STATUS_LU : 0);
  }

  private eecd(): number {
    const v = this.regs[REG.EECD >> 2] as number;
    return (
      v | EECD_PRES | (v & EECD_REQ ? EECD_GNT : 0) | (this.eeprom.dataOut ? EECD_DO : 0) // 64-word part: EE_SIZE 0
    );
  }

  /** EERD (SDM §13.4.4): a read completes at once. The 64-word part decodes 6 address bits. */
  private eerd(v: number): void {
    const addr = (v >>> EERD_ADDR_SHIFT) & 0xff;
    if (v & EERD_START) {
      const data = this.eeprom.words[addr % EEPROM_WORDS] as number;
      this.regs[REG.EERD >> 2] = ((data << EERD_DATA_SHIFT) | (addr << EERD_ADDR_SHIFT) | EERD_DONE) >>> 0;
    } else {
      this.regs[REG.EERD >> 2] = (v & ~(EERD_DONE | EERD_START)) >>> 0;
    }
  }

  /** MDIC (SDM §13.4.6): the PHY access completes at once; only address 1 answers. */
  private mdic(v: number): void {
    const phyAddr = (v >>> MDIC_PHY_SHIFT) & 0x1f;
    const reg = (v >>> MDIC_REG_SHIFT) & 0x1f;
    const op = v & MDIC_OP_MASK;
    let result = (v & ~(MDIC_READY | MDIC_ERROR)) >>> 0;
    if (phyAddr !== PHY_ADDRESS || (op !== MDIC_OP_READ && op !== MDIC_OP_WRITE)) {
      result |= MDIC_ERROR;
    } else if (op === MDIC_OP_READ) {
      result = ((result & ~MDIC_DATA_MASK) | this.phy.read(reg)) >>> 0;
    } else {
      this.phy.write(reg, v & MDIC_DATA_MASK);
    }
    this.regs[REG.MDIC >> 2] = (result | MDIC_READY) >>> 0;
    if (v & MDIC_INT_EN) this.raise(ICR_MDAC);
  }

  // ---- Statistics (SDM §13.7): read-to-clear, 32-bit counters saturate ----

  private readStat(off: number): number {
    const i = (off - STATS_FIRST) >> 2;
    if (STATS_64_LOW.has(off)) return ((this.stats[i] as number) % TWO32) >>> 0;
    if (STATS_64_HIGH.has(off)) {
      // Reading the high half clears the 64-bit counter (SDM §13.7.31).
      const v = this.stats[i - 1] as number;
      this.stats[i - 1] = 0;
      return Math.floor(v / TWO32) >>> 0;
    }
    const v = this.stats[i] as number;
    this.stats[i] = 0;
    return v >>> 0;
  }

  private count(off: number, n = 1): void {
    const i = (off - STATS_FIRST) >> 2;
    const v = (this.stats[i] as number) + n;
    this.stats[i] = STATS_64_LOW.has(off) ? Math.min(v, Number.MAX_SAFE_INTEGER) : Math.min(v, 0xffffffff);
  }

  /** Size-bucket counter for a frame of `wire` bytes including FCS (PRC64.../PTC64...). */
  private countSize(first: number, wire: number): void {
    const bucket =
      wire <= 64 ? 0 : wire <= 127 ? 1 : wire <= 255 ? 2 : wire <= 511 ? 3 : wire <= 1023 ? 4 : 5;
    if (wire <= 1522) this.count(first + 4 * bucket);
  }

  // ---- Interrupts ----

  private raise(cause: number): void {
    this.s[W_ICR] = (this.s[W_ICR] as number) | cause;
    this.updateIrq(this.now());
  }

  /** Drives the line to (ICR & IMS) != 0, holding a new assertion back until the ITR interval has passed. */
  private updateIrq(t: number): void {
    const s = this.s;
    const tm = this.times;
    if (s[W_CLOSED]) return;
    if (((s[W_ICR] as number) & (s[W_IMS] as number)) === 0) {
      tm[T_ITR] = Number.NaN;
      if (s[W_LINE]) {
        s[W_LINE] = 0;
        this.irq.set(false);
      }
      return;
    }
    if (s[W_LINE]) return;
    const interval = ((this.regs[REG.ITR >> 2] as number) & 0xffff) * ITR_UNIT_MS;
    const last = tm[T_LAST_ASSERT] as number;
    if (interval > 0 && !Number.isNaN(last) && t - last < interval) {
      tm[T_ITR] = last + interval;
      return;
    }
    tm[T_ITR] = Number.NaN;
    tm[T_LAST_ASSERT] = t;
    s[W_LINE] = 1;
    this.mIrqRaised.add();
    this.irq.set(true);
  }

  // ---- Transmit (SDM §3.3) ----

  private ring(kind: "rx" | "tx"): Ring | undefined {
    const r = this.regs;
    const [bal, bah, len] =
      kind === "rx" ? [REG.RDBAL, REG.RDBAH, REG.RDLEN] : [REG.TDBAL, REG.TDBAH, REG.TDLEN];
    const count = (r[len >> 2] as number) / DESC_SIZE;
    if (count === 0) {
      if (kind === "rx") this.guestError("rx-ring-empty", "RDLEN is 0 while the unit is enabled");
      else this.guestError("tx-ring-empty", "TDLEN is 0 while the unit is enabled");
      return undefined;
    }
    return { base: (r[bah >> 2] as number) * TWO32 + (r[bal >> 2] as number), count };
  }

  /**
   * Transmit: descriptors from TDH up to TDT are processed in order, TDH following, until the ring is empty or
   * this entry point's budget (E1000_TX_SLICE) is spent. Then TDH stays where the work stopped (on the EOP
   * descriptor of a TSO packet whose segments are not all sent yet) and the T_TX_PENDING deadline is set to now,
   * so `poll()` (the I/O thread) continues with a fresh budget; any register access or received frame does too.
   * SDM §3.4 (transmit descriptor ring): the ring is empty when TDH == TDT, and TDH and TDT are indexes of
   * descriptors, so one at or past the ring's size (TDLEN / 16) points outside it: nothing is processed.
   */
  private processTx(): void {
    if (this.txBusy) return;
    this.times[T_TX_PENDING] = Number.NaN;
    if (this.s[W_CLOSED] || !((this.regs[REG.TCTL >> 2] as number) & TCTL_EN)) return;
    let tdh = this.regs[REG.TDH >> 2] as number;
    const tdt = this.regs[REG.TDT >> 2] as number;
    if (tdh === tdt) return;
    const ring = this.ring("tx");
    if (ring === undefined) return;
    if (tdh >= ring.count || tdt >= ring.count) {
      this.guestError("tx-ring-index", `TDH ${tdh} / TDT ${tdt} outside a ${ring.count}-descriptor ring`);
      return;
    }
    this.txBusy = true;
    let done = 0;
    let more = false;
    try {
      if (this.s[W_TXP_SEGMENTING]) {
        // The TSO packet whose EOP descriptor is at TDH: its next segments, then that descriptor's write-back.
        more = !this.txSegments();
        if (!more) {
          const s = this.s;
          const at = (s[W_TXP_EOP_HI] as number) * TWO32 + ((s[W_TXP_EOP_LO] as number) >>> 0);
          this.txStatusWriteback(at, s[W_TXP_EOP_CMD] as number, s[W_TXP_EOP_STA] as number);
          tdh = (tdh + 1) % ring.count;
          this.regs[REG.TDH >> 2] = tdh;
          done++;
        }
      }
      while (!more && tdh !== tdt) {
        if (this.txDescLeft <= 0 || this.txFramesLeft <= 0) {
          more = true;
          break;
        }
        const at = ring.base + tdh * DESC_SIZE;
        try {
          this.mem.read(at, this.txDesc);
        } catch (e) {
          if (!(e instanceof GuestMemoryError)) throw e;
          this.guestError("tx-ring-dma", `transmit descriptor at ${hex(at)} is outside guest RAM`);
          break;
        }
        if (this.txBytesLeft < E1000_TX_SLICE.bytes && txBufferLength(this.txDesc) > this.txBytesLeft) {
          more = true; // its buffer would overrun this slice: it is read first thing in the next one
          break;
        }
        this.txDescLeft--;
        if (!this.txDescriptor(this.txDesc, at, ring.count)) {
          more = true; // a TSO packet's segments did not all fit: TDH stays on its EOP descriptor
          break;
        }
        tdh = (tdh + 1) % ring.count;
        this.regs[REG.TDH >> 2] = tdh;
        done++;
      }
    } finally {
      this.txBusy = false;
    }
    if (more) {
      this.times[T_TX_PENDING] = this.now();
      this.mTxDeferred.add();
    }
    if (done > 0 && tdh === tdt) this.raise(ICR_TXQE);
  }

  /**
   * One descriptor. False when it is the EOP descriptor of a TSO packet whose segments are not all sent (the
   * slice's budget ran out): it is not complete, so there is no write-back and TDH must not pass it.
   */
  private txDescriptor(d: Uint8Array, at: number, ringCount: number): boolean {
    const lower = le32(d, 8);
    const cmd = d[11] as number;
    const sta = d[12] as number;
    const addr = le32(d, 4) * TWO32 + le32(d, 0);
    if (!(cmd & TXD_CMD_DEXT)) {
      // Legacy descriptor (SDM §3.3.3): length 15:0, CSO, CMD, STA, CSS, special.
      const special = le16(d, 14);
      this.txData(addr, lower & 0xffff, false, cmd, 0, special, ringCount);
      if (cmd & TXD_CMD_EOP) this.txFinish(cmd, special, d[13] as number, d[10] as number, at, sta);
    } else {
      const dtyp = (lower >>> 20) & 0xf;
      if (dtyp === TXD_DTYP_CONTEXT) {
        // TCP/IP context descriptor (SDM §3.3.6).
        this.setContext(cmd & TUCMD_TSE ? W_TSO_CTX : W_CSUM_CTX, {
          ipcss: d[0] as number,
          ipcso: d[1] as number,
          ipcse: le16(d, 2),
          tucss: d[4] as number,
          tucso: d[5] as number,
          tucse: le16(d, 6),
          paylen: lower & 0xfffff,
          tucmd: cmd,
          hdrlen: d[13] as number,
          mss: le16(d, 14),
        });
      } else if (dtyp === TXD_DTYP_DATA) {
        // TCP/IP data descriptor (SDM §3.3.7): DTALEN 19:0, DCMD, POPTS.
        const special = le16(d, 14);
        this.txData(addr, lower & 0xfffff, true, cmd, d[13] as number, special, ringCount);
        if (cmd & TXD_CMD_EOP && !this.txFinish(cmd, special, 0, 0, at, sta)) return false;
      } else {
        this.guestError("tx-desc-type", `transmit descriptor at ${hex(at)} has reserved type ${dtyp}`);
      }
    }
    this.txStatusWriteback(at, cmd, sta);
    return true;
  }

  /**
   * RS (SDM §3.3.3.2): DD is written in the status nibble of STA (bits 3:0; EC, LC and TU read 0 on this
   * full-duplex link); the reserved upper bits of that byte and the rest of the descriptor are left as they were.
   */
  private txStatusWriteback(at: number, cmd: number, sta: number): void {
    if (!(cmd & TXD_CMD_RS)) return;
    this.mem.writeU8(at + 12, (sta & 0xf0) | TXD_STAT_DD);
    this.txWriteback((cmd & TXD_CMD_IDE) !== 0);
  }

  /** Loads a transmit context into the shared state (`base`: W_CSUM_CTX or W_TSO_CTX). */
  private setContext(base: number, ctx: TxContext): void {
    CTX_FIELDS.forEach((f, i) => {
      this.s[base + i] = ctx[f];
    });
    this.s[base === W_TSO_CTX ? W_TSO_CTX_VALID : W_CSUM_CTX_VALID] = 1;
  }

  private context(base: number): TxContext | undefined {
    if (!this.s[base === W_TSO_CTX ? W_TSO_CTX_VALID : W_CSUM_CTX_VALID]) return undefined;
    const s = this.s;
    const f = (i: number): number => s[base + i] as number;
    return {
      ipcss: f(0),
      ipcso: f(1),
      ipcse: f(2),
      tucss: f(3),
      tucso: f(4),
      tucse: f(5),
      paylen: f(6),
      tucmd: f(7),
      hdrlen: f(8),
      mss: f(9),
    };
  }

  private txData(
    addr: number,
    len: number,
    extended: boolean,
    cmd: number,
    popts: number,
    special: number,
    ringCount: number,
  ): void {
    const s = this.s;
    if (!s[W_TXP_ACTIVE]) {
      // The first descriptor of a packet decides its kind; POPTS is only read here (SDM §3.3.7.3).
      s[W_TXP_ACTIVE] = 1;
      s[W_TXP_SIZE] = 0;
      s[W_TXP_DESCS] = 0;
      s[W_TXP_EXTENDED] = extended ? 1 : 0;
      s[W_TXP_TSE] = extended && (cmd & TXD_CMD_TSE) !== 0 ? 1 : 0;
      s[W_TXP_POPTS] = popts;
      s[W_TXP_FIRST_CMD] = cmd;
      s[W_TXP_FIRST_SPECIAL] = special;
      s[W_TXP_POISONED] = 0;
    }
    const descs = (s[W_TXP_DESCS] as number) + 1;
    s[W_TXP_DESCS] = descs;
    if (s[W_TXP_POISONED]) return;
    if (descs > ringCount) {
      this.poison("tx-no-eop", `a packet ran through all ${ringCount} descriptors without EOP`);
      return;
    }
    // Descriptors with a null address or zero length carry no data (SDM §3.3.3).
    if (len === 0 || addr === 0) return;
    const size = s[W_TXP_SIZE] as number;
    const limit = s[W_TXP_TSE] ? TX_BUFFER_BYTES : MAX_TX_FRAME;
    if (size + len > limit) {
      this.poison("tx-oversize", `packet grew past ${limit} bytes`);
      return;
    }
    try {
      // Straight into the shared packet buffer: the packet's next descriptors may be processed on another thread.
      this.mem.read(addr, this.txBuffer.subarray(size, size + len));
      this.txBytesLeft -= len;
    } catch (e) {
      if (!(e instanceof GuestMemoryError)) throw e;
      this.poison("tx-dma", `transmit buffer ${hex(addr)}+${len} is outside guest RAM`);
      return;
    }
    s[W_TXP_SIZE] = size + len;
  }

  private poison(kind: E1000ErrorKind, detail: string): void {
    this.s[W_TXP_POISONED] = 1;
    this.s[W_TXP_SIZE] = 0;
    this.guestError(kind, `${detail}; packet dropped`);
  }

  /**
   * The end of a packet (EOP): offloads, then the frame(s) to the backend. False when a TSO packet's segments did
   * not all fit in this slice (`at` and `sta` are its EOP descriptor's address and status byte, kept for the
   * write-back when the last segment is sent).
   */
  private txFinish(
    lastCmd: number,
    lastSpecial: number,
    css: number,
    cso: number,
    at: number,
    sta: number,
  ): boolean {
    const s = this.s;
    if (!s[W_TXP_ACTIVE]) return true;
    s[W_TXP_ACTIVE] = 0;
    const tse = s[W_TXP_TSE] !== 0;
    const size = s[W_TXP_SIZE] as number;
    if (s[W_TXP_POISONED]) {
      this.mTxDropped.add();
      if (tse) this.count(STAT.TSCTFC);
      return true;
    }
    if (size === 0) {
      this.guestError("tx-empty-packet", "end of packet with no data");
      this.mTxDropped.add();
      return true;
    }
    const popts = s[W_TXP_POPTS] as number;
    const ixsm = (popts & TXD_POPTS_IXSM) !== 0;
    const txsm = (popts & TXD_POPTS_TXSM) !== 0;
    if (s[W_TXP_EXTENDED] && tse) {
      const ctx = this.context(W_TSO_CTX);
      if (ctx === undefined) {
        this.guestError(
          "tso-no-context",
          "TCP segmentation data without a segmentation context; packet dropped",
        );
        this.count(STAT.TSCTFC);
        this.mTxDropped.add();
        return true;
      }
      if (size - ctx.hdrlen !== ctx.paylen) {
        // SDM §3.3.7.1: the context is terminated abnormally and counted; the data present is still sent.
        this.guestError("tso-paylen", `PAYLEN ${ctx.paylen} but ${size - ctx.hdrlen} payload bytes`);
        this.count(STAT.TSCTFC);
      }
      const plan = planTso(this.txBuffer.subarray(0, size), ctx, ixsm, txsm);
      if ("error" in plan) {
        this.guestError(
          plan.error,
          `bad segmentation context (MSS ${ctx.mss}, HDRLEN ${ctx.hdrlen}, packet ${size}); packet dropped`,
        );
        this.count(STAT.TSCTFC);
        this.mTxDropped.add();
        return true;
      }
      this.count(STAT.TSCTC);
      // The segments are made from the shared TX buffer a slice at a time (each one depends only on its index).
      s[W_TXP_SEGMENTING] = 1;
      s[W_TXP_SEG_NEXT] = 0;
      s[W_TXP_SEG_COUNT] = plan.count;
      s[W_TXP_EOP_CMD] = lastCmd;
      s[W_TXP_EOP_STA] = sta;
      s[W_TXP_EOP_LO] = at % TWO32;
      s[W_TXP_EOP_HI] = Math.floor(at / TWO32);
      return this.txSegments();
    }
    // A private copy: the offloads edit it, and the backend must not see shared memory.
    const pkt = this.txFrame.subarray(0, size);
    pkt.set(this.txBuffer.subarray(0, size));
    if (!s[W_TXP_EXTENDED]) {
      if (lastCmd & TXD_CMD_IC && !insertLegacyChecksum(pkt, css, cso)) {
        this.guestError(
          "tx-csum-range",
          `legacy checksum CSS ${css} / CSO ${cso} outside a ${pkt.length}-byte packet`,
        );
      }
    } else if (ixsm || txsm) {
      const ctx = this.context(W_CSUM_CTX);
      if (ctx === undefined) {
        this.guestError("tx-no-context", "checksum offload requested without a context; sent as is");
      } else {
        const err = insertContextChecksums(pkt, ctx, ixsm, txsm);
        if (err !== undefined) this.guestError(err, `checksum context outside a ${pkt.length}-byte packet`);
      }
    }
    // VLAN insertion (SDM §3.3.3.1 VLE): needs CTRL.VME; taken from the last descriptor (the first for TSO).
    const tag = lastCmd & TXD_CMD_VLE && (this.regs[REG.CTRL >> 2] as number) & CTRL_VME;
    this.txOut(size, tag !== 0, lastSpecial);
    return true;
  }

  /**
   * Sends the segments of the TSO packet in the TX buffer from W_TXP_SEG_NEXT on while the slice's frame budget
   * lasts. True once the last one is sent.
   */
  private txSegments(): boolean {
    const s = this.s;
    const ctx = this.context(W_TSO_CTX);
    if (ctx === undefined) {
      s[W_TXP_SEGMENTING] = 0; // not reached: whatever invalidates the context also ends the segmentation
      return true;
    }
    const pkt = this.txBuffer.subarray(0, s[W_TXP_SIZE] as number);
    const popts = s[W_TXP_POPTS] as number;
    const ixsm = (popts & TXD_POPTS_IXSM) !== 0;
    const txsm = (popts & TXD_POPTS_TXSM) !== 0;
    const count = s[W_TXP_SEG_COUNT] as number;
    // VLAN insertion for TSO: VLE and the tag come from the first data descriptor (SDM §3.3.7.1).
    const tag =
      (s[W_TXP_FIRST_CMD] as number) & TXD_CMD_VLE && (this.regs[REG.CTRL >> 2] as number) & CTRL_VME;
    const tci = s[W_TXP_FIRST_SPECIAL] as number;
    for (let i = s[W_TXP_SEG_NEXT] as number; i < count; i++) {
      if (this.txFramesLeft <= 0) {
        s[W_TXP_SEG_NEXT] = i;
        return false;
      }
      const f = tsoSegment(pkt, ctx, ixsm, txsm, i, count, this.txFrame);
      this.txOut(f.length, tag !== 0, tci);
    }
    s[W_TXP_SEGMENTING] = 0;
    return true;
  }

  /**
   * Sends the `length`-byte frame at the start of txFrame, after inserting an 802.1Q tag (VET, then `tci`) behind
   * the addresses when `tag`, and padding it to 60 bytes when TCTL.PSP asks for it.
   */
  private txOut(length: number, tag: boolean, tci: number): void {
    const buf = this.txFrame;
    let len = length;
    if (tag && len >= 12) {
      const vet = (this.regs[REG.VET >> 2] as number) & 0xffff;
      buf.copyWithin(12 + VLAN_TAG_LEN, 12, len);
      buf[12] = vet >>> 8;
      buf[13] = vet & 0xff;
      buf[14] = tci >>> 8;
      buf[15] = tci & 0xff;
      len += VLAN_TAG_LEN;
    }
    if (len < ETH_MIN_FRAME && (this.regs[REG.TCTL >> 2] as number) & TCTL_PSP) {
      buf.fill(0, len, ETH_MIN_FRAME);
      len = ETH_MIN_FRAME;
    }
    const f = buf.subarray(0, len);
    const wire = len + FCS_LEN;
    this.count(STAT.GPTC);
    this.count(STAT.TPT);
    this.count(STAT.GOTCL, wire);
    this.count(STAT.TOTL, wire);
    this.countSize(STAT.PTC64, wire);
    if (len >= 6 && (f[0] as number) & 1) this.count(isBroadcast(f) ? STAT.BPTC : STAT.MPTC);
    this.mTxFrames.add();
    this.mTxBytes.add(len);
    this.txFramesLeft--;
    if (!this.backend.send(f)) this.mTxBackendDropped.add();
  }

  /** A descriptor with RS was written back: TXDW now, or after TIDV/TADV when IDE is set (SDM §3.4). */
  private txWriteback(ide: boolean): void {
    const tm = this.times;
    const tidv = (this.regs[REG.TIDV >> 2] as number) & 0xffff;
    if (!ide || tidv === 0) {
      tm[T_TX_DELAY] = tm[T_TX_ABS] = Number.NaN;
      this.raise(ICR_TXDW);
      return;
    }
    const t = this.now();
    tm[T_TX_DELAY] = t + tidv * DELAY_UNIT_MS;
    const tadv = (this.regs[REG.TADV >> 2] as number) & 0xffff;
    if (tadv !== 0 && Number.isNaN(tm[T_TX_ABS] as number)) tm[T_TX_ABS] = t + tadv * DELAY_UNIT_MS;
  }

  // ---- Receive (SDM §3.2) ----

  /**
   * Address filtering (SDM §3.2.1 / RCTL): 0 = reject, 1 = accepted by an exact filter, promiscuous mode or
   * broadcast, 2 = accepted only by the multicast hash (reported as PIF).
   */
  private addressMatch(frame: Uint8Array, rctl: number): 0 | 1 | 2 {
    if (!((frame[0] as number) & 1)) {
      return rctl & RCTL_UPE || this.exactMatch(frame) ? 1 : 0;
    }
    if (isBroadcast(frame)) return rctl & (RCTL_BAM | RCTL_MPE) || this.exactMatch(frame) ? 1 : 0;
    if (rctl & RCTL_MPE || this.exactMatch(frame)) return 1;
    const h = mtaHash(frame, (rctl >>> RCTL_MO_SHIFT) & 3);
    return ((this.regs[(REG.MTA >> 2) + (h >>> 5)] as number) >>> (h & 31)) & 1 ? 2 : 0;
  }

  /** Destination address against the valid receive address registers with AS = 00 (destination). */
  private exactMatch(frame: Uint8Array): boolean {
    const lo = le32(frame, 0);
    const hi = le16(frame, 4);
    for (let n = 0; n < RA_ENTRIES; n++) {
      const rah = this.regs[(REG.RAH0 >> 2) + 2 * n] as number;
      if (!(rah & RAH_AV) || (rah >>> 16) & 3) continue;
      if ((this.regs[(REG.RAL0 >> 2) + 2 * n] as number) === lo && (rah & 0xffff) === hi) return true;
    }
    return false;
  }

  /** The receiver given to the backend: false means "no buffer now, offer it again later". */
  private receive(frame: Uint8Array): boolean {
    return this.locked(() => {
      if (this.s[W_CLOSED]) return true;
      let result = true;
      this.guard(() => {
        this.pollLocked();
        result = this.receiveFrame(frame);
      });
      return result;
    });
  }

  private receiveFrame(frame: Uint8Array): boolean {
    const rctl = this.regs[REG.RCTL >> 2] as number;
    if (!(rctl & RCTL_EN)) {
      this.mRxDropped.add(); // the receiver is off: the frame is lost on the wire
      return true;
    }
    if (frame.length < ETH_HEADER_LEN) {
      this.count(STAT.TPR);
      this.count(STAT.RUC);
      this.mRxDropped.add();
      return true;
    }
    let data = frame;
    if (data.length < ETH_MIN_FRAME) {
      data = new Uint8Array(ETH_MIN_FRAME);
      data.set(frame);
    }
    const wire = data.length + FCS_LEN;
    if (wire > (rctl & RCTL_LPE ? MAX_RX_JUMBO : MAX_RX_STANDARD)) {
      this.count(STAT.TPR);
      this.count(STAT.TORL, wire);
      this.count(STAT.ROC);
      this.mRxDropped.add();
      return true;
    }
    const vet = (this.regs[REG.VET >> 2] as number) & 0xffff;
    const tagged = vet !== 0 && be16(data, 12) === vet;
    const match = this.addressMatch(data, rctl);
    let pass = match !== 0;
    if (pass && tagged && rctl & RCTL_VFE) {
      const vid = be16(data, 14) & 0xfff;
      pass = (((this.regs[(REG.VFTA >> 2) + (vid >>> 5)] as number) >>> (vid & 31)) & 1) === 1;
    }
    if (!pass) {
      this.count(STAT.TPR);
      this.count(STAT.TORL, wire);
      this.mRxFiltered.add();
      return true;
    }

    const ring = this.ring("rx");
    if (ring === undefined) return false;
    const rdh = this.regs[REG.RDH >> 2] as number;
    const rdt = this.regs[REG.RDT >> 2] as number;
    if (rdh >= ring.count || rdt >= ring.count) {
      this.guestError("rx-ring-index", `RDH ${rdh} / RDT ${rdt} outside a ${ring.count}-descriptor ring`);
      return false;
    }

    // What lands in guest memory: the tag stripped if CTRL.VME (SDM §3.2.3.1 VP), the FCS unless RCTL.SECRC.
    let stored = data;
    let special = 0;
    let vp = 0;
    if (tagged && (this.regs[REG.CTRL >> 2] as number) & CTRL_VME) {
      special = be16(data, 14);
      vp = RXD_STAT_VP;
      stored = new Uint8Array(data.length - VLAN_TAG_LEN);
      stored.set(data.subarray(0, 12));
      stored.set(data.subarray(16), 12);
    }
    const rxcsum = this.regs[REG.RXCSUM >> 2] as number;
    const csum = rxChecksum(stored, rxcsum);
    if (!(rctl & RCTL_SECRC)) {
      const fcs = crc32(data);
      const withFcs = new Uint8Array(stored.length + FCS_LEN);
      withFcs.set(stored);
      withFcs[stored.length] = fcs & 0xff;
      withFcs[stored.length + 1] = (fcs >>> 8) & 0xff;
      withFcs[stored.length + 2] = (fcs >>> 16) & 0xff;
      withFcs[stored.length + 3] = fcs >>> 24;
      stored = withFcs;
    }

    const bufSize = rxBufferSize(rctl);
    const needed = Math.ceil(stored.length / bufSize);
    if (needed > ring.count - 1) {
      // The ring can never hold it (one descriptor always stays unused): refusing would stall the queue forever.
      this.guestError(
        "rx-frame-exceeds-ring",
        `a ${stored.length}-byte frame needs ${needed} buffers of ${bufSize}`,
      );
      this.mRxDropped.add();
      return true;
    }
    const free = (rdt - rdh + ring.count) % ring.count;
    if (needed > free) {
      this.count(STAT.MPC);
      this.count(STAT.RNBC);
      this.mRxNoBuffer.add();
      this.raise(ICR_RXO);
      return false;
    }

    // Check every descriptor and buffer before writing anything, so a bad one drops the frame cleanly.
    const descAddrs: number[] = [];
    const bufAddrs: number[] = [];
    for (let k = 0; k < needed; k++) {
      const at = ring.base + ((rdh + k) % ring.count) * DESC_SIZE;
      let buf: number;
      try {
        this.mem.check(at, DESC_SIZE);
        buf = this.mem.readU32(at + 4) * TWO32 + this.mem.readU32(at);
      } catch (e) {
        if (!(e instanceof GuestMemoryError)) throw e;
        this.guestError(
          "rx-ring-dma",
          `receive descriptor at ${hex(at)} is outside guest RAM; frame dropped`,
        );
        this.mRxDropped.add();
        return true;
      }
      const len = Math.min(bufSize, stored.length - k * bufSize);
      try {
        this.mem.check(buf, len);
      } catch (e) {
        if (!(e instanceof GuestMemoryError)) throw e;
        this.guestError("rx-dma", `receive buffer ${hex(buf)}+${len} is outside guest RAM; frame dropped`);
        this.mRxDropped.add();
        return true;
      }
      descAddrs.push(at);
      bufAddrs.push(buf);
    }

    const pcss = rxcsum & 0xff;
    const packetChecksum = pcss < stored.length ? foldSum(onesSum(stored, pcss, stored.length)) : 0;
    for (let k = 0; k < needed; k++) {
      const at = descAddrs[k] as number;
      const start = k * bufSize;
      const len = Math.min(bufSize, stored.length - start);
      const last = k === needed - 1;
      this.mem.write(bufAddrs[k] as number, stored.subarray(start, start + len));
      this.mem.writeU16(at + 8, len);
      this.mem.writeU16(at + 10, k === 0 ? packetChecksum : 0); // reported in the first descriptor
      this.mem.writeU8(at + 13, last ? csum.errors : 0);
      this.mem.writeU16(at + 14, last ? special : 0);
      const status = last ? RXD_STAT_EOP | csum.status | vp | (match === 2 ? RXD_STAT_PIF : 0) : 0;
      this.mem.writeU8(at + 12, RXD_STAT_DD | status);
    }
    this.regs[REG.RDH >> 2] = (rdh + needed) % ring.count;

    this.count(STAT.TPR);
    this.count(STAT.TORL, wire);
    this.count(STAT.GPRC);
    this.count(STAT.GORCL, wire);
    this.countSize(STAT.PRC64, wire);
    if ((data[0] as number) & 1) this.count(isBroadcast(data) ? STAT.BPRC : STAT.MPRC);
    this.mRxFrames.add();
    this.mRxBytes.add(frame.length);
    this.rxInterrupts(ring.count, free - needed);
    return true;
  }

  /** RXT0 now or after RDTR/RADV (SDM §3.2.7), and RXDMT0 when free descriptors reach RCTL.RDMTS. */
  private rxInterrupts(count: number, free: number): void {
    const tm = this.times;
    let cause = 0;
    const rdtr = (this.regs[REG.RDTR >> 2] as number) & 0xffff;
    if (rdtr === 0) {
      tm[T_RX_PACKET] = tm[T_RX_ABS] = Number.NaN;
      cause |= ICR_RXT0;
    } else {
      const t = this.now();
      tm[T_RX_PACKET] = t + rdtr * DELAY_UNIT_MS;
      const radv = (this.regs[REG.RADV >> 2] as number) & 0xffff;
      if (radv !== 0 && Number.isNaN(tm[T_RX_ABS] as number)) tm[T_RX_ABS] = t + radv * DELAY_UNIT_MS;
    }
    // RDMTS: 00 = 1/2, 01 = 1/4, 10 = 1/8 of the ring (11 is reserved; treated as 1/8).
    const rdmts = ((this.regs[REG.RCTL >> 2] as number) >>> RCTL_RDMTS_SHIFT) & 3;
    if (free <= count >>> Math.min(rdmts + 1, 3)) cause |= ICR_RXDMT0;
    if (cause !== 0) this.raise(cause);
  }

  // ---- Diagnostics ----

  /** Runs a guest-triggered operation; no exception escapes into the vCPU loop. */
  private guard(fn: () => void): void {
    try {
      fn();
    } catch (e) {
      if (e instanceof GuestMemoryError) {
        this.guestError("dma", e.message);
      } else {
        this.guestError("internal", `internal error: ${describeError(e)}`);
      }
    }
  }

  /** Counts a guest error in the shared state (atomically: also used outside the lock) and logs its kind once. */
  private guestError(kind: E1000ErrorKind, detail: string): void {
    const i = ERROR_INDEX.get(kind);
    if (i !== undefined) Atomics.add(this.errors, i, 1);
    let c = this.errorCounters.get(kind);
    if (c === undefined) {
      c = this.metrics?.counter(`${this.name}.error.${kind}`) ?? NO_COUNTER;
      this.errorCounters.set(kind, c);
    }
    c.add();
    this.warnOnce(kind, detail);
  }

  private warnOnce(kind: string, detail: string): void {
    if (this.loggedKinds.has(kind)) return;
    this.loggedKinds.add(kind);
    this.log?.(`${this.name}: ${detail} [${kind}; later occurrences are only counted]`);
  }

  private unknown(off: number, what: "read" | "write"): void {
    if (this.loggedOffsets.has(off)) return;
    this.loggedOffsets.add(off);
    this.log?.(`${this.name}: ${what} of unknown register ${hex(off)} (reads as 0, writes ignored)`);
  }
}

/**
 * The I/O BAR (SDM §13.2.1): IOADDR (offset 0) selects a register by its offset in the memory space, IODATA
 * (offset 4) reads or writes it. The Linux driver issues the 82540's global reset through this window. IOADDR is
 * device state (shared), so the two accesses may come from different threads.
 */
export class E1000IoPort implements BusDevice {
  readonly name: string;

  constructor(private readonly dev: E1000) {
    this.name = `${dev.name}-io`;
  }

  read(offset: number, data: Uint8Array): void {
    this.dev.ioRead(offset, data);
  }

  write(offset: number, data: Uint8Array): void {
    this.dev.ioWrite(offset, data);
  }
}
