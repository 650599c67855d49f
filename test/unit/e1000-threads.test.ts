/**
 * One e1000 served by two threads, the way vireo runs it: the main thread plays a vCPU thread (the driver's
 * register accesses, transmit in the TDT write through its backend, receive-ring processing), a worker plays the
 * NIC's I/O thread (its own E1000 over the same state and guest memory, receiving frames from its backend and
 * running poll). The vCPU side's backend is a proxy whose rxReady wakes the worker through shared memory, as the
 * integrator's eventfd would; frames refused for want of buffers wait in the worker's backend meanwhile.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { isMainThread, type MessagePort, parentPort, workerData } from "node:worker_threads";
import { E1000 } from "../../src/devices/e1000/e1000.ts";
import { GuestMemory } from "../../src/memory/guest-memory.ts";
import type { NetBackend } from "../../src/net/backend.ts";
import { createPair, type PairEndStats } from "../../src/net/pair.ts";
import { startTsWorker } from "../../src/vmm/ts-worker.ts";
import {
  E1000Driver,
  ethFrame,
  ICR,
  MEM_SIZE,
  NIC_MAC,
  PEER_MAC,
  REG,
  STAT,
} from "../helpers/e1000-driver.ts";

/** Frames the worker sends to the NIC, and the main thread transmits. */
const RX_FRAMES = 3000;
const TX_FRAMES = 2000;

// Control words in shared memory.
const C_GO = 0;
/** rxReady calls from the vCPU side (the worker offers its queue again when this moves). */
const C_KICKS = 1;
const C_STOP = 2;
const CONTROL_WORDS = 4;

interface WorkerData {
  state: SharedArrayBuffer;
  ram: SharedArrayBuffer;
  control: SharedArrayBuffer;
}

interface WorkerReport {
  /** The far end's counts (what the peer sent) and the NIC end's (what the device took). */
  wire: PairEndStats;
  nic: PairEndStats;
  errors: Record<string, number>;
  rxReadyCalls: number;
}

/** Frame n to the NIC: its number in the first payload bytes, length varying. */
function rxFrame(n: number): Uint8Array {
  const payload = new Uint8Array(46 + (n % 700));
  new DataView(payload.buffer).setUint32(0, n);
  for (let i = 4; i < payload.length; i++) payload[i] = (n + i) & 0xff;
  return ethFrame(NIC_MAC, PEER_MAC, 0x88b5, payload);
}

function txFrame(n: number): Uint8Array {
  const payload = new Uint8Array(60 + (n % 1000));
  new DataView(payload.buffer).setUint32(0, n);
  payload.fill(n & 0xff, 4);
  return ethFrame(PEER_MAC, NIC_MAC, 0x88b6, payload);
}

