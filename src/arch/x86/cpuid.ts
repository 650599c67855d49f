/** The CPUID a vCPU sees: what KVM supports, with the per-vCPU fields set (SDM vol. 2A, CPUID). */
import type { CpuidEntry } from "../../kvm/system.ts";

export interface CpuidPolicy {
  /**
   * Offer no XSAVE (and nothing that needs it: AVX and its successors, FMA, F16C, PKU; leaf 0xD goes). For KVM
   * whose SVM is emulated by QEMU's TCG (vireo's emulated host), which does not implement the XSETBV intercept
   * (its target/i386/svm.h stops at exit code 0x8b; XSETBV is 0x8d): a guest's XSETBV then changes XCR0 under
   * the host kernel's feet, and guests and the host itself crashed at random. A guest without XSAVE uses FXSAVE.
   */
  hideXsave?: boolean;
}

// CPUID.1:ECX (SDM vol. 2A, table 3-10).
const ECX1_FMA = 1 << 12;
const ECX1_XSAVE = 1 << 26;
const ECX1_OSXSAVE = 1 << 27;
const ECX1_AVX = 1 << 28;
const ECX1_F16C = 1 << 29;
// CPUID.(7,0):EBX AVX2 and the AVX-512 family; ECX AVX-512 extensions and PKU/OSPKE; EDX AVX-512 4VNNIW/4FMAPS.
const EBX7_XSAVE_DEPENDENT =
  (1 << 5) | (1 << 16) | (1 << 17) | (1 << 21) | (1 << 26) | (1 << 27) | (1 << 28) | (1 << 30) | (1 << 31);
const ECX7_XSAVE_DEPENDENT = (1 << 1) | (1 << 3) | (1 << 4) | (1 << 6) | (1 << 11) | (1 << 12) | (1 << 14);
const EDX7_XSAVE_DEPENDENT = (1 << 2) | (1 << 3) | (1 << 8) | (1 << 23);

export function vcpuCpuid(
  supported: readonly CpuidEntry[],
  apicId: number,
  cpus: number,
  policy: CpuidPolicy = {},
): CpuidEntry[] {
  return supported
    .filter((e) => !(policy.hideXsave && e.function === 0xd))
    .map((e) => {
      const entry = { ...e };
      if (e.function === 1) {
        // EBX[31:24] initial APIC ID, EBX[23:16] logical processors per package; EDX bit 28 HTT when > 1.
        entry.ebx = ((e.ebx & 0x0000ffff) | ((cpus & 0xff) << 16) | ((apicId & 0xff) << 24)) >>> 0;
        entry.edx = cpus > 1 ? (e.edx | (1 << 28)) >>> 0 : e.edx;
        if (policy.hideXsave)
          entry.ecx = (e.ecx & ~(ECX1_FMA | ECX1_XSAVE | ECX1_OSXSAVE | ECX1_AVX | ECX1_F16C)) >>> 0;
      } else if (e.function === 7 && e.index === 0 && policy.hideXsave) {
        entry.ebx = (e.ebx & ~EBX7_XSAVE_DEPENDENT) >>> 0;
        entry.ecx = (e.ecx & ~ECX7_XSAVE_DEPENDENT) >>> 0;
        entry.edx = (e.edx & ~EDX7_XSAVE_DEPENDENT) >>> 0;
      } else if (e.function === 0xb || e.function === 0x1f) {
        entry.edx = apicId >>> 0; // x2APIC ID of this logical processor
      }
      return entry;
    });
}
