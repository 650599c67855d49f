/**
 * A hostile driver: every way of breaking the rings must end in a VirtqueueError with code
 * VIREO_VIRTQUEUE_MALFORMED and a message naming the problem, never another exception, a hang or an access
 * outside guest RAM; and the queue stays usable (a further pop() sees the same place again).
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  createVirtqueue,
  type QueueConfig,
  type QueueFeatures,
  type QueueKind,
  VIRTQ_DESC_F_AVAIL,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_USED,
  VIRTQ_DESC_F_WRITE,
  type Virtqueue,
  VirtqueueError,
} from "../../src/devices/virtio/queue/index.ts";
import type { GuestMemory } from "../../src/memory/guest-memory.ts";
import { MetricsSegment, SLOTS_PER_SEGMENT } from "../../src/metrics/registry.ts";
import { makeTestMemory, VirtioTestDriver } from "../helpers/virtio-driver.ts";

const NEXT = VIRTQ_DESC_F_NEXT;
const WRITE = VIRTQ_DESC_F_WRITE;
const INDIRECT = VIRTQ_DESC_F_INDIRECT;

function isMalformed(pattern: RegExp) {
  return (e: unknown): boolean => {
    assert.ok(e instanceof VirtqueueError, `expected a VirtqueueError, got ${String(e)}`);
    assert.equal(e.code, "VIREO_VIRTQUEUE_MALFORMED");
    assert.match(e.message, pattern);
    return true;
  };
}

function setup(
  kind: QueueKind,
  opts: { size?: number; features?: Partial<QueueFeatures>; mem?: GuestMemory } = {},
) {
  const mem = opts.mem ?? makeTestMemory();
  const drv = new VirtioTestDriver(mem, { kind, size: opts.size ?? 8, features: opts.features });
  const metrics = new MetricsSegment(new ArrayBuffer(SLOTS_PER_SEGMENT * 8), 0);
  const q = createVirtqueue(kind, mem, drv.config, drv.features, { metrics, name: "bad" });
  return { mem, drv, q, metrics };
}

/**
 * pop() fails with `pattern`; a second pop() fails the same way (the queue state did not move), nothing went in
 * flight, and the failures were counted.
 */
function expectPopFails(q: Virtqueue, metrics: MetricsSegment, pattern: RegExp): string {
  const inFlight = q.inFlight;
  const errors = metrics.counter("virtq.bad.errors").value;
  let first = "";
  assert.throws(
    () => q.pop(),
    (e: unknown) => {
      isMalformed(pattern)(e);
      first = (e as Error).message;
      return true;
    },
  );
  assert.match(first, /^virtq bad: /, "the message names the queue");
  assert.throws(
    () => q.pop(),
    (e: unknown) => e instanceof VirtqueueError && e.message === first,
  );
  assert.equal(q.inFlight, inFlight);
  assert.equal(metrics.counter("virtq.bad.errors").value, errors + 2);
  return first;
}

