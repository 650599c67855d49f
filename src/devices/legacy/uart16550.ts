/**
 * A National Semiconductor PC16550D-compatible UART (the PC "16550A"), as COM1 at I/O 0x3F8, IRQ 4.
 *
 * Section references ("DS §8.x", "DS Table N") are to the PC16550D datasheet (National Semiconductor, 1995):
 * Table II register summary, Table IV interrupt control functions, Table VII reset state, §8.4 LCR,
 * §8.5 programmable baud generator, §8.6 LSR, §8.7 FCR, §8.8 IIR/IER, §8.9 MCR, §8.10 MSR, §8.11 SCR.
 *
 * Emulation choices (where there is no wire, the datasheet's timing collapses):
 * - Transmit is instantaneous. A THR write hands the byte to `output` at once, so THR and the transmitter shift
 *   register are always empty: LSR.THRE and LSR.TEMT always read 1, and every THR write is followed by a new
 *   THRE interrupt, as on a real part once the byte has moved on. In loopback the byte goes to the receiver.
 * - Receive: host input (`receive`) waits in a ring in the shared state and moves into the receiver (16-byte
 *   FIFO, or the one-byte RBR in 16450 mode) whenever there is room, so a slow guest applies backpressure
 *   instead of losing bytes. An overrun can therefore only happen in loopback.
 * - The host side honours RTS/CTS flow control: input flows only while the guest asserts MCR.RTS (0 at reset).
 *   A driver asserts RTS once it has set the port up (Linux's 8250 driver does when the port is opened), so
 *   bytes typed before then wait instead of being lost to the FIFO clear that initialisation does.
 * - The character timeout indication (IIR 0b1100) is raised as soon as the RX FIFO holds data below its
 *   trigger level, instead of after four character times without FIFO activity (DS §8.8).
 * - LSR bit 7 (error in RX FIFO) reads 1 while any character in the FIFO carries a parity, framing or break
 *   indication, rather than being cleared by the LSR read and re-armed (DS §8.6, bit 7).
 * - No parity or framing errors ever occur (there is no line); `receiveBreak` injects a break.
 *
 * State lives in a SharedArrayBuffer: every thread that may trap an access to the UART (each vCPU worker, and the
 * main thread feeding terminal input) constructs its own Uart16550 over the same state, and every public method
 * runs under a SharedLock kept in that state. The `irq` and `output` callbacks are invoked with the lock held,
 * which keeps line levels and output bytes in order across threads; they must not call back into the UART.
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

export const COM1_PORT = 0x3f8;
export const COM1_IRQ = 4;

// Register offsets (DS Table II). Offsets 0 and 1 are the divisor latch while LCR.DLAB is set.
const REG_DATA = 0; // RBR (read), THR (write), DLL (DLAB)
const REG_IER = 1; // IER, DLM (DLAB)
const REG_IIR_FCR = 2; // IIR (read), FCR (write)
const REG_LCR = 3;
const REG_MCR = 4;
const REG_LSR = 5;
const REG_MSR = 6;
const REG_SCR = 7;

// IER (DS §8.8). Bits 4-7 are always 0 on the 16550.
const IER_ERBFI = 0x01; // received data available (and character timeout)
const IER_ETBEI = 0x02; // THR empty
const IER_ELSI = 0x04; // receiver line status
const IER_EDSSI = 0x08; // modem status
const IER_MASK = 0x0f;

// IIR interrupt IDs, bits 3-0 (DS Table IV), highest priority first.
const IIR_NONE = 0x01;
const IIR_RLS = 0x06; // priority 1: OE, PE, FE or BI; cleared by reading LSR
const IIR_RDA = 0x04; // priority 2: data at the trigger level; cleared when the FIFO drops below it
const IIR_CTI = 0x0c; // priority 2: character timeout; cleared by reading RBR
const IIR_THRI = 0x02; // priority 3: THR empty; cleared by reading IIR (if the source) or writing THR
const IIR_MSI = 0x00; // priority 4: modem status; cleared by reading MSR
const IIR_FIFOS_ON = 0xc0; // bits 6-7 read 1 when FCR0 is set

// FCR (DS §8.7)
const FCR_ENABLE = 0x01;
const FCR_CLEAR_RX = 0x02;
const FCR_DMA_MODE = 0x08;
const FCR_TRIGGER = 0xc0;
const RX_TRIGGER_LEVELS = [1, 4, 8, 14] as const;

const LCR_DLAB = 0x80; // DS §8.4, bit 7

// MCR (DS §8.9). Bits 5-7 are always 0.
const MCR_DTR = 0x01;
const MCR_RTS = 0x02;
const MCR_OUT1 = 0x04;
const MCR_OUT2 = 0x08;
const MCR_LOOP = 0x10;
const MCR_MASK = 0x1f;

// LSR (DS §8.6)
const LSR_DR = 0x01;
const LSR_OE = 0x02;
const LSR_PE = 0x04;
const LSR_FE = 0x08;
const LSR_BI = 0x10;
const LSR_THRE = 0x20;
const LSR_TEMT = 0x40;
const LSR_RXFIFO_ERR = 0x80;
const LSR_CHAR_ERRORS = LSR_PE | LSR_FE | LSR_BI;
const LSR_LINE_STATUS = LSR_OE | LSR_CHAR_ERRORS;

// MSR (DS §8.10): deltas in bits 0-3, the complemented modem inputs in bits 4-7.
const MSR_DCTS = 0x01;
const MSR_DDSR = 0x02;
const MSR_TERI = 0x04;
const MSR_DDCD = 0x08;
const MSR_CTS = 0x10;
const MSR_DSR = 0x20;
const MSR_RI = 0x40;
const MSR_DCD = 0x80;
const MSR_DELTAS = 0x0f;
const MSR_INPUTS = 0xf0;

const FIFO_SIZE = 16;
const INPUT_RING_SIZE = 4096;

// Shared state layout (byte offsets). Int32 fields first, 4-byte aligned.
const S_LOCK = 0;
const S_MAGIC = 4;
const S_RING_HEAD = 8;
const S_RING_COUNT = 12;
const S_IER = 16;
const S_LCR = 17;
const S_MCR = 18;
const S_SCR = 19;
const S_DLL = 20;
const S_DLM = 21;
const S_FCR = 22;
const S_LSR_LATCHED = 23; // OE, PE, FE, BI as latched for the next LSR read
const S_MSR = 24;
const S_MODEM_IN = 25; // host-side modem inputs, in MSR bit positions
const S_FLAGS = 26;
const S_RX_HEAD = 27;
const S_RX_COUNT = 28;
const S_RBR_LAST = 29;
const S_RX_DATA = 32;
const S_RX_ERR = S_RX_DATA + FIFO_SIZE;
const S_RING_DATA = S_RX_ERR + FIFO_SIZE;
const S_RING_ERR = S_RING_DATA + INPUT_RING_SIZE;
const STATE_BYTES = S_RING_ERR + INPUT_RING_SIZE;

const F_THRI_PENDING = 0x01;
const F_IRQ_LEVEL = 0x02;

const MAGIC = 0x31363535; // "1655"

/** Everything in the shared state but the lock and magic words, for snapshots (saveState / restoreState). */
const STATE_FIELDS: readonly StateField[] = [
  { name: "ringHead", at: S_RING_HEAD, type: "i32", min: 0, max: INPUT_RING_SIZE - 1 },
  { name: "ringCount", at: S_RING_COUNT, type: "i32", min: 0, max: INPUT_RING_SIZE },
  { name: "ier", at: S_IER, type: "u8", max: IER_MASK },
  { name: "lcr", at: S_LCR, type: "u8" },
  { name: "mcr", at: S_MCR, type: "u8", max: MCR_MASK },
  { name: "scr", at: S_SCR, type: "u8" },
  { name: "dll", at: S_DLL, type: "u8" },
  { name: "dlm", at: S_DLM, type: "u8" },
  { name: "fcr", at: S_FCR, type: "u8" },
  { name: "lsrLatched", at: S_LSR_LATCHED, type: "u8" },
  { name: "msr", at: S_MSR, type: "u8" },
  { name: "modemInputs", at: S_MODEM_IN, type: "u8" },
  { name: "flags", at: S_FLAGS, type: "u8", max: 0x03 },
  { name: "rxHead", at: S_RX_HEAD, type: "u8", max: FIFO_SIZE - 1 },
  { name: "rxCount", at: S_RX_COUNT, type: "u8", max: FIFO_SIZE },
  { name: "rbrLast", at: S_RBR_LAST, type: "u8" },
  { name: "rxData", at: S_RX_DATA, type: "bytes", length: FIFO_SIZE },
  { name: "rxErrors", at: S_RX_ERR, type: "bytes", length: FIFO_SIZE },
  { name: "ringData", at: S_RING_DATA, type: "bytes", length: INPUT_RING_SIZE },
  { name: "ringErrors", at: S_RING_ERR, type: "bytes", length: INPUT_RING_SIZE },
];
const STATE_KIND = "uart16550";
const STATE_VERSION = 1;

