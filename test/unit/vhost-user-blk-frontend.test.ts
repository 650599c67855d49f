/**
 * vireo's vhost-user-blk front-end without KVM.
 *
 * - The protocol client against `vireo vhost-user blk` as a process: CONFIG and INFLIGHT_SHMFD negotiated, the
 *   configuration space read (capacity, seg_max, num_queues), an inflight buffer made and handed back.
 * - The client against a hostile back-end (the other end of a socketpair, its replies queued before the
 *   request): each malformed reply is a VhostUserFrontendError with its own code, and no fd it sent is kept.
 * - The device's vhost-user thread (frontend-thread.ts) with the spec preparePci builds, the test playing the
 *   vCPU side and the guest's driver: a 120 MiB write is taken by the back-end, which is SIGKILLed while it
 *   writes; a write posted during the outage waits; a new back-end on the socket is handed the inflight buffer,
 *   resubmits the first write, serves the second, and the file holds both.
 * - The same thread against a back-end whose GET_INFLIGHT_FD reply carries no fd: the device is marked
 *   DEVICE_NEEDS_RESET with the reason, and the thread goes on.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import {
  closeSync,
  existsSync,
  fstatSync,
  ftruncateSync,
  mkdtempSync,
  openSync,
  readSync,
  truncateSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { BLK_CONFIG } from "../../src/devices/virtio/blk.ts";
import { VIRTIO_STATUS } from "../../src/devices/virtio/constants.ts";
import { VirtioPciTransport } from "../../src/devices/virtio/pci-transport.ts";
import type { GuestMemory } from "../../src/memory/guest-memory.ts";
import type { MetricsRegistry } from "../../src/metrics/registry.ts";
import { EFD_CLOEXEC, MFD_CLOEXEC, native, signalEventFd } from "../../src/native.ts";
import { VhostUserFrontend, VhostUserFrontendError } from "../../src/vhost-user/frontend.ts";
import {
  BLK_CONFIG_BYTES,
  BLK_PROTOCOL_FEATURES,
  blkGuestFeatures,
  blkQueues,
} from "../../src/vhost-user/frontend-blk.ts";
import { createFrontendBlock, FRONTEND_WORDS } from "../../src/vhost-user/frontend-device.ts";
import { encodeReply, PROTOCOL_F, REQ, VHOST_USER_NEED_REPLY_MASK } from "../../src/vhost-user/protocol.ts";
import { MsiRouteTable } from "../../src/vmm/msi-routes.ts";
import { intxGsi, type VhostUserSpec } from "../../src/vmm/pci-devices.ts";
import { VIREO_BIN } from "../helpers/cli.ts";
import {
  makeDirtyLog,
  makeThreadRam,
  startFrontendThread,
  testEventFd,
} from "../helpers/vhost-user-thread.ts";
import { VirtioTestDriver } from "../helpers/virtio-driver.ts";

const MiB = 1 << 20;
const dir = mkdtempSync(join(tmpdir(), "vireo-vu-blk-fe-"));
const children: ChildProcess[] = [];
after(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
});

async function until(what: string, ok: () => boolean, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`${what} did not happen within ${ms} ms`);
    await sleep(20);
  }
}

async function startBackend(socket: string, file: string, extra: string[] = []) {
  const child = spawn(VIREO_BIN, ["vhost-user", "blk", "--socket", socket, "--file", file, ...extra], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.push(child);
  let err = "";
  child.stderr?.on("data", (d) => {
    err += d;
  });
  const exited = new Promise((r) => child.on("exit", r));
  await until("the back-end listening", () => existsSync(socket) && /listening on/.test(err), 60_000);
  return { child, exited, err: () => err };
}

const bit = (b: number) => 1n << BigInt(b);

describe("vhost-user-blk front-end, protocol", () => {
  test("against vireo vhost-user blk: CONFIG and INFLIGHT_SHMFD, the configuration space, an inflight buffer", async () => {
    const file = join(dir, "proto.img");
    writeFileSync(file, new Uint8Array(3 * MiB));
    const socket = join(dir, "proto.sock");
    const b = await startBackend(socket, file, ["--num-queues", "2", "--queue-size", "64", "--once"]);
    const fe = VhostUserFrontend.connect(socket);
    try {
      const n = fe.negotiate(BLK_PROTOCOL_FEATURES);
      assert.equal(n.protocolFeatures, BLK_PROTOCOL_FEATURES, "REPLY_ACK, CONFIG and INFLIGHT_SHMFD in use");
      assert.ok(fe.hasProtocol(PROTOCOL_F.INFLIGHT_SHMFD));
      const config = fe.getConfig(BLK_CONFIG_BYTES);
      const v = new DataView(config.buffer, config.byteOffset);
      assert.equal(v.getBigUint64(BLK_CONFIG.CAPACITY, true), BigInt((3 * MiB) / 512));
      assert.equal(v.getUint32(BLK_CONFIG.SEG_MAX, true), 62, "seg_max is the back-end's queue size - 2");
      assert.equal(blkQueues(config, n.features), 2, "num_queues with VIRTIO_BLK_F_MQ");
      const offered = blkGuestFeatures(n.features, true);
      assert.ok(offered.device & bit(5), "readonly: VIRTIO_BLK_F_RO offered");
      assert.equal(blkGuestFeatures(n.features, false).device & bit(5), 0n, "a writable back-end: no RO");
      const inflight = fe.getInflightFd(2, 64);
      assert.equal(inflight.numQueues, 2);
      assert.equal(inflight.queueSize, 64);
      assert.ok(fstatSync(inflight.fd).size >= Number(inflight.mmapOffset + inflight.mmapSize));
      fe.setInflightFd(inflight);
      native().close(inflight.fd);
      // A back-end's refusal (it checks the shape) comes back as REFUSED, and the stream stays in step.
      assert.throws(
        () => fe.getInflightFd(3, 64),
        (e: unknown) => e instanceof VhostUserFrontendError && /GET_INFLIGHT_FD/.test(e.message),
      );
    } finally {
      fe.close();
      b.child.kill("SIGTERM");
      await b.exited;
    }
  });

  test("num_queues from a back-end's configuration: 1 without MQ, checked with it", () => {
    const cfg = (n: number) => {
      const c = new Uint8Array(BLK_CONFIG_BYTES);
      new DataView(c.buffer).setUint16(BLK_CONFIG.NUM_QUEUES, n, true);
      return c;
    };
    const mq = bit(12);
    assert.equal(blkQueues(cfg(0), 0n), 1, "without VIRTIO_BLK_F_MQ num_queues is not read");
    assert.equal(blkQueues(cfg(4), mq), 4);
    assert.match(String(blkQueues(cfg(0), mq)), /num_queues 0 is not 1 to 16/);
    assert.match(String(blkQueues(cfg(17), mq)), /num_queues 17 is not 1 to 16/);
    assert.match(String(blkQueues(new Uint8Array(8), mq)), /configuration space has 8 bytes/);
  });

  /** A front-end on one end of a socketpair; the test writes the "back-end's" replies to the other end first. */
  function hostile(protocol: bigint) {
    const [a, z] = native().socketpair(false);
    const fe = new VhostUserFrontend(a, { name: "hostile", replyTimeoutMs: 500 });
    fe.adopt(protocol);
    const reply = (request: number, payload: Uint8Array, fds: number[] = [], flags?: number) => {
      const bytes = encodeReply(request, payload);
      if (flags !== undefined) new DataView(bytes.buffer).setUint32(4, flags, true);
      native().sendmsg(z, bytes, fds);
    };
    return {
      fe,
      reply,
      close: () => {
        fe.close();
        native().close(z);
      },
    };
  }

  const configBody = (offset: number, size: number, flags: number, data = new Uint8Array(size)) => {
    const p = new Uint8Array(12 + data.length);
    const v = new DataView(p.buffer);
    v.setUint32(0, offset, true);
    v.setUint32(4, size, true);
    v.setUint32(8, flags, true);
    p.set(data, 12);
    return p;
  };

  const fails = (code: string, pattern: RegExp) => (e: unknown) =>
    e instanceof VhostUserFrontendError && e.code === code && pattern.test(e.message);

  test("malformed GET_CONFIG replies: another offset, size or flags, a short payload, an empty one", () => {
    const h = hostile(BLK_PROTOCOL_FEATURES);
    try {
      h.reply(REQ.GET_CONFIG, configBody(4, 60, 0));
      assert.throws(() => h.fe.getConfig(60), fails("VHOST_USER_BAD_REPLY", /answered offset 4, size 60/));
      h.reply(REQ.GET_CONFIG, configBody(0, 60, 1));
      assert.throws(() => h.fe.getConfig(60), fails("VHOST_USER_BAD_REPLY", /flags 1/));
      // A payload shorter than its own size field says, and one longer than a config reply may be.
      h.reply(REQ.GET_CONFIG, configBody(0, 60, 0, new Uint8Array(30)));
      assert.throws(
        () => h.fe.getConfig(60),
        fails("VHOST_USER_BAD_REPLY", /42 payload bytes, expected 72 \(or 0/),
      );
      h.reply(REQ.GET_CONFIG, configBody(0, 60, 0, new Uint8Array(61)));
      assert.throws(
        () => h.fe.getConfig(60),
        fails("VHOST_USER_BAD_REPLY", /73 payload bytes, expected 0 to 72/),
      );
    } finally {
      h.close();
    }
    const h2 = hostile(BLK_PROTOCOL_FEATURES);
    try {
      h2.reply(REQ.GET_CONFIG, new Uint8Array(0));
      assert.throws(() => h2.fe.getConfig(60), fails("VHOST_USER_REFUSED", /empty reply/));
      // A reply to another request, and one without the reply bit.
      h2.reply(REQ.GET_FEATURES, configBody(0, 60, 0));
      assert.throws(() => h2.fe.getConfig(60), fails("VHOST_USER_BAD_REPLY", /got one to GET_FEATURES/));
    } finally {
      h2.close();
    }
    const h3 = hostile(BLK_PROTOCOL_FEATURES);
    try {
      h3.reply(REQ.GET_CONFIG, configBody(0, 60, 0), [], 0x1);
      assert.throws(() => h3.fe.getConfig(60), fails("VHOST_USER_BAD_REPLY", /flags 0x1/));
    } finally {
      h3.close();
    }
    // No reply at all: a timeout, not a hang.
    const h4 = hostile(BLK_PROTOCOL_FEATURES);
    try {
      assert.throws(() => h4.fe.getConfig(60), fails("VHOST_USER_TIMEOUT", /within 500 ms/));
    } finally {
      h4.close();
    }
  });

  test("malformed GET_INFLIGHT_FD replies: no fd, two fds, not a file, too small, another shape", () => {
    const inflightBody = (size: bigint, offset: bigint, queues: number, qsize: number) => {
      const p = new Uint8Array(24);
      const v = new DataView(p.buffer);
      v.setBigUint64(0, size, true);
      v.setBigUint64(8, offset, true);
      v.setUint16(16, queues, true);
      v.setUint16(18, qsize, true);
      return p;
    };
    const memfd = (bytes: number) => {
      const fd = native().memfdCreate("hostile-inflight", MFD_CLOEXEC);
      ftruncateSync(fd, bytes);
      return fd;
    };
    const openFds = () => native().socketpair(false); // a probe: the lowest free fd numbers after each case
    const cases: Array<{ why: RegExp; payload: Uint8Array; fds: () => number[] }> = [
      { why: /carried 0 fds/, payload: inflightBody(4096n, 0n, 1, 128), fds: () => [] },
      {
        why: /carried 2 fds/,
        payload: inflightBody(4096n, 0n, 1, 128),
        fds: () => [memfd(4096), memfd(4096)],
      },
      {
        why: /not a regular file/,
        payload: inflightBody(4096n, 0n, 1, 128),
        fds: () => [native().eventfd(0, EFD_CLOEXEC)],
      },
      {
        why: /has 100 bytes, the buffer ends at 4096/,
        payload: inflightBody(4096n, 0n, 1, 128),
        fds: () => [memfd(100)],
      },
      { why: /described 2 of 128/, payload: inflightBody(4096n, 0n, 2, 128), fds: () => [memfd(4096)] },
      { why: /mmap size 0/, payload: inflightBody(0n, 0n, 1, 128), fds: () => [memfd(4096)] },
    ];
    const [p0, p1] = openFds();
    native().close(p0);
    native().close(p1);
    for (const c of cases) {
      const h = hostile(BLK_PROTOCOL_FEATURES);
      const fds = c.fds();
      h.reply(REQ.GET_INFLIGHT_FD, c.payload, fds);
      for (const fd of fds) native().close(fd); // the kernel holds its own references in the message
      assert.throws(() => h.fe.getInflightFd(1, 128), fails("VHOST_USER_BAD_REPLY", c.why));
      h.close();
    }
    // Every fd the hostile replies carried was closed by the front-end: the lowest free numbers are as before.
    const [q0, q1] = openFds();
    native().close(q0);
    native().close(q1);
    assert.deepEqual([q0, q1], [p0, p1], "no fd of a rejected reply is left open");
  });
});

