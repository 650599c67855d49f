/**
 * Transmit offloads of the 8254x, as pure functions over an assembled packet: checksum insertion for legacy
 * descriptors (SDM §3.3.3, CMD.IC with CSS/CSO), checksum insertion through a TCP/IP context (§3.3.6, POPTS.IXSM
 * and TXSM) and TCP segmentation (§3.5, §3.5.9).
 *
 * The hardware computes a plain one's-complement sum over a byte range and stores its complement at an offset;
 * it knows nothing about pseudo-headers for ordinary checksum offload. Software seeds the TCP/UDP checksum field
 * with the pseudo-header sum (Linux writes ~csum_tcpudp_magic(...) there), so summing the range including that
 * field yields the right checksum. For TCP segmentation the field is seeded with the pseudo-header sum *without*
 * the length, and the hardware adds each segment's TCP/UDP length (SDM §3.5.9: "TCP checksum" per frame).
 *
 * Every function validates offsets against the packet and reports a stable error kind instead of throwing:
 * the packet and context come from the guest.
 */
import { foldSum, onesSum } from "../../net/checksum.ts";
import { TUCMD_IP, TUCMD_TCP } from "./regs.ts";

/** A TCP/IP context descriptor's fields (SDM §3.3.6, Table 3-13). Ends (IPCSE, TUCSE) are inclusive; 0 = end of packet. */
export interface TxContext {
  ipcss: number;
  ipcso: number;
  ipcse: number;
  tucss: number;
  tucso: number;
  tucse: number;
  paylen: number;
  tucmd: number;
  hdrlen: number;
  mss: number;
}

/** Largest frame the transmit path builds (the 8254x allows 16288-byte packets, SDM §3.3.3). */
export const MAX_TX_FRAME = 16384;
/** Largest TCP segmentation payload accepted (PAYLEN is 20 bits; Linux sends at most 64 KiB). */
export const MAX_TSO_PAYLOAD = 256 * 1024;
/**
 * Segments one TSO packet may produce; more is refused (a counted guest error). The SDM sets no lower bound on
 * MSS, so this is the model's own sanity bound: 256 KiB of payload at an MSS of 64, while Linux sends at most
 * 64 KiB at an MSS of at least 48 (tcp_min_snd_mss), about 1400 segments. The device sends the segments a slice
 * at a time (see E1000's transmit budget), so the bound caps one packet's total work, not one exit's.
 */
export const MAX_TSO_SEGMENTS = 4096;

export type OffloadError =
  | "tx-csum-range"
  | "tso-mss-zero"
  | "tso-header-length"
  | "tso-mss-too-big"
  | "tso-too-many-segments";

function putU16(buf: Uint8Array, off: number, v: number): void {
  buf[off] = (v >>> 8) & 0xff;
  buf[off + 1] = v & 0xff;
}

function getU16(buf: Uint8Array, off: number): number {
  return ((buf[off] as number) << 8) | (buf[off + 1] as number);
}

function getU32(buf: Uint8Array, off: number): number {
  return (
    (((buf[off] as number) << 24) |
      ((buf[off + 1] as number) << 16) |
      ((buf[off + 2] as number) << 8) |
      (buf[off + 3] as number)) >>>
    0
  );
}

function putU32(buf: Uint8Array, off: number, v: number): void {
  buf[off] = (v >>> 24) & 0xff;
  buf[off + 1] = (v >>> 16) & 0xff;
  buf[off + 2] = (v >>> 8) & 0xff;
  buf[off + 3] = v & 0xff;
}

/**
 * Sums [start, end] (inclusive) and stores the complement at `at`. `extra` is added to the sum (the segment
 * length for TSO). Returns false, touching nothing, if the range or the field falls outside the packet.
 */
function insert(
  buf: Uint8Array,
  start: number,
  end: number,
  at: number,
  extra: number,
  udp: boolean,
): boolean {
  if (!(start <= end && end < buf.length && at + 2 <= buf.length)) return false;
  let csum = ~foldSum(onesSum(buf, start, end + 1, extra)) & 0xffff;
  // UDP reserves 0 for "no checksum"; a computed 0 is sent as its one's-complement twin (RFC 768).
  if (udp && csum === 0) csum = 0xffff;
  putU16(buf, at, csum);
  return true;
}

/**
 * Legacy descriptor checksum (CMD.IC): sum from CSS to the end of the packet, stored at CSO. Per SDM §3.3.3.1 the
 * request is ignored when CSS >= length or CSO >= length - 1. Returns whether a checksum was inserted.
 */
export function insertLegacyChecksum(pkt: Uint8Array, css: number, cso: number): boolean {
  if (css >= pkt.length || cso >= pkt.length - 1) return false;
  return insert(pkt, css, pkt.length - 1, cso, 0, false);
}

/**
 * Checksum insertion through the normal (non-segmentation) context: the IP header checksum when `ixsm`, the
 * TCP/UDP checksum when `txsm`. Returns an error kind if a requested range does not fit the packet; the other
 * checksum is still inserted.
 */
export function insertContextChecksums(
  pkt: Uint8Array,
  ctx: TxContext,
  ixsm: boolean,
  txsm: boolean,
): OffloadError | undefined {
  let error: OffloadError | undefined;
  const last = pkt.length - 1;
  if (ixsm && !insert(pkt, ctx.ipcss, ctx.ipcse === 0 ? last : ctx.ipcse, ctx.ipcso, 0, false)) {
    error = "tx-csum-range";
  }
  const udp = (ctx.tucmd & TUCMD_TCP) === 0;
  if (txsm && !insert(pkt, ctx.tucss, ctx.tucse === 0 ? last : ctx.tucse, ctx.tucso, 0, udp)) {
    error = "tx-csum-range";
  }
  return error;
}

