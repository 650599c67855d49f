/**
 * vCPU and VM state through KVM's GET/SET ioctls, for snapshots (docs/snapshot.md). The structs are kept as the
 * kernel's bytes (their sizes checked against <linux/kvm.h> by test/unit/kvm-abi.test.ts): a snapshot restores
 * into the same kind of KVM, and KVM itself checks what it is given (KVM_SET_SREGS refuses an invalid CR0/EFER,
 * KVM_SET_MSRS stops at an MSR it refuses). The one struct decoded here is the MSR list, whose entries are chosen.
 */
import { VireoError } from "../errors.ts";
import { isErrno, native } from "../native.ts";
import {
  CAP,
  IRQCHIP,
  KVM,
  KVM_VCPUEVENT_VALID_NMI_PENDING,
  KVM_VCPUEVENT_VALID_SIPI_VECTOR,
  SIZEOF,
  VCPU_EVENTS_FLAGS_OFFSET,
} from "./abi.ts";
import { KvmIoctlError, kvmIoctl } from "./errors.ts";

/**
 * The MSRs a snapshot carries, when KVM_GET_MSR_INDEX_LIST has them (Intel SDM vol. 4; KVM's paravirtual MSRs
 * from Documentation/virt/kvm/x86/msr.rst). EFER and the APIC base are in kvm_sregs too; TSC first, so that
 * KVM_SET_MSRS sets it before the TSC-relative ones (TSC_ADJUST, TSC_DEADLINE).
 */
export const SNAPSHOT_MSRS: ReadonlyArray<readonly [number, string]> = [
  [0x10, "IA32_TSC"],
  [0x3b, "IA32_TSC_ADJUST"],
  [0x1b, "IA32_APIC_BASE"],
  [0x174, "IA32_SYSENTER_CS"],
  [0x175, "IA32_SYSENTER_ESP"],
  [0x176, "IA32_SYSENTER_EIP"],
  [0x1a0, "IA32_MISC_ENABLE"],
  [0x277, "IA32_PAT"],
  [0x6e0, "IA32_TSC_DEADLINE"],
  [0xc0000081, "STAR"],
  [0xc0000082, "LSTAR"],
  [0xc0000083, "CSTAR"],
  [0xc0000084, "FMASK"],
  [0xc0000102, "KERNEL_GS_BASE"],
  [0xc0000103, "TSC_AUX"],
  [0x11, "KVM_WALL_CLOCK"],
  [0x12, "KVM_SYSTEM_TIME"],
  [0x4b564d00, "KVM_WALL_CLOCK_NEW"],
  [0x4b564d01, "KVM_SYSTEM_TIME_NEW"],
  [0x4b564d02, "KVM_ASYNC_PF_EN"],
  [0x4b564d03, "KVM_STEAL_TIME"],
  [0x4b564d04, "KVM_PV_EOI_EN"],
];

/** At most this many MSR entries in a saved vCPU (the list above, with room). */
export const MAX_SAVED_MSRS = 64;

export interface MsrEntry {
  index: number;
  value: bigint;
}

/** KVM_GET_MSR_INDEX_LIST on the /dev/kvm fd: every MSR this KVM saves and restores. */
export function msrIndexList(systemFd: number): number[] {
  let n = 64;
  for (let attempt = 0; attempt < 8; attempt++) {
    const buf = new Uint32Array(1 + n);
    buf[0] = n;
    try {
      kvmIoctl(systemFd, KVM.GET_MSR_INDEX_LIST, buf, "KVM_GET_MSR_INDEX_LIST");
      return Array.from(buf.subarray(1, 1 + (buf[0] ?? 0)));
    } catch (e) {
      // E2BIG: the kernel wrote how many it has into nmsrs; ask again with room for them.
      if (e instanceof KvmIoctlError && e.errnoCode === "E2BIG" && (buf[0] ?? 0) > n) n = buf[0] ?? n;
      else throw e;
    }
  }
  throw new KvmIoctlError("KVM_GET_MSR_INDEX_LIST", 7, "E2BIG", "the MSR list kept growing");
}

/** The snapshot MSRs this KVM has, in SNAPSHOT_MSRS order. */
export function snapshotMsrs(indexList: readonly number[]): number[] {
  const have = new Set(indexList);
  return SNAPSHOT_MSRS.map(([i]) => i).filter((i) => have.has(i));
}

/** struct kvm_msrs with its entries: nmsrs, pad, then { u32 index, u32 reserved, u64 data } each. */
export function encodeMsrs(entries: readonly MsrEntry[]): Uint8Array {
  const out = new Uint8Array(SIZEOF.kvm_msrs + entries.length * SIZEOF.kvm_msr_entry);
  const view = new DataView(out.buffer);
  view.setUint32(0, entries.length, true);
  entries.forEach((e, i) => {
    const o = SIZEOF.kvm_msrs + i * SIZEOF.kvm_msr_entry;
    view.setUint32(o, e.index, true);
    view.setBigUint64(o + 8, e.value, true);
  });
  return out;
}

