/**
 * Inflight I/O tracking (vhost-user.rst, "Inflight I/O tracking", split rings) in the vhost-user blk back-end,
 * in this process: the connection dies with a request taken and not completed, a new back-end is given the same
 * inflight buffer and resubmits it, and every request is completed (used) exactly once; a request already used
 * whose mark was not yet cleared is not done again; marked requests are resubmitted oldest first; buffers that
 * do not fit, and garbage in them, are refused or survived without harm.
 */
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import { CountingBlockBackend } from "../../src/block/counting.ts";
import { FileBlockBackend } from "../../src/block/file.ts";
import { VirtioBlk } from "../../src/devices/virtio/blk.ts";
import type { NotifyBudget } from "../../src/devices/virtio/work-budget.ts";
import { MFD_CLOEXEC, native } from "../../src/native.ts";
import { type InflightDescription, queueRegionBytes } from "../../src/vhost-user/inflight.ts";
import { REQ } from "../../src/vhost-user/protocol.ts";
import { BlkDirectChannel, BlkFrontend } from "../helpers/vhost-user-blk-frontend.ts";

const dir = mkdtempSync(join(tmpdir(), "vireo-vub-inflight-"));
let files = 0;
const MiB = 1 << 20;
const KiB = 1024;

function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (seed * 131 + i * 7 + (i >> 9)) & 0xff;
  return b;
}

function rig(budget?: NotifyBudget) {
  const path = join(dir, `img-${files++}`);
  FileBlockBackend.create(path, 4 * MiB).close();
  const image = FileBlockBackend.open(path);
  const disk = new CountingBlockBackend(image);
  const model = () => new VirtioBlk({ backend: disk, name: "blk0", queueSize: 128 });
  const connect = () => new BlkDirectChannel(model, { budget });
  const channel = connect();
  const fe = new BlkFrontend(channel, 1, 128);
  return { path, image, disk, fe, connect, first: channel };
}

/** The test's view of queue 0's region (the spec's QueueRegionSplit layout). */
function regionView(fd: number, d: InflightDescription) {
  const { buffer } = native().mmap(fd, Number(d.mmapSize), Number(d.mmapOffset));
  const v = new DataView(buffer);
  const ds = (h: number) => 16 + 16 * h;
  return {
    v,
    version: () => v.getUint16(8, true),
    descNum: () => v.getUint16(10, true),
    lastBatchHead: () => v.getUint16(12, true),
    usedIdx: () => v.getUint16(14, true),
    inflight: (h: number) => v.getUint8(ds(h)),
    counter: (h: number) => v.getBigUint64(ds(h) + 8, true),
    inflightHeads: () => {
      const out: number[] = [];
      for (let h = 0; h < d.queueSize; h++) if (v.getUint8(ds(h)) !== 0) out.push(h);
      return out;
    },
    setInflight: (h: number, flag: number, counter?: bigint) => {
      if (counter !== undefined) v.setBigUint64(ds(h) + 8, counter, true);
      v.setUint8(ds(h), flag);
    },
    setHeader: (f: { version?: number; descNum?: number; lastBatchHead?: number; usedIdx?: number }) => {
      if (f.version !== undefined) v.setUint16(8, f.version, true);
      if (f.descNum !== undefined) v.setUint16(10, f.descNum, true);
      if (f.lastBatchHead !== undefined) v.setUint16(12, f.lastBatchHead, true);
      if (f.usedIdx !== undefined) v.setUint16(14, f.usedIdx, true);
    },
  };
}

/** Negotiation, the inflight buffer set, ring 0 started at `base`. */
function attach(fe: BlkFrontend, inf: { fd: number; description: InflightDescription }, base = 0): void {
  fe.setup();
  assert.ok(fe.setInflight(inf.fd, inf.description), "SET_INFLIGHT_FD");
  assert.ok(fe.startRing(0, base), "ring 0 starts");
}

