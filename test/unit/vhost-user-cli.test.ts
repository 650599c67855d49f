/**
 * `vireo vhost-user net` as a process, driven over its Unix socket by the test's own minimal vhost-user
 * front-end (test/helpers/vhost-user-frontend.ts: memfd guest memory in two regions, the virtio test driver
 * placing buffers, eventfd kicks and calls): frames sent on the transmit ring are counted by --sink and come back
 * by --loopback; a front-end that breaks the framing loses its connection and the back-end serves the next one;
 * command-line mistakes get one clear line.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { HEADER_SIZE } from "../../src/vhost-user/protocol.ts";
import { VIREO_BIN, vireo } from "../helpers/cli.ts";
import { NET_HDR, NetFrontend, SocketChannel } from "../helpers/vhost-user-frontend.ts";

const dir = mkdtempSync(join(tmpdir(), "vireo-vhost-user-"));
const children: ChildProcess[] = [];
after(() => {
  for (const c of children) if (c.exitCode === null) c.kill("SIGKILL");
});

interface Backend {
  child: ChildProcess;
  socket: string;
  stdout: () => string;
  stderr: () => string;
  exited: Promise<number | null>;
}

async function startBackend(mode: string, extra: string[] = []): Promise<Backend> {
  const socket = join(dir, `sock-${children.length}`);
  const child = spawn(VIREO_BIN, ["vhost-user", "net", "--socket", socket, mode, ...extra], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.push(child);
  let out = "";
  let err = "";
  child.stdout?.on("data", (d) => {
    out += d;
  });
  child.stderr?.on("data", (d) => {
    err += d;
  });
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  const deadline = Date.now() + 60_000;
  while (!existsSync(socket)) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`back-end did not start: ${err}`);
    await sleep(50);
  }
  return { child, socket, stdout: () => out, stderr: () => err, exited };
}

async function connectionEnd(b: Backend): Promise<Record<string, number | string>> {
  const deadline = Date.now() + 20_000;
  while (!b.stdout().includes("\n")) {
    if (Date.now() > deadline) throw new Error(`no connection-end line; stderr: ${b.stderr()}`);
    await sleep(20);
  }
  return JSON.parse(b.stdout().split("\n")[0] as string);
}

function frame(n: number, seed: number): Uint8Array {
  const f = new Uint8Array(n);
  for (let i = 0; i < n; i++) f[i] = (seed * 7 + i * 3) & 0xff;
  return f;
}

/** Sends `total` frames in batches the ring can hold, collecting used transmit buffers as they come. */
function transmitAll(fe: NetFrontend, total: number, size: (i: number) => number): number {
  let sent = 0;
  let used = 0;
  while (used < total) {
    const room = Math.min(fe.tx.freeSlots, total - sent);
    if (room > 0) {
      fe.transmit(Array.from({ length: room }, (_, k) => frame(size(sent + k), sent + k)));
      sent += room;
    }
    if (!fe.waitCall(1, 10_000)) throw new Error(`no transmit call after ${used} of ${total} frames`);
    used += fe.tx.usedChains().length;
  }
  return used;
}

