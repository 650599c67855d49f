/**
 * `vireo switch` with shm ports (src/switch/ports/shm-port.ts), the test's own peers on the shared-memory rings
 * (src/net/shm-channel.ts): frames are forwarded byte for byte and in order, including a burst larger than a
 * turn's read budget; VLANs keep ports apart; the control socket's counters match what the peers saw; a full ring
 * toward a peer drops and counts; a peer that breaks its ring is disconnected with a reason while the others go
 * on, and can connect again; a detached port's peer sees its connection end.
 */
import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { native, POLLIN, signalEventFd } from "../../src/native.ts";
import { connectShmChannel, type ShmChannelEnd } from "../../src/net/shm-channel.ts";
import { controlRequest } from "../../src/switch/control.ts";
import { VIREO_BIN } from "../helpers/cli.ts";
import { startListening } from "../helpers/processes.ts";
import { takeFrames } from "../helpers/shm.ts";
import { startSwitch } from "../helpers/switch-process.ts";
import { NET_HDR, NetFrontend, SocketChannel } from "../helpers/vhost-user-frontend.ts";

const dir = mkdtempSync(join(tmpdir(), "vireo-switch-shm-"));

const mac = (n: number) => [0x52, 0x54, 0, 0x12, 0x34, n];

function frame(dst: number[], src: number[], len: number, seed: number): Uint8Array {
  const f = new Uint8Array(len);
  f.set(dst, 0);
  f.set(src, 6);
  f[12] = 0x08;
  for (let i = 14; i < len; i++) f[i] = (seed * 13 + i) & 0xff;
  return f;
}

class Peer {
  readonly ch: ShmChannelEnd;
  readonly conn: number;
  constructor(path: string) {
    const c = connectShmChannel(path);
    this.ch = c.channel;
    this.conn = c.conn;
  }
  /** Sends frames, publishing (and kicking if asked) after each `every`; returns how many the ring took. */
  send(frames: Uint8Array[], every = 32): number {
    let n = 0;
    for (const f of frames) {
      if (!this.ch.out.push(f, 0, f.length)) break;
      if (++n % every === 0 && this.ch.out.publish()) signalEventFd(this.ch.kickOther);
    }
    if (this.ch.out.publish()) signalEventFd(this.ch.kickOther);
    return n;
  }
  /** Frames received until `n` came or `ms` passed. */
  async receive(n: number, ms = 10_000): Promise<Uint8Array[]> {
    const got: Uint8Array[] = [];
    const deadline = Date.now() + ms;
    while (got.length < n && Date.now() < deadline) {
      const frames = takeFrames(this.ch.in);
      got.push(...frames);
      if (frames.length === 0) await sleep(1);
    }
    return got;
  }
  /** True once the switch closed the connection (read returns 0). */
  closedBySwitch(): boolean {
    const p = new Int32Array([this.conn, POLLIN, 0]);
    if (native().poll(p, 0) === 0) return false;
    return native().readFd(this.conn, new Uint8Array(8)) === 0;
  }
  close(): void {
    this.ch.close();
    native().close(this.conn);
  }
}

interface PortShow {
  name: string;
  rx: { frames: number; bytes: number };
  tx: { frames: number; bytes: number };
  drops: Record<string, number>;
}

async function ports(control: string): Promise<Record<string, PortShow>> {
  const show = (await controlRequest(control, { op: "show" })) as { ports: PortShow[] };
  return Object.fromEntries(show.ports.map((p) => [p.name, p]));
}

test("frames through shm ports: byte for byte, in order, VLANs apart, counters that match", async () => {
  const s = (n: string) => join(dir, `${n}.sock`);
  const sw = await startSwitch(dir, "shm1", [
    `shm=${s("a")},name=a`,
    `shm=${s("b")},name=b`,
    `shm=${s("c")},name=c,vlan=2`,
  ]);
  const a = new Peer(s("a"));
  const b = new Peer(s("b"));
  const c = new Peer(s("c"));
  try {
    // b speaks first so the switch learns it; a's frames to b then go to b alone.
    b.send([frame([0xff, 0xff, 0xff, 0xff, 0xff, 0xff], mac(2), 60, 0)]);
    assert.equal((await a.receive(1)).length, 1, "a gets b's broadcast");
    const frames = Array.from({ length: 700 }, (_, i) => frame(mac(2), mac(1), 60 + ((i * 37) % 1459), i));
    // In chunks of 350 (more than a turn's read budget of 256, less than a ring's 512 slots), each received
    // before the next is sent.
    const got: Uint8Array[] = [];
    for (let at = 0; at < frames.length; at += 350) {
      const chunk = frames.slice(at, at + 350);
      assert.equal(a.send(chunk), chunk.length);
      got.push(...(await b.receive(chunk.length)));
    }
    assert.equal(got.length, frames.length);
    for (let i = 0; i < frames.length; i++) assert.deepEqual(got[i], frames[i], `frame ${i}`);
    assert.equal((await c.receive(1, 300)).length, 0, "nothing crosses into VLAN 2, not even the broadcast");
    const p = await ports(sw.control);
    const bytes = frames.reduce((n, f) => n + f.length, 0);
    assert.deepEqual([p.a?.rx.frames, p.a?.rx.bytes], [frames.length, bytes]);
    assert.deepEqual([p.b?.tx.frames, p.b?.tx.bytes], [frames.length, bytes]);
    assert.equal(p.c?.tx.frames, 0);
  } finally {
    a.close();
    b.close();
    c.close();
    sw.child.kill("SIGTERM");
    await sw.exited;
  }
});

