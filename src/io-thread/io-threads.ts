/**
 * Starting and stopping the data-plane threads (io-thread.ts) of a machine's devices, and the threads of its
 * vhost-user devices (src/vhost-user/frontend-thread.ts: the connection to the back-end), on the main thread.
 */
import type { Worker } from "node:worker_threads";
import type { MetricsRegistry } from "../metrics/registry.ts";
import { EFD_CLOEXEC, EFD_NONBLOCK, native, signalEventFd } from "../native.ts";
import type { VhostNetSpec } from "../vhost-net/device.ts";
import { FRONTEND_WORDS } from "../vhost-user/frontend-device.ts";
import { awaitThreadsStopped, type BoundedStopResult, type StoppingThread } from "../vmm/bounded-stop.ts";
import type { WorkerMessage } from "../vmm/messages.ts";
import { hasDataPlane, isVhostUser, type PciManifest, type VhostUserSpec } from "../vmm/pci-devices.ts";
import { startTsWorker } from "../vmm/ts-worker.ts";
import type { IoThreadData } from "./io-thread.ts";
import { DATA_PLANE } from "./remote-queues.ts";

/** Both threads take the same data; only the spec's kind differs. */
type ThreadData = Omit<IoThreadData, "spec"> & {
  spec: IoThreadData["spec"] | VhostUserSpec | VhostNetSpec;
};

export interface IoThreads {
  /** Signals every thread to stop and waits until they have, ending those still running `graceMs` after. */
  stop(graceMs: number): Promise<BoundedStopResult>;
  /** Frees the stop eventfd (after stop). */
  close(): void;
  /**
   * Quiesces every data-plane thread for a snapshot (remote-queues.ts DATA_PLANE.quiesce): resolves once each has
   * finished the work it had started and takes no more; rejects if one has not within `timeoutMs` (the threads
   * are released again then). Data-plane threads (io-thread.ts) and vhost-user threads (their back-ends' rings
   * stop; with `handOff`, a migration's switch-over, their connections close too, so the destination can connect
   * to the same back-ends); vhost-net threads are not quiesced.
   */
  quiesce(timeoutMs: number, opts?: { handOff?: boolean }): Promise<void>;
  /**
   * Turns the vhost-user back-ends' dirty logging on (a live migration: SET_LOG_BASE, VHOST_F_LOG_ALL) and waits
   * until every device's thread has, or off. Rejects, naming the device, if a back-end refused or did not answer
   * within `timeoutMs`.
   */
  setDirtyLogging(on: boolean, timeoutMs: number): Promise<void>;
  /** Lets quiesced threads take work again. */
  release(): void;
}

