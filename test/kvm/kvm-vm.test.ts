/** The KVM layer against the real /dev/kvm: VM setup ioctls, GSI routing and MSI, and how failures surface. */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { CAP } from "../../src/kvm/abi.ts";
import { KvmIoctlError } from "../../src/kvm/errors.ts";
import { KVM_DEVICE, KvmSystem } from "../../src/kvm/system.ts";
import { Vm } from "../../src/kvm/vm.ts";
import { EFD_CLOEXEC, native } from "../../src/native.ts";
import { VIREO_BIN } from "../helpers/cli.ts";

const skip = KvmSystem.available() ? false : "no usable /dev/kvm on this host: KVM tests skipped";

function withVm(fn: (vm: Vm, system: KvmSystem) => void): void {
  const system = KvmSystem.open();
  const vm = Vm.create(system);
  try {
    vm.setTssAddr();
    vm.createIrqchip();
    fn(vm, system);
  } finally {
    vm.close();
    system.close();
  }
}

test("capabilities vireo relies on are reported", { skip }, () => {
  const system = KvmSystem.open();
  try {
    assert.ok(system.checkExtension(CAP.IRQFD) > 0);
    assert.ok(system.checkExtension(CAP.IOEVENTFD) > 0);
    assert.ok(system.vcpuMmapSize() >= 4096);
    assert.ok(system.maxVcpus() >= 1);
    const cpuid = system.supportedCpuid();
    assert.ok(
      cpuid.some((e) => e.function === 0 && e.eax >= 1),
      "leaf 0 is there",
    );
  } finally {
    system.close();
  }
});

test("GSI routing with irqchip and MSI routes, an irqfd on an MSI route, and KVM_SIGNAL_MSI", {
  skip,
}, () => {
  withVm((vm) => {
    const isa = Array.from({ length: 16 }, (_, pin) => ({ gsi: pin, chip: 2, pin })); // chip 2 = IOAPIC
    vm.setGsiRouting(isa, [{ gsi: 24, addressLo: 0xfee00000, addressHi: 0, data: 0x41 }]);
    const fd = native().eventfd(0, EFD_CLOEXEC);
    try {
      vm.irqfd(fd, 24);
      vm.irqfd(fd, 24, { deassign: true });
    } finally {
      native().close(fd);
    }
    assert.equal(vm.signalMsi(0xfee00000, 0, 0x41), 0, "no vCPU exists to take it");
  });
});

test("a rejected ioctl surfaces as KvmIoctlError naming the ioctl and the errno", { skip }, () => {
  withVm((vm) => {
    // An IOAPIC pin beyond its 24 inputs is refused by KVM_SET_GSI_ROUTING with EINVAL.
    assert.throws(
      () => vm.setGsiRouting([{ gsi: 0, chip: 2, pin: 99 }], []),
      (e: unknown) =>
        e instanceof KvmIoctlError &&
        e.ioctl === "KVM_SET_GSI_ROUTING" &&
        e.errnoCode === "EINVAL" &&
        e.errno === 22 &&
        e.code === "VIREO_KVM_IOCTL" &&
        /KVM_SET_GSI_ROUTING failed/.test(e.message),
    );
  });
});

const canDropCaps = process.getuid?.() === 0 && spawnSync("setpriv", ["--version"]).status === 0;

test("a /dev/kvm this process may not open gets one line about permissions", {
  skip: skip || (canDropCaps ? false : "needs root and setpriv"),
}, () => {
  // A node for the same device with no permission bits, opened by root without CAP_DAC_OVERRIDE and
  // CAP_DAC_READ_SEARCH, fails with EACCES as /dev/kvm does for a user outside the kvm group. (Becoming another
  // user instead would also need every directory above the checkout to be open to that user, and CI's are not.)
  const dir = mkdtempSync(join(tmpdir(), "vireo-kvm-perm-"));
  try {
    const node = join(dir, "kvm");
    const rdev = statSync(KVM_DEVICE).rdev;
    const major = (rdev >> 8) & 0xfff;
    const minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
    const mk = spawnSync("mknod", ["-m", "000", node, "c", String(major), String(minor)], {
      encoding: "utf8",
    });
    assert.equal(mk.status, 0, mk.stderr);
    const noDac = "-dac_override,-dac_read_search";
    const r = spawnSync(
      "setpriv",
      [`--bounding-set=${noDac}`, `--inh-caps=${noDac}`, VIREO_BIN, "run", "--guest", "micro:hello"],
      { encoding: "utf8", timeout: 60_000, env: { ...process.env, VIREO_KVM_DEVICE: node } },
    );
    assert.equal(r.status, 125, r.stderr);
    assert.equal(
      r.stderr,
      `vireo: permission denied opening ${node}: run as root or add your user to the 'kvm' group\n`,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
