/**
 * ACPI fixed hardware for a PC-compatible (not hardware-reduced) platform: the PM1a event and control blocks,
 * the power management timer and the FADT reset register, in one 16-port I/O block.
 *
 * Section references are to the ACPI Specification 6.x: §4.8.3.1 PM1 Event Grouping (§4.8.3.1.1 PM1_STS,
 * §4.8.3.1.2 PM1_EN), §4.8.3.2.1 PM1 Control Registers, §4.8.3.3 Power Management Timer, §4.8.3.6 Reset Register,
 * §5.2.9 FADT (SMI_CMD, TMR_VAL_EXT, RESET_REG_SUP), §7.4.2 \_Sx sleep-state packages (SLP_TYP values).
 *
 * Layout (offsets from ACPI_PM_BASE; give the same numbers to the ACPI table builder, see ACPI_PM_FADT):
 *   0x0 PM1a_STS (2)   0x2 PM1a_EN (2)   0x4 PM1a_CNT (2)   0x8 PM_TMR (4)   0xC reset register (1)
 *
 * Emulation choices:
 * - The FADT has SMI_CMD = 0, so the platform is always in ACPI mode: SCI_EN reads 1 and cannot be cleared.
 *   GBL_RLS (which would signal firmware) does nothing; there is no global lock owner besides the OS.
 * - SLP_EN with the S5 SLP_TYP (the value the DSDT's \_S5 package gives, ACPI_S5_SLP_TYP by default) calls
 *   `onPowerOff`. Other sleep types are logged and ignored: the guest carries on as if it had woken at once.
 * - The PM timer is 32 bits wide, because the ACPI builder sets TMR_VAL_EXT whenever it is given a PM timer
 *   port; a state made with `timerBits: 24` gives the 24-bit timer of FADTs without that flag. It counts at
 *   3.579545 MHz from a monotonic clock shared by all threads (CLOCK_MONOTONIC via process.hrtime), so it
 *   starts at an arbitrary value, as a free-running counter does.
 * - TMR_STS (the timer's top bit changed) and the SCI it can raise are computed when PM1_STS is read and on
 *   `poll`, which an integrator calls from a timer if it wants the SCI while the guest has TMR_EN set (Linux
 *   does not use it). Power button presses come from the host through `pressPowerButton`; they reach Linux only
 *   if the FADT declares a fixed power button (AcpiConfig.fixedPowerButton, included in ACPI_PM_FADT).
 * - Registers are byte-addressable: a 16- or 32-bit access is a run of byte accesses to consecutive offsets,
 *   low byte first, and a sleep request is acted on when the byte holding SLP_EN is written.
 *
 * State lives in a SharedArrayBuffer: each thread that may trap an access (each vCPU worker) constructs its own
 * AcpiPm over the same state, and every public method runs under the SharedLock kept in that state. The `irq`
 * callback is invoked with the lock held and must not call back into the device; `onPowerOff`, `onReset` and
 * `log` are invoked after the lock is released.
 */
import {
  ACPI_S5_SLP_TYP,
  type AcpiConfig,
  DEFAULT_SCI_IRQ,
  PM1_CNT_SCI_EN,
  PM1_CNT_SLP_EN,
  PM1_CNT_SLP_TYP_MASK,
  PM1_CNT_SLP_TYP_SHIFT,
  pm1ControlRequestsSleep,
} from "../../arch/x86/acpi/index.ts";
import type { BusDevice } from "../../bus/bus.ts";
import { VireoError } from "../../errors.ts";
import type { Counter, MetricsSink } from "../../metrics/registry.ts";
import {
  checkFields,
  type DeviceState,
  type StateField,
  StateReader,
  saveFields,
} from "../../shared/device-state.ts";
import { SharedLock } from "../../shared/shared-lock.ts";
import { attachSharedState } from "../../shared/shared-state.ts";

