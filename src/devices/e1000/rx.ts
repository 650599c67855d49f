/**
 * Receive-side helpers of the 8254x as pure functions: the multicast table hash (SDM §13.5.1, RCTL.MO), receive
 * buffer sizes (§13.4.22, RCTL.BSIZE/BSEX) and receive checksum offload (§3.2.3.1, RXCSUM §13.6.1).
 */
import { foldSum, onesSum } from "../../net/checksum.ts";
import {
  RCTL_BSEX,
  RCTL_BSIZE_SHIFT,
  RXCSUM_IPOFL,
  RXCSUM_TUOFL,
  RXD_ERR_IPE,
  RXD_ERR_TCPE,
  RXD_STAT_IPCS,
  RXD_STAT_IXSM,
  RXD_STAT_TCPCS,
} from "./regs.ts";

/**
 * The 12-bit multicast table index of a destination address (SDM §13.5.1): RCTL.MO selects which bits of the
 * address are used, counting bit 0 as the least significant bit of the first byte: 0 = bits 47:36, 1 = 46:35,
 * 2 = 45:34, 3 = 43:32. The top 7 bits pick one of the 128 MTA registers, the low 5 the bit in it.
 */
export function mtaHash(dst: Uint8Array, mo: number): number {
  const b4 = dst[4] as number;
  const b5 = dst[5] as number;
  switch (mo & 3) {
    case 0:
      return ((b4 >> 4) | (b5 << 4)) & 0xfff;
    case 1:
      return ((b4 >> 3) | (b5 << 5)) & 0xfff;
    case 2:
      return ((b4 >> 2) | (b5 << 6)) & 0xfff;
    default:
      return (b4 | (b5 << 8)) & 0xfff;
  }
}

/** Receive buffer size in bytes from RCTL (SDM §13.4.22). BSEX with BSIZE 00 is reserved; it is read as 2048. */
export function rxBufferSize(rctl: number): number {
  const bsize = (rctl >>> RCTL_BSIZE_SHIFT) & 3;
  if ((rctl & RCTL_BSEX) !== 0 && bsize !== 0) return [0, 16384, 8192, 4096][bsize] as number;
  return [2048, 1024, 512, 256][bsize] as number;
}

export interface RxChecksumResult {
  status: number;
  errors: number;
}

const ETHERTYPE_IPV4 = 0x0800;
const ETHERTYPE_IPV6 = 0x86dd;
const ETHERTYPE_VLAN = 0x8100;
const IPPROTO_TCP = 6;
const IPPROTO_UDP = 17;

function u16(b: Uint8Array, off: number): number {
  return ((b[off] as number) << 8) | (b[off + 1] as number);
}

/** One's-complement sum of the TCP/UDP pseudo-header fields other than the length. */
function pseudoSum(frame: Uint8Array, srcOff: number, addrLen: number, proto: number, l4len: number): number {
  return onesSum(frame, srcOff, srcOff + 2 * addrLen, proto + l4len);
}

/**
 * Status and error bits for receive checksum offload. With neither RXCSUM.IPOFL nor TUOFL, IXSM is set (the
 * indications are to be ignored). Otherwise: IPv4 headers get IPCS (and IPE if the header checksum is wrong) when
 * IPOFL is set; TCP and UDP over IPv4 (not fragmented) or over IPv6 (no extension headers) get TCPCS (and TCPE
 * when wrong) when TUOFL is set. A UDP checksum of 0 means "none" and is reported as passed. Anything the parser
 * does not recognise gets neither bit, which drivers treat as "not checked". VLAN tags that were not stripped are
 * skipped.
 */
export function rxChecksum(frame: Uint8Array, rxcsum: number): RxChecksumResult {
  const ipofl = (rxcsum & RXCSUM_IPOFL) !== 0;
  const tuofl = (rxcsum & RXCSUM_TUOFL) !== 0;
  if (!ipofl && !tuofl) return { status: RXD_STAT_IXSM, errors: 0 };
  let status = 0;
  let errors = 0;
  let off = 12;
  let type = frame.length >= 14 ? u16(frame, off) : 0;
  if (type === ETHERTYPE_VLAN && frame.length >= 18) {
    off = 16;
    type = u16(frame, off);
  }
  const l3 = off + 2;
  let proto = -1;
  let l4 = 0;
  let l4end = 0;
  let srcOff = 0;
  let addrLen = 0;
  if (type === ETHERTYPE_IPV4 && frame.length >= l3 + 20 && (frame[l3] as number) >> 4 === 4) {
    const ihl = ((frame[l3] as number) & 0x0f) * 4;
    const total = u16(frame, l3 + 2);
    if (ihl < 20 || l3 + ihl > frame.length) return { status, errors };
    if (ipofl) {
      status |= RXD_STAT_IPCS;
      if (foldSum(onesSum(frame, l3, l3 + ihl)) !== 0xffff) errors |= RXD_ERR_IPE;
    }
    const fragment = (u16(frame, l3 + 6) & 0x3fff) !== 0; // MF or a fragment offset
    if (!fragment && total >= ihl && l3 + total <= frame.length) {
      proto = frame[l3 + 9] as number;
      l4 = l3 + ihl;
      l4end = l3 + total;
      srcOff = l3 + 12;
      addrLen = 4;
    }
  } else if (type === ETHERTYPE_IPV6 && frame.length >= l3 + 40 && (frame[l3] as number) >> 4 === 6) {
    const plen = u16(frame, l3 + 4);
    if (l3 + 40 + plen <= frame.length) {
      proto = frame[l3 + 6] as number;
      l4 = l3 + 40;
      l4end = l4 + plen;
      srcOff = l3 + 8;
      addrLen = 16;
    }
  }
  if (tuofl && (proto === IPPROTO_TCP || proto === IPPROTO_UDP)) {
    const l4len = l4end - l4;
    if (l4len >= (proto === IPPROTO_TCP ? 20 : 8)) {
      status |= RXD_STAT_TCPCS;
      const zeroUdp = proto === IPPROTO_UDP && u16(frame, l4 + 6) === 0 && addrLen === 4;
      if (!zeroUdp) {
        const sum = onesSum(frame, l4, l4end, pseudoSum(frame, srcOff, addrLen, proto, l4len));
        if (foldSum(sum) !== 0xffff) errors |= RXD_ERR_TCPE;
      }
    }
  }
  return { status, errors };
}