/** Starts one thread per data-plane device and resolves once each is waiting for work. */
export async function startIoThreads(
  manifest: PciManifest,
  o: {
    vmFd: number;
    ram: SharedArrayBuffer;
    /** The log of the devices' writes to guest RAM (src/memory/device-page-log.ts). */
    pageLog: SharedArrayBuffer;
    metrics: MetricsRegistry;
    onMessage(m: WorkerMessage): void;
  },
): Promise<IoThreads | null> {
  const specs = manifest.devices.filter((d) => hasDataPlane(d) || isVhostUser(d) || d.kind === "vhost-net");
  if (specs.length === 0) return null;
  const stopFd = native().eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  const workers: Worker[] = [];
  const threads: StoppingThread[] = [];
  const ready: Array<Promise<void>> = [];
  for (const spec of specs) {
    const workerData: ThreadData = {
      spec,
      vmFd: o.vmFd,
      ram: o.ram,
      pageLog: o.pageLog,
      stopFd,
      metricsBuffer: o.metrics.shared,
      metricsSegment: o.metrics.allocateSegment(),
    };
    const script = isVhostUser(spec)
      ? new URL("../vhost-user/frontend-thread.ts", import.meta.url)
      : spec.kind === "vhost-net"
        ? new URL("../vhost-net/thread.ts", import.meta.url)
        : new URL("./io-thread.ts", import.meta.url);
    const worker = startTsWorker(script, { workerData });
    workers.push(worker);
    let markReady = () => {};
    ready.push(new Promise<void>((resolve) => (markReady = resolve)));
    worker.on("message", (m: WorkerMessage) => {
      if (m.type === "io-ready" || m.type === "io-stopped") markReady();
      o.onMessage(m);
    });
    threads.push({
      name: `the ${isVhostUser(spec) ? "vhost-user" : spec.kind === "vhost-net" ? "vhost-net" : "data-plane"} thread of ${spec.name}`,
      terminate: () => worker.terminate(),
      ended: new Promise<void>((resolve) => {
        worker.on("error", (e) => {
          o.onMessage({ type: "io-stopped", name: spec.name, message: e.message });
          markReady();
          resolve();
        });
        worker.on("exit", () => {
          markReady();
          resolve();
        });
      }),
    });
  }
  await Promise.all(ready);
  let closed = false;
  // The threads a quiesce asks: data-plane threads (remote-queues.ts DATA_PLANE) and vhost-user threads
  // (frontend-device.ts FRONTEND_WORDS: their back-ends' rings are stopped), each with its pair of words.
  const planes = [
    ...specs.filter(hasDataPlane).map((s) => ({
      words: new Int32Array(s.dataPlane.block),
      wake: s.dataPlane.wake,
      name: s.name,
      quiesce: DATA_PLANE.quiesce,
      quiesced: DATA_PLANE.quiesced,
      what: "the data-plane thread",
    })),
    ...specs.filter(isVhostUser).map((s) => ({
      words: new Int32Array(s.block),
      wake: s.wake,
      name: s.name,
      quiesce: FRONTEND_WORDS.quiesce,
      quiesced: FRONTEND_WORDS.quiesced,
      what: "the vhost-user back-end",
    })),
  ];
  const release = () => {
    for (const p of planes) {
      Atomics.store(p.words, p.quiesce, 0);
      signalEventFd(p.wake);
    }
  };
  return {
    quiesce: async (timeoutMs, opts) => {
      for (const p of planes) {
        Atomics.store(p.words, p.quiesce, opts?.handOff && p.quiesce === FRONTEND_WORDS.quiesce ? 2 : 1);
        signalEventFd(p.wake);
      }
      const deadline = performance.now() + timeoutMs;
      for (const p of planes) {
        while (Atomics.load(p.words, p.quiesced) === 0) {
          if (performance.now() > deadline) {
            release();
            throw new Error(`${p.what} of ${p.name} did not finish its work within ${timeoutMs} ms`);
          }
          await new Promise((r) => setTimeout(r, 1));
        }
      }
    },
    release,
    setDirtyLogging: async (on, timeoutMs) => {
      const vu = specs.filter(isVhostUser).map((s) => ({ words: new Int32Array(s.block), s }));
      for (const { words, s } of vu) {
        Atomics.store(words, FRONTEND_WORDS.loggingAck, on ? 0 : 1);
        Atomics.store(words, FRONTEND_WORDS.logging, on ? 1 : 0);
        signalEventFd(s.wake);
      }
      const deadline = performance.now() + timeoutMs;
      for (const { words, s } of vu) {
        for (;;) {
          const ack = Atomics.load(words, FRONTEND_WORDS.loggingAck);
          if (ack === (on ? 1 : 0)) break;
          if (ack === -1)
            throw new Error(
              `the vhost-user back-end of ${s.name} (${s.socket}) refused dirty logging (see the log)`,
            );
          if (performance.now() > deadline)
            throw new Error(
              `the vhost-user back-end of ${s.name} (${s.socket}) did not answer within ${timeoutMs} ms`,
            );
          await new Promise((r) => setTimeout(r, 1));
        }
      }
    },
    stop: (graceMs) => {
      signalEventFd(stopFd);
      const at = performance.now();
      return awaitThreadsStopped(threads, { graceMs, requestedAt: () => at });
    },
    close: () => {
      if (closed) return;
      closed = true;
      for (const w of workers) void w.terminate();
      native().close(stopFd);
    },
  };
}