/** The divisor for 9600 baud from the PC's 1.8432 MHz clock (DS §8.5: divisor = clock / (16 * baud)). */
const RESET_DIVISOR = 12;
/** A terminal is attached: carrier, data set ready and clear to send are asserted. */
const DEFAULT_MODEM_INPUTS = MSR_DCD | MSR_DSR | MSR_CTS;

export interface UartIrq {
  set(level: boolean): void;
}

export interface Uart16550Options {
  state: SharedArrayBuffer;
  /** Reset the state. Exactly one constructor (before the state is shared) passes true; or use createState. */
  init?: boolean;
  irq: UartIrq;
  /** Receives transmitted bytes. The array is the sink's to keep. */
  output: (bytes: Uint8Array) => void;
  metrics?: MetricsSink;
  /** Used in metric names: `uart.<name>.tx_bytes`. Default "com1". */
  name?: string;
}

/** Modem input lines the host side can drive (outside loopback). */
export interface ModemInputs {
  cts: boolean;
  dsr: boolean;
  ri: boolean;
  dcd: boolean;
}

export class UartStateError extends VireoError {
  constructor(message: string) {
    super("VIREO_UART_STATE", message);
  }
}

const NO_COUNTER: Counter = { add() {}, value: 0 };

export class Uart16550 implements BusDevice {
  static readonly STATE_BYTES = STATE_BYTES;
  /** Capacity of the host-input ring, in bytes. */
  static readonly INPUT_RING_SIZE = INPUT_RING_SIZE;

