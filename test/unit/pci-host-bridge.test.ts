import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { Bus, type BusDevice } from "../../src/bus/bus.ts";
import { assignBars, DEFAULT_PCI_WINDOWS } from "../../src/devices/pci/bar-allocator.ts";
import { BarRegions, connectBars } from "../../src/devices/pci/bars.ts";
import { PCI_COMMAND, PCI_REG, PciFunction } from "../../src/devices/pci/config.ts";
import { PciAllocationError, PciSlotError } from "../../src/devices/pci/errors.ts";
import {
  configAddress,
  ecamOffset,
  PciBus,
  PciConfigIo,
  PciEcam,
} from "../../src/devices/pci/host-bridge.ts";
import { le, num } from "../helpers/bytes.ts";

const ECAM_BASE = 0xb000_0000;

class Guest {
  readonly pio = new Bus("pio");
  readonly mmio = new Bus("mmio");
  readonly ecam: PciEcam;
  constructor(
    readonly pci: PciBus,
    ecamBuses = 1,
  ) {
    new PciConfigIo(pci).register(this.pio);
    this.ecam = new PciEcam(pci, { startBus: 0, endBus: ecamBuses - 1 });
    this.mmio.register(ECAM_BASE, this.ecam.size, this.ecam);
  }
  out(port: number, size: number, value: number): void {
    this.pio.write(port, le(value, size));
  }
  in(port: number, size: number): number {
    const d = new Uint8Array(size);
    this.pio.read(port, d);
    return num(d);
  }
  cfgRead(bus: number, dev: number, fn: number, reg: number, size = 4): number {
    this.out(0xcf8, 4, configAddress(bus, dev, fn, reg));
    return this.in(0xcfc + (reg & 3), size);
  }
  cfgWrite(bus: number, dev: number, fn: number, reg: number, size: number, value: number): void {
    this.out(0xcf8, 4, configAddress(bus, dev, fn, reg));
    this.out(0xcfc + (reg & 3), size, value);
  }
  ecamRead(bus: number, dev: number, fn: number, reg: number, size = 4): number {
    const d = new Uint8Array(size);
    this.mmio.read(ECAM_BASE + ecamOffset(bus, dev, fn, reg), d);
    return num(d);
  }
  mmioRead(addr: number, size: number): number {
    const d = new Uint8Array(size);
    this.mmio.read(addr, d);
    return num(d);
  }
  mmioWrite(addr: number, size: number, value: number): void {
    this.mmio.write(addr, le(value, size));
  }

  /** Linux-style scan of bus 0: function 0 of each device, functions 1-7 only if fn 0 is multi-function. */
  enumerate(read: (dev: number, fn: number, reg: number) => number): Array<[number, number, number]> {
    const found: Array<[number, number, number]> = [];
    for (let dev = 0; dev < 32; dev++) {
      for (let fn = 0; fn < 8; fn++) {
        const id = read(dev, fn, 0);
        if ((id & 0xffff) === 0xffff) {
          if (fn === 0) break;
          continue;
        }
        found.push([dev, fn, id]);
        if (fn === 0 && ((read(dev, 0, 0x0c) >>> 16) & 0x80) === 0) break;
      }
    }
    return found;
  }
}

function endpoint(name: string, deviceId: number, pin: 0 | 1 = 0): PciFunction {
  return new PciFunction(name, { vendorId: 0x1af4, deviceId, classCode: 0x020000, interruptPin: pin });
}

/** A BAR device answering each byte with (offset + i) & 0xff and recording writes. */
class Pattern implements BusDevice {
  readonly writes: Array<[number, number[]]> = [];
  constructor(readonly name: string) {}
  read(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) data[i] = (offset + i) & 0xff;
  }
  write(offset: number, data: Uint8Array): void {
    this.writes.push([offset, [...data]]);
  }
}

