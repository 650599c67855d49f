import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { Bus } from "../../src/bus/bus.ts";
import {
  PCI_CAP_ID,
  PCI_COMMAND,
  PCI_REG,
  PCI_STATUS,
  PciFunction,
  type PciFunctionOptions,
} from "../../src/devices/pci/config.ts";
import { PciBarError, PciCapabilityError } from "../../src/devices/pci/errors.ts";
import { configAddress, PciBus, PciConfigIo, PciEcam } from "../../src/devices/pci/host-bridge.ts";
import { le, num } from "../helpers/bytes.ts";

const ECAM_BASE = 0xb000_0000;

/** A guest's view: port I/O at 0xCF8/0xCFC and an ECAM window on the MMIO bus. */
class Guest {
  readonly pio = new Bus("pio");
  readonly mmio = new Bus("mmio");
  constructor(readonly pci: PciBus) {
    new PciConfigIo(pci).register(this.pio);
    const ecam = new PciEcam(pci);
    this.mmio.register(ECAM_BASE, ecam.size, ecam);
  }
  out(port: number, size: number, value: number): void {
    this.pio.write(port, le(value, size));
  }
  in(port: number, size: number): number {
    const d = new Uint8Array(size);
    this.pio.read(port, d);
    return num(d);
  }
  cfgRead(dev: number, reg: number, size: number, fn = 0): number {
    this.out(0xcf8, 4, configAddress(0, dev, fn, reg & ~3));
    return this.in(0xcfc + (reg & 3), size);
  }
  cfgWrite(dev: number, reg: number, size: number, value: number, fn = 0): void {
    this.out(0xcf8, 4, configAddress(0, dev, fn, reg & ~3));
    this.out(0xcfc + (reg & 3), size, value);
  }
  ecamRead(dev: number, reg: number, size: number, fn = 0): number {
    const d = new Uint8Array(size);
    this.mmio.read(ECAM_BASE + ((dev << 15) | (fn << 12) | reg), d);
    return num(d);
  }
  ecamWrite(dev: number, reg: number, size: number, value: number, fn = 0): void {
    this.mmio.write(ECAM_BASE + ((dev << 15) | (fn << 12) | reg), le(value, size));
  }
  /** The Linux sizing sequence: save, write all ones, read back, restore. */
  size(dev: number, reg: number): number {
    const saved = this.cfgRead(dev, reg, 4);
    this.cfgWrite(dev, reg, 4, 0xffffffff);
    const mask = this.cfgRead(dev, reg, 4);
    this.cfgWrite(dev, reg, 4, saved);
    return mask;
  }
}

const IDS: PciFunctionOptions = {
  vendorId: 0x1af4,
  deviceId: 0x1042,
  classCode: 0x010000,
  revisionId: 0x01,
  subsystemVendorId: 0x1af4,
  subsystemId: 0x0042,
  interruptPin: 1,
};

function setup(options: Partial<PciFunctionOptions> = {}): { guest: Guest; fn: PciFunction } {
  const pci = new PciBus();
  const fn = new PciFunction("dut", { ...IDS, ...options });
  pci.add(fn, 3);
  return { guest: new Guest(pci), fn };
}

