import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  insertContextChecksums,
  insertLegacyChecksum,
  MAX_TX_FRAME,
  planTso,
  type TxContext,
  tsoSegment,
} from "../../src/devices/e1000/offload.ts";
import {
  CTRL_VME,
  ethFrame,
  ICR,
  ipv4HeaderOk,
  ipv4Packet,
  ipv4TcpFrame,
  ipv6TcpFrame,
  l4ChecksumOk,
  makeNic,
  NIC_MAC,
  PEER_MAC,
  POPTS,
  pattern,
  REG,
  STAT,
  setL4Checksum,
  sum16,
  TCP_ACK,
  TCP_FIN,
  TCP_PSH,
  TCTL_EN,
  TUCMD,
  u16be,
  u32be,
  udpDatagram,
} from "../helpers/e1000-driver.ts";

function ready(opts: Parameters<typeof makeNic>[0] = {}, txCount = 16) {
  const nic = makeNic(opts);
  nic.drv.reset();
  nic.drv.setupTx(txCount);
  return nic;
}

describe("e1000 transmit: legacy descriptors", () => {
  test("one descriptor: the exact frame reaches the wire, DD is written back, TDH follows TDT", () => {
    const { drv, sent, dev } = ready();
    const f = ethFrame(PEER_MAC, NIC_MAC, 0x88b5, pattern(200));
    const i = drv.sendLegacy([f]);
    assert.equal(sent.length, 1);
    assert.deepEqual(sent[0], f);
    assert.equal(drv.txDone(i), true);
    assert.equal(drv.r32(REG.TDH), 1);
    assert.equal(drv.readIcr(), ICR.TXDW | ICR.TXQE);
    assert.deepEqual(dev.errorCounts(), {});
  });

  test("a frame split over several descriptors is joined; only descriptors with RS get DD", () => {
    const { drv, sent } = ready();
    const f = ethFrame(PEER_MAC, NIC_MAC, 0x88b5, pattern(1000, 3));
    const parts = [f.subarray(0, 14), f.subarray(14, 500), f.subarray(500, 501), f.subarray(501)];
    const last = drv.sendLegacy(parts);
    assert.equal(sent.length, 1);
    assert.deepEqual(sent[0], f);
    assert.equal(drv.txDone(last - 1), false);
    assert.equal(drv.txDone(last), true);
  });

  test("TCTL.PSP pads short frames to 60 bytes; without it they go out as given", () => {
    const { drv, sent } = ready();
    const short = ethFrame(PEER_MAC, NIC_MAC, 0x0806, pattern(28));
    drv.sendLegacy([short]);
    assert.equal(sent[0]?.length, 60);
    assert.deepEqual(sent[0]?.subarray(0, 42), short);
    assert.ok(sent[0]?.subarray(42).every((b) => b === 0));
    drv.w32(REG.TCTL, TCTL_EN);
    drv.sendLegacy([short]);
    assert.deepEqual(sent[1], short);
  });

  test("nothing is sent while TCTL.EN is clear; enabling sends what is queued", () => {
    const { drv, sent } = ready();
    drv.w32(REG.TCTL, 0);
    drv.sendLegacy([ethFrame(PEER_MAC, NIC_MAC, 0x88b5, pattern(64, 1))]);
    drv.sendLegacy([ethFrame(PEER_MAC, NIC_MAC, 0x88b5, pattern(64, 2))]);
    assert.equal(sent.length, 0);
    assert.equal(drv.r32(REG.TDH), 0);
    drv.w32(REG.TCTL, TCTL_EN);
    assert.equal(sent.length, 2);
    assert.equal(sent[1]?.[14], pattern(64, 2)[0]);
  });

  test("legacy IC inserts the one's-complement sum from CSS to the end at CSO (UDP with a seeded pseudo-header)", () => {
    const { drv, sent } = ready();
    const reference = ethFrame(
      PEER_MAC,
      NIC_MAC,
      0x0800,
      ipv4Packet({ proto: 17, l4: udpDatagram(pattern(301)) }),
    );
    setL4Checksum(reference, "full");
    const f = reference.slice();
    setL4Checksum(f, "pseudo");
    assert.notDeepEqual(f, reference);
    drv.sendLegacy([f.subarray(0, 40), f.subarray(40)], { ic: { css: 34, cso: 40 } });
    assert.deepEqual(sent[0], reference);
    assert.equal(l4ChecksumOk(sent[0] as Uint8Array), true);
  });

  test("IC with CSS or CSO outside the packet is ignored (SDM 3.3.3.1) and counted", () => {
    const { drv, sent, dev } = ready();
    const f = ethFrame(PEER_MAC, NIC_MAC, 0x88b5, pattern(50));
    drv.sendLegacy([f], { ic: { css: 200, cso: 10 } });
    assert.deepEqual(sent[0], f);
    assert.equal(dev.errorCounts()["tx-csum-range"], 1);
  });

  test("the ring wraps: 100 frames through an 8-descriptor ring arrive in order", () => {
    const { drv, sent, dev } = ready({}, 8);
    for (let n = 0; n < 100; n++) {
      const f = ethFrame(PEER_MAC, NIC_MAC, 0x88b5, pattern(60 + (n % 40), n));
      f[14] = n;
      drv.sendLegacy(n % 3 === 0 ? [f.subarray(0, 20), f.subarray(20)] : [f]);
    }
    assert.equal(sent.length, 100);
    assert.ok(sent.every((f, n) => f[14] === n));
    assert.equal(drv.r32(REG.TDH), drv.txTail);
    assert.deepEqual(dev.errorCounts(), {});
  });

  test("the length field of a legacy descriptor is 16 bits: 16384 bytes go out whole, 0x8010 is over the limit", () => {
    const { drv, sent, dev, mem } = ready();
    const big = ethFrame(PEER_MAC, NIC_MAC, 0x88b5, pattern(16384 - 14, 2));
    drv.sendLegacy([big]);
    assert.equal(sent.length, 1);
    assert.deepEqual(sent[0], big);
    // 0x8010 bytes: dropped as oversize (16 KiB is the most a packet may have); read as 14 bits it would be 16.
    const d = new Uint8Array(16);
    const v = new DataView(d.buffer);
    v.setBigUint64(0, BigInt(drv.stage(pattern(0x8010, 3))), true);
    v.setUint16(8, 0x8010, true);
    d[11] = 0x0b; // EOP | IFCS | RS
    const i = drv.putRawTx(d);
    drv.kick();
    assert.equal(sent.length, 1);
    assert.equal(dev.errorCounts()["tx-oversize"], 1);
    assert.equal(mem.readU16(drv.txDescAddr(i) + 8), 0x8010, "the descriptor itself is not rewritten");
  });

  test("DD write-back sets DD and clears EC/LC/TU in STA, keeps the byte's reserved upper bits and the rest of the descriptor", () => {
    const { drv, mem } = ready();
    const f = ethFrame(PEER_MAC, NIC_MAC, 0x88b5, pattern(100, 4));
    const c = drv.queueContext({ tucss: 34, tucso: 50, tucmd: TUCMD.TCP, rs: true });
    const l = drv.queueLegacy([f]);
    const descs = [c, l].map((i) => drv.txDescAddr(i));
    for (const at of descs) {
      mem.writeU8(at + 12, 0xfe); // reserved 7:4 all set, TU/LC/EC set, DD clear
      mem.write(at + 13, Uint8Array.of(0x21, 0x43, 0x65)); // CSS / HDRLEN, special / MSS: used by neither
    }
    const before = descs.map((at) => mem.slice(at, 16).slice());
    drv.kick();
    descs.forEach((at, n) => {
      const after = mem.slice(at, 16);
      assert.equal(after[12], 0xf1, `descriptor ${n}: STA`);
      after[12] = 0xfe;
      assert.deepEqual(after, before[n], `descriptor ${n}: nothing else written`);
    });
  });

  test("VLE with CTRL.VME inserts an 802.1Q tag from VET and the special field; without VME no tag", () => {
    const { drv, sent } = ready();
    const f = ethFrame(PEER_MAC, NIC_MAC, 0x0800, pattern(100));
    drv.sendLegacy([f], { vlan: 0x2064 });
    assert.deepEqual(sent[0], f, "VME off: VLE ignored");
    drv.w32(REG.CTRL, drv.r32(REG.CTRL) | CTRL_VME);
    drv.sendLegacy([f], { vlan: 0x2064 });
    const t = sent[1] as Uint8Array;
    assert.equal(t.length, f.length + 4);
    assert.deepEqual(t.subarray(0, 12), f.subarray(0, 12));
    assert.equal(u16be(t, 12), 0x8100);
    assert.equal(u16be(t, 14), 0x2064);
    assert.deepEqual(t.subarray(16), f.subarray(12));
  });
});

