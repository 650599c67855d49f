/**
 * A small pool of worker threads doing a block device's reads, writes and flushes on an image file, so that
 * several requests are at the disk at once (with O_DIRECT, one synchronous pread/pwrite at a time leaves the
 * disk's queue nearly empty). Data moves between the file and guest memory directly (preadv/pwritev on views of
 * the guest memory buffer, shared with the workers once per memory table); jobs carry offsets into it, never
 * data. Jobs finish in any order.
 *
 * Jobs submitted between `plug` and `unplug` (a device's pass over its ring) go to the workers together at
 * `unplug`; a lone job with nothing else in flight is run there and then on the calling thread instead: at one
 * request in flight a hand-off costs two thread wake-ups and buys nothing.
 *
 * The main thread (the one serving the device) submits jobs and learns of their ends from `completionFd`, an
 * eventfd to poll with its other fds: `reap()` then runs each finished job's `done` and each owner's
 * `completionsDone` once per reap (where a device publishes its used ring). `waitFor` blocks until a condition
 * holds, reaping meanwhile (a ring about to stop waits for its requests).
 *
 * The shared layout is io-pool-layout.ts; the worker is io-worker.ts. Workers are started by the caller's
 * `startWorker` (vireo's startTsWorker), which this layer cannot import.
 */
import { MessageChannel, type MessagePort, type Worker, type WorkerOptions } from "node:worker_threads";
import { VireoError } from "../errors.ts";
import { EFD_CLOEXEC, EFD_NONBLOCK, native, POLLIN, takeEventFd } from "../native.ts";
import type { BlockCounts } from "./counting.ts";
import { runJob } from "./io-job.ts";
import {
  C_IDLE,
  C_MEM_GEN,
  C_READY,
  C_SIGNALLED,
  C_SQ_TAIL,
  C_STOP,
  CONTROL_WORDS,
  CQ_AT,
  type IoWorkerData,
  MAX_SEGMENTS,
  type MemoryMessage,
  OP_FLUSH,
  OP_READ,
  OP_WRITE,
  RING,
  S_MEM,
  S_NSEGS,
  S_OFFSET_HI,
  S_OFFSET_LO,
  S_OP,
  S_RESULT,
  S_SEGS,
  SLOT_WORDS,
  SLOTS,
  SLOTS_AT,
  SQ_AT,
} from "./io-pool-layout.ts";

export { MAX_SEGMENTS as BLOCK_IO_MAX_SEGMENTS } from "./io-pool-layout.ts";

/** The most worker threads a pool may have. */
export const MAX_IO_THREADS = 64;

/** Whoever submitted jobs: told once per reap, after its jobs' `done` calls (a device publishes used buffers). */
export interface BlockIoOwner {
  completionsDone(): void;
}

/** A submitted job's end: `result` is the bytes moved (0 for a flush), or -errno. */
export type BlockIoDone = (result: number) => void;

/** How often a wait for requests that do not end says so (waitFor's onSlow). */
export const SLOW_WAIT_MS = 5000;

export interface BlockIoPoolOptions {
  /**
   * Worker threads (1 to MAX_IO_THREADS), or 0: no threads, jobs wait until the owner runs them (`runQueued`, in
   * the order it likes: tests of completion order), or until `waitFor` runs them in order.
   */
  threads: number;
  /** The image's descriptor (process-wide: the workers use the same number). */
  fd: number;
  /** A buffered descriptor of the same file for accesses O_DIRECT refuses, if `fd` is O_DIRECT. */
  bufferedFd?: number | null;
  /** Starts a worker thread on a module (vireo's startTsWorker). */
  startWorker: (module: URL, options: Omit<WorkerOptions, "eval">) => Worker;
  /** Counted as jobs end (reads, bytes, flushes, errors), as CountingBlockBackend counts synchronous calls. */
  counts?: BlockCounts;
}

/** A pool that cannot be started or used. */
export class BlockIoPoolError extends VireoError {
  constructor(message: string) {
    super("VIREO_BLOCK_IO_POOL", message);
  }
}

interface Job {
  done: BlockIoDone;
  owner: BlockIoOwner;
  op: number;
  bytes: number;
  mem: number;
}

