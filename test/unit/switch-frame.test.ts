import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { FrameInfo, IPV6_MAX_EXT_HEADERS, macToString, parseFrame } from "../../src/switch/frame.ts";
import { allocationsDuring, FrameBuilder, HEAP_SLACK, ipv6Bytes } from "../helpers/switch-frames.ts";

const A = "52:54:00:12:34:56";
const B = "ff:ee:dd:cc:bb:aa";

function parse(f: Uint8Array, off = 0, len = f.length - off): FrameInfo {
  const info = new FrameInfo();
  parseFrame(f, off, len, info);
  return info;
}

/** A plain snapshot of every field, to compare two parses. */
function snap(i: FrameInfo) {
  return { ...i, src6: [...i.src6], dst6: [...i.dst6] };
}

function udp4(o: { vlan?: { vid: number; pcp?: number } } = {}): Uint8Array {
  return new FrameBuilder()
    .eth(B, A, 0x0800, o.vlan)
    .ipv4("10.0.0.2", "192.168.1.200", 17, 8 + 4)
    .udp(5353, 53, 4)
    .build();
}

describe("parseFrame: Ethernet and 802.1Q", () => {
  test("MACs as hi16/lo32, untagged ethertype, IPv4 UDP addresses and ports", () => {
    const f = udp4();
    const i = parse(f);
    assert.equal(i.length, f.length);
    assert.equal(i.dstHi, 0xffee);
    assert.equal(i.dstLo, 0xddccbbaa);
    assert.equal(i.srcHi, 0x5254);
    assert.equal(i.srcLo, 0x00123456);
    assert.equal(macToString(i.srcHi, i.srcLo), A);
    assert.equal(macToString(i.dstHi, i.dstLo), B);
    assert.equal(i.tagged, false);
    assert.equal(i.vlan, 0);
    assert.equal(i.ethertype, 0x0800);
    assert.equal(i.l3, 4);
    assert.equal(i.ipProto, 17);
    assert.equal(i.src4, 0x0a000002);
    assert.equal(i.dst4, 0xc0a801c8);
    assert.equal(i.srcPort, 5353);
    assert.equal(i.dstPort, 53);
    assert.equal(i.arpOp, -1);
  });

  test("one 802.1Q tag: VID, PCP, and the ethertype after the tag", () => {
    const i = parse(udp4({ vlan: { vid: 0xabc, pcp: 5 } }));
    assert.equal(i.tagged, true);
    assert.equal(i.vlan, 0xabc);
    assert.equal(i.pcp, 5);
    assert.equal(i.ethertype, 0x0800);
    assert.equal(i.dst4, 0xc0a801c8);
    assert.equal(i.dstPort, 53);
  });

  test("DEI bit is neither VID nor PCP", () => {
    const f = new FrameBuilder()
      .mac(B)
      .mac(A)
      .u16(0x8100)
      .u16(0x1000 | 7)
      .u16(0x86dd)
      .build();
    const i = parse(f);
    assert.equal(i.vlan, 7);
    assert.equal(i.pcp, 0);
    assert.equal(i.ethertype, 0x86dd);
  });

  test("a tag cut short is no tag and no ethertype; a header cut short leaves MACs at 0", () => {
    const f = udp4({ vlan: { vid: 9 } });
    let i = parse(f, 0, 16);
    assert.equal(i.tagged, false);
    assert.equal(i.ethertype, -1);
    assert.equal(i.srcLo, 0x00123456);
    i = parse(f, 0, 11);
    assert.equal(i.dstLo, 0xddccbbaa);
    assert.equal(i.srcHi, 0);
    assert.equal(i.srcLo, 0);
    i = parse(f, 0, 0);
    assert.equal(i.dstHi, 0);
    assert.equal(i.length, 0);
  });

  test("frameLen sets length when only the head is parsed; off and len out of the array read nothing", () => {
    const f = udp4();
    const info = new FrameInfo();
    parseFrame(f, 0, 20, info, 1500);
    assert.equal(info.length, 1500);
    parseFrame(f, f.length + 5, 100, info);
    assert.equal(info.ethertype, -1);
    parseFrame(f, -3, 100, info);
    assert.equal(info.dstHi, 0);
    // len beyond the array: parses what the array holds.
    parseFrame(f, 0, f.length + 1000, info);
    assert.equal(info.dstPort, 53);
  });
});

