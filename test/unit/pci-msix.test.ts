import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { Bus } from "../../src/bus/bus.ts";
import { assignBars } from "../../src/devices/pci/bar-allocator.ts";
import { BarRegions, connectBars } from "../../src/devices/pci/bars.ts";
import { PCI_CAP_ID, PCI_REG, PciFunction } from "../../src/devices/pci/config.ts";
import { PciMsixError } from "../../src/devices/pci/errors.ts";
import { configAddress, PciBus, PciConfigIo } from "../../src/devices/pci/host-bridge.ts";
import { Msix, type MsixRoute } from "../../src/devices/pci/msix.ts";
import { le, num } from "../helpers/bytes.ts";

const DEV = 3;
const LAPIC_MSI = 0xfee0_0000;

/** A guest driver's view of a device with MSI-X, found the way a driver finds it. */
class Guest {
  readonly pio = new Bus("pio");
  readonly mmio = new Bus("mmio");
  cap = 0;
  table = 0;
  pba = 0;
  constructor(pci: PciBus) {
    new PciConfigIo(pci).register(this.pio);
  }
  cfgRead(reg: number, size: number): number {
    this.pio.write(0xcf8, le(configAddress(0, DEV, 0, reg), 4));
    const d = new Uint8Array(size);
    this.pio.read(0xcfc + (reg & 3), d);
    return num(d);
  }
  cfgWrite(reg: number, size: number, value: number): void {
    this.pio.write(0xcf8, le(configAddress(0, DEV, 0, reg), 4));
    this.pio.write(0xcfc + (reg & 3), le(value, size));
  }
  read(addr: number, size: number): number {
    const d = new Uint8Array(size);
    this.mmio.read(addr, d);
    return num(d);
  }
  write(addr: number, size: number, value: number): void {
    this.mmio.write(addr, le(value, size));
  }
  /** Walks the capability list to MSI-X and locates table and PBA through their BIRs. */
  discover(): void {
    let p = this.cfgRead(PCI_REG.CAPABILITIES_POINTER, 1);
    while (p !== 0 && this.cfgRead(p, 1) !== PCI_CAP_ID.MSIX) p = this.cfgRead(p + 1, 1);
    assert.notEqual(p, 0, "MSI-X capability present");
    this.cap = p;
    const bar = (bir: number) => (this.cfgRead(PCI_REG.BAR0 + 4 * bir, 4) & ~0xf) >>> 0;
    const t = this.cfgRead(p + 4, 4);
    const b = this.cfgRead(p + 8, 4);
    this.table = bar(t & 7) + (t & ~7);
    this.pba = bar(b & 7) + (b & ~7);
  }
  get control(): number {
    return this.cfgRead(this.cap + 2, 2);
  }
  set control(v: number) {
    this.cfgWrite(this.cap + 2, 2, v);
  }
  program(vector: number, address: number, data: number, masked: boolean): void {
    const e = this.table + 16 * vector;
    this.write(e, 4, address);
    this.write(e + 4, 4, 0);
    this.write(e + 8, 4, data);
    this.write(e + 12, 4, masked ? 1 : 0);
  }
  mask(vector: number, masked: boolean): void {
    this.write(this.table + 16 * vector + 12, 4, masked ? 1 : 0);
  }
  pbaBits(qword = 0): number {
    return this.read(this.pba + 8 * qword, 8);
  }
}