// ---- the device's vhost-user thread ------------------------------------------------------------------------

const RING_GPA = MiB;
const DATA_GPA = 2 * MiB;
const HDR_GPA = 3 * MiB;

interface Harness {
  spec: VhostUserSpec;
  transport: VirtioPciTransport;
  mem: GuestMemory;
  ring: VirtioTestDriver;
  words: Int32Array;
  messages: string[];
  metrics: MetricsRegistry;
  stop(): Promise<void>;
}

/** What preparePci builds for `--disk vhost-user=SOCKET`, and the device's thread started on it. */
function startThread(socket: string): Harness {
  const { ram: ramSpec, buffer: ram, mem } = makeThreadRam(4 * MiB);
  const ev = testEventFd;
  const conn = VhostUserFrontend.connect(socket);
  const negotiated = conn.negotiate(BLK_PROTOCOL_FEATURES);
  const config = conn.getConfig(BLK_CONFIG_BYTES);
  const block = createFrontendBlock();
  const spec: VhostUserSpec = {
    kind: "vhost-user-blk",
    config: Array.from(config),
    numQueues: 1,
    readOnly: false,
    name: "blk0",
    slot: 1,
    state: VirtioPciTransport.createState({ numQueues: 1, stateBytes: 0 }),
    socket,
    connFd: conn.fd,
    backendFeatures: negotiated.features,
    protocolFeatures: negotiated.protocolFeatures,
    offered: blkGuestFeatures(negotiated.features, false),
    kicks: [ev()],
    irq: { routes: MsiRouteTable.createState(2), pool: [], assigned: new SharedArrayBuffer(8) },
    relays: [ev()],
    wake: ev(),
    block,
    ram: ramSpec,
    dirtyLog: makeDirtyLog(4 * MiB),
  };
  const { transport, messages, metrics, stop } = startFrontendThread(spec, ram, mem);
  // The driver's side of 3.1.1, as a vCPU thread would see it: VERSION_1 only, one ring of 128, polled.
  const d = transport.device;
  d.writeStatus(VIRTIO_STATUS.ACKNOWLEDGE | VIRTIO_STATUS.DRIVER);
  d.driverFeatureSelect = 1;
  d.writeDriverFeatures(1);
  d.writeStatus(VIRTIO_STATUS.ACKNOWLEDGE | VIRTIO_STATUS.DRIVER | VIRTIO_STATUS.FEATURES_OK);
  assert.ok(d.status & VIRTIO_STATUS.FEATURES_OK, "FEATURES_OK accepted");
  const ring = new VirtioTestDriver(mem, { kind: "split", size: 128, base: RING_GPA, limit: 2 * MiB });
  ring.setUsedNotifications(false);
  const c = ring.config;
  d.writeQueue(0, "size", c.size);
  d.writeQueue(0, "desc_lo", c.descAddr);
  d.writeQueue(0, "driver_lo", c.driverAddr);
  d.writeQueue(0, "device_lo", c.deviceAddr);
  d.writeQueue(0, "enable", 1);
  d.writeStatus(
    VIRTIO_STATUS.ACKNOWLEDGE | VIRTIO_STATUS.DRIVER | VIRTIO_STATUS.FEATURES_OK | VIRTIO_STATUS.DRIVER_OK,
  );
  d.activate();
  return {
    spec,
    transport,
    mem,
    ring,
    words: new Int32Array(block),
    messages,
    metrics,
    stop,
  };
}

