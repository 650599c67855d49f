import type { VcpuState } from "../kvm/state.ts";

/** What a vCPU worker tells the main thread. Control flows the other way through shared memory only. */
export type StopReason =
  | "guest-exit" // the guest wrote the debug-exit port
  | "poweroff" // the guest powered off (ACPI S5)
  | "reset" // the guest reset the machine (i8042 pulse, ACPI reset register)
  | "stop-requested" // the main thread asked every vCPU to stop
  | "shutdown" // KVM_EXIT_SHUTDOWN: a triple fault
  | "system-event" // KVM_EXIT_SYSTEM_EVENT (PSCI-style shutdown/reset/crash)
  | "halted" // HLT exited to userspace (no in-kernel irqchip)
  | "error"; // entry failure, internal error, unhandled exit, or a vireo bug

export type WorkerMessage =
  /** Sent just before the first KVM_RUN; `ns` is the host monotonic clock then. */
  | { type: "ready"; vcpu: number; thread: number; run: SharedArrayBuffer; ns: number }
  | { type: "metric-names"; segment: number; names: Array<[string, number]> }
  /** `values`: every counter of the registry at the marker (copyValues), for per-interval metrics. */
  | { type: "marker"; vcpu: number; id: number; ns: number; values: Float64Array }
  | { type: "device-error"; vcpu: number; device: string; message: string }
  | { type: "stopped"; vcpu: number; reason: StopReason; code?: number; message?: string }
  /** The answer to a save request (CONTROL.save) while paused: the vCPU's KVM state, or why it could not be read. */
  | { type: "vcpu-state"; vcpu: number; seq: number; state?: VcpuState; error?: string }
  /** From a data-plane thread (src/io-thread/io-thread.ts). */
  | { type: "io-ready"; name: string }
  | { type: "io-stopped"; name: string; message?: string };

/**
 * Int32 slots of the control SharedArrayBuffer shared by the main thread and every vCPU worker.
 * stop: 1 once a stop is requested. pause: 1 while the VM is to stay paused (vCPUs wait on this slot).
 * paused: how many vCPUs are parked in their pause wait right now. save: bumped by the main thread to ask every
 * parked vCPU for its KVM state (a "vcpu-state" message with the new value as seq), then the pause slot notified.
 */
export const CONTROL = { stop: 0, pause: 1, paused: 2, save: 3, slots: 4 } as const;