export function decodeMsrs(bytes: Uint8Array, count: number): MsrEntry[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: MsrEntry[] = [];
  for (let i = 0; i < count; i++) {
    const o = SIZEOF.kvm_msrs + i * SIZEOF.kvm_msr_entry;
    out.push({ index: view.getUint32(o, true), value: view.getBigUint64(o + 8, true) });
  }
  return out;
}

/** One vCPU's state, as the kernel's structs. */
export interface VcpuState {
  regs: Uint8Array;
  sregs: Uint8Array;
  fpu: Uint8Array;
  /** struct kvm_xsave when KVM has KVM_CAP_XSAVE (it carries the FPU/SSE state too); null otherwise. */
  xsave: Uint8Array | null;
  xcrs: Uint8Array | null;
  msrs: MsrEntry[];
  lapic: Uint8Array;
  events: Uint8Array;
  mpState: number;
}

export interface VcpuStateCaps {
  xsave: boolean;
  xcrs: boolean;
}

export function vcpuStateCaps(systemFd: number): VcpuStateCaps {
  const has = (cap: number) => kvmIoctl(systemFd, KVM.CHECK_EXTENSION, cap, "KVM_CHECK_EXTENSION") > 0;
  return { xsave: has(CAP.XSAVE), xcrs: has(CAP.XCRS) };
}

function get(fd: number, request: number, size: number, name: string): Uint8Array {
  const buf = new Uint8Array(size);
  kvmIoctl(fd, request, buf, name);
  return buf;
}

/**
 * Reads a vCPU's state. Call on the vCPU's own thread with the vCPU out of KVM_RUN and its last exit completed
 * (completeExit below): KVM finishes an exit's I/O on the next KVM_RUN, and registers read before that miss it.
 */
export function saveVcpuState(vcpuFd: number, msrIndices: readonly number[], caps: VcpuStateCaps): VcpuState {
  const mp = new Uint32Array(1);
  kvmIoctl(vcpuFd, KVM.GET_MP_STATE, mp, "KVM_GET_MP_STATE");
  return {
    regs: get(vcpuFd, KVM.GET_REGS, SIZEOF.kvm_regs, "KVM_GET_REGS"),
    sregs: get(vcpuFd, KVM.GET_SREGS, SIZEOF.kvm_sregs, "KVM_GET_SREGS"),
    fpu: get(vcpuFd, KVM.GET_FPU, SIZEOF.kvm_fpu, "KVM_GET_FPU"),
    xsave: caps.xsave ? get(vcpuFd, KVM.GET_XSAVE, SIZEOF.kvm_xsave, "KVM_GET_XSAVE") : null,
    xcrs: caps.xcrs ? get(vcpuFd, KVM.GET_XCRS, SIZEOF.kvm_xcrs, "KVM_GET_XCRS") : null,
    msrs: getMsrs(vcpuFd, msrIndices),
    lapic: get(vcpuFd, KVM.GET_LAPIC, SIZEOF.kvm_lapic_state, "KVM_GET_LAPIC"),
    events: get(vcpuFd, KVM.GET_VCPU_EVENTS, SIZEOF.kvm_vcpu_events, "KVM_GET_VCPU_EVENTS"),
    mpState: mp[0] ?? 0,
  };
}

/** KVM_GET_MSRS returns how many it read and stops at the first it cannot; such an MSR is left out. */
function getMsrs(vcpuFd: number, indices: readonly number[]): MsrEntry[] {
  let want = indices.slice(0, MAX_SAVED_MSRS);
  const out: MsrEntry[] = [];
  while (want.length > 0) {
    const buf = encodeMsrs(want.map((index) => ({ index, value: 0n })));
    const n = kvmIoctl(vcpuFd, KVM.GET_MSRS, buf, "KVM_GET_MSRS");
    out.push(...decodeMsrs(buf, n));
    want = want.slice(n + 1);
  }
  return out;
}

/**
 * Sets a vCPU's state, in an order KVM accepts: special registers (mode, EFER, APIC base) before the MSRs and
 * registers that depend on them, the LAPIC after the APIC base, events and mp_state last.
 */
