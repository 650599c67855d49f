import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { VireoError } from "../../src/errors.ts";
import {
  type FilterRule,
  FilterRuleError,
  filterRuleSchema,
  PortFilter,
  parseRule,
  parseRuleJson,
  ruleToText,
} from "../../src/switch/filter.ts";
import { FrameInfo, parseFrame } from "../../src/switch/frame.ts";
import { allocationsDuring, FrameBuilder, HEAP_SLACK } from "../helpers/switch-frames.ts";

const GUEST_MAC = "52:54:00:00:00:02";
const OTHER_MAC = "52:54:00:00:00:66";
const GW_MAC = "52:54:00:00:00:01";
const BCAST = "ff:ff:ff:ff:ff:ff";

function info(f: Uint8Array): FrameInfo {
  const i = new FrameInfo();
  parseFrame(f, 0, f.length, i);
  return i;
}

function udp4(
  src: string,
  dst: string,
  sport: number,
  dport: number,
  o: { mac?: string; dstMac?: string; vlan?: number } = {},
) {
  return info(
    new FrameBuilder()
      .eth(o.dstMac ?? GW_MAC, o.mac ?? GUEST_MAC, 0x0800, o.vlan === undefined ? undefined : { vid: o.vlan })
      .ipv4(src, dst, 17, 12)
      .udp(sport, dport, 4)
      .build(),
  );
}

function tcp4(src: string, dst: string, sport: number, dport: number, mac = GUEST_MAC) {
  return info(new FrameBuilder().eth(GW_MAC, mac, 0x0800).ipv4(src, dst, 6, 20).tcp(sport, dport).build());
}

function icmp4(src: string, dst: string, mac = GUEST_MAC) {
  return info(new FrameBuilder().eth(GW_MAC, mac, 0x0800).ipv4(src, dst, 1, 8).u8(8, 0).zeros(6).build());
}

function udp6(src: string, dst: string, sport: number, dport: number, mac = GUEST_MAC) {
  return info(new FrameBuilder().eth(GW_MAC, mac, 0x86dd).ipv6(src, dst, 17, 8).udp(sport, dport).build());
}

function icmp6(src: string, dst: string, mac = GUEST_MAC) {
  return info(new FrameBuilder().eth(GW_MAC, mac, 0x86dd).ipv6(src, dst, 58, 8).u8(135, 0).zeros(6).build());
}

/** An Ethernet/IPv4 ARP request (op 1) or reply (op 2); the sender hardware address is the Ethernet source. */
function arp(senderIp: string, targetIp: string, mac = GUEST_MAC, op = 1) {
  return info(
    new FrameBuilder()
      .eth(BCAST, mac, 0x0806)
      .u16(1)
      .u16(0x0800)
      .u8(6, 4)
      .u16(op)
      .mac(mac)
      .ip4(senderIp)
      .mac("00:00:00:00:00:00")
      .ip4(targetIp)
      .build(),
  );
}

function lldp(mac = GUEST_MAC) {
  return info(new FrameBuilder().eth("01:80:c2:00:00:0e", mac, 0x88cc).zeros(46).build());
}

/** Whether `rule` (text) matches the frame: a filter of that one rule with the opposite default. */
function matches(rule: string, f: FrameInfo): boolean {
  const r = parseRule(rule);
  const pf = new PortFilter([r], r.action === "allow" ? "deny" : "allow");
  const passed = pf.check(f);
  const hit = pf.stats().rules[0]?.matches === 1;
  // The decision and the counters must tell the same story.
  assert.equal(passed, r.action === "allow" ? hit : !hit);
  assert.equal(pf.stats().defaultMatches, hit ? 0 : 1);
  return hit;
}

// (assert.ok without a message re-reads the test's source on failure, which takes minutes under tsx.)
function yes(rule: string, f: FrameInfo): void {
  assert.equal(matches(rule, f), true, `${rule} should match`);
}
function no(rule: string, f: FrameInfo): void {
  assert.equal(matches(rule, f), false, `${rule} should not match`);
}

