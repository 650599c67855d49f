/**
 * The vhost-user blk back-end with an I/O pool (src/block/io-pool.ts): requests are at the disk together and are
 * used in the order they end, which a spec-following driver (test/helpers' split-ring driver) accepts (2.7.8,
 * 2.7.13: the device may use buffers in any order). A pool without threads lets a test choose that order; a pool
 * with threads is used as the back-end uses it.
 *
 * - out-of-order completion: the used ring holds the requests in the order their jobs ran, each once, data right;
 * - FLUSH waits for the writes in flight when it came (not for later ones), then fdatasync runs;
 * - inflight tracking with several requests out: only those not used stay marked, and after the back-end dies
 *   the next one resubmits exactly them;
 * - GET_VRING_BASE with requests in flight answers after they are used;
 * - many requests with real threads: every one used once with the right data; a lone request runs on the
 *   back-end's own thread.
 */
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { CountingBlockBackend, zeroBlockCounts } from "../../src/block/counting.ts";
import { FileBlockBackend } from "../../src/block/file.ts";
import { BlockIoPool } from "../../src/block/io-pool.ts";
import { VirtioBlk } from "../../src/devices/virtio/blk.ts";
import { native } from "../../src/native.ts";
import type { InflightDescription } from "../../src/vhost-user/inflight.ts";
import { REQ } from "../../src/vhost-user/protocol.ts";
import { startTsWorker } from "../../src/vmm/ts-worker.ts";
import { BlkDirectChannel, BlkFrontend, type BlkResult } from "../helpers/vhost-user-blk-frontend.ts";

const dir = mkdtempSync(join(tmpdir(), "vireo-vub-io-pool-"));
let files = 0;
const MiB = 1 << 20;
const KiB = 1024;
const pools: BlockIoPool[] = [];

after(() => {
  for (const p of pools) p.close();
});

function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (seed * 131 + i * 7 + (i >> 9)) & 0xff;
  return b;
}

/** An image, a pool over it (`threads` 0: jobs wait for runQueued), and a front-end connected in this process. */
function rig(threads: number) {
  const path = join(dir, `img-${files++}`);
  FileBlockBackend.create(path, 4 * MiB).close();
  const image = FileBlockBackend.open(path);
  const counts = zeroBlockCounts();
  const disk = new CountingBlockBackend(image, counts);
  const pool = new BlockIoPool({ threads, fd: image.descriptor, startWorker: startTsWorker, counts });
  pools.push(pool);
  if (threads > 0) assert.ok(pool.waitReady(60_000), "the I/O threads started");
  const model = () => new VirtioBlk({ backend: disk, name: "blk0", queueSize: 128, io: pool });
  const connect = () => new BlkDirectChannel(model);
  const channel = connect();
  const fe = new BlkFrontend(channel, 1, 128);
  return { path, image, counts, pool, fe, channel, connect };
}

const ids = (rs: BlkResult[]) => rs.map((r) => r.id);

/** Queue 0's inflight region as the front-end sees it (the spec's QueueRegionSplit layout). */
function inflightHeads(fd: number, d: InflightDescription): number[] {
  const { buffer } = native().mmap(fd, Number(d.mmapSize), Number(d.mmapOffset));
  const v = new DataView(buffer);
  const out: number[] = [];
  for (let h = 0; h < d.queueSize; h++) if (v.getUint8(16 + 16 * h) !== 0) out.push(h);
  return out;
}

