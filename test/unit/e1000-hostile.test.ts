import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { type E1000, E1000_TX_SLICE } from "../../src/devices/e1000/e1000.ts";
import { MAX_TSO_PAYLOAD, MAX_TSO_SEGMENTS } from "../../src/devices/e1000/offload.ts";
import type { GuestMemory } from "../../src/memory/guest-memory.ts";
import {
  attachNic,
  type E1000Driver,
  ethFrame,
  ICR,
  ipv4HeaderOk,
  ipv4TcpFrame,
  l4ChecksumOk,
  MEM_SIZE,
  makeNic,
  NIC_MAC,
  PEER_MAC,
  POPTS,
  pattern,
  RCTL,
  REG,
  STAT,
  setL4Checksum,
  TCP_ACK,
  TCP_FIN,
  TCP_PSH,
  TCTL_EN,
  TCTL_PSP,
  TUCMD,
  u32be,
} from "../helpers/e1000-driver.ts";

function txReady(count = 16, opts: Parameters<typeof makeNic>[0] = {}) {
  const nic = makeNic(opts);
  nic.drv.reset();
  nic.drv.setupTx(count);
  return nic;
}

function rxReady(o: Parameters<ReturnType<typeof makeNic>["drv"]["setupRx"]>[0] = {}) {
  const nic = makeNic();
  nic.drv.reset();
  nic.drv.setupRx(o);
  return nic;
}

const frame = (n = 1) => ethFrame(PEER_MAC, NIC_MAC, 0x88b5, pattern(100, n));
const toNic = (len = 100) => ethFrame(NIC_MAC, PEER_MAC, 0x88b5, pattern(len));

/** A raw 16-byte legacy descriptor. */
function legacyDesc(addr: bigint, len: number, cmd: number): Uint8Array {
  const d = new Uint8Array(16);
  const v = new DataView(d.buffer);
  v.setBigUint64(0, addr, true);
  v.setUint16(8, len, true);
  d[11] = cmd;
  return d;
}

describe("e1000 against a hostile guest: transmit ring", () => {
  test("TDT beyond the ring: logged, nothing processed; fixing TDT recovers", () => {
    const { drv, dev, sent, logs } = txReady(8);
    drv.queueLegacy([frame()]);
    drv.w32(REG.TDT, 200);
    drv.w32(REG.TDT, 9);
    assert.equal(sent.length, 0);
    assert.equal(drv.r32(REG.TDH), 0);
    assert.equal(dev.errorCounts()["tx-ring-index"], 2);
    assert.equal(logs.filter((l) => l.includes("tx-ring-index")).length, 1, "logged once per kind");
    drv.kick();
    assert.equal(sent.length, 1);
  });

  test("TDT or TDH equal to the ring size (one past the last descriptor) is outside the ring too", () => {
    const { drv, dev, sent } = txReady(8);
    drv.queueLegacy([frame()]);
    drv.w32(REG.TDT, 8);
    assert.equal(sent.length, 0);
    assert.equal(drv.r32(REG.TDH), 0);
    assert.equal(dev.errorCounts()["tx-ring-index"], 1);
    drv.w32(REG.TDH, 8);
    drv.w32(REG.TDT, 1);
    assert.equal(sent.length, 0);
    assert.equal(drv.r32(REG.TDH), 8, "nothing was fetched from past the ring's end");
    assert.equal(dev.errorCounts()["tx-ring-index"], 2);
    drv.w32(REG.TDH, 0);
    assert.equal(sent.length, 0);
    drv.w32(REG.TDT, 1);
    assert.deepEqual(sent, [frame()]);
    assert.equal(dev.errorCounts()["tx-ring-index"], 2);
  });

  test("TDLEN not a multiple of 128 is logged and its low bits ignored; TDLEN 0 processes nothing", () => {
    const { drv, dev, sent, metrics } = txReady(8);
    drv.w32(REG.TDLEN, 8 * 16 + 5);
    assert.equal(drv.r32(REG.TDLEN), 128);
    assert.equal(dev.errorCounts()["tx-ring-len"], 1);
    drv.w32(REG.TDLEN, 0);
    drv.queueLegacy([frame()]);
    drv.kick();
    assert.equal(sent.length, 0);
    assert.equal(dev.errorCounts()["tx-ring-empty"], 1);
    assert.equal(metrics.counter("e1000.error.tx-ring-empty").value, 1);
  });

  test("a descriptor ring outside guest RAM: logged, no exception, nothing sent", () => {
    const { drv, dev, sent } = txReady(8);
    drv.w32(REG.TDBAL, 0xfffff000);
    drv.w32(REG.TDBAH, 0xffffffff);
    drv.w32(REG.TDT, 3);
    assert.equal(sent.length, 0);
    assert.equal(dev.errorCounts()["tx-ring-dma"], 1);
    // A ring that starts inside RAM but runs off its end.
    drv.w32(REG.TDBAH, 0);
    drv.w32(REG.TDBAL, MEM_SIZE - 32);
    drv.w32(REG.TDT, 4);
    assert.equal(drv.r32(REG.TDH), 2, "the two descriptors inside RAM were consumed");
    assert.equal(dev.errorCounts()["tx-ring-dma"], 2);
  });

  test("buffers outside guest RAM (or at 2^63) drop their packet; DD is still written; the next packet is fine", () => {
    const { drv, dev, sent, mem } = txReady(8);
    const a = drv.putRawTx(legacyDesc(BigInt(MEM_SIZE - 10), 100, 0x0b));
    const b = drv.putRawTx(legacyDesc(1n << 63n, 100, 0x0b));
    const before = mem.bytes.slice();
    drv.kick();
    assert.equal(sent.length, 0);
    assert.equal(dev.errorCounts()["tx-dma"], 2);
    assert.equal(drv.txDone(a), true);
    assert.equal(drv.txDone(b), true);
    // Only the two status bytes changed in guest memory.
    const changed = [...mem.bytes].flatMap((v, i) => (v !== before[i] ? [i] : []));
    assert.deepEqual(changed, [drv.txDescAddr(a) + 12, drv.txDescAddr(b) + 12]);
    drv.sendLegacy([frame(2)]);
    assert.equal(sent.length, 1);
  });

  test("a chain without EOP running around the whole ring is dropped once it exceeds the ring; then TX recovers", () => {
    const { drv, dev, sent, logs } = txReady(8);
    for (let round = 0; round < 5; round++) {
      for (let k = 0; k < 7; k++) drv.putRawTx(legacyDesc(BigInt(drv.stage(pattern(64))), 64, 0x02));
      drv.kick();
    }
    assert.equal(sent.length, 0);
    assert.equal(dev.errorCounts()["tx-no-eop"], 1);
    assert.equal(logs.filter((l) => l.includes("tx-no-eop")).length, 1);
    // The next EOP ends the dropped packet; the packet after it goes out intact.
    drv.sendLegacy([frame(3)]);
    assert.equal(sent.length, 0);
    drv.sendLegacy([frame(4)]);
    assert.deepEqual(sent, [frame(4)]);
  });

  test("a packet larger than 16 KiB is dropped, not assembled without bound", () => {
    const { drv, dev, sent } = txReady(16);
    const big = pattern(4096);
    drv.sendLegacy([big, big, big, big, big]);
    assert.equal(sent.length, 0);
    assert.equal(dev.errorCounts()["tx-oversize"], 1);
  });

  test("a reserved extended descriptor type is skipped and counted", () => {
    const { drv, dev, sent } = txReady(8);
    const d = new Uint8Array(16);
    new DataView(d.buffer).setUint32(8, (0xf << 20) | ((0x20 | 0x08 | 0x01) << 24), true);
    const i = drv.putRawTx(d);
    drv.kick();
    assert.equal(dev.errorCounts()["tx-desc-type"], 1);
    assert.equal(drv.txDone(i), true);
    assert.equal(sent.length, 0);
  });

  test("an EOP with no data is dropped", () => {
    const { drv, dev, sent } = txReady(8);
    drv.putRawTx(legacyDesc(0n, 0, 0x0b));
    drv.kick();
    assert.equal(sent.length, 0);
    assert.equal(dev.errorCounts()["tx-empty-packet"], 1);
  });
});