describe("filter rules: text form", () => {
  test("every field parses, and prints back in a fixed order", () => {
    const r = parseRule(
      "  allow dst-port=1000-2000 src-port=53 proto=udp dst=2001:db8::/32 src=fd00::1 vlan=12 ethertype=0x86DD dst-mac=FF:FF:FF:FF:FF:FF src-mac=52:54:00:00:00:02 ",
    );
    assert.deepEqual(r, {
      action: "allow",
      srcMac: "52:54:00:00:00:02",
      dstMac: "FF:FF:FF:FF:FF:FF",
      ethertype: 0x86dd,
      vlan: 12,
      src: "fd00::1",
      dst: "2001:db8::/32",
      proto: "udp",
      srcPort: 53,
      dstPort: [1000, 2000],
    });
    assert.equal(
      ruleToText(r),
      "allow src-mac=52:54:00:00:00:02 dst-mac=ff:ff:ff:ff:ff:ff ethertype=0x86dd vlan=12 src=fd00::1 dst=2001:db8::/32 proto=udp src-port=53 dst-port=1000-2000",
    );
    assert.deepEqual(parseRule(ruleToText(r)), { ...r, dstMac: "ff:ff:ff:ff:ff:ff" });
  });

  test("names and numbers: ethertype arp/ipv4/ipv6/vlan or decimal, proto icmp/icmpv6/tcp or a number", () => {
    assert.equal(parseRule("deny ethertype=arp").ethertype, 0x0806);
    assert.equal(parseRule("deny ethertype=IPv4").ethertype, 0x0800);
    assert.equal(parseRule("deny ethertype=ipv6").ethertype, 0x86dd);
    assert.equal(parseRule("deny ethertype=vlan").ethertype, 0x8100);
    assert.equal(parseRule("deny ethertype=2048").ethertype, 0x0800);
    assert.equal(parseRule("deny proto=icmpv6").proto, "icmpv6");
    assert.equal(parseRule("deny proto=0x2f").proto, 47);
    assert.deepEqual(parseRule("deny"), { action: "deny" });
  });

  const bad: Array<[string, string, RegExp]> = [
    ["", "action", /"allow" or "deny"/],
    ["permit src=1.2.3.4", "action", /"allow" or "deny"/],
    ["allow source=1.2.3.4", "source", /unknown field/],
    ["allow src", "src", /needs a value/],
    ["allow src=", "src", /needs a value/],
    ["allow vlan=1 vlan=2", "vlan", /given twice/],
    ["allow src-mac=52:54:00:00:00", "src-mac", /not a MAC address/],
    ["allow dst-mac=52-54-00-00-00-01", "dst-mac", /not a MAC address/],
    ["allow src-mac=52:54:00:00:00:0g", "src-mac", /not a MAC address/],
    ["allow ethertype=0x10000", "ethertype", /0 to 65535/],
    ["allow ethertype=ip", "ethertype", /not a number/],
    ["allow vlan=4096", "vlan", /0 to 4095/],
    ["allow vlan=-1", "vlan", /not a number/],
    ["allow src=10.0.0.256", "src", /not an IPv4 or IPv6/],
    ["allow src=10.0.0", "src", /not an IPv4 or IPv6/],
    ["allow dst=10.0.0.1/33", "dst", /prefix length/],
    ["allow dst=10.0.0.1/", "dst", /prefix length/],
    ["allow src=10.0.0.5/24", "src", /bits set past the \/24/],
    ["allow src=fd00::1/64", "src", /bits set past the \/64/],
    ["allow src=fd00:::1", "src", /not an IPv4 or IPv6/],
    ["allow src=1:2:3:4:5:6:7:8:9", "src", /not an IPv4 or IPv6/],
    ["allow src=fd00::1%eth0", "src", /not an IPv4 or IPv6/],
    ["allow src=fd00::/129", "src", /prefix length/],
    ["allow src=10.0.0.1 dst=fd00::1", "dst", /different IP families/],
    ["allow proto=sctp", "proto", /not a number/],
    ["allow proto=256", "proto", /0 to 255/],
    ["allow dst-port=65536", "dst-port", /0 to 65535/],
    ["allow src-port=20-10", "src-port", /range 20-10 is empty/],
    ["allow src-port=-5", "src-port", /not a number/],
    ["allow dst-port=1-2-3", "dst-port", /not a number/],
  ];
  for (const [text, field, re] of bad) {
    test(`bad rule ${JSON.stringify(text)}: FilterRuleError naming ${field}`, () => {
      assert.throws(
        () => parseRule(text),
        (e: unknown) => {
          assert.ok(e instanceof FilterRuleError, String(e));
          assert.ok(e instanceof VireoError, "a VireoError");
          assert.equal(e.code, "VIREO_SWITCH_FILTER");
          assert.equal(e.field, field);
          assert.match(e.message, new RegExp(`^filter rule: ${field}: `));
          assert.match(e.message, re);
          return true;
        },
      );
    });
  }

  test("IPv6 text forms: compressed, full, IPv4 tail", () => {
    const f = udp6("::ffff:10.0.0.2", "2001:db8:0:0:0:0:0:1", 1, 2);
    yes("allow src=::ffff:10.0.0.2", f);
    yes("allow src=0:0:0:0:0:ffff:a00:2/128", f);
    yes("allow dst=2001:DB8::1", f);
    yes("allow dst=2001:db8::/32", f);
    no("allow dst=2001:db9::/32", f);
  });
});

