/**
 * Snapshot round-trips of the virtio-pci devices (blk, net, console, rng), split and packed rings: each device is
 * driven by the spec-faithful test driver past the end of its rings (split indices beyond the queue size, packed
 * wrap counters flipped), saved through a state file, restored into a fresh transport and model over the same
 * guest memory (as a restored memory file would be), and then serves the driver's next requests from where it
 * stopped, exactly once. Requests in flight at save time are refused (DeviceBusyError) until the device has
 * finished them; a request made available but not yet taken is served after restore. Hostile states (sizes,
 * addresses, indices, features, vectors, other device options) are refused before anything changes.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { MemoryBlockBackend } from "../../src/block/memory.ts";
import { VirtioBlk } from "../../src/devices/virtio/blk.ts";
import { VirtioConsole } from "../../src/devices/virtio/console.ts";
import type { VirtioDeviceModel } from "../../src/devices/virtio/device.ts";
import { VirtioNet } from "../../src/devices/virtio/net.ts";
import { VirtioPciTransport } from "../../src/devices/virtio/pci-transport.ts";
import { VirtioRng } from "../../src/devices/virtio/rng.ts";
import { createPair } from "../../src/net/pair.ts";
import { type DeviceState, DeviceStateError } from "../../src/shared/device-state.ts";
import { createFrontendBlock, VhostUserDevice } from "../../src/vhost-user/frontend-device.ts";
import { netFace } from "../../src/vhost-user/frontend-net.ts";
import { cloneState, throughFile } from "../helpers/snapshot.ts";
import { makeVirtioPciRig, type VirtioPciRig, type VirtioTestDriver } from "../helpers/virtio-driver.ts";

const F_PACKED = 1n << 34n;
const T_IN = 0;
const T_OUT = 1;
const NEEDS_RESET = 0x40;
const MAC = Uint8Array.of(0x52, 0x54, 0x00, 0x12, 0x34, 0x56);

function blkHeader(type: number, sector: number): Uint8Array {
  const h = new Uint8Array(16);
  const v = new DataView(h.buffer);
  v.setUint32(0, type, true);
  v.setBigUint64(8, BigInt(sector), true);
  return h;
}

function pattern(n: number, seed: number): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => (seed + i * 13) & 0xff);
}

/** A fresh transport and model over the guest memory of `a`, with `saved` restored into it. */
function restoreInto<M extends VirtioDeviceModel>(
  model: M,
  a: VirtioPciRig<VirtioDeviceModel>,
  saved: DeviceState,
): VirtioPciRig<M> {
  const b = makeVirtioPciRig(model, { mem: a.mem });
  b.transport.restoreState(saved);
  return b;
}

/** The snapshot's data of the virtio device part, for tampering. */
function deviceData(s: DeviceState): Record<string, unknown> {
  return ((s.data.device as { data: Record<string, unknown> }).data ?? {}) as Record<string, unknown>;
}

