/**
 * Per-port filter rules for the switch: an ordered list of allow/deny rules, the first rule whose every given
 * field matches the frame decides, and a port default decides the rest. Rules come as text (the CLI) or JSON (the
 * control socket); both are checked here and compiled once into plain numbers, so that `check()` does no
 * allocation and no string work per frame.
 *
 * What a field matches (FrameInfo from frame.ts):
 *   src-mac, dst-mac   the Ethernet addresses;
 *   ethertype          the ethertype after an 802.1Q tag;
 *   vlan               FrameInfo.vlan (the tag's VID; 0 when untagged unless the engine set the port's VLAN);
 *   src, dst           an IPv4 prefix matches IPv4 packets and Ethernet/IPv4 ARP (its sender/target protocol
 *                      address), an IPv6 prefix matches IPv6 packets;
 *   proto              the IPv4 protocol or the IPv6 upper-layer protocol after the extension headers;
 *   src-port, dst-port TCP/UDP ports, one or an inclusive range; never matches a frame without ports (other
 *                      protocols, non-first fragments).
 */
import { z } from "zod";
import { VireoError } from "../errors.ts";
import {
  ETHERTYPE_ARP,
  ETHERTYPE_IPV4,
  ETHERTYPE_IPV6,
  ETHERTYPE_VLAN,
  type FrameInfo,
  IPPROTO_ICMP,
  IPPROTO_ICMPV6,
  IPPROTO_TCP,
  IPPROTO_UDP,
} from "./frame.ts";

export type FilterAction = "allow" | "deny";
export type PortRange = number | [number, number];

export interface FilterRule {
  action: FilterAction;
  srcMac?: string;
  dstMac?: string;
  ethertype?: number;
  vlan?: number;
  /** IPv4 or IPv6 address with an optional prefix length ("10.0.0.0/8", "2001:db8::/32", "10.0.0.2"). */
  src?: string;
  dst?: string;
  proto?: number | "tcp" | "udp" | "icmp" | "icmpv6";
  srcPort?: PortRange;
  dstPort?: PortRange;
}

/** A rule that does not parse or check: `field` names the bad part as the input spelled it. */
export class FilterRuleError extends VireoError {
  readonly field: string;
  /** What is wrong with the field (the message without the "filter rule: FIELD: " prefix). */
  readonly detail: string;
  constructor(field: string, detail: string) {
    super("VIREO_SWITCH_FILTER", `filter rule: ${field}: ${detail}`);
    this.field = field;
    this.detail = detail;
  }
}

// The text form's keys, in the order a rule is printed, and the JSON field each one sets.
const TEXT_KEYS = {
  "src-mac": "srcMac",
  "dst-mac": "dstMac",
  ethertype: "ethertype",
  vlan: "vlan",
  src: "src",
  dst: "dst",
  proto: "proto",
  "src-port": "srcPort",
  "dst-port": "dstPort",
} as const;
type TextKey = keyof typeof TEXT_KEYS;
type RuleField = (typeof TEXT_KEYS)[TextKey];
const FIELD_TO_TEXT = Object.fromEntries(Object.entries(TEXT_KEYS).map(([k, v]) => [v, k])) as Record<
  RuleField,
  TextKey
>;

const ETHERTYPE_NAMES: Record<string, number> = {
  ipv4: ETHERTYPE_IPV4,
  arp: ETHERTYPE_ARP,
  vlan: ETHERTYPE_VLAN,
  ipv6: ETHERTYPE_IPV6,
};
const PROTO_NAMES = {
  icmp: IPPROTO_ICMP,
  tcp: IPPROTO_TCP,
  udp: IPPROTO_UDP,
  icmpv6: IPPROTO_ICMPV6,
} as const;

/**
 * Parses the text form: an action, then space-separated KEY=VALUE fields, each at most once:
 * "allow src-mac=52:54:00:00:00:01 ethertype=0x0800 src=10.0.0.2/32 proto=udp dst-port=53".
 * Numbers are decimal or 0x hex; ethertype also ipv4|ipv6|arp|vlan; proto also tcp|udp|icmp|icmpv6; ports N or
 * N-M. A rule with no fields matches every frame.
 */