describe("parseFrame: IPv4", () => {
  test("IHL with options: the ports come after the options", () => {
    const f = new FrameBuilder()
      .eth(B, A, 0x0800)
      .ipv4("1.2.3.4", "5.6.7.8", 6, 20, { options: 8 })
      .tcp(40000, 443)
      .build();
    const i = parse(f);
    assert.equal(i.ipProto, 6);
    assert.equal(i.srcPort, 40000);
    assert.equal(i.dstPort, 443);
  });

  test("a non-first fragment has the protocol but no ports; the first fragment has both", () => {
    const later = new FrameBuilder()
      .eth(B, A, 0x0800)
      .ipv4("1.2.3.4", "5.6.7.8", 17, 16, { fragOffset: 185 })
      .udp(1, 2, 8)
      .build();
    let i = parse(later);
    assert.equal(i.ipProto, 17);
    assert.equal(i.src4, 0x01020304);
    assert.equal(i.srcPort, -1);
    assert.equal(i.dstPort, -1);
    const first = new FrameBuilder()
      .eth(B, A, 0x0800)
      .ipv4("1.2.3.4", "5.6.7.8", 17, 16, { mf: true })
      .udp(1, 2, 8)
      .build();
    i = parse(first);
    assert.equal(i.srcPort, 1);
    assert.equal(i.dstPort, 2);
  });

  test("Ethernet padding after the datagram's total length is not read as ports", () => {
    const f = new FrameBuilder()
      .eth(B, A, 0x0800)
      .ipv4("1.2.3.4", "5.6.7.8", 17, 0)
      .u8(0, 7, 0, 9)
      .zeros(22)
      .build();
    const i = parse(f);
    assert.equal(i.ipProto, 17);
    assert.equal(i.srcPort, -1);
  });

  test("IHL below 5 or version not 4: no IPv4 header", () => {
    const f = udp4();
    f[14] = 0x44;
    let i = parse(f);
    assert.equal(i.l3, 0);
    assert.equal(i.ipProto, -1);
    assert.equal(i.src4, 0);
    f[14] = 0x65;
    i = parse(f);
    assert.equal(i.l3, 0);
    assert.equal(i.ethertype, 0x0800);
  });

  test("ICMP: protocol, no ports", () => {
    const f = new FrameBuilder().eth(B, A, 0x0800).ipv4("1.2.3.4", "5.6.7.8", 1, 8).u8(8, 0).zeros(6).build();
    const i = parse(f);
    assert.equal(i.ipProto, 1);
    assert.equal(i.srcPort, -1);
  });
});

describe("parseFrame: ARP", () => {
  test("Ethernet/IPv4 ARP: operation and sender/target protocol addresses in src4/dst4", () => {
    const f = new FrameBuilder()
      .eth("ff:ff:ff:ff:ff:ff", A, 0x0806)
      .u16(1)
      .u16(0x0800)
      .u8(6, 4)
      .u16(1)
      .mac(A)
      .ip4("10.0.0.2")
      .mac("00:00:00:00:00:00")
      .ip4("10.0.0.1")
      .build();
    const i = parse(f);
    assert.equal(i.ethertype, 0x0806);
    assert.equal(i.l3, 0);
    assert.equal(i.arpOp, 1);
    assert.equal(i.src4, 0x0a000002);
    assert.equal(i.dst4, 0x0a000001);
    // One byte short of the target address: no ARP fields.
    const s = parse(f, 0, f.length - 1);
    assert.equal(s.arpOp, -1);
    assert.equal(s.src4, 0);
  });
});

