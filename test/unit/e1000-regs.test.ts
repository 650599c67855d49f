import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { E1000_BARS, E1000_PCI_IDS } from "../../src/devices/e1000/regs.ts";
import {
  CTRL_RST,
  CTRL_SLU,
  EECD_PRES,
  ethFrame,
  ICR,
  makeNic,
  NIC_MAC,
  PEER_MAC,
  pattern,
  REG,
  STAT,
  STATUS_FD,
  STATUS_LU,
} from "../helpers/e1000-driver.ts";

describe("e1000 identity and reset", () => {
  test("PCI constants describe an 82540EM", () => {
    assert.equal(E1000_PCI_IDS.vendorId, 0x8086);
    assert.equal(E1000_PCI_IDS.deviceId, 0x100e);
    assert.equal(E1000_PCI_IDS.classCode, 0x020000);
    assert.equal(E1000_PCI_IDS.interruptPin, 1);
    assert.equal(E1000_BARS.mmio.size, 128 * 1024);
    assert.equal(E1000_BARS.io.kind, "io");
  });

  test("global reset through the I/O window self-clears and restores register defaults", () => {
    const { drv } = makeNic();
    drv.w32(REG.RCTL, 0x12345678 & ~2);
    drv.w32(REG.IMS, ICR.TXDW);
    drv.w32(REG.MTA + 4 * 7, 0xdeadbeef);
    drv.w32(REG.RAL0 + 8, 0x11223344);
    drv.reset();
    assert.equal(drv.r32(REG.CTRL) & CTRL_RST, 0);
    assert.equal(drv.r32(REG.RCTL), 0);
    assert.equal(drv.r32(REG.IMS), 0);
    assert.equal(drv.r32(REG.MTA + 4 * 7), 0);
    assert.equal(drv.r32(REG.RAL0 + 8), 0);
    // RAL0/RAH0 are loaded from the EEPROM with Address Valid.
    assert.equal(drv.r32(REG.RAL0), 0x12005452);
    assert.equal(drv.r32(REG.RAH0), 0x80005634);
  });

  test("reset drops the interrupt line", () => {
    const nic = makeNic();
    nic.drv.w32(REG.IMS, ICR.LSC);
    nic.drv.w32(REG.ICS, ICR.LSC);
    assert.equal(nic.irqLevel, true);
    nic.drv.reset();
    assert.equal(nic.irqLevel, false);
    assert.equal(nic.drv.readIcr(), 0);
  });

  test("STATUS reports link up, full duplex, 1000 Mb/s; pulling the cable raises LSC", () => {
    const { drv, dev } = makeNic();
    const st = drv.r32(REG.STATUS);
    assert.equal(st & STATUS_LU, STATUS_LU);
    assert.equal(st & STATUS_FD, STATUS_FD);
    assert.equal((st >> 6) & 3, 2);
    drv.w32(REG.IMS, ICR.LSC);
    dev.setLinkUp(false);
    assert.equal(drv.r32(REG.STATUS) & STATUS_LU, 0);
    assert.equal(drv.linkUp(), false);
    assert.equal(drv.readIcr() & ICR.LSC, ICR.LSC);
    dev.setLinkUp(true);
    assert.equal(drv.linkUp(), true);
  });
});

describe("e1000 EEPROM", () => {
  test("EERD reads a valid image: checksum 0xBABA, the MAC, the IDs", () => {
    const { drv } = makeNic();
    drv.reset();
    assert.equal(drv.eepromChecksumValid(), true);
    assert.deepEqual([...drv.macFromEeprom()], [...NIC_MAC]);
    assert.equal(drv.eepromRead(0x0d), 0x100e);
    assert.equal(drv.eepromRead(0x0e), 0x8086);
    assert.equal(drv.eepromRead(0x0c), 0x8086);
    assert.equal(drv.eepromRead(0x0a) >> 14, 0b01, "init control word 1 signature");
    // DONE, address and data are reported together.
    drv.w32(REG.EERD, (1 << 8) | 1);
    assert.equal(drv.r32(REG.EERD), ((0x1200 | 0) << 16) | (1 << 8) | 0x10);
  });

  test("a different MAC changes words 0-2 and the checksum word still balances", () => {
    const { drv } = makeNic({ mac: Uint8Array.of(0x00, 0x1b, 0x21, 0xaa, 0xbb, 0xcc) });
    assert.equal(drv.eepromRead(0), 0x1b00);
    assert.equal(drv.eepromRead(1), 0xaa21);
    assert.equal(drv.eepromRead(2), 0xccbb);
    assert.equal(drv.eepromChecksumValid(), true);
  });

  test("bit-banged Microwire reads return the same words as EERD", () => {
    const { drv } = makeNic();
    assert.equal(drv.r32(REG.EECD) & EECD_PRES, EECD_PRES);
    assert.equal(drv.r32(REG.EECD) & 0x200, 0, "EE_SIZE 0: 64-word part, 6 address bits");
    for (const w of [0, 1, 2, 0x0a, 0x0d, 0x3f]) {
      assert.equal(drv.eepromReadMicrowire(w), drv.eepromRead(w), `word ${w}`);
    }
    assert.equal(
      drv.eepromChecksumValid((w) => drv.eepromReadMicrowire(w)),
      true,
    );
  });

  test("the EEPROM grant follows the request bit", () => {
    const { drv } = makeNic();
    assert.equal(drv.r32(REG.EECD) & 0x80, 0);
    drv.w32(REG.EECD, 0x40);
    assert.equal(drv.r32(REG.EECD) & 0xc0, 0xc0);
    drv.w32(REG.EECD, 0);
    assert.equal(drv.r32(REG.EECD) & 0xc0, 0);
  });
});

