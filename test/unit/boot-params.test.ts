import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";
import {
  BOOT_PARAMS_SIZE,
  BootParamsError,
  placeInitrd,
  placeKernel,
  writeBootParams,
  writeCommandLine,
} from "../../src/arch/x86/boot-params.ts";
import { parseBzImage, XLF_KERNEL_64 } from "../../src/arch/x86/bzimage.ts";
import { buildE820, E820_RAM, type E820Entry, GiB, MiB } from "../../src/arch/x86/e820.ts";
import { GuestMemory } from "../../src/memory/guest-memory.ts";
import { makeBzImage } from "../fixtures/bzimage.ts";
import { findRealKernel, NO_REAL_KERNEL } from "../helpers/real-kernel.ts";

const ZERO_PAGE = 0x7000;
const CMDLINE = 0x20000;

function memory(size = 2 * MiB): GuestMemory {
  const m = new GuestMemory(new ArrayBuffer(size));
  m.fill(0, size, 0xaa); // stale contents the writer must clear
  return m;
}

/** Reads the zero page back at zero-page.rst / boot.rst offsets, independently of the writer's constants. */
function decode(mem: GuestMemory, at: number) {
  const p = new DataView(mem.slice(at, BOOT_PARAMS_SIZE).slice().buffer);
  const e820: E820Entry[] = [];
  const n = p.getUint8(0x1e8);
  for (let i = 0; i < n; i++) {
    const o = 0x2d0 + 20 * i;
    e820.push({
      addr: Number(p.getBigUint64(o, true)),
      size: Number(p.getBigUint64(o + 8, true)),
      type: p.getUint32(o + 16, true) as E820Entry["type"],
    });
  }
  return {
    view: p,
    acpiRsdpAddr: p.getBigUint64(0x070, true),
    extRamdiskImage: p.getUint32(0x0c0, true),
    extRamdiskSize: p.getUint32(0x0c4, true),
    extCmdLinePtr: p.getUint32(0x0c8, true),
    e820Entries: n,
    sentinel: p.getUint8(0x1ef),
    setupSects: p.getUint8(0x1f1),
    vidMode: p.getUint16(0x1fa, true),
    bootFlag: p.getUint16(0x1fe, true),
    hdrMagic: p.getUint32(0x202, true),
    version: p.getUint16(0x206, true),
    typeOfLoader: p.getUint8(0x210),
    loadflags: p.getUint8(0x211),
    code32Start: p.getUint32(0x214, true),
    ramdiskImage: p.getUint32(0x218, true),
    ramdiskSize: p.getUint32(0x21c, true),
    heapEndPtr: p.getUint16(0x224, true),
    cmdLinePtr: p.getUint32(0x228, true),
    kernelAlignment: p.getUint32(0x230, true),
    xloadflags: p.getUint16(0x236, true),
    cmdlineSize: p.getUint32(0x238, true),
    initSize: p.getUint32(0x260, true),
    e820,
  };
}

const image = parseBzImage(makeBzImage());
const map64 = buildE820({ memSize: 64 * MiB, reserved: [{ addr: 0, size: 0x1000 }] });