describe("e1000 against a hostile guest: TCP segmentation", () => {
  const tsoCtx = {
    ipcss: 14,
    ipcso: 24,
    ipcse: 33,
    tucss: 34,
    tucso: 50,
    paylen: 2000,
    tucmd: TUCMD.TSE | TUCMD.TCP | TUCMD.IP,
  };

  for (const [name, ctx, kind] of [
    ["MSS 0", { ...tsoCtx, hdrlen: 54, mss: 0 }, "tso-mss-zero"],
    [
      "header length beyond the packet",
      { ...tsoCtx, hdrlen: 200, mss: 1000, paylen: 100 },
      "tso-header-length",
    ],
    ["header length 0", { ...tsoCtx, hdrlen: 0, mss: 1000 }, "tso-header-length"],
    ["TCP header not inside HDRLEN", { ...tsoCtx, hdrlen: 40, mss: 1000 }, "tso-header-length"],
    ["MSS + HDRLEN over 16 KiB", { ...tsoCtx, hdrlen: 54, mss: 65000 }, "tso-mss-too-big"],
    ["MSS 1 on a large payload", { ...tsoCtx, hdrlen: 54, mss: 1, paylen: 5000 }, "tso-too-many-segments"],
  ] as const) {
    test(`${name}: dropped, logged, TSCTFC counted`, () => {
      const { drv, dev, sent } = txReady(16);
      const pkt = ipv4TcpFrame(pattern(ctx.paylen));
      drv.queueContext(ctx);
      drv.queueData([pkt.subarray(0, 100), pkt.subarray(100)], { tse: true, popts: POPTS.IXSM | POPTS.TXSM });
      drv.kick();
      assert.equal(sent.length, 0);
      assert.equal(dev.errorCounts()[kind], 1);
      assert.equal(drv.r32(STAT.TSCTFC) >= 1, true);
      drv.sendLegacy([frame()]);
      assert.equal(sent.length, 1, "transmit still works");
    });
  }

  test("segmentation data without a segmentation context is dropped", () => {
    const { drv, dev, sent } = txReady(8);
    drv.queueData([ipv4TcpFrame(pattern(100))], { tse: true, popts: POPTS.TXSM });
    drv.kick();
    assert.equal(sent.length, 0);
    assert.equal(dev.errorCounts()["tso-no-context"], 1);
  });

  test("checksum offsets outside the packet: counted, frame sent without that checksum", () => {
    const { drv, dev, sent } = txReady(8);
    const f = frame();
    drv.queueContext({ ipcss: 14, ipcso: 250, tucss: 34, tucso: 50, tucmd: TUCMD.TCP });
    drv.queueData([f], { popts: POPTS.IXSM | POPTS.TXSM });
    drv.kick();
    assert.equal(sent.length, 1);
    assert.equal(dev.errorCounts()["tx-csum-range"], 1);
  });
});

