/**
 * The dirty log of a live migration with vhost-user (vhost-user.rst, "Migration", PROTOCOL_F_LOG_SHMFD): the log's
 * bit layout (page = addr / 4096, log[page / 8] bit page % 8, guest-physical), its refusals, and vireo's back-end
 * marking every page of guest memory it changes while VHOST_F_LOG_ALL is negotiated: a loopback virtio-net moves
 * frames with both rings logged, both rings are stopped (GET_VRING_BASE), and every page of guest memory whose bytes
 * changed must be marked in the front-end's log; with LOG_ALL off nothing is marked.
 */
import assert from "node:assert/strict";
import { ftruncateSync } from "node:fs";
import { describe, test } from "node:test";
import { VirtioNet } from "../../src/devices/virtio/net.ts";
import { MFD_CLOEXEC, native } from "../../src/native.ts";
import {
  logBytesFor,
  MAX_LOG_BYTES,
  VHOST_F_LOG_ALL,
  VHOST_LOG_PAGE,
  VhostUserDirtyLog,
} from "../../src/vhost-user/dirty-log.ts";
import { LoopbackBackend, zeroCounts } from "../../src/vhost-user/net-backends.ts";
import {
  PROTOCOL_F,
  REQ,
  statePayload,
  u64Payload,
  VHOST_USER_F_PROTOCOL_FEATURES,
} from "../../src/vhost-user/protocol.ts";
import { DirectChannel, NetFrontend, REGION1_GPA } from "../helpers/vhost-user-frontend.ts";

const bit = (b: number) => 1n << BigInt(b);
const VERSION_1 = 32;

/** A memfd log of `bytes` at `offset`, mapped here too (what a front-end makes). */
function makeLog(bytes: number, offset = 0) {
  const fd = native().memfdCreate("vireo-test-log", MFD_CLOEXEC);
  ftruncateSync(fd, offset + bytes);
  const skip = offset % VHOST_LOG_PAGE;
  const { buffer } = native().mmap(fd, skip + bytes, offset - skip);
  const bits = new Uint8Array(buffer, skip, bytes);
  return { fd, bits, log: new VhostUserDirtyLog(bits) };
}

function logPayload(size: number, offset: number): Uint8Array {
  const p = new Uint8Array(16);
  const v = new DataView(p.buffer);
  v.setBigUint64(0, BigInt(size), true);
  v.setBigUint64(8, BigInt(offset), true);
  return p;
}

describe("vhost-user dirty log", () => {
  test("marks follow the spec's layout, clipped to the log, and take clears them in ascending order", () => {
    const { fd, bits, log } = makeLog(16);
    log.enabled = true;
    log.markGuest(0, 1); // page 0: byte 0, bit 0
    log.markGuest(9 * VHOST_LOG_PAGE + 5, 1); // page 9: byte 1, bit 1
    log.markGuest(20 * VHOST_LOG_PAGE - 1, 2); // pages 19 and 20: byte 2, bits 3 and 4
    log.markGuest(127 * VHOST_LOG_PAGE, 2 * VHOST_LOG_PAGE); // page 127 (byte 15, bit 7); 128 is past the log
    log.markGuest(5 * VHOST_LOG_PAGE, 0); // nothing
    assert.deepEqual([...bits], [1, 2, 0b11000, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80]);
    // As a GuestMemory's page log: buffer offsets from `base`, and only while enabled.
    log.base = 64 * VHOST_LOG_PAGE;
    log.mark(VHOST_LOG_PAGE, 1); // page 65: byte 8, bit 1
    log.enabled = false;
    log.mark(2 * VHOST_LOG_PAGE, 1);
    assert.equal(bits[8], 2);
    const pages: number[] = [];
    log.take((p) => pages.push(p));
    assert.deepEqual(pages, [0, 9, 19, 20, 65, 127]);
    assert.deepEqual([...bits], new Array(16).fill(0), "taken marks are cleared");
    native().close(fd);
  });

  test("a log that is empty, oversized, past its file's end or not a file is refused", () => {
    const { fd } = makeLog(4096);
    assert.throws(() => VhostUserDirtyLog.map(fd, 0n, 0n), /log size 0/);
    assert.throws(() => VhostUserDirtyLog.map(fd, BigInt(MAX_LOG_BYTES + 1), 0n), /log size/);
    assert.throws(() => VhostUserDirtyLog.map(fd, 4096n, 1n), /the file has 4096 bytes, the log needs 4097/);
    assert.throws(() => VhostUserDirtyLog.map(fd, 8n, 1n << 60n), /above 2\^53/);
    const [a, b] = native().socketpair(false);
    assert.throws(() => VhostUserDirtyLog.map(a, 8n, 0n), /not a regular file/);
    // An offset inside a page maps from that page: the log starts at the offset.
    const log = VhostUserDirtyLog.map(fd, 8n, 100n);
    log.enabled = true;
    log.markGuest(3 * VHOST_LOG_PAGE, 1);
    const { buffer } = native().mmap(fd, 4096, 0);
    assert.equal(new Uint8Array(buffer)[100], 1 << 3);
    for (const x of [a, b, fd]) native().close(x);
  });

  test("logBytesFor covers every page below the end", () => {
    assert.equal(logBytesFor(1), 1);
    assert.equal(logBytesFor(8 * VHOST_LOG_PAGE), 1);
    assert.equal(logBytesFor(8 * VHOST_LOG_PAGE + 1), 2);
    assert.equal(logBytesFor(2 ** 30), 2 ** 15);
  });
});

