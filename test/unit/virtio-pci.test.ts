/**
 * The virtio core and the virtio-pci modern transport, driven as a Linux driver drives them: capability walk,
 * feature negotiation, queue setup, notifications, MSI-X and INTx interrupts, reset, the PCI configuration access
 * capability, and two transport instances over one shared state. The device behind is virtio-rng (the simplest).
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import type { VirtioPciState, VirtioPciTransport } from "../../src/devices/virtio/pci-transport.ts";
import { VirtioRng } from "../../src/devices/virtio/rng.ts";
import type { GuestMemory } from "../../src/memory/guest-memory.ts";
import type { MetricsSegment } from "../../src/metrics/registry.ts";
import { makeVirtioPciRig, type VirtioPciTestDriver } from "../helpers/virtio-driver.ts";

// Spelled out from the specification, independently of the implementation.
const ACKNOWLEDGE = 1;
const DRIVER = 2;
const DRIVER_OK = 4;
const FEATURES_OK = 8;
const NEEDS_RESET = 0x40;
const F_INDIRECT = 1n << 28n;
const F_EVENT_IDX = 1n << 29n;
const F_VERSION_1 = 1n << 32n;
const F_PACKED = 1n << 34n;
const NO_VECTOR = 0xffff;

interface Rig {
  mem: GuestMemory;
  t: VirtioPciTransport;
  drv: VirtioPciTestDriver;
  msis: number[];
  intx: boolean[];
  logs: string[];
  metrics: MetricsSegment;
  state: VirtioPciState;
}

function rig(opts: { mem?: GuestMemory; state?: VirtioPciState } = {}): Rig {
  const r = makeVirtioPciRig(new VirtioRng(), { ...opts, memSize: 4 << 20 });
  return { ...r, t: r.transport };
}

describe("virtio-pci: discovery", () => {
  test("IDs and the virtio structure capabilities (4.1.2, 4.1.4)", () => {
    const { t, drv } = rig();
    assert.equal(t.pci.configRead(0x00, 2), 0x1af4);
    assert.equal(t.pci.configRead(0x02, 2), 0x1040 + 4);
    assert.ok(t.pci.configRead(0x08, 1) >= 1, "revision 1 or higher");
    assert.ok(t.pci.configRead(0x2e, 2) >= 0x40, "subsystem id 0x40 or higher");
    for (const type of [1, 2, 3, 5]) assert.ok(drv.caps.has(type), `cfg_type ${type} present`);
    assert.ok(!drv.caps.has(4), "rng has no device configuration");
    const common = drv.caps.get(1);
    assert.ok(common && common.length >= 0x38 && common.offset % 4 === 0 && common.bar === 4);
    const notify = drv.caps.get(2);
    assert.ok(notify?.notifyOffMultiplier !== undefined);
    const m = notify.notifyOffMultiplier;
    assert.ok(m === 0 || (m & (m - 1)) === 0, "even power of 2 or 0");
    assert.equal(drv.common(0x12, 2), 1, "num_queues");
    assert.ok(drv.findCapability(0x11) !== 0, "MSI-X capability");
    assert.equal(t.pci.bar(4)?.kind, "mmio64");
  });

  test("offered features: VERSION_1, RING_PACKED, EVENT_IDX, INDIRECT_DESC", () => {
    const { drv } = rig();
    const f = drv.deviceFeatures();
    for (const bit of [F_VERSION_1, F_PACKED, F_EVENT_IDX, F_INDIRECT]) assert.ok(f & bit);
    drv.setCommon(0x00, 4, 2);
    assert.equal(drv.common(0x04, 4), 0, "feature bits past 63 read 0");
  });
});

describe("virtio-pci: status machine and negotiation (2.1, 3.1.1)", () => {
  test("FEATURES_OK is refused for features not offered and without VERSION_1", () => {
    const { drv, t } = rig();
    assert.equal(
      drv.negotiate((f) => f | (1n << 20n)),
      false,
      "bit 20 was not offered",
    );
    assert.equal(drv.status & FEATURES_OK, 0);
    assert.equal(
      drv.negotiate((f) => f & ~F_VERSION_1),
      false,
      "VERSION_1 missing",
    );
    assert.equal(drv.negotiate(), true);
    assert.equal(t.device.negotiatedFeatures, t.device.offeredFeatures);
  });

  test("driver features are frozen after FEATURES_OK; DRIVER_OK needs FEATURES_OK", () => {
    const { drv } = rig();
    drv.status = 0;
    drv.status = ACKNOWLEDGE | DRIVER;
    drv.status = ACKNOWLEDGE | DRIVER | DRIVER_OK;
    assert.equal(drv.status & DRIVER_OK, 0, "no DRIVER_OK before FEATURES_OK");
    assert.ok(drv.negotiate(F_VERSION_1));
    drv.setCommon(0x08, 4, 1);
    drv.setCommon(0x0c, 4, 0);
    assert.equal(drv.common(0x0c, 4), 1, "VERSION_1 stays accepted");
  });

  test("reset puts status, features, queues and vectors back (2.4, 4.1.5.1.2)", () => {
    const { drv, t } = rig();
    assert.ok(drv.negotiate(F_VERSION_1 | F_EVENT_IDX));
    drv.setupQueue(0, { size: 16 });
    drv.setCommon(0x10, 2, 0);
    drv.driverOk();
    assert.equal(drv.common(0x1c, 2), 1);
    drv.status = 0;
    assert.equal(drv.status, 0);
    drv.setCommon(0x16, 2, 0);
    assert.equal(drv.common(0x1c, 2), 0, "queue_enable 0 after reset");
    assert.equal(drv.common(0x18, 2), t.device.maxQueueSize, "queue_size back to the maximum");
    assert.equal(drv.common(0x1a, 2), NO_VECTOR);
    assert.equal(drv.common(0x10, 2), NO_VECTOR);
    assert.equal(drv.common(0x20, 4), 0);
    drv.setCommon(0x08, 4, 1);
    assert.equal(drv.common(0x0c, 4), 0, "driver features cleared");
  });

  test("queue_size: a smaller power of 2 is accepted; an absent queue reads 0", () => {
    const { drv } = rig();
    assert.ok(drv.negotiate(F_VERSION_1));
    drv.setCommon(0x16, 2, 5);
    assert.equal(drv.common(0x18, 2), 0, "queue 5 does not exist");
    assert.equal(drv.common(0x1a, 2), NO_VECTOR);
    const q = drv.setupQueue(0, { size: 8 });
    drv.driverOk();
    q.addChain([], [32]);
    drv.kick(0);
    const [used] = q.usedChains();
    assert.equal(used?.len, 32);
  });

  test("split queue_size not a power of 2 makes the device need reset", () => {
    const { drv, logs } = rig();
    assert.ok(drv.negotiate(F_VERSION_1));
    drv.setupQueue(0, { size: 12 });
    assert.ok(drv.status & NEEDS_RESET);
    assert.equal(logs.length, 1);
  });
});

for (const packed of [false, true]) {
  const layout = packed ? "packed" : "split";
  describe(`virtio-pci: interrupts and notifications (${layout})`, () => {
    const features = F_VERSION_1 | F_EVENT_IDX | F_INDIRECT | (packed ? F_PACKED : 0n);

    test("INTx: ISR bit 0 then read-to-clear de-asserts (4.1.4.5)", () => {
      const { drv, intx, metrics } = rig();
      assert.ok(drv.negotiate(features));
      const q = drv.setupQueue(0, { size: 16 });
      drv.driverOk();
      q.addChain([], [64]);
      drv.kick(0);
      assert.deepEqual(intx, [true]);
      assert.equal(drv.readIsr(), 1);
      assert.deepEqual(intx, [true, false]);
      assert.equal(drv.readIsr(), 0, "cleared by the read");
      const [used] = q.usedChains();
      assert.equal(used?.len, 64);
      assert.ok(used?.written.some((b) => b !== 0));
      assert.equal(metrics.counter("virtio.rng0.notifications").value, 1);
      assert.equal(metrics.counter("virtio.rng0.queue_interrupts").value, 1);
      assert.equal(metrics.counter("virtio.rng0.bytes").value, 64);
    });

    test("MSI-X: per-queue vector, NO_VECTOR silences, out-of-range vector reads back NO_VECTOR", () => {
      const { drv, msis, intx } = rig();
      assert.ok(drv.negotiate(features));
      drv.enableMsix(2);
      drv.setCommon(0x10, 2, 1);
      assert.equal(drv.common(0x10, 2), 1);
      const q = drv.setupQueue(0, { size: 16, vector: 0 });
      assert.equal(drv.common(0x1a, 2), 0);
      drv.setCommon(0x1a, 2, 7);
      assert.equal(drv.common(0x1a, 2), NO_VECTOR, "a vector beyond the table fails to map");
      drv.setCommon(0x1a, 2, 0);
      drv.driverOk();
      q.addChain([], [16]);
      drv.kick(0);
      assert.deepEqual(msis, [0x40]);
      assert.deepEqual(intx, [], "no INTx while MSI-X is enabled");
      q.usedChains();
      drv.setCommon(0x1a, 2, NO_VECTOR);
      q.addChain([], [16]);
      drv.kick(0);
      assert.deepEqual(msis, [0x40], "NO_VECTOR: nothing sent");
      assert.equal(q.usedChains().length, 1, "the buffer was still used");
    });

    test("notifications before DRIVER_OK are served when the driver sets it", () => {
      const { drv } = rig();
      assert.ok(drv.negotiate(features));
      const q = drv.setupQueue(0, { size: 8 });
      q.addChain([], [8]);
      drv.kick(0);
      assert.equal(q.usedChains().length, 0);
      drv.driverOk();
      assert.equal(q.usedChains().length, 1);
    });

    test("a malformed ring sets NEEDS_RESET, sends a config interrupt, logs once, throws nothing", () => {
      const { drv, logs, msis } = rig();
      assert.ok(drv.negotiate(features));
      drv.enableMsix(2);
      drv.setCommon(0x10, 2, 1);
      const q = drv.setupQueue(0, { size: 8, vector: 0 });
      drv.driverOk();
      // A descriptor pointing outside guest RAM.
      if (packed) q.makeAvailableRaw([{ addr: 0x7fff_0000_0000, len: 16, flags: 2, id: 0 }]);
      else {
        q.writeDesc(0, { addr: 0x7fff_0000_0000, len: 16, flags: 2 });
        q.pushAvail(0);
      }
      drv.kick(0);
      drv.kick(0);
      assert.ok(drv.status & NEEDS_RESET);
      assert.deepEqual(msis, [0x41], "configuration change on the config vector");
      assert.equal(logs.length, 1);
      assert.match(logs[0] ?? "", /needs reset/);
      // The driver resets and starts over: the device works again.
      assert.ok(drv.negotiate(features));
      const q2 = drv.setupQueue(0, { size: 8 });
      drv.driverOk();
      q2.addChain([], [8]);
      drv.kick(0);
      assert.equal(q2.usedChains().length, 1);
      assert.equal(drv.status & NEEDS_RESET, 0);
    });

    test("INTx: a config change sets ISR bit 1", () => {
      const { drv, t, intx } = rig();
      assert.ok(drv.negotiate(features));
      drv.setupQueue(0, { size: 8 });
      drv.driverOk();
      const gen = drv.common(0x15, 1);
      t.device.configChanged();
      assert.notEqual(drv.common(0x15, 1), gen, "config_generation changed");
      assert.deepEqual(intx, [true]);
      assert.equal(drv.readIsr(), 2);
    });
  });
}

describe("virtio-pci: queue reset and PCI configuration access", () => {
  test("queue_reset (VIRTIO_F_RING_RESET) resets one queue", () => {
    const { drv } = rig();
    assert.ok(drv.negotiate());
    drv.setupQueue(0, { size: 8, vector: 0 });
    drv.setCommon(0x16, 2, 0);
    drv.setCommon(0x3a, 2, 1);
    assert.equal(drv.common(0x3a, 2), 0, "reset complete");
    assert.equal(drv.common(0x1c, 2), 0, "queue disabled");
    const q = drv.setupQueue(0, { size: 4 });
    drv.driverOk();
    q.addChain([], [4]);
    drv.kick(0);
    assert.equal(q.usedChains().length, 1);
  });

  test("VIRTIO_PCI_CAP_PCI_CFG reaches the common configuration and notifications (4.1.4.9)", () => {
    const { drv, t } = rig();
    const cap = drv.caps.get(5);
    assert.ok(cap);
    const c = cap.capOffset;
    const viaCfg = (offset: number, len: 1 | 2 | 4, value?: number): number => {
      t.pci.configWrite(c + 4, 1, 4);
      t.pci.configWrite(c + 8, 4, offset);
      t.pci.configWrite(c + 12, 4, len);
      if (value !== undefined) {
        t.pci.configWrite(c + 16, len, value);
        return 0;
      }
      return t.pci.configRead(c + 16, len);
    };
    const common = drv.caps.get(1)?.offset ?? 0;
    assert.equal(viaCfg(common + 0x12, 2), 1, "num_queues");
    viaCfg(common + 0x14, 1, ACKNOWLEDGE);
    assert.equal(drv.status, ACKNOWLEDGE);
    assert.ok(drv.negotiate(F_VERSION_1));
    const q = drv.setupQueue(0, { size: 8 });
    drv.driverOk();
    q.addChain([], [8]);
    viaCfg(drv.caps.get(2)?.offset ?? 0, 2, 0);
    assert.equal(q.usedChains().length, 1, "notified through the configuration window");
  });
});

describe("virtio-pci: one device over shared state", () => {
  test("register writes on one instance, notification handled by another", () => {
    const a = rig();
    const b = rig({ mem: a.mem, state: a.state });
    // Both instances' PCI functions need their BARs placed; the test driver of each did that at the same
    // addresses, on separate buses. The driver talks to A, the notification arrives on B (an ioeventfd worker).
    assert.ok(a.drv.negotiate(F_VERSION_1 | F_EVENT_IDX | F_PACKED));
    const q = a.drv.setupQueue(0, { size: 8 });
    a.drv.driverOk();
    assert.equal(b.drv.status & DRIVER_OK, DRIVER_OK, "B sees the status A's driver wrote");
    for (let i = 0; i < 5; i++) {
      q.addChain([], [8]);
      (i % 2 === 0 ? b.t : a.t).notify(0);
      assert.equal(q.usedChains().length, 1, `buffer ${i}`);
    }
    // INTx raised by B's thread; the driver's ISR read, served by A, sees it and lowers the shared pin.
    assert.deepEqual(b.intx, [true]);
    assert.equal(a.drv.readIsr(), 1);
    assert.deepEqual(a.intx, [false]);
    assert.equal(b.drv.readIsr(), 0);
    assert.equal(b.t.pci.intxAssertedNow, false);
    a.drv.status = 0;
    assert.equal(b.drv.status, 0);
    b.drv.setCommon(0x16, 2, 0);
    assert.equal(b.drv.common(0x1c, 2), 0);
  });
});
