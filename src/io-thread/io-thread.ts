/**
 * A data-plane thread: the in-process equivalent of a vhost worker. It owns one device's backend (a TAP fd) and
 * serves the device's queues when their eventfds fire (KVM_IOEVENTFD on the notify addresses, so a guest's
 * doorbell wakes this thread without an exit to userspace), receives frames when the TAP is readable, and
 * interrupts the guest from here (MSI-X through KVM_SIGNAL_MSI, or the INTx line). It never returns to its event
 * loop while the machine runs: it sleeps in poll(2) and is stopped through its stop eventfd.
 *
 * The device is the same code a vCPU thread would run (src/devices/virtio), built here over the shared state.
 */

import { parentPort, workerData } from "node:worker_threads";
import { Bus } from "../bus/bus.ts";
import { monotonicMs } from "../devices/e1000/e1000.ts";
import { VirtioNet } from "../devices/virtio/net.ts";
import { DEFAULT_NOTIFY_BUDGET } from "../devices/virtio/work-budget.ts";
import { Vm } from "../kvm/vm.ts";
import { DevicePageLog } from "../memory/device-page-log.ts";
import { GuestMemory } from "../memory/guest-memory.ts";
import { MetricsSegment } from "../metrics/registry.ts";
import { native, POLLIN, takeEventFd } from "../native.ts";
import type { ShmNetBackend } from "../net/shm-backend.ts";
import { TapBackend } from "../net/tap.ts";
import { DeferredWork } from "../shared/deferred-work.ts";
import type { WorkerMessage } from "../vmm/messages.ts";
import { IrqfdMsiSink, MsiRouteTable } from "../vmm/msi-routes.ts";
import {
  type DataPlaneDeviceSpec,
  e1000For,
  type PciBuildContext,
  transportFor,
} from "../vmm/pci-devices.ts";
import { DATA_PLANE } from "./remote-queues.ts";

/** Frames taken from a TAP per turn of the loop (a host flooding the TAP gets a budget's worth, then others run). */
const TAP_FRAMES_PER_TURN = DEFAULT_NOTIFY_BUDGET.chains;

export interface IoThreadData {
  spec: DataPlaneDeviceSpec;
  vmFd: number;
  ram: SharedArrayBuffer;
  /** Where the devices' writes to guest RAM are logged during a migration (src/memory/device-page-log.ts). */
  pageLog: SharedArrayBuffer;
  /** Signalled by the main thread to end the thread. */
  stopFd: number;
  metricsBuffer: SharedArrayBuffer;
  metricsSegment: number;
}

/** Device-error and metric-name messages carry this in place of a vCPU index. */
export const IO_THREAD_VCPU = -1;

const data = workerData as IoThreadData;
const port = parentPort;
if (!port) throw new Error("io-thread must run as a worker thread");
const post = (m: WorkerMessage) => port.postMessage(m);
const metrics = new MetricsSegment(data.metricsBuffer, data.metricsSegment);
const flushMetricNames = () => {
  const names = metrics.drainNewNames();
  if (names.length) post({ type: "metric-names", segment: data.metricsSegment, names });
};
const reportError = (message: string) =>
  post({ type: "device-error", vcpu: IO_THREAD_VCPU, device: data.spec.name, message });

/** What the loop polls for one device: fds with their handlers, and when to wake without any (timers). */
interface DataPlane {
  /** Woken (the wake eventfd fired): activation, receive buffers posted, a timer moved. */
  onWake(): void;
  kicks: Array<{ fd: number; onKick(signals: number): void }>;
  input: { fd: number; wants(): boolean; onReadable(): void } | null;
  /** Milliseconds until the device needs `onTimer`, or -1. */
  timeoutMs(): number;
  onTimer(): void;
  close(): void;
}

/**
 * A virtio device's queues (virtio-net, or virtio-blk with iothread): kicks from the queues' eventfds, the
 * activation the vCPU side announces through the wake eventfd, and for virtio-net the TAP's receive side.
 */
function virtioPlane(
  spec: Extract<DataPlaneDeviceSpec, { kind: "virtio-net" | "virtio-blk" }>,
  ctx: PciBuildContext,
): DataPlane {
  const transport = transportFor(spec, ctx, false, "io");
  const model = transport.device.model;
  // A TAP's or a switch shm port's receive side: an fd to poll and a pump for when it is readable.
  const backend = model instanceof VirtioNet ? (model.backend as TapBackend | ShmNetBackend) : null;
  const words = new Int32Array(spec.dataPlane.block);
  const kicks = metrics.counter(`vhost.${spec.name}.kicks`);
  let activations = 0;
  return {
    onWake: () => {
      const now = Atomics.load(words, DATA_PLANE.activations);
      if (now !== activations) {
        activations = now;
        // DRIVER_OK (again): virtio-net's offloads, pending transmits and receive; pending requests for blk.
        transport.device.activate();
      } else {
        // Another thread saw the driver post receive buffers. At most one budget of frames: the rest stays in the
        // TAP, whose fd poll(2) then reports readable at once.
        backend?.pump(TAP_FRAMES_PER_TURN);
      }
    },
    kicks: spec.dataPlane.kicks.map((fd, q) => ({
      fd,
      onKick: (signals: number) => {
        kicks.add(signals);
        transport.notify(q);
      },
    })),
    input: backend && {
      fd: backend.fd,
      wants: () => backend.wantsInput(),
      onReadable: () => backend.pump(TAP_FRAMES_PER_TURN),
    },
    timeoutMs: () => -1,
    onTimer: () => {},
    close: () => backend?.close(),
  };
}

