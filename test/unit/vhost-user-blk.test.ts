/**
 * The vhost-user back-end serving vireo's VirtioBlk over the file block backend, in this process (no socket):
 * a front-end built on the virtio test driver negotiates, hands over a memfd memory table and starts split rings;
 * reads, writes, FLUSH (the image file holds the bytes afterwards, and fdatasync ran), DISCARD, WRITE_ZEROES,
 * GET_ID, a read-only image, GET_CONFIG / SET_CONFIG with their offset and size checks, several request queues
 * (MQ), and hostile front-ends for each of these.
 */
import assert from "node:assert/strict";
import { mkdtempSync, readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import { CountingBlockBackend } from "../../src/block/counting.ts";
import { FileBlockBackend } from "../../src/block/file.ts";
import { BLK_CONFIG, VirtioBlk } from "../../src/devices/virtio/blk.ts";
import { EFD_CLOEXEC, native } from "../../src/native.ts";
import { encodeRequest, PROTOCOL_F, REQ, statePayload } from "../../src/vhost-user/protocol.ts";
import { BLK_F, BLK_T, BlkDirectChannel, BlkFrontend } from "../helpers/vhost-user-blk-frontend.ts";

const dir = mkdtempSync(join(tmpdir(), "vireo-vub-"));
let files = 0;
const MiB = 1 << 20;

function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (seed * 131 + i * 7 + (i >> 9)) & 0xff;
  return b;
}

function rig(opts: { readOnly?: boolean; numQueues?: number; size?: number; serial?: string } = {}) {
  const path = join(dir, `img-${files++}`);
  FileBlockBackend.create(path, opts.size ?? 4 * MiB).close();
  const image = FileBlockBackend.open(path, { readOnly: opts.readOnly });
  const disk = new CountingBlockBackend(image);
  const numQueues = opts.numQueues ?? 1;
  const model = () =>
    new VirtioBlk({ backend: disk, name: "blk0", numQueues, queueSize: 128, serial: opts.serial });
  const channel = new BlkDirectChannel(model);
  const fe = new BlkFrontend(channel, numQueues, 128);
  return { path, image, disk, channel, fe, model };
}

function fileBytes(path: string, offset: number, len: number): Uint8Array {
  return new Uint8Array(readFileSync(path).subarray(offset, offset + len));
}

function configRequest(offset: number, size: number, flags = 0, data?: Uint8Array): Uint8Array {
  const p = new Uint8Array(12 + size);
  const v = new DataView(p.buffer);
  v.setUint32(0, offset, true);
  v.setUint32(4, size, true);
  v.setUint32(8, flags, true);
  if (data) p.set(data, 12);
  return p;
}

function openFds(): number {
  return readdirSync("/proc/self/fd").length;
}