describe("parseFrame: IPv6 and its extension headers (RFC 8200 §4)", () => {
  const S6 = "2001:db8::2";
  const D6 = "fe80::1:2:3:4";

  test("fixed header: addresses, next header, UDP ports", () => {
    const f = new FrameBuilder().eth(B, A, 0x86dd).ipv6(S6, D6, 17, 8).udp(546, 547).build();
    const i = parse(f);
    assert.equal(i.l3, 6);
    assert.deepEqual([...i.src6], ipv6Bytes(S6));
    assert.deepEqual([...i.dst6], ipv6Bytes(D6));
    assert.equal(i.ipProto, 17);
    assert.equal(i.srcPort, 546);
    assert.equal(i.dstPort, 547);
  });

  test("hop-by-hop, destination options, routing and a first fragment are walked to TCP", () => {
    const f = new FrameBuilder()
      .eth(B, A, 0x86dd)
      .ipv6(S6, D6, 0, 8 + 16 + 24 + 8 + 20)
      .u8(60, 0)
      .zeros(6) // hop-by-hop, 8 bytes, next: destination options
      .u8(43, 1)
      .zeros(14) // destination options, 16 bytes, next: routing
      .u8(44, 2)
      .zeros(22) // routing, 24 bytes, next: fragment
      .u8(6, 0)
      .u16(0x0001)
      .u32(99) // fragment, offset 0, M=1, next: TCP
      .tcp(1234, 22)
      .build();
    const i = parse(f);
    assert.equal(i.ipProto, 6);
    assert.equal(i.srcPort, 1234);
    assert.equal(i.dstPort, 22);
  });

  test("a non-first fragment: the protocol after the fragment header, no ports", () => {
    const f = new FrameBuilder()
      .eth(B, A, 0x86dd)
      .ipv6(S6, D6, 44, 8 + 8)
      .u8(17, 0)
      .u16(100 << 3)
      .u32(7)
      .udp(1, 2)
      .build();
    const i = parse(f);
    assert.equal(i.ipProto, 17);
    assert.equal(i.srcPort, -1);
  });

  test("ICMPv6: protocol 58, no ports", () => {
    const f = new FrameBuilder().eth(B, A, 0x86dd).ipv6(S6, D6, 58, 8).u8(128, 0).zeros(6).build();
    const i = parse(f);
    assert.equal(i.ipProto, 58);
    assert.equal(i.srcPort, -1);
  });

  test(`a chain longer than ${IPV6_MAX_EXT_HEADERS} headers, hop-by-hop not first, or a header cut short: ipProto -1`, () => {
    const long = new FrameBuilder().eth(B, A, 0x86dd).ipv6(S6, D6, 60, 8 * (IPV6_MAX_EXT_HEADERS + 1) + 8);
    for (let n = 0; n < IPV6_MAX_EXT_HEADERS; n++) long.u8(60, 0).zeros(6);
    long.u8(17, 0).zeros(6).udp(1, 2);
    let i = parse(long.build());
    assert.equal(i.l3, 6);
    assert.equal(i.ipProto, -1);
    assert.equal(i.srcPort, -1);
    // Exactly the limit is walked.
    const ok = new FrameBuilder().eth(B, A, 0x86dd).ipv6(S6, D6, 60, 8 * IPV6_MAX_EXT_HEADERS + 8);
    for (let n = 0; n < IPV6_MAX_EXT_HEADERS - 1; n++) ok.u8(60, 0).zeros(6);
    ok.u8(17, 0).zeros(6).udp(1, 2);
    i = parse(ok.build());
    assert.equal(i.ipProto, 17);
    assert.equal(i.dstPort, 2);

    const hbhLate = new FrameBuilder()
      .eth(B, A, 0x86dd)
      .ipv6(S6, D6, 60, 24)
      .u8(0, 0)
      .zeros(6)
      .u8(17, 0)
      .zeros(6)
      .udp(1, 2)
      .build();
    i = parse(hbhLate);
    assert.equal(i.ipProto, -1);

    // A routing header claiming 2 KiB in a short frame.
    const cut = new FrameBuilder()
      .eth(B, A, 0x86dd)
      .ipv6(S6, D6, 43, 0)
      .u8(60, 255)
      .zeros(6)
      .u8(17, 0)
      .zeros(6)
      .build();
    i = parse(cut);
    assert.equal(i.ipProto, -1);
  });

  test("the payload length bounds the walk (padding is not read as headers)", () => {
    const f = new FrameBuilder().eth(B, A, 0x86dd).ipv6(S6, D6, 17, 2).u8(0, 1).u8(0, 2).zeros(20).build();
    const i = parse(f);
    assert.equal(i.ipProto, 17);
    assert.equal(i.srcPort, -1);
  });

  test("an IPv6 parse then an IPv4 parse into the same FrameInfo leaves no IPv6 addresses behind", () => {
    const info = new FrameInfo();
    const f6 = new FrameBuilder().eth(B, A, 0x86dd).ipv6(S6, D6, 17, 8).udp(546, 547).build();
    parseFrame(f6, 0, f6.length, info);
    assert.notDeepEqual([...info.src6], Array(16).fill(0));
    const f4 = udp4();
    parseFrame(f4, 0, f4.length, info);
    assert.equal(info.l3, 4);
    assert.deepEqual([...info.src6], Array(16).fill(0));
    assert.deepEqual([...info.dst6], Array(16).fill(0));
    assert.deepEqual(snap(info), snap(parse(f4)));
  });
});