function setup(vectors = 4) {
  const pci = new PciBus();
  const levels: boolean[] = [];
  const fn = new PciFunction("vnet", {
    vendorId: 0x1af4,
    deviceId: 0x1041,
    classCode: 0x020000,
    interruptPin: 1,
    intx: { set: (l) => levels.push(l) },
  });
  const bar0 = new BarRegions("vnet-bar0");
  fn.defineBar(0, { kind: "mmio32", size: 0x4000, device: bar0 });
  const signals: Array<[number, number, number]> = [];
  const routes: Array<[number, MsixRoute | null]> = [];
  const msix = new Msix(fn, {
    vectors,
    tableBar: 0,
    tableOffset: 0x2000,
    pbaBar: 0,
    pbaOffset: 0x3000,
    sink: { signal: (lo, hi, data) => signals.push([lo, hi, data]) },
    onRouteChange: (v, r) => routes.push([v, r]),
  });
  bar0.add(0x2000, msix.tableLength, msix.table).add(0x3000, msix.pbaLength, msix.pba);
  pci.add(fn, DEV);
  const guest = new Guest(pci);
  connectBars(fn, guest);
  assignBars(pci);
  guest.discover();
  return { fn, msix, guest, signals, routes, levels };
}

const ENABLE = 0x8000;
const FUNCTION_MASK = 0x4000;

describe("MSI-X capability and table", () => {
  test("capability: table size N-1, table and PBA offset/BIR, only enable and function mask writable", () => {
    const { guest, msix, fn } = setup(4);
    assert.equal(guest.cfgRead(guest.cap, 1), 0x11);
    assert.equal(msix.capOffset, guest.cap);
    assert.equal(guest.control, 0x0003);
    assert.equal(guest.cfgRead(guest.cap + 4, 4), 0x2000);
    assert.equal(guest.cfgRead(guest.cap + 8, 4), 0x3000);
    guest.control = 0xffff;
    assert.equal(guest.control, 0xc003);
    guest.cfgWrite(guest.cap + 4, 4, 0xffffffff);
    guest.cfgWrite(guest.cap + 8, 4, 0);
    assert.equal(guest.cfgRead(guest.cap + 4, 4), 0x2000, "table offset/BIR read-only");
    assert.equal(guest.cfgRead(guest.cap + 8, 4), 0x3000);
    guest.control = 0;
    assert.equal(guest.control, 0x0003);
    assert.equal(guest.table, (fn.barAddress(0) as number) + 0x2000);
  });

  test("reset state: every vector masked, messages 0, nothing pending", () => {
    const { guest } = setup(4);
    for (let v = 0; v < 4; v++) {
      assert.equal(guest.read(guest.table + 16 * v, 8), 0);
      assert.equal(guest.read(guest.table + 16 * v + 8, 4), 0);
      assert.equal(guest.read(guest.table + 16 * v + 12, 4), 1, `vector ${v} masked`);
    }
    assert.equal(guest.pbaBits(), 0);
  });

  test("read-only bits of the entry; qword accesses", () => {
    const { guest, msix } = setup(2);
    guest.write(guest.table, 4, 0xffff_ffff);
    assert.equal(guest.read(guest.table, 4), 0xffff_fffc, "address bits 1:0");
    guest.write(guest.table + 12, 4, 0xffff_ffff);
    assert.equal(guest.read(guest.table + 12, 4), 1, "vector control bits 31:1");
    guest.write(guest.table + 16, 8, 0x0000_0001_fee0_1000);
    assert.deepEqual(msix.entry(1), { addressLo: 0xfee0_1000, addressHi: 1, data: 0, masked: true });
    assert.equal(guest.read(guest.table + 16, 8), 0x0000_0001_fee0_1000);
    // PBA writes are ignored.
    guest.write(guest.pba, 8, 0xff);
    assert.equal(guest.pbaBits(), 0);
  });
});

