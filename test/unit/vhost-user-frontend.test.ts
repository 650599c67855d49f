/**
 * vireo's vhost-user front-end (src/vhost-user/frontend.ts) against the real back-end, `vireo vhost-user net` as a
 * process, without KVM: the test plays the guest (memfd memory, the virtio test driver placing buffers, eventfds
 * for kicks and calls) and the production front-end does every request. Frames go round through --loopback; a
 * refused request, a missing socket and a back-end that dies each give their own error.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { VIRTIO_F } from "../../src/devices/virtio/constants.ts";
import { EFD_CLOEXEC, EFD_NONBLOCK, native, POLLIN, signalEventFd, takeEventFd } from "../../src/native.ts";
import { VhostUserFrontend, VhostUserFrontendError } from "../../src/vhost-user/frontend.ts";
import { backendAck } from "../../src/vhost-user/frontend-device.ts";
import { guestFeatures } from "../../src/vhost-user/frontend-net.ts";
import { PROTOCOL_F, VHOST_USER_F_PROTOCOL_FEATURES } from "../../src/vhost-user/protocol.ts";
import { VIREO_BIN } from "../helpers/cli.ts";
import { makeFrontendMemory, NET_HDR, REGION1_GPA } from "../helpers/vhost-user-frontend.ts";
import { VirtioTestDriver } from "../helpers/virtio-driver.ts";

const MiB = 1 << 20;
const dir = mkdtempSync(join(tmpdir(), "vireo-vu-frontend-"));
const children: ChildProcess[] = [];
after(() => {
  for (const c of children) if (c.exitCode === null) c.kill("SIGKILL");
});

async function startBackend(
  mode: string,
): Promise<{ child: ChildProcess; socket: string; err: () => string }> {
  const socket = join(dir, `sock-${children.length}`);
  const child = spawn(VIREO_BIN, ["vhost-user", "net", "--socket", socket, mode, "--once"], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.push(child);
  let err = "";
  child.stderr?.on("data", (d) => {
    err += d;
  });
  const deadline = Date.now() + 60_000;
  while (!existsSync(socket)) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`back-end did not start: ${err}`);
    await sleep(50);
  }
  return { child, socket, err: () => err };
}

function frame(n: number, seed: number): Uint8Array {
  const f = new Uint8Array(n);
  for (let i = 0; i < n; i++) f[i] = (seed * 5 + i * 3) & 0xff;
  return f;
}

function waitFd(fd: number, ms: number): boolean {
  const p = new Int32Array([fd, POLLIN, 0]);
  return native().poll(p, ms) > 0 && takeEventFd(fd) > 0;
}

/** A guest for the front-end: memory, two split rings, kick and call eventfds. */
function guest() {
  const memory = makeFrontendMemory();
  const rx = new VirtioTestDriver(memory.mem, {
    kind: "split",
    size: 256,
    base: REGION1_GPA,
    limit: REGION1_GPA + MiB,
  });
  const tx = new VirtioTestDriver(memory.mem, {
    kind: "split",
    size: 256,
    base: REGION1_GPA + MiB,
    limit: REGION1_GPA + 2 * MiB,
  });
  const ev = () => native().eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  const kick = [ev(), ev()];
  const call = [ev(), ev()];
  const ring = (q: 0 | 1, base = 0) => {
    const c = (q === 0 ? rx : tx).config;
    return {
      num: c.size,
      base,
      desc: memory.user(c.descAddr),
      avail: memory.user(c.driverAddr),
      used: memory.user(c.deviceAddr),
      kickFd: kick[q] as number,
      callFd: call[q] as number,
    };
  };
  const close = () => {
    for (const fd of [...kick, ...call, memory.fd]) native().close(fd);
  };
  return { memory, rx, tx, kick, call, ring, close };
}

