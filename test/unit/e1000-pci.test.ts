/**
 * E1000Pci: the 82540EM's PCI function (IDs, class, BARs, interrupt pin), the register space and the IOADDR/IODATA
 * window reached through the BARs on a bus, INTx following ICR & IMS and COMMAND.INTx-disable, and two functions
 * over one state (two threads' views) acting as one device.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { Bus } from "../../src/bus/bus.ts";
import { E1000Pci } from "../../src/devices/e1000/pci.ts";
import { connectBars } from "../../src/devices/pci/bars.ts";
import { PCI_COMMAND, PCI_REG, PCI_STATUS } from "../../src/devices/pci/config.ts";
import { PciBus } from "../../src/devices/pci/host-bridge.ts";
import { GuestMemory } from "../../src/memory/guest-memory.ts";
import { MetricsSegment } from "../../src/metrics/registry.ts";
import { createPair, type PairBackend } from "../../src/net/pair.ts";
import { le, num } from "../helpers/bytes.ts";
import {
  E1000Driver,
  ethFrame,
  ICR,
  MEM_SIZE,
  NIC_MAC,
  PEER_MAC,
  pattern,
  REG,
} from "../helpers/e1000-driver.ts";

const MMIO_BASE = 0xfebc_0000;
const IO_BASE = 0xc000;

interface Node {
  f: E1000Pci;
  pio: Bus;
  mmio: Bus;
  wire: PairBackend;
  sent: Uint8Array[];
  intx: boolean[];
  metrics: MetricsSegment;
}

/** One thread's view: its own E1000Pci over the shared state, its own buses, backend and INTx log. */
function node(state: ReturnType<typeof E1000Pci.createState>, mem: GuestMemory, init = false): Node {
  const [nicEnd, wire] = createPair();
  const sent: Uint8Array[] = [];
  wire.attach((frame) => {
    sent.push(frame);
    return true;
  });
  const intx: boolean[] = [];
  const metrics = new MetricsSegment(new ArrayBuffer(1024 * 8), 0);
  const f = new E1000Pci({
    state,
    init,
    mem,
    backend: nicEnd,
    intx: { set: (level) => intx.push(level) },
    metrics,
    log: () => {},
    now: () => 0,
  });
  const pio = new Bus("pio");
  const mmio = new Bus("mmio");
  connectBars(f.pci, { pio, mmio });
  return { f, pio, mmio, wire, sent, intx, metrics };
}

function rig() {
  const state = E1000Pci.createState({ mac: NIC_MAC });
  const mem = new GuestMemory(new SharedArrayBuffer(MEM_SIZE));
  const a = node(state, mem, true);
  return { state, mem, a };
}

/** Firmware's job: place the BARs and enable decode (and bus mastering, as a driver would). */
function program(n: Node): void {
  n.f.pci.setBarAddress(0, MMIO_BASE);
  n.f.pci.setBarAddress(1, IO_BASE);
  n.f.pci.configWrite(PCI_REG.COMMAND, 2, PCI_COMMAND.IO | PCI_COMMAND.MEMORY | PCI_COMMAND.BUS_MASTER);
}

/** A register driver whose accesses go through the node's MMIO bus at BAR0. */
function busDriver(n: Node, mem: GuestMemory): E1000Driver {
  const drv = new E1000Driver(n.f.nic, mem);
  drv.r32 = (off) => {
    const d = new Uint8Array(4);
    assert.ok(n.mmio.read(MMIO_BASE + off, d), "BAR0 decodes");
    return num(d);
  };
  drv.w32 = (off, v) => {
    assert.ok(n.mmio.write(MMIO_BASE + off, le(v >>> 0, 4)), "BAR0 decodes");
  };
  drv.ioW32 = (off, v) => {
    assert.ok(n.pio.write(IO_BASE, le(off, 4)));
    assert.ok(n.pio.write(IO_BASE + 4, le(v >>> 0, 4)));
  };
  drv.ioR32 = (off) => {
    assert.ok(n.pio.write(IO_BASE, le(off, 4)));
    const d = new Uint8Array(4);
    assert.ok(n.pio.read(IO_BASE + 4, d));
    return num(d);
  };
  return drv;
}

