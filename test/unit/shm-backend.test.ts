/**
 * virtio-net on a switch's shm channel (src/net/shm-backend.ts), the switch's end played by the test: frames the
 * guest transmits come out of the ring toward the switch whole, without the virtio_net_hdr, and ask for a kick
 * only when the switch sleeps; frames the switch publishes land in the guest's receive buffers in order; with no
 * buffer a frame waits in the ring (nothing lost, nothing polled) until the guest posts buffers; a budget leaves
 * the rest for the next turn and says so through the eventfd; a full ring toward the switch drops and counts; a
 * broken ring stops the NIC with a counter instead of throwing.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { VirtioNet } from "../../src/devices/virtio/net.ts";
import { native, POLLIN, takeEventFd } from "../../src/native.ts";
import { SHM_RX_SLICE, ShmNetBackend } from "../../src/net/shm-backend.ts";
import { offerShmChannel, receiveShmChannel, type ShmChannelEnd } from "../../src/net/shm-channel.ts";
import { takeFrames } from "../helpers/shm.ts";
import { makeVirtioPciRig } from "../helpers/virtio-driver.ts";

const HDR = 12;
const F_MRG_RXBUF = 1n << 15n;
const F_PACKED = 1n << 34n;

function frame(len: number, seed: number): Uint8Array {
  const f = Uint8Array.from({ length: len }, (_, i) => (seed * 29 + i) & 0xff);
  f.set([0x02, 0, 0, 0, 0, 1], 0);
  return f;
}

function readable(fd: number): boolean {
  return native().poll(new Int32Array([fd, POLLIN, 0]), 0) > 0;
}

function setup(slots = 16, queueSize = 64, memBytes?: number) {
  const n = native();
  const [a, b] = n.socketpair();
  const sw = offerShmChannel(a, slots, 2048);
  const vmEnd = receiveShmChannel(b, "test");
  const logs: string[] = [];
  const backend = new ShmNetBackend(vmEnd, { name: "shm:test", log: (m) => logs.push(m) });
  const rig = makeVirtioPciRig(new VirtioNet({ backend, queueSize: Math.max(queueSize, 256) }));
  assert.ok(rig.drv.negotiate((f) => f & ~F_PACKED & ~F_MRG_RXBUF));
  const rx = rig.drv.setupQueue(0, { size: queueSize, memBytes });
  const tx = rig.drv.setupQueue(1, { size: queueSize });
  rig.drv.driverOk();
  const close = () => {
    sw.close();
    vmEnd.close();
    n.close(a);
    n.close(b);
  };
  return { sw, vmEnd, backend, rig, rx, tx, logs, close };
}

/** What the switch end has received. */
const drain = (sw: ShmChannelEnd) => takeFrames(sw.in);

function publish(sw: ShmChannelEnd, frames: Uint8Array[]): void {
  for (const f of frames) assert.ok(sw.out.push(f, 0, f.length));
  sw.out.publish();
}

test("transmit: the guest's frames reach the switch's ring whole, headers off; a kick only when asked", () => {
  const t = setup();
  try {
    assert.equal(t.backend.vnetHdr, false);
    const frames = [frame(60, 1), frame(1514, 2), frame(300, 3)];
    // The switch found its ring empty and sleeps: the first publish must kick it.
    assert.equal(t.sw.in.sleep(), false);
    for (const f of frames) t.tx.addChain([new Uint8Array(HDR), f], []);
    t.rig.drv.kick(1);
    assert.deepEqual(drain(t.sw), frames);
    assert.equal(takeEventFd(t.sw.kickMe) > 0, true, "the sleeping switch was kicked");
    t.sw.in.awake();
    t.tx.addChain([new Uint8Array(HDR), frame(70, 4)], []);
    t.rig.drv.kick(1);
    assert.equal(takeEventFd(t.sw.kickMe), 0, "an awake switch is not kicked");
    assert.deepEqual(drain(t.sw), [frame(70, 4)]);
    assert.equal(t.tx.usedChains().length, 4);
  } finally {
    t.close();
  }
});

test("transmit into a full ring drops and counts; the guest's buffers still come back", () => {
  const t = setup(4);
  try {
    for (let i = 0; i < 6; i++) t.tx.addChain([new Uint8Array(HDR), frame(60, i)], []);
    t.rig.drv.kick(1);
    assert.equal(drain(t.sw).length, 4, "the ring's 4 slots");
    assert.equal(t.tx.usedChains().length, 6);
  } finally {
    t.close();
  }
});

