/**
 * A snapshot directory (docs/snapshot.md): DIR/state, the state file, and DIR/memory, guest RAM written sparsely.
 * loadSnapshot reads and checks all of the state file before anything is built: `vireo run --restore` refuses a
 * file of another version, a corrupted or a hand-made wrong one here, before KVM is opened and before any vCPU runs.
 */
import { join } from "node:path";
import { VireoError } from "../../errors.ts";
import type { VcpuState, VmState } from "../../kvm/state.ts";
import { SnapshotRestoreError } from "./components.ts";
import {
  type Extents,
  readMachineSection,
  readMemorySection,
  readVcpuSection,
  readVmSection,
  type SavedMachine,
} from "./kvm-sections.ts";
import { readStateFile, type StateFile, type StateSection, section } from "./state-file.ts";

export const STATE_FILE_NAME = "state";
export const MEMORY_FILE_NAME = "memory";
/** Section names of the machine's own parts; every other section is a device's. */
export const SECTION = { machine: "machine", memory: "memory", kvm: "kvm" } as const;
export const vcpuSectionName = (i: number) => `vcpu-${i}`;

export interface RestorePlan {
  dir: string;
  machine: SavedMachine;
  extents: Extents;
  vm: VmState;
  vcpus: VcpuState[];
  /** The device sections only, for restoreComponents. */
  devices: StateFile;
}

function isMachinePart(name: string): boolean {
  return Object.values(SECTION).includes(name as never) || /^vcpu-\d+$/.test(name);
}

export function loadSnapshot(dir: string, maxCpus: number): RestorePlan {
  let file: StateFile;
  try {
    file = readStateFile(join(dir, STATE_FILE_NAME));
  } catch (e) {
    if (e instanceof VireoError) throw e;
    throw new VireoError(
      "VIREO_SNAPSHOT_MISSING",
      `cannot read the state file in ${dir}: ${(e as Error).message}`,
    );
  }
  return planFromStateFile(file, dir, maxCpus);
}

/**
 * Checks every machine section of a decoded state file (a snapshot's, or one that came over a migration stream)
 * and splits it into what Machine.run restores. `dir` is where the memory file is (unused for a migration).
 */
export function planFromStateFile(file: StateFile, dir: string, maxCpus: number): RestorePlan {
  const read = <T>(s: StateSection, f: (s: StateSection) => T): T => {
    try {
      return f(s);
    } catch (e) {
      if (!(e instanceof VireoError)) throw e;
      throw new SnapshotRestoreError(e.code, `state file section "${s.name}": ${e.message}`, s.name, {
        cause: e,
      });
    }
  };
  const machine = read(section(file, SECTION.machine), (s) => readMachineSection(s.name, s, maxCpus));
  const ramBytes = machine.memMiB * 1024 * 1024;
  const extents = read(section(file, SECTION.memory), (s) => readMemorySection(s.name, s, ramBytes));
  const vm = read(section(file, SECTION.kvm), (s) => readVmSection(s.name, s));
  const vcpus: VcpuState[] = [];
  for (let i = 0; i < machine.cpus; i++)
    vcpus.push(read(section(file, vcpuSectionName(i)), (s) => readVcpuSection(s.name, s)));
  const strayVcpu = file.sections.find(
    (s) => /^vcpu-\d+$/.test(s.name) && Number(s.name.slice(5)) >= machine.cpus,
  );
  if (strayVcpu)
    throw new SnapshotRestoreError(
      "VIREO_SNAPSHOT_MISMATCH",
      `the state file has ${strayVcpu.name} but its machine has ${machine.cpus} vCPU(s)`,
      strayVcpu.name,
    );
  return {
    dir,
    machine,
    extents,
    vm,
    vcpus,
    devices: { ...file, sections: file.sections.filter((s) => !isMachinePart(s.name)) },
  };
}