describe("MSI-X delivery", () => {
  test("enabled and unmasked: notify signals the programmed message", () => {
    const { guest, msix, signals } = setup();
    guest.program(1, LAPIC_MSI, 0x4031, false);
    assert.equal(msix.notify(1), "disabled", "MSI-X not enabled yet");
    assert.deepEqual(signals, []);
    assert.equal(guest.pbaBits(), 0, "nothing pends while disabled");
    guest.control = ENABLE;
    assert.equal(msix.notify(1), "sent");
    assert.equal(msix.notify(1), "sent");
    assert.deepEqual(signals, [
      [LAPIC_MSI, 0, 0x4031],
      [LAPIC_MSI, 0, 0x4031],
    ]);
    assert.equal(msix.notify(4), "invalid");
    assert.equal(msix.notify(-1), "invalid");
  });

  test("a masked vector sets its pending bit; unmasking delivers once and clears it", () => {
    const { guest, msix, signals } = setup();
    guest.control = ENABLE;
    guest.program(2, LAPIC_MSI, 0x4022, true);
    assert.equal(msix.notify(2), "pending");
    assert.equal(msix.notify(2), "pending");
    assert.deepEqual(signals, []);
    assert.equal(guest.pbaBits(), 0b100);
    assert.equal(msix.isPending(2), true);
    guest.mask(2, false);
    assert.deepEqual(signals, [[LAPIC_MSI, 0, 0x4022]], "one message for the pending bit");
    assert.equal(guest.pbaBits(), 0);
    assert.equal(msix.notify(2), "sent");
    assert.equal(signals.length, 2);
  });

  test("the message is read at delivery: changing it while masked sends the new one", () => {
    const { guest, msix, signals } = setup();
    guest.control = ENABLE;
    guest.program(0, LAPIC_MSI, 0x4020, true);
    msix.notify(0);
    guest.write(guest.table + 8, 4, 0x4099);
    guest.write(guest.table + 0, 4, 0xfee0_2000);
    assert.deepEqual(signals, []);
    guest.mask(0, false);
    assert.deepEqual(signals, [[0xfee0_2000, 0, 0x4099]]);
  });

  test("function mask holds every vector; clearing it delivers the pending ones whose mask bit is clear", () => {
    const { guest, msix, signals } = setup();
    guest.control = ENABLE | FUNCTION_MASK;
    guest.program(0, LAPIC_MSI, 0x4020, false);
    guest.program(1, LAPIC_MSI, 0x4021, true);
    guest.program(3, LAPIC_MSI, 0x4023, false);
    assert.equal(msix.isMasked(0), true);
    assert.deepEqual(
      [0, 1, 3].map((v) => msix.notify(v)),
      ["pending", "pending", "pending"],
    );
    assert.equal(guest.pbaBits(), 0b1011);
    // Per-vector mask toggles do not deliver while the function is masked.
    guest.mask(3, true);
    guest.mask(3, false);
    assert.deepEqual(signals, []);
    guest.control = ENABLE;
    assert.deepEqual(signals, [
      [LAPIC_MSI, 0, 0x4020],
      [LAPIC_MSI, 0, 0x4023],
    ]);
    assert.equal(guest.pbaBits(), 0b0010, "vector 1 still masked and pending");
    guest.mask(1, false);
    assert.deepEqual(signals.at(-1), [LAPIC_MSI, 0, 0x4021]);
    assert.equal(guest.pbaBits(), 0);
  });

  test("clearPending withdraws an event so unmasking sends nothing", () => {
    const { guest, msix, signals } = setup();
    guest.control = ENABLE;
    guest.program(0, LAPIC_MSI, 0x4020, true);
    msix.notify(0);
    msix.clearPending(0);
    assert.equal(guest.pbaBits(), 0);
    guest.mask(0, false);
    assert.deepEqual(signals, []);
  });

  test("pending bits of vectors past 64 live in the next PBA qword", () => {
    const { guest, msix } = setup(70);
    assert.equal(msix.pbaLength, 16);
    assert.equal(guest.control, 69);
    guest.control = ENABLE;
    msix.notify(65);
    msix.notify(3);
    assert.equal(guest.pbaBits(0), 0b1000);
    assert.equal(guest.pbaBits(1), 0b10);
  });

  test("route events report each vector's deliverable message, null while it cannot be delivered", () => {
    const { guest, msix, routes } = setup(2);
    guest.program(0, LAPIC_MSI, 0x4020, false);
    assert.deepEqual(routes, [], "not enabled: no route");
    guest.control = ENABLE;
    assert.deepEqual(routes.splice(0), [[0, { addressLo: LAPIC_MSI, addressHi: 0, data: 0x4020 }]]);
    guest.write(guest.table + 8, 4, 0x4030);
    assert.deepEqual(routes.splice(0), [[0, { addressLo: LAPIC_MSI, addressHi: 0, data: 0x4030 }]]);
    guest.write(guest.table + 8, 4, 0x4030);
    assert.deepEqual(routes.splice(0), [], "rewriting the same value is not a change");
    guest.mask(0, true);
    assert.deepEqual(routes.splice(0), [[0, null]]);
    guest.mask(0, false);
    guest.program(1, LAPIC_MSI, 0x4031, false);
    routes.length = 0;
    guest.control = ENABLE | FUNCTION_MASK;
    assert.deepEqual(routes.splice(0), [
      [0, null],
      [1, null],
    ]);
    guest.control = 0;
    assert.deepEqual(routes.splice(0), [], "already null");
    assert.equal(msix.route(1), null);
    guest.control = ENABLE;
    assert.equal(routes.length, 2);
    assert.deepEqual(msix.route(1), { addressLo: LAPIC_MSI, addressHi: 0, data: 0x4031 });
  });

  test("INTx is suppressed while MSI-X is enabled", () => {
    const { guest, fn, levels } = setup();
    fn.setIntx(true);
    assert.deepEqual(levels, [true]);
    guest.control = ENABLE;
    assert.deepEqual(levels, [true, false]);
    guest.control = ENABLE | FUNCTION_MASK;
    assert.deepEqual(levels, [true, false], "function mask does not re-enable INTx");
    guest.control = 0;
    assert.deepEqual(levels, [true, false, true]);
  });

  test("reset restores the power-on state", () => {
    const { guest, msix } = setup();
    guest.control = ENABLE | FUNCTION_MASK;
    guest.program(0, LAPIC_MSI, 0x4020, false);
    msix.notify(0);
    msix.reset();
    assert.equal(guest.control, 0x0003);
    assert.equal(guest.pbaBits(), 0);
    assert.deepEqual(msix.entry(0), { addressLo: 0, addressHi: 0, data: 0, masked: true });
  });
});

