/**
 * Virtqueue.popBatch against pop(): the same chains in the same order, with single-descriptor, multi-descriptor and
 * indirect chains mixed; a malformed chain ends a batch without an error and the next call throws for it with the
 * queue still in front of it; a head made available twice within one batch is refused; a batch given back last
 * first pops again; and the record of what unpop may give back stays right over many batches popped and used in
 * order, with and without a chain left outstanding (the window that keeps it linear moves and wraps).
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  createVirtqueue,
  type DescriptorChain,
  type QueueKind,
  VirtqueueError,
} from "../../src/devices/virtio/queue/index.ts";
import { VIRTQ_DESC_F_WRITE as WRITE } from "../../src/devices/virtio/queue/types.ts";
import { makeTestMemory, VirtioTestDriver } from "../helpers/virtio-driver.ts";

const KINDS: QueueKind[] = ["split", "packed"];

function setup(kind: QueueKind, size: number) {
  const mem = makeTestMemory({ size: 1 << 20, shared: true });
  const drv = new VirtioTestDriver(mem, { kind, size, features: { indirect: true } });
  const q = createVirtqueue(kind, mem, drv.config, drv.features);
  return { mem, drv, q };
}

/** A chain of some shape picked by `i`: one readable, readable + writable, indirect, one writable. */
function addMixed(drv: VirtioTestDriver, i: number): number {
  const data = new Uint8Array(8 + (i % 5)).fill(i & 0xff);
  switch (i % 4) {
    case 0:
      return drv.addChain([data], []);
    case 1:
      return drv.addChain([data], [16, 4]);
    case 2:
      return drv.addChain([data, data], [32], { indirect: true });
    default:
      return drv.addChain([], [64]);
  }
}

function shape(c: DescriptorChain) {
  return {
    id: c.id,
    readable: c.readable.map((s) => ({ addr: s.addr, len: s.len })),
    writable: c.writable.map((s) => ({ addr: s.addr, len: s.len })),
    readableLength: c.readableLength,
    writableLength: c.writableLength,
    descriptorCount: c.descriptorCount,
    descriptorsRead: c.descriptorsRead,
  };
}

for (const kind of KINDS) {
  describe(`${kind} queue: popBatch`, () => {
    test("takes the chains pop() would, in order, at most max at a time", () => {
      const a = setup(kind, 32);
      const b = setup(kind, 32);
      for (let i = 0; i < 13; i++) {
        addMixed(a.drv, i);
        addMixed(b.drv, i);
      }
      const one: ReturnType<typeof shape>[] = [];
      for (let c = a.q.pop(); c !== null; c = a.q.pop()) one.push(shape(c));
      const batched: ReturnType<typeof shape>[] = [];
      const out: DescriptorChain[] = [];
      const sizes: number[] = [];
      for (;;) {
        const n = b.q.popBatch(out, 5);
        sizes.push(n);
        if (n === 0) break;
        for (let i = 0; i < n; i++) batched.push(shape(out[i] as DescriptorChain));
      }
      assert.deepEqual(sizes, [5, 5, 3, 0]);
      assert.deepEqual(batched, one);
      assert.equal(b.q.inFlight, 13);
    });

    test("a batch given back last first pops again; used in order, the queue goes on", () => {
      const { drv, q } = setup(kind, 16);
      const ids = [0, 1, 2, 3, 4, 5].map((i) => addMixed(drv, i));
      const out: DescriptorChain[] = [];
      assert.equal(q.popBatch(out, 6), 6);
      const taken = out.slice(0, 6);
      // The first two are used; the other four go back (as drainSlice gives back what a slice did not serve).
      q.pushUsed(taken[0] as DescriptorChain, 0, false);
      q.pushUsed(taken[1] as DescriptorChain, 0, false);
      assert.throws(() => q.unpop(taken[0] as DescriptorChain), /unpop/);
      for (let k = 5; k >= 2; k--) q.unpop(taken[k] as DescriptorChain);
      assert.equal(q.inFlight, 0);
      const again: number[] = [];
      for (let c = q.pop(); c !== null; c = q.pop()) again.push(c.id);
      assert.deepEqual(again, ids.slice(2));
    });
  });
}

