/**
 * Header parsing for the switch's per-frame decisions (filters, VLANs, the MAC table): one pass over the first
 * bytes of an Ethernet frame into a reused FrameInfo. The frame comes from a hostile guest, so every read is
 * checked against `len` (and the array), and a short or malformed frame fills what it does carry and leaves the
 * rest at the "none" values; nothing is allocated per call.
 */

/** Ethertypes the parser looks behind. */
export const ETHERTYPE_IPV4 = 0x0800;
export const ETHERTYPE_ARP = 0x0806;
export const ETHERTYPE_VLAN = 0x8100;
export const ETHERTYPE_IPV6 = 0x86dd;

/** IP protocol numbers (IANA "Assigned Internet Protocol Numbers"). */
export const IPPROTO_ICMP = 1;
export const IPPROTO_TCP = 6;
export const IPPROTO_UDP = 17;
export const IPPROTO_ICMPV6 = 58;

// RFC 8200 §4: the extension headers the walk steps over. Others (AH, ESP, No Next Header, ...) end the walk and
// are reported as the protocol.
const IPV6_HOP_BY_HOP = 0;
const IPV6_ROUTING = 43;
const IPV6_FRAGMENT = 44;
const IPV6_DEST_OPTS = 60;
/** At most this many extension headers are walked; a longer chain leaves ipProto at -1 (a bounded cost per frame). */
export const IPV6_MAX_EXT_HEADERS = 8;

/** The parsed header fields of one frame. Filled in place by parseFrame. */
export class FrameInfo {
  /** The whole frame's length in bytes (parseFrame's `frameLen`, which defaults to the bytes parsed). */
  length = 0;
  /** Destination and source MAC: top 16 bits and low 32 bits, unsigned. 0 when the frame is too short. */
  dstHi = 0;
  dstLo = 0;
  srcHi = 0;
  srcLo = 0;
  /** An 802.1Q tag (TPID 0x8100) was present in full; vlan is its VID and pcp its priority, else 0. */
  tagged = false;
  vlan = 0;
  pcp = 0;
  /** The ethertype (or 802.3 length) after the tag if any; -1 when the frame ends before it. */
  ethertype = -1;
  /** 4 or 6 when an IPv4 or IPv6 header's addresses were read, else 0. */
  l3: 0 | 4 | 6 = 0;
  /**
   * The IPv4 protocol, or the IPv6 upper-layer protocol after the extension-header walk (set for every fragment,
   * like IPv4's); -1 when there is no IP header or the walk could not finish (short, malformed or too long).
   */
  ipProto = -1;
  /** IPv4 addresses, unsigned; for ARP over IPv4 (arpOp >= 0) the sender and target protocol addresses. Else 0. */
  src4 = 0;
  dst4 = 0;
  /** ARP operation (1 request, 2 reply) for Ethernet/IPv4 ARP, else -1. */
  arpOp = -1;
  /** IPv6 addresses when l3 = 6, else all zero. */
  readonly src6 = new Uint8Array(16);
  readonly dst6 = new Uint8Array(16);
  /** TCP/UDP ports; -1 when none, when the transport header is cut short, or in a non-first fragment. */
  srcPort = -1;
  dstPort = -1;
}

/**
 * Parses bytes [off, off+len) of `bytes` as an Ethernet frame into `info`. Reads nothing outside that range
 * (nor outside the array). `frameLen` is the whole frame's length when only its head is parsed (the switch parses
 * a copy of the first bytes).
 */
export function parseFrame(
  bytes: Uint8Array,
  off: number,
  len: number,
  info: FrameInfo,
  frameLen = len,
): void {
  if (info.l3 === 6) {
    info.src6.fill(0);
    info.dst6.fill(0);
  }
  info.length = frameLen;
  info.dstHi = 0;
  info.dstLo = 0;
  info.srcHi = 0;
  info.srcLo = 0;
  info.tagged = false;
  info.vlan = 0;
  info.pcp = 0;
  info.ethertype = -1;
  info.l3 = 0;
  info.ipProto = -1;
  info.src4 = 0;
  info.dst4 = 0;
  info.arpOp = -1;
  info.srcPort = -1;
  info.dstPort = -1;

  // `end` is the first offset that may not be read.
  if (!(off >= 0) || off > bytes.length || !(len > 0)) return;
  const end = Math.min(off + Math.floor(len), bytes.length);
  const b = bytes;

  if (off + 6 > end) return;
  info.dstHi = u16(b, off);
  info.dstLo = u32(b, off + 2);
  if (off + 12 > end) return;
  info.srcHi = u16(b, off + 6);
  info.srcLo = u32(b, off + 8);
  if (off + 14 > end) return;
  let et = u16(b, off + 12);
  let p = off + 14;
  if (et === ETHERTYPE_VLAN) {
    // IEEE 802.1Q §9.6: the tag is TPID (0x8100) then TCI = PCP (3 bits), DEI (1 bit), VID (12 bits), and the
    // frame's own ethertype follows. A tag cut short counts as no tag and no ethertype.
    if (off + 18 > end) return;
    const tci = u16(b, p);
    info.tagged = true;
    info.pcp = tci >>> 13;
    info.vlan = tci & 0x0fff;
    et = u16(b, p + 2);
    p += 4;
  }
  info.ethertype = et;

  if (et === ETHERTYPE_IPV4) parseIpv4(b, p, end, info);
  else if (et === ETHERTYPE_IPV6) parseIpv6(b, p, end, info);
  else if (et === ETHERTYPE_ARP) parseArp(b, p, end, info);
}