describe("e1000 against a hostile guest: receive ring", () => {
  test("RDT beyond the ring: logged, the frame stays queued in the backend, nothing written", () => {
    const { drv, dev, wire } = rxReady({ count: 8 });
    drv.w32(REG.RDT, 100);
    wire.send(toNic());
    assert.equal(dev.errorCounts()["rx-ring-index"], 1);
    assert.equal(wire.peer.stats().queued, 1);
    assert.equal(drv.r32(REG.RDH), 0);
    drv.w32(REG.RDT, 7);
    assert.equal(drv.receive().length, 1, "delivered once the ring is sane");
  });

  test("RDT or RDH equal to the ring size is outside the ring: nothing written, the frame waits", () => {
    const { drv, dev, wire, mem } = rxReady({ count: 8 });
    drv.w32(REG.RDT, 8);
    const before = mem.bytes.slice();
    wire.send(toNic());
    assert.equal(dev.errorCounts()["rx-ring-index"], 1);
    assert.equal(wire.peer.stats().queued, 1);
    drv.w32(REG.RDH, 8);
    drv.w32(REG.RDT, 7); // offers the frame again
    assert.equal(dev.errorCounts()["rx-ring-index"], 2);
    assert.equal(wire.peer.stats().queued, 1);
    assert.deepEqual(mem.bytes, before, "no descriptor or buffer written");
    drv.w32(REG.RDH, 0);
    drv.w32(REG.RDT, 7);
    assert.equal(drv.receive().length, 1, "delivered once the ring is sane");
  });

  test("RDLEN 0 with the receiver on: frames wait in the backend, logged", () => {
    const { drv, dev, wire } = rxReady({ count: 8 });
    drv.w32(REG.RDLEN, 0);
    wire.send(toNic());
    assert.equal(dev.errorCounts()["rx-ring-empty"], 1);
    assert.equal(wire.peer.stats().queued, 1);
  });

  test("receive buffers outside guest RAM: the frame is dropped before anything is written", () => {
    const { drv, dev, wire, mem } = rxReady({ count: 8, rctl: RCTL.BAM | (3 << 16), bufSize: 256 });
    // Second buffer of the frame points past the end of RAM.
    mem.writeU64(drv.rxDescAddr(1), BigInt(MEM_SIZE - 100));
    const before = mem.bytes.slice();
    wire.send(toNic(600));
    assert.equal(dev.errorCounts()["rx-dma"], 1);
    assert.deepEqual(mem.bytes, before, "no partial write");
    assert.equal(drv.r32(REG.RDH), 0);
    mem.writeU64(drv.rxDescAddr(1), 1n << 62n);
    wire.send(toNic(600));
    assert.equal(dev.errorCounts()["rx-dma"], 2);
  });

  test("a receive ring outside guest RAM drops frames with a log", () => {
    const { drv, dev, wire } = rxReady({ count: 8 });
    drv.w32(REG.RDBAL, MEM_SIZE);
    wire.send(toNic());
    assert.equal(dev.errorCounts()["rx-ring-dma"], 1);
    assert.equal(wire.peer.stats().queued, 0, "dropped, not stuck");
  });

  test("a frame needing more buffers than the ring can ever offer is dropped instead of blocking the queue", () => {
    const { drv, dev, wire } = rxReady({ count: 8, rctl: RCTL.BAM | RCTL.LPE | (3 << 16), bufSize: 256 });
    wire.send(toNic(3000));
    wire.send(toNic(60));
    assert.equal(dev.errorCounts()["rx-frame-exceeds-ring"], 1);
    const got = drv.receive();
    assert.equal(got.length, 1);
    assert.equal(got[0]?.data.length, 14 + 60 + 4);
  });
});

describe("e1000 against a hostile guest: fuzz", () => {
  function prng(seed0: number): (n: number) => number {
    let seed = seed0;
    return (n) => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return (seed >>> 8) % n;
    };
  }

  test("random descriptors on sane rings: offload paths survive garbage, traffic still flows", () => {
    const rnd = prng(0xc0ffee);
    const nic = makeNic();
    const { drv, dev, wire } = nic;
    drv.reset();
    drv.setupTx(16);
    drv.setupRx({ count: 16 });
    drv.w32(REG.RXCSUM, 0x300);
    for (let i = 0; i < 5000; i++) {
      const op = rnd(10);
      if (op < 4) {
        const d = new Uint8Array(16).map(() => rnd(256));
        const v = new DataView(d.buffer);
        const len = rnd(4) === 0 ? rnd(0x10000) : rnd(1600);
        const addr =
          rnd(5) === 0 ? BigInt(rnd(MEM_SIZE + 0x10000)) : BigInt(drv.stage(pattern(Math.min(len, 2000), i)));
        v.setBigUint64(0, addr, true);
        const kind = rnd(3);
        if (kind === 0) {
          v.setUint16(8, len, true);
          d[11] = (d[11] as number) & ~0x20; // legacy
        } else {
          const cmd = ((d[11] as number) | 0x20) & (rnd(3) === 0 ? 0xff : ~0x04);
          v.setUint32(8, (len & 0xfffff) | (kind === 1 ? 0 : 1 << 20) | (cmd << 24), true);
          if (kind === 1) {
            d[13] = rnd(3) === 0 ? rnd(256) : 54; // HDRLEN
            v.setUint16(14, rnd(3) === 0 ? rnd(0x10000) : rnd(1500), true); // MSS
            d[0] = rnd(3) ? 14 : rnd(256);
            d[4] = rnd(3) ? 34 : rnd(256);
          }
        }
        drv.putRawTx(d);
        if (rnd(2)) drv.kick();
      } else if (op < 6) {
        const len = 14 + rnd(1600);
        const f = pattern(len, i);
        f.set(rnd(4) ? NIC_MAC : Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0xff, 0xff), 0);
        if (len > 40 && rnd(2)) {
          f[12] = 0x08;
          f[13] = 0x00;
          f[14] = 0x45;
        }
        wire.send(f);
      } else if (op < 8) {
        drv.receive();
      } else if (op < 9) {
        const regs = [REG.RXCSUM, REG.ITR, REG.RDTR, REG.RADV, REG.TIDV, REG.TADV, REG.VET, REG.IMS, REG.IMC];
        drv.w32(regs[rnd(regs.length)] as number, rnd(0x10000));
      } else {
        nic.clock.t += rnd(100) / 1000;
        dev.poll();
        drv.readIcr();
      }
    }
    const errors = dev.errorCounts();
    assert.equal(errors.internal, undefined, JSON.stringify(errors));
    assert.equal(errors.dma, undefined, JSON.stringify(errors));
    assert.ok(nic.sent.length > 100, `frames sent: ${nic.sent.length}`);
    assert.ok(nic.sent.every((f) => f.length <= 16384 + 4));
    assert.ok(nic.metrics.counter("e1000.rx.frames").value > 100);
    assert.ok(Object.keys(errors).length >= 3, JSON.stringify(errors));
  });

  test("random register values, accesses of every size, descriptors and frames: no exception or internal error", () => {
    const rnd = prng(0x1234567);
    const nic = makeNic();
    const { drv, dev, wire, mem } = nic;
    drv.reset();
    drv.setupTx(8);
    drv.setupRx({ count: 8 });
    const hot = [
      REG.CTRL,
      REG.EECD,
      REG.EERD,
      REG.MDIC,
      REG.ICR,
      REG.ICS,
      REG.IMS,
      REG.IMC,
      REG.ITR,
      REG.RCTL,
      REG.TCTL,
      REG.RDBAL,
      REG.RDBAH,
      REG.RDLEN,
      REG.RDH,
      REG.RDT,
      REG.RDTR,
      REG.RADV,
      REG.TDBAL,
      REG.TDBAH,
      REG.TDLEN,
      REG.TDH,
      REG.TDT,
      REG.TIDV,
      REG.TADV,
      REG.RXCSUM,
      REG.VET,
    ];
    const specials = [0, 1, 0xffffffff, 0x80000000, MEM_SIZE - 16, MEM_SIZE, 0x1000, 0x20000, 128, 8, 0xffff];
    for (let i = 0; i < 10000; i++) {
      const op = rnd(10);
      const value = rnd(2)
        ? (specials[rnd(specials.length)] as number)
        : (rnd(0x10000) * 0x10000 + rnd(0x10000)) >>> 0;
      if (op < 4) {
        const reg = hot[rnd(hot.length)] as number;
        // Keep global reset rare so the rings get exercised.
        drv.w32(reg, reg === REG.CTRL ? value & ~(1 << 26) : value);
      } else if (op < 5) {
        const size = [1, 2, 4, 8][rnd(4)] as number;
        const d = new Uint8Array(size).map(() => rnd(256));
        if (rnd(2)) dev.write(rnd(0x20010), d);
        else dev.read(rnd(0x20010), d);
        if (rnd(2)) dev.io.write(rnd(0x40), d);
        else dev.io.read(rnd(0x40), d);
      } else if (op < 7) {
        const base = rnd(2) ? drv.txDescAddr(rnd(8)) : drv.rxDescAddr(rnd(8));
        const d = new Uint8Array(16).map(() => rnd(256));
        if (rnd(2)) new DataView(d.buffer).setBigUint64(0, BigInt(rnd(MEM_SIZE + 4096)), true);
        mem.write(base, d);
      } else if (op < 9) {
        const len = rnd(3) === 0 ? rnd(20) : 14 + rnd(2000);
        const f = pattern(len, i);
        if (len >= 6 && rnd(2)) f.set(NIC_MAC, 0);
        wire.send(f);
      } else {
        nic.clock.t += rnd(100) / 1000;
        dev.poll();
        drv.r32(REG.ICR);
      }
    }
    const errors = dev.errorCounts();
    assert.equal(errors.internal, undefined, JSON.stringify(errors));
    assert.equal(errors.dma, undefined, "every DMA failure was caught where it happened");
    // Still alive: a clean setup sends and receives.
    drv.reset();
    drv.setupTx(8);
    drv.setupRx({ count: 8 });
    nic.sent.length = 0;
    drv.sendLegacy([frame(9)]);
    assert.deepEqual(nic.sent, [frame(9)]);
  });
});