/** What `planTso` decides for a packet: the number of segments, or why the context cannot segment it. */
export type TsoPlan = { count: number } | { error: OffloadError };

/**
 * Validates a segmentation context against its packet (`pkt`: the prototype header, HDRLEN bytes, followed by
 * the whole payload) and counts the segments it makes, without building any. A context the model cannot follow
 * is refused with an error kind: MSS 0 (SDM §3.5 gives no meaning to it), offsets outside the header, a segment
 * longer than the 8254x's largest frame (MSS + HDRLEN over 16 KiB), or more than MAX_TSO_SEGMENTS segments.
 */
export function planTso(pkt: Uint8Array, ctx: TxContext, ixsm: boolean, txsm: boolean): TsoPlan {
  const { hdrlen, mss, ipcss, tucss } = ctx;
  const ipv4 = (ctx.tucmd & TUCMD_IP) !== 0;
  const tcp = (ctx.tucmd & TUCMD_TCP) !== 0;
  if (mss === 0) return { error: "tso-mss-zero" };
  if (hdrlen === 0 || hdrlen > pkt.length) return { error: "tso-header-length" };
  if (ipcss + (ipv4 ? 20 : 40) > hdrlen || tucss < ipcss || tucss + (tcp ? 20 : 8) > hdrlen) {
    return { error: "tso-header-length" };
  }
  const ipEnd = ctx.ipcse === 0 ? tucss - 1 : ctx.ipcse;
  if (ixsm && (ctx.ipcso + 2 > hdrlen || ipEnd >= hdrlen || ipEnd < ipcss))
    return { error: "tso-header-length" };
  if (txsm && (ctx.tucso + 2 > hdrlen || ctx.tucso < tucss)) return { error: "tso-header-length" };
  if (hdrlen + mss > MAX_TX_FRAME) return { error: "tso-mss-too-big" };
  const payload = pkt.length - hdrlen;
  const count = Math.max(1, Math.ceil(payload / mss));
  if (count > MAX_TSO_SEGMENTS) return { error: "tso-too-many-segments" };
  return { count };
}

/**
 * Segment `i` of `count` (from `planTso`, which must have accepted the context) of a TCP segmentation packet
 * (SDM §3.5): the header followed by up to MSS payload bytes, with (SDM §3.5.9.1-2):
 * - IPv4 (TUCMD.IP): total length = HDRLEN - IPCSS + payload, identification incremented per frame after the
 *   first (wrapping), header checksum recomputed when IXSM.
 * - IPv6 (TUCMD.IP clear): payload length = HDRLEN - IPCSS - 40 + payload (the fixed header is 40 bytes).
 * - TCP (TUCMD.TCP): sequence number advanced by the payload already sent; FIN and PSH kept on the last frame
 *   only; checksum over the segment plus its TCP length when TXSM.
 * - UDP: length = frame length - TUCSS; checksum likewise.
 * The checksum end offsets of the context are ignored: the IP checksum covers IPCSS..IPCSE (IPCSE 0: up to
 * TUCSS - 1) and the TCP/UDP checksum runs to the end of each frame. Every segment depends only on `pkt`, the
 * context and `i`, so a device may send them a few at a time. `pkt` is only read. The frame is built at the start
 * of `out` (at least HDRLEN + MSS bytes) and returned as a view of it; without `out` it is a new array.
 */
export function tsoSegment(
  pkt: Uint8Array,
  ctx: TxContext,
  ixsm: boolean,
  txsm: boolean,
  i: number,
  count: number,
  out?: Uint8Array,
): Uint8Array {
  const { hdrlen, mss, ipcss, tucss } = ctx;
  const ipv4 = (ctx.tucmd & TUCMD_IP) !== 0;
  const tcp = (ctx.tucmd & TUCMD_TCP) !== 0;
  const ipEnd = ctx.ipcse === 0 ? tucss - 1 : ctx.ipcse;
  const payload = pkt.length - hdrlen;
  const sent = i * mss;
  const len = Math.min(mss, payload - sent);
  const last = i === count - 1;
  const f = out === undefined ? new Uint8Array(hdrlen + len) : out.subarray(0, hdrlen + len);
  f.set(pkt.subarray(0, hdrlen));
  f.set(pkt.subarray(hdrlen + sent, hdrlen + sent + len), hdrlen);
  if (ipv4) {
    putU16(f, ipcss + 2, f.length - ipcss);
    putU16(f, ipcss + 4, (getU16(pkt, ipcss + 4) + i) & 0xffff);
  } else {
    putU16(f, ipcss + 4, f.length - ipcss - 40);
  }
  const l4len = f.length - tucss;
  if (tcp) {
    putU32(f, tucss + 4, (getU32(pkt, tucss + 4) + sent) >>> 0);
    if (!last) f[tucss + 13] = (f[tucss + 13] as number) & ~(0x01 | 0x08); // FIN, PSH
  } else {
    putU16(f, tucss + 4, l4len);
  }
  if (ixsm) insert(f, ipcss, ipEnd, ctx.ipcso, 0, false);
  if (txsm) insert(f, tucss, f.length - 1, ctx.tucso, l4len, !tcp);
  return f;
}
