/**
 * Checksums that NIC models compute on frames: the Internet checksum (RFC 1071: 16-bit one's-complement sum of
 * big-endian words) used by IPv4/TCP/UDP offloads, and the Ethernet FCS (IEEE 802.3 CRC-32).
 */

/**
 * Adds bytes [start, end) of `buf` to a running one's-complement sum as big-endian 16-bit words, pairing bytes
 * from `start` (an odd trailing byte is the high half of a word padded with zero, RFC 1071 §4.1). Returns the
 * unfolded 32-bit-safe accumulator; pass it to `foldSum`. Accumulating in a double is exact: a frame would need
 * 2^37 bytes to lose precision.
 */
export function onesSum(buf: Uint8Array, start: number, end: number, seed = 0): number {
  let sum = seed;
  let i = start;
  const last = end - 1;
  for (; i < last; i += 2) sum += ((buf[i] as number) << 8) | (buf[i + 1] as number);
  if (i < end) sum += (buf[i] as number) << 8;
  return sum;
}

/** Folds carries back in until the sum fits 16 bits (one's-complement addition). */
export function foldSum(sum: number): number {
  let s = sum;
  while (s > 0xffff) s = (s & 0xffff) + Math.floor(s / 0x10000);
  return s;
}

/** The Internet checksum of [start, end): the complement of the folded sum. */
export function internetChecksum(buf: Uint8Array, start = 0, end = buf.length, seed = 0): number {
  return ~foldSum(onesSum(buf, start, end, seed)) & 0xffff;
}

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/**
 * The IEEE 802.3 CRC-32 of `buf` (reflected polynomial 0xEDB88320, initial value and final XOR all ones). The FCS
 * goes on the wire least significant byte first, so in memory it is this value stored little endian.
 */
export function crc32(buf: Uint8Array, start = 0, end = buf.length): number {
  let c = 0xffffffff;
  for (let i = start; i < end; i++) c = (CRC_TABLE[(c ^ (buf[i] as number)) & 0xff] as number) ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}
