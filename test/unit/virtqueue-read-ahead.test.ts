/**
 * What a transmit queue's read-ahead (ReadAhead, DrainOptions.readAhead) and a split queue's cached avail idx may
 * and may not do: the read-ahead reads the first byte of each cache line, and the last byte, of the start of
 * popped chains' first readable buffers and changes nothing; a buffer a front-end's memory does not hold is refused
 * by pop, so nothing reads or claims it; a split queue reads avail idx again once it has taken the entries it saw,
 * including entries another queue object over the same state words took meanwhile.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { VirtioNet, type VirtioNetBackend } from "../../src/devices/virtio/net.ts";
import {
  createVirtqueue,
  type DescriptorChain,
  QUEUE_STATE_WORDS,
  type QueueKind,
  ReadAhead,
  SplitQueue,
  VirtqueueError,
} from "../../src/devices/virtio/queue/index.ts";
import type { Receiver } from "../../src/net/backend.ts";
import { RegionGuestMemory } from "../../src/vhost-user/memory.ts";
import { makeTestMemory, makeVirtioPciRig, VirtioTestDriver } from "../helpers/virtio-driver.ts";

const KINDS: QueueKind[] = ["split", "packed"];
const HDR = 12;
const F_PACKED = 1n << 34n;

/** A buffer of `n` bytes whose first byte is `first` and last byte `last` (the rest 0xee). */
function buffer(n: number, first: number, last: number): Uint8Array {
  const b = new Uint8Array(n).fill(0xee);
  b[0] = first;
  b[n - 1] = last;
  return b;
}

describe("ReadAhead: the start of popped chains' first readable buffers", () => {
  test("reads the first and last byte of each chain's first readable buffer; chains without one are skipped", () => {
    const mem = makeTestMemory({ size: 1 << 20, shared: true });
    const drv = new VirtioTestDriver(mem, { kind: "split", size: 16 });
    const q = createVirtqueue("split", mem, drv.config, drv.features);
    for (const i of [1, 2, 3]) drv.addChain([buffer(10 + i, i, 10 * i), buffer(4, 99, 99)], []);
    drv.addChain([], [64]);
    const out: DescriptorChain[] = [];
    assert.equal(q.popBatch(out, 8), 4);
    const ra = new ReadAhead(2);
    // (1 + 10) + (2 + 20) + (3 + 30): the second buffers and the writable-only chain are not read.
    assert.equal(ra.touch(mem, out, 4, 4096), 66);
    assert.equal(ra.touch(mem, out, 2, 4096), 33, "only the first n chains");
    assert.equal(q.inFlight, 4, "the queue is not touched");
  });

  test("reads one byte per cache line of the first span bytes: 0, 64, 128 and 129 of [0, 130)", () => {
    const mem = makeTestMemory({ size: 1 << 20, shared: true });
    const drv = new VirtioTestDriver(mem, { kind: "packed", size: 8 });
    const q = createVirtqueue("packed", mem, drv.config, drv.features);
    const b = new Uint8Array(300);
    for (const [at, v] of [
      [0, 1],
      [63, 100],
      [64, 2],
      [127, 100],
      [128, 4],
      [129, 8],
      [130, 100],
      [299, 100],
    ] as const)
      b[at] = v;
    drv.addChain([b], []);
    const c = q.pop() as DescriptorChain;
    const ra = new ReadAhead(1);
    assert.equal(ra.touch(mem, [c], 1, 130), 1 + 2 + 4 + 8);
    assert.equal(ra.touch(mem, [c], 1, 12), 1 + 0, "the header alone: bytes 0 and 11");
  });
});

describe("a vhost-user front-end's memory: a gap between regions is not guest RAM", () => {
  for (const kind of KINDS) {
    test(`${kind}: a buffer in the gap is refused by pop and popBatch, so nothing reads or claims it`, () => {
      const base = 0x10000;
      const sab = new SharedArrayBuffer(0x30000);
      const regions = [
        { gpa: base, size: 0x10000, userAddr: 0, mmapOffset: 0 },
        { gpa: base + 0x20000, size: 0x10000, userAddr: 0x20000, mmapOffset: 0 },
      ];
      const mem = new RegionGuestMemory(sab, base, regions);
      const drv = new VirtioTestDriver(mem, { kind, size: 8, limit: base + 0x10000 });
      const q = createVirtqueue(kind, mem, drv.config, drv.features);
      const gap = base + 0x10000 + 0x100;
      const raw = new Uint8Array(sab);
      raw.fill(0xaa, gap - base, gap - base + 200);
      if (kind === "split") {
        drv.writeDesc(0, { addr: gap, len: 200, flags: 2 /* VIRTQ_DESC_F_WRITE */ });
        drv.pushAvail(0);
      } else {
        drv.makeAvailableRaw([{ addr: gap, len: 200, flags: 2, id: 0 }]);
      }
      assert.throws(() => q.popBatch([], 4), VirtqueueError);
      assert.throws(() => q.pop(), VirtqueueError);
      assert.deepEqual(
        [...raw.subarray(gap - base, gap - base + 200)].filter((b) => b !== 0xaa),
        [],
        "nothing written into the gap",
      );
    });
  }
});

