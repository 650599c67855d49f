/**
 * What a popped chain says it cost, for both ring layouts: descriptorCount (the ring slots it occupies) and
 * descriptorsRead (every descriptor walked, zero-length elements and the pointer to an indirect table included),
 * which the device's work budget charges. (Written against the survivors of mutation testing,
 * docs/mutation-testing.md.)
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  createVirtqueue,
  type DescriptorChain,
  type QueueKind,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  type Virtqueue,
} from "../../src/devices/virtio/queue/index.ts";
import { makeTestMemory, VirtioTestDriver } from "../helpers/virtio-driver.ts";

function setup(kind: QueueKind): { drv: VirtioTestDriver; q: Virtqueue } {
  const mem = makeTestMemory();
  const drv = new VirtioTestDriver(mem, { kind, size: 8, features: { indirect: true } });
  const q = createVirtqueue(kind, mem, drv.config, drv.features, { name: "acct" });
  return { drv, q };
}

function mustPop(q: Virtqueue): DescriptorChain {
  const c = q.pop();
  assert.ok(c, "expected an available chain");
  return c;
}

for (const kind of ["split", "packed"] as const) {
  describe(`descriptors a chain cost (${kind})`, () => {
    test("direct: every element is read, zero-length ones included, one ring slot each", () => {
      const { drv, q } = setup(kind);
      drv.addChain([new Uint8Array(0), new Uint8Array(4)], [0, 8, 3]);
      const c = mustPop(q);
      assert.equal(c.descriptorCount, 5);
      assert.equal(c.descriptorsRead, 5);
    });

    test("indirect: the table's entries plus the descriptor pointing at it, in one ring slot", () => {
      const { drv, q } = setup(kind);
      drv.addChain([new Uint8Array(8), new Uint8Array(0)], [4, 12], { indirect: true });
      const c = mustPop(q);
      assert.equal(c.descriptorCount, 1);
      assert.equal(c.descriptorsRead, 5);
      q.pushUsed(c, 0);
      drv.usedChains();
      drv.addChain([new Uint8Array(8)], [], { indirect: true });
      assert.equal(mustPop(q).descriptorsRead, 2, "a one-entry table");
    });
  });
}

test("split: direct descriptors then an indirect table count both (2.7.5.3.2)", () => {
  const { drv, q } = setup("split");
  const a = drv.alloc(16);
  const t = drv.writeTable([
    { addr: a, len: 4, flags: VIRTQ_DESC_F_NEXT, next: 1 },
    { addr: a + 4, len: 4, flags: VIRTQ_DESC_F_NEXT, next: 2 },
    { addr: a + 8, len: 8, flags: VIRTQ_DESC_F_WRITE },
  ]);
  drv.writeDesc(3, { addr: a, len: 2, flags: VIRTQ_DESC_F_NEXT, next: 6 });
  drv.writeDesc(6, { addr: t, len: 48, flags: VIRTQ_DESC_F_INDIRECT });
  drv.pushAvail(3);
  const c = mustPop(q);
  assert.equal(c.descriptorCount, 2, "two table slots");
  assert.equal(c.descriptorsRead, 5, "one direct, the pointer, three entries");
});
