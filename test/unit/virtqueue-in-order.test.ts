/**
 * VIRTIO_F_IN_ORDER on split rings (virtio 1.2, 2.7.9 "In-order use of descriptors"): a device that uses buffers in
 * the order they were made available may answer a batch of them with one used element, at the offset of the
 * batch's first, holding the id of its last, and move the used idx by the batch's size. vireo batches only
 * device-readable buffers (a skipped buffer counts as wholly used, and a receive buffer's length matters), and a
 * batch ends when the idx is published. Checked on the ring's raw memory and through the test driver, which reads
 * batches as 2.7.9 tells a driver to; and for virtio-net, which offers the bit, through its transmit and receive.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { featureBit, VIRTIO_F } from "../../src/devices/virtio/constants.ts";
import { VirtioNet, type VirtioNetBackend } from "../../src/devices/virtio/net.ts";
import { createVirtqueue, SingleBuffers } from "../../src/devices/virtio/queue/index.ts";
import type { Receiver } from "../../src/net/backend.ts";
import { makeTestMemory, makeVirtioPciRig, VirtioTestDriver } from "../helpers/virtio-driver.ts";

const POISON = 0xdeadbeef;

function setup(inOrder: boolean, size = 16) {
  const mem = makeTestMemory({ size: 1 << 20, base: 0x10000, shared: true });
  const drv = new VirtioTestDriver(mem, {
    kind: "split",
    size,
    features: { indirect: true, eventIdx: false, inOrder },
  });
  const q = createVirtqueue("split", mem, drv.config, drv.features);
  const usedElem = (slot: number) => drv.layout.deviceAddr + 4 + 8 * slot;
  // Every used element starts as poison, so that an element the device skipped shows.
  for (let i = 0; i < size; i++) {
    mem.writeU32(usedElem(i), POISON);
    mem.writeU32(usedElem(i) + 4, POISON);
  }
  const elem = (slot: number) => ({ id: mem.readU32(usedElem(slot)), len: mem.readU32(usedElem(slot) + 4) });
  const usedIdx = () => mem.readU16(drv.layout.deviceAddr + 2);
  return { mem, drv, q, elem, usedIdx };
}

const bytes = (n: number, seed: number) => Uint8Array.from({ length: n }, (_, i) => (seed + i) & 0xff);

describe("split queue with IN_ORDER", () => {
  test("a run of device-readable buffers is one used element: at the run's first slot, the last buffer's id", () => {
    const { drv, q, elem, usedIdx } = setup(true);
    const heads = [0, 1, 2, 3, 4].map((i) => drv.addChain([bytes(30, i)], []));
    // Three as chain objects, two in the flat form: both kinds join one batch.
    const chains = [q.pop(), q.pop(), q.pop()];
    const flat = new SingleBuffers(4);
    assert.equal(q.popSingles(flat, 4, false), 2);
    for (const c of chains) q.pushUsed(c ?? assert.fail("popped"), 0, false);
    q.pushUsedSingle(flat.ids[0] as number, 0, false);
    q.pushUsedSingle(flat.ids[1] as number, 0, false);
    assert.equal(usedIdx(), 0, "nothing published before publishUsed");
    q.publishUsed();
    assert.equal(usedIdx(), 5);
    assert.deepEqual(elem(0), { id: heads[4], len: 0 });
    for (let s = 1; s < 5; s++) assert.deepEqual(elem(s), { id: POISON, len: POISON }, `slot ${s} skipped`);
    // The driver reads the batch as 2.7.9 says: all five used, in order, none written.
    assert.deepEqual(
      drv.usedChains().map((u) => [u.id, u.len]),
      heads.map((h) => [h, 0]),
    );
  });

  test("device-writable buffers get an element each, with their lengths; a readable run around them is cut", () => {
    const { drv, q, elem, usedIdx } = setup(true);
    const r1 = drv.addChain([bytes(10, 1)], []);
    const r2 = drv.addChain([bytes(10, 2)], []);
    const w1 = drv.addChain([], [64]);
    const r3 = drv.addChain([bytes(10, 3)], []);
    const w2 = drv.addChain([], [64]);
    const w3 = drv.addChain([], [64]);
    const popped = [0, 1, 2, 3, 4, 5].map(() => q.pop() ?? assert.fail("popped"));
    const written = [0, 0, 40, 0, 64, 12];
    popped.forEach((c, i) => {
      q.pushUsed(c, written[i] as number, false);
    });
    q.publishUsed();
    assert.equal(usedIdx(), 6);
    assert.deepEqual(
      [0, 1, 2, 3, 4, 5].map((s) => elem(s)),
      [
        { id: r2, len: 0 }, // r1 and r2: one batch
        { id: POISON, len: POISON },
        { id: w1, len: 40 },
        { id: r3, len: 0 }, // a batch of one
        { id: w2, len: 64 }, // a full buffer is still written: its length is read by drivers
        { id: w3, len: 12 },
      ],
    );
    assert.deepEqual(
      drv.usedChains().map((u) => [u.id, u.len]),
      [
        [r1, 0],
        [r2, 0],
        [w1, 40],
        [r3, 0],
        [w2, 64],
        [w3, 12],
      ],
    );
  });

  test("a batch ends where the idx is published: each published part has its own element", () => {
    const { drv, q, elem, usedIdx } = setup(true);
    const heads = [0, 1, 2, 3, 4].map((i) => drv.addChain([bytes(8, i)], []));
    const popped = heads.map(() => q.pop() ?? assert.fail("popped"));
    q.pushUsed(popped[0] ?? assert.fail(), 0, false);
    q.pushUsed(popped[1] ?? assert.fail(), 0, true); // published here
    assert.equal(usedIdx(), 2);
    assert.deepEqual(elem(0), { id: heads[1], len: 0 });
    assert.deepEqual(
      drv.usedChains().map((u) => u.id),
      heads.slice(0, 2),
    );
    q.pushUsed(popped[2] ?? assert.fail(), 0, false);
    q.pushUsed(popped[3] ?? assert.fail(), 0, false);
    q.pushUsed(popped[4] ?? assert.fail(), 0, false);
    // shouldNotifyDriver publishes too (it must decide on what the driver can see).
    q.shouldNotifyDriver();
    assert.equal(usedIdx(), 5);
    assert.deepEqual(elem(2), { id: heads[4], len: 0 });
    assert.deepEqual(elem(3), { id: POISON, len: POISON });
    assert.deepEqual(
      drv.usedChains().map((u) => u.id),
      heads.slice(2),
    );
  });

  test("without IN_ORDER every used element is written", () => {
    const { drv, q, elem } = setup(false);
    const heads = [0, 1, 2].map((i) => drv.addChain([bytes(8, i)], []));
    for (const _ of heads) q.pushUsed(q.pop() ?? assert.fail("popped"), 0, false);
    q.publishUsed();
    assert.deepEqual(
      [0, 1, 2].map((s) => elem(s)),
      heads.map((id) => ({ id, len: 0 })),
    );
  });

  test("batches across the ring's end land at the right slots", () => {
    const { drv, q, elem, usedIdx } = setup(true, 4);
    for (let round = 0; round < 3; round++) {
      const heads = [0, 1, 2].map((i) => drv.addChain([bytes(8, round * 3 + i)], []));
      for (const _ of heads) q.pushUsed(q.pop() ?? assert.fail("popped"), 0, false);
      q.publishUsed();
      assert.equal(usedIdx(), 3 * (round + 1));
      assert.deepEqual(elem((3 * round) % 4), { id: heads[2], len: 0 }, `round ${round}`);
      assert.deepEqual(
        drv.usedChains().map((u) => u.id),
        heads,
      );
    }
  });
});

/** A backend that keeps what the device transmits and lets the test hand frames to its receiver. */
class Loop implements VirtioNetBackend {
  readonly name = "loop";
  sent: Uint8Array[] = [];
  receiver: Receiver | null = null;
  send(frame: Uint8Array): boolean {
    this.sent.push(Uint8Array.from(frame));
    return true;
  }
  attach(r: Receiver): void {
    this.receiver = r;
  }
  rxReady(): void {}
  close(): void {}
}

