/**
 * Snapshot round-trips of the e1000: the device is driven by the register-level test driver (rings wrapped, a
 * transmit packet half assembled, a TSO packet half segmented across slices, receive timers armed), saved through
 * a state file and restored into a fresh E1000 over a fresh state, on the same guest memory, with another clock
 * (another host's monotonic time) and another backend. The restored NIC continues at its TDH/RDH: the rest of
 * the TSO packet goes out (every segment exactly once across the two NICs), the half-assembled packet completes,
 * received frames land in the next descriptors, timers fire at the same distance from "now". Also through
 * E1000Pci (PCI function and NIC together), and hostile states are refused before anything changes.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { E1000 } from "../../src/devices/e1000/e1000.ts";
import { MAX_TSO_PAYLOAD, MAX_TSO_SEGMENTS } from "../../src/devices/e1000/offload.ts";
import { E1000Pci } from "../../src/devices/e1000/pci.ts";
import { PCI_REG } from "../../src/devices/pci/config.ts";
import { createPair } from "../../src/net/pair.ts";
import type { DeviceState } from "../../src/shared/device-state.ts";
import {
  attachNic,
  E1000Driver,
  ethFrame,
  ICR,
  ipv4TcpFrame,
  makeNic,
  NIC_MAC,
  PEER_MAC,
  POPTS,
  pattern,
  REG,
  setL4Checksum,
  TCP_ACK,
  TUCMD,
  u32be,
} from "../helpers/e1000-driver.ts";
import { cloneState, throughFile } from "../helpers/snapshot.ts";

/** poll() while something is due at `now` (transmit work left pending is due at once). */
function pollDue(dev: E1000, now: number): void {
  for (let calls = 0; (dev.nextDeadline() ?? Number.POSITIVE_INFINITY) <= now; calls++) {
    dev.poll();
    if (calls > 100_000) assert.fail("poll() never finished");
  }
}

/** The driver's own state (next_to_use, next_to_clean...) lives in the guest: carried over to the new device. */
function driverFor(dev: E1000, old: E1000Driver): E1000Driver {
  const drv = new E1000Driver(dev, old.mem);
  Object.assign(drv, {
    txCount: old.txCount,
    rxCount: old.rxCount,
    rxBufSize: old.rxBufSize,
    txTail: old.txTail,
    rxNext: old.rxNext,
    rxTail: old.rxTail,
  });
  (drv as unknown as { txHeap: number }).txHeap = (old as unknown as { txHeap: number }).txHeap;
  return drv;
}

function queueTso(drv: E1000Driver, payload: number, mss: number, seq: number): number {
  drv.queueContext({
    ipcss: 14,
    ipcso: 24,
    ipcse: 33,
    tucss: 34,
    tucso: 50,
    tucmd: TUCMD.TSE | TUCMD.TCP | TUCMD.IP,
    paylen: payload,
    hdrlen: 54,
    mss,
  });
  const f = ipv4TcpFrame(pattern(0), { seq, flags: TCP_ACK }, { id: 1 });
  f[16] = 0;
  f[17] = 0;
  f[24] = 0;
  f[25] = 0;
  setL4Checksum(f, "pseudo-nolen", 14);
  const whole = new Uint8Array(54 + payload);
  whole.set(f.subarray(0, 54));
  whole.set(pattern(payload, 7), 54);
  return drv.queueData([whole], { tse: true, popts: POPTS.IXSM | POPTS.TXSM });
}

const toNic = (n: number) => ethFrame(NIC_MAC, PEER_MAC, 0x88b5, pattern(100 + n, n));
const fromNic = (n: number) => ethFrame(PEER_MAC, NIC_MAC, 0x88b5, pattern(60 + n, n));

