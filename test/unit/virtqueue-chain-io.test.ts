/**
 * The byte access helpers over a popped chain (ChainReader, ChainWriter, writeChain), at their bounds: what does not
 * fit is refused with a VirtqueueError that says how much room there was, and nothing is written then.
 * (Written against the survivors of mutation testing, docs/mutation-testing.md.)
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  ChainReader,
  ChainWriter,
  copyFromChain,
  copyToChain,
  createVirtqueue,
  type DescriptorChain,
  VirtqueueError,
  writeChain,
} from "../../src/devices/virtio/queue/index.ts";
import type { GuestMemory } from "../../src/memory/guest-memory.ts";
import { makeTestMemory, VirtioTestDriver } from "../helpers/virtio-driver.ts";

function popped(
  readable: Uint8Array[],
  writable: number[],
): { mem: GuestMemory; drv: VirtioTestDriver; c: DescriptorChain } {
  const mem = makeTestMemory();
  const drv = new VirtioTestDriver(mem, { kind: "split", size: 8 });
  const q = createVirtqueue("split", mem, drv.config, drv.features);
  drv.addChain(readable, writable, { fill: 0xee });
  const c = q.pop();
  assert.ok(c);
  return { mem, drv, c };
}

function writableBytes(mem: GuestMemory, c: DescriptorChain): number[] {
  return c.writable.flatMap((s) => [...mem.slice(s.addr, s.len)]);
}

test("ChainWriter.writeExact: exactly the room left fits; one byte more is refused and writes nothing", () => {
  const { mem, c } = popped([], [3, 2]);
  const w = new ChainWriter(mem, c);
  w.writeExact(Uint8Array.of(1, 2));
  assert.throws(
    () => w.writeExact(Uint8Array.of(3, 4, 5, 6)),
    (e: unknown) =>
      e instanceof VirtqueueError &&
      /device-writable part has 3 bytes left at offset 2, 4 are needed/.test(e.message),
  );
  assert.deepEqual(writableBytes(mem, c), [1, 2, 0xee, 0xee, 0xee], "nothing written by the refused call");
  w.writeExact(Uint8Array.of(7, 8, 9));
  assert.deepEqual(writableBytes(mem, c), [1, 2, 7, 8, 9]);
  assert.equal(w.remaining, 0);
});

test("copyFromChain: skip bytes over segment boundaries, copy to dst at an offset, at most len bytes", () => {
  const data = Array.from({ length: 12 }, (_, i) => 0x10 + i);
  // Readable segments of 3, 5 and 4 bytes: 0x10..0x12 | 0x13..0x17 | 0x18..0x1b.
  const { mem, c } = popped(
    [Uint8Array.from(data.slice(0, 3)), Uint8Array.from(data.slice(3, 8)), Uint8Array.from(data.slice(8))],
    [],
  );
  assert.equal(c.readable.length, 3);
  for (const [skip, len] of [
    [0, 12],
    [1, 4],
    [3, 5],
    [4, 6],
    [5, 3],
    [8, 4],
    [9, 2],
  ] as const) {
    const dst = new Uint8Array(16).fill(0xaa);
    assert.equal(copyFromChain(mem, c, skip, dst, 2, len), len, `skip ${skip}, len ${len}`);
    const want = [0xaa, 0xaa, ...data.slice(skip, skip + len)];
    while (want.length < 16) want.push(0xaa);
    assert.deepEqual([...dst], want, `skip ${skip}, len ${len}`);
  }
  // Fewer when the chain ends first; nothing past the chain's bytes is copied.
  const dst = new Uint8Array(16).fill(0xaa);
  assert.equal(copyFromChain(mem, c, 7, dst, 0, 10), 5);
  assert.deepEqual([...dst], [...data.slice(7), ...new Array(11).fill(0xaa)]);
  assert.equal(copyFromChain(mem, c, 12, dst, 0, 4), 0);
});

test("copyToChain: an offset past the first segments, src from an offset, fewer bytes when the chain ends", () => {
  const { mem, c } = popped([], [3, 5, 4]);
  const src = Uint8Array.from({ length: 16 }, (_, i) => 0x40 + i);
  // 6 bytes from src[1] at offset 4 (inside the second segment), across into the third.
  assert.equal(copyToChain(mem, c, 4, src, 1, 6), 6);
  const e = 0xee;
  assert.deepEqual(writableBytes(mem, c), [e, e, e, e, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, e, e]);
  // At offset 9 (inside the third segment) only 3 of 8 bytes fit.
  assert.equal(copyToChain(mem, c, 9, src, 8, 8), 3);
  assert.deepEqual(writableBytes(mem, c), [e, e, e, e, 0x41, 0x42, 0x43, 0x44, 0x45, 0x48, 0x49, 0x4a]);
  // At offset 3, exactly the second segment's start.
  assert.equal(copyToChain(mem, c, 3, src, 0, 1), 1);
  assert.deepEqual(writableBytes(mem, c).slice(0, 5), [e, e, e, 0x40, 0x41]);
  assert.equal(copyToChain(mem, c, 12, src, 0, 4), 0);
});

test("ChainReader.readExact: the refusal says how much was left and where", () => {
  const { mem, c } = popped([Uint8Array.of(1, 2, 3)], []);
  const r = new ChainReader(mem, c);
  assert.deepEqual(r.readExact(2), Uint8Array.of(1, 2));
  assert.throws(
    () => r.readExact(2),
    (e: unknown) =>
      e instanceof VirtqueueError &&
      /device-readable part has 1 bytes left at offset 2, 2 are needed/.test(e.message),
  );
  assert.deepEqual(r.readExact(1), Uint8Array.of(3), "nothing consumed by the refused call");
});

test("writeChain: an offset that is negative, fractional or past the end is refused, writing nothing", () => {
  const { mem, c } = popped([], [4]);
  for (const offset of [-1, 0.5, 3]) {
    assert.throws(
      () => writeChain(mem, c, Uint8Array.of(9, 9), offset),
      (e: unknown) =>
        e instanceof VirtqueueError &&
        e.message === `2 bytes at offset ${offset} do not fit the device-writable part (4 bytes)`,
      `offset ${offset}`,
    );
  }
  assert.deepEqual(writableBytes(mem, c), [0xee, 0xee, 0xee, 0xee]);
  assert.equal(writeChain(mem, c, Uint8Array.of(5, 6), 2), 2);
  assert.deepEqual(writableBytes(mem, c), [0xee, 0xee, 5, 6]);
});

test("guest RAM above 4 GiB: rings and buffers at 64-bit addresses round-trip (both layouts)", () => {
  for (const kind of ["split", "packed"] as const) {
    const mem = makeTestMemory({ base: 2 ** 32 + 0x10000 });
    const drv = new VirtioTestDriver(mem, { kind, size: 4 });
    const q = createVirtqueue(kind, mem, drv.config, drv.features);
    const id = drv.addChain([Uint8Array.of(1, 2, 3)], [4]);
    const c = q.pop();
    assert.ok(c, kind);
    assert.equal(c.id, id);
    assert.ok((c.readable[0]?.addr ?? 0) > 2 ** 32, "the address keeps its high word");
    assert.deepEqual(new ChainReader(mem, c).readExact(3), Uint8Array.of(1, 2, 3));
    writeChain(mem, c, Uint8Array.of(9, 8, 7, 6));
    q.pushUsed(c, 4);
    assert.deepEqual(drv.usedChains()[0]?.written, Uint8Array.of(9, 8, 7, 6), kind);
  }
});

test("queue areas at guest-physical 0 and ending exactly at the end of RAM are accepted", () => {
  const mem = makeTestMemory({ base: 0, size: 0x10000 });
  const size = 8;
  const atZero = { size, descAddr: 0, driverAddr: 0x1000, deviceAddr: 0x2000 };
  assert.doesNotThrow(() => createVirtqueue("split", mem, atZero, { eventIdx: false, indirect: false }));
  // The descriptor table (16 * size bytes) ends on the last byte of RAM.
  const atEnd = { size, descAddr: 0x10000 - 16 * size, driverAddr: 0x1000, deviceAddr: 0x2000 };
  assert.doesNotThrow(() => createVirtqueue("split", mem, atEnd, { eventIdx: false, indirect: false }));
  const past = { ...atEnd, descAddr: atEnd.descAddr + 16 };
  assert.throws(
    () => createVirtqueue("split", mem, past, { eventIdx: false, indirect: false }),
    VirtqueueError,
  );
});

test("misuse of the queue API is refused with a message naming the queue and the chain", () => {
  const mem = makeTestMemory();
  const drv = new VirtioTestDriver(mem, { kind: "split", size: 8 });
  const usage = (re: RegExp) => (e: unknown) =>
    e instanceof VirtqueueError && e.code === "VIREO_VIRTQUEUE_USAGE" && re.test(e.message);
  assert.throws(
    () => createVirtqueue("split", mem, drv.config, drv.features, { state: new Int32Array(7) }),
    usage(/^virtq unnamed: state has 7 words, 8 are needed$/),
  );
  const q = createVirtqueue("split", mem, drv.config, drv.features);
  drv.addChain([Uint8Array.of(1)], [2]);
  drv.addChain([Uint8Array.of(2)], [2]);
  const a = q.pop();
  const b = q.pop();
  assert.ok(a && b);
  assert.throws(() => q.unpop(a), usage(/^virtq unnamed: unpop: chain 0 is not the last chain popped/));
  assert.throws(
    () => q.pushUsed(a, 3),
    usage(/^virtq unnamed: pushUsed: chain 0 written=3, but its writable part is 2 bytes$/),
  );
  q.pushUsed(a, 2);
  assert.throws(
    () => q.pushUsed(a, 0),
    usage(/^virtq unnamed: pushUsed: chain 0 is not in flight on this queue/),
  );
  q.unpop(b);
  assert.equal(q.pop()?.id, b.id, "the last chain popped can be given back");
});
