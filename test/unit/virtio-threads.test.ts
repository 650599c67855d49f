/**
 * One virtio-blk device served by two threads: the main thread plays the vCPU that traps the driver's register
 * accesses; a worker plays the ioeventfd worker that serves queue notifications, with its own transport, model
 * and file backend (the same descriptor) over the shared state. Interrupts raised by the worker reach the
 * driver through the shared ISR and INTx state.
 */
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import { isMainThread, type MessagePort, parentPort, Worker, workerData } from "node:worker_threads";
import { FileBlockBackend } from "../../src/block/file.ts";
import { VirtioBlk } from "../../src/devices/virtio/blk.ts";
import { type VirtioPciState, VirtioPciTransport } from "../../src/devices/virtio/pci-transport.ts";
import { GuestMemory } from "../../src/memory/guest-memory.ts";
import { makeVirtioPciRig } from "../helpers/virtio-driver.ts";

interface WorkerData {
  state: VirtioPciState;
  ram: SharedArrayBuffer;
  base: number;
  fd: number;
}

if (!isMainThread) {
  const { state, ram, base, fd } = workerData as WorkerData;
  const port = parentPort as MessagePort;
  const mem = new GuestMemory(ram, base);
  const intx: boolean[] = [];
  const t = new VirtioPciTransport({
    state,
    model: new VirtioBlk({ backend: new FileBlockBackend(fd) }),
    mem,
    msiSink: { signal() {} },
    intx: { set: (l) => intx.push(l) },
    log: () => {},
  });
  port.on("message", (msg: { notify?: number; exit?: boolean }) => {
    if (msg.exit) {
      port.close();
      return;
    }
    t.notify(msg.notify ?? 0);
    port.postMessage({ intx: intx.splice(0) });
  });
  port.postMessage({ ready: true });
} else {
  describe("virtio across threads", () => {
    test("register accesses on the main thread, notifications served by a worker", async () => {
      const dir = mkdtempSync(join(tmpdir(), "vireo-vthreads-"));
      const path = join(dir, "disk.img");
      const backend = FileBlockBackend.create(path, 1 << 20);
      const tsx = import.meta.resolve("tsx/esm/api");
      let w: Worker | undefined;
      try {
        const rig = makeVirtioPciRig(new VirtioBlk({ backend }));
        const data: WorkerData = {
          state: rig.state,
          ram: rig.mem.bytes.buffer as SharedArrayBuffer,
          base: rig.mem.base,
          fd: backend.descriptor,
        };
        w = new Worker(
          `import(${JSON.stringify(tsx)}).then((t) => { t.register(); return import(${JSON.stringify(import.meta.url)}); })`,
          { eval: true, workerData: data },
        );
        const worker = w;
        const replies: Array<{ ready?: boolean; intx?: boolean[] }> = [];
        let wake: (() => void) | undefined;
        worker.on("message", (m) => {
          replies.push(m);
          wake?.();
        });
        const next = async () => {
          while (replies.length === 0) {
            await new Promise<void>((res, rej) => {
              wake = res;
              worker.once("error", rej);
            });
          }
          return replies.shift() ?? {};
        };
        assert.deepEqual(await next(), { ready: true });

        assert.ok(rig.drv.negotiate());
        const q = rig.drv.setupQueue(0, { size: 16 });
        rig.drv.driverOk();
        const header = (type: number, sector: number) => {
          const h = new Uint8Array(16);
          new DataView(h.buffer).setUint32(0, type, true);
          new DataView(h.buffer).setBigUint64(8, BigInt(sector), true);
          return h;
        };
        const payload = Uint8Array.from({ length: 1024 }, (_, i) => (i * 7) & 0xff);
        q.addChain([header(1, 4), payload], [1]);
        // The notification goes to the worker (as an ioeventfd would), not through this thread's bus.
        worker.postMessage({ notify: 0 });
        const reply = await next();
        assert.deepEqual(reply.intx, [true], "the worker raised INTx");
        const [used] = q.usedChains();
        assert.equal(used?.written[0], 0, "VIRTIO_BLK_S_OK");
        assert.deepEqual(new Uint8Array(readFileSync(path).subarray(4 * 512, 4 * 512 + 1024)), payload);
        // The driver's ISR read, on the main thread, sees the worker's interrupt and lowers the line.
        assert.equal(rig.drv.readIsr(), 1);
        assert.deepEqual(rig.intx, [false]);
        worker.postMessage({ exit: true });
      } finally {
        await w?.terminate();
        backend.close();
        rmSync(dir, { recursive: true, force: true });
      }
    });
  });
}
