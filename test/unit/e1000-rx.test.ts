import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { rxBufferSize, rxChecksum } from "../../src/devices/e1000/rx.ts";
import {
  BROADCAST,
  CTRL_VME,
  crc32Slow,
  ethFrame,
  ICR,
  ipv4Packet,
  ipv4TcpFrame,
  MEM_SIZE,
  makeNic,
  NIC_MAC,
  PEER_MAC,
  pattern,
  RCTL,
  REG,
  RXERR,
  RXSTAT,
  STAT,
  setL4Checksum,
  sum16,
  tcpSegment,
  udpDatagram,
} from "../helpers/e1000-driver.ts";

function ready(rx: Parameters<ReturnType<typeof makeNic>["drv"]["setupRx"]>[0] = {}) {
  const nic = makeNic();
  nic.drv.reset();
  nic.drv.setupRx(rx);
  return nic;
}

/** The frame as the NIC stores it: data followed by its FCS, little endian. */
function withFcs(f: Uint8Array): Uint8Array {
  const out = new Uint8Array(f.length + 4);
  out.set(f);
  new DataView(out.buffer).setUint32(f.length, crc32Slow(f), true);
  return out;
}

const toNic = (len: number, seed = 1, type = 0x88b5) => ethFrame(NIC_MAC, PEER_MAC, type, pattern(len, seed));

describe("e1000 receive: descriptors and buffers", () => {
  test("a frame lands in the next buffer with its FCS; length, DD|EOP|IXSM written back; RDH advances; RXT0", () => {
    const { drv, wire, dev } = ready();
    const f = toNic(200);
    assert.equal(wire.send(f), true);
    assert.equal(drv.r32(REG.RDH), 1);
    const [r, ...rest] = drv.receive();
    assert.equal(rest.length, 0);
    assert.deepEqual(r?.data, withFcs(f));
    assert.deepEqual(r?.lengths, [f.length + 4]);
    assert.equal(r?.status, RXSTAT.DD | RXSTAT.EOP | RXSTAT.IXSM);
    assert.equal(r?.errors, 0);
    assert.equal(drv.readIcr() & ICR.RXT0, ICR.RXT0);
    assert.deepEqual(dev.errorCounts(), {});
  });

  test("RCTL.SECRC strips the CRC; frames shorter than 60 bytes are padded", () => {
    const { drv, wire } = ready({ rctl: RCTL.BAM | RCTL.SECRC });
    const short = ethFrame(NIC_MAC, PEER_MAC, 0x0806, pattern(28));
    wire.send(short);
    const [r] = drv.receive();
    assert.equal(r?.data.length, 60);
    assert.deepEqual(r?.data.subarray(0, 42), short);
    assert.ok(r?.data.subarray(42).every((b) => b === 0));
  });

  test("a frame longer than one buffer spans descriptors with EOP only on the last (BSIZE 256)", () => {
    const { drv, wire } = ready({ rctl: RCTL.BAM | (3 << 16), bufSize: 256 });
    const f = toNic(986); // 1000 bytes + FCS = 1004
    wire.send(f);
    assert.equal(drv.r32(REG.RDH), 4);
    // Intermediate descriptors have DD only; the packet status is in the EOP descriptor.
    const statuses = [0, 1, 2, 3].map((i) => drv.mem.readU8(drv.rxDescAddr(i) + 12));
    assert.deepEqual(statuses, [RXSTAT.DD, RXSTAT.DD, RXSTAT.DD, RXSTAT.DD | RXSTAT.EOP | RXSTAT.IXSM]);
    const [r] = drv.receive();
    assert.equal(r?.descriptors, 4);
    assert.deepEqual(r?.lengths, [256, 256, 256, 236]);
    assert.deepEqual(r?.data, withFcs(f));
  });

  test("BSEX selects the large buffer sizes: a 9000-byte jumbo frame in two 4096-byte buffers needs LPE", () => {
    const { drv, wire } = ready({ rctl: RCTL.BAM | RCTL.BSEX | (3 << 16) });
    const jumbo = toNic(6000);
    wire.send(jumbo);
    assert.equal(drv.receive().length, 0, "no LPE: dropped");
    assert.equal(drv.r32(STAT.ROC), 1);
    drv.w32(REG.RCTL, drv.r32(REG.RCTL) | RCTL.LPE);
    wire.send(jumbo);
    const [r] = drv.receive();
    assert.deepEqual(r?.lengths, [4096, 6014 + 4 - 4096]);
    assert.deepEqual(r?.data, withFcs(jumbo));
  });

  test("1522 bytes with FCS is the standard limit: 1518 accepted, 1519 dropped", () => {
    const { drv, wire } = ready();
    wire.send(toNic(1518 - 14));
    wire.send(toNic(1519 - 14));
    const got = drv.receive();
    assert.equal(got.length, 1);
    assert.equal(got[0]?.data.length, 1522);
    assert.equal(drv.r32(STAT.ROC), 1);
  });

  test("the ring wraps: 300 frames through an 8-descriptor ring, refilled as a driver does, all in order", () => {
    const { drv, wire, dev } = ready({ count: 8 });
    const got: number[] = [];
    for (let n = 0; n < 300; n++) {
      const f = toNic(60 + (n % 100), n);
      f[14] = n & 0xff;
      f[15] = n >> 8;
      wire.send(f);
      if (n % 3 === 2)
        for (const r of drv.receive()) got.push((r.data[14] as number) | ((r.data[15] as number) << 8));
    }
    for (const r of drv.receive()) got.push((r.data[14] as number) | ((r.data[15] as number) << 8));
    assert.equal(got.length, 300);
    assert.ok(got.every((v, i) => v === i));
    assert.equal(wire.stats().sendDropped, 0);
    assert.deepEqual(dev.errorCounts(), {});
  });

  test("frames arriving while RCTL.EN is clear are dropped, not delivered later", () => {
    const { drv, wire } = ready();
    drv.w32(REG.RCTL, RCTL.BAM);
    wire.send(toNic(100));
    drv.w32(REG.RCTL, RCTL.BAM | RCTL.EN);
    assert.equal(drv.receive().length, 0);
    assert.equal(wire.stats().sent, 1);
  });
});

