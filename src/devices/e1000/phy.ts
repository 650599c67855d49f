/**
 * The 82540EM's integrated 10/100/1000 PHY, reached through MDIC at MDIO address 1. Its register set is the
 * Marvell 88E1011's (SDM §8; Linux identifies it as M88E1011_I_PHY_ID 0x01410C20): the IEEE 802.3 clause 22
 * registers 0-15 plus the M88 PHY specific control/status at 0x10/0x11.
 *
 * The emulated link partner is a 1000BASE-T full-duplex switch port, so with the link up autonegotiation is
 * always complete at 1000/full. Link state comes from the device (`linkUp`). Emulation choices:
 * - Control bit 15 (software reset) and bit 9 (restart autonegotiation) self-clear at once; a software reset
 *   keeps the other registers (the M88 applies its settings on reset rather than reverting them). Only a
 *   hardware reset (`reset()`, CTRL.PHY_RST) restores the defaults.
 * - Power-down (control bit 11) is stored but does not take the link down.
 * - Read-only registers ignore writes; every other register is plain storage.
 */

export const PHY_REG = {
  CTRL: 0x00,
  STATUS: 0x01,
  ID1: 0x02,
  ID2: 0x03,
  AUTONEG_ADV: 0x04,
  LP_ABILITY: 0x05,
  AUTONEG_EXP: 0x06,
  NEXT_PAGE_TX: 0x07,
  LP_NEXT_PAGE: 0x08,
  CTRL_1000T: 0x09,
  STATUS_1000T: 0x0a,
  EXT_STATUS: 0x0f,
  M88_SPEC_CTRL: 0x10,
  M88_SPEC_STATUS: 0x11,
  M88_INT_ENABLE: 0x12,
  M88_INT_STATUS: 0x13,
  M88_EXT_SPEC_CTRL: 0x14,
  M88_RX_ERR_COUNT: 0x15,
} as const;

/** Organizationally unique identifier and model of the 88E1011 (ID1 = 0x0141, ID2 = 0x0C2x, revision in 3:0). */
export const M88E1011_PHY_ID = 0x01410c20;

export const PHY_CTRL_RESET = 1 << 15;
export const PHY_CTRL_AUTONEG_EN = 1 << 12;
export const PHY_CTRL_POWER_DOWN = 1 << 11;
export const PHY_CTRL_RESTART_AUTONEG = 1 << 9;
export const PHY_STATUS_LINK = 1 << 2;
export const PHY_STATUS_AUTONEG_COMPLETE = 1 << 5;

/**
 * Status capabilities: 10/100 half/full, extended status (1000BASE-T), preamble suppression, autonegotiation
 * ability, extended register capability. Link status (bit 2) and autonegotiation complete (bit 5) are added while
 * the link is up.
 */
const STATUS_CAPS = 0x7949;
/** Link partner: 10/100 half/full, symmetric PAUSE, acknowledge, selector IEEE 802.3. */
const LP_ABILITY_UP = 0x45e1;
/** 1000BASE-T status: local and remote receiver OK, partner 1000BASE-T full duplex. */
const STATUS_1000T_UP = 0x3800;
/** 1000BASE-T full and half duplex capable. */
const EXT_STATUS = 0x3000;
/** M88 specific status: 1000 Mb/s, full duplex, page received, speed/duplex resolved, real-time link up. */
const M88_SPEC_STATUS_UP = 0xac00;

const DEFAULTS: ReadonlyArray<[number, number]> = [
  [PHY_REG.CTRL, 0x1140], // autonegotiation enabled, full duplex, 1000 Mb/s selection bits
  [PHY_REG.AUTONEG_ADV, 0x01e1],
  [PHY_REG.CTRL_1000T, 0x0300],
  [PHY_REG.M88_SPEC_CTRL, 0x0068],
  [PHY_REG.M88_EXT_SPEC_CTRL, 0x0d60],
];

const READ_ONLY = new Set<number>([
  PHY_REG.STATUS,
  PHY_REG.ID1,
  PHY_REG.ID2,
  PHY_REG.LP_ABILITY,
  PHY_REG.AUTONEG_EXP,
  PHY_REG.LP_NEXT_PAGE,
  PHY_REG.STATUS_1000T,
  PHY_REG.EXT_STATUS,
  PHY_REG.M88_SPEC_STATUS,
  PHY_REG.M88_INT_STATUS,
  PHY_REG.M88_RX_ERR_COUNT,
]);

/** Registers of the PHY's storage (the 5-bit MDIO register address space). */
export const PHY_REG_COUNT = 32;

/**
 * The PHY's register logic over storage its owner provides (`regs`, PHY_REG_COUNT slots, in shared memory when
 * several threads serve the device; the owner serializes calls). The constructor leaves the storage alone, so
 * every thread can build one over the same registers: whoever creates them calls `reset()` once.
 */
export class M88Phy {
  private readonly regs: Uint16Array;

  constructor(
    regs: Uint16Array,
    private readonly linkUp: () => boolean,
  ) {
    if (regs.length < PHY_REG_COUNT) throw new RangeError(`PHY storage needs ${PHY_REG_COUNT} registers`);
    this.regs = regs;
  }

  /** Hardware reset: every register to its default. */
  reset(): void {
    this.regs.fill(0, 0, PHY_REG_COUNT);
    for (const [reg, value] of DEFAULTS) this.regs[reg] = value;
  }

  read(reg: number): number {
    const up = this.linkUp();
    switch (reg & 0x1f) {
      case PHY_REG.STATUS:
        return STATUS_CAPS | (up ? PHY_STATUS_LINK | PHY_STATUS_AUTONEG_COMPLETE : 0);
      case PHY_REG.ID1:
        return M88E1011_PHY_ID >>> 16;
      case PHY_REG.ID2:
        return M88E1011_PHY_ID & 0xffff;
      case PHY_REG.LP_ABILITY:
        return up ? LP_ABILITY_UP : 0;
      case PHY_REG.AUTONEG_EXP:
        return up ? 0x0001 : 0; // link partner is autonegotiation able
      case PHY_REG.STATUS_1000T:
        return up ? STATUS_1000T_UP : 0;
      case PHY_REG.EXT_STATUS:
        return EXT_STATUS;
      case PHY_REG.M88_SPEC_STATUS:
        return up ? M88_SPEC_STATUS_UP : 0;
      default:
        return this.regs[reg & 0x1f] as number;
    }
  }

  write(reg: number, value: number): void {
    const r = reg & 0x1f;
    if (READ_ONLY.has(r)) return;
    if (r === PHY_REG.CTRL) {
      this.regs[r] = value & ~(PHY_CTRL_RESET | PHY_CTRL_RESTART_AUTONEG);
      return;
    }
    this.regs[r] = value;
  }
}
