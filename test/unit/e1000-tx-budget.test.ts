/**
 * Issue 13, "a hostile guest cannot stall vireo": one TDT write (or TCTL.EN write, or any other entry point) does a
 * bounded slice of transmit work, whatever the ring holds, and the rest of the ring is continued by poll() (the
 * I/O thread) with fresh budgets: every frame sent exactly once, in order.
 *
 * Times are host time (process.hrtime) of one call, on guest RAM of 4 MiB and of 1 GiB; the bound is generous
 * (a slice measures about 0.1 ms here, the whole ring took 0.5 to 1 s in one write before), and it is the median
 * of several runs, so a noisy machine does not make it flaky. The deterministic checks (how much one call sent,
 * whether work is left pending) do not depend on timing at all.
 */
import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import { E1000, E1000_TX_SLICE } from "../../src/devices/e1000/e1000.ts";
import { MAX_TSO_PAYLOAD, MAX_TSO_SEGMENTS } from "../../src/devices/e1000/offload.ts";
import { GuestMemory } from "../../src/memory/guest-memory.ts";
import type { NetBackend } from "../../src/net/backend.ts";
import {
  attachNic,
  E1000Driver,
  ethFrame,
  ICR,
  ipv4HeaderOk,
  ipv4TcpFrame,
  l4ChecksumOk,
  makeNic,
  NIC_MAC,
  PEER_MAC,
  POPTS,
  pattern,
  REG,
  STAT,
  setL4Checksum,
  TCP_ACK,
  TCP_FIN,
  TCP_PSH,
  TCTL_EN,
  TCTL_PSP,
  TUCMD,
  u16be,
  u32be,
} from "../helpers/e1000-driver.ts";

const MIB = 1024 * 1024;
/** What one entry point may cost in host time (the requirement). */
const BOUND_MS = 10;
/** Runs whose median is compared with the bound. */
const RUNS = 5;
/** The largest ring: TDLEN holds bits 19:7, so 0xfff80 bytes of 16-byte descriptors. */
const MAX_RING = 0xfff80 / 16;
/** The longest frame a non-TSO packet may have (MAX_TX_FRAME). */
const MAX_FRAME = 16384;
const RING = 0x1000;
/** Guest RAM for buffers starts here (the largest ring ends below 1.1 MiB). */
const BUFS = 2 * MIB;

const CMD = { EOP: 1, IFCS: 2, TSE: 4, RS: 8, DEXT: 0x20 } as const;

/** Guest RAM of `mib` MiB; the 1 GiB one is made once for the whole file. */
let gib: GuestMemory | undefined;
function guestRam(mib: number): GuestMemory {
  if (mib !== 1024) return new GuestMemory(new SharedArrayBuffer(mib * MIB));
  gib ??= new GuestMemory(new SharedArrayBuffer(1024 * MIB));
  return gib;
}
after(() => {
  gib = undefined;
});

function ms(fn: () => void): number {
  const t0 = process.hrtime.bigint();
  fn();
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))] as number;
}

/**
 * A device on `mem` with the real clock, whose backend hands each frame to `onFrame` (which must copy what it
 * keeps) and keeps nothing itself: a flood of 1 GiB must not be retained by the test.
 */
function floodNic(mem: GuestMemory, onFrame: (f: Uint8Array) => void) {
  const backend: NetBackend = {
    name: "sink",
    send(f) {
      onFrame(f);
      return true;
    },
    attach() {},
    rxReady() {},
    close() {},
  };
  let wakes = 0;
  const dev = new E1000({
    state: E1000.createState({ mac: NIC_MAC }),
    mem,
    backend,
    irq: { set() {} },
    onDeadlineChanged: () => wakes++,
  });
  const drv = new E1000Driver(dev, mem);
  return {
    dev,
    drv,
    get wakes() {
      return wakes;
    },
  };
}

/** Ring registers and TCTL.EN, as e1000_configure_tx does. */
function setupRing(drv: E1000Driver, count: number): void {
  drv.w32(REG.TCTL, 0);
  drv.w32(REG.TDBAL, RING);
  drv.w32(REG.TDBAH, 0);
  drv.w32(REG.TDLEN, count * 16);
  drv.w32(REG.TDH, 0);
  drv.w32(REG.TDT, 0);
  drv.w32(REG.TCTL, TCTL_EN | TCTL_PSP);
}