describe("e1000 receive: address filtering", () => {
  /** Sends each frame and returns which ones were received (by the byte at offset 14). */
  function accepted(nic: ReturnType<typeof ready>, dsts: Uint8Array[]): number[] {
    dsts.forEach((d, n) => {
      const f = ethFrame(d, PEER_MAC, 0x88b5, pattern(50));
      f[14] = n;
      nic.wire.send(f);
    });
    return nic.drv.receive().map((r) => r.data[14] as number);
  }

  test("unicast: RAL0 (from the EEPROM) and other valid RA entries match; others are dropped", () => {
    const nic = ready();
    const other = Uint8Array.of(0x52, 0x54, 0x00, 0x99, 0x99, 0x99);
    assert.deepEqual(accepted(nic, [NIC_MAC, other]), [0]);
    nic.drv.w32(REG.RAL0 + 8, 0x99005452);
    nic.drv.w32(REG.RAH0 + 8, 0x9999); // no AV yet
    assert.deepEqual(accepted(nic, [other]), []);
    nic.drv.w32(REG.RAH0 + 8, 0x80009999);
    assert.deepEqual(accepted(nic, [other, NIC_MAC]), [0, 1]);
  });

  test("UPE accepts every unicast address", () => {
    const nic = ready({ rctl: RCTL.UPE });
    assert.deepEqual(accepted(nic, [Uint8Array.of(2, 0, 0, 0, 0, 1), NIC_MAC]), [0, 1]);
  });

  test("broadcast needs BAM (or MPE)", () => {
    const without = ready({ rctl: 0 });
    assert.deepEqual(accepted(without, [BROADCAST]), []);
    const bam = ready({ rctl: RCTL.BAM });
    assert.deepEqual(accepted(bam, [BROADCAST]), [0]);
    const mpe = ready({ rctl: RCTL.MPE });
    assert.deepEqual(accepted(mpe, [BROADCAST]), [0]);
  });

  test("multicast through the MTA hash for each RCTL.MO, reported as an inexact match (PIF)", () => {
    // 01:00:5e:00:01:c8 — hash bits per MO, computed by hand:
    // MO=0 bits 47:36 -> (0xc8 << 4) | (0x01 >> 4) = 0xc80; MO=3 bits 43:32 -> (0xc8 << 8 | 0x01) & 0xfff = 0x801.
    const mc = Uint8Array.of(0x01, 0x00, 0x5e, 0x00, 0x01, 0xc8);
    const cases: Array<[number, number]> = [
      [0, 0xc80],
      [1, ((0x01 >> 3) | (0xc8 << 5)) & 0xfff],
      [2, ((0x01 >> 2) | (0xc8 << 6)) & 0xfff],
      [3, 0x801],
    ];
    for (const [mo, hash] of cases) {
      const nic = ready({ rctl: mo << 12 });
      assert.deepEqual(accepted(nic, [mc]), [], `MO=${mo}: empty table`);
      nic.drv.w32(REG.MTA + 4 * (hash >> 5), 1 << (hash & 31));
      nic.wire.send(ethFrame(mc, PEER_MAC, 0x88b5, pattern(50)));
      const [r] = nic.drv.receive();
      assert.ok(r, `MO=${mo}: hash ${hash.toString(16)} set`);
      assert.equal(r.status & RXSTAT.PIF, RXSTAT.PIF);
      assert.equal(nic.drv.r32(STAT.MPRC), 1);
    }
  });

  test("MPE accepts every multicast address; a multicast address in an RA entry matches exactly", () => {
    const mc = Uint8Array.of(0x33, 0x33, 0x00, 0x00, 0x00, 0x01);
    const nic = ready({ rctl: RCTL.MPE });
    assert.deepEqual(accepted(nic, [mc]), [0]);
    const exact = ready();
    exact.drv.w32(REG.RAL0 + 16, 0x00003333);
    exact.drv.w32(REG.RAH0 + 16, 0x80000100);
    exact.wire.send(ethFrame(mc, PEER_MAC, 0x88b5, pattern(50)));
    const [r] = exact.drv.receive();
    assert.ok(r);
    assert.equal(r.status & RXSTAT.PIF, 0);
  });
});