/** A loopback virtio-net back-end with LOG_SHMFD negotiated and a log covering the test's guest memory. */
function loggingRig(logAll: boolean) {
  const counts = zeroCounts();
  const channel = new DirectChannel(
    () => new VirtioNet({ backend: new LoopbackBackend(counts), name: "net0", queueSize: 256 }),
  );
  const fe = new NetFrontend(channel);
  fe.setup();
  const proto = fe.getU64(REQ.GET_PROTOCOL_FEATURES);
  assert.ok(proto & bit(PROTOCOL_F.LOG_SHMFD), "the back-end offers LOG_SHMFD");
  fe.request(REQ.SET_PROTOCOL_FEATURES, u64Payload(bit(PROTOCOL_F.REPLY_ACK) | bit(PROTOCOL_F.LOG_SHMFD)));
  const offered = fe.getU64(REQ.GET_FEATURES);
  assert.ok(offered & bit(VHOST_F_LOG_ALL), "the back-end offers VHOST_F_LOG_ALL");
  const bytes = logBytesFor(REGION1_GPA + 2 * (1 << 20));
  const shared = makeLog(bytes, 8192);
  const reply = fe.request(REQ.SET_LOG_BASE, logPayload(bytes, 8192), { fds: [shared.fd] });
  assert.ok(reply !== null && reply.request === REQ.SET_LOG_BASE, "SET_LOG_BASE is answered");
  const features =
    bit(VERSION_1) | bit(VHOST_USER_F_PROTOCOL_FEATURES) | (logAll ? bit(VHOST_F_LOG_ALL) : 0n);
  assert.ok(fe.acked(REQ.SET_FEATURES, u64Payload(features)));
  fe.startRing(0, { logUsed: true });
  fe.startRing(1, { logUsed: true });
  return { channel, fe, counts, shared };
}

/**
 * Frames round the loopback, then both rings stopped (GET_VRING_BASE). Returns the pages the back-end changed:
 * guest memory is compared before and after each of its turns (the driver's own writes, descriptors, avail
 * entries, transmit buffers, happen between them and are not the back-end's to log).
 */
function traffic(r: ReturnType<typeof loggingRig>): number[] {
  const mem = r.fe.memory.mem;
  const changed = new Set<number>();
  const backendTurn = (f: () => void) => {
    const before = mem.bytes.slice();
    f();
    for (let off = 0; off < mem.size; off += VHOST_LOG_PAGE) {
      const a = before.subarray(off, off + VHOST_LOG_PAGE);
      const b = mem.bytes.subarray(off, off + VHOST_LOG_PAGE);
      if (!a.every((x, i) => x === b[i])) changed.add((REGION1_GPA + off) / VHOST_LOG_PAGE);
    }
  };
  r.fe.postReceiveBuffers(64);
  backendTurn(() => r.channel.pump());
  for (let round = 0; round < 3; round++) {
    r.fe.transmit(
      Array.from({ length: 40 }, (_, i) => new Uint8Array(300 + 97 * i).fill(round * 40 + i + 1)),
    );
    backendTurn(() => r.channel.pump());
    r.fe.tx.usedChains();
    for (const _ of r.fe.rx.usedChains()) r.fe.rx.addChain([], [2048]);
    backendTurn(() => r.channel.pump());
  }
  assert.equal(r.counts.rxFrames, 120);
  for (const q of [0, 1]) backendTurn(() => r.fe.request(REQ.GET_VRING_BASE, statePayload(q, 0)));
  return [...changed].sort((a, b) => a - b);
}

describe("vhost-user back-end: dirty logging (LOG_SHMFD)", () => {
  test("with VHOST_F_LOG_ALL every page of guest memory the back-end changed is marked, at its guest address", () => {
    const r = loggingRig(true);
    const changed = traffic(r);
    const marked = new Set<number>();
    r.shared.log.take((p) => marked.add(p));
    assert.ok(changed.length >= 10, `the traffic changed pages (${changed.length})`);
    const missed = changed.filter((p) => !marked.has(p));
    assert.deepEqual(missed, [], "every page the back-end changed is marked");
    // Nothing is marked outside region 1 (the receive buffers and the used rings).
    for (const p of marked) assert.ok(p >= REGION1_GPA / VHOST_LOG_PAGE, `page ${p} lies in region 1`);
    r.fe.close();
  });

  test("without VHOST_F_LOG_ALL nothing is marked", () => {
    const r = loggingRig(false);
    traffic(r);
    let n = 0;
    r.shared.log.take(() => n++);
    assert.equal(n, 0);
    r.fe.close();
  });

  test("SET_LOG_BASE without its fd, or without LOG_SHMFD negotiated, closes the connection", () => {
    for (const negotiate of [true, false]) {
      const channel = new DirectChannel(
        () => new VirtioNet({ backend: new LoopbackBackend(zeroCounts()), name: "net0", queueSize: 256 }),
      );
      const fe = new NetFrontend(channel);
      fe.setup();
      if (negotiate)
        fe.request(
          REQ.SET_PROTOCOL_FEATURES,
          u64Payload(bit(PROTOCOL_F.REPLY_ACK) | bit(PROTOCOL_F.LOG_SHMFD)),
        );
      const { fd } = makeLog(4096);
      fe.request(REQ.SET_LOG_BASE, logPayload(4096, 0), { fds: negotiate ? [] : [fd] });
      assert.equal(channel.closed, true, `negotiated ${negotiate}: closed`);
      assert.match(channel.closeReason ?? "", negotiate ? /carries 0 fds/ : /protocol feature/);
      native().close(fd);
      fe.close();
    }
  });
});
