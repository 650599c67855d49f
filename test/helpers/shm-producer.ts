/** A worker for test/unit/shm-ring.test.ts: pushes `total` numbered frames into a ring, 16 per publish. */
import { workerData } from "node:worker_threads";
import { ShmRing } from "../../src/net/shm-ring.ts";

const { buffer, slots, slotSize, total } = workerData as {
  buffer: SharedArrayBuffer;
  slots: number;
  slotSize: number;
  total: number;
};
const p = new ShmRing(buffer, 0, slots, slotSize, false);
const f = new Uint8Array(64);
const dv = new DataView(f.buffer);
let i = 0;
while (i < total) {
  for (let k = 0; k < 16 && i < total; k++) {
    dv.setUint32(0, i, true);
    if (!p.push(f, 0, 8 + (i % 50))) break;
    i++;
  }
  p.publish();
}