describe("e1000 receive: VLAN and checksum offload", () => {
  function tagged(vid: number): Uint8Array {
    const inner = toNic(100);
    const f = new Uint8Array(inner.length + 4);
    f.set(inner.subarray(0, 12));
    f[12] = 0x81;
    f[13] = 0x00;
    f[14] = (vid >> 8) | 0x20; // priority 1
    f[15] = vid & 0xff;
    f.set(inner.subarray(12), 16);
    return f;
  }

  test("CTRL.VME strips a tag matching VET into the special field and sets VP", () => {
    const { drv, wire } = ready({ rctl: RCTL.BAM | RCTL.SECRC });
    drv.w32(REG.CTRL, drv.r32(REG.CTRL) | CTRL_VME);
    const f = tagged(100);
    wire.send(f);
    const [r] = drv.receive();
    assert.equal((r?.status ?? 0) & RXSTAT.VP, RXSTAT.VP);
    assert.equal(r?.special, 0x2064);
    assert.deepEqual(r?.data, toNic(100));
  });

  test("without VME the tag stays in the data", () => {
    const { drv, wire } = ready({ rctl: RCTL.BAM | RCTL.SECRC });
    const f = tagged(100);
    wire.send(f);
    const [r] = drv.receive();
    assert.equal((r?.status ?? 0) & RXSTAT.VP, 0);
    assert.deepEqual(r?.data, f);
  });

  test("RCTL.VFE filters tagged frames through the VFTA; untagged frames pass", () => {
    const { drv, wire } = ready({ rctl: RCTL.BAM | RCTL.VFE });
    wire.send(tagged(100));
    wire.send(toNic(60));
    assert.equal(drv.receive().length, 1);
    drv.w32(REG.VFTA + 4 * (100 >> 5), 1 << (100 & 31));
    wire.send(tagged(100));
    wire.send(tagged(101));
    assert.equal(drv.receive().length, 1);
  });

  test("RXCSUM: IPCS/TCPCS for a good TCP/IPv4 frame, TCPE or IPE for corrupted ones, IXSM when disabled", () => {
    const { drv, wire } = ready();
    const good = ipv4TcpFrame(pattern(300));
    good.set(NIC_MAC, 0);
    const badTcp = good.slice();
    badTcp[100] = (badTcp[100] as number) ^ 0xff;
    const badIp = good.slice();
    badIp[22] = 1; // TTL changed, header checksum now wrong
    wire.send(good);
    assert.equal(drv.receive()[0]?.status, RXSTAT.DD | RXSTAT.EOP | RXSTAT.IXSM);
    drv.w32(REG.RXCSUM, (1 << 8) | (1 << 9));
    for (const f of [good, badTcp, badIp]) wire.send(f);
    const [g, t, i] = drv.receive();
    assert.equal(g?.status, RXSTAT.DD | RXSTAT.EOP | RXSTAT.IPCS | RXSTAT.TCPCS);
    assert.equal(g?.errors, 0);
    assert.equal(t?.errors, RXERR.TCPE);
    assert.equal(i?.errors, RXERR.IPE);
    assert.equal((i?.status ?? 0) & RXSTAT.TCPCS, RXSTAT.TCPCS);
  });
});

