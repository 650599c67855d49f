/**
 * The queue layer's additive pieces used by the virtio devices: run-time indices in caller-provided (shareable)
 * state words, and unpop(), for both ring layouts.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  createVirtqueue,
  QUEUE_STATE_WORDS,
  type QueueKind,
  VirtqueueError,
  writeChain,
} from "../../src/devices/virtio/queue/index.ts";
import { makeTestMemory, VirtioTestDriver } from "../helpers/virtio-driver.ts";

const KINDS: QueueKind[] = ["split", "packed"];

for (const kind of KINDS) {
  describe(`${kind} queue state words`, () => {
    test("two queue objects over the same words act as one queue", () => {
      const mem = makeTestMemory({ shared: true });
      const drv = new VirtioTestDriver(mem, { kind, size: 4, features: { eventIdx: true } });
      const words = new Int32Array(new SharedArrayBuffer(4 * QUEUE_STATE_WORDS));
      const a = createVirtqueue(kind, mem, drv.config, drv.features, { state: words });
      const b = createVirtqueue(kind, mem, drv.config, drv.features, { state: words });
      for (let round = 0; round < 6; round++) {
        const id = drv.addChain([Uint8Array.of(round)], [4]);
        const q = round % 2 === 0 ? a : b;
        const c = q.pop();
        assert.ok(c);
        assert.equal(c.id, id);
        writeChain(mem, c, Uint8Array.of(round, round, round, round));
        q.pushUsed(c, 4);
        assert.equal((round % 2 === 0 ? b : a).pop(), null, "the other object sees the chain consumed");
        const [used] = drv.usedChains();
        assert.equal(used?.id, id);
        assert.deepEqual([...(used?.written ?? [])], [round, round, round, round]);
      }
    });

    test("all-zero words start the queue; a second object does not re-initialize", () => {
      const mem = makeTestMemory();
      const drv = new VirtioTestDriver(mem, { kind, size: 4 });
      const words = new Int32Array(QUEUE_STATE_WORDS);
      const a = createVirtqueue(kind, mem, drv.config, drv.features, { state: words });
      drv.addChain([Uint8Array.of(1)], []);
      const c = a.pop();
      assert.ok(c);
      a.pushUsed(c, 0);
      const snapshot = [...words];
      createVirtqueue(kind, mem, drv.config, drv.features, { state: words });
      assert.deepEqual([...words], snapshot);
      assert.throws(
        () => createVirtqueue(kind, mem, drv.config, drv.features, { state: new Int32Array(3) }),
        (e: unknown) => e instanceof VirtqueueError && e.code === "VIREO_VIRTQUEUE_USAGE",
      );
    });

    test("unpop gives chains back, last first; used chains cannot be given back", () => {
      const mem = makeTestMemory();
      const drv = new VirtioTestDriver(mem, { kind, size: 8, features: { eventIdx: true } });
      const q = createVirtqueue(kind, mem, drv.config, drv.features);
      const ids = [drv.addChain([], [8, 8]), drv.addChain([], [8]), drv.addChain([], [8, 8, 8])];
      const c0 = q.pop();
      const c1 = q.pop();
      const c2 = q.pop();
      assert.ok(c0 && c1 && c2);
      assert.throws(
        () => q.unpop(c1),
        (e: unknown) => e instanceof VirtqueueError,
      );
      q.unpop(c2);
      q.unpop(c1);
      assert.equal(q.inFlight, 1);
      const again = q.pop();
      assert.equal(again?.id, ids[1]);
      assert.ok(again);
      q.pushUsed(again, 0);
      assert.throws(
        () => q.unpop(c0),
        (e: unknown) => e instanceof VirtqueueError,
        "ring moved past c0",
      );
      assert.equal(q.pop()?.id, ids[2]);
    });

    test("using a chain ends the unpop of those popped before it, not of those popped after", () => {
      const mem = makeTestMemory();
      const drv = new VirtioTestDriver(mem, { kind, size: 8 });
      const q = createVirtqueue(kind, mem, drv.config, drv.features);
      const ids = [0, 1, 2, 3].map((i) => drv.addChain([Uint8Array.of(i)], []));
      const cs = ids.map(() => q.pop());
      const [c0, c1, c2, c3] = cs;
      assert.ok(c0 && c1 && c2 && c3);
      q.pushUsed(c1, 0);
      // c2 and c3 were popped after c1: they can still be given back, last first.
      q.unpop(c3);
      q.unpop(c2);
      assert.equal(q.inFlight, 1);
      // c0 was popped before c1, which the ring has moved past.
      assert.throws(
        () => q.unpop(c0),
        (e: unknown) => e instanceof VirtqueueError && e.code === "VIREO_VIRTQUEUE_USAGE",
      );
      assert.equal(q.pop()?.id, ids[2]);
      assert.equal(q.pop()?.id, ids[3]);
      assert.equal(q.pop(), null);
    });

    test("a chain popped after every earlier one was used can be given back", () => {
      const mem = makeTestMemory();
      const drv = new VirtioTestDriver(mem, { kind, size: 8 });
      const q = createVirtqueue(kind, mem, drv.config, drv.features);
      drv.addChain([Uint8Array.of(0)], []);
      drv.addChain([Uint8Array.of(1)], []);
      const c0 = q.pop();
      const c1 = q.pop();
      assert.ok(c0 && c1);
      // Used out of order: the second first, then the first (no longer among the chains unpop may give back).
      q.pushUsed(c1, 0);
      q.pushUsed(c0, 0);
      assert.equal(q.inFlight, 0);
      const id = drv.addChain([Uint8Array.of(2)], []);
      const c2 = q.pop();
      assert.equal(c2?.id, id);
      assert.ok(c2);
      q.unpop(c2);
      assert.equal(q.inFlight, 0);
      assert.equal(q.pop()?.id, id);
    });

    test("used buffers pushed with publish false reach the driver at publishUsed or shouldNotifyDriver", () => {
      const mem = makeTestMemory();
      const drv = new VirtioTestDriver(mem, { kind, size: 8 });
      const q = createVirtqueue(kind, mem, drv.config, drv.features);
      const ids = [drv.addChain([], [4]), drv.addChain([], [4]), drv.addChain([], [4])];
      const [a, b, c] = [q.pop(), q.pop(), q.pop()];
      assert.ok(a && b && c);
      q.pushUsed(a, 1, false);
      q.pushUsed(b, 2, false);
      if (kind === "split") {
        // 2.7.8.2: the used idx moves once for the batch, after its elements.
        assert.deepEqual(drv.usedChains(), [], "nothing published yet");
      }
      q.publishUsed();
      const seen = drv.usedChains().map((u) => [u.id, u.len]);
      if (kind === "split")
        assert.deepEqual(seen, [
          [ids[0], 1],
          [ids[1], 2],
        ]);
      q.publishUsed(); // nothing pending: no-op
      assert.deepEqual(drv.usedChains(), []);
      q.pushUsed(c, 3, false);
      if (kind === "split") assert.deepEqual(drv.usedChains(), []);
      assert.equal(q.shouldNotifyDriver(), true);
      const last = drv.usedChains().map((u) => [u.id, u.len]);
      if (kind === "split") assert.deepEqual(last, [[ids[2], 3]]);
      // Packed rings publish each used descriptor as it is written; all three arrived by now either way.
      assert.deepEqual(
        [...seen, ...last],
        [
          [ids[0], 1],
          [ids[1], 2],
          [ids[2], 3],
        ],
      );
    });
  });
}
