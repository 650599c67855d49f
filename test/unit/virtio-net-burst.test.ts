/**
 * The batching and reuse the per-frame path relies on: a split queue's used buffers pushed with publish=false
 * stay invisible to the driver until publishUsed() or shouldNotifyDriver(); chain objects are reused per head
 * without carrying an earlier chain's segments; and virtio-net holds received frames back while its backend says
 * more follow (Receiver `more`), publishing them together, at the latest after 64 frames or when a frame cannot
 * be placed; Receiver.burst places a backend's queue under one hold of the ring.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { VirtioNet, type VirtioNetBackend } from "../../src/devices/virtio/net.ts";
import {
  claimBuffers,
  createVirtqueue,
  type DescriptorChain,
  type SingleBuffers,
  SplitQueue,
} from "../../src/devices/virtio/queue/index.ts";
import type { Receiver } from "../../src/net/backend.ts";
import { makeTestMemory, makeVirtioPciRig, VirtioTestDriver } from "../helpers/virtio-driver.ts";

const HDR = 12;
const F_MRG_RXBUF = 1n << 15n;
const F_PACKED = 1n << 34n;

function bytes(n: number, seed: number): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => (seed * 31 + i) & 0xff);
}

describe("split queue: used buffers published in a batch", () => {
  test("shouldNotifyDriver publishes what is pending before it decides", () => {
    const mem = makeTestMemory({ size: 1 << 20, shared: true });
    const drv = new VirtioTestDriver(mem, { kind: "split", size: 8 });
    const q = new SplitQueue(mem, drv.config, drv.features);
    const id = drv.addChain([bytes(4, 1)], []);
    q.pushUsed(q.pop() as NonNullable<ReturnType<typeof q.pop>>, 0, false);
    assert.equal(q.shouldNotifyDriver(), true);
    assert.deepEqual(
      drv.usedChains().map((u) => u.id),
      [id],
    );
  });

  test("a head popped again gets its new chain only: no segment of a longer earlier chain is left", () => {
    const mem = makeTestMemory({ size: 1 << 20, shared: true });
    const drv = new VirtioTestDriver(mem, { kind: "split", size: 4 });
    const q = new SplitQueue(mem, drv.config, drv.features);
    const long = drv.addChain([bytes(7, 1), bytes(9, 2), bytes(11, 3)], [5]);
    const first = q.pop();
    assert.ok(first);
    assert.equal(first.readable.length, 3);
    q.pushUsed(first, 0);
    drv.usedChains();
    // Four one-descriptor chains take every head, the long chain's among them.
    const ids = [0, 1, 2, 3].map((i) => drv.addChain([bytes(13 + i, 10 + i)], []));
    assert.ok(ids.includes(long));
    const again = ids.map(() => q.pop());
    const same = again.find((c) => c?.id === long);
    assert.ok(same);
    const i = ids.indexOf(long);
    assert.equal(same.readable.length, 1);
    assert.equal(same.writable.length, 0);
    assert.equal(same.readableLength, 13 + i);
    assert.equal(same.writableLength, 0);
    assert.deepEqual(mem.slice(same.readable[0]?.addr as number, 13 + i), bytes(13 + i, 10 + i));
    // Every chain popped is still whole (each head has its own object).
    for (const [k, c] of again.entries())
      assert.equal(c?.readableLength, 13 + ids.indexOf(c?.id as number), `chain ${k}`);
  });
});

/** A backend whose receiver the test calls itself. */
class ManualBackend implements VirtioNetBackend {
  readonly name = "manual";
  receiver: Receiver | null = null;
  send(): boolean {
    return true;
  }
  attach(receiver: Receiver): void {
    this.receiver = receiver;
  }
  rxReady(): void {}
  close(): void {}
}

function startNet(queueSize: number, mergeable = false) {
  const backend = new ManualBackend();
  const rig = makeVirtioPciRig(new VirtioNet({ backend }));
  assert.ok(rig.drv.negotiate((f) => f & ~F_PACKED & (mergeable ? f : ~F_MRG_RXBUF)));
  const rx = rig.drv.setupQueue(0, { size: queueSize });
  rig.drv.setupQueue(1, { size: queueSize });
  rig.drv.driverOk();
  const offer = (f: Uint8Array, more?: boolean) => (backend.receiver as Receiver)(f, more);
  return { rig, rx, offer };
}

