import assert from "node:assert/strict";
import { test } from "node:test";
import { moduleName, parseModulesDep, resolveModules } from "../../src/image/kernel-modules.ts";

// A slice of Debian 6.1's modules.dep (depmod output), including a '-' in a file name.
const DEP = `kernel/arch/x86/kvm/kvm.ko: kernel/virt/lib/irqbypass.ko
kernel/arch/x86/kvm/kvm-amd.ko: kernel/drivers/crypto/ccp/ccp.ko kernel/arch/x86/kvm/kvm.ko kernel/virt/lib/irqbypass.ko
kernel/virt/lib/irqbypass.ko:
kernel/drivers/crypto/ccp/ccp.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
`;

function base(path: string): string {
  return path.slice(path.lastIndexOf("/") + 1);
}

test("module names fold '-' into '_' and drop the directory and .ko", () => {
  assert.equal(moduleName("kernel/arch/x86/kvm/kvm-amd.ko"), "kvm_amd");
  assert.equal(moduleName("kernel/drivers/virtio/virtio.ko.xz"), "virtio");
});

test("dependencies come before dependents, each once (virtio_ring before virtio)", () => {
  const deps = parseModulesDep(DEP);
  const order = resolveModules(deps, ["kvm_amd", "virtio_pci", "virtio-rng"]).map(base);
  assert.deepEqual(order, [
    "ccp.ko",
    "irqbypass.ko",
    "kvm.ko",
    "kvm-amd.ko",
    "virtio_pci_legacy_dev.ko",
    "virtio_pci_modern_dev.ko",
    "virtio_ring.ko",
    "virtio.ko",
    "virtio_pci.ko",
    "virtio-rng.ko",
  ]);
  for (const [i, m] of order.entries()) {
    const entry = deps.get(moduleName(m));
    for (const d of entry?.deps ?? []) assert.ok(order.indexOf(base(d)) < i, `${base(d)} loads before ${m}`);
  }
});

test("a missing module names what needed it", () => {
  const deps = parseModulesDep("a.ko: b.ko\n");
  assert.throws(() => resolveModules(deps, ["a"]), /kernel module b not found \(needed by a\)/);
  assert.throws(() => resolveModules(deps, ["nope"]), /kernel module nope not found$/);
});

test("a dependency loop is an error, not a hang", () => {
  const deps = parseModulesDep("a.ko: b.ko\nb.ko: a.ko\n");
  assert.throws(() => resolveModules(deps, ["a"]), /dependency loop/);
});