describe("E1000 snapshot", () => {
  test("a TSO packet half sent goes on from its next segment; rings continue at TDH/RDH; timers are rebased", () => {
    const a = makeNic();
    a.drv.reset();
    a.drv.setupTx(16);
    a.drv.setupRx({ count: 16 });
    a.drv.w32(REG.IMS, ICR.TXDW | ICR.RXT0 | ICR.LSC);
    a.drv.w32(REG.RDTR, 1000); // receive delay timer: ~1 ms after a frame
    // 20 frames each way: both rings wrap.
    for (let i = 0; i < 20; i++) {
      a.drv.sendLegacy([fromNic(i)]);
      assert.ok(a.wire.send(toNic(i)));
      assert.equal(a.drv.receive().length, 1);
    }
    assert.equal(a.sent.length, 20);
    a.drv.readIcr();
    // A TSO packet of MAX_TSO_SEGMENTS segments: the first TDT write sends one slice and leaves the rest pending.
    const mss = 64;
    const eop = queueTso(a.drv, MAX_TSO_PAYLOAD, mss, 0x1000);
    a.drv.kick();
    const first = a.sent.length - 20;
    assert.ok(first > 0 && first < MAX_TSO_SEGMENTS, `${first} segments in the first slice`);
    // A received frame arms the receive delay timer (RXT0 after RDTR).
    a.clock.t = 5;
    assert.ok(a.wire.send(toNic(99)));
    // (RXT0 for the 20 frames before fired at t=5; cleared, so that the new frame's own timer is seen below.)
    a.drv.readIcr();
    assert.equal(a.dev.nextDeadline(), 5, "transmit work is pending now");

    const saved = throughFile(a.dev.saveState());
    // Another host: its monotonic clock is somewhere else entirely.
    const b = attachNic(E1000.createState({ mac: Uint8Array.of(2, 0, 0, 0, 0, 1) }), a.mem, { t: 1_000_000 });
    b.dev.restoreState(saved);
    const again = b.dev.saveState();
    assert.deepEqual(again, { ...saved, data: { ...saved.data, times: again.data.times } });
    // Timers at the same distance from now (to float precision: now + d - now on another clock).
    const times = (st: DeviceState) => st.data.times as Record<string, number | null>;
    for (const [name, d] of Object.entries(times(saved))) {
      const got: number | null = times(again)[name] ?? null;
      if (d === null) assert.equal(got, null, name);
      else assert.ok(got !== null && Math.abs(got - d) < 1e-6, `${name}: ${got} vs ${d}`);
    }
    assert.ok((times(saved).rxPacketTimer ?? 0) > 1, "the receive delay timer was armed");
    assert.equal(b.dev.nextDeadline(), 1_000_000, "the pending transmit work is due now on the new clock");
    assert.deepEqual(b.irqLevels, a.irqLevel ? [true] : [], "the line as saved");

    // The rest of the TSO packet goes out of the restored NIC, from the segment after the last one sent.
    pollDue(b.dev, b.clock.t);
    const segs = [...a.sent.slice(20), ...b.sent.filter((f) => f.length === 54 + mss)];
    assert.equal(segs.length, MAX_TSO_SEGMENTS, "every segment once, across the two NICs");
    assert.ok(
      segs.every((s, i) => u32be(s, 38) === 0x1000 + i * mss),
      "in order, none sent twice",
    );
    const drv = driverFor(b.dev, a.drv);
    assert.equal(drv.txDone(eop), true, "DD written back by the restored NIC");
    // The receive delay timer armed on the old host fires on the new one, 1.024 ms after "its" frame.
    const rxt = b.dev.nextDeadline() ?? 0;
    assert.ok(Math.abs(rxt - (1_000_000 + 1.024)) < 1e-6, `RDTR deadline ${rxt}`);
    assert.equal(drv.readIcr() & ICR.RXT0, 0, "not yet");
    b.clock.t += 2;
    pollDue(b.dev, b.clock.t);
    assert.equal(drv.readIcr() & ICR.RXT0, ICR.RXT0, "RXT0 once the delay passed");
    assert.equal(drv.r32(REG.TDH), drv.txTail);
    // Receive continues at RDH: the frame received before the snapshot, then new ones.
    const before = drv.receive();
    assert.equal(before.length, 1);
    assert.deepEqual(before[0]?.data.subarray(0, toNic(99).length), toNic(99));
    assert.ok(b.wire.send(toNic(100)));
    assert.deepEqual(drv.receive()[0]?.data.subarray(0, toNic(100).length), toNic(100));
    // And a plain frame out.
    b.sent.length = 0;
    drv.sendLegacy([fromNic(7)]);
    assert.deepEqual(b.sent, [fromNic(7)]);
    assert.deepEqual(b.dev.errorCounts(), {});
    // The MAC is the saved EEPROM's, not the fresh state's.
    assert.deepEqual(drv.macFromEeprom(), NIC_MAC);
  });

  test("a packet half assembled (no EOP yet) and the checksum context survive", () => {
    const a = makeNic();
    a.drv.reset();
    a.drv.setupTx(16);
    const f = fromNic(40);
    a.drv.sendLegacy([f.subarray(0, 30)], { noEop: true });
    assert.equal(a.sent.length, 0, "nothing sent without EOP");
    const saved = throughFile(a.dev.saveState());
    assert.equal((saved.data.words as Record<string, number>).txPacketActive, 1);
    assert.equal((saved.data.txBuffer as Uint8Array).length, 30);
    const b = attachNic(E1000.createState({ mac: NIC_MAC }), a.mem, { t: 0 });
    b.dev.restoreState(saved);
    const drv = driverFor(b.dev, a.drv);
    drv.sendLegacy([f.subarray(30)]);
    assert.deepEqual(
      b.sent,
      [f],
      "the first part came from the saved packet, the rest from the new descriptor",
    );
  });

  test("through E1000Pci: configuration space and NIC together; INTx asserted again", () => {
    const mem = makeNic().mem;
    const make = () => {
      const [end] = createPair();
      const levels: boolean[] = [];
      const nic = new E1000Pci({
        state: E1000Pci.createState({ mac: NIC_MAC }),
        mem,
        backend: end,
        intx: { set: (l) => levels.push(l) },
        now: () => 0,
      });
      return { nic, levels };
    };
    const a = make();
    a.nic.pci.configWrite(PCI_REG.COMMAND, 2, 0x0007); // I/O, memory, bus master
    a.nic.pci.setBarAddress(0, 0xfebc_0000);
    const drv = new E1000Driver(a.nic.nic, mem);
    drv.w32(REG.IMS, ICR.LSC);
    a.nic.nic.setLinkUp(false);
    assert.deepEqual(a.levels, [true]);
    const saved = throughFile(a.nic.saveState());
    const b = make();
    b.nic.restoreState(saved);
    assert.deepEqual(b.nic.saveState(), saved);
    assert.deepEqual(b.levels, [true]);
    assert.equal(b.nic.pci.barMapping(0), 0xfebc_0000);
    assert.equal(new E1000Driver(b.nic.nic, mem).readIcr() & ICR.LSC, ICR.LSC);
    assert.deepEqual(b.levels, [true, false], "reading ICR lowers the line on the restored NIC");
  });

  test("hostile states are refused before anything changes", () => {
    const a = makeNic();
    a.drv.reset();
    a.drv.setupTx(16);
    a.drv.setupRx({ count: 16 });
    const saved = a.dev.saveState();
    const b = attachNic(E1000.createState({ mac: NIC_MAC }), a.mem, { t: 0 });
    const before = b.dev.saveState();
    const regs = (s: DeviceState) => new DataView((s.data.regs as Uint8Array).buffer);
    const cases: Array<[string, (s: DeviceState) => void, RegExp]> = [
      [
        "TDH outside the ring",
        (s) => regs(s).setUint32(REG.TDH, 16, true),
        /transmit ring: head 16 is outside/,
      ],
      [
        "RDT outside the ring",
        (s) => regs(s).setUint32(REG.RDT, 40, true),
        /receive ring: tail 40 is outside/,
      ],
      [
        "RDLEN not a multiple of 128",
        (s) => regs(s).setUint32(REG.RDLEN, 100, true),
        /not a multiple of 128/,
      ],
      ["TDBAL unaligned", (s) => regs(s).setUint32(REG.TDBAL, 0x1004, true), /not 16-byte aligned/],
      [
        "a packet larger than the buffer",
        (s) => {
          (s.data.words as Record<string, number>).txPacketSize = 1 << 30;
        },
        /txPacketSize is 1073741824/,
      ],
      [
        "a segment past the count",
        (s) => {
          (s.data.words as Record<string, number>).txSegmentNext = 5;
        },
        /txSegmentNext is past txSegmentCount/,
      ],
      [
        "an EEPROM address past the part",
        (s) => {
          (s.data.eepromInterface as Record<string, number>).address = 64;
        },
        /address is 64/,
      ],
      [
        "a context field wider than its descriptor field",
        (s) => {
          (s.data.segmentationContext as Record<string, number>).mss = 0x10000;
        },
        /mss is 65536/,
      ],
      [
        "a negative counter",
        (s) => new DataView((s.data.stats as Uint8Array).buffer).setFloat64(8, -1, true),
        /counter 1 is -1/,
      ],
      ["a short register file", (s) => (s.data.regs = new Uint8Array(16)), /regs has 16 bytes/],
    ];
    for (const [what, tamper, message] of cases) {
      const s = cloneState(saved);
      tamper(s);
      assert.throws(() => b.dev.restoreState(s), { code: "VIREO_DEVICE_STATE", message }, what);
      assert.deepEqual(b.dev.saveState(), before, `${what}: nothing changed`);
    }
  });
});
