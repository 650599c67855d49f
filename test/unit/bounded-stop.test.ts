/**
 * The machine's bounded stop (src/vmm/bounded-stop.ts) with real worker threads: one that ends when told, one
 * stuck in a loop without end, one asleep in Atomics.wait that nobody wakes. The stuck ones must be ended and
 * named once the grace after the stop request has passed, and not before the stop request.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { Worker } from "node:worker_threads";
import { awaitThreadsStopped, describeLateStop, type StoppingThread } from "../../src/vmm/bounded-stop.ts";

function thread(name: string, code: string): { t: StoppingThread; worker: Worker; exited: () => boolean } {
  const worker = new Worker(code, { eval: true });
  let exited = false;
  const ended = new Promise<void>((resolve) =>
    worker.on("exit", () => {
      exited = true;
      resolve();
    }),
  );
  return { t: { name, ended, terminate: () => worker.terminate() }, worker, exited: () => exited };
}

const LEAVES_WHEN_TOLD = `require("node:worker_threads").parentPort.once("message", () => process.exit(0));`;
const SPINS = `require("node:worker_threads").parentPort.postMessage("up"); for (;;) {}`;
const SLEEPS = `require("node:worker_threads").parentPort.postMessage("up"); Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0);`;

const up = (w: Worker) => new Promise((r) => w.once("message", r));

test("threads that leave when asked end the wait with nothing to report", async () => {
  const a = thread("a", LEAVES_WHEN_TOLD);
  const b = thread("b", LEAVES_WHEN_TOLD);
  let at: number | undefined;
  const waiting = awaitThreadsStopped([a.t, b.t], { graceMs: 60_000, requestedAt: () => at, pollMs: 10 });
  at = performance.now();
  a.worker.postMessage("stop");
  b.worker.postMessage("stop");
  const r = await waiting;
  assert.deepEqual(r, { terminated: [], unresponsive: [] });
  assert.ok(performance.now() - at < 30_000, "the wait did not run into its grace");
  assert.ok(a.exited() && b.exited());
});

test("a spinning and a sleeping thread are ended once the grace after the stop request has passed", async () => {
  const ok = thread("vCPU 0", LEAVES_WHEN_TOLD);
  const spin = thread("vCPU 1", SPINS);
  const sleep = thread("the data-plane thread of net0", SLEEPS);
  await Promise.all([up(spin.worker), up(sleep.worker)]);
  let at: number | undefined;
  const graceMs = 300;
  const waiting = awaitThreadsStopped([ok.t, spin.t, sleep.t], {
    graceMs,
    requestedAt: () => at,
    pollMs: 10,
  });
  // No stop requested yet: a running machine's threads are waited for without a bound.
  await new Promise((r) => setTimeout(r, 2 * graceMs));
  assert.ok(!spin.exited() && !sleep.exited(), "nothing is ended before the stop request");
  at = performance.now();
  ok.worker.postMessage("stop");
  const r = await waiting;
  const took = performance.now() - at;
  assert.deepEqual(r.terminated, ["vCPU 1", "the data-plane thread of net0"]);
  assert.deepEqual(r.unresponsive, []);
  assert.ok(took >= graceMs, `ended after ${took.toFixed(0)} ms, before the ${graceMs} ms grace`);
  assert.ok(took < 20_000, `took ${took.toFixed(0)} ms`);
  assert.ok(spin.exited() && sleep.exited(), "both stuck threads are gone");
  assert.ok(ok.exited());
});

test("a thread that does not end even when terminated is reported, and the wait still returns", async () => {
  const never: StoppingThread = {
    name: "vCPU 3",
    ended: new Promise(() => {}),
    terminate: () => new Promise(() => {}),
  };
  const at = performance.now();
  const r = await awaitThreadsStopped([never], {
    graceMs: 50,
    requestedAt: () => at,
    terminateMs: 100,
    pollMs: 10,
  });
  assert.deepEqual(r, { terminated: ["vCPU 3"], unresponsive: ["vCPU 3"] });
  const line = describeLateStop(r, 10_000);
  assert.match(line, /^vCPU 3 did not stop within 10 s of the stop request and was ended/);
  assert.match(line, /still running after that: vCPU 3$/);
  assert.match(
    describeLateStop({ terminated: ["vCPU 1", "vCPU 2"], unresponsive: [] }, 30_000),
    /^vCPU 1, vCPU 2 did not stop within 30 s of the stop request and were ended \(/,
  );
});