/** The I/O block: clear of COM1, the debug and test ports, PCI config (0xCF8-0xCFF) and PCI I/O (0xC000+). */
export const ACPI_PM_BASE = 0x600;
export const ACPI_PM_LEN = 0x10;
export const PM1A_EVT_BLK = ACPI_PM_BASE; // PM1_STS, then PM1_EN
export const PM1A_EVT_LEN = 4;
export const PM1A_CNT_BLK = ACPI_PM_BASE + 0x4;
export const PM1A_CNT_LEN = 2;
export const PM_TMR_BLK = ACPI_PM_BASE + 0x8;
export const PM_TMR_LEN = 4;
/** The FADT RESET_REG: a byte port inside the block (0xCF9, the usual chipset port, belongs to PCI config). */
export const ACPI_RESET_PORT = ACPI_PM_BASE + 0xc;
export const ACPI_RESET_VALUE = 0x06;
export const ACPI_SCI_IRQ = DEFAULT_SCI_IRQ;
/** §4.8.3.3: the PM timer runs at 3.579545 MHz. */
export const PM_TIMER_HZ = 3_579_545;

/** The AcpiConfig fields that describe this block: spread into the config given to buildAcpiTables. */
export const ACPI_PM_FADT = {
  sciIrq: ACPI_SCI_IRQ,
  pm1aEvtBlk: PM1A_EVT_BLK,
  pm1aCntBlk: PM1A_CNT_BLK,
  pmTmrBlk: PM_TMR_BLK,
  reset: { port: ACPI_RESET_PORT, value: ACPI_RESET_VALUE },
  fixedPowerButton: true,
} as const satisfies Partial<AcpiConfig>;

// PM1_STS bits (§4.8.3.1.1); PM1_EN enables sit at the same positions (§4.8.3.1.2).
export const PM1_STS_TMR = 1 << 0;
export const PM1_STS_BM = 1 << 4;
export const PM1_STS_GBL = 1 << 5;
export const PM1_STS_PWRBTN = 1 << 8;
export const PM1_STS_SLPBTN = 1 << 9;
export const PM1_STS_RTC = 1 << 10;
export const PM1_STS_PCIEXP_WAKE = 1 << 14;
export const PM1_STS_WAK = 1 << 15;
const PM1_STS_MASK =
  PM1_STS_TMR |
  PM1_STS_BM |
  PM1_STS_GBL |
  PM1_STS_PWRBTN |
  PM1_STS_SLPBTN |
  PM1_STS_RTC |
  PM1_STS_PCIEXP_WAKE |
  PM1_STS_WAK;
const PM1_EN_PCIEXP_WAKE_DIS = 1 << 14;
const PM1_EN_MASK =
  PM1_STS_TMR | PM1_STS_GBL | PM1_STS_PWRBTN | PM1_STS_SLPBTN | PM1_STS_RTC | PM1_EN_PCIEXP_WAKE_DIS;
/** Status bits that raise the SCI when enabled (the wake-only bits do not). */
const SCI_SOURCES = PM1_STS_TMR | PM1_STS_GBL | PM1_STS_PWRBTN | PM1_STS_SLPBTN | PM1_STS_RTC;

// PM1_CNT (§4.8.3.2.1): SCI_EN 0, BM_RLD 1, GBL_RLS 2 (write-only), SLP_TYP 12:10, SLP_EN 13 (write-only).
const PM1_CNT_BM_RLD = 1 << 1;
const PM1_CNT_STORED = PM1_CNT_BM_RLD | PM1_CNT_SLP_TYP_MASK;

// Register offsets in the block.
const OFF_STS = 0x0;
const OFF_EN = 0x2;
const OFF_CNT = 0x4;
const OFF_TMR = 0x8;
const OFF_RESET = 0xc;

