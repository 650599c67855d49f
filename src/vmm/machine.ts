/**
 * A machine's lifecycle, on the main thread: create the VM and its RAM, load the guest, start one worker per
 * vCPU, wait for the run to end, stop every vCPU, and collect metrics. The main thread serves no exits.
 */
import {
  closeSync,
  existsSync,
  fdatasyncSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  statSync,
} from "node:fs";
import { join, resolve } from "node:path";
import type { Worker } from "node:worker_threads";
import { vcpuCpuid } from "../arch/x86/cpuid.ts";
import { loadElf } from "../arch/x86/elf.ts";
import {
  fileLooksLikeBzImage,
  LINUX_SELECTORS,
  loadLinux,
  looksLikeBzImage,
} from "../arch/x86/linux-loader.ts";
import { BOOT_INFO_ADDR, SELECTOR, writeLongModeTables } from "../arch/x86/long-mode.ts";
import { Bus } from "../bus/bus.ts";
import { ACPI_SCI_IRQ, AcpiPm } from "../devices/legacy/acpi-pm.ts";
import { CmosRtc, RTC_IRQ } from "../devices/legacy/cmos-rtc.ts";
import { I8042, I8042_AUX_IRQ, I8042_KBD_IRQ } from "../devices/legacy/i8042.ts";
import { Uart16550 } from "../devices/legacy/uart16550.ts";
import type { VirtioConsole } from "../devices/virtio/console.ts";
import { ConfigError, VireoError } from "../errors.ts";
import { type IoThreads, startIoThreads } from "../io-thread/io-threads.ts";
import { RUN } from "../kvm/abi.ts";
import {
  msrIndexList,
  restoreVmState,
  saveVmState,
  snapshotMsrs,
  type VcpuState,
  vcpuStateCaps,
} from "../kvm/state.ts";
import { KvmSystem } from "../kvm/system.ts";
import { type MemorySlot, Vm } from "../kvm/vm.ts";
import { DevicePageLog } from "../memory/device-page-log.ts";
import { GuestMemory } from "../memory/guest-memory.ts";
import { allocateGuestRam, type GuestRam, guestRamBytes, mapGuestRamFromFile } from "../memory/guest-ram.ts";
import { MetricsRegistry, MetricsSegment } from "../metrics/registry.ts";
import { EFD_CLOEXEC, EFD_NONBLOCK, native, signalEventFd, takeEventFd } from "../native.ts";
import { type AnnounceTarget, announceNics } from "../net/announce.ts";
import { VHOST_F_LOG_ALL, VhostUserDirtyLog } from "../vhost-user/dirty-log.ts";
import { FRONTEND_WORDS } from "../vhost-user/frontend-device.ts";
import { PROTOCOL_F } from "../vhost-user/protocol.ts";
import {
  ApiError,
  type ApiServer,
  type MigrateRequest,
  type SnapshotResult,
  startApiServer,
  type VmInfo,
  type VmState,
} from "./api-server.ts";
import { awaitThreadsStopped, describeLateStop, type StoppingThread } from "./bounded-stop.ts";
import { type DeviceSpec, defaultDevices } from "./device-manifest.ts";
import { kvmIrqLine } from "./irq.ts";
import { CONTROL, type StopReason, type WorkerMessage } from "./messages.ts";
import { parseEndpoint } from "./migration/endpoint.ts";
import { ringPages } from "./migration/ring-pages.ts";
import {
  DEFAULT_DOWNTIME_MS,
  DEFAULT_MAX_ROUNDS,
  type MigrationResult,
  type MigrationSource,
  migrate,
} from "./migration/source.ts";
import {
  type BuiltPci,
  type DiskConfig,
  defaultMac,
  isVhostUser,
  type NetConfig,
  type PciManifest,
  preparePci,
  transportFor,
} from "./pci-devices.ts";
import { platformAcpi } from "./platform.ts";
import { restoreComponents, type Snapshottable, saveComponents } from "./snapshot/components.ts";
import {
  machineSection,
  memorySection,
  type SavedDevices,
  vcpuSection,
  vmSection,
} from "./snapshot/kvm-sections.ts";
import { openMemoryFile, readMemoryFile, writeMemoryFile } from "./snapshot/memory-file.ts";
import {
  MEMORY_FILE_NAME,
  type RestorePlan,
  SECTION,
  STATE_FILE_NAME,
  vcpuSectionName,
} from "./snapshot/snapshot.ts";
import { type StateSection, writeStateFile } from "./snapshot/state-file.ts";
import { startTsWorker } from "./ts-worker.ts";
import type { BootState, VcpuWorkerData } from "./vcpu-worker.ts";

export type SerialConfig = { kind: "stdio" } | { kind: "none" } | { kind: "file"; path: string };

export interface MachineConfig {
  memMiB: number;
  cpus: number;
  /** Path of a freestanding ELF64 guest (docs/guest-abi.md). */
  kernel: string;
  cmdline: string;
  serial: SerialConfig;
  /** Feed host stdin to the UART (only with serial stdio). */
  stdin?: boolean;
  /** An initramfs for a Linux bzImage kernel. */
  initrd?: string;
  /** Boot a stock kernel even on PVM, where it is extremely slow. */
  force?: boolean;
  /** virtio-blk disks on the PCI bus. */
  disks?: DiskConfig[];
  /** A virtio-rng device on the PCI bus. */
  rng?: boolean;
  /** Where terminal input goes: COM1 (default) or a virtio-console on the PCI bus (output goes to --serial's target). */
  console?: "serial" | "virtio";
  /** Network cards on the PCI bus, each with its own data-plane thread. */
  nets?: NetConfig[];
  /** Print exit and interrupt rates to stderr at this interval while the guest runs. */
  statsIntervalMs?: number;
  timeoutMs?: number;
  /** Test-device plumbing for benchmarks and tests of KVM's in-kernel paths (docs/guest-abi.md). */
  testDevice?: TestDevicePlumbing;
  /** Serve the control API (src/vmm/api-server.ts) on this Unix socket while the VM runs. */
  apiSocket?: string;
  /**
   * Resume a snapshot (vireo run --restore) instead of loading `kernel`: memory, devices, irqchip, PIT, clock and
   * vCPUs from the plan, which loadSnapshot checked whole. memMiB and cpus must be the plan's.
   */
  restore?: RestorePlan;
  /**
   * With `restore`: the plan came over a migration stream (vireo run --incoming), and guest RAM is already filled
   * (the stream's pages); it is used as it is, no memory file is read.
   */
  incoming?: { ram: GuestRam; onStarted(): void };
  /**
   * With `restore`: map the memory file private instead of reading it (vireo run --restore DIR --lazy), so the
   * restore does not wait for RAM; the file must stay as it is while the VM runs.
   */
  lazyRestore?: boolean;
  /** With `restore`: called when the restored vCPUs are let go (ms since run() began, RAM bytes read). */
  onRestored?(restoreMs: number, bytesRead: number | undefined): void;
}

