/**
 * The control API server (src/vmm/api-server.ts) against a fake VM, and `vireo ctl` against that server: routes,
 * statuses, error bodies, and clients that misbehave (garbage, oversized bodies, bad JSON, many connections)
 * without the server stopping to answer.
 */
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { lstatSync, mkdtempSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { callApi } from "../../src/cli/ctl.ts";
import { VireoError } from "../../src/errors.ts";
import {
  API_MAX_BODY,
  ApiError,
  type ApiServer,
  type MigrateRequest,
  type SnapshotRequest,
  type SnapshotResult,
  startApiServer,
  type VmController,
  type VmInfo,
  type VmState,
} from "../../src/vmm/api-server.ts";
import type { MigrationResult } from "../../src/vmm/migration/source.ts";
import { VIREO_BIN } from "../helpers/cli.ts";

const dir = mkdtempSync(join(tmpdir(), "vireo-api-"));

class FakeVm implements VmController {
  state: VmState = "running";
  calls: string[] = [];
  counter = 0;
  info(): VmInfo {
    this.calls.push("info");
    return {
      state: this.state,
      cpus: 2,
      memMiB: 64,
      kernel: "k.elf",
      cmdline: "hello",
      uptimeMs: 1234,
      devices: ["uart16550 com1 port 0x3f8 irq 4", "virtio-blk blk0 pci 00:01.0"],
      host: "kvm",
      pid: 42,
    };
  }
  async pause(): Promise<void> {
    this.calls.push("pause");
    if (this.state !== "running")
      throw new ApiError(409, "VIREO_API_STATE", `cannot pause a VM that is ${this.state}`);
    await new Promise((r) => setTimeout(r, 5));
    this.state = "paused";
  }
  resume(): void {
    this.calls.push("resume");
    if (this.state !== "paused") throw new ApiError(409, "VIREO_API_STATE", "the VM is not paused");
    this.state = "running";
  }
  metrics(): Record<string, number> {
    this.calls.push("metrics");
    return { "exits.io": ++this.counter, "virtio.blk0.read_bytes": 4096 };
  }
  shutdown(): void {
    this.calls.push("shutdown");
    this.state = "stopping";
  }
  async migrate(req: MigrateRequest): Promise<MigrationResult> {
    this.calls.push(
      `migrate ${req.to} ${req.downtimeMs ?? "-"} ${req.maxRounds ?? "-"} ${req.verify ?? "-"}`,
    );
    return {
      to: req.to,
      ramBytes: 64 << 20,
      rounds: [
        { pages: 300, ms: 10 },
        { pages: 12, ms: 1 },
      ],
      pagesSent: 320,
      bytesSent: 320 * 4100,
      finalPages: 8,
      converged: true,
      verified: req.verify === true,
      downtimeMs: 42,
      totalMs: 77,
    };
  }
  async snapshot(req: SnapshotRequest): Promise<SnapshotResult> {
    this.calls.push(`snapshot ${req.path}${req.paused ? " paused" : ""}`);
    return {
      path: req.path,
      state: req.paused ? "paused" : "running",
      stateFileBytes: 1,
      ramBytes: 2,
      memoryBytesWritten: 3,
      memoryExtents: 4,
      pauseMs: 0,
      vcpuStateMs: 0,
      memoryMs: 0,
      totalMs: 0,
    };
  }
}

/** Sends raw bytes and returns everything the server answered before closing (or `waitMs`). */
function raw(path: string, bytes: string | Buffer, waitMs = 2000): Promise<string> {
  return new Promise((resolve) => {
    const s = connect(path);
    const chunks: Buffer[] = [];
    const done = () => resolve(Buffer.concat(chunks).toString("utf8"));
    s.on("data", (c) => chunks.push(c));
    s.on("close", done);
    s.on("error", () => {});
    s.write(bytes);
    setTimeout(() => {
      s.destroy();
      done();
    }, waitMs);
  });
}

const servers: ApiServer[] = [];
after(async () => {
  for (const s of servers) await s.close();
});

async function serve(
  name: string,
  vm: VmController = new FakeVm(),
): Promise<{ path: string; vm: VmController }> {
  const path = join(dir, name);
  servers.push(await startApiServer(path, vm));
  return { path, vm };
}

describe("control API routes", () => {
  test("info, metrics, pause, resume and shutdown reach the VM and answer JSON", async () => {
    const vm = new FakeVm();
    const { path } = await serve("routes.sock", vm);
    const info = await callApi(path, "GET", "/v1/vm");
    assert.equal(info.status, 200);
    assert.equal((info.body as VmInfo).state, "running");
    assert.equal((info.body as VmInfo).cpus, 2);
    const m1 = await callApi(path, "GET", "/v1/metrics");
    const m2 = await callApi(path, "GET", "/v1/metrics");
    assert.equal((m1.body as { metrics: Record<string, number> }).metrics["exits.io"], 1);
    assert.equal(
      (m2.body as { metrics: Record<string, number> }).metrics["exits.io"],
      2,
      "read live each time",
    );
    assert.deepEqual(await callApi(path, "PUT", "/v1/vm/pause"), { status: 200, body: { state: "paused" } });
    const again = await callApi(path, "PUT", "/v1/vm/pause");
    assert.equal(again.status, 409);
    assert.deepEqual(again.body, {
      error: { code: "VIREO_API_STATE", message: "cannot pause a VM that is paused" },
    });
    assert.deepEqual(await callApi(path, "PUT", "/v1/vm/resume"), {
      status: 200,
      body: { state: "running" },
    });
    assert.equal((await callApi(path, "PUT", "/v1/vm/resume")).status, 409);
    assert.deepEqual(await callApi(path, "PUT", "/v1/vm/shutdown"), {
      status: 202,
      body: { state: "stopping" },
    });
    assert.deepEqual(
      vm.calls.filter((c) => c !== "info"),
      ["metrics", "metrics", "pause", "pause", "resume", "resume", "shutdown"],
    );
  });

  test("snapshot: the body is checked (an absolute path, paused a boolean, nothing else) before the VM sees it", async () => {
    const vm = new FakeVm();
    const { path } = await serve("snapshot.sock", vm);
    const ok = await callApi(path, "PUT", "/v1/vm/snapshot", 5000, { path: "/tmp/snap", paused: true });
    assert.equal(ok.status, 200);
    assert.equal((ok.body as SnapshotResult).memoryBytesWritten, 3);
    for (const body of [
      {},
      { path: "relative/dir" },
      { path: 7 },
      { path: "/x", paused: "yes" },
      { path: "/x", extra: 1 },
    ]) {
      const r = await callApi(path, "PUT", "/v1/vm/snapshot", 5000, body);
      assert.equal(r.status, 400, JSON.stringify(body));
      assert.equal((r.body as { error: { code: string } }).error.code, "VIREO_API_BAD_REQUEST");
    }
    assert.deepEqual(vm.calls, ["snapshot /tmp/snap paused"]);
  });

  test("migrate: the body is checked (a tcp: or unix: destination, numbers in range, nothing else) before the VM sees it", async () => {
    const vm = new FakeVm();
    const { path } = await serve("migrate.sock", vm);
    const ok = await callApi(path, "PUT", "/v1/vm/migrate", 5000, {
      to: "tcp:10.0.0.2:4444",
      downtimeMs: 100,
    });
    assert.equal(ok.status, 200, JSON.stringify(ok.body));
    assert.equal((ok.body as MigrationResult).downtimeMs, 42);
    for (const body of [
      {},
      { to: "10.0.0.2:4444" },
      { to: "tcp:10.0.0.2" },
      { to: "tcp:host:70000" },
      { to: "unix:" },
      { to: "tcp:h:1", downtimeMs: 0 },
      { to: "tcp:h:1", downtimeMs: 1.5 },
      { to: "tcp:h:1", maxRounds: "3" },
      { to: "tcp:h:1", verify: 1 },
      { to: "tcp:h:1", extra: true },
    ]) {
      const r = await callApi(path, "PUT", "/v1/vm/migrate", 5000, body);
      assert.equal(r.status, 400, JSON.stringify(body));
      assert.equal((r.body as { error: { code: string } }).error.code, "VIREO_API_BAD_REQUEST");
    }
    assert.deepEqual(vm.calls, ["migrate tcp:10.0.0.2:4444 100 - -"]);
    const cli = await vireoAsync([
      "ctl",
      "--api-socket",
      path,
      "migrate",
      "unix:/tmp/in.sock",
      "--max-rounds",
      "5",
      "--verify",
    ]);
    assert.equal(cli.status, 0, cli.stderr);
    assert.match(cli.stdout, /^migrated to unix:\/tmp\/in.sock$/m);
    assert.match(cli.stdout, /downtime +42 ms, 77 ms in all/);
    assert.equal(vm.calls.at(-1), "migrate unix:/tmp/in.sock - 5 true");
    const stray = await vireoAsync(["ctl", "--api-socket", path, "info", "--verify"]);
    assert.equal(stray.status, 125);
    assert.match(stray.stderr, /go with migrate/);
    const none = await vireoAsync(["ctl", "--api-socket", path, "migrate"]);
    assert.equal(none.status, 125);
    assert.match(none.stderr, /migrate needs a destination/);
  });

  test("an unknown path is 404, a wrong method 405 with Allow; neither reaches the VM", async () => {
    const vm = new FakeVm();
    const { path } = await serve("errors.sock", vm);
    const nf = await callApi(path, "GET", "/v1/nothing");
    assert.equal(nf.status, 404);
    assert.equal((nf.body as { error: { code: string } }).error.code, "VIREO_API_NOT_FOUND");
    const wrong = await callApi(path, "GET", "/v1/vm/pause");
    assert.equal(wrong.status, 405);
    assert.match((wrong.body as { error: { message: string } }).error.message, /allowed: PUT/);
    const text = await raw(path, "DELETE /v1/vm HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    assert.match(text, /^HTTP\/1\.1 405/);
    assert.match(text, /allow: GET/i);
    assert.deepEqual(vm.calls, []);
  });

  test("bodies: JSON objects only, at most API_MAX_BODY bytes", async () => {
    const vm = new FakeVm();
    const { path } = await serve("bodies.sock", vm);
    const put = (body: string, extra = "") =>
      raw(
        path,
        `PUT /v1/vm/pause HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n${extra}connection: close\r\n\r\n${body}`,
      );
    assert.match(await put("{not json"), /^HTTP\/1\.1 400[\s\S]*VIREO_API_BAD_JSON/);
    assert.match(await put("[1,2]"), /^HTTP\/1\.1 400[\s\S]*must be a JSON object/);
    assert.match(await put("null"), /^HTTP\/1\.1 400/);
    assert.deepEqual(vm.calls, [], "no bad body reached the VM");
    // Declared too large: refused before reading it.
    const declared = await raw(
      path,
      `PUT /v1/vm/pause HTTP/1.1\r\nhost: x\r\ncontent-length: ${API_MAX_BODY + 1}\r\nconnection: close\r\n\r\n`,
    );
    assert.match(declared, /^HTTP\/1\.1 413[\s\S]*VIREO_API_TOO_LARGE/);
    // Chunked, with no length announced: cut off once past the limit.
    const chunk = "x".repeat(16 * 1024);
    const chunked = Buffer.from(
      `PUT /v1/vm/pause HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n${`${(16 * 1024).toString(16)}\r\n${chunk}\r\n`.repeat(6)}0\r\n\r\n`,
    );
    const answer = await raw(path, chunked);
    assert.ok(
      answer === "" || /^HTTP\/1\.1 413/.test(answer),
      `oversized chunked body: ${answer.slice(0, 80)}`,
    );
    assert.deepEqual(vm.calls, []);
    assert.deepEqual(await callApi(path, "PUT", "/v1/vm/pause"), { status: 200, body: { state: "paused" } });
    assert.equal(
      (await put("{}")).split("\r\n")[0],
      "HTTP/1.1 409 Conflict",
      "an empty object is a valid body",
    );
  });

  test("garbage, half requests and many connections do not stop it answering", async () => {
    const vm = new FakeVm();
    const { path } = await serve("garbage.sock", vm);
    assert.match(
      await raw(path, Buffer.from([0, 1, 2, 0xff, 13, 10, 13, 10])),
      /^HTTP\/1\.1 400[\s\S]*VIREO_API_BAD_REQUEST/,
    );
    assert.match(
      await raw(path, `GET /v1/vm HTTP/1.1\r\n${"x-a: b\r\n".repeat(20000)}\r\n`),
      /^HTTP\/1\.1 4\d\d/,
    );
    // 40 idle half-open requests (more than API_MAX_CONNECTIONS) while a real client asks.
    const idle = Array.from({ length: 40 }, () => {
      const s = connect(path);
      s.on("error", () => {});
      s.write("GET /v1/vm HTTP/1.1\r\n");
      return s;
    });
    await new Promise((r) => setTimeout(r, 100));
    for (const s of idle) s.destroy();
    await new Promise((r) => setTimeout(r, 50));
    const info = await callApi(path, "GET", "/v1/vm");
    assert.equal(info.status, 200);
    assert.deepEqual(vm.calls, ["info"]);
  });

  test("a VM that fails inside a verb gives a 500 with its message, and the server goes on", async () => {
    const vm = new FakeVm();
    vm.metrics = () => {
      throw new Error("registry torn");
    };
    const { path } = await serve("fail.sock", vm);
    const r = await callApi(path, "GET", "/v1/metrics");
    assert.equal(r.status, 500);
    assert.deepEqual(r.body, {
      error: { code: "VIREO_API_INTERNAL", message: "internal error: registry torn" },
    });
    assert.equal((await callApi(path, "GET", "/v1/vm")).status, 200);
  });

  test("the socket path: a stale socket is replaced, any other file refused, a path over 107 bytes refused", async () => {
    // A crashed VMM leaves its socket file behind, with nobody listening: python binds one and exits.
    const stale = join(dir, "stale.sock");
    execFileSync("python3", [
      "-c",
      "import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])",
      stale,
    ]);
    assert.ok(lstatSync(stale).isSocket());
    const again = await startApiServer(stale, new FakeVm());
    servers.push(again);
    assert.equal((await callApi(again.path, "GET", "/v1/vm")).status, 200);
    const file = join(dir, "plain-file");
    writeFileSync(file, "data");
    await assert.rejects(startApiServer(file, new FakeVm()), /exists and is not a socket/);
    await assert.rejects(startApiServer(join(dir, "x".repeat(120)), new FakeVm()), /at most 107/);
  });

  test("callApi says clearly when nobody listens", async () => {
    await assert.rejects(callApi(join(dir, "nobody.sock"), "GET", "/v1/vm"), (e: unknown) => {
      assert.ok(e instanceof VireoError);
      assert.equal(e.code, "VIREO_API_UNREACHABLE");
      return true;
    });
  });
});

/** Runs bin/vireo asynchronously (the fake server lives in this process, so spawnSync would block it). */
function vireoAsync(args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(VIREO_BIN, args, { stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    p.stdout.on("data", (c) => {
      stdout += c;
    });
    p.stderr.on("data", (c) => {
      stderr += c;
    });
    p.on("close", (status) => resolve({ status, stdout, stderr }));
  });
}

describe("vireo ctl", () => {
  test("verbs against a server: text, --json, errors with exit status 1", async () => {
    const vm = new FakeVm();
    const { path } = await serve("ctl.sock", vm);
    const info = await vireoAsync(["ctl", "--api-socket", path, "info"]);
    assert.equal(info.status, 0, info.stderr);
    assert.match(info.stdout, /^state\s+running$/m);
    assert.match(info.stdout, /virtio-blk blk0 pci 00:01\.0/);
    const json = await vireoAsync(["ctl", "--api-socket", path, "metrics", "--json"]);
    assert.equal(json.status, 0, json.stderr);
    assert.equal(JSON.parse(json.stdout).metrics["virtio.blk0.read_bytes"], 4096);
    assert.equal((await vireoAsync(["ctl", "--api-socket", path, "resume"])).status, 1);
    const err = await vireoAsync(["ctl", "--api-socket", path, "resume"]);
    assert.match(err.stderr, /resume: the VM is not paused \(VIREO_API_STATE\)/);
    const p = await vireoAsync(["ctl", "--api-socket", path, "pause"]);
    assert.equal(p.status, 0, p.stderr);
    assert.equal(p.stdout.trim(), "pause: paused");
  });

  test("snapshot DIR: sent as an absolute path, --paused passed on, the answer summarised", async () => {
    const vm = new FakeVm();
    const { path } = await serve("ctl-snap.sock", vm);
    const r = await vireoAsync(["ctl", "--api-socket", path, "snapshot", "rel/snap", "--paused"]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^snapshot: \/.*\/rel\/snap \(VM paused\)$/m);
    assert.match(r.stdout, /memory file .* written of .* RAM \(4 runs/);
    assert.equal(vm.calls.length, 1);
    assert.match(vm.calls[0] ?? "", /^snapshot \/.+\/rel\/snap paused$/);
    const none = await vireoAsync(["ctl", "--api-socket", path, "snapshot"]);
    assert.equal(none.status, 125);
    assert.match(none.stderr, /snapshot needs a directory/);
    const stray = await vireoAsync(["ctl", "--api-socket", path, "info", "--paused"]);
    assert.equal(stray.status, 125);
    assert.match(stray.stderr, /--paused goes with snapshot/);
  });

  test("usage errors and an unreachable socket", async () => {
    const none = await vireoAsync(["ctl", "info"]);
    assert.equal(none.status, 125);
    assert.match(none.stderr, /--api-socket PATH is required/);
    const verb = await vireoAsync(["ctl", "--api-socket", "/nope", "explode"]);
    assert.equal(verb.status, 125);
    assert.match(
      verb.stderr,
      /unknown verb 'explode' \(known: info, metrics, pause, resume, shutdown, snapshot, migrate\)/,
    );
    const gone = await vireoAsync(["ctl", "--api-socket", join(dir, "gone.sock"), "info"]);
    assert.equal(gone.status, 125);
    assert.match(gone.stderr, /cannot reach the API at/);
    const help = await vireoAsync(["ctl", "--help"]);
    assert.equal(help.status, 0);
    assert.match(help.stdout, /Usage: vireo ctl --api-socket PATH VERB/);
  });
});
