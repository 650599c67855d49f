/**
 * A vCPU: its fd, the shared kvm_run page, registers. Used on the vCPU's own worker thread, which is the only
 * thread that issues its ioctls (KVM ties a vCPU to the thread that runs it).
 */
import type { Segment } from "../arch/x86/long-mode.ts";
import { isErrno, native } from "../native.ts";
import { KVM, KVM_MP_STATE_RUNNABLE, RUN, SIZEOF, SREGS } from "./abi.ts";
import { KvmIoctlError, kvmIoctl } from "./errors.ts";
import { type CpuidEntry, encodeCpuid } from "./system.ts";

/** Pseudo exit reason: KVM_RUN returned EINTR (a kick). */
export const EXIT_KICKED = -1;
/** Pseudo exit reason: KVM_RUN returned EAGAIN (an AP between INIT and SIPI); enter again. */
export const EXIT_RETRY = -2;

export const REG = {
  rax: 0,
  rbx: 1,
  rcx: 2,
  rdx: 3,
  rsi: 4,
  rdi: 5,
  rsp: 6,
  rbp: 7,
  r8: 8,
  r9: 9,
  r10: 10,
  r11: 11,
  r12: 12,
  r13: 13,
  r14: 14,
  r15: 15,
  rip: 16,
  rflags: 17,
} as const;
export type RegName = keyof typeof REG;

export class Vcpu {
  readonly index: number;
  readonly fd: number;
  /** struct kvm_run, mapped from the vCPU fd; shared so another thread can set immediate_exit. */
  readonly runBuffer: SharedArrayBuffer;
  readonly run: DataView;
  readonly runBytes: Uint8Array;

  private constructor(index: number, fd: number, runBuffer: SharedArrayBuffer) {
    this.index = index;
    this.fd = fd;
    this.runBuffer = runBuffer;
    this.run = new DataView(runBuffer);
    this.runBytes = new Uint8Array(runBuffer);
  }

  static create(vmFd: number, index: number, mmapSize: number): Vcpu {
    const fd = kvmIoctl(vmFd, KVM.CREATE_VCPU, index, "KVM_CREATE_VCPU");
    const { buffer } = native().mmap(fd, mmapSize, 0);
    return new Vcpu(index, fd, buffer);
  }

  setCpuid(entries: readonly CpuidEntry[]): void {
    kvmIoctl(this.fd, KVM.SET_CPUID2, encodeCpuid(entries), "KVM_SET_CPUID2");
  }

  getRegs(): BigUint64Array {
    const regs = new BigUint64Array(SIZEOF.kvm_regs / 8);
    kvmIoctl(this.fd, KVM.GET_REGS, regs, "KVM_GET_REGS");
    return regs;
  }

  setRegs(values: Partial<Record<RegName, bigint>>): void {
    const regs = new BigUint64Array(SIZEOF.kvm_regs / 8);
    for (const [name, v] of Object.entries(values)) regs[REG[name as RegName]] = v as bigint;
    kvmIoctl(this.fd, KVM.SET_REGS, regs, "KVM_SET_REGS");
  }

  getSregs(): DataView {
    const sregs = new DataView(new ArrayBuffer(SIZEOF.kvm_sregs));
    kvmIoctl(this.fd, KVM.GET_SREGS, sregs, "KVM_GET_SREGS");
    return sregs;
  }

  setSregs(sregs: DataView): void {
    kvmIoctl(this.fd, KVM.SET_SREGS, sregs, "KVM_SET_SREGS");
  }

  getMpState(): number {
    const s = new Uint32Array(1);
    kvmIoctl(this.fd, KVM.GET_MP_STATE, s, "KVM_GET_MP_STATE");
    return s[0] ?? KVM_MP_STATE_RUNNABLE;
  }

  /** Enter the guest until the next exit; returns kvm_run.exit_reason, or EXIT_KICKED on EINTR. */
  enter(): number {
    try {
      native().ioctl(this.fd, KVM.RUN, 0, "KVM_RUN");
    } catch (e) {
      if (isErrno(e, "EINTR")) {
        this.runBytes[RUN.immediate_exit] = 0;
        return EXIT_KICKED;
      }
      // An application processor that got INIT and waits for its SIPI: KVM returns EAGAIN and expects the
      // VMM to enter again (api.rst, KVM_RUN; arch/x86/kvm/x86.c, the UNINITIALIZED mp_state path).
      if (isErrno(e, "EAGAIN")) return EXIT_RETRY;
      if (isErrno(e)) throw new KvmIoctlError("KVM_RUN", e.errno, e.code, e.message);
      throw e;
    }
    return this.run.getUint32(RUN.exit_reason, true);
  }

  close(): void {
    native().close(this.fd);
  }
}

/** Write one struct kvm_segment (24 bytes) into a kvm_sregs buffer. */
export function putSegment(sregs: DataView, which: (typeof SREGS.segments)[number], seg: Segment): void {
  const o = SREGS.segments.indexOf(which) * SIZEOF.kvm_segment;
  sregs.setBigUint64(o, seg.base, true);
  sregs.setUint32(o + 8, seg.limit, true);
  sregs.setUint16(o + 12, seg.selector, true);
  sregs.setUint8(o + 14, seg.type);
  sregs.setUint8(o + 15, seg.present);
  sregs.setUint8(o + 16, seg.dpl);
  sregs.setUint8(o + 17, seg.db);
  sregs.setUint8(o + 18, seg.s);
  sregs.setUint8(o + 19, seg.l);
  sregs.setUint8(o + 20, seg.g);
  sregs.setUint8(o + 21, 0); // avl
  sregs.setUint8(o + 22, 0); // unusable
}

export function putDtable(sregs: DataView, offset: number, table: { base: bigint; limit: number }): void {
  sregs.setBigUint64(offset, table.base, true);
  sregs.setUint16(offset + 8, table.limit, true);
}