function parseIpv4(b: Uint8Array, p: number, end: number, info: FrameInfo): void {
  // RFC 791 §3.1: version/IHL, ..., total length at 2, flags+fragment offset at 6, protocol at 9, source at 12,
  // destination at 16; IHL counts 32-bit words and is at least 5.
  if (p + 20 > end) return;
  const vihl = b[p] as number;
  const ihl = (vihl & 0x0f) * 4;
  if (vihl >>> 4 !== 4 || ihl < 20) return;
  info.l3 = 4;
  info.ipProto = b[p + 9] as number;
  info.src4 = u32(b, p + 12);
  info.dst4 = u32(b, p + 16);
  // Only the first fragment (offset 0) carries the transport header.
  if ((u16(b, p + 6) & 0x1fff) !== 0) return;
  // The transport header must lie inside both the frame and the datagram (Ethernet pads short frames: bytes
  // after the total length are padding, not ports).
  const totalLen = u16(b, p + 2);
  const l4 = p + ihl;
  parsePorts(b, l4, Math.min(end, p + totalLen), info);
}

function parseIpv6(b: Uint8Array, p: number, end: number, info: FrameInfo): void {
  // RFC 8200 §3: version (4 bits) ..., payload length at 4, next header at 6, source at 8, destination at 24.
  if (p + 40 > end) return;
  if ((b[p] as number) >>> 4 !== 6) return;
  info.l3 = 6;
  for (let i = 0; i < 16; i++) {
    info.src6[i] = b[p + 8 + i] as number;
    info.dst6[i] = b[p + 24 + i] as number;
  }
  const payloadLen = u16(b, p + 4);
  // A payload length of 0 is a jumbogram (RFC 2675): bounded by the frame alone.
  const limit = payloadLen === 0 ? end : Math.min(end, p + 40 + payloadLen);
  let nh = b[p + 6] as number;
  let q = p + 40;
  let firstFragment = true;
  for (let n = 0; ; n++) {
    if (nh !== IPV6_HOP_BY_HOP && nh !== IPV6_ROUTING && nh !== IPV6_DEST_OPTS && nh !== IPV6_FRAGMENT) break;
    // §4.1: Hop-by-Hop may only come right after the IPv6 header; anywhere else the packet is malformed.
    if (n >= IPV6_MAX_EXT_HEADERS || (nh === IPV6_HOP_BY_HOP && n > 0)) return;
    if (q + 8 > limit) return;
    const next = b[q] as number;
    if (nh === IPV6_FRAGMENT) {
      // §4.5: 8 bytes; the fragment offset is the top 13 bits of bytes 2-3.
      if (u16(b, q + 2) >>> 3 !== 0) firstFragment = false;
      q += 8;
    } else {
      // §4.3, §4.4, §4.6: Hdr Ext Len counts 8-octet units after the first 8 octets.
      q += ((b[q + 1] as number) + 1) * 8;
    }
    nh = next;
  }
  info.ipProto = nh;
  if (firstFragment) parsePorts(b, q, limit, info);
}

function parseArp(b: Uint8Array, p: number, end: number, info: FrameInfo): void {
  // RFC 826: htype(2) ptype(2) hlen(1) plen(1) op(2) sha(6) spa(4) tha(6) tpa(4) for Ethernet/IPv4.
  if (p + 28 > end) return;
  if (u16(b, p) !== 1 || u16(b, p + 2) !== ETHERTYPE_IPV4 || b[p + 4] !== 6 || b[p + 5] !== 4) return;
  info.arpOp = u16(b, p + 6);
  info.src4 = u32(b, p + 14);
  info.dst4 = u32(b, p + 24);
}

function parsePorts(b: Uint8Array, l4: number, limit: number, info: FrameInfo): void {
  const proto = info.ipProto;
  if (proto !== IPPROTO_TCP && proto !== IPPROTO_UDP) return;
  // TCP (RFC 9293 §3.1) and UDP (RFC 768) both start with source port, destination port.
  if (l4 + 4 > limit) return;
  info.srcPort = u16(b, l4);
  info.dstPort = u16(b, l4 + 2);
}

function u16(b: Uint8Array, i: number): number {
  return ((b[i] as number) << 8) | (b[i + 1] as number);
}

function u32(b: Uint8Array, i: number): number {
  return (
    (((b[i] as number) << 24) |
      ((b[i + 1] as number) << 16) |
      ((b[i + 2] as number) << 8) |
      (b[i + 3] as number)) >>>
    0
  );
}

/** Formats a MAC held as hi16/lo32 as "aa:bb:cc:dd:ee:ff" (for logs and stats, not the data path). */
export function macToString(hi: number, lo: number): string {
  const parts: string[] = [];
  for (let i = 1; i >= 0; i--) parts.push(((hi >>> (i * 8)) & 0xff).toString(16).padStart(2, "0"));
  for (let i = 3; i >= 0; i--) parts.push(((lo >>> (i * 8)) & 0xff).toString(16).padStart(2, "0"));
  return parts.join(":");
}
