/**
 * VirtioDevice.setPolled: while a poller serves the queues (a busy-polling vhost-user back-end), the driver is
 * asked not to kick on any queue (2.7.10 flags / avail_event, 2.8.10 device event suppression); serving a queue
 * leaves it so; turning polled mode off asks for kicks again. Driven through the PCI transport by the spec-side
 * test driver, split and packed, with and without EVENT_IDX.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { VirtioNet } from "../../src/devices/virtio/net.ts";
import { LoopbackBackend } from "../../src/vhost-user/net-backends.ts";
import { makeVirtioPciRig } from "../helpers/virtio-driver.ts";

const HDR = 12;
const F_EVENT_IDX = 1n << 29n;
const F_PACKED = 1n << 34n;

const variants = [
  { name: "split", keep: ~F_PACKED & ~F_EVENT_IDX },
  { name: "split, EVENT_IDX", keep: ~F_PACKED },
  { name: "packed", keep: ~F_EVENT_IDX },
  { name: "packed, EVENT_IDX", keep: -1n },
];

describe("virtio device: polled mode turns the driver's kicks off and on", () => {
  for (const v of variants) {
    test(v.name, () => {
      // Every transmitted frame comes back on the receive queue, so both queues move.
      const loop = new LoopbackBackend();
      const rig = makeVirtioPciRig(new VirtioNet({ backend: loop }));
      assert.ok(rig.drv.negotiate((f) => f & v.keep));
      const rx = rig.drv.setupQueue(0, { size: 16 });
      const tx = rig.drv.setupQueue(1, { size: 16 });
      rig.drv.driverOk();
      const dev = rig.transport.device;
      const frame = new Uint8Array(HDR + 60);
      const c = loop.counts;

      tx.addChain([frame], []);
      assert.equal(tx.kickNeeded(), true, "before polled mode the driver kicks");
      dev.notify(1);
      assert.equal(c.txFrames, 1);

      dev.setPolled(true);
      tx.addChain([frame], []);
      rx.addChain([], [HDR + 1514]);
      assert.equal(tx.kickNeeded(), false, "polled: no kick for transmit");
      assert.equal(rx.kickNeeded(), false, "polled: no kick for receive buffers");
      // The poller serves the queues without kicks; serving leaves notifications off.
      dev.notify(1);
      dev.notify(0);
      assert.deepEqual([c.txFrames, c.rxFrames], [2, 1], "served without kicks");
      tx.addChain([frame], []);
      assert.equal(tx.kickNeeded(), false, "still no kick after a slice in polled mode");

      dev.setPolled(false);
      // The buffer made available while polled was not announced: the caller serves once more.
      dev.notify(1);
      assert.equal(c.txFrames, 3);
      tx.addChain([frame], []);
      rx.addChain([], [HDR + 1514]);
      assert.equal(tx.kickNeeded(), true, "polled mode off: transmit kicks again");
      assert.equal(rx.kickNeeded(), true, "polled mode off: receive kicks again");
      dev.notify(0);
      assert.equal(c.rxFrames, 2);
      assert.deepEqual(rig.logs, []);
    });
  }
});
