import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { GuestMemoryError } from "../../src/errors.ts";
import { GuestMemory, gpaFromBigInt } from "../../src/memory/guest-memory.ts";

function isMemErr(e: unknown): boolean {
  return e instanceof GuestMemoryError && e.code === "VIREO_GUEST_MEMORY_RANGE";
}

describe("GuestMemory", () => {
  test("size, base and end describe the region", () => {
    const m = new GuestMemory(new ArrayBuffer(0x1000), 0x10000);
    assert.equal(m.size, 0x1000);
    assert.equal(m.base, 0x10000);
    assert.equal(m.end, 0x11000);
  });

  test("scalar accessors are little endian and round-trip", () => {
    const buf = new ArrayBuffer(64);
    const m = new GuestMemory(buf);
    m.writeU32(0, 0x11223344);
    assert.deepEqual([...new Uint8Array(buf, 0, 4)], [0x44, 0x33, 0x22, 0x11]);
    assert.equal(m.readU8(0), 0x44);
    assert.equal(m.readU16(0), 0x3344);
    assert.equal(m.readU16(2), 0x1122);
    assert.equal(m.readU32(0), 0x11223344);
    m.writeU64(8, 0x0102030405060708n);
    assert.equal(new Uint8Array(buf)[8], 0x08);
    assert.equal(new Uint8Array(buf)[15], 0x01);
    assert.equal(m.readU64(8), 0x0102030405060708n);
    m.writeU64(16, 0xffffffffffffffffn);
    assert.equal(m.readU64(16), 0xffffffffffffffffn);
    m.writeU8(30, 0xab);
    m.writeU16(32, 0xbeef);
    assert.equal(m.readU8(30), 0xab);
    assert.equal(m.readU16(32), 0xbeef);
    // Unaligned accesses are legal on x86 and must work.
    m.writeU32(41, 0xdeadbeef);
    assert.equal(m.readU32(41), 0xdeadbeef);
  });

  test("stores truncate like a typed array", () => {
    const m = new GuestMemory(new ArrayBuffer(8));
    m.writeU8(0, 0x1ff);
    assert.equal(m.readU8(0), 0xff);
    m.writeU16(2, 0x12345);
    assert.equal(m.readU16(2), 0x2345);
  });

  test("addresses are relative to base", () => {
    const buf = new ArrayBuffer(16);
    const m = new GuestMemory(buf, 0x1000);
    m.writeU8(0x1000, 7);
    m.writeU8(0x100f, 9);
    assert.equal(new Uint8Array(buf)[0], 7);
    assert.equal(new Uint8Array(buf)[15], 9);
    assert.throws(() => m.readU8(0), isMemErr);
    assert.throws(() => m.readU8(0xfff), isMemErr);
    assert.throws(() => m.readU8(0x1010), isMemErr);
  });

  test("accesses at the very end are allowed, one byte further is not", () => {
    const m = new GuestMemory(new ArrayBuffer(16));
    m.writeU64(8, 1n);
    m.writeU32(12, 1);
    m.writeU16(14, 1);
    m.writeU8(15, 1);
    assert.throws(() => m.readU64(9), isMemErr);
    assert.throws(() => m.readU32(13), isMemErr);
    assert.throws(() => m.readU16(15), isMemErr);
    assert.throws(() => m.readU8(16), isMemErr);
    assert.throws(() => m.writeU64(9, 0n), isMemErr);
    assert.throws(() => m.writeU32(13, 0), isMemErr);
    assert.throws(() => m.writeU16(15, 0), isMemErr);
    assert.throws(() => m.writeU8(16, 0), isMemErr);
  });

  test("negative, fractional, NaN and infinite addresses are refused", () => {
    const buf = new ArrayBuffer(16);
    const m = new GuestMemory(buf);
    for (const gpa of [-1, -0.5, 0.5, 1.5, Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY]) {
      assert.throws(() => m.readU8(gpa), isMemErr, `readU8(${gpa})`);
      assert.throws(() => m.writeU8(gpa, 1), isMemErr, `writeU8(${gpa})`);
      assert.throws(() => m.readU32(gpa), isMemErr, `readU32(${gpa})`);
      assert.throws(() => m.readU64(gpa), isMemErr, `readU64(${gpa})`);
      assert.throws(() => m.check(gpa, 1), isMemErr, `check(${gpa})`);
    }
    // Nothing was written anywhere.
    assert.deepEqual([...new Uint8Array(buf)], new Array(16).fill(0));
  });

  test("bulk operations check the whole range", () => {
    const buf = new ArrayBuffer(32);
    const m = new GuestMemory(buf, 0x100);
    assert.throws(() => m.read(0x110, new Uint8Array(17)), isMemErr);
    assert.throws(() => m.write(0x110, new Uint8Array(17).fill(1)), isMemErr);
    assert.throws(() => m.fill(0x110, 17, 1), isMemErr);
    assert.throws(() => m.slice(0x110, 17), isMemErr);
    assert.throws(() => m.fill(0x100, -1, 1), isMemErr);
    assert.throws(() => m.fill(0x100, 1.5, 1), isMemErr);
    assert.throws(() => m.check(0x100, Number.MAX_SAFE_INTEGER), isMemErr);
    // gpa + len would exceed 2^53 and round; must still be refused, not wrap into range.
    assert.throws(() => m.check(Number.MAX_SAFE_INTEGER, 2), isMemErr);
    assert.throws(() => m.check(2 ** 64, 1), isMemErr);
    assert.deepEqual([...new Uint8Array(buf)], new Array(32).fill(0));
  });

  test("zero-length ranges are valid anywhere in [base, end]", () => {
    const m = new GuestMemory(new ArrayBuffer(8), 0x10);
    assert.equal(m.check(0x10, 0), 0);
    assert.equal(m.check(0x18, 0), 8);
    assert.throws(() => m.check(0x19, 0), isMemErr);
    assert.equal(m.slice(0x18, 0).length, 0);
  });

  test("check returns the buffer offset", () => {
    const m = new GuestMemory(new ArrayBuffer(64), 0x1000);
    assert.equal(m.check(0x1000, 64), 0);
    assert.equal(m.check(0x1020, 8), 0x20);
  });

  test("read, write, fill copy bytes (small and large)", () => {
    const m = new GuestMemory(new ArrayBuffer(256));
    for (const n of [1, 7, 16, 17, 100]) {
      const src = Uint8Array.from({ length: n }, (_, i) => (i * 7 + n) & 0xff);
      m.write(10, src);
      const dst = new Uint8Array(n);
      m.read(10, dst);
      assert.deepEqual(dst, src);
      src[0] = (src[0] ?? 0) ^ 0xff;
      assert.notEqual(m.readU8(10), src[0], "write copies, it does not alias");
    }
    m.fill(200, 50, 0x5a);
    assert.equal(m.readU8(199), 0);
    assert.equal(m.readU8(200), 0x5a);
    assert.equal(m.readU8(249), 0x5a);
    assert.equal(m.readU8(250), 0);
  });

  test("read/write between overlapping views of the guest buffer behave like memmove", () => {
    const m = new GuestMemory(new ArrayBuffer(64));
    for (let i = 0; i < 32; i++) m.writeU8(i, i);
    // Copy [0,8) to [2,10): a naive forward loop would smear bytes 0 and 1.
    m.write(2, m.slice(0, 8));
    assert.deepEqual([...m.slice(0, 10)], [0, 1, 0, 1, 2, 3, 4, 5, 6, 7]);
    const into = m.slice(3, 8);
    m.read(0, into);
    assert.deepEqual([...m.slice(0, 11)], [0, 1, 0, 0, 1, 0, 1, 2, 3, 4, 5]);
  });

  test("slice is a live view", () => {
    const m = new GuestMemory(new SharedArrayBuffer(32));
    const v = m.slice(4, 4);
    m.writeU32(4, 0xaabbccdd);
    assert.deepEqual([...v], [0xdd, 0xcc, 0xbb, 0xaa]);
    v[0] = 1;
    assert.equal(m.readU8(4), 1);
    assert.throws(() => m.slice(30, 4), isMemErr);
  });

  test("gpaFromBigInt accepts exactly the safe range", () => {
    assert.equal(gpaFromBigInt(0n), 0);
    assert.equal(gpaFromBigInt(0xfeb00000n), 0xfeb00000);
    assert.equal(gpaFromBigInt(BigInt(Number.MAX_SAFE_INTEGER)), Number.MAX_SAFE_INTEGER);
    assert.throws(() => gpaFromBigInt(BigInt(Number.MAX_SAFE_INTEGER) + 1n), isMemErr);
    assert.throws(() => gpaFromBigInt(0xffffffffffffffffn), /0xffffffffffffffff/);
    assert.throws(() => gpaFromBigInt(-1n), isMemErr);
    const m = new GuestMemory(new ArrayBuffer(8));
    assert.equal(m.gpaFromBigInt(5n), 5);
    assert.throws(() => m.gpaFromBigInt(1n << 60n), isMemErr);
  });

  test("the error names the range and the region", () => {
    const m = new GuestMemory(new ArrayBuffer(0x1000), 0x2000);
    try {
      m.readU32(0x2ffe);
      assert.fail("expected a throw");
    } catch (e) {
      assert.ok(e instanceof GuestMemoryError);
      assert.equal(e.gpa, 0x2ffe);
      assert.equal(e.length, 4);
      assert.match(e.message, /0x2ffe\+4/);
      assert.match(e.message, /0x2000-0x3000/);
    }
  });

  test("an invalid base is refused", () => {
    assert.throws(() => new GuestMemory(new ArrayBuffer(8), -1), isMemErr);
    assert.throws(() => new GuestMemory(new ArrayBuffer(8), 0.5), isMemErr);
    assert.throws(() => new GuestMemory(new ArrayBuffer(8), Number.MAX_SAFE_INTEGER), isMemErr);
  });
});
