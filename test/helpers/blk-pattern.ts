/** What the micro guest's virtio-blk-rw writes (guest/micro/virtio_blk.c), and the checksum it prints. */

/** Per sector, 128 words of a 32-bit LCG seeded with the sector number. */
export function expectedSector(sector: number): Buffer {
  const out = Buffer.alloc(512);
  let x = sector >>> 0;
  for (let i = 0; i < 128; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    out.writeUInt32LE(x, i * 4);
  }
  return out;
}

/** FNV-1a, 64 bits, as lowercase hex without leading zeros (the guest prints `fnv1a64=HEX`). */
export function fnv1a64(bytes: Uint8Array): string {
  let h = 0xcbf29ce484222325n;
  for (const b of bytes) h = BigInt.asUintN(64, (h ^ BigInt(b)) * 0x100000001b3n);
  return h.toString(16);
}