describe("e1000 interrupt line under a hostile guest", () => {
  test("ICS with reserved bits sets only defined causes", () => {
    const { drv } = makeNic();
    drv.w32(REG.ICS, 0xffffffff);
    assert.equal(drv.readIcr(), 0x1ffff);
    drv.w32(REG.IMS, 0xffffffff);
    assert.equal(drv.r32(REG.IMS), 0x1ffff);
    drv.w32(REG.ICS, ICR.TXDW);
    assert.equal(drv.readIcr(), ICR.TXDW);
  });

  test("TCTL.EN toggling with a bogus ring does not throw", () => {
    const { drv, dev } = txReady(8);
    drv.w32(REG.TDBAL, 0xfffffff0);
    drv.w32(REG.TDT, 5);
    drv.w32(REG.TCTL, 0);
    drv.w32(REG.TCTL, TCTL_EN);
    assert.ok((dev.errorCounts()["tx-ring-dma"] ?? 0) >= 1);
  });
});

/** The TSO prototype header e1000_tso hands over: tot_len and IP checksum 0, TCP checksum seeded without length. */
function tsoHeader(seq: number, id: number): Uint8Array {
  const f = ipv4TcpFrame(pattern(0), { seq, flags: TCP_ACK | TCP_PSH | TCP_FIN }, { id });
  f[16] = 0;
  f[17] = 0;
  f[24] = 0;
  f[25] = 0;
  setL4Checksum(f, "pseudo-nolen", 14);
  return f.subarray(0, 54);
}

function u32le(b: Uint8Array, off: number): number {
  return new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(off, true);
}

/** Posts `n` legacy one-descriptor frames of `len` bytes at the ring's tail (not kicked); frame k begins with k. */
function postFlood(drv: E1000Driver, mem: GuestMemory, n: number, len: number): void {
  const at = drv.stage(new Uint8Array(len + 16 * n).fill(0x5a));
  for (let k = 0; k < n; k++) {
    mem.writeU32(at + 16 * k, k);
    const d = new Uint8Array(16);
    const v = new DataView(d.buffer);
    v.setBigUint64(0, BigInt(at + 16 * k), true);
    v.setUint16(8, len, true);
    d[11] = 0x0b; // EOP | IFCS | RS
    drv.putRawTx(d);
  }
}

/** True if `frames` are exactly frames 0..n-1 of postFlood, in order. */
function inOrder(frames: Uint8Array[], n: number, len: number): boolean {
  return frames.length === n && frames.every((f, k) => f.length === len && u32le(f, 0) === k);
}

/** poll() until nothing is due; returns how many calls that took. */
function pollAll(dev: E1000): number {
  let calls = 0;
  while (dev.nextDeadline() !== undefined) {
    dev.poll();
    if (++calls > 100_000) assert.fail("poll() never finished the ring");
  }
  return calls;
}

/** A TSO packet of `payload` bytes at MSS `mss` (context and two data descriptors); returns the EOP index. */
/** With `whole`, header and payload in one data descriptor, else in two. */
function queueTso(drv: E1000Driver, payload: number, mss: number, seq = 0, whole = false): number {
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
  const hdr = tsoHeader(seq, 1);
  const data = pattern(payload, 7);
  const whole1 = new Uint8Array(hdr.length + data.length);
  whole1.set(hdr);
  whole1.set(data, hdr.length);
  return drv.queueData(whole ? [whole1] : [hdr, data], { tse: true, popts: POPTS.IXSM | POPTS.TXSM });
}

