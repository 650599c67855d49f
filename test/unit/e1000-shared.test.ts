/**
 * One e1000 served by two E1000 objects over one shared state, as two threads would (a vCPU thread trapping
 * register accesses and the NIC's I/O thread receiving frames); here both live in one thread, each with its own
 * backend, interrupt line and logs. They must behave as one device.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { E1000, E1000StateError, monotonicMs } from "../../src/devices/e1000/e1000.ts";
import { GuestMemory } from "../../src/memory/guest-memory.ts";
import type { NetBackend } from "../../src/net/backend.ts";
import { createPair } from "../../src/net/pair.ts";
import {
  attachNic,
  E1000Driver,
  ethFrame,
  ICR,
  ipv4TcpFrame,
  MEM_SIZE,
  makeNic,
  NIC_MAC,
  PEER_MAC,
  POPTS,
  pattern,
  REG,
  STAT,
  setL4Checksum,
  TUCMD,
} from "../helpers/e1000-driver.ts";

const toNic = (n: number, len = 100) => ethFrame(NIC_MAC, PEER_MAC, 0x88b5, pattern(len, n));
const fromNic = (n: number, len = 100) => ethFrame(PEER_MAC, NIC_MAC, 0x88b5, pattern(len, n));

/** Device A (the harness's) and B over the same state and memory, sharing the manual clock. */
function twins(opts: Parameters<typeof attachNic>[3] = {}) {
  const a = makeNic(opts);
  const b = attachNic(a.state, a.mem, a.clock, opts);
  /** A driver that talks to B; its ring bookkeeping is its own, so it is used for register accesses only. */
  const drvB = new E1000Driver(b.dev, b.mem);
  return { a, b, drvB };
}