for (const kind of ["split", "packed"] as const) {
  describe(`${kind} queue: used buffers published in a batch`, () => {
    test("pushUsed(publish=false) is invisible until publishUsed(); then all appear, in order, across the wrap", () => {
      const mem = makeTestMemory({ size: 1 << 20, shared: true });
      const drv = new VirtioTestDriver(mem, { kind, size: 4 });
      const q = createVirtqueue(kind, mem, drv.config, drv.features);
      // Three rounds of three buffers on a ring of four: the batches cross the end of the ring twice.
      for (let round = 0; round < 3; round++) {
        const ids = [0, 1, 2].map((i) => drv.addChain([bytes(10, round * 3 + i)], []));
        const chains = ids.map(() => q.pop());
        for (const c of chains) q.pushUsed(c as NonNullable<typeof c>, 0, false);
        assert.equal(drv.usedChains().length, 0, `round ${round}: nothing published yet`);
        q.publishUsed();
        assert.deepEqual(
          drv.usedChains().map((u) => u.id),
          ids,
          `round ${round}`,
        );
        q.publishUsed();
        assert.equal(drv.usedChains().length, 0, "publishing again adds nothing");
      }
    });

    test("pushUsed(publish=true) publishes at once, with what was pending before it", () => {
      const mem = makeTestMemory({ size: 1 << 20, shared: true });
      const drv = new VirtioTestDriver(mem, { kind, size: 8 });
      const q = createVirtqueue(kind, mem, drv.config, drv.features);
      const ids = [0, 1].map((i) => drv.addChain([bytes(4, i)], []));
      const [a, b] = ids.map(() => q.pop());
      q.pushUsed(a as NonNullable<typeof a>, 0, false);
      q.pushUsed(b as NonNullable<typeof b>, 0, true);
      assert.deepEqual(
        drv.usedChains().map((u) => u.id),
        ids,
      );
    });
  });
}

describe("virtio-net: a burst of received frames moves the ring once", () => {
  test("frames offered with `more` are published with the burst's last frame, in order, with one interrupt", () => {
    const { rig, rx, offer } = startNet(16);
    for (let i = 0; i < 8; i++) rx.addChain([], [HDR + 200]);
    const before = rig.msis.length + rig.intx.filter(Boolean).length;
    assert.equal(offer(bytes(60, 1), true), true);
    assert.equal(offer(bytes(61, 2), true), true);
    assert.equal(rx.usedChains().length, 0, "held while more follow");
    assert.equal(rig.msis.length + rig.intx.filter(Boolean).length, before, "no interrupt yet");
    assert.equal(offer(bytes(62, 3)), true);
    const got = rx.usedChains();
    assert.deepEqual(
      got.map((u) => u.written.subarray(HDR)),
      [bytes(60, 1), bytes(61, 2), bytes(62, 3)],
    );
    assert.equal(
      rig.msis.length + rig.intx.filter(Boolean).length,
      before + 1,
      "one interrupt for the burst",
    );
  });

  test("a frame that finds no buffer publishes the held ones first", () => {
    const { rx, offer } = startNet(16);
    for (let i = 0; i < 3; i++) rx.addChain([], [HDR + 100]);
    for (let i = 0; i < 3; i++) assert.equal(offer(bytes(60, i), true), true);
    assert.equal(offer(bytes(60, 9), true), false, "no buffer left");
    assert.equal(rx.usedChains().length, 3);
  });

  test("Receiver.flush publishes the held frames with one interrupt, and does nothing when none is held", () => {
    const { rig, rx, offer } = startNet(16);
    for (let i = 0; i < 8; i++) rx.addChain([], [HDR + 100]);
    const irqs = () => rig.msis.length + rig.intx.filter(Boolean).length;
    const before = irqs();
    for (let i = 0; i < 5; i++) assert.equal(offer(bytes(60, i), true), true);
    assert.equal(rx.usedChains().length, 0, "held while more follow");
    const receiver = (rig.model.backend as ManualBackend).receiver as Receiver;
    assert.ok(receiver.flush, "virtio-net offers flush");
    receiver.flush();
    assert.deepEqual(
      rx.usedChains().map((u) => u.written.subarray(HDR)),
      [0, 1, 2, 3, 4].map((i) => bytes(60, i)),
    );
    assert.equal(irqs(), before + 1, "one interrupt for the five");
    receiver.flush();
    assert.equal(rx.usedChains().length, 0);
    assert.equal(irqs(), before + 1, "nothing held: no interrupt");
  });

  test("at most 64 frames are held however long the burst", () => {
    const { rx, offer } = startNet(128);
    for (let i = 0; i < 100; i++) rx.addChain([], [HDR + 100]);
    for (let i = 0; i < 70; i++) assert.equal(offer(bytes(60, i), true), true);
    assert.equal(rx.usedChains().length, 64);
    assert.equal(offer(bytes(60, 70)), true);
    assert.equal(rx.usedChains().length, 7);
  });
});

