/** An interrupt line into the in-kernel irqchip, as devices see it: a level they set. */
import { KVM } from "../kvm/abi.ts";
import { kvmIoctl } from "../kvm/errors.ts";
import type { MetricsSink } from "../metrics/registry.ts";

export interface IrqLine {
  set(level: boolean): void;
}

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
