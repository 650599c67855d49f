import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { Bus } from "../../src/bus/bus.ts";
import {
  TEST_DEVICE_IRQ,
  TEST_DEVICE_MMIO_BASE,
  TEST_DEVICE_MMIO_SIZE,
  TEST_DEVICE_PIO_BASE,
  TEST_DEVICE_PIO_SIZE,
  TestDevice,
} from "../../src/devices/legacy/test-device.ts";

/** A guest's view of one window through a bus: sized little-endian accesses, like in/out and mov. */
class Guest {
  readonly levels: boolean[] = [];
  readonly markers: number[] = [];
  readonly bus: Bus;
  readonly dev: TestDevice;
  readonly base: number;
  constructor(kind: "pio" | "mmio") {
    this.bus = new Bus(kind);
    this.dev = new TestDevice({
      kind,
      irq: { set: (l) => this.levels.push(l) },
      onMarker: (id) => this.markers.push(id),
    });
    this.base = kind === "pio" ? TEST_DEVICE_PIO_BASE : TEST_DEVICE_MMIO_BASE;
    this.bus.register(this.base, this.dev.size, this.dev);
  }
  r(off: number, size: 1 | 2 | 4 | 8): bigint {
    const d = new Uint8Array(size);
    assert.equal(this.bus.read(this.base + off, d), true);
    const wide = Buffer.alloc(8);
    wide.set(d);
    return wide.readBigUInt64LE(0);
  }
  w(off: number, size: 1 | 2 | 4 | 8, v: bigint): void {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt.asUintN(64, v));
    assert.equal(this.bus.write(this.base + off, new Uint8Array(b.subarray(0, size))), true);
  }
}

describe("TestDevice", () => {
  test("window sizes and constants follow the ABI", () => {
    assert.equal(TEST_DEVICE_PIO_BASE, 0x510);
    assert.equal(TEST_DEVICE_PIO_SIZE, 0x10);
    assert.equal(TEST_DEVICE_MMIO_BASE, 0xfeb00000);
    assert.equal(TEST_DEVICE_MMIO_SIZE, 0x1000);
    assert.equal(TEST_DEVICE_IRQ, 5);
    assert.equal(new TestDevice({ kind: "pio" }).size, 0x10);
    assert.equal(new TestDevice({ kind: "mmio" }).size, 0x1000);
    assert.equal(new TestDevice({ kind: "pio" }).name, "test-pio");
    assert.equal(new TestDevice({ kind: "mmio" }).name, "test-mmio");
  });

  test("PIO: the micro guest's pio check passes", () => {
    // The sequence of guest/micro/devtests.c pio_check(), with its expectations.
    const g = new Guest("pio");
    const c0 = g.r(0x4, 4);
    g.w(0x0, 4, 0x12345678n);
    assert.equal(g.r(0x0, 4), 0x12345678n);
    assert.equal(g.r(0x0, 2), 0x5678n);
    assert.equal(g.r(0x0, 1), 0x78n);
    g.w(0x0, 2, 0xbeefn);
    assert.equal(g.r(0x0, 2), 0xbeefn);
    g.w(0x0, 1, 0x5an);
    assert.equal(g.r(0x0, 1), 0x5an);
    g.w(0x0, 4, 0xa5a5f00dn);
    assert.equal(g.r(0x0, 4), 0xa5a5f00dn);
    const c1 = g.r(0x4, 4);
    assert.equal(c1 - c0, 11n, "10 accesses in between, plus the second counter read itself");
    assert.ok(g.r(0x4, 4) > c1);
  });

  test("MMIO: 64-bit scratch and the micro guest's mmio check", () => {
    const g = new Guest("mmio");
    const c0 = g.r(0x4, 4);
    g.w(0x0, 8, 0x1122334455667788n);
    assert.equal(g.r(0x0, 8), 0x1122334455667788n);
    assert.equal(g.r(0x0, 4), 0x55667788n);
    assert.equal(g.r(0x0, 2), 0x7788n);
    assert.equal(g.r(0x0, 1), 0x88n);
    assert.equal(g.dev.scratch, 0x1122334455667788n);
    g.w(0x0, 4, 0xcafebaben);
    assert.equal(g.r(0x0, 4), 0xcafebaben);
    assert.equal(g.r(0x0, 8), 0xcafebaben, "a 32-bit write replaces the register, zero-extended");
    g.w(0x0, 2, 0xbeefn);
    assert.equal(g.r(0x0, 2), 0xbeefn);
    g.w(0x0, 1, 0x5an);
    assert.equal(g.r(0x0, 1), 0x5an);
    g.w(0x0, 8, 0x0123456789abcdefn);
    assert.equal(g.r(0x0, 8), 0x0123456789abcdefn);
    const c1 = g.r(0x4, 4);
    assert.equal(c1 - c0, 15n);
  });

  test("the PIO window's scratch is 32 bits", () => {
    const g = new Guest("pio");
    g.w(0x0, 8, 0xffffffff12345678n); // not a real x86 port access, but must not leak high bits
    assert.equal(g.r(0x0, 8), 0x12345678n);
  });

  test("the access counter counts every access, any offset, and wraps at 32 bits", () => {
    const g = new Guest("mmio");
    assert.equal(g.r(0x4, 4), 1n, "the first access is the counter read itself");
    g.w(0x4, 4, 123n); // the benchmark write target: counted, otherwise ignored
    g.r(0x100, 4);
    g.w(0xffc, 4, 1n);
    g.r(0x8, 4);
    assert.equal(g.r(0x4, 4), 6n);
    assert.equal(g.r(0x4, 8), 7n, "an 8-byte read of the counter is zero-extended");
    assert.equal(g.dev.accesses, 7);
    const d = g.dev as unknown as { count: number };
    d.count = 0xffffffff;
    assert.equal(g.r(0x4, 4), 0n, "low 32 bits");
  });

  test("markers report the written id", () => {
    const g = new Guest("pio");
    g.w(0x8, 4, 1n);
    g.w(0x8, 4, 2n);
    g.w(0x8, 4, 0xdeadbeefn);
    assert.deepEqual(g.markers, [1, 2, 0xdeadbeef]);
    assert.equal(g.r(0x8, 4), 0n, "the marker register is write-only");
  });

  test("register 0xC drives IRQ line 5 as a level", () => {
    const g = new Guest("mmio");
    g.w(0xc, 4, 1n);
    g.w(0xc, 4, 0n);
    g.w(0xc, 1, 1n);
    g.w(0xc, 4, 0n);
    assert.deepEqual(g.levels, [true, false, true, false]);
    assert.equal(g.r(0xc, 4), 0n);
  });

  test("other offsets read 0 and ignore writes", () => {
    const g = new Guest("pio");
    g.w(0x0, 4, 0xaabbccddn);
    for (const off of [0x1, 0x2, 0x3, 0x5, 0x9, 0xd, 0xe, 0xf]) {
      g.w(off, 1, 0xffn);
      assert.equal(g.r(off, 1), 0n, `offset 0x${off.toString(16)}`);
    }
    assert.equal(g.r(0x0, 4), 0xaabbccddn, "unaligned writes did not touch scratch");
    assert.deepEqual(g.markers, []);
    assert.deepEqual(g.levels, []);
  });

  test("a device without callbacks tolerates marker and IRQ writes", () => {
    const dev = new TestDevice({ kind: "pio" });
    dev.write(0x8, Uint8Array.of(1, 0, 0, 0));
    dev.write(0xc, Uint8Array.of(1, 0, 0, 0));
    assert.equal(dev.accesses, 2);
  });
});