describe("filter rules: JSON form (control socket)", () => {
  test("a valid rule comes back as given", () => {
    const r = { action: "deny", src: "10.0.0.0/8", proto: "tcp", dstPort: [22, 23], ethertype: 2048 };
    assert.deepEqual(parseRuleJson(r), r);
    assert.equal(filterRuleSchema.safeParse(r).success, true);
  });

  const bad: Array<[unknown, string, RegExp]> = [
    [{ action: "drop" }, "action", /.+/],
    [{}, "action", /.+/],
    [{ action: "allow", srcMac: "nope" }, "srcMac", /not a MAC address/],
    [{ action: "allow", vlan: 5000 }, "vlan", /.+/],
    [{ action: "allow", vlan: "5" }, "vlan", /.+/],
    [{ action: "allow", dst: "10.1.1.1/8" }, "dst", /bits set past/],
    [{ action: "allow", dstPort: [80, 79] }, "dstPort", /empty/],
    [{ action: "allow", dstPort: [80] }, "dstPort", /.+/],
    [{ action: "allow", proto: "gre" }, "proto", /.+/],
    [{ action: "allow", srcport: 80 }, "srcport", /unknown field/],
    ["allow", "rule", /.+/],
  ];
  for (const [value, field, re] of bad) {
    test(`bad JSON rule ${JSON.stringify(value)}: FilterRuleError naming ${field}`, () => {
      assert.throws(
        () => parseRuleJson(value),
        (e: unknown) => {
          assert.ok(e instanceof FilterRuleError, String(e));
          assert.equal(e.code, "VIREO_SWITCH_FILTER");
          assert.equal(e.field, field);
          assert.match(e.message, new RegExp(`^filter rule: ${field}: `));
          assert.match(e.message, re);
          return true;
        },
      );
      assert.equal(filterRuleSchema.safeParse(value).success, false);
    });
  }

  test("PortFilter checks rules built in code too, naming the rule's position", () => {
    assert.throws(
      () => new PortFilter([{ action: "allow" }, { action: "deny", src: "300.1.1.1" }], "deny"),
      (e: unknown) => e instanceof FilterRuleError && e.field === "rule 2: src",
    );
    assert.throws(
      () => new PortFilter([], "block" as "deny"),
      (e: unknown) => e instanceof FilterRuleError && e.field === "default",
    );
  });
});

