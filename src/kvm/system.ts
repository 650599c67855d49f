/** The KVM subsystem: /dev/kvm, capabilities, and what kind of KVM this host has. */
import { closeSync, existsSync, openSync } from "node:fs";
import { CAP, KVM, KVM_API_VERSION, SIZEOF } from "./abi.ts";
import { KvmUnavailableError, kvmIoctl } from "./errors.ts";

/** The KVM device; VIREO_KVM_DEVICE overrides it (tests use it to exercise the "no KVM" paths). */
export const KVM_DEVICE = process.env.VIREO_KVM_DEVICE ?? "/dev/kvm";

export type HostKind = "kvm" | "pvm" | "emulated" | "none";

export interface CpuidEntry {
  function: number;
  index: number;
  flags: number;
  eax: number;
  ebx: number;
  ecx: number;
  edx: number;
}

export class KvmSystem {
  readonly fd: number;

  private constructor(fd: number) {
    this.fd = fd;
  }

  /** Opens /dev/kvm, turning the usual failures into one clear sentence each. */
  static open(path = KVM_DEVICE): KvmSystem {
    let fd: number;
    try {
      fd = openSync(path, "r+");
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === "ENOENT")
        throw new KvmUnavailableError(
          "VIREO_KVM_MISSING",
          `${path} does not exist: this host has no KVM (load kvm_intel/kvm_amd, or enable nested virtualization)`,
        );
      if (code === "EACCES" || code === "EPERM")
        throw new KvmUnavailableError(
          "VIREO_KVM_PERMISSION",
          `permission denied opening ${path}: run as root or add your user to the 'kvm' group`,
        );
      throw new KvmUnavailableError("VIREO_KVM_MISSING", `cannot open ${path}: ${(e as Error).message}`);
    }
    let version: number;
    try {
      version = kvmIoctl(fd, KVM.GET_API_VERSION, 0, "KVM_GET_API_VERSION");
    } catch {
      closeSync(fd);
      throw new KvmUnavailableError(
        "VIREO_KVM_UNSUPPORTED",
        `${path} is not a KVM device (KVM_GET_API_VERSION failed)`,
      );
    }
    if (version !== KVM_API_VERSION) {
      closeSync(fd);
      throw new KvmUnavailableError(
        "VIREO_KVM_UNSUPPORTED",
        `KVM API version ${version}, vireo needs ${KVM_API_VERSION}`,
      );
    }
    const system = new KvmSystem(fd);
    for (const [name, cap] of [
      ["IRQCHIP", CAP.IRQCHIP],
      ["IOEVENTFD", CAP.IOEVENTFD],
      ["IRQFD", CAP.IRQFD],
      ["IMMEDIATE_EXIT", CAP.IMMEDIATE_EXIT],
    ] as const) {
      if (system.checkExtension(cap) <= 0) {
        system.close();
        throw new KvmUnavailableError(
          "VIREO_KVM_UNSUPPORTED",
          `this KVM lacks KVM_CAP_${name}, which vireo needs`,
        );
      }
    }
    return system;
  }

  /** True where /dev/kvm is available to this process (for tests that need it). */
  static available(path = KVM_DEVICE): boolean {
    try {
      KvmSystem.open(path).close();
      return true;
    } catch {
      return false;
    }
  }

  /**
   * True where this host's /dev/kvm is PVM ("pagetable-based virtual machine"), which runs supervisor-mode guest
   * code emulated, very slowly. kvm_pvm can be loaded without binding (in a PVM guest): then there is no device.
   */
  static isPvm(path = KVM_DEVICE): boolean {
    return existsSync(path) && existsSync("/sys/module/kvm_pvm");
  }

  /**
   * What this host offers vireo: real KVM (VMX/SVM), PVM, KVM inside vireo's emulated host (QEMU TCG, where
   * stage 2 sets VIREO_EMULATED_HOST=1: real KVM semantics, but every instruction emulated), or nothing usable.
   */
  static hostKind(path = KVM_DEVICE): HostKind {
    if (!KvmSystem.available(path)) return "none";
    if (KvmSystem.isPvm(path)) return "pvm";
    return process.env.VIREO_EMULATED_HOST === "1" ? "emulated" : "kvm";
  }

  checkExtension(cap: number): number {
    return kvmIoctl(this.fd, KVM.CHECK_EXTENSION, cap, "KVM_CHECK_EXTENSION");
  }

  vcpuMmapSize(): number {
    return kvmIoctl(this.fd, KVM.GET_VCPU_MMAP_SIZE, 0, "KVM_GET_VCPU_MMAP_SIZE");
  }

  maxVcpus(): number {
    const max = this.checkExtension(CAP.MAX_VCPUS);
    return max > 0 ? max : this.checkExtension(CAP.NR_VCPUS);
  }

  /** KVM_GET_SUPPORTED_CPUID: what the host and KVM can offer a guest. */
  supportedCpuid(): CpuidEntry[] {
    const max = 256;
    const buf = new Uint8Array(SIZEOF.kvm_cpuid2 + max * SIZEOF.kvm_cpuid_entry2);
    const view = new DataView(buf.buffer);
    view.setUint32(0, max, true);
    kvmIoctl(this.fd, KVM.GET_SUPPORTED_CPUID, buf, "KVM_GET_SUPPORTED_CPUID");
    const n = view.getUint32(0, true);
    return Array.from({ length: n }, (_, i) => {
      const o = SIZEOF.kvm_cpuid2 + i * SIZEOF.kvm_cpuid_entry2;
      return {
        function: view.getUint32(o, true),
        index: view.getUint32(o + 4, true),
        flags: view.getUint32(o + 8, true),
        eax: view.getUint32(o + 12, true),
        ebx: view.getUint32(o + 16, true),
        ecx: view.getUint32(o + 20, true),
        edx: view.getUint32(o + 24, true),
      };
    });
  }

  close(): void {
    closeSync(this.fd);
  }
}

/** struct kvm_cpuid2 with its entries, for KVM_SET_CPUID2. */
export function encodeCpuid(entries: readonly CpuidEntry[]): Uint8Array {
  const buf = new Uint8Array(SIZEOF.kvm_cpuid2 + entries.length * SIZEOF.kvm_cpuid_entry2);
  const view = new DataView(buf.buffer);
  view.setUint32(0, entries.length, true);
  entries.forEach((e, i) => {
    const o = SIZEOF.kvm_cpuid2 + i * SIZEOF.kvm_cpuid_entry2;
    view.setUint32(o, e.function, true);
    view.setUint32(o + 4, e.index, true);
    view.setUint32(o + 8, e.flags, true);
    view.setUint32(o + 12, e.eax >>> 0, true);
    view.setUint32(o + 16, e.ebx >>> 0, true);
    view.setUint32(o + 20, e.ecx >>> 0, true);
    view.setUint32(o + 24, e.edx >>> 0, true);
  });
  return buf;
}
