import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { describe, test } from "node:test";
import {
  ElfError,
  loadElf,
  MemoryTooSmallError,
  PF_R,
  PF_W,
  PF_X,
  parseElf64,
} from "../../src/arch/x86/elf.ts";
import { GuestMemory } from "../../src/memory/guest-memory.ts";
import { repoPath } from "../../src/paths.ts";

const MiB = 1024 * 1024;

interface SegSpec {
  type?: number;
  flags?: number;
  vaddr?: bigint;
  paddr: bigint;
  data: Uint8Array;
  /** Defaults to data.length. */
  memsz?: bigint;
  /** Overrides for corrupt headers. */
  offset?: bigint;
  filesz?: bigint;
}

interface ElfSpec {
  entry: bigint;
  segments: SegSpec[];
  cls?: number;
  data?: number;
  type?: number;
  machine?: number;
  phentsize?: number;
  phoff?: bigint;
  phnum?: number;
}

/**
 * Writes a minimal ELF64 executable: the 64-byte header, the program headers right after it, then each
 * segment's bytes (gABI ch. 4 and 5 layouts, written field by field).
 */
function buildElf(spec: ElfSpec): Uint8Array {
  const phnum = spec.segments.length;
  const dataStart = 64 + 56 * phnum;
  const total = dataStart + spec.segments.reduce((n, s) => n + s.data.length, 0);
  const buf = new Uint8Array(total);
  const v = new DataView(buf.buffer);
  buf.set([0x7f, 0x45, 0x4c, 0x46, spec.cls ?? 2, spec.data ?? 1, 1, 0]);
  v.setUint16(16, spec.type ?? 2, true); // ET_EXEC
  v.setUint16(18, spec.machine ?? 62, true); // EM_X86_64
  v.setUint32(20, 1, true); // EV_CURRENT
  v.setBigUint64(24, spec.entry, true);
  v.setBigUint64(32, spec.phoff ?? 64n, true);
  v.setUint16(52, 64, true); // e_ehsize
  v.setUint16(54, spec.phentsize ?? 56, true);
  v.setUint16(56, spec.phnum ?? phnum, true);
  let off = dataStart;
  spec.segments.forEach((s, i) => {
    const ph = 64 + 56 * i;
    v.setUint32(ph, s.type ?? 1, true); // PT_LOAD
    v.setUint32(ph + 4, s.flags ?? PF_R | PF_X, true);
    v.setBigUint64(ph + 8, s.offset ?? BigInt(off), true);
    v.setBigUint64(ph + 16, s.vaddr ?? s.paddr, true);
    v.setBigUint64(ph + 24, s.paddr, true);
    v.setBigUint64(ph + 32, s.filesz ?? BigInt(s.data.length), true);
    v.setBigUint64(ph + 40, s.memsz ?? BigInt(s.data.length), true);
    v.setBigUint64(ph + 48, 0x1000n, true);
    buf.set(s.data, off);
    off += s.data.length;
  });
  return buf;
}

const CODE = Uint8Array.from({ length: 32 }, (_, i) => 0x90 + (i % 8));
const DATA = Uint8Array.from({ length: 24 }, (_, i) => i + 1);

function goodSpec(): ElfSpec {
  return {
    entry: 0x100010n,
    segments: [
      { paddr: 0x100000n, data: CODE, flags: PF_R | PF_X },
      { paddr: 0x200000n, data: DATA, memsz: 0x1000n, flags: PF_R | PF_W },
    ],
  };
}

function expectElfError(image: Uint8Array, pattern: RegExp): void {
  assert.throws(
    () => parseElf64(image),
    (e: unknown) => {
      assert.ok(e instanceof ElfError, `expected ElfError, got ${e}`);
      assert.equal(e.code, "VIREO_ELF_INVALID");
      assert.match(e.message, pattern);
      return true;
    },
  );
}

