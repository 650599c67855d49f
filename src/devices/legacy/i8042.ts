/**
 * The PC/AT keyboard controller (an Intel 8042 running the IBM keyboard-controller firmware, in its PS/2 form)
 * with an MF2 keyboard attached: data port 0x60, status/command port 0x64, keyboard IRQ 1, auxiliary IRQ 12.
 *
 * References: "IBM PC AT Technical Reference", Keyboard Controller section (status register, command byte,
 * controller commands 0x20-0xFF, input and output ports), its PS/2 counterpart for the auxiliary-device
 * commands (0xA7-0xA9, 0xD2-0xD4) and the status bit 5 "auxiliary output buffer full", and the keyboard's
 * command set (0xED-0xFF, ACK 0xFA, BAT completion 0xAA, keyboard ID 0xAB 0x83). Cited below as "TR".
 *
 * Emulation choices:
 * - Commands and bytes for the keyboard are handled at once, so the input buffer is never full (status IBF
 *   reads 0) and responses are already waiting in the output buffer when the write returns.
 * - No auxiliary (mouse) device is attached. The controller supports the aux port (enable/disable, interface
 *   test, loopback through 0xD3), but a byte sent to the device with 0xD4 gets no answer: the controller reports
 *   a time-out (status bit 6) with 0xFE from the aux port, as TR describes for a device that does not respond.
 *   Linux does not even probe the port: vireo's DSDT lists the keyboard (PNP0303) and no PS/2 mouse, and the
 *   i8042 driver then assumes the aux port is disabled.
 * - Scan-code translation (command byte bit 6) is not implemented: the bit reads back as written but bytes
 *   pass untranslated. The command byte starts with it clear, which makes Linux drive the keyboard in
 *   untranslated scan code set 2. Host input (`pushKeyboardInput`) must be in the set the guest selected.
 * - The A20 gate (output port bit 1) is stored but has no effect: KVM guests always see A20 enabled.
 * - System reset: command 0xFE (and any 0xF0-0xFF pulse command with bit 0 clear), or writing the output port
 *   with bit 0 clear, calls `onReset`. Output port bit 0 then reads 1 again, as after the reset pulse.
 * - Host input waits in the keyboard, at most 16 bytes counting one already in the output buffer (a real
 *   keyboard buffers 16): Linux's i8042 driver gives up on a controller that still has data after 16 reads.
 *
 * State lives in a SharedArrayBuffer: every thread that may trap an access (each vCPU worker) constructs its own
 * I8042 over the same state, and every public method runs under a SharedLock kept in that state. The `irq`
 * callbacks are invoked with the lock held and must not call back into the device; `onReset` is invoked after
 * the lock is released.
 *
 * Ports 0x60 and 0x64 are not adjacent (0x61 is port B of the timer/speaker logic), so register the two views:
 *   pio.register(I8042_DATA_PORT, 1, kbc.dataPort); pio.register(I8042_COMMAND_PORT, 1, kbc.commandPort);
 * The I8042 object itself takes offsets relative to 0x60 (0 = data, 4 = status/command).
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

export const I8042_DATA_PORT = 0x60;
export const I8042_COMMAND_PORT = 0x64;
export const I8042_KBD_IRQ = 1;
export const I8042_AUX_IRQ = 12;

/** Offsets on the I8042 object itself: relative to I8042_DATA_PORT. */
export const I8042_DATA_OFFSET = 0;
export const I8042_COMMAND_OFFSET = I8042_COMMAND_PORT - I8042_DATA_PORT;

// Status register (TR; bit 5 as on PS/2 controllers).
const STS_OBF = 0x01; // output buffer full
const STS_SYS = 0x04; // system flag: mirrors command byte bit 2
const STS_A2 = 0x08; // the last write was to the command port
const STS_INH = 0x10; // 1 = keyboard not inhibited (the keylock is open)
const STS_AUX_OBF = 0x20; // the output buffer holds a byte from the aux device
const STS_TIMEOUT = 0x40; // general time-out