  readonly name: string;
  /** The shared state. A DataView keeps field access typed as number and bounds-checked. */
  private readonly d: DataView;
  private readonly lock: SharedLock;
  private readonly irq: UartIrq;
  private readonly output: (bytes: Uint8Array) => void;
  private readonly txBytes: Counter;
  private readonly rxBytes: Counter;
  private readonly irqs: Counter;

  /** A fresh, reset state buffer to hand to every thread's Uart16550. */
  static createState(): SharedArrayBuffer {
    const state = new SharedArrayBuffer(STATE_BYTES);
    resetState(state);
    return state;
  }

  constructor(opts: Uart16550Options) {
    const attached = attachSharedState({
      device: "Uart16550",
      state: opts.state,
      bytes: STATE_BYTES,
      magicOffset: S_MAGIC,
      magic: MAGIC,
      lockOffset: S_LOCK,
      init: opts.init,
      reset: (state) => resetState(state),
      error: (message) => new UartStateError(message),
    });
    this.d = attached.view;
    this.lock = attached.lock;
    this.irq = opts.irq;
    this.output = opts.output;
    this.name = opts.name ?? "com1";
    const m = opts.metrics;
    this.txBytes = m?.counter(`uart.${this.name}.tx_bytes`) ?? NO_COUNTER;
    this.rxBytes = m?.counter(`uart.${this.name}.rx_bytes`) ?? NO_COUNTER;
    this.irqs = m?.counter(`uart.${this.name}.irqs`) ?? NO_COUNTER;
  }

  // ---- BusDevice ----

  /**
   * A wider-than-byte access is split into byte accesses to consecutive registers, as the ISA bus does for an
   * 8-bit device. Bytes past the 8-register window (an access straddling its end) read 0xff.
   */
  read(offset: number, data: Uint8Array): void {
    this.lock.lock();
    try {
      for (let i = 0; i < data.length; i++) data[i] = this.readReg(offset + i);
      this.update();
    } finally {
      this.lock.unlock();
    }
  }

