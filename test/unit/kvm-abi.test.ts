import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import {
  CAP,
  EXIT,
  IRQCHIP,
  KVM,
  KVM_VCPUEVENT_VALID_NMI_PENDING,
  KVM_VCPUEVENT_VALID_SIPI_VECTOR,
  RUN,
  SIZEOF,
  SREGS,
  VCPU_EVENTS_FLAGS_OFFSET,
} from "../../src/kvm/abi.ts";
import { repoPath } from "../../src/paths.ts";

// Compile native/abi-check.c against this system's <linux/kvm.h> and compare every constant vireo encodes.
const source = repoPath("native", "abi-check.c");
const binary = join(mkdtempSync(join(tmpdir(), "vireo-abi-")), "abi-check");
execFileSync("gcc", ["-o", binary, source]);
const facts = JSON.parse(execFileSync(binary, { encoding: "utf8" })) as Record<string, number>;

function fact(name: string): number {
  const v = facts[name];
  assert.notEqual(v, undefined, `abi-check prints no ${name}`);
  return v as number;
}

test("ioctl request numbers match <linux/kvm.h>", () => {
  for (const [name, value] of Object.entries(KVM)) assert.equal(value, fact(`KVM_${name}`), `KVM_${name}`);
});

test("struct sizes match", () => {
  const names = [
    "kvm_msr_entry",
    "kvm_msr_list",
    "kvm_msrs",
    "kvm_mp_state",
    "kvm_fpu",
    "kvm_xsave",
    "kvm_xcrs",
    "kvm_lapic_state",
    "kvm_vcpu_events",
    "kvm_irqchip",
    "kvm_pit_state2",
    "kvm_clock_data",
    "kvm_dirty_log",
    "kvm_regs",
    "kvm_sregs",
    "kvm_segment",
    "kvm_cpuid_entry2",
    "kvm_userspace_memory_region",
    "kvm_irqfd",
    "kvm_ioeventfd",
    "kvm_msi",
    "kvm_irq_routing_entry",
    "kvm_pit_config",
  ] as const;
  for (const name of names) assert.equal(SIZEOF[name], fact(`sizeof.${name}`), name);
});

test("kvm_run and kvm_sregs offsets match", () => {
  const pairs: Array<[number, string]> = [
    [RUN.immediate_exit, "kvm_run.immediate_exit"],
    [RUN.exit_reason, "kvm_run.exit_reason"],
    [RUN.io_direction, "kvm_run.io.direction"],
    [RUN.io_size, "kvm_run.io.size"],
    [RUN.io_port, "kvm_run.io.port"],
    [RUN.io_count, "kvm_run.io.count"],
    [RUN.io_data_offset, "kvm_run.io.data_offset"],
    [RUN.mmio_phys_addr, "kvm_run.mmio.phys_addr"],
    [RUN.mmio_data, "kvm_run.mmio.data"],
    [RUN.mmio_len, "kvm_run.mmio.len"],
    [RUN.mmio_is_write, "kvm_run.mmio.is_write"],
    [RUN.fail_entry_reason, "kvm_run.fail_entry.reason"],
    [RUN.internal_suberror, "kvm_run.internal.suberror"],
    [RUN.internal_ndata, "kvm_run.internal.ndata"],
    [RUN.internal_data, "kvm_run.internal.data"],
    [RUN.system_event_type, "kvm_run.system_event.type"],
    [SREGS.gdt, "kvm_sregs.gdt"],
    [SREGS.idt, "kvm_sregs.idt"],
    [SREGS.cr0, "kvm_sregs.cr0"],
    [SREGS.efer, "kvm_sregs.efer"],
    [SREGS.apic_base, "kvm_sregs.apic_base"],
    [VCPU_EVENTS_FLAGS_OFFSET, "kvm_vcpu_events.flags"],
  ];
  for (const [value, name] of pairs) assert.equal(value, fact(`offset.${name}`), name);
});

test("exit reasons and capabilities match", () => {
  const exits = [
    "IO",
    "MMIO",
    "HLT",
    "SHUTDOWN",
    "FAIL_ENTRY",
    "INTR",
    "INTERNAL_ERROR",
    "SYSTEM_EVENT",
  ] as const;
  for (const name of exits) assert.equal(EXIT[name], fact(`KVM_EXIT_${name}`), name);
  for (const [name, value] of Object.entries(CAP)) assert.equal(value, fact(`KVM_CAP_${name}`), name);
  assert.equal(KVM_VCPUEVENT_VALID_NMI_PENDING, fact("KVM_VCPUEVENT_VALID_NMI_PENDING"));
  assert.equal(KVM_VCPUEVENT_VALID_SIPI_VECTOR, fact("KVM_VCPUEVENT_VALID_SIPI_VECTOR"));
  assert.equal(IRQCHIP.IOAPIC, fact("KVM_IRQCHIP_IOAPIC"));
});