describe("vhost-user blk: requests", () => {
  test("write, flush, read: the file holds the bytes after FLUSH, and fdatasync ran for it", () => {
    const { path, disk, fe, image } = rig();
    fe.setup();
    assert.ok(fe.startRing(0));
    const data = pattern(64 * 1024, 3);
    const w = fe.write(0, 8, data);
    const f = fe.flush(0);
    const done = fe.run(0, 2);
    assert.deepEqual(
      done.map((r) => [r.id, r.status]),
      [
        [w, 0],
        [f, 0],
      ],
    );
    assert.equal(disk.counts.flushes, 1, "one fdatasync for one FLUSH");
    assert.equal(disk.counts.writtenBytes, data.length);
    assert.deepEqual(fileBytes(path, 8 * 512, data.length), data);
    // Read back through the ring, at an offset inside the write.
    const r = fe.read(0, 16, 8192);
    const [got] = fe.run(0, 1);
    assert.equal(got?.id, r);
    assert.equal(got?.status, 0);
    assert.equal(got?.len, 8192 + 1);
    assert.deepEqual(got?.data, data.subarray(8 * 512, 8 * 512 + 8192));
    fe.close();
    image.close();
  });

  test("a write past the capacity, or not whole sectors, fails with IOERR and writes nothing", () => {
    const { disk, fe, image } = rig({ size: MiB });
    fe.setup();
    assert.ok(fe.startRing(0));
    fe.write(0, MiB / 512 - 1, pattern(1024, 1));
    fe.write(0, 0, pattern(100, 1));
    const done = fe.run(0, 2);
    assert.deepEqual(
      done.map((r) => r.status),
      [1, 1],
    );
    assert.equal(disk.counts.writes, 0);
    fe.close();
    image.close();
  });

  test("discard and write-zeroes: the zeroed range reads zero in the file, discard is accepted", () => {
    const { path, fe, image } = rig();
    fe.setup();
    assert.ok(fe.offered & (1n << BigInt(BLK_F.DISCARD)));
    assert.ok(fe.offered & (1n << BigInt(BLK_F.WRITE_ZEROES)));
    assert.ok(fe.startRing(0));
    fe.write(0, 0, pattern(16 * 512, 9));
    fe.segment(0, BLK_T.WRITE_ZEROES, 4, 8);
    fe.segment(0, BLK_T.DISCARD, 12, 4);
    // Unmap on a discard is not allowed (5.2.6.2): UNSUPP.
    fe.segment(0, BLK_T.DISCARD, 0, 1, 1);
    const done = fe.run(0, 4);
    assert.deepEqual(
      done.map((r) => r.status),
      [0, 0, 0, 2],
    );
    const bytes = fileBytes(path, 0, 16 * 512);
    assert.deepEqual(bytes.subarray(0, 4 * 512), pattern(16 * 512, 9).subarray(0, 4 * 512));
    assert.ok(bytes.subarray(4 * 512, 12 * 512).every((b) => b === 0));
    fe.close();
    image.close();
  });

  test("GET_ID returns the serial, NUL-padded to 20 bytes", () => {
    const { fe, image } = rig({ serial: "vub-serial-42" });
    fe.setup();
    assert.ok(fe.startRing(0));
    fe.getId(0);
    const [r] = fe.run(0, 1);
    assert.equal(r?.status, 0);
    const want = new Uint8Array(20);
    want.set(new TextEncoder().encode("vub-serial-42"));
    assert.deepEqual(r?.data, want);
    fe.close();
    image.close();
  });

  test("read-only: VIRTIO_BLK_F_RO offered; writes, discards and write-zeroes fail with IOERR, reads work", () => {
    const { path, disk, fe, image } = rig({ readOnly: true });
    fe.setup();
    assert.ok(fe.offered & (1n << BigInt(BLK_F.RO)));
    assert.ok(fe.startRing(0));
    const before = readFileSync(path);
    fe.write(0, 0, pattern(512, 1));
    fe.segment(0, BLK_T.WRITE_ZEROES, 0, 1);
    fe.segment(0, BLK_T.DISCARD, 0, 1);
    fe.read(0, 0, 512);
    fe.flush(0);
    const done = fe.run(0, 5);
    assert.deepEqual(
      done.map((r) => r.status),
      [1, 1, 1, 0, 0],
    );
    assert.equal(disk.counts.writes, 0);
    assert.deepEqual(readFileSync(path), before);
    fe.close();
    image.close();
  });
});