describe("filter matching: each field", () => {
  const f = udp4("10.0.0.2", "10.9.8.7", 5353, 53, { vlan: 42 });

  test("src-mac and dst-mac", () => {
    yes(`allow src-mac=${GUEST_MAC}`, f);
    yes(`deny src-mac=${GUEST_MAC.toUpperCase()}`, f);
    no(`allow src-mac=${OTHER_MAC}`, f);
    // The same low 32 bits under other top 16 bits, and the reverse.
    no("allow src-mac=53:54:00:00:00:02", f);
    no("allow src-mac=52:54:00:00:00:03", f);
    yes(`allow dst-mac=${GW_MAC}`, f);
    no(`allow dst-mac=${GUEST_MAC}`, f);
  });

  test("ethertype (after the 802.1Q tag) and vlan", () => {
    yes("allow ethertype=ipv4", f);
    no("allow ethertype=vlan", f);
    no("allow ethertype=ipv6", f);
    yes("allow vlan=42", f);
    no("allow vlan=43", f);
    const untagged = udp4("10.0.0.2", "10.9.8.7", 1, 2);
    yes("allow vlan=0", untagged);
    no("allow vlan=42", untagged);
  });

  test("IPv4 source and destination prefixes, /0 to /32", () => {
    yes("allow src=10.0.0.2", f);
    yes("allow src=10.0.0.2/32", f);
    yes("allow src=10.0.0.0/30", f);
    no("allow src=10.0.0.0/31", f);
    yes("allow src=0.0.0.0/0", f);
    yes("allow dst=10.0.0.0/8", f);
    no("allow dst=11.0.0.0/8", f);
    // High addresses (sign bit set) compare unsigned.
    const hi = udp4("200.1.2.3", "255.255.255.255", 1, 2);
    yes("allow src=192.0.0.0/2", hi);
    yes("allow dst=255.255.255.255/32", hi);
    no("allow src=0.0.0.0/1", hi);
    // An IPv4 prefix never matches IPv6 (nor /0).
    no("allow src=0.0.0.0/0", udp6("fd00::2", "fd00::1", 1, 2));
    // A non-IP, non-ARP frame has no addresses.
    no("allow src=0.0.0.0/0", lldp());
  });

  test("IPv6 source and destination prefixes, including lengths not on a byte boundary", () => {
    const g = udp6("2001:db8:0:12::5", "fe80::1", 1, 2);
    yes("allow src=2001:db8:0:12::5/128", g);
    yes("allow src=2001:db8:0:10::/60", g);
    no("allow src=2001:db8:0:20::/60", g);
    yes("allow src=2001:db8:0:12::4/127", g);
    no("allow src=2001:db8:0:12::6/127", g);
    yes("allow src=::/0", g);
    yes("allow dst=fe80::/10", g);
    no("allow dst=fec0::/10", g);
    no("allow src=::/0", f);
  });

  test("proto by name and number, IPv4 and IPv6", () => {
    yes("allow proto=udp", f);
    yes("allow proto=17", f);
    no("allow proto=tcp", f);
    yes("allow proto=tcp", tcp4("1.1.1.1", "2.2.2.2", 1, 2));
    yes("allow proto=icmp", icmp4("1.1.1.1", "2.2.2.2"));
    yes("allow proto=icmpv6", icmp6("fe80::2", "ff02::1"));
    no("allow proto=icmp", icmp6("fe80::2", "ff02::1"));
    no("allow proto=0", arp("10.0.0.2", "10.0.0.1"));
  });

  test("src-port and dst-port, single and range with inclusive bounds", () => {
    yes("allow src-port=5353", f);
    no("allow src-port=5354", f);
    yes("allow dst-port=53", f);
    yes("allow dst-port=53-53", f);
    yes("allow dst-port=1-53", f);
    yes("allow dst-port=53-60", f);
    no("allow dst-port=54-60", f);
    no("allow dst-port=1-52", f);
    yes("allow src-port=0-65535", f);
    // No ports at all: ICMP.
    no("allow src-port=0-65535", icmp4("1.1.1.1", "2.2.2.2"));
    yes("allow proto=tcp dst-port=443", tcp4("1.1.1.1", "2.2.2.2", 40000, 443));
  });

  test("every field given must match (one mismatch is enough to skip the rule)", () => {
    const all = `allow src-mac=${GUEST_MAC} dst-mac=${GW_MAC} ethertype=ipv4 vlan=42 src=10.0.0.2 dst=10.9.8.0/24 proto=udp src-port=5353 dst-port=53`;
    yes(all, f);
    for (const [k, v] of [
      ["src-mac", OTHER_MAC],
      ["dst-mac", OTHER_MAC],
      ["ethertype", "arp"],
      ["vlan", "41"],
      ["src", "10.0.0.3"],
      ["dst", "10.9.9.0/24"],
      ["proto", "tcp"],
      ["src-port", "5352"],
      ["dst-port", "54"],
    ] as const)
      assert.ok(!matches(all.replace(new RegExp(`${k}=\\S+`), `${k}=${v}`), f), `${k}=${v}`);
  });
});