describe("e1000 PHY through MDIC", () => {
  test("the M88E1011 IDs, link up and autonegotiation complete", () => {
    const { drv } = makeNic();
    const id1 = drv.phyRead(2);
    const id2 = drv.phyRead(3);
    assert.deepEqual(id1, { value: 0x0141, error: false });
    assert.equal(((id1.value << 16) | id2.value) & 0xfffffff0, 0x01410c20);
    const st = drv.phyRead(1).value;
    assert.equal(st & 0x4, 0x4, "link status");
    assert.equal(st & 0x20, 0x20, "autonegotiation complete");
    assert.equal(drv.linkUp(), true);
    // M88 specific status: 1000 Mb/s, full duplex, resolved, link.
    assert.equal(drv.phyRead(0x11).value & 0xec00, 0xac00);
  });

  test("writable registers keep values; reset and restart-autoneg bits self-clear; read-only ignore writes", () => {
    const { drv } = makeNic();
    assert.equal(drv.phyWrite(4, 0x0de1), true);
    assert.equal(drv.phyRead(4).value, 0x0de1);
    drv.phyWrite(0x10, 0x0078);
    drv.phyWrite(0, 0x1140 | 0x8000 | 0x0200);
    assert.equal(drv.phyRead(0).value, 0x1140);
    assert.equal(drv.phyRead(0x10).value, 0x0078, "a software reset keeps the settings");
    drv.phyWrite(2, 0);
    assert.equal(drv.phyRead(2).value, 0x0141);
    // CTRL.PHY_RST restores the defaults.
    const ctrl = drv.r32(REG.CTRL);
    drv.w32(REG.CTRL, ctrl | (1 << 31));
    drv.w32(REG.CTRL, ctrl);
    assert.equal(drv.phyRead(4).value, 0x01e1);
  });

  test("only PHY address 1 answers; other addresses and opcodes set the error bit", () => {
    const { drv } = makeNic();
    assert.equal(drv.phyRead(1, 2).error, true);
    drv.w32(REG.MDIC, (1 << 16) | (1 << 21) | (3 << 26));
    assert.notEqual(drv.r32(REG.MDIC) & (1 << 30), 0);
  });

  test("MDIC with the interrupt bit raises MDAC", () => {
    const { drv } = makeNic();
    drv.w32(REG.MDIC, (1 << 16) | (1 << 21) | (2 << 26) | (1 << 29));
    assert.equal(drv.readIcr() & ICR.MDAC, ICR.MDAC);
  });
});

