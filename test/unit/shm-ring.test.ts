/**
 * The shared-memory frame rings of shm ports (src/net/shm-ring.ts, shm-channel.ts): frames in order through many
 * wraps, a full ring refusing, the kick handshake, a broken ring refused (an index that cannot be, a length past
 * its slot), a producer thread and a consumer thread over one SharedArrayBuffer losing and reordering nothing,
 * and the channel's hello: what the server sends is mapped by the peer, the memory's size is sealed, and a hello
 * that is short, foreign or names more memory than was sent is refused with its fds closed.
 */
import assert from "node:assert/strict";
import { fstatSync, ftruncateSync, readdirSync } from "node:fs";
import { test } from "node:test";
import { EFD_CLOEXEC, EFD_NONBLOCK, MFD_CLOEXEC, native } from "../../src/native.ts";
import { offerShmChannel, receiveShmChannel } from "../../src/net/shm-channel.ts";
import { SHM_RING_HEADER, ShmRing, ShmRingError, shmRingBytes } from "../../src/net/shm-ring.ts";
import { startTsWorker } from "../../src/vmm/ts-worker.ts";

function pair(slots = 8, slotSize = 128) {
  const buffer = new SharedArrayBuffer(shmRingBytes(slots, slotSize));
  return {
    buffer,
    producer: new ShmRing(buffer, 0, slots, slotSize, true),
    consumer: new ShmRing(buffer, 0, slots, slotSize, false),
  };
}

function frameOf(i: number, len: number): Uint8Array {
  const f = new Uint8Array(len);
  for (let k = 0; k < len; k++) f[k] = (i * 7 + k) & 0xff;
  return f;
}

test("frames come out in order, whole, through many wraps; a full ring refuses", () => {
  const { producer, consumer } = pair(8, 128);
  let sent = 0;
  let got = 0;
  for (let round = 0; round < 50; round++) {
    const burst = 1 + (round % 8);
    for (let k = 0; k < burst; k++) {
      const len = 1 + ((sent * 13) % producer.maxFrame);
      assert.ok(producer.push(frameOf(sent, len), 0, len));
      sent++;
    }
    assert.equal(consumer.available(), 0, "nothing before publish");
    producer.publish();
    assert.equal(consumer.available(), burst);
    for (let k = 0; k < burst; k++) {
      const at = consumer.frameAt();
      const len = 1 + ((got * 13) % producer.maxFrame);
      assert.equal(consumer.frameLength, len);
      assert.deepEqual(consumer.bytes.subarray(at, at + len), frameOf(got, len));
      consumer.next();
      got++;
    }
    consumer.release();
  }
  assert.equal(got, sent);
  for (let k = 0; k < 8; k++) assert.ok(producer.push(frameOf(k, 60), 0, 60));
  assert.equal(producer.push(frameOf(9, 60), 0, 60), false, "the ninth frame of 8 slots");
  assert.equal(producer.reserve(), -1);
  producer.publish();
  consumer.frameAt();
  consumer.next();
  assert.equal(producer.room(), 0, "a slot comes back only with release");
  consumer.release();
  assert.equal(producer.room(), 1);
  assert.ok(producer.push(new Uint8Array(128), 0, 128), "a frame as long as the slot fits");
  assert.throws(() => producer.push(new Uint8Array(200), 0, 200), ShmRingError, "longer than a slot");
});

test("the kick handshake: asked for while the consumer sleeps, not after it woke", () => {
  const { producer, consumer } = pair();
  assert.equal(producer.push(frameOf(0, 60), 0, 60) && producer.publish(), false, "nobody asked yet");
  assert.equal(consumer.sleep(), true, "a frame was there: do not sleep");
  consumer.awake();
  consumer.frameAt();
  consumer.next();
  consumer.release();
  assert.equal(consumer.sleep(), false, "empty: sleep");
  producer.push(frameOf(1, 60), 0, 60);
  assert.equal(producer.publish(), true, "the sleeping consumer asked for a kick");
  consumer.awake();
  producer.push(frameOf(2, 60), 0, 60);
  assert.equal(producer.publish(), false);
});