export function parseRule(text: string): FilterRule {
  const words = text.trim().split(/\s+/).filter(Boolean);
  const action = words[0];
  if (action !== "allow" && action !== "deny")
    throw new FilterRuleError(
      "action",
      `expected "allow" or "deny" first, got ${JSON.stringify(action ?? "")}`,
    );
  const rule: FilterRule = { action };
  for (const w of words.slice(1)) {
    const eq = w.indexOf("=");
    const key = eq < 0 ? w : w.slice(0, eq);
    if (!Object.hasOwn(TEXT_KEYS, key))
      throw new FilterRuleError(key, `unknown field (known: ${Object.keys(TEXT_KEYS).join(", ")})`);
    if (eq < 0 || eq === w.length - 1) throw new FilterRuleError(key, "needs a value (KEY=VALUE)");
    const field = TEXT_KEYS[key as TextKey];
    if (rule[field] !== undefined) throw new FilterRuleError(key, "given twice");
    const v = w.slice(eq + 1);
    switch (field) {
      case "srcMac":
      case "dstMac":
        rule[field] = v;
        break;
      case "src":
      case "dst":
        rule[field] = v;
        break;
      case "ethertype":
        rule.ethertype = ETHERTYPE_NAMES[v.toLowerCase()] ?? parseNumber(key, v, 0xffff);
        break;
      case "vlan":
        rule.vlan = parseNumber(key, v, 4095);
        break;
      case "proto": {
        const name = v.toLowerCase();
        rule.proto = Object.hasOwn(PROTO_NAMES, name)
          ? (name as keyof typeof PROTO_NAMES)
          : parseNumber(key, v, 255);
        break;
      }
      case "srcPort":
      case "dstPort": {
        const dash = v.indexOf("-", 1);
        rule[field] =
          dash < 0
            ? parseNumber(key, v, 0xffff)
            : [parseNumber(key, v.slice(0, dash), 0xffff), parseNumber(key, v.slice(dash + 1), 0xffff)];
        break;
      }
    }
  }
  // Check every field now (MACs, prefixes, ranges) so that a bad rule fails where it was written.
  compileRule(rule, "text");
  return rule;
}

function parseNumber(field: string, v: string, max: number): number {
  const n = /^0x[0-9a-f]+$/i.test(v)
    ? Number.parseInt(v.slice(2), 16)
    : /^[0-9]+$/.test(v)
      ? Number(v)
      : Number.NaN;
  if (!Number.isSafeInteger(n) || n < 0 || n > max)
    throw new FilterRuleError(field, `${JSON.stringify(v)} is not a number from 0 to ${max}`);
  return n;
}

const port = z.number().int().min(0).max(0xffff);
const portRange = z.union([port, z.tuple([port, port])]);

/**
 * The JSON form the control socket takes: the FilterRule fields, nothing else. The refinement runs the same
 * checks as the text form (MAC syntax, prefixes, ranges, families), each issue on its field's path.
 */
export const filterRuleSchema = z
  .strictObject({
    action: z.enum(["allow", "deny"]),
    srcMac: z.string().optional(),
    dstMac: z.string().optional(),
    ethertype: z.number().int().min(0).max(0xffff).optional(),
    vlan: z.number().int().min(0).max(4095).optional(),
    src: z.string().optional(),
    dst: z.string().optional(),
    proto: z.union([z.number().int().min(0).max(255), z.enum(["tcp", "udp", "icmp", "icmpv6"])]).optional(),
    srcPort: portRange.optional(),
    dstPort: portRange.optional(),
  })
  .superRefine((rule, ctx) => {
    try {
      compileRule(rule, "json");
    } catch (e) {
      if (!(e instanceof FilterRuleError)) throw e;
      ctx.addIssue({ code: "custom", message: e.detail, path: [e.field] });
    }
  });

/** Checks a JSON rule (an object from the control socket); a bad one throws FilterRuleError naming the field. */
export function parseRuleJson(value: unknown): FilterRule {
  const r = filterRuleSchema.safeParse(value);
  if (r.success) return r.data as FilterRule;
  const issue = r.error.issues[0];
  const field = issue?.path.length ? issue.path.map(String).join(".") : "rule";
  const message = issue?.message ?? "invalid";
  if (issue?.code === "unrecognized_keys")
    throw new FilterRuleError(
      (issue.keys as string[])[0] ?? field,
      `unknown field (known: action, ${Object.values(TEXT_KEYS).join(", ")})`,
    );
  throw new FilterRuleError(field, message);
}

