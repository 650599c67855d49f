/**
 * The vhost-user inflight wrapper (src/vhost-user/inflight.ts, InflightModel) over a model whose drain serves
 * one-descriptor chains in their flat form (DrainOptions.readableSingle: virtio-net's transmit). The flat form
 * has no chain handler to mark a chain in the inflight region, so the wrapper must drop it and send every chain
 * through its marking handler: each chain taken gets a counter in the region, and the region's used_idx follows
 * the ring's. (Only `vireo vhost-user blk` tracks inflight I/O today; this keeps the wrapper right for any model.)
 */
import assert from "node:assert/strict";
import { closeSync } from "node:fs";
import { test } from "node:test";
import { featureBit, VIRTIO_F } from "../../src/devices/virtio/constants.ts";
import { VirtioNet, type VirtioNetBackend } from "../../src/devices/virtio/net.ts";
import { native } from "../../src/native.ts";
import type { Receiver } from "../../src/net/backend.ts";
import { InflightRegion, InflightTracker, queueRegionBytes } from "../../src/vhost-user/inflight.ts";
import { makeTestMemory, makeVirtioPciRig } from "../helpers/virtio-driver.ts";

const QUEUE_SIZE = 16;
const TX = 1;

class Sink implements VirtioNetBackend {
  readonly name = "sink";
  sent = 0;
  send(): boolean {
    this.sent++;
    return true;
  }
  attach(_r: Receiver): void {}
  rxReady(): void {}
  close(): void {}
}

test("every transmit chain goes through the inflight marking, none through the flat form", () => {
  const created = InflightRegion.create(
    { numQueues: 2, queueSize: QUEUE_SIZE, mmapSize: 0n, mmapOffset: 0n },
    2,
  );
  try {
    const region = InflightRegion.map(created.fd, created.description, 2);
    // The test's own view of the transmit queue's region (the spec's QueueRegionSplit layout).
    const view = new DataView(native().mmap(created.fd, Number(created.description.mmapSize), 0).buffer);
    const base = queueRegionBytes(QUEUE_SIZE) * TX;
    const regionUsedIdx = () => view.getUint16(base + 14, true);
    const counter = (h: number) => view.getBigUint64(base + 16 + 16 * h + 8, true);
    const inflight = (h: number) => view.getUint8(base + 16 + 16 * h);

    let ringUsedIdx: () => number = () => 0;
    const tracker = new InflightTracker(2, () => ringUsedIdx());
    tracker.region = region;
    const sink = new Sink();
    const net = new VirtioNet({ backend: sink, name: "n0", queueSize: QUEUE_SIZE });
    const rig = makeVirtioPciRig(tracker.wrap(net), { mem: makeTestMemory({ size: 4 << 20, shared: true }) });
    // Split rings without IN_ORDER: a used element per chain, as the inflight protocol's recovery expects.
    assert.ok(
      rig.drv.negotiate((o) => o & ~featureBit(VIRTIO_F.RING_PACKED) & ~featureBit(VIRTIO_F.IN_ORDER)),
    );
    rig.drv.setupQueue(0, { size: QUEUE_SIZE });
    const tx = rig.drv.setupQueue(TX, { size: QUEUE_SIZE });
    rig.drv.driverOk();
    ringUsedIdx = () => rig.mem.readU16(tx.layout.deviceAddr + 2);
    assert.notEqual(
      tracker.start(TX, QUEUE_SIZE, 0, () => {}),
      null,
      "the transmit ring is tracked",
    );

    // Header and frame in one readable descriptor: the shape the flat form takes.
    const heads = [0, 1, 2, 3].map((i) => {
      const f = new Uint8Array(12 + 60).fill(i + 1);
      f.fill(0, 0, 12);
      return tx.addChain([f], []);
    });
    rig.drv.kick(TX);

    assert.equal(sink.sent, 4, "every frame was sent");
    assert.deepEqual(
      tx.usedChains().map((u) => u.id),
      heads,
    );
    // Each chain was taken through the wrapper: a counter of its own, in the order taken; none left in flight.
    const counters = heads.map((h) => counter(h));
    for (const [i, c] of counters.entries()) assert.ok(c > 0n, `head ${heads[i]} has no counter: not marked`);
    assert.deepEqual(
      [...counters].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)),
      counters,
    );
    assert.deepEqual(
      heads.map((h) => inflight(h)),
      [0, 0, 0, 0],
    );
    assert.equal(regionUsedIdx(), 4, "the region's used_idx follows the ring's");
  } finally {
    closeSync(created.fd);
  }
});