describe("configuration mechanism #1", () => {
  test("CONFIG_ADDRESS: dword only, reserved bits read 0, reads back what was written", () => {
    const guest = new Guest(new PciBus());
    guest.out(0xcf8, 4, 0x8000_0000);
    assert.equal(guest.in(0xcf8, 4), 0x8000_0000, "Linux's type 1 probe");
    guest.out(0xcf8, 4, 0xffff_ffff);
    assert.equal(guest.in(0xcf8, 4), 0x80ff_fffc, "bits 30:24 and 1:0 are reserved");
    guest.out(0xcf8, 4, 0x8001_1a08);
    guest.out(0xcf8, 1, 0x00);
    guest.out(0xcf8, 2, 0x0000);
    assert.equal(guest.in(0xcf8, 4), 0x8001_1a08, "byte/word writes do not reach CONFIG_ADDRESS");
    assert.equal(guest.in(0xcf8, 1), 0xff);
    assert.equal(guest.pio.deviceAt(0xcf9), undefined, "0xCF9 (reset control) is left to others");
  });

  test("CONFIG_DATA with the enable bit clear floats and drops writes", () => {
    const pci = new PciBus();
    const guest = new Guest(pci);
    guest.out(0xcf8, 4, 0x0000_0000);
    assert.equal(guest.in(0xcfc, 4), 0xffff_ffff);
    guest.out(0xcf8, 4, 0x0000_0004);
    guest.out(0xcfc, 2, 0x0006);
    assert.equal(pci.get(0)?.command, 0);
  });

  test("enumeration: host bridge at 00:00.0, absent slots read all ones", () => {
    const pci = new PciBus();
    pci.add(endpoint("net", 0x1041), 3);
    pci.add(endpoint("blk", 0x1042), 5);
    const guest = new Guest(pci);
    assert.equal(guest.cfgRead(0, 0, 0, 0x00), 0x29c0_8086);
    assert.equal(guest.cfgRead(0, 0, 0, 0x08) >>> 8, 0x060000, "host bridge class");
    const found = guest.enumerate((d, f, r) => guest.cfgRead(0, d, f, r));
    assert.deepEqual(found, [
      [0, 0, 0x29c0_8086],
      [3, 0, 0x1041_1af4],
      [5, 0, 0x1042_1af4],
    ]);
    for (const d of [1, 2, 4, 6, 31]) {
      assert.equal(guest.cfgRead(0, d, 0, 0x00), 0xffff_ffff, `device ${d}`);
      assert.equal(guest.cfgRead(0, d, 0, 0x3c, 1), 0xff);
    }
    assert.equal(guest.cfgRead(1, 0, 0, 0x00), 0xffff_ffff, "no bus 1");
    // Writes to absent functions are dropped without effect.
    guest.cfgWrite(0, 7, 0, 0x04, 2, 0x0007);
    assert.equal(guest.cfgRead(0, 7, 0, 0x04), 0xffff_ffff);
  });

  test("multi-function devices: function 0's header type bit 7 tracks other functions", () => {
    const pci = new PciBus();
    const f0 = endpoint("f0", 0x1000);
    pci.add(f0, 4, 0);
    const guest = new Guest(pci);
    assert.equal(guest.cfgRead(0, 4, 0, 0x0e, 1), 0x00);
    pci.add(endpoint("f2", 0x1002), 4, 2);
    assert.equal(guest.cfgRead(0, 4, 0, 0x0e, 1), 0x80);
    const found = guest.enumerate((d, f, r) => guest.cfgRead(0, d, f, r));
    assert.deepEqual(
      found.map(([d, f]) => [d, f]),
      [
        [0, 0],
        [4, 0],
        [4, 2],
      ],
    );
    pci.remove(4, 2);
    assert.equal(guest.cfgRead(0, 4, 0, 0x0e, 1), 0x00);
    assert.equal(guest.cfgRead(0, 4, 2, 0x00), 0xffff_ffff);
  });

  test("slot errors carry VIREO_PCI_SLOT", () => {
    const pci = new PciBus();
    const isSlotError = (e: Error & { code?: string }) =>
      e instanceof PciSlotError && e.code === "VIREO_PCI_SLOT";
    assert.throws(() => pci.add(endpoint("x", 1), 0), isSlotError, "00:00.0 is the host bridge");
    assert.throws(() => pci.add(endpoint("x", 1), 32), isSlotError);
    assert.throws(() => pci.add(endpoint("x", 1), 1, 8), isSlotError);
    const fn = endpoint("y", 2);
    assert.equal(pci.addNext(fn), 1);
    assert.throws(() => pci.add(fn, 2), isSlotError, "same function twice");
    assert.equal(new PciBus({ hostBridge: false }).get(0), undefined);
  });
});