// Command byte (controller RAM byte 0).
const CTR_KBDINT = 0x01;
const CTR_AUXINT = 0x02;
const CTR_SYS = 0x04;
const CTR_KBDDIS = 0x10;
const CTR_AUXDIS = 0x20;
/** Keyboard interrupt on, system flag set (POST passed), aux port disabled, no translation. */
const CTR_RESET = CTR_KBDINT | CTR_SYS | CTR_AUXDIS;

// Output port (TR). Bits 4 and 5 show the two output-buffer-full interrupt lines.
const OUT_RESET = 0x01; // 0 = hold the CPU in reset
const OUT_KBD_OBF = 0x10;
const OUT_AUX_OBF = 0x20;
/** Not in reset, A20 enabled, aux and keyboard clock and data lines idle high. */
const OUT_PORT_RESET = 0xcf;
/** Input port: bit 7 = keyboard not inhibited; the rest (jumpers, display type) mean nothing here. */
const INPUT_PORT = 0x80;

// Controller commands (TR).
const CMD_READ_RAM = 0x20; // 0x20-0x3f: read controller RAM byte (cmd & 0x1f); 0x20 is the command byte
const CMD_WRITE_RAM = 0x60; // 0x60-0x7f: write it
const CMD_PASSWORD_TEST = 0xa4;
const CMD_AUX_DISABLE = 0xa7;
const CMD_AUX_ENABLE = 0xa8;
const CMD_AUX_TEST = 0xa9;
const CMD_SELF_TEST = 0xaa;
const CMD_KBD_TEST = 0xab;
const CMD_KBD_DISABLE = 0xad;
const CMD_KBD_ENABLE = 0xae;
const CMD_READ_INPUT = 0xc0;
const CMD_READ_OUTPUT = 0xd0;
const CMD_WRITE_OUTPUT = 0xd1;
const CMD_WRITE_KBD_OBUF = 0xd2;
const CMD_WRITE_AUX_OBUF = 0xd3;
const CMD_WRITE_AUX = 0xd4;
const CMD_A20_DISABLE = 0xdd;
const CMD_A20_ENABLE = 0xdf;
const CMD_READ_TEST_INPUTS = 0xe0;
const CMD_PULSE = 0xf0; // 0xf0-0xff: pulse output port bits 3-0 low where the command's bits 3-0 are 0

const SELF_TEST_OK = 0x55;
const INTERFACE_OK = 0x00;
const NO_PASSWORD = 0xf1;
const RAM_SIZE = 32;

// Keyboard commands and responses (TR keyboard command set).
const KBD_SET_LEDS = 0xed;
const KBD_ECHO = 0xee;
const KBD_SCAN_SET = 0xf0;
const KBD_IDENTIFY = 0xf2;
const KBD_TYPEMATIC = 0xf3;
const KBD_ENABLE = 0xf4;
const KBD_DISABLE = 0xf5; // set defaults and stop scanning
const KBD_DEFAULTS = 0xf6; // set defaults, keep scanning
const KBD_SET3_FIRST = 0xf7; // 0xf7-0xfd: scan code set 3 key types, acknowledged and ignored
const KBD_SET3_LAST = 0xfd;
const KBD_RESEND = 0xfe;
const KBD_RESET = 0xff;

const KBD_ACK = 0xfa;
const KBD_BAT_OK = 0xaa;
const KBD_RESEND_REQ = 0xfe;
const KBD_ID = [0xab, 0x83] as const; // MF2 keyboard
const KBD_DEFAULT_SET = 2;
const KBD_DEFAULT_TYPEMATIC = 0x2b; // 10.9 characters/s after 500 ms