describe("e1000 transmit: checksum offload through a context", () => {
  test("IPv4/TCP: IXSM and TXSM produce the exact frame a full software checksum gives", () => {
    const { drv, sent, dev } = ready();
    const reference = ipv4TcpFrame(pattern(777, 5), { seq: 0xfffffff0 });
    const f = reference.slice();
    f[24] = 0;
    f[25] = 0; // IP checksum left to the device
    setL4Checksum(f, "pseudo"); // Linux seeds the TCP checksum with the pseudo-header sum
    drv.queueContext({
      ipcss: 14,
      ipcso: 24,
      ipcse: 33,
      tucss: 34,
      tucso: 50,
      tucse: 0,
      tucmd: TUCMD.TCP | TUCMD.IP,
    });
    drv.queueData([f.subarray(0, 54), f.subarray(54, 300), f.subarray(300)], {
      popts: POPTS.IXSM | POPTS.TXSM,
    });
    drv.kick();
    assert.equal(sent.length, 1);
    assert.deepEqual(sent[0], reference);
    assert.equal(ipv4HeaderOk(sent[0] as Uint8Array), true);
    assert.equal(l4ChecksumOk(sent[0] as Uint8Array), true);
    assert.deepEqual(dev.errorCounts(), {});
  });

  test("only TXSM, as Linux's e1000_tx_csum sets up: the IP header is left alone", () => {
    const { drv, sent } = ready();
    const reference = ipv4TcpFrame(pattern(100, 6));
    const f = reference.slice();
    setL4Checksum(f, "pseudo");
    drv.queueContext({ tucss: 34, tucso: 50, tucmd: TUCMD.TCP });
    drv.queueData([f], { popts: POPTS.TXSM });
    drv.kick();
    assert.deepEqual(sent[0], reference);
  });

  test("IPv6/UDP checksum through a context (TUCMD.TCP clear)", () => {
    const { drv, sent } = ready();
    const udp = udpDatagram(pattern(123, 8));
    const ip6 = new Uint8Array(40 + udp.length);
    ip6[0] = 0x60;
    ip6[4] = udp.length >> 8;
    ip6[5] = udp.length & 0xff;
    ip6[6] = 17;
    ip6[7] = 64;
    for (let i = 8; i < 40; i++) ip6[i] = i * 3;
    ip6.set(udp, 40);
    const f = ethFrame(PEER_MAC, NIC_MAC, 0x86dd, ip6);
    setL4Checksum(f, "pseudo");
    drv.queueContext({ tucss: 54, tucso: 60, tucmd: 0 });
    drv.queueData([f], { popts: POPTS.TXSM });
    drv.kick();
    assert.equal(l4ChecksumOk(sent[0] as Uint8Array), true);
    assert.notEqual(u16be(sent[0] as Uint8Array, 60), 0);
  });

  test("a context descriptor with RS gets DD too", () => {
    const { drv } = ready();
    const c = drv.queueContext({ tucss: 34, tucso: 50, tucmd: TUCMD.TCP, rs: true });
    const d = drv.queueData([ipv4TcpFrame(pattern(10))], { popts: POPTS.TXSM });
    drv.kick();
    assert.equal(drv.txDone(c), true);
    assert.equal(drv.txDone(d), true);
  });
});