describe("parseFrame: bounds and allocation", () => {
  // Every kind of frame above, cut at every length: the parse of the cut must not depend on the bytes after the
  // cut (they are changed between two parses, and the array may also end exactly at the cut).
  const frames: Uint8Array[] = [
    udp4(),
    udp4({ vlan: { vid: 100 } }),
    new FrameBuilder().eth(B, A, 0x0800).ipv4("1.2.3.4", "5.6.7.8", 6, 20, { options: 40 }).tcp(1, 2).build(),
    new FrameBuilder()
      .eth(B, A, 0x86dd, { vid: 3 })
      .ipv6("::1", "::2", 0, 16 + 8)
      .u8(44, 0)
      .zeros(6)
      .u8(6, 0)
      .u16(0)
      .u32(1)
      .tcp(7, 8)
      .build(),
    new FrameBuilder()
      .eth(B, A, 0x0806)
      .u16(1)
      .u16(0x0800)
      .u8(6, 4)
      .u16(2)
      .mac(A)
      .ip4("1.1.1.1")
      .mac(B)
      .ip4("2.2.2.2")
      .build(),
  ];

  test("a cut frame parses the same whatever follows the cut, at every length and offset", () => {
    for (const f of frames) {
      for (let len = 0; len <= f.length; len++) {
        const exact = f.slice(0, len);
        const want = snap(parse(exact));
        for (const off of [0, 3]) {
          const big = new Uint8Array(off + f.length + 64);
          big.set(f, off);
          big.fill(0xa5, off + len);
          assert.deepEqual(snap(parse(big, off, len)), want, `len ${len} off ${off}`);
          big.fill(0x00, off + len);
          assert.deepEqual(snap(parse(big, off, len)), want, `len ${len} off ${off} (zeros after)`);
        }
      }
    }
  });

  test("random frames (biased to tags, IP versions and extension headers): no throw, fields in range, nothing read past len", () => {
    let x = 12345;
    const rnd = (n: number) => {
      x ^= x << 13;
      x >>>= 0;
      x ^= x >>> 17;
      x ^= x << 5;
      x >>>= 0;
      return x % n;
    };
    const info = new FrameInfo();
    const buf = new Uint8Array(256);
    for (let n = 0; n < 20_000; n++) {
      const len = rnd(200);
      for (let i = 0; i < buf.length; i++) buf[i] = rnd(256);
      // Steer the random bytes into the parser's branches.
      let p = 12;
      if (rnd(2)) {
        buf[p] = 0x81;
        buf[p + 1] = 0;
        p += 4;
      }
      const et = [0x0800, 0x86dd, 0x0806, rnd(0x10000)][rnd(4)] as number;
      buf[p] = et >> 8;
      buf[p + 1] = et & 0xff;
      p += 2;
      if (et === 0x0800) buf[p] = 0x40 | rnd(16);
      if (et === 0x86dd) {
        buf[p] = 0x60;
        buf[p + 6] = [0, 43, 44, 60, 6, 17][rnd(6)] as number;
        for (let q = p + 40; q < 200; q += 8) if (rnd(2)) buf[q] = [0, 43, 44, 60, 6, 17][rnd(6)] as number;
      }
      if (et === 0x0806) buf.set([0, 1, 8, 0, 6, 4], p);
      parseFrame(buf, 0, len, info);
      const want = snap(info);
      const exact = buf.slice(0, len);
      assert.deepEqual(snap(parse(exact)), want, `frame ${n}`);
      assert.ok(info.vlan >= 0 && info.vlan <= 4095 && info.pcp >= 0 && info.pcp <= 7, `frame ${n} tag`);
      assert.ok(info.ethertype >= -1 && info.ethertype <= 0xffff, `frame ${n} ethertype`);
      assert.ok(info.ipProto >= -1 && info.ipProto <= 255, `frame ${n} proto`);
      assert.ok(
        info.srcPort >= -1 && info.srcPort <= 0xffff && info.dstPort >= -1 && info.dstPort <= 0xffff,
        `frame ${n} ports`,
      );
      assert.ok(
        info.src4 >= 0 && info.src4 <= 0xffffffff && info.dstLo >= 0 && info.srcLo <= 0xffffffff,
        `frame ${n} u32`,
      );
      if (info.srcPort >= 0)
        assert.ok(info.ipProto === 6 || info.ipProto === 17, `frame ${n} ports without TCP/UDP`);
    }
  });

  test("parsing allocates nothing (no heap growth, no collection over 200k frames)", async () => {
    const info = new FrameInfo();
    const { gcs, heapGrowth } = await allocationsDuring((i) => {
      const f = frames[i % frames.length] as Uint8Array;
      parseFrame(f, 0, f.length, info);
    });
    assert.equal(gcs, 0);
    assert.ok(heapGrowth < HEAP_SLACK, `heap grew ${heapGrowth} bytes`);
  });
});