export function restoreVcpuState(vcpuFd: number, s: VcpuState): void {
  kvmIoctl(vcpuFd, KVM.SET_SREGS, s.sregs, "KVM_SET_SREGS");
  kvmIoctl(vcpuFd, KVM.SET_REGS, s.regs, "KVM_SET_REGS");
  if (s.xsave) kvmIoctl(vcpuFd, KVM.SET_XSAVE, s.xsave, "KVM_SET_XSAVE");
  else kvmIoctl(vcpuFd, KVM.SET_FPU, s.fpu, "KVM_SET_FPU");
  if (s.xcrs) kvmIoctl(vcpuFd, KVM.SET_XCRS, s.xcrs, "KVM_SET_XCRS");
  if (s.msrs.length > 0) {
    const n = kvmIoctl(vcpuFd, KVM.SET_MSRS, encodeMsrs(s.msrs), "KVM_SET_MSRS");
    if (n !== s.msrs.length) {
      const bad = s.msrs[n];
      throw new KvmIoctlError(
        "KVM_SET_MSRS",
        22,
        "EINVAL",
        `KVM refused MSR 0x${bad?.index.toString(16)} (value 0x${bad?.value.toString(16)})`,
      );
    }
  }
  kvmIoctl(vcpuFd, KVM.SET_LAPIC, s.lapic, "KVM_SET_LAPIC");
  const events = s.events.slice();
  const view = new DataView(events.buffer);
  // GET sets the flags of what it filled in; NMI pending and the SIPI vector are always filled, so SET takes them.
  const flags = view.getUint32(VCPU_EVENTS_FLAGS_OFFSET, true);
  view.setUint32(
    VCPU_EVENTS_FLAGS_OFFSET,
    flags | KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR,
    true,
  );
  kvmIoctl(vcpuFd, KVM.SET_VCPU_EVENTS, events, "KVM_SET_VCPU_EVENTS");
  kvmIoctl(vcpuFd, KVM.SET_MP_STATE, new Uint32Array([s.mpState]), "KVM_SET_MP_STATE");
}

/**
 * Completes the last exit's I/O inside KVM without running guest code: KVM_RUN with immediate_exit set returns
 * EINTR at once, after finishing a pending PIO/MMIO read (Documentation/virt/kvm/api.rst, kvm_run.immediate_exit:
 * userspace re-enters with it set to make the vCPU's state consistent before reading it).
 */
export function completeExit(vcpuFd: number, runBytes: Uint8Array, immediateExitOffset: number): void {
  runBytes[immediateExitOffset] = 1;
  try {
    native().ioctl(vcpuFd, KVM.RUN, 0, "KVM_RUN");
  } catch (e) {
    if (!isErrno(e, "EINTR")) {
      if (isErrno(e)) throw new KvmIoctlError("KVM_RUN", e.errno, e.code, e.message);
      throw e;
    }
  } finally {
    runBytes[immediateExitOffset] = 0;
  }
}

/** The VM's in-kernel devices: PIC pair, IOAPIC, PIT, and the KVM clock. */
export interface VmState {
  picMaster: Uint8Array;
  picSlave: Uint8Array;
  ioapic: Uint8Array;
  pit: Uint8Array;
  clock: Uint8Array;
}

function getIrqchip(vmFd: number, chip: number): Uint8Array {
  const buf = new Uint8Array(SIZEOF.kvm_irqchip);
  new DataView(buf.buffer).setUint32(0, chip, true);
  kvmIoctl(vmFd, KVM.GET_IRQCHIP, buf, "KVM_GET_IRQCHIP");
  return buf;
}

export function saveVmState(vmFd: number): VmState {
  return {
    picMaster: getIrqchip(vmFd, IRQCHIP.PIC_MASTER),
    picSlave: getIrqchip(vmFd, IRQCHIP.PIC_SLAVE),
    ioapic: getIrqchip(vmFd, IRQCHIP.IOAPIC),
    pit: get(vmFd, KVM.GET_PIT2, SIZEOF.kvm_pit_state2, "KVM_GET_PIT2"),
    clock: get(vmFd, KVM.GET_CLOCK, SIZEOF.kvm_clock_data, "KVM_GET_CLOCK"),
  };
}

/**
 * Sets the irqchip, PIT and clock. Each irqchip struct must name its own chip (a file cannot put the IOAPIC's
 * bytes in the PIC). The clock is set to the saved kvmclock value with no flags: the guest's clock goes on from
 * where it stopped, the time the VM spent saved not counted.
 */
export function restoreVmState(vmFd: number, s: VmState): void {
  const chips: Array<[Uint8Array, number]> = [
    [s.picMaster, IRQCHIP.PIC_MASTER],
    [s.picSlave, IRQCHIP.PIC_SLAVE],
    [s.ioapic, IRQCHIP.IOAPIC],
  ];
  for (const [bytes, chip] of chips) {
    const id = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(0, true);
    if (id !== chip) throw new KvmStateError(`irqchip state for chip ${chip} names chip ${id}`);
  }
  for (const [bytes] of chips) kvmIoctl(vmFd, KVM.SET_IRQCHIP, bytes, "KVM_SET_IRQCHIP");
  kvmIoctl(vmFd, KVM.SET_PIT2, s.pit, "KVM_SET_PIT2");
  const clock = s.clock.slice();
  const view = new DataView(clock.buffer);
  view.setUint32(8, 0, true); // flags: only `clock` is used
  for (let o = 12; o < SIZEOF.kvm_clock_data; o += 4) view.setUint32(o, 0, true);
  kvmIoctl(vmFd, KVM.SET_CLOCK, clock, "KVM_SET_CLOCK");
}

/** Saved KVM state that does not fit (checked before KVM is asked). */
export class KvmStateError extends VireoError {
  constructor(message: string) {
    super("VIREO_KVM_STATE", message);
  }
}