// Shared state layout (byte offsets).
const S_LOCK = 0;
const S_MAGIC = 4;
const S_RAM = 8; // RAM_SIZE bytes; byte 0 is the command byte
const S_OUT_PORT = S_RAM + RAM_SIZE;
const S_PENDING = S_OUT_PORT + 1; // controller command waiting for its data byte, 0 = none
const S_STATUS = S_PENDING + 1; // STS_A2
const S_OBF_DATA = S_STATUS + 1;
const S_OBF_FLAGS = S_OBF_DATA + 1; // STS_OBF | STS_AUX_OBF | STS_TIMEOUT
const S_LINES = S_OBF_FLAGS + 1; // L_KBD | L_AUX: the levels last driven
const S_KBD_PENDING = S_LINES + 1; // keyboard command waiting for its parameter, 0 = none
const S_KBD_SCANNING = S_KBD_PENDING + 1;
const S_KBD_SET = S_KBD_SCANNING + 1;
const S_KBD_LEDS = S_KBD_SET + 1;
const S_KBD_TYPEMATIC = S_KBD_LEDS + 1;
const S_KBD_LAST = S_KBD_TYPEMATIC + 1;
const S_CQ_HEAD = S_KBD_LAST + 1; // controller output queue: responses waiting for the output buffer
const S_CQ_COUNT = S_CQ_HEAD + 1;
const S_CQ_DATA = S_CQ_COUNT + 1;
const CQ_SIZE = 16;
const S_CQ_FLAGS = S_CQ_DATA + CQ_SIZE;
const S_KQ_HEAD = S_CQ_FLAGS + CQ_SIZE; // the keyboard's own buffer: bytes waiting to be clocked in
const S_KQ_COUNT = S_KQ_HEAD + 1;
const S_KQ_DATA = S_KQ_COUNT + 1;
const KQ_SIZE = 32;
const STATE_BYTES = S_KQ_DATA + KQ_SIZE;

/** Host input may fill the keyboard buffer this far; command responses may use the rest. */
const KBD_INPUT_LIMIT = 16;

const L_KBD = 0x01;
const L_AUX = 0x02;

const MAGIC = 0x38303432; // "8042"

/** Everything in the shared state but the lock and magic words, for snapshots. */
const STATE_FIELDS: readonly StateField[] = [
  { name: "ram", at: S_RAM, type: "bytes", length: RAM_SIZE },
  { name: "outputPort", at: S_OUT_PORT, type: "u8" },
  { name: "pendingCommand", at: S_PENDING, type: "u8" },
  { name: "status", at: S_STATUS, type: "u8", max: STS_A2 },
  { name: "outputBuffer", at: S_OBF_DATA, type: "u8" },
  { name: "outputFlags", at: S_OBF_FLAGS, type: "u8", max: STS_OBF | STS_AUX_OBF | STS_TIMEOUT },
  { name: "lines", at: S_LINES, type: "u8", max: L_KBD | L_AUX },
  { name: "kbdPendingCommand", at: S_KBD_PENDING, type: "u8" },
  { name: "kbdScanning", at: S_KBD_SCANNING, type: "u8", max: 1 },
  { name: "kbdScanSet", at: S_KBD_SET, type: "u8", min: 1, max: 3 },
  { name: "kbdLeds", at: S_KBD_LEDS, type: "u8", max: 7 },
  { name: "kbdTypematic", at: S_KBD_TYPEMATIC, type: "u8" },
  { name: "kbdLast", at: S_KBD_LAST, type: "u8" },
  { name: "controllerQueueHead", at: S_CQ_HEAD, type: "u8", max: CQ_SIZE - 1 },
  { name: "controllerQueueCount", at: S_CQ_COUNT, type: "u8", max: CQ_SIZE },
  { name: "controllerQueueData", at: S_CQ_DATA, type: "bytes", length: CQ_SIZE },
  { name: "controllerQueueFlags", at: S_CQ_FLAGS, type: "bytes", length: CQ_SIZE },
  { name: "kbdQueueHead", at: S_KQ_HEAD, type: "u8", max: KQ_SIZE - 1 },
  { name: "kbdQueueCount", at: S_KQ_COUNT, type: "u8", max: KQ_SIZE },
  { name: "kbdQueueData", at: S_KQ_DATA, type: "bytes", length: KQ_SIZE },
];
const STATE_KIND = "i8042";
const STATE_VERSION = 1;

export interface I8042Irq {
  set(level: boolean): void;
}