describe("packed queue: popBatch, the device event and bad lists", () => {
  function packedWithEventIdx(size: number) {
    const mem = makeTestMemory({ size: 1 << 20, shared: true });
    const drv = new VirtioTestDriver(mem, {
      kind: "packed",
      size,
      features: { indirect: true, eventIdx: true },
    });
    const q = createVirtqueue("packed", mem, drv.config, drv.features);
    // 2.8.14: the Device Event Suppression structure's desc field: next slot the device reads, wrap counter in bit 15.
    const deviceEvent = () => mem.readU16(drv.config.deviceAddr);
    return { mem, drv, q, deviceEvent };
  }

  test("after a batch the device event names the next slot to read, across a wrap of the ring", () => {
    const size = 8;
    const { drv, q, deviceEvent } = packedWithEventIdx(size);
    const out: DescriptorChain[] = [];
    let slot = 0;
    let wrap = 1;
    for (let round = 0; round < 5; round++) {
      const shapes = [0, 1, 3, 0, 2].slice(0, 2 + (round % 3));
      let slots = 0;
      for (const i of shapes) {
        addMixed(drv, i);
        slots += i === 1 ? 3 : 1; // addMixed: shape 1 is one readable and two writable descriptors
      }
      const n = q.popBatch(out, 16);
      assert.equal(n, shapes.length);
      slot += slots;
      if (slot >= size) {
        slot -= size;
        wrap ^= 1;
      }
      assert.equal(deviceEvent(), slot | (wrap << 15), `round ${round}`);
      for (let k = 0; k < n; k++) q.pushUsed(out[k] as DescriptorChain, 0);
      drv.usedChains();
    }
  });

  test("a bad list ends the batch; the next call throws for it; the device event names it", () => {
    const { mem, drv, q, deviceEvent } = packedWithEventIdx(16);
    const good = [addMixed(drv, 0), addMixed(drv, 3)];
    drv.makeAvailableRaw([{ addr: mem.end + 0x1000, len: 8, flags: 0, id: 9 }]);
    const out: DescriptorChain[] = [];
    assert.equal(q.popBatch(out, 8), 2);
    assert.deepEqual(
      out.slice(0, 2).map((c) => c.id),
      good,
    );
    assert.equal(deviceEvent(), 2 | (1 << 15), "the event is on the bad list's slot");
    assert.throws(
      () => q.popBatch(out, 8),
      (e: unknown) =>
        e instanceof VirtqueueError &&
        /outside guest RAM \(.*\) \(ring slot 2, list at slot 2\)$/.test(e.message),
    );
    assert.throws(() => q.pop(), /outside guest RAM/, "still in front of it");
    assert.equal(q.inFlight, 2);
  });

  test("a list of one descriptor is checked as the builder checks any element", () => {
    for (const [d, re] of [
      [{ addr: 0xffffffffffffffffn, len: 0 }, /above 2\^53-1 \(ring slot 0, list at slot 0\)/],
      [{ addr: 0x20000000000000n, len: 1 }, /above 2\^53-1/],
      [{ addr: 2 ** 53 - 1, len: 2 }, /outside guest RAM/],
    ] as const) {
      const { drv, q } = setup("packed", 8);
      drv.makeAvailableRaw([{ ...d, flags: 0, id: 0 }]);
      assert.throws(() => q.popBatch([], 4), re);
    }
    // Zero length with a valid address: a chain with no segment; WRITE decides which side it counts on.
    const { drv, q } = setup("packed", 8);
    drv.makeAvailableRaw([{ addr: 0x20000, len: 0, flags: WRITE, id: 5 }]);
    drv.makeAvailableRaw([{ addr: 0x20000, len: 24, flags: WRITE, id: 6 }]);
    const out: DescriptorChain[] = [];
    assert.equal(q.popBatch(out, 4), 2);
    assert.deepEqual(shape(out[0] as DescriptorChain), {
      id: 5,
      readable: [],
      writable: [],
      readableLength: 0,
      writableLength: 0,
      descriptorCount: 1,
      descriptorsRead: 1,
    });
    assert.deepEqual(shape(out[1] as DescriptorChain), {
      id: 6,
      readable: [],
      writable: [{ addr: 0x20000, len: 24 }],
      readableLength: 0,
      writableLength: 24,
      descriptorCount: 1,
      descriptorsRead: 1,
    });
  });
});

