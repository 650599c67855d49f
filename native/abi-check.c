/* Prints the KVM ABI facts vireo's TypeScript encodes (src/kvm/abi.ts), from the system's own headers, as
 * JSON. test/unit/kvm-abi.test.ts compiles and runs this and compares: a wrong constant fails the test. */
#include <linux/kvm.h>
#include <stddef.h>
#include <stdio.h>
#define P(name, value) printf("%s\"%s\": %llu", first ? "" : ",\n", name, (unsigned long long)(value)), first = 0
int main(void) {
  int first = 1;
  printf("{\n");
  P("KVM_GET_API_VERSION", KVM_GET_API_VERSION);
  P("KVM_CREATE_VM", KVM_CREATE_VM);
  P("KVM_CHECK_EXTENSION", KVM_CHECK_EXTENSION);
  P("KVM_GET_VCPU_MMAP_SIZE", KVM_GET_VCPU_MMAP_SIZE);
  P("KVM_GET_SUPPORTED_CPUID", KVM_GET_SUPPORTED_CPUID);
  P("KVM_CREATE_VCPU", KVM_CREATE_VCPU);
  P("KVM_SET_USER_MEMORY_REGION", KVM_SET_USER_MEMORY_REGION);
  P("KVM_SET_TSS_ADDR", KVM_SET_TSS_ADDR);
  P("KVM_SET_IDENTITY_MAP_ADDR", KVM_SET_IDENTITY_MAP_ADDR);
  P("KVM_CREATE_IRQCHIP", KVM_CREATE_IRQCHIP);
  P("KVM_IRQ_LINE", KVM_IRQ_LINE);
  P("KVM_SET_GSI_ROUTING", KVM_SET_GSI_ROUTING);
  P("KVM_IRQFD", KVM_IRQFD);
  P("KVM_CREATE_PIT2", KVM_CREATE_PIT2);
  P("KVM_IOEVENTFD", KVM_IOEVENTFD);
  P("KVM_SIGNAL_MSI", KVM_SIGNAL_MSI);
  P("KVM_RUN", KVM_RUN);
  P("KVM_GET_REGS", KVM_GET_REGS);
  P("KVM_SET_REGS", KVM_SET_REGS);
  P("KVM_GET_SREGS", KVM_GET_SREGS);
  P("KVM_SET_SREGS", KVM_SET_SREGS);
  P("KVM_SET_CPUID2", KVM_SET_CPUID2);
  P("KVM_GET_MP_STATE", KVM_GET_MP_STATE);
  P("KVM_SET_MP_STATE", KVM_SET_MP_STATE);
  P("KVM_SET_MSRS", KVM_SET_MSRS);
  P("sizeof.kvm_regs", sizeof(struct kvm_regs));
  P("sizeof.kvm_sregs", sizeof(struct kvm_sregs));
  P("sizeof.kvm_segment", sizeof(struct kvm_segment));
  P("sizeof.kvm_cpuid_entry2", sizeof(struct kvm_cpuid_entry2));
  P("sizeof.kvm_userspace_memory_region", sizeof(struct kvm_userspace_memory_region));
  P("sizeof.kvm_irqfd", sizeof(struct kvm_irqfd));
  P("sizeof.kvm_ioeventfd", sizeof(struct kvm_ioeventfd));
  P("sizeof.kvm_msi", sizeof(struct kvm_msi));
  P("sizeof.kvm_irq_routing_entry", sizeof(struct kvm_irq_routing_entry));
  P("sizeof.kvm_pit_config", sizeof(struct kvm_pit_config));
  P("offset.kvm_run.immediate_exit", offsetof(struct kvm_run, immediate_exit));
  P("offset.kvm_run.exit_reason", offsetof(struct kvm_run, exit_reason));
  P("offset.kvm_run.io.direction", offsetof(struct kvm_run, io.direction));
  P("offset.kvm_run.io.size", offsetof(struct kvm_run, io.size));
  P("offset.kvm_run.io.port", offsetof(struct kvm_run, io.port));
  P("offset.kvm_run.io.count", offsetof(struct kvm_run, io.count));
  P("offset.kvm_run.io.data_offset", offsetof(struct kvm_run, io.data_offset));
  P("offset.kvm_run.mmio.phys_addr", offsetof(struct kvm_run, mmio.phys_addr));
  P("offset.kvm_run.mmio.data", offsetof(struct kvm_run, mmio.data));
  P("offset.kvm_run.mmio.len", offsetof(struct kvm_run, mmio.len));
  P("offset.kvm_run.mmio.is_write", offsetof(struct kvm_run, mmio.is_write));
  P("offset.kvm_run.fail_entry.reason", offsetof(struct kvm_run, fail_entry.hardware_entry_failure_reason));
  P("offset.kvm_run.internal.suberror", offsetof(struct kvm_run, internal.suberror));
  P("offset.kvm_run.internal.ndata", offsetof(struct kvm_run, internal.ndata));
  P("offset.kvm_run.internal.data", offsetof(struct kvm_run, internal.data));
  P("offset.kvm_run.system_event.type", offsetof(struct kvm_run, system_event.type));
  P("offset.kvm_sregs.gdt", offsetof(struct kvm_sregs, gdt));
  P("offset.kvm_sregs.idt", offsetof(struct kvm_sregs, idt));
  P("offset.kvm_sregs.cr0", offsetof(struct kvm_sregs, cr0));
  P("offset.kvm_sregs.efer", offsetof(struct kvm_sregs, efer));
  P("offset.kvm_sregs.apic_base", offsetof(struct kvm_sregs, apic_base));
  P("offset.kvm_segment.type", offsetof(struct kvm_segment, type));
  P("offset.kvm_segment.unusable", offsetof(struct kvm_segment, unusable));
  P("KVM_EXIT_IO", KVM_EXIT_IO);
  P("KVM_EXIT_MMIO", KVM_EXIT_MMIO);
  P("KVM_EXIT_HLT", KVM_EXIT_HLT);
  P("KVM_EXIT_SHUTDOWN", KVM_EXIT_SHUTDOWN);
  P("KVM_EXIT_FAIL_ENTRY", KVM_EXIT_FAIL_ENTRY);
  P("KVM_EXIT_INTR", KVM_EXIT_INTR);
  P("KVM_EXIT_INTERNAL_ERROR", KVM_EXIT_INTERNAL_ERROR);
  P("KVM_EXIT_SYSTEM_EVENT", KVM_EXIT_SYSTEM_EVENT);
  P("KVM_CAP_IRQCHIP", KVM_CAP_IRQCHIP);
  P("KVM_CAP_IOEVENTFD", KVM_CAP_IOEVENTFD);
  P("KVM_CAP_IRQFD", KVM_CAP_IRQFD);
  P("KVM_CAP_IMMEDIATE_EXIT", KVM_CAP_IMMEDIATE_EXIT);
  P("KVM_CAP_NR_VCPUS", KVM_CAP_NR_VCPUS);
  P("KVM_CAP_MAX_VCPUS", KVM_CAP_MAX_VCPUS);
  P("KVM_CAP_NR_MEMSLOTS", KVM_CAP_NR_MEMSLOTS);
  P("KVM_CAP_SIGNAL_MSI", KVM_CAP_SIGNAL_MSI);
  P("KVM_CAP_IRQ_ROUTING", KVM_CAP_IRQ_ROUTING);
  P("KVM_CAP_PIT2", KVM_CAP_PIT2);
  printf("\n}\n");
  return 0;
}
