/**
 * The KVM sections of a state file and the memory file, without KVM: struct bytes round-trip through a state file,
 * a hand-made section that is wrong anywhere is refused by name, and the memory file keeps zero pages as holes.
 */
import assert from "node:assert/strict";
import { closeSync, mkdtempSync, readFileSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { VireoError } from "../../src/errors.ts";
import { SIZEOF } from "../../src/kvm/abi.ts";
import { decodeMsrs, encodeMsrs, snapshotMsrs, type VcpuState } from "../../src/kvm/state.ts";
import { mapGuestRamFromFile } from "../../src/memory/guest-ram.ts";
import type { StateObject } from "../../src/shared/device-state.ts";
import {
  machineSection,
  memorySection,
  readMachineSection,
  readMemorySection,
  readVcpuSection,
  readVmSection,
  vcpuSection,
  vmSection,
} from "../../src/vmm/snapshot/kvm-sections.ts";
import {
  dataExtents,
  openMemoryFile,
  readMemoryFile,
  writeMemoryFile,
} from "../../src/vmm/snapshot/memory-file.ts";
import { loadSnapshot } from "../../src/vmm/snapshot/snapshot.ts";
import { decodeStateFile, encodeStateFile, writeStateFile } from "../../src/vmm/snapshot/state-file.ts";

const random = (n: number) => Uint8Array.from({ length: n }, (_, i) => (i * 37 + 11) & 0xff);

function vcpu(): VcpuState {
  return {
    regs: random(SIZEOF.kvm_regs),
    sregs: random(SIZEOF.kvm_sregs),
    fpu: random(SIZEOF.kvm_fpu),
    xsave: random(SIZEOF.kvm_xsave),
    xcrs: null,
    msrs: [
      { index: 0x10, value: 0x123456789abcdefn },
      { index: 0xc0000082, value: 0xffffffff81000000n },
    ],
    lapic: random(SIZEOF.kvm_lapic_state),
    events: random(SIZEOF.kvm_vcpu_events),
    mpState: 0,
  };
}

function chip(id: number): Uint8Array {
  const b = random(SIZEOF.kvm_irqchip);
  new DataView(b.buffer).setUint32(0, id, true);
  return b;
}

const throughFile = (name: string, s: ReturnType<typeof vcpuSection>) =>
  decodeStateFile(encodeStateFile({ sections: [{ name, ...s }] })).sections[0] as ReturnType<
    typeof vcpuSection
  >;

const NO_DEVICES = { disks: [], nets: [], rng: false, console: "serial" as const };

test("kvm_msrs encoding: nmsrs, then 16-byte entries of index, reserved, value", () => {
  const b = encodeMsrs([{ index: 0xc0000082, value: 0x1122334455667788n }]);
  assert.equal(b.length, SIZEOF.kvm_msrs + SIZEOF.kvm_msr_entry);
  assert.deepEqual([...b.subarray(0, 8)], [1, 0, 0, 0, 0, 0, 0, 0]);
  assert.deepEqual([...b.subarray(8, 12)], [0x82, 0, 0, 0xc0]);
  assert.deepEqual([...b.subarray(16, 24)], [0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]);
  assert.deepEqual(decodeMsrs(b, 1), [{ index: 0xc0000082, value: 0x1122334455667788n }]);
  assert.deepEqual(snapshotMsrs([0x3b, 0x10, 0xdead]), [0x10, 0x3b], "only known MSRs, TSC first");
});

test("vCPU, VM, machine and memory sections round-trip through a state file", () => {
  const v = vcpu();
  assert.deepEqual(readVcpuSection("vcpu-0", throughFile("vcpu-0", vcpuSection(v))), v);
  const vm = { picMaster: chip(0), picSlave: chip(1), ioapic: chip(2), pit: random(112), clock: random(48) };
  assert.deepEqual(readVmSection("kvm", throughFile("kvm", vmSection(vm))), vm);
  const m = {
    memMiB: 64,
    cpus: 2,
    kernel: "/k.elf",
    cmdline: "count",
    platform: "micro" as const,
    devices: {
      disks: [
        { path: "/srv/d.img", readOnly: false, direct: true, iothread: true, vhostUser: false },
        { path: "/run/blk.sock", readOnly: true, direct: false, iothread: false, vhostUser: true },
      ],
      nets: [
        { tap: "vireo0", mac: "02:76:69:0a:0b:00", model: "virtio" as const, vhostUser: "" },
        { tap: "tap-e", mac: "02:76:69:0a:0b:01", model: "e1000" as const, vhostUser: "" },
        { tap: "", mac: "02:76:69:0a:0b:02", model: "virtio" as const, vhostUser: "/run/net.sock" },
      ],
      rng: true,
      console: "virtio" as const,
    },
  };
  assert.deepEqual(readMachineSection("machine", throughFile("machine", machineSection(m)), 64), m);
  // A version 2 section (before vhost-user devices were saved) reads as one without them.
  const v2 = machineSection({
    ...m,
    devices: { ...m.devices, disks: m.devices.disks.slice(0, 1), nets: m.devices.nets.slice(0, 2) },
  });
  const strip = (list: unknown) => (list as StateObject[]).map(({ vhostUser: _, ...x }) => x);
  const d2 = v2.data.devices as StateObject;
  assert.deepEqual(
    readMachineSection(
      "machine",
      {
        ...v2,
        version: 2,
        data: { ...v2.data, devices: { ...d2, disks: strip(d2.disks), nets: strip(d2.nets) } },
      },
      64,
    ).devices,
    { ...m.devices, disks: m.devices.disks.slice(0, 1), nets: m.devices.nets.slice(0, 2) },
  );
  const ext: Array<[number, number]> = [
    [0, 8192],
    [65536, 4096],
  ];
  assert.deepEqual(
    readMemorySection("memory", throughFile("memory", memorySection(1 << 21, ext)), 1 << 21),
    ext,
  );
});

test("a section wrong anywhere is refused with the field named", () => {
  const refuse = (f: () => unknown, field: RegExp) =>
    assert.throws(f, (e: unknown) => e instanceof VireoError && field.test(e.message), field.source);
  const good = vcpuSection(vcpu());
  refuse(() => readVcpuSection("vcpu-0", { ...good, data: { ...good.data, regs: random(100) } }), /regs/);
  refuse(() => readVcpuSection("vcpu-0", { ...good, version: 2 }), /version/);
  refuse(() => readVcpuSection("vcpu-0", { ...good, data: { ...good.data, msrCount: 3 } }), /msrs/);
  const unknown = encodeMsrs([{ index: 0xc0000080, value: 0n }]).slice(8); // EFER: carried in sregs only
  refuse(
    () => readVcpuSection("vcpu-0", { ...good, data: { ...good.data, msrCount: 1, msrs: unknown } }),
    /0xc0000080/,
  );
  refuse(() => readVcpuSection("vcpu-0", { ...good, data: { ...good.data, mpState: 99 } }), /mpState/);
  const vm = vmSection({
    picMaster: chip(0),
    picSlave: chip(2),
    ioapic: chip(2),
    pit: random(112),
    clock: random(48),
  });
  refuse(() => readVmSection("kvm", vm), /picSlave/);
  const m = machineSection({
    memMiB: 64,
    cpus: 1,
    kernel: "k",
    cmdline: "",
    platform: "micro",
    devices: NO_DEVICES,
  });
  refuse(() => readMachineSection("machine", { ...m, data: { ...m.data, memMiB: 1 << 20 } }, 64), /memMiB/);
  refuse(() => readMachineSection("machine", { ...m, data: { ...m.data, platform: "arm" } }, 64), /platform/);
  const withDevices = (d: object) => ({ ...m, data: { ...m.data, devices: { ...NO_DEVICES, ...d } } });
  const disk = { path: "/d.img", readOnly: false, direct: false, iothread: false, vhostUser: false };
  const net = { tap: "t0", mac: "02:00:00:00:00:01", model: "virtio", vhostUser: "" };
  const vuNet = { ...net, tap: "", vhostUser: "/run/n.sock" };
  refuse(
    () => readMachineSection("machine", withDevices({ disks: [{ ...disk, vhostUser: 1 }] }), 64),
    /vhostUser/,
  );
  refuse(
    () =>
      readMachineSection(
        "machine",
        withDevices({ disks: [{ ...disk, vhostUser: true, path: `/${"s".repeat(107)}` }] }),
        64,
      ),
    /path/,
  );
  refuse(
    () => readMachineSection("machine", withDevices({ nets: [{ ...net, vhostUser: undefined }] }), 64),
    /vhostUser/,
  );
  refuse(
    () => readMachineSection("machine", withDevices({ nets: [{ ...vuNet, vhostUser: "n.sock" }] }), 64),
    /vhostUser/,
  );
  refuse(() => readMachineSection("machine", withDevices({ nets: [{ ...vuNet, tap: "t0" }] }), 64), /tap/);
  refuse(
    () => readMachineSection("machine", withDevices({ nets: [{ ...vuNet, model: "e1000" }] }), 64),
    /model/,
  );
  refuse(
    () => readMachineSection("machine", withDevices({ disks: [{ ...disk, path: "d.img" }] }), 64),
    /path/,
  );
  refuse(() => readMachineSection("machine", withDevices({ disks: [{ ...disk, direct: 1 }] }), 64), /direct/);
  refuse(() => readMachineSection("machine", withDevices({ disks: "x" }), 64), /disks/);
  refuse(() => readMachineSection("machine", withDevices({ disks: Array(32).fill(disk) }), 64), /disks/);
  refuse(() => readMachineSection("machine", withDevices({ nets: [{ ...net, tap: "a/b" }] }), 64), /tap/);
  refuse(
    () => readMachineSection("machine", withDevices({ nets: [{ ...net, tap: "x".repeat(16) }] }), 64),
    /tap/,
  );
  refuse(
    () => readMachineSection("machine", withDevices({ nets: [{ ...net, mac: "02:00:00:00:00" }] }), 64),
    /mac/,
  );
  refuse(
    () => readMachineSection("machine", withDevices({ nets: [{ ...net, model: "rtl8139" }] }), 64),
    /model/,
  );
  refuse(() => readMachineSection("machine", withDevices({ console: "tty" }), 64), /console/);
  refuse(() => readMachineSection("machine", { ...m, data: { ...m.data, devices: null } }, 64), /devices/);
  refuse(() => readMachineSection("machine", { ...m, version: 1 }, 64), /version/);
  for (const ext of [
    [
      [4096, 4096],
      [0, 4096],
    ],
    [[0, 100]],
    [[0, 1 << 22]],
    [[1 << 20, 0]],
    ["x"],
  ]) {
    refuse(
      () => readMemorySection("memory", memorySection(1 << 21, ext as Array<[number, number]>), 1 << 21),
      /memory/,
    );
  }
  refuse(() => readMemorySection("memory", memorySection(1 << 20, []), 1 << 21), /size/);
});

test("the memory file: zero pages are holes, data pages read back, a file of another size is refused", () => {
  const size = 8 << 20;
  const ram = new Uint8Array(new SharedArrayBuffer(size));
  ram[1] = 1;
  ram[4096 * 300 + 5] = 2;
  ram[4096 * 301] = 3;
  ram[size - 1] = 4;
  assert.deepEqual(dataExtents(ram), [
    [0, 4096],
    [4096 * 300, 8192],
    [size - 4096, 4096],
  ]);
  const dir = mkdtempSync(join(tmpdir(), "vireo-memfile-"));
  const path = join(dir, "memory");
  const w = writeMemoryFile(path, ram);
  assert.equal(w.bytesWritten, 4 * 4096);
  const st = statSync(path);
  assert.equal(st.size, size);
  assert.ok(st.blocks * 512 < size / 4, `the file takes ${st.blocks * 512} bytes of disk for ${size}`);
  const back = new Uint8Array(new SharedArrayBuffer(size));
  assert.equal(readMemoryFile(path, back, w.extents), 4 * 4096);
  assert.ok(Buffer.from(back).equals(Buffer.from(ram)));
  assert.throws(
    () => readMemoryFile(path, new Uint8Array(size * 2), w.extents),
    (e: unknown) => e instanceof VireoError && e.code === "VIREO_SNAPSHOT_MEMORY",
  );
});

test("a lazy restore's RAM: the memory file mapped private reads the file's pages; guest writes never reach the file, and a new snapshot into the same place leaves the mapped file whole", () => {
  const size = 4 << 20;
  const ram = new Uint8Array(new SharedArrayBuffer(size));
  for (let i = 0; i < size; i += 4096 * 3) ram[i + 7] = (i / 4096) & 0xff;
  const dir = mkdtempSync(join(tmpdir(), "vireo-lazy-"));
  const path = join(dir, "memory");
  writeMemoryFile(path, ram);
  const fd = openMemoryFile(path, size);
  const lazy = mapGuestRamFromFile(fd, 4);
  const view = new Uint8Array(lazy.buffer);
  assert.ok(Buffer.from(view).equals(Buffer.from(ram)), "the mapping shows the file");
  view[7] = 0xaa; // a guest write
  view[size - 1] = 0xbb;
  assert.equal(readFileSync(path)[7], 0, "the file is not written");
  // A snapshot of the lazily restored VM into the same place: a new file takes the name; the mapping keeps the old.
  writeMemoryFile(path, view);
  const again = readFileSync(path);
  assert.equal(again[7], 0xaa);
  assert.equal(again[size - 1], 0xbb);
  assert.equal(view[4096 * 3 + 7], 3, "pages not yet touched still come from the file that was mapped");
  assert.throws(
    () => openMemoryFile(path, size * 2),
    (e: unknown) => e instanceof VireoError && e.code === "VIREO_SNAPSHOT_MEMORY",
  );
  closeSync(fd);
});

test("loadSnapshot: a whole directory loads; a missing, stray or other-version section is refused with its code", () => {
  const machine = {
    memMiB: 2,
    cpus: 1,
    kernel: "k",
    cmdline: "count",
    platform: "micro" as const,
    devices: NO_DEVICES,
  };
  const vm = { picMaster: chip(0), picSlave: chip(1), ioapic: chip(2), pit: random(112), clock: random(48) };
  const base = [
    { name: "machine", ...machineSection(machine) },
    { name: "memory", ...memorySection(2 << 20, [[0, 4096]]) },
    { name: "kvm", ...vmSection(vm) },
    { name: "vcpu-0", ...vcpuSection(vcpu()) },
    { name: "com1", kind: "uart16550", version: 1, data: {} },
  ];
  const load = (sections: typeof base) => {
    const dir = mkdtempSync(join(tmpdir(), "vireo-snapdir-"));
    writeStateFile(join(dir, "state"), { sections });
    return loadSnapshot(dir, 64);
  };
  const plan = load(base);
  assert.deepEqual(plan.machine, machine);
  assert.deepEqual(plan.extents, [[0, 4096]]);
  assert.equal(plan.vcpus.length, 1);
  assert.deepEqual(
    plan.devices.sections.map((s) => s.name),
    ["com1"],
    "only device sections go to restoreComponents",
  );
  const code = (sections: typeof base, c: string) =>
    assert.throws(
      () => load(sections),
      (e: unknown) => e instanceof VireoError && e.code === c,
      c,
    );
  code(
    base.filter((s) => s.name !== "vcpu-0"),
    "VIREO_SNAPSHOT_MALFORMED",
  );
  code([...base, { name: "vcpu-1", ...vcpuSection(vcpu()) }], "VIREO_SNAPSHOT_MISMATCH");
  code(
    base.map((s) => (s.name === "kvm" ? { ...s, version: 9 } : s)),
    "VIREO_DEVICE_STATE_VERSION",
  );
  code(
    base.map((s) => (s.name === "machine" ? { ...s, data: { ...s.data, cpus: 0 } } : s)),
    "VIREO_DEVICE_STATE",
  );
  assert.throws(
    () => loadSnapshot(mkdtempSync(join(tmpdir(), "vireo-snapdir-")), 64),
    (e: unknown) => e instanceof VireoError && e.code === "VIREO_SNAPSHOT_MISSING",
  );
});