export interface TestDevicePlumbing {
  /** Serve writes to the count register (offset 4) of both windows with ioeventfds: no exit to vireo. */
  doorbellIoeventfd?: boolean;
  /** Deliver the test device's IRQ through an irqfd instead of KVM_IRQ_LINE. */
  irqfd?: boolean;
}

/** "migrated": the VM went to another vireo (Machine.migrate), which runs it now. */
export type Outcome = StopReason | "timeout" | "migrated";

export interface RunResult {
  outcome: Outcome;
  /** The status `vireo run` exits with (see EXIT_STATUS). */
  status: number;
  /** The guest's own exit code, when it ended through the debug-exit port. */
  guestCode?: number;
  message?: string;
  metrics: Record<string, number>;
  /** Test-device markers: id -> host monotonic nanoseconds. */
  markers: Map<number, number>;
  /** The metrics at each marker (as `metrics`), so a benchmark can count only what happened between two. */
  markerMetrics: Map<number, Record<string, number>>;
  /** Host monotonic nanoseconds when the boot vCPU first entered the guest. */
  vcpuStartNs?: number;
  deviceErrors: string[];
  wallMs: number;
  /** With --restore: milliseconds from the start of run() until the restored vCPUs were let go, and RAM bytes read. */
  restoreMs?: number;
  restoreBytesRead?: number;
  /**
   * Milliseconds from the first stop request (Ctrl-A x, --timeout, a signal, or a vCPU that stopped) until every
   * vCPU and data-plane thread had stopped. Device work is bounded per slice, so this stays short whatever the
   * guest keeps its devices doing.
   */
  stopMs?: number;
}

/** Statuses vireo uses for itself; a guest that exits through the debug port picks any 0-255. */
export const EXIT_STATUS = { vmmError: 125, timeout: 124, guestCrash: 123, stopped: 130 } as const;

export class GuestImageError extends VireoError {}

export const MAX_CPUS = 64;

/**
 * How long a stop waits for the vCPU and data-plane threads before ending them (bounded-stop.ts). They leave in
 * milliseconds natively; inside the emulated KVM host (QEMU TCG) everything is tens of times slower.
 */
export const STOP_GRACE_MS = (): number => (KvmSystem.hostKind() === "emulated" ? 30_000 : 10_000);

export function validateConfig(config: MachineConfig): void {
  if (!Number.isInteger(config.cpus) || config.cpus < 1 || config.cpus > MAX_CPUS)
    throw new ConfigError(`--cpus must be a whole number from 1 to ${MAX_CPUS}, got ${config.cpus}`);
  // A restored machine's image is in its memory file; the kernel path is only recorded.
  if (config.restore !== undefined) return;
  if (!existsSync(config.kernel))
    throw new GuestImageError("VIREO_KERNEL_MISSING", `kernel not found: ${config.kernel}`);
  if (!statSync(config.kernel).isFile())
    throw new GuestImageError("VIREO_KERNEL_MISSING", `kernel is not a file: ${config.kernel}`);
  for (const disk of config.disks ?? []) {
    // A vhost-user disk's path is the back-end's socket: preparePci connects to it.
    if (disk.vhostUser) continue;
    if (!existsSync(disk.path)) throw new ConfigError(`--disk ${disk.path}: no such file`);
    if (!statSync(disk.path).isFile())
      throw new ConfigError(`--disk ${disk.path}: not a regular file (raw images only)`);
  }
  if (config.initrd !== undefined) {
    if (!existsSync(config.initrd))
      throw new GuestImageError("VIREO_INITRD_MISSING", `initrd not found: ${config.initrd}`);
    if (!fileLooksLikeBzImage(config.kernel))
      throw new ConfigError("--initrd goes with a Linux bzImage kernel, not an ELF guest");
  }
}

export class Machine {
  private readonly config: MachineConfig;
  private readonly control = new SharedArrayBuffer(CONTROL.slots * 4);
  private readonly vcpus: Array<{ worker: Worker; thread?: number; run?: Uint8Array; exited?: boolean }> = [];
  private stopRequested = false;
  private paused = false;
  /** What the control API reads while the VM runs. */
  private live: { metrics: MetricsRegistry; started: number; devices: string[] } | null = null;
  /** performance.now() at the first requestStop. */
  private stopRequestedAt: number | undefined;
  /** STOP_GRACE_MS for this host. */
  private readonly stopGraceMs = STOP_GRACE_MS();
  /** What a snapshot needs of the running machine (set by run once the VM is built). */
  private snap: {
    vm: Vm;
    ram: Uint8Array;
    platform: "micro" | "pc";
    devices: Record<string, Snapshottable>;
    /** The PCI devices as `vireo run --restore` builds them again. */
    saved: SavedDevices;
    /** Devices a snapshot cannot take yet (vhost-net: the kernel serves its rings). */
    unsupported: string[];
    /** vhost-user devices whose back-ends cannot log their writes to guest RAM (no PROTOCOL_F_LOG_SHMFD). */
    unmigratable: string[];
    /** The dirty log the vhost-user back-ends mark during a migration, mapped here to be taken; null without any. */
    vhostLog: VhostUserDirtyLog | null;
    /** The data-plane threads, quiesced while a snapshot is taken. */
    io: IoThreads | null;
    /** Writable disk image descriptors: synced to the file before a snapshot or migration is saved. */
    diskFds: number[];
    /** Guest RAM's memory slot, and the log of the devices' writes to it (live migration). */
    slot: MemorySlot;
    pageLog: DevicePageLog;
  } | null = null;
  /** Where the VM went (a migration the destination took): the run then ends with outcome "migrated". */
  private migratedTo: string | null = null;
  private snapshotting = false;
  /** The vCPU states of a save request in progress (CONTROL.save). */
  private saveWait: {
    seq: number;
    states: Array<VcpuState | undefined>;
    got: number;
    resolve(states: VcpuState[]): void;
    reject(e: Error): void;
  } | null = null;

  constructor(config: MachineConfig) {
    this.config = config;
  }

  /**
   * Everything `run` checks before it needs KVM: the options, the files, and that the guest image loads into RAM
   * of the configured size (into scratch memory here). `vireo run` calls it before choosing where to run, so bad
   * input gets its one-line error on any host, with or without KVM.
   */
  static check(config: MachineConfig): void {
    validateConfig(config);
    const size = guestRamBytes(config.memMiB);
    new Machine(config).loadGuest(
      new GuestMemory(new SharedArrayBuffer(size)),
      readFileSync(config.kernel),
      size,
    );
  }

  /** Ask every vCPU to leave KVM_RUN and stop (from any point of the run). */
  requestStop(): void {
    this.stopRequested = true;
    this.stopRequestedAt ??= performance.now();
    const control = new Int32Array(this.control);
    Atomics.store(control, CONTROL.stop, 1);
    // A paused vCPU waits on the pause slot: wake it to see the stop.
    Atomics.notify(control, CONTROL.pause);
    this.kickVcpus();
  }