if (!isMainThread) {
  // The NIC's I/O thread.
  const { state, ram, control } = workerData as WorkerData;
  const port = parentPort as MessagePort;
  const ctl = new Int32Array(control);
  const mem = new GuestMemory(ram);
  const [nicEnd, wire] = createPair({ capacity: RX_FRAMES });
  const dev = new E1000({ state, mem, backend: nicEnd, irq: { set() {} }, log: () => {} });
  port.postMessage({ ready: true });
  Atomics.wait(ctl, C_GO, 0);
  // Frames arrive while the vCPU thread transmits and polls the ring; refused ones wait in the backend.
  for (let n = 0; n < RX_FRAMES; n++) wire.send(rxFrame(n));
  let seen = 0;
  let rxReadyCalls = 0;
  while (!Atomics.load(ctl, C_STOP)) {
    const kicks = Atomics.load(ctl, C_KICKS);
    if (kicks !== seen) {
      seen = kicks;
      rxReadyCalls++;
      nicEnd.rxReady();
    } else {
      dev.poll();
      Atomics.wait(ctl, C_KICKS, seen, 5);
    }
  }
  const report: WorkerReport = {
    wire: wire.stats(),
    nic: nicEnd.stats(),
    errors: dev.errorCounts(),
    rxReadyCalls,
  };
  port.postMessage(report);
} else {
  describe("e1000 across threads", () => {
    test("a worker receives frames over the shared state while the main thread transmits and reads registers", async () => {
      const state = E1000.createState({ mac: NIC_MAC });
      const ram = new SharedArrayBuffer(MEM_SIZE);
      const control = new SharedArrayBuffer(4 * CONTROL_WORDS);
      const ctl = new Int32Array(control);
      const data: WorkerData = { state, ram, control };
      const worker = startTsWorker(new URL(import.meta.url), { workerData: data });
      const messages: unknown[] = [];
      let wake: (() => void) | undefined;
      let failure: unknown;
      worker.on("message", (m) => {
        messages.push(m);
        wake?.();
      });
      worker.on("error", (e) => {
        failure = e;
        wake?.();
      });
      const next = async (): Promise<unknown> => {
        while (messages.length === 0 && failure === undefined) {
          await new Promise<void>((res) => {
            wake = res;
          });
        }
        if (failure !== undefined) throw failure;
        return messages.shift();
      };
      try {
        assert.deepEqual(await next(), { ready: true });

        // The vCPU thread's object: transmit goes to `sent`; rxReady wakes the I/O thread.
        const sent: Uint8Array[] = [];
        const proxy: NetBackend = {
          name: "vcpu-proxy",
          send: (f) => {
            sent.push(f.slice());
            return true;
          },
          attach() {},
          rxReady() {
            Atomics.add(ctl, C_KICKS, 1);
            Atomics.notify(ctl, C_KICKS);
          },
          close() {},
        };
        const mem = new GuestMemory(ram);
        const dev = new E1000({ state, mem, backend: proxy, irq: { set() {} } });
        const drv = new E1000Driver(dev, mem);
        drv.reset();
        drv.setupTx(64);
        drv.setupRx({ count: 32, rctl: 1 << 26 }); // SECRC: the buffers hold the frame as sent
        drv.w32(REG.IMS, ICR.RXT0 | ICR.TXDW);

        Atomics.store(ctl, C_GO, 1);
        Atomics.notify(ctl, C_GO);
        const received: Uint8Array[] = [];
        let transmitted = 0;
        let goodReceived = 0;
        /** Frames received while the main thread was still transmitting: the two threads overlapped. */
        let receivedDuringTx = 0;
        const deadline = Date.now() + 60_000;
        // Transmit at least TX_FRAMES, and on until half the frames came in, so the threads surely overlap.
        const transmitting = () => transmitted < TX_FRAMES || received.length < RX_FRAMES / 2;
        while ((received.length < RX_FRAMES || transmitting()) && Date.now() < deadline) {
          if (transmitting()) {
            drv.sendLegacy([txFrame(transmitted++)]);
            assert.equal(drv.r32(REG.TDH), drv.txTail, "TDT write transmitted everything at once");
          }
          drv.readIcr();
          goodReceived += drv.r32(STAT.GPRC);
          for (const r of drv.receive()) received.push(r.data);
          if (transmitting()) receivedDuringTx = received.length;
        }
        Atomics.store(ctl, C_STOP, 1);
        Atomics.notify(ctl, C_KICKS);
        const report = (await next()) as WorkerReport;

        assert.equal(received.length, RX_FRAMES, "every frame arrived (none lost to a full ring)");
        for (const [n, f] of received.entries()) assert.deepEqual(f, rxFrame(n), `frame ${n}`);
        assert.equal(sent.length, transmitted);
        assert.ok(transmitted >= TX_FRAMES);
        for (const [n, f] of sent.entries()) assert.deepEqual(f, txFrame(n), `sent ${n}`);
        goodReceived += drv.r32(STAT.GPRC);
        assert.equal(goodReceived, RX_FRAMES, "GPRC counted on the worker, read on the main thread");
        assert.equal(report.wire.sent, RX_FRAMES);
        assert.equal(report.wire.sendDropped, 0);
        assert.deepEqual(
          [report.nic.delivered, report.nic.queued, report.nic.dropped],
          [RX_FRAMES, 0, 0],
          "the backend delivered everything it kept back",
        );
        assert.ok(receivedDuringTx > 0, "frames arrived while the main thread was transmitting");
        assert.ok(report.rxReadyCalls > 0, "the vCPU side's rxReady reached the worker");
        assert.deepEqual(report.errors, {});
        assert.deepEqual(dev.errorCounts(), {});
      } finally {
        Atomics.store(ctl, C_STOP, 1);
        Atomics.notify(ctl, C_KICKS);
        Atomics.store(ctl, C_GO, 1);
        Atomics.notify(ctl, C_GO);
        await worker.terminate();
      }
    });
  });
}
