/**
 * Notification suppression in both directions, both ring layouts, with and without VIRTIO_F_EVENT_IDX:
 * shouldNotifyDriver (2.7.7 Used Buffer Notification Suppression; 2.8.10 Driver and Device Event Suppression)
 * and setDriverNotifications ("Available Buffer Notification Suppression"; 2.8.10), checked against what a
 * spec-following driver (test/helpers/virtio-driver.ts) reads and writes.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  createVirtqueue,
  needEvent,
  type QueueKind,
  type Virtqueue,
} from "../../src/devices/virtio/queue/index.ts";
import type { GuestMemory } from "../../src/memory/guest-memory.ts";
import { MetricsSegment, SLOTS_PER_SEGMENT } from "../../src/metrics/registry.ts";
import { makeTestMemory, VirtioTestDriver } from "../helpers/virtio-driver.ts";

const KINDS: QueueKind[] = ["split", "packed"];

function setup(kind: QueueKind, eventIdx: boolean, size = 8) {
  const mem = makeTestMemory();
  const drv = new VirtioTestDriver(mem, { kind, size, features: { eventIdx } });
  const metrics = new MetricsSegment(new ArrayBuffer(SLOTS_PER_SEGMENT * 8), 0);
  const q = createVirtqueue(kind, mem, drv.config, drv.features, { metrics, name: "n" });
  return { mem, drv, q, metrics };
}

/** One single-descriptor buffer through the queue: driver adds, device pops and uses it, driver collects it. */
function cycle(drv: VirtioTestDriver, q: Virtqueue): void {
  drv.addChain([Uint8Array.of(1)], []);
  const c = q.pop();
  assert.ok(c);
  q.pushUsed(c, 0);
  assert.equal(drv.usedChains().length, 1);
}

/** Pops and uses everything available; the driver collects it. Returns how many. */
function drainAndUse(drv: VirtioTestDriver, q: Virtqueue): number {
  let n = 0;
  for (let c = q.pop(); c; c = q.pop()) {
    q.pushUsed(c, 0);
    n++;
  }
  assert.equal(drv.usedChains().length, n);
  return n;
}

/** Adds and pops `n` buffers, then uses them all before asking shouldNotifyDriver once. */
function batch(drv: VirtioTestDriver, q: Virtqueue, n: number): boolean {
  for (let i = 0; i < n; i++) drv.addChain([Uint8Array.of(i)], []);
  for (let i = 0; i < n; i++) {
    const c = q.pop();
    assert.ok(c);
    q.pushUsed(c, 0);
  }
  const r = q.shouldNotifyDriver();
  assert.equal(drv.usedChains().length, n);
  return r;
}

describe("needEvent (the specification's virtq_need_event)", () => {
  test("true exactly when event is among the indices written in [old, new)", () => {
    assert.equal(needEvent(0, 1, 0), true);
    assert.equal(needEvent(1, 1, 0), false);
    assert.equal(needEvent(3, 5, 2), true);
    assert.equal(needEvent(4, 5, 2), true);
    assert.equal(needEvent(5, 5, 2), false);
    assert.equal(needEvent(1, 5, 2), false);
    assert.equal(needEvent(7, 7, 7), false, "nothing written");
  });

  test("wraps around at 2^16", () => {
    assert.equal(needEvent(0xffff, 0, 0xfffe), true, "entry 0xffff written as idx wraps to 0");
    assert.equal(needEvent(0xfffe, 0, 0xffff), false);
    assert.equal(needEvent(0, 2, 0xfffe), true);
    assert.equal(needEvent(1, 2, 0xfffe), true);
    assert.equal(needEvent(2, 2, 0xfffe), false);
    assert.equal(needEvent(0xfffd, 2, 0xfffe), false, "just behind the window");
  });
});

