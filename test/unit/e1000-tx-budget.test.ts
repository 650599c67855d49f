/**
 * Issue 13, "a hostile guest cannot stall vireo": one TDT write (or TCTL.EN write, or any other entry point) does a
 * bounded slice of transmit work, whatever the ring holds, and the rest of the ring is continued by poll() (the
 * I/O thread) with fresh budgets: every frame sent exactly once, in order.
 *
 * Times are host time (process.hrtime) of one call, on guest RAM of 4 MiB and of 1 GiB; the bound is generous
 * (a slice measures about 0.1 ms here, the whole ring took 0.5 to 1 s in one write before), and it is the median
 * of several runs, so a noisy machine does not make it flaky. The deterministic checks (how much one call sent,
 * whether work is left pending) do not depend on timing at all. On 1 GiB the first run reads RAM no one touched
 * before: its slices pay the host's first-touch page faults (tens of µs each on a PVM guest kernel), which the
 * diagnostics show; later runs do not.
 *
 * The behaviour of the slices (what TDH shows, write-back, TDH writes and resets mid-packet, the continuation
 * through another object, legitimate traffic after a flood) is tested in e1000-hostile.test.ts, which mutation
 * testing runs; this file, with its host-time bounds and 1 GiB of RAM, it does not.
 */
import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import { E1000, E1000_TX_SLICE } from "../../src/devices/e1000/e1000.ts";
import { MAX_TSO_PAYLOAD, MAX_TSO_SEGMENTS } from "../../src/devices/e1000/offload.ts";
import { GuestMemory } from "../../src/memory/guest-memory.ts";
import type { NetBackend } from "../../src/net/backend.ts";
import {
  E1000Driver,
  ICR,
  ipv4HeaderOk,
  ipv4TcpFrame,
  l4ChecksumOk,
  NIC_MAC,
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
        // (The first write of a run reads a context and a header: the 256 KiB payload waits for a fresh slice.)
        assert.ok(seen <= E1000_TX_SLICE.frames, `one write sent ${seen} segments`);
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
