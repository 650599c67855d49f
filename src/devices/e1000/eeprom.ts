/**
 * The 82540EM's serial EEPROM: a 64-word Microwire part (93C46-style) behind EECD's bit-banged pins, also
 * readable word by word through EERD (SDM §5.3.1). The image holds what drivers read (SDM §5.6, Table 5-2):
 * the MAC address, the PCI IDs, the initialization control words and the checksum word (0x3F) chosen so that
 * words 0x00-0x3F sum to 0xBABA (SDM §5.6.35).
 *
 * Microwire protocol as the Linux driver drives it (e1000_shift_out_ee_bits / e1000_shift_in_ee_bits): with CS
 * high, the device samples DI on each rising edge of SK: a start bit (1), a 2-bit opcode, then 6 address bits.
 * For READ (10b) the device then drives a dummy 0 on DO, and on each following rising edge the next data bit, MSB
 * first, moving on to the next word after 16 bits (sequential read). Dropping CS ends the command. EWEN/EWDS
 * (opcode 00b with address 11xxxx / 00xxxx) enable and disable programming; WRITE (01b) takes 16 data bits and
 * ERASE (11b) sets the word to 0xFFFF, both only while enabled. The part is "ready" at once, so DO reads 1 when
 * CS is high and no command is shifting.
 */
import { E1000_PCI_IDS } from "./regs.ts";

export const EEPROM_WORDS = 64;
export const EEPROM_ADDRESS_BITS = 6;
export const EEPROM_CHECKSUM_WORD = 0x3f;
export const EEPROM_SUM = 0xbaba;

// Word offsets (SDM Table 5-2)
export const EEPROM_WORD = {
  MAC0: 0x00,
  MAC1: 0x01,
  MAC2: 0x02,
  COMPAT: 0x03,
  ID_LED: 0x04,
  IMAGE_VERSION: 0x05,
  PBA0: 0x08,
  PBA1: 0x09,
  INIT_CONTROL1: 0x0a,
  SUBSYSTEM_ID: 0x0b,
  SUBSYSTEM_VENDOR_ID: 0x0c,
  DEVICE_ID: 0x0d,
  VENDOR_ID: 0x0e,
  INIT_CONTROL2: 0x0f,
  INIT_CONTROL3: 0x24,
} as const;

/**
 * Builds a valid 64-word image for `mac`. Unused words read 0xFFFF as on an erased part. Choices:
 * - Initialization Control Word 1: signature 01b in bits 15:14 (the image is valid, SDM §5.6.7), load the
 *   vendor/device and subsystem IDs from the EEPROM (bits 0 and 1).
 * - Word 0x0F leaves the PAUSE bits (13:12) clear: no flow control is advertised (there are no PAUSE frames
 *   in the emulation).
 * - Word 0x24 (Initialization Control 3, port A) has APM wake-up (bit 10) clear, so drivers do not enable WoL.
 * - Word 0x04 is 0xFFFF: drivers use their default LED configuration.
 */
export function buildEepromImage(mac: Uint8Array): Uint16Array {
  if (mac.length !== 6) throw new RangeError(`MAC address must be 6 bytes, got ${mac.length}`);
  const w = new Uint16Array(EEPROM_WORDS).fill(0xffff);
  // The address is stored byte-swapped within each word: word 0 = byte1:byte0 (SDM §5.6.1).
  w[EEPROM_WORD.MAC0] = (mac[0] as number) | ((mac[1] as number) << 8);
  w[EEPROM_WORD.MAC1] = (mac[2] as number) | ((mac[3] as number) << 8);
  w[EEPROM_WORD.MAC2] = (mac[4] as number) | ((mac[5] as number) << 8);
  w[EEPROM_WORD.COMPAT] = 0x0000;
  w[EEPROM_WORD.IMAGE_VERSION] = 0x0100;
  w[EEPROM_WORD.PBA0] = 0x0000;
  w[EEPROM_WORD.PBA1] = 0x0000;
  w[EEPROM_WORD.INIT_CONTROL1] = 0x4003;
  w[EEPROM_WORD.SUBSYSTEM_ID] = E1000_PCI_IDS.subsystemId;
  w[EEPROM_WORD.SUBSYSTEM_VENDOR_ID] = E1000_PCI_IDS.subsystemVendorId;
  w[EEPROM_WORD.DEVICE_ID] = E1000_PCI_IDS.deviceId;
  w[EEPROM_WORD.VENDOR_ID] = E1000_PCI_IDS.vendorId;
  w[EEPROM_WORD.INIT_CONTROL2] = 0x0000;
  w[EEPROM_WORD.INIT_CONTROL3] = 0x0000;
  setEepromChecksum(w);
  return w;
}

