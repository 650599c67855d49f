/**
 * The PC/AT CMOS real-time clock: a Motorola MC146818A-compatible RTC with 128 bytes of CMOS RAM (as in the
 * Dallas DS12887), at I/O 0x70 (index; bit 7 disables NMI) and 0x71 (data), interrupting on ISA IRQ 8.
 *
 * Section references ("DS") are to the MC146818A / DS12887 datasheets: "Address Map" (registers 0x00-0x0D and
 * user RAM), "Time, Calendar and Alarm Locations" (binary/BCD and 12/24-hour encodings, alarm don't-care codes),
 * "Register A" (UIP, DV2-0, RS3-0 and the periodic rate table), "Register B" (SET, PIE, AIE, UIE, SQWE, DM,
 * 24/12, DSE), "Register C" (IRQF, PF, AF, UF) and "Register D" (VRT). The memory-size bytes at 0x15-0x18,
 * 0x30-0x31 and 0x34-0x35 and the checksum at 0x2E-0x2F are the PC BIOS conventions for the user RAM, not the
 * chip's.
 *
 * Emulation choices:
 * - The clock is the host's wall clock (`now`) plus an offset in the shared state. The guest changes the offset
 *   by writing the time: in SET mode the time registers hold what the guest writes and the clock starts from
 *   there when SET is cleared (DS Register B, bit 7); outside SET mode a write to a time register takes effect
 *   at once. The time is UTC.
 * - No update cycle is ever "in progress": register A's UIP bit reads 0, so a guest polling it leaves at once.
 *   The registers always hold a consistent time, which is what UIP exists to guarantee.
 * - Changing DM or 24/12 changes how the time reads back (the real part would need the time rewritten), and
 *   the day of week (register 6) is derived from the date: writing it has no lasting effect.
 * - The divider bits DV2-0 and the DSE, SQWE bits are stored but do nothing (there is no SQW pin; daylight
 *   saving is left to the guest). The periodic flag follows RS3-0 as for a 32.768 kHz time base.
 * - The century (CMOS byte 0x32 by default, as the FADT's CENTURY field says) is part of the clock: it reads
 *   the guest's year / 100 and a write changes it. On real PCs it is a RAM byte the BIOS maintains.
 * - Interrupt flags are computed when they are looked at: reading register C, and `poll`, which an integrator
 *   that wants timely update/alarm/periodic interrupts calls from a timer (`nextEventDelayMs` says when).
 *
 * State lives in a SharedArrayBuffer so that every thread that may trap an access (each vCPU worker) sees one
 * clock; each thread constructs its own CmosRtc over it, and every public method runs under the SharedLock in
 * that state. The `irq` callback is invoked with the lock held and must not call back into the device.
 */
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

/** The index port; the data port follows it. Register the device at RTC_PORT for RTC_PORT_COUNT ports. */
export const RTC_PORT = 0x70;
export const RTC_PORT_COUNT = 2;
export const RTC_IRQ = 8;
/** CMOS index of the century byte: the value to give the FADT's CENTURY field. */
export const RTC_CENTURY_INDEX = 0x32;
/** Bytes of CMOS (clock registers plus user RAM) addressed by the 7-bit index. */
export const CMOS_SIZE = 128;

// Port offsets
const PORT_INDEX = 0;
const PORT_DATA = 1;
const INDEX_NMI_DISABLE = 0x80;
const INDEX_MASK = 0x7f;

// Clock registers (DS address map)
const REG_SECONDS = 0x00;
const REG_SECONDS_ALARM = 0x01;
const REG_MINUTES = 0x02;
const REG_MINUTES_ALARM = 0x03;
const REG_HOURS = 0x04;
const REG_HOURS_ALARM = 0x05;
const REG_DAY_OF_WEEK = 0x06;
const REG_DAY_OF_MONTH = 0x07;
const REG_MONTH = 0x08;
const REG_YEAR = 0x09;
const REG_A = 0x0a;
const REG_B = 0x0b;
const REG_C = 0x0c;
const REG_D = 0x0d;