  /** Makes every vCPU in KVM_RUN leave it now (immediate_exit covers a kick landing just before entry). */
  private kickVcpus(): void {
    for (const v of this.vcpus) {
      if (v.run && v.thread !== undefined) {
        v.run[RUN.immediate_exit] = 1;
        native().threadKick(v.thread);
      }
    }
  }

  get state(): VmState {
    if (this.stopRequested) return "stopping";
    if (this.live === null) return "starting";
    return this.paused ? "paused" : "running";
  }

  /**
   * Parks every vCPU outside KVM_RUN; resolves when all of them wait. Data-plane threads go on serving what
   * the guest already queued (a pause stops the guest, not the devices' in-flight work).
   */
  async pause(timeoutMs = 5000): Promise<void> {
    if (this.state !== "running")
      throw new ApiError(409, "VIREO_API_STATE", `cannot pause a VM that is ${this.state}`);
    const control = new Int32Array(this.control);
    this.paused = true;
    Atomics.store(control, CONTROL.pause, 1);
    this.kickVcpus();
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const alive = this.vcpus.filter((v) => !v.exited).length;
      if (Atomics.load(control, CONTROL.paused) >= alive) return;
      if (this.stopRequested) throw new ApiError(409, "VIREO_API_STATE", "the VM is stopping");
      if (performance.now() > deadline) {
        this.resume();
        throw new ApiError(504, "VIREO_API_PAUSE_TIMEOUT", `the vCPUs did not pause within ${timeoutMs} ms`);
      }
      await new Promise((r) => setTimeout(r, 1));
    }
  }

  resume(): void {
    if (this.state === "running") throw new ApiError(409, "VIREO_API_STATE", "the VM is not paused");
    if (this.state !== "paused")
      throw new ApiError(409, "VIREO_API_STATE", `cannot resume a VM that is ${this.state}`);
    const control = new Int32Array(this.control);
    this.paused = false;
    Atomics.store(control, CONTROL.pause, 0);
    Atomics.notify(control, CONTROL.pause);
  }

  info(): VmInfo {
    return {
      state: this.state,
      cpus: this.config.cpus,
      memMiB: this.config.memMiB,
      kernel: this.config.kernel,
      cmdline: this.config.cmdline,
      uptimeMs: this.live ? Math.round(performance.now() - this.live.started) : 0,
      devices: this.live?.devices ?? [],
      host: KvmSystem.hostKind(),
      pid: process.pid,
    };
  }

  async run(): Promise<RunResult> {
    const started = performance.now();
    const config = this.config;
    validateConfig(config);
    const image = config.restore ? null : readFileSync(config.kernel);
    const metrics = new MetricsRegistry();
    const mainSegment = metrics.allocateSegment();
    const mainMetrics = new MetricsSegment(metrics.shared, mainSegment);
    let system: KvmSystem | undefined;
    let vm: Vm | undefined;
    let serialFd: number | null = null;
    let closeSerial = false;
    const cleanups: Array<() => void> = [];
    try {
      // The guest is loaded before /dev/kvm is opened, so a bad image gets its own error on any host.
      const plan = config.restore;
      // A lazy restore maps the memory file private: pages come in as they are touched, nothing is read now.
      const lazy = plan !== undefined && config.incoming === undefined && config.lazyRestore === true;
      const ram =
        config.incoming?.ram ??
        (lazy
          ? mapGuestRamFromFile(
              openMemoryFile(join((plan as RestorePlan).dir, MEMORY_FILE_NAME), guestRamBytes(config.memMiB)),
              config.memMiB,
            )
          : allocateGuestRam(config.memMiB));
      cleanups.push(() => closeSync(ram.fd));
      // The devices' writes to guest RAM, logged while a migration runs (every thread's GuestMemory marks here).
      const pageLogBuffer = DevicePageLog.create(ram.size);
      const pageLog = new DevicePageLog(pageLogBuffer);
      ram.memory.pageLog = pageLog;
      let restoreBytesRead: number | undefined = lazy ? 0 : undefined;
      if (plan && !config.incoming && !lazy) {
        restoreBytesRead = readMemoryFile(
          join(plan.dir, MEMORY_FILE_NAME),
          new Uint8Array(ram.buffer),
          plan.extents,
        );
      }
      const boot = plan ? null : this.loadGuest(ram.memory, image as Buffer, ram.size);
      const platform = plan ? plan.machine.platform : (boot as { platform: "micro" | "pc" }).platform;

      system = KvmSystem.open();
      vm = Vm.create(system);
      vm.setTssAddr();
      vm.setIdentityMapAddr();
      vm.createIrqchip();
      vm.createPit();
      vm.setGsiRouting(Vm.pcIrqchipRoutes(), []);
      const slot = { slot: 0, guestPhysAddr: 0, size: ram.size, userspaceAddr: ram.hostAddress };
      vm.setUserMemoryRegion(slot);

      if (config.serial.kind === "stdio") serialFd = 1;
      else if (config.serial.kind === "file") {
        serialFd = openSync(config.serial.path, "w");
        closeSerial = true;
      }
      const devices = defaultDevices({ outputFd: serialFd, platform, memSize: ram.size });
      const readDoorbells = this.plumbTestDevice(vm, devices, cleanups);
      let pci: PciManifest | null = null;
      let firmware: BuiltPci | null = null;
      // A NIC's MAC is chosen here when not given, so that a snapshot records the one the guest sees.
      const nets = (config.nets ?? []).map((n, i) =>
        n.mac !== undefined ? n : { ...n, mac: defaultMac(i) },
      );
      if (hasPci(config)) {
        const vmForMsi = vm;
        const prepared = preparePci(
          {
            disks: config.disks ?? [],
            rng: config.rng === true,
            nets,
            console: config.console === "virtio" ? { outputFd: serialFd } : undefined,
            ram: { fd: ram.fd, size: ram.size, hostAddress: ram.hostAddress },
          },
          {
            mem: ram.memory,
            vmFd: vm.fd,
            pio: new Bus("pio"),
            mmio: new Bus("mmio"),
            signalMsi: (lo, hi, data) => {
              vmForMsi.signalMsi(lo, hi, data);
            },
          },
        );
        cleanups.push(prepared.close);
        pci = prepared.manifest;
        firmware = prepared.firmware;
      }
      const supported = system.supportedCpuid();
      const mmapSize = system.vcpuMmapSize();
      const msrIndices = snapshotMsrs(msrIndexList(system.fd));
      const stateCaps = vcpuStateCaps(system.fd);
      const components = legacyComponents(devices, vm, mainMetrics);
      if (pci !== null && firmware !== null) {
        // The main thread's objects over the devices' shared state (the firmware's): saved and restored here.
        components.pci = firmware.bus;
        pci.devices.forEach((spec, i) => {
          components[spec.name] = firmware.functions[i] as Snapshottable;
        });
      }
      this.snap = {
        vm,
        ram: new Uint8Array(ram.buffer),
        platform,
        devices: components,
        saved: {
          // In the order the PCI slots were given (pci-devices.ts): a restore builds the same functions again.
          disks: (config.disks ?? []).map((d) => ({
            path: resolve(d.path),
            readOnly: d.readOnly,
            direct: d.direct,
            iothread: d.iothread === true,
            vhostUser: d.vhostUser === true,
          })),
          nets: nets
            .filter((n) => !n.vhost)
            .map((n) => ({
              tap: n.tap,
              mac: macText(n.mac as Uint8Array),
              model: n.model,
              vhostUser: n.vhostUser === undefined ? "" : resolve(n.vhostUser),
            })),
          rng: config.rng === true,
          console: config.console === "virtio" ? "virtio" : "serial",
        },
        unsupported: (pci?.devices ?? [])
          .filter((d) => d.kind === "vhost-net" || (d.kind === "virtio-net" && d.shm !== undefined))
          .map((d) => `${d.name} (${d.kind === "vhost-net" ? d.kind : "--net shm="})`),
        // A back-end that cannot log its writes to guest RAM (PROTOCOL_F_LOG_SHMFD, VHOST_F_LOG_ALL) cannot be
        // migrated live: its writes during the rounds would be lost.
        unmigratable: (pci?.devices ?? [])
          .filter(isVhostUser)
          .filter(
            (d) =>
              (d.protocolFeatures & (1n << BigInt(PROTOCOL_F.LOG_SHMFD))) === 0n ||
              (d.backendFeatures & (1n << BigInt(VHOST_F_LOG_ALL))) === 0n,
          )
          .map((d) => `${d.name} (${d.kind} on ${d.socket})`),
        vhostLog: vhostUserLog(pci),
        io: null,
        diskFds: (pci?.devices ?? []).flatMap((d) => (d.kind === "virtio-blk" && !d.readOnly ? [d.fd] : [])),
        slot,
        pageLog,
      };
      if (plan) {
        // docs/snapshot.md, restore order: memory (above), devices, then the in-kernel irqchip, PIT and clock
        // (which take the devices' line levels as saved), then each vCPU on its own thread before its first entry.
        restoreComponents(plan.devices, components);
        restoreVmState(vm.fd, plan.vm);
        // The vCPUs start parked and are let go together once every one has set its state (ready).
        this.paused = true;
        Atomics.store(new Int32Array(this.control), CONTROL.pause, 1);
      }
      let readyCount = 0;
      let restoreMs: number | undefined;

      const markers = new Map<number, number>();
      const markerValues = new Map<number, Float64Array>();
      let vcpuStartNs: number | undefined;
      const deviceErrors: string[] = [];
      let first: { reason: StopReason; code?: number; message?: string } | undefined;
      let timedOut = false;
      const onIoMessage = (m: WorkerMessage) => {
        if (m.type === "metric-names") metrics.addNames(m.segment, m.names);
        else if (m.type === "device-error") deviceErrors.push(`I/O thread: ${m.device}: ${m.message}`);
        else if (m.type === "io-stopped" && m.message !== undefined) {
          deviceErrors.push(`I/O thread ${m.name} failed: ${m.message}`);
          if (!first) first = { reason: "error", message: `I/O thread ${m.name} failed: ${m.message}` };
          this.requestStop();
        }
      };
      const io = pci
        ? await startIoThreads(pci, {
            vmFd: vm.fd,
            ram: ram.buffer,
            pageLog: pageLogBuffer,
            metrics,
            onMessage: onIoMessage,
          })
        : null;
      if (io) cleanups.push(() => io.close());
      this.snap.io = io;

      const stopped = awaitThreadsStopped(
        this.startVcpus({
          vm,
          devices,
          mmapSize,
          supported,
          boot,
          restore: plan?.vcpus ?? null,
          msrIndices,
          stateCaps,
          pci,
          ram: ram.buffer,
          pageLog: pageLogBuffer,
          metrics,
          onMessage: (m) => {
            if (m.type === "ready") {
              if (m.vcpu === 0) vcpuStartNs = m.ns;
              if (++readyCount === config.cpus && plan && !this.stopRequested) {
                restoreMs = performance.now() - started;
                config.incoming?.onStarted();
                config.onRestored?.(restoreMs, restoreBytesRead);
                // The guest's NICs are somewhere new (another host, TAP or bridge port): say so for them.
                if (pci) cleanups.push(this.announce(pci, nets, mainMetrics));
                this.paused = false;
                const control = new Int32Array(this.control);
                Atomics.store(control, CONTROL.pause, 0);
                Atomics.notify(control, CONTROL.pause);
              }
            } else if (m.type === "metric-names") metrics.addNames(m.segment, m.names);
            else if (m.type === "marker") {
              markers.set(m.id, m.ns);
              markerValues.set(m.id, m.values);
            } else if (m.type === "device-error")
              deviceErrors.push(`vCPU ${m.vcpu}: ${m.device}: ${m.message}`);
            else if (m.type === "stopped") {
              if (!first && m.reason !== "stop-requested")
                first = { reason: m.reason, code: m.code, message: m.message };
              this.requestStop();
            }
          },
        }),
        { graceMs: this.stopGraceMs, requestedAt: () => this.stopRequestedAt },
      );

      const stopInput =
        config.serial.kind === "stdio" && config.stdin
          ? this.attachStdin(this.inputSink(devices, pci, vm, ram.memory, mainMetrics))
          : () => {};
      cleanups.push(stopInput);
      const timer =
        config.timeoutMs !== undefined
          ? setTimeout(() => {
              timedOut = true;
              this.requestStop();
            }, config.timeoutMs)
          : undefined;
      const stats = config.statsIntervalMs ? this.startStats(metrics, config.statsIntervalMs) : undefined;
      this.live = { metrics, started, devices: describeDevices(devices, pci) };
      let api: ApiServer | undefined;
      if (config.apiSocket !== undefined) {
        try {
          api = await startApiServer(config.apiSocket, this, (line) => deviceErrors.push(line));
        } catch (e) {
          this.requestStop();
          await stopped;
          throw e;
        }
      }
      // `stopped` never rejects, so the server is always closed here, once, when every vCPU has stopped.
      const vcpusLate = await stopped;
      await api?.close();
      const ioLate = io ? await io.stop(this.stopGraceMs) : undefined;
      for (const late of [vcpusLate, ioLate]) {
        if (!late || late.terminated.length === 0) continue;
        // A thread that had to be ended is vireo's failure, whatever the guest did before (one line says so).
        const message = describeLateStop(late, this.stopGraceMs);
        first = {
          reason: "error",
          message: first?.message ? `${message}; before that: ${first.message}` : message,
        };
      }
      const stopMs =
        this.stopRequestedAt === undefined ? undefined : performance.now() - this.stopRequestedAt;
      if (timer) clearTimeout(timer);
      if (stats) clearInterval(stats);
      for (const [name, count] of readDoorbells()) mainMetrics.counter(name).add(count);
      metrics.addNames(mainSegment, mainMetrics.names());

      const outcome: Outcome =
        first?.reason ?? (timedOut ? "timeout" : this.migratedTo !== null ? "migrated" : "stop-requested");
      const status = exitStatus(outcome, first?.code);
      return {
        outcome,
        status,
        guestCode: outcome === "guest-exit" ? first?.code : undefined,
        message:
          outcome === "timeout"
            ? `the guest did not finish within ${config.timeoutMs} ms`
            : outcome === "migrated"
              ? `the VM migrated to ${this.migratedTo}`
              : first?.message,
        metrics: metrics.snapshot(),
        markers,
        markerMetrics: new Map([...markerValues].map(([id, values]) => [id, metrics.snapshot(values)])),
        vcpuStartNs,
        deviceErrors,
        wallMs: performance.now() - started,
        stopMs,
        restoreMs,
        restoreBytesRead,
      };
    } finally {
      this.snap = null;
      this.saveWait?.reject(new Error("the VM stopped"));
      for (const c of cleanups.reverse()) c();
      if (closeSerial && serialFd !== null) closeSync(serialFd);
      vm?.close();
      system?.close();
    }
  }

  /**
   * RARP announcements from every TAP-backed NIC's MAC after a restore or an incoming migration (src/net/
   * announce.ts); returns the cancel. A vhost-user NIC's thread asks its back-end to announce instead
   * (VHOST_USER_SEND_RARP, where the back-end offers PROTOCOL_F_RARP). vhost-net NICs are refused for snapshots.
   */
  private announce(pci: PciManifest, nets: readonly NetConfig[], m: MetricsSegment): () => void {
    for (const d of pci.devices) {
      if (d.kind !== "vhost-user-net") continue;
      Atomics.add(new Int32Array(d.block), FRONTEND_WORDS.announces, 1);
      signalEventFd(d.wake);
    }
    const targets: AnnounceTarget[] = [];
    pci.devices.forEach((d) => {
      if (d.kind !== "virtio-net" && d.kind !== "e1000") return;
      const mac = nets[Number(d.name.slice(3))]?.mac;
      // A NIC on a switch's shm port has no TAP to announce on (and is not snapshotted: see `unsupported`).
      if (mac && d.tap.fd >= 0) targets.push({ name: d.name, mac, fd: d.tap.fd, vnetHdr: d.tap.vnetHdr });
    });
    if (targets.length === 0) return () => {};
    return announceNics(targets, {
      log: (message) => process.stderr.write(`vireo: ${message}\n`),
      onFrame: (t) => m.counter(`net.${t.name}.announce_frames`).add(),
    });
  }

  // VmController (src/vmm/api-server.ts): the rest of it.
  metrics(): Record<string, number> {
    if (!this.live) throw new ApiError(409, "VIREO_API_STATE", "the VM has not started yet");
    return this.live.metrics.snapshot();
  }

  shutdown(): void {
    this.requestStop();
  }

  /**
   * Writes a snapshot to `path` (a directory, created if missing): DIR/memory, guest RAM with its zero pages as
   * holes, then DIR/state (written to a temporary name and renamed, so a state file is whole or absent). The
   * vCPUs are paused for all of it and resumed after, unless the VM was paused before or `paused` asks to stay.
   */
  /** Refuses a snapshot or migration the VM cannot take now (409), or returns what it needs. */
  private saveable(what: string): NonNullable<Machine["snap"]> {
    const snap = this.snap;
    if (snap === null || this.live === null || (this.state !== "running" && this.state !== "paused"))
      throw new ApiError(409, "VIREO_API_STATE", `cannot ${what} a VM that is ${this.state}`);
    if (snap.unsupported.length > 0)
      throw new ApiError(
        409,
        "VIREO_SNAPSHOT_UNSUPPORTED",
        `snapshots and migration of vhost-net devices and of NICs on a switch's shm port are not built yet: ${snap.unsupported.join(", ")} (docs/snapshot.md)`,
      );
    if (what === "migrate" && snap.unmigratable.length > 0)
      throw new ApiError(
        409,
        "VIREO_SNAPSHOT_UNSUPPORTED",
        `live migration needs every vhost-user back-end to log its writes to guest RAM (VHOST_USER_PROTOCOL_F_LOG_SHMFD and VHOST_F_LOG_ALL), and these do not: ${snap.unmigratable.join(", ")}; a snapshot and restore works (docs/migration.md)`,
      );
    if (this.snapshotting)
      throw new ApiError(409, "VIREO_API_BUSY", "a snapshot or migration is in progress already");
    return snap;
  }

  /**
   * Stops the guest and its devices and saves the machine (docs/snapshot.md, requests in flight): the vCPUs
   * pause (finishing their devices' leftover slices first), the data-plane threads finish theirs and take no more
   * work (kicks wait in their eventfds, frames in the TAP), then every vCPU's state, the devices (a busy one asked
   * again for a while) and the irqchip, PIT and clock. `thaw` undoes it; call it whatever happens.
   */
  private async freeze(
    snap: NonNullable<Machine["snap"]>,
    handOff = false,
  ): Promise<{
    sections: (memory: StateSection) => StateSection[];
    devices: StateSection[];
    pauseMs: number;
    vcpuStateMs: number;
    thaw(resume: boolean): void;
  }> {
    const t0 = performance.now();
    const wasPaused = this.paused;
    let quiesced = false;
    const thaw = (resume: boolean) => {
      if (quiesced) snap.io?.release();
      quiesced = false;
      if (!wasPaused && resume && this.state === "paused") this.resume();
    };
    try {
      if (!wasPaused) await this.pause();
      if (snap.io) {
        try {
          await snap.io.quiesce(QUIESCE_TIMEOUT_MS, { handOff });
          quiesced = true;
        } catch (e) {
          throw new ApiError(
            409,
            "VIREO_DEVICE_BUSY",
            `a device is busy, try again: ${(e as Error).message}`,
          );
        }
      }
      const tPaused = performance.now();
      const vcpus = await this.collectVcpuStates();
      const tVcpus = performance.now();
      const devices = await saveWhenQuiet(snap.devices);
      // Every write the guest was told is done goes to stable storage before the state says so: a restore or the
      // migration's destination may open the disk on another host (shared storage).
      for (const fd of snap.diskFds) fdatasyncSync(fd);
      const vmState = saveVmState(snap.vm.fd);
      const machine: StateSection = {
        name: SECTION.machine,
        ...machineSection({
          memMiB: this.config.memMiB,
          cpus: this.config.cpus,
          kernel: this.config.kernel,
          cmdline: this.config.cmdline,
          platform: snap.platform,
          devices: snap.saved,
        }),
      };
      return {
        sections: (memory) => [
          machine,
          memory,
          { name: SECTION.kvm, ...vmSection(vmState) },
          ...vcpus.map((v, i) => ({ name: vcpuSectionName(i), ...vcpuSection(v) })),
          ...devices,
        ],
        devices,
        pauseMs: round(tPaused - t0),
        vcpuStateMs: round(tVcpus - tPaused),
        thaw,
      };
    } catch (e) {
      thaw(true);
      throw e;
    }
  }

  async snapshot(req: { path: string; paused?: boolean }): Promise<SnapshotResult> {
    const snap = this.saveable("snapshot");
    this.snapshotting = true;
    const t0 = performance.now();
    const wasPaused = this.paused;
    let thaw = (_resume: boolean) => {};
    try {
      const frozen = await this.freeze(snap);
      thaw = frozen.thaw;
      const tSaved = performance.now();
      mkdirSync(req.path, { recursive: true });
      const memory = writeMemoryFile(join(req.path, MEMORY_FILE_NAME), snap.ram);
      const tMemory = performance.now();
      const statePath = join(req.path, STATE_FILE_NAME);
      const stateFileBytes = writeStateFile(`${statePath}.tmp`, {
        sections: frozen.sections({
          name: SECTION.memory,
          ...memorySection(snap.ram.byteLength, memory.extents),
        }),
      });
      renameSync(`${statePath}.tmp`, statePath);
      const done = performance.now();
      return {
        path: req.path,
        state: wasPaused || req.paused ? "paused" : "running",
        stateFileBytes,
        ramBytes: snap.ram.byteLength,
        memoryBytesWritten: memory.bytesWritten,
        memoryExtents: memory.extents.length,
        pauseMs: frozen.pauseMs,
        vcpuStateMs: frozen.vcpuStateMs,
        memoryMs: round(tMemory - tSaved),
        totalMs: round(done - t0),
      };
    } catch (e) {
      if (e instanceof ApiError) throw e;
      const code = e instanceof VireoError ? e.code : "VIREO_SNAPSHOT_FAILED";
      throw new ApiError(500, code, `snapshot to ${req.path} failed: ${(e as Error).message}`);
    } finally {
      this.snapshotting = false;
      thaw(!req.paused);
    }
  }

  /**
   * Live migration to a vireo started with `--incoming` (docs/migration.md): pre-copy rounds while the guest
   * runs, then the guest stopped, the last pages and the state sent; once the destination answers ok this VM
   * stops (vireo run exits 0, outcome "migrated"). On any failure before that the guest runs on here.
   */
  async migrate(req: MigrateRequest): Promise<MigrationResult> {
    const snap = this.saveable("migrate");
    const to = parseEndpoint(req.to);
    this.snapshotting = true;
    let thaw = (_resume: boolean) => {};
    try {
      const result = await migrate(
        to,
        {
          downtimeMs: req.downtimeMs ?? DEFAULT_DOWNTIME_MS,
          maxRounds: req.maxRounds ?? DEFAULT_MAX_ROUNDS,
          verify: req.verify === true,
          replyTimeoutMs: MIGRATION_REPLY_TIMEOUT_MS,
          log: (line) => process.stderr.write(`vireo: migration to ${req.to}: ${line}\n`),
        },
        {
          ram: snap.ram,
          vm: snap.vm,
          slot: snap.slot,
          pageLog: snap.pageLog,
          externalLog: vhostLogOf(snap),
          cpus: this.config.cpus,
          stop: async () => {
            // The vhost-user connections are handed off: the destination connects to the same back-ends.
            const frozen = await this.freeze(snap, true);
            thaw = frozen.thaw;
            return {
              sections: frozen.sections({ name: SECTION.memory, ...memorySection(snap.ram.byteLength, []) }),
              ringPages: ringPages(frozen.devices, snap.ram.byteLength),
            };
          },
          resume: () => thaw(true),
        },
      );
      this.migratedTo = result.to;
      // The destination runs the guest now. Stop once this answer is on its way to the client.
      setImmediate(() => this.requestStop());
      return result;
    } catch (e) {
      if (e instanceof ApiError) throw e;
      const code = e instanceof VireoError ? e.code : "VIREO_MIGRATION_FAILED";
      throw new ApiError(502, code, (e as Error).message);
    } finally {
      this.snapshotting = false;
    }
  }

  /** Asks every parked vCPU for its KVM state (CONTROL.save); resolves with them in vCPU order. */
  private collectVcpuStates(timeoutMs = 60_000): Promise<VcpuState[]> {
    const control = new Int32Array(this.control);
    if (this.vcpus.some((v) => v.exited))
      return Promise.reject(new ApiError(409, "VIREO_API_STATE", "a vCPU has stopped"));
    return new Promise<VcpuState[]>((resolve, reject) => {
      const timer = setTimeout(
        () =>
          fail(
            new ApiError(504, "VIREO_API_TIMEOUT", `the vCPUs' state did not come within ${timeoutMs} ms`),
          ),
        timeoutMs,
      );
      const fail = (e: Error) => {
        clearTimeout(timer);
        this.saveWait = null;
        reject(e);
      };
      this.saveWait = {
        seq: Atomics.add(control, CONTROL.save, 1) + 1,
        states: new Array(this.vcpus.length),
        got: 0,
        resolve: (states) => {
          clearTimeout(timer);
          this.saveWait = null;
          resolve(states);
        },
        reject: fail,
      };
      Atomics.notify(control, CONTROL.pause);
    });
  }

  private takeVcpuState(m: Extract<WorkerMessage, { type: "vcpu-state" }>): void {
    const w = this.saveWait;
    if (w === null || m.seq !== w.seq) return;
    if (m.error !== undefined || m.state === undefined) {
      w.reject(new VireoError("VIREO_SNAPSHOT_VCPU", `vCPU ${m.vcpu}: ${m.error ?? "no state"}`));
      return;
    }
    if (w.states[m.vcpu] === undefined) w.got++;
    w.states[m.vcpu] = m.state;
    if (w.got === w.states.length) w.resolve(w.states as VcpuState[]);
  }

  /** One stderr line per interval: exits per second by reason, interrupts, and totals, read live from shared memory. */
  private startStats(metrics: MetricsRegistry, intervalMs: number): NodeJS.Timeout {
    let last = metrics.snapshot();
    const started = performance.now();
    return setInterval(() => {
      const now = metrics.snapshot();
      const rate = (k: string) => ((now[k] ?? 0) - (last[k] ?? 0)) / (intervalMs / 1000);
      const exits = Object.keys(now).filter((k) => k.startsWith("exits."));
      const irqs = Object.keys(now).filter((k) => k.startsWith("irq."));
      const parts = exits.map((k) => `${k.slice(6)} ${rate(k).toFixed(0)}/s`);
      const irqRate = irqs.reduce((n, k) => n + rate(k), 0);
      const total = exits.reduce((n, k) => n + (now[k] ?? 0), 0);
      process.stderr.write(
        `vireo: ${((performance.now() - started) / 1000).toFixed(0)} s: exits ${parts.join(", ") || "none"}; irqs ${irqRate.toFixed(0)}/s; ${total} exits so far\n`,
      );
      last = now;
    }, intervalMs);
  }

  /** Optional ioeventfd doorbells and irqfd for the test device; returns a reader of the doorbell counts. */
  private plumbTestDevice(
    vm: Vm,
    devices: DeviceSpec[],
    cleanups: Array<() => void>,
  ): () => Array<[string, number]> {
    const plumbing = this.config.testDevice ?? {};
    const spec = devices.find((d) => d.kind === "test-device");
    if (spec?.kind !== "test-device") return () => [];
    const newEventFd = () => {
      const fd = native().eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
      cleanups.push(() => native().close(fd));
      return fd;
    };
    if (plumbing.irqfd) {
      spec.irqfd = newEventFd();
      vm.irqfd(spec.irqfd, spec.irq);
    }
    if (!plumbing.doorbellIoeventfd) return () => [];
    const pioFd = newEventFd();
    const mmioFd = newEventFd();
    vm.ioeventfd({ addr: spec.pioBase + 4, len: 4, fd: pioFd, pio: true });
    vm.ioeventfd({ addr: spec.mmioBase + 4, len: 4, fd: mmioFd, pio: false });
    return () => [
      ["ioeventfd.test-pio.signals", takeEventFd(pioFd)],
      ["ioeventfd.test-mmio.signals", takeEventFd(mmioFd)],
    ];
  }

  /** Puts the guest image in RAM: a bzImage by the Linux boot protocol, anything else as an ELF guest. */
  private loadGuest(
    mem: GuestMemory,
    image: Uint8Array,
    memSize: number,
  ): BootState & { platform: "micro" | "pc" } {
    const config = this.config;
    if (looksLikeBzImage(image)) {
      if (KvmSystem.isPvm() && !config.force) {
        throw new VireoError(
          "VIREO_PVM_SLOW",
          "this host's /dev/kvm is PVM (kvm_pvm): a stock kernel runs its supervisor code emulated, about 5 µs per instruction, and takes many minutes to boot; pass --force to run it anyway",
        );
      }
      const linux = loadLinux(mem, {
        kernel: image,
        initrd: config.initrd === undefined ? undefined : readFileSync(config.initrd),
        cmdline: config.cmdline,
        memSize,
        acpi: platformAcpi(config.cpus, { pci: hasPci(config) }),
      });
      return {
        rip: linux.entry,
        rsp: 0,
        rdi: 0,
        rsi: linux.bootParams,
        selectors: LINUX_SELECTORS,
        platform: "pc",
      };
    }
    if (config.initrd !== undefined)
      throw new ConfigError("--initrd goes with a Linux bzImage kernel, not an ELF guest");
    const { entry } = loadElf(mem, image);
    writeLongModeTables(mem, { memSize, cmdline: config.cmdline, cpus: config.cpus });
    return {
      rip: entry,
      rsp: Math.floor(memSize / 16) * 16,
      rdi: BOOT_INFO_ADDR,
      rsi: 0,
      selectors: { code: SELECTOR.code64, data: SELECTOR.data },
      platform: "micro",
    };
  }

  private startVcpus(o: {
    vm: Vm;
    devices: DeviceSpec[];
    mmapSize: number;
    supported: ReturnType<KvmSystem["supportedCpuid"]>;
    boot: BootState | null;
    restore: VcpuState[] | null;
    msrIndices: number[];
    stateCaps: ReturnType<typeof vcpuStateCaps>;
    pci: PciManifest | null;
    ram: SharedArrayBuffer;
    pageLog: SharedArrayBuffer;
    metrics: MetricsRegistry;
    onMessage(m: WorkerMessage): void;
  }): StoppingThread[] {
    const threads: StoppingThread[] = [];
    // Inside vireo's emulated host, a guest's XSETBV is not trapped (QEMU TCG's SVM): see CpuidPolicy.
    const policy = { hideXsave: KvmSystem.hostKind() === "emulated" };
    for (let index = 0; index < this.config.cpus; index++) {
      const workerData: VcpuWorkerData = {
        index,
        vmFd: o.vm.fd,
        mmapSize: o.mmapSize,
        cpuid: vcpuCpuid(o.supported, index, this.config.cpus, policy),
        boot: index === 0 ? o.boot : null,
        restore: o.restore?.[index] ?? null,
        msrIndices: o.msrIndices,
        stateCaps: o.stateCaps,
        devices: o.devices,
        pci: o.pci,
        ram: o.ram,
        pageLog: o.pageLog,
        control: this.control,
        metricsBuffer: o.metrics.shared,
        metricsSegment: o.metrics.allocateSegment(),
      };
      const worker = startTsWorker(new URL("./vcpu-worker.ts", import.meta.url), { workerData });
      const slot: { worker: Worker; thread?: number; run?: Uint8Array; exited?: boolean } = { worker };
      this.vcpus.push(slot);
      worker.on("message", (m: WorkerMessage) => {
        if (m.type === "ready") {
          slot.thread = m.thread;
          slot.run = new Uint8Array(m.run);
          if (this.stopRequested) this.requestStop();
        }
        if (m.type === "stopped") slot.exited = true;
        if (m.type === "vcpu-state") this.takeVcpuState(m);
        else o.onMessage(m);
      });
      threads.push({
        name: `vCPU ${index}`,
        terminate: () => worker.terminate(),
        ended: new Promise<void>((resolve) => {
          worker.on("error", (e) => {
            o.onMessage({
              type: "stopped",
              vcpu: index,
              reason: "error",
              message: `vCPU ${index} thread failed: ${e.message}`,
            });
            slot.exited = true;
            resolve();
          });
          worker.on("exit", () => {
            slot.exited = true;
            resolve();
          });
        }),
      });
    }
    return threads;
  }

  /**
   * Where terminal input goes: the main thread's own view of the device (COM1, or the virtio-console), over the
   * state the vCPU threads share. Returns how many bytes the device took.
   */
  private inputSink(
    devices: DeviceSpec[],
    pci: PciManifest | null,
    vm: Vm,
    mem: GuestMemory,
    metrics: MetricsSegment,
  ): ((bytes: Uint8Array) => number) | null {
    if (this.config.console === "virtio") {
      const spec = pci?.devices.find((d) => d.kind === "virtio-console");
      if (!spec) return null;
      const transport = transportFor(
        spec,
        {
          mem,
          vmFd: vm.fd,
          metrics,
          pio: new Bus("pio"),
          mmio: new Bus("mmio"),
          signalMsi: (lo, hi, data) => {
            vm.signalMsi(lo, hi, data);
          },
        },
        false,
      );
      const model = transport.device.model as VirtioConsole;
      return (bytes) => model.input(bytes);
    }
    const spec = devices.find((d) => d.kind === "uart16550");
    if (spec?.kind !== "uart16550") return null;
    const uart = new Uart16550({
      state: spec.state,
      name: spec.name,
      irq: kvmIrqLine(vm.fd, spec.irq, metrics),
      output: () => {},
      metrics,
    });
    return (bytes) => uart.receive(bytes);
  }

  /** Terminal input to the console device: bytes it cannot take yet wait here, so nothing typed is lost. */
  private attachStdin(sink: ((bytes: Uint8Array) => number) | null): () => void {
    if (sink === null) return () => {};
    let pending: Uint8Array = new Uint8Array(0);
    let retry: NodeJS.Timeout | undefined;
    const push = () => {
      retry = undefined;
      const taken = sink(pending);
      pending = pending.subarray(taken);
      if (pending.length) retry = setTimeout(push, 5);
    };
    const stdin = process.stdin;
    const raw = stdin.isTTY === true;
    // VIREO_CONSOLE_ESCAPE=1: input is a terminal one level out (vireo --accel emulated forwards it), so Ctrl-A x
    // is honoured although stdin here is not a TTY.
    const takeEscape = raw || process.env.VIREO_CONSOLE_ESCAPE === "1";
    let ctrlA = false;
    const onData = (chunk: Buffer) => {
      if (takeEscape) {
        // Ctrl-A x ends the run, as in other VMMs' consoles; Ctrl-A Ctrl-A sends one Ctrl-A.
        for (const byte of chunk) {
          if (ctrlA && byte === 0x78) {
            this.requestStop();
            return;
          }
          ctrlA = byte === 0x01 && !ctrlA;
        }
      }
      const merged = new Uint8Array(pending.length + chunk.length);
      merged.set(pending);
      merged.set(chunk, pending.length);
      pending = merged;
      if (!retry) push();
    };
    if (raw) stdin.setRawMode(true);
    stdin.on("data", onData);
    return () => {
      stdin.off("data", onData);
      if (raw) stdin.setRawMode(false);
      stdin.pause();
      if (retry) clearTimeout(retry);
    };
  }
}