for (const packed of [false, true]) {
  const layout = packed ? "packed" : "split";
  const accept = (f: bigint) => (packed ? f : f & ~F_PACKED);

  describe(`virtio-blk snapshot (${layout})`, () => {
    const start = (backend: MemoryBlockBackend) => {
      const rig = makeVirtioPciRig(new VirtioBlk({ backend }), { memSize: 8 << 20 });
      assert.ok(rig.drv.negotiate(accept));
      const q = rig.drv.setupQueue(0, { size: 16, memBytes: 0x600000 });
      rig.drv.driverOk();
      return { rig, q };
    };
    const serve = (rig: VirtioPciRig<VirtioDeviceModel>, q: VirtioTestDriver) => {
      rig.drv.kick(0);
      while (rig.transport.device.serveDeferred()) {}
      return q.usedChains();
    };

    test("a request in progress is finished before saving; the restored device serves the next ones, once", () => {
      const backend = new MemoryBlockBackend(8 << 20);
      const a = start(backend);
      // 24 requests through a 16-entry ring: split indices past the size, the packed wrap counters flipped.
      for (let i = 0; i < 12; i++) {
        a.q.addChain([blkHeader(T_OUT, i), pattern(512, i)], [1]);
        assert.equal(serve(a.rig, a.q)[0]?.written[0], 0);
        a.q.addChain([blkHeader(T_IN, i)], [512, 1]);
        const [r] = serve(a.rig, a.q);
        assert.deepEqual(r?.written.subarray(0, 512), pattern(512, i));
      }
      // A 3 MiB write: more than one slice's budget (1 MiB), so the device keeps it in progress.
      const big = pattern(3 << 20, 99);
      // Three 1 MiB segments: size_max is 1 MiB.
      a.q.addChain(
        [
          blkHeader(T_OUT, 1024),
          big.subarray(0, 1 << 20),
          big.subarray(1 << 20, 2 << 20),
          big.subarray(2 << 20),
        ],
        [1],
      );
      a.rig.drv.kick(0);
      assert.deepEqual(a.q.usedChains(), [], "not finished in the first slice");
      assert.throws(() => a.rig.transport.saveState(), { code: "VIREO_DEVICE_BUSY", message: /in progress/ });
      // Another thread's object over the same state does not hold the chain, but sees it taken and unanswered.
      const other = new VirtioPciTransport({
        state: a.rig.state,
        model: new VirtioBlk({ backend }),
        mem: a.rig.mem,
        msiSink: { signal() {} },
      });
      assert.throws(() => other.saveState(), {
        code: "VIREO_DEVICE_BUSY",
        message: /taken and not yet answered/,
      });
      while (a.rig.transport.device.serveDeferred()) {}
      const done = a.q.usedChains();
      assert.equal(done.length, 1);
      assert.equal(done[0]?.written[0], 0, "the big write completed");
      // A read made available, but not yet seen by the device (no notification): it is served after restore.
      a.q.addChain([blkHeader(T_IN, 1024)], [4096, 1]);

      const saved = throughFile(a.rig.transport.saveState());
      const b = restoreInto(new VirtioBlk({ backend }), a.rig, saved);
      assert.deepEqual(throughFile(b.transport.saveState()), saved);
      assert.equal(b.drv.status & NEEDS_RESET, 0);
      b.transport.device.activate();
      const [pending] = a.q.usedChains();
      assert.ok(pending, "the request available at the snapshot is served after restore");
      assert.deepEqual(pending.written.subarray(0, 4096), big.subarray(0, 4096));
      assert.equal(pending.written[4096], 0);
      // Exactly once: another notification finds nothing new.
      assert.deepEqual(serve(b, a.q), []);
      // The driver goes on with the restored device, on its indices.
      a.q.addChain([blkHeader(T_OUT, 9000), pattern(1024, 7)], [1]);
      assert.equal(serve(b, a.q)[0]?.written[0], 0);
      a.q.addChain([blkHeader(T_IN, 9000)], [1024, 1]);
      assert.deepEqual(serve(b, a.q)[0]?.written.subarray(0, 1024), pattern(1024, 7));
      const whole = new Uint8Array(big.length);
      backend.read(1024 * 512, whole);
      assert.ok(Buffer.from(whole).equals(big), "every byte of the write that was in progress at pause");
    });

    test("hostile states are refused before anything changes", () => {
      const backend = new MemoryBlockBackend(1 << 20);
      const a = start(backend);
      a.q.addChain([blkHeader(T_OUT, 0), pattern(512, 1)], [1]);
      serve(a.rig, a.q);
      const saved = a.rig.transport.saveState();
      const fresh = makeVirtioPciRig(new VirtioBlk({ backend }), { mem: a.rig.mem });
      const before = fresh.transport.saveState();
      const tamper = (f: (d: Record<string, unknown>) => void): DeviceState => {
        const s = cloneState(saved);
        f(deviceData(s));
        return s;
      };
      const q0 = (d: Record<string, unknown>) =>
        (d.queues as Array<Record<string, unknown>>)[0] as Record<string, unknown>;
      const ring = (d: Record<string, unknown>) => q0(d).ring as Record<string, unknown>;
      const cases: Array<[string, DeviceState, RegExp]> = [
        ["queue size above the offer", tamper((d) => (q0(d).size = 1024)), /size is 1024, outside 0\.\.\d+/],
        ["ring outside RAM", tamper((d) => (q0(d).desc = 0x4000_0000)), /outside guest RAM/],
        ["misaligned ring", tamper((d) => (q0(d).device = (q0(d).device as number) + 2)), /aligned/],
        ["undefined status bits", tamper((d) => (d.status = 0x1f)), /undefined bits/],
        ["features not offered", tamper((d) => (d.driverFeaturesLo = 0xffff_ffff)), /not offered/],
        ["a vector the table does not have", tamper((d) => (q0(d).vector = 7)), /MSI-X table has 2 vectors/],
        ["ISR bits", tamper((d) => (d.isr = 4)), /isr is 4/],
        ["another device", tamper((d) => (d.model = "net0")), /device "net0"/],
        ["a queue count", tamper((d) => (d.queues as unknown[]).push({})), /2 entries, 1 expected/],
      ];
      if (packed) {
        cases.push(["a wrap counter", tamper((d) => (ring(d).usedWrap = 2)), /usedWrap is 2/]);
        cases.push([
          "a slot past the ring",
          tamper((d) => (ring(d).nextAvail = 16)),
          /nextAvail is 16, outside 0\.\.15/,
        ]);
        cases.push([
          "a list in flight",
          tamper((d) => (ring(d).nextAvail = ((ring(d).nextUsed as number) + 1) % 16)),
          /taken and unanswered/,
        ]);
      } else {
        cases.push(["a split size not a power of 2", tamper((d) => (q0(d).size = 12)), /power of 2/]);
        cases.push([
          "an index past 16 bits",
          tamper((d) => (ring(d).lastAvail = 0x10000)),
          /lastAvail is 65536/,
        ]);
        cases.push(["a chain in flight", tamper((d) => (ring(d).lastAvail = 5)), /taken and unanswered/]);
      }
      for (const [what, s, message] of cases) {
        assert.throws(() => fresh.transport.restoreState(s), { code: "VIREO_DEVICE_STATE", message }, what);
        assert.deepEqual(fresh.transport.saveState(), before, `${what}: nothing changed`);
      }
      // A disk of another size: the device configuration the driver read differs; the device is put back.
      const bigger = makeVirtioPciRig(new VirtioBlk({ backend: new MemoryBlockBackend(2 << 20) }), {
        mem: a.rig.mem,
      });
      const biggerBefore = bigger.transport.saveState();
      assert.throws(
        () => bigger.transport.restoreState(saved),
        /configuration differs from the saved one at byte 1 \(saved 0x8, here 0x10\)/,
      );
      assert.deepEqual(bigger.transport.saveState(), biggerBefore);
      assert.throws(() => fresh.transport.restoreState({ ...saved, version: 2 }), DeviceStateError);
    });
  });

  describe(`virtio-net snapshot (${layout})`, () => {
    const start = () => {
      const [dev, wire] = createPair({ capacity: 64 });
      const rig = makeVirtioPciRig(new VirtioNet({ backend: dev, mac: MAC, mtu: 1500 }));
      assert.ok(rig.drv.negotiate((f) => accept(f) & ~(1n << 15n)));
      const rx = rig.drv.setupQueue(0, { size: 8 });
      const tx = rig.drv.setupQueue(1, { size: 8 });
      rig.drv.driverOk();
      const got: Uint8Array[] = [];
      wire.attach((f) => {
        got.push(f.slice());
        return true;
      });
      return { rig, rx, tx, wire, got };
    };
    const frame = (n: number, seed: number) => {
      const f = pattern(n, seed);
      f.set(MAC, 0);
      return f;
    };

    test("receive buffers posted before the snapshot take frames after it; transmit goes on; link state kept", () => {
      const a = start();
      for (let i = 0; i < 10; i++) {
        a.tx.addChain([new Uint8Array(12), frame(60 + i, i)], []);
        a.rig.drv.kick(1);
        assert.equal(a.tx.usedChains().length, 1);
        a.rx.addChain([], [1526]);
        a.rig.drv.kick(0);
        assert.ok(a.wire.send(frame(100 + i, 50 + i)));
        assert.equal(a.rx.usedChains().length, 1);
      }
      assert.equal(a.got.length, 10);
      for (let i = 0; i < 3; i++) a.rx.addChain([], [1526]);
      a.rig.drv.kick(0);
      // A frame placed with more to come: its used entry is not published yet.
      assert.ok(a.rig.model.receive(frame(70, 1), true));
      if (!packed) {
        assert.throws(() => a.rig.transport.saveState(), {
          code: "VIREO_DEVICE_BUSY",
          message: /not yet published/,
        });
      }
      a.rig.model.flushReceived();
      assert.equal(a.rx.usedChains().length, 1);
      a.rig.model.setLinkUp(false);

      const saved = throughFile(a.rig.transport.saveState());
      const [dev2, wire2] = createPair({ capacity: 64 });
      const got2: Uint8Array[] = [];
      wire2.attach((f) => {
        got2.push(f.slice());
        return true;
      });
      const b = restoreInto(new VirtioNet({ backend: dev2, mac: MAC, mtu: 1500 }), a.rig, saved);
      assert.deepEqual(throughFile(b.transport.saveState()), saved);
      assert.equal(b.drv.config(6, 2), 0, "link down, as at the snapshot");
      b.transport.device.activate();
      b.model.setLinkUp(true);
      // The two receive buffers left are used by frames arriving on the restored side.
      assert.ok(wire2.send(frame(200, 7)));
      assert.ok(wire2.send(frame(300, 8)));
      const rxd = a.rx.usedChains();
      assert.deepEqual(
        rxd.map((u) => u.len),
        [12 + 200, 12 + 300],
      );
      assert.deepEqual(rxd[1]?.written.subarray(12), frame(300, 8));
      a.tx.addChain([new Uint8Array(12), frame(90, 3)], []);
      b.drv.kick(1);
      assert.deepEqual(got2, [frame(90, 3)]);
      assert.equal(a.got.length, 10, "nothing more went out of the old backend");
    });

    test("a device with another MAC is refused", () => {
      const a = start();
      const saved = a.rig.transport.saveState();
      const [dev2] = createPair();
      const other = Uint8Array.of(0x52, 0x54, 0, 0, 0, 1);
      const b = makeVirtioPciRig(new VirtioNet({ backend: dev2, mac: other, mtu: 1500 }), { mem: a.rig.mem });
      assert.throws(
        () => b.transport.restoreState(saved),
        /configuration differs from the saved one at byte 3/,
      );
      const bad = cloneState(saved);
      (deviceData(bad).region as Uint8Array)[0] = 9;
      assert.throws(() => start().rig.transport.restoreState(bad), /link state 9/);
    });
  });

  describe(`virtio-console snapshot (${layout})`, () => {
    test("input waiting for buffers, the terminal size and output go on after restore", () => {
      const out: Uint8Array[] = [];
      const rig = makeVirtioPciRig(
        new VirtioConsole({ output: (b) => out.push(b.slice()), size: { cols: 80, rows: 25 } }),
      );
      assert.ok(rig.drv.negotiate(accept));
      const rx = rig.drv.setupQueue(0, { size: 8 });
      const tx = rig.drv.setupQueue(1, { size: 8 });
      rig.drv.driverOk();
      for (let i = 0; i < 12; i++) {
        tx.addChain([new TextEncoder().encode(`line ${i}\n`)], []);
        rig.drv.kick(1);
        tx.usedChains();
      }
      assert.equal(rig.model.input(new TextEncoder().encode("typed before the snapshot")), 25);
      rig.model.resize(132, 43);
      const saved = throughFile(rig.transport.saveState());

      const out2: Uint8Array[] = [];
      const b = restoreInto(
        new VirtioConsole({ output: (x) => out2.push(x.slice()), size: { cols: 80, rows: 25 } }),
        rig,
        saved,
      );
      assert.deepEqual(throughFile(b.transport.saveState()), saved);
      assert.equal(b.drv.config(0, 2), 132);
      assert.equal(b.model.pendingInput, 25);
      b.transport.device.activate();
      rx.addChain([], [64]);
      b.drv.kick(0);
      const [u] = rx.usedChains();
      assert.equal(new TextDecoder().decode(u?.written), "typed before the snapshot");
      tx.addChain([new TextEncoder().encode("after")], []);
      b.drv.kick(1);
      assert.deepEqual(
        out2.map((x) => new TextDecoder().decode(x)),
        ["after"],
      );
      const bad = cloneState(saved);
      new DataView((deviceData(bad).region as Uint8Array).buffer).setInt32(4, 70000, true);
      assert.throws(() => b.transport.restoreState(bad), /input ring count 70000 exceeds the ring/);
    });
  });

  describe(`virtio-rng snapshot (${layout})`, () => {
    test("the queue continues at its index with the MSI-X vectors the driver set", () => {
      const rig = makeVirtioPciRig(new VirtioRng(), { memSize: 4 << 20 });
      // Without EVENT_IDX every used buffer is notified (the test driver does not move used_event).
      assert.ok(rig.drv.negotiate((f) => accept(f) & ~(1n << 29n)));
      rig.drv.enableMsix(2);
      rig.drv.setCommon(0x10, 2, 1); // config vector 1
      const q = rig.drv.setupQueue(0, { size: 8, vector: 0 });
      rig.drv.driverOk();
      for (let i = 0; i < 11; i++) {
        q.addChain([], [32]);
        rig.drv.kick(0);
        assert.equal(q.usedChains()[0]?.len, 32);
      }
      assert.equal(rig.msis.length, 11);
      const saved = throughFile(rig.transport.saveState());
      const b = restoreInto(new VirtioRng(), rig, saved);
      assert.deepEqual(throughFile(b.transport.saveState()), saved);
      b.transport.device.activate();
      q.addChain([], [16]);
      b.drv.kick(0);
      assert.equal(q.usedChains()[0]?.len, 16);
      assert.deepEqual(b.msis, [0x40], "the used buffer notification went to vector 0 on the restored side");
    });
  });
}