describe("PciFunction header", () => {
  test("identity registers read through 0xCF8/0xCFC", () => {
    const { guest } = setup();
    assert.equal(guest.cfgRead(3, 0x00, 4), 0x1042_1af4);
    assert.equal(guest.cfgRead(3, 0x08, 4), 0x0100_0001); // class 01/00/00, revision 1
    assert.equal(guest.cfgRead(3, 0x2c, 4), 0x0042_1af4);
    assert.equal(guest.cfgRead(3, PCI_REG.HEADER_TYPE, 1), 0x00);
    assert.equal(guest.cfgRead(3, PCI_REG.INTERRUPT_PIN, 1), 1);
  });

  test("read-only fields keep their value under all-ones writes", () => {
    const { guest } = setup();
    for (const reg of [0x00, 0x08, 0x28, 0x2c, 0x30, 0x34, 0x38]) guest.cfgWrite(3, reg, 4, 0xffffffff);
    assert.equal(guest.cfgRead(3, 0x00, 4), 0x1042_1af4);
    assert.equal(guest.cfgRead(3, 0x08, 4), 0x0100_0001);
    assert.equal(guest.cfgRead(3, 0x28, 4), 0, "Cardbus CIS");
    assert.equal(guest.cfgRead(3, 0x2c, 4), 0x0042_1af4);
    assert.equal(guest.cfgRead(3, 0x30, 4), 0, "no expansion ROM");
    assert.equal(guest.cfgRead(3, 0x34, 4), 0, "no capabilities");
    // 0x0C: cache line size and latency timer are RW; header type and BIST are RO.
    guest.cfgWrite(3, 0x0c, 4, 0xffffffff);
    assert.equal(guest.cfgRead(3, 0x0c, 4), 0x0000_ffff);
    // 0x3C: interrupt line RW, pin / min_gnt / max_lat RO.
    guest.cfgWrite(3, 0x3c, 4, 0xffffff0b);
    assert.equal(guest.cfgRead(3, 0x3c, 4), 0x0000_010b);
  });

  test("command register: only IO, memory, bus master, parity, SERR and INTx disable are writable", () => {
    const { guest, fn } = setup();
    assert.equal(guest.cfgRead(3, PCI_REG.COMMAND, 2), 0, "reset value");
    guest.cfgWrite(3, PCI_REG.COMMAND, 2, 0xffff);
    assert.equal(guest.cfgRead(3, PCI_REG.COMMAND, 2), 0x0547);
    assert.equal(fn.busMasterEnabled, true);
    guest.cfgWrite(3, PCI_REG.COMMAND, 2, PCI_COMMAND.MEMORY);
    assert.equal(fn.command, PCI_COMMAND.MEMORY);
    assert.equal(fn.busMasterEnabled, false);
  });

  test("status error bits are RW1C; the rest of status is read-only", () => {
    const { guest, fn } = setup();
    fn.addCapability(PCI_CAP_ID.VENDOR_SPECIFIC, new Uint8Array([4, 0]));
    fn.raiseStatus(
      PCI_STATUS.RECEIVED_MASTER_ABORT | PCI_STATUS.SIGNALED_TARGET_ABORT | PCI_STATUS.INTERRUPT,
    );
    // INTERRUPT is not an error bit: raiseStatus cannot set it.
    assert.equal(guest.cfgRead(3, PCI_REG.STATUS, 2), 0x2000 | 0x0800 | 0x0010);
    // A dword write to 0x04 that only sets command bits leaves status alone (writing 0 to RW1C is a no-op).
    guest.cfgWrite(3, 0x04, 4, 0x0000_0006);
    assert.equal(guest.cfgRead(3, 0x04, 4), 0x2810_0006);
    // Writing 1 to the master-abort bit clears only it; the RO capabilities-list bit survives.
    guest.cfgWrite(3, PCI_REG.STATUS, 2, 0x2000 | 0x0010 | 0x0008);
    assert.equal(guest.cfgRead(3, PCI_REG.STATUS, 2), 0x0810);
    guest.cfgWrite(3, PCI_REG.STATUS, 2, 0xffff);
    assert.equal(guest.cfgRead(3, PCI_REG.STATUS, 2), 0x0010);
    assert.equal(fn.command, 0x0006, "status writes did not touch command");
  });

  test("odd-size and unaligned accesses through 0xCFC+n", () => {
    const { guest } = setup();
    assert.deepEqual(
      [0, 1, 2, 3].map((n) => guest.cfgRead(3, n, 1)),
      [0xf4, 0x1a, 0x42, 0x10],
    );
    assert.equal(guest.cfgRead(3, 0x02, 2), 0x1042, "word at 0xCFE");
    assert.equal(guest.cfgRead(3, 0x01, 2), 0x421a, "unaligned word at 0xCFD");
    // A word at 0xCFF: one byte of config data, the other byte is past the data window and floats.
    assert.equal(guest.cfgRead(3, 0x03, 2), 0xff10);
    // A dword at 0xCFD: three bytes of config data.
    assert.equal(guest.cfgRead(3, 0x01, 4), 0xff10_421a);
    // Byte write to the high byte of COMMAND (INTx disable) leaves the low byte alone.
    guest.cfgWrite(3, PCI_REG.COMMAND, 1, 0x02);
    guest.cfgWrite(3, PCI_REG.COMMAND + 1, 1, 0x04);
    assert.equal(guest.cfgRead(3, PCI_REG.COMMAND, 2), 0x0402);
    // Byte write at 0x3C only.
    guest.cfgWrite(3, 0x3c, 1, 0x0a);
    assert.equal(guest.cfgRead(3, 0x3c, 4), 0x0000_010a);
  });

  test("odd-size and unaligned accesses through ECAM", () => {
    const { guest } = setup();
    assert.equal(guest.ecamRead(3, 0x00, 4), 0x1042_1af4);
    assert.equal(guest.ecamRead(3, 0x01, 1), 0x1a);
    // A word straddling a dword boundary reaches both dwords of the same function.
    guest.ecamWrite(3, PCI_REG.COMMAND, 2, 0x0002);
    assert.equal(guest.ecamRead(3, 0x03, 2), 0x0210);
    // A qword read covers two dwords.
    assert.equal(guest.ecamRead(3, 0x00, 8), 0x0000_0002 * 2 ** 32 + 0x1042_1af4);
    // A conventional function's extended space reads 0 (no extended capabilities, PCIe §7.6.3).
    assert.equal(guest.ecamRead(3, 0x100, 4), 0);
    assert.equal(guest.ecamRead(3, 0xffc, 4), 0);
  });
});