describe("vhost-user blk with an I/O pool", () => {
  test("requests are used in the order their jobs end, each once, with the right data", () => {
    const { path, image, pool, fe, channel } = rig(0);
    const old = pattern(4 * KiB, 9);
    writeFileSync(path, old, { flag: "r+" });
    fe.setup();
    assert.ok(fe.startRing(0));
    const a = fe.write(0, 64, pattern(4 * KiB, 1));
    const b = fe.write(0, 128, pattern(4 * KiB, 2));
    const c = fe.read(0, 0, 4 * KiB);
    fe.kickRing(0);
    channel.pump();
    assert.deepEqual(fe.results(0), [], "nothing is used before its job ran");
    assert.deepEqual(pool.queuedJobs(), ["write", "write", "read"]);

    // The read, then the first write, end; then the second write.
    pool.runQueued([2, 0]);
    const first = fe.results(0);
    assert.deepEqual(ids(first), [c, a], "used in the order they ended");
    assert.deepEqual(
      first.map((r) => r.status),
      [0, 0],
    );
    assert.deepEqual(first[0]?.data, old, "the read's data");
    assert.equal(first[0]?.len, 4 * KiB + 1, "a read's used length counts its data and status");
    assert.equal(first[1]?.len, 1);
    pool.runQueued();
    assert.deepEqual(ids(fe.results(0)), [b]);
    assert.equal(fe.rings[0]?.outstandingCount, 0);
    const file = readFileSync(path);
    assert.deepEqual(new Uint8Array(file.subarray(64 * 512, 64 * 512 + 4 * KiB)), pattern(4 * KiB, 1));
    assert.deepEqual(new Uint8Array(file.subarray(128 * 512, 128 * 512 + 4 * KiB)), pattern(4 * KiB, 2));
    fe.close();
    image.close();
  });

  test("FLUSH waits for the writes in flight when it came, not for later ones, then fdatasync runs", () => {
    const { image, counts, pool, fe, channel } = rig(0);
    fe.setup();
    assert.ok(fe.startRing(0));
    const w1 = fe.write(0, 0, pattern(4 * KiB, 1));
    const w2 = fe.write(0, 8, pattern(4 * KiB, 2));
    const f = fe.flush(0);
    const w3 = fe.write(0, 16, pattern(4 * KiB, 3));
    fe.kickRing(0);
    channel.pump();
    assert.deepEqual(pool.queuedJobs(), ["write", "write", "write"], "the flush waits for w1 and w2");
    pool.runQueued([2]);
    assert.deepEqual(ids(fe.results(0)), [w3]);
    assert.deepEqual(pool.queuedJobs(), ["write", "write"], "a write after the flush does not hold it");
    pool.runQueued([1]);
    assert.deepEqual(ids(fe.results(0)), [w2]);
    assert.deepEqual(pool.queuedJobs(), ["write"], "w1 is still out");
    assert.equal(counts.flushes, 0);
    pool.runQueued([0]);
    assert.deepEqual(ids(fe.results(0)), [w1]);
    assert.deepEqual(pool.queuedJobs(), ["flush"], "both writes ended: fdatasync is queued");
    pool.runQueued();
    const done = fe.results(0);
    assert.deepEqual(
      done.map((r) => [r.id, r.status]),
      [[f, 0]],
    );
    assert.equal(counts.flushes, 1);
    assert.equal(counts.writes, 3);
    fe.close();
    image.close();
  });

  test("inflight tracking: requests still out stay marked; after the back-end dies the next resubmits them", () => {
    const { path, image, pool, fe, channel, connect } = rig(0);
    fe.setup();
    const inf = fe.getInflight();
    assert.ok(inf);
    assert.ok(fe.setInflight(inf.fd, inf.description));
    assert.ok(fe.startRing(0));
    const data = [0, 1, 2, 3].map((i) => pattern(4 * KiB, 10 + i));
    const heads = data.map((d, i) => fe.write(0, i * 8, d));
    fe.kickRing(0);
    channel.pump();
    assert.deepEqual(inflightHeads(inf.fd, inf.description), heads, "all four marked once taken");
    pool.runQueued([3, 1]);
    assert.deepEqual(ids(fe.results(0)), [heads[3], heads[1]]);
    assert.deepEqual(
      inflightHeads(inf.fd, inf.description),
      [heads[0], heads[2]],
      "the used ones are unmarked, the ones still out are not",
    );

    // The back-end dies with two writes out (their jobs never run): nothing of it is closed or waited for.
    channel.closed = true;
    const second = connect();
    fe.channel = second;
    fe.setup();
    assert.ok(fe.setInflight(inf.fd, inf.description));
    // QEMU restarts the ring at the used idx (2) when the back-end could not answer GET_VRING_BASE.
    assert.ok(fe.startRing(0, 2));
    second.pumpAll();
    pool.runQueued();
    const redone = fe.results(0);
    assert.deepEqual(
      redone.map((r) => [r.id, r.status]),
      [
        [heads[0], 0],
        [heads[2], 0],
      ],
      "the two still out resubmitted, oldest first, each used once",
    );
    assert.ok(
      second.logged.some((l) => /2 requests resubmitted, 0 already used; next available index 4/.test(l)),
      second.logged.join("\n"),
    );
    assert.deepEqual(inflightHeads(inf.fd, inf.description), []);
    assert.equal(fe.rings[0]?.outstandingCount, 0);
    const file = readFileSync(path);
    for (const [i, d] of data.entries()) {
      assert.deepEqual(new Uint8Array(file.subarray(i * 4 * KiB, (i + 1) * 4 * KiB)), d);
    }
    fe.close();
    native().close(inf.fd);
    image.close();
  });

  test("GET_VRING_BASE with requests at the I/O threads answers once they are all used", () => {
    const { path, image, pool, fe, channel } = rig(2);
    fe.setup();
    const inf = fe.getInflight();
    assert.ok(inf);
    assert.ok(fe.setInflight(inf.fd, inf.description));
    assert.ok(fe.startRing(0));
    const data = Array.from({ length: 8 }, (_, i) => pattern(4 * KiB, 20 + i));
    const heads = data.map((d, i) => fe.write(0, i * 8, d));
    fe.kickRing(0);
    channel.pump();
    assert.equal(pool.inFlight, 8, "all eight handed to the threads");
    assert.deepEqual(fe.results(0), []);
    const r = fe.request(REQ.GET_VRING_BASE, new Uint8Array(8));
    assert.ok(r);
    assert.equal(new DataView(r.payload.buffer, r.payload.byteOffset).getUint32(4, true), 8);
    const done = fe.results(0);
    assert.deepEqual(
      ids(done).sort((x, y) => x - y),
      [...heads].sort((x, y) => x - y),
      "every request used before the answer",
    );
    assert.ok(done.every((d) => d.status === 0));
    assert.equal(pool.inFlight, 0);
    assert.deepEqual(inflightHeads(inf.fd, inf.description), []);
    const file = readFileSync(path);
    for (const [i, d] of data.entries()) {
      assert.deepEqual(new Uint8Array(file.subarray(i * 4 * KiB, (i + 1) * 4 * KiB)), d);
    }
    fe.close();
    native().close(inf.fd);
    image.close();
  });

  test("32 requests at a time on 4 threads: each used once with the right data; a lone one runs inline", () => {
    const { image, pool, fe, channel } = rig(4);
    fe.setup();
    assert.ok(fe.startRing(0));
    const blocks = 512;
    const model = new Map<number, Uint8Array>();
    let seed = 1;
    for (let round = 0; round < 6; round++) {
      const want = new Map<number, { kind: "read" | "write"; block: number; data?: Uint8Array }>();
      const used = new Set<number>();
      for (let i = 0; i < 32; i++) {
        // Distinct blocks within a round: requests in flight together must not overlap.
        const block = (round * 37 + i * 13) % blocks;
        if (round % 2 === 0) {
          const data = pattern(4 * KiB, seed++);
          model.set(block, data);
          want.set(fe.write(0, block * 8, data), { kind: "write", block, data });
        } else {
          want.set(fe.read(0, block * 8, 4 * KiB), { kind: "read", block });
        }
      }
      fe.kickRing(0);
      channel.pump();
      const results: BlkResult[] = [];
      pool.waitFor(() => {
        results.push(...fe.results(0));
        return results.length >= 32;
      });
      for (const r of results) {
        assert.equal(r.status, 0);
        assert.ok(!used.has(r.id), `request ${r.id} used once`);
        used.add(r.id);
        const w = want.get(r.id);
        assert.ok(w, `request ${r.id} was made`);
        if (w.kind === "read") {
          assert.deepEqual(r.data, model.get(w.block) ?? new Uint8Array(4 * KiB), `block ${w.block}`);
        }
      }
      assert.equal(used.size, 32);
    }
    const before = pool.inlineJobs;
    const lone = fe.read(0, 0, 4 * KiB);
    fe.kickRing(0);
    channel.pump();
    assert.deepEqual(ids(fe.results(0)), [lone], "used within the turn that took it");
    assert.equal(pool.inlineJobs, before + 1);
    fe.close();
    image.close();
  });
});