export interface I8042Options {
  state: SharedArrayBuffer;
  /** Reset the state. Exactly one constructor (before the state is shared) passes true; or use createState. */
  init?: boolean;
  /** IRQ 1: a keyboard byte (or a controller response) in the output buffer, command byte bit 0 set. */
  kbdIrq: I8042Irq;
  /** IRQ 12: an aux byte in the output buffer, command byte bit 1 set. */
  auxIrq: I8042Irq;
  /** The guest pulsed the CPU reset line. Called without the lock held. */
  onReset: () => void;
  metrics?: MetricsSink;
  /** Used in metric and bus names: `i8042.<name>.resets`. Default "i8042". */
  name?: string;
}

export class I8042Error extends VireoError {
  constructor(message: string) {
    super("VIREO_I8042", message);
  }
}

const NO_COUNTER: Counter = { add() {}, value: 0 };

export class I8042 implements BusDevice {
  static readonly STATE_BYTES = STATE_BYTES;
  /** How many bytes of host input the keyboard holds. */
  static readonly KBD_INPUT_LIMIT = KBD_INPUT_LIMIT;

  readonly name: string;
  /** Port 0x60 alone, for registering at I8042_DATA_PORT with length 1. */
  readonly dataPort: BusDevice;
  /** Port 0x64 alone, for registering at I8042_COMMAND_PORT with length 1. */
  readonly commandPort: BusDevice;
  private readonly d: DataView;
  private readonly lock: SharedLock;
  private readonly kbdIrq: I8042Irq;
  private readonly auxIrq: I8042Irq;
  private readonly onReset: () => void;
  private readonly resets: Counter;
  private readonly kbdIrqs: Counter;
  private readonly auxIrqs: Counter;
  /** Set under the lock when the guest asks for a reset; acted on once the lock is released. */
  private resetRequested = false;

  /** A fresh, reset state buffer to hand to every thread's I8042. */
  static createState(): SharedArrayBuffer {
    const state = new SharedArrayBuffer(STATE_BYTES);
    resetState(state);
    return state;
  }

  constructor(opts: I8042Options) {
    const attached = attachSharedState({
      device: "I8042",
      state: opts.state,
      bytes: STATE_BYTES,
      magicOffset: S_MAGIC,
      magic: MAGIC,
      lockOffset: S_LOCK,
      init: opts.init,
      reset: (state) => resetState(state),
      error: (message) => new I8042Error(message),
    });
    this.d = attached.view;
    this.lock = attached.lock;
    this.kbdIrq = opts.kbdIrq;
    this.auxIrq = opts.auxIrq;
    this.onReset = opts.onReset;
    this.name = opts.name ?? "i8042";
    const m = opts.metrics;
    this.resets = m?.counter(`i8042.${this.name}.resets`) ?? NO_COUNTER;
    this.kbdIrqs = m?.counter(`i8042.${this.name}.kbd_irqs`) ?? NO_COUNTER;
    this.auxIrqs = m?.counter(`i8042.${this.name}.aux_irqs`) ?? NO_COUNTER;
    this.dataPort = {
      name: `${this.name}-data`,
      read: (_offset, data) => this.read(I8042_DATA_OFFSET, data),
      write: (_offset, data) => this.write(I8042_DATA_OFFSET, data),
    };
    this.commandPort = {
      name: `${this.name}-cmd`,
      read: (_offset, data) => this.read(I8042_COMMAND_OFFSET, data),
      write: (_offset, data) => this.write(I8042_COMMAND_OFFSET, data),
    };
  }

  // ---- BusDevice ----

  /**
   * Both registers are one byte wide: in a wider access only the first byte is the register; further bytes
   * read 0xff and are dropped on write.
   */
  read(offset: number, data: Uint8Array): void {
    this.lock.lock();
    try {
      data.fill(0xff);
      if (data.length > 0) {
        if (offset === I8042_DATA_OFFSET) data[0] = this.readData();
        else if (offset === I8042_COMMAND_OFFSET) data[0] = this.readStatus();
      }
      this.update();
    } finally {
      this.lock.unlock();
    }
  }