const A_UIP = 0x80;
const A_DV = 0x70;
const A_RS = 0x0f;
/** DV = 010 (32.768 kHz time base, divider running) and RS = 0110 (1024 Hz): the PC BIOS setting. */
const A_RESET = 0x26;

const B_SET = 0x80;
const B_PIE = 0x40;
const B_AIE = 0x20;
const B_UIE = 0x10;
const B_DM_BINARY = 0x04;
const B_24H = 0x02;
/** 24-hour, BCD, no interrupts: the PC BIOS setting. */
const B_RESET = B_24H;

const C_IRQF = 0x80;
const C_PF = 0x40;
const C_AF = 0x20;
const C_UF = 0x10;
const C_FLAGS = C_PF | C_AF | C_UF;

/** Register D: valid RAM and time (the battery is good). Bits 6-0 read 0. */
const D_VRT = 0x80;

/** Hours-register bit 7 in 12-hour mode: PM (DS "Time, Calendar and Alarm Locations"). */
const HOUR_PM = 0x80;
/** An alarm byte with its two high bits set matches any value (DS: "don't care" code 0xC0-0xFF). */
const ALARM_DONT_CARE = 0xc0;

// PC BIOS memory-size bytes (little endian pairs) and the standard checksum over 0x10-0x2D.
const CMOS_BASE_MEM_KB = 0x15;
const CMOS_EXT_MEM_KB = 0x17;
const CMOS_EXT_MEM_KB_COPY = 0x30;
const CMOS_MEM_ABOVE_16M_64K = 0x34;
const CMOS_CHECKSUM = 0x2e;
const CHECKSUM_FIRST = 0x10;
const CHECKSUM_LAST = 0x2d;

// Shared state layout (byte offsets).
const S_LOCK = 0;
const S_MAGIC = 4;
const S_OFFSET_MS = 8; // float64: guest time minus host time
const S_LAST_EVAL_MS = 16; // float64: guest time up to which flags were computed (NaN: not yet)
const S_INDEX = 24;
const S_NMI_DISABLED = 25;
const S_FLAGS = 26;
const S_CENTURY_INDEX = 27;
const S_RAM = 32;
const STATE_BYTES = S_RAM + CMOS_SIZE;

const F_IRQ_LEVEL = 0x01;
/** A time register was written while SET was 1: clearing SET moves the clock. */
const F_SET_DIRTY = 0x02;

const MAGIC = 0x52544331; // "RTC1"

/**
 * Everything in the shared state but the lock and magic words, for snapshots. The offset is to the host's wall
 * clock (Date), which another host shares to within NTP's accuracy, so the guest's clock goes on by the time that
 * passed between save and restore.
 */
const STATE_FIELDS: readonly StateField[] = [
  { name: "offsetMs", at: S_OFFSET_MS, type: "f64" },
  { name: "lastEvaluatedMs", at: S_LAST_EVAL_MS, type: "f64" },
  { name: "index", at: S_INDEX, type: "u8", max: CMOS_SIZE - 1 },
  { name: "nmiDisabled", at: S_NMI_DISABLED, type: "u8", max: 1 },
  { name: "flags", at: S_FLAGS, type: "u8", max: F_IRQ_LEVEL | F_SET_DIRTY },
  { name: "centuryIndex", at: S_CENTURY_INDEX, type: "u8", min: REG_D + 1, max: CMOS_SIZE - 1 },
  { name: "ram", at: S_RAM, type: "bytes", length: CMOS_SIZE },
];
const STATE_KIND = "cmos-rtc";
const STATE_VERSION = 1;

const MS_PER_SECOND = 1000;
const SECONDS_PER_DAY = 86400;

export interface CmosRtcIrq {
  set(level: boolean): void;
}

/** Contents fixed when the state is created (they must be the same for every thread's instance). */
export interface CmosRtcStateOptions {
  /**
   * Guest RAM below 4 GiB, in bytes: fills the PC BIOS memory-size bytes (0x15-0x18, 0x30-0x31, 0x34-0x35) and
   * the checksum at 0x2E-0x2F. Omit to leave them 0.
   */
  memSize?: number;
  /** CMOS index of the century byte. Default RTC_CENTURY_INDEX (0x32); 0x0E-0x7F. */
  centuryIndex?: number;
}