// Shared state layout (byte offsets).
const S_LOCK = 0;
const S_MAGIC = 4;
const S_TMR_HALF = 8; // BigInt64: timer ticks / 2^(bits-1) when TMR_STS was last evaluated; -1 = never
const S_STS = 16; // u16
const S_EN = 18; // u16
const S_CNT = 20; // u16
const S_FLAGS = 22;
const S_TIMER_BITS = 23;
const S_S5_SLP_TYP = 24;
const S_RESET_VALUE = 25;
const STATE_BYTES = 32;

const F_SCI_LEVEL = 0x01;

const MAGIC = 0x41504d31; // "APM1"

/**
 * The shared state for snapshots, but the lock and magic words and the timer's last evaluated half: the PM timer
 * counts the host's monotonic clock, which does not carry over to another process, so a restored device starts
 * its TMR_STS tracking afresh (docs/snapshot.md).
 */
const STATE_FIELDS: readonly StateField[] = [
  { name: "status", at: S_STS, type: "u16", max: PM1_STS_MASK },
  { name: "enable", at: S_EN, type: "u16", max: PM1_EN_MASK },
  { name: "control", at: S_CNT, type: "u16", max: PM1_CNT_STORED },
  { name: "flags", at: S_FLAGS, type: "u8", max: F_SCI_LEVEL },
  { name: "timerBits", at: S_TIMER_BITS, type: "u8", min: 24, max: 32 },
  { name: "s5SlpTyp", at: S_S5_SLP_TYP, type: "u8", max: 7 },
  { name: "resetValue", at: S_RESET_VALUE, type: "u8" },
];
const STATE_KIND = "acpi-pm";
const STATE_VERSION = 1;

const NS_PER_SECOND = 1_000_000_000n;

export interface AcpiPmIrq {
  set(level: boolean): void;
}

/** Settings fixed when the state is created (the same for every thread's instance). */
export interface AcpiPmStateOptions {
  /** PM timer width: 32 when the FADT sets TMR_VAL_EXT (vireo's ACPI builder does), else 24. Default 32. */
  timerBits?: 24 | 32;
  /** SLP_TYP that means S5, as in the DSDT's \_S5 package. Default ACPI_S5_SLP_TYP. */
  s5SlpTyp?: number;
  /** The byte that resets the machine when written to the reset register. Default ACPI_RESET_VALUE. */
  resetValue?: number;
}

export interface AcpiPmOptions extends AcpiPmStateOptions {
  state: SharedArrayBuffer;
  /** Reset the state (applying the state options). Exactly one constructor passes true; or use createState. */
  init?: boolean;
  /** The SCI, a level-triggered line (IRQ ACPI_SCI_IRQ, active high as the MADT override says). */
  irq: AcpiPmIrq;
  /** The guest entered S5 (soft-off). Called without the lock held. */
  onPowerOff: () => void;
  /** The guest wrote the reset value to the reset register. Called without the lock held. */
  onReset: () => void;
  /** Monotonic time in nanoseconds, the same clock in every thread. Default process.hrtime.bigint. */
  clockNs?: () => bigint;
  /** Where unsupported requests (sleep states other than S5) are reported. Default: nowhere. */
  log?: (message: string) => void;
  metrics?: MetricsSink;
  /** Used in metric names: `acpi_pm.<name>.sci_irqs`. Default "acpi-pm". */
  name?: string;
}

export class AcpiPmError extends VireoError {
  constructor(message: string) {
    super("VIREO_ACPI_PM", message);
  }
}

const NO_COUNTER: Counter = { add() {}, value: 0 };

export class AcpiPm implements BusDevice {
  static readonly STATE_BYTES = STATE_BYTES;

  readonly name: string;
  private readonly d: DataView;
  private readonly lock: SharedLock;
  private readonly irq: AcpiPmIrq;
  private readonly onPowerOff: () => void;
  private readonly onReset: () => void;
  private readonly clockNs: () => bigint;
  private readonly log: (message: string) => void;
  private readonly sciIrqs: Counter;
  private readonly powerOffs: Counter;
  private readonly resets: Counter;
  private readonly sleepsIgnored: Counter;
  /** Work noted under the lock and done after it is released. */
  private deferred: Array<() => void> = [];