function writeDesc(mem: GuestMemory, i: number, addr: number, lower: number, upper = 0): void {
  const at = RING + i * 16;
  mem.writeU64(at, BigInt(addr));
  mem.writeU32(at + 8, lower >>> 0);
  mem.writeU32(at + 12, upper >>> 0);
}

/** poll() while it has work that is due, timing each call. */
function drain(dev: E1000, slices: number[]): void {
  for (let guard = 0; guard < 10_000_000; guard++) {
    const d = dev.nextDeadline();
    if (d === undefined) return;
    slices.push(ms(() => dev.poll()));
  }
  assert.fail("poll() never finished the ring");
}

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

const TSO_CTX = {
  ipcss: 14,
  ipcso: 24,
  ipcse: 33,
  tucss: 34,
  tucso: 50,
  tucmd: TUCMD.TSE | TUCMD.TCP | TUCMD.IP,
};

for (const mib of [4, 1024]) {
  describe(`e1000 transmit budget with ${mib} MiB of guest RAM`, () => {
    test(`a TDT write over a full ring of maximal descriptors takes under ${BOUND_MS} ms; poll() sends every frame once, in order`, (t) => {
      const mem = guestRam(mib);
      const count = MAX_RING;
      // Every descriptor is a whole 16 KiB frame. On 4 MiB the frames overlap, 16 bytes apart; on 1 GiB each has
      // (nearly) its own 16 KiB of RAM, most of it never touched before (the first run takes those page faults,
      // as a device reading a hostile guest's untouched RAM would). Either way frame i starts with its index.
      const stride = mib === 4 ? 16 : MAX_FRAME - 32;
      const addr = (i: number) => BUFS + i * stride;
      for (let i = 0; i < count; i++) {
        writeDesc(mem, i, addr(i), MAX_FRAME | ((CMD.EOP | CMD.IFCS | CMD.RS) << 24));
        mem.writeU32(addr(i), i);
      }
      let next = 0;
      let seen = 0;
      let bad = 0;
      const onFrame = (f: Uint8Array) => {
        if (f.length !== MAX_FRAME || u32le(f, 0) !== next) bad++;
        else if (next % 4099 === 0 && !sameBytes(f, mem.bytes.subarray(addr(next), addr(next) + MAX_FRAME)))
          bad++;
        next++;
        seen++;
      };
      const writes: number[] = [];
      const slices: number[] = [];
      for (let run = 0; run < RUNS; run++) {
        // A device fresh from reset each run, the whole ring but one descriptor posted at once.
        const nic = floodNic(mem, onFrame);
        const { dev, drv } = nic;
        setupRing(drv, count);
        next = 0;
        seen = 0;
        writes.push(ms(() => drv.w32(REG.TDT, count - 1)));
        assert.ok(seen > 0, "the write itself sends");
        assert.ok(seen <= E1000_TX_SLICE.descriptors, `one write sent ${seen} frames`);
        assert.equal(bad, 0);
        assert.notEqual(dev.nextDeadline(), undefined, "the rest is left pending");
        assert.equal(nic.wakes, 1, "onDeadlineChanged told the I/O thread");
        if (run > 0) continue;
        // The first run goes on to the end (once is enough: it reads the whole ring's worth of RAM).
        drain(dev, slices);
        assert.equal(seen, count - 1, "frames sent");
        assert.equal(bad, 0, "frames out of order, repeated or wrong");
        assert.equal(drv.r32(REG.TDH), count - 1);
        assert.equal(mem.readU8(RING + 12 * 16 + 12) & 1, 1, "DD written back");
        assert.equal(drv.readIcr() & (ICR.TXDW | ICR.TXQE), ICR.TXDW | ICR.TXQE);
        assert.deepEqual(dev.errorCounts(), {});
      }
      const write = quantile(writes, 0.5);
      const slice = quantile(slices, 0.5);
      t.diagnostic(
        `TDT write: median ${write.toFixed(3)} ms (runs ${writes.map((x) => x.toFixed(2)).join(", ")}, the ` +
          `first cold); poll slices: ${slices.length}, median ${slice.toFixed(3)} ms, 95th ` +
          `${quantile(slices, 0.95).toFixed(3)} ms, max ${quantile(slices, 1).toFixed(3)} ms`,
      );
      assert.ok(write < BOUND_MS, `a TDT write took ${write} ms (median of ${RUNS})`);
      assert.ok(slice < BOUND_MS, `a poll() slice took ${slice} ms (median)`);
    });

    test(`TSO contexts with the most segments allowed (MSS 64 over 256 KiB) are bounded likewise, each segment sent once, in order`, (t) => {
      const mem = guestRam(mib);
      const mss = 64;
      const segs = MAX_TSO_PAYLOAD / mss;
      assert.equal(segs, MAX_TSO_SEGMENTS);
      // Context, header, payload: 24 packets in a 72-descriptor ring, 23 of them (69 descriptors) per TDT write.
      const packets = 24;
      const perRun = packets - 1;
      const count = 3 * packets;
      const payAt = BUFS;
      const hdrAt = (p: number) => BUFS - MIB + p * 64;
      mem.write(payAt, pattern(MAX_TSO_PAYLOAD, 3));
      for (let p = 0; p < packets; p++) {
        // Packet p's sequence numbers start at p << 24, so a segment tells which packet and which segment it is.
        mem.write(hdrAt(p), tsoHeader(p * 0x1000000, 0x100 * p));
      }
      const lower = (len: number, dtyp: number, cmd: number) => (len | (dtyp << 20) | (cmd << 24)) >>> 0;
      const popts = (POPTS.IXSM | POPTS.TXSM) << 8;
      for (let k = 0; k < count; k++) {
        const p = Math.floor(k / 3);
        switch (k % 3) {
          case 0: {
            const at = RING + k * 16;
            mem.fill(at, 16, 0);
            mem.writeU8(at, TSO_CTX.ipcss);
            mem.writeU8(at + 1, TSO_CTX.ipcso);
            mem.writeU16(at + 2, TSO_CTX.ipcse);
            mem.writeU8(at + 4, TSO_CTX.tucss);
            mem.writeU8(at + 5, TSO_CTX.tucso);
            mem.writeU32(at + 8, lower(MAX_TSO_PAYLOAD, 0, TSO_CTX.tucmd | CMD.DEXT));
            mem.writeU8(at + 13, 54);
            mem.writeU16(at + 14, mss);
            break;
          }
          case 1:
            writeDesc(mem, k, hdrAt(p), lower(54, 1, CMD.DEXT | CMD.TSE | CMD.IFCS), popts);
            break;
          default:
            writeDesc(
              mem,
              k,
              payAt,
              lower(MAX_TSO_PAYLOAD, 1, CMD.DEXT | CMD.TSE | CMD.IFCS | CMD.EOP | CMD.RS),
              popts,
            );
        }
      }
      // Runs start at different descriptors (TDH moves on), so the packet order is followed by descriptor.
      let nextPacket = 0;
      let nextSeg = 0;
      let seen = 0;
      let bad = 0;
      const nic = floodNic(mem, (f) => {
        const seq = u32be(f, 38);
        const last = nextSeg === segs - 1;
        if (
          f.length !== 54 + mss ||
          seq !== nextPacket * 0x1000000 + nextSeg * mss ||
          u16be(f, 18) !== ((0x100 * nextPacket + nextSeg) & 0xffff) ||
          ((f[47] as number) & (TCP_FIN | TCP_PSH)) !== (last ? TCP_FIN | TCP_PSH : 0)
        ) {
          bad++;
        } else if (nextSeg % 1021 === 0 || last) {
          const payload = mem.bytes.subarray(payAt + nextSeg * mss, payAt + (nextSeg + 1) * mss);
          if (!ipv4HeaderOk(f) || !l4ChecksumOk(f) || !sameBytes(f.subarray(54), payload)) bad++;
        }
        seen++;
        if (++nextSeg === segs) {
          nextSeg = 0;
          nextPacket = (nextPacket + 1) % packets;
        }
      });
      const { dev, drv } = nic;
      setupRing(drv, count);
      const writes: number[] = [];
      const slices: number[] = [];
      for (let run = 0; run < RUNS; run++) {
        const tdh = drv.r32(REG.TDH);
        assert.equal(tdh % 3, 0, "runs start at a context descriptor");
        nextPacket = tdh / 3;
        const tdt = (tdh + 3 * perRun) % count;
        seen = 0;
        writes.push(ms(() => drv.w32(REG.TDT, tdt)));
        assert.ok(seen > 0 && seen <= E1000_TX_SLICE.frames, `one write sent ${seen} segments`);
        assert.notEqual(dev.nextDeadline(), undefined);
        drain(dev, slices);
        assert.equal(seen, perRun * segs, `run ${run}: segments sent`);
        assert.equal(bad, 0, `run ${run}: segments out of order, repeated or wrong`);
        assert.equal(drv.r32(REG.TDH), tdt);
      }
      assert.deepEqual(dev.errorCounts(), {});
      assert.equal(drv.r32(STAT.TSCTC), RUNS * perRun);
      const write = quantile(writes, 0.5);
      const slice95 = quantile(slices, 0.95);
      t.diagnostic(
        `TDT write: median ${write.toFixed(3)} ms (runs ${writes.map((x) => x.toFixed(2)).join(", ")}); ` +
          `poll slices: ${slices.length}, median ${quantile(slices, 0.5).toFixed(3)} ms, 95th ${slice95.toFixed(3)} ms`,
      );
      assert.ok(write < BOUND_MS, `a TDT write took ${write} ms (median of ${RUNS})`);
      assert.ok(slice95 < BOUND_MS, `95th percentile of poll() slices: ${slice95} ms`);
    });
  });
}