export interface CmosRtcOptions extends CmosRtcStateOptions {
  state: SharedArrayBuffer;
  /** Reset the state (applying memSize and centuryIndex). Exactly one constructor passes true; or createState. */
  init?: boolean;
  irq: CmosRtcIrq;
  /** The host's wall clock. Default `() => new Date()`. */
  now?: () => Date;
  metrics?: MetricsSink;
  /** Used in metric names: `rtc.<name>.irqs`. Default "cmos". */
  name?: string;
}

export class CmosRtcError extends VireoError {
  constructor(message: string) {
    super("VIREO_CMOS_RTC", message);
  }
}

const NO_COUNTER: Counter = { add() {}, value: 0 };

/** Periodic interrupt rate for RS3-0 with a 32.768 kHz time base (DS Register A table), in Hz; 0 = none. */
function periodicHz(rs: number): number {
  if (rs === 0) return 0;
  if (rs <= 2) return 256 >> (rs - 1); // RS 1, 2 repeat the 256 and 128 Hz taps
  return 65536 >> rs; // RS 3 = 8192 Hz ... RS 15 = 2 Hz
}

function toBcd(v: number): number {
  return ((Math.floor(v / 10) % 10) << 4) | (v % 10);
}

function fromBcd(v: number): number {
  return (v >> 4) * 10 + (v & 0x0f);
}

/** A UTC time of day and date, as the clock registers hold it. */
interface Fields {
  second: number;
  minute: number;
  hour: number; // 0-23
  day: number; // 1-31
  month: number; // 1-12
  year: number; // full year
}

function fieldsOf(ms: number): Fields {
  const d = new Date(ms);
  return {
    second: d.getUTCSeconds(),
    minute: d.getUTCMinutes(),
    hour: d.getUTCHours(),
    day: d.getUTCDate(),
    month: d.getUTCMonth() + 1,
    year: d.getUTCFullYear(),
  };
}

/** Milliseconds since the epoch for `f` (out-of-range fields roll over, as Date does). */
function msOf(f: Fields): number {
  const d = new Date(0);
  // setUTCFullYear, unlike Date.UTC, does not map years 0-99 to 1900-1999.
  d.setUTCFullYear(f.year, f.month - 1, f.day);
  d.setUTCHours(f.hour, f.minute, f.second, 0);
  return d.getTime();
}

export class CmosRtc implements BusDevice {
  static readonly STATE_BYTES = STATE_BYTES;

  readonly name: string;
  private readonly d: DataView;
  private readonly lock: SharedLock;
  private readonly irq: CmosRtcIrq;
  private readonly now: () => Date;
  private readonly irqs: Counter;

  /** A fresh, reset state buffer to hand to every thread's CmosRtc. */
  static createState(opts: CmosRtcStateOptions = {}): SharedArrayBuffer {
    const state = new SharedArrayBuffer(STATE_BYTES);
    resetState(state, opts);
    return state;
  }

  constructor(opts: CmosRtcOptions) {
    const attached = attachSharedState({
      device: "CmosRtc",
      state: opts.state,
      bytes: STATE_BYTES,
      magicOffset: S_MAGIC,
      magic: MAGIC,
      lockOffset: S_LOCK,
      init: opts.init,
      reset: (state) => resetState(state, opts),
      error: (message) => new CmosRtcError(message),
    });
    this.d = attached.view;
    this.lock = attached.lock;
    this.irq = opts.irq;
    this.now = opts.now ?? (() => new Date());
    this.name = opts.name ?? "cmos";
    this.irqs = opts.metrics?.counter(`rtc.${this.name}.irqs`) ?? NO_COUNTER;
  }

  // ---- BusDevice ----

  /** Offset 0 is the index port, 1 the data port; a wider access covers consecutive ports, past them 0xff. */
  read(offset: number, data: Uint8Array): void {
    this.lock.lock();
    try {
      for (let i = 0; i < data.length; i++) data[i] = this.readPort(offset + i);
      this.update();
    } finally {
      this.lock.unlock();
    }
  }