describe("PortFilter: first match, counters, default", () => {
  test("the first matching rule decides; each decider is counted; the default takes the rest", () => {
    const pf = new PortFilter(
      [
        parseRule("deny proto=tcp dst-port=22"),
        parseRule("allow proto=tcp"),
        parseRule("deny src=10.0.0.0/8"),
      ],
      "allow",
    );
    assert.equal(pf.check(tcp4("10.0.0.2", "1.1.1.1", 1000, 22)), false);
    assert.equal(pf.check(tcp4("10.0.0.2", "1.1.1.1", 1000, 80)), true);
    assert.equal(pf.check(tcp4("10.0.0.2", "1.1.1.1", 1000, 80)), true);
    assert.equal(pf.check(udp4("10.0.0.2", "1.1.1.1", 1, 2)), false);
    assert.equal(pf.check(udp4("11.0.0.2", "1.1.1.1", 1, 2)), true);
    assert.deepEqual(pf.stats(), {
      rules: [
        { rule: "deny proto=tcp dst-port=22", matches: 1 },
        { rule: "allow proto=tcp", matches: 2 },
        { rule: "deny src=10.0.0.0/8", matches: 1 },
      ],
      defaultMatches: 1,
      defaultAction: "allow",
    });
  });

  test("no rules: the default decides every frame", () => {
    const deny = new PortFilter([], "deny");
    assert.equal(deny.check(udp4("1.1.1.1", "2.2.2.2", 1, 2)), false);
    assert.equal(new PortFilter([], "allow").check(lldp()), true);
    assert.equal(deny.stats().defaultMatches, 1);
  });

  test("the filter keeps its own copy of the rules", () => {
    const rules: FilterRule[] = [{ action: "deny", vlan: 1 }];
    const pf = new PortFilter(rules, "allow");
    (rules[0] as FilterRule).vlan = 2;
    assert.equal(pf.rules[0]?.vlan, 1);
    assert.equal(pf.stats().rules[0]?.rule, "deny vlan=1");
  });
});

describe("default-deny port: anti-spoofing", () => {
  // The guest owns 52:54:00:00:00:02, 10.0.0.2 and fe80::5054:ff:fe00:2; everything else is refused.
  const rules = [
    `allow src-mac=${GUEST_MAC} ethertype=ipv4 src=10.0.0.2/32`,
    `allow src-mac=${GUEST_MAC} ethertype=arp src=10.0.0.2/32`,
    `allow src-mac=${GUEST_MAC} ethertype=ipv6 src=fe80::5054:ff:fe00:2/128`,
    `allow src-mac=${GUEST_MAC} src=0.0.0.0/32 proto=udp src-port=68 dst-port=67`,
  ];
  const port = () => new PortFilter(rules.map(parseRule), "deny");

  test("its own traffic passes", () => {
    const pf = port();
    assert.equal(pf.check(udp4("10.0.0.2", "8.8.8.8", 40000, 53)), true);
    assert.equal(pf.check(tcp4("10.0.0.2", "10.0.0.1", 40000, 80)), true);
    assert.equal(pf.check(icmp4("10.0.0.2", "10.0.0.1")), true);
    assert.equal(pf.check(icmp6("fe80::5054:ff:fe00:2", "ff02::1")), true);
    assert.equal(pf.check(udp4("0.0.0.0", "255.255.255.255", 68, 67, { dstMac: BCAST })), true);
  });

  test("ARP for its own IP passes (request and reply) when a rule allows it", () => {
    const pf = port();
    assert.equal(pf.check(arp("10.0.0.2", "10.0.0.1")), true);
    assert.equal(pf.check(arp("10.0.0.2", "10.0.0.1", GUEST_MAC, 2)), true);
    assert.equal(pf.stats().rules[1]?.matches, 2);
    // Without the ARP rule, the IPv4 rule (ethertype=ipv4) does not let ARP through.
    const noArp = new PortFilter(rules.filter((_, i) => i !== 1).map(parseRule), "deny");
    assert.equal(noArp.check(arp("10.0.0.2", "10.0.0.1")), false);
  });

  test("a spoofed MAC, a spoofed IP, a spoofed ARP and other ethertypes are blocked", () => {
    const pf = port();
    const blocked = [
      udp4("10.0.0.2", "8.8.8.8", 40000, 53, { mac: OTHER_MAC }),
      udp4("10.0.0.3", "8.8.8.8", 40000, 53),
      tcp4("10.0.0.1", "10.0.0.9", 1, 2),
      icmp4("10.0.0.2", "10.0.0.1", OTHER_MAC),
      icmp6("fe80::1", "ff02::1"),
      icmp6("fe80::5054:ff:fe00:2", "ff02::1", OTHER_MAC),
      arp("10.0.0.1", "10.0.0.2"),
      arp("10.0.0.1", "10.0.0.1", GUEST_MAC, 2),
      arp("10.0.0.2", "10.0.0.1", OTHER_MAC),
      udp4("0.0.0.0", "255.255.255.255", 68, 68, { dstMac: BCAST }),
      lldp(),
    ];
    for (const [i, fi] of blocked.entries()) assert.equal(pf.check(fi), false, `frame ${i}`);
    const s = pf.stats();
    assert.equal(s.defaultMatches, blocked.length);
    assert.deepEqual(
      s.rules.map((r) => r.matches),
      [0, 0, 0, 0],
    );
  });
});