test("receive: in order into the guest's buffers; without buffers frames wait in the ring, then come", () => {
  const t = setup(16);
  try {
    const frames = Array.from({ length: 10 }, (_, i) => frame(60 + i * 100, 10 + i));
    publish(t.sw, frames.slice(0, 3));
    // No receive buffer yet: the first frame is refused and stays; the thread stops polling.
    assert.equal(t.backend.pump(), 0);
    assert.equal(t.backend.wantsInput(), false, "blocked: nothing to poll for until buffers come");
    for (let i = 0; i < 16; i++) t.rx.addChain([], [2048]);
    t.rig.drv.kick(0); // rxReady: the waiting frames go in
    publish(t.sw, frames.slice(3));
    assert.equal(t.backend.wantsInput(), true);
    t.backend.pump();
    const used = t.rx.usedChains();
    assert.equal(used.length, frames.length);
    for (const [i, u] of used.entries()) assert.deepEqual(u.written.subarray(HDR), frames[i], `frame ${i}`);
    // Empty now: the VM's side asked the switch to kick it.
    assert.equal(t.sw.out.push(frame(60, 99), 0, 60) && t.sw.out.publish(), true);
  } finally {
    t.close();
  }
});

test("a refused frame goes in on the thread's next pump (its wake), and the ring is polled again after", () => {
  const t = setup(16);
  try {
    publish(t.sw, [frame(60, 1)]);
    assert.equal(t.backend.pump(), 0, "no buffer: refused");
    assert.equal(t.backend.wantsInput(), false);
    // The guest posted buffers; another thread saw it and woke the data-plane thread, which pumps (io-thread.ts
    // onWake) without the device's rxReady.
    for (let i = 0; i < 4; i++) t.rx.addChain([], [2048]);
    assert.equal(t.backend.pump(), 1);
    assert.equal(t.backend.wantsInput(), true, "delivered: the kick fd is polled again");
  } finally {
    t.close();
  }
});

test("rxReady takes at most one budget of frames; the eventfd says more wait", () => {
  const t = setup(512, 512, 2 << 20);
  try {
    publish(
      t.sw,
      Array.from({ length: 300 }, (_, i) => frame(64, i)),
    );
    assert.equal(t.backend.pump(), 0, "no buffer yet");
    for (let i = 0; i < 300; i++) t.rx.addChain([], [2048]);
    takeEventFd(t.backend.fd);
    t.rig.drv.kick(0); // the device's rxReady
    assert.equal(t.rx.usedChains().length, SHM_RX_SLICE);
    assert.equal(readable(t.backend.fd), true);
    t.backend.pump();
    assert.equal(t.rx.usedChains().length, 300 - SHM_RX_SLICE);
  } finally {
    t.close();
  }
});

test("receive within a budget: the rest waits, and the eventfd says so", () => {
  const t = setup(16);
  try {
    for (let i = 0; i < 16; i++) t.rx.addChain([], [2048]);
    t.rig.drv.kick(0);
    publish(
      t.sw,
      Array.from({ length: 10 }, (_, i) => frame(64, i)),
    );
    takeEventFd(t.backend.fd);
    assert.equal(t.backend.pump(4), 4);
    assert.equal(readable(t.backend.fd), true, "frames left: the thread's next poll returns at once");
    assert.equal(t.backend.pump(100), 6);
    assert.equal(readable(t.backend.fd), false);
    assert.equal(t.rx.usedChains().length, 10);
  } finally {
    t.close();
  }
});

test("a ring the switch broke stops the NIC (counted), it does not throw into the device", () => {
  const t = setup(16);
  try {
    for (let i = 0; i < 4; i++) t.rx.addChain([], [2048]);
    t.rig.drv.kick(0);
    t.sw.out.reserve();
    t.sw.out.commit(5000); // more than a 2048-byte slot
    t.sw.out.publish();
    assert.equal(t.backend.pump(), 0);
    assert.equal(t.backend.wantsInput(), false);
    assert.equal(t.backend.send(frame(60, 1)), false, "nothing is sent on a broken channel");
    assert.deepEqual(t.logs, [
      "shm:test: the shm channel is broken (frame 0 has length 5000, more than a slot holds (2048)); the NIC sends and receives nothing more",
    ]);
    assert.equal(t.rx.usedChains().length, 0);
  } finally {
    t.close();
  }
});