/** The rule in the text form, fields in a fixed order (what stats() and `switch show` print). */
export function ruleToText(rule: FilterRule): string {
  const parts: string[] = [rule.action];
  for (const [key, field] of Object.entries(TEXT_KEYS) as Array<[TextKey, RuleField]>) {
    const v = rule[field];
    if (v === undefined) continue;
    let s: string;
    if (field === "ethertype") s = `0x${(v as number).toString(16).padStart(4, "0")}`;
    else if (Array.isArray(v)) s = `${v[0]}-${v[1]}`;
    else if (field === "srcMac" || field === "dstMac") s = (v as string).toLowerCase();
    else s = String(v);
    parts.push(`${key}=${s}`);
  }
  return parts.join(" ");
}

// Bits of CompiledRule.fields.
const F_SRC_MAC = 1 << 0;
const F_DST_MAC = 1 << 1;
const F_ETHERTYPE = 1 << 2;
const F_VLAN = 1 << 3;
const F_SRC4 = 1 << 4;
const F_DST4 = 1 << 5;
const F_SRC6 = 1 << 6;
const F_DST6 = 1 << 7;
const F_PROTO = 1 << 8;
const F_SRC_PORT = 1 << 9;
const F_DST_PORT = 1 << 10;

/** One rule as numbers: every instance has the same shape, so the check loop stays monomorphic. */
class CompiledRule {
  fields = 0;
  allow = false;
  srcHi = 0;
  srcLo = 0;
  dstHi = 0;
  dstLo = 0;
  ethertype = 0;
  vlan = 0;
  src4Mask = 0;
  src4Value = 0;
  dst4Mask = 0;
  dst4Value = 0;
  readonly src6 = new Uint8Array(16);
  src6Len = 0;
  readonly dst6 = new Uint8Array(16);
  dst6Len = 0;
  proto = 0;
  srcPortLo = 0;
  srcPortHi = 0;
  dstPortLo = 0;
  dstPortHi = 0;
}

function compileRule(rule: FilterRule, form: "text" | "json"): CompiledRule {
  const name = (f: RuleField): string => (form === "text" ? FIELD_TO_TEXT[f] : f);
  const c = new CompiledRule();
  if (rule.action !== "allow" && rule.action !== "deny")
    throw new FilterRuleError("action", `expected "allow" or "deny", got ${JSON.stringify(rule.action)}`);
  c.allow = rule.action === "allow";
  if (rule.srcMac !== undefined) {
    [c.srcHi, c.srcLo] = parseMac(name("srcMac"), rule.srcMac);
    c.fields |= F_SRC_MAC;
  }
  if (rule.dstMac !== undefined) {
    [c.dstHi, c.dstLo] = parseMac(name("dstMac"), rule.dstMac);
    c.fields |= F_DST_MAC;
  }
  if (rule.ethertype !== undefined) {
    c.ethertype = checkInt(name("ethertype"), rule.ethertype, 0xffff);
    c.fields |= F_ETHERTYPE;
  }
  if (rule.vlan !== undefined) {
    c.vlan = checkInt(name("vlan"), rule.vlan, 4095);
    c.fields |= F_VLAN;
  }
  let family4: boolean | undefined;
  for (const f of ["src", "dst"] as const) {
    const v = rule[f];
    if (v === undefined) continue;
    const p = parsePrefix(name(f), v);
    if (family4 !== undefined && family4 !== (p.bytes === undefined))
      throw new FilterRuleError(
        name(f),
        "src and dst are of different IP families: the rule could never match",
      );
    family4 = p.bytes === undefined;
    if (f === "src") {
      if (p.bytes) {
        c.src6.set(p.bytes);
        c.src6Len = p.len;
        c.fields |= F_SRC6;
      } else {
        c.src4Mask = p.mask;
        c.src4Value = p.value;
        c.fields |= F_SRC4;
      }
    } else if (p.bytes) {
      c.dst6.set(p.bytes);
      c.dst6Len = p.len;
      c.fields |= F_DST6;
    } else {
      c.dst4Mask = p.mask;
      c.dst4Value = p.value;
      c.fields |= F_DST4;
    }
  }
  if (rule.proto !== undefined) {
    const p = rule.proto;
    c.proto =
      typeof p === "string"
        ? (PROTO_NAMES[p] ??
          badField(name("proto"), `unknown protocol ${JSON.stringify(p)} (tcp, udp, icmp, icmpv6 or 0-255)`))
        : checkInt(name("proto"), p, 255);
    c.fields |= F_PROTO;
  }
  if (rule.srcPort !== undefined) {
    [c.srcPortLo, c.srcPortHi] = checkPorts(name("srcPort"), rule.srcPort);
    c.fields |= F_SRC_PORT;
  }
  if (rule.dstPort !== undefined) {
    [c.dstPortLo, c.dstPortHi] = checkPorts(name("dstPort"), rule.dstPort);
    c.fields |= F_DST_PORT;
  }
  return c;
}

