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
import { VirtioNet } from "../devices/virtio/net.ts";
import { Vm } from "../kvm/vm.ts";
import { GuestMemory } from "../memory/guest-memory.ts";
import { MetricsSegment } from "../metrics/registry.ts";
import { native, POLLIN } from "../native.ts";
import type { TapBackend } from "../net/tap.ts";
import type { WorkerMessage } from "../vmm/messages.ts";
import { type DataPlaneDeviceSpec, transportFor } from "../vmm/pci-devices.ts";
import { DATA_PLANE } from "./remote-queues.ts";

export interface IoThreadData {
  spec: DataPlaneDeviceSpec;
  vmFd: number;
  ram: SharedArrayBuffer;
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

function main(): void {
  const spec = data.spec;
  const mem = new GuestMemory(data.ram);
  const vm = Vm.fromFd(data.vmFd);
  const transport = transportFor(
    spec,
    {
      mem,
      vmFd: data.vmFd,
      metrics,
      pio: new Bus("pio"),
      mmio: new Bus("mmio"),
      signalMsi: (lo, hi, value) => {
        vm.signalMsi(lo, hi, value);
      },
      log: reportError,
    },
    false,
    "io",
  );
  const model = transport.device.model;
  if (!(model instanceof VirtioNet)) throw new Error(`${spec.name}: no data plane for this device`);
  const backend = model.backend as TapBackend;
  const dp = spec.dataPlane;
  const words = new Int32Array(dp.block);
  let activations = 0;
  const wakeups = metrics.counter(`vhost.${spec.name}.wakeups`);
  const kicksSeen = metrics.counter(`vhost.${spec.name}.kicks`);
  flushMetricNames();
  post({ type: "io-ready", name: spec.name });

  const eventValue = new BigUint64Array(1);
  const drain = (fd: number) => native().readFd(fd, eventValue) === 8;
  const nq = dp.kicks.length;
  // [stop, wake, kick 0..nq-1, tap]
  const pollfds = new Int32Array(3 * (nq + 3));
  pollfds[0] = data.stopFd;
  pollfds[1] = POLLIN;
  pollfds[3] = dp.wake;
  pollfds[4] = POLLIN;
  dp.kicks.forEach((fd, q) => {
    pollfds[3 * (q + 2)] = fd;
    pollfds[3 * (q + 2) + 1] = POLLIN;
  });
  const tapSlot = 3 * (nq + 2);
  pollfds[tapSlot] = backend.fd;

  for (;;) {
    pollfds[tapSlot + 1] = backend.wantsInput() ? POLLIN : 0;
    if (native().poll(pollfds, -1) === 0) continue;
    wakeups.add();
    if (pollfds[2] !== 0) break;
    try {
      if (pollfds[5] !== 0) {
        drain(dp.wake);
        const now = Atomics.load(words, DATA_PLANE.activations);
        if (now !== activations) {
          activations = now;
          // DRIVER_OK (again): offloads, pending transmits, receive.
          if (transport.device.running) model.activate();
        } else {
          backend.rxReady();
        }
      }
      for (let q = 0; q < nq; q++) {
        const fd = dp.kicks[q] as number;
        if (pollfds[3 * (q + 2) + 2] !== 0 && drain(fd)) {
          kicksSeen.add(Number(eventValue[0]));
          transport.notify(q);
        }
      }
      if (pollfds[tapSlot + 2] !== 0) backend.pump();
    } catch (e) {
      // The device contains guest-caused failures itself (DEVICE_NEEDS_RESET); this is a backend failing.
      reportError((e as Error).message);
    }
    flushMetricNames();
  }
  backend.close();
  flushMetricNames();
}

try {
  main();
  post({ type: "io-stopped", name: data.spec.name });
} catch (e) {
  flushMetricNames();
  post({ type: "io-stopped", name: data.spec.name, message: (e as Error).message });
}
