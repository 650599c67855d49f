/**
 * KVM's in-kernel I/O paths with a real guest: an ioeventfd turns guest doorbell writes into eventfd signals
 * without an exit to vireo, and an irqfd injects an interrupt from an eventfd write.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { KvmSystem } from "../../src/kvm/system.ts";
import { Machine, type TestDevicePlumbing } from "../../src/vmm/machine.ts";
import { microGuest } from "../../src/vmm/micro-guest.ts";

const skip = KvmSystem.available() ? false : "no usable /dev/kvm on this host: KVM tests skipped";

async function run(program: string, args: string[], testDevice: TestDevicePlumbing) {
  const { kernel, cmdline } = microGuest(`micro:${program}`, args);
  return new Machine({
    kernel,
    cmdline,
    memMiB: 16,
    cpus: 1,
    serial: { kind: "none" },
    timeoutMs: 60_000,
    testDevice,
  }).run();
}

test("ioeventfd: 2000 PIO doorbell writes reach the eventfd and none exits to vireo", { skip }, async () => {
  const plain = await run("bench-pio", ["2000"], {});
  const kicked = await run("bench-pio", ["2000"], { doorbellIoeventfd: true });
  assert.equal(plain.status, 0);
  assert.equal(kicked.status, 0, kicked.message);
  assert.ok(
    (plain.metrics["exits.io"] ?? 0) >= 2000,
    `without ioeventfd every write exits: ${plain.metrics["exits.io"]}`,
  );
  assert.equal(kicked.metrics["ioeventfd.test-pio.signals"], 2000);
  assert.ok(
    (kicked.metrics["exits.io"] ?? 0) < 100,
    `with ioeventfd the writes stay in the kernel: ${kicked.metrics["exits.io"]}`,
  );
});

test("ioeventfd: MMIO doorbell writes too", { skip }, async () => {
  const r = await run("bench-mmio", ["1500"], { doorbellIoeventfd: true });
  assert.equal(r.status, 0, r.message);
  assert.equal(r.metrics["ioeventfd.test-mmio.signals"], 1500);
  assert.ok((r.metrics["exits.mmio"] ?? 0) < 100, `exits.mmio ${r.metrics["exits.mmio"]}`);
});

test("irqfd: the test device's interrupt delivered through an eventfd reaches the guest", {
  skip,
}, async () => {
  const r = await run("irq", [], { irqfd: true });
  assert.equal(r.status, 0, r.message);
  assert.ok((r.metrics["irq.gsi5.irqfd"] ?? 0) >= 1, JSON.stringify(r.metrics));
  assert.equal(r.metrics["irq.gsi5.raised"] ?? 0, 0, "no KVM_IRQ_LINE for GSI 5");
});
