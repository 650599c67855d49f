/**
 * The byte access helpers over a popped chain (ChainReader, ChainWriter, writeChain), at their bounds: what does not
 * fit is refused with a VirtqueueError that says how much room there was, and nothing is written then.
 * (Written against the survivors of mutation testing, docs/mutation-testing.md.)
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  ChainReader,
  ChainWriter,
  createVirtqueue,
  type DescriptorChain,
  VirtqueueError,
  writeChain,
} from "../../src/devices/virtio/queue/index.ts";
import type { GuestMemory } from "../../src/memory/guest-memory.ts";
import { makeTestMemory, VirtioTestDriver } from "../helpers/virtio-driver.ts";

function popped(
  readable: Uint8Array[],
  writable: number[],
): { mem: GuestMemory; drv: VirtioTestDriver; c: DescriptorChain } {
  const mem = makeTestMemory();
  const drv = new VirtioTestDriver(mem, { kind: "split", size: 8 });
  const q = createVirtqueue("split", mem, drv.config, drv.features);
  drv.addChain(readable, writable, { fill: 0xee });
  const c = q.pop();
  assert.ok(c);
  return { mem, drv, c };
}

function writableBytes(mem: GuestMemory, c: DescriptorChain): number[] {
  return c.writable.flatMap((s) => [...mem.slice(s.addr, s.len)]);
}

test("ChainWriter.writeExact: exactly the room left fits; one byte more is refused and writes nothing", () => {
  const { mem, c } = popped([], [3, 2]);
  const w = new ChainWriter(mem, c);
  w.writeExact(Uint8Array.of(1, 2));
  assert.throws(
    () => w.writeExact(Uint8Array.of(3, 4, 5, 6)),
    (e: unknown) =>
      e instanceof VirtqueueError &&
      /device-writable part has 3 bytes left at offset 2, 4 are needed/.test(e.message),
  );
  assert.deepEqual(writableBytes(mem, c), [1, 2, 0xee, 0xee, 0xee], "nothing written by the refused call");
  w.writeExact(Uint8Array.of(7, 8, 9));
  assert.deepEqual(writableBytes(mem, c), [1, 2, 7, 8, 9]);
  assert.equal(w.remaining, 0);
});

test("ChainReader.readExact: the refusal says how much was left and where", () => {
  const { mem, c } = popped([Uint8Array.of(1, 2, 3)], []);
  const r = new ChainReader(mem, c);
  assert.deepEqual(r.readExact(2), Uint8Array.of(1, 2));
  assert.throws(
    () => r.readExact(2),
    (e: unknown) =>
      e instanceof VirtqueueError &&
      /device-readable part has 1 bytes left at offset 2, 2 are needed/.test(e.message),
  );
  assert.deepEqual(r.readExact(1), Uint8Array.of(3), "nothing consumed by the refused call");
});

test("writeChain: an offset that is negative, fractional or past the end is refused, writing nothing", () => {
  const { mem, c } = popped([], [4]);
  for (const offset of [-1, 0.5, 3]) {
    assert.throws(
      () => writeChain(mem, c, Uint8Array.of(9, 9), offset),
      (e: unknown) =>
        e instanceof VirtqueueError &&
        e.message === `2 bytes at offset ${offset} do not fit the device-writable part (4 bytes)`,
      `offset ${offset}`,
    );
  }
  assert.deepEqual(writableBytes(mem, c), [0xee, 0xee, 0xee, 0xee]);
  assert.equal(writeChain(mem, c, Uint8Array.of(5, 6), 2), 2);
  assert.deepEqual(writableBytes(mem, c), [0xee, 0xee, 5, 6]);
});
