/**
 * Attaching a device to its state in shared memory (the pattern of every legacy device: one SharedArrayBuffer,
 * reset once, a magic word saying it was, and a SharedLock inside). Each thread's instance calls this with the
 * same buffer; the checks give the same clear errors for every device.
 */
import { SharedLock } from "./shared-lock.ts";

export interface SharedStateSpec {
  /** The device's class name, for messages ("Uart16550"). */
  device: string;
  state: unknown;
  bytes: number;
  /** Byte offset of the Int32 magic word that a reset writes. */
  magicOffset: number;
  magic: number;
  /** Byte offset of the SharedLock's word. */
  lockOffset: number;
  /** Reset the state now (exactly one instance, or createState, does). */
  init?: boolean;
  reset(state: SharedArrayBuffer): void;
  /** The device's own error class, so codes stay per device. */
  error(message: string): Error;
}

export function attachSharedState(spec: SharedStateSpec): { view: DataView; lock: SharedLock } {
  const { state, device } = spec;
  if (!(state instanceof SharedArrayBuffer)) {
    throw spec.error(`${device}: state must be a SharedArrayBuffer (it is shared between threads)`);
  }
  if (state.byteLength < spec.bytes) {
    throw spec.error(`${device}: state has ${state.byteLength} bytes, needs ${spec.bytes}`);
  }
  if (spec.init) spec.reset(state);
  if (Atomics.load(new Int32Array(state, 0, spec.magicOffset / 4 + 1), spec.magicOffset / 4) !== spec.magic) {
    throw spec.error(`${device}: state is not initialised (use ${device}.createState() or init: true)`);
  }
  return { view: new DataView(state, 0, spec.bytes), lock: new SharedLock(state, spec.lockOffset) };
}