describe("virtio-net with IN_ORDER", () => {
  function netRig() {
    const backend = new Loop();
    const model = new VirtioNet({ backend, name: "n0", queueSize: 16 });
    assert.ok((model.features & featureBit(VIRTIO_F.IN_ORDER)) !== 0n, "virtio-net offers IN_ORDER");
    const rig = makeVirtioPciRig(model, { mem: makeTestMemory({ size: 4 << 20, shared: true }) });
    // Split rings (2.7.9 is the split ring's batching; a packed ring's used descriptors are written one each).
    assert.ok(rig.drv.negotiate((o) => o & ~featureBit(VIRTIO_F.RING_PACKED)));
    assert.ok((rig.drv.negotiated & featureBit(VIRTIO_F.IN_ORDER)) !== 0n);
    const rx = rig.drv.setupQueue(0, { size: 16 });
    const tx = rig.drv.setupQueue(1, { size: 16 });
    rig.drv.driverOk();
    return { backend, rig, rx, tx };
  }

  test("a transmit burst is answered with one used element; every frame is sent, in order", () => {
    const { backend, rig, tx } = netRig();
    const frames = [0, 1, 2, 3, 4, 5].map((i) => {
      const f = bytes(12 + 60, i * 7);
      f.fill(0, 0, 12); // virtio_net_hdr: no offloads
      return f;
    });
    const heads = frames.map((f) => tx.addChain([f], []));
    const mem = rig.mem;
    const elemAt = (slot: number) => tx.layout.deviceAddr + 4 + 8 * slot;
    for (let s = 0; s < 16; s++) mem.writeU32(elemAt(s), POISON);
    rig.drv.kick(1);
    assert.deepEqual(
      backend.sent,
      frames.map((f) => f.subarray(12)),
    );
    assert.equal(mem.readU16(tx.layout.deviceAddr + 2), 6);
    assert.equal(mem.readU32(elemAt(0)), heads[5], "one element: the last frame's head");
    for (let s = 1; s < 6; s++) assert.equal(mem.readU32(elemAt(s)), POISON, `slot ${s} skipped`);
    assert.deepEqual(
      tx.usedChains().map((u) => u.id),
      heads,
    );
  });

  test("receive uses buffers in ring order, one element each with its length, also across merged buffers", () => {
    const { backend, rx } = netRig();
    const bufs = [0, 1, 2, 3, 4].map(() => rx.addChain([], [128]));
    const receiver = backend.receiver ?? assert.fail("attached");
    const small = bytes(60, 3);
    const big = bytes(300, 9); // 312 bytes with the header: three 128-byte buffers
    assert.equal(receiver(small, true), true);
    assert.equal(receiver(big, false), true);
    const used = rx.usedChains();
    // The test driver reads IN_ORDER batches: a buffer used out of order, or lengths lost to a batch, would show.
    assert.deepEqual(
      used.map((u) => [u.id, u.len]),
      [
        [bufs[0], 72],
        [bufs[1], 128],
        [bufs[2], 128],
        [bufs[3], 56],
      ],
    );
    assert.deepEqual(used[0]?.written.subarray(12), small);
  });
});