  write(offset: number, data: Uint8Array): void {
    this.lock.lock();
    try {
      for (let i = 0; i < data.length; i++) this.writeReg(offset + i, data[i] as number);
      this.update();
    } finally {
      this.lock.unlock();
    }
  }

  // ---- host side ----

  /**
   * Offers terminal input. Returns how many bytes (a prefix of `bytes`) were accepted; the caller keeps the rest
   * and offers it again later (after the guest has read some), so nothing is lost.
   */
  receive(bytes: Uint8Array): number {
    this.lock.lock();
    try {
      const n = Math.min(bytes.length, INPUT_RING_SIZE - this.d.getInt32(S_RING_COUNT, true));
      for (let i = 0; i < n; i++) this.pushRing(bytes[i] as number, 0);
      this.update();
      return n;
    } finally {
      this.lock.unlock();
    }
  }

  /**
   * Queues a received break behind pending input: a NUL character flagged BI (DS §8.6 bit 4), which is how a
   * serial console asks for attention (Linux magic SysRq). Returns false if the input ring is full.
   */
  receiveBreak(): boolean {
    this.lock.lock();
    try {
      if (this.d.getInt32(S_RING_COUNT, true) === INPUT_RING_SIZE) return false;
      this.pushRing(0, LSR_BI);
      this.update();
      return true;
    } finally {
      this.lock.unlock();
    }
  }

  /** How many bytes `receive` would accept now. */
  inputSpace(): number {
    return this.lock.withLock(() => INPUT_RING_SIZE - this.d.getInt32(S_RING_COUNT, true));
  }

  /** Drives the modem status inputs, which the guest sees outside loopback mode. */
  setModemInputs(inputs: ModemInputs): void {
    this.lock.lock();
    try {
      this.d.setUint8(
        S_MODEM_IN,
        (inputs.cts ? MSR_CTS : 0) |
          (inputs.dsr ? MSR_DSR : 0) |
          (inputs.ri ? MSR_RI : 0) |
          (inputs.dcd ? MSR_DCD : 0),
      );
      this.updateMsr();
      this.update();
    } finally {
      this.lock.unlock();
    }
  }

  // ---- snapshots ----

  /** The device's whole state (registers, FIFO, pending host input), for a snapshot. */
  saveState(): DeviceState {
    return this.lock.withLock(() => ({
      kind: STATE_KIND,
      version: STATE_VERSION,
      data: saveFields(this.d, STATE_FIELDS),
    }));
  }

  /**
   * Replaces the device's state with a saved one (checked first: a refused state changes nothing), then drives
   * the IRQ line to the level the restored registers call for.
   */
  restoreState(s: DeviceState): void {
    const write = checkFields(
      StateReader.open(`Uart16550 ${this.name}`, s, STATE_KIND, STATE_VERSION),
      STATE_FIELDS,
    );
    this.lock.lock();
    try {
      write(this.d);
      // The line level is recomputed, not taken from the file: the new line starts low.
      this.setFlag(F_IRQ_LEVEL, false);
      this.update();
    } finally {
      this.lock.unlock();
    }
  }

  // ---- registers (everything below runs with the lock held) ----

  private get dlab(): boolean {
    return (this.d.getUint8(S_LCR) & LCR_DLAB) !== 0;
  }

  private get fifoEnabled(): boolean {
    return (this.d.getUint8(S_FCR) & FCR_ENABLE) !== 0;
  }

  private get loopback(): boolean {
    return (this.d.getUint8(S_MCR) & MCR_LOOP) !== 0;
  }

  private setFlag(flag: number, on: boolean): void {
    const f = this.d.getUint8(S_FLAGS);
    this.d.setUint8(S_FLAGS, on ? f | flag : f & ~flag);
  }

  private latchLineStatus(bits: number): void {
    this.d.setUint8(S_LSR_LATCHED, this.d.getUint8(S_LSR_LATCHED) | bits);
  }