function badField(field: string, message: string): never {
  throw new FilterRuleError(field, message);
}

function checkInt(field: string, v: unknown, max: number): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < 0 || v > max)
    throw new FilterRuleError(field, `${JSON.stringify(v)} is not an integer from 0 to ${max}`);
  return v;
}

function checkPorts(field: string, v: PortRange): [number, number] {
  if (Array.isArray(v)) {
    if (v.length !== 2) throw new FilterRuleError(field, "a range is [first, last]");
    const lo = checkInt(field, v[0], 0xffff);
    const hi = checkInt(field, v[1], 0xffff);
    if (lo > hi) throw new FilterRuleError(field, `range ${lo}-${hi} is empty (first above last)`);
    return [lo, hi];
  }
  const p = checkInt(field, v, 0xffff);
  return [p, p];
}

/** "aa:bb:cc:dd:ee:ff" (hex, either case) to [top 16 bits, low 32 bits]. */
function parseMac(field: string, s: unknown): [number, number] {
  if (typeof s !== "string" || !/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i.test(s))
    throw new FilterRuleError(
      field,
      `${JSON.stringify(s)} is not a MAC address (six hex bytes: 52:54:00:12:34:56)`,
    );
  const b = s.split(":").map((h) => Number.parseInt(h, 16)) as [
    number,
    number,
    number,
    number,
    number,
    number,
  ];
  return [(b[0] << 8) | b[1], ((b[2] << 24) | (b[3] << 16) | (b[4] << 8) | b[5]) >>> 0];
}

interface Prefix {
  /** IPv6 address bytes; undefined for IPv4. */
  bytes: Uint8Array | undefined;
  len: number;
  mask: number;
  value: number;
}

/** An IPv4 or IPv6 address with an optional /len (the whole address when absent). Bits past the prefix must be 0. */
function parsePrefix(field: string, s: unknown): Prefix {
  if (typeof s !== "string") throw new FilterRuleError(field, `${JSON.stringify(s)} is not an IP prefix`);
  const slash = s.indexOf("/");
  const addr = slash < 0 ? s : s.slice(0, slash);
  const v4 = parseIpv4(addr);
  const v6 = v4 === undefined ? parseIpv6(addr) : undefined;
  if (v4 === undefined && v6 === undefined)
    throw new FilterRuleError(
      field,
      `${JSON.stringify(s)} is not an IPv4 or IPv6 address or prefix (10.0.0.0/8, fd00::/64)`,
    );
  const max = v6 ? 128 : 32;
  let len = max;
  if (slash >= 0) {
    const t = s.slice(slash + 1);
    len = /^[0-9]{1,3}$/.test(t) ? Number(t) : -1;
    if (len < 0 || len > max)
      throw new FilterRuleError(field, `prefix length in ${JSON.stringify(s)} is not 0-${max}`);
  }
  if (v6) {
    for (let bit = len; bit < 128; bit++)
      if (((v6[bit >> 3] as number) >> (7 - (bit & 7))) & 1)
        throw new FilterRuleError(field, `${JSON.stringify(s)} has address bits set past the /${len} prefix`);
    return { bytes: v6, len, mask: 0, value: 0 };
  }
  const mask = len === 0 ? 0 : (0xffffffff << (32 - len)) >>> 0;
  const value = v4 as number;
  if ((value & ~mask) >>> 0 !== 0)
    throw new FilterRuleError(field, `${JSON.stringify(s)} has address bits set past the /${len} prefix`);
  return { bytes: undefined, len, mask, value };
}

