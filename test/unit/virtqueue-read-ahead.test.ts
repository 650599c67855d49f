/**
 * What a transmit queue's read-ahead (ReadAhead, DrainOptions.readAhead) and a split queue's cached
 * avail idx may and may not do: the read-ahead reads the first and last byte of the next buffers and changes
 * nothing (the same chains pop, in the same order; bad heads and addresses are skipped, and pop still refuses
 * them); a split queue reads avail idx again once it has taken the entries it saw, including entries another
 * queue object over the same state words took meanwhile.
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

for (const kind of KINDS) {
  describe(`${kind} queue: writeAhead`, () => {
    test("zeroes one byte per cache line of the first span bytes of the next n writable buffers, nothing else", () => {
      const mem = makeTestMemory({ size: 1 << 20, shared: true });
      const drv = new VirtioTestDriver(mem, { kind, size: 16, features: { indirect: true } });
      const q = createVirtqueue(kind, mem, drv.config, drv.features, undefined);
      const fill = (addr: number, len: number) => mem.writeFrom(addr, new Uint8Array(len).fill(0xaa), 0, len);
      const ids: number[] = [];
      // Writable, 200 bytes: written. Readable: not. Writable but shorter than the span: not.
      ids.push(drv.addChain([], [200]));
      ids.push(drv.addChain([new Uint8Array(200).fill(0xaa)], []));
      ids.push(drv.addChain([], [50]));
      // Indirect: its table (9 descriptors, 144 bytes) is longer than the span, and must not be written.
      ids.push(drv.addChain([], [20, 20, 20, 20, 20, 20, 20, 20, 20], { indirect: true }));
      ids.push(drv.addChain([], [200]));
      ids.push(drv.addChain([], [200]));
      // Pop them all to learn their buffers, give them back, fill the buffers with 0xaa, then claim 5 of the 6.
      const before = new Map<number, Uint8Array>();
      const chains = [];
      for (let i = 0; i < ids.length; i++) {
        const c = q.pop();
        assert.ok(c);
        chains.push(c);
      }
      for (let i = chains.length - 1; i >= 0; i--) q.unpop(chains[i] as NonNullable<(typeof chains)[number]>);
      for (const c of chains) {
        for (const g of [...c.writable, ...c.readable]) {
          fill(g.addr, g.len);
          before.set(g.addr, mem.slice(g.addr, g.len).slice());
        }
      }
      q.writeAhead(5, 130);
      const changed = (addr: number, len: number) => {
        const now = mem.slice(addr, len);
        const was = before.get(addr) as Uint8Array;
        return [...now.keys()].filter((k) => now[k] !== was[k]);
      };
      const c0 = chains[0] as NonNullable<(typeof chains)[number]>;
      const w0 = c0.writable[0] as { addr: number; len: number };
      assert.deepEqual(changed(w0.addr, w0.len), [0, 64, 128, 129], "lines of [0, 130): 0, 64, 128, and 129");
      assert.equal(mem.slice(w0.addr, 1)[0], 0);
      for (const k of [1, 2, 3]) {
        const c = chains[k] as NonNullable<(typeof chains)[number]>;
        for (const g of [...c.writable, ...c.readable])
          assert.deepEqual(changed(g.addr, g.len), [], `chain ${k}`);
      }
      const c4 = chains[4] as NonNullable<(typeof chains)[number]>;
      const w4 = c4.writable[0] as { addr: number; len: number };
      assert.equal(changed(w4.addr, w4.len).length, 4, "the fifth chain is claimed");
      const c5 = chains[5] as NonNullable<(typeof chains)[number]>;
      const w5 = c5.writable[0] as { addr: number; len: number };
      assert.deepEqual(changed(w5.addr, w5.len), [], "only n chains");
      // The queue is as it was: the same chains pop, in order, with the same buffers (the indirect table too).
      const shape = (c: { id: number; writable: readonly { addr: number; len: number }[] } | null) =>
        c && { id: c.id, w: c.writable.map((g) => [g.addr, g.len]) };
      const expected = chains.map(shape);
      assert.deepEqual(
        ids.map(() => shape(q.pop())),
        expected,
      );
    });
  });
}

describe("read-ahead in a vhost-user front-end's memory: a gap between regions is not guest RAM", () => {
  for (const kind of KINDS) {
    test(`${kind}: a buffer in the gap is neither read nor written ahead, and pop refuses it`, () => {
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
      q.writeAhead(4, 72);
      assert.deepEqual(
        [...raw.subarray(gap - base, gap - base + 200)].filter((b) => b !== 0xaa),
        [],
        "nothing written into the gap",
      );
      assert.throws(() => q.pop(), VirtqueueError);
    });
  }
});

describe("split queue: read-ahead and the cached avail idx against a hostile ring", () => {
  test("a head not below the queue size and an idx too far ahead are skipped by writeAhead, refused by pop", () => {
    const mem = makeTestMemory({ size: 1 << 20, shared: true });
    const drv = new VirtioTestDriver(mem, { kind: "split", size: 8 });
    const q = new SplitQueue(mem, drv.config, drv.features);
    const good = drv.addChain([], [100]);
    drv.pushAvail(8);
    const c = q.pop() as DescriptorChain;
    assert.equal(c.id, good);
    q.unpop(c);
    const w = c.writable[0] as { addr: number; len: number };
    mem.writeFrom(w.addr, new Uint8Array(100).fill(0xaa), 0, 100);
    q.writeAhead(8, 72);
    assert.deepEqual(
      [0, 64, 71].map((k) => mem.slice(w.addr + k, 1)[0]),
      [0, 0, 0],
      "the good chain is claimed",
    );
    assert.ok(q.pop());
    assert.throws(() => q.pop(), /holds head 8, not below the queue size 8/);
    // An idx too far ahead: nothing claimed, pop refuses it.
    const drv2 = new VirtioTestDriver(mem, { kind: "split", size: 8, base: 0x80000 });
    const q2 = new SplitQueue(mem, drv2.config, drv2.features);
    drv2.addChain([], [100]);
    const w2 = q2.pop();
    q2.unpop(w2 as DescriptorChain);
    const b2 = (w2 as DescriptorChain).writable[0] as { addr: number; len: number };
    mem.writeFrom(b2.addr, new Uint8Array(100).fill(0xaa), 0, 100);
    drv2.setAvailIdx(30);
    // A queue object that has not read idx yet (q2 has it cached).
    const q3 = new SplitQueue(mem, drv2.config, drv2.features);
    q3.writeAhead(8, 72);
    assert.equal(mem.slice(b2.addr, 1)[0], 0xaa, "nothing claimed");
    assert.throws(() => q3.pop(), /entries ahead of the last one seen/);
  });

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