describe("writeBootParams", () => {
  it("writes the documented fields", () => {
    const mem = memory();
    writeBootParams(mem, ZERO_PAGE, {
      image,
      cmdlineAddr: CMDLINE,
      initrd: { addr: 0x3f00000, size: 0x12345 },
      e820: map64,
      rsdpAddr: 0xe0000,
      kernelAddr: 0x1000000,
    });
    const z = decode(mem, ZERO_PAGE);
    // The setup header, copied from the image.
    assert.equal(z.setupSects, 4);
    assert.equal(z.bootFlag, 0xaa55);
    assert.equal(z.hdrMagic, 0x53726448);
    assert.equal(z.version, 0x020f);
    assert.equal(z.kernelAlignment, 0x200000);
    assert.equal(z.xloadflags & XLF_KERNEL_64, XLF_KERNEL_64);
    assert.equal(z.cmdlineSize, 2047);
    assert.equal(z.initSize, 0x2000000);
    // Loader-written fields.
    assert.equal(z.vidMode, 0xffff);
    assert.equal(z.typeOfLoader, 0xff);
    assert.equal(z.loadflags, 0x81, "LOADED_HIGH kept, CAN_USE_HEAP set");
    assert.equal(z.heapEndPtr, 0xe000 - 0x200);
    assert.equal(z.code32Start, 0x1000000);
    assert.equal(z.cmdLinePtr, CMDLINE);
    assert.equal(z.extCmdLinePtr, 0);
    assert.equal(z.ramdiskImage, 0x3f00000);
    assert.equal(z.ramdiskSize, 0x12345);
    assert.equal(z.extRamdiskImage, 0);
    assert.equal(z.extRamdiskSize, 0);
    assert.equal(z.acpiRsdpAddr, 0xe0000n);
    assert.equal(z.sentinel, 0);
    assert.equal(z.e820Entries, map64.length);
    assert.deepEqual(z.e820, map64);
  });

  it("zeroes everything it does not set, including past the setup header", () => {
    const mem = memory();
    writeBootParams(mem, ZERO_PAGE, { image, cmdlineAddr: CMDLINE, e820: map64 });
    const page = mem.slice(ZERO_PAGE, BOOT_PARAMS_SIZE);
    for (const [from, to] of [
      [0x000, 0x1e8],
      [0x1e9, 0x1f1],
      [image.header.headerEnd, 0x2d0],
      [0x2d0 + 20 * map64.length, 0x1000],
    ] as const) {
      for (let i = from; i < to; i++) assert.equal(page[i], 0, `byte 0x${i.toString(16)}`);
    }
    const z = decode(mem, ZERO_PAGE);
    assert.equal(z.ramdiskImage, 0);
    assert.equal(z.ramdiskSize, 0);
    assert.equal(z.acpiRsdpAddr, 0n);
    assert.equal(z.code32Start, 0);
    // Memory around the page is untouched.
    assert.equal(mem.readU8(ZERO_PAGE - 1), 0xaa);
    assert.equal(mem.readU8(ZERO_PAGE + BOOT_PARAMS_SIZE), 0xaa);
  });

  it("splits 64-bit addresses into the ext_ fields", () => {
    const mem = memory();
    writeBootParams(mem, ZERO_PAGE, {
      image,
      cmdlineAddr: 0x1_2345_6000,
      initrd: { addr: 0x1_8000_0000, size: 0x1_0000_0010 },
      e820: map64,
    });
    const z = decode(mem, ZERO_PAGE);
    assert.equal(z.cmdLinePtr, 0x2345_6000);
    assert.equal(z.extCmdLinePtr, 1);
    assert.equal(z.ramdiskImage, 0x8000_0000);
    assert.equal(z.extRamdiskImage, 1);
    assert.equal(z.ramdiskSize, 0x10);
    assert.equal(z.extRamdiskSize, 1);
  });

  it("refuses addresses above 4 GiB for a kernel without XLF_CAN_BE_LOADED_ABOVE_4G", () => {
    const old = parseBzImage(makeBzImage({ xloadflags: XLF_KERNEL_64 }));
    assert.throws(
      () =>
        writeBootParams(memory(), ZERO_PAGE, {
          image: old,
          cmdlineAddr: CMDLINE,
          initrd: { addr: 5 * GiB, size: 4096 },
          e820: map64,
        }),
      (e: unknown) =>
        e instanceof BootParamsError && /initrd address 0x140000000 is above 4 GiB/.test(e.message),
    );
  });

  it("accepts 128 e820 entries and rejects 129", () => {
    const entries = (n: number): E820Entry[] =>
      Array.from({ length: n }, (_, i) => ({ addr: i * 0x2000, size: 0x1000, type: E820_RAM }));
    const mem = memory();
    writeBootParams(mem, ZERO_PAGE, { image, cmdlineAddr: CMDLINE, e820: entries(128) });
    const z = decode(mem, ZERO_PAGE);
    assert.equal(z.e820Entries, 128);
    assert.deepEqual(z.e820.at(-1), { addr: 127 * 0x2000, size: 0x1000, type: E820_RAM });
    assert.throws(
      () => writeBootParams(mem, ZERO_PAGE, { image, cmdlineAddr: CMDLINE, e820: entries(129) }),
      (e: unknown) =>
        e instanceof BootParamsError &&
        e.code === "VIREO_BOOT_PARAMS_INVALID" &&
        /129 entries/.test(e.message),
    );
  });

  it("fails cleanly when the page does not fit guest memory", () => {
    assert.throws(
      () => writeBootParams(memory(), 2 * MiB - 0x800, { image, cmdlineAddr: CMDLINE, e820: map64 }),
      (e: unknown) => (e as { code?: string }).code === "VIREO_GUEST_MEMORY_RANGE",
    );
  });
});

describe("writeCommandLine", () => {
  it("writes a NUL-terminated string and returns its size", () => {
    const mem = memory();
    const n = writeCommandLine(mem, CMDLINE, "console=ttyS0 panic=-1", image.header);
    assert.equal(n, 23);
    assert.equal(new TextDecoder().decode(mem.slice(CMDLINE, 22)), "console=ttyS0 panic=-1");
    assert.equal(mem.readU8(CMDLINE + 22), 0);
  });

  it("accepts exactly cmdline_size bytes and rejects one more", () => {
    const mem = memory();
    assert.equal(writeCommandLine(mem, CMDLINE, "x".repeat(2047), image.header), 2048);
    assert.throws(
      () => writeCommandLine(mem, CMDLINE, "x".repeat(2048), image.header),
      (e: unknown) =>
        e instanceof BootParamsError && /2048 bytes; this kernel accepts at most 2047/.test(e.message),
    );
  });
});