test("a full ring toward a peer drops and counts; a peer that breaks its ring is cut off, the rest go on", async () => {
  const s = (n: string) => join(dir, `${n}2.sock`);
  const sw = await startSwitch(dir, "shm2", [`shm=${s("a")},name=a`, `shm=${s("b")},name=b`]);
  const a = new Peer(s("a"));
  let b = new Peer(s("b"));
  try {
    b.send([frame(mac(1), mac(2), 60, 0)]);
    await a.receive(1);
    // b reads nothing: its ring (512 slots) fills, the rest are dropped as noBuffers.
    const n = 512 + 100;
    let sent = 0;
    const frames = Array.from({ length: n }, (_, i) => frame(mac(2), mac(1), 64, i));
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline) {
      sent += a.send(frames.slice(sent));
      if (sent === n) {
        const p = await ports(sw.control);
        if ((p.a?.rx.frames ?? 0) >= n) break;
      }
      await sleep(5);
    }
    const p = await ports(sw.control);
    assert.equal(p.b?.tx.frames, 512, "the ring's 512 slots");
    assert.equal(p.b?.drops.noBuffers, 100);
    assert.equal((await b.receive(1000, 500)).length, 512);

    // b writes a length past its slot and publishes: the switch cuts it off and says why.
    const ring = b.ch.out;
    ring.reserve();
    ring.commit(100_000);
    ring.publish();
    signalEventFd(b.ch.kickOther);
    // The switch closes the connection, then logs: the log line, read from a pipe, may come after the close.
    const cut = Date.now() + 10_000;
    while (!/broke its ring/.test(sw.stderr()) && Date.now() < cut) await sleep(10);
    assert.match(sw.stderr(), /port b: shm: the peer broke its ring: frame \d+ has length 100000/);
    assert.ok(b.closedBySwitch(), "the switch closed b's connection");
    b.close();
    // a still works, and b may come back.
    b = new Peer(s("b"));
    b.send([frame(mac(1), mac(2), 60, 1)]);
    assert.equal((await a.receive(1)).length, 1);
    a.send([frame(mac(2), mac(1), 80, 2)]);
    assert.deepEqual((await b.receive(1))[0], frame(mac(2), mac(1), 80, 2));

    // Detached: its peer's connection ends, and the socket goes.
    await controlRequest(sw.control, { op: "detach", port: "b" });
    const gone = Date.now() + 10_000;
    while (!b.closedBySwitch() && Date.now() < gone) await sleep(10);
    assert.ok(b.closedBySwitch(), "the detached port's peer sees the connection end");
  } finally {
    a.close();
    b.close();
    sw.child.kill("SIGTERM");
    await sw.exited;
  }
});

test("vireo vhost-user net --shm: a vhost-user front-end's frames through the back-end and an shm port, both ways", async () => {
  const s = (n: string) => join(dir, `${n}3.sock`);
  const sw = await startSwitch(dir, "shm3", [`shm=${s("vm")},name=vm`, `shm=${s("peer")},name=peer`]);
  const back = await startListening(
    [VIREO_BIN, "vhost-user", "net", "--socket", s("vu"), "--shm", s("vm"), "--once"],
    "vireo vhost-user net --shm",
  );
  const peer = new Peer(s("peer"));
  const fe = new NetFrontend(SocketChannel.connect(s("vu")));
  try {
    fe.setup();
    fe.startRing(0);
    fe.startRing(1);
    fe.postReceiveBuffers(32);
    // The front-end's guest speaks first (learnt on port vm); the peer answers to it.
    const hello = frame([0xff, 0xff, 0xff, 0xff, 0xff, 0xff], mac(7), 60, 7);
    fe.transmit([hello]);
    assert.deepEqual((await peer.receive(1))[0], hello, "the guest's broadcast reached the peer");
    const answers = Array.from({ length: 20 }, (_, i) => frame(mac(7), mac(8), 60 + i * 70, i));
    peer.send(answers);
    let got: Uint8Array[] = [];
    for (let i = 0; i < 500 && got.length < answers.length; i++) {
      fe.waitCall(0, 20);
      got = got.concat(fe.rx.usedChains().map((u) => u.written.slice(NET_HDR, u.len)));
    }
    assert.deepEqual(got, answers, "the peer's frames reached the guest's receive ring, in order");
  } finally {
    fe.close();
    peer.close();
  }
  assert.equal(await back.exited, 0, back.err());
  const end = JSON.parse(back.out().trim().split("\n")[0] as string) as Record<string, number>;
  assert.equal(end.txFrames, 1);
  assert.equal(end.rxFrames, 20);
  sw.child.kill("SIGTERM");
  await sw.exited;
});
