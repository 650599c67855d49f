/**
 * virtio-console (port 0) and virtio-rng through the virtio-pci transport, both ring layouts: output in order,
 * input held until buffers come (nothing lost), emergency write, terminal size, rng fills, malformed buffers.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { VirtioConsole } from "../../src/devices/virtio/console.ts";
import { VirtioRng } from "../../src/devices/virtio/rng.ts";
import { makeVirtioPciRig, type VirtioPciRig, type VirtioTestDriver } from "../helpers/virtio-driver.ts";

const F_SIZE = 1n << 0n;
const F_MULTIPORT = 1n << 1n;
const F_EMERG_WRITE = 1n << 2n;
const F_PACKED = 1n << 34n;
const NEEDS_RESET = 0x40;

const text = (s: string) => new TextEncoder().encode(s);
const str = (b: Uint8Array) => new TextDecoder().decode(b);

interface Con {
  rig: VirtioPciRig<VirtioConsole>;
  rx: VirtioTestDriver;
  tx: VirtioTestDriver;
  out: Uint8Array[];
}

function start(
  packed: boolean,
  opts: { inputCapacity?: number; size?: { cols: number; rows: number } } = {},
): Con {
  const out: Uint8Array[] = [];
  const rig = makeVirtioPciRig(new VirtioConsole({ output: (b) => out.push(b.slice()), ...opts }));
  assert.ok(rig.drv.negotiate((f) => (packed ? f : f & ~F_PACKED)));
  const rx = rig.drv.setupQueue(0, { size: 8 });
  const tx = rig.drv.setupQueue(1, { size: 8 });
  rig.drv.driverOk();
  return { rig, rx, tx, out };
}

for (const packed of [false, true]) {
  const layout = packed ? "packed" : "split";

  describe(`virtio-console (${layout})`, () => {
    test("features and configuration: no MULTIPORT, EMERG_WRITE, SIZE when given", () => {
      const { rig } = start(packed, { size: { cols: 132, rows: 43 } });
      const f = rig.drv.deviceFeatures();
      assert.equal(f & F_MULTIPORT, 0n);
      assert.ok(f & F_EMERG_WRITE && f & F_SIZE);
      assert.equal(rig.drv.config(0, 2), 132);
      assert.equal(rig.drv.config(2, 2), 43);
      const gen = rig.drv.common(0x15, 1);
      rig.model.resize(80, 25);
      assert.equal(rig.drv.config(0, 2), 80);
      assert.notEqual(rig.drv.common(0x15, 1), gen);
    });

    test("output: transmit buffers reach the sink in order", () => {
      const c = start(packed);
      c.tx.addChain([text("hello, ")], []);
      c.tx.addChain([text("wor"), text("ld\n")], []);
      c.rig.drv.kick(1);
      assert.equal(c.out.map(str).join(""), "hello, world\n");
      assert.equal(c.tx.usedChains().length, 2);
      assert.equal(c.rig.metrics.counter("virtio.console0.tx_bytes").value, 13);
    });

    test("emergency write outputs one character", () => {
      const c = start(packed);
      c.rig.drv.write(c.rig.drv.addr(4, 8), 4, 0x21);
      assert.equal(c.out.map(str).join(""), "!");
    });

    test("input: delivered into posted buffers, split across them", () => {
      const c = start(packed);
      c.rx.addChain([], [4]);
      c.rx.addChain([], [16]);
      c.rig.drv.kick(0);
      assert.equal(c.rig.model.input(text("ls -l\n")), 6);
      const used = c.rx.usedChains();
      assert.deepEqual(
        used.map((u) => str(u.written)),
        ["ls -", "l\n"],
      );
    });

    test("input with no buffers waits; nothing lost; the ring bound is reported", () => {
      const c = start(packed, { inputCapacity: 8 });
      assert.equal(c.rig.model.input(text("abcdef")), 6);
      assert.equal(c.rig.model.input(text("ghijkl")), 2, "only 2 bytes of room");
      assert.equal(c.rig.model.pendingInput, 8);
      c.rx.addChain([], [5]);
      c.rig.drv.kick(0);
      assert.equal(c.rig.model.input(text("ijkl")), 4, "room again after the guest read");
      c.rx.addChain([], [64]);
      c.rig.drv.kick(0);
      assert.equal(
        c.rx
          .usedChains()
          .map((u) => str(u.written))
          .join(""),
        "abcdefghijkl",
      );
      assert.equal(c.rig.model.pendingInput, 0);
    });

    test("input before DRIVER_OK is delivered once the driver is live", () => {
      const out: Uint8Array[] = [];
      const rig = makeVirtioPciRig(new VirtioConsole({ output: (b) => out.push(b.slice()) }));
      assert.equal(rig.model.input(text("early")), 5);
      assert.ok(rig.drv.negotiate((f) => (packed ? f : f & ~F_PACKED)));
      const rx = rig.drv.setupQueue(0, { size: 8 });
      rig.drv.setupQueue(1, { size: 8 });
      rx.addChain([], [32]);
      rig.drv.driverOk();
      assert.equal(str(rx.usedChains()[0]?.written ?? new Uint8Array()), "early");
    });

    test("malformed: a transmit buffer with a writable part, a receive buffer with a readable part", () => {
      const a = start(packed);
      a.tx.addChain([text("x")], [4]);
      assert.doesNotThrow(() => a.rig.drv.kick(1));
      assert.ok(a.rig.drv.status & NEEDS_RESET);
      const b = start(packed);
      b.rx.addChain([text("x")], [4]);
      b.rig.drv.kick(0);
      assert.doesNotThrow(() => b.rig.model.input(text("y")));
      assert.ok(b.rig.drv.status & NEEDS_RESET);
      assert.equal(b.rig.logs.length, 1);
    });
  });

  describe(`virtio-rng (${layout})`, () => {
    test("fills device-writable buffers, across segments and indirect tables", () => {
      const rig = makeVirtioPciRig(new VirtioRng());
      assert.ok(rig.drv.negotiate((f) => (packed ? f : f & ~F_PACKED)));
      const q = rig.drv.setupQueue(0, { size: 8 });
      rig.drv.driverOk();
      q.addChain([], [64, 64]);
      q.addChain([], [256], { indirect: true });
      rig.drv.kick(0);
      const used = q.usedChains();
      assert.deepEqual(
        used.map((u) => u.len),
        [128, 256],
      );
      for (const u of used) {
        const zeros = u.written.filter((b) => b === 0).length;
        assert.ok(zeros < u.len / 8, "looks random");
      }
      assert.notDeepEqual(used[0]?.written.subarray(0, 64), used[0]?.written.subarray(64, 128));
    });

    test("a request with a device-readable part needs reset", () => {
      const rig = makeVirtioPciRig(new VirtioRng());
      assert.ok(rig.drv.negotiate((f) => (packed ? f : f & ~F_PACKED)));
      const q = rig.drv.setupQueue(0, { size: 8 });
      rig.drv.driverOk();
      q.addChain([Uint8Array.of(1)], [16]);
      assert.doesNotThrow(() => rig.drv.kick(0));
      assert.ok(rig.drv.status & NEEDS_RESET);
    });
  });
}