describe("PortFilter: the index over long rule lists decides exactly as a scan", () => {
  /** xorshift32, so that every run draws the same rules and frames. */
  function prng(seed: number): (n: number) => number {
    let x = seed >>> 0 || 1;
    return (n) => {
      x ^= x << 13;
      x >>>= 0;
      x ^= x >>> 17;
      x ^= x << 5;
      x >>>= 0;
      return x % n;
    };
  }
  const MACS = ["52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:01:02", "02:00:00:00:00:09"];
  const IPS = ["10.0.0.1", "10.0.0.2", "10.0.1.2", "192.168.0.9"];

  function randomRule(rnd: (n: number) => number, pin: number): FilterRule {
    const r: FilterRule = { action: rnd(2) ? "allow" : "deny" };
    // `pin` makes one field present in most rules, so that an index on it is chosen.
    const has = (field: number) => (field === pin ? rnd(10) < 9 : rnd(4) === 0);
    if (has(0)) r.srcMac = MACS[rnd(4)];
    if (has(1)) r.dstMac = MACS[rnd(4)];
    if (has(2)) r.ethertype = [0x0800, 0x0806, 0x86dd][rnd(3)];
    if (has(3)) r.vlan = rnd(3);
    if (has(4)) r.src = rnd(3) ? IPS[rnd(4)] : "10.0.0.0/24";
    if (has(5)) r.dst = rnd(3) ? IPS[rnd(4)] : "10.0.0.0/16";
    if (has(6)) r.proto = (["tcp", "udp", "icmp"] as const)[rnd(3)];
    if (has(7)) r.srcPort = rnd(3) ? 1000 + rnd(4) : [1000, 1001 + rnd(3)];
    if (has(8)) r.dstPort = rnd(3) ? 53 + rnd(3) : [53, 54 + rnd(3)];
    return r;
  }

  function randomFrame(rnd: (n: number) => number): FrameInfo {
    const mac = MACS[rnd(4)] as string;
    const src = IPS[rnd(4)] as string;
    const dst = IPS[rnd(4)] as string;
    const b = new FrameBuilder();
    switch (rnd(5)) {
      case 0:
        b.eth(MACS[rnd(4)] as string, mac, 0x0800)
          .ipv4(src, dst, 17, 12)
          .udp(1000 + rnd(4), 53 + rnd(3), 4);
        break;
      case 1:
        b.eth(MACS[rnd(4)] as string, mac, 0x0800)
          .ipv4(src, dst, 6, 20)
          .tcp(1000 + rnd(4), 53 + rnd(3));
        break;
      case 2:
        b.eth(BCAST, mac, 0x0806).u16(1).u16(0x0800).u8(6, 4).u16(1).mac(mac).ip4(src).zeros(6).ip4(dst);
        break;
      case 3:
        b.eth(MACS[rnd(4)] as string, mac, 0x86dd)
          .ipv6("fd00::1", "fd00::2", 17, 8)
          .udp(1000 + rnd(4), 53);
        break;
      default:
        b.eth(MACS[rnd(4)] as string, mac, 0x0800)
          .ipv4(src, dst, 1, 8)
          .u8(8, 0)
          .zeros(6);
    }
    const i = info(b.build());
    i.vlan = rnd(3);
    return i;
  }

  test("random rule lists (200 rules, each field in turn pinned by most rules) and 2000 random frames", () => {
    const rnd = prng(20261202);
    const kinds = new Set<string>();
    for (let trial = 0; trial < 30; trial++) {
      const rules: FilterRule[] = [];
      for (let i = 0; i < 200; i++) rules.push(randomRule(rnd, trial % 10));
      const indexed = new PortFilter(rules, trial % 2 ? "allow" : "deny");
      const scan = new PortFilter(rules, trial % 2 ? "allow" : "deny", { index: false });
      assert.equal(scan.indexedBy, "none");
      kinds.add(indexed.indexedBy);
      for (let n = 0; n < 2000; n++) {
        const f = randomFrame(rnd);
        assert.equal(indexed.check(f), scan.check(f), `trial ${trial} frame ${n}`);
      }
      assert.deepEqual(indexed.stats(), scan.stats(), `trial ${trial} counters (index ${indexed.indexedBy})`);
    }
    // The trials did exercise indexes on several fields (and some lists had none worth making).
    assert.ok(kinds.size >= 5, [...kinds].join(","));
  });

  test("1000 rules each for one MAC are indexed: a frame checks its own rule, not the list", () => {
    const rules: FilterRule[] = [];
    for (let i = 0; i < 1000; i++)
      rules.push({
        action: "allow",
        srcMac: `52:54:00:00:${(i >> 8).toString(16).padStart(2, "0")}:${(i & 0xff).toString(16).padStart(2, "0")}`,
      });
    const pf = new PortFilter(rules, "deny");
    assert.equal(pf.indexedBy, "src-mac");
    assert.equal(pf.check(udp4("10.0.0.2", "10.0.0.1", 1, 2, { mac: "52:54:00:00:03:e7" })), true);
    assert.equal(pf.check(udp4("10.0.0.2", "10.0.0.1", 1, 2, { mac: "52:54:00:00:03:e8" })), false);
    assert.equal(pf.stats().rules[999]?.matches, 1);
    assert.equal(pf.stats().defaultMatches, 1);
  });
});