for (const kind of KINDS) {
  describe(`used buffer notifications without EVENT_IDX (${kind})`, () => {
    test("notify after use unless the driver disabled them; nothing new means no notification", () => {
      const { drv, q, metrics } = setup(kind, false);
      assert.equal(q.shouldNotifyDriver(), false, "nothing used yet");
      cycle(drv, q);
      assert.equal(q.shouldNotifyDriver(), true);
      assert.equal(q.shouldNotifyDriver(), false, "already decided for that buffer");
      drv.setUsedNotifications(false);
      cycle(drv, q);
      assert.equal(q.shouldNotifyDriver(), false);
      assert.equal(metrics.counter("virtq.n.notify_suppressed").value, 1);
      drv.setUsedNotifications(true);
      cycle(drv, q);
      cycle(drv, q);
      assert.equal(q.shouldNotifyDriver(), true);
      assert.equal(metrics.counter("virtq.n.notify_suppressed").value, 1);
    });

    test("event index fields are ignored when EVENT_IDX is not negotiated", () => {
      const { drv, q } = setup(kind, false);
      // A used_event / RING_EVENT_FLAGS_DESC that would suppress under EVENT_IDX.
      drv.setUsedEvent(5, 0);
      cycle(drv, q);
      assert.equal(q.shouldNotifyDriver(), true);
    });
  });

  describe(`available buffer notifications (setDriverNotifications) without EVENT_IDX (${kind})`, () => {
    test("the driver kicks only while the device asks for it", () => {
      const { drv, q } = setup(kind, false);
      drv.addChain([Uint8Array.of(1)], []);
      assert.equal(drv.kickNeeded(), true, "enabled from the start");
      q.setDriverNotifications(false);
      drv.addChain([Uint8Array.of(2)], []);
      assert.equal(drv.kickNeeded(), false);
      q.setDriverNotifications(true);
      drv.addChain([Uint8Array.of(3)], []);
      assert.equal(drv.kickNeeded(), true);
      let n = 0;
      while (q.pop()) n++;
      assert.equal(n, 3);
    });
  });
}

describe("used buffer notifications with EVENT_IDX (split)", () => {
  test("used_event names the used ring entry that triggers the notification", () => {
    const { mem, drv, q, metrics } = setup("split", true);
    // used_event starts at 0: notify after the first buffer (entry 0), not after the second.
    cycle(drv, q);
    assert.equal(q.shouldNotifyDriver(), true);
    cycle(drv, q);
    assert.equal(q.shouldNotifyDriver(), false);
    // Two ahead: entries 2 and 3 pass silently, entry 4 notifies.
    drv.setUsedEvent(drv.nextUsedPosition.index + 2);
    cycle(drv, q);
    assert.equal(q.shouldNotifyDriver(), false);
    cycle(drv, q);
    assert.equal(q.shouldNotifyDriver(), false);
    cycle(drv, q);
    assert.equal(q.shouldNotifyDriver(), true);
    assert.equal(metrics.counter("virtq.n.notify_suppressed").value, 3);
    // The low bit of avail flags is ignored with EVENT_IDX.
    mem.writeU16(drv.layout.driverAddr, 1);
    drv.setUsedEvent(drv.nextUsedPosition.index);
    cycle(drv, q);
    assert.equal(q.shouldNotifyDriver(), true);
  });

  test("a batch notifies when it covers used_event, and not otherwise", () => {
    const { drv, q } = setup("split", true);
    drv.setUsedEvent(drv.nextUsedPosition.index + 1);
    assert.equal(batch(drv, q, 3), true, "entries 0..2 cover used_event 1");
    drv.setUsedEvent(drv.nextUsedPosition.index + 5);
    assert.equal(batch(drv, q, 3), false, "entries 3..5 miss used_event 8");
    assert.equal(batch(drv, q, 3), true, "entries 6..8 cover it");
  });

  test("used idx wrapping past 0xffff", () => {
    const { drv, q } = setup("split", true, 4);
    // Keep used_event out of the way while idx runs up to 0xfffe.
    drv.setUsedEvent(0x8000);
    for (let i = 0; i < 0xfffe; i++) cycle(drv, q);
    assert.equal(q.shouldNotifyDriver(), true, "0x8000 was crossed on the way");
    assert.equal(drv.nextUsedPosition.index, 0xfffe);
    drv.setUsedEvent(0xffff);
    cycle(drv, q); // writes entry 0xfffe
    assert.equal(q.shouldNotifyDriver(), false);
    cycle(drv, q); // writes entry 0xffff, idx wraps to 0
    assert.equal(q.shouldNotifyDriver(), true);
    assert.equal(drv.nextUsedPosition.index, 0);
    drv.setUsedEvent(1);
    assert.equal(batch(drv, q, 1), false, "entry 0");
    assert.equal(batch(drv, q, 1), true, "entry 1");
    // A batch straddling the wrap: entries 0xfffe..1 with used_event 0 at idx 0xfffe.
    for (let i = 0; i < 0xfffe - 2; i++) cycle(drv, q);
    q.shouldNotifyDriver();
    assert.equal(drv.nextUsedPosition.index, 0xfffe);
    drv.setUsedEvent(0);
    assert.equal(batch(drv, q, 4), true);
  });

  test("2^16 used entries or more since the last check cover every index: notify, whatever used_event is", () => {
    // The used idx is back where it was, so the (new - old) window of 2.7.7.2 is empty; the entry at used_event was
    // written all the same (every index was).
    const { drv, q } = setup("split", true, 4);
    drv.setUsedEvent(0x1234);
    for (let i = 0; i < 0x10000; i++) cycle(drv, q);
    assert.equal(drv.nextUsedPosition.index, 0);
    assert.equal(q.shouldNotifyDriver(), true, "2^16 entries");
    for (let i = 0; i < 0x10001; i++) cycle(drv, q);
    assert.equal(q.shouldNotifyDriver(), true, "2^16 + 1 entries");
    cycle(drv, q);
    assert.equal(q.shouldNotifyDriver(), false, "one entry, not at used_event");
  });
});