/** Sets word 0x3F so that words 0x00-0x3F sum to 0xBABA modulo 2^16 (SDM §5.6.35). */
export function setEepromChecksum(w: Uint16Array): void {
  let sum = 0;
  for (let i = 0; i < EEPROM_CHECKSUM_WORD; i++) sum = (sum + (w[i] as number)) & 0xffff;
  w[EEPROM_CHECKSUM_WORD] = (EEPROM_SUM - sum) & 0xffff;
}

enum Phase {
  /** CS high, waiting for a start bit (leading zeros are ignored). */
  Idle,
  Opcode,
  Address,
  ReadData,
  WriteData,
  /** The command is finished (or not understood); bits are ignored until CS drops. */
  Done,
}

// Words of MicrowireEeprom's interface state (EEPROM_STATE_WORDS Int32 slots, shared between threads).
const S_PHASE = 0;
const S_SHIFT = 1;
const S_COUNT = 2;
const S_OPCODE = 3;
const S_ADDRESS = 4;
const S_WRITE_ENABLED = 5;
const S_CS = 6;
const S_SK = 7;
/** What the part drives on DO. */
const S_DOUT = 8;
const S_READ_WORD = 9;
const S_READ_BITS = 10;
/** Int32 slots of interface state a MicrowireEeprom keeps (see the constructor). */
export const EEPROM_STATE_WORDS = 11;

/**
 * The Microwire serial interface of the EEPROM, driven through EECD's SK/CS/DI pins.
 *
 * The object holds no state of its own: the contents (`words`) and the interface state (`state`,
 * EEPROM_STATE_WORDS Int32 slots) are views the owner provides, in shared memory when several threads serve the
 * device; the owner serializes calls (the e1000 runs them under its device lock). A zeroed `state` is a deselected
 * part with programming disabled, the same as after `reset()`.
 */
export class MicrowireEeprom {
  readonly words: Uint16Array;
  private readonly s: Int32Array;

  constructor(words: Uint16Array, state: Int32Array = new Int32Array(EEPROM_STATE_WORDS)) {
    if (words.length < EEPROM_WORDS) throw new RangeError(`EEPROM needs ${EEPROM_WORDS} words`);
    if (state.length < EEPROM_STATE_WORDS)
      throw new RangeError(`EEPROM state needs ${EEPROM_STATE_WORDS} slots`);
    this.words = words;
    this.s = state;
  }

  /** Applies a new level of the three input pins. */
  setPins(cs: boolean, sk: boolean, di: boolean): void {
    const s = this.s;
    if (!cs) {
      // Deselect ends any command (and a WRITE that collected all its bits already took effect).
      s[S_PHASE] = Phase.Idle;
      s[S_DOUT] = 0;
    } else if (!s[S_CS]) {
      s[S_PHASE] = Phase.Idle;
      s[S_DOUT] = 1; // ready
    } else if (sk && !s[S_SK]) {
      this.clock(di);
    }
    s[S_CS] = cs ? 1 : 0;
    s[S_SK] = sk ? 1 : 0;
  }

  /** The level of DO as EECD.DO reads it. */
  get dataOut(): boolean {
    return this.s[S_CS] !== 0 && this.s[S_DOUT] !== 0;
  }

