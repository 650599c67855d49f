/**
 * `vireo vhost-user blk` as a process, driven over its Unix socket by the test's own front-end
 * (test/helpers/vhost-user-blk-frontend.ts): writes, FLUSH and reads land in the image file; the inflight buffer
 * comes back over the socket with its fd; after SIGKILL a new process given the same buffer resubmits what was
 * marked in flight, each request completing once; and command-line mistakes get one clear line.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { native } from "../../src/native.ts";
import { VIREO_BIN, vireo } from "../helpers/cli.ts";
import { BlkFrontend, BlkSocketChannel } from "../helpers/vhost-user-blk-frontend.ts";

const dir = mkdtempSync(join(tmpdir(), "vireo-vub-cli-"));
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

async function startBackend(args: string[]): Promise<Backend> {
  const socket = join(dir, `sock-${children.length}`);
  const child = spawn(VIREO_BIN, ["vhost-user", "blk", "--socket", socket, ...args], {
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

function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (seed * 29 + i * 3 + (i >> 9)) & 0xff;
  return b;
}

function image(size: number): string {
  const path = join(dir, `img-${children.length}-${size}`);
  writeFileSync(path, "");
  truncateSync(path, size);
  return path;
}

describe("vireo vhost-user blk", () => {
  test("writes, FLUSH and reads reach the image; the connection-end line counts them", async () => {
    const img = image(2 << 20);
    const b = await startBackend(["--file", img, "--once", "--serial", "cli-test"]);
    const fe = new BlkFrontend(BlkSocketChannel.connect(b.socket));
    fe.setup();
    assert.ok(fe.startRing(0));
    const data = pattern(128 * 1024, 4);
    fe.write(0, 100, data);
    fe.flush(0);
    const done = fe.run(0, 2);
    assert.deepEqual(
      done.map((r) => r.status),
      [0, 0],
    );
    assert.deepEqual(new Uint8Array(readFileSync(img).subarray(100 * 512, 100 * 512 + data.length)), data);
    fe.read(0, 100, 4096);
    fe.getId(0);
    const [rd, id] = fe.run(0, 2);
    assert.deepEqual(rd?.data, data.subarray(0, 4096));
    assert.equal(new TextDecoder().decode(id?.data).replace(/\0+$/, ""), "cli-test");
    fe.close();
    const end = await connectionEnd(b);
    assert.equal(end.writes, 1);
    assert.equal(end.writtenBytes, data.length);
    assert.equal(end.flushes, 1);
    assert.equal(end.readBytes, 4096);
    assert.equal(end.reason, "end of stream");
    assert.equal(await b.exited, 0, "--once: exits after the first connection");
  });

  test("--io-threads 3: requests at the threads, each used once; FLUSH after them; the line says so", async () => {
    const img = image(2 << 20);
    const b = await startBackend(["--file", img, "--once", "--io-threads", "3"]);
    const fe = new BlkFrontend(BlkSocketChannel.connect(b.socket));
    fe.setup();
    assert.ok(fe.startRing(0));
    const data = Array.from({ length: 24 }, (_, i) => pattern(4096, 40 + i));
    for (const [i, d] of data.entries()) fe.write(0, i * 8, d);
    fe.flush(0);
    const done = fe.run(0, 25);
    assert.equal(done.length, 25);
    assert.ok(done.every((r) => r.status === 0));
    const file = readFileSync(img);
    for (const [i, d] of data.entries()) {
      assert.deepEqual(new Uint8Array(file.subarray(i * 4096, (i + 1) * 4096)), d, `block ${i}`);
    }
    const asked = new Map([0, 7, 23].map((i) => [fe.read(0, i * 8, 4096), data[i]]));
    const reads = fe.run(0, 3);
    assert.equal(reads.length, 3);
    // In whatever order they ended.
    for (const r of reads) assert.deepEqual(r.data, asked.get(r.id), `request ${r.id}`);
    fe.close();
    const end = await connectionEnd(b);
    assert.equal(end.writes, 24);
    assert.equal(end.writtenBytes, 24 * 4096);
    assert.equal(end.flushes, 1);
    assert.equal(end.readBytes, 3 * 4096);
    assert.match(b.stderr(), /, 3 I\/O threads/);
    assert.equal(await b.exited, 0);
  });

  test("after SIGKILL, a new back-end given the same inflight buffer resubmits what was in flight, once", async () => {
    const img = image(2 << 20);
    const a = await startBackend(["--file", img]);
    const fe = new BlkFrontend(BlkSocketChannel.connect(a.socket));
    fe.setup();
    const inf = fe.getInflight();
    assert.ok(inf, "GET_INFLIGHT_FD over the socket brings an fd");
    assert.ok(fe.setInflight(inf.fd, inf.description));
    assert.ok(fe.startRing(0));
    fe.write(0, 0, pattern(4096, 1));
    assert.equal(fe.run(0, 1)[0]?.status, 0);
    // Two more requests the process "took" (marked in its buffer) before it was killed: the marks are made
    // here, as the dead process would have, since a real kill rarely lands inside a request this short.
    const x = fe.write(0, 8, pattern(4096, 2));
    const y = fe.write(0, 16, pattern(4096, 3));
    const { buffer } = native().mmap(inf.fd, Number(inf.description.mmapSize), 0);
    const v = new DataView(buffer);
    assert.equal(v.getUint16(8, true), 1, "version 1: the process initialized its region");
    // The process settles its region just after the used ring moved: wait for it, briefly.
    for (let i = 0; i < 100 && v.getUint16(14, true) !== 1; i++) await sleep(20);
    assert.equal(v.getUint16(14, true), 1, "used_idx 1");
    for (const [h, counter] of [
      [x, 100n],
      [y, 101n],
    ] as const) {
      v.setBigUint64(16 + 16 * h + 8, counter, true);
      v.setUint8(16 + 16 * h, 1);
    }
    a.child.kill("SIGKILL");
    await a.exited;
    fe.channel.close();

    const b = await startBackend(["--file", img]);
    fe.channel = BlkSocketChannel.connect(b.socket);
    fe.setup();
    assert.ok(fe.setInflight(inf.fd, inf.description));
    // QEMU restarts the ring at its used idx when the back-end died without answering GET_VRING_BASE.
    assert.ok(fe.startRing(0, 1));
    const done = fe.run(0, 2);
    assert.deepEqual(
      done.map((r) => [r.id, r.status]),
      [
        [x, 0],
        [y, 0],
      ],
    );
    await sleep(200);
    assert.deepEqual(fe.results(0), [], "nothing completes twice");
    const file = readFileSync(img);
    assert.deepEqual(new Uint8Array(file.subarray(8 * 512, 8 * 512 + 4096)), pattern(4096, 2));
    assert.deepEqual(new Uint8Array(file.subarray(16 * 512, 16 * 512 + 4096)), pattern(4096, 3));
    assert.equal(v.getUint8(16 + 16 * x), 0);
    assert.equal(v.getUint8(16 + 16 * y), 0);
    assert.equal(v.getUint16(14, true), 3, "used_idx follows the used ring");
    assert.match(b.stderr(), /2 requests resubmitted, 0 already used; next available index 3/);
    fe.close();
    native().close(inf.fd);
    b.child.kill("SIGTERM");
    await b.exited;
  });

  test("command-line mistakes are one clear line; --help says what it does", () => {
    const sock = join(dir, "x");
    const img = image(4096);
    const tiny = image(100);
    const cases: Array<[string[], RegExp]> = [
      [["--file", img], /--socket PATH is required/],
      [["--socket", sock], /--file IMG is required/],
      [["--socket", sock, "--file", join(dir, "missing")], /cannot open .*missing/],
      [["--socket", sock, "--file", tiny], /less than one 512-byte sector/],
      [["--socket", sock, "--file", img, "--queue-size", "100"], /--queue-size is not a power of 2.*100/],
      [["--socket", sock, "--file", img, "--queue-size", "65536"], /--queue-size/],
      [["--socket", sock, "--file", img, "--num-queues", "0"], /--num-queues is not 1 to 16: 0/],
      [["--socket", sock, "--file", img, "--num-queues", "2x"], /--num-queues/],
      [["--socket", sock, "--file", img, "--serial", "x".repeat(21)], /--serial must be at most 20/],
      [["--socket", `/${"x".repeat(120)}`, "--file", img], /at most 107/],
      [["--socket", sock, "--file", img, "extra"], /unexpected argument 'extra'/],
      [["--socket", sock, "--file", img, "--tap", "t0"], /Unknown option '--tap'/],
      [
        ["--socket", sock, "--file", img, "--busy-poll-us", "10001"],
        /--busy-poll-us is not 0 to 10000: 10001/,
      ],
      [["--socket", sock, "--file", img, "--busy-poll-us", "-1"], /busy-poll-us/],
      [["--socket", sock, "--file", img, "--io-threads", "65"], /--io-threads is not 0 to 64: 65/],
      [["--socket", sock, "--file", img, "--io-threads", "two"], /--io-threads/],
    ];
    for (const [args, re] of cases) {
      const r = vireo(["vhost-user", "blk", ...args]);
      assert.equal(r.status, 125, args.join(" "));
      assert.match(r.stderr, re, args.join(" "));
    }
    const help = vireo(["vhost-user", "blk", "--help"]);
    assert.equal(help.status, 0);
    assert.match(help.stdout, /--file IMG/);
    assert.match(help.stdout, /INFLIGHT_SHMFD/);
    assert.match(help.stdout, /vhost-user-blk-pci/);
    assert.match(help.stdout, /--io-threads N/);
    const top = vireo(["vhost-user", "--help"]);
    assert.match(top.stdout, /vireo vhost-user blk --socket PATH --file IMG/);
  });
});