/** How long a snapshot waits for the data-plane threads to finish the work they had started. */
const QUIESCE_TIMEOUT_MS = 5000;
/** How long the vhost-user back-ends get to start (or stop) logging their writes for a migration. */
const VHOST_LOG_TIMEOUT_MS = 10_000;

/** The machine's vhost-user dirty log (one memfd for all its back-ends, pci-devices.ts), mapped to be taken. */
function vhostUserLog(pci: PciManifest | null): VhostUserDirtyLog | null {
  const spec = pci?.devices.find(isVhostUser);
  if (!spec) return null;
  const { buffer } = native().mmap(spec.dirtyLog.fd, spec.dirtyLog.size, 0);
  return new VhostUserDirtyLog(new Uint8Array(buffer));
}

/** A migration's third log: the vhost-user back-ends', turned on and off through their threads. */
function vhostLogOf(snap: NonNullable<Machine["snap"]>): MigrationSource["externalLog"] {
  const log = snap.vhostLog;
  const io = snap.io;
  if (log === null || io === null) return undefined;
  return {
    start: async () => {
      log.take(() => {}); // marks left from an earlier migration that failed
      await io.setDirtyLogging(true, VHOST_LOG_TIMEOUT_MS);
    },
    take: (add) => log.take(add),
    stop: () => {
      void io.setDirtyLogging(false, VHOST_LOG_TIMEOUT_MS).catch(() => {});
    },
  };
}
/** How long a migration's source waits for the destination to build the machine and answer (TCG hosts are slow). */
const MIGRATION_REPLY_TIMEOUT_MS = 300_000;
/** How long a snapshot retries a device that says it is busy (a request another thread is finishing). */
const BUSY_RETRY_MS = 2000;