  private readReg(reg: number): number {
    const d = this.d;
    switch (reg) {
      case REG_DATA:
        return this.dlab ? d.getUint8(S_DLL) : this.readRbr();
      case REG_IER:
        return d.getUint8(this.dlab ? S_DLM : S_IER);
      case REG_IIR_FCR:
        return this.readIir();
      case REG_LCR:
        return d.getUint8(S_LCR);
      case REG_MCR:
        return d.getUint8(S_MCR);
      case REG_LSR:
        return this.readLsr();
      case REG_MSR: {
        // DS §8.10: reading MSR clears the delta bits (and with them the modem status interrupt).
        const v = d.getUint8(S_MSR);
        d.setUint8(S_MSR, v & MSR_INPUTS);
        return v;
      }
      case REG_SCR:
        return d.getUint8(S_SCR);
      default:
        return 0xff;
    }
  }

  private writeReg(reg: number, v: number): void {
    const d = this.d;
    switch (reg) {
      case REG_DATA:
        if (this.dlab) d.setUint8(S_DLL, v);
        else this.writeThr(v);
        return;
      case REG_IER:
        if (this.dlab) d.setUint8(S_DLM, v);
        else this.writeIer(v);
        return;
      case REG_IIR_FCR:
        this.writeFcr(v);
        return;
      case REG_LCR:
        d.setUint8(S_LCR, v);
        return;
      case REG_MCR:
        d.setUint8(S_MCR, v & MCR_MASK);
        this.updateMsr();
        return;
      case REG_SCR:
        d.setUint8(S_SCR, v);
        return;
      default:
        // LSR and MSR writes are for factory testing only (DS §8.6); past the window there is nothing.
        return;
    }
  }

  private readRbr(): number {
    const d = this.d;
    const count = d.getUint8(S_RX_COUNT);
    // An empty receiver returns the last character again, as the RBR latch does.
    if (count === 0) return d.getUint8(S_RBR_LAST);
    const head = d.getUint8(S_RX_HEAD);
    const v = d.getUint8(S_RX_DATA + head);
    const next = (head + 1) % FIFO_SIZE;
    d.setUint8(S_RX_HEAD, next);
    d.setUint8(S_RX_COUNT, count - 1);
    d.setUint8(S_RBR_LAST, v);
    this.rxBytes.add();
    // DS §8.6: PE/FE/BI describe the character at the top of the FIFO; the next one's now show in LSR.
    if (count > 1) this.latchLineStatus(d.getUint8(S_RX_ERR + next));
    return v;
  }

  private readIir(): number {
    const id = this.interruptId();
    // DS Table IV: reading IIR clears the THRE interrupt only if that is the source it reports.
    if (id === IIR_THRI) this.setFlag(F_THRI_PENDING, false);
    return id | (this.fifoEnabled ? IIR_FIFOS_ON : 0);
  }

  private readLsr(): number {
    const d = this.d;
    const count = d.getUint8(S_RX_COUNT);
    let v = (count > 0 ? LSR_DR : 0) | d.getUint8(S_LSR_LATCHED) | LSR_THRE | LSR_TEMT;
    if (this.fifoEnabled) {
      const head = d.getUint8(S_RX_HEAD);
      for (let i = 0; i < count; i++) {
        if (d.getUint8(S_RX_ERR + ((head + i) % FIFO_SIZE)) !== 0) {
          v |= LSR_RXFIFO_ERR;
          break;
        }
      }
    }
    // DS §8.6: OE, PE, FE and BI are reset by reading LSR (and so is the line status interrupt).
    d.setUint8(S_LSR_LATCHED, 0);
    return v;
  }

  private writeThr(v: number): void {
    if (this.loopback) {
      // DS §8.9 bit 4: the transmitter shift register feeds the receiver; SOUT stays marking.
      this.loopbackReceive(v);
    } else {
      this.output(Uint8Array.of(v));
      this.txBytes.add();
    }
    // Writing THR clears the THRE interrupt (DS Table IV); but the byte leaves at once, THR is empty again and
    // THRE rises, which is a new THRE interrupt.
    this.setFlag(F_THRI_PENDING, true);
  }