/** Size from a sizing read-back, as an OS decodes it. */
function sizeFromMask(lo: number, hi = 0, io = false): number {
  if (io) return (~(lo & 0xfffc) & 0xffff) + 1;
  const mask = (hi * 2 ** 32 + ((lo & 0xfffffff0) >>> 0)) / 16;
  const bits = hi === 0 ? 2 ** 28 : 2 ** 60;
  return (bits - mask) * 16;
}

describe("BARs", () => {
  function barSetup() {
    const s = setup();
    s.fn.defineBar(0, { kind: "mmio32", size: 0x1000 });
    s.fn.defineBar(1, { kind: "io", size: 0x20 });
    s.fn.defineBar(2, { kind: "mmio64", size: 0x4000, prefetchable: true });
    s.fn.defineBar(4, { kind: "mmio64", size: 2 ** 33 });
    return s;
  }

  test("sizing: write all ones, read back the size mask with the type bits", () => {
    const { guest } = barSetup();
    assert.equal(guest.size(3, 0x10), 0xfffff000, "32-bit memory, 4 KiB, not prefetchable");
    assert.equal(guest.size(3, 0x14), 0x0000ffe1, "I/O, 32 bytes, 16-bit decode");
    assert.equal(guest.size(3, 0x18), 0xffffc00c, "64-bit prefetchable, low dword");
    assert.equal(guest.size(3, 0x1c), 0xffffffff, "64-bit, high dword");
    assert.equal(guest.size(3, 0x20), 0x00000004, "8 GiB: no low address bits writable");
    assert.equal(guest.size(3, 0x24), 0xfffffffe);
    assert.equal(sizeFromMask(0xfffff000), 0x1000);
    assert.equal(sizeFromMask(0x0000ffe1, 0, true), 0x20);
    assert.equal(sizeFromMask(0xffffc00c, 0xffffffff), 0x4000);
    assert.equal(sizeFromMask(0x00000004, 0xfffffffe), 2 ** 33);
    // Restored: every BAR reads its type bits and address 0 again.
    assert.deepEqual(
      [0x10, 0x14, 0x18, 0x1c, 0x20, 0x24].map((r) => guest.cfgRead(3, r, 4)),
      [0x0, 0x1, 0xc, 0x0, 0x4, 0x0],
    );
  });

  test("an unimplemented BAR reads 0 and stays 0", () => {
    const { guest, fn } = setup();
    fn.defineBar(0, { kind: "mmio32", size: 0x1000 });
    assert.equal(guest.size(3, 0x14), 0);
    assert.equal(guest.size(3, 0x24), 0);
  });

  test("address bits below the size and the type bits are read-only", () => {
    const { guest, fn } = barSetup();
    guest.cfgWrite(3, 0x10, 4, 0x1234_5678);
    assert.equal(guest.cfgRead(3, 0x10, 4), 0x1234_5000);
    guest.cfgWrite(3, 0x14, 4, 0xabcd_c0ff);
    assert.equal(guest.cfgRead(3, 0x14, 4), 0x0000_c0e1, "upper 16 bits hardwired, low bits type");
    guest.cfgWrite(3, 0x18, 4, 0xfebf_ffff);
    guest.cfgWrite(3, 0x1c, 4, 0x0000_0040);
    assert.equal(guest.cfgRead(3, 0x18, 4), 0xfebf_c00c);
    assert.equal(fn.barAddress(2), 0x40_febf_c000);
    assert.equal(fn.barAddress(0), 0x1234_5000);
    assert.equal(fn.barAddress(1), 0xc0e0);
    // A byte write to the second byte of BAR0 changes only that byte.
    guest.cfgWrite(3, 0x11, 1, 0xff);
    assert.equal(guest.cfgRead(3, 0x10, 4), 0x1234_f000);
  });

  test("onBarRemap follows COMMAND decode bits and BAR moves", () => {
    const { guest, fn } = barSetup();
    const events: Array<[number, number | null, number | null]> = [];
    fn.onBarRemap = (i, from, to) => events.push([i, from, to]);
    guest.cfgWrite(3, 0x10, 4, 0xe000_0000);
    guest.cfgWrite(3, 0x14, 4, 0xc000);
    assert.deepEqual(events, [], "no decode while COMMAND is 0");
    assert.equal(fn.barMapping(0), null);

    guest.cfgWrite(3, PCI_REG.COMMAND, 2, PCI_COMMAND.MEMORY);
    assert.deepEqual(events.splice(0), [[0, null, 0xe000_0000]], "BAR2/4 at address 0 do not decode");
    guest.cfgWrite(3, 0x10, 4, 0xe000_1000);
    assert.deepEqual(events.splice(0), [[0, 0xe000_0000, 0xe000_1000]]);
    // Sizing with decode left on: the all-ones pattern is not mapped; restoring maps it back.
    assert.equal(guest.size(3, 0x10), 0xfffff000);
    assert.deepEqual(events.splice(0), [
      [0, 0xe000_1000, null],
      [0, null, 0xe000_1000],
    ]);
    guest.cfgWrite(3, PCI_REG.COMMAND, 2, PCI_COMMAND.MEMORY | PCI_COMMAND.IO);
    assert.deepEqual(events.splice(0), [[1, null, 0xc000]]);
    guest.cfgWrite(3, PCI_REG.COMMAND, 2, PCI_COMMAND.IO);
    assert.deepEqual(events.splice(0), [[0, 0xe000_1000, null]]);
    assert.equal(fn.barMapping(1), 0xc000);

    // A 64-bit BAR programmed with decode off, then enabled: one event with the full address above 4 GiB.
    guest.cfgWrite(3, PCI_REG.COMMAND, 2, 0);
    events.length = 0;
    guest.cfgWrite(3, 0x18, 4, 0x0000_4000);
    guest.cfgWrite(3, 0x1c, 4, 0x0000_0040);
    guest.cfgWrite(3, PCI_REG.COMMAND, 2, PCI_COMMAND.MEMORY);
    assert.deepEqual(events, [
      [0, null, 0xe000_1000],
      [2, null, 0x40_0000_4000],
    ]);
  });

  test("BAR definitions are checked", () => {
    const { fn } = setup();
    assert.throws(() => fn.defineBar(0, { kind: "mmio32", size: 0x1800 }), PciBarError);
    assert.throws(() => fn.defineBar(0, { kind: "mmio32", size: 8 }), PciBarError);
    assert.throws(() => fn.defineBar(0, { kind: "io", size: 512 }), PciBarError);
    assert.throws(() => fn.defineBar(5, { kind: "mmio64", size: 0x1000 }), PciBarError, "needs two slots");
    assert.throws(() => fn.defineBar(6, { kind: "mmio32", size: 0x1000 }), PciBarError);
    fn.defineBar(0, { kind: "mmio64", size: 0x1000 });
    assert.throws(
      () => fn.defineBar(1, { kind: "io", size: 4 }),
      (e: Error & { code?: string }) => {
        return e instanceof PciBarError && e.code === "VIREO_PCI_BAR";
      },
    );
  });
});

