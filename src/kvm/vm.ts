/** A KVM virtual machine: memory slots, the in-kernel irqchip and PIT, interrupt lines, ioeventfd and irqfd. */
import { closeSync } from "node:fs";
import { native } from "../native.ts";
import {
  KVM,
  KVM_IOEVENTFD_FLAG_DATAMATCH,
  KVM_IOEVENTFD_FLAG_PIO,
  KVM_IRQFD_FLAG_DEASSIGN,
  KVM_PIT_SPEAKER_DUMMY,
  SIZEOF,
} from "./abi.ts";
import { KvmIoctlError, kvmIoctl } from "./errors.ts";
import type { KvmSystem } from "./system.ts";

/** Where KVM (VMX) puts its three-page TSS and one-page identity map: just below the IOAPIC/LAPIC/BIOS area. */
export const KVM_TSS_ADDR = 0xfffbd000;
export const KVM_IDENTITY_MAP_ADDR = 0xfffbc000;

export interface MemorySlot {
  slot: number;
  guestPhysAddr: number;
  size: number;
  userspaceAddr: bigint;
  readonly?: boolean;
  /** Log the pages the vCPUs write (KVM_MEM_LOG_DIRTY_PAGES), read with getDirtyLog. */
  logDirty?: boolean;
}

export interface IoEventFdSpec {
  addr: number;
  len: 0 | 1 | 2 | 4 | 8;
  fd: number;
  pio: boolean;
  datamatch?: bigint;
}

export type MsiRoute = { gsi: number; addressLo: number; addressHi: number; data: number };

export class Vm {
  readonly fd: number;

  private constructor(fd: number) {
    this.fd = fd;
  }

  static create(system: KvmSystem): Vm {
    return new Vm(kvmIoctl(system.fd, KVM.CREATE_VM, 0, "KVM_CREATE_VM"));
  }

  /** Wrap an existing VM fd (a worker thread gets the number from the main thread). */
  static fromFd(fd: number): Vm {
    return new Vm(fd);
  }

  setTssAddr(addr = KVM_TSS_ADDR): void {
    kvmIoctl(this.fd, KVM.SET_TSS_ADDR, addr, "KVM_SET_TSS_ADDR");
  }

  setIdentityMapAddr(addr = KVM_IDENTITY_MAP_ADDR): void {
    const arg = new BigUint64Array([BigInt(addr)]);
    kvmIoctl(this.fd, KVM.SET_IDENTITY_MAP_ADDR, arg, "KVM_SET_IDENTITY_MAP_ADDR");
  }

  setUserMemoryRegion(region: MemorySlot): void {
    const buf = new DataView(new ArrayBuffer(SIZEOF.kvm_userspace_memory_region));
    buf.setUint32(0, region.slot, true);
    // KVM_MEM_LOG_DIRTY_PAGES (bit 0), KVM_MEM_READONLY (bit 1). api.rst 4.35: a slot's flags may change by
    // setting it again with the same address and size.
    buf.setUint32(4, (region.readonly ? 2 : 0) | (region.logDirty ? 1 : 0), true);
    buf.setBigUint64(8, BigInt(region.guestPhysAddr), true);
    buf.setBigUint64(16, BigInt(region.size), true);
    buf.setBigUint64(24, region.userspaceAddr, true);
    kvmIoctl(this.fd, KVM.SET_USER_MEMORY_REGION, buf, "KVM_SET_USER_MEMORY_REGION");
  }

  /**
   * KVM_GET_DIRTY_LOG (api.rst 4.8): the pages of `slot` the vCPUs wrote since the last call (or since dirty
   * logging was turned on), one bit per page in `bitmap` (64-bit words, bit i of the slot = page i), which KVM
   * then clears and write-protects again. Writes by this process (devices) are not in it.
   */
  getDirtyLog(slot: number, bitmap: BigUint64Array): void {
    const buf = new DataView(new ArrayBuffer(SIZEOF.kvm_dirty_log));
    buf.setUint32(0, slot, true);
    buf.setBigUint64(8, native().addressOf(bitmap), true);
    kvmIoctl(this.fd, KVM.GET_DIRTY_LOG, buf, "KVM_GET_DIRTY_LOG");
  }

  /** In-kernel PIC pair, IOAPIC and per-vCPU LAPICs. */
  createIrqchip(): void {
    kvmIoctl(this.fd, KVM.CREATE_IRQCHIP, 0, "KVM_CREATE_IRQCHIP");
  }

  createPit(): void {
    const buf = new DataView(new ArrayBuffer(SIZEOF.kvm_pit_config));
    buf.setUint32(0, KVM_PIT_SPEAKER_DUMMY, true);
    kvmIoctl(this.fd, KVM.CREATE_PIT2, buf, "KVM_CREATE_PIT2");
  }

  /** Drive a GSI to a level (with the in-kernel irqchip, GSI n < 16 is ISA IRQ n on both PIC and IOAPIC). */
  irqLine(gsi: number, level: boolean): void {
    const buf = new Uint32Array([gsi, level ? 1 : 0]);
    kvmIoctl(this.fd, KVM.IRQ_LINE, buf, "KVM_IRQ_LINE");
  }