  write(offset: number, data: Uint8Array): void {
    this.lock.lock();
    try {
      if (data.length > 0) {
        const v = data[0] as number;
        if (offset === I8042_DATA_OFFSET) this.writeData(v);
        else if (offset === I8042_COMMAND_OFFSET) this.writeCommand(v);
      }
      this.update();
    } finally {
      this.lock.unlock();
    }
    this.deliverReset();
  }

  // ---- host side ----

  /**
   * Keys typed on the host, as scan codes in the set the guest selected (set 2 under Linux). Returns how many
   * bytes (a prefix) the keyboard took: none while the guest has scanning disabled, and no more than its
   * buffer holds; offer the rest again later.
   */
  pushKeyboardInput(bytes: Uint8Array): number {
    this.lock.lock();
    try {
      if (!this.d.getUint8(S_KBD_SCANNING)) return 0;
      // A byte already in the output buffer counts too: the guest finds at most 16 waiting in all.
      const held = this.d.getUint8(S_KQ_COUNT) + (this.d.getUint8(S_OBF_FLAGS) & STS_OBF ? 1 : 0);
      const n = Math.min(bytes.length, Math.max(0, KBD_INPUT_LIMIT - held));
      for (let i = 0; i < n; i++) this.kbdSend(bytes[i] as number);
      this.update();
      return n;
    } finally {
      this.lock.unlock();
    }
  }

  /** The keyboard LEDs the guest set (bit 0 Scroll Lock, bit 1 Num Lock, bit 2 Caps Lock). */
  get leds(): number {
    return this.lock.withLock(() => this.d.getUint8(S_KBD_LEDS));
  }

  // ---- snapshots ----

  /** The controller's and keyboard's whole state (command byte, queues, output buffer), for a snapshot. */
  saveState(): DeviceState {
    return this.lock.withLock(() => ({
      kind: STATE_KIND,
      version: STATE_VERSION,
      data: saveFields(this.d, STATE_FIELDS),
    }));
  }

  /** Replaces the state with a saved one (checked first), then drives IRQ 1 and 12 as the restored state says. */
  restoreState(s: DeviceState): void {
    const write = checkFields(
      StateReader.open(`I8042 ${this.name}`, s, STATE_KIND, STATE_VERSION),
      STATE_FIELDS,
    );
    this.lock.lock();
    try {
      write(this.d);
      // The lines are recomputed, not taken from the file: the new ones start low.
      this.d.setUint8(S_LINES, 0);
      this.driveLines();
    } finally {
      this.lock.unlock();
    }
  }

  // ---- controller (everything below runs with the lock held) ----

  private get ctr(): number {
    return this.d.getUint8(S_RAM);
  }

  private set ctr(v: number) {
    this.d.setUint8(S_RAM, v);
  }

  private readStatus(): number {
    const obf = this.d.getUint8(S_OBF_FLAGS);
    return (
      (obf & (STS_OBF | STS_AUX_OBF | STS_TIMEOUT)) |
      (this.ctr & CTR_SYS ? STS_SYS : 0) |
      (this.d.getUint8(S_STATUS) & STS_A2) |
      STS_INH
    );
  }

  /** TR: reading port 0x60 empties the output buffer; with nothing new it returns the last byte again. */
  private readData(): number {
    const v = this.d.getUint8(S_OBF_DATA);
    this.d.setUint8(S_OBF_FLAGS, 0);
    // Drop the interrupt lines now, so that the next byte (loaded by update) raises a new edge: IRQ 1 and 12
    // are edge-triggered ISA interrupts.
    this.driveLines();
    return v;
  }