describe("used buffer notifications with EVENT_IDX (packed)", () => {
  test("the driver event (slot, wrap) triggers when the device uses that slot", () => {
    const { drv, q } = setup("packed", true);
    const p = drv.nextUsedPosition;
    drv.setUsedEvent(p.index, p.wrap);
    cycle(drv, q);
    assert.equal(q.shouldNotifyDriver(), true);
    assert.equal(q.shouldNotifyDriver(), false);
    const p2 = drv.nextUsedPosition;
    drv.setUsedEvent(p2.index + 2, p2.wrap);
    cycle(drv, q);
    assert.equal(q.shouldNotifyDriver(), false);
    cycle(drv, q);
    assert.equal(q.shouldNotifyDriver(), false);
    cycle(drv, q);
    assert.equal(q.shouldNotifyDriver(), true);
  });

  test("the wrap counter matters: the same slot one lap early does not notify", () => {
    const size = 4;
    const { drv, q } = setup("packed", true, size);
    // Slot 1 in the second lap (Device Ring Wrap Counter 0).
    drv.setUsedEvent(1, 0);
    const results: boolean[] = [];
    for (let i = 0; i < size + 3; i++) {
      cycle(drv, q);
      results.push(q.shouldNotifyDriver());
    }
    // Used slots: 0,1,2,3 (wrap 1), 0,1,2 (wrap 0): only the 6th buffer lands on (1, wrap 0).
    assert.deepEqual(results, [false, false, false, false, false, true, false]);
  });

  test("an event slot inside a multi-descriptor list notifies (conservatively) when the list is used", () => {
    const { drv, q } = setup("packed", true);
    const p = drv.nextUsedPosition;
    drv.setUsedEvent(p.index + 1, p.wrap);
    drv.addChain([Uint8Array.of(1), Uint8Array.of(2)], [1]); // slots 0..2, used descriptor at slot 0
    const c = q.pop();
    assert.ok(c);
    q.pushUsed(c, 0);
    assert.equal(q.shouldNotifyDriver(), true);
  });

  test("DISABLE and ENABLE still work with EVENT_IDX", () => {
    const { drv, q } = setup("packed", true);
    drv.setUsedNotifications(false);
    cycle(drv, q);
    assert.equal(q.shouldNotifyDriver(), false);
    drv.setUsedNotifications(true);
    cycle(drv, q);
    assert.equal(q.shouldNotifyDriver(), true);
  });

  test("a driver event slot beyond the ring or the reserved flags value notify rather than risk a miss", () => {
    const { mem, drv, q } = setup("packed", true);
    drv.setUsedEvent(0x7fff, 1);
    cycle(drv, q);
    assert.equal(q.shouldNotifyDriver(), true);
    mem.writeU16(drv.layout.driverAddr + 2, 3);
    cycle(drv, q);
    assert.equal(q.shouldNotifyDriver(), true);
  });
});