describe("parseElf64", () => {
  test("parses a well-formed executable", () => {
    const elf = parseElf64(buildElf(goodSpec()));
    assert.equal(elf.entry, 0x100010);
    assert.deepEqual(elf.segments, [
      { paddr: 0x100000, vaddr: 0x100000, offset: 64 + 112, filesz: 32, memsz: 32, flags: PF_R | PF_X },
      {
        paddr: 0x200000,
        vaddr: 0x200000,
        offset: 64 + 112 + 32,
        filesz: 24,
        memsz: 0x1000,
        flags: PF_R | PF_W,
      },
    ]);
  });

  test("ignores program headers other than PT_LOAD", () => {
    const spec = goodSpec();
    spec.segments.push({ type: 4 /* PT_NOTE */, paddr: 0n, data: new Uint8Array(8) });
    spec.segments.unshift({ type: 0x6474e551 /* PT_GNU_STACK */, paddr: 0n, data: new Uint8Array(0) });
    const elf = parseElf64(buildElf(spec));
    assert.deepEqual(
      elf.segments.map((s) => s.paddr),
      [0x100000, 0x200000],
    );
  });

  test("physical and virtual addresses are reported separately", () => {
    const spec = goodSpec();
    spec.segments[0] = { paddr: 0x100000n, vaddr: 0x400000n, data: CODE };
    spec.entry = 0x400004n;
    const elf = parseElf64(buildElf(spec));
    assert.equal(elf.segments[0]?.paddr, 0x100000);
    assert.equal(elf.segments[0]?.vaddr, 0x400000);
    assert.equal(elf.entry, 0x400004);
  });

  test("too short", () => {
    expectElfError(new Uint8Array(0), /too short/);
    expectElfError(buildElf(goodSpec()).subarray(0, 63), /too short/);
  });

  test("bad magic", () => {
    const img = buildElf(goodSpec());
    img[1] = 0x46;
    expectElfError(img, /not an ELF file/);
    expectElfError(new TextEncoder().encode("#!/bin/sh\n".padEnd(100, " ")), /not an ELF file/);
  });

  test("not 64-bit", () => expectElfError(buildElf({ ...goodSpec(), cls: 1 }), /not a 64-bit/));
  test("not little endian", () =>
    expectElfError(buildElf({ ...goodSpec(), data: 2 }), /not a little-endian/));
  test("wrong machine", () =>
    expectElfError(buildElf({ ...goodSpec(), machine: 183 }), /wrong machine.*183/));

  test("not ET_EXEC", () => {
    expectElfError(buildElf({ ...goodSpec(), type: 3 }), /not an executable.*ET_DYN/);
    expectElfError(buildElf({ ...goodSpec(), type: 1 }), /not an executable.*ET_REL/);
  });

  test("wrong program header entry size", () => {
    expectElfError(buildElf({ ...goodSpec(), phentsize: 32 }), /program header entry size is 32/);
  });

  test("program headers outside the file", () => {
    expectElfError(buildElf({ ...goodSpec(), phoff: 0x10000n }), /program headers outside the file/);
    expectElfError(
      buildElf({ ...goodSpec(), phoff: 0xffffffffffffffc0n }),
      /program headers outside the file/,
    );
    expectElfError(buildElf({ ...goodSpec(), phnum: 40 }), /program headers outside the file/);
  });

  test("segment data outside the file", () => {
    const a = goodSpec();
    (a.segments[1] as SegSpec).filesz = 0x100n;
    expectElfError(buildElf(a), /segment 1 .*data outside the file/);
    const b = goodSpec();
    (b.segments[0] as SegSpec).offset = 0xfffffffffffffff0n;
    expectElfError(buildElf(b), /segment 0 .*data outside the file/);
  });

  test("filesz larger than memsz", () => {
    const spec = goodSpec();
    (spec.segments[1] as SegSpec).memsz = 8n;
    expectElfError(buildElf(spec), /segment 1 .*p_filesz 0x18 is larger than p_memsz 0x8/);
  });

  test("address overflow", () => {
    const wrap = goodSpec();
    wrap.segments[1] = { paddr: 0xfffffffffffff000n, data: DATA, memsz: 0x2000n };
    expectElfError(buildElf(wrap), /segment 1 .*address overflow/);
    const big = goodSpec();
    big.segments[1] = { paddr: 1n << 53n, data: DATA };
    expectElfError(buildElf(big), /address overflow/);
    const hugeMem = goodSpec();
    (hugeMem.segments[1] as SegSpec).memsz = 0xffffffffffffffffn;
    expectElfError(buildElf(hugeMem), /address overflow/);
    const highVirt = goodSpec();
    highVirt.segments[1] = { paddr: 0x200000n, vaddr: 0xffffffff80000000n, data: DATA };
    expectElfError(buildElf(highVirt), /address overflow/);
  });

  test("no PT_LOAD segments", () => {
    expectElfError(buildElf({ entry: 0x100000n, segments: [] }), /no PT_LOAD/);
    expectElfError(
      buildElf({ entry: 0x100000n, segments: [{ type: 4, paddr: 0x100000n, data: CODE }] }),
      /no PT_LOAD/,
    );
  });

  test("entry point outside every executable segment", () => {
    expectElfError(buildElf({ ...goodSpec(), entry: 0x100020n }), /entry point 0x100020 is not inside/);
    expectElfError(buildElf({ ...goodSpec(), entry: 0x200000n }), /entry point 0x200000/); // data, not PF_X
    expectElfError(buildElf({ ...goodSpec(), entry: 0xffffffffffffffffn }), /entry point/);
    assert.equal(
      parseElf64(buildElf({ ...goodSpec(), entry: 0x10001fn })).entry,
      0x10001f,
      "last byte is inside",
    );
  });

  test("overlapping segments", () => {
    const spec = goodSpec();
    spec.segments[1] = { paddr: 0x10001fn, data: DATA, flags: PF_R };
    expectElfError(buildElf(spec), /overlap/);
  });

  test("an image that is a view into a larger buffer parses from its own start", () => {
    const img = buildElf(goodSpec());
    const host = new Uint8Array(img.length + 100).fill(0xcc);
    host.set(img, 37);
    assert.equal(parseElf64(host.subarray(37, 37 + img.length)).entry, 0x100010);
  });
});

