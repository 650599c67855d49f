/**
 * `vireo switch` as a process, with the test's own vhost-user front-ends (test/helpers/vhost-user-frontend.ts)
 * plugged into its ports: frames are learned, flooded and forwarded byte for byte, VLANs keep ports apart, the
 * control socket shows counters that match what the front-ends saw and changes the switch while it runs, a port
 * detached under traffic gets nothing more, SIGTERM prints the final counters.
 */
import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { controlRequest } from "../../src/switch/control.ts";
import { vireo } from "../helpers/cli.ts";
import { startSwitch } from "../helpers/switch-process.ts";
import { NET_HDR, type NetFrontend, plugNetFrontend } from "../helpers/vhost-user-frontend.ts";

const dir = mkdtempSync(join(tmpdir(), "vireo-switch-"));

function mac(n: number): number[] {
  return [0x52, 0x54, 0, 0x12, 0x34, n];
}

function frame(dst: number[], src: number[], len: number, seed: number): Uint8Array {
  const f = new Uint8Array(len);
  f.set(dst, 0);
  f.set(src, 6);
  f[12] = 0x08;
  f[13] = 0x00;
  for (let i = 14; i < len; i++) f[i] = (seed * 13 + i) & 0xff;
  return f;
}

/** Collects frames received on fe until `n` arrived or `ms` passed. */
async function receive(fe: NetFrontend, n: number, ms = 10_000): Promise<Uint8Array[]> {
  const got: Uint8Array[] = [];
  const deadline = Date.now() + ms;
  while (got.length < n && Date.now() < deadline) {
    fe.waitCall(0, 20);
    for (const u of fe.rx.usedChains()) got.push(u.written.slice(NET_HDR, u.len));
    if (got.length < n) await sleep(1);
  }
  return got;
}

function sendAll(fe: NetFrontend, frames: Uint8Array[]): void {
  let i = 0;
  while (i < frames.length) {
    const room = Math.min(fe.tx.freeSlots, frames.length - i);
    if (room > 0) {
      fe.transmit(frames.slice(i, i + room));
      i += room;
    }
    fe.waitCall(1, 100);
    fe.tx.usedChains();
  }
}

interface PortShow {
  name: string;
  rx: { frames: number; bytes: number };
  tx: { frames: number; bytes: number };
  drops: Record<string, number>;
}