test("a broken ring is refused: head too far ahead or behind, a length past the slot, sizes that disagree", () => {
  const slots = 8;
  const { buffer, producer, consumer } = pair(slots, 128);
  const words = new Int32Array(buffer, 0, SHM_RING_HEADER / 4);
  Atomics.store(words, 0, slots + 1);
  assert.throws(() => consumer.available(), /head is 9, which cannot follow/);
  Atomics.store(words, 0, -1);
  assert.throws(() => consumer.available(), /head is 4294967295/);
  Atomics.store(words, 0, 1);
  new DataView(buffer).setUint32(SHM_RING_HEADER, 129, true); // slot 0's length
  assert.equal(consumer.available(), 1);
  assert.throws(() => consumer.frameAt(), /frame 0 has length 129, more than a slot holds \(128\)/);
  // The consumer's tail moved past what the producer wrote.
  Atomics.store(words, 16, 12);
  assert.throws(() => {
    for (let i = 0; i < slots + 1; i++) producer.push(frameOf(i, 8), 0, 8);
  }, /tail is 12, which cannot follow the frames this side counted \(8\)/);
  assert.throws(
    () => new ShmRing(buffer, 0, 4, 128, false),
    /the ring says 8 slots of 128 bytes, not 4 of 128/,
  );
  assert.throws(() => new ShmRing(buffer, 0, 6, 128, true), /power of 2/);
  assert.throws(() => new ShmRing(buffer, 0, 8, 100, true), /multiple of 64/);
  assert.throws(() => new ShmRing(buffer, 64, 8, 128, true), /does not fit/);
});

test("a producer thread and a consumer thread: 200000 frames, none lost or out of order", async () => {
  const slots = 64;
  const slotSize = 128;
  const total = 200_000;
  const buffer = new SharedArrayBuffer(shmRingBytes(slots, slotSize));
  const consumer = new ShmRing(buffer, 0, slots, slotSize, true);
  const worker = startTsWorker(new URL("../helpers/shm-producer.ts", import.meta.url), {
    workerData: { buffer, slots, slotSize, total },
  });
  const dv = new DataView(buffer);
  let expect = 0;
  const deadline = Date.now() + 60_000;
  while (expect < total) {
    const n = consumer.available();
    for (let k = 0; k < n; k++) {
      const at = consumer.frameAt();
      assert.equal(dv.getUint32(at, true), expect);
      assert.equal(consumer.frameLength, 8 + (expect % 50));
      consumer.next();
      expect++;
    }
    consumer.release();
    if (n === 0) {
      if (Date.now() > deadline) assert.fail(`only ${expect} frames in 60 s`);
      await new Promise((r) => setImmediate(r));
    }
  }
  await worker.terminate();
  assert.equal(expect, total);
});

test("the channel: the peer maps what the server offers, rings each way, and cannot resize the memory", () => {
  const n = native();
  const [a, b] = n.socketpair();
  const server = offerShmChannel(a, 16, 256);
  const peer = receiveShmChannel(b, "test");
  try {
    assert.ok(peer.out.push(frameOf(1, 100), 0, 100));
    peer.out.publish();
    assert.equal(server.in.available(), 1);
    const at = server.in.frameAt();
    assert.deepEqual(server.in.bytes.subarray(at, at + 100), frameOf(1, 100));
    assert.ok(server.out.push(frameOf(2, 60), 0, 60));
    server.out.publish();
    assert.equal(peer.in.available(), 1);
    // The peer's kick fd is the server's "kick the peer", and the other way round (the same eventfds).
    n.writeFd(peer.kickOther, new BigUint64Array([1n]));
    assert.equal(n.readFd(server.kickMe, new BigUint64Array(1)), 8);
    assert.throws(
      () => ftruncateSync(peer.memFd, 0),
      /EPERM/,
      "sealed: the peer cannot shrink it under the server",
    );
    assert.equal(fstatSync(server.memFd).size, 2 * shmRingBytes(16, 256));
  } finally {
    server.close();
    peer.close();
    n.close(a);
    n.close(b);
  }
});