describe("vhost-user blk: CONFIG", () => {
  test("GET_CONFIG returns the device's configuration space (capacity of the file), zeroes past its end", () => {
    const { fe, image } = rig({ size: 3 * MiB });
    fe.setup();
    assert.ok(fe.offeredProtocol & (1n << BigInt(PROTOCOL_F.CONFIG)));
    const r = fe.request(REQ.GET_CONFIG, configRequest(0, BLK_CONFIG.SIZE));
    assert.ok(r);
    assert.equal(r.payload.length, 12 + BLK_CONFIG.SIZE);
    const v = new DataView(r.payload.buffer, r.payload.byteOffset + 12);
    assert.equal(v.getBigUint64(BLK_CONFIG.CAPACITY, true), BigInt((3 * MiB) / 512));
    assert.equal(v.getUint32(BLK_CONFIG.BLK_SIZE, true), 512);
    assert.equal(v.getUint16(BLK_CONFIG.NUM_QUEUES, true), 1);
    // A front-end with a longer struct (QEMU's has secure-erase fields after byte 60): the rest reads zero.
    const longer = fe.request(REQ.GET_CONFIG, configRequest(56, 16));
    assert.equal(longer?.payload.length, 12 + 16);
    assert.ok(longer?.payload.subarray(12 + 4).every((b) => b === 0));
    fe.close();
    image.close();
  });

  test("GET_CONFIG with a bad offset, size or flags gets the spec's empty payload; the connection goes on", () => {
    const { fe, channel, image } = rig();
    fe.setup();
    const bad: Array<[string, Uint8Array]> = [
      ["offset + size past 256", configRequest(250, 10)],
      ["offset 2^32 - 1", configRequest(0xffff_ffff, 4)],
      ["size 0", configRequest(0, 0)],
      ["flags 2", configRequest(0, 8, 2)],
    ];
    for (const [what, p] of bad) {
      const r = fe.request(REQ.GET_CONFIG, p);
      assert.ok(r, what);
      assert.equal(r.request, REQ.GET_CONFIG, what);
      assert.equal(r.payload.length, 0, what);
      assert.equal(channel.closed, false, what);
    }
    // A size field that disagrees with the payload is a framing error: the connection closes.
    const p = configRequest(0, 8);
    new DataView(p.buffer).setUint32(4, 9, true);
    channel.send(encodeRequest(REQ.GET_CONFIG, p), []);
    assert.equal(channel.closed, true);
    assert.match(channel.closeReason ?? "", /config size 9/);
    fe.close();
    image.close();
  });

  test("SET_CONFIG: read-only fields refused, out-of-range refused, migration with the same bytes accepted", () => {
    const { fe, channel, image } = rig();
    fe.setup();
    const cur = fe.request(REQ.GET_CONFIG, configRequest(0, 8));
    assert.ok(cur);
    const capacity = cur.payload.slice(12);
    assert.equal(
      fe.acked(REQ.SET_CONFIG, configRequest(0, 8, 0, new Uint8Array(8))),
      false,
      "capacity is read-only",
    );
    assert.equal(fe.acked(REQ.SET_CONFIG, configRequest(56, 8, 0)), false, "past the 60-byte space");
    assert.equal(fe.acked(REQ.SET_CONFIG, configRequest(0, 8, 7, capacity)), false, "flags 7");
    assert.equal(fe.acked(REQ.SET_CONFIG, configRequest(0, 8, 1, capacity)), true, "migration, same bytes");
    assert.equal(
      fe.acked(REQ.SET_CONFIG, configRequest(0, 8, 1, new Uint8Array(8))),
      false,
      "migration, another capacity",
    );
    assert.equal(channel.closed, false);
    const after = fe.request(REQ.GET_CONFIG, configRequest(0, 8));
    assert.deepEqual(after?.payload.slice(12), capacity);
    fe.close();
    image.close();
  });

  test("GET_CONFIG without PROTOCOL_F_CONFIG negotiated closes the connection (a reply cannot be NACKed)", () => {
    const { fe, channel, image } = rig();
    fe.setup({ protocol: 1n << BigInt(PROTOCOL_F.REPLY_ACK) });
    assert.equal(fe.request(REQ.GET_CONFIG, configRequest(0, 8)), null);
    assert.equal(channel.closed, true);
    assert.match(channel.closeReason ?? "", /GET_CONFIG without its protocol feature/);
    fe.close();
    image.close();
  });

  test("a back-end without the extensions does not offer them and refuses their requests", () => {
    const { model, image } = rig();
    const channel = new BlkDirectChannel(model, { extensions: {} });
    const fe = new BlkFrontend(channel);
    fe.setup();
    // REPLY_ACK, LOG_SHMFD and CONFIGURE_MEM_SLOTS are always offered (every back-end logs its writes for a
    // migration and takes its memory table a region at a time).
    assert.equal(
      fe.offeredProtocol,
      (1n << BigInt(PROTOCOL_F.REPLY_ACK)) |
        (1n << BigInt(PROTOCOL_F.LOG_SHMFD)) |
        (1n << BigInt(PROTOCOL_F.CONFIGURE_MEM_SLOTS)),
    );
    assert.equal(fe.acked(REQ.SET_CONFIG, configRequest(0, 8, 1, new Uint8Array(8))), false);
    assert.equal(fe.request(REQ.GET_QUEUE_NUM), null);
    assert.equal(channel.closed, true);
    fe.close();
    image.close();
  });
});