describe("vireo vhost-user net", () => {
  test("--sink counts every frame sent on the transmit ring", async () => {
    const b = await startBackend("--sink", ["--once"]);
    const fe = new NetFrontend(SocketChannel.connect(b.socket));
    fe.setup();
    fe.startRing(0);
    fe.startRing(1);
    const total = 5000;
    let bytes = 0;
    const size = (i: number) => 60 + (i % 1400);
    for (let i = 0; i < total; i++) bytes += size(i);
    assert.equal(transmitAll(fe, total, size), total);
    fe.close();
    const end = await connectionEnd(b);
    assert.equal(end.txFrames, total);
    assert.equal(end.txBytes, bytes);
    assert.equal(end.reason, "end of stream");
    assert.equal(await b.exited, 0, b.stderr());
  });

  test("--loopback sends every transmitted frame back on the receive ring, in order", async () => {
    const b = await startBackend("--loopback", ["--once"]);
    const fe = new NetFrontend(SocketChannel.connect(b.socket));
    fe.setup();
    fe.startRing(0);
    fe.startRing(1);
    const total = 600;
    const size = (i: number) => 60 + ((i * 37) % 1454);
    let received = 0;
    let sent = 0;
    fe.postReceiveBuffers(128);
    while (received < total) {
      const room = Math.min(fe.tx.freeSlots, total - sent, 64);
      if (room > 0) {
        fe.transmit(Array.from({ length: room }, (_, k) => frame(size(sent + k), sent + k)));
        sent += room;
      }
      fe.waitCall(0, 200);
      fe.tx.usedChains();
      const got = fe.rx.usedChains();
      for (const u of got) {
        const want = frame(size(received), received);
        assert.equal(u.len, NET_HDR + want.length, `frame ${received}`);
        assert.deepEqual(u.written.subarray(NET_HDR), want, `frame ${received}`);
        received++;
      }
      if (got.length > 0) fe.postReceiveBuffers(got.length);
      if (sent === total && got.length === 0 && !fe.waitCall(0, 10_000)) {
        throw new Error(`only ${received} of ${total} frames came back; stderr: ${b.stderr()}`);
      }
    }
    fe.close();
    const end = await connectionEnd(b);
    assert.equal(end.txFrames, total);
    assert.equal(end.rxFrames, total);
    assert.equal(end.dropped, 0);
    assert.equal(await b.exited, 0);
  });

  test("--gen SIZE fills every receive buffer the guest posts with a SIZE-byte frame", async () => {
    const b = await startBackend("--gen", ["100", "--once"]);
    const fe = new NetFrontend(SocketChannel.connect(b.socket));
    fe.setup();
    fe.startRing(0);
    fe.startRing(1);
    let received = 0;
    fe.postReceiveBuffers(64);
    while (received < 1000) {
      if (!fe.waitCall(0, 10_000)) throw new Error(`only ${received} frames came; stderr: ${b.stderr()}`);
      const got = fe.rx.usedChains();
      for (const u of got) {
        assert.equal(u.len, NET_HDR + 100);
        const f = u.written.subarray(NET_HDR);
        // Broadcast, IPv4, UDP to the discard port; the IPv4 header sums to 0xffff.
        assert.deepEqual([...f.subarray(0, 6)], [255, 255, 255, 255, 255, 255]);
        assert.equal((f[12] as number) * 256 + (f[13] as number), 0x0800);
        assert.equal(f[23], 17);
        let sum = 0;
        for (let i = 14; i < 34; i += 2) sum += (f[i] as number) * 256 + (f[i + 1] as number);
        while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
        assert.equal(sum, 0xffff);
        received++;
      }
      fe.postReceiveBuffers(got.length);
    }
    fe.close();
    const end = await connectionEnd(b);
    // The back-end counts what it placed: what the front-end took, and at most the 64 buffers left posted.
    assert.ok(
      (end.rxFrames as number) >= received && (end.rxFrames as number) <= received + 64,
      String(end.rxFrames),
    );
    assert.equal(end.rxBytes, 100 * (end.rxFrames as number));
    assert.equal(await b.exited, 0);
  });

  test("a front-end that breaks the framing is disconnected; the next one is served", async () => {
    const b = await startBackend("--sink");
    const bad = SocketChannel.connect(b.socket);
    const garbage = new Uint8Array(HEADER_SIZE);
    new DataView(garbage.buffer).setUint32(0, 0xdead, true);
    new DataView(garbage.buffer).setUint32(4, 1, true);
    bad.send(garbage, []);
    assert.ok(bad.waitClosed(20_000), "the back-end closed the connection");
    bad.close();
    const fe = new NetFrontend(SocketChannel.connect(b.socket));
    fe.setup();
    fe.startRing(0);
    fe.startRing(1);
    assert.equal(
      transmitAll(fe, 10, () => 100),
      10,
    );
    fe.close();
    b.child.kill("SIGTERM");
    await b.exited;
    assert.match(b.stderr(), /unknown request 57005/);
  });

  test("command-line mistakes are one clear line", () => {
    const cases: Array<[string[], RegExp]> = [
      [["vhost-user", "net", "--sink"], /--socket PATH is required/],
      [["vhost-user", "net", "--socket", join(dir, "x")], /exactly one of .*--sink/],
      [["vhost-user", "net", "--socket", join(dir, "x"), "--sink", "--loopback"], /exactly one of/],
      [["vhost-user", "net", "--socket", join(dir, "x"), "--gen", "1519"], /--gen 1519 is not a frame size/],
      [["vhost-user", "net", "--socket", join(dir, "x"), "--gen", "64", "--sink"], /exactly one of/],
      [["vhost-user", "blk", "--socket", join(dir, "x")], /vhost-user blk: --file IMG is required/],
      [["vhost-user", "disk", "--socket", join(dir, "x")], /usage: vireo vhost-user net/],
      [
        ["vhost-user", "net", "--socket", join(dir, "x"), "--sink", "--queue-size", "100"],
        /--queue-size 100/,
      ],
      [["vhost-user", "net", "--socket", `/${"x".repeat(120)}`, "--sink"], /at most 107/],
    ];
    for (const [args, re] of cases) {
      const r = vireo(args);
      assert.equal(r.status, 125, args.join(" "));
      assert.match(r.stderr, re);
    }
    const help = vireo(["vhost-user", "--help"]);
    assert.equal(help.status, 0);
    assert.match(help.stdout, /--loopback/);
  });
});