  private writeCommand(cmd: number): void {
    this.d.setUint8(S_STATUS, STS_A2);
    this.d.setUint8(S_PENDING, 0); // a new command abandons one still waiting for its data byte
    if (cmd >= CMD_READ_RAM && cmd < CMD_READ_RAM + RAM_SIZE) {
      this.respond(this.d.getUint8(S_RAM + (cmd - CMD_READ_RAM)));
      return;
    }
    if (cmd >= CMD_WRITE_RAM && cmd < CMD_WRITE_RAM + RAM_SIZE) {
      this.d.setUint8(S_PENDING, cmd);
      return;
    }
    if (cmd >= CMD_PULSE) {
      // TR: bits 3-0 select output port lines to pulse low; line 0 is the CPU reset.
      if (!(cmd & OUT_RESET)) this.requestReset();
      return;
    }
    switch (cmd) {
      case CMD_PASSWORD_TEST:
        this.respond(NO_PASSWORD);
        return;
      case CMD_AUX_DISABLE:
        this.ctr |= CTR_AUXDIS;
        return;
      case CMD_AUX_ENABLE:
        this.ctr &= ~CTR_AUXDIS;
        return;
      case CMD_AUX_TEST:
      case CMD_KBD_TEST:
        this.respond(INTERFACE_OK); // clock and data lines neither stuck high nor low
        return;
      case CMD_SELF_TEST:
        this.ctr |= CTR_SYS; // TR: a passed self test sets the system flag
        this.respond(SELF_TEST_OK);
        return;
      case CMD_KBD_DISABLE:
        this.ctr |= CTR_KBDDIS;
        return;
      case CMD_KBD_ENABLE:
        this.ctr &= ~CTR_KBDDIS;
        return;
      case CMD_READ_INPUT:
        this.respond(INPUT_PORT);
        return;
      case CMD_READ_OUTPUT:
        this.respond(this.outputPort());
        return;
      case CMD_WRITE_OUTPUT:
      case CMD_WRITE_KBD_OBUF:
      case CMD_WRITE_AUX_OBUF:
      case CMD_WRITE_AUX:
        this.d.setUint8(S_PENDING, cmd);
        return;
      case CMD_A20_DISABLE:
        this.d.setUint8(S_OUT_PORT, this.d.getUint8(S_OUT_PORT) & ~0x02);
        return;
      case CMD_A20_ENABLE:
        this.d.setUint8(S_OUT_PORT, this.d.getUint8(S_OUT_PORT) | 0x02);
        return;
      case CMD_READ_TEST_INPUTS:
        this.respond(0x00);
        return;
      default:
        return; // undefined commands are ignored
    }
  }

  private writeData(v: number): void {
    this.d.setUint8(S_STATUS, 0);
    const pending = this.d.getUint8(S_PENDING);
    this.d.setUint8(S_PENDING, 0);
    if (pending >= CMD_WRITE_RAM && pending < CMD_WRITE_RAM + RAM_SIZE) {
      this.d.setUint8(S_RAM + (pending - CMD_WRITE_RAM), v);
      return;
    }
    switch (pending) {
      case CMD_WRITE_OUTPUT:
        this.writeOutputPort(v);
        return;
      case CMD_WRITE_KBD_OBUF:
        this.respond(v);
        return;
      case CMD_WRITE_AUX_OBUF:
        this.respond(v, STS_AUX_OBF);
        return;
      case CMD_WRITE_AUX:
        // No device on the aux port: the transmission times out (see the header).
        this.respond(KBD_RESEND_REQ, STS_AUX_OBF | STS_TIMEOUT);
        return;
      default:
        this.keyboardReceive(v); // no command waiting: the byte goes to the keyboard
    }
  }

  private outputPort(): number {
    const lines = this.d.getUint8(S_LINES);
    return (
      (this.d.getUint8(S_OUT_PORT) & ~(OUT_KBD_OBF | OUT_AUX_OBF)) |
      (lines & L_KBD ? OUT_KBD_OBF : 0) |
      (lines & L_AUX ? OUT_AUX_OBF : 0)
    );
  }

  private writeOutputPort(v: number): void {
    // TR: output port bit 0 low holds the processor in reset. The machine resets; the line returns high.
    if (!(v & OUT_RESET)) this.requestReset();
    this.d.setUint8(S_OUT_PORT, v | OUT_RESET);
  }

  private requestReset(): void {
    this.resets.add();
    this.resetRequested = true;
  }

  private deliverReset(): void {
    if (!this.resetRequested) return;
    this.resetRequested = false;
    this.onReset();
  }

