/**
 * A vCPU's thread: creates the vCPU, then runs KVM_RUN and serves every exit right here, on this thread,
 * through the buses it built from the device manifest. It never returns to its event loop while running, so
 * the main thread controls it through shared memory (CONTROL) and a kick, never through messages.
 */
import { parentPort, workerData } from "node:worker_threads";
import { type EntrySelectors, longModeSregs } from "../arch/x86/long-mode.ts";
import { VirtioPciTransport } from "../devices/virtio/pci-transport.ts";
import { EXIT, EXIT_NAMES, KVM_EXIT_IO_OUT, RUN, SREGS, SYSTEM_EVENT } from "../kvm/abi.ts";
import {
  completeExit,
  restoreVcpuState,
  saveVcpuState,
  type VcpuState,
  type VcpuStateCaps,
} from "../kvm/state.ts";
import type { CpuidEntry } from "../kvm/system.ts";
import { EXIT_KICKED, EXIT_RETRY, putDtable, putSegment, Vcpu } from "../kvm/vcpu.ts";
import { Vm } from "../kvm/vm.ts";
import { DevicePageLog } from "../memory/device-page-log.ts";
import { GuestMemory } from "../memory/guest-memory.ts";
import { type Counter, copyValues, MetricsSegment } from "../metrics/registry.ts";
import { native } from "../native.ts";
import { DeferredWork } from "../shared/deferred-work.ts";
import { buildBuses, type DeviceSpec } from "./device-manifest.ts";
import { CONTROL, type StopReason, type WorkerMessage } from "./messages.ts";
import { buildPci, type PciManifest } from "./pci-devices.ts";

/** Register state of the boot vCPU at entry (64-bit mode, identity-mapped, GDT at GDT_ADDR). */
export interface BootState {
  rip: number;
  rsp: number;
  rdi: number;
  rsi: number;
  selectors: EntrySelectors;
}

export interface VcpuWorkerData {
  index: number;
  vmFd: number;
  mmapSize: number;
  cpuid: CpuidEntry[];
  /** Entry state for the boot vCPU; application processors wait for INIT/SIPI. */
  boot: BootState | null;
  /** A snapshot's state for this vCPU (vireo run --restore): set before the first KVM_RUN instead of `boot`. */
  restore: VcpuState | null;
  /** MSRs a snapshot saves (those of SNAPSHOT_MSRS this KVM lists), and which optional state KVM has. */
  msrIndices: number[];
  stateCaps: VcpuStateCaps;
  devices: DeviceSpec[];
  /** PCI devices (virtio), when the machine has any. */
  pci: PciManifest | null;
  /** Guest RAM, shared: devices doing DMA (virtio) read and write it from this thread. */
  ram: SharedArrayBuffer;
  /** Where the devices' writes to guest RAM are logged during a migration (src/memory/device-page-log.ts). */
  pageLog: SharedArrayBuffer;
  control: SharedArrayBuffer;
  metricsBuffer: SharedArrayBuffer;
  metricsSegment: number;
}

const data = workerData as VcpuWorkerData;
const port = parentPort;
if (!port) throw new Error("vcpu-worker must run as a worker thread");
const post = (m: WorkerMessage) => port.postMessage(m);

const control = new Int32Array(data.control);
const metrics = new MetricsSegment(data.metricsBuffer, data.metricsSegment);
let stop: { reason: StopReason; code?: number; message?: string } | null = null;

/**
 * While a device has work left for later (a spent work budget), the guest runs at most this long before the
 * vCPU thread comes back to it (a timer kick), even if the guest makes no exit.
 */
const DEFERRED_WORK_GAP_US = 500;

function flushMetricNames(): void {
  const names = metrics.drainNewNames();
  if (names.length) post({ type: "metric-names", segment: data.metricsSegment, names });
}

