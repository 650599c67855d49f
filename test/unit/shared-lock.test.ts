import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { isMainThread, type MessagePort, parentPort, Worker, workerData } from "node:worker_threads";
import { LockError, SharedLock } from "../../src/shared/shared-lock.ts";

/**
 * This file is its own worker script: in a worker it runs `workerMain` instead of registering tests. Workers do
 * not get the TypeScript loader from the parent's `--import tsx` (nor, on Node 20, from `execArgv`), so a small
 * JavaScript bootstrap registers tsx in the worker before importing this file.
 */
const TSX_API = import.meta.resolve("tsx/esm/api");
const WORKER_BOOTSTRAP = `import(${JSON.stringify(TSX_API)}).then((tsx) => { tsx.register(); return import(${JSON.stringify(import.meta.url)}); })`;

type Job =
  | { job: "race"; buffer: SharedArrayBuffer; iterations: number; useLock: boolean }
  | { job: "blocked"; buffer: SharedArrayBuffer };

/**
 * "race": `iterations` read-modify-write increments of a plain (non-atomic) shared counter, with a spin between
 * the read and the write so that unprotected updates would be lost, plus `Atomics.add` on a second slot to count
 * how often two workers were inside the critical section at once.
 * "blocked": take a lock the main thread holds, then set a flag.
 */
function workerMain(data: Job, port: MessagePort): void {
  const lock = new SharedLock(data.buffer, 0);
  const view = new Int32Array(data.buffer);
  if (data.job === "blocked") {
    port.postMessage("trying");
    lock.lock();
    view[1] = 1;
    lock.unlock();
    port.postMessage("done");
    return;
  }
  port.postMessage("ready");
  Atomics.wait(view, 4, 0); // the start gate
  let sink = 0;
  for (let i = 0; i < data.iterations; i++) {
    if (data.useLock) lock.lock();
    if (Atomics.add(view, 2, 1) !== 0) Atomics.add(view, 3, 1);
    const v = view[1] as number;
    for (let k = 0; k < 20; k++) sink += Math.sqrt(k);
    view[1] = v + 1;
    Atomics.sub(view, 2, 1);
    if (data.useLock) lock.unlock();
  }
  port.postMessage(sink > 0 ? "done" : "done!");
}

function nextMessage(w: Worker): Promise<unknown> {
  return new Promise((res, rej) => {
    const onError = (e: Error) => rej(e);
    w.once("error", onError);
    w.once("message", (m) => {
      w.off("error", onError);
      res(m);
    });
  });
}

function spawn(data: Job): Worker {
  return new Worker(WORKER_BOOTSTRAP, { eval: true, workerData: data });
}

/** Layout of the race buffer (Int32 slots): 0 lock, 1 counter, 2 inside, 3 overlaps, 4 start gate. */
async function race(workers: number, iterations: number, useLock: boolean) {
  const buffer = new SharedArrayBuffer(32);
  SharedLock.init(buffer, 0);
  const threads = Array.from({ length: workers }, () => spawn({ job: "race", buffer, iterations, useLock }));
  try {
    await Promise.all(threads.map(nextMessage));
    const done = Promise.all(threads.map(nextMessage));
    // Release all workers at once so they really contend.
    const view = new Int32Array(buffer);
    Atomics.store(view, 4, 1);
    Atomics.notify(view, 4);
    await done;
    return { total: view[1] as number, overlaps: view[3] as number };
  } finally {
    await Promise.all(threads.map((w) => w.terminate()));
  }
}

if (!isMainThread) {
  workerMain(workerData as Job, parentPort as MessagePort);
} else {
  describe("SharedLock", () => {
    test("two worker threads incrementing a plain counter under the lock lose no update", async () => {
      const iterations = 200_000;
      const { total, overlaps } = await race(2, iterations, true);
      assert.equal(overlaps, 0, "two threads were inside the critical section at once");
      assert.equal(total, 2 * iterations);
    });

    test("the main thread and a worker exclude each other", async () => {
      const buffer = new SharedArrayBuffer(8);
      SharedLock.init(buffer);
      const lock = new SharedLock(buffer);
      const view = new Int32Array(buffer);
      lock.lock();
      const w = spawn({ job: "blocked", buffer });
      try {
        assert.equal(await nextMessage(w), "trying");
        const done = nextMessage(w);
        // Give the worker time to reach lock() and prove it stays blocked there.
        const deadline = Date.now() + 2000;
        while (Atomics.load(view, 0) !== 2 && Date.now() < deadline)
          await new Promise((r) => setTimeout(r, 5));
        assert.equal(Atomics.load(view, 0), 2, "the waiting worker marks the lock contended");
        await new Promise((r) => setTimeout(r, 50));
        assert.equal(Atomics.load(view, 1), 0, "worker entered while the main thread held the lock");
        lock.unlock();
        assert.equal(await done, "done");
        assert.equal(Atomics.load(view, 1), 1);
        assert.equal(Atomics.load(view, 0), 0, "lock is free again");
      } finally {
        await w.terminate();
      }
    });

    test("withLock releases on return and on throw", () => {
      const buffer = new SharedArrayBuffer(8);
      const lock = new SharedLock(buffer, 4);
      assert.equal(
        lock.withLock(() => 42),
        42,
      );
      assert.equal(lock.isHeld, false);
      assert.throws(
        () =>
          lock.withLock(() => {
            throw new Error("boom");
          }),
        /boom/,
      );
      assert.equal(lock.isHeld, false);
      assert.equal(new Int32Array(buffer)[1], 0);
      const other = new SharedLock(buffer, 4);
      assert.equal(other.tryLock(), true, "a second holder can take it after withLock");
      other.unlock();
    });

    test("tryLock fails while another holder has the lock", () => {
      const buffer = new SharedArrayBuffer(4);
      const a = new SharedLock(buffer);
      const b = new SharedLock(buffer);
      a.lock();
      assert.equal(b.tryLock(), false);
      a.unlock();
      assert.equal(b.tryLock(), true);
      assert.equal(a.tryLock(), false);
      b.unlock();
    });

    test("misuse is reported instead of deadlocking or corrupting the word", () => {
      const buffer = new SharedArrayBuffer(4);
      const lock = new SharedLock(buffer);
      assert.throws(() => lock.unlock(), LockError);
      lock.lock();
      assert.throws(() => lock.lock(), LockError);
      assert.throws(() => lock.tryLock(), LockError);
      lock.unlock();
      assert.equal(new Int32Array(buffer)[0], 0);
      assert.throws(() => new SharedLock(new ArrayBuffer(4) as unknown as SharedArrayBuffer), LockError);
      assert.throws(() => new SharedLock(buffer, 2), LockError);
      assert.throws(() => new SharedLock(buffer, 4), LockError);
    });
  });
}