  /** Queues a controller response for the output buffer (flags: STS_AUX_OBF, STS_TIMEOUT). */
  private respond(v: number, flags = 0): void {
    const d = this.d;
    const count = d.getUint8(S_CQ_COUNT);
    if (count === CQ_SIZE) return; // a guest issuing commands without reading: the overflow is lost
    const slot = (d.getUint8(S_CQ_HEAD) + count) % CQ_SIZE;
    d.setUint8(S_CQ_DATA + slot, v);
    d.setUint8(S_CQ_FLAGS + slot, flags);
    d.setUint8(S_CQ_COUNT, count + 1);
  }

  // ---- keyboard ----

  /** The keyboard sends a byte towards the controller (it waits in the keyboard until clocked in). */
  private kbdSend(v: number): void {
    const d = this.d;
    const count = d.getUint8(S_KQ_COUNT);
    if (count === KQ_SIZE) return;
    d.setUint8(S_KQ_DATA + ((d.getUint8(S_KQ_HEAD) + count) % KQ_SIZE), v);
    d.setUint8(S_KQ_COUNT, count + 1);
    d.setUint8(S_KBD_LAST, v);
  }

  private kbdClear(): void {
    this.d.setUint8(S_KQ_HEAD, 0);
    this.d.setUint8(S_KQ_COUNT, 0);
  }

  private kbdDefaults(): void {
    this.d.setUint8(S_KBD_TYPEMATIC, KBD_DEFAULT_TYPEMATIC);
    this.d.setUint8(S_KBD_SET, KBD_DEFAULT_SET);
  }

  /** A byte from the host reaches the keyboard: a command, or the parameter of the previous one. */
  private keyboardReceive(v: number): void {
    const d = this.d;
    const pending = d.getUint8(S_KBD_PENDING);
    d.setUint8(S_KBD_PENDING, 0);
    // Parameters (LED bits, typematic rate/delay, scan code set) are all below 0x80; a byte with bit 7 set in
    // their place is a new command.
    if (pending !== 0 && v < 0x80) {
      this.keyboardParameter(pending, v);
      return;
    }
    switch (v) {
      case KBD_RESET:
        // Reset, then the basic assurance test: ACK, then 0xAA (passed). Scanning resumes with defaults.
        this.kbdClear();
        this.kbdDefaults();
        d.setUint8(S_KBD_LEDS, 0);
        d.setUint8(S_KBD_SCANNING, 1);
        this.kbdSend(KBD_ACK);
        this.kbdSend(KBD_BAT_OK);
        return;
      case KBD_RESEND:
        this.kbdSend(d.getUint8(S_KBD_LAST));
        return;
      case KBD_DEFAULTS:
      case KBD_DISABLE:
        this.kbdClear();
        this.kbdDefaults();
        d.setUint8(S_KBD_SCANNING, v === KBD_DEFAULTS ? 1 : 0);
        this.kbdSend(KBD_ACK);
        return;
      case KBD_ENABLE:
        this.kbdClear(); // TR: enable clears the keyboard's buffer and starts scanning
        d.setUint8(S_KBD_SCANNING, 1);
        this.kbdSend(KBD_ACK);
        return;
      case KBD_SET_LEDS:
      case KBD_TYPEMATIC:
      case KBD_SCAN_SET:
        d.setUint8(S_KBD_PENDING, v);
        this.kbdSend(KBD_ACK);
        return;
      case KBD_IDENTIFY:
        this.kbdSend(KBD_ACK);
        for (const b of KBD_ID) this.kbdSend(b);
        return;
      case KBD_ECHO:
        this.kbdSend(KBD_ECHO);
        return;
      default:
        if (v >= KBD_SET3_FIRST && v <= KBD_SET3_LAST) this.kbdSend(KBD_ACK);
        else this.kbdSend(KBD_RESEND_REQ); // not a command: ask for it again
    }
  }