const VIRTQ_DESC_F_NEXT = 1;
const VIRTQ_DESC_F_WRITE = 2;

/**
 * A write request (5.2.6) of `segments` descriptors of `segLen` bytes, all naming the same buffer at DATA_GPA
 * (the specification allows it), at `sector`; descriptors from `firstDesc`. Returns the status byte's address.
 */
function postWrite(
  h: Harness,
  firstDesc: number,
  slot: number,
  sector: number,
  segments: number,
  segLen: number,
) {
  const hdr = HDR_GPA + 64 * slot;
  h.mem.writeU32(hdr, 1); // VIRTIO_BLK_T_OUT
  h.mem.writeU32(hdr + 4, 0);
  h.mem.writeU64(hdr + 8, BigInt(sector));
  const status = hdr + 32;
  h.mem.writeU8(status, 0xff);
  const n = segments + 2;
  for (let i = 0; i < n; i++) {
    const desc = firstDesc + i;
    const last = i === n - 1;
    h.ring.writeDesc(desc, {
      addr: i === 0 ? hdr : last ? status : DATA_GPA,
      len: i === 0 ? 16 : last ? 1 : segLen,
      flags: last ? VIRTQ_DESC_F_WRITE : VIRTQ_DESC_F_NEXT,
      next: last ? 0 : desc + 1,
    });
  }
  h.ring.pushAvail(firstDesc);
  signalEventFd(h.spec.kicks[0] as number);
  return status;
}