describe("ECAM", () => {
  test("addresses bus << 20 | device << 15 | function << 12 | register and shares state with 0xCF8", () => {
    const pci = new PciBus();
    const fn = endpoint("net", 0x1041);
    fn.addExtendedCapability(0x0001, 1, new Uint8Array(4));
    pci.add(fn, 3, 2);
    pci.add(endpoint("f0", 0x1040), 3, 0);
    const guest = new Guest(pci, 2);
    assert.equal(guest.ecam.size, 2 << 20);
    assert.equal(guest.ecamRead(0, 3, 2, 0x00), 0x1041_1af4);
    assert.equal(guest.mmioRead(ECAM_BASE + 0x1_a000, 4), 0x1041_1af4, "00:03.2 at 0x1A000");
    assert.equal(guest.ecamRead(0, 3, 2, 0x100), 0x0001_0001, "extended space");
    assert.equal(guest.ecamRead(0, 3, 1, 0x00), 0xffff_ffff);
    assert.equal(guest.ecamRead(1, 0, 0, 0x00), 0xffff_ffff, "bus 1 decoded but empty");
    assert.deepEqual(
      guest.enumerate((d, f, r) => guest.ecamRead(0, d, f, r)).map(([d, f]) => [d, f]),
      [
        [0, 0],
        [3, 0],
        [3, 2],
      ],
    );
    // A write through ECAM is seen through 0xCFC and the other way round.
    guest.mmioWrite(ECAM_BASE + ecamOffset(0, 3, 2, PCI_REG.INTERRUPT_LINE), 1, 0x0b);
    assert.equal(guest.cfgRead(0, 3, 2, PCI_REG.INTERRUPT_LINE, 1), 0x0b);
    guest.cfgWrite(0, 3, 2, PCI_REG.COMMAND, 2, PCI_COMMAND.BUS_MASTER);
    assert.equal(guest.ecamRead(0, 3, 2, PCI_REG.COMMAND, 2), PCI_COMMAND.BUS_MASTER);
  });

  test("bus range is validated", () => {
    const pci = new PciBus();
    assert.throws(() => new PciEcam(pci, { startBus: 2, endBus: 1 }), PciSlotError);
    assert.throws(() => new PciEcam(pci, { endBus: 256 }), PciSlotError);
    assert.equal(new PciEcam(pci, { endBus: 255 }).size, 256 << 20);
  });
});

