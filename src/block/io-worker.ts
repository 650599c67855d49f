/**
 * A BlockIoPool worker thread (io-pool.ts): takes jobs from the shared submission ring, moves their data between
 * the image file and guest memory with synchronous preadv/pwritev (or fdatasync for a flush), and posts each
 * job's result on the completion ring, waking the main thread through an eventfd when it may be asleep.
 *
 * The main thread checked every guest range before it wrote a job (each segment lies inside one memory region
 * of the buffer); the worker only turns offsets into views of the buffer it was given for the job's memory id.
 */
import { writeSync } from "node:fs";
import { receiveMessageOnPort, workerData } from "node:worker_threads";
import { runJob } from "./io-job.ts";
import {
  C_CQ_TAIL,
  C_IDLE,
  C_MEM_GEN,
  C_READY,
  C_SIGNALLED,
  C_SQ_HEAD,
  C_SQ_TAIL,
  C_STOP,
  CQ_AT,
  type IoWorkerData,
  type MemoryMessage,
  RING,
  S_RESULT,
  SLOT_WORDS,
  SLOTS_AT,
  SQ_AT,
} from "./io-pool-layout.ts";

const data = workerData as IoWorkerData;
const ctl = new Int32Array(data.control);
const port = data.port;
const u32 = new Uint32Array(data.control);
const memories = new Map<number, Uint8Array>();
let memGen = -1;
const ONE = new Uint8Array(8);
ONE[0] = 1;

function takeMessages(): void {
  for (;;) {
    const m = receiveMessageOnPort(port);
    if (m === undefined) return;
    const msg = m.message as MemoryMessage;
    if (msg.kind === "memory") memories.set(msg.id, new Uint8Array(msg.buffer));
    else memories.delete(msg.id);
  }
}

/** The buffer of memory `id`: its message is posted before any job naming it, so it is on the port by now. */
function memory(id: number): Uint8Array | undefined {
  const gen = Atomics.load(ctl, C_MEM_GEN);
  if (gen !== memGen) {
    memGen = gen;
    takeMessages();
  }
  let m = memories.get(id);
  // A message posted from another thread may take a moment to reach the port's queue.
  for (let i = 0; m === undefined && i < 1000; i++) {
    Atomics.wait(ctl, C_STOP, 0, 1);
    takeMessages();
    m = memories.get(id);
  }
  return m;
}

function complete(slot: number, result: number): void {
  Atomics.store(ctl, SLOTS_AT + slot * SLOT_WORDS + S_RESULT, result);
  const i = Atomics.add(ctl, C_CQ_TAIL, 1);
  Atomics.store(ctl, CQ_AT + (i & (RING - 1)), slot + 1);
  // The main thread clears the flag before it reads the ring: a completion posted after that wakes it.
  if (Atomics.exchange(ctl, C_SIGNALLED, 1) === 0) {
    try {
      writeSync(data.completionFd, ONE);
    } catch {
      // EAGAIN: the counter is full, so the main thread will wake anyway
    }
  }
}

Atomics.add(ctl, C_READY, 1);
Atomics.notify(ctl, C_READY);
for (;;) {
  if (Atomics.load(ctl, C_STOP) !== 0) break;
  const head = Atomics.load(ctl, C_SQ_HEAD);
  const tail = Atomics.load(ctl, C_SQ_TAIL);
  if (head === tail) {
    // Counted idle before the wait: a submission after `tail` was read either sees the count and wakes this
    // thread, or changed the tail first, and then the wait returns at once.
    Atomics.add(ctl, C_IDLE, 1);
    Atomics.wait(ctl, C_SQ_TAIL, tail);
    Atomics.sub(ctl, C_IDLE, 1);
    continue;
  }
  if (Atomics.compareExchange(ctl, C_SQ_HEAD, head, (head + 1) | 0) !== head) continue;
  const slot = Atomics.load(ctl, SQ_AT + (head & (RING - 1)));
  complete(slot, runJob(ctl, u32, slot, memory, data.fd, data.bufferedFd));
}
port.close();