/** Builds the TSO prototype a driver hands over: header with lengths/checksums prepared as e1000_tso does. */
function tsoPacket(payload: Uint8Array, flags = TCP_ACK | TCP_PSH | TCP_FIN): Uint8Array {
  const f = ipv4TcpFrame(payload, { seq: 0xffffff00, flags }, { id: 0xfffe });
  f[16] = 0;
  f[17] = 0; // tot_len = 0
  f[24] = 0;
  f[25] = 0; // check = 0
  setL4Checksum(f, "pseudo-nolen", 14);
  return f;
}

describe("e1000 transmit: TCP segmentation", () => {
  test("IPv4: segments of MSS with fixed lengths, IDs, sequence numbers, flags and checksums", () => {
    const { drv, sent, dev } = ready();
    const payload = pattern(5000, 9);
    const pkt = tsoPacket(payload);
    // setL4Checksum needs the real length to find the segment; recompute the seed on a copy with tot_len set.
    const mss = 1448;
    const hdr = 54;
    drv.queueContext({
      ipcss: 14,
      ipcso: 24,
      ipcse: 33,
      tucss: 34,
      tucso: 50,
      tucse: 0,
      paylen: payload.length,
      hdrlen: hdr,
      mss,
      tucmd: TUCMD.TSE | TUCMD.TCP | TUCMD.IP,
    });
    // Header in its own buffer, payload over three, with Linux's 4-byte sentinel at the end.
    drv.queueData(
      [
        pkt.subarray(0, hdr),
        pkt.subarray(hdr, 2000),
        pkt.subarray(2000, pkt.length - 4),
        pkt.subarray(pkt.length - 4),
      ],
      { tse: true, popts: POPTS.IXSM | POPTS.TXSM },
    );
    drv.kick();
    assert.deepEqual(dev.errorCounts(), {});
    assert.equal(sent.length, 4);
    const joined: number[] = [];
    sent.forEach((s, n) => {
      const last = n === sent.length - 1;
      const len = last ? payload.length - 3 * mss : mss;
      assert.equal(s.length, hdr + len, `segment ${n} length`);
      assert.deepEqual(s.subarray(0, 14), pkt.subarray(0, 14));
      assert.equal(u16be(s, 16), 40 + len, "IP total length");
      assert.equal(u16be(s, 18), (0xfffe + n) & 0xffff, "IP identification");
      assert.equal(u32be(s, 38), (0xffffff00 + n * mss) >>> 0, "TCP sequence number");
      const flags = s[47] as number;
      assert.equal(flags & TCP_ACK, TCP_ACK);
      assert.equal(flags & (TCP_FIN | TCP_PSH), last ? TCP_FIN | TCP_PSH : 0, "FIN/PSH only on the last");
      assert.equal(ipv4HeaderOk(s), true, `segment ${n} IP checksum`);
      assert.equal(l4ChecksumOk(s), true, `segment ${n} TCP checksum`);
      joined.push(...s.subarray(hdr));
    });
    assert.deepEqual(Uint8Array.from(joined), payload);
    assert.equal(drv.r32(STAT.TSCTC), 1);
    assert.equal(drv.r32(STAT.GPTC), 4);
  });

  test("payload an exact multiple of MSS, and a payload smaller than MSS", () => {
    const { drv, sent } = ready();
    for (const [size, segs] of [
      [3000, 3],
      [500, 1],
    ] as const) {
      sent.length = 0;
      const pkt = tsoPacket(pattern(size, size));
      drv.queueContext({
        ipcss: 14,
        ipcso: 24,
        ipcse: 33,
        tucss: 34,
        tucso: 50,
        paylen: size,
        hdrlen: 54,
        mss: 1000,
        tucmd: TUCMD.TSE | TUCMD.TCP | TUCMD.IP,
      });
      drv.queueData([pkt], { tse: true, popts: POPTS.IXSM | POPTS.TXSM });
      drv.kick();
      assert.equal(sent.length, segs);
      for (const s of sent) {
        assert.equal(ipv4HeaderOk(s), true);
        assert.equal(l4ChecksumOk(s), true);
      }
    }
  });

  test("IPv6: payload length per segment and TCP checksums", () => {
    const { drv, sent, dev } = ready();
    const payload = pattern(3000, 11);
    const f = ipv6TcpFrame(payload, { seq: 7, flags: TCP_ACK | TCP_PSH });
    f[18] = 0;
    f[19] = 0; // payload_len = 0 as e1000_tso leaves it
    // Seed: IPv6 pseudo-header without the length.
    let s = 6;
    for (let i = 22; i < 54; i += 2) s += u16be(f, i);
    while (s >> 16) s = (s & 0xffff) + (s >>> 16);
    f[70] = s >> 8;
    f[71] = s & 0xff;
    const hdr = 74;
    drv.queueContext({
      ipcss: 14,
      tucss: 54,
      tucso: 70,
      paylen: payload.length,
      hdrlen: hdr,
      mss: 1220,
      tucmd: TUCMD.TSE | TUCMD.TCP,
    });
    drv.queueData([f], { tse: true, popts: POPTS.TXSM });
    drv.kick();
    assert.deepEqual(dev.errorCounts(), {});
    assert.equal(sent.length, 3);
    sent.forEach((seg, n) => {
      const len = n < 2 ? 1220 : 3000 - 2 * 1220;
      assert.equal(u16be(seg, 18), 20 + len, "IPv6 payload length");
      assert.equal(u32be(seg, 58), 7 + n * 1220);
      assert.equal(l4ChecksumOk(seg), true, `segment ${n}`);
      assert.equal((seg[67] as number) & TCP_PSH, n === 2 ? TCP_PSH : 0);
    });
  });

  test("VLAN tag goes on every segment when the first data descriptor asks for it", () => {
    const { drv, sent } = ready();
    drv.w32(REG.CTRL, drv.r32(REG.CTRL) | CTRL_VME);
    const pkt = tsoPacket(pattern(2000, 2));
    drv.queueContext({
      ipcss: 14,
      ipcso: 24,
      ipcse: 33,
      tucss: 34,
      tucso: 50,
      paylen: 2000,
      hdrlen: 54,
      mss: 1000,
      tucmd: TUCMD.TSE | TUCMD.TCP | TUCMD.IP,
    });
    drv.queueData([pkt.subarray(0, 100), pkt.subarray(100)], {
      tse: true,
      popts: POPTS.IXSM | POPTS.TXSM,
      vlan: 5,
    });
    drv.kick();
    assert.equal(sent.length, 2);
    for (const s of sent) {
      assert.equal(u16be(s, 12), 0x8100);
      assert.equal(u16be(s, 14), 5);
      const untagged = new Uint8Array(s.length - 4);
      untagged.set(s.subarray(0, 12));
      untagged.set(s.subarray(16), 12);
      assert.equal(ipv4HeaderOk(untagged), true);
      assert.equal(l4ChecksumOk(untagged), true);
    }
  });

  test("a PAYLEN that disagrees with the data is counted in TSCTFC; the data present is still segmented", () => {
    const { drv, sent, dev } = ready();
    const pkt = tsoPacket(pattern(1500, 4));
    drv.queueContext({
      ipcss: 14,
      ipcso: 24,
      ipcse: 33,
      tucss: 34,
      tucso: 50,
      paylen: 9999,
      hdrlen: 54,
      mss: 1000,
      tucmd: TUCMD.TSE | TUCMD.TCP | TUCMD.IP,
    });
    drv.queueData([pkt], { tse: true, popts: POPTS.IXSM | POPTS.TXSM });
    drv.kick();
    assert.equal(sent.length, 2);
    assert.equal(dev.errorCounts()["tso-paylen"], 1);
    assert.equal(drv.r32(STAT.TSCTFC), 1);
  });
});