describe("split queue: popBatch and bad chains", () => {
  test("a malformed chain ends the batch; the next call throws for it, and the queue stays in front of it", () => {
    const { drv, q } = setup("split", 16);
    const good = [addMixed(drv, 0), addMixed(drv, 1)];
    // A head past the queue size in the third available entry.
    drv.pushAvail(40);
    const out: DescriptorChain[] = [];
    assert.equal(q.popBatch(out, 8), 2);
    assert.deepEqual(
      out.slice(0, 2).map((c) => c.id),
      good,
    );
    assert.throws(
      () => q.popBatch(out, 8),
      (e: unknown) => e instanceof VirtqueueError && /holds head 40/.test(e.message),
    );
    assert.throws(() => q.pop(), /holds head 40/, "still in front of it");
    assert.equal(q.inFlight, 2);
  });

  test("a head made available twice in one batch is refused at the second", () => {
    const { drv, q } = setup("split", 16);
    const head = drv.addChain([new Uint8Array(8)], []);
    drv.pushAvail(head);
    const out: DescriptorChain[] = [];
    assert.equal(q.popBatch(out, 8), 1, "the first entry is popped, the batch ends at the second");
    assert.throws(() => q.popBatch(out, 8), /made available again while in flight/);
  });

  test("a buffer outside guest RAM in the middle of a batch ends it there", () => {
    const { mem, drv, q } = setup("split", 16);
    const first = drv.addChain([new Uint8Array(8)], []);
    const bad = drv.addChain([new Uint8Array(8)], []);
    drv.writeDesc(bad, { addr: mem.end + 0x1000, len: 8, flags: 0, next: 0 });
    drv.addChain([new Uint8Array(8)], []);
    const out: DescriptorChain[] = [];
    assert.equal(q.popBatch(out, 8), 1);
    assert.equal(out[0]?.id, first);
    assert.throws(() => q.popBatch(out, 8), /outside guest RAM/);
  });

  test("many batches used in order, the last of each used only after the next: unpop and pushUsed stay right", () => {
    const size = 8;
    const { drv, q } = setup("split", size);
    const out: DescriptorChain[] = [];
    // The last chain of each batch stays outstanding until the next batch is popped, so the chains unpop may give
    // back never run out and their record has to move along (and wrap) rather than start again.
    let pending: DescriptorChain | null = null;
    for (let round = 0; round < 100; round++) {
      const k = 1 + (round % (size - 1));
      for (let i = 0; i < k; i++) drv.addChain([new Uint8Array(4)], []);
      assert.equal(q.popBatch(out, size), k);
      const batch = out.slice(0, k);
      // The whole batch goes back, last first, and pops again.
      for (let i = k - 1; i >= 0; i--) q.unpop(batch[i] as DescriptorChain);
      assert.equal(q.inFlight, pending === null ? 0 : 1);
      assert.equal(q.popBatch(out, size), k);
      assert.deepEqual(out.slice(0, k), batch);
      if (pending !== null) {
        q.pushUsed(pending, 0, false);
        assert.throws(() => q.unpop(pending as DescriptorChain), /unpop/, "a used chain is not given back");
      }
      for (let i = 0; i < k - 1; i++) q.pushUsed(batch[i] as DescriptorChain, 0, false);
      q.publishUsed();
      pending = batch[k - 1] as DescriptorChain;
      assert.equal(q.inFlight, 1);
      drv.usedChains();
    }
    // The outstanding one can still be given back (nothing after it was used) and pops again.
    q.unpop(pending as DescriptorChain);
    assert.equal(q.pop(), pending);
  });
});
