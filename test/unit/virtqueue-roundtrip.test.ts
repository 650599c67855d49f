/**
 * Virtqueue round trips for both ring layouts: the test driver (test/helpers/virtio-driver.ts) writes real rings
 * into guest memory, the device side pops, reads, writes and returns buffers, the driver checks what came back.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  ChainReader,
  ChainWriter,
  createVirtqueue,
  type DescriptorChain,
  type QueueFeatures,
  type QueueKind,
  readChain,
  type Virtqueue,
  VirtqueueError,
  writeChain,
} from "../../src/devices/virtio/queue/index.ts";
import type { GuestMemory } from "../../src/memory/guest-memory.ts";
import { MetricsSegment, SLOTS_PER_SEGMENT } from "../../src/metrics/registry.ts";
import { makeTestMemory, VirtioTestDriver } from "../helpers/virtio-driver.ts";

const KINDS: QueueKind[] = ["split", "packed"];

function setup(
  kind: QueueKind,
  opts: { size?: number; features?: Partial<QueueFeatures>; shared?: boolean } = {},
): { mem: GuestMemory; drv: VirtioTestDriver; q: Virtqueue; metrics: MetricsSegment } {
  const mem = makeTestMemory({ shared: opts.shared });
  const drv = new VirtioTestDriver(mem, { kind, size: opts.size ?? 8, features: opts.features });
  const metrics = new MetricsSegment(new ArrayBuffer(SLOTS_PER_SEGMENT * 8), 0);
  const q = createVirtqueue(kind, mem, drv.config, drv.features, { metrics, name: "t" });
  return { mem, drv, q, metrics };
}

function bytes(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (seed * 31 + i * 7) & 0xff;
  return b;
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function mustPop(q: Virtqueue): DescriptorChain {
  const c = q.pop();
  assert.ok(c, "expected an available chain");
  return c;
}

/** The device's side of an echo: writes the readable bytes, transformed, into the writable part. */
function echo(mem: GuestMemory, q: Virtqueue, chain: DescriptorChain): number {
  const input = readChain(mem, chain);
  const out = input.slice(0, chain.writableLength).map((b) => b ^ 0xff);
  writeChain(mem, chain, out);
  q.pushUsed(chain, out.length);
  return out.length;
}

