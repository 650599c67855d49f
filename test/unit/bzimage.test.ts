import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";
import {
  BzImageError,
  ENTRY_64_OFFSET,
  formatProtocolVersion,
  parseBzImage,
  XLF_CAN_BE_LOADED_ABOVE_4G,
  XLF_KERNEL_64,
} from "../../src/arch/x86/bzimage.ts";
import { makeBzImage as makeImage } from "../fixtures/bzimage.ts";
import { findRealKernel, NO_REAL_KERNEL } from "../helpers/real-kernel.ts";

function rejects(img: Uint8Array, pattern: RegExp): void {
  assert.throws(
    () => parseBzImage(img),
    (e: unknown) => {
      assert.ok(e instanceof BzImageError, `expected BzImageError, got ${String(e)}`);
      assert.equal(e.code, "VIREO_BZIMAGE_INVALID");
      assert.match(e.message, pattern);
      return true;
    },
  );
}

describe("parseBzImage", () => {
  it("parses a well-formed image and slices the protected-mode kernel", () => {
    const img = makeImage({ setupSects: 4, kernelLen: 4096 });
    const b = parseBzImage(img);
    assert.equal(b.header.setupSects, 4);
    assert.equal(b.kernelOffset, 5 * 512);
    assert.equal(b.kernel.length, 4096);
    assert.equal(b.kernel[0], 3);
    assert.equal(b.kernel[1], 10);
    assert.equal(b.header.version, 0x020f);
    assert.equal(formatProtocolVersion(b.header.version), "2.15");
    assert.equal(b.header.syssize, 256);
    assert.equal(b.header.kernelAlignment, 0x200000);
    assert.equal(b.header.prefAddress, 0x1000000);
    assert.equal(b.header.initSize, 0x2000000);
    assert.equal(b.header.cmdlineSize, 2047);
    assert.equal(b.header.initrdAddrMax, 0x7fffffff);
    assert.equal(b.header.relocatable, true);
    assert.equal(b.header.minAlignment, 21);
    assert.equal(b.header.headerEnd, 0x26c);
    assert.equal(b.setupHeaderBytes.length, 0x26c - 0x1f1);
    assert.equal(b.setupHeaderBytes[0], 4);
    assert.equal(b.kernelVersion, "6.1.0-test (vireo) #1");
  });

  it("treats setup_sects 0 as 4", () => {
    const b = parseBzImage(makeImage({ setupSects: 0 }));
    assert.equal(b.header.setupSects, 4);
    assert.equal(b.kernelOffset, 2560);
  });

  it("honours a larger setup_sects", () => {
    const b = parseBzImage(makeImage({ setupSects: 39, kernelLen: 1600 }));
    assert.equal(b.kernelOffset, 40 * 512);
    assert.equal(b.kernel.length, 1600);
    assert.equal(b.kernel[0], 3);
  });

  it("ignores data after syssize (an appended signature)", () => {
    const b = parseBzImage(makeImage({ kernelLen: 1024, trailing: 1472 }));
    assert.equal(b.kernel.length, 1024);
  });

  it("rejects a file too small for the header", () => {
    rejects(new Uint8Array(512), /too small \(512 bytes\)/);
  });

  it("rejects a missing boot flag", () => {
    const img = makeImage();
    img[0x1fe] = 0;
    rejects(img, /no boot flag: 0xaa00/);
  });

  it("rejects an image without HdrS", () => {
    const img = makeImage();
    img[0x205] = 0x54;
    rejects(img, /not a bzImage: no "HdrS"/);
  });

  it("rejects protocols older than 2.12, showing the version", () => {
    rejects(makeImage({ version: 0x020b }), /boot protocol 2\.11 \(0x020b\) is too old/);
    rejects(makeImage({ version: 0x0204 }), /2\.04/);
  });

  it("accepts exactly 2.12", () => {
    assert.equal(parseBzImage(makeImage({ version: 0x020c })).header.version, 0x020c);
  });

  it("rejects a zImage (no LOADED_HIGH)", () => {
    rejects(makeImage({ loadflags: 0 }), /LOADED_HIGH/);
  });

  it("rejects a non-relocatable kernel", () => {
    rejects(makeImage({ relocatable: 0 }), /not relocatable/);
  });

  it("rejects a kernel without a 64-bit entry point", () => {
    rejects(makeImage({ xloadflags: XLF_CAN_BE_LOADED_ABOVE_4G }), /no 64-bit entry point/);
  });

  it("rejects truncated kernel data", () => {
    rejects(makeImage({ kernelLen: 4096, truncate: 16 }), /kernel data is truncated/);
  });

  it("rejects an image cut inside the setup code", () => {
    rejects(makeImage({ setupSects: 4 }).subarray(0, 1024), /truncated/);
  });

  it("rejects a setup header length outside the boot_params hole", () => {
    rejects(makeImage({ headerEnd: 0x240 }), /setup header length is invalid/);
    rejects(makeImage({ headerEnd: 0x2a0 }), /setup header length is invalid/);
  });

  it("rejects syssize 0", () => {
    const img = makeImage();
    new DataView(img.buffer).setUint32(0x1f4, 0, true);
    rejects(img, /syssize = 0/);
  });

  it("works on a view with a non-zero byte offset", () => {
    const img = makeImage();
    const big = new Uint8Array(img.length + 3);
    big.set(img, 3);
    assert.equal(parseBzImage(big.subarray(3)).kernel.length, 4096);
  });
});

describe("parseBzImage on a real kernel", () => {
  const path = findRealKernel();
  it("parses the installed kernel", {
    skip: path ? false : NO_REAL_KERNEL,
  }, () => {
    const img = readFileSync(path as string);
    const b = parseBzImage(img);
    assert.ok(b.header.version >= 0x020c);
    assert.ok(b.header.xloadflags & XLF_KERNEL_64);
    assert.ok(b.header.relocatable);
    assert.ok(b.header.initSize >= b.kernel.length);
    assert.equal(b.kernelOffset, (b.header.setupSects + 1) * 512);
    assert.ok(b.kernelOffset + b.kernel.length <= img.length);
    // The payload (compressed vmlinux) starts with a known compression magic (boot.rst "payload_offset").
    const p = b.kernel.subarray(b.header.payloadOffset, b.header.payloadOffset + 2);
    const magic = ((p[0] ?? 0) << 8) | (p[1] ?? 0);
    assert.ok(
      [0x1f8b, 0x1f9e, 0x425a, 0x5d00, 0xfd37, 0x0221, 0x28b5, 0x894c].includes(magic),
      `payload magic 0x${magic.toString(16)}`,
    );
    assert.ok(ENTRY_64_OFFSET < b.kernel.length);
  });
});