describe("e1000 PCI function", () => {
  test("configuration space: 8086:100E, subsystem 8086:001E, class 020000, INTA#, no capabilities", () => {
    const { a } = rig();
    const p = a.f.pci;
    assert.equal(p.configRead(PCI_REG.VENDOR_ID, 2), 0x8086);
    assert.equal(p.configRead(PCI_REG.DEVICE_ID, 2), 0x100e);
    assert.equal(p.configRead(PCI_REG.REVISION_ID, 4) >>> 8, 0x020000);
    assert.equal(p.configRead(PCI_REG.SUBSYSTEM_VENDOR_ID, 2), 0x8086);
    assert.equal(p.configRead(PCI_REG.SUBSYSTEM_ID, 2), 0x001e);
    assert.equal(p.configRead(PCI_REG.INTERRUPT_PIN, 1), 1);
    assert.equal(p.configRead(PCI_REG.HEADER_TYPE, 1), 0);
    assert.equal(
      p.configRead(PCI_REG.STATUS, 2) & PCI_STATUS.CAPABILITIES_LIST,
      0,
      "no MSI, no capability list",
    );
  });

  test("BAR sizing: BAR0 is 128 KiB 32-bit non-prefetchable memory, BAR1 is 64 bytes of I/O, the rest absent", () => {
    const { a } = rig();
    const p = a.f.pci;
    const size = (bar: number): number => {
      const off = PCI_REG.BAR0 + 4 * bar;
      p.configWrite(off, 4, 0xffffffff);
      const v = p.configRead(off, 4);
      p.configWrite(off, 4, 0);
      return v;
    };
    const bar0 = size(0);
    assert.equal(bar0 & 0xf, 0, "memory, 32-bit, not prefetchable");
    assert.equal((~(bar0 & ~0xf) >>> 0) + 1, 128 * 1024);
    const bar1 = size(1);
    assert.equal(bar1 & 0x3, 1, "I/O space");
    assert.equal(((~(bar1 & ~0x3) & 0xffff) >>> 0) + 1, 64);
    for (const bar of [2, 3, 4, 5]) assert.equal(size(bar), 0, `BAR${bar} is not implemented`);
  });

  test("the register space through BAR0 and the IOADDR/IODATA window through BAR1", () => {
    const { a, mem } = rig();
    program(a);
    const drv = busDriver(a, mem);
    assert.equal(drv.r32(REG.RAL0), 0x12005452, "the MAC from the EEPROM");
    drv.ioW32(REG.FCAL, 0xcafef00d);
    assert.equal(drv.r32(REG.FCAL), 0xcafef00d);
    assert.equal(drv.ioR32(REG.FCAL), 0xcafef00d);
    const d = new Uint8Array(4);
    assert.ok(a.pio.read(IO_BASE, d));
    assert.equal(num(d), REG.FCAL, "IOADDR reads back");
    // The driver's global reset goes through the I/O window.
    drv.w32(REG.RCTL, 0x8000);
    drv.reset();
    assert.equal(drv.r32(REG.RCTL), 0);
    // With I/O decode off, the window is gone from the bus.
    a.f.pci.configWrite(PCI_REG.COMMAND, 2, PCI_COMMAND.MEMORY);
    assert.equal(a.pio.read(IO_BASE + 4, d), false);
  });

  test("INTx follows ICR & IMS, and COMMAND bit 10 (INTx disable) masks the pin but not STATUS.Interrupt", () => {
    const { a, mem } = rig();
    program(a);
    const drv = busDriver(a, mem);
    const p = a.f.pci;
    drv.w32(REG.ICS, ICR.LSC);
    assert.deepEqual(a.intx, [], "masked cause: no interrupt");
    drv.w32(REG.IMS, ICR.LSC);
    assert.deepEqual(a.intx, [true]);
    assert.equal(p.intxAssertedNow, true);
    assert.notEqual(p.status & PCI_STATUS.INTERRUPT, 0);
    p.configWrite(PCI_REG.COMMAND, 2, p.command | PCI_COMMAND.INTX_DISABLE);
    assert.deepEqual(a.intx, [true, false], "INTx disable drops the pin");
    assert.equal(p.intxAssertedNow, false);
    assert.notEqual(p.status & PCI_STATUS.INTERRUPT, 0, "the device still requests it");
    p.configWrite(PCI_REG.COMMAND, 2, p.command & ~PCI_COMMAND.INTX_DISABLE);
    assert.deepEqual(a.intx, [true, false, true], "re-enabled: the pending request asserts again");
    assert.equal(drv.readIcr(), ICR.LSC);
    assert.deepEqual(a.intx, [true, false, true, false], "the ICR read acknowledges");
    assert.equal(p.status & PCI_STATUS.INTERRUPT, 0);
    // While INTx is disabled a new cause sets STATUS.Interrupt only.
    p.configWrite(PCI_REG.COMMAND, 2, p.command | PCI_COMMAND.INTX_DISABLE);
    drv.w32(REG.ICS, ICR.LSC);
    assert.equal(a.intx.at(-1), false);
    assert.notEqual(p.status & PCI_STATUS.INTERRUPT, 0);
  });

  test("a received frame raises INTx; metrics count frames, bytes and interrupts", () => {
    const { a, mem } = rig();
    program(a);
    const drv = busDriver(a, mem);
    drv.reset();
    drv.setupRx();
    drv.setupTx();
    drv.w32(REG.IMS, ICR.RXT0);
    const frame = ethFrame(NIC_MAC, PEER_MAC, 0x88b5, pattern(200));
    a.wire.send(frame);
    assert.equal(a.f.pci.intxAssertedNow, true);
    assert.equal(drv.receive().length, 1);
    drv.sendLegacy([ethFrame(PEER_MAC, NIC_MAC, 0x88b5, pattern(100))]);
    assert.equal(a.sent.length, 1);
    const c = (n: string) => a.metrics.counter(`e1000.${n}`).value;
    assert.equal(c("rx.frames"), 1);
    assert.equal(c("rx.bytes"), frame.length);
    assert.equal(c("tx.frames"), 1);
    assert.equal(c("tx.bytes"), 114);
    assert.equal(c("irq.raised"), 1);
  });

  test("two functions over one state: the BARs programmed on one decode on the other's buses, one device", () => {
    const { state, mem, a } = rig();
    const b = node(state, mem);
    // Each thread puts its own function on its own PciBus, as pci-devices.ts does.
    const busA = new PciBus({ state: PciBus.createState(), init: true });
    busA.add(a.f.pci, 3);
    program(a);
    assert.equal(b.f.pci.syncBars(), true, "B catches up with the decode A's firmware set");
    const drvA = busDriver(a, mem);
    const drvB = busDriver(b, mem);
    drvA.reset();
    drvA.setupRx();
    drvA.w32(REG.IMS, ICR.RXT0);
    b.wire.send(ethFrame(NIC_MAC, PEER_MAC, 0x88b5, pattern(64)));
    assert.deepEqual(b.intx, [true], "B received and raised INTx");
    assert.equal(a.f.pci.intxAssertedNow, true, "the pin state is shared");
    assert.equal(drvA.readIcr() & ICR.RXT0, ICR.RXT0);
    assert.deepEqual(a.intx, [false], "A's ICR read lowered it");
    assert.equal(b.f.pci.intxAssertedNow, false);
    drvB.ioW32(REG.FCAH, 0x1234);
    assert.equal(drvA.r32(REG.FCAH), 0x1234);
  });

  test("E1000Pci refuses a state another layout built (construction must match across threads)", () => {
    const state = E1000Pci.createState({ mac: NIC_MAC });
    const mem = new GuestMemory(new SharedArrayBuffer(MEM_SIZE));
    node(state, mem, true);
    assert.throws(() => {
      const [backend] = createPair();
      new E1000Pci({ state, mem, backend, name: "other" });
    }, /different layout/);
  });
});