  /** A fresh, reset state buffer to hand to every thread's AcpiPm. */
  static createState(opts: AcpiPmStateOptions = {}): SharedArrayBuffer {
    const state = new SharedArrayBuffer(STATE_BYTES);
    resetState(state, opts);
    return state;
  }

  constructor(opts: AcpiPmOptions) {
    const attached = attachSharedState({
      device: "AcpiPm",
      state: opts.state,
      bytes: STATE_BYTES,
      magicOffset: S_MAGIC,
      magic: MAGIC,
      lockOffset: S_LOCK,
      init: opts.init,
      reset: (state) => resetState(state, opts),
      error: (message) => new AcpiPmError(message),
    });
    this.d = attached.view;
    this.lock = attached.lock;
    this.irq = opts.irq;
    this.onPowerOff = opts.onPowerOff;
    this.onReset = opts.onReset;
    this.clockNs = opts.clockNs ?? (() => process.hrtime.bigint());
    this.log = opts.log ?? (() => {});
    this.name = opts.name ?? "acpi-pm";
    const m = opts.metrics;
    this.sciIrqs = m?.counter(`acpi_pm.${this.name}.sci_irqs`) ?? NO_COUNTER;
    this.powerOffs = m?.counter(`acpi_pm.${this.name}.power_off`) ?? NO_COUNTER;
    this.resets = m?.counter(`acpi_pm.${this.name}.resets`) ?? NO_COUNTER;
    this.sleepsIgnored = m?.counter(`acpi_pm.${this.name}.sleep_ignored`) ?? NO_COUNTER;
  }

  // ---- BusDevice ----

  read(offset: number, data: Uint8Array): void {
    this.locked(() => {
      // One timer sample per access, so that a 32-bit read is one consistent value.
      let tmr: number | undefined;
      for (let i = 0; i < data.length; i++) {
        const at = offset + i;
        if (at >= OFF_TMR && at < OFF_TMR + PM_TMR_LEN) {
          tmr ??= this.timerValue();
          data[i] = (tmr >>> (8 * (at - OFF_TMR))) & 0xff;
        } else {
          data[i] = this.readByte(at);
        }
      }
    });
  }

  write(offset: number, data: Uint8Array): void {
    this.locked(() => {
      for (let i = 0; i < data.length; i++) this.writeByte(offset + i, data[i] as number);
    });
  }

  // ---- host side ----

  /**
   * The power button was pressed: sets PWRBTN_STS, which raises the SCI if the guest enabled PWRBTN_EN (an ACPI
   * OS then normally shuts down). Returns whether the event was enabled.
   */
  pressPowerButton(): boolean {
    return this.locked(() => {
      this.setSts(this.sts | PM1_STS_PWRBTN);
      return (this.en & PM1_STS_PWRBTN) !== 0;
    });
  }

  /** Brings TMR_STS up to date and drives the SCI; for an integrator timer while the guest has TMR_EN set. */
  poll(): void {
    this.locked(() => this.refreshTimerStatus());
  }

  /** Whether the guest has enabled the timer-carry event (TMR_EN), i.e. whether `poll` is worth calling. */
  get timerEventEnabled(): boolean {
    return this.lock.withLock(() => (this.en & PM1_STS_TMR) !== 0);
  }

  // ---- snapshots ----

  /** The PM1 registers and settings, for a snapshot. */
  saveState(): DeviceState {
    return this.lock.withLock(() => ({
      kind: STATE_KIND,
      version: STATE_VERSION,
      data: saveFields(this.d, STATE_FIELDS),
    }));
  }