describe("PortFilter.check cost", () => {
  test("allocates nothing, with 1000 rules that all need looking at", async () => {
    const rules: FilterRule[] = [];
    for (let i = 0; i < 1000; i++) {
      rules.push(
        i % 3 === 0
          ? {
              action: "allow",
              src: `10.${i >> 8}.${i & 0xff}.0/24`,
              proto: "udp",
              dstPort: [1000 + i, 2000 + i],
            }
          : i % 3 === 1
            ? {
                action: "deny",
                srcMac: `52:54:00:00:${(i >> 8).toString(16).padStart(2, "0")}:${(i & 0xff).toString(16).padStart(2, "0")}`,
              }
            : { action: "deny", dst: `fd00:${i.toString(16)}::/48`, srcPort: i },
      );
    }
    const pf = new PortFilter(rules, "allow");
    const frames = [
      udp4("192.168.0.1", "1.1.1.1", 1, 2),
      udp6("fd00::1", "fd00::2", 3, 4),
      arp("1.1.1.1", "2.2.2.2"),
    ];
    const { gcs, heapGrowth } = await allocationsDuring((i) => {
      pf.check(frames[i % 3] as FrameInfo);
    }, 20_000);
    assert.equal(gcs, 0);
    assert.ok(heapGrowth < HEAP_SLACK, `heap grew ${heapGrowth} bytes`);
    // None of them matched: all went to the default.
    assert.ok(pf.stats().defaultMatches >= 20_000, `${pf.stats().defaultMatches} default matches`);
    assert.equal(
      pf.stats().rules.reduce((a, r) => a + r.matches, 0),
      0,
    );
  });
});
