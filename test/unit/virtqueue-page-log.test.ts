/**
 * Live migration's device page log (src/memory/device-page-log.ts) and the queue layer: devices write a chain's
 * buffers through views of guest memory, which GuestMemory's write methods never see, so pushUsed marks the pages
 * of every device-writable buffer of the chain it answers, whatever was written, while the log is on. A page
 * missed there would be sent to the destination before the device wrote it and never again. (Written against
 * the survivors of mutation testing, docs/mutation-testing.md.)
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { createVirtqueue, type QueueKind } from "../../src/devices/virtio/queue/index.ts";
import { DevicePageLog, PAGE_SIZE } from "../../src/memory/device-page-log.ts";
import type { GuestMemory } from "../../src/memory/guest-memory.ts";
import { makeTestMemory, VirtioTestDriver } from "../helpers/virtio-driver.ts";

const KINDS: QueueKind[] = ["split", "packed"];

function pagesTaken(log: DevicePageLog): number[] {
  const pages: number[] = [];
  log.take((n) => pages.push(n));
  return pages;
}

/** Guest memory at 0x10000 with a page log (off) over it, and a driver whose rings are already written. */
function setup(kind: QueueKind): { mem: GuestMemory; log: DevicePageLog; drv: VirtioTestDriver } {
  const mem = makeTestMemory({ size: 1 << 20, base: 0x10000 });
  const log = new DevicePageLog(DevicePageLog.create(mem.size));
  mem.pageLog = log;
  const drv = new VirtioTestDriver(mem, { kind, size: 8 });
  return { mem, log, drv };
}

/** The pages (of the memory's buffer, as the log counts them) that [gpa, gpa + len) touches. */
function pagesOf(mem: GuestMemory, gpa: number, len: number): number[] {
  const first = Math.floor((gpa - mem.base) / PAGE_SIZE);
  const last = Math.floor((gpa - mem.base + len - 1) / PAGE_SIZE);
  const out: number[] = [];
  for (let p = first; p <= last; p++) out.push(p);
  return out;
}

for (const kind of KINDS) {
  describe(`${kind} queue: the device page log`, () => {
    test("pushUsed marks every writable buffer's pages, at their offsets in RAM, even with nothing written", () => {
      const { mem, log, drv } = setup(kind);
      const q = createVirtqueue(kind, mem, drv.config, drv.features);
      // One readable and two writable buffers, the second spanning a page boundary.
      drv.addChain([new Uint8Array(32)], [100, 3 * PAGE_SIZE]);
      const c = q.pop();
      assert.ok(c);
      assert.equal(c.writable.length, 2);
      log.start();
      pagesTaken(log); // whatever the driver's setup wrote is not the device's
      q.pushUsed(c, 0);
      const want = new Set<number>();
      for (const s of c.writable) for (const p of pagesOf(mem, s.addr, s.len)) want.add(p);
      assert.ok(want.size >= 4, "the buffers cover at least four pages");
      const got = pagesTaken(log);
      for (const p of want) assert.ok(got.includes(p), `page ${p} of a writable buffer is marked`);
    });
  });
}