function parseIpv4(s: string): number | undefined {
  const parts = s.split(".");
  if (parts.length !== 4) return undefined;
  let v = 0;
  for (const p of parts) {
    if (!/^(0|[1-9][0-9]{0,2})$/.test(p) || Number(p) > 255) return undefined;
    v = v * 256 + Number(p);
  }
  return v;
}

/** RFC 4291 §2.2 text forms: eight hex groups, "::" for a run of zero groups, an IPv4 tail in the last 32 bits. */
function parseIpv6(s: string): Uint8Array | undefined {
  if (!/^[0-9a-f:.]+$/i.test(s)) return undefined;
  const halves = s.split("::");
  if (halves.length > 2) return undefined;
  const groups = (h: string | undefined): number[] | undefined => {
    if (h === undefined || h === "") return [];
    const out: number[] = [];
    const parts = h.split(":");
    for (let i = 0; i < parts.length; i++) {
      const p = parts[i] as string;
      if (i === parts.length - 1 && p.includes(".")) {
        const v4 = parseIpv4(p);
        if (v4 === undefined) return undefined;
        out.push(v4 >>> 16, v4 & 0xffff);
      } else if (/^[0-9a-f]{1,4}$/i.test(p)) out.push(Number.parseInt(p, 16));
      else return undefined;
    }
    return out;
  };
  const head = groups(halves[0]);
  const tail = halves.length === 2 ? groups(halves[1]) : [];
  if (!head || !tail) return undefined;
  // An IPv4 tail may only end the address.
  if (halves.length === 2 && halves[0]?.includes(".")) return undefined;
  const n = head.length + tail.length;
  if (halves.length === 2 ? n > 7 : n !== 8) return undefined;
  const all = [...head, ...new Array(8 - n).fill(0), ...tail];
  const bytes = new Uint8Array(16);
  for (let i = 0; i < 8; i++) {
    bytes[2 * i] = (all[i] as number) >>> 8;
    bytes[2 * i + 1] = (all[i] as number) & 0xff;
  }
  return bytes;
}

/** Whether the first `len` bits of `a` and `p` agree. */
function prefix6(a: Uint8Array, p: Uint8Array, len: number): boolean {
  const full = len >> 3;
  for (let i = 0; i < full; i++) if (a[i] !== p[i]) return false;
  const rest = len & 7;
  if (rest === 0) return true;
  const m = (0xff << (8 - rest)) & 0xff;
  return (((a[full] as number) ^ (p[full] as number)) & m) === 0;
}

/** Whether every field the rule gives matches the frame. */
function matchRule(r: CompiledRule, info: FrameInfo): boolean {
  const f = r.fields;
  if (f & F_SRC_MAC && (info.srcLo !== r.srcLo || info.srcHi !== r.srcHi)) return false;
  if (f & F_DST_MAC && (info.dstLo !== r.dstLo || info.dstHi !== r.dstHi)) return false;
  if (f & F_ETHERTYPE && info.ethertype !== r.ethertype) return false;
  if (f & F_VLAN && info.vlan !== r.vlan) return false;
  if (f & (F_SRC4 | F_DST4)) {
    // IPv4 packets, and ARP by its protocol addresses (frame.ts puts them in src4/dst4).
    if (info.l3 !== 4 && info.arpOp < 0) return false;
    if (f & F_SRC4 && (info.src4 & r.src4Mask) >>> 0 !== r.src4Value) return false;
    if (f & F_DST4 && (info.dst4 & r.dst4Mask) >>> 0 !== r.dst4Value) return false;
  }
  if (f & (F_SRC6 | F_DST6)) {
    if (info.l3 !== 6) return false;
    if (f & F_SRC6 && !prefix6(info.src6, r.src6, r.src6Len)) return false;
    if (f & F_DST6 && !prefix6(info.dst6, r.dst6, r.dst6Len)) return false;
  }
  if (f & F_PROTO && info.ipProto !== r.proto) return false;
  if (f & F_SRC_PORT && (info.srcPort < r.srcPortLo || info.srcPort > r.srcPortHi)) return false;
  if (f & F_DST_PORT && (info.dstPort < r.dstPortLo || info.dstPort > r.dstPortHi)) return false;
  return true;
}

