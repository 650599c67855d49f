/**
 * A machine's device states in a state file: one section per component, named by the machine (its device
 * manifest: "com1", "rtc", "pci", "virtio-blk0", ...). Saving asks every component; restoring requires the file to
 * have exactly the machine's components (a file from a VM with other devices is refused, naming the difference)
 * and restores each into its fresh instance, an error naming its section.
 *
 * A restore that fails part-way leaves the devices restored so far in their new state: restores go into fresh
 * devices of a process whose vCPUs have not run, which then exits (docs/snapshot.md); nothing half-restored runs.
 */
import { VireoError } from "../../errors.ts";
import type { DeviceState } from "../../shared/device-state.ts";
import type { StateFile, StateSection } from "./state-file.ts";

/** What every snapshotted device has (legacy devices, PciBus, VirtioPciTransport, E1000Pci...). */
export interface Snapshottable {
  saveState(): DeviceState;
  restoreState(s: DeviceState): void;
}

/** A state file that does not fit this machine, or a section a device refused (its code kept). */
export class SnapshotRestoreError extends VireoError {
  readonly section: string | undefined;
  constructor(code: string, message: string, section?: string, options?: { cause?: unknown }) {
    super(code, message, options);
    this.section = section;
  }
}

export function saveComponents(components: Readonly<Record<string, Snapshottable>>): StateSection[] {
  return Object.entries(components).map(([name, c]) => ({ name, ...c.saveState() }));
}

export function restoreComponents(
  file: StateFile,
  components: Readonly<Record<string, Snapshottable>>,
): void {
  const names = new Set(Object.keys(components));
  const inFile = new Set(file.sections.map((s) => s.name));
  const missing = [...names].filter((n) => !inFile.has(n));
  const extra = [...inFile].filter((n) => !names.has(n));
  if (missing.length > 0 || extra.length > 0) {
    const parts = [];
    if (missing.length > 0) parts.push(`has no state for ${missing.join(", ")}`);
    if (extra.length > 0) parts.push(`has state for ${extra.join(", ")}, which this machine does not have`);
    throw new SnapshotRestoreError(
      "VIREO_SNAPSHOT_MISMATCH",
      `the state file does not fit this machine: it ${parts.join(" and ")}`,
    );
  }
  for (const s of file.sections) {
    const c = components[s.name] as Snapshottable;
    try {
      c.restoreState({ kind: s.kind, version: s.version, data: s.data });
    } catch (e) {
      if (!(e instanceof VireoError)) throw e;
      throw new SnapshotRestoreError(e.code, `state file section "${s.name}": ${e.message}`, s.name, {
        cause: e,
      });
    }
  }
}