  write(offset: number, data: Uint8Array): void {
    this.lock.lock();
    try {
      for (let i = 0; i < data.length; i++) this.writePort(offset + i, data[i] as number);
      this.update();
    } finally {
      this.lock.unlock();
    }
  }

  // ---- host side ----

  /**
   * Brings the interrupt flags up to date with the clock and drives IRQ 8: call from a timer while an interrupt
   * is enabled (see nextEventDelayMs). `now` defaults to the `now` option's clock.
   */
  poll(now?: Date): void {
    this.lock.lock();
    try {
      this.evaluate(now);
      this.update();
    } finally {
      this.lock.unlock();
    }
  }

  /**
   * Milliseconds until the next update, alarm check or periodic tick the guest has enabled an interrupt for, or
   * null if none is enabled: when the integrator's timer should next call `poll`.
   */
  nextEventDelayMs(): number | null {
    return this.lock.withLock(() => {
      const b = this.ram(REG_B);
      const t = this.guestMs();
      let delay = Number.POSITIVE_INFINITY;
      const hz = periodicHz(this.ram(REG_A) & A_RS);
      if (b & B_PIE && hz > 0) {
        const period = MS_PER_SECOND / hz;
        delay = period - (t % period);
      }
      if (b & (B_UIE | B_AIE) && !(b & B_SET)) delay = Math.min(delay, MS_PER_SECOND - (t % MS_PER_SECOND));
      return Number.isFinite(delay) ? delay : null;
    });
  }

  /** The guest's current time (host time plus the guest's offset), ignoring SET mode. */
  guestTime(): Date {
    return this.lock.withLock(() => new Date(this.guestMs()));
  }

  /** Whether the guest's last index write had bit 7 set (NMI disabled). vireo does not gate NMIs on it. */
  get nmiDisabled(): boolean {
    return this.lock.withLock(() => this.d.getUint8(S_NMI_DISABLED) !== 0);
  }

  // ---- snapshots ----

  /** The device's whole state (CMOS RAM, clock offset, index latch), for a snapshot. */
  saveState(): DeviceState {
    return this.lock.withLock(() => ({
      kind: STATE_KIND,
      version: STATE_VERSION,
      data: saveFields(this.d, STATE_FIELDS),
    }));
  }

  /** Replaces the state with a saved one (checked first), then drives IRQ 8 as the restored IRQF says. */
  restoreState(s: DeviceState): void {
    const write = checkFields(
      StateReader.open(`CmosRtc ${this.name}`, s, STATE_KIND, STATE_VERSION),
      STATE_FIELDS,
    );
    this.lock.lock();
    try {
      write(this.d);
      this.setFlag(F_IRQ_LEVEL, false);
      this.update();
    } finally {
      this.lock.unlock();
    }
  }

  // ---- registers (everything below runs with the lock held) ----

  private ram(reg: number): number {
    return this.d.getUint8(S_RAM + reg);
  }

  private setRam(reg: number, v: number): void {
    this.d.setUint8(S_RAM + reg, v);
  }

  private hostMs(now?: Date): number {
    return (now ?? this.now()).getTime();
  }

  private guestMs(now?: Date): number {
    return this.hostMs(now) + this.d.getFloat64(S_OFFSET_MS, true);
  }

  private get binary(): boolean {
    return (this.ram(REG_B) & B_DM_BINARY) !== 0;
  }

  private get hour24(): boolean {
    return (this.ram(REG_B) & B_24H) !== 0;
  }

  private get centuryIndex(): number {
    return this.d.getUint8(S_CENTURY_INDEX);
  }

  private isTimeRegister(reg: number): boolean {
    return (
      reg === REG_SECONDS ||
      reg === REG_MINUTES ||
      reg === REG_HOURS ||
      (reg >= REG_DAY_OF_WEEK && reg <= REG_YEAR) ||
      reg === this.centuryIndex
    );
  }

  private encode(v: number): number {
    return this.binary ? v : toBcd(v);
  }

  private decode(v: number): number {
    return this.binary ? v : fromBcd(v);
  }