export class BlockIoPool {
  readonly threads: number;
  /** Readable (POLLIN) when jobs have ended since the last reap. */
  readonly completionFd: number;
  private readonly ctl: Int32Array;
  private readonly u32: Uint32Array;
  private readonly workers: Worker[] = [];
  private readonly ports: MessagePort[] = [];
  private readonly jobs: Array<Job | undefined> = new Array(SLOTS).fill(undefined);
  private readonly free: number[] = [];
  private sqTail = 0;
  private cqHead = 0;
  private inFlightJobs = 0;
  private readonly counts: BlockCounts | undefined;
  /** Memory buffers the workers hold, by id; jobs in flight per id. */
  private readonly memIds = new Map<SharedArrayBuffer, number>();
  private readonly memJobs = new Map<number, number>();
  private readonly memById = new Map<number, SharedArrayBuffer>();
  private readonly memBytes = new Map<number, Uint8Array>();
  private readonly jobMemory = (id: number) => this.memBytes.get(id);
  private readonly fd: number;
  private readonly bufferedFd: number;
  private plugged = false;
  private held: number[] = [];
  /** Lone jobs run on the calling thread (for tests and the bench's curiosity). */
  inlineJobs = 0;
  private latestMem = -1;
  private nextMem = 1;
  /** The slot being filled between begin and submit. */
  private open = -1;
  private closed = false;
  private readonly pollfd: Int32Array;
  private readonly owners = new Set<BlockIoOwner>();
  /** Without threads: the slots submitted, in order, waiting for runQueued or waitFor. */
  private readonly queued: number[] = [];

  constructor(opts: BlockIoPoolOptions) {
    if (!Number.isInteger(opts.threads) || opts.threads < 0 || opts.threads > MAX_IO_THREADS) {
      throw new BlockIoPoolError(`I/O threads ${opts.threads} is not 0 to ${MAX_IO_THREADS}`);
    }
    this.threads = opts.threads;
    this.counts = opts.counts;
    this.fd = opts.fd;
    this.bufferedFd = opts.bufferedFd ?? -1;
    const control = new SharedArrayBuffer(4 * CONTROL_WORDS);
    this.ctl = new Int32Array(control);
    this.u32 = new Uint32Array(control);
    for (let s = SLOTS - 1; s >= 0; s--) this.free.push(s);
    this.completionFd = native().eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    this.pollfd = Int32Array.of(this.completionFd, POLLIN, 0);
    const module = new URL("./io-worker.ts", import.meta.url);
    try {
      for (let i = 0; i < opts.threads; i++) {
        const { port1, port2 } = new MessageChannel();
        const workerData: IoWorkerData = {
          control,
          fd: opts.fd,
          bufferedFd: opts.bufferedFd ?? -1,
          completionFd: this.completionFd,
          port: port2,
        };
        const w = opts.startWorker(module, { workerData, transferList: [port2], name: `vireo-blk-io-${i}` });
        // The loop that owns the pool never runs Node's event loop: the workers must not keep it alive either.
        w.unref();
        port1.unref();
        this.workers.push(w);
        this.ports.push(port1);
      }
    } catch (e) {
      this.close();
      throw new BlockIoPoolError(`cannot start I/O threads: ${e instanceof Error ? e.message : String(e)}`);
    }
  }

  /** Jobs submitted and not reaped. */
  get inFlight(): number {
    return this.inFlightJobs;
  }

  /**
   * The id jobs name `buffer` by (a guest memory buffer), sharing it with the workers the first time. Buffers
   * no job uses any more, other than the newest, are dropped from the workers (their mappings can go).
   */
  memoryId(buffer: SharedArrayBuffer): number {
    const known = this.memIds.get(buffer);
    if (known !== undefined) return known;
    const id = this.nextMem++;
    this.memIds.set(buffer, id);
    this.memJobs.set(id, 0);
    this.memById.set(id, buffer);
    this.memBytes.set(id, new Uint8Array(buffer));
    this.post({ kind: "memory", id, buffer });
    this.latestMem = id;
    for (const [b, other] of this.memIds)
      if (other !== id && this.memJobs.get(other) === 0) this.drop(b, other);
    return id;
  }

  /**
   * Starts a read or write job of guest memory `mem` at file offset `offset`; then `segment` per piece, then
   * `submit`. False if every slot is taken (the caller serves the request itself).
   */
  begin(op: "read" | "write", mem: number, offset: number): boolean {
    if (this.closed || this.open >= 0 || this.free.length === 0) return false;
    const slot = this.free.pop() as number;
    this.open = slot;
    const s = SLOTS_AT + slot * SLOT_WORDS;
    this.ctl[s + S_OP] = op === "read" ? OP_READ : OP_WRITE;
    this.ctl[s + S_MEM] = mem;
    this.ctl[s + S_NSEGS] = 0;
    this.u32[s + S_OFFSET_LO] = offset % 2 ** 32;
    this.u32[s + S_OFFSET_HI] = Math.floor(offset / 2 ** 32);
    return true;
  }

