/**
 * Queues that take over a ring another queue object (or process) was serving: state words seeded at given
 * indices (SplitQueue.seedState, for vhost-user SET_VRING_BASE), the indices read back (indices, inFlight), the
 * state words saved and restored for a snapshot (saveState/restoreState, both layouts), and heads handed out
 * again before the available ring (SplitQueue.resubmit, vhost-user inflight I/O). (Written against the survivors
 * of mutation testing, docs/mutation-testing.md.)
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  PackedQueue,
  QUEUE_STATE_WORDS,
  type QueueKind,
  SplitQueue,
  VirtqueueError,
} from "../../src/devices/virtio/queue/index.ts";
import { DeviceStateError, type StateObject, StateReader } from "../../src/shared/device-state.ts";
import { makeTestMemory, VirtioTestDriver } from "../helpers/virtio-driver.ts";

function reader(o: StateObject): StateReader {
  return new StateReader("t", structuredClone(o));
}

/** A split ring where a first queue object popped three chains and used the second: heads 0 and 2 are out. */
function splitRingWithTwoOut(eventIdx = false) {
  const mem = makeTestMemory();
  const drv = new VirtioTestDriver(mem, { kind: "split", size: 8, features: { eventIdx } });
  const first = new SplitQueue(mem, drv.config, drv.features);
  const heads = [0, 1, 2].map((i) => drv.addChain([Uint8Array.of(i)], [4]));
  const cs = heads.map(() => first.pop());
  const c1 = cs[1];
  assert.ok(c1);
  first.pushUsed(c1, 4);
  assert.deepEqual(
    drv.usedChains().map((u) => u.id),
    [heads[1]],
  );
  return { mem, drv, heads };
}

describe("split queue: seeded state words", () => {
  test("a queue over seeded words reads the available ring at lastAvail and writes the used ring at usedIdx", () => {
    const { mem, drv, heads } = splitRingWithTwoOut();
    // Whatever the words held before is replaced.
    const words = new Int32Array(QUEUE_STATE_WORDS).fill(7);
    SplitQueue.seedState(words, 0x10003, 0x10001); // 16-bit indices: 3 and 1
    assert.deepEqual(SplitQueue.indices(words), { lastAvail: 3, usedIdx: 1 });
    assert.equal(SplitQueue.inFlight(words), 2);
    const q = new SplitQueue(mem, drv.config, drv.features, { state: words });
    assert.equal(q.shouldNotifyDriver(), false, "nothing used since the seed");
    assert.equal(q.pop(), null, "the three entries were read by the first queue");
    const id = drv.addChain([Uint8Array.of(9)], [4]);
    assert.ok(!heads.includes(id) || id === heads[1], "a new head, or the one the driver got back");
    const c = q.pop();
    assert.equal(c?.id, id);
    assert.ok(c);
    q.pushUsed(c, 2);
    const used = drv.usedChains();
    assert.deepEqual(
      used.map((u) => [u.id, u.len]),
      [[id, 2]],
      "written at used ring entry 1, the used idx moved to 2",
    );
    assert.deepEqual(SplitQueue.indices(words), { lastAvail: 4, usedIdx: 2 });
    assert.equal(SplitQueue.inFlight(words), 2);
  });

  test("seeded words ask for the next kick and count used entries from the seeded used idx (EVENT_IDX)", () => {
    const { mem, drv } = splitRingWithTwoOut(true);
    const words = new Int32Array(QUEUE_STATE_WORDS).fill(-1);
    SplitQueue.seedState(words, 3, 1);
    const q = new SplitQueue(mem, drv.config, drv.features, { state: words });
    drv.addChain([Uint8Array.of(9)], [4]);
    drv.kickNeeded(); // the first queue left avail_event at 3: this entry
    const c = q.pop();
    assert.ok(c);
    // Driver notifications are on: the pop asked for a kick at the next entry (avail_event = 4).
    drv.addChain([Uint8Array.of(10)], [4]);
    assert.equal(drv.kickNeeded(), true);
    // used_event 0: the driver wants a notification when the used entry at index 0 is written. The window since
    // the seeded used idx (1) is [1, 2): no notification.
    drv.setUsedEvent(0);
    q.pushUsed(c, 0);
    assert.equal(q.shouldNotifyDriver(), false);
    drv.setUsedEvent(2);
    const d = q.pop();
    assert.ok(d);
    q.pushUsed(d, 0);
    assert.equal(q.shouldNotifyDriver(), true, "entry 2 was written");
  });
});

