/**
 * A machine's lifecycle, on the main thread: create the VM and its RAM, load the guest, start one worker per
 * vCPU, wait for the run to end, stop every vCPU, and collect metrics. The main thread serves no exits.
 */
import { closeSync, existsSync, openSync, readFileSync, statSync } from "node:fs";
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
import { Uart16550 } from "../devices/legacy/uart16550.ts";
import type { VirtioConsole } from "../devices/virtio/console.ts";
import { ConfigError, VireoError } from "../errors.ts";
import { startIoThreads } from "../io-thread/io-threads.ts";
import { RUN } from "../kvm/abi.ts";
import { KvmSystem } from "../kvm/system.ts";
import { Vm } from "../kvm/vm.ts";
import { GuestMemory } from "../memory/guest-memory.ts";
import { allocateGuestRam, guestRamBytes } from "../memory/guest-ram.ts";
import { MetricsRegistry, MetricsSegment } from "../metrics/registry.ts";
import { EFD_CLOEXEC, EFD_NONBLOCK, native, takeEventFd } from "../native.ts";
import { ApiError, type ApiServer, startApiServer, type VmInfo, type VmState } from "./api-server.ts";
import { type DeviceSpec, defaultDevices } from "./device-manifest.ts";
import { kvmIrqLine } from "./irq.ts";
import { CONTROL, type StopReason, type WorkerMessage } from "./messages.ts";
import {
  type DiskConfig,
  type NetConfig,
  type PciManifest,
  preparePci,
  transportFor,
} from "./pci-devices.ts";
import { platformAcpi } from "./platform.ts";
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
}

export interface TestDevicePlumbing {
  /** Serve writes to the count register (offset 4) of both windows with ioeventfds: no exit to vireo. */
  doorbellIoeventfd?: boolean;
  /** Deliver the test device's IRQ through an irqfd instead of KVM_IRQ_LINE. */
  irqfd?: boolean;
}

export type Outcome = StopReason | "timeout";

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

export function validateConfig(config: MachineConfig): void {
  if (!Number.isInteger(config.cpus) || config.cpus < 1 || config.cpus > MAX_CPUS)
    throw new ConfigError(`--cpus must be a whole number from 1 to ${MAX_CPUS}, got ${config.cpus}`);
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
    const image = readFileSync(config.kernel);
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
      const ram = allocateGuestRam(config.memMiB);
      cleanups.push(() => closeSync(ram.fd));
      const boot = this.loadGuest(ram.memory, image, ram.size);

      system = KvmSystem.open();
      vm = Vm.create(system);
      vm.setTssAddr();
      vm.setIdentityMapAddr();
      vm.createIrqchip();
      vm.createPit();
      vm.setGsiRouting(Vm.pcIrqchipRoutes(), []);
      vm.setUserMemoryRegion({ slot: 0, guestPhysAddr: 0, size: ram.size, userspaceAddr: ram.hostAddress });

      if (config.serial.kind === "stdio") serialFd = 1;
      else if (config.serial.kind === "file") {
        serialFd = openSync(config.serial.path, "w");
        closeSerial = true;
      }
      const devices = defaultDevices({ outputFd: serialFd, platform: boot.platform, memSize: ram.size });
      const readDoorbells = this.plumbTestDevice(vm, devices, cleanups);
      let pci: PciManifest | null = null;
      if (hasPci(config)) {
        const vmForMsi = vm;
        const prepared = preparePci(
          {
            disks: config.disks ?? [],
            rng: config.rng === true,
            nets: config.nets ?? [],
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
      }
      const supported = system.supportedCpuid();
      const mmapSize = system.vcpuMmapSize();

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
        ? await startIoThreads(pci, { vmFd: vm.fd, ram: ram.buffer, metrics, onMessage: onIoMessage })
        : null;
      if (io) cleanups.push(() => io.close());

      const stopped = this.startVcpus({
        vm,
        devices,
        mmapSize,
        supported,
        boot,
        pci,
        ram: ram.buffer,
        metrics,
        onMessage: (m) => {
          if (m.type === "ready" && m.vcpu === 0) vcpuStartNs = m.ns;
          else if (m.type === "metric-names") metrics.addNames(m.segment, m.names);
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
      });

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
      await stopped;
      await api?.close();
      await io?.stop();
      const stopMs =
        this.stopRequestedAt === undefined ? undefined : performance.now() - this.stopRequestedAt;
      if (timer) clearTimeout(timer);
      if (stats) clearInterval(stats);
      for (const [name, count] of readDoorbells()) mainMetrics.counter(name).add(count);
      metrics.addNames(mainSegment, mainMetrics.names());

      const outcome: Outcome = first?.reason ?? (timedOut ? "timeout" : "stop-requested");
      const status = exitStatus(outcome, first?.code);
      return {
        outcome,
        status,
        guestCode: outcome === "guest-exit" ? first?.code : undefined,
        message:
          outcome === "timeout" ? `the guest did not finish within ${config.timeoutMs} ms` : first?.message,
        metrics: metrics.snapshot(),
        markers,
        markerMetrics: new Map([...markerValues].map(([id, values]) => [id, metrics.snapshot(values)])),
        vcpuStartNs,
        deviceErrors,
        wallMs: performance.now() - started,
        stopMs,
      };
    } finally {
      for (const c of cleanups.reverse()) c();
      if (closeSerial && serialFd !== null) closeSync(serialFd);
      vm?.close();
      system?.close();
    }
  }

  // VmController (src/vmm/api-server.ts): the rest of it.
  metrics(): Record<string, number> {
    if (!this.live) throw new ApiError(409, "VIREO_API_STATE", "the VM has not started yet");
    return this.live.metrics.snapshot();
  }

  shutdown(): void {
    this.requestStop();
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
    boot: BootState;
    pci: PciManifest | null;
    ram: SharedArrayBuffer;
    metrics: MetricsRegistry;
    onMessage(m: WorkerMessage): void;
  }): Promise<void> {
    const exits: Array<Promise<void>> = [];
    // Inside vireo's emulated host, a guest's XSETBV is not trapped (QEMU TCG's SVM): see CpuidPolicy.
    const policy = { hideXsave: KvmSystem.hostKind() === "emulated" };
    for (let index = 0; index < this.config.cpus; index++) {
      const workerData: VcpuWorkerData = {
        index,
        vmFd: o.vm.fd,
        mmapSize: o.mmapSize,
        cpuid: vcpuCpuid(o.supported, index, this.config.cpus, policy),
        boot: index === 0 ? o.boot : null,
        devices: o.devices,
        pci: o.pci,
        ram: o.ram,
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
        o.onMessage(m);
      });
      exits.push(
        new Promise<void>((resolve) => {
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
      );
    }
    return Promise.all(exits).then(() => undefined);
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