/**
 * Saves every component; a device with a request still half done (VIREO_DEVICE_BUSY: a thread is finishing it)
 * is asked again every few milliseconds for up to BUSY_RETRY_MS, then the snapshot is refused with 409.
 */
async function saveWhenQuiet(components: Record<string, Snapshottable>): Promise<StateSection[]> {
  const deadline = performance.now() + BUSY_RETRY_MS;
  for (;;) {
    try {
      return saveComponents(components);
    } catch (e) {
      if (!(e instanceof VireoError) || e.code !== "VIREO_DEVICE_BUSY") throw e;
      if (performance.now() > deadline)
        throw new ApiError(409, e.code, `a device is busy, try again: ${e.message}`);
      await new Promise((r) => setTimeout(r, 5));
    }
  }
}

function macText(mac: Uint8Array): string {
  return Array.from(mac, (b) => b.toString(16).padStart(2, "0")).join(":");
}

function hasPci(config: MachineConfig): boolean {
  return (
    (config.disks?.length ?? 0) > 0 ||
    config.rng === true ||
    (config.nets?.length ?? 0) > 0 ||
    config.console === "virtio"
  );
}

/** The status `vireo run` exits with for an outcome (see EXIT_STATUS and `vireo run --help`). */
export function exitStatus(outcome: Outcome, guestCode?: number): number {
  switch (outcome) {
    case "guest-exit":
      return guestCode ?? 0;
    case "poweroff":
    case "reset":
    case "migrated":
      return 0;
    case "timeout":
      return EXIT_STATUS.timeout;
    case "stop-requested":
      return EXIT_STATUS.stopped;
    case "shutdown":
    case "halted":
      return EXIT_STATUS.guestCrash;
    default:
      return EXIT_STATUS.vmmError;
  }
}