describe("e1000 interrupt registers", () => {
  test("ICS sets causes, ICR reads them once (cleared on read), W1C clears bits", () => {
    const { drv } = makeNic();
    drv.w32(REG.ICS, ICR.TXDW | ICR.RXT0);
    assert.equal(drv.readIcr(), ICR.TXDW | ICR.RXT0);
    assert.equal(drv.readIcr(), 0);
    drv.w32(REG.ICS, ICR.TXDW | ICR.RXT0);
    drv.w32(REG.ICR, ICR.TXDW);
    assert.equal(drv.readIcr(), ICR.RXT0);
    // ICR is cleared even when the causes are masked (IMS = 0).
    drv.w32(REG.ICS, ICR.LSC);
    assert.equal(drv.r32(REG.IMS), 0);
    assert.equal(drv.readIcr(), ICR.LSC);
    assert.equal(drv.readIcr(), 0);
  });

  test("the line is (ICR & IMS) != 0: IMS sets, IMC clears, ICR read lowers", () => {
    const nic = makeNic();
    const { drv } = nic;
    drv.w32(REG.ICS, ICR.RXT0);
    assert.equal(nic.irqLevel, false, "masked cause does not assert");
    drv.w32(REG.IMS, ICR.TXDW);
    assert.equal(nic.irqLevel, false);
    drv.w32(REG.IMS, ICR.RXT0);
    assert.equal(nic.irqLevel, true);
    assert.equal(drv.r32(REG.IMS), ICR.TXDW | ICR.RXT0);
    drv.w32(REG.IMC, ICR.RXT0);
    assert.equal(nic.irqLevel, false);
    assert.equal(drv.r32(REG.IMS), ICR.TXDW);
    drv.w32(REG.IMS, ICR.RXT0);
    assert.equal(nic.irqLevel, true);
    drv.readIcr();
    assert.equal(nic.irqLevel, false);
    assert.deepEqual(nic.irqLevels, [true, false, true, false]);
  });

  test("ITR holds a new assertion back until the interval since the last one has passed", () => {
    const nic = makeNic();
    const { drv, dev, clock } = nic;
    drv.w32(REG.ITR, 1000); // 1000 * 256 ns = 0.256 ms
    drv.w32(REG.IMS, ICR.TXDW);
    drv.w32(REG.ICS, ICR.TXDW);
    assert.equal(nic.irqLevel, true, "the first interrupt is not delayed");
    drv.readIcr();
    clock.t = 0.1;
    drv.w32(REG.ICS, ICR.TXDW);
    assert.equal(nic.irqLevel, false, "too soon");
    assert.equal(dev.nextDeadline(), 0.256);
    clock.t = 0.2;
    dev.poll();
    assert.equal(nic.irqLevel, false);
    clock.t = 0.256;
    dev.poll();
    assert.equal(nic.irqLevel, true);
    assert.equal(dev.nextDeadline(), undefined);
    // A register access also delivers it: lower, raise again too soon, then read STATUS later.
    drv.readIcr();
    drv.w32(REG.ICS, ICR.TXDW);
    assert.equal(nic.irqLevel, false);
    clock.t = 1;
    drv.r32(REG.STATUS);
    assert.equal(nic.irqLevel, true);
  });

  test("a cause cleared before the ITR deadline does not fire late", () => {
    const nic = makeNic();
    const { drv, dev, clock } = nic;
    drv.w32(REG.ITR, 1000);
    drv.w32(REG.IMS, ICR.TXDW);
    drv.w32(REG.ICS, ICR.TXDW);
    drv.readIcr();
    drv.w32(REG.ICS, ICR.TXDW);
    drv.w32(REG.ICR, ICR.TXDW);
    assert.equal(dev.nextDeadline(), undefined);
    clock.t = 5;
    dev.poll();
    assert.equal(nic.irqLevel, false);
  });
});