describe("vhost-user front-end", () => {
  test("negotiates, shares memory, starts both rings and frames go round through --loopback", async () => {
    const b = await startBackend("--loopback");
    const fe = VhostUserFrontend.connect(b.socket);
    const g = guest();
    const n = fe.negotiate();
    assert.ok(n.features & (1n << BigInt(VIRTIO_F.VERSION_1)), "VERSION_1 offered");
    assert.ok(n.features & (1n << BigInt(VHOST_USER_F_PROTOCOL_FEATURES)), "protocol features offered");
    assert.equal(n.protocolFeatures, 1n << BigInt(PROTOCOL_F.REPLY_ACK));
    assert.equal(fe.replyAck, true);
    // vireo's back-end has no packed rings: the guest is not offered them; MAC and STATUS are vireo's own.
    const offered = guestFeatures(n.features);
    assert.equal(offered.transport & (1n << BigInt(VIRTIO_F.RING_PACKED)), 0n);
    const negotiated = offered.transport | (offered.device & (1n << 5n));
    fe.setFeatures(backendAck(negotiated, n.features));
    fe.setMemTable(g.memory.regions, [g.memory.fd, g.memory.fd]);
    fe.startRing(0, g.ring(0), true);
    fe.startRing(1, g.ring(1), true);
    fe.sync();

    const total = 300;
    const size = (i: number) => 60 + ((i * 41) % 1454);
    for (let i = 0; i < 128; i++) g.rx.addChain([], [2048]);
    signalEventFd(g.kick[0] as number);
    let sent = 0;
    let received = 0;
    const deadline = Date.now() + 30_000;
    while (received < total) {
      assert.ok(Date.now() < deadline, `only ${received} of ${total} frames came back: ${b.err()}`);
      const room = Math.min(g.tx.freeSlots, total - sent, 32);
      for (let k = 0; k < room; k++) {
        const f = frame(size(sent), sent);
        const buf = new Uint8Array(NET_HDR + f.length);
        buf.set(f, NET_HDR);
        g.tx.addChain([buf], []);
        sent++;
      }
      if (room > 0) signalEventFd(g.kick[1] as number);
      waitFd(g.call[0] as number, 200);
      g.tx.usedChains();
      const got = g.rx.usedChains();
      for (const u of got) {
        assert.deepEqual(u.written.subarray(NET_HDR), frame(size(received), received), `frame ${received}`);
        received++;
      }
      for (let k = 0; k < got.length; k++) g.rx.addChain([], [2048]);
      if (got.length > 0) signalEventFd(g.kick[0] as number);
    }
    // GET_VRING_BASE stops the transmit ring and says how far the back-end read: every frame.
    assert.equal(fe.stopRing(1), total);
    fe.close();
    g.close();
  });

  test("a request the back-end refuses is a VHOST_USER_REFUSED error naming it; the connection goes on", async () => {
    const b = await startBackend("--sink");
    const fe = VhostUserFrontend.connect(b.socket);
    const g = guest();
    const n = fe.negotiate();
    fe.setFeatures(backendAck(1n << 32n, n.features));
    fe.setMemTable(g.memory.regions, [g.memory.fd, g.memory.fd]);
    // A ring size that is not a power of 2.
    assert.throws(
      () => fe.startRing(0, { ...g.ring(0), num: 100 }, true),
      (e: unknown) =>
        e instanceof VhostUserFrontendError &&
        e.code === "VHOST_USER_REFUSED" &&
        /refused SET_VRING_NUM/.test(e.message),
    );
    fe.startRing(0, g.ring(0), true);
    assert.equal(fe.stopRing(0), 0);
    fe.close();
    g.close();
  });

  test("no back-end: a VHOST_USER_CONNECT error that says why", () => {
    const missing = join(dir, "nobody-here");
    assert.throws(
      () => VhostUserFrontend.connect(missing),
      (e: unknown) =>
        e instanceof VhostUserFrontendError &&
        e.code === "VHOST_USER_CONNECT" &&
        e.message.includes(missing) &&
        /no such socket/.test(e.message),
    );
    const file = join(dir, "a-file");
    writeFileSync(file, "");
    assert.throws(
      () => VhostUserFrontend.connect(file),
      (e: unknown) => e instanceof VhostUserFrontendError && e.code === "VHOST_USER_CONNECT",
    );
  });

  test("a back-end that dies: the next request is VHOST_USER_DISCONNECTED, not a hang or a crash", async () => {
    const b = await startBackend("--sink");
    const fe = VhostUserFrontend.connect(b.socket, { replyTimeoutMs: 5000 });
    fe.negotiate();
    const exited = new Promise((r) => b.child.on("exit", r));
    b.child.kill("SIGKILL");
    await exited;
    const t0 = performance.now();
    assert.throws(
      () => fe.stopRing(0),
      (e: unknown) => e instanceof VhostUserFrontendError && e.code === "VHOST_USER_DISCONNECTED",
    );
    assert.ok(performance.now() - t0 < 4000, "noticed at once, not after the reply timeout");
    fe.close();
  });

  test("a back-end that never answers: VHOST_USER_TIMEOUT after the reply timeout", () => {
    const [a, peer] = native().socketpair(false);
    const fe = new VhostUserFrontend(a, { replyTimeoutMs: 200, name: "silent" });
    assert.throws(
      () => fe.negotiate(),
      (e: unknown) =>
        e instanceof VhostUserFrontendError &&
        e.code === "VHOST_USER_TIMEOUT" &&
        /GET_FEATURES/.test(e.message),
    );
    fe.close();
    native().close(peer);
  });
});