  /** Replaces the state with a saved one (checked first), then drives the SCI as the restored registers say. */
  restoreState(s: DeviceState): void {
    const r = StateReader.open(`AcpiPm ${this.name}`, s, STATE_KIND, STATE_VERSION);
    const write = checkFields(r, STATE_FIELDS);
    const bits = r.int("timerBits", 24, 32);
    if (bits !== 24 && bits !== 32) r.fail("timerBits", `is ${bits}, not 24 or 32`);
    if ((r.int("status", 0, 0xffff) & ~PM1_STS_MASK) !== 0) r.fail("status", "has reserved bits set");
    if ((r.int("enable", 0, 0xffff) & ~PM1_EN_MASK) !== 0) r.fail("enable", "has reserved bits set");
    if ((r.int("control", 0, 0xffff) & ~PM1_CNT_STORED) !== 0)
      r.fail("control", "has bits that are not stored");
    this.locked(() => {
      write(this.d);
      this.d.setBigInt64(S_TMR_HALF, -1n, true);
      this.d.setUint8(S_FLAGS, this.d.getUint8(S_FLAGS) & ~F_SCI_LEVEL);
    });
  }

  // ---- registers (everything below runs with the lock held) ----

  /** Runs `fn` under the lock, drives the SCI, then releases the lock and runs deferred callbacks. */
  private locked<T>(fn: () => T): T {
    let result: T;
    this.deferred = [];
    this.lock.lock();
    try {
      result = fn();
      this.update();
    } finally {
      this.lock.unlock();
    }
    const work = this.deferred;
    this.deferred = [];
    for (const w of work) w();
    return result;
  }

  private get sts(): number {
    return this.d.getUint16(S_STS, true);
  }

  private setSts(v: number): void {
    this.d.setUint16(S_STS, v & PM1_STS_MASK, true);
  }

  private get en(): number {
    return this.d.getUint16(S_EN, true);
  }

  private get cnt(): number {
    return this.d.getUint16(S_CNT, true);
  }

  private get timerBits(): number {
    return this.d.getUint8(S_TIMER_BITS);
  }

  private ticks(): bigint {
    return (this.clockNs() * BigInt(PM_TIMER_HZ)) / NS_PER_SECOND;
  }

  /** §4.8.3.3: TMR_VAL, a free-running count that wraps at 2^24 or 2^32. */
  private timerValue(): number {
    return Number(BigInt.asUintN(this.timerBits, this.ticks()));
  }

  /** §4.8.3.1.1: TMR_STS is set whenever the timer's most significant bit changes. */
  private refreshTimerStatus(): void {
    const half = this.ticks() >> BigInt(this.timerBits - 1);
    const last = this.d.getBigInt64(S_TMR_HALF, true);
    this.d.setBigInt64(S_TMR_HALF, half, true);
    if (last >= 0n && half !== last) this.setSts(this.sts | PM1_STS_TMR);
  }

  private readByte(at: number): number {
    switch (at) {
      case OFF_STS:
      case OFF_STS + 1:
        this.refreshTimerStatus();
        return byteOf(this.sts, at - OFF_STS);
      case OFF_EN:
      case OFF_EN + 1:
        return byteOf(this.en, at - OFF_EN);
      case OFF_CNT:
      case OFF_CNT + 1:
        // SCI_EN reads 1: no SMI_CMD, so always in ACPI mode. SLP_EN and GBL_RLS are write-only and read 0.
        return byteOf(this.cnt | PM1_CNT_SCI_EN, at - OFF_CNT);
      case OFF_RESET:
        return 0;
      default:
        return 0xff;
    }
  }

  private writeByte(at: number, v: number): void {
    switch (at) {
      case OFF_STS:
      case OFF_STS + 1:
        // §4.8.3.1.1: status bits are cleared by writing 1; writing 0 leaves them alone.
        this.refreshTimerStatus();
        this.setSts(this.sts & ~(v << (8 * (at - OFF_STS))));
        return;
      case OFF_EN:
      case OFF_EN + 1:
        this.d.setUint16(S_EN, withByte(this.en, at - OFF_EN, v) & PM1_EN_MASK, true);
        return;
      case OFF_CNT:
      case OFF_CNT + 1:
        this.writeControl(withByte(this.cnt, at - OFF_CNT, v), at === OFF_CNT + 1);
        return;
      case OFF_RESET:
        // §4.8.3.6: writing RESET_VALUE to RESET_REG resets the system; other values do nothing.
        if (v === this.d.getUint8(S_RESET_VALUE)) {
          this.resets.add();
          this.deferred.push(this.onReset);
        }
        return;
      default:
        return; // PM_TMR is read-only; the rest of the block is unused
    }
  }