  /** Adds a piece of the open job: `length` bytes at `at` in the memory buffer (checked by the caller). */
  segment(at: number, length: number): boolean {
    if (this.open < 0) return false;
    const s = SLOTS_AT + this.open * SLOT_WORDS;
    const n = this.ctl[s + S_NSEGS] as number;
    if (n >= MAX_SEGMENTS) return false;
    this.u32[s + S_SEGS + 2 * n] = at;
    this.u32[s + S_SEGS + 2 * n + 1] = length;
    this.ctl[s + S_NSEGS] = n + 1;
    return true;
  }

  /** Drops the open job (a segment that did not fit). */
  abandon(): void {
    if (this.open < 0) return;
    this.free.push(this.open);
    this.open = -1;
  }

  /** Hands the open job to the workers. */
  submit(done: BlockIoDone, owner: BlockIoOwner, bytes: number): void {
    const slot = this.open;
    if (slot < 0) throw new BlockIoPoolError("submit without begin");
    this.open = -1;
    const s = SLOTS_AT + slot * SLOT_WORDS;
    const mem = this.ctl[s + S_MEM] as number;
    this.memJobs.set(mem, (this.memJobs.get(mem) ?? 0) + 1);
    this.enqueue(slot, { done, owner, op: this.ctl[s + S_OP] as number, bytes, mem });
  }

  /** A flush job (fdatasync of the image); false if every slot is taken. */
  flush(done: BlockIoDone, owner: BlockIoOwner): boolean {
    if (this.closed || this.open >= 0 || this.free.length === 0) return false;
    const slot = this.free.pop() as number;
    const s = SLOTS_AT + slot * SLOT_WORDS;
    this.ctl[s + S_OP] = OP_FLUSH;
    this.ctl[s + S_MEM] = 0;
    this.ctl[s + S_NSEGS] = 0;
    this.enqueue(slot, { done, owner, op: OP_FLUSH, bytes: 0, mem: 0 });
    return true;
  }

  /** Holds jobs back until `unplug` (see the file comment). */
  plug(): void {
    this.plugged = true;
  }

  /** Hands the jobs held since `plug` to the workers, or runs a lone one here (its `done` is called before this returns). */
  unplug(): void {
    this.plugged = false;
    const held = this.held;
    if (held.length === 0) return;
    this.held = [];
    if (held.length === 1 && this.inFlightJobs === 1) {
      const slot = held[0] as number;
      this.inlineJobs++;
      const result = runJob(this.ctl, this.u32, slot, this.jobMemory, this.fd, this.bufferedFd);
      this.finishSlot(slot, result);
      this.tellOwners();
      return;
    }
    for (const slot of held) this.push(slot);
    this.wake(held.length);
  }

  /** Without threads: the jobs waiting, oldest first (their kinds). */
  queuedJobs(): Array<"read" | "write" | "flush"> {
    return this.queued.map((slot) => {
      const op = (this.jobs[slot] as Job).op;
      return op === OP_READ ? "read" : op === OP_WRITE ? "write" : "flush";
    });
  }

  /**
   * Without threads: runs waiting jobs on this thread, `order` naming them by their place in queuedJobs() (all,
   * oldest first, by default), as one reap: every job's `done`, then the owners' `completionsDone` once.
   */
  runQueued(order?: readonly number[]): void {
    const pick = order ?? this.queued.map((_, i) => i);
    const slots = pick.map((i) => {
      const slot = this.queued[i];
      if (slot === undefined) throw new BlockIoPoolError(`no queued job ${i}`);
      return slot;
    });
    for (const slot of slots) this.queued.splice(this.queued.indexOf(slot), 1);
    for (const slot of slots) {
      this.finishSlot(slot, runJob(this.ctl, this.u32, slot, this.jobMemory, this.fd, this.bufferedFd));
    }
    this.tellOwners();
  }

  /**
   * Waits up to `timeoutMs` for every worker to be up (a worker thread takes a while to load), so that the
   * first requests do not wait for it. Returns whether they all are.
   */
  waitReady(timeoutMs: number): boolean {
    const end = performance.now() + timeoutMs;
    for (;;) {
      const ready = Atomics.load(this.ctl, C_READY);
      if (ready >= this.threads) return true;
      const left = end - performance.now();
      if (left <= 0) return false;
      Atomics.wait(this.ctl, C_READY, ready, left);
    }
  }

  private enqueue(slot: number, job: Job): void {
    this.jobs[slot] = job;
    this.inFlightJobs++;
    if (this.plugged) {
      this.held.push(slot);
    } else {
      this.push(slot);
      this.wake(1);
    }
  }