function main(): void {
  const vcpu = Vcpu.create(data.vmFd, data.index, data.mmapSize);
  vcpu.setCpuid(data.cpuid);
  if (data.restore) restoreVcpuState(vcpu.fd, data.restore);
  else if (data.boot) enterLongMode(vcpu, data.boot);

  const { pio, mmio } = buildBuses(data.devices, {
    vmFd: data.vmFd,
    metrics,
    onGuestExit: (code) => {
      stop = { reason: "guest-exit", code };
    },
    onPowerOff: () => {
      stop = { reason: "poweroff" };
    },
    onReset: () => {
      stop = { reason: "reset" };
    },
    onMarker: (id) => {
      const ns = Number(process.hrtime.bigint());
      post({ type: "marker", vcpu: data.index, id, ns, values: copyValues(data.metricsBuffer) });
    },
  });

  const mem = new GuestMemory(data.ram);
  mem.pageLog = new DevicePageLog(data.pageLog);
  const vm = Vm.fromFd(data.vmFd);
  const later = new DeferredWork();
  const pci = data.pci
    ? buildPci(data.pci, {
        mem,
        vmFd: data.vmFd,
        metrics,
        pio,
        mmio,
        signalMsi: (lo, hi, value) => {
          vm.signalMsi(lo, hi, value);
        },
        log: (message) => post({ type: "device-error", vcpu: data.index, device: "pci", message }),
        defer: later.add,
      })
    : null;

  if (data.restore !== null && data.index === 0 && pci !== null) {
    // A restored machine's virtio devices go on (docs/snapshot.md): each serves what its driver made available and
    // notified while the snapshot was taken (a kick still in an eventfd of the old process), here for devices served
    // on vCPU threads, and by a wake of its data-plane thread for the others (RemoteQueues.activate).
    for (const f of pci.functions) if (f instanceof VirtioPciTransport) f.device.activate();
  }

  const thread = native().threadRegister(vcpu.runBytes.subarray(RUN.immediate_exit, RUN.immediate_exit + 1));
  flushMetricNames();
  post({ type: "ready", vcpu: data.index, thread, run: vcpu.runBuffer, ns: Number(process.hrtime.bigint()) });

  const exitCounters = new Map<number, Counter>();
  const countExit = (reason: number) => {
    let c = exitCounters.get(reason);
    if (!c) {
      c = metrics.counter(`exits.${EXIT_NAMES[reason] ?? `reason${reason}`}`);
      exitCounters.set(reason, c);
      flushMetricNames();
    }
    c.add();
  };
  const run = vcpu.run;
  const bytes = vcpu.runBytes;
  const reportedDevices = new Set<string>();
  // Which unclaimed ports a guest pokes (e.g. a driver probing hardware vireo lacks): a counter per port for the
  // first 32 distinct ports, so a hostile guest cannot fill the metrics registry.
  const unclaimedPorts = new Map<number, Counter>();
  const countUnclaimedPort = (portNo: number, write: boolean) => {
    const key = portNo * 2 + (write ? 1 : 0);
    let c = unclaimedPorts.get(key);
    if (!c) {
      if (unclaimedPorts.size >= 64) return;
      c = metrics.counter(
        `pio.unclaimed.0x${portNo.toString(16).padStart(4, "0")}.${write ? "write" : "read"}`,
      );
      unclaimedPorts.set(key, c);
      flushMetricNames();
    }
    c.add();
  };
  const describeAccess = (kind: "pio" | "mmio") => {
    const addr =
      kind === "pio" ? run.getUint16(RUN.io_port, true) : Number(run.getBigUint64(RUN.mmio_phys_addr, true));
    const name = (kind === "pio" ? pio : mmio).deviceAt(addr)?.name ?? "unclaimed";
    return `${name} (${kind} 0x${addr.toString(16)})`;
  };

  // A save request (CONTROL.save bumped) is answered while parked: KVM's state is only consistent outside
  // KVM_RUN, and this thread is the one that runs the vCPU.
  let saveSeq = Atomics.load(control, CONTROL.save);
  const answerSave = () => {
    const seq = Atomics.load(control, CONTROL.save);
    if (seq === saveSeq) return;
    saveSeq = seq;
    try {
      completeExit(vcpu.fd, bytes, RUN.immediate_exit);
      post({
        type: "vcpu-state",
        vcpu: data.index,
        seq,
        state: saveVcpuState(vcpu.fd, data.msrIndices, data.stateCaps),
      });
    } catch (e) {
      post({ type: "vcpu-state", vcpu: data.index, seq, error: (e as Error).message });
    }
  };

  while (stop === null) {
    if (Atomics.load(control, CONTROL.stop) !== 0) {
      stop = { reason: "stop-requested" };
      break;
    }
    if (Atomics.load(control, CONTROL.pause) !== 0) {
      // Paused (the control API): first finish the device work this thread left for later (a request served in
      // slices), so a snapshot finds no request half done, then park outside KVM_RUN until resumed or stopped.
      // Each slice is bounded and the guest adds nothing meanwhile; a stop ends the draining too.
      while (later.pending && Atomics.load(control, CONTROL.stop) === 0) {
        later.runOnce((e) => {
          metrics.counter("vmm.device_errors").add();
          post({ type: "device-error", vcpu: data.index, device: "deferred", message: (e as Error).message });
        });
      }
      if (Atomics.load(control, CONTROL.stop) !== 0) continue;
      // A stop notifies this slot too.
      Atomics.add(control, CONTROL.paused, 1);
      while (Atomics.load(control, CONTROL.pause) !== 0 && Atomics.load(control, CONTROL.stop) === 0) {
        answerSave();
        Atomics.wait(control, CONTROL.pause, 1, 1000);
      }
      Atomics.sub(control, CONTROL.paused, 1);
      continue;
    }
    if (later.pending) {
      // One slice of each device's leftover work per guest entry, and a kick to come back if the guest makes
      // no exit meanwhile (a guest waiting for the completion of that very work makes none).
      later.runOnce((e) => {
        metrics.counter("vmm.device_errors").add();
        post({ type: "device-error", vcpu: data.index, device: "deferred", message: (e as Error).message });
      });
      if (later.pending) native().threadKickAfter(thread, DEFERRED_WORK_GAP_US);
    }
    const reason = vcpu.enter();
    if (reason === EXIT_KICKED || reason === EXIT_RETRY) continue;
    countExit(reason);
    try {
      // Another vCPU may have moved a BAR: one atomic load when nothing changed.
      pci?.bus.syncBars();
      switch (reason) {
        case EXIT.IO: {
          const size = bytes[RUN.io_size] ?? 1;
          const portNo = run.getUint16(RUN.io_port, true);
          const count = run.getUint32(RUN.io_count, true);
          const base = Number(run.getBigUint64(RUN.io_data_offset, true));
          const out = bytes[RUN.io_direction] === KVM_EXIT_IO_OUT;
          // A `rep ins/outs` arrives as `count` accesses of `size` bytes, back to back.
          let claimed = true;
          for (let i = 0; i < count; i++) {
            const access = bytes.subarray(base + i * size, base + (i + 1) * size);
            claimed = out ? pio.write(portNo, access) : pio.read(portNo, access);
          }
          if (!claimed) countUnclaimedPort(portNo, out);
          break;
        }
        case EXIT.MMIO: {
          const addr = Number(run.getBigUint64(RUN.mmio_phys_addr, true));
          const len = run.getUint32(RUN.mmio_len, true);
          const access = bytes.subarray(RUN.mmio_data, RUN.mmio_data + Math.min(len, 8));
          if (bytes[RUN.mmio_is_write]) mmio.write(addr, access);
          else mmio.read(addr, access);
          break;
        }
        case EXIT.HLT:
          stop = { reason: "halted", message: "the guest executed HLT with no way to wake" };
          break;
        case EXIT.SHUTDOWN:
          stop = { reason: "shutdown", message: "the guest triple-faulted (KVM_EXIT_SHUTDOWN)" };
          break;
        case EXIT.SYSTEM_EVENT: {
          const type = run.getUint32(RUN.system_event_type, true);
          const what =
            type === SYSTEM_EVENT.SHUTDOWN
              ? "shutdown"
              : type === SYSTEM_EVENT.RESET
                ? "reset"
                : `event ${type}`;
          stop = { reason: "system-event", message: `the guest requested ${what}` };
          break;
        }
        case EXIT.FAIL_ENTRY: {
          const hw = run.getBigUint64(RUN.fail_entry_reason, true);
          stop = {
            reason: "error",
            message: `KVM could not enter the guest (hardware entry failure reason 0x${hw.toString(16)})`,
          };
          break;
        }
        case EXIT.INTERNAL_ERROR: {
          const sub = run.getUint32(RUN.internal_suberror, true);
          const n = Math.min(run.getUint32(RUN.internal_ndata, true), 16);
          const extra = Array.from(
            { length: n },
            (_, i) => `0x${run.getBigUint64(RUN.internal_data + 8 * i, true).toString(16)}`,
          );
          stop = {
            reason: "error",
            message: `KVM internal error, suberror ${sub}${n ? ` (data ${extra.join(" ")})` : ""}`,
          };
          break;
        }
        case EXIT.INTR:
          break;
        default:
          stop = {
            reason: "error",
            message: `unhandled KVM exit reason ${reason} (${EXIT_NAMES[reason] ?? "unknown"})`,
          };
      }
    } catch (e) {
      // A device failing on one access must not take the VM down: report it once per device and go on.
      const device = describeAccess(reason === EXIT.IO ? "pio" : "mmio");
      metrics.counter("vmm.device_errors").add();
      if (!reportedDevices.has(device)) {
        reportedDevices.add(device);
        post({ type: "device-error", vcpu: data.index, device, message: (e as Error).message });
      }
    }
  }
  flushMetricNames();
  post({ type: "stopped", vcpu: data.index, ...stop });
  native().threadUnregister(thread);
  vcpu.close();
}

function enterLongMode(vcpu: Vcpu, boot: BootState): void {
  const s = longModeSregs(boot.selectors);
  const sregs = vcpu.getSregs();
  putSegment(sregs, "cs", s.cs);
  for (const seg of ["ds", "es", "fs", "gs", "ss"] as const) putSegment(sregs, seg, s.data);
  putDtable(sregs, SREGS.gdt, s.gdt);
  putDtable(sregs, SREGS.idt, s.idt);
  sregs.setBigUint64(SREGS.cr0, s.cr0, true);
  sregs.setBigUint64(SREGS.cr3, s.cr3, true);
  sregs.setBigUint64(SREGS.cr4, s.cr4, true);
  sregs.setBigUint64(SREGS.efer, s.efer, true);
  vcpu.setSregs(sregs);
  vcpu.setRegs({
    rip: BigInt(boot.rip),
    rsp: BigInt(boot.rsp),
    rdi: BigInt(boot.rdi),
    rsi: BigInt(boot.rsi),
    rflags: 2n,
  });
}

try {
  main();
} catch (e) {
  flushMetricNames();
  post({ type: "stopped", vcpu: data.index, reason: "error", message: (e as Error).message });
}