test("a vhost-user device's rings are the back-end's: a snapshot takes the used rings in guest memory as they are, and restores", () => {
  const face = netFace("net0", MAC);
  const model = () =>
    new VhostUserDevice({
      name: "net0",
      face,
      offered: { device: 1n << 5n, transport: 1n << 32n },
      kicks: [-1, -1],
      wake: -1,
      block: createFrontendBlock(),
      role: "thread",
    });
  const rig = makeVirtioPciRig(model());
  assert.ok(rig.drv.negotiate((f) => f));
  const rx = rig.drv.setupQueue(0, { size: 8 });
  rig.drv.setupQueue(1, { size: 8 });
  rig.drv.driverOk();
  rx.addChain([], [1526]);
  rig.drv.kick(0);
  // The back-end used the buffer: vireo's own indices for the queue never moved.
  const used = rx.config.deviceAddr;
  rig.mem.writeU32(used + 4, 0); // id: the first chain's head
  rig.mem.writeU32(used + 8, 0); // len
  rig.mem.writeU16(used + 2, 1);
  const saved = throughFile(rig.transport.saveState());
  const fresh = makeVirtioPciRig(model(), { mem: rig.mem });
  fresh.transport.restoreState(saved);
  assert.equal(fresh.transport.device.running, true);
  assert.equal(
    rx.usedChains().length,
    1,
    "the back-end's answer is in guest memory, untouched by the snapshot",
  );
});