describe("vhost-user blk: inflight I/O tracking", () => {
  test("a request taken when the connection dies is resubmitted by the next back-end; each completes once", () => {
    // One chain and 4 KiB per slice: a 256 KiB write moves 64 KiB per slice, so it is in progress after one.
    const { path, disk, fe, connect, first, image } = rig({ chains: 1, bytes: 4 * KiB });
    fe.setup();
    const inf = fe.getInflight();
    assert.ok(inf, "GET_INFLIGHT_FD answered with an fd");
    assert.equal(inf.description.numQueues, 1);
    assert.equal(inf.description.queueSize, 128);
    assert.equal(inf.description.mmapSize, BigInt(queueRegionBytes(128)));
    assert.ok(fe.setInflight(inf.fd, inf.description));
    assert.ok(fe.startRing(0));
    const region = regionView(inf.fd, inf.description);
    assert.equal(region.version(), 1, "the region is initialized at ring start");
    assert.equal(region.descNum(), 128);

    const data = [pattern(256 * KiB, 1), pattern(256 * KiB, 2), pattern(256 * KiB, 3)];
    const ids = data.map((d, i) => fe.write(0, i * 512, d));
    fe.kickRing(0);
    first.pump();
    assert.deepEqual(fe.results(0), [], "nothing completed after one slice");
    assert.deepEqual(region.inflightHeads(), [ids[0]], "the first request is marked in flight");
    const part = disk.counts.writtenBytes;
    assert.ok(part > 0 && part < 256 * KiB, `part of its data was written (${part} bytes)`);

    // The back-end dies: its connection and everything it held go; the front-end keeps the buffer's fd.
    first.close();
    const second = connect();
    fe.channel = second;
    // As QEMU does when GET_VRING_BASE could not be asked: the ring restarts at the used idx (0).
    attach(fe, inf, 0);
    second.pumpAll();
    const done = fe.results(0);
    assert.deepEqual(
      done.map((r) => [r.id, r.status]),
      ids.map((id) => [id, 0]),
      "each request used once, the resubmitted one first",
    );
    assert.ok(
      second.logged.some((l) => /1 requests resubmitted, 0 already used; next available index 1/.test(l)),
      second.logged.join("\n"),
    );
    const file = readFileSync(path);
    for (const [i, d] of data.entries()) {
      assert.deepEqual(new Uint8Array(file.subarray(i * 256 * KiB, (i + 1) * 256 * KiB)), d);
    }
    assert.deepEqual(region.inflightHeads(), [], "nothing in flight once all are used");
    assert.equal(region.usedIdx(), 3);
    assert.equal(fe.rings[0]?.outstandingCount, 0);
    fe.close();
    native().close(inf.fd);
    image.close();
  });

  test("a back-end killed inside a slice (used elements written, idx not yet published) loses nothing", () => {
    // The state at the moment of a SIGKILL is taken from inside the block backend while the third write of one
    // slice runs: the first two are in the used ring's elements but its idx is published at the slice's end.
    const { path, disk, fe, connect, first, image } = rig();
    fe.setup();
    const inf = fe.getInflight();
    assert.ok(inf);
    assert.ok(fe.setInflight(inf.fd, inf.description));
    assert.ok(fe.startRing(0));
    const region = regionView(inf.fd, inf.description);
    const regionBytes = new Uint8Array(region.v.buffer);
    const guest = fe.memory.mem.bytes;
    let snapshot: { region: Uint8Array; guest: Uint8Array } | null = null;
    const write = disk.inner.write.bind(disk.inner);
    disk.inner.write = (offset: number, src: Uint8Array) => {
      if (offset === 16 * 512 && snapshot === null) {
        snapshot = { region: regionBytes.slice(), guest: guest.slice() };
      }
      write(offset, src);
    };
    const data = [pattern(4 * KiB, 11), pattern(4 * KiB, 12), pattern(4 * KiB, 13)];
    const ids = data.map((d, i) => fe.write(0, i * 8, d));
    fe.kickRing(0);
    first.pump();
    disk.inner.write = write;
    assert.ok(snapshot, "the third write ran");
    const at = snapshot as { region: Uint8Array; guest: Uint8Array };
    // The back-end dies at that moment: its memory (guest RAM and the buffer are the front-end's) is as it was.
    first.close();
    regionBytes.set(at.region);
    guest.set(at.guest);
    const second = connect();
    fe.channel = second;
    attach(fe, inf, 0);
    second.pumpAll();
    assert.deepEqual(
      fe.results(0).map((r) => [r.id, r.status]),
      ids.map((id) => [id, 0]),
      "all three used once, in the order they were taken",
    );
    assert.ok(
      second.logged.some((l) => /3 requests resubmitted, 0 already used/.test(l)),
      second.logged.join("\n"),
    );
    const file = readFileSync(path);
    for (const [i, d] of data.entries()) {
      assert.deepEqual(new Uint8Array(file.subarray(i * 4 * KiB, (i + 1) * 4 * KiB)), d);
    }
    assert.deepEqual(region.inflightHeads(), []);
    fe.close();
    native().close(inf.fd);
    image.close();
  });

  test("a request already in the used ring whose mark was not cleared (died between the two) is not done again", () => {
    const { disk, fe, connect, first, image } = rig();
    fe.setup();
    const inf = fe.getInflight();
    assert.ok(inf);
    assert.ok(fe.setInflight(inf.fd, inf.description));
    assert.ok(fe.startRing(0));
    const region = regionView(inf.fd, inf.description);
    const id = fe.write(0, 0, pattern(4 * KiB, 5));
    assert.equal(fe.run(0, 1)[0]?.status, 0);
    assert.equal(region.usedIdx(), 1);
    assert.equal(region.lastBatchHead(), id);
    // Roll the region back to the moment after the used idx moved and before the mark was cleared.
    region.setInflight(id, 1);
    region.setHeader({ usedIdx: 0 });
    first.close();
    const writes = disk.counts.writes;
    const second = connect();
    fe.channel = second;
    attach(fe, inf, 1);
    second.pumpAll();
    assert.deepEqual(fe.results(0), [], "no second completion");
    assert.equal(disk.counts.writes, writes, "no second write");
    assert.deepEqual(region.inflightHeads(), []);
    assert.equal(region.usedIdx(), 1);
    assert.ok(
      second.logged.some((l) => /0 requests resubmitted, 1 already used/.test(l)),
      second.logged.join("\n"),
    );
    // The ring goes on from there.
    fe.write(0, 8, pattern(512, 6));
    assert.equal(fe.run(0, 1)[0]?.status, 0);
    fe.close();
    native().close(inf.fd);
    image.close();
  });

  test("requests marked in flight are resubmitted oldest first (by counter), whatever their heads", () => {
    const { path, fe, first, image } = rig();
    fe.setup();
    const inf = fe.getInflight();
    assert.ok(inf);
    const region = regionView(inf.fd, inf.description);
    // A back-end that died after taking two writes to the same sector: the one in avail entry 0 was taken
    // second (counter 9), the other first (counter 5). The last write to land must be the newest one.
    const a = fe.write(0, 0, pattern(512, 1));
    const b = fe.write(0, 0, pattern(512, 2));
    region.setHeader({ version: 1, descNum: 128, lastBatchHead: 0, usedIdx: 0 });
    region.setInflight(a, 1, 9n);
    region.setInflight(b, 1, 5n);
    assert.ok(fe.setInflight(inf.fd, inf.description));
    assert.ok(fe.startRing(0, 0));
    first.pumpAll();
    assert.deepEqual(
      fe.results(0).map((r) => r.id),
      [b, a],
    );
    assert.deepEqual(new Uint8Array(readFileSync(path).subarray(0, 512)), pattern(512, 1));
    // New requests are numbered after the newest resubmitted one.
    const c = fe.write(0, 8, pattern(512, 3));
    fe.kickRing(0);
    first.pump();
    assert.equal(region.counter(c), 10n);
    assert.deepEqual(
      fe.results(0).map((r) => r.id),
      [c],
    );
    fe.close();
    native().close(inf.fd);
    image.close();
  });

  for (const withBuffer of [true, false]) {
    test(`GET_VRING_BASE in the middle of a request finishes it before the ring stops (${withBuffer ? "with" : "without"} an inflight buffer)`, () => {
      const { path, disk, fe, first, image } = rig({ chains: 1, bytes: 4 * KiB });
      fe.setup();
      const inf = withBuffer ? fe.getInflight() : null;
      if (inf) assert.ok(fe.setInflight(inf.fd, inf.description));
      assert.ok(fe.startRing(0));
      const d = pattern(256 * KiB, 7);
      const id = fe.write(0, 0, d);
      fe.kickRing(0);
      first.pump();
      assert.deepEqual(fe.results(0), [], "in progress after one turn");
      assert.ok(disk.counts.writtenBytes < d.length);
      const r = fe.request(REQ.GET_VRING_BASE, new Uint8Array(8));
      assert.ok(r);
      const base = new DataView(r.payload.buffer, r.payload.byteOffset).getUint32(4, true);
      assert.equal(base, 1);
      assert.deepEqual(
        fe.results(0).map((x) => [x.id, x.status]),
        [[id, 0]],
        "used before GET_VRING_BASE answered",
      );
      assert.deepEqual(new Uint8Array(readFileSync(path).subarray(0, d.length)), d);
      if (inf) assert.deepEqual(regionView(inf.fd, inf.description).inflightHeads(), []);
      // The ring restarts at the base it was given; nothing is done again, and it goes on.
      const written = disk.counts.writtenBytes;
      assert.ok(fe.startRing(0, base));
      first.pumpAll();
      assert.deepEqual(fe.results(0), []);
      assert.equal(disk.counts.writtenBytes, written);
      fe.write(0, 1024, pattern(512, 8));
      assert.equal(fe.run(0, 1)[0]?.status, 0);
      fe.close();
      if (inf) native().close(inf.fd);
      image.close();
    });
  }
});