describe("split queue: the cached avail idx", () => {
  test("idx is read again once the entries seen are taken: buffers added after a pop are found", () => {
    const mem = makeTestMemory({ size: 1 << 20, shared: true });
    const drv = new VirtioTestDriver(mem, { kind: "split", size: 8 });
    const q = new SplitQueue(mem, drv.config, drv.features);
    const a = drv.addChain([buffer(4, 1, 1)], []);
    assert.equal(q.pop()?.id, a);
    const b = drv.addChain([buffer(4, 2, 2)], []);
    const c = drv.addChain([buffer(4, 3, 3)], []);
    assert.equal(q.pop()?.id, b);
    const d = drv.addChain([buffer(4, 4, 4)], []);
    assert.deepEqual([q.pop()?.id, q.pop()?.id, q.pop()], [c, d, null]);
  });

  test("two queue objects over the same state words (a queue handed between threads) take each entry once", () => {
    const mem = makeTestMemory({ size: 1 << 20, shared: true });
    const drv = new VirtioTestDriver(mem, { kind: "split", size: 8 });
    const state = new Int32Array(QUEUE_STATE_WORDS);
    const one = new SplitQueue(mem, drv.config, drv.features, { state });
    const two = new SplitQueue(mem, drv.config, drv.features, { state });
    const popped: number[] = [];
    const take = (q: SplitQueue) => {
      const ch = q.pop();
      if (ch === null) return false;
      popped.push(ch.id);
      q.pushUsed(ch, 0);
      return true;
    };
    const added: number[] = [];
    const add = (n: number) => {
      for (let i = 0; i < n; i++) added.push(drv.addChain([buffer(4, added.length, i)], []));
    };
    for (let round = 0; round < 4; round++) {
      add(3);
      assert.equal(take(two), true, "two reads idx: three entries");
      assert.equal(take(one), true);
      assert.equal(take(one), true);
      add(3);
      for (let i = 0; i < 3; i++) assert.equal(take(one), true);
      // two saw idx when three entries were new; one has since taken those and three more. two's idx is behind
      // the next entry: it must read idx again (nothing new), not take the stale ring slot after idx.
      assert.equal(take(two), false, "nothing left: two must not pop past idx");
      drv.usedChains();
    }
    assert.deepEqual(popped, added);
  });
});

describe("virtio-net transmit with read-ahead: every frame once, in order", () => {
  for (const packed of [false, true]) {
    test(`${packed ? "packed" : "split"}: 100 frames of varied sizes, 40 per kick, reach the backend unchanged`, () => {
      const sent: Uint8Array[] = [];
      const backend: VirtioNetBackend = {
        name: "capture",
        send(frame: Uint8Array) {
          sent.push(frame.slice());
          return true;
        },
        attach(_r: Receiver) {},
        rxReady() {},
        close() {},
      };
      const rig = makeVirtioPciRig(new VirtioNet({ backend }));
      assert.ok(rig.drv.negotiate((f) => (packed ? f : f & ~F_PACKED)));
      rig.drv.setupQueue(0, { size: 128 });
      const tx = rig.drv.setupQueue(1, { size: 128 });
      rig.drv.driverOk();
      const frames = Array.from({ length: 100 }, (_, i) =>
        Uint8Array.from({ length: 60 + ((i * 37) % 1400) }, (_, k) => (i * 7 + k) & 0xff),
      );
      for (let at = 0; at < frames.length; at += 40) {
        for (const f of frames.slice(at, at + 40)) tx.addChain([new Uint8Array(HDR), f], []);
        rig.drv.kick(1);
        assert.equal(tx.usedChains().length, Math.min(40, frames.length - at));
      }
      assert.deepEqual(sent, frames);
    });
  }
});