describe("queue configuration checks", () => {
  const mem = makeTestMemory();
  const ok = (size: number): QueueConfig => ({
    size,
    descAddr: mem.base,
    driverAddr: mem.base + 16 * size,
    deviceAddr: mem.base + 16 * size + 8 + 2 * size,
  });
  const features: QueueFeatures = { eventIdx: false, indirect: false };

  for (const kind of ["split", "packed"] as const) {
    test(`${kind}: queue size 0, above 32768 or not an integer`, () => {
      for (const size of [0, 32769, 1.5, Number.NaN, -8]) {
        assert.throws(() => createVirtqueue(kind, mem, ok(size), features), isMalformed(/queue size/));
      }
    });

    test(`${kind}: the largest queue size is accepted`, () => {
      const q = createVirtqueue(
        kind,
        mem,
        { ...ok(32768), deviceAddr: mem.base + 16 * 32768 + 0x10000 + 8 },
        features,
      );
      assert.equal(q.size, 32768);
      assert.equal(q.pop(), null);
    });

    test(`${kind}: misaligned areas`, () => {
      assert.throws(
        () => createVirtqueue(kind, mem, { ...ok(8), descAddr: mem.base + 8 }, features),
        isMalformed(/descriptor (table|ring) at 0x10008 is not 16-byte aligned/),
      );
      const driverAlign = kind === "split" ? 2 : 4;
      assert.throws(
        () =>
          createVirtqueue(kind, mem, { ...ok(8), driverAddr: ok(8).driverAddr + driverAlign / 2 }, features),
        isMalformed(new RegExp(`not ${driverAlign}-byte aligned`)),
      );
      assert.throws(
        () => createVirtqueue(kind, mem, { ...ok(8), deviceAddr: ok(8).deviceAddr + 2 }, features),
        isMalformed(/not 4-byte aligned/),
      );
    });

    test(`${kind}: areas outside guest RAM or not addresses`, () => {
      const cases: Array<Partial<QueueConfig>> = [
        { descAddr: 0 },
        { descAddr: mem.end - 16 * 8 + 16 },
        { driverAddr: mem.end },
        { deviceAddr: mem.end },
        { deviceAddr: -16 },
        { descAddr: 2 ** 60 },
        { driverAddr: Number.NaN },
      ];
      for (const c of cases) {
        assert.throws(
          () => createVirtqueue(kind, mem, { ...ok(8), ...c }, features),
          isMalformed(/outside guest RAM|not a guest-physical address/),
          JSON.stringify(c),
        );
      }
    });
  }

  test("packed: the areas' names and the queue's name (or 'unnamed') in the messages", () => {
    const mem = makeTestMemory();
    const size = 8;
    const good = { size, descAddr: mem.base, driverAddr: mem.base + 0x100, deviceAddr: mem.base + 0x104 };
    const f: QueueFeatures = { eventIdx: false, indirect: false };
    assert.throws(
      () => createVirtqueue("packed", mem, { ...good, driverAddr: good.driverAddr + 2 }, f, { name: "pq" }),
      /: virtq pq: driver event suppression area at 0x10102 is not 4-byte aligned$/,
    );
    assert.throws(
      () => createVirtqueue("packed", mem, { ...good, deviceAddr: good.deviceAddr + 1 }, f),
      /: virtq unnamed: device event suppression area at 0x10105 is not 4-byte aligned$/,
    );
  });

  test("split: each area must lie in guest RAM over its whole size (2.7: 16N, 6 + 2N, 6 + 8N bytes)", () => {
    const mem = makeTestMemory();
    const size = 8;
    const f: QueueFeatures = { eventIdx: false, indirect: false };
    // Each area placed to end at the end of RAM (the used ring, 4-aligned, 2 bytes before) is accepted; 2 (or
    // 16) bytes later it is not.
    const avail = 6 + 2 * size;
    const used = 6 + 8 * size;
    const fit = { size, descAddr: mem.base, driverAddr: mem.end - avail, deviceAddr: mem.base + 0x100 };
    createVirtqueue("split", mem, fit, f);
    createVirtqueue("split", mem, { ...fit, driverAddr: mem.base + 0x80, deviceAddr: mem.end - used - 2 }, f);
    createVirtqueue("split", mem, { ...fit, descAddr: mem.end - 16 * size }, f);
    assert.throws(
      () => createVirtqueue("split", mem, { ...fit, driverAddr: mem.end - avail + 2 }, f, { name: "sq" }),
      isMalformed(/^virtq sq: available ring 0x10ffec\+22 is outside guest RAM \(0x10000-0x110000\)$/),
    );
    assert.throws(
      () =>
        createVirtqueue(
          "split",
          mem,
          { ...fit, driverAddr: mem.base + 0x80, deviceAddr: mem.end - used + 2 },
          f,
        ),
      isMalformed(/^virtq unnamed: used ring 0x10ffbc\+70 is outside guest RAM \(0x10000-0x110000\)$/),
    );
    assert.throws(
      () => createVirtqueue("split", mem, { ...fit, descAddr: mem.end - 16 * size + 16 }, f),
      isMalformed(/^virtq unnamed: descriptor table 0x10ff90\+128 is outside guest RAM/),
    );
  });

  test("split: queue size must be a power of 2; packed need not be", () => {
    assert.throws(() => createVirtqueue("split", mem, ok(6), features), isMalformed(/not a power of 2/));
    const { drv, q } = setup("packed", { size: 6 });
    for (let i = 0; i < 20; i++) {
      const id = drv.addChain([Uint8Array.of(i, i)], [1 + (i % 3)]);
      const c = q.pop();
      assert.equal(c?.id, id);
      if (c) q.pushUsed(c, 1);
      assert.equal(drv.usedChains()[0]?.id, id);
    }
  });

  test("an unknown layout is refused", () => {
    assert.throws(
      () => createVirtqueue("ring" as QueueKind, mem, ok(8), features),
      (e: unknown) => e instanceof VirtqueueError && e.code === "VIREO_VIRTQUEUE_USAGE",
    );
  });
});