describe("e1000 against a hostile guest: transmit in slices, the rest continued later", () => {
  test("legitimate traffic flows during and after a flood: frames received meanwhile, then ordinary frames and a 64 KiB TSO packet go out within their TDT write", () => {
    const { drv, dev, mem, sent, wire } = txReady(2048);
    drv.setupRx({ count: 16 });
    postFlood(drv, mem, 2047, 16384);
    drv.kick();
    assert.ok(sent.length > 0 && sent.length < 2047, `one TDT write sent ${sent.length} of 2047`);
    // Receive is not held up by the transmit backlog (each received frame also moves it on by a slice).
    const toNic = ethFrame(NIC_MAC, PEER_MAC, 0x88b5, pattern(200, 4));
    wire.send(toNic);
    const got = drv.receive();
    assert.equal(got.length, 1);
    assert.deepEqual(got[0]?.data.subarray(0, toNic.length), toNic);
    pollAll(dev);
    assert.ok(inOrder(sent, 2047, 16384), "every flood frame once, in order");
    assert.equal(drv.r32(REG.TDH), drv.txTail);

    // Ordinary traffic afterwards: each TDT write does all its work at once, nothing is left pending.
    sent.length = 0;
    const f = ethFrame(PEER_MAC, NIC_MAC, 0x88b5, pattern(1000, 5));
    drv.sendLegacy([f]);
    assert.deepEqual(sent, [f]);
    queueTso(drv, 65536 - 54, 1448, 1000);
    drv.kick();
    assert.equal(sent.length, 1 + Math.ceil((65536 - 54) / 1448));
    assert.ok(
      sent.slice(1).every((s) => ipv4HeaderOk(s) && l4ChecksumOk(s)),
      "segment checksums",
    );
    // A burst of 100 MTU-sized frames fits in one slice.
    sent.length = 0;
    postFlood(drv, mem, 100, 1514);
    drv.kick();
    assert.ok(inOrder(sent, 100, 1514), `a 100-frame burst went out in its TDT write (${sent.length})`);
    assert.equal(dev.nextDeadline(), undefined);
    assert.deepEqual(dev.errorCounts(), {});
  });

  test("a TSO packet whose segments span slices: TDH stays on its EOP descriptor; DD and TXQE come with the last segment", () => {
    const { drv, dev, sent } = txReady(16);
    const mss = 64;
    // One data descriptor of 54 + 256 KiB: more than a slice may read, but nothing was read before it, so it is.
    const eop = queueTso(drv, MAX_TSO_PAYLOAD, mss, 0x10000, true);
    drv.kick();
    assert.equal(sent.length, E1000_TX_SLICE.frames, "segments in one write: the frame budget ended it");
    assert.equal(drv.txDone(eop), false, "no write-back before the last segment");
    assert.notEqual(dev.nextDeadline(), undefined);
    // A register read continues by one slice and shows TDH still on the EOP descriptor.
    assert.equal(drv.r32(REG.TDH), eop);
    assert.ok(sent.length <= 2 * E1000_TX_SLICE.frames, `${sent.length} segments after two calls`);
    assert.equal(drv.readIcr() & ICR.TXQE, 0, "the ring is not empty yet");
    pollAll(dev);
    assert.equal(sent.length, MAX_TSO_SEGMENTS);
    assert.ok(
      sent.every((s, i) => s.length === 54 + mss && u32be(s, 38) === 0x10000 + i * mss),
      "every segment once, in order",
    );
    assert.equal(drv.txDone(eop), true);
    assert.equal(drv.r32(REG.TDH), drv.txTail);
    assert.equal(drv.readIcr() & (ICR.TXQE | ICR.TXDW), ICR.TXQE | ICR.TXDW);
    assert.equal(drv.r32(STAT.TSCTC), 1);
    assert.deepEqual(dev.errorCounts(), {});
  });

  test("TDH written while a TSO packet is half sent drops the rest of it; so does a global reset", () => {
    const { drv, dev, sent } = txReady(16);
    const eop = queueTso(drv, MAX_TSO_PAYLOAD, 64);
    drv.kick();
    drv.w32(REG.TDH, drv.txTail); // its own slice first, then the ring is repositioned
    const before = sent.length;
    assert.ok(before < MAX_TSO_SEGMENTS, `${before} segments sent before TDH was written`);
    pollAll(dev);
    assert.equal(sent.length, before, "nothing more of the dropped packet");
    assert.equal(drv.txDone(eop), false);
    const f = ethFrame(PEER_MAC, NIC_MAC, 0x88b5, pattern(100, 6));
    drv.sendLegacy([f]);
    assert.deepEqual(sent.at(-1), f, "the next packet goes out whole");

    queueTso(drv, MAX_TSO_PAYLOAD, 64);
    drv.kick();
    drv.reset();
    assert.equal(dev.nextDeadline(), undefined, "the continuation went with the reset");
    const after = sent.length;
    dev.poll();
    assert.equal(sent.length, after);
  });

  test("the continuation is shared state: a TDT write on a vCPU's object wakes the I/O thread, whose object sends the rest through its own backend", () => {
    let wakes = 0;
    const vcpu = txReady(1024, { onDeadlineChanged: () => wakes++ });
    const io = attachNic(vcpu.state, vcpu.mem, vcpu.clock);
    postFlood(vcpu.drv, vcpu.mem, 1023, 60);
    vcpu.drv.kick();
    assert.equal(wakes, 1);
    assert.ok(
      vcpu.sent.length > 0 && vcpu.sent.length <= E1000_TX_SLICE.descriptors,
      `${vcpu.sent.length} frames in the TDT write`,
    );
    const slices = pollAll(io.dev);
    assert.ok(slices >= 2, `${slices} poll() slices`);
    assert.ok(
      inOrder([...vcpu.sent, ...io.sent], 1023, 60),
      "each frame once, in order, across both objects",
    );
    assert.equal(vcpu.drv.r32(REG.TDH), 1023);
  });

  test("without an I/O thread, a driver that keeps touching the registers moves the ring on, a slice per access", () => {
    const { drv, mem, sent } = txReady(1024);
    postFlood(drv, mem, 1023, 60);
    drv.kick();
    let reads = 0;
    while (sent.length < 1023 && reads < 100) {
      drv.r32(REG.STATUS);
      reads++;
    }
    assert.ok(inOrder(sent, 1023, 60), `${sent.length} frames, each once in order?`);
    assert.ok(reads >= Math.ceil(1023 / E1000_TX_SLICE.descriptors) - 1, `${reads} register reads`);
  });

  test("a budget ends a slice exactly where it runs out (descriptors, bytes read, frames); a packet cut there is completed next", () => {
    // Descriptors: context descriptors with RS send nothing; DD shows which were fetched.
    const a = txReady(1024);
    for (let k = 0; k < 1023; k++) a.drv.queueContext({ tucss: 34, tucso: 50, tucmd: TUCMD.TCP, rs: true });
    a.drv.kick();
    let fetched = 0;
    for (let k = 0; k < 1023; k++) fetched += a.drv.txDone(k) ? 1 : 0;
    assert.equal(fetched, E1000_TX_SLICE.descriptors, "descriptors fetched by one TDT write");
    assert.equal(a.sent.length, 0);
    // Bytes read: 10000-byte frames; the one that would overrun the slice waits for the next.
    const b = txReady(256);
    postFlood(b.drv, b.mem, 255, 10000);
    b.drv.kick();
    assert.equal(b.sent.length, Math.floor(E1000_TX_SLICE.bytes / 10000), "10000-byte frames in one write");
    // Bytes read, to the byte: 16 KiB frames fill the slice exactly (the last one fits the bytes left).
    const b2 = txReady(256);
    postFlood(b2.drv, b2.mem, 255, 16384);
    b2.drv.kick();
    assert.equal(b2.sent.length, E1000_TX_SLICE.bytes / 16384, "16 KiB frames in one write");
    // A context descriptor reads no buffer (its PAYLEN is no length to read): it is not held back with the frames.
    const b3 = txReady(64);
    postFlood(b3.drv, b3.mem, 26, 10000);
    const ctxAt = b3.drv.queueContext({ tucmd: TUCMD.TSE | TUCMD.TCP, paylen: 0xfffff, rs: true });
    postFlood(b3.drv, b3.mem, 1, 10000);
    b3.drv.kick();
    assert.equal(b3.sent.length, 26);
    assert.equal(b3.drv.txDone(ctxAt), true, "the context descriptor was fetched in the same slice");
    // Data descriptors past 64 KiB: the second TSO packet's 200000-byte payload waits for the next slice.
    const e = txReady(16);
    queueTso(e.drv, 200000, 8000);
    queueTso(e.drv, 200000, 8000);
    e.drv.kick();
    assert.equal(e.sent.length, 200000 / 8000, "one TSO packet's segments in one write");
    // Packets of three descriptors: the 256 descriptors hold 85 of them and the first third of the next, which the
    // next slice completes from the shared state. (The frame budget alone ends a TSO slice: see the test above.)
    const c = txReady(1024);
    const pkt = ethFrame(PEER_MAC, NIC_MAC, 0x88b5, pattern(46, 8));
    for (let k = 0; k < 341; k++)
      c.drv.queueLegacy([pkt.subarray(0, 20), pkt.subarray(20, 40), pkt.subarray(40)]);
    c.drv.kick();
    assert.equal(
      c.sent.length,
      Math.floor(E1000_TX_SLICE.descriptors / 3),
      "3-descriptor frames in one write",
    );
    // Frames: a TSO packet of exactly 256 segments spends the frame budget; the frames behind it wait.
    const d = txReady(64);
    queueTso(d.drv, E1000_TX_SLICE.frames * 64, 64);
    for (let k = 0; k < 10; k++) d.drv.queueLegacy([pkt]);
    d.drv.kick();
    assert.equal(d.sent.length, E1000_TX_SLICE.frames, "frames sent by one TDT write");
    for (const nic of [a, b, b2, b3, c, d, e]) {
      pollAll(nic.dev);
      assert.equal(nic.drv.r32(REG.TDH), nic.drv.txTail);
    }
    assert.equal(b.sent.length, 255);
    assert.equal(c.sent.length, 341);
    assert.equal(d.sent.length, E1000_TX_SLICE.frames + 10);
    assert.equal(b2.sent.length, 255);
    assert.equal(e.sent.length, 2 * (200000 / 8000));
    assert.ok(
      c.sent.every((f) => f.length === 60 && f.every((x, i) => x === pkt[i])),
      "every frame whole, the one cut between slices too",
    );
  });

  test("setting TCTL.EN over a full ring does one slice too", () => {
    const { drv, dev, mem, sent } = txReady(1024);
    drv.w32(REG.TCTL, 0);
    postFlood(drv, mem, 1023, 60);
    drv.kick();
    assert.equal(sent.length, 0);
    drv.w32(REG.TCTL, TCTL_EN | TCTL_PSP);
    assert.ok(sent.length > 0 && sent.length <= E1000_TX_SLICE.descriptors, `${sent.length} frames`);
    pollAll(dev);
    assert.ok(inOrder(sent, 1023, 60), `${sent.length} frames, each once in order?`);
  });

  test("MSS 1 over the largest payload, or any MSS making more than 4096 segments, is refused at once and counted", () => {
    const { drv, dev, sent } = txReady(16);
    for (const mss of [1, 63]) {
      queueTso(drv, MAX_TSO_PAYLOAD, mss, 0, true);
      drv.kick();
      // Refused in the TDT write itself, before any segment is built: nothing sent, nothing left for later.
      assert.equal(sent.length, 0, `MSS ${mss}`);
      assert.equal(dev.nextDeadline(), undefined);
      assert.equal(drv.txDone(drv.txTail - 1), true, "the descriptor is done with");
    }
    assert.equal(dev.errorCounts()["tso-too-many-segments"], 2);
    assert.equal(drv.r32(STAT.TSCTFC), 2);
    // 4096 segments exactly is the largest accepted.
    queueTso(drv, MAX_TSO_PAYLOAD, 64);
    drv.kick();
    pollAll(dev);
    assert.equal(sent.length, MAX_TSO_SEGMENTS);
  });
});