const usedIdx = (h: Harness) => h.mem.readU16(h.ring.config.deviceAddr + 2);

function readAt(file: string, offset: number, len: number): Buffer {
  const fd = openSync(file, "r");
  try {
    const b = Buffer.alloc(len);
    readSync(fd, b, 0, len, offset);
    return b;
  } finally {
    closeSync(fd);
  }
}

describe("vhost-user-blk front-end, its thread", () => {
  test("a back-end SIGKILLed in the middle of a 120 MiB write: the next one is handed the inflight buffer and resubmits it", async () => {
    const file = join(dir, "thread.img");
    writeFileSync(file, new Uint8Array(0));
    truncateSync(file, 128 * MiB);
    const socket = join(dir, "thread.sock");
    let backend = await startBackend(socket, file);
    const h = startThread(socket);
    try {
      const pattern = new Uint8Array(MiB);
      for (let i = 0; i < MiB; i++) pattern[i] = (i * 7 + 3) & 0xff;
      h.mem.write(DATA_GPA, pattern);
      await until(
        "the rings started",
        () => (h.metrics.snapshot()["vhost-user.blk0.ring_starts"] ?? 0) >= 1,
        20_000,
      );
      // 120 segments of 1 MiB (size_max), one request: the back-end works on it in slices for a while.
      const bigStatus = postWrite(h, 0, 0, 0, 120, MiB);
      const firstSector = pattern.subarray(0, 512);
      const deadline = Date.now() + 20_000;
      // Spin (no await) so the kill lands as soon as the back-end has begun writing.
      while (!readAt(file, 0, 512).equals(firstSector)) {
        if (Date.now() > deadline) throw new Error(`the back-end never wrote: ${backend.err()}`);
      }
      backend.child.kill("SIGKILL");
      const lastMiB = readAt(file, 119 * MiB, MiB);
      assert.equal(usedIdx(h), 0, "the kill came before the write completed");
      await backend.exited;
      await until("the thread noticing", () => Atomics.load(h.words, FRONTEND_WORDS.connected) === 0, 10_000);
      // A write posted while there is no back-end waits for the next one.
      const smallStatus = postWrite(h, 122, 1, 120 * 2048, 1, 4096);
      await sleep(200);
      assert.equal(usedIdx(h), 0, "nothing completes without a back-end");
      backend = await startBackend(socket, file);
      await until("both writes completed", () => usedIdx(h) === 2, 60_000);
      assert.equal(h.mem.readU8(bigStatus), 0, "the big write: VIRTIO_BLK_S_OK");
      assert.equal(h.mem.readU8(smallStatus), 0, "the small write: VIRTIO_BLK_S_OK");
      assert.match(
        backend.err(),
        /inflight: 1 requests resubmitted/,
        `the new back-end found the taken request in the inflight buffer: ${backend.err()}`,
      );
      for (let m = 0; m < 120; m++) {
        assert.ok(readAt(file, m * MiB, MiB).equals(pattern), `MiB ${m} of the big write`);
      }
      assert.ok(readAt(file, 120 * MiB, 4096).equals(pattern.subarray(0, 4096)), "the small write");
      process.stderr.write(
        `vhost-user blk thread: at the kill the last MiB of the big write was ${lastMiB.equals(pattern) ? "written" : "not written yet"}\n`,
      );
      // A reset waits for the rings to stop, and drops the inflight buffer.
      const before = Atomics.load(h.words, FRONTEND_WORDS.resetsDone);
      h.transport.device.writeStatus(0);
      assert.equal(Atomics.load(h.words, FRONTEND_WORDS.resetsDone), before + 1);
      assert.deepEqual(h.messages, []);
    } finally {
      await h.stop();
      backend.child.kill("SIGTERM");
    }
    const m = h.metrics.snapshot();
    assert.equal(m["vhost-user.blk0.disconnects"], 1);
    assert.equal(m["vhost-user.blk0.connects"], 1);
  });

  test("a back-end whose GET_INFLIGHT_FD reply carries no fd: DEVICE_NEEDS_RESET with the reason, no crash", async () => {
    const socket = join(dir, "hostile.sock");
    // A back-end that answers everything in order but GET_INFLIGHT_FD, whose reply carries no fd.
    const features = bit(32) | bit(30) | bit(9); // VERSION_1, protocol features, FLUSH
    const config = new Uint8Array(BLK_CONFIG_BYTES);
    new DataView(config.buffer).setBigUint64(BLK_CONFIG.CAPACITY, 2048n, true);
    // In a process of its own: this thread blocks in the front-end's synchronous requests.
    const script = `
      const net = require("node:net");
      const [socket, features, protocol, config] = process.argv.slice(1);
      const u64 = (v) => { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(v)); return b; };
      net.createServer((s) => {
        let buf = Buffer.alloc(0);
        s.on("error", () => {});
        s.on("data", (d) => {
          buf = Buffer.concat([buf, d]);
          while (buf.length >= 12) {
            const request = buf.readUInt32LE(0), flags = buf.readUInt32LE(4), size = buf.readUInt32LE(8);
            if (buf.length < 12 + size) break;
            buf = buf.subarray(12 + size);
            const answer = (p) => { const h = Buffer.alloc(12); h.writeUInt32LE(request, 0); h.writeUInt32LE(5, 4);
              h.writeUInt32LE(p.length, 8); s.write(Buffer.concat([h, p])); };
            if (request === ${REQ.GET_FEATURES}) answer(u64(features));
            else if (request === ${REQ.GET_PROTOCOL_FEATURES}) answer(u64(protocol));
            else if (request === ${REQ.GET_CONFIG}) answer(Buffer.from(config, "hex"));
            else if (request === ${REQ.GET_INFLIGHT_FD}) answer(Buffer.alloc(24)); // no fd
            else if (flags & ${VHOST_USER_NEED_REPLY_MASK}) answer(u64(0));
          }
        });
      }).listen(socket, () => process.stderr.write("listening on " + socket + "\\n"));
    `;
    const reply = Buffer.concat([Buffer.from([0, 0, 0, 0, 60, 0, 0, 0, 0, 0, 0, 0]), config]);
    const child = spawn(
      process.execPath,
      ["-e", script, socket, String(features), String(BLK_PROTOCOL_FEATURES), reply.toString("hex")],
      { stdio: ["ignore", "ignore", "pipe"] },
    );
    children.push(child);
    let err = "";
    child.stderr?.on("data", (d) => (err += d));
    await until("the hostile back-end listening", () => /listening on/.test(err), 30_000);
    const h = startThread(socket);
    try {
      await until(
        "the device marked NEEDS_RESET",
        () => (h.transport.device.status & VIRTIO_STATUS.DEVICE_NEEDS_RESET) !== 0,
        20_000,
      );
      await until(
        "the reason reported",
        () => h.messages.some((m) => /GET_INFLIGHT_FD: the reply carried 0 fds, not 1/.test(m)),
        5_000,
      );
      // 2.1.2: the device told the driver, by a configuration change interrupt (INTx: MSI-X is off). The line's
      // rising edge is counted before KVM_IRQ_LINE, which here, without a VM, fails: reported, not fatal.
      await until(
        "the configuration change interrupt",
        () => (h.metrics.snapshot()[`irq.gsi${intxGsi(h.spec.slot)}.raised`] ?? 0) >= 1,
        5_000,
      );
      // The thread lives on: it reconnects (the device stays broken until the driver resets it), and a reset
      // is answered.
      await until("a reconnect", () => (h.metrics.snapshot()["vhost-user.blk0.connects"] ?? 0) >= 1, 10_000);
      const before = Atomics.load(h.words, FRONTEND_WORDS.resetsDone);
      h.transport.device.writeStatus(0);
      assert.equal(Atomics.load(h.words, FRONTEND_WORDS.resetsDone), before + 1);
    } finally {
      await h.stop();
      child.kill("SIGKILL");
    }
  });
});