describe("BAR allocator and bus wiring", () => {
  function platform() {
    const pci = new PciBus();
    const a = endpoint("a", 0x1041, 1);
    a.defineBar(0, { kind: "mmio32", size: 0x100 });
    a.defineBar(1, { kind: "io", size: 0x40 });
    a.defineBar(2, { kind: "mmio64", size: 0x10_0000, prefetchable: true });
    const b = endpoint("b", 0x1042, 1);
    b.defineBar(0, { kind: "io", size: 0x20 });
    b.defineBar(1, { kind: "mmio32", size: 0x4000 });
    b.defineBar(4, { kind: "mmio64", size: 0x4000_0000 });
    pci.add(a, 1);
    pci.add(b, 2);
    return { pci, a, b };
  }

  function overlaps(list: ReadonlyArray<{ address: number; size: number }>): boolean {
    return list.some((x, i) =>
      list.some((y, j) => i !== j && x.address < y.address + y.size && y.address < x.address + x.size),
    );
  }

  test("assigns naturally aligned, non-overlapping addresses in the windows, largest first", () => {
    const { pci, a, b } = platform();
    const lines: Array<[number, number]> = [];
    const got = assignBars(pci, {
      interruptLine: (dev, pin) => {
        lines.push([dev, pin]);
        return 16 + dev;
      },
    });
    // Largest first: the 1 GiB 64-bit BAR does not fit the 480 MiB 32-bit window and goes above 4 GiB.
    assert.deepEqual(
      got.map((g) => [g.device, g.bar, g.kind, g.address]),
      [
        [1, 0, "mmio32", 0xe010_4000],
        [1, 1, "io", 0xc000],
        [1, 2, "mmio64", 0xe000_0000],
        [2, 0, "io", 0xc040],
        [2, 1, "mmio32", 0xe010_0000],
        [2, 4, "mmio64", 0x40_0000_0000],
      ],
    );
    const windows = DEFAULT_PCI_WINDOWS;
    for (const g of got) {
      assert.equal(g.address % g.size, 0, "natural alignment");
      const w = g.kind === "io" ? [windows.io] : [windows.mmio32, windows.mmio64];
      assert.ok(w.some((x) => x !== undefined && g.address >= x.base && g.address + g.size <= x.end));
    }
    assert.equal(overlaps(got.filter((g) => g.kind !== "io")), false);
    // Programmed into the BARs and decode enabled, as firmware leaves it.
    assert.equal(a.barAddress(2), 0xe000_0000);
    assert.equal(b.configRead(0x10, 4), 0xc041);
    assert.equal(a.command & (PCI_COMMAND.IO | PCI_COMMAND.MEMORY), PCI_COMMAND.IO | PCI_COMMAND.MEMORY);
    assert.equal(a.barMapping(0), 0xe010_4000);
    assert.equal(b.barMapping(4), 0x40_0000_0000);
    assert.deepEqual(lines, [
      [1, 1],
      [2, 1],
    ]);
    assert.equal(b.configRead(PCI_REG.INTERRUPT_LINE, 1), 18);
  });

  test("64-bit BARs go above 4 GiB with mmio64Placement 'high'; exhaustion throws", () => {
    const { pci, b } = platform();
    const got = assignBars(pci, { mmio64Placement: "high", enableDecode: false });
    assert.deepEqual(
      got.filter((g) => g.kind === "mmio64").map((g) => g.address),
      [0x40_4000_0000, 0x40_0000_0000],
    );
    assert.equal(b.configRead(0x24, 4), 0x40, "high dword");
    assert.equal(b.command, 0, "decode left off");
    assert.equal(b.barMapping(4), null);

    const tiny = { mmio32: { base: 0xe000_0000, end: 0xe000_8000 }, io: { base: 0xc000, end: 0xc100 } };
    assert.throws(
      () => assignBars(platform().pci, { windows: tiny }),
      (e: Error & { code?: string }) => e instanceof PciAllocationError && e.code === "VIREO_PCI_ALLOCATION",
    );
  });

  test("connectBars puts BAR devices on the buses where they decode, and moves them", () => {
    const { pci } = platform();
    const regs = new Pattern("a-regs");
    const ioRegs = new Pattern("a-io");
    const c = endpoint("c", 0x1043);
    c.defineBar(0, { kind: "mmio32", size: 0x1000, device: new BarRegions("c-bar0").add(0x800, 0x10, regs) });
    c.defineBar(1, { kind: "io", size: 0x10, device: ioRegs });
    pci.add(c, 6);
    const guest = new Guest(pci);
    const conflicts: number[] = [];
    connectBars(c, guest, { onConflict: (_i, addr) => conflicts.push(addr) });
    assignBars(pci);
    const base = c.barAddress(0) as number;
    const io = c.barAddress(1) as number;
    assert.equal(guest.mmioRead(base + 0x804, 4), 0x0706_0504, "BAR0 + 0x800 region at offset 4");
    assert.equal(guest.mmioRead(base + 0x10, 4), 0, "holes in a BarRegions read 0");
    guest.out(io + 2, 1, 0x5a);
    assert.deepEqual(ioRegs.writes, [[2, [0x5a]]]);

    // The guest turns memory decode off: the BAR leaves the bus.
    guest.cfgWrite(0, 6, 0, PCI_REG.COMMAND, 2, PCI_COMMAND.IO);
    assert.equal(guest.mmio.deviceAt(base), undefined);
    assert.equal(guest.mmioRead(base + 0x804, 4), 0xffff_ffff);
    // Moves it and turns decode back on.
    guest.cfgWrite(0, 6, 0, 0x10, 4, 0xe100_0000);
    guest.cfgWrite(0, 6, 0, PCI_REG.COMMAND, 2, PCI_COMMAND.IO | PCI_COMMAND.MEMORY);
    assert.equal(guest.mmioRead(0xe100_0804, 4), 0x0706_0504);
    assert.equal(guest.mmio.deviceAt(0xe100_0000)?.name, "c.bar0");
    assert.equal(guest.mmio.deviceAt(base), undefined);
    // Moving it on top of the ECAM window is a conflict: reported, BAR stays off the bus.
    guest.cfgWrite(0, 6, 0, 0x10, 4, ECAM_BASE);
    assert.deepEqual(conflicts, [ECAM_BASE]);
    assert.equal(guest.mmio.deviceAt(ECAM_BASE)?.name, "pci-ecam");
    assert.equal(guest.mmio.deviceAt(0xe100_0000), undefined, "left its old place");
    // Moving it somewhere free again works.
    guest.cfgWrite(0, 6, 0, 0x10, 4, 0xe200_0000);
    assert.equal(guest.mmioRead(0xe200_0804, 1), 0x04);
  });
});