  /** DS: in 12-hour mode the hours run 1-12 with bit 7 set for PM; midnight is 12 AM, noon 12 PM. */
  private encodeHour(h: number): number {
    if (this.hour24) return this.encode(h);
    return this.encode(h % 12 === 0 ? 12 : h % 12) | (h >= 12 ? HOUR_PM : 0);
  }

  private decodeHour(v: number): number {
    if (this.hour24) return this.decode(v);
    return (this.decode(v & ~HOUR_PM) % 12) + (v & HOUR_PM ? 12 : 0);
  }

  /** The encoded value of time register `reg` at guest time `ms`. */
  private encodeTimeRegister(reg: number, ms: number): number {
    const f = fieldsOf(ms);
    switch (reg) {
      case REG_SECONDS:
        return this.encode(f.second);
      case REG_MINUTES:
        return this.encode(f.minute);
      case REG_HOURS:
        return this.encodeHour(f.hour);
      case REG_DAY_OF_WEEK:
        return this.encode(new Date(ms).getUTCDay() + 1); // 1 = Sunday
      case REG_DAY_OF_MONTH:
        return this.encode(f.day);
      case REG_MONTH:
        return this.encode(f.month);
      case REG_YEAR:
        return this.encode(f.year % 100);
      default: // the century
        return this.encode(Math.floor(f.year / 100));
    }
  }

  /** Copies the clock into the time registers' RAM bytes (entering SET mode). */
  private latchTime(ms: number): void {
    const regs = [
      REG_SECONDS,
      REG_MINUTES,
      REG_HOURS,
      REG_DAY_OF_WEEK,
      REG_DAY_OF_MONTH,
      REG_MONTH,
      REG_YEAR,
    ];
    for (const reg of [...regs, this.centuryIndex]) this.setRam(reg, this.encodeTimeRegister(reg, ms));
  }

  /** The time the time registers' RAM bytes say (day of week ignored). */
  private latchedFields(): Fields {
    return {
      second: this.decode(this.ram(REG_SECONDS)),
      minute: this.decode(this.ram(REG_MINUTES)),
      hour: this.decodeHour(this.ram(REG_HOURS)),
      day: this.decode(this.ram(REG_DAY_OF_MONTH)),
      month: this.decode(this.ram(REG_MONTH)),
      year: this.decode(this.ram(this.centuryIndex)) * 100 + this.decode(this.ram(REG_YEAR)),
    };
  }

  /** Moves the guest's clock so that it reads `guestMs` now. */
  private setGuestTime(guestMs: number): void {
    this.d.setFloat64(S_OFFSET_MS, guestMs - this.hostMs(), true);
    // Flags restart from the new time: a jump is not a run of updates.
    this.d.setFloat64(S_LAST_EVAL_MS, guestMs, true);
  }

  private readPort(port: number): number {
    switch (port) {
      case PORT_INDEX:
        return 0xff; // the index register is write-only
      case PORT_DATA:
        return this.readReg(this.d.getUint8(S_INDEX));
      default:
        return 0xff;
    }
  }

  private writePort(port: number, v: number): void {
    switch (port) {
      case PORT_INDEX:
        this.d.setUint8(S_INDEX, v & INDEX_MASK);
        this.d.setUint8(S_NMI_DISABLED, v & INDEX_NMI_DISABLE ? 1 : 0);
        return;
      case PORT_DATA:
        this.writeReg(this.d.getUint8(S_INDEX), v);
        return;
      default:
        return;
    }
  }

  private readReg(reg: number): number {
    if (this.isTimeRegister(reg)) {
      // DS Register B bit 7: while SET is 1 the time registers hold what was latched or written.
      return this.ram(REG_B) & B_SET ? this.ram(reg) : this.encodeTimeRegister(reg, this.guestMs());
    }
    switch (reg) {
      case REG_A:
        return this.ram(REG_A) & ~A_UIP;
      case REG_C: {
        // DS Register C: all flags (and IRQF, and with it the IRQ pin) clear when it is read.
        this.evaluate();
        this.latchIrqf();
        const v = this.ram(REG_C);
        this.setRam(REG_C, 0);
        return v;
      }
      case REG_D:
        return D_VRT;
      default:
        return this.ram(reg);
    }
  }

