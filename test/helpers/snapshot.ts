/**
 * Helpers for snapshot tests: a device state sent through a real state file (encode, decode) on its way from the
 * saved device to the restored one, so every round-trip test also checks the file carries the state unchanged.
 */
import type { DeviceState } from "../../src/shared/device-state.ts";
import { decodeStateFile, encodeStateFile } from "../../src/vmm/snapshot/state-file.ts";

/** `s` after a trip through a state file (as one section). */
export function throughFile(s: DeviceState, name = "device"): DeviceState {
  const file = decodeStateFile(encodeStateFile({ sections: [{ name, ...s }] }));
  const [only] = file.sections;
  if (only === undefined || file.sections.length !== 1) throw new Error("the state file lost its section");
  const { name: _name, ...state } = only;
  return state;
}

/** A deep copy of a state (byte arrays copied too), for tampering with one field. */
export function cloneState<T>(s: T): T {
  return structuredClone(s);
}