  /**
   * Wakes up to `jobs` idle workers with one Atomics.notify (a notify costs a lock and a futex call each: one per
   * job was the main thread's largest cost at queue depth 32); busy workers take the new jobs when they finish.
   */
  private wake(jobs: number): void {
    if (this.threads === 0) return;
    const idle = Atomics.load(this.ctl, C_IDLE);
    if (idle > 0) Atomics.notify(this.ctl, C_SQ_TAIL, Math.min(idle, jobs));
  }

  private push(slot: number): void {
    if (this.threads === 0) {
      this.queued.push(slot);
      return;
    }
    Atomics.store(this.ctl, SQ_AT + (this.sqTail & (RING - 1)), slot);
    this.sqTail = (this.sqTail + 1) | 0;
    Atomics.store(this.ctl, C_SQ_TAIL, this.sqTail);
  }

  /** Runs the ended jobs' `done`, then their owners' `completionsDone`; returns the jobs reaped. */
  reap(): number {
    takeEventFd(this.completionFd);
    Atomics.store(this.ctl, C_SIGNALLED, 0);
    let n = 0;
    for (;;) {
      const at = CQ_AT + (this.cqHead & (RING - 1));
      const v = Atomics.load(this.ctl, at);
      if (v === 0) break;
      Atomics.store(this.ctl, at, 0);
      this.cqHead = (this.cqHead + 1) | 0;
      const slot = v - 1;
      this.finishSlot(slot, Atomics.load(this.ctl, SLOTS_AT + slot * SLOT_WORDS + S_RESULT));
      n++;
    }
    this.tellOwners();
    return n;
  }

  private finishSlot(slot: number, result: number): void {
    const job = this.jobs[slot] as Job;
    this.jobs[slot] = undefined;
    this.free.push(slot);
    this.inFlightJobs--;
    this.count(job, result);
    if (job.op !== OP_FLUSH) {
      const left = (this.memJobs.get(job.mem) ?? 1) - 1;
      this.memJobs.set(job.mem, left);
      if (left === 0 && job.mem !== this.latestMem) {
        const b = this.memById.get(job.mem);
        if (b !== undefined) this.drop(b, job.mem);
      }
    }
    this.owners.add(job.owner);
    job.done(result);
  }

  private tellOwners(): void {
    const owners = this.owners;
    if (owners.size === 0) return;
    for (const o of owners) o.completionsDone();
    owners.clear();
  }

  /**
   * Blocks, reaping, until `until()` holds (checked after each reap) or nothing is in flight. Returns whether
   * `until()` held.
   */
  waitFor(until: () => boolean, onSlow?: (waitedMs: number, inFlight: number) => void): boolean {
    const start = performance.now();
    let nextSlow = start + SLOW_WAIT_MS;
    for (;;) {
      const now = performance.now();
      if (onSlow && now >= nextSlow) {
        // A request that never ends (a hung NFS server, a stuck device) keeps the caller here: say so, again and
        // again, rather than wait in silence. It cannot be cancelled: its thread may still write guest memory.
        onSlow(now - start, this.inFlightJobs);
        nextSlow = now + SLOW_WAIT_MS;
      }
      this.reap();
      if (until()) return true;
      if (this.inFlightJobs === 0) return until();
      if (this.threads === 0) {
        if (this.queued.length === 0) return until();
        this.runQueued();
        continue;
      }
      this.pollfd[2] = 0;
      native().poll(this.pollfd, 1000);
    }
  }

  /** Waits for every job, then stops the workers. */
  close(): void {
    if (this.closed) return;
    this.unplug();
    this.waitFor(() => this.inFlightJobs === 0);
    this.closed = true;
    Atomics.store(this.ctl, C_STOP, 1);
    Atomics.notify(this.ctl, C_SQ_TAIL);
    Atomics.notify(this.ctl, C_STOP);
    for (const w of this.workers) void w.terminate();
    for (const p of this.ports) p.close();
    native().close(this.completionFd);
  }

  private count(job: Job, result: number): void {
    const c = this.counts;
    if (c === undefined) return;
    if (result < 0) {
      c.errors++;
      return;
    }
    if (job.op === OP_READ) {
      c.reads++;
      c.readBytes += job.bytes;
    } else if (job.op === OP_WRITE) {
      c.writes++;
      c.writtenBytes += job.bytes;
    } else {
      c.flushes++;
    }
  }

  private post(m: MemoryMessage): void {
    for (const p of this.ports) p.postMessage(m);
    Atomics.add(this.ctl, C_MEM_GEN, 1);
  }

  private drop(buffer: SharedArrayBuffer, id: number): void {
    this.memIds.delete(buffer);
    this.memJobs.delete(id);
    this.memById.delete(id);
    this.memBytes.delete(id);
    this.post({ kind: "drop", id });
  }
}