describe("vhost-user blk: hostile inflight buffers", () => {
  test("GET_INFLIGHT_FD with a bad queue count or size closes the connection (its reply cannot be NACKed)", () => {
    for (const [nq, qs] of [
      [0, 128],
      [2, 128],
      [1, 0],
    ] as const) {
      const { fe, first, image } = rig();
      fe.setup();
      assert.equal(fe.getInflight(nq, qs), null, `num queues ${nq}, queue size ${qs}`);
      assert.equal(first.closed, true);
      assert.match(first.closeReason ?? "", /inflight: (num queues|queue size)/);
      fe.close();
      image.close();
    }
  });

  test("SET_INFLIGHT_FD: a buffer that does not fit, or comes while a ring runs, is NACKed", () => {
    const { fe, first, image } = rig();
    fe.setup();
    const inf = fe.getInflight();
    assert.ok(inf);
    const d = inf.description;
    const small = native().memfdCreate("small", MFD_CLOEXEC);
    const refused: Array<[string, number, InflightDescription]> = [
      ["mmap size too small", inf.fd, { ...d, mmapSize: d.mmapSize - 1n }],
      ["mmap size far too large", inf.fd, { ...d, mmapSize: 1n << 40n }],
      ["offset not page-aligned", inf.fd, { ...d, mmapOffset: 8n }],
      ["offset past the file", inf.fd, { ...d, mmapOffset: 1n << 20n }],
      ["offset above 2^53", inf.fd, { ...d, mmapOffset: 1n << 60n }],
      ["zero queues", inf.fd, { ...d, numQueues: 0 }],
      ["more queues than the device", inf.fd, { ...d, numQueues: 3 }],
      ["an empty file", small, d],
    ];
    for (const [what, fd, desc] of refused) {
      assert.equal(fe.setInflight(fd, desc), false, what);
      assert.equal(first.closed, false, what);
    }
    native().close(small);
    assert.ok(fe.setInflight(inf.fd, d));
    assert.ok(fe.startRing(0));
    assert.equal(fe.setInflight(inf.fd, d), false, "while ring 0 is started");
    // Still serving.
    fe.write(0, 0, pattern(512, 1));
    assert.equal(fe.run(0, 1)[0]?.status, 0);
    fe.close();
    native().close(inf.fd);
    image.close();
  });

  test("a ring larger than the buffer's queue size, or a region of an unknown version, does not start", () => {
    const { fe, first, image } = rig();
    fe.setup();
    const inf = fe.getInflight(1, 64);
    assert.ok(inf);
    assert.ok(fe.setInflight(inf.fd, inf.description));
    assert.equal(fe.startRing(0), false, "ring of 128 over a buffer for 64");
    assert.ok(first.logged.some((l) => /above the inflight buffer's queue size 64/.test(l)));
    const inf2 = fe.getInflight();
    assert.ok(inf2);
    regionView(inf2.fd, inf2.description).setHeader({ version: 7 });
    assert.ok(fe.setInflight(inf2.fd, inf2.description));
    assert.equal(fe.startRing(0), false, "version 7");
    assert.ok(first.logged.some((l) => /region version 7/.test(l)));
    assert.equal(first.closed, false);
    fe.close();
    native().close(inf.fd);
    native().close(inf2.fd);
    image.close();
  });

  test("garbage in the buffer (seeded, 300 regions) never escapes as an exception; marks outside the ring are cleared", () => {
    let seed = 0x5eed;
    const rand = () => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return seed >>> 8;
    };
    const { fe, connect, first, image } = rig();
    first.close();
    let started = 0;
    let resubmitted = 0;
    for (let i = 0; i < 300; i++) {
      const ch = connect();
      fe.channel = ch;
      fe.setup();
      const inf = fe.getInflight();
      assert.ok(inf);
      const region = regionView(inf.fd, inf.description);
      const bytes = new Uint8Array(region.v.buffer);
      for (let k = 0; k < bytes.length; k++) bytes[k] = rand() & 0xff;
      // Mostly a plausible header, so the garbage reaches the entries; flags mostly 0 or 1.
      if (i % 10 !== 0) region.setHeader({ version: 1, descNum: 128 });
      for (let h = 0; h < 128; h++) if (rand() % 4 !== 0) region.setInflight(h, rand() % 8 === 0 ? 1 : 0);
      assert.ok(fe.setInflight(inf.fd, inf.description));
      if (fe.startRing(0, rand() & 0xffff)) {
        started++;
        ch.pumpAll(200);
        // Heads the driver never made available are garbage: the device may refuse them (needs reset), but
        // the back-end itself goes on.
        resubmitted += ch.logged.filter((l) => /requests resubmitted/.test(l)).length;
      }
      assert.equal(ch.closed, false, `region ${i}: ${ch.closeReason}`);
      ch.close();
      native().close(inf.fd);
      // The ring's used idx may have moved under garbage resubmissions: a fresh driver state for the next one.
      fe.rings[0]?.usedChains();
    }
    assert.ok(started > 200, `started ${started}`);
    assert.ok(resubmitted > 0);
    fe.close();
    image.close();
  });
});