describe("e1000 receive interrupts", () => {
  test("RDTR delays RXT0 and restarts per packet; RADV bounds the delay", () => {
    const nic = ready();
    const { drv, dev, wire, clock } = nic;
    drv.w32(REG.RDTR, 100); // 102.4 µs
    drv.w32(REG.RADV, 200); // 204.8 µs
    drv.readIcr();
    drv.w32(REG.IMS, ICR.RXT0);
    wire.send(toNic(60));
    assert.equal(nic.irqLevel, false);
    clock.t = 0.09;
    wire.send(toNic(60));
    clock.t = 0.18;
    dev.poll();
    assert.equal(nic.irqLevel, false, "the packet timer restarted at 0.09");
    clock.t = 0.19;
    wire.send(toNic(60));
    clock.t = 0.205;
    dev.poll();
    assert.equal(nic.irqLevel, true, "RADV expired at 0.2048");
    assert.equal(drv.readIcr() & ICR.RXT0, ICR.RXT0);
    clock.t = 1;
    dev.poll();
    assert.equal(drv.readIcr() & ICR.RXT0, 0, "both timers were cleared when RXT0 fired");
  });

  test("RDTR.FPD fires RXT0 at once and reads back 0", () => {
    const { drv, wire } = ready();
    drv.w32(REG.RDTR, 500);
    wire.send(toNic(60));
    drv.readIcr();
    drv.w32(REG.RDTR, 500 | (1 << 31));
    assert.equal(drv.r32(REG.RDTR), 500);
    assert.equal(drv.readIcr() & ICR.RXT0, ICR.RXT0);
  });

  test("RXDMT0 when the free descriptors reach RDMTS (1/2 of an 8-entry ring)", () => {
    const { drv, wire } = ready({ count: 8 });
    drv.readIcr();
    // 7 posted; after 2 frames 5 are free (> 4), after 3 frames 4 are free.
    wire.send(toNic(60));
    wire.send(toNic(60));
    assert.equal(drv.readIcr() & ICR.RXDMT0, 0);
    wire.send(toNic(60));
    assert.equal(drv.readIcr() & ICR.RXDMT0, ICR.RXDMT0);
  });

  test("no descriptors: RXO and MPC/RNBC, the frame waits in the backend and arrives once buffers are posted", () => {
    const { drv, wire } = ready({ count: 8, post: 2 });
    drv.readIcr();
    for (let n = 0; n < 5; n++) {
      const f = toNic(60, n);
      f[14] = n;
      wire.send(f);
    }
    assert.equal(drv.readIcr() & ICR.RXO, ICR.RXO);
    assert.ok(drv.r32(STAT.MPC) >= 1);
    assert.ok(drv.r32(STAT.RNBC) >= 1);
    assert.equal(wire.peer.stats().queued, 3);
    const first = drv.receive(false).map((r) => r.data[14]);
    assert.deepEqual(first, [0, 1]);
    drv.postRx(7);
    const rest = drv.receive().map((r) => r.data[14]);
    assert.deepEqual(rest, [2, 3, 4]);
    assert.equal(wire.peer.stats().queued, 0);
    assert.equal(wire.stats().sendDropped, 0);
  });

  test("a multi-buffer frame waits until enough descriptors are free for all of it", () => {
    const { drv, wire } = ready({ count: 8, rctl: RCTL.BAM | (3 << 16), post: 2 });
    const f = toNic(700); // 718 bytes with FCS: 3 buffers of 256
    wire.send(f);
    assert.equal(drv.r32(REG.RDH), 0, "nothing written for a partial fit");
    drv.postRx(1);
    const [r] = drv.receive();
    assert.deepEqual(r?.data, withFcs(f));
  });
});