describe("e1000: two objects over one state are one device", () => {
  test("a register written through one reads back through the other, EEPROM and PHY included", () => {
    const { a, drvB } = twins();
    a.drv.w32(REG.RAL0 + 8, 0x11223344);
    a.drv.w32(REG.MTA + 4 * 9, 0xdeadbeef);
    a.drv.w32(REG.RDTR, 0x1234);
    assert.equal(drvB.r32(REG.RAL0 + 8), 0x11223344);
    assert.equal(drvB.r32(REG.MTA + 4 * 9), 0xdeadbeef);
    assert.equal(drvB.r32(REG.RDTR), 0x1234);
    drvB.w32(REG.IMS, ICR.TXDW | ICR.LSC);
    assert.equal(a.drv.r32(REG.IMS), ICR.TXDW | ICR.LSC);
    // The EEPROM image is shared: B reads the MAC A's state was created with, also bit by bit on EECD.
    assert.deepEqual([...drvB.macFromEeprom()], [...NIC_MAC]);
    assert.equal(drvB.eepromReadMicrowire(0x0d), 0x100e);
    // PHY registers written through A's MDIC read back through B's.
    assert.equal(a.drv.phyWrite(4, 0x0de1), true);
    assert.equal(drvB.phyRead(4).value, 0x0de1);
  });

  test("a Microwire read bit-banged alternately through both objects returns the right word", () => {
    const { a, drvB } = twins();
    // Half the EECD writes go through each object: the interface state is shared.
    let turn = 0;
    const mixed = new E1000Driver(a.dev, a.mem);
    mixed.w32 = (off, v) => ((turn++ & 1 ? drvB : a.drv) as E1000Driver).w32(off, v);
    mixed.r32 = (off) => ((turn++ & 1 ? drvB : a.drv) as E1000Driver).r32(off);
    for (const w of [0, 1, 2, 0x0d, 0x3f]) assert.equal(mixed.eepromReadMicrowire(w), a.drv.eepromRead(w));
  });

  test("IOADDR written through one object's I/O window selects the register for the other's IODATA", () => {
    const { a, b } = twins();
    const d = new Uint8Array(4);
    new DataView(d.buffer).setUint32(0, REG.FCAL, true);
    a.dev.io.write(0, d);
    new DataView(d.buffer).setUint32(0, 0xcafef00d, true);
    b.dev.io.write(4, d);
    assert.equal(a.drv.r32(REG.FCAL), 0xcafef00d);
    b.dev.io.read(0, d);
    assert.equal(new DataView(d.buffer).getUint32(0, true), REG.FCAL);
  });

  test("a frame received through one raises ICR and the interrupt seen through the other", () => {
    const { a, b } = twins();
    a.drv.reset();
    a.drv.setupRx();
    a.drv.w32(REG.IMS, ICR.RXT0);
    b.wire.send(toNic(1));
    assert.equal(b.irqLevel, true, "B received the frame and drove its line");
    assert.equal(a.dev.irqAsserted, true, "A sees the line asserted");
    assert.equal(a.drv.readIcr() & ICR.RXT0, ICR.RXT0, "A's ICR read sees the cause");
    assert.equal(a.irqLevel, false, "A's ICR read lowered the line");
    assert.equal(b.dev.irqAsserted, false);
    const [got] = a.drv.receive();
    assert.deepEqual(got?.data.subarray(0, 114), toNic(1));
    assert.equal(a.drv.r32(STAT.GPRC), 1, "statistics are shared");
  });

  test("a TX started by a TDT write on one is visible in TDH and the statistics of the other", () => {
    const { a, b, drvB } = twins();
    a.drv.reset();
    a.drv.setupTx(8);
    a.drv.queueLegacy([fromNic(1)]);
    a.drv.queueLegacy([fromNic(2)]);
    drvB.w32(REG.TDT, a.drv.txTail);
    assert.deepEqual(
      b.sent,
      [fromNic(1), fromNic(2)],
      "B's backend sent them (TX runs on the writing thread)",
    );
    assert.deepEqual(a.sent, []);
    assert.equal(a.drv.r32(REG.TDH), 2);
    assert.equal(a.drv.txDone(1), true);
    assert.equal(a.drv.r32(STAT.GPTC), 2);
  });

  test("a packet whose descriptors span TDT writes from both objects is assembled in the shared state", () => {
    const { a, b, drvB } = twins();
    a.drv.reset();
    a.drv.setupTx(8);
    const f = fromNic(3, 300);
    a.drv.queueLegacy([f.subarray(0, 100), f.subarray(100, 200), f.subarray(200)]);
    a.drv.w32(REG.TDT, 2); // two descriptors, no EOP yet
    assert.deepEqual(a.sent, []);
    assert.equal(drvB.r32(REG.TDH), 2);
    drvB.w32(REG.TDT, 3); // B processes the EOP descriptor and sends the whole packet
    assert.deepEqual(b.sent, [f]);
    assert.deepEqual(a.sent, []);
  });

  test("a checksum context loaded through one object is used by a packet sent through the other", () => {
    const { a, b, drvB } = twins();
    a.drv.reset();
    a.drv.setupTx(8);
    const reference = ipv4TcpFrame(pattern(500, 5));
    const f = reference.slice();
    f[24] = 0;
    f[25] = 0; // IP checksum left to the device
    setL4Checksum(f, "pseudo");
    // The context descriptor alone goes through A; the data through B: the context lives in the shared state.
    a.drv.queueContext({
      ipcss: 14,
      ipcso: 24,
      ipcse: 33,
      tucss: 34,
      tucso: 50,
      tucmd: TUCMD.TCP | TUCMD.IP,
    });
    a.drv.kick();
    a.drv.queueData([f.subarray(0, 54), f.subarray(54)], { popts: POPTS.IXSM | POPTS.TXSM });
    drvB.w32(REG.TDT, a.drv.txTail);
    assert.deepEqual(b.sent, [reference]);
    assert.deepEqual(a.dev.errorCounts(), {});
  });

  test("receive refused for want of buffers: the RDT write on the other object calls its backend's rxReady", () => {
    const state = E1000.createState({ mac: NIC_MAC });
    const mem = new GuestMemory(new SharedArrayBuffer(MEM_SIZE));
    // The I/O thread's object owns the real backend (a pair); the vCPU thread's object gets a proxy whose
    // rxReady wakes the I/O side, which offers the frames it kept to its own object.
    const [ioEnd, wire] = createPair();
    const io = new E1000({ state, mem, backend: ioEnd, irq: { set() {} } });
    let rxReadyCalls = 0;
    const proxy: NetBackend = {
      name: "proxy",
      send: () => true,
      attach() {},
      rxReady() {
        rxReadyCalls++;
        ioEnd.rxReady();
      },
      close() {},
    };
    const vcpu = new E1000({ state, mem, backend: proxy, irq: { set() {} } });
    const drv = new E1000Driver(vcpu, mem);
    drv.reset();
    drv.setupRx({ count: 8, post: 2 });
    const calls = rxReadyCalls;
    for (let i = 0; i < 5; i++) wire.send(toNic(i));
    assert.equal(drv.receive(false).length, 2, "two buffers, two frames; three kept by the backend");
    assert.equal(ioEnd.stats().queued, 3);
    drv.postRx(5);
    assert.equal(rxReadyCalls, calls + 1, "the RDT write called rxReady once");
    const rest = drv.receive(false);
    assert.deepEqual(
      rest.map((r) => r.data.subarray(0, 114)),
      [toNic(2), toNic(3), toNic(4)],
    );
    assert.equal(ioEnd.stats().queued, 0);
    assert.equal(drv.r32(STAT.MPC) > 0, true, "the refusals were counted");
    assert.equal(io.errorCounts().internal, undefined);
  });

  test("guest error counts are shared; each object logs a kind once", () => {
    const { a, b, drvB } = twins();
    a.drv.reset();
    a.drv.setupTx(8);
    a.drv.w32(REG.TDT, 100);
    drvB.w32(REG.TDT, 200);
    assert.equal(a.dev.errorCounts()["tx-ring-index"], 2);
    assert.deepEqual(b.dev.errorCounts(), a.dev.errorCounts());
    assert.equal(a.logs.filter((l) => l.includes("tx-ring-index")).length, 1);
    assert.equal(b.logs.filter((l) => l.includes("tx-ring-index")).length, 1);
    assert.equal(
      a.metrics.counter("e1000.error.tx-ring-index").value,
      1,
      "metrics count this object's share",
    );
  });

  test("timers armed through one object fire in the other's poll; nextDeadline agrees", () => {
    const { a, b } = twins();
    a.drv.reset();
    a.drv.setupTx(8);
    a.drv.w32(REG.TIDV, 100);
    a.drv.w32(REG.IMS, ICR.TXDW);
    a.drv.sendLegacy([fromNic(1)], { ide: true });
    assert.equal(a.dev.nextDeadline(), 100 * 1.024e-3);
    assert.equal(b.dev.nextDeadline(), 100 * 1.024e-3);
    a.clock.t = 0.2;
    b.dev.poll();
    assert.equal(b.irqLevel, true, "the I/O side's poll delivered TXDW");
    assert.equal(a.dev.nextDeadline(), undefined);
    assert.equal(a.drv.readIcr() & ICR.TXDW, ICR.TXDW);
  });

  test("close through one object stops the other", () => {
    const { a, b } = twins();
    a.drv.reset();
    a.drv.setupRx();
    a.drv.setupTx(8);
    b.dev.close();
    a.wire.send(toNic(1));
    assert.deepEqual(a.drv.receive(), []);
    a.drv.sendLegacy([fromNic(1)]);
    assert.deepEqual(a.sent, []);
  });
});

