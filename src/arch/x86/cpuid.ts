/** The CPUID a vCPU sees: what KVM supports, with the per-vCPU fields set (SDM vol. 2A, CPUID). */
import type { CpuidEntry } from "../../kvm/system.ts";

export function vcpuCpuid(supported: readonly CpuidEntry[], apicId: number, cpus: number): CpuidEntry[] {
  return supported.map((e) => {
    const entry = { ...e };
    if (e.function === 1) {
      // EBX[31:24] initial APIC ID, EBX[23:16] logical processors per package; EDX bit 28 HTT when > 1.
      entry.ebx = ((e.ebx & 0x0000ffff) | ((cpus & 0xff) << 16) | ((apicId & 0xff) << 24)) >>> 0;
      entry.edx = cpus > 1 ? (e.edx | (1 << 28)) >>> 0 : e.edx;
    } else if (e.function === 0xb || e.function === 0x1f) {
      entry.edx = apicId >>> 0; // x2APIC ID of this logical processor
    }
    return entry;
  });
}