  private writeIer(v: number): void {
    const old = this.d.getUint8(S_IER);
    this.d.setUint8(S_IER, v & IER_MASK);
    // Enabling ETBEI while THR is empty (always, here) raises the THRE interrupt, as real parts do and as
    // drivers rely on to start transmission from the interrupt handler.
    if (v & IER_ETBEI && !(old & IER_ETBEI)) this.setFlag(F_THRI_PENDING, true);
  }

  private writeFcr(v: number): void {
    const d = this.d;
    // DS §8.7 bit 0: switching between FIFO and 16450 mode clears both FIFOs.
    if ((d.getUint8(S_FCR) ^ v) & FCR_ENABLE) this.clearRx();
    if (!(v & FCR_ENABLE)) {
      // "FCR0 must be a 1 when other FCR bits are written to or they will not be programmed."
      d.setUint8(S_FCR, 0);
      return;
    }
    if (v & FCR_CLEAR_RX) this.clearRx();
    // Bit 2 (clear TX FIFO) has nothing to do: transmit is instantaneous, so the TX FIFO is always empty. Bits
    // 1-2 self-clear; DMA mode select (bit 3) is stored but has no effect without DMA.
    d.setUint8(S_FCR, v & (FCR_ENABLE | FCR_DMA_MODE | FCR_TRIGGER));
  }

  private clearRx(): void {
    this.d.setUint8(S_RX_HEAD, 0);
    this.d.setUint8(S_RX_COUNT, 0);
  }

  private rxCapacity(): number {
    return this.fifoEnabled ? FIFO_SIZE : 1;
  }

  /** Appends a character to the receiver; the caller has checked there is room. */
  private pushRx(v: number, err: number): void {
    const d = this.d;
    const count = d.getUint8(S_RX_COUNT);
    const slot = (d.getUint8(S_RX_HEAD) + count) % FIFO_SIZE;
    d.setUint8(S_RX_DATA + slot, v);
    d.setUint8(S_RX_ERR + slot, err);
    d.setUint8(S_RX_COUNT, count + 1);
    // A character arriving at an empty receiver is at the top at once: its errors show in LSR.
    if (count === 0) this.latchLineStatus(err);
  }

  /** Appends to the host-input ring; the caller has checked there is room. */
  private pushRing(v: number, err: number): void {
    const d = this.d;
    const count = d.getInt32(S_RING_COUNT, true);
    const tail = (d.getInt32(S_RING_HEAD, true) + count) % INPUT_RING_SIZE;
    d.setUint8(S_RING_DATA + tail, v);
    d.setUint8(S_RING_ERR + tail, err);
    d.setInt32(S_RING_COUNT, count + 1, true);
  }

  private loopbackReceive(v: number): void {
    const d = this.d;
    if (d.getUint8(S_RX_COUNT) < this.rxCapacity()) {
      this.pushRx(v, 0);
      return;
    }
    // DS §8.6 bit 1: in 16450 mode the new character overwrites the unread one in RBR; in FIFO mode the FIFO
    // keeps its contents and the character in the shift register is lost. Either way OE is set.
    if (!this.fifoEnabled) {
      const head = d.getUint8(S_RX_HEAD);
      d.setUint8(S_RX_DATA + head, v);
      d.setUint8(S_RX_ERR + head, 0);
    }
    this.latchLineStatus(LSR_OE);
  }

  /**
   * Moves host input into the receiver while it has room and the guest asserts RTS (flow control). SIN is
   * disconnected in loopback (DS §8.9).
   */
  private refillRx(): void {
    const d = this.d;
    let ringCount = d.getInt32(S_RING_COUNT, true);
    if (ringCount === 0 || this.loopback || !(d.getUint8(S_MCR) & MCR_RTS)) return;
    let head = d.getInt32(S_RING_HEAD, true);
    let room = this.rxCapacity() - d.getUint8(S_RX_COUNT);
    while (room > 0 && ringCount > 0) {
      this.pushRx(d.getUint8(S_RING_DATA + head), d.getUint8(S_RING_ERR + head));
      head = (head + 1) % INPUT_RING_SIZE;
      ringCount--;
      room--;
    }
    d.setInt32(S_RING_HEAD, head, true);
    d.setInt32(S_RING_COUNT, ringCount, true);
  }

