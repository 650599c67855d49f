/**
 * The KVM userspace ABI for x86-64, from include/uapi/linux/kvm.h (Documentation/virt/kvm/api.rst).
 * Request numbers are computed with the kernel's _IOC encoding from the struct sizes, and
 * test/unit/kvm-abi.test.ts checks every constant here against the system headers.
 */

// asm-generic/ioctl.h: dir(2) | size(14) | type(8) | nr(8)
const IOC_NONE = 0;
const IOC_WRITE = 1;
const IOC_READ = 2;
const KVMIO = 0xae;
const ioc = (dir: number, nr: number, size: number): number =>
  ((dir << 30) | (size << 16) | (KVMIO << 8) | nr) >>> 0;
const io = (nr: number) => ioc(IOC_NONE, nr, 0);
const ior = (nr: number, size: number) => ioc(IOC_READ, nr, size);
const iow = (nr: number, size: number) => ioc(IOC_WRITE, nr, size);
const iowr = (nr: number, size: number) => ioc(IOC_READ | IOC_WRITE, nr, size);

export const SIZEOF = {
  kvm_regs: 144,
  kvm_sregs: 312,
  kvm_segment: 24,
  kvm_cpuid2: 8,
  kvm_cpuid_entry2: 40,
  kvm_userspace_memory_region: 32,
  kvm_irq_level: 8,
  kvm_irqfd: 32,
  kvm_ioeventfd: 64,
  kvm_msi: 32,
  kvm_irq_routing: 8,
  kvm_irq_routing_entry: 48,
  kvm_pit_config: 64,
  kvm_mp_state: 4,
  kvm_msrs: 8,
  kvm_msr_entry: 16,
  kvm_msr_list: 4,
  kvm_fpu: 416,
  kvm_xsave: 4096,
  kvm_xcrs: 392,
  kvm_lapic_state: 1024,
  kvm_vcpu_events: 64,
  kvm_irqchip: 520,
  kvm_pit_state2: 112,
  kvm_clock_data: 48,
  kvm_dirty_log: 16,
} as const;

export const KVM = {
  GET_API_VERSION: io(0x00),
  CREATE_VM: io(0x01),
  GET_MSR_INDEX_LIST: iowr(0x02, SIZEOF.kvm_msr_list),
  CHECK_EXTENSION: io(0x03),
  GET_VCPU_MMAP_SIZE: io(0x04),
  GET_SUPPORTED_CPUID: iowr(0x05, SIZEOF.kvm_cpuid2),
  CREATE_VCPU: io(0x41),
  SET_USER_MEMORY_REGION: iow(0x46, SIZEOF.kvm_userspace_memory_region),
  GET_DIRTY_LOG: iow(0x42, SIZEOF.kvm_dirty_log),
  SET_TSS_ADDR: io(0x47),
  SET_IDENTITY_MAP_ADDR: iow(0x48, 8),
  CREATE_IRQCHIP: io(0x60),
  IRQ_LINE: iow(0x61, SIZEOF.kvm_irq_level),
  GET_IRQCHIP: iowr(0x62, SIZEOF.kvm_irqchip),
  // The kernel declares KVM_SET_IRQCHIP with _IOR although userspace writes the struct (kvm.h keeps it for ABI).
  SET_IRQCHIP: ior(0x63, SIZEOF.kvm_irqchip),
  SET_GSI_ROUTING: iow(0x6a, SIZEOF.kvm_irq_routing),
  SET_CLOCK: iow(0x7b, SIZEOF.kvm_clock_data),
  GET_CLOCK: ior(0x7c, SIZEOF.kvm_clock_data),
  GET_PIT2: ior(0x9f, SIZEOF.kvm_pit_state2),
  SET_PIT2: iow(0xa0, SIZEOF.kvm_pit_state2),
  IRQFD: iow(0x76, SIZEOF.kvm_irqfd),
  CREATE_PIT2: iow(0x77, SIZEOF.kvm_pit_config),
  IOEVENTFD: iow(0x79, SIZEOF.kvm_ioeventfd),
  SIGNAL_MSI: iow(0xa5, SIZEOF.kvm_msi),
  RUN: io(0x80),
  GET_REGS: ior(0x81, SIZEOF.kvm_regs),
  SET_REGS: iow(0x82, SIZEOF.kvm_regs),
  GET_SREGS: ior(0x83, SIZEOF.kvm_sregs),
  SET_SREGS: iow(0x84, SIZEOF.kvm_sregs),
  GET_MSRS: iowr(0x88, SIZEOF.kvm_msrs),
  SET_MSRS: iow(0x89, SIZEOF.kvm_msrs),
  GET_FPU: ior(0x8c, SIZEOF.kvm_fpu),
  SET_FPU: iow(0x8d, SIZEOF.kvm_fpu),
  GET_LAPIC: ior(0x8e, SIZEOF.kvm_lapic_state),
  SET_LAPIC: iow(0x8f, SIZEOF.kvm_lapic_state),
  SET_CPUID2: iow(0x90, SIZEOF.kvm_cpuid2),
  GET_MP_STATE: ior(0x98, SIZEOF.kvm_mp_state),
  SET_MP_STATE: iow(0x99, SIZEOF.kvm_mp_state),
  GET_VCPU_EVENTS: ior(0x9f, SIZEOF.kvm_vcpu_events),
  SET_VCPU_EVENTS: iow(0xa0, SIZEOF.kvm_vcpu_events),
  GET_XSAVE: ior(0xa4, SIZEOF.kvm_xsave),
  SET_XSAVE: iow(0xa5, SIZEOF.kvm_xsave),
  GET_XCRS: ior(0xa6, SIZEOF.kvm_xcrs),
  SET_XCRS: iow(0xa7, SIZEOF.kvm_xcrs),
} as const;