for (const kind of KINDS) {
  describe(`virtqueue round trips (${kind})`, () => {
    test("an empty queue pops null", () => {
      const { q } = setup(kind);
      assert.equal(q.kind, kind);
      assert.equal(q.size, 8);
      assert.equal(q.pop(), null);
      assert.equal(q.pop(), null);
    });

    test("a single readable segment arrives intact and comes back used with len 0", () => {
      const { mem, drv, q } = setup(kind);
      const payload = bytes(100, 1);
      const id = drv.addChain([payload], []);
      const c = mustPop(q);
      assert.equal(c.id, id);
      assert.equal(c.readable.length, 1);
      assert.equal(c.writable.length, 0);
      assert.equal(c.readableLength, 100);
      assert.equal(c.writableLength, 0);
      assert.equal(c.descriptorCount, 1);
      assert.deepEqual(readChain(mem, c), payload);
      assert.equal(q.pop(), null);
      assert.equal(q.inFlight, 1);
      q.pushUsed(c, 0);
      assert.equal(q.inFlight, 0);
      const used = drv.usedChains();
      assert.equal(used.length, 1);
      assert.equal(used[0]?.id, id);
      assert.equal(used[0]?.len, 0);
      assert.deepEqual(drv.usedChains(), []);
    });

    test("a single writable segment receives the device's bytes", () => {
      const { mem, drv, q } = setup(kind);
      const id = drv.addChain([], [64], { fill: 0xee });
      const c = mustPop(q);
      assert.equal(c.readableLength, 0);
      assert.equal(c.writableLength, 64);
      writeChain(mem, c, bytes(40, 9));
      q.pushUsed(c, 40);
      const [u] = drv.usedChains();
      assert.ok(u);
      assert.equal(u.id, id);
      assert.equal(u.len, 40);
      assert.deepEqual(u.written, bytes(40, 9));
      // Bytes past `written` are untouched.
      assert.deepEqual(u.data[0]?.subarray(40), new Uint8Array(24).fill(0xee));
      if (kind === "packed") assert.ok(u.flags & 2, "used descriptor carries VIRTQ_DESC_F_WRITE");
    });

    test("multi-segment chains keep segment order and boundaries", () => {
      const { mem, drv, q } = setup(kind);
      const parts = [bytes(3, 1), bytes(17, 2), bytes(1, 3)];
      const id = drv.addChain(parts, [5, 7, 20]);
      const c = mustPop(q);
      assert.equal(c.id, id);
      assert.deepEqual(
        c.readable.map((s) => s.len),
        [3, 17, 1],
      );
      assert.deepEqual(
        c.writable.map((s) => s.len),
        [5, 7, 20],
      );
      assert.equal(c.descriptorCount, 6);
      assert.equal(c.readableLength, 21);
      assert.equal(c.writableLength, 32);
      // Each readable segment holds its own bytes.
      c.readable.forEach((s, i) => {
        assert.deepEqual(mem.slice(s.addr, s.len), parts[i]);
      });
      // Reading across segment boundaries with the cursor.
      const r = new ChainReader(mem, c);
      assert.deepEqual(r.readExact(4), concat(parts).subarray(0, 4));
      assert.equal(r.skip(10), 10);
      assert.deepEqual(r.readExact(7), concat(parts).subarray(14, 21));
      assert.equal(r.remaining, 0);
      assert.throws(() => r.readExact(1), VirtqueueError);
      // Writing across segment boundaries.
      const w = new ChainWriter(mem, c);
      w.writeExact(bytes(10, 5));
      assert.equal(w.write(bytes(30, 6)), 22);
      assert.equal(w.position, 32);
      q.pushUsed(c, w.position);
      const [u] = drv.usedChains();
      assert.ok(u);
      assert.deepEqual(u.written, concat([bytes(10, 5), bytes(22, 6)]));
      assert.deepEqual(
        u.data.map((d) => d.length),
        [5, 7, 20],
      );
    });

    test("indirect chains are walked through their table and occupy one slot", () => {
      const { mem, drv, q } = setup(kind, { features: { indirect: true } });
      const parts = [bytes(8, 1), bytes(9, 2)];
      const id = drv.addChain(parts, [4, 12], { indirect: true });
      const c = mustPop(q);
      assert.equal(c.id, id);
      assert.equal(c.descriptorCount, 1);
      assert.deepEqual(
        c.readable.map((s) => s.len),
        [8, 9],
      );
      assert.deepEqual(
        c.writable.map((s) => s.len),
        [4, 12],
      );
      assert.deepEqual(readChain(mem, c), concat(parts));
      assert.equal(echo(mem, q, c), 16);
      const [u] = drv.usedChains();
      assert.deepEqual(
        u?.written,
        concat(parts)
          .subarray(0, 16)
          .map((b) => b ^ 0xff),
      );
    });

    test("zero-length elements are accepted, counted, and not returned as segments", () => {
      const { drv, q } = setup(kind);
      drv.addChain([new Uint8Array(0), bytes(4, 1)], [0, 8]);
      const c = mustPop(q);
      assert.equal(c.descriptorCount, 4);
      assert.deepEqual(
        c.readable.map((s) => s.len),
        [4],
      );
      assert.deepEqual(
        c.writable.map((s) => s.len),
        [8],
      );
    });

    test("the chain is a snapshot: later guest writes to the descriptors do not change it", () => {
      const { drv, q } = setup(kind);
      drv.addChain([bytes(10, 1)], [10]);
      const c = mustPop(q);
      const before = JSON.stringify(c);
      for (let i = 0; i < drv.size; i++)
        drv.writeDesc(i, { addr: 0xdead0000, len: 0xffffffff, flags: 0xffff });
      assert.equal(JSON.stringify(c), before);
    });

    test("wrap-around: 4x the queue size of mixed-length chains in batches", () => {
      const size = 8;
      const { mem, drv, q } = setup(kind, { size, features: { indirect: true } });
      let seq = 0;
      let completed = 0;
      const wraps = new Set<number>();
      const expected = new Map<number, Uint8Array>();
      for (let round = 0; completed < 4 * size + 3; round++) {
        assert.ok(round < 100, "no progress");
        // Fill as much as fits with chains of 1-3 descriptors (3 never divides the ring evenly).
        for (;;) {
          const nreadable = 1 + (seq % 2);
          const descs = nreadable + 1;
          const indirect = seq % 5 === 4;
          if (drv.freeSlots < (indirect ? 1 : descs)) break;
          const parts = Array.from({ length: nreadable }, (_, i) => bytes(5 + ((seq + i) % 13), seq * 3 + i));
          const id = drv.addChain(parts, [64], { indirect });
          expected.set(
            id,
            concat(parts).map((b) => b ^ 0xff),
          );
          seq++;
        }
        if (kind === "packed") wraps.add(drv.availPosition.wrap);
        for (let c = q.pop(); c; c = q.pop()) echo(mem, q, c);
        for (const u of drv.usedChains()) {
          assert.deepEqual(u.written, expected.get(u.id), `buffer id ${u.id}`);
          completed++;
        }
      }
      assert.equal(drv.outstandingCount, 0);
      assert.equal(q.inFlight, 0);
      if (kind === "packed") assert.deepEqual([...wraps].sort(), [0, 1], "driver wrap counter flipped");
    });

    test("more than 3x size single buffers, one at a time (used idx and wrap counters advance)", () => {
      const size = 4;
      const { mem, drv, q } = setup(kind, { size });
      for (let i = 0; i < 3 * size + 5; i++) {
        const id = drv.addChain([bytes(4, i)], [4]);
        const c = mustPop(q);
        assert.equal(c.id, id);
        assert.equal(q.pop(), null);
        echo(mem, q, c);
        const [u] = drv.usedChains();
        assert.equal(u?.id, id);
        assert.deepEqual(
          u?.written,
          bytes(4, i).map((b) => b ^ 0xff),
        );
      }
    });

    test("out-of-order completion returns each buffer to the right owner", () => {
      const size = 8;
      const { mem, drv, q } = setup(kind, { size });
      for (let round = 0; round < 6; round++) {
        const want = new Map<number, Uint8Array>();
        // Chains of 1 or 2 descriptors so packed slot skipping is exercised.
        while (drv.freeSlots >= 2) {
          const parts = [bytes(6, round * 10 + want.size)];
          const writable = want.size % 2 ? [3, 3] : [6];
          const id = drv.addChain(parts, writable);
          want.set(id, parts[0]?.map((b) => b ^ 0xff) as Uint8Array);
        }
        const chains: DescriptorChain[] = [];
        for (let c = q.pop(); c; c = q.pop()) chains.push(c);
        assert.equal(chains.length, want.size);
        // Complete in a shuffled order: reverse, then odds before evens.
        const order = [...chains].reverse().sort((a, b) => (a.id % 2) - (b.id % 2));
        for (const c of order) echo(mem, q, c);
        const used = drv.usedChains();
        assert.deepEqual(
          used.map((u) => u.id),
          order.map((c) => c.id),
          "used in completion order",
        );
        for (const u of used) assert.deepEqual(u.written, want.get(u.id));
      }
    });

    test("chains pushed out of order while others stay in flight", () => {
      const { mem, drv, q } = setup(kind, { size: 4 });
      const ids = [drv.addChain([bytes(2, 1)], [2]), drv.addChain([bytes(2, 2)], [2])];
      const a = mustPop(q);
      const b = mustPop(q);
      assert.deepEqual([a.id, b.id], ids);
      echo(mem, q, b);
      assert.deepEqual(
        drv.usedChains().map((u) => u.id),
        [ids[1]],
      );
      // Reuse the freed space while `a` is still in flight.
      const c3 = drv.addChain([bytes(2, 3)], [2]);
      const c = mustPop(q);
      assert.equal(c.id, c3);
      echo(mem, q, c);
      echo(mem, q, a);
      assert.deepEqual(
        drv.usedChains().map((u) => u.id),
        [c3, ids[0]],
      );
    });

    test("batched publication: nothing is visible before publish()", () => {
      const { drv, q } = setup(kind);
      const a = drv.addChain([bytes(3, 1)], [], { publish: false });
      const b = drv.addChain([bytes(3, 2)], [], { publish: false });
      assert.equal(q.pop(), null);
      drv.publish();
      assert.equal(mustPop(q).id, a);
      assert.equal(mustPop(q).id, b);
      assert.equal(q.pop(), null);
    });

    test("works over a SharedArrayBuffer (Atomics path)", () => {
      const { mem, drv, q } = setup(kind, { shared: true, size: 4 });
      for (let i = 0; i < 20; i++) {
        const id = drv.addChain([bytes(9, i)], [9]);
        const c = mustPop(q);
        assert.equal(c.id, id);
        echo(mem, q, c);
        assert.deepEqual(
          drv.usedChains()[0]?.written,
          bytes(9, i).map((b) => b ^ 0xff),
        );
      }
    });

    test("works over a SharedArrayBuffer whose guest-physical base is odd (ring fields at odd offsets)", () => {
      // A 2-aligned ring field is at an odd offset of the buffer: a 16-bit Atomics access, which can only address
      // even offsets, would reach the wrong bytes, so these go through the DataView.
      const mem = makeTestMemory({ shared: true, base: 0x10001 });
      const drv = new VirtioTestDriver(mem, { kind, size: 4, features: { eventIdx: true } });
      const q = createVirtqueue(kind, mem, drv.config, drv.features);
      for (let i = 0; i < 10; i++) {
        const id = drv.addChain([bytes(5, i)], [5]);
        assert.equal(drv.kickNeeded(), true, "the device asked for a kick at this entry (EVENT_IDX)");
        const c = mustPop(q);
        assert.equal(c.id, id);
        assert.deepEqual(readChain(mem, c), bytes(5, i));
        echo(mem, q, c);
        const [u] = drv.usedChains();
        assert.equal(u?.id, id);
        assert.deepEqual(
          u?.written,
          bytes(5, i).map((b) => b ^ 0xff),
        );
      }
      assert.equal(q.pop(), null);
    });

    test("pushUsed refuses bad lengths, double use and foreign chains", () => {
      const { drv, q, metrics } = setup(kind);
      drv.addChain([bytes(4, 1)], [10]);
      const c = mustPop(q);
      const usage = (e: unknown) => e instanceof VirtqueueError && e.code === "VIREO_VIRTQUEUE_USAGE";
      assert.throws(() => q.pushUsed(c, 11), usage);
      assert.throws(() => q.pushUsed(c, -1), usage);
      assert.throws(() => q.pushUsed(c, 1.5), usage);
      assert.throws(() => q.pushUsed({ ...c }, 0), usage, "a copy is not the popped chain");
      const other = setup(kind);
      other.drv.addChain([bytes(4, 1)], [10]);
      const foreign = mustPop(other.q);
      assert.throws(() => q.pushUsed(foreign, 0), usage);
      q.pushUsed(c, 10);
      assert.throws(() => q.pushUsed(c, 10), usage, "used twice");
      assert.equal(metrics.counter("virtq.t.errors").value, 6);
      assert.equal(drv.usedChains().length, 1);
    });

    test("writeChain and readChain bounds", () => {
      const { mem, drv, q } = setup(kind);
      drv.addChain([bytes(6, 1)], [4, 4]);
      const c = mustPop(q);
      assert.throws(() => writeChain(mem, c, new Uint8Array(9)), VirtqueueError);
      assert.throws(() => writeChain(mem, c, new Uint8Array(2), 7), VirtqueueError);
      assert.equal(writeChain(mem, c, Uint8Array.of(1, 2, 3), 3), 3);
      const small = new Uint8Array(4);
      assert.deepEqual(readChain(mem, c, small), bytes(6, 1).subarray(0, 4));
      assert.deepEqual(readChain(mem, c, new Uint8Array(10)), bytes(6, 1));
      q.pushUsed(c, 6);
      assert.deepEqual(drv.usedChains()[0]?.written, Uint8Array.of(0, 0, 0, 1, 2, 3));
    });

    test("metrics count popped and used", () => {
      const { mem, drv, q, metrics } = setup(kind);
      for (let i = 0; i < 3; i++) drv.addChain([bytes(1, i)], [1]);
      for (let c = q.pop(); c; c = q.pop()) echo(mem, q, c);
      assert.equal(metrics.counter("virtq.t.popped").value, 3);
      assert.equal(metrics.counter("virtq.t.used").value, 3);
      assert.equal(metrics.counter("virtq.t.errors").value, 0);
    });
  });
}