for (const kind of KINDS) {
  describe(`available buffer notifications with EVENT_IDX (${kind})`, () => {
    test("the driver kicks for the next entry the device has not seen, and not while disabled", () => {
      const { drv, q } = setup(kind, true);
      drv.addChain([Uint8Array.of(1)], []);
      assert.equal(drv.kickNeeded(), true, "first buffer");
      drv.addChain([Uint8Array.of(2)], []);
      assert.equal(drv.kickNeeded(), false, "device has not caught up: no second kick needed");
      assert.equal(drainAndUse(drv, q), 2);
      drv.addChain([Uint8Array.of(3)], []);
      assert.equal(drv.kickNeeded(), true, "device caught up and re-armed the event");
      assert.equal(drainAndUse(drv, q), 1);
      q.setDriverNotifications(false);
      // More buffers than the queue size while disabled, so the ring wraps.
      for (let i = 0; i < 20; i++) {
        drv.addChain([Uint8Array.of(10 + i)], []);
        assert.equal(drv.kickNeeded(), false, `disabled, buffer ${i}`);
        if (i % 4 === 3) assert.equal(drainAndUse(drv, q), 4);
      }
      q.setDriverNotifications(true);
      drv.addChain([Uint8Array.of(20)], []);
      assert.equal(drv.kickNeeded(), true);
    });

    test("after re-enabling, the device must pop again to see buffers added meanwhile", () => {
      const { drv, q } = setup(kind, true);
      q.setDriverNotifications(false);
      drv.addChain([Uint8Array.of(1)], []);
      assert.equal(drv.kickNeeded(), false);
      q.setDriverNotifications(true);
      // The event points at the buffer the device has not popped yet, so nothing later triggers a kick...
      drv.addChain([Uint8Array.of(2)], []);
      assert.equal(drv.kickNeeded(), false);
      // ...and the re-check after enabling finds both.
      assert.ok(q.pop());
      assert.ok(q.pop());
      assert.equal(q.pop(), null);
    });
  });
}

describe("device-written suppression fields", () => {
  function u16(mem: GuestMemory, at: number): number {
    return mem.readU16(at);
  }

  test("split without EVENT_IDX: used flags VIRTQ_USED_F_NO_NOTIFY toggles", () => {
    const { mem, drv, q } = setup("split", false);
    assert.equal(u16(mem, drv.layout.deviceAddr), 0);
    q.setDriverNotifications(false);
    assert.equal(u16(mem, drv.layout.deviceAddr), 1);
    q.setDriverNotifications(true);
    assert.equal(u16(mem, drv.layout.deviceAddr), 0);
  });

  test("split with EVENT_IDX: flags stay 0, avail_event follows the device", () => {
    const { mem, drv, q } = setup("split", true);
    const availEvent = drv.layout.deviceAddr + 4 + 8 * drv.size;
    drv.addChain([Uint8Array.of(1)], []);
    drv.addChain([Uint8Array.of(1)], []);
    assert.ok(q.pop());
    assert.equal(u16(mem, availEvent), 1);
    q.setDriverNotifications(false);
    assert.equal(u16(mem, drv.layout.deviceAddr), 0);
    assert.equal(u16(mem, availEvent), 0, "one behind: reached again only after 2^16 - 1 entries");
    assert.ok(q.pop());
    assert.equal(u16(mem, availEvent), 0, "not moved while disabled");
    q.setDriverNotifications(true);
    assert.equal(u16(mem, availEvent), 2);
  });

  test("packed: device event flags and descriptor position", () => {
    for (const eventIdx of [false, true]) {
      const { mem, drv, q } = setup("packed", eventIdx, 4);
      const flags = () => u16(mem, drv.layout.deviceAddr + 2);
      assert.equal(flags(), eventIdx ? 2 : 0);
      q.setDriverNotifications(false);
      assert.equal(flags(), 1);
      q.setDriverNotifications(true);
      assert.equal(flags(), eventIdx ? 2 : 0);
      if (eventIdx) {
        // Pop 5 single-slot buffers on a 4-slot ring: next slot 1 with wrap counter 0.
        for (let i = 0; i < 5; i++) {
          drv.addChain([Uint8Array.of(i)], []);
          const c = q.pop();
          assert.ok(c);
          q.pushUsed(c, 0);
          drv.usedChains();
        }
        assert.equal(u16(mem, drv.layout.deviceAddr), 1);
      }
    }
  });
});