  private writeControl(value: number, highByte: boolean): void {
    this.d.setUint16(S_CNT, value & PM1_CNT_STORED, true);
    // SLP_EN lives in the high byte: act when it is written (a 16-bit write has stored the low byte by then).
    if (!highByte || !(value & PM1_CNT_SLP_EN)) return;
    const s5 = this.d.getUint8(S_S5_SLP_TYP);
    if (pm1ControlRequestsSleep(value, s5)) {
      // §7.4.2: the \_S5 package's SLP_TYP with SLP_EN enters soft-off.
      this.powerOffs.add();
      this.deferred.push(this.onPowerOff);
      return;
    }
    const slpTyp = (value & PM1_CNT_SLP_TYP_MASK) >> PM1_CNT_SLP_TYP_SHIFT;
    this.sleepsIgnored.add();
    const message = `${this.name}: guest asked for sleep with SLP_TYP=${slpTyp}; only S5 (SLP_TYP=${s5}) is supported, ignored`;
    this.deferred.push(() => this.log(message));
  }

  /** Ends every locked operation: the SCI is high while any enabled event's status bit is set. */
  private update(): void {
    const level = (this.sts & this.en & SCI_SOURCES) !== 0;
    const flags = this.d.getUint8(S_FLAGS);
    if (level === ((flags & F_SCI_LEVEL) !== 0)) return;
    this.d.setUint8(S_FLAGS, level ? flags | F_SCI_LEVEL : flags & ~F_SCI_LEVEL);
    if (level) this.sciIrqs.add();
    this.irq.set(level);
  }
}

function byteOf(v: number, i: number): number {
  return (v >> (8 * i)) & 0xff;
}

function withByte(v: number, i: number, b: number): number {
  const shift = 8 * i;
  return (v & ~(0xff << shift)) | ((b & 0xff) << shift);
}

function resetState(state: SharedArrayBuffer, opts: AcpiPmStateOptions): void {
  const timerBits = opts.timerBits ?? 32;
  if (timerBits !== 24 && timerBits !== 32) {
    throw new AcpiPmError(`AcpiPm: the PM timer is 24 or 32 bits wide, not ${timerBits}`);
  }
  const s5 = opts.s5SlpTyp ?? ACPI_S5_SLP_TYP;
  if (!Number.isInteger(s5) || s5 < 0 || s5 > 7) {
    throw new AcpiPmError(`AcpiPm: SLP_TYP ${s5} must fit the 3-bit PM1_CNT field`);
  }
  const resetValue = opts.resetValue ?? ACPI_RESET_VALUE;
  if (!Number.isInteger(resetValue) || resetValue < 0 || resetValue > 0xff) {
    throw new AcpiPmError(`AcpiPm: reset value ${resetValue} must be a byte`);
  }
  new Uint8Array(state, 0, STATE_BYTES).fill(0);
  SharedLock.init(state, S_LOCK);
  const d = new DataView(state, 0, STATE_BYTES);
  d.setBigInt64(S_TMR_HALF, -1n, true);
  d.setUint8(S_TIMER_BITS, timerBits);
  d.setUint8(S_S5_SLP_TYP, s5);
  d.setUint8(S_RESET_VALUE, resetValue);
  // The magic goes last: an attaching thread that sees it sees the rest.
  Atomics.store(new Int32Array(state, 0, 2), S_MAGIC / 4, MAGIC);
}