// A long rule list is indexed by one field that many rules pin to a single value (a MAC, an IPv4 /32, an
// ethertype, a VLAN, a protocol, a port): the frame's value of that field picks, in rule order, the rules that
// pin it to that value plus every rule that does not pin it, and only those are checked. Rules that pin it to
// another value cannot match, so the first match, and every counter, is the same as a scan of the whole list.
// Keys are hashed to small integers (Map.get then boxes nothing); two values sharing a key only add candidates.
const IX_NONE = 0;
const IX_SRC_MAC = 1;
const IX_DST_MAC = 2;
const IX_ETHERTYPE = 3;
const IX_VLAN = 4;
const IX_SRC4 = 5;
const IX_DST4 = 6;
const IX_PROTO = 7;
const IX_SRC_PORT = 8;
const IX_DST_PORT = 9;
const INDEX_NAMES = [
  "none",
  "src-mac",
  "dst-mac",
  "ethertype",
  "vlan",
  "src",
  "dst",
  "proto",
  "src-port",
  "dst-port",
];
/** Below this many rules a scan is as quick as an index lookup. */
const INDEX_MIN_RULES = 16;

function macKey(hi: number, lo: number): number {
  return (Math.imul(hi, 0x9e3779b1) ^ lo) & 0x3fffffff;
}

function u32Key(v: number): number {
  return (v ^ (v >>> 30)) & 0x3fffffff;
}

/** The rule's key for index kind `kind`, or -1 when the rule does not pin that field to one value. */
function ruleKey(kind: number, r: CompiledRule): number {
  const f = r.fields;
  switch (kind) {
    case IX_SRC_MAC:
      return f & F_SRC_MAC ? macKey(r.srcHi, r.srcLo) : -1;
    case IX_DST_MAC:
      return f & F_DST_MAC ? macKey(r.dstHi, r.dstLo) : -1;
    case IX_ETHERTYPE:
      return f & F_ETHERTYPE ? r.ethertype : -1;
    case IX_VLAN:
      return f & F_VLAN ? r.vlan : -1;
    case IX_SRC4:
      return f & F_SRC4 && r.src4Mask === 0xffffffff ? u32Key(r.src4Value) : -1;
    case IX_DST4:
      return f & F_DST4 && r.dst4Mask === 0xffffffff ? u32Key(r.dst4Value) : -1;
    case IX_PROTO:
      return f & F_PROTO ? r.proto : -1;
    case IX_SRC_PORT:
      return f & F_SRC_PORT && r.srcPortLo === r.srcPortHi ? r.srcPortLo : -1;
    case IX_DST_PORT:
      return f & F_DST_PORT && r.dstPortLo === r.dstPortHi ? r.dstPortLo : -1;
  }
  return -1;
}

/** The frame's key for index kind `kind`, or -1 when the frame has no such field (no pinned rule can match). */
function frameKey(kind: number, info: FrameInfo): number {
  switch (kind) {
    case IX_SRC_MAC:
      return macKey(info.srcHi, info.srcLo);
    case IX_DST_MAC:
      return macKey(info.dstHi, info.dstLo);
    case IX_ETHERTYPE:
      return info.ethertype;
    case IX_VLAN:
      return info.vlan;
    case IX_SRC4:
      return info.l3 === 4 || info.arpOp >= 0 ? u32Key(info.src4) : -1;
    case IX_DST4:
      return info.l3 === 4 || info.arpOp >= 0 ? u32Key(info.dst4) : -1;
    case IX_PROTO:
      return info.ipProto;
    case IX_SRC_PORT:
      return info.srcPort;
    case IX_DST_PORT:
      return info.dstPort;
  }
  return -1;
}

interface RuleIndex {
  kind: number;
  index: Map<number, Int32Array>;
  unpinned: Int32Array;
}

/**
 * Picks the field whose index leaves the fewest rules to check for the worst frame, if that is at most half the
 * list (and the lists stay small in memory); else no index.
 */