describe("virtio-net: Receiver.burst", () => {
  test("places frames while the guest has buffers, takes each one placed, publishes once with one interrupt", () => {
    const { rig, rx } = startNet(16);
    const backend = rig.model.backend as ManualBackend;
    const b = backend.receiver?.burst;
    assert.ok(b, "virtio-net offers burst");
    for (let i = 0; i < 5; i++) rx.addChain([], [HDR + 100]);
    const queue = [0, 1, 2, 3, 4, 5, 6].map((i) => bytes(60 + i, i));
    const before = rig.msis.length + rig.intx.filter(Boolean).length;
    const placed = b(
      () => queue[0] ?? null,
      () => {
        queue.shift();
      },
    );
    assert.equal(placed, 5, "five buffers, five frames");
    assert.equal(queue.length, 2, "the two not placed stay with the backend");
    assert.deepEqual(
      rx.usedChains().map((u) => u.written.subarray(HDR)),
      [0, 1, 2, 3, 4].map((i) => bytes(60 + i, i)),
    );
    assert.equal(rig.msis.length + rig.intx.filter(Boolean).length, before + 1);
    // A backend with nothing left ends the burst at once.
    rx.addChain([], [HDR + 100]);
    assert.equal(
      b(
        () => null,
        () => {},
      ),
      0,
    );
    assert.equal(rx.usedChains().length, 0);
  });
});

describe("virtio-net: Receiver.burst takes buffers ahead as many as the backend expects, and claims them", () => {
  test("one by one for a lone frame, `expected` for a short burst, a batch of 64 without a hint", (t) => {
    // Spy on the queue's popSingles and popBatch (the rig builds its own queues): record max, then do the real work.
    const calls: string[] = [];
    const realSingles = SplitQueue.prototype.popSingles;
    const realBatch = SplitQueue.prototype.popBatch;
    t.after(() => {
      SplitQueue.prototype.popSingles = realSingles;
      SplitQueue.prototype.popBatch = realBatch;
    });
    SplitQueue.prototype.popSingles = function (
      this: SplitQueue,
      out: SingleBuffers,
      max: number,
      w: boolean,
    ) {
      calls.push(`singles ${max}`);
      return realSingles.call(this, out, max, w);
    };
    SplitQueue.prototype.popBatch = function (this: SplitQueue, out: DescriptorChain[], max: number) {
      calls.push(`chains ${max}`);
      return realBatch.call(this, out, max);
    };
    const { rig, rx } = startNet(128);
    const b = (rig.model.backend as ManualBackend).receiver?.burst;
    assert.ok(b);
    const run = (frames: number, expected?: number, buffers = frames, shape: "one" | "two" = "one") => {
      calls.length = 0;
      for (let i = 0; i < buffers; i++)
        rx.addChain([], shape === "one" ? [HDR + 100] : [HDR, 100], { fill: 0xaa });
      const queue = Array.from({ length: frames }, (_, i) => bytes(60, i));
      const placed = b(
        () => queue[0] ?? null,
        () => {
          queue.shift();
        },
        expected,
      );
      assert.equal(placed, frames);
      const used = rx.usedChains();
      assert.equal(used.length, frames);
      used.forEach((u, i) => {
        assert.deepEqual(u.written.subarray(HDR), bytes(60, i), `frame ${i}`);
      });
      return [...calls];
    };
    // Buffers of one descriptor are taken in their flat form (popSingles).
    assert.deepEqual(run(1, 1), ["singles 1"], "a lone frame: one buffer");
    assert.deepEqual(run(3, 3), ["singles 3"], "three expected: three taken at once");
    assert.deepEqual(run(2), ["singles 64"], "no hint: a batch");
    assert.deepEqual(run(70, 70), ["singles 64", "singles 6"], "a batch, then what is left of the expected");
    // Buffers taken and not used go back: 5 frames for 9 buffers, then the other 4 take 4 frames.
    assert.deepEqual(run(5, undefined, 9), ["singles 64"]);
    assert.deepEqual(run(4, 4, 0), ["singles 4"], "the 4 given back are taken again");
    // Buffers of two descriptors are chains: popSingles finds none, popBatch takes them, the same way.
    assert.deepEqual(run(3, 3, 3, "two"), ["singles 3", "chains 3"]);
    assert.deepEqual(run(5, undefined, 9, "two"), ["singles 64", "chains 64"]);
    assert.deepEqual(
      run(4, 4, 0, "two"),
      ["singles 4", "chains 4"],
      "the 4 chains given back are taken again",
    );
  });

  test("buffers of one descriptor and chains mixed in the ring are used in ring order, frames in order", () => {
    const { rig, rx } = startNet(128);
    const b = (rig.model.backend as ManualBackend).receiver?.burst;
    assert.ok(b);
    // one, one, two, one, two, two, one, ...: each kind's run ends where the other starts.
    const ids: number[] = [];
    for (let i = 0; i < 40; i++) {
      const two = i % 3 === 2 || i % 7 === 5;
      ids.push(rx.addChain([], two ? [HDR, 100] : [HDR + 100], { fill: 0xaa }));
    }
    const queue = Array.from({ length: 40 }, (_, i) => bytes(60 + i, i));
    const placed = b(
      () => queue[0] ?? null,
      () => {
        queue.shift();
      },
      40,
    );
    assert.equal(placed, 40);
    const used = rx.usedChains();
    assert.deepEqual(
      used.map((u) => u.id),
      ids,
      "buffers used in the order they were made available",
    );
    used.forEach((u, i) => {
      assert.equal(u.len, HDR + 60 + i);
      assert.deepEqual(u.written.subarray(HDR), bytes(60 + i, i), `frame ${i}`);
      assert.equal(u.written[10], 1, "num_buffers");
    });
  });

  test("a frame a one-descriptor buffer cannot hold spans buffers (MRG_RXBUF), and the next frames go on", () => {
    const { rig, rx } = startNet(128, true);
    const b = (rig.model.backend as ManualBackend).receiver?.burst;
    assert.ok(b);
    for (let i = 0; i < 8; i++) rx.addChain([], [HDR + 100], { fill: 0xaa });
    const queue = [bytes(60, 0), bytes(250, 1), bytes(60, 2)];
    const frames = [...queue];
    const placed = b(
      () => queue[0] ?? null,
      () => {
        queue.shift();
      },
      3,
    );
    assert.equal(placed, 3);
    const used = rx.usedChains();
    assert.deepEqual(
      used.map((u) => u.len),
      [HDR + 60, HDR + 100, HDR + 100, 38, HDR + 60],
    );
    const second = new Uint8Array([
      ...(used[1]?.written ?? []),
      ...(used[2]?.written ?? []),
      ...(used[3]?.written ?? []),
    ]);
    assert.equal(second[10], 3, "num_buffers of the frame that spans three");
    assert.deepEqual(second.subarray(HDR), frames[1]);
    assert.deepEqual(used[4]?.written.subarray(HDR), frames[2]);
  });
});

