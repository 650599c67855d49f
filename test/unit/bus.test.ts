import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { Bus, type BusDevice, BusOverlapError } from "../../src/bus/bus.ts";
import { VireoError } from "../../src/errors.ts";
import { MetricsSegment } from "../../src/metrics/registry.ts";

interface Access {
  op: "r" | "w";
  offset: number;
  bytes: number[];
}

/** A device that records accesses and answers reads with (offset + i) per byte. */
class Recorder implements BusDevice {
  readonly log: Access[] = [];
  constructor(readonly name: string) {}
  read(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) data[i] = (offset + i) & 0xff;
    this.log.push({ op: "r", offset, bytes: [...data] });
  }
  write(offset: number, data: Uint8Array): void {
    this.log.push({ op: "w", offset, bytes: [...data] });
  }
}

function metrics(): { sink: MetricsSegment; value(name: string): number } {
  const sink = new MetricsSegment(new ArrayBuffer(1024 * 8), 0);
  return { sink, value: (name) => sink.counter(name).value };
}

describe("Bus", () => {
  test("dispatches reads and writes with offsets relative to the range base", () => {
    const bus = new Bus("pio");
    const uart = new Recorder("uart");
    const other = new Recorder("other");
    bus.register(0x3f8, 8, uart);
    bus.register(0x500, 0x10, other);
    const d = new Uint8Array(1);
    assert.equal(bus.read(0x3fd, d), true);
    assert.equal(d[0], 5);
    assert.equal(bus.write(0x3f8, Uint8Array.of(0x41)), true);
    assert.equal(bus.write(0x50f, Uint8Array.of(1, 2)), true);
    assert.deepEqual(uart.log, [
      { op: "r", offset: 5, bytes: [5] },
      { op: "w", offset: 0, bytes: [0x41] },
    ]);
    assert.deepEqual(other.log, [{ op: "w", offset: 0xf, bytes: [1, 2] }]);
  });

  test("passes every access size through, little endian bytes untouched", () => {
    const bus = new Bus("mmio");
    const dev = new Recorder("dev");
    bus.register(0xfeb00000, 0x1000, dev);
    for (const size of [1, 2, 4, 8]) {
      const d = new Uint8Array(size);
      bus.read(0xfeb00010, d);
      assert.deepEqual(
        [...d],
        Array.from({ length: size }, (_, i) => 0x10 + i),
      );
    }
    bus.write(0xfeb00ff8, Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8));
    assert.deepEqual(dev.log.at(-1), { op: "w", offset: 0xff8, bytes: [1, 2, 3, 4, 5, 6, 7, 8] });
  });

  test("unclaimed reads float high, unclaimed writes are dropped, both are counted", () => {
    const m = metrics();
    const bus = new Bus("pio", m.sink);
    const dev = new Recorder("dev");
    bus.register(0x100, 4, dev);
    const d = new Uint8Array(4).fill(0x12);
    assert.equal(bus.read(0x104, d), false);
    assert.deepEqual([...d], [0xff, 0xff, 0xff, 0xff]);
    assert.equal(bus.read(0xff, new Uint8Array(2)), false);
    assert.equal(bus.write(0x80, Uint8Array.of(1)), false);
    assert.equal(dev.log.length, 0);
    assert.equal(m.value("pio.unclaimed.read"), 2);
    assert.equal(m.value("pio.unclaimed.write"), 1);
    assert.equal(m.value("mmio.unclaimed.read"), 0);
  });

  test("counts accesses per device under the bus kind", () => {
    const m = metrics();
    const bus = new Bus("mmio", m.sink);
    bus.register(0x1000, 0x100, new Recorder("virtio-net"));
    bus.register(0x2000, 0x100, new Recorder("virtio-blk"));
    bus.read(0x1000, new Uint8Array(4));
    bus.read(0x10ff, new Uint8Array(1));
    bus.write(0x1004, new Uint8Array(4));
    bus.write(0x2000, new Uint8Array(4));
    assert.equal(m.value("mmio.virtio-net.read"), 2);
    assert.equal(m.value("mmio.virtio-net.write"), 1);
    assert.equal(m.value("mmio.virtio-blk.read"), 0);
    assert.equal(m.value("mmio.virtio-blk.write"), 1);
    assert.equal(m.value("mmio.unclaimed.read"), 0);
  });

  test("an access straddling the end of a range goes to the device holding its first byte", () => {
    const bus = new Bus("pio");
    const a = new Recorder("a");
    const b = new Recorder("b");
    bus.register(0x10, 2, a);
    bus.register(0x12, 2, b);
    bus.write(0x11, Uint8Array.of(1, 2, 3, 4));
    assert.deepEqual(a.log, [{ op: "w", offset: 1, bytes: [1, 2, 3, 4] }]);
    assert.equal(b.log.length, 0);
  });

  test("range boundaries are exact", () => {
    const bus = new Bus("pio");
    const dev = new Recorder("dev");
    bus.register(0x20, 0x10, dev);
    const d = new Uint8Array(1);
    assert.equal(bus.read(0x1f, d), false);
    assert.equal(bus.read(0x20, d), true);
    assert.equal(bus.read(0x2f, d), true);
    assert.equal(bus.read(0x30, d), false);
    assert.equal(bus.read(-1, d), false);
    assert.equal(bus.read(Number.NaN, d), false);
  });

  test("finds the right device among many, registered in any order", () => {
    const bus = new Bus("mmio");
    const devs: Recorder[] = [];
    const order = [7, 2, 9, 0, 5, 3, 8, 1, 6, 4];
    for (const i of order) {
      const dev = new Recorder(`d${i}`);
      devs[i] = dev;
      bus.register(0x10000 + i * 0x1000, 0x800, dev);
    }
    for (let i = 0; i < 10; i++) {
      for (const off of [0, 0x7ff]) {
        assert.equal(bus.deviceAt(0x10000 + i * 0x1000 + off)?.name, `d${i}`);
      }
      assert.equal(bus.deviceAt(0x10000 + i * 0x1000 + 0x800), undefined, "the gap is unclaimed");
    }
    // Alternate between devices so the last-hit cache is both hit and missed.
    for (let k = 0; k < 40; k++) {
      const i = (k * 3) % 10;
      bus.write(0x10000 + i * 0x1000 + k, Uint8Array.of(k));
      assert.deepEqual(devs[i]?.log.at(-1), { op: "w", offset: k, bytes: [k] });
    }
  });

  test("overlapping registrations are refused, naming both devices and ranges", () => {
    const bus = new Bus("pio");
    bus.register(0x3f8, 8, new Recorder("com1"));
    bus.register(0x2f8, 8, new Recorder("com2"));
    const cases: Array<[number, number]> = [
      [0x3f8, 8],
      [0x3f0, 9],
      [0x3ff, 1],
      [0x3fa, 2],
      [0x300, 0x200],
    ];
    for (const [base, len] of cases) {
      assert.throws(
        () => bus.register(base, len, new Recorder("intruder")),
        (e: unknown) => {
          assert.ok(e instanceof BusOverlapError);
          assert.equal(e.code, "VIREO_BUS_OVERLAP");
          assert.match(e.message, /intruder/);
          assert.match(e.message, /com[12] at 0x[23]f8-0x[23]ff/);
          assert.match(e.message, new RegExp(`0x${base.toString(16)}-0x${(base + len - 1).toString(16)}`));
          return true;
        },
        `${base.toString(16)}+${len}`,
      );
    }
    // Adjacent ranges are fine.
    bus.register(0x3f0, 8, new Recorder("below"));
    bus.register(0x400, 8, new Recorder("above"));
    assert.equal(bus.deviceAt(0x3f7)?.name, "below");
    assert.equal(bus.deviceAt(0x3f8)?.name, "com1");
    assert.equal(bus.deviceAt(0x400)?.name, "above");
  });

  test("bad ranges are refused", () => {
    const pio = new Bus("pio");
    const mmio = new Bus("mmio");
    const dev = new Recorder("d");
    const isVireo = (e: unknown) => e instanceof VireoError && !(e instanceof BusOverlapError);
    assert.throws(() => pio.register(0x10, 0, dev), isVireo);
    assert.throws(() => pio.register(0x10, -4, dev), isVireo);
    assert.throws(() => pio.register(-1, 4, dev), isVireo);
    assert.throws(() => pio.register(0.5, 4, dev), isVireo);
    assert.throws(() => pio.register(0xfffe, 4, dev), isVireo);
    assert.throws(() => pio.register(0x10000, 1, dev), isVireo);
    pio.register(0xffff, 1, dev);
    assert.throws(() => mmio.register(2 ** 52, 1, dev), isVireo);
    assert.throws(() => mmio.register(2 ** 52 - 0x1000, 0x1001, dev), isVireo);
    mmio.register(2 ** 52 - 0x1000, 0x1000, dev);
    assert.equal(pio.describe(), "pio 0xffff-0xffff d");
  });

  test("unregister removes every range of a device and clears the lookup cache", () => {
    const bus = new Bus("pio");
    const a = new Recorder("a");
    const b = new Recorder("b");
    bus.register(0x10, 4, a);
    bus.register(0x20, 4, a);
    bus.register(0x30, 4, b);
    assert.equal(bus.read(0x10, new Uint8Array(1)), true); // now cached
    assert.equal(bus.unregister(a), true);
    assert.equal(bus.unregister(a), false);
    assert.equal(bus.read(0x10, new Uint8Array(1)), false);
    assert.equal(bus.read(0x20, new Uint8Array(1)), false);
    assert.equal(bus.read(0x30, new Uint8Array(1)), true);
    bus.register(0x10, 0x20, b); // the freed space can be reused
    assert.equal(bus.deviceAt(0x2f)?.name, "b");
  });

  test("describe lists ranges in address order", () => {
    const bus = new Bus("pio");
    assert.equal(bus.describe(), "pio bus: (empty)");
    bus.register(0x510, 0x10, new Recorder("test-pio"));
    bus.register(0x3f8, 8, new Recorder("com1"));
    bus.register(0x501, 1, new Recorder("debug-exit"));
    assert.equal(
      bus.describe(),
      ["pio 0x3f8-0x3ff com1", "pio 0x501-0x501 debug-exit", "pio 0x510-0x51f test-pio"].join("\n"),
    );
  });
});