  /**
   * Recomputes MSR bits 4-7 from the modem inputs and records changes in the delta bits (DS §8.10). In loopback
   * the inputs are the MCR outputs: CTS = RTS, DSR = DTR, RI = OUT1, DCD = OUT2 (DS §8.9 bit 4).
   */
  private updateMsr(): void {
    const d = this.d;
    const mcr = d.getUint8(S_MCR);
    const inputs =
      mcr & MCR_LOOP
        ? (mcr & MCR_RTS ? MSR_CTS : 0) |
          (mcr & MCR_DTR ? MSR_DSR : 0) |
          (mcr & MCR_OUT1 ? MSR_RI : 0) |
          (mcr & MCR_OUT2 ? MSR_DCD : 0)
        : d.getUint8(S_MODEM_IN);
    const old = d.getUint8(S_MSR);
    const changed = (old ^ inputs) & MSR_INPUTS;
    let deltas = old & MSR_DELTAS;
    if (changed & MSR_CTS) deltas |= MSR_DCTS;
    if (changed & MSR_DSR) deltas |= MSR_DDSR;
    if (changed & MSR_DCD) deltas |= MSR_DDCD;
    // TERI: the RI input went from active to inactive (bit 6 from 1 to 0); the leading edge does not count.
    if (old & MSR_RI && !(inputs & MSR_RI)) deltas |= MSR_TERI;
    d.setUint8(S_MSR, inputs | deltas);
  }

  /** The highest-priority pending, enabled interrupt (DS Table IV), or IIR_NONE. */
  private interruptId(): number {
    const d = this.d;
    const ier = d.getUint8(S_IER);
    if (ier & IER_ELSI && d.getUint8(S_LSR_LATCHED) & LSR_LINE_STATUS) return IIR_RLS;
    const count = d.getUint8(S_RX_COUNT);
    if (ier & IER_ERBFI && count > 0) {
      const fcr = d.getUint8(S_FCR);
      if (!(fcr & FCR_ENABLE)) return IIR_RDA;
      return count >= (RX_TRIGGER_LEVELS[fcr >> 6] ?? 1) ? IIR_RDA : IIR_CTI;
    }
    if (ier & IER_ETBEI && d.getUint8(S_FLAGS) & F_THRI_PENDING) return IIR_THRI;
    if (ier & IER_EDSSI && d.getUint8(S_MSR) & MSR_DELTAS) return IIR_MSI;
    return IIR_NONE;
  }

  /**
   * Ends every locked operation: pulls in host input, then drives the IRQ line if its level changed. On PCs the
   * UART's INTR reaches the interrupt controller only through a buffer enabled by the OUT2 pin; in loopback
   * the OUT2 pin is forced inactive (DS §8.9 bit 4), so the line stays low although IIR reports the interrupt.
   */
  private update(): void {
    this.refillRx();
    const mcr = this.d.getUint8(S_MCR);
    const level = (mcr & (MCR_OUT2 | MCR_LOOP)) === MCR_OUT2 && this.interruptId() !== IIR_NONE;
    if (level === ((this.d.getUint8(S_FLAGS) & F_IRQ_LEVEL) !== 0)) return;
    this.setFlag(F_IRQ_LEVEL, level);
    if (level) this.irqs.add();
    this.irq.set(level);
  }
}

/** The reset state (DS Table VII), plus what the datasheet leaves undefined: divisor and scratch. */
function resetState(state: SharedArrayBuffer): void {
  new Uint8Array(state, 0, STATE_BYTES).fill(0);
  SharedLock.init(state, S_LOCK);
  const d = new DataView(state, 0, STATE_BYTES);
  d.setUint8(S_DLL, RESET_DIVISOR & 0xff);
  d.setUint8(S_DLM, RESET_DIVISOR >> 8);
  d.setUint8(S_MODEM_IN, DEFAULT_MODEM_INPUTS);
  d.setUint8(S_MSR, DEFAULT_MODEM_INPUTS);
  // The magic goes last: an attaching thread that sees it sees the rest.
  Atomics.store(new Int32Array(state, 0, 4), S_MAGIC / 4, MAGIC);
}
