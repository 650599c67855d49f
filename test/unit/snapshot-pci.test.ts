/**
 * Snapshot round-trips of the PCI layer: a function's configuration space (BARs where the guest moved them,
 * COMMAND, interrupt line), its INTx request, its MSI-X table and pending bits, and the bus's CONFIG_ADDRESS
 * latch and host bridge. Restored into a freshly built bus and function, the guest finds everything where it
 * left it: the BAR decodes at its new address, routes are reported again, a pending vector is sent on unmask.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { Bus } from "../../src/bus/bus.ts";
import { assignBars } from "../../src/devices/pci/bar-allocator.ts";
import { BarRegions, connectBars } from "../../src/devices/pci/bars.ts";
import { PCI_CAP_ID, PCI_REG, PciFunction } from "../../src/devices/pci/config.ts";
import { configAddress, PciBus, PciConfigIo } from "../../src/devices/pci/host-bridge.ts";
import { Msix, type MsixRoute } from "../../src/devices/pci/msix.ts";
import { DeviceStateError } from "../../src/shared/device-state.ts";
import { le, num } from "../helpers/bytes.ts";
import { cloneState, throughFile } from "../helpers/snapshot.ts";

const DEV = 3;
const MSI_ADDR = 0xfee0_0000;

function setup(opts: { barSize?: number } = {}) {
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
  fn.defineBar(0, { kind: "mmio32", size: opts.barSize ?? 0x4000, device: bar0 });
  const signals: number[] = [];
  const routes: Array<[number, MsixRoute | null]> = [];
  const msix = new Msix(fn, {
    vectors: 4,
    tableBar: 0,
    tableOffset: 0x2000,
    pbaBar: 0,
    pbaOffset: 0x3000,
    sink: { signal: (_lo, _hi, data) => signals.push(data) },
    onRouteChange: (v, r) => routes.push([v, r]),
  });
  bar0.add(0x2000, msix.tableLength, msix.table).add(0x3000, msix.pbaLength, msix.pba);
  pci.add(fn, DEV);
  const pio = new Bus("pio");
  const mmio = new Bus("mmio");
  new PciConfigIo(pci).register(pio);
  connectBars(fn, { pio, mmio });
  assignBars(pci);
  const cfgRead = (reg: number, size: number, dev = DEV) => {
    pio.write(0xcf8, le(configAddress(0, dev, 0, reg), 4));
    const d = new Uint8Array(size);
    pio.read(0xcfc + (reg & 3), d);
    return num(d);
  };
  const cfgWrite = (reg: number, size: number, value: number, dev = DEV) => {
    pio.write(0xcf8, le(configAddress(0, dev, 0, reg), 4));
    pio.write(0xcfc + (reg & 3), le(value, size));
  };
  const read = (addr: number, size: number) => {
    const d = new Uint8Array(size);
    assert.ok(mmio.read(addr, d), `MMIO at 0x${addr.toString(16)} is claimed`);
    return num(d);
  };
  const write = (addr: number, size: number, value: number) => mmio.write(addr, le(value, size));
  return { pci, fn, msix, pio, mmio, signals, routes, levels, cfgRead, cfgWrite, read, write };
}

function saveAll(r: ReturnType<typeof setup>) {
  return {
    bus: throughFile(r.pci.saveState(), "pci"),
    fn: throughFile(r.fn.saveState(), "fn"),
    msix: throughFile(r.msix.saveState(), "msix"),
  };
}

describe("PCI function, MSI-X and host bridge snapshot", () => {
  test("BARs, COMMAND, the MSI-X table and a pending vector survive; routes are reported again", () => {
    const a = setup();
    // The guest moves BAR 0, sets its interrupt line and latency timer, programs MSI-X (vector 1 masked).
    a.cfgWrite(PCI_REG.COMMAND, 2, 0);
    a.cfgWrite(PCI_REG.BAR0, 4, 0xd000_0000);
    a.cfgWrite(PCI_REG.COMMAND, 2, 0x0406); // memory, bus master, INTx disabled
    a.cfgWrite(PCI_REG.INTERRUPT_LINE, 1, 11);
    a.cfgWrite(PCI_REG.LATENCY_TIMER, 1, 0x40);
    const table = 0xd000_2000;
    for (let v = 0; v < 4; v++) {
      a.write(table + 16 * v, 4, MSI_ADDR);
      a.write(table + 16 * v + 8, 4, 0x40 + v);
      a.write(table + 16 * v + 12, 4, v === 1 ? 1 : 0);
    }
    const cap = a.fn.findCapability(PCI_CAP_ID.MSIX)?.offset as number;
    a.cfgWrite(cap + 2, 2, 0x8000);
    assert.equal(a.msix.notify(1), "pending");
    assert.equal(a.msix.notify(2), "sent");
    a.pio.write(0xcf8, le(configAddress(0, 0, 0, PCI_REG.COMMAND), 4)); // leave the latch on the host bridge
    const saved = saveAll(a);

    const b = setup();
    assert.notEqual(b.fn.barMapping(0), 0xd000_0000, "the fresh function decodes elsewhere");
    b.pci.restoreState(saved.bus);
    b.fn.restoreState(saved.fn);
    b.msix.restoreState(saved.msix);
    assert.deepEqual(b.pci.saveState(), saved.bus);
    assert.deepEqual(b.fn.saveState(), saved.fn);
    assert.deepEqual(b.msix.saveState(), saved.msix);
    assert.equal(b.pci.configAddressLatch, configAddress(0, 0, 0, PCI_REG.COMMAND));

    assert.equal(b.fn.barMapping(0), 0xd000_0000, "BAR 0 decodes where the guest put it");
    assert.equal(b.read(table + 8, 4), 0x40, "the table answers at the moved BAR");
    assert.equal(b.cfgRead(PCI_REG.INTERRUPT_LINE, 1), 11);
    assert.equal(b.cfgRead(PCI_REG.LATENCY_TIMER, 1), 0x40);
    assert.equal(b.msix.enabled, true);
    assert.equal(b.msix.isPending(1), true);
    // Routes: every unmasked vector reported on the restoring side, none for the masked one.
    assert.deepEqual(
      b.routes.map(([v, r]) => [v, r?.data ?? null]),
      [
        [0, 0x40],
        [2, 0x42],
        [3, 0x43],
      ],
    );
    assert.deepEqual(b.levels, [], "MSI-X enabled: INTx stays low");
    // The guest unmasks vector 1: its pending message goes out now, on the restored side.
    b.write(table + 16 + 12, 4, 0);
    assert.deepEqual(b.signals, [0x41]);
    assert.equal(b.msix.isPending(1), false);
  });

  test("an asserted INTx (MSI-X off) is driven again on the restored function", () => {
    const a = setup();
    a.fn.setIntx(true);
    assert.deepEqual(a.levels, [true]);
    const saved = saveAll(a);
    const b = setup();
    b.fn.restoreState(saved.fn);
    b.msix.restoreState(saved.msix);
    assert.deepEqual(b.levels, [true]);
    assert.equal(b.cfgRead(PCI_REG.STATUS, 2) & 0x08, 0x08, "interrupt status bit");
    b.cfgWrite(PCI_REG.COMMAND, 2, b.cfgRead(PCI_REG.COMMAND, 2) | 0x400);
    assert.deepEqual(b.levels, [true, false], "INTx disable works as before");
  });

  test("refuses read-only bits, another layout, table reserved bits and pending bits past the table", () => {
    const a = setup();
    const saved = saveAll(a);
    const b = setup();
    const before = b.fn.saveState();
    const vendor = cloneState(saved.fn);
    (vendor.data.config as Uint8Array)[0] = 0x86;
    assert.throws(
      () => b.fn.restoreState(vendor),
      /configuration byte 0x0 is 0x86, but its read-only bits are 0xf4/,
    );
    const barType = cloneState(saved.fn);
    (barType.data.config as Uint8Array)[PCI_REG.BAR0] = 0x04;
    assert.throws(() => b.fn.restoreState(barType), DeviceStateError);
    const capLink = cloneState(saved.fn);
    (capLink.data.config as Uint8Array)[PCI_REG.CAPABILITIES_POINTER] = 0xf0;
    assert.throws(() => b.fn.restoreState(capLink), /read-only/);
    assert.deepEqual(b.fn.saveState(), before, "refusals changed nothing");
    assert.throws(() => setup({ barSize: 0x8000 }).fn.restoreState(saved.fn), /another layout/);

    const entryBits = cloneState(saved.msix);
    (entryBits.data.table as Uint8Array)[13] = 1;
    assert.throws(() => b.msix.restoreState(entryBits), /entry 0 has read-only bits set at byte 13/);
    const addrBits = cloneState(saved.msix);
    (addrBits.data.table as Uint8Array)[16] = 0x03;
    assert.throws(() => b.msix.restoreState(addrBits), /entry 1 has read-only bits/);
    const pba = cloneState(saved.msix);
    (pba.data.pba as Uint8Array)[0] = 0x20;
    assert.throws(() => b.msix.restoreState(pba), /vector 5 pending, past the table \(4\)/);
    const vectors = cloneState(saved.msix);
    vectors.data.vectors = 8;
    assert.throws(() => b.msix.restoreState(vectors), /vectors is 8, outside 4\.\.4/);
    const latch = cloneState(saved.bus);
    latch.data.configAddress = 0x8000_0001;
    assert.throws(() => b.pci.restoreState(latch), /reserved bits/);
  });
});