describe("e1000 transmit interrupts", () => {
  test("RS without IDE raises TXDW at once; TXQE when the ring is empty", () => {
    const nic = ready();
    nic.drv.w32(REG.IMS, ICR.TXDW);
    nic.drv.sendLegacy([ethFrame(PEER_MAC, NIC_MAC, 0x88b5, pattern(60))]);
    assert.equal(nic.irqLevel, true);
    assert.equal(nic.drv.readIcr(), ICR.TXDW | ICR.TXQE);
  });

  test("no RS: no TXDW, no write-back", () => {
    const { drv } = ready();
    const i = drv.sendLegacy([ethFrame(PEER_MAC, NIC_MAC, 0x88b5, pattern(60))], { rs: false });
    assert.equal(drv.txDone(i), false);
    assert.equal(drv.readIcr(), ICR.TXQE);
  });

  test("IDE delays TXDW by TIDV, restarted by each descriptor, bounded by TADV", () => {
    const nic = ready();
    const { drv, dev, clock } = nic;
    drv.w32(REG.TIDV, 100); // 102.4 µs
    drv.w32(REG.TADV, 250); // 256 µs
    drv.w32(REG.IMS, ICR.TXDW);
    const f = ethFrame(PEER_MAC, NIC_MAC, 0x88b5, pattern(60));
    drv.sendLegacy([f], { ide: true });
    assert.equal(nic.irqLevel, false);
    assert.equal(dev.nextDeadline(), 100 * 1.024e-3);
    clock.t = 0.08;
    drv.sendLegacy([f], { ide: true }); // restarts the packet timer
    clock.t = 0.15;
    dev.poll();
    assert.equal(nic.irqLevel, false, "restarted delay timer not yet expired");
    clock.t = 0.16;
    drv.sendLegacy([f], { ide: true });
    clock.t = 0.2561;
    dev.poll();
    assert.equal(nic.irqLevel, true, "the absolute timer fires even though the delay keeps restarting");
    assert.equal(drv.readIcr() & ICR.TXDW, ICR.TXDW);
    assert.equal(dev.nextDeadline(), undefined);
  });
});