export const KVM_API_VERSION = 12;

export const CAP = {
  IRQCHIP: 0,
  NR_VCPUS: 9,
  NR_MEMSLOTS: 10,
  IRQ_ROUTING: 25,
  IRQFD: 32,
  ADJUST_CLOCK: 39,
  VCPU_EVENTS: 41,
  XSAVE: 55,
  XCRS: 56,
  PIT2: 33,
  IOEVENTFD: 36,
  MAX_VCPUS: 66,
  SIGNAL_MSI: 77,
  IMMEDIATE_EXIT: 136,
} as const;

/** struct kvm_run exit reasons. */
export const EXIT = {
  UNKNOWN: 0,
  EXCEPTION: 1,
  IO: 2,
  HYPERCALL: 3,
  DEBUG: 4,
  HLT: 5,
  MMIO: 6,
  IRQ_WINDOW_OPEN: 7,
  SHUTDOWN: 8,
  FAIL_ENTRY: 9,
  INTR: 10,
  NMI: 16,
  INTERNAL_ERROR: 17,
  SYSTEM_EVENT: 24,
} as const;

export const EXIT_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(EXIT).map(([name, value]) => [value, name.toLowerCase()]),
);

/** Offsets inside the mmap'ed struct kvm_run. */
export const RUN = {
  immediate_exit: 1,
  exit_reason: 8,
  io_direction: 32,
  io_size: 33,
  io_port: 34,
  io_count: 36,
  io_data_offset: 40,
  mmio_phys_addr: 32,
  mmio_data: 40,
  mmio_len: 48,
  mmio_is_write: 52,
  fail_entry_reason: 32,
  internal_suberror: 32,
  internal_ndata: 36,
  internal_data: 40,
  system_event_type: 32,
} as const;

export const KVM_EXIT_IO_OUT = 1;

/** struct kvm_sregs layout: 8 segments, gdt, idt, control registers. */
export const SREGS = {
  segments: ["cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt"] as const,
  gdt: 192,
  idt: 208,
  cr0: 224,
  cr2: 232,
  cr3: 240,
  cr4: 248,
  cr8: 256,
  efer: 264,
  apic_base: 272,
} as const;

export const SYSTEM_EVENT = { SHUTDOWN: 1, RESET: 2, CRASH: 3 } as const;

export const KVM_PIT_SPEAKER_DUMMY = 1;
export const KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0;
export const KVM_IOEVENTFD_FLAG_PIO = 1 << 1;
export const KVM_IRQFD_FLAG_DEASSIGN = 1 << 0;
export const KVM_MP_STATE_RUNNABLE = 0;
export const KVM_MP_STATE_UNINITIALIZED = 1;
/** struct kvm_vcpu_events.flags: which optional parts KVM_SET_VCPU_EVENTS takes from the struct. */
export const KVM_VCPUEVENT_VALID_NMI_PENDING = 1 << 0;
export const KVM_VCPUEVENT_VALID_SIPI_VECTOR = 1 << 1;
export const VCPU_EVENTS_FLAGS_OFFSET = 20;
/** struct kvm_irqchip.chip_id values. */
export const IRQCHIP = { PIC_MASTER: 0, PIC_SLAVE: 1, IOAPIC: 2 } as const;