test("a server asked for rings that cannot be refuses with ShmRingError and keeps no fd", () => {
  const n = native();
  const [a, b] = n.socketpair();
  const before = readdirSync("/proc/self/fd").length;
  assert.throws(
    () => offerShmChannel(a, 12, 256),
    (e: unknown) => e instanceof ShmRingError && /power of 2/.test(e.message),
  );
  assert.equal(readdirSync("/proc/self/fd").length, before, "the memfd and eventfds made for it were closed");
  n.close(a);
  n.close(b);
});

test("a hello that is short, foreign, or names more memory than was sent is refused, its fds closed", () => {
  const n = native();
  const openFds = () => readdirSync("/proc/self/fd").length;
  const cases: Array<{ hello: number[]; memBytes: number; re: RegExp }> = [
    {
      hello: [0x4d485356, 1, 16],
      memBytes: 4096,
      re: /expected the channel's 16-byte hello with 3 fds, got 12 bytes/,
    },
    { hello: [0x12345678, 1, 16, 256], memBytes: 1 << 20, re: /bad magic/ },
    { hello: [0x4d485356, 2, 16, 256], memBytes: 1 << 20, re: /channel version 2/ },
    { hello: [0x4d485356, 1, 16, 256], memBytes: 4096, re: /do not fit the memory sent \(4096 bytes\)/ },
    {
      hello: [0x4d485356, 1, 1 << 20, 256],
      memBytes: 4096,
      re: /a ring has a power of 2 of slots up to 65536, not 1048576/,
    },
    { hello: [0x4d485356, 1, 12, 256], memBytes: 1 << 20, re: /power of 2/ },
  ];
  for (const c of cases) {
    const [a, b] = n.socketpair();
    const mem = n.memfdCreate("t", MFD_CLOEXEC);
    ftruncateSync(mem, c.memBytes);
    const k1 = n.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    const k2 = n.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    n.sendmsg(a, new Uint32Array(c.hello), [mem, k1, k2]);
    for (const fd of [mem, k1, k2]) n.close(fd);
    const before = openFds();
    assert.throws(
      () => receiveShmChannel(b, "srv"),
      (e: unknown) => e instanceof ShmRingError && c.re.test(e.message),
    );
    assert.equal(openFds(), before, `${c.re}: the fds received were closed`);
    n.close(a);
    n.close(b);
  }
});

test("a peer writing anything into the ring's words: each call succeeds within the slots or throws ShmRingError", () => {
  const slots = 16;
  const slotSize = 128;
  let seed = 12345;
  const rand = () => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return seed;
  };
  for (let round = 0; round < 300; round++) {
    const { buffer, producer, consumer } = pair(slots, slotSize);
    const words = new Int32Array(buffer, 0, (SHM_RING_HEADER + 4 * slots) / 4);
    const slotsStart = SHM_RING_HEADER + 64;
    const slotsEnd = slotsStart + slots * slotSize;
    for (let step = 0; step < 50; step++) {
      // The hostile side scribbles over an index, a flag or a length; the honest side goes on using its end.
      const word = [0, 16, 32, 64 + (rand() % slots)][rand() % 4] as number;
      words[word] = rand() % 3 === 0 ? rand() | 0 : (words[word] as number) + ((rand() % 5) - 2);
      try {
        const n = consumer.available();
        assert.ok(n >= 0 && n <= slots, `available ${n}`);
        for (let i = 0; i < n; i++) {
          const at = consumer.frameAt();
          assert.ok(
            at >= slotsStart && at + consumer.frameLength <= slotsEnd,
            `frame at ${at}+${consumer.frameLength}`,
          );
          consumer.next();
        }
        consumer.release();
      } catch (e) {
        assert.ok(e instanceof ShmRingError, String(e));
      }
      try {
        const at = producer.reserve();
        if (at >= 0) {
          assert.ok(at >= slotsStart && at + slotSize <= slotsEnd, `reserve ${at}`);
          producer.commit(rand() % slotSize);
          producer.publish();
        }
      } catch (e) {
        assert.ok(e instanceof ShmRingError, String(e));
      }
    }
  }
});