describe("e1000 transmit offloads as functions (offload.ts)", () => {
  const TSO_IPV4_TCP: TxContext = {
    ipcss: 14,
    ipcso: 24,
    ipcse: 33,
    tucss: 34,
    tucso: 50,
    tucse: 0,
    paylen: 0,
    tucmd: TUCMD.TSE | TUCMD.TCP | TUCMD.IP,
    hdrlen: 54,
    mss: 1000,
  };
  /** planTso on a packet of HDRLEN + `payload` bytes (the contents do not matter to the plan). */
  const plan = (o: Partial<TxContext>, payload = 3000, ixsm = true, txsm = true) => {
    const ctx = { ...TSO_IPV4_TCP, ...o };
    return planTso(new Uint8Array(ctx.hdrlen + payload), ctx, ixsm, txsm);
  };
  const HDR = { error: "tso-header-length" };

  test("planTso: segment counts, and the header offsets each accepted up to their limit and refused past it", () => {
    assert.deepEqual(plan({}), { count: 3 });
    assert.deepEqual(plan({}, 3001), { count: 4 });
    assert.deepEqual(plan({}, 0), { count: 1 }, "a header alone is one segment");
    assert.deepEqual(plan({ mss: 0 }), { error: "tso-mss-zero" });
    assert.deepEqual(plan({ hdrlen: 0 }), HDR);
    assert.deepEqual(planTso(new Uint8Array(54), { ...TSO_IPV4_TCP, hdrlen: 55 }, true, true), HDR);
    // IPv4 needs 20 bytes of IP header inside HDRLEN, IPv6 40 (a UDP context isolates that rule).
    const udp4 = { tucmd: TUCMD.TSE | TUCMD.IP, ipcss: 14, tucss: 14 };
    assert.deepEqual(plan({ ...udp4, hdrlen: 34 }, 100, false, false), { count: 1 });
    assert.deepEqual(plan({ ...udp4, hdrlen: 33 }, 100, false, false), HDR);
    const udp6 = { tucmd: TUCMD.TSE, ipcss: 14, tucss: 14 };
    assert.deepEqual(plan({ ...udp6, hdrlen: 54 }, 100, false, false), { count: 1 });
    assert.deepEqual(plan({ ...udp6, hdrlen: 53 }, 100, false, false), HDR);
    assert.deepEqual(plan({ ...udp6, hdrlen: 40 }, 100, false, false), HDR);
    // TCP needs 20 bytes from TUCSS, UDP 8; TUCSS may equal IPCSS but not precede it.
    assert.deepEqual(plan({ ipcss: 14, tucss: 14, hdrlen: 34 }, 100, false, false), { count: 1 });
    assert.deepEqual(plan({ tucss: 34, hdrlen: 53 }, 100, false, false), HDR);
    assert.deepEqual(plan({ tucmd: TUCMD.TSE | TUCMD.IP, tucss: 34, hdrlen: 42 }, 100, false, false), {
      count: 1,
    });
    assert.deepEqual(plan({ tucmd: TUCMD.TSE | TUCMD.IP, tucss: 34, hdrlen: 41 }, 100, false, false), HDR);
    assert.deepEqual(plan({ tucss: 13 }, 100, false, false), HDR);
    // IXSM: IPCSO's two bytes and IPCSS..IPCSE (IPCSE 0: up to TUCSS - 1) inside the header.
    assert.deepEqual(plan({ ipcso: 52 }), { count: 3 });
    assert.deepEqual(plan({ ipcso: 53 }), HDR);
    assert.deepEqual(plan({ ipcso: 53 }, 3000, false, true), { count: 3 }, "not checked without IXSM");
    assert.deepEqual(plan({ ipcse: 53 }), { count: 3 });
    assert.deepEqual(plan({ ipcse: 54 }), HDR);
    assert.deepEqual(plan({ ipcse: 14 }), { count: 3 });
    assert.deepEqual(plan({ ipcse: 13 }), HDR);
    assert.deepEqual(plan({ ipcse: 0 }), { count: 3 });
    // TXSM: TUCSO's two bytes inside the header, at or after TUCSS.
    assert.deepEqual(plan({ tucso: 52 }), { count: 3 });
    assert.deepEqual(plan({ tucso: 53 }), HDR);
    assert.deepEqual(plan({ tucso: 34 }), { count: 3 });
    assert.deepEqual(plan({ tucso: 33 }), HDR);
    assert.deepEqual(plan({ tucso: 33 }, 3000, true, false), { count: 3 }, "not checked without TXSM");
    // A segment is at most the largest frame.
    assert.deepEqual(plan({ mss: MAX_TX_FRAME - 54 }), { count: 1 });
    assert.deepEqual(plan({ mss: MAX_TX_FRAME - 53 }), { error: "tso-mss-too-big" });
  });

  test("tsoSegment builds into the buffer it is given, or a new one; the prototype is only read", () => {
    const pkt = tsoPacket(pattern(2500, 6));
    const before = pkt.slice();
    const ctx = { ...TSO_IPV4_TCP, paylen: 2500 };
    const out = new Uint8Array(MAX_TX_FRAME);
    for (let i = 0; i < 3; i++) {
      const a = tsoSegment(pkt, ctx, true, true, i, 3);
      const b = tsoSegment(pkt, ctx, true, true, i, 3, out);
      assert.equal(b.buffer, out.buffer);
      assert.deepEqual(a, b);
      assert.equal(a.length, 54 + (i < 2 ? 1000 : 500));
      assert.ok(ipv4HeaderOk(a) && l4ChecksumOk(a), `segment ${i} checksums`);
    }
    assert.deepEqual(pkt, before);
  });

  test("tsoSegment over UDP: each segment gets its UDP length and checksum, no sequence number or flags", () => {
    const payload = pattern(2100, 9);
    const ip = ipv4Packet({ proto: 17, l4: udpDatagram(payload) });
    const pkt = ethFrame(PEER_MAC, NIC_MAC, 0x0800, ip);
    pkt[16] = 0;
    pkt[17] = 0;
    pkt[24] = 0;
    pkt[25] = 0;
    pkt[38] = 0;
    pkt[39] = 0;
    setL4Checksum(pkt, "pseudo-nolen", 14);
    const ctx: TxContext = { ...TSO_IPV4_TCP, tucmd: TUCMD.TSE | TUCMD.IP, tucso: 40, hdrlen: 42, mss: 1000 };
    assert.deepEqual(planTso(pkt, ctx, true, true), { count: 3 });
    for (let i = 0; i < 3; i++) {
      const f = tsoSegment(pkt, ctx, true, true, i, 3);
      const len = i < 2 ? 1000 : 100;
      assert.equal(f.length, 42 + len);
      assert.equal(u16be(f, 38), 8 + len, "UDP length");
      assert.deepEqual(f.subarray(34, 38), pkt.subarray(34, 38), "ports untouched");
      assert.ok(ipv4HeaderOk(f) && l4ChecksumOk(f), `segment ${i} checksums`);
      assert.deepEqual(f.subarray(42), payload.subarray(i * 1000, i * 1000 + len));
    }
  });

  test("tsoSegment leaves the IP checksum alone without IXSM and the TCP checksum without TXSM", () => {
    const pkt = tsoPacket(pattern(1500, 2));
    const ctx = { ...TSO_IPV4_TCP, paylen: 1500 };
    const noIp = tsoSegment(pkt, ctx, false, true, 0, 2);
    assert.equal(u16be(noIp, 24), 0, "IP checksum as the prototype had it");
    assert.ok(l4ChecksumOk(noIp));
    const noL4 = tsoSegment(pkt, ctx, true, false, 0, 2);
    assert.ok(ipv4HeaderOk(noL4));
    assert.equal(u16be(noL4, 50), u16be(pkt, 50), "TCP checksum as the prototype had it");
    // IPCSE 0: the IP checksum covers IPCSS up to TUCSS - 1.
    const whole = tsoSegment(pkt, { ...ctx, ipcse: 0 }, true, true, 1, 2);
    assert.ok(ipv4HeaderOk(whole) && l4ChecksumOk(whole));
  });

  test("legacy checksum insertion (SDM §3.3.3.1): CSS up to the last byte and CSO up to the last two", () => {
    // The device sums CSS..end as the bytes are (software zeroes or seeds the field) and stores the complement.
    const sumFrom = (b: Uint8Array, css: number) => ~sum16(b, css) & 0xffff;
    for (const [css, cso, ok] of [
      [9, 0, true],
      [10, 0, false],
      [0, 8, true],
      [0, 9, false],
    ] as const) {
      const b = pattern(10, 4);
      const expected = sumFrom(b, css);
      assert.equal(insertLegacyChecksum(b, css, cso), ok, `CSS ${css} CSO ${cso}`);
      if (ok) assert.equal(u16be(b, cso), expected);
      else assert.deepEqual(b, pattern(10, 4), "nothing inserted");
    }
    // A sum that complements to 0 stays 0 (only UDP through a context maps it to 0xffff).
    const z = Uint8Array.of(0xff, 0xff, 0, 0);
    assert.equal(insertLegacyChecksum(z, 0, 2), true);
    assert.equal(u16be(z, 2), 0);
  });

  test("context checksum insertion: ranges to their last byte, IPCSE/TUCSE 0 to the end, UDP's 0 sent as 0xffff", () => {
    const ctx = (o: Partial<TxContext>): TxContext => ({
      ...TSO_IPV4_TCP,
      tucmd: TUCMD.TCP | TUCMD.IP,
      ...o,
    });
    const base = () => pattern(40, 5);
    // Summed as the bytes are, the field itself included when it lies in the range.
    const expect = (b: Uint8Array, start: number, end: number) => ~sum16(b, start, end + 1) & 0xffff;
    // IP: IPCSS..IPCSE inclusive, IPCSE 0 meaning the last byte; at IPCSO.
    for (const [ipcss, ipcse, ipcso, ok] of [
      [4, 39, 0, true],
      [4, 40, 0, false],
      [4, 4, 0, true],
      [5, 4, 0, false],
      [4, 0, 38, true],
      [4, 0, 39, false],
    ] as const) {
      const b = base();
      const b0 = b.slice();
      const err = insertContextChecksums(b, ctx({ ipcss, ipcse, ipcso }), true, false);
      assert.equal(err, ok ? undefined : "tx-csum-range", `IP ${ipcss}..${ipcse} at ${ipcso}`);
      if (ok) {
        assert.equal(u16be(b, ipcso), expect(b0, ipcss, ipcse === 0 ? 39 : ipcse));
      } else {
        assert.deepEqual(b, b0);
      }
    }
    // TCP/UDP: TUCSS..TUCSE (0: the end) at TUCSO; an IP range error does not stop it.
    const b = base();
    const b0 = b.slice();
    assert.equal(
      insertContextChecksums(b, ctx({ ipcss: 50, tucss: 10, tucse: 30, tucso: 2 }), true, true),
      "tx-csum-range",
    );
    assert.equal(u16be(b, 2), expect(b0, 10, 30));
    const b2 = base();
    assert.equal(insertContextChecksums(b2, ctx({ tucss: 10, tucse: 0, tucso: 2 }), false, true), undefined);
    assert.equal(u16be(b2, 2), expect(b0, 10, 39));
    assert.equal(insertContextChecksums(base(), ctx({ tucss: 10, tucso: 39 }), false, true), "tx-csum-range");
    // Without IXSM/TXSM nothing is touched, whatever the offsets.
    const b3 = base();
    assert.equal(insertContextChecksums(b3, ctx({ ipcss: 90, tucss: 90 }), false, false), undefined);
    assert.deepEqual(b3, base());
    // A checksum that complements to 0: 0xffff for UDP (RFC 768), 0 for TCP.
    const z = () => Uint8Array.of(0xff, 0xff, 0, 0);
    const udp = z();
    insertContextChecksums(udp, ctx({ tucmd: TUCMD.IP, tucss: 0, tucso: 2 }), false, true);
    assert.equal(u16be(udp, 2), 0xffff);
    const tcp = z();
    insertContextChecksums(tcp, ctx({ tucss: 0, tucso: 2 }), false, true);
    assert.equal(u16be(tcp, 2), 0);
  });
});