describe("claimBuffers: the first lines of popped receive buffers", () => {
  test("zeroes one byte per cache line of the first span bytes of each first writable buffer, nothing else", () => {
    const mem = makeTestMemory({ size: 1 << 20, shared: true });
    const drv = new VirtioTestDriver(mem, { kind: "split", size: 16 });
    const q = createVirtqueue("split", mem, drv.config, drv.features);
    drv.addChain([], [200, 100], { fill: 0xaa }); // claimed: [0, 130) of the first buffer only
    drv.addChain([], [50], { fill: 0xaa }); // shorter than the span: not
    drv.addChain([new Uint8Array(8).fill(0xaa)], [200], { fill: 0xaa }); // has a readable part: not
    drv.addChain([], [200], { fill: 0xaa }); // past n: not
    const out: DescriptorChain[] = [];
    assert.equal(q.popBatch(out, 8), 4);
    claimBuffers(mem, out, 3, 130);
    const zeros = (g: { addr: number; len: number }) =>
      [...mem.slice(g.addr, g.len).keys()].filter((k) => mem.slice(g.addr + k, 1)[0] !== 0xaa);
    const c = out as DescriptorChain[];
    assert.deepEqual(zeros(c[0]?.writable[0] as { addr: number; len: number }), [0, 64, 128, 129]);
    assert.deepEqual(zeros(c[0]?.writable[1] as { addr: number; len: number }), []);
    for (const k of [1, 2, 3]) {
      for (const g of [...(c[k] as DescriptorChain).writable, ...(c[k] as DescriptorChain).readable])
        assert.deepEqual(zeros(g), [], `chain ${k}`);
    }
  });
});

describe("virtio-net: a received frame is copied whole whatever its alignment", () => {
  // Large frames whose alignment differs from the receive buffer's go through a staging buffer (copyToShared).
  test("frames of 60 to 1514 bytes at every source offset mod 8 arrive byte for byte", () => {
    const { rx, offer } = startNet(64);
    for (const size of [60, 255, 256, 1000, 1514]) {
      for (let shift = 0; shift < 8; shift++) {
        rx.addChain([], [HDR + 1514]);
        const backing = bytes(size + 8, size + shift);
        const frame = backing.subarray(shift, shift + size);
        assert.equal(offer(frame), true);
        const [got] = rx.usedChains();
        assert.ok(got, `size ${size}, shift ${shift}: used`);
        assert.deepEqual(got.written.subarray(HDR), frame, `size ${size}, shift ${shift}`);
        assert.equal(got.written[10], 1, "num_buffers");
      }
    }
  });
});