describe("capability list", () => {
  test("chained from 0x34, dword aligned, IDs correct, ends at 0", () => {
    const { guest, fn } = setup();
    assert.equal(guest.cfgRead(3, PCI_REG.STATUS, 2) & PCI_STATUS.CAPABILITIES_LIST, 0);
    const pm = fn.addCapability(
      PCI_CAP_ID.POWER_MANAGEMENT,
      new Uint8Array([0x03, 0x00, 0x08, 0x00, 0x00, 0x00]),
    );
    const v1 = fn.addCapability(
      PCI_CAP_ID.VENDOR_SPECIFIC,
      new Uint8Array([16, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    );
    const v2 = fn.addCapability(PCI_CAP_ID.VENDOR_SPECIFIC, new Uint8Array([3]));
    const v3 = fn.addCapability(PCI_CAP_ID.VENDOR_SPECIFIC, new Uint8Array([4, 7]));
    assert.deepEqual([pm, v1, v2, v3], [0x40, 0x48, 0x58, 0x5c]);

    assert.notEqual(guest.cfgRead(3, PCI_REG.STATUS, 2) & PCI_STATUS.CAPABILITIES_LIST, 0);
    const walked: Array<[number, number]> = [];
    let ptr = guest.cfgRead(3, PCI_REG.CAPABILITIES_POINTER, 1) & 0xfc;
    while (ptr !== 0) {
      assert.ok(walked.length < 48, "list must terminate");
      walked.push([ptr, guest.cfgRead(3, ptr, 1)]);
      ptr = guest.cfgRead(3, ptr + 1, 1) & 0xfc;
    }
    assert.deepEqual(walked, [
      [0x40, 0x01],
      [0x48, 0x09],
      [0x58, 0x09],
      [0x5c, 0x09],
    ]);
    assert.equal(guest.cfgRead(3, 0x48 + 2, 1), 16, "vendor-specific length byte");
    assert.equal(guest.cfgRead(3, 0x5c, 4), 0x0704_0009);
    assert.equal(fn.findCapability(PCI_CAP_ID.VENDOR_SPECIFIC)?.offset, 0x48);
    assert.equal(fn.findCapability(PCI_CAP_ID.MSIX), undefined);
  });

  test("capabilities are read-only except where the writable mask says", () => {
    const { guest, fn } = setup();
    const writes: Array<[number, number]> = [];
    const off = fn.addCapability(PCI_CAP_ID.VENDOR_SPECIFIC, new Uint8Array([8, 5, 0, 0, 0, 0]), {
      writableMask: new Uint8Array([0, 0, 0xff, 0x0f, 0, 0]),
      onWrite: (o, l) => writes.push([o, l]),
    });
    guest.cfgWrite(3, off, 4, 0xffffffff);
    assert.equal(guest.cfgRead(3, off, 4), 0x0508_0009, "ID, next, length, type read-only");
    guest.cfgWrite(3, off + 4, 4, 0xffffffff);
    assert.equal(guest.cfgRead(3, off + 4, 4), 0x0000_0fff);
    assert.deepEqual(writes, [
      [0, 4],
      [4, 4],
    ]);
    // A write that covers the capability only partly reports the part it covered.
    writes.length = 0;
    guest.cfgWrite(3, off + 6, 2, 0);
    assert.deepEqual(writes, [[6, 2]]);
  });

  test("onRead lets the owner refresh bytes before the guest sees them", () => {
    const { guest, fn } = setup();
    let counter = 0;
    const off = fn.addCapability(PCI_CAP_ID.VENDOR_SPECIFIC, new Uint8Array([8, 0, 0, 0, 0, 0]), {
      onRead: (o, l) => {
        if (o <= 4 && o + l > 4) fn.poke32(off + 4, ++counter);
      },
    });
    assert.equal(guest.cfgRead(3, off + 4, 4), 1);
    assert.equal(guest.cfgRead(3, off + 4, 4), 2);
    assert.equal(guest.cfgRead(3, off, 4) >>> 16, 0x0008, "reads not covering the field do not call it");
    assert.equal(counter, 2);
  });

  test("running out of the 256-byte space throws VIREO_PCI_CAPABILITY", () => {
    const { fn } = setup();
    const body = new Uint8Array(62);
    fn.addCapability(0x09, body); // 0x40
    fn.addCapability(0x09, body); // 0x80
    fn.addCapability(0x09, body); // 0xC0-0xFF
    assert.throws(
      () => fn.addCapability(0x09, new Uint8Array(2)),
      (e: Error & { code?: string }) => e instanceof PciCapabilityError && e.code === "VIREO_PCI_CAPABILITY",
    );
    assert.throws(() => fn.addCapability(0x05, new Uint8Array(2), { writableMask: new Uint8Array(3) }));
  });

  test("extended capabilities chain from 0x100 and are only reachable through ECAM", () => {
    const { guest, fn } = setup();
    const a = fn.addExtendedCapability(0x000b, 1, new Uint8Array([1, 2, 3, 4]));
    const b = fn.addExtendedCapability(0x0001, 2, new Uint8Array(8));
    assert.deepEqual([a, b], [0x100, 0x108]);
    assert.equal(guest.ecamRead(3, 0x100, 4), (0x108 << 20) | (1 << 16) | 0x000b);
    assert.equal(guest.ecamRead(3, 0x104, 4), 0x0403_0201);
    assert.equal(guest.ecamRead(3, 0x108, 4), (2 << 16) | 0x0001, "last: next is 0");
    assert.equal(guest.cfgRead(3, 0x00, 4), 0x1042_1af4, "0xCF8's 8-bit register field stays below 0x100");
  });
});

describe("INTx", () => {
  test("the pin follows the request, gated by COMMAND.INTX_DISABLE; status bit 3 reflects the request", () => {
    const levels: boolean[] = [];
    const { guest, fn } = setup({ intx: { set: (l) => levels.push(l) } });
    fn.setIntx(true);
    assert.deepEqual(levels, [true]);
    assert.equal(guest.cfgRead(3, PCI_REG.STATUS, 2) & PCI_STATUS.INTERRUPT, PCI_STATUS.INTERRUPT);
    guest.cfgWrite(3, PCI_REG.COMMAND, 2, PCI_COMMAND.INTX_DISABLE);
    assert.deepEqual(levels, [true, false]);
    assert.equal(
      guest.cfgRead(3, PCI_REG.STATUS, 2) & PCI_STATUS.INTERRUPT,
      PCI_STATUS.INTERRUPT,
      "status shows the request even while the pin is disabled",
    );
    // Guest cannot clear status bit 3 (read-only).
    guest.cfgWrite(3, PCI_REG.STATUS, 2, 0xffff);
    assert.equal(guest.cfgRead(3, PCI_REG.STATUS, 2) & PCI_STATUS.INTERRUPT, PCI_STATUS.INTERRUPT);
    fn.setIntx(true);
    assert.deepEqual(levels, [true, false], "no edge while disabled");
    guest.cfgWrite(3, PCI_REG.COMMAND, 2, 0);
    assert.deepEqual(levels, [true, false, true]);
    fn.setIntx(false);
    assert.deepEqual(levels, [true, false, true, false]);
    assert.equal(guest.cfgRead(3, PCI_REG.STATUS, 2) & PCI_STATUS.INTERRUPT, 0);
    assert.equal(fn.intxAssertedNow, false);
  });
});

describe("type 1 (bridge) header", () => {
  test("bus numbers and windows have bridge semantics; only BAR0-1 exist", () => {
    const { guest, fn } = setup({ headerType: 1, classCode: 0x060400 });
    assert.equal(guest.cfgRead(3, PCI_REG.HEADER_TYPE, 1), 0x01);
    guest.cfgWrite(3, 0x18, 4, 0xff05_0100);
    assert.equal(guest.cfgRead(3, 0x18, 4), 0xff05_0100, "primary/secondary/subordinate/latency RW");
    guest.cfgWrite(3, PCI_REG.IO_BASE, 2, 0xffff);
    assert.equal(guest.cfgRead(3, PCI_REG.IO_BASE, 2), 0xf0f0, "16-bit I/O decode");
    guest.cfgWrite(3, PCI_REG.MEMORY_BASE, 4, 0xffffffff);
    assert.equal(guest.cfgRead(3, PCI_REG.MEMORY_BASE, 4), 0xfff0_fff0);
    guest.cfgWrite(3, PCI_REG.PREF_MEMORY_BASE, 4, 0);
    assert.equal(guest.cfgRead(3, PCI_REG.PREF_MEMORY_BASE, 4), 0x0001_0001, "64-bit prefetchable window");
    guest.cfgWrite(3, PCI_REG.IO_BASE_UPPER16, 4, 0xffffffff);
    assert.equal(guest.cfgRead(3, PCI_REG.IO_BASE_UPPER16, 4), 0);
    guest.cfgWrite(3, PCI_REG.BRIDGE_CONTROL, 2, 0xffff);
    assert.equal(guest.cfgRead(3, PCI_REG.BRIDGE_CONTROL, 2), 0x007f);
    fn.defineBar(0, { kind: "mmio32", size: 0x1000 });
    assert.throws(() => fn.defineBar(2, { kind: "mmio32", size: 0x1000 }), PciBarError);
  });
});