describe("loadElf", () => {
  test("copies segments to their physical addresses and zero-fills up to memsz", () => {
    const mem = new GuestMemory(new ArrayBuffer(4 * MiB));
    mem.fill(0, mem.size, 0xee); // prove the zero fill is done, not inherited
    const img = buildElf(goodSpec());
    const r = loadElf(mem, img);
    assert.deepEqual(r, { entry: 0x100010, lowest: 0x100000, highest: 0x201000 });
    assert.deepEqual(mem.slice(0x100000, 32), CODE);
    assert.deepEqual(mem.slice(0x200000, 24), DATA);
    assert.ok(
      mem.slice(0x200000 + 24, 0x1000 - 24).every((b) => b === 0),
      "bss is zeroed",
    );
    assert.equal(mem.readU8(0x100000 + 32), 0xee, "nothing written past the code segment");
    assert.equal(mem.readU8(0x201000), 0xee, "nothing written past memsz");
    assert.equal(mem.readU8(0xfffff), 0xee);
  });

  test("a segment below the minimum address is refused", () => {
    const mem = new GuestMemory(new ArrayBuffer(4 * MiB));
    const spec = goodSpec();
    spec.segments[1] = { paddr: 0x8000n, data: DATA, flags: PF_R };
    assert.throws(
      () => loadElf(mem, buildElf(spec)),
      (e: unknown) => e instanceof ElfError && /segment 1 at paddr 0x8000 is below 0x100000/.test(e.message),
    );
    assert.ok(
      mem.slice(0, mem.size).every((b) => b === 0),
      "nothing copied before validation failed",
    );
    assert.equal(loadElf(mem, buildElf(spec), { minAddress: 0x8000 }).lowest, 0x8000);
  });

  test("an image beyond guest RAM says how much RAM it needs", () => {
    const mem = new GuestMemory(new ArrayBuffer(2 * MiB));
    const spec = goodSpec();
    spec.segments[1] = { paddr: 0x200000n, data: DATA, memsz: 0x280000n, flags: PF_R | PF_W };
    assert.throws(
      () => loadElf(mem, buildElf(spec)),
      (e: unknown) => {
        assert.ok(e instanceof MemoryTooSmallError);
        assert.equal(e.code, "VIREO_MEMORY_TOO_SMALL");
        assert.equal(e.neededBytes, 0x480000);
        assert.equal(e.neededMiB, 5);
        assert.match(e.message, /needs 5 MiB.*has 2 MiB/);
        return true;
      },
    );
    assert.ok(
      mem.slice(0, mem.size).every((b) => b === 0),
      "nothing copied",
    );
  });

  test("a segment ending exactly at the end of RAM fits", () => {
    const mem = new GuestMemory(new ArrayBuffer(3 * MiB));
    const spec = goodSpec();
    spec.segments[1] = { paddr: 0x2ff000n, data: DATA, memsz: 0x1000n, flags: PF_R | PF_W };
    assert.equal(loadElf(mem, buildElf(spec)).highest, 3 * MiB);
  });

  test("malformed images fail with ElfError before touching memory", () => {
    const mem = new GuestMemory(new ArrayBuffer(4 * MiB));
    assert.throws(() => loadElf(mem, new Uint8Array(10)), ElfError);
  });
});

describe("the micro guest", () => {
  const path = repoPath("guest", "micro", "build", "micro.elf");
  const present = existsSync(path);
  test("guest/micro/build/micro.elf parses and loads", {
    skip: present ? false : "guest/micro/build/micro.elf not built (npm run build:guest)",
  }, () => {
    const image = new Uint8Array(readFileSync(path));
    const elf = parseElf64(image);
    assert.ok(elf.segments.length > 0);
    const exec = elf.segments.filter((s) => s.flags & PF_X);
    assert.ok(exec.some((s) => elf.entry >= s.vaddr && elf.entry < s.vaddr + s.memsz));
    const mem = new GuestMemory(new ArrayBuffer(64 * MiB));
    const r = loadElf(mem, image);
    assert.equal(r.entry, elf.entry);
    assert.ok(r.lowest >= 0x100000);
    for (const s of elf.segments) {
      assert.deepEqual(mem.slice(s.paddr, s.filesz), image.subarray(s.offset, s.offset + s.filesz));
      assert.ok(mem.slice(s.paddr + s.filesz, s.memsz - s.filesz).every((b) => b === 0));
    }
  });
});