  /** Returns to the power-on state (deselected, programming disabled). The contents are kept. */
  reset(): void {
    const s = this.s;
    s[S_PHASE] = Phase.Idle;
    s[S_CS] = 0;
    s[S_SK] = 0;
    s[S_DOUT] = 0;
    s[S_WRITE_ENABLED] = 0;
  }

  private clock(di: boolean): void {
    const s = this.s;
    const bit = di ? 1 : 0;
    switch (s[S_PHASE] as Phase) {
      case Phase.Idle:
        if (bit === 1) {
          s[S_PHASE] = Phase.Opcode;
          s[S_SHIFT] = 0;
          s[S_COUNT] = 0;
          s[S_DOUT] = 0;
        }
        return;
      case Phase.Opcode:
        s[S_SHIFT] = ((s[S_SHIFT] as number) << 1) | bit;
        if (this.bump() === 2) {
          s[S_OPCODE] = s[S_SHIFT] as number;
          s[S_PHASE] = Phase.Address;
          s[S_SHIFT] = 0;
          s[S_COUNT] = 0;
        }
        return;
      case Phase.Address:
        s[S_SHIFT] = ((s[S_SHIFT] as number) << 1) | bit;
        if (this.bump() === EEPROM_ADDRESS_BITS) {
          s[S_ADDRESS] = s[S_SHIFT] as number;
          this.command();
        }
        return;
      case Phase.ReadData:
        if (s[S_READ_BITS] === 0) {
          s[S_ADDRESS] = ((s[S_ADDRESS] as number) + 1) % EEPROM_WORDS;
          s[S_READ_WORD] = this.words[s[S_ADDRESS] as number] as number;
          s[S_READ_BITS] = 16;
        }
        s[S_READ_BITS] = (s[S_READ_BITS] as number) - 1;
        s[S_DOUT] = ((s[S_READ_WORD] as number) >> (s[S_READ_BITS] as number)) & 1;
        return;
      case Phase.WriteData:
        s[S_SHIFT] = (((s[S_SHIFT] as number) << 1) | bit) & 0xffff;
        if (this.bump() === 16) {
          if (s[S_WRITE_ENABLED]) this.words[s[S_ADDRESS] as number] = s[S_SHIFT] as number;
          s[S_PHASE] = Phase.Done;
        }
        return;
      default: // Done, or a value no state has (the shared slot is only written here)
        return;
    }
  }

  /** Counts one more bit shifted in; returns the new count. */
  private bump(): number {
    const n = (this.s[S_COUNT] as number) + 1;
    this.s[S_COUNT] = n;
    return n;
  }

  private command(): void {
    const s = this.s;
    const address = (s[S_ADDRESS] as number) % EEPROM_WORDS;
    const top2 = address >> (EEPROM_ADDRESS_BITS - 2);
    s[S_SHIFT] = 0;
    s[S_COUNT] = 0;
    switch (s[S_OPCODE]) {
      case 0b10: // READ: a dummy 0, then the word MSB first
        s[S_PHASE] = Phase.ReadData;
        s[S_READ_WORD] = this.words[address] as number;
        s[S_READ_BITS] = 16;
        s[S_DOUT] = 0;
        return;
      case 0b01: // WRITE
        s[S_PHASE] = Phase.WriteData;
        return;
      case 0b11: // ERASE
        if (s[S_WRITE_ENABLED]) this.words[address] = 0xffff;
        s[S_PHASE] = Phase.Done;
        return;
      default: // 00: EWEN (11), EWDS (00), ERAL (10) and WRAL (01) by the top address bits
        if (top2 === 0b11) s[S_WRITE_ENABLED] = 1;
        else if (top2 === 0b00) s[S_WRITE_ENABLED] = 0;
        else if (top2 === 0b10 && s[S_WRITE_ENABLED]) this.words.fill(0xffff, 0, EEPROM_WORDS);
        s[S_PHASE] = Phase.Done;
        return;
    }
  }
}
