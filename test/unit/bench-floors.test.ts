/**
 * bench/js-floor.ts and bench/wasm-floor.ts, the JavaScript and WebAssembly floors that `vireo bench switch`
 * measures beside vireo's switch, each the same cases: with the test's own vhost-user front-ends on a pair of its
 * sockets, a floor forwards each side's frames to the other byte for byte and in order. A chain of more than one
 * descriptor (which it does not serve) is used with nothing forwarded. A receive buffer too small for the frame
 * goes back empty, and the frame takes the next. A front-end that leaves and a new one on the same socket change
 * nothing.
 */
import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { repoPath } from "../../src/paths.ts";
import { startProcess, waitFor } from "../helpers/processes.ts";
import { NET_HDR, type NetFrontend, plugNetFrontend } from "../helpers/vhost-user-frontend.ts";

function frame(len: number, seed: number): Uint8Array {
  const f = new Uint8Array(len);
  for (let i = 0; i < len; i++) f[i] = (seed * 31 + i * 7) & 0xff;
  return f;
}

/** Used receive buffers on fe (header stripped) until `n` came or `ms` passed; also their used lengths. */
async function receive(
  fe: NetFrontend,
  n: number,
  ms = 10_000,
): Promise<{ frames: Uint8Array[]; lens: number[] }> {
  const frames: Uint8Array[] = [];
  const lens: number[] = [];
  const deadline = Date.now() + ms;
  while (frames.length < n && Date.now() < deadline) {
    for (const u of fe.rx.usedChains()) {
      lens.push(u.len);
      if (u.len > 0) frames.push(u.written.slice(NET_HDR, u.len));
    }
    if (frames.length < n) await sleep(2);
  }
  return { frames, lens };
}

async function txUsed(fe: NetFrontend, n: number): Promise<number> {
  let used = 0;
  const deadline = Date.now() + 10_000;
  while (used < n && Date.now() < deadline) {
    used += fe.tx.usedChains().length;
    if (used < n) await sleep(2);
  }
  return used;
}

for (const name of ["js-floor", "wasm-floor"]) {
  describe(name, () => {
    const dir = mkdtempSync(join(tmpdir(), `vireo-${name}-`));
    const a = join(dir, "a0.sock");
    const b = join(dir, "b0.sock");
    const floor = startProcess([process.execPath, "--import", "tsx", repoPath("bench", `${name}.ts`), a, b]);

    test("frames both ways, byte for byte and in order; a chain it does not serve", async () => {
      await waitFor(
        () => floor.out().includes(`${name} ready`),
        30_000,
        () => floor.err(),
      );
      const fa = plugNetFrontend(a);
      const fb = plugNetFrontend(b);
      try {
        fb.postReceiveBuffers(64);
        const sent = Array.from({ length: 40 }, (_, i) => frame(60 + ((i * 97) % 1455), i));
        fa.transmit(sent);
        const got = await receive(fb, sent.length);
        assert.equal(got.frames.length, sent.length, floor.err());
        for (const [i, f] of got.frames.entries()) assert.deepEqual(f, sent[i], `frame ${i}`);
        assert.ok(got.lens.every((l, i) => l === NET_HDR + (sent[i] as Uint8Array).length));
        assert.equal(await txUsed(fa, sent.length), sent.length);

        // The other way.
        fa.postReceiveBuffers(16);
        const back = [frame(64, 100), frame(1514, 101)];
        fb.transmit(back);
        const gotBack = await receive(fa, back.length);
        assert.deepEqual(gotBack.frames, back);

        // Header and frame in two descriptors: used, nothing forwarded; the lone frame after it goes through.
        const hdr = new Uint8Array(NET_HDR);
        fa.tx.addChain([hdr, frame(100, 7)], []);
        fa.transmit([frame(80, 8)]);
        const after2 = await receive(fb, 1);
        assert.deepEqual(after2.frames, [frame(80, 8)]);
        assert.equal(await txUsed(fa, 2), 2);
        // Nothing else came: the two-descriptor chain's frame was not forwarded.
        assert.deepEqual((await receive(fb, 1, 200)).frames, []);
      } finally {
        fa.close();
        fb.close();
      }
    });

    test("a small receive buffer goes back empty, and a front-end that leaves is replaced", async () => {
      await waitFor(
        () => floor.out().includes(`${name} ready`),
        30_000,
        () => floor.err(),
      );
      // The previous test's front-ends left: the floor keeps listening, and new ones plug in.
      await waitFor(
        () => (floor.out().match(/connection closed/g) ?? []).length >= 2,
        10_000,
        () => floor.out(),
      );
      const fa = plugNetFrontend(a);
      const fb = plugNetFrontend(b);
      try {
        fb.rx.addChain([], [NET_HDR + 199]); // one byte short of the frame below
        fb.postReceiveBuffers(4);
        const big = frame(200, 9);
        fa.transmit([big]);
        const got = await receive(fb, 1);
        assert.deepEqual(got.frames, [big]);
        assert.deepEqual(got.lens, [0, NET_HDR + 200], "the short buffer first, empty");
      } finally {
        fa.close();
        fb.close();
      }
      assert.equal(floor.child.exitCode, null, `the floor is still running: ${floor.err()}`);
    });

    test("nothing is written past the frame in a receive buffer just long enough for it", async () => {
      const fa = plugNetFrontend(a);
      const fb = plugNetFrontend(b);
      try {
        // A 20-byte frame into a buffer of exactly header + 20 bytes, with guard bytes right after it in memory.
        const small = frame(20, 11);
        fb.rx.addChain([], [NET_HDR + small.length]);
        const guard = fb.rx.alloc(64);
        const mem = fb.memory.mem;
        mem.fill(guard, 64, 0xaa);
        fa.transmit([small]);
        const got = await receive(fb, 1);
        assert.deepEqual(got.frames, [small]);
        const after = mem.bytes.subarray(guard - mem.base, guard - mem.base + 64);
        assert.ok(
          after.every((x) => x === 0xaa),
          `the 64 bytes after the buffer were written: ${[...after].join(",")}`,
        );
      } finally {
        fa.close();
        fb.close();
      }
    });
  });
}