describe("e1000 receive checksum offload (rxChecksum, SDM §3.2.3.1 / RXCSUM)", () => {
  const IPOFL = 1 << 8;
  const TUOFL = 1 << 9;
  const BOTH = IPOFL | TUOFL;
  const OK4 = { status: RXSTAT.IPCS | RXSTAT.TCPCS, errors: 0 };
  const NOTHING = { status: 0, errors: 0 };

  function v4(proto: 6 | 17, l4: Uint8Array, fix?: (ip: Uint8Array) => void): Uint8Array {
    const ip = ipv4Packet({ proto, l4 });
    fix?.(ip);
    const f = ethFrame(NIC_MAC, PEER_MAC, 0x0800, ip);
    setL4Checksum(f, "full");
    return f;
  }
  const tcp4 = (len = 100) => v4(6, tcpSegment({ payload: pattern(len, 3) }));
  const udp4 = (len = 50) => v4(17, udpDatagram(pattern(len, 4)));

  function v6(proto: number, l4: Uint8Array): Uint8Array {
    const h = new Uint8Array(40 + l4.length);
    h[0] = 0x60;
    h[4] = l4.length >> 8;
    h[5] = l4.length & 0xff;
    h[6] = proto;
    h[7] = 64;
    for (let i = 0; i < 16; i++) {
      h[8 + i] = 0x20 + i;
      h[24 + i] = 0x40 + i;
    }
    h.set(l4, 40);
    const f = ethFrame(NIC_MAC, PEER_MAC, 0x86dd, h);
    if (proto === 6 || proto === 17) setL4Checksum(f, "full");
    return f;
  }

  /** Recomputes the IPv4 header checksum after a test edited the header. */
  function fixIpSum(f: Uint8Array, l3 = 14): void {
    const ihl = ((f[l3] as number) & 0xf) * 4;
    f[l3 + 10] = 0;
    f[l3 + 11] = 0;
    const s = ~sum16(f, l3, l3 + ihl) & 0xffff;
    f[l3 + 10] = s >> 8;
    f[l3 + 11] = s & 0xff;
  }

  const flip = (f: Uint8Array, at: number) => {
    const g = f.slice();
    g[at] = (g[at] as number) ^ 0x5a;
    return g;
  };

  test("neither IPOFL nor TUOFL: IXSM only; either one alone reports only its own check", () => {
    const f = tcp4();
    assert.deepEqual(rxChecksum(f, 0), { status: RXSTAT.IXSM, errors: 0 });
    assert.deepEqual(rxChecksum(f, IPOFL), { status: RXSTAT.IPCS, errors: 0 });
    assert.deepEqual(rxChecksum(f, TUOFL), { status: RXSTAT.TCPCS, errors: 0 });
    assert.deepEqual(rxChecksum(f, BOTH), OK4);
    assert.deepEqual(rxChecksum(flip(f, 22), TUOFL), { status: RXSTAT.TCPCS, errors: 0 }, "IP not checked");
    assert.deepEqual(rxChecksum(flip(f, 60), IPOFL), { status: RXSTAT.IPCS, errors: 0 }, "TCP not checked");
  });

  test("IPv4: a wrong header checksum is IPE, a wrong TCP or UDP checksum TCPE", () => {
    assert.deepEqual(rxChecksum(flip(tcp4(), 22), BOTH), { status: OK4.status, errors: RXERR.IPE });
    assert.deepEqual(rxChecksum(flip(tcp4(), 70), BOTH), { status: OK4.status, errors: RXERR.TCPE });
    assert.deepEqual(rxChecksum(udp4(), BOTH), OK4);
    assert.deepEqual(rxChecksum(flip(udp4(), 50), BOTH), { status: OK4.status, errors: RXERR.TCPE });
  });

  test("a UDP checksum of 0 over IPv4 means none and passes; over IPv6 it is checked (and wrong)", () => {
    const u = udp4();
    u[40] = 0;
    u[41] = 0;
    assert.deepEqual(rxChecksum(u, BOTH), OK4);
    const u6 = v6(17, udpDatagram(pattern(50, 4)));
    assert.deepEqual(rxChecksum(u6, TUOFL), { status: RXSTAT.TCPCS, errors: 0 });
    u6[14 + 40 + 6] = 0;
    u6[14 + 40 + 7] = 0;
    assert.deepEqual(rxChecksum(u6, TUOFL), { status: RXSTAT.TCPCS, errors: RXERR.TCPE });
  });

  test("IPv6: TCP and UDP get TCPCS (TCPE when wrong), never IPCS; other next headers nothing", () => {
    const t6 = v6(6, tcpSegment({ payload: pattern(80, 5) }));
    assert.deepEqual(rxChecksum(t6, BOTH), { status: RXSTAT.TCPCS, errors: 0 });
    assert.deepEqual(rxChecksum(flip(t6, 100), BOTH), { status: RXSTAT.TCPCS, errors: RXERR.TCPE });
    assert.deepEqual(rxChecksum(v6(58, pattern(40)), BOTH), NOTHING, "ICMPv6");
    assert.deepEqual(rxChecksum(v6(0, pattern(40)), BOTH), NOTHING, "an extension header");
    // Payload length running past the frame: not parsed. Exactly to the end: parsed.
    const long = t6.slice();
    long[19] = (long[19] as number) + 1;
    assert.deepEqual(rxChecksum(long, BOTH), NOTHING);
    assert.deepEqual(rxChecksum(t6.subarray(0, t6.length - 1), BOTH), NOTHING);
    // Not version 6 behind the IPv6 EtherType, or too short for the fixed header: nothing.
    const v4in6 = t6.slice();
    v4in6[14] = 0x45;
    assert.deepEqual(rxChecksum(v4in6, BOTH), NOTHING);
    assert.deepEqual(rxChecksum(t6.subarray(0, 14 + 39), BOTH), NOTHING);
  });

  test("an 802.1Q tag left in the frame is skipped; a tag with nothing behind it is not parsed", () => {
    const f = tcp4();
    const tagged = new Uint8Array(f.length + 4);
    tagged.set(f.subarray(0, 12));
    tagged.set([0x81, 0x00, 0x00, 0x05], 12);
    tagged.set(f.subarray(12), 16);
    assert.deepEqual(rxChecksum(tagged, BOTH), OK4);
    assert.deepEqual(rxChecksum(tagged.subarray(0, 17), BOTH), NOTHING);
    assert.deepEqual(rxChecksum(tagged.subarray(0, 18), BOTH), NOTHING);
  });

  test("IPv4 fragments get IPCS only; so do packets whose length does not fit; other protocols IPCS only", () => {
    const mf = tcp4();
    mf[20] = 0x20; // MF, DF clear
    fixIpSum(mf);
    assert.deepEqual(rxChecksum(mf, BOTH), { status: RXSTAT.IPCS, errors: 0 });
    const offset = tcp4();
    offset[20] = 0x00;
    offset[21] = 0x01; // fragment offset 8
    fixIpSum(offset);
    assert.deepEqual(rxChecksum(offset, BOTH), { status: RXSTAT.IPCS, errors: 0 });
    const tooLong = tcp4();
    tooLong[17] = (tooLong[17] as number) + 1; // total length one past the frame
    fixIpSum(tooLong);
    assert.deepEqual(rxChecksum(tooLong, BOTH), { status: RXSTAT.IPCS, errors: 0 });
    const belowIhl = tcp4();
    belowIhl[16] = 0;
    belowIhl[17] = 19; // total length shorter than the header
    fixIpSum(belowIhl);
    assert.deepEqual(rxChecksum(belowIhl, BOTH), { status: RXSTAT.IPCS, errors: 0 });
    const icmp = tcp4();
    icmp[23] = 1;
    fixIpSum(icmp);
    assert.deepEqual(rxChecksum(icmp, BOTH), { status: RXSTAT.IPCS, errors: 0 });
  });

  test("the checksum covers the IP total length only: padding behind the packet is ignored", () => {
    const f = tcp4(4);
    const padded = new Uint8Array(f.length + 6);
    padded.set(f);
    padded.fill(0xee, f.length);
    assert.deepEqual(rxChecksum(padded, BOTH), OK4);
  });

  test("a TCP segment under 20 bytes or a UDP datagram under 8 is not checked; exactly 20 and 8 are", () => {
    const t20 = v4(6, tcpSegment({ payload: new Uint8Array(0) }));
    assert.deepEqual(rxChecksum(t20, BOTH), OK4);
    const t19 = v4(6, tcpSegment({ payload: new Uint8Array(0) }).subarray(0, 19));
    assert.deepEqual(rxChecksum(t19, BOTH), { status: RXSTAT.IPCS, errors: 0 });
    const u8 = v4(17, udpDatagram(new Uint8Array(0)));
    assert.deepEqual(rxChecksum(u8, BOTH), OK4);
    const u7 = v4(17, udpDatagram(new Uint8Array(0)).subarray(0, 7));
    assert.deepEqual(rxChecksum(u7, BOTH), { status: RXSTAT.IPCS, errors: 0 });
  });

  test("malformed IPv4 headers: IHL under 5 or past the frame, version not 4, a truncated header: nothing", () => {
    const f = tcp4();
    const ihl4 = f.slice();
    ihl4[14] = 0x44;
    assert.deepEqual(rxChecksum(ihl4, BOTH), NOTHING);
    const ihlPast = f.slice(0, 14 + 24);
    ihlPast[14] = 0x47; // 28-byte header in a frame with 24 bytes of IP
    assert.deepEqual(rxChecksum(ihlPast, BOTH), NOTHING);
    // A 20-byte header that ends exactly at the end of the frame is checked (no L4: total says 20).
    const bare = f.slice(0, 14 + 20);
    bare[16] = 0;
    bare[17] = 20;
    fixIpSum(bare);
    assert.deepEqual(rxChecksum(bare, BOTH), { status: RXSTAT.IPCS, errors: 0 });
    assert.deepEqual(rxChecksum(f.subarray(0, 14 + 19), BOTH), NOTHING);
    const v6in4 = f.slice();
    v6in4[14] = 0x65;
    assert.deepEqual(rxChecksum(v6in4, BOTH), NOTHING);
    assert.deepEqual(rxChecksum(ethFrame(NIC_MAC, PEER_MAC, 0x0806, pattern(28)), BOTH), NOTHING, "ARP");
    assert.deepEqual(rxChecksum(f.subarray(0, 13), BOTH), NOTHING);
  });

  test("only the IPv6 EtherType makes an IPv6 header: the same bytes behind another EtherType get nothing", () => {
    const t6 = v6(6, tcpSegment({ payload: pattern(80, 5) }));
    assert.deepEqual(rxChecksum(t6, BOTH), { status: RXSTAT.TCPCS, errors: 0 });
    for (const type of [0x88b5, 0x0806, 0x8100 + 1]) {
      const other = t6.slice();
      other[12] = type >> 8;
      other[13] = type & 0xff;
      assert.deepEqual(rxChecksum(other, BOTH), NOTHING, `EtherType ${type.toString(16)}`);
    }
  });

  test("a TCP segment whose bytes 6-7 are zero is still checked: the zero-checksum rule is UDP's only", () => {
    // Sequence number 0x12340000: its low half sits where UDP keeps its checksum.
    const f = v4(6, tcpSegment({ payload: pattern(60, 7), seq: 0x12340000 }));
    assert.equal(f[14 + 20 + 6], 0);
    assert.equal(f[14 + 20 + 7], 0);
    assert.deepEqual(rxChecksum(f, BOTH), OK4);
    assert.deepEqual(rxChecksum(flip(f, 80), BOTH), { status: OK4.status, errors: RXERR.TCPE });
  });

  test("BSEX with BSIZE 00 is reserved and read as 2048 bytes", () => {
    assert.equal(rxBufferSize(RCTL.BSEX), 2048);
    assert.equal(rxBufferSize(RCTL.BSEX | (3 << 16)), 4096);
  });
});

