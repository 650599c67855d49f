/**
 * Issue 12, the control API on a real VM: the micro guest's `bench-pio` makes port I/O exits without end; through
 * `vireo ctl` the test reads info and live metrics, pauses the VM (the exit count must then stand still), resumes
 * it (the count moves again), and shuts it down (vireo exits with 130, the socket is gone). A malformed request in
 * the middle must not disturb the VM.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { callApi } from "../../src/cli/ctl.ts";
import { KvmSystem } from "../../src/kvm/system.ts";
import { VIREO_BIN, vireo } from "../helpers/cli.ts";

const skip = KvmSystem.available() ? false : "no usable /dev/kvm on this host: KVM tests skipped";
const emulated = process.env.VIREO_EMULATED_HOST === "1";
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** Progress on stderr, for a run that hangs (the emulated host's share is read-only: no file). */
const t0 = Date.now();
function step(message: string): void {
  process.stderr.write(`control-api: ${((Date.now() - t0) / 1000).toFixed(1)} s: ${message}\n`);
}

function exits(metrics: Record<string, number>): number {
  let n = 0;
  for (const [k, v] of Object.entries(metrics)) if (k.startsWith("exits.")) n += v;
  return n;
}

async function metricsNow(sock: string): Promise<Record<string, number>> {
  const r = await callApi(sock, "GET", "/v1/metrics");
  assert.equal(r.status, 200);
  return (r.body as { metrics: Record<string, number> }).metrics;
}

test("vireo ctl pauses, resumes and shuts down a running VM", { skip, timeout: 600_000 }, async (t) => {
  const sock = join(mkdtempSync(join(tmpdir(), "vireo-api-kvm-")), "api.sock");
  const child = spawn(
    VIREO_BIN,
    [
      "run",
      "--guest",
      "micro:bench-pio",
      "1000000000000",
      "--serial",
      "none",
      "--timeout",
      "500",
      "--api-socket",
      sock,
    ],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  step(`started vireo (pid ${child.pid})`);
  child.stdout.resume();
  let stderr = "";
  child.stderr.on("data", (c) => {
    stderr += c;
  });
  const exited = new Promise<number | null>((resolve) =>
    child.on("close", (code, signal) => {
      step(`vireo exited: status ${code}, signal ${signal}`);
      resolve(code);
    }),
  );
  try {
    // Wait for the socket and for the guest to be making exits.
    const deadline = Date.now() + (emulated ? 240_000 : 30_000);
    while (!existsSync(sock)) {
      assert.ok(Date.now() < deadline, `the API socket did not appear\n${stderr}`);
      await sleep(50);
    }
    while (exits(await metricsNow(sock)) < 1000) {
      assert.ok(Date.now() < deadline, `the guest made no exits\n${stderr}`);
      await sleep(100);
    }
    step("socket up, guest making exits");
    const info = vireo(["ctl", "--api-socket", sock, "info", "--json"]);
    assert.equal(info.status, 0, info.stderr);
    const body = JSON.parse(info.stdout);
    assert.equal(body.state, "running");
    assert.equal(body.cpus, 1);
    assert.equal(body.cmdline, "bench-pio 1000000000000");
    assert.ok(
      body.devices.some((d: string) => d.startsWith("uart16550")),
      info.stdout,
    );

    step("info ok");
    // Requests the API refuses do not disturb the VM.
    assert.equal((await callApi(sock, "GET", "/v1/nothing")).status, 404);
    assert.equal((await callApi(sock, "DELETE", "/v1/vm")).status, 405);
    step("refused requests answered");
    const pause = vireo(["ctl", "--api-socket", sock, "pause"]);
    assert.equal(pause.status, 0, pause.stderr);
    assert.equal(pause.stdout.trim(), "pause: paused");
    step("paused");
    const p1 = exits(await metricsNow(sock));
    await sleep(emulated ? 1500 : 300);
    const p2 = exits(await metricsNow(sock));
    t.diagnostic(`paused: exits ${p1} -> ${p2}`);
    assert.equal(p2, p1, "no exit while paused");
    assert.equal((await callApi(sock, "PUT", "/v1/vm/pause")).status, 409, "pausing twice is a conflict");

    step("pause checked");
    // The rest through the API directly: under the emulated host each `vireo ctl` process takes tens of seconds
    // to start, and the CLI's path is the same for every verb.
    assert.deepEqual(await callApi(sock, "PUT", "/v1/vm/resume"), {
      status: 200,
      body: { state: "running" },
    });
    let r2 = p2;
    const moveDeadline = Date.now() + (emulated ? 60_000 : 10_000);
    while (r2 <= p2 + 100 && Date.now() < moveDeadline) {
      await sleep(100);
      r2 = exits(await metricsNow(sock));
    }
    t.diagnostic(`resumed: exits ${p2} -> ${r2}`);
    assert.ok(r2 > p2 + 100, `the guest runs again after resume (${p2} -> ${r2})`);

    step("resumed");
    assert.deepEqual(await callApi(sock, "PUT", "/v1/vm/shutdown"), {
      status: 202,
      body: { state: "stopping" },
    });
    step("shutdown sent");
    const status = await Promise.race([
      exited,
      sleep(emulated ? 60_000 : 10_000).then(() => "late" as const),
    ]);
    assert.equal(status, 130, `vireo run exits 130 after shutdown\n${stderr}`);
    assert.equal(existsSync(sock), false, "the API socket is removed when the VM ends");
  } catch (e) {
    step(`failed; vireo's stderr:\n${stderr}`);
    throw e;
  } finally {
    child.kill("SIGKILL");
    await exited;
  }
});