describe("vireo switch (process)", () => {
  test("learning, flooding, VLANs, counters, detach under traffic, and the end line", async () => {
    const s = await startSwitch(dir, "t1", [
      `vhost-user=${join(dir, "a.sock")},name=a`,
      `vhost-user=${join(dir, "b.sock")},name=b`,
      `vhost-user=${join(dir, "c.sock")},name=c,vlan=2`,
      `vhost-user=${join(dir, "d.sock")},name=d`,
    ]);
    const a = plugNetFrontend(join(dir, "a.sock"));
    const b = plugNetFrontend(join(dir, "b.sock"));
    const c = plugNetFrontend(join(dir, "c.sock"));
    const d = plugNetFrontend(join(dir, "d.sock"));
    for (const fe of [a, b, c, d]) fe.postReceiveBuffers(200);

    // a → unknown b: flooded to b and d (not c: VLAN 2), byte for byte.
    const first = Array.from({ length: 50 }, (_, i) => frame(mac(2), mac(1), 60 + i * 29, i));
    sendAll(a, first);
    const atB = await receive(b, 50);
    const atD = await receive(d, 50);
    assert.deepEqual(atB, first);
    assert.deepEqual(atD, first);
    // b answers a: learned, only a gets it.
    const answer = Array.from({ length: 20 }, (_, i) => frame(mac(1), mac(2), 100, 100 + i));
    sendAll(b, answer);
    assert.deepEqual(await receive(a, 20), answer);
    // a → b again: now learned, d gets nothing more.
    sendAll(a, [frame(mac(2), mac(1), 64, 7)]);
    assert.equal((await receive(b, 1)).length, 1);
    assert.equal((await receive(d, 1, 300)).length, 0, "d sees no unicast for b once b is learned");
    assert.equal((await receive(c, 1, 300)).length, 0, "c (VLAN 2) saw nothing");

    const show = (await controlRequest(s.control, { op: "show" })) as { ports: PortShow[] };
    const by = (n: string) => show.ports.find((p) => p.name === n) as PortShow;
    assert.equal(by("a").rx.frames, 51);
    assert.equal(by("b").tx.frames, 51);
    assert.equal(by("d").tx.frames, 50);
    assert.equal(by("c").tx.frames, 0);
    assert.equal(by("b").rx.frames, 20);
    assert.equal(by("a").tx.frames, 20);

    // A bad request is answered with an error and changes nothing.
    await assert.rejects(controlRequest(s.control, { op: "detach", port: "zz" }), /no port zz/);
    // Detach d while a floods: d gets nothing after the detach answer.
    const flood = Array.from({ length: 100 }, (_, i) =>
      frame([0xff, 0xff, 0xff, 0xff, 0xff, 0xff], mac(1), 60, i),
    );
    d.postReceiveBuffers(50);
    sendAll(a, flood.slice(0, 50));
    await controlRequest(s.control, { op: "detach", port: "d" });
    const beforeDetach = await receive(d, 1000, 500);
    sendAll(a, flood.slice(50));
    await sleep(300);
    const afterDetach = d.rx.usedChains().length;
    assert.equal(afterDetach, 0, "nothing delivered to d after its detach was answered");
    assert.ok(beforeDetach.length <= 50);
    const atB2 = await receive(b, 100);
    assert.equal(atB2.length, 100, "b got the whole flood");

    s.child.kill("SIGTERM");
    assert.equal(await s.exited, 0, s.stderr());
    const end = JSON.parse(s.stdout().trim().split("\n").at(-1) as string) as {
      event: string;
      ports: PortShow[];
    };
    assert.equal(end.event, "switch-end");
    assert.deepEqual(
      end.ports.map((p) => p.name),
      ["a", "b", "c"],
    );
    assert.equal(end.ports[0]?.rx.frames, 151);
    for (const fe of [a, b, c, d]) fe.close();
  });

  test("a default-deny filter set while traffic flows blocks a spoofing guest, counts per rule; capture and off", async () => {
    const s = await startSwitch(dir, "t2", [
      `vhost-user=${join(dir, "t2a.sock")},name=a`,
      `vhost-user=${join(dir, "t2b.sock")},name=b`,
    ]);
    const a = plugNetFrontend(join(dir, "t2a.sock"));
    const b = plugNetFrontend(join(dir, "t2b.sock"));
    b.postReceiveBuffers(250);
    const own = (i: number) => frame(mac(2), mac(1), 80, i);
    const spoofed = (i: number) => frame(mac(2), mac(66), 80, 1000 + i);
    sendAll(a, [own(0), spoofed(0)]);
    assert.equal((await receive(b, 2)).length, 2, "no filter yet: both pass");
    const set = (await controlRequest(s.control, {
      op: "filter",
      port: "a",
      dir: "in",
      default: "deny",
      rules: ["allow src-mac=52:54:00:12:34:01"],
    })) as { filter: { defaultAction: string } };
    assert.equal(set.filter.defaultAction, "deny");
    const mixed = Array.from({ length: 40 }, (_, i) => (i % 2 === 0 ? own(i) : spoofed(i)));
    sendAll(a, mixed);
    const got = await receive(b, 20);
    await sleep(200);
    got.push(...(await receive(b, 100, 300)));
    assert.deepEqual(
      got,
      mixed.filter((_, i) => i % 2 === 0),
      "only the guest's own address passes",
    );
    const show = (await controlRequest(s.control, { op: "show" })) as {
      ports: Array<
        PortShow & { filters: { in: { rules: Array<{ matches: number }>; defaultMatches: number } } }
      >;
    };
    const pa = show.ports.find((p) => p.name === "a");
    assert.equal(pa?.drops.filter, 20);
    assert.equal(pa?.filters.in.rules[0]?.matches, 20);
    assert.equal(pa?.filters.in.defaultMatches, 20);
    // A bad rule is refused and the filter in place stays.
    await assert.rejects(
      controlRequest(s.control, { op: "filter", port: "a", dir: "in", rules: ["allow src-mac=zz"] }),
      /src-mac/,
    );
    await controlRequest(s.control, { op: "filter", port: "a", dir: "in", off: true });
    sendAll(a, [spoofed(99)]);
    assert.equal((await receive(b, 1)).length, 1, "filter off: the spoofed frame passes again");
    s.child.kill("SIGTERM");
    assert.equal(await s.exited, 0, s.stderr());
    a.close();
    b.close();
  });

  test("an ingress rate limit set while traffic flows holds the rate within 5% over 10 s", async (t) => {
    const s = await startSwitch(dir, "t3", [
      `vhost-user=${join(dir, "t3a.sock")},name=a`,
      `vhost-user=${join(dir, "t3b.sock")},name=b`,
    ]);
    const a = plugNetFrontend(join(dir, "t3a.sock"));
    const b = plugNetFrontend(join(dir, "t3b.sock"));
    const size = 1000;
    const bytesPerSec = 400_000; // 400 frames/s of 1000 bytes
    // A burst of a quarter second: on a loaded machine the switch may not run for a while, and a bucket fills only
    // up to its burst (tokens beyond are lost, by design); at most 2.5% over the rate in 10 s.
    await controlRequest(s.control, {
      op: "rate",
      port: "a",
      dir: "in",
      bytesPerSec,
      burstBytes: bytesPerSec / 4,
    });
    b.postReceiveBuffers(256);
    const f = frame(mac(2), mac(1), size, 1);
    let received = 0;
    let offered = 0;
    const start = Date.now();
    // Offer far more than the rate (the sender is limited only by its ring) for 10 s, counting what reaches b.
    while (Date.now() - start < 10_000) {
      const room = Math.min(a.tx.freeSlots, 64);
      if (room > 0) {
        a.transmit(Array.from({ length: room }, () => f));
        offered += room;
      }
      a.waitCall(1, 2);
      a.tx.usedChains();
      const got = b.rx.usedChains().length;
      if (got > 0) {
        received += got;
        b.postReceiveBuffers(got);
      }
      await sleep(0);
    }
    const elapsed = (Date.now() - start) / 1000;
    await sleep(200);
    received += b.rx.usedChains().length;
    const show = (await controlRequest(s.control, { op: "show" })) as {
      ports: Array<PortShow & { rates: { in: { admitted: number; dropped: number } } }>;
    };
    const pa = show.ports.find((p) => p.name === "a") as PortShow & { rates: { in: { dropped: number } } };
    const rate = (received * size) / elapsed;
    t.diagnostic(
      `offered ${offered} frames (${((offered * size) / elapsed / 1e3).toFixed(0)} kB/s), delivered ${received} ` +
        `(${(rate / 1e3).toFixed(1)} kB/s against ${bytesPerSec / 1e3} kB/s), rate-limited ${pa.drops.rateLimit}`,
    );
    assert.ok(offered * size > 3 * bytesPerSec * elapsed, "the sender offered well over the rate");
    assert.ok(Math.abs(rate - bytesPerSec) <= 0.05 * bytesPerSec, `delivered ${rate.toFixed(0)} B/s`);
    assert.equal(
      (pa.drops.rateLimit ?? Number.NaN) + received,
      pa.rx.frames,
      "every frame delivered or counted as rate-limited",
    );
    s.child.kill("SIGTERM");
    assert.equal(await s.exited, 0, s.stderr());
    a.close();
    b.close();
  });

  test("command-line and control mistakes get one clear line", () => {
    const r1 = vireo(["switch", "x", "--port", "vhost-user=/tmp/x.sock,vlan=5000"]);
    assert.equal(r1.status, 125);
    assert.match(r1.stderr, /vlan=5000 is not a VLAN ID from 1 to 4094/);
    const r2 = vireo(["switch", "x", "--port", "udp=1"]);
    assert.match(r2.stderr, /the kind is vhost-user=SOCKET, tap=IFNAME or shm=SOCKET/);
    const r5 = vireo(["switch", "x", "--port", `shm=/tmp/${"x".repeat(110)}`]);
    assert.match(r5.stderr, /the socket path is 115 bytes, at most 107/);
    const r6 = vireo(["switch", "x", "--port", "shm=/tmp/x.sock,queue-size=64"]);
    assert.match(r6.stderr, /queue-size is for vhost-user ports/);
    const r3 = vireo(["switch", "show", "nosuch", "--control", join(dir, "none.sock")]);
    assert.equal(r3.status, 125);
    assert.match(r3.stderr, /no switch listens on/);
    const r4 = vireo(["switch", "--help"]);
    assert.equal(r4.status, 0);
    assert.match(r4.stdout, /vhost-user=SOCKET/);
    assert.match(r4.stdout, /shm=SOCKET/);
  });
});