function e1000Plane(spec: Extract<DataPlaneDeviceSpec, { kind: "e1000" }>, ctx: PciBuildContext): DataPlane {
  const backend = new TapBackend(spec.tap, { metrics, metricsName: spec.name });
  const dev = e1000For(spec, ctx, false, backend);
  const nic = dev.nic;
  return {
    onWake: () => {
      nic.poll();
      backend.pump(TAP_FRAMES_PER_TURN);
    },
    kicks: [],
    input: {
      fd: backend.fd,
      wants: () => backend.wantsInput(),
      onReadable: () => backend.pump(TAP_FRAMES_PER_TURN),
    },
    timeoutMs: () => {
      const at = nic.nextDeadline();
      return at === undefined ? -1 : Math.max(0, Math.ceil(at - monotonicMs()));
    },
    onTimer: () => nic.poll(),
    close: () => backend.close(),
  };
}

/** Device work left for later (a spent work budget): served after the next poll, which then does not sleep. */
const later = new DeferredWork();

function main(): void {
  const spec = data.spec;
  const vm = Vm.fromFd(data.vmFd);
  // MSI-X leaves through this device's irqfds (the route set when a message is first used), as a kernel vhost's
  // would; KVM_SIGNAL_MSI only where the machine gave it none.
  const msi = spec.dataPlane.msi;
  const sink = msi ? new IrqfdMsiSink(new MsiRouteTable(msi.routes, vm), msi.pool, metrics, spec.name) : null;
  const mem = new GuestMemory(data.ram);
  mem.pageLog = new DevicePageLog(data.pageLog);
  const ctx: PciBuildContext = {
    mem,
    vmFd: data.vmFd,
    metrics,
    pio: new Bus("pio"),
    mmio: new Bus("mmio"),
    signalMsi: sink
      ? (lo, hi, value) => sink.signal(lo, hi, value)
      : (lo, hi, value) => {
          vm.signalMsi(lo, hi, value);
        },
    log: reportError,
    defer: later.add,
  };
  const plane = spec.kind === "e1000" ? e1000Plane(spec, ctx) : virtioPlane(spec, ctx);
  const wakeups = metrics.counter(`vhost.${spec.name}.wakeups`);
  flushMetricNames();
  post({ type: "io-ready", name: spec.name });

  const wake = spec.dataPlane.wake;
  const nk = plane.kicks.length;
  // [stop, wake, kick 0..nk-1, input]
  const pollfds = new Int32Array(3 * (nk + 3));
  const set = (slot: number, fd: number) => {
    pollfds[3 * slot] = fd;
    pollfds[3 * slot + 1] = POLLIN;
  };
  set(0, data.stopFd);
  set(1, wake);
  for (const [i, k] of plane.kicks.entries()) set(2 + i, k.fd);
  const inputSlot = 3 * (nk + 2);
  pollfds[inputSlot] = plane.input?.fd ?? -1; // poll ignores negative fds

  const control = new Int32Array(spec.dataPlane.block);
  // A wake that came while quiesced: served once the quiesce ends (its signal was taken from the eventfd).
  let wakeOwed = false;
  for (;;) {
    // Quiesced for a snapshot (DATA_PLANE.quiesce): only the stop and wake eventfds are polled, so kicks stay in
    // their eventfds and frames in the TAP; slices already started are finished first, then the thread says so.
    const quiet = Atomics.load(control, DATA_PLANE.quiesce) !== 0;
    const owed = later.pending;
    if (quiet !== (Atomics.load(control, DATA_PLANE.quiesced) !== 0) && (!quiet || !owed)) {
      Atomics.store(control, DATA_PLANE.quiesced, quiet ? 1 : 0);
      Atomics.notify(control, DATA_PLANE.quiesced);
    }
    for (let i = 0; i < nk; i++) pollfds[3 * (i + 2) + 1] = quiet ? 0 : POLLIN;
    pollfds[inputSlot + 1] = !quiet && plane.input?.wants() ? POLLIN : 0;
    const timeout = owed || (!quiet && wakeOwed) ? 0 : quiet ? -1 : plane.timeoutMs();
    const ready = native().poll(pollfds, timeout);
    if (pollfds[2] !== 0) break;
    wakeups.add();
    try {
      if (ready === 0 && !owed && !quiet && !wakeOwed) plane.onTimer();
      if (pollfds[5] !== 0) {
        takeEventFd(wake);
        wakeOwed = true;
      }
      if (wakeOwed && !quiet) {
        wakeOwed = false;
        plane.onWake();
      }
      for (let i = 0; i < nk && !quiet; i++) {
        if (pollfds[3 * (i + 2) + 2] === 0) continue;
        const signals = takeEventFd(plane.kicks[i]?.fd as number);
        if (signals > 0) plane.kicks[i]?.onKick(signals);
      }
      if (!quiet && pollfds[inputSlot + 2] !== 0) plane.input?.onReadable();
      later.runOnce((e) => reportError((e as Error).message));
    } catch (e) {
      // The device contains guest-caused failures itself (DEVICE_NEEDS_RESET, logged e1000 errors); this is a
      // backend failing.
      reportError((e as Error).message);
    }
    flushMetricNames();
  }
  plane.close();
  flushMetricNames();
}

try {
  main();
  post({ type: "io-stopped", name: data.spec.name });
} catch (e) {
  flushMetricNames();
  post({ type: "io-stopped", name: data.spec.name, message: (e as Error).message });
}
