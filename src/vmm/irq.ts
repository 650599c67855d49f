/** Interrupt lines into the in-kernel irqchip (KVM_IRQ_LINE, irqfd), and the PC's INTx routing. */
import { writeSync } from "node:fs";
import { KVM } from "../kvm/abi.ts";
import { kvmIoctl } from "../kvm/errors.ts";
import type { MetricsSink } from "../metrics/registry.ts";
import type { IrqLine } from "../shared/irq-line.ts";

export type { IrqLine };

/** KVM_IRQ_LINE on a GSI; counts rising edges as `irq.gsi<N>.raised`. Safe to use from any thread. */
export function kvmIrqLine(vmFd: number, gsi: number, metrics?: MetricsSink): IrqLine {
  const raised = metrics?.counter(`irq.gsi${gsi}.raised`);
  const arg = new Uint32Array(2);
  let last = false;
  return {
    set(level: boolean) {
      if (level && !last) raised?.add();
      last = level;
      arg[0] = gsi;
      arg[1] = level ? 1 : 0;
      kvmIoctl(vmFd, KVM.IRQ_LINE, arg, "KVM_IRQ_LINE");
    },
  };
}

/**
 * An edge into an irqfd: a rising level writes the eventfd and KVM injects the interrupt in the kernel (an
 * irqfd without a resample fd is edge-triggered, so the falling level needs nothing). Counts
 * `irq.gsi<N>.irqfd`.
 */
export function eventfdIrqLine(eventFd: number, gsi: number, metrics?: MetricsSink): IrqLine {
  const signals = metrics?.counter(`irq.gsi${gsi}.irqfd`);
  const one = new BigUint64Array([1n]);
  let last = false;
  return {
    set(level: boolean) {
      if (level && !last) {
        writeSync(eventFd, one);
        signals?.add();
      }
      last = level;
    },
  };
}

/**
 * PCI INTx routing on vireo's PC: pin (0 = INTA#) of root-bus device `slot` drives IOAPIC input 16-19, swizzled by
 * slot as on a PC's bus 0. The DSDT's _PRT says the same (platform.ts).
 */
export function pciIntxGsi(slot: number, pin: number): number {
  return 16 + ((slot + pin) % 4);
}