describe("e1000 register file", () => {
  test("RAL/RAH keep what the driver writes; RAH keeps only AV, AS and the address", () => {
    const { drv } = makeNic();
    drv.w32(REG.RAL0 + 8 * 3, 0x04030201);
    drv.w32(REG.RAH0 + 8 * 3, 0xffffffff);
    assert.equal(drv.r32(REG.RAL0 + 8 * 3), 0x04030201);
    assert.equal(drv.r32(REG.RAH0 + 8 * 3), 0x8003ffff);
  });

  test("MTA, VFTA and the flow-control / wake-up registers Linux touches are storage", () => {
    const { drv, logs } = makeNic();
    const regs = [
      REG.MTA,
      REG.MTA + 127 * 4,
      REG.VFTA + 5 * 4,
      REG.FCAL,
      REG.FCAH,
      REG.FCT,
      REG.FCTTV,
      REG.FCRTL,
      REG.FCRTH,
      REG.LEDCTL,
      REG.PBA,
      REG.TXDCTL,
      REG.RXDCTL,
      REG.RXCSUM,
      REG.MANC,
      REG.WUC,
      REG.WUFC,
      REG.TIPG,
      REG.CTRL_EXT,
      REG.VET,
    ];
    for (const [n, r] of regs.entries()) drv.w32(r, 0x100 + n);
    for (const [n, r] of regs.entries()) assert.equal(drv.r32(r), 0x100 + n, `register 0x${r.toString(16)}`);
    assert.deepEqual(logs, []);
  });

  test("CTRL keeps SLU and other bits; STATUS ignores writes", () => {
    const { drv } = makeNic();
    drv.w32(REG.CTRL, CTRL_SLU | (1 << 30));
    assert.equal(drv.r32(REG.CTRL), CTRL_SLU | (1 << 30));
    const st = drv.r32(REG.STATUS);
    drv.w32(REG.STATUS, 0);
    assert.equal(drv.r32(REG.STATUS), st);
  });

  test("unknown registers read 0, ignore writes and are logged once per offset", () => {
    const { drv, logs } = makeNic();
    drv.w32(0x1234, 0xffffffff);
    assert.equal(drv.r32(0x1234), 0);
    assert.equal(drv.r32(0x1234), 0);
    drv.w32(0x1234, 1);
    assert.equal(logs.length, 1);
    assert.match(logs[0] as string, /unknown register 0x1234/);
    drv.r32(0x1ff00);
    assert.equal(logs.length, 2);
  });

  test("byte, word and qword accesses: reads slice the dword, writes merge into it", () => {
    const { dev, drv } = makeNic();
    drv.w32(REG.FCAL, 0x44332211);
    const b = new Uint8Array(1);
    dev.read(REG.FCAL + 2, b);
    assert.equal(b[0], 0x33);
    dev.write(REG.FCAL + 1, Uint8Array.of(0xaa, 0xbb));
    assert.equal(drv.r32(REG.FCAL), 0x44bbaa11);
    const q = new Uint8Array(8);
    drv.w32(REG.FCAH, 0x0000ccdd);
    dev.read(REG.FCAL, q);
    assert.deepEqual([...q], [0x11, 0xaa, 0xbb, 0x44, 0xdd, 0xcc, 0, 0]);
    // A byte write to ICR clears only the bits it writes.
    drv.w32(REG.ICS, 0x0101);
    dev.write(REG.ICR, Uint8Array.of(0x01));
    assert.equal(drv.readIcr(), 0x0100);
    // Accesses beyond the BAR read 0 and do nothing.
    const far = new Uint8Array(4).fill(0xee);
    dev.read(0x20000, far);
    assert.deepEqual([...far], [0, 0, 0, 0]);
  });

  test("the I/O window reaches every register: IOADDR reads back, IODATA reads and writes", () => {
    const { dev, drv } = makeNic();
    drv.ioW32(REG.FCAL, 0xcafef00d);
    assert.equal(drv.r32(REG.FCAL), 0xcafef00d);
    assert.equal(drv.ioR32(REG.STATUS), drv.r32(REG.STATUS));
    const d = new Uint8Array(4);
    dev.io.read(0, d);
    assert.equal(new DataView(d.buffer).getUint32(0, true), REG.STATUS);
    dev.io.read(0x10, d);
    assert.deepEqual([...d], [0, 0, 0, 0], "reserved I/O offsets read 0");
    // The ICR read-to-clear side effect goes through the window too.
    drv.w32(REG.ICS, ICR.TXQE);
    assert.equal(drv.ioR32(REG.ICR), ICR.TXQE);
    assert.equal(drv.r32(REG.ICR), 0);
  });
});

describe("e1000 statistics", () => {
  test("counters are read-to-clear; 64-bit octet counters clear when the high half is read", () => {
    const { drv, wire } = makeNic();
    drv.reset();
    drv.setupTx();
    drv.setupRx();
    const out = ethFrame(PEER_MAC, NIC_MAC, 0x88b5, pattern(100));
    drv.sendLegacy([out]);
    drv.sendLegacy([out]);
    wire.send(ethFrame(NIC_MAC, PEER_MAC, 0x88b5, pattern(200)));
    wire.send(ethFrame(Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0xff, 0xff), PEER_MAC, 0x88b5, pattern(46)));
    assert.equal(drv.r32(STAT.GPTC), 2);
    assert.equal(drv.r32(STAT.GPTC), 0);
    assert.equal(drv.r32(STAT.TPT), 2);
    assert.equal(drv.r32(STAT.GOTCL), 2 * (114 + 4));
    assert.equal(drv.r32(STAT.GOTCL), 2 * (114 + 4), "the low half alone does not clear");
    assert.equal(drv.r32(STAT.GOTCH), 0);
    assert.equal(drv.r32(STAT.GOTCL), 0, "reading the high half cleared the pair");
    assert.equal(drv.r32(STAT.PTC127), 2);
    assert.equal(drv.r32(STAT.GPRC), 2);
    assert.equal(drv.r32(STAT.TPR), 2);
    assert.equal(drv.r32(STAT.BPRC), 1);
    assert.equal(drv.r32(STAT.MPRC), 0);
    assert.equal(drv.r32(STAT.GORCL), 214 + 4 + 64);
    assert.equal(drv.r32(STAT.GORCH), 0);
    assert.equal(drv.r32(STAT.PRC64), 1);
    assert.equal(drv.r32(STAT.PRC255), 1);
    assert.equal(drv.r32(STAT.TORL), 214 + 4 + 64);
    assert.equal(drv.r32(STAT.TORH), 0);
    assert.equal(drv.r32(STAT.GPRC), 0);
  });

  test("statistics registers ignore writes", () => {
    const { drv } = makeNic();
    drv.w32(STAT.MPC, 77);
    assert.equal(drv.r32(STAT.MPC), 0);
  });
});