describe("e1000 against a hostile guest: what the log says, and register edges", () => {
  /** A raw extended data descriptor (SDM §3.3.7): DTALEN, DTYP 1, DCMD, POPTS. */
  function dataDesc(addr: number, len: number, dcmd: number, popts = 0): Uint8Array {
    const d = new Uint8Array(16);
    const v = new DataView(d.buffer);
    v.setBigUint64(0, BigInt(addr), true);
    v.setUint32(8, (len & 0xfffff) | (1 << 20) | ((dcmd | 0x20) << 24), true);
    d[13] = popts;
    return d;
  }
  const tso = {
    ipcss: 14,
    ipcso: 24,
    ipcse: 33,
    tucss: 34,
    tucso: 50,
    hdrlen: 54,
    paylen: 2000,
    tucmd: TUCMD.TSE | TUCMD.TCP | TUCMD.IP,
  };

  // Each scenario on a fresh device: the first log line of the error kind, with the values that explain it.
  const scenarios: Array<[string, (n: ReturnType<typeof txReady>) => void, RegExp]> = [
    [
      "TDLEN",
      ({ drv }) => drv.w32(REG.TDLEN, 8 * 16 + 5),
      /^e1000: TDLEN 0x85 is not a multiple of 128 \[tx-ring-len; later occurrences are only counted\]$/,
    ],
    [
      "RDLEN",
      ({ drv }) => drv.w32(REG.RDLEN, 8 * 16 + 5),
      /^e1000: RDLEN 0x85 is not a multiple of 128 \[rx-ring-len;/,
    ],
    [
      "TDLEN 0",
      ({ drv }) => {
        drv.w32(REG.TDLEN, 0);
        drv.w32(REG.TDT, 1);
      },
      /^e1000: TDLEN is 0 while the unit is enabled \[tx-ring-empty;/,
    ],
    [
      "TDT past the ring",
      ({ drv }) => drv.w32(REG.TDT, 9),
      /^e1000: TDH 0 \/ TDT 9 outside a 8-descriptor ring \[/,
    ],
    [
      "a ring above 4 GiB (TDBAH 1)",
      ({ drv }) => {
        drv.w32(REG.TDBAH, 1);
        drv.w32(REG.TDBAL, 0x1000);
        drv.w32(REG.TDT, 1);
      },
      /^e1000: transmit descriptor at 0x100001000 is outside guest RAM \[tx-ring-dma;/,
    ],
    [
      "a reserved descriptor type",
      ({ drv }) => {
        const d = new Uint8Array(16);
        new DataView(d.buffer).setUint32(8, (0xf << 20) | (0x29 << 24), true);
        drv.putRawTx(d);
        drv.putRawTx(d);
        drv.kick();
      },
      /^e1000: transmit descriptor at 0x[0-9a-f]+ has reserved type 15 \[tx-desc-type;/,
    ],
    [
      "no EOP",
      ({ drv }) => {
        for (let round = 0; round < 2; round++) {
          for (let k = 0; k < 7; k++) drv.putRawTx(legacyDesc(BigInt(drv.stage(pattern(64))), 64, 0x02));
          drv.kick();
        }
      },
      /^e1000: a packet ran through all 8 descriptors without EOP; packet dropped \[tx-no-eop;/,
    ],
    [
      "oversize",
      ({ drv }) =>
        drv.sendLegacy([pattern(4096), pattern(4096), pattern(4096), pattern(4096), pattern(4096)]),
      /^e1000: packet grew past 16384 bytes; packet dropped \[tx-oversize;/,
    ],
    [
      "a buffer outside RAM",
      ({ drv }) => {
        drv.putRawTx(legacyDesc(BigInt(MEM_SIZE - 10), 100, 0x0b));
        drv.kick();
      },
      /^e1000: transmit buffer 0x3ffff6\+100 is outside guest RAM; packet dropped \[tx-dma;/,
    ],
    [
      "an empty packet",
      ({ drv }) => {
        drv.putRawTx(legacyDesc(0n, 0, 0x0b));
        drv.kick();
      },
      /^e1000: end of packet with no data \[tx-empty-packet;/,
    ],
    [
      "TSO without a context",
      ({ drv }) => {
        drv.queueData([ipv4TcpFrame(pattern(100))], { tse: true, popts: POPTS.TXSM });
        drv.kick();
      },
      /^e1000: TCP segmentation data without a segmentation context; packet dropped \[tso-no-context;/,
    ],
    [
      "PAYLEN against the data",
      ({ drv }) => {
        drv.queueContext({ ...tso, mss: 1000 });
        drv.queueData([ipv4TcpFrame(pattern(1500))], { tse: true, popts: POPTS.TXSM });
        drv.kick();
      },
      /^e1000: PAYLEN 2000 but 1500 payload bytes \[tso-paylen;/,
    ],
    [
      "MSS 0",
      ({ drv }) => {
        drv.queueContext({ ...tso, mss: 0 });
        drv.queueData([ipv4TcpFrame(pattern(2000))], { tse: true, popts: POPTS.TXSM });
        drv.kick();
      },
      /^e1000: bad segmentation context \(MSS 0, HDRLEN 54, packet 2054\); packet dropped \[tso-mss-zero;/,
    ],
    [
      "a legacy checksum outside the packet",
      ({ drv }) => drv.sendLegacy([frame()], { ic: { css: 200, cso: 10 } }),
      /^e1000: legacy checksum CSS 200 \/ CSO 10 outside a 114-byte packet \[tx-csum-range;/,
    ],
    [
      "checksum offload without a context",
      ({ drv }) => {
        drv.queueData([frame()], { popts: POPTS.TXSM });
        drv.kick();
      },
      /^e1000: checksum offload requested without a context; sent as is \[tx-no-context;/,
    ],
    [
      "a context checksum outside the packet",
      ({ drv }) => {
        drv.queueContext({ ipcss: 14, ipcso: 250, tucss: 34, tucso: 50, tucmd: TUCMD.TCP });
        drv.queueData([frame()], { popts: POPTS.IXSM | POPTS.TXSM });
        drv.kick();
      },
      /^e1000: checksum context outside a 114-byte packet \[tx-csum-range;/,
    ],
  ];
  for (const [name, act, re] of scenarios) {
    test(`log: ${name}`, () => {
      const nic = txReady(8);
      act(nic);
      assert.equal(nic.logs.length, 1, nic.logs.join("\n"));
      assert.match(nic.logs[0] as string, re);
    });
  }

  test("log: RDLEN 0 with the receiver on; the write of an unknown register", () => {
    const { drv, wire, logs } = rxReady({ count: 8 });
    drv.w32(REG.RDLEN, 0);
    wire.send(toNic());
    assert.match(logs[0] ?? "", /^e1000: RDLEN is 0 while the unit is enabled \[rx-ring-empty;/);
    drv.w32(0x1234, 1);
    assert.match(logs[1] ?? "", /^e1000: write of unknown register 0x1234 \(reads as 0, writes ignored\)$/);
    assert.equal(drv.r32(0x1234), 0);
  });

  test("log: the receive errors, with the values that explain them", () => {
    const index = rxReady({ count: 8 });
    index.drv.w32(REG.RDT, 100);
    index.wire.send(toNic());
    assert.match(
      index.logs[0] ?? "",
      /^e1000: RDH 0 \/ RDT 100 outside a 8-descriptor ring \[rx-ring-index;/,
    );

    const big = rxReady({ count: 8, rctl: RCTL.BAM | RCTL.LPE | (3 << 16), bufSize: 256 });
    big.wire.send(toNic(3000));
    assert.match(
      big.logs[0] ?? "",
      /^e1000: a 3018-byte frame needs 12 buffers of 256 \[rx-frame-exceeds-ring;/,
    );

    const ring = rxReady({ count: 8 });
    ring.drv.w32(REG.RDBAL, MEM_SIZE);
    ring.wire.send(toNic());
    assert.match(
      ring.logs[0] ?? "",
      /^e1000: receive descriptor at 0x400000 is outside guest RAM; frame dropped \[rx-ring-dma;/,
    );

    const buf = rxReady({ count: 8, rctl: RCTL.BAM | (3 << 16), bufSize: 256 });
    buf.mem.writeU64(buf.drv.rxDescAddr(1), BigInt(MEM_SIZE - 100));
    buf.wire.send(toNic(600));
    assert.match(
      buf.logs[0] ?? "",
      /^e1000: receive buffer 0x3fff9c\+256 is outside guest RAM; frame dropped \[rx-dma;/,
    );
  });

  test("RDLEN keeps only bits 19:7, as TDLEN does", () => {
    const { drv, dev } = makeNic();
    drv.w32(REG.RDLEN, 8 * 16 + 5);
    assert.equal(drv.r32(REG.RDLEN), 128);
    drv.w32(REG.RDLEN, 0xffffffff);
    assert.equal(drv.r32(REG.RDLEN), 0xfff80);
    assert.equal(dev.errorCounts()["rx-ring-len"], 2);
  });

  test("enabling TCTL with an empty, unconfigured ring (TDH = TDT, TDLEN 0) is no error", () => {
    const { drv, dev } = makeNic();
    drv.reset();
    drv.w32(REG.TCTL, TCTL_EN | TCTL_PSP);
    drv.w32(REG.TDT, 0);
    assert.deepEqual(dev.errorCounts(), {});
  });

  test("an extended EOP with no data, or TSO data without a context: TDH passes it and DD is written at once", () => {
    for (const make of [
      (drv: E1000Driver) => drv.putRawTx(dataDesc(0, 0, 0x01 | 0x08)),
      (drv: E1000Driver) => drv.queueData([ipv4TcpFrame(pattern(100))], { tse: true, popts: POPTS.TXSM }),
    ]) {
      const { drv, dev, sent } = txReady(8);
      const i = make(drv);
      drv.kick();
      assert.equal(drv.r32(REG.TDH), drv.txTail, "TDH reached TDT within the TDT write");
      assert.equal(drv.txDone(i), true);
      assert.equal(dev.nextDeadline(), undefined, "no work left for later");
      assert.equal(sent.length, 0);
      drv.sendLegacy([frame(5)]);
      assert.deepEqual(sent, [frame(5)]);
    }
  });

  test("a buffer address's high dword counts: the frame's bytes 4 GiB up are outside RAM, not read low", () => {
    const { drv, dev, sent } = txReady(8);
    const f = frame(7);
    drv.putRawTx(legacyDesc(BigInt(2 ** 32 + drv.stage(f)), f.length, 0x0b));
    drv.kick();
    assert.equal(sent.length, 0);
    assert.equal(dev.errorCounts()["tx-dma"], 1);
  });

  test("an extended data packet with POPTS 0 and no context loaded is sent as is, without an error", () => {
    const { drv, dev, sent } = txReady(8);
    drv.queueData([frame(6)], { popts: 0 });
    drv.kick();
    assert.deepEqual(sent, [frame(6)]);
    assert.deepEqual(dev.errorCounts(), {});
  });

  test("CTRL.PHY_RST resets the PHY when it is set, not on every CTRL write", () => {
    const { drv } = makeNic();
    assert.equal(drv.phyWrite(4, 0x0de1), true);
    const ctrl = drv.r32(REG.CTRL);
    drv.w32(REG.CTRL, ctrl);
    assert.equal(drv.phyRead(4).value, 0x0de1, "a CTRL write without PHY_RST");
    drv.w32(REG.CTRL, ctrl | (1 << 31));
    assert.equal(drv.phyRead(4).value, 0x01e1, "PHY_RST set: defaults");
    drv.phyWrite(4, 0x0de1);
    drv.w32(REG.CTRL, ctrl | (1 << 31));
    assert.equal(drv.phyRead(4).value, 0x0de1, "PHY_RST still set: no new reset");
  });

  test("ITR keeps 16 bits; every VFTA entry keeps all 32 (RAH's mask is for RAH only)", () => {
    const { drv } = makeNic();
    drv.w32(REG.ITR, 0xffffffff);
    assert.equal(drv.r32(REG.ITR), 0xffff);
    for (let k = 0; k < 128; k++) drv.w32(REG.VFTA + 4 * k, 0xffffffff - k);
    for (let k = 0; k < 128; k++) assert.equal(drv.r32(REG.VFTA + 4 * k), 0xffffffff - k, `VFTA[${k}]`);
  });
});