describe("e1000: onDeadlineChanged", () => {
  test("called after an access that moves the next deadline earlier, not when it moves later or clears", () => {
    let calls = 0;
    let seen: number | undefined;
    const nic = makeNic({
      onDeadlineChanged: () => {
        calls++;
        // Outside the lock: the callback may call back into the device.
        seen = nic.dev.nextDeadline();
      },
    });
    const { drv, clock } = nic;
    drv.reset();
    drv.setupTx(8);
    drv.w32(REG.TIDV, 100);
    drv.w32(REG.TADV, 1000);
    assert.equal(calls, 0);
    drv.sendLegacy([fromNic(1)], { ide: true });
    assert.equal(calls, 1, "TIDV armed: none -> 0.1024");
    assert.equal(seen, 100 * 1.024e-3);
    clock.t = 0.05;
    drv.sendLegacy([fromNic(2)], { ide: true });
    assert.equal(calls, 1, "TIDV re-armed later: the sleeper wakes early anyway and looks again");
    clock.t = 2;
    nic.dev.poll();
    assert.equal(calls, 1, "expired: nothing pending");
    // ITR holding an assertion back arms a deadline too.
    drv.w32(REG.ITR, 1000);
    drv.w32(REG.IMS, ICR.TXQE);
    drv.w32(REG.ICS, ICR.TXQE);
    drv.readIcr();
    drv.w32(REG.ICS, ICR.TXQE);
    assert.equal(calls, 2);
    assert.equal(seen, 2 + 0.256);
  });

  test("a frame received on the I/O side that arms RDTR reports it too", () => {
    let calls = 0;
    const nic = makeNic({ onDeadlineChanged: () => calls++ });
    nic.drv.reset();
    nic.drv.setupRx();
    nic.drv.w32(REG.RDTR, 50);
    nic.wire.send(toNic(1));
    assert.equal(calls, 1);
    assert.equal(nic.dev.nextDeadline(), 50 * 1.024e-3);
  });
});

describe("e1000: state", () => {
  test("createState validates the MAC; constructors refuse states that are not one", () => {
    assert.throws(() => E1000.createState({ mac: new Uint8Array(5) }), RangeError);
    const mem = new GuestMemory(new SharedArrayBuffer(4096));
    const [backend] = createPair();
    const irq = { set() {} };
    const make = (state: unknown) => new E1000({ state: state as SharedArrayBuffer, mem, backend, irq });
    assert.throws(() => make(new ArrayBuffer(E1000.STATE_BYTES)), E1000StateError);
    assert.throws(() => make(new SharedArrayBuffer(64)), E1000StateError);
    assert.throws(() => make(new SharedArrayBuffer(E1000.STATE_BYTES)), /not initialised/);
  });

  test("init: true is a power-on reset of a used state (the EEPROM contents are kept)", () => {
    const nic = makeNic({ mac: Uint8Array.of(2, 0, 0, 0, 0, 9) });
    nic.drv.w32(REG.RCTL, 0x8000);
    nic.dev.setLinkUp(false);
    const again = attachNic(nic.state, nic.mem, nic.clock, { init: true });
    assert.equal(again.drv.r32(REG.RCTL), 0);
    assert.equal(again.dev.linkUp, true);
    assert.equal(again.drv.eepromRead(2), 0x0900);
  });

  test("the default clock is process.hrtime (CLOCK_MONOTONIC) in milliseconds, the same in every thread", () => {
    const before = Number(process.hrtime.bigint()) / 1e6;
    const t = monotonicMs();
    const after = Number(process.hrtime.bigint()) / 1e6;
    assert.ok(before <= t && t <= after);
  });
});