describe("vhost-user blk: MQ", () => {
  test("two request queues: GET_QUEUE_NUM, VIRTIO_BLK_F_MQ, num_queues, requests served on both", () => {
    const { path, fe, channel, image } = rig({ numQueues: 2 });
    fe.setup();
    assert.ok(fe.offeredProtocol & (1n << BigInt(PROTOCOL_F.MQ)));
    assert.equal(fe.getU64(REQ.GET_QUEUE_NUM), 2n);
    assert.ok(fe.offered & (1n << BigInt(BLK_F.MQ)));
    const cfg = fe.request(REQ.GET_CONFIG, configRequest(BLK_CONFIG.NUM_QUEUES, 2));
    assert.equal(new DataView(cfg?.payload.buffer as ArrayBuffer, 12).getUint16(0, true), 2);
    assert.ok(fe.startRing(0));
    assert.ok(fe.startRing(1));
    const a = pattern(4096, 1);
    const b = pattern(4096, 2);
    fe.write(0, 0, a);
    fe.write(1, 8, b);
    assert.equal(fe.run(0, 1)[0]?.status, 0);
    assert.equal(fe.run(1, 1)[0]?.status, 0);
    assert.deepEqual(fileBytes(path, 0, 4096), a);
    assert.deepEqual(fileBytes(path, 4096, 4096), b);
    // A third ring does not exist.
    assert.equal(fe.acked(REQ.SET_VRING_NUM, statePayload(2, 128)), false);
    assert.equal(channel.closed, false);
    fe.close();
    image.close();
  });

  test("one queue: GET_QUEUE_NUM says 1 and VIRTIO_BLK_F_MQ is not offered", () => {
    const { fe, image } = rig();
    fe.setup();
    assert.equal(fe.getU64(REQ.GET_QUEUE_NUM), 1n);
    assert.equal(fe.offered & (1n << BigInt(BLK_F.MQ)), 0n);
    fe.close();
    image.close();
  });
});

describe("vhost-user blk: fds", () => {
  test("no fd leaks across a session with an inflight buffer", () => {
    const before = openFds();
    const { fe, image } = rig();
    fe.setup();
    const inf = fe.getInflight();
    assert.ok(inf);
    assert.ok(fe.setInflight(inf.fd, inf.description));
    assert.ok(fe.startRing(0));
    fe.write(0, 0, pattern(512, 1));
    fe.run(0, 1);
    fe.close();
    native().close(inf.fd);
    image.close();
    assert.equal(openFds(), before);
  });

  test("an eventfd as the inflight buffer is refused and closed", () => {
    const before = openFds();
    const { fe, channel, image } = rig();
    fe.setup();
    const ev = native().eventfd(0, EFD_CLOEXEC);
    assert.equal(
      fe.setInflight(ev, { mmapSize: 4096n, mmapOffset: 0n, numQueues: 1, queueSize: 128 }),
      false,
    );
    assert.equal(channel.closed, false);
    native().close(ev);
    fe.close();
    image.close();
    assert.equal(openFds(), before);
  });
});