  private keyboardParameter(cmd: number, v: number): void {
    const d = this.d;
    switch (cmd) {
      case KBD_SET_LEDS:
        d.setUint8(S_KBD_LEDS, v & 0x07);
        this.kbdSend(KBD_ACK);
        return;
      case KBD_TYPEMATIC:
        d.setUint8(S_KBD_TYPEMATIC, v);
        this.kbdSend(KBD_ACK);
        return;
      default: // KBD_SCAN_SET: 0 asks which set is in use; 1-3 select one
        if (v > 3) {
          this.kbdSend(KBD_RESEND_REQ);
          return;
        }
        this.kbdSend(KBD_ACK);
        if (v === 0) this.kbdSend(d.getUint8(S_KBD_SET));
        else d.setUint8(S_KBD_SET, v);
    }
  }

  // ---- output buffer and interrupts ----

  /**
   * Ends every locked operation: an empty output buffer takes the next controller response, or else the next
   * keyboard byte if the keyboard interface is enabled; then the interrupt lines follow the buffer.
   */
  private update(): void {
    const d = this.d;
    if (!(d.getUint8(S_OBF_FLAGS) & STS_OBF)) {
      const cq = d.getUint8(S_CQ_COUNT);
      if (cq > 0) {
        const head = d.getUint8(S_CQ_HEAD);
        d.setUint8(S_OBF_DATA, d.getUint8(S_CQ_DATA + head));
        d.setUint8(S_OBF_FLAGS, STS_OBF | d.getUint8(S_CQ_FLAGS + head));
        d.setUint8(S_CQ_HEAD, (head + 1) % CQ_SIZE);
        d.setUint8(S_CQ_COUNT, cq - 1);
      } else if (!(this.ctr & CTR_KBDDIS) && d.getUint8(S_KQ_COUNT) > 0) {
        const head = d.getUint8(S_KQ_HEAD);
        d.setUint8(S_OBF_DATA, d.getUint8(S_KQ_DATA + head));
        d.setUint8(S_OBF_FLAGS, STS_OBF);
        d.setUint8(S_KQ_HEAD, (head + 1) % KQ_SIZE);
        d.setUint8(S_KQ_COUNT, d.getUint8(S_KQ_COUNT) - 1);
      }
    }
    this.driveLines();
  }

  /** IRQ 1 = keyboard-side byte waiting and CTR bit 0; IRQ 12 = aux byte waiting and CTR bit 1. */
  private driveLines(): void {
    const d = this.d;
    const obf = d.getUint8(S_OBF_FLAGS);
    const full = (obf & STS_OBF) !== 0;
    const aux = (obf & STS_AUX_OBF) !== 0;
    const kbdLevel = full && !aux && (this.ctr & CTR_KBDINT) !== 0;
    const auxLevel = full && aux && (this.ctr & CTR_AUXINT) !== 0;
    const old = d.getUint8(S_LINES);
    d.setUint8(S_LINES, (kbdLevel ? L_KBD : 0) | (auxLevel ? L_AUX : 0));
    if (kbdLevel !== ((old & L_KBD) !== 0)) {
      if (kbdLevel) this.kbdIrqs.add();
      this.kbdIrq.set(kbdLevel);
    }
    if (auxLevel !== ((old & L_AUX) !== 0)) {
      if (auxLevel) this.auxIrqs.add();
      this.auxIrq.set(auxLevel);
    }
  }
}

function resetState(state: SharedArrayBuffer): void {
  new Uint8Array(state, 0, STATE_BYTES).fill(0);
  SharedLock.init(state, S_LOCK);
  const d = new DataView(state, 0, STATE_BYTES);
  d.setUint8(S_RAM, CTR_RESET);
  d.setUint8(S_OUT_PORT, OUT_PORT_RESET);
  d.setUint8(S_KBD_SCANNING, 1);
  d.setUint8(S_KBD_SET, KBD_DEFAULT_SET);
  d.setUint8(S_KBD_TYPEMATIC, KBD_DEFAULT_TYPEMATIC);
  // The magic goes last: an attaching thread that sees it sees the rest.
  Atomics.store(new Int32Array(state, 0, 2), S_MAGIC / 4, MAGIC);
}