describe("unpop and available buffer notifications", () => {
  for (const kind of KINDS) {
    test(`${kind}: chains given back for want of more still get the next buffers notified (EVENT_IDX)`, () => {
      const { drv, q } = setup(kind, true, 8);
      // Two buffers; the device needs three (a large frame over mergeable receive buffers): it pops both, finds
      // no third, and gives both back.
      drv.addChain([], [64]);
      drv.addChain([], [64]);
      assert.ok(drv.kickNeeded());
      const a = q.pop();
      const b = q.pop();
      assert.ok(a && b);
      assert.equal(q.pop(), null);
      q.unpop(b);
      q.unpop(a);
      // The driver posts one more buffer: the device must be told, or it waits forever.
      drv.addChain([], [64]);
      assert.ok(drv.kickNeeded(), "the driver notifies the new buffer");
      assert.equal(q.pop()?.id, a.id, "the given-back chains come first");
      assert.ok(q.pop());
      assert.ok(q.pop());
      assert.equal(q.pop(), null);
    });
  }
});

describe("packed ring: unpop, the used WRITE flag, event slots at the ring's end", () => {
  test("unpop at slot 0 and across the end of the ring rewinds slot and wrap counter (2.8.1)", () => {
    for (const eventIdx of [false, true]) {
      const size = 4;
      const { mem, drv, q } = setup("packed", eventIdx, size);
      const deviceDesc = () => mem.readU16(drv.layout.deviceAddr);
      // The first chain, at slot 0: given back, it is popped again from slot 0, not from a next lap.
      drv.addChain([Uint8Array.of(7)], []);
      const first = q.pop();
      assert.ok(first);
      if (eventIdx) assert.equal(deviceDesc(), 1 | (1 << 15), "device event: slot 1, wrap 1");
      q.unpop(first);
      if (eventIdx) assert.equal(deviceDesc(), 1 | (1 << 15), "device event stays on slot 1, wrap 1");
      const again = q.pop();
      assert.equal(again?.id, first.id);
      assert.deepEqual(again?.readable, first.readable);
      if (again) q.pushUsed(again, 0);
      drv.usedChains();
      // Slots 1 and 2, then a chain in the last slot: popping it flips the Driver Ring Wrap Counter.
      for (let i = 0; i < 2; i++) cycle(drv, q);
      drv.addChain([Uint8Array.of(9)], []);
      const last = q.pop();
      assert.ok(last);
      if (eventIdx) assert.equal(deviceDesc(), 0, "device event: slot 0, wrap 0");
      q.unpop(last);
      if (eventIdx) assert.equal(deviceDesc(), 0, "device event stays on slot 0, wrap 0");
      const last2 = q.pop();
      assert.equal(last2?.id, last.id, `eventIdx ${eventIdx}`);
      if (last2) q.pushUsed(last2, 0);
      assert.equal(drv.usedChains().length, 1);
      // The next lap (wrap counter 0) still works.
      cycle(drv, q);
      assert.equal(q.inFlight, 0);
    }
  });

  test("a used descriptor has VIRTQ_DESC_F_WRITE only when something was written (2.8.3)", () => {
    const { drv, q } = setup("packed", false);
    drv.addChain([Uint8Array.of(1)], [4]);
    drv.addChain([Uint8Array.of(1)], [4]);
    const a = q.pop();
    const b = q.pop();
    assert.ok(a && b);
    q.pushUsed(a, 0);
    q.pushUsed(b, 3);
    const [ua, ub] = drv.usedChains();
    assert.equal((ua?.flags ?? -1) & 2, 0, "nothing written: no WRITE flag");
    assert.equal((ub?.flags ?? 0) & 2, 2, "3 bytes written: WRITE flag");
  });

  test("a driver event slot equal to the queue size is out of range: notify, never a wrap-aliased slot", () => {
    const size = 8;
    const { mem, drv, q, metrics } = setup("packed", true, size);
    // Slot 8 with wrap 1 would alias slot 0 with wrap 0 (one lap on) if it were taken as a position.
    mem.writeU16(drv.layout.driverAddr, size | (1 << 15));
    mem.writeU16(drv.layout.driverAddr + 2, 2);
    cycle(drv, q);
    assert.equal(q.shouldNotifyDriver(), true);
    // A valid event slot not reached yet is suppressed, and counted as such.
    drv.setUsedEvent(5, 1);
    cycle(drv, q);
    assert.equal(q.shouldNotifyDriver(), false);
    assert.equal(metrics.counter("virtq.n.notify_suppressed").value, 1);
  });
});