describe("placeKernel", () => {
  it("uses pref_address when it is aligned and fits", () => {
    const p = placeKernel(image, map64);
    assert.deepEqual(p, { loadAddr: 0x1000000, entry: 0x1000200, end: 0x3000000 });
  });

  it("falls back to the lowest aligned address when pref_address does not fit", () => {
    const img = parseBzImage(makeBzImage({ prefAddress: 0x1000000, initSize: 0x1000000 }));
    const small = buildE820({ memSize: 20 * MiB });
    // [16 MiB, 32 MiB) does not fit in 20 MiB; 2 MiB-aligned from 1 MiB up: 2 MiB.
    assert.deepEqual(placeKernel(img, small), { loadAddr: 0x200000, entry: 0x200200, end: 0x1200000 });
  });

  it("ignores an unaligned pref_address", () => {
    const img = parseBzImage(makeBzImage({ prefAddress: 0x1100000 }));
    assert.equal(placeKernel(img, map64).loadAddr, 0x200000);
  });

  it("fails when no RAM region holds init_size", () => {
    const img = parseBzImage(makeBzImage({ initSize: 0x4000000 }));
    assert.throws(
      () => placeKernel(img, map64),
      (e: unknown) => e instanceof BootParamsError && /needs 67108864 bytes/.test(e.message),
    );
  });
});

describe("placeInitrd", () => {
  it("places the initrd at the top of RAM, page aligned", () => {
    const size = 0x12345;
    const addr = placeInitrd(image, size, map64, { minAddr: 0x3000000 });
    assert.equal(addr, Math.floor((64 * MiB - size) / 4096) * 4096);
    assert.ok(addr + size <= 64 * MiB);
  });

  it("stays below initrd_addr_max", () => {
    const map = buildE820({ memSize: 6 * GiB });
    const addr = placeInitrd(image, 0x100000, map, { minAddr: 0x3000000 });
    assert.equal(addr, 0x80000000 - 0x100000);
    const low = parseBzImage(makeBzImage({ initrdAddrMax: 0x37ffffff }));
    assert.equal(placeInitrd(low, 131072, map, { minAddr: 0 }), 0x37fe0000, "boot.rst's own example");
  });

  it("skips reserved memory at the top of RAM", () => {
    const map = buildE820({ memSize: 64 * MiB, reserved: [{ addr: 63 * MiB, size: MiB }] });
    assert.equal(placeInitrd(image, MiB, map, { minAddr: 0x3000000 }), 62 * MiB);
  });

  it("honours a custom alignment", () => {
    assert.equal(placeInitrd(image, 5000, map64, { minAddr: 0, align: 2 * MiB }), 62 * MiB);
  });

  it("fails when the initrd does not fit above minAddr", () => {
    assert.throws(
      () => placeInitrd(image, 32 * MiB, map64, { minAddr: 0x3000000 }),
      (e: unknown) => e instanceof BootParamsError && /no room for a 33554432-byte initrd/.test(e.message),
    );
  });
});

describe("boot layout for a real kernel", () => {
  const path = findRealKernel();
  it("places the kernel and an initrd in 512 MiB and writes its zero page", {
    skip: path ? false : NO_REAL_KERNEL,
  }, () => {
    const raw = readFileSync(path as string);
    const img = parseBzImage(raw);
    const map = buildE820({ memSize: 512 * MiB, reserved: [{ addr: 0, size: 0x1000 }] });
    const k = placeKernel(img, map);
    assert.equal(k.loadAddr % img.header.kernelAlignment, 0);
    assert.ok(k.end - k.loadAddr >= img.header.initSize);
    const initrdSize = 7 * MiB + 123;
    const initrd = placeInitrd(img, initrdSize, map, { minAddr: k.end });
    assert.ok(initrd >= k.end && initrd + initrdSize <= 512 * MiB);
    const mem = memory();
    writeCommandLine(mem, CMDLINE, "console=ttyS0", img.header);
    writeBootParams(mem, ZERO_PAGE, {
      image: img,
      cmdlineAddr: CMDLINE,
      initrd: { addr: initrd, size: initrdSize },
      e820: map,
      kernelAddr: k.loadAddr,
    });
    const z = decode(mem, ZERO_PAGE);
    // The header bytes the loader does not write are the image's own.
    assert.equal(z.version, img.header.version);
    assert.equal(z.initSize, img.header.initSize);
    assert.equal(z.hdrMagic, 0x53726448);
    assert.deepEqual(
      new Uint8Array(mem.slice(ZERO_PAGE + 0x230, 0x10)),
      new Uint8Array(raw.subarray(0x230, 0x240)),
    );
    assert.equal(z.ramdiskImage, initrd);
    assert.equal(z.code32Start, k.loadAddr);
    assert.deepEqual(z.e820, map);
  });
});
