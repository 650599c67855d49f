import assert from "node:assert/strict";
import { describe, test } from "node:test";
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