  private writeReg(reg: number, v: number): void {
    if (this.isTimeRegister(reg)) {
      this.writeTimeRegister(reg, v);
      return;
    }
    switch (reg) {
      case REG_A:
        this.evaluate(); // periods so far count at the old rate
        this.setRam(REG_A, v & (A_DV | A_RS)); // UIP is read-only
        return;
      case REG_B:
        this.writeB(v);
        return;
      case REG_C:
      case REG_D:
        return; // read-only
      default:
        this.setRam(reg, v);
    }
  }

  private writeB(v: number): void {
    this.evaluate(); // updates up to now happened under the old SET/mode
    const old = this.ram(REG_B);
    // DS Register B: setting SET clears UIE.
    const b = v & B_SET ? v & ~B_UIE : v;
    this.setRam(REG_B, b);
    if (b & B_SET && !(old & B_SET)) {
      // Entering SET: the registers keep the time of this moment, in the new mode's encoding.
      this.latchTime(this.guestMs());
      this.setFlag(F_SET_DIRTY, false);
    } else if (!(b & B_SET) && old & B_SET) {
      // Leaving SET: the clock runs on from what was written (and stays put if nothing was).
      if (this.d.getUint8(S_FLAGS) & F_SET_DIRTY) this.setGuestTime(msOf(this.latchedFields()));
      this.setFlag(F_SET_DIRTY, false);
    }
  }

  private writeTimeRegister(reg: number, v: number): void {
    if (this.ram(REG_B) & B_SET) {
      this.setRam(reg, v);
      if (reg !== REG_DAY_OF_WEEK) this.setFlag(F_SET_DIRTY, true);
      return;
    }
    if (reg === REG_DAY_OF_WEEK) return; // derived from the date
    // Outside SET mode the write takes effect at once; the fraction of the current second is kept.
    this.evaluate();
    const now = this.guestMs();
    this.latchTime(now);
    this.setRam(reg, v);
    const fraction = ((now % MS_PER_SECOND) + MS_PER_SECOND) % MS_PER_SECOND;
    this.setGuestTime(msOf(this.latchedFields()) + fraction);
  }

  private setFlag(flag: number, on: boolean): void {
    const f = this.d.getUint8(S_FLAGS);
    this.d.setUint8(S_FLAGS, on ? f | flag : f & ~flag);
  }

  /** Whether the alarm registers match the clock at guest time `ms` (DS: each byte equal or don't-care). */
  private alarmMatches(ms: number): boolean {
    const pairs: [number, number][] = [
      [REG_SECONDS_ALARM, REG_SECONDS],
      [REG_MINUTES_ALARM, REG_MINUTES],
      [REG_HOURS_ALARM, REG_HOURS],
    ];
    return pairs.every(([alarm, time]) => {
      const a = this.ram(alarm);
      return (a & ALARM_DONT_CARE) === ALARM_DONT_CARE || a === this.encodeTimeRegister(time, ms);
    });
  }

  /**
   * Sets PF, UF and AF for what happened between the last evaluation and now (DS Register C: the flags are set
   * whether or not their interrupt is enabled). Updates, and with them UF and AF, are inhibited while SET is 1.
   */
  private evaluate(now?: Date): void {
    const t = this.guestMs(now);
    const last = this.d.getFloat64(S_LAST_EVAL_MS, true);
    this.d.setFloat64(S_LAST_EVAL_MS, t, true);
    if (Number.isNaN(last) || t <= last) return; // first look, or the clock went back: nothing happened
    let c = this.ram(REG_C);
    const hz = periodicHz(this.ram(REG_A) & A_RS);
    if (hz > 0) {
      const period = MS_PER_SECOND / hz;
      if (Math.floor(t / period) > Math.floor(last / period)) c |= C_PF;
    }
    const fromSecond = Math.floor(last / MS_PER_SECOND) + 1;
    const toSecond = Math.floor(t / MS_PER_SECOND);
    if (!(this.ram(REG_B) & B_SET) && toSecond >= fromSecond) {
      c |= C_UF;
      if (!(c & C_AF)) {
        // An alarm repeats at most daily, so a day of updates is enough to find a match in a long gap.
        for (let s = Math.max(fromSecond, toSecond - SECONDS_PER_DAY + 1); s <= toSecond; s++) {
          if (this.alarmMatches(s * MS_PER_SECOND)) {
            c |= C_AF;
            break;
          }
        }
      }
    }
    this.setRam(REG_C, c);
  }

