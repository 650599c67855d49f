/**
 * Virtqueue.popSingles, pushUsedSingle and unpopSingles: the flat form of chains of one direct descriptor that
 * virtio-net's transmit and receive paths take (no chain object per frame). Checked against pop(): the same
 * heads, buffers and order; a chain of any other shape, or one pop() refuses, ends a batch untaken and pop()
 * then takes (or refuses) it; the used ring gets what pushUsed would write; giving back is last first and only
 * for chains still in flight; a packed ring and memory the queue cannot read as words take the chain path.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  createVirtqueue,
  SingleBuffers,
  type Virtqueue,
  VirtqueueError,
} from "../../src/devices/virtio/queue/index.ts";
import {
  VIRTQ_DESC_F_INDIRECT as INDIRECT,
  VIRTQ_DESC_F_NEXT as NEXT,
  VIRTQ_DESC_F_WRITE as WRITE,
} from "../../src/devices/virtio/queue/types.ts";
import { DevicePageLog, PAGE_SIZE } from "../../src/memory/device-page-log.ts";
import { makeTestMemory, VirtioTestDriver } from "../helpers/virtio-driver.ts";

function setup(size = 16, opts: { shared?: boolean; eventIdx?: boolean } = {}) {
  const mem = makeTestMemory({ size: 1 << 20, base: 0x10000, shared: opts.shared ?? true });
  const drv = new VirtioTestDriver(mem, {
    kind: "split",
    size,
    features: { indirect: true, eventIdx: opts.eventIdx ?? false },
  });
  const q = createVirtqueue("split", mem, drv.config, drv.features);
  return { mem, drv, q };
}

function frame(len: number, seed: number): Uint8Array {
  return Uint8Array.from({ length: len }, (_, i) => (seed * 31 + i) & 0xff);
}

const usage = (e: unknown) => e instanceof VirtqueueError && e.code === "VIREO_VIRTQUEUE_USAGE";
const malformed = (e: unknown) => e instanceof VirtqueueError && e.code === "VIREO_VIRTQUEUE_MALFORMED";

describe("split queue: popSingles", () => {
  test("takes one-descriptor chains in ring order, with pop()'s ids and buffers, at offsets in the memory's bytes", () => {
    const { mem, drv, q } = setup();
    const heads = [0, 1, 2, 3, 4].map((i) => drv.addChain([frame(20 + i, i)], []));
    const out = new SingleBuffers(8);
    assert.equal(q.popSingles(out, 3, false), 3);
    for (let k = 0; k < 3; k++) {
      assert.equal(out.ids[k], heads[k]);
      assert.equal(out.lens[k], 20 + k);
      const off = out.offs[k] as number;
      assert.deepEqual(mem.bytes.subarray(off, off + 20 + k), frame(20 + k, k));
    }
    assert.equal(q.inFlight, 3);
    // The rest: at most the capacity, then nothing.
    assert.equal(q.popSingles(out, 8, false), 2);
    assert.equal(out.ids[1], heads[4]);
    assert.equal(q.popSingles(out, 8, false), 0);
    assert.equal(q.pop(), null);
  });

  test("stops before a chain of another shape or direction, which pop() then takes", () => {
    const { drv, q } = setup();
    const a = drv.addChain([frame(10, 1)], []);
    const multi = drv.addChain([frame(4, 2), frame(6, 3)], []);
    const b = drv.addChain([frame(10, 4)], []);
    const ind = drv.addChain([frame(8, 5)], [], { indirect: true });
    const c = drv.addChain([frame(10, 6)], []);
    const w = drv.addChain([], [64]);
    const mixed = drv.addChain([frame(12, 7)], [32]);
    const out = new SingleBuffers(8);
    assert.equal(q.popSingles(out, 8, false), 1);
    assert.equal(out.ids[0], a);
    assert.equal(q.popSingles(out, 8, false), 0, "a two-descriptor chain is left for pop()");
    assert.equal(q.pop()?.id, multi);
    assert.equal(q.popSingles(out, 8, false), 1);
    assert.equal(out.ids[0], b);
    assert.equal(q.popSingles(out, 8, false), 0, "an indirect table is left for pop()");
    assert.equal(q.pop()?.id, ind);
    assert.equal(q.popSingles(out, 8, false), 1);
    assert.equal(out.ids[0], c);
    assert.equal(q.popSingles(out, 8, false), 0, "a writable buffer is not taken as a readable one");
    assert.equal(q.popSingles(out, 8, true), 1);
    assert.equal(out.ids[0], w);
    assert.equal(out.lens[0], 64);
    assert.equal(q.popSingles(out, 8, true), 0, "readable + writable is a chain");
    assert.equal(q.pop()?.id, mixed);
  });

  test("a head out of range, a buffer outside RAM, a zero length or an address above 2^53 are left for pop(), which refuses them", () => {
    const cases: Array<[string, (drv: VirtioTestDriver) => void, boolean]> = [
      ["head out of range", (drv) => drv.pushAvail(16), true],
      [
        "buffer outside RAM",
        (drv) => {
          drv.writeDesc(5, { addr: 0x10000 + (1 << 20) - 8, len: 16, flags: 0 });
          drv.pushAvail(5);
        },
        true,
      ],
      [
        "address above 2^53",
        (drv) => {
          drv.writeDesc(5, { addr: 1n << 60n, len: 16, flags: 0 });
          drv.pushAvail(5);
        },
        true,
      ],
      [
        "zero length (pop() takes it: the specification allows it)",
        (drv) => {
          drv.writeDesc(5, { addr: 0x20000, len: 0, flags: 0 });
          drv.pushAvail(5);
        },
        false,
      ],
    ];
    for (const [what, make, refused] of cases) {
      const { drv, q } = setup();
      const first = drv.addChain([frame(10, 1)], []);
      make(drv);
      const out = new SingleBuffers(8);
      assert.equal(q.popSingles(out, 8, false), 1, what);
      assert.equal(out.ids[0], first);
      assert.equal(q.popSingles(out, 8, false), 0, what);
      if (refused) assert.throws(() => q.pop(), malformed, what);
      else assert.equal(q.pop()?.readableLength, 0, what);
    }
  });

  test("a head made available again while in flight ends the batch", () => {
    const { drv, q } = setup();
    const a = drv.addChain([frame(10, 1)], []);
    drv.pushAvail(a);
    const out = new SingleBuffers(8);
    assert.equal(q.popSingles(out, 8, false), 1);
    assert.equal(q.popSingles(out, 8, false), 0);
    assert.throws(() => q.pop(), malformed);
  });

  test("a malformed avail idx throws, as pop() does", () => {
    const { drv, q } = setup();
    drv.setAvailIdx(100);
    assert.throws(() => q.popSingles(new SingleBuffers(8), 8, false), malformed);
  });

  test("pushUsedSingle writes the used element pushUsed would; written is checked against the buffer", () => {
    const { drv, q } = setup();
    const r = drv.addChain([frame(10, 1)], []);
    const w = drv.addChain([], [100]);
    const out = new SingleBuffers(8);
    assert.equal(q.popSingles(out, 8, false), 1);
    assert.throws(() => q.pushUsedSingle(r, 1), usage, "a readable buffer: nothing written");
    q.pushUsedSingle(r, 0);
    assert.throws(() => q.pushUsedSingle(r, 0), usage, "used twice");
    assert.equal(q.popSingles(out, 8, true), 1);
    assert.throws(() => q.pushUsedSingle(w, 101), usage);
    assert.throws(() => q.pushUsedSingle(w, 1.5), usage);
    q.pushUsedSingle(w, 60, false);
    assert.deepEqual(
      drv.usedChains().map((u) => [u.id, u.len]),
      [[r, 0]],
      "published only at publishUsed",
    );
    q.publishUsed();
    assert.deepEqual(
      drv.usedChains().map((u) => [u.id, u.len]),
      [[w, 60]],
    );
    assert.equal(q.inFlight, 0);
  });

  test("pushUsedSingle refuses a chain pop() took, and pushUsed refuses one popSingles took", () => {
    const { drv, q } = setup();
    drv.addChain([frame(10, 1)], [8]);
    const single = drv.addChain([frame(10, 2)], []);
    const c = q.pop();
    assert.ok(c);
    assert.throws(() => q.pushUsedSingle(c.id, 0), usage);
    const out = new SingleBuffers(8);
    assert.equal(q.popSingles(out, 8, false), 1);
    assert.throws(() => q.pushUsed({ ...c, id: single }, 0), usage);
    q.pushUsed(c, 8);
    q.pushUsedSingle(single, 0);
    assert.equal(q.inFlight, 0);
  });

  test("unpopSingles gives back the last ones popped, last first; they pop again", () => {
    const { drv, q } = setup();
    const heads = [0, 1, 2, 3].map((i) => drv.addChain([], [32 + i]));
    const out = new SingleBuffers(8);
    assert.equal(q.popSingles(out, 8, true), 4);
    q.pushUsedSingle(heads[0] as number, 0);
    q.unpopSingles(out, 2, 4);
    assert.equal(q.inFlight, 1);
    assert.equal(q.popSingles(out, 8, true), 2);
    assert.deepEqual([out.ids[0], out.ids[1]], [heads[2], heads[3]]);
    // heads[1] was popped before the two taken again: not the last popped.
    const early = new SingleBuffers(1);
    early.ids[0] = heads[1] as number;
    assert.throws(() => q.unpopSingles(early, 0, 1), usage);
    // A used one cannot be given back.
    q.pushUsedSingle(heads[3] as number, 0);
    assert.throws(() => q.unpopSingles(out, 1, 2), usage);
  });

  test("after a chain pop(), singles popped before it are not the last popped", () => {
    const { drv, q } = setup();
    drv.addChain([frame(10, 1)], []);
    drv.addChain([frame(4, 2), frame(6, 3)], []);
    const out = new SingleBuffers(8);
    assert.equal(q.popSingles(out, 8, false), 1);
    const c = q.pop();
    assert.ok(c);
    assert.throws(() => q.unpopSingles(out, 0, 1), usage);
    q.unpop(c);
    q.unpopSingles(out, 0, 1);
    assert.equal(q.inFlight, 0);
  });

  test("with EVENT_IDX, avail_event moves past the batch", () => {
    const { drv, q, mem } = setup(16, { eventIdx: true });
    for (let i = 0; i < 5; i++) drv.addChain([frame(10, i)], []);
    const out = new SingleBuffers(8);
    q.setDriverNotifications(true);
    assert.equal(q.popSingles(out, 3, false), 3);
    const availEvent = mem.readU16(drv.config.deviceAddr + 4 + 8 * 16);
    assert.equal(availEvent, 3);
  });

  test("pushUsedSingle marks a writable buffer's pages in the device page log", () => {
    const { mem, drv, q } = setup();
    const log = new DevicePageLog(DevicePageLog.create(mem.size));
    mem.pageLog = log;
    const id = drv.addChain([], [3 * PAGE_SIZE]);
    const out = new SingleBuffers(1);
    assert.equal(q.popSingles(out, 1, true), 1);
    log.start();
    log.take(() => {});
    q.pushUsedSingle(id, 0);
    const got: number[] = [];
    log.take((p) => got.push(p));
    const off = out.offs[0] as number;
    const want: number[] = [];
    for (let p = Math.floor(off / PAGE_SIZE); p <= Math.floor((off + 3 * PAGE_SIZE - 1) / PAGE_SIZE); p++)
      want.push(p);
    for (const p of want) assert.ok(got.includes(p), `page ${p} marked`);
  });

  test("memory that is not a SharedArrayBuffer, and packed rings, pop no singles (the chain path serves them)", () => {
    const { drv, q } = setup(16, { shared: false });
    drv.addChain([frame(10, 1)], []);
    assert.equal(q.popSingles(new SingleBuffers(4), 4, false), 0);
    assert.equal(q.pop()?.readableLength, 10);
    const mem = makeTestMemory({ size: 1 << 20, shared: true });
    const pd = new VirtioTestDriver(mem, { kind: "packed", size: 16 });
    const pq: Virtqueue = createVirtqueue("packed", mem, pd.config, pd.features);
    pd.addChain([frame(10, 1)], []);
    assert.equal(pq.popSingles(new SingleBuffers(4), 4, false), 0);
    assert.equal(pq.pop()?.readableLength, 10);
  });

  test("flags other than NEXT, INDIRECT and WRITE are ignored, as pop() ignores them", () => {
    const { drv, q } = setup();
    drv.writeDesc(3, { addr: 0x30000, len: 40, flags: 0x10 });
    drv.pushAvail(3);
    drv.writeDesc(4, { addr: 0x30100, len: 40, flags: NEXT, next: 5 });
    drv.writeDesc(5, { addr: 0x30200, len: 40, flags: 0 });
    drv.pushAvail(4);
    drv.writeDesc(6, { addr: 0x30300, len: 32, flags: INDIRECT | WRITE });
    const out = new SingleBuffers(4);
    assert.equal(q.popSingles(out, 4, false), 1);
    assert.equal(out.ids[0], 3);
    assert.equal(q.popSingles(out, 4, false), 0);
  });
});
