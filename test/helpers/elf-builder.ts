/** Builds small ELF64 x86-64 executables in memory, for tests that need a guest image of a given shape. */
export function buildElf(
  segments: Array<{ paddr: number; code: Uint8Array; memsz?: number }>,
  entry?: number,
): Uint8Array {
  const ehsize = 64;
  const phentsize = 56;
  const phoff = ehsize;
  let dataOffset = phoff + phentsize * segments.length;
  const placed = segments.map((s) => {
    const offset = dataOffset;
    dataOffset += s.code.length;
    return { ...s, offset };
  });
  const out = new Uint8Array(dataOffset);
  const v = new DataView(out.buffer);
  out.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1], 0); // \x7fELF, 64-bit, little endian, version 1
  v.setUint16(16, 2, true); // ET_EXEC
  v.setUint16(18, 62, true); // EM_X86_64
  v.setUint32(20, 1, true);
  v.setBigUint64(24, BigInt(entry ?? segments[0]?.paddr ?? 0), true);
  v.setBigUint64(32, BigInt(phoff), true);
  v.setUint16(52, ehsize, true);
  v.setUint16(54, phentsize, true);
  v.setUint16(56, segments.length, true);
  placed.forEach((s, i) => {
    const o = phoff + i * phentsize;
    v.setUint32(o, 1, true); // PT_LOAD
    v.setUint32(o + 4, 5, true); // R|X
    v.setBigUint64(o + 8, BigInt(s.offset), true);
    v.setBigUint64(o + 16, BigInt(s.paddr), true);
    v.setBigUint64(o + 24, BigInt(s.paddr), true);
    v.setBigUint64(o + 32, BigInt(s.code.length), true);
    v.setBigUint64(o + 40, BigInt(s.memsz ?? s.code.length), true);
    v.setBigUint64(o + 48, 0x1000n, true);
    out.set(s.code, s.offset);
  });
  return out;
}