function u32le(b: Uint8Array, off: number): number {
  return (
    ((b[off] as number) | ((b[off + 1] as number) << 8) | ((b[off + 2] as number) << 16)) +
    (b[off + 3] as number) * 0x1000000
  );
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
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
    d[11] = CMD.EOP | CMD.IFCS | CMD.RS;
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
function queueTso(drv: E1000Driver, payload: number, mss: number, seq = 0): number {
  drv.queueContext({ ...TSO_CTX, paylen: payload, hdrlen: 54, mss });
  return drv.queueData([tsoHeader(seq, 1), pattern(payload, 7)], {
    tse: true,
    popts: POPTS.IXSM | POPTS.TXSM,
  });
}

function txReady(count: number, opts: Parameters<typeof makeNic>[0] = {}) {
  const nic = makeNic(opts);
  nic.drv.reset();
  nic.drv.setupTx(count);
  return nic;
}

describe("e1000 transmit budget: the rest of the ring is continued", () => {
  test("legitimate traffic flows during and after a flood: frames received meanwhile, then ordinary frames and a 64 KiB TSO packet go out within their TDT write", () => {
    const { drv, dev, mem, sent, wire } = txReady(2048);
    drv.setupRx({ count: 16 });
    postFlood(drv, mem, 2047, MAX_FRAME);
    drv.kick();
    assert.ok(sent.length > 0 && sent.length < 2047, `one TDT write sent ${sent.length} of 2047`);
    // Receive is not held up by the transmit backlog (each received frame also moves it on by a slice).
    const toNic = ethFrame(NIC_MAC, PEER_MAC, 0x88b5, pattern(200, 4));
    wire.send(toNic);
    const got = drv.receive();
    assert.equal(got.length, 1);
    assert.deepEqual(got[0]?.data.subarray(0, toNic.length), toNic);
    pollAll(dev);
    assert.ok(inOrder(sent, 2047, MAX_FRAME), "every flood frame once, in order");
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
    // Linux's default ring (256 descriptors) full of MTU-sized frames fits in one slice.
    sent.length = 0;
    postFlood(drv, mem, 255, 1514);
    drv.kick();
    assert.ok(inOrder(sent, 255, 1514), `a 255-frame burst went out in its TDT write (${sent.length})`);
    assert.equal(dev.nextDeadline(), undefined);
    assert.deepEqual(dev.errorCounts(), {});
  });

  test("a TSO packet whose segments span slices: TDH stays on its EOP descriptor; DD and TXQE come with the last segment", () => {
    const { drv, dev, sent } = txReady(16);
    const mss = 64;
    const eop = queueTso(drv, MAX_TSO_PAYLOAD, mss, 0x10000);
    drv.kick();
    assert.ok(
      sent.length > 0 && sent.length <= E1000_TX_SLICE.frames,
      `${sent.length} segments in one write`,
    );
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
      const t0 = process.hrtime.bigint();
      queueTso(drv, MAX_TSO_PAYLOAD, mss);
      drv.kick();
      assert.ok(
        Number(process.hrtime.bigint() - t0) / 1e6 < BOUND_MS * 10,
        "refused without building segments",
      );
      assert.equal(sent.length, 0, `MSS ${mss}`);
      assert.equal(dev.nextDeadline(), undefined);
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