describe("saved and restored state words", () => {
  for (const kind of ["split", "packed"] as QueueKind[]) {
    const Q = kind === "split" ? SplitQueue : PackedQueue;
    const restore = (o: StateObject) =>
      kind === "split" ? SplitQueue.restoreState(reader(o)) : PackedQueue.restoreState(reader(o), 8);

    test(`${kind}: a queue over restored words goes on where the saved one was`, () => {
      const mem = makeTestMemory();
      const drv = new VirtioTestDriver(mem, { kind, size: 8, features: { eventIdx: true } });
      const words = new Int32Array(QUEUE_STATE_WORDS);
      const a =
        kind === "split"
          ? new SplitQueue(mem, drv.config, drv.features, { state: words })
          : new PackedQueue(mem, drv.config, drv.features, { state: words });
      for (let i = 0; i < 11; i++) {
        drv.addChain([Uint8Array.of(i)], [2]);
        const c = a.pop();
        assert.ok(c);
        a.pushUsed(c, 1);
        drv.usedChains();
      }
      a.shouldNotifyDriver();
      for (const notifications of [false, true]) {
        a.setDriverNotifications(notifications);
        const saved = Q.saveState(words);
        assert.equal(saved.started, true);
        assert.equal(saved.driverNotifications, notifications);
        const back = restore(saved);
        assert.deepEqual([...back], [...words], `driver notifications ${notifications}`);
      }
      const b =
        kind === "split"
          ? new SplitQueue(mem, drv.config, drv.features, { state: restore(Q.saveState(words)) })
          : new PackedQueue(mem, drv.config, drv.features, { state: restore(Q.saveState(words)) });
      const id = drv.addChain([Uint8Array.of(42)], [2]);
      const c = b.pop();
      assert.equal(c?.id, id);
      assert.ok(c);
      b.pushUsed(c, 2);
      assert.deepEqual(
        drv.usedChains().map((u) => [u.id, u.len]),
        [[id, 2]],
      );
    });

    test(`${kind}: words never started save as not started and restore as all zero`, () => {
      const zero = new Int32Array(QUEUE_STATE_WORDS);
      const saved = Q.saveState(zero);
      assert.equal(saved.started, false);
      assert.equal(saved.driverNotifications, false);
      assert.deepEqual([...restore(saved)], [...zero]);
    });

    test(`${kind}: a state not started but with indices is refused`, () => {
      const mem = makeTestMemory();
      const drv = new VirtioTestDriver(mem, { kind, size: 8 });
      const words = new Int32Array(QUEUE_STATE_WORDS);
      const q =
        kind === "split"
          ? new SplitQueue(mem, drv.config, drv.features, { state: words })
          : new PackedQueue(mem, drv.config, drv.features, { state: words });
      drv.addChain([Uint8Array.of(1)], []);
      assert.ok(q.pop());
      const saved = Q.saveState(words);
      assert.deepEqual([...restore(saved)], [...words]);
      saved.started = false;
      assert.throws(
        () => restore(saved),
        (e: unknown) =>
          e instanceof DeviceStateError &&
          /^t: saved state field started is false, but the queue has (indices|positions)$/.test(e.message),
      );
    });
  }

  test("packed: restored positions are checked against the ring (slots below the size, positions below 2 x size)", () => {
    const size = 8;
    const state = (o: Partial<Record<string, number>>): StateObject => ({
      nextAvail: 0,
      availWrap: 1,
      nextUsed: 0,
      usedWrap: 1,
      usedAtCheck: 0,
      slotsSinceCheck: 0,
      driverNotifications: true,
      started: true,
      ...o,
    });
    // The largest values a ring of 8 slots can have are accepted.
    const top = { nextAvail: 7, nextUsed: 7, usedAtCheck: 15, slotsSinceCheck: 16 };
    assert.deepEqual([...PackedQueue.restoreState(reader(state(top)), size)], [7, 1, 7, 1, 15, 16, 1, 1]);
    for (const [key, bad] of [
      ["nextAvail", 8],
      ["nextUsed", 8],
      ["availWrap", 2],
      ["usedWrap", 2],
      ["usedAtCheck", 16],
      ["slotsSinceCheck", 17],
    ] as const) {
      assert.throws(
        () => PackedQueue.restoreState(reader(state({ [key]: bad })), size),
        (e: unknown) =>
          e instanceof DeviceStateError &&
          e.message.startsWith(`t: saved state field ${key} is ${bad}, outside 0..`),
        key,
      );
    }
  });

  test("split: inFlight counts modulo 2^16; packed: inFlight counts ring slots across the wrap", () => {
    const w = new Int32Array(QUEUE_STATE_WORDS);
    SplitQueue.seedState(w, 2, 0xfffe);
    assert.equal(SplitQueue.inFlight(w), 4);
    // Packed, size 8: next available slot 1 of the lap with wrap counter 0 (position 9), next used slot 6 of the
    // lap with wrap counter 1 (position 6): 3 slots out.
    const p = Int32Array.of(1, 0, 6, 1, 0, 0, 1, 1);
    assert.equal(PackedQueue.inFlight(p, 8), 3);
    assert.equal(PackedQueue.inFlight(Int32Array.of(6, 1, 6, 1, 0, 0, 1, 1), 8), 0);
    assert.equal(PackedQueue.inFlight(new Int32Array(QUEUE_STATE_WORDS), 8), 0, "never started");
  });
});