describe("MSI-X layout checks", () => {
  function fnWithBars(): PciFunction {
    const fn = new PciFunction("x", { vendorId: 1, deviceId: 2, classCode: 0 });
    fn.defineBar(0, { kind: "mmio32", size: 0x1000 });
    fn.defineBar(1, { kind: "io", size: 0x20 });
    return fn;
  }
  const sink = { signal() {} };
  const isMsixError = (e: Error & { code?: string }) =>
    e instanceof PciMsixError && e.code === "VIREO_PCI_MSIX";

  test("table and PBA must fit a memory BAR, qword aligned, without overlapping", () => {
    const base = { tableBar: 0, tableOffset: 0, pbaBar: 0, pbaOffset: 0x800, sink };
    assert.throws(() => new Msix(fnWithBars(), { ...base, vectors: 0 }), isMsixError);
    assert.throws(() => new Msix(fnWithBars(), { ...base, vectors: 2049 }), isMsixError);
    assert.throws(
      () => new Msix(fnWithBars(), { ...base, vectors: 300, pbaOffset: 0x800 }),
      isMsixError,
      "4800 bytes > 4 KiB BAR",
    );
    assert.throws(() => new Msix(fnWithBars(), { ...base, vectors: 4, tableBar: 1 }), isMsixError, "I/O BAR");
    assert.throws(
      () => new Msix(fnWithBars(), { ...base, vectors: 4, tableBar: 2 }),
      isMsixError,
      "no BAR 2",
    );
    assert.throws(() => new Msix(fnWithBars(), { ...base, vectors: 4, tableOffset: 4 }), isMsixError);
    assert.throws(
      () => new Msix(fnWithBars(), { ...base, vectors: 4, pbaOffset: 0x30 }),
      isMsixError,
      "overlap",
    );
    const ok = new Msix(fnWithBars(), { ...base, vectors: 128 });
    assert.equal(ok.tableLength, 2048);
  });
});