describe("split ring: malformed available ring and descriptor chains", () => {
  test("avail idx more than the queue size ahead", () => {
    const { drv, q, metrics } = setup("split");
    drv.setAvailIdx(9);
    expectPopFails(
      q,
      metrics,
      /available idx 9 is 9 entries ahead of the last one seen \(0\), more than the queue size 8/,
    );
  });

  test("head index not below the queue size", () => {
    const { drv, q, metrics } = setup("split");
    drv.pushAvail(8);
    expectPopFails(q, metrics, /available ring entry 0 holds head 8/);
  });

  test("next index not below the queue size", () => {
    const { drv, q, metrics } = setup("split");
    const buf = drv.alloc(16);
    drv.writeDesc(0, { addr: buf, len: 16, flags: NEXT, next: 8 });
    drv.pushAvail(0);
    expectPopFails(q, metrics, /descriptor 0 \(chain head 0\) has next 8, not below the queue size 8/);
  });

  test("descriptor loops are detected, and the queue recovers once the guest fixes the chain", () => {
    const { drv, q, metrics } = setup("split");
    const buf = drv.alloc(16);
    drv.writeDesc(0, { addr: buf, len: 4, flags: NEXT, next: 1 });
    drv.writeDesc(1, { addr: buf, len: 4, flags: NEXT, next: 0 });
    drv.pushAvail(0);
    expectPopFails(q, metrics, /chain from head 0 visits more than 8 descriptors: a loop/);
    drv.writeDesc(1, { addr: buf, len: 4, flags: 0 });
    const c = q.pop();
    assert.equal(c?.descriptorCount, 2);
    assert.equal(q.pop(), null);
  });

  test("a self-loop", () => {
    const { drv, q, metrics } = setup("split");
    drv.writeDesc(3, { addr: drv.alloc(4), len: 4, flags: NEXT, next: 3 });
    drv.pushAvail(3);
    expectPopFails(q, metrics, /loop/);
  });

  test("a device-readable descriptor after a device-writable one (2.7.4.2)", () => {
    const { drv, q, metrics } = setup("split");
    const buf = drv.alloc(16);
    drv.writeDesc(0, { addr: buf, len: 4, flags: WRITE | NEXT, next: 1 });
    drv.writeDesc(1, { addr: buf, len: 4, flags: 0 });
    drv.pushAvail(0);
    expectPopFails(
      q,
      metrics,
      /device-readable descriptor follows a device-writable one \(descriptor 1, chain head 0\)/,
    );
  });

  test("buffers outside guest RAM, above 2^53, or whose length overflows RAM", () => {
    const cases: Array<{ addr: number | bigint; len: number; re: RegExp }> = [
      { addr: 0, len: 1, re: /buffer 0x0\+1 is outside guest RAM \(0x10000-0x110000\)/ },
      { addr: 0x110000 - 4, len: 8, re: /outside guest RAM/ },
      { addr: 0x110000, len: 1, re: /outside guest RAM/ },
      { addr: 0x10000, len: 0xffffffff, re: /outside guest RAM/ },
      { addr: 2 ** 53 - 1, len: 2, re: /outside guest RAM/ },
      { addr: 0xffffffffffffffffn, len: 1, re: /above 2\^53-1/ },
      { addr: 0x20000000000000n, len: 1, re: /above 2\^53-1/ },
      // Zero-length: no range to check, but an address above 2^53 is refused as in any chain (the chain of one
      // descriptor, filled without the builder, makes the builder's check).
      { addr: 0xffffffffffffffffn, len: 0, re: /above 2\^53-1 \(descriptor 0, chain head 0\)/ },
    ];
    for (const c of cases) {
      const { drv, q, metrics } = setup("split");
      drv.writeDesc(0, { addr: c.addr, len: c.len, flags: 0 });
      drv.pushAvail(0);
      expectPopFails(q, metrics, c.re);
    }
  });

  test("zero-length buffers need no valid address; a buffer ending exactly at the end of RAM is fine", () => {
    const { mem, drv, q } = setup("split");
    drv.writeDesc(0, { addr: 0xffffffffffffn, len: 0, flags: NEXT, next: 1 });
    drv.writeDesc(1, { addr: mem.end - 8, len: 8, flags: WRITE });
    drv.pushAvail(0);
    const c = q.pop();
    assert.deepEqual(c?.writable, [{ addr: mem.end - 8, len: 8 }]);
    assert.deepEqual(c?.readable, []);
  });

  test("a head made available again while in flight", () => {
    const { drv, q, metrics } = setup("split");
    const head = drv.addChain([Uint8Array.of(1)], []);
    assert.ok(q.pop());
    drv.pushAvail(head);
    expectPopFails(q, metrics, /head 0 \(available ring entry 1\) is made available again while in flight/);
  });

  test("VIRTQ_DESC_F_INDIRECT without VIRTIO_F_INDIRECT_DESC", () => {
    const { drv, q, metrics } = setup("split", { features: { indirect: false } });
    drv.addChain([Uint8Array.of(1)], [1], { indirect: true });
    expectPopFails(q, metrics, /VIRTQ_DESC_F_INDIRECT but VIRTIO_F_INDIRECT_DESC is not negotiated/);
  });

  describe("indirect tables", () => {
    const features = { indirect: true };

    test("length zero or not a multiple of 16", () => {
      for (const len of [0, 24, 8]) {
        const { drv, q, metrics } = setup("split", { features });
        const table = drv.writeTable([
          { addr: drv.alloc(4), len: 4, flags: 0 },
          { addr: 0, len: 0, flags: 0 },
        ]);
        drv.writeDesc(0, { addr: table, len, flags: INDIRECT });
        drv.pushAvail(0);
        expectPopFails(q, metrics, new RegExp(`has length ${len}, not a non-zero multiple of 16`));
      }
    });

    test("table outside guest RAM or above 2^53", () => {
      for (const [addr, re] of [
        [0x110000 - 16, /indirect table 0x10fff0 \(descriptor 0, chain head 0\)\+32 is outside guest RAM/],
        [
          0xfffffffffffff000n,
          /indirect table above 2\^53 \(descriptor 0, chain head 0\)\+32 is outside guest RAM/,
        ],
      ] as const) {
        const { drv, q, metrics } = setup("split", { features });
        drv.writeDesc(0, { addr, len: 32, flags: INDIRECT });
        drv.pushAvail(0);
        expectPopFails(q, metrics, re);
      }
    });

    test("a table at guest-physical 0, the first byte of RAM, is valid", () => {
      const mem = makeTestMemory({ base: 0, size: 0x10000 });
      const drv = new VirtioTestDriver(mem, { kind: "split", size: 8, features, base: 0x1000 });
      const q = createVirtqueue("split", mem, drv.config, drv.features);
      const buf = drv.alloc(8);
      // Two entries at address 0: a readable 4 bytes, then a writable 8 bytes.
      mem.writeU64(0, BigInt(buf));
      mem.writeU32(8, 4);
      mem.writeU16(12, NEXT);
      mem.writeU16(14, 1);
      mem.writeU64(16, BigInt(buf));
      mem.writeU32(24, 8);
      mem.writeU16(28, WRITE);
      drv.writeDesc(3, { addr: 0, len: 32, flags: INDIRECT });
      drv.pushAvail(3);
      const c = q.pop();
      assert.equal(c?.id, 3);
      assert.deepEqual(c?.readable, [{ addr: buf, len: 4 }]);
      assert.deepEqual(c?.writable, [{ addr: buf, len: 8 }]);
      // A bad table there is named by its address, 0x0.
      drv.writeDesc(4, { addr: 0, len: 20, flags: INDIRECT });
      drv.pushAvail(4);
      assert.throws(
        () => q.pop(),
        isMalformed(/indirect table 0x0 \(descriptor 4, chain head 4\) has length 20/),
      );
    });

    test("VIRTQ_DESC_F_INDIRECT together with VIRTQ_DESC_F_NEXT (2.7.5.3.1)", () => {
      const { drv, q, metrics } = setup("split", { features });
      const table = drv.writeTable([{ addr: drv.alloc(4), len: 4, flags: 0 }]);
      drv.writeDesc(0, { addr: table, len: 16, flags: INDIRECT | NEXT, next: 1 });
      drv.writeDesc(1, { addr: drv.alloc(4), len: 4, flags: 0 });
      drv.pushAvail(0);
      expectPopFails(q, metrics, /sets both VIRTQ_DESC_F_INDIRECT and VIRTQ_DESC_F_NEXT/);
    });

    test("nested indirect", () => {
      const { drv, q, metrics } = setup("split", { features });
      const inner = drv.writeTable([{ addr: drv.alloc(4), len: 4, flags: 0 }]);
      const outer = drv.writeTable([{ addr: inner, len: 16, flags: INDIRECT }]);
      drv.writeDesc(0, { addr: outer, len: 16, flags: INDIRECT });
      drv.pushAvail(0);
      expectPopFails(q, metrics, /entry 0 sets VIRTQ_DESC_F_INDIRECT/);
    });

    test("loops and out-of-table next inside the table", () => {
      const { drv, q, metrics } = setup("split", { features });
      const buf = drv.alloc(4);
      const looping = drv.writeTable([
        { addr: buf, len: 4, flags: NEXT, next: 1 },
        { addr: buf, len: 4, flags: NEXT, next: 0 },
      ]);
      drv.writeDesc(0, { addr: looping, len: 32, flags: INDIRECT });
      drv.pushAvail(0);
      expectPopFails(q, metrics, /chain visits more than its 2 entries: a loop/);

      const other = setup("split", { features });
      const escaping = other.drv.writeTable([
        { addr: buf, len: 4, flags: NEXT, next: 2 },
        { addr: 0, len: 0, flags: 0 },
      ]);
      other.drv.writeDesc(0, { addr: escaping, len: 32, flags: INDIRECT });
      other.drv.pushAvail(0);
      expectPopFails(other.q, other.metrics, /entry 0 has next 2, outside the table's 2 entries/);
    });

    test("readable after writable inside a table and across the direct/indirect boundary", () => {
      const { drv, q, metrics } = setup("split", { features });
      const buf = drv.alloc(4);
      const t = drv.writeTable([
        { addr: buf, len: 4, flags: WRITE | NEXT, next: 1 },
        { addr: buf, len: 4, flags: 0 },
      ]);
      drv.writeDesc(0, { addr: t, len: 32, flags: INDIRECT });
      drv.pushAvail(0);
      expectPopFails(
        q,
        metrics,
        /device-readable descriptor follows a device-writable one \(entry 1 of indirect table/,
      );

      const o = setup("split", { features });
      const t2 = o.drv.writeTable([{ addr: buf, len: 4, flags: 0 }]);
      o.drv.writeDesc(0, { addr: buf, len: 4, flags: WRITE | NEXT, next: 1 });
      o.drv.writeDesc(1, { addr: t2, len: 16, flags: INDIRECT });
      o.drv.pushAvail(0);
      expectPopFails(o.q, o.metrics, /device-readable descriptor follows a device-writable one/);
    });

    test("direct descriptors followed by one indirect descriptor are valid (2.7.5.3.2)", () => {
      const { mem, drv, q } = setup("split", { features });
      const a = drv.alloc(4);
      const b = drv.alloc(4);
      const w = drv.alloc(8);
      mem.write(a, Uint8Array.of(1, 2, 3, 4));
      mem.write(b, Uint8Array.of(5, 6, 7, 8));
      // The WRITE flag on the descriptor pointing at the table is ignored.
      const t = drv.writeTable([
        { addr: b, len: 4, flags: NEXT, next: 1 },
        { addr: w, len: 8, flags: WRITE },
      ]);
      drv.writeDesc(5, { addr: a, len: 4, flags: NEXT, next: 2 });
      drv.writeDesc(2, { addr: t, len: 32, flags: INDIRECT | WRITE });
      drv.pushAvail(5);
      const c = q.pop();
      assert.ok(c);
      assert.equal(c.id, 5);
      assert.equal(c.descriptorCount, 2);
      assert.deepEqual(c.readable, [
        { addr: a, len: 4 },
        { addr: b, len: 4 },
      ]);
      assert.deepEqual(c.writable, [{ addr: w, len: 8 }]);
    });

    test("a chain longer than the queue size, counting indirect entries", () => {
      const { drv, q, metrics } = setup("split", { size: 4, features });
      const buf = drv.alloc(4);
      const t = drv.writeTable([
        { addr: buf, len: 4, flags: NEXT, next: 1 },
        { addr: buf, len: 4, flags: 0 },
      ]);
      drv.writeDesc(0, { addr: buf, len: 4, flags: NEXT, next: 1 });
      drv.writeDesc(1, { addr: buf, len: 4, flags: NEXT, next: 2 });
      drv.writeDesc(2, { addr: buf, len: 4, flags: NEXT, next: 3 });
      drv.writeDesc(3, { addr: t, len: 32, flags: INDIRECT });
      drv.pushAvail(0);
      expectPopFails(q, metrics, /chain has more than 4 descriptors \(queue size\)/);
    });
  });

  test("a chain longer than 2^32 bytes in total (2.7.5.2)", () => {
    const mem = makeTestMemory({ size: 2 << 20 });
    const { drv, q, metrics } = setup("split", { size: 4096, features: { indirect: true }, mem });
    // 2049 entries each covering all 2 MiB of RAM: 2049 * 2^21 > 2^32.
    const entries = Array.from({ length: 2049 }, (_, i) => ({
      addr: mem.base,
      len: mem.size,
      flags: i < 2048 ? NEXT : 0,
      next: i + 1,
    }));
    const t = drv.writeTable(entries);
    drv.writeDesc(0, { addr: t, len: 16 * entries.length, flags: INDIRECT });
    drv.pushAvail(0);
    expectPopFails(q, metrics, /chain is longer than 2\^32 bytes \(entry 2048 of indirect table/);
  });

  test("the 2^32-byte limit counts the readable and the writable part together", () => {
    const mem = makeTestMemory({ size: 2 << 20 });
    const { drv, q, metrics } = setup("split", { size: 4096, features: { indirect: true }, mem });
    // 1025 readable then 1024 writable entries of 2 MiB: 2^32 bytes after 2048 of them, more with the last.
    const entries = Array.from({ length: 2049 }, (_, i) => ({
      addr: mem.base,
      len: mem.size,
      flags: (i < 2048 ? NEXT : 0) | (i >= 1025 ? WRITE : 0),
      next: i + 1,
    }));
    const t = drv.writeTable(entries);
    drv.writeDesc(0, { addr: t, len: 16 * entries.length, flags: INDIRECT });
    drv.pushAvail(0);
    expectPopFails(q, metrics, /chain is longer than 2\^32 bytes \(entry 2048 of indirect table/);
  });
});

describe("packed ring: malformed descriptors", () => {
  test("AVAIL and USED both equal to the wrap counter at the next slot", () => {
    const { drv, q, metrics } = setup("packed");
    drv.writeDesc(0, { addr: drv.alloc(4), len: 4, id: 0, flags: VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED });
    expectPopFails(
      q,
      metrics,
      /ring slot 0 has AVAIL and USED both 1 \(flags 0x8080\): a used descriptor where the next available one is expected$/,
    );
  });

  test("a zeroed or previous-lap descriptor is simply not available", () => {
    const { drv, q } = setup("packed");
    assert.equal(q.pop(), null);
    drv.writeDesc(0, { addr: drv.alloc(4), len: 4, id: 0, flags: VIRTQ_DESC_F_USED }); // wrap-0 available
    assert.equal(q.pop(), null);
  });

  test("a later descriptor of the list is not available", () => {
    const { drv, q, metrics } = setup("packed");
    const buf = drv.alloc(4);
    drv.makeAvailableRaw([
      { addr: buf, len: 4, flags: NEXT },
      { addr: buf, len: 4, flags: 0, id: 0, rawFlags: true },
    ]);
    expectPopFails(
      q,
      metrics,
      /ring slot 1 \(descriptor 1 of the list at slot 0\) is not available for wrap counter 1/,
    );
  });

  test("descriptors of one list made available with different wrap counters", () => {
    const size = 4;
    const { drv, q, metrics } = setup("packed", { size });
    // Move the driver to slot 3 so the list crosses the end of the ring.
    for (let i = 0; i < 3; i++) {
      drv.addChain([Uint8Array.of(i)], []);
      const c = q.pop();
      assert.ok(c);
      q.pushUsed(c, 0);
      drv.usedChains();
    }
    const buf = drv.alloc(4);
    // Correct: slot 3 with wrap 1, slot 0 with wrap 0.
    drv.makeAvailableRaw([
      { addr: buf, len: 4, flags: NEXT },
      { addr: buf, len: 4, flags: 0, id: 1 },
    ]);
    const ok = q.pop();
    assert.equal(ok?.descriptorCount, 2);
    assert.equal(ok?.id, 1);
    if (ok) q.pushUsed(ok, 0);
    // Wrong: the second descriptor claims the wrap counter of the previous lap.
    drv.makeAvailableRaw([
      { addr: buf, len: 4, flags: NEXT },
      { addr: buf, len: 4, flags: VIRTQ_DESC_F_AVAIL, id: 2, rawFlags: true },
    ]);
    expectPopFails(
      q,
      metrics,
      /ring slot 2 \(descriptor 1 of the list at slot 1\) is not available for wrap counter 0/,
    );
  });

  test("buffer id not below the queue size, read from the last descriptor", () => {
    const { drv, q, metrics } = setup("packed");
    const buf = drv.alloc(4);
    drv.makeAvailableRaw([
      { addr: buf, len: 4, flags: NEXT, id: 1 },
      { addr: buf, len: 4, flags: 0, id: 8 },
    ]);
    expectPopFails(q, metrics, /list at slot 0 has buffer id 8, not below the queue size 8/);
  });

  test("a list longer than the queue size", () => {
    const { drv, q, metrics } = setup("packed", { size: 4 });
    const buf = drv.alloc(4);
    drv.makeAvailableRaw(Array.from({ length: 4 }, () => ({ addr: buf, len: 4, flags: NEXT })));
    expectPopFails(q, metrics, /list at slot 0 is longer than the queue size 4/);
  });

  test("a buffer id made available again while in flight", () => {
    const { drv, q, metrics } = setup("packed");
    const buf = drv.alloc(4);
    drv.makeAvailableRaw([{ addr: buf, len: 4, flags: 0, id: 3 }]);
    assert.equal(q.pop()?.id, 3);
    drv.makeAvailableRaw([{ addr: buf, len: 4, flags: 0, id: 3 }]);
    expectPopFails(q, metrics, /buffer id 3 \(list at slot 1\) is made available again while in flight/);
  });

  test("ring slots reused before the device used them", () => {
    const { drv, q, metrics } = setup("packed", { size: 4 });
    const buf = drv.alloc(4);
    drv.makeAvailableRaw([
      { addr: buf, len: 4, flags: NEXT },
      { addr: buf, len: 4, flags: 0, id: 0 },
    ]);
    drv.makeAvailableRaw([
      { addr: buf, len: 4, flags: NEXT },
      { addr: buf, len: 4, flags: 0, id: 1 },
    ]);
    assert.ok(q.pop());
    assert.ok(q.pop());
    // The driver laps the ring over both lists still in flight.
    drv.makeAvailableRaw([{ addr: buf, len: 4, flags: 0, id: 2 }]);
    expectPopFails(
      q,
      metrics,
      /reuses ring slots of buffers still in flight \(4 slots outstanding, 1 more, queue size 4\)$/,
    );
  });

  test("buffer checks shared with split rings", () => {
    for (const [descs, re] of [
      [
        [
          { addr: 0x20000, len: 4, flags: WRITE | NEXT },
          { addr: 0x20000, len: 4, flags: 0 },
        ],
        /device-readable descriptor follows a device-writable one \(ring slot 1, list at slot 0\)/,
      ],
      [[{ addr: 0x110000 - 2, len: 4, flags: 0 }], /buffer 0x10fffe\+4 is outside guest RAM/],
      [[{ addr: 0xffffffffffffffffn, len: 4, flags: 0 }], /above 2\^53-1/],
    ] as const) {
      const { drv, q, metrics } = setup("packed");
      drv.makeAvailableRaw(descs.map((d) => ({ ...d })));
      expectPopFails(q, metrics, re);
    }
  });

  describe("indirect", () => {
    const features = { indirect: true };

    test("VIRTQ_DESC_F_INDIRECT without VIRTIO_F_INDIRECT_DESC", () => {
      const { drv, q, metrics } = setup("packed");
      drv.addChain([Uint8Array.of(1)], [], { indirect: true });
      expectPopFails(
        q,
        metrics,
        /ring slot 0 sets VIRTQ_DESC_F_INDIRECT but VIRTIO_F_INDIRECT_DESC is not negotiated/,
      );
    });

    test("indirect inside a NEXT-linked list, or with NEXT (2.8.19)", () => {
      for (const descs of [
        (t: number, b: number) => [
          { addr: b, len: 4, flags: NEXT },
          { addr: t, len: 16, flags: INDIRECT },
        ],
        (t: number, b: number) => [
          { addr: t, len: 16, flags: INDIRECT | NEXT },
          { addr: b, len: 4, flags: 0 },
        ],
      ]) {
        const { drv, q, metrics } = setup("packed", { features });
        const b = drv.alloc(4);
        const t = drv.writeTable([{ addr: b, len: 4, flags: 0 }]);
        drv.makeAvailableRaw(descs(t, b));
        expectPopFails(q, metrics, /sets VIRTQ_DESC_F_INDIRECT inside a list linked by VIRTQ_DESC_F_NEXT/);
      }
    });

    test("table length, placement and entry count", () => {
      for (const [len, addr, re] of [
        [0, 0x20000, /has length 0, not a non-zero multiple of 16/],
        [20, 0x20000, /has length 20, not a non-zero multiple of 16/],
        [32, 0x110000 - 16, /indirect table 0x10fff0 \(ring slot 0\)\+32 is outside guest RAM/],
        [16 * 9, 0x20000, /has 9 entries, more than the queue size 8/],
      ] as const) {
        const { drv, q, metrics } = setup("packed", { features });
        drv.makeAvailableRaw([{ addr, len, flags: INDIRECT }]);
        expectPopFails(q, metrics, re);
      }
    });

    test("entries: only WRITE counts; reserved flags (even INDIRECT) are ignored, as 2.8.7 says", () => {
      const { drv, q, metrics } = setup("packed", { features });
      const a = drv.alloc(4);
      const w = drv.alloc(8);
      const t = drv.writeTable([
        { addr: a, len: 4, flags: NEXT | INDIRECT, id: 0xffff },
        { addr: w, len: 8, flags: WRITE | VIRTQ_DESC_F_AVAIL },
      ]);
      drv.makeAvailableRaw([{ addr: t, len: 32, flags: INDIRECT | WRITE, id: 5 }]);
      const c = q.pop();
      assert.ok(c);
      assert.equal(c.id, 5);
      assert.equal(c.descriptorCount, 1);
      assert.deepEqual(c.readable, [{ addr: a, len: 4 }]);
      assert.deepEqual(c.writable, [{ addr: w, len: 8 }]);

      const t2 = drv.writeTable([
        { addr: w, len: 8, flags: WRITE },
        { addr: a, len: 4, flags: 0 },
      ]);
      drv.makeAvailableRaw([{ addr: t2, len: 32, flags: INDIRECT, id: 6 }]);
      expectPopFails(
        q,
        metrics,
        /device-readable descriptor follows a device-writable one \(entry 1 of indirect table/,
      );
    });

    test("a table at guest-physical 0 is valid; one above 2^53 is refused; Queue Size entries are allowed", () => {
      const mem = makeTestMemory({ base: 0, size: 0x10000 });
      const drv = new VirtioTestDriver(mem, { kind: "packed", size: 8, features, base: 0x1000 });
      const metrics = new MetricsSegment(new ArrayBuffer(SLOTS_PER_SEGMENT * 8), 0);
      const q = createVirtqueue("packed", mem, drv.config, drv.features, { metrics, name: "bad" });
      const buf = drv.alloc(4);
      // A table of exactly Queue Size (8) entries, at address 0 (2.8.5: at most Queue Size descriptors).
      for (let j = 0; j < 8; j++) {
        mem.writeU64(16 * j, BigInt(buf));
        mem.writeU32(16 * j + 8, 4);
        mem.writeU16(16 * j + 14, 0);
      }
      drv.makeAvailableRaw([{ addr: 0, len: 16 * 8, flags: INDIRECT, id: 1 }]);
      const c = q.pop();
      assert.equal(c?.id, 1);
      assert.equal(c?.readable.length, 8);
      assert.deepEqual(c?.readable[0], { addr: buf, len: 4 });
      if (c) q.pushUsed(c, 0);
      drv.makeAvailableRaw([{ addr: 0, len: 20, flags: INDIRECT, id: 2 }]);
      expectPopFails(q, metrics, /indirect table 0x0 \(ring slot 1\) has length 20/);

      const { drv: d2, q: q2, metrics: m2 } = setup("packed", { features });
      d2.makeAvailableRaw([{ addr: 0xfffffffffffff000n, len: 32, flags: INDIRECT }]);
      expectPopFails(q2, m2, /indirect table above 2\^53 \(ring slot 0\)\+32 is outside guest RAM/);
    });

    test("a list longer than 2^32 bytes in total", () => {
      const mem = makeTestMemory({ size: 2 << 20 });
      const { drv, q, metrics } = setup("packed", { size: 4096, features, mem });
      const t = drv.writeTable(
        Array.from({ length: 2049 }, () => ({ addr: mem.base, len: mem.size, flags: 0 })),
      );
      drv.makeAvailableRaw([{ addr: t, len: 16 * 2049, flags: INDIRECT }]);
      expectPopFails(q, metrics, /chain is longer than 2\^32 bytes \(entry 2048 of indirect table/);
    });
  });
});