describe("split queue: resubmitted heads", () => {
  test("pop hands out the given heads first, in order, then goes on with the available ring", () => {
    const { mem, drv, heads } = splitRingWithTwoOut();
    const words = new Int32Array(QUEUE_STATE_WORDS);
    SplitQueue.seedState(words, 3, 1);
    const q = new SplitQueue(mem, drv.config, drv.features, { state: words });
    const list = [heads[2] as number, heads[0] as number];
    q.resubmit(list);
    assert.equal(q.resubmitPending, 2);
    const a = q.pop();
    assert.equal(a?.id, heads[2]);
    assert.deepEqual([...(a?.readable ?? [])].length, 1);
    assert.equal(q.resubmitPending, 1);
    const b = q.pop();
    assert.equal(b?.id, heads[0]);
    assert.ok(a && b);
    assert.deepEqual(list, [heads[2], heads[0]], "the caller's list is left as it was");
    assert.equal(q.resubmitPending, 0);
    // A resubmitted chain given back goes back on the resubmit list, not onto the available ring.
    q.unpop(b);
    assert.equal(q.resubmitPending, 1);
    assert.equal(q.pop()?.id, heads[0]);
    assert.equal(q.pop(), null, "the available ring has nothing new");
    const id = drv.addChain([Uint8Array.of(5)], []);
    const c = q.pop();
    assert.equal(c?.id, id);
    assert.ok(c);
    // A chain from the available ring given back goes back there.
    q.unpop(c);
    assert.equal(q.resubmitPending, 0);
    assert.equal(q.pop()?.id, id);
    assert.equal(q.inFlight, 3);
    assert.deepEqual(SplitQueue.indices(words), { lastAvail: 4, usedIdx: 1 });
  });

  test("a head resubmitted while it is in flight is malformed; heads not below the size are refused", () => {
    const { mem, drv, heads } = splitRingWithTwoOut();
    const words = new Int32Array(QUEUE_STATE_WORDS);
    SplitQueue.seedState(words, 3, 1);
    const q = new SplitQueue(mem, drv.config, drv.features, { state: words, name: "rq" });
    q.resubmit([0, 7]);
    q.resubmit([heads[0] as number, heads[0] as number]); // replaces the list given before
    assert.equal(q.resubmitPending, 2);
    assert.equal(q.pop()?.id, heads[0]);
    assert.throws(
      () => q.pop(),
      (e: unknown) =>
        e instanceof VirtqueueError &&
        e.code === "VIREO_VIRTQUEUE_MALFORMED" &&
        /^virtq rq: resubmitted head 0 is already in flight$/.test(e.message),
    );
    for (const h of [8, -1, 1.5, Number.NaN]) {
      assert.throws(
        () => q.resubmit([1, h]),
        (e: unknown) =>
          e instanceof VirtqueueError &&
          e.code === "VIREO_VIRTQUEUE_USAGE" &&
          e.message === `virtq rq: resubmit: head ${h} is not below the queue size 8`,
        String(h),
      );
    }
    q.resubmit([]);
    q.resubmit([7]);
    assert.equal(q.resubmitPending, 1);
  });
});