const qsdSkip =
  spawnSync("qemu-storage-daemon", ["--version"]).status === 0
    ? false
    : "qemu-storage-daemon is not installed";

describe("vhost-user-blk front-end against qemu-storage-daemon", { skip: qsdSkip }, () => {
  test("the thread starts the ring on QEMU's vhost-user-blk export and a write lands in the image", async () => {
    const file = join(dir, "qsd.img");
    writeFileSync(file, new Uint8Array(4 * MiB));
    const socket = join(dir, "qsd.sock");
    const qsd = spawn(
      "qemu-storage-daemon",
      [
        "--blockdev",
        `driver=file,node-name=f,filename=${file},cache.direct=off`,
        "--export",
        `type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path=${socket},writable=on,num-queues=1`,
      ],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    children.push(qsd);
    let err = "";
    qsd.stderr?.on("data", (d) => (err += d));
    await until("qemu-storage-daemon listening", () => existsSync(socket), 30_000);
    const h = startThread(socket);
    try {
      assert.ok(
        (h.spec.protocolFeatures & bit(PROTOCOL_F.CONFIG)) !== 0n,
        "qemu-storage-daemon speaks PROTOCOL_F_CONFIG",
      );
      const capacity = new DataView(
        Uint8Array.from(h.spec.kind === "vhost-user-blk" ? h.spec.config : []).buffer,
      );
      assert.equal(capacity.getBigUint64(BLK_CONFIG.CAPACITY, true), BigInt((4 * MiB) / 512), "capacity");
      const pattern = new Uint8Array(64 * 1024);
      for (let i = 0; i < pattern.length; i++) pattern[i] = (i * 13 + 1) & 0xff;
      h.mem.write(DATA_GPA, pattern);
      await until(
        "the ring started",
        () => (h.metrics.snapshot()["vhost-user.blk0.ring_starts"] ?? 0) >= 1,
        20_000,
      );
      const status = postWrite(h, 0, 0, 2048, 1, pattern.length);
      await until("the write completed", () => usedIdx(h) === 1, 20_000);
      assert.equal(h.mem.readU8(status), 0, "VIRTIO_BLK_S_OK");
      assert.ok(readAt(file, MiB, pattern.length).equals(pattern), "the data is in the image at 1 MiB");
      const inflight = (h.spec.protocolFeatures & bit(PROTOCOL_F.INFLIGHT_SHMFD)) !== 0n;
      process.stderr.write(
        `qemu-storage-daemon: protocol features in use 0x${h.spec.protocolFeatures.toString(16)} (inflight ${inflight ? "yes" : "no"})\n`,
      );
      // Its call fd fired (it signals whatever the avail flags say): with MSI-X off the thread raises INTx, which
      // has no VM to go to here (the line's edge is counted before KVM_IRQ_LINE fails).
      await until(
        "the call relayed as INTx",
        () =>
          (h.metrics.snapshot()["vhost-user.blk0.intx_relayed"] ?? 0) >= 1 &&
          (h.metrics.snapshot()[`irq.gsi${intxGsi(h.spec.slot)}.raised`] ?? 0) >= 1,
        5_000,
      );
      assert.deepEqual(
        h.messages.filter((m) => !/KVM_IRQ_LINE failed/.test(m)),
        [],
      );
    } finally {
      await h.stop();
      qsd.kill("SIGTERM");
      if (err) process.stderr.write(err);
    }
  });
});