  /**
   * IRQF latches when a flag and its enable are both set (DS Register C: IRQF = PF·PIE + AF·AIE + UF·UIE) and
   * stays set until register C is read.
   */
  private latchIrqf(): void {
    const c = this.ram(REG_C);
    // PIE, AIE and UIE sit in register B at the bit positions PF, AF and UF have in register C.
    if (c & C_FLAGS & this.ram(REG_B)) this.setRam(REG_C, c | C_IRQF);
  }

  /** Ends every locked operation: the IRQ line follows IRQF. */
  private update(): void {
    this.latchIrqf();
    const level = (this.ram(REG_C) & C_IRQF) !== 0;
    if (level === ((this.d.getUint8(S_FLAGS) & F_IRQ_LEVEL) !== 0)) return;
    this.setFlag(F_IRQ_LEVEL, level);
    if (level) this.irqs.add();
    this.irq.set(level);
  }
}

function resetState(state: SharedArrayBuffer, opts: CmosRtcStateOptions): void {
  const centuryIndex = opts.centuryIndex ?? RTC_CENTURY_INDEX;
  if (!Number.isInteger(centuryIndex) || centuryIndex <= REG_D || centuryIndex >= CMOS_SIZE) {
    throw new CmosRtcError(`CmosRtc: century index ${centuryIndex} must be a user RAM byte (0x0e-0x7f)`);
  }
  const { memSize } = opts;
  if (memSize !== undefined && (!Number.isSafeInteger(memSize) || memSize < 0)) {
    throw new CmosRtcError(`CmosRtc: memSize ${memSize} must be a byte count`);
  }
  new Uint8Array(state, 0, STATE_BYTES).fill(0);
  SharedLock.init(state, S_LOCK);
  const d = new DataView(state, 0, STATE_BYTES);
  d.setFloat64(S_OFFSET_MS, 0, true);
  d.setFloat64(S_LAST_EVAL_MS, Number.NaN, true);
  d.setUint8(S_CENTURY_INDEX, centuryIndex);
  d.setUint8(S_RAM + REG_A, A_RESET);
  d.setUint8(S_RAM + REG_B, B_RESET);
  if (memSize !== undefined) {
    const u16 = (reg: number, v: number) => {
      const clamped = Math.max(0, Math.min(0xffff, Math.floor(v)));
      d.setUint8(S_RAM + reg, clamped & 0xff);
      d.setUint8(S_RAM + reg + 1, clamped >> 8);
    };
    const KiB = 1024;
    const MiB = 1024 * KiB;
    u16(CMOS_BASE_MEM_KB, Math.min(memSize, 640 * KiB) / KiB);
    u16(CMOS_EXT_MEM_KB, (memSize - MiB) / KiB);
    u16(CMOS_EXT_MEM_KB_COPY, (memSize - MiB) / KiB);
    u16(CMOS_MEM_ABOVE_16M_64K, (memSize - 16 * MiB) / (64 * KiB));
    let sum = 0;
    for (let reg = CHECKSUM_FIRST; reg <= CHECKSUM_LAST; reg++) sum += d.getUint8(S_RAM + reg);
    d.setUint8(S_RAM + CMOS_CHECKSUM, (sum >> 8) & 0xff); // big endian, unlike the size words
    d.setUint8(S_RAM + CMOS_CHECKSUM + 1, sum & 0xff);
  }
  // The magic goes last: an attaching thread that sees it sees the rest.
  Atomics.store(new Int32Array(state, 0, 2), S_MAGIC / 4, MAGIC);
}