const round = (ms: number) => Math.round(ms * 10) / 10;

/**
 * The main thread's own objects over the legacy devices' shared state, by section name, for snapshots: saving
 * reads the state the vCPU threads' objects share; restoring writes it before any vCPU thread exists and drives
 * the devices' interrupt lines from what it restored. debug-exit and debugcon keep no state; the test device's
 * scratch registers and counts live in each vCPU thread's own object (a test fixture) and are not saved.
 */
function legacyComponents(
  devices: DeviceSpec[],
  vm: Vm,
  metrics: MetricsSegment,
): Record<string, Snapshottable> {
  const out: Record<string, Snapshottable> = {};
  const line = (irq: number) => kvmIrqLine(vm.fd, irq, metrics);
  for (const d of devices) {
    if (d.kind === "uart16550")
      out[d.name] = new Uart16550({
        state: d.state,
        name: d.name,
        irq: line(d.irq),
        output: () => {},
        metrics,
      });
    else if (d.kind === "cmos-rtc") out.rtc = new CmosRtc({ state: d.state, irq: line(RTC_IRQ), metrics });
    else if (d.kind === "i8042")
      out.i8042 = new I8042({
        state: d.state,
        kbdIrq: line(I8042_KBD_IRQ),
        auxIrq: line(I8042_AUX_IRQ),
        onReset: () => {},
        metrics,
      });
    else if (d.kind === "acpi-pm")
      out["acpi-pm"] = new AcpiPm({
        state: d.state,
        irq: line(ACPI_SCI_IRQ),
        onPowerOff: () => {},
        onReset: () => {},
        metrics,
      });
  }
  return out;
}

/** One line per device, for the control API's info. */
function describeDevices(devices: DeviceSpec[], pci: PciManifest | null): string[] {
  const out: string[] = [];
  for (const d of devices) {
    if (d.kind === "uart16550") out.push(`uart16550 ${d.name} port 0x${d.port.toString(16)} irq ${d.irq}`);
    else if (d.kind === "debug-exit") out.push(`debug-exit port 0x${d.port.toString(16)}`);
    else if (d.kind === "test-device") out.push(`test-device pio 0x${d.pioBase.toString(16)}`);
    else out.push(d.kind);
  }
  for (const d of pci?.devices ?? [])
    out.push(`${d.kind} ${d.name} pci 00:${d.slot.toString(16).padStart(2, "0")}.0`);
  return out;
}