describe("e1000 transmit: edges", () => {
  const frame = (len: number, seed = 1, dst = PEER_MAC) =>
    ethFrame(dst, NIC_MAC, 0x88b5, pattern(len - 14, seed));
  /** A raw legacy descriptor. */
  const legacy = (addr: number, len: number, cmd: number) => {
    const d = new Uint8Array(16);
    const v = new DataView(d.buffer);
    v.setBigUint64(0, BigInt(addr), true);
    v.setUint16(8, len, true);
    d[11] = cmd;
    return d;
  };

  test("a packet dropped on the way (oversize) is counted once, with TSCTFC only when it was a TSO packet", () => {
    const { drv, dev, sent } = ready();
    const big = pattern(9000);
    drv.sendLegacy([big, big]);
    assert.equal(sent.length, 0);
    assert.deepEqual(dev.errorCounts(), { "tx-oversize": 1 }, "no empty-packet error on top");
    assert.equal(drv.r32(STAT.TSCTFC), 0);
    // A TSO packet past 256 KiB + HDRLEN: dropped, TSCTFC.
    drv.queueContext({
      ipcss: 14,
      ipcso: 24,
      tucss: 34,
      tucso: 50,
      paylen: 300000,
      hdrlen: 54,
      mss: 1000,
      tucmd: 7,
    });
    const chunk = pattern(100000);
    drv.queueData([chunk, chunk, chunk], { tse: true, popts: POPTS.TXSM });
    drv.kick();
    while (dev.nextDeadline() !== undefined) dev.poll(); // the third chunk is read in a slice of its own
    assert.equal(sent.length, 0);
    assert.deepEqual(dev.errorCounts(), { "tx-oversize": 2 });
    assert.equal(drv.r32(STAT.TSCTFC), 1);
    drv.sendLegacy([frame(100)]);
    assert.deepEqual(sent, [frame(100)]);
  });

  test("checksum offload without a context ever loaded: sent as is, counted; POPTS 0 with a context: untouched", () => {
    const { drv, dev, sent, logs } = ready();
    const f = ipv4TcpFrame(pattern(100));
    f[50] = 0x12;
    f[51] = 0x34; // not a valid checksum: it must go out unchanged
    drv.queueData([f], { popts: POPTS.TXSM });
    drv.kick();
    assert.deepEqual(sent[0], f);
    assert.deepEqual(dev.errorCounts(), { "tx-no-context": 1 });
    drv.queueContext({ ipcss: 14, ipcso: 24, ipcse: 33, tucss: 34, tucso: 50, tucmd: TUCMD.TCP | TUCMD.IP });
    drv.queueData([f], { popts: 0 });
    drv.kick();
    assert.deepEqual(sent[1], f, "no POPTS: no checksum, even with a context");
    // A good context with IXSM and TXSM inserts both and logs nothing.
    logs.length = 0;
    const g = ipv4TcpFrame(pattern(100));
    g[24] = 0;
    g[25] = 0;
    setL4Checksum(g, "pseudo");
    drv.queueData([g], { popts: POPTS.IXSM | POPTS.TXSM });
    drv.kick();
    assert.ok(ipv4HeaderOk(sent[2] as Uint8Array) && l4ChecksumOk(sent[2] as Uint8Array), "checksums");
    assert.deepEqual(logs, []);
    assert.deepEqual(dev.errorCounts(), { "tx-no-context": 1 });
  });

  test("TSO with only TXSM leaves the IP checksum, with only IXSM the TCP checksum; no VLE, no tag even with VME", () => {
    const { drv, sent } = ready();
    drv.w32(REG.CTRL, drv.r32(REG.CTRL) | CTRL_VME);
    const payload = pattern(3000, 3);
    const pkt = tsoPacket(payload);
    const ctx = {
      ipcss: 14,
      ipcso: 24,
      ipcse: 33,
      tucss: 34,
      tucso: 50,
      paylen: 3000,
      hdrlen: 54,
      mss: 1000,
    };
    drv.queueContext({ ...ctx, tucmd: TUCMD.TSE | TUCMD.TCP | TUCMD.IP });
    drv.queueData([pkt], { tse: true, popts: POPTS.TXSM });
    drv.kick();
    assert.equal(sent.length, 3);
    for (const s of sent) {
      assert.equal(s.length, 54 + 1000, "no tag");
      assert.equal(u16be(s, 24), 0, "IP checksum left as given");
      assert.ok(l4ChecksumOk(s));
    }
    sent.length = 0;
    drv.queueData([pkt], { tse: true, popts: POPTS.IXSM });
    drv.kick();
    assert.equal(sent.length, 3);
    for (const s of sent) {
      assert.ok(ipv4HeaderOk(s));
      assert.equal(u16be(s, 50), u16be(pkt, 50), "TCP checksum left as given");
    }
  });

  test("a packet may use every descriptor of the ring (over two TDT writes); one more and it is dropped", () => {
    const { drv, sent, dev } = ready({}, 8);
    const f = frame(80, 2);
    const parts = Array.from({ length: 8 }, (_, k) => f.subarray(10 * k, 10 * k + 10));
    drv.queueLegacy(parts.slice(0, 7), { noEop: true, rs: false });
    drv.kick();
    drv.queueLegacy(parts.slice(7));
    drv.kick();
    assert.deepEqual(sent, [f], "8 descriptors in an 8-descriptor ring");
    assert.deepEqual(dev.errorCounts(), {});
  });

  test("descriptors with a null address or no length add no data (SDM §3.3.3)", () => {
    const { drv, sent, mem } = ready();
    mem.write(0, pattern(64, 9)); // what a null address would read
    const f = frame(100, 3);
    drv.putRawTx(legacy(0, 10, 0x02));
    drv.putRawTx(legacy(drv.stage(pattern(10, 8)), 0, 0x02));
    drv.putRawTx(legacy(drv.stage(f), f.length, 0x0b));
    drv.kick();
    assert.deepEqual(sent, [f]);
  });

  test("VLE tags a frame of 12 bytes or more, behind the addresses; a shorter one goes out as it is", () => {
    const { drv, sent } = ready({}, 16);
    drv.w32(REG.TCTL, TCTL_EN); // no padding
    drv.w32(REG.CTRL, drv.r32(REG.CTRL) | CTRL_VME);
    const twelve = pattern(12, 5);
    drv.sendLegacy([twelve], { vlan: 0x0123 });
    assert.deepEqual(sent[0], Uint8Array.from([...twelve, 0x81, 0x00, 0x01, 0x23]));
    const eleven = pattern(11, 5);
    drv.sendLegacy([eleven], { vlan: 0x0123 });
    assert.deepEqual(sent[1], eleven);
  });

  test("BPTC and MPTC count broadcast and multicast frames sent; unicast and frames under 6 bytes are neither", () => {
    const { drv } = ready();
    drv.w32(REG.TCTL, TCTL_EN);
    drv.sendLegacy([frame(60, 1, Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0xff, 0xff))]);
    drv.sendLegacy([Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0xff, 0xff)]);
    drv.sendLegacy([frame(60, 1, Uint8Array.of(0x01, 0, 0x5e, 0, 0, 1))]);
    drv.sendLegacy([frame(60, 1)]);
    drv.sendLegacy([Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0xff)]);
    assert.equal(drv.r32(STAT.BPTC), 2);
    assert.equal(drv.r32(STAT.MPTC), 1);
    assert.equal(drv.r32(STAT.GPTC), 5);
  });

  test("PTC size buckets: each boundary counted in its own bucket, frames over 1522 bytes in none", () => {
    const { drv } = ready({}, 32);
    drv.w32(REG.TCTL, TCTL_EN);
    // Lengths without FCS; the buckets count the frame with its 4 FCS bytes.
    for (const len of [60, 61, 123, 124, 251, 252, 507, 508, 1019, 1020, 1518, 1519]) {
      drv.sendLegacy([frame(len, len)]);
    }
    const buckets = [STAT.PTC64, STAT.PTC127, STAT.PTC255, STAT.PTC511, STAT.PTC1023, STAT.PTC1522];
    assert.deepEqual(
      buckets.map((r) => drv.r32(r)),
      [1, 2, 2, 2, 2, 2],
    );
    assert.equal(drv.r32(STAT.GPTC), 12);
  });

  test("frames the backend drops are counted in tx.backend_dropped", () => {
    const { drv, wire, metrics } = ready({ capacity: 1 });
    wire.attach(() => false); // the far end takes nothing: one frame waits in its queue, the rest are dropped
    for (let n = 0; n < 3; n++) drv.sendLegacy([frame(60, n)]);
    assert.equal(metrics.counter("e1000.tx.backend_dropped").value, 2);
    assert.equal(metrics.counter("e1000.tx.frames").value, 3);
  });

  test("IDE with TIDV 0 raises TXDW at once; RS without IDE ignores TIDV", () => {
    const nic = ready();
    const { drv, dev } = nic;
    drv.w32(REG.IMS, ICR.TXDW);
    drv.sendLegacy([frame(60)], { ide: true });
    assert.equal(nic.irqLevel, true, "TIDV 0");
    assert.equal(dev.nextDeadline(), undefined);
    drv.readIcr();
    drv.w32(REG.TIDV, 100);
    drv.sendLegacy([frame(60)]);
    assert.equal(nic.irqLevel, true, "no IDE");
    assert.equal(dev.nextDeadline(), undefined);
  });

  test("the delay timers fire exactly at their deadline, and nextDeadline() is the earliest armed one", () => {
    const nic = ready();
    const { drv, dev, clock } = nic;
    drv.setupRx({ count: 8 });
    drv.w32(REG.IMS, ICR.TXDW | ICR.RXT0);
    drv.w32(REG.TIDV, 10);
    drv.w32(REG.RDTR, 50);
    nic.wire.send(ethFrame(NIC_MAC, PEER_MAC, 0x88b5, pattern(50)));
    drv.sendLegacy([frame(60)], { ide: true });
    const tx = 10 * 1.024e-3;
    const rx = 50 * 1.024e-3;
    assert.equal(dev.nextDeadline(), tx, "the TX delay, armed second, expires first");
    clock.t = tx;
    dev.poll();
    assert.equal(nic.irqLevel, true, "TXDW at the deadline itself");
    assert.equal(drv.readIcr(), ICR.TXDW | ICR.TXQE);
    assert.equal(dev.nextDeadline(), rx);
    clock.t = rx;
    dev.poll();
    assert.equal(drv.readIcr() & ICR.RXT0, ICR.RXT0, "RXT0 at the deadline itself");
    // The absolute timers likewise.
    drv.w32(REG.TIDV, 100);
    drv.w32(REG.TADV, 20);
    const t0 = clock.t;
    drv.sendLegacy([frame(60)], { ide: true });
    clock.t = t0 + 20 * 1.024e-3;
    dev.poll();
    assert.equal(drv.readIcr() & ICR.TXDW, ICR.TXDW, "TADV at its deadline");
    drv.w32(REG.RDTR, 100);
    drv.w32(REG.RADV, 30);
    const t1 = clock.t;
    nic.wire.send(ethFrame(NIC_MAC, PEER_MAC, 0x88b5, pattern(50)));
    clock.t = t1 + 30 * 1.024e-3;
    dev.poll();
    assert.equal(drv.readIcr() & ICR.RXT0, ICR.RXT0, "RADV at its deadline");
  });
});