function buildIndex(rules: CompiledRule[]): RuleIndex {
  const none: RuleIndex = { kind: IX_NONE, index: new Map(), unpinned: new Int32Array(0) };
  if (rules.length < INDEX_MIN_RULES) return none;
  let best = none;
  let bestWorst = rules.length / 2;
  for (let kind = IX_SRC_MAC; kind <= IX_DST_PORT; kind++) {
    const byKey = new Map<number, number[]>();
    const unpinned: number[] = [];
    for (let i = 0; i < rules.length; i++) {
      const k = ruleKey(kind, rules[i] as CompiledRule);
      if (k < 0) unpinned.push(i);
      else {
        const l = byKey.get(k);
        if (l) l.push(i);
        else byKey.set(k, [i]);
      }
    }
    if (byKey.size === 0) continue;
    let worst = 0;
    let total = 0;
    for (const l of byKey.values()) {
      worst = Math.max(worst, l.length);
      total += l.length + unpinned.length;
    }
    worst += unpinned.length;
    if (worst > bestWorst || total > 16 * rules.length + 4096) continue;
    // Each key's list: its pinned rules and the unpinned ones, merged back into rule order.
    const index = new Map<number, Int32Array>();
    for (const [k, l] of byKey) index.set(k, Int32Array.from([...l, ...unpinned].sort((a, b) => a - b)));
    best = { kind, index, unpinned: Int32Array.from(unpinned) };
    bestWorst = worst;
  }
  return best;
}

export interface FilterStats {
  rules: Array<{ rule: string; matches: number }>;
  defaultMatches: number;
  defaultAction: FilterAction;
}

/** A port's rule list. Build a new one to change the rules (the engine swaps it in between frames). */
export class PortFilter {
  readonly rules: readonly FilterRule[];
  readonly defaultAction: FilterAction;
  private readonly compiled: CompiledRule[];
  private readonly texts: string[];
  private readonly matches: Float64Array;
  private defaultMatches = 0;
  private readonly defaultAllow: boolean;
  /** Every rule, in order (the list checked when there is no index). */
  private readonly all: Int32Array;
  private readonly indexKind: number;
  private readonly index: Map<number, Int32Array>;
  private readonly unpinned: Int32Array;

  /** `opts.index: false` checks every rule in turn (the reference the index is tested against). */
  constructor(rules: FilterRule[], defaultAction: FilterAction, opts: { index?: boolean } = {}) {
    if (defaultAction !== "allow" && defaultAction !== "deny")
      throw new FilterRuleError(
        "default",
        `expected "allow" or "deny", got ${JSON.stringify(defaultAction)}`,
      );
    this.rules = rules.map((r) => ({ ...r }));
    this.compiled = rules.map((r, i) => {
      try {
        return compileRule(r, "json");
      } catch (e) {
        if (e instanceof FilterRuleError) throw new FilterRuleError(`rule ${i + 1}: ${e.field}`, e.detail);
        throw e;
      }
    });
    this.texts = rules.map(ruleToText);
    this.matches = new Float64Array(rules.length);
    this.defaultAction = defaultAction;
    this.defaultAllow = defaultAction === "allow";
    this.all = Int32Array.from(this.compiled.keys());
    const ix = opts.index === false ? buildIndex([]) : buildIndex(this.compiled);
    this.indexKind = ix.kind;
    this.index = ix.index;
    this.unpinned = ix.unpinned;
  }

  /** Whether the frame passes: the first rule that matches decides, else the default. Counts the decider. */
  check(info: FrameInfo): boolean {
    const rules = this.compiled;
    let list = this.all;
    if (this.indexKind !== IX_NONE) {
      const k = frameKey(this.indexKind, info);
      list = (k >= 0 ? this.index.get(k) : undefined) ?? this.unpinned;
    }
    for (let j = 0; j < list.length; j++) {
      const i = list[j] as number;
      const r = rules[i] as CompiledRule;
      if (!matchRule(r, info)) continue;
      this.matches[i] = (this.matches[i] as number) + 1;
      return r.allow;
    }
    this.defaultMatches++;
    return this.defaultAllow;
  }

  /** Which field the rules are indexed by (none for short or unsuitable lists); for tests and `switch show`. */
  get indexedBy(): string {
    return INDEX_NAMES[this.indexKind] as string;
  }

  stats(): FilterStats {
    return {
      rules: this.texts.map((rule, i) => ({ rule, matches: this.matches[i] as number })),
      defaultMatches: this.defaultMatches,
      defaultAction: this.defaultAction,
    };
  }
}