  /** Bind an eventfd to a GSI: a write to the eventfd injects the interrupt without a trip through userspace. */
  irqfd(fd: number, gsi: number, opts: { deassign?: boolean; resampleFd?: number } = {}): void {
    const buf = new DataView(new ArrayBuffer(SIZEOF.kvm_irqfd));
    buf.setUint32(0, fd, true);
    buf.setUint32(4, gsi, true);
    let flags = opts.deassign ? KVM_IRQFD_FLAG_DEASSIGN : 0;
    if (opts.resampleFd !== undefined) {
      flags |= 1 << 1; // KVM_IRQFD_FLAG_RESAMPLE
      buf.setUint32(12, opts.resampleFd, true);
    }
    buf.setUint32(8, flags, true);
    kvmIoctl(this.fd, KVM.IRQFD, buf, "KVM_IRQFD");
  }

  /** A guest write to addr (of len bytes, optionally of one value) signals the eventfd inside the kernel. */
  ioeventfd(spec: IoEventFdSpec, deassign = false): void {
    const buf = new DataView(new ArrayBuffer(SIZEOF.kvm_ioeventfd));
    buf.setBigUint64(0, spec.datamatch ?? 0n, true);
    buf.setBigUint64(8, BigInt(spec.addr), true);
    buf.setUint32(16, spec.len, true);
    buf.setInt32(20, spec.fd, true);
    let flags = spec.pio ? KVM_IOEVENTFD_FLAG_PIO : 0;
    if (spec.datamatch !== undefined) flags |= KVM_IOEVENTFD_FLAG_DATAMATCH;
    if (deassign) flags |= 1 << 2; // KVM_IOEVENTFD_FLAG_DEASSIGN
    buf.setUint32(24, flags, true);
    kvmIoctl(this.fd, KVM.IOEVENTFD, buf, "KVM_IOEVENTFD");
  }

  /**
   * Replace the GSI routing table. KVM's table replaces the default one wholesale, so the caller passes the
   * irqchip routes it still wants (ISA IRQs) along with its MSI routes.
   */
  setGsiRouting(irqchip: Array<{ gsi: number; chip: number; pin: number }>, msi: MsiRoute[]): void {
    const n = irqchip.length + msi.length;
    const buf = new DataView(new ArrayBuffer(SIZEOF.kvm_irq_routing + n * SIZEOF.kvm_irq_routing_entry));
    buf.setUint32(0, n, true);
    let o = SIZEOF.kvm_irq_routing;
    for (const r of irqchip) {
      buf.setUint32(o, r.gsi, true);
      buf.setUint32(o + 4, 1, true); // KVM_IRQ_ROUTING_IRQCHIP
      buf.setUint32(o + 16, r.chip, true);
      buf.setUint32(o + 20, r.pin, true);
      o += SIZEOF.kvm_irq_routing_entry;
    }
    for (const r of msi) {
      buf.setUint32(o, r.gsi, true);
      buf.setUint32(o + 4, 2, true); // KVM_IRQ_ROUTING_MSI
      buf.setUint32(o + 16, r.addressLo, true);
      buf.setUint32(o + 20, r.addressHi, true);
      buf.setUint32(o + 24, r.data, true);
      o += SIZEOF.kvm_irq_routing_entry;
    }
    kvmIoctl(this.fd, KVM.SET_GSI_ROUTING, buf, "KVM_SET_GSI_ROUTING");
  }

  /**
   * PC interrupt routing for the in-kernel irqchip (what the MADT tells the guest): ISA IRQ n drives PIC pin n
   * (n < 8 master, else slave) and IOAPIC pin n, except that IRQ 0 (the PIT) is wired to IOAPIC pin 2, the
   * interrupt source override every PC MADT carries; IOAPIC pins 16-23 are PCI GSIs. KVM's default table routes
   * GSI 0 to IOAPIC pin 0, where a guest that believed the override would never see a timer tick.
   */
  static pcIrqchipRoutes(): Array<{ gsi: number; chip: number; pin: number }> {
    const PIC_MASTER = 0;
    const PIC_SLAVE = 1;
    const IOAPIC = 2;
    const routes: Array<{ gsi: number; chip: number; pin: number }> = [];
    for (let gsi = 0; gsi < 16; gsi++)
      routes.push({ gsi, chip: gsi < 8 ? PIC_MASTER : PIC_SLAVE, pin: gsi % 8 });
    for (let gsi = 0; gsi < 24; gsi++) {
      if (gsi === 2) continue; // IOAPIC pin 2 belongs to IRQ 0
      routes.push({ gsi, chip: IOAPIC, pin: gsi === 0 ? 2 : gsi });
    }
    return routes;
  }

  /**
   * Inject one MSI directly. Returns how many vCPUs accepted it; KVM reports "none" as -1, which arrives as
   * EPERM, so that case returns 0 here.
   */
  signalMsi(addressLo: number, addressHi: number, data: number): number {
    const buf = new DataView(new ArrayBuffer(SIZEOF.kvm_msi));
    buf.setUint32(0, addressLo, true);
    buf.setUint32(4, addressHi, true);
    buf.setUint32(8, data, true);
    try {
      return kvmIoctl(this.fd, KVM.SIGNAL_MSI, buf, "KVM_SIGNAL_MSI");
    } catch (e) {
      if (e instanceof KvmIoctlError && e.errnoCode === "EPERM") return 0;
      throw e;
    }
  }

  close(): void {
    closeSync(this.fd);
  }
}