describe("e1000 receive: edges", () => {
  test("a frame under 14 bytes is a runt (RUC), dropped; 14 bytes is a frame, padded to 60", () => {
    const { drv, wire } = ready();
    const header = ethFrame(NIC_MAC, PEER_MAC, 0x88b5, new Uint8Array(0));
    wire.send(header.subarray(0, 13));
    assert.equal(drv.receive().length, 0);
    assert.equal(drv.r32(STAT.RUC), 1);
    wire.send(header);
    const got = drv.receive();
    assert.equal(got.length, 1);
    assert.equal(got[0]?.data.length, 64);
    assert.deepEqual(got[0]?.data.subarray(0, 14), header);
  });

  test("with VET 0 and CTRL.VME, a frame of EtherType 0 is not taken for a tagged one", () => {
    const { drv, wire } = ready();
    drv.w32(REG.VET, 0);
    drv.w32(REG.CTRL, drv.r32(REG.CTRL) | CTRL_VME);
    const f = ethFrame(NIC_MAC, PEER_MAC, 0x0000, pattern(60, 2));
    wire.send(f);
    const [got] = drv.receive();
    assert.deepEqual(got?.data, withFcs(f));
    assert.equal((got?.status ?? 0) & RXSTAT.VP, 0);
  });

  test("a frame needing every buffer but one fits the ring; one needing them all is dropped, not kept waiting", () => {
    const { drv, wire, dev } = ready({ count: 8, rctl: RCTL.BAM | RCTL.LPE | (3 << 16), bufSize: 256 });
    const seven = toNic(7 * 256 - 4 - 14, 3); // with its FCS: exactly 7 buffers
    wire.send(seven);
    const got = drv.receive();
    assert.equal(got.length, 1);
    assert.equal(got[0]?.descriptors, 7);
    wire.send(toNic(7 * 256 - 4 - 14 + 1, 4)); // 8 buffers: more than an 8-descriptor ring ever offers
    assert.equal(dev.errorCounts()["rx-frame-exceeds-ring"], 1);
    assert.equal(wire.peer.stats().queued, 0);
  });

  test("a last buffer that ends exactly at the end of guest RAM holds the frame's last bytes", () => {
    const { drv, wire, mem, dev } = ready({ count: 8, rctl: RCTL.BAM | (3 << 16), bufSize: 256 });
    mem.writeU64(drv.rxDescAddr(1), BigInt(MEM_SIZE - 44)); // 300 - 256 = 44 bytes go there
    const f = toNic(300 - 4 - 14, 5);
    wire.send(f);
    assert.deepEqual(dev.errorCounts(), {});
    assert.deepEqual(mem.slice(MEM_SIZE - 44, 44), withFcs(f).subarray(256));
    assert.equal(mem.readU8(drv.rxDescAddr(1) + 12) & (RXSTAT.DD | RXSTAT.EOP), RXSTAT.DD | RXSTAT.EOP);
  });

  test("the packet checksum from RXCSUM.PCSS is in the first descriptor only; PCSS past the frame gives 0", () => {
    const { drv, wire, mem } = ready({ count: 8, rctl: RCTL.BAM | (3 << 16), bufSize: 256 });
    drv.w32(REG.RXCSUM, 14);
    const f = toNic(600, 6);
    wire.send(f);
    const [got] = drv.receive(false);
    assert.equal(got?.descriptors, 3);
    assert.equal(got?.csum, sum16(withFcs(f), 14));
    assert.equal(mem.readU16(drv.rxDescAddr(1) + 10), 0);
    assert.equal(mem.readU16(drv.rxDescAddr(2) + 10), 0);
    drv.w32(REG.RXCSUM, 70);
    wire.send(toNic(46, 7)); // 60 bytes + FCS = 64 < 70
    assert.equal(drv.receive()[0]?.csum, 0);
  });

  test("an exact address filter needs both halves: RAL and RAH (with AV) must match", () => {
    const { drv, wire } = ready();
    const addr = Uint8Array.of(0x02, 0x11, 0x22, 0x33, 0x44, 0x55);
    drv.w32(REG.RAL0 + 8, 0x33221102);
    drv.w32(REG.RAH0 + 8, 0x5544 | (1 << 31));
    const to = (dst: Uint8Array) => ethFrame(dst, PEER_MAC, 0x88b5, pattern(60, dst[5]));
    wire.send(to(Uint8Array.of(0x02, 0x11, 0x22, 0x33, 0x44, 0x56))); // RAL matches, RAH does not
    wire.send(to(Uint8Array.of(0x02, 0x11, 0x22, 0x34, 0x44, 0x55))); // RAH matches, RAL does not
    wire.send(to(addr));
    const got = drv.receive();
    assert.equal(got.length, 1);
    assert.deepEqual(got[0]?.data.subarray(0, 6), addr);
  });

  test("after close, frames offered are dropped (not left queued in the backend)", () => {
    const { wire, dev } = ready();
    dev.close();
    wire.send(toNic(100));
    assert.equal(wire.peer.stats().queued, 0);
    assert.equal(wire.peer.stats().delivered, 1);
  });

  test("PRC size buckets count received frames with their FCS, each boundary in its own bucket", () => {
    const { drv, wire } = ready({ count: 16, rctl: RCTL.BAM | RCTL.LPE });
    for (const len of [60, 61, 123, 124, 251, 252, 507, 508, 1019, 1020, 1518, 1519]) {
      wire.send(toNic(len - 14, len));
      drv.receive();
    }
    const buckets = [STAT.PRC64, STAT.PRC127, STAT.PRC255, STAT.PRC511, STAT.PRC1023, STAT.PRC1522];
    assert.deepEqual(
      buckets.map((r) => drv.r32(r)),
      [1, 2, 2, 2, 2, 2],
    );
    assert.equal(drv.r32(STAT.GPRC), 12);
  });
});
