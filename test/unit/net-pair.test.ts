import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { MetricsSegment } from "../../src/metrics/registry.ts";
import { createPair } from "../../src/net/pair.ts";

function frame(n: number, len = 60): Uint8Array {
  const f = new Uint8Array(len);
  f.fill(n & 0xff);
  f[0] = 0x02;
  f[12] = n >> 8;
  f[13] = n & 0xff;
  return f;
}

function id(f: Uint8Array): number {
  return ((f[12] as number) << 8) | (f[13] as number);
}

/** A receiver that accepts everything and records frame ids. */
function recorder(ids: number[]): (f: Uint8Array) => boolean {
  return (f) => {
    ids.push(id(f));
    return true;
  };
}

describe("createPair", () => {
  test("what one end sends arrives at the other end's receiver, both ways", () => {
    const [a, b] = createPair();
    const atA: number[] = [];
    const atB: number[] = [];
    a.attach(recorder(atA));
    b.attach(recorder(atB));
    assert.equal(a.send(frame(1)), true);
    assert.equal(a.send(frame(2)), true);
    assert.equal(b.send(frame(3)), true);
    assert.deepEqual(atB, [1, 2]);
    assert.deepEqual(atA, [3]);
    assert.deepEqual(a.stats(), { sent: 2, sendDropped: 0, delivered: 1, queued: 0, dropped: 0 });
    assert.deepEqual(b.stats(), { sent: 1, sendDropped: 0, delivered: 2, queued: 0, dropped: 0 });
  });

  test("the receiver gets a copy: the sender may reuse its buffer", () => {
    const [a, b] = createPair();
    const got: Uint8Array[] = [];
    b.attach((f) => {
      got.push(f);
      return true;
    });
    const buf = frame(7);
    a.send(buf);
    buf.fill(0);
    assert.equal(id(got[0] as Uint8Array), 7);
    assert.equal((got[0] as Uint8Array)[20], 7);
  });

  test("frames sent before a receiver is attached wait and arrive in order on attach", () => {
    const [a, b] = createPair();
    for (let i = 0; i < 5; i++) a.send(frame(i));
    assert.equal(b.stats().queued, 5);
    const got: number[] = [];
    b.attach(recorder(got));
    assert.deepEqual(got, [0, 1, 2, 3, 4]);
    assert.equal(b.stats().queued, 0);
  });

  test("a refused frame stays queued, later frames queue behind it, rxReady retries in order", () => {
    const [a, b] = createPair();
    let room = 1;
    const got: number[] = [];
    b.attach((f) => {
      if (room === 0) return false;
      room--;
      got.push(id(f));
      return true;
    });
    for (let i = 0; i < 4; i++) assert.equal(a.send(frame(i)), true);
    assert.deepEqual(got, [0]);
    assert.equal(b.stats().queued, 3);
    b.rxReady(); // still no room: nothing moves, nothing lost
    assert.deepEqual(got, [0]);
    room = 2;
    b.rxReady();
    assert.deepEqual(got, [0, 1, 2]);
    room = 10;
    a.send(frame(4));
    assert.deepEqual(got, [0, 1, 2], "a new frame must not overtake the queued one");
    b.rxReady();
    assert.deepEqual(got, [0, 1, 2, 3, 4]);
    assert.deepEqual(b.stats(), { sent: 0, sendDropped: 0, delivered: 5, queued: 0, dropped: 0 });
  });

  test("the queue is bounded: frames beyond capacity are dropped and counted on both ends", () => {
    const seg = new MetricsSegment(new ArrayBuffer(1024 * 8), 0);
    const [a, b] = createPair({ capacity: 3, names: ["left", "right"], metrics: seg });
    b.attach(() => false);
    const results = [0, 1, 2, 3, 4].map((i) => a.send(frame(i)));
    assert.deepEqual(results, [true, true, true, false, false]);
    assert.equal(a.stats().sendDropped, 2);
    assert.equal(b.stats().dropped, 2);
    assert.equal(b.stats().queued, 3);
    assert.equal(seg.counter("net.left.send_dropped").value, 2);
    assert.equal(seg.counter("net.right.dropped").value, 2);
    assert.equal(seg.counter("net.left.sent").value, 3);
    const got: number[] = [];
    b.attach(recorder(got));
    assert.deepEqual(got, [0, 1, 2]);
    assert.equal(seg.counter("net.right.delivered").value, 3);
  });

  test("queued frames survive well past the initial array size (ring growth keeps order)", () => {
    const [a, b] = createPair({ capacity: 1000 });
    let open = false;
    const got: number[] = [];
    b.attach((f) => {
      if (!open) return false;
      got.push(id(f));
      return true;
    });
    for (let i = 0; i < 700; i++) a.send(frame(i));
    open = true;
    b.rxReady();
    assert.equal(got.length, 700);
    assert.ok(got.every((v, i) => v === i));
  });

  test("close: sends to and from a closed end fail and are counted; queued frames are discarded", () => {
    const [a, b] = createPair();
    a.send(frame(1));
    a.send(frame(2));
    b.close();
    assert.equal(b.stats().dropped, 2);
    assert.equal(a.send(frame(3)), false);
    assert.equal(b.send(frame(4)), false);
    assert.equal(a.stats().sendDropped, 1);
    assert.equal(b.stats().sendDropped, 1);
    let called = false;
    b.attach(() => {
      called = true;
      return true;
    });
    b.rxReady();
    assert.equal(called, false);
  });

  test("a receiver that answers synchronously does not reorder or recurse without bound", () => {
    const [a, b] = createPair();
    const atA: number[] = [];
    // b echoes every frame back with id + 1000; a records.
    b.attach((f) => {
      b.send(frame(id(f) + 1000));
      return true;
    });
    a.attach(recorder(atA));
    for (let i = 0; i < 3; i++) a.send(frame(i));
    assert.deepEqual(atA, [1000, 1001, 1002]);
  });

  test("rxReady from inside the receiver is folded into the running drain", () => {
    const [a, b] = createPair();
    let room = 0;
    const got: number[] = [];
    b.attach((f) => {
      if (room === 0) {
        room = 5;
        b.rxReady(); // "buffers just appeared" while refusing
        return false;
      }
      room--;
      got.push(id(f));
      return true;
    });
    a.send(frame(1));
    a.send(frame(2));
    assert.deepEqual(got, [1, 2]);
  });

  test("rejects a bad capacity", () => {
    assert.throws(() => createPair({ capacity: 0 }), RangeError);
  });
});
