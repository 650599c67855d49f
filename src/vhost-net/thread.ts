/**
 * A vhost-net card's thread in `vireo run` (device.ts): vireo's side of the conversation with /dev/vhost-net.
 * The kernel moves the frames; this thread only starts and stops the rings.
 *
 * - DRIVER_OK (a vCPU thread bumps `activations` and wakes this thread): VHOST_SET_FEATURES with the kernel's
 *   share of what the guest negotiated, VHOST_SET_MEM_TABLE with guest RAM (one region at guest address 0, at
 *   its address in this process), and per enabled queue VHOST_SET_VRING_NUM, BASE, ADDR, CALL (the irqfd of the
 *   queue's MSI-X vector), KICK (the KVM ioeventfd of its notify address), then VHOST_NET_SET_BACKEND with the
 *   TAP.
 * - Reset (a vCPU thread bumps `resets` and waits for `resetsDone`): VHOST_NET_SET_BACKEND with fd -1 (the kernel
 *   finishes what it is doing on the ring and lets go of it), then VHOST_GET_VRING_BASE.
 * - The kernel refuses a call: the device is marked DEVICE_NEEDS_RESET with the reason logged.
 * - MSI-X disabled (INTx): the call fds are eventfds this thread polls, raising INTx with the ISR bit.
 */
import { writeSync } from "node:fs";
import { parentPort, workerData } from "node:worker_threads";
import { Bus } from "../bus/bus.ts";
import type { VirtioPciTransport } from "../devices/virtio/pci-transport.ts";
import { Vm } from "../kvm/vm.ts";
import { GuestMemory } from "../memory/guest-memory.ts";
import { MetricsSegment } from "../metrics/registry.ts";
import { native, POLLIN, takeEventFd } from "../native.ts";
import { FRONTEND_WORDS } from "../vhost-user/frontend-device.ts";
import type { WorkerMessage } from "../vmm/messages.ts";
import { type PciBuildContext, transportFor } from "../vmm/pci-devices.ts";
import { kernelAck, type VhostNetSpec } from "./device.ts";
import { VhostNet } from "./kernel.ts";

export interface VhostNetThreadData {
  spec: VhostNetSpec;
  vmFd: number;
  ram: SharedArrayBuffer;
  stopFd: number;
  metricsBuffer: SharedArrayBuffer;
  metricsSegment: number;
}

const ISR_QUEUE = 1;
const VIRTIO_MSI_NO_VECTOR = 0xffff;

const data = workerData as VhostNetThreadData;
const port = parentPort;
if (!port) throw new Error("the vhost-net thread must run as a worker thread");
const post = (m: WorkerMessage) => port.postMessage(m);
const spec = data.spec;
const metrics = new MetricsSegment(data.metricsBuffer, data.metricsSegment);
const flushMetricNames = () => {
  const names = metrics.drainNewNames();
  if (names.length) post({ type: "metric-names", segment: data.metricsSegment, names });
};
const reportError = (message: string) => {
  try {
    writeSync(2, `vireo: ${spec.name}: vhost-net: ${message}\n`);
  } catch {
    // stderr closed
  }
  post({ type: "device-error", vcpu: -1, device: spec.name, message: `vhost-net: ${message}` });
};

class KernelPlane {
  private readonly vhost: VhostNet;
  private started: number[] = [];
  private activations = 0;
  private readonly words: Int32Array;
  private readonly transport: VirtioPciTransport;
  private readonly mem: GuestMemory;
  private readonly cRingStarts = metrics.counter(`vhost-net.${spec.name}.ring_starts`);
  private readonly cRingStops = metrics.counter(`vhost-net.${spec.name}.ring_stops`);
  private readonly cRelayed = metrics.counter(`vhost-net.${spec.name}.intx_relayed`);

  constructor() {
    this.vhost = VhostNet.adopt(spec.vhostFd);
    this.words = new Int32Array(spec.block);
    this.mem = new GuestMemory(data.ram);
    const vm = Vm.fromFd(data.vmFd);
    const ctx: PciBuildContext = {
      mem: this.mem,
      vmFd: data.vmFd,
      metrics,
      pio: new Bus("pio"),
      mmio: new Bus("mmio"),
      signalMsi: (lo, hi, value) => {
        vm.signalMsi(lo, hi, value);
      },
      log: reportError,
    };
    this.transport = transportFor(spec, ctx, false, "io");
  }

  /** The wake eventfd fired: resets first (a reset after DRIVER_OK cancels it), then activation. */
  onWake(): void {
    const w = this.words;
    const resets = Atomics.load(w, FRONTEND_WORDS.resets);
    if (resets !== Atomics.load(w, FRONTEND_WORDS.resetsDone)) {
      this.stopRings();
      Atomics.store(w, FRONTEND_WORDS.resetsDone, resets);
      Atomics.notify(w, FRONTEND_WORDS.resetsDone);
    }
    const act = Atomics.load(w, FRONTEND_WORDS.activations);
    if (act !== this.activations) {
      this.activations = act;
      this.startRings();
    }
  }

  /** A relay call fd fired (MSI-X off): the queue's interrupt as INTx with the ISR bit (4.1.4.5). */
  onRelay(q: number): void {
    if (takeEventFd(spec.relays[q] as number) === 0) return;
    this.cRelayed.add();
    const t = this.transport;
    if (t.msix.enabled) return;
    t.device.isrOr(ISR_QUEUE);
    t.pci.setIntx(true);
  }

  close(): void {
    this.stopRings();
  }

  private startRings(): void {
    const dev = this.transport.device;
    if (!dev.running || this.started.length > 0) return;
    const ram = spec.ram;
    const user = (gpa: number) => ram.hostAddress + BigInt(gpa);
    const msix = this.transport.msix;
    const queues: number[] = [];
    for (let q = 0; q < dev.numQueues; q++) if (dev.readQueue(q, "enable") === 1) queues.push(q);
    const v = this.vhost;
    try {
      v.setFeatures(kernelAck(dev.negotiatedFeatures, spec.backendFeatures));
      v.setMemTable([{ guestAddr: 0n, size: BigInt(ram.size), userAddr: ram.hostAddress }]);
      for (const q of queues) {
        const addr = (lo: "desc_lo" | "driver_lo" | "device_lo", hi: "desc_hi" | "driver_hi" | "device_hi") =>
          dev.readQueue(q, hi) * 2 ** 32 + dev.readQueue(q, lo);
        const used = addr("device_lo", "device_hi");
        // The kernel takes the used index from guest memory (vhost_vq_init_access); the next available entry to
        // serve is the same one: nothing is in flight when a ring starts.
        const base = used + 4 <= this.mem.size ? this.mem.readU16(used + 2) : 0;
        const vector = dev.readQueue(q, "msix_vector");
        const callFd = !msix.enabled
          ? (spec.relays[q] as number)
          : vector === VIRTIO_MSI_NO_VECTOR
            ? -1
            : (spec.irq.pool[vector]?.fd ?? -1);
        v.setVring(q, {
          num: dev.readQueue(q, "size"),
          base,
          desc: user(addr("desc_lo", "desc_hi")),
          avail: user(addr("driver_lo", "driver_hi")),
          used: user(used),
          kickFd: spec.kicks[q] as number,
          callFd,
        });
        v.setBackend(q, spec.tapFd);
        this.started.push(q);
        this.cRingStarts.add();
      }
    } catch (e) {
      const msg = (e as Error).message;
      reportError(`starting the rings: ${msg}`);
      this.stopRings();
      dev.needsReset(`vhost-net: ${msg}`);
    }
  }

  /** Detaches the TAP from each started ring (the kernel stops serving it), then reads its base. */
  private stopRings(): void {
    const rings = this.started;
    this.started = [];
    for (const q of rings) {
      try {
        this.vhost.setBackend(q, -1);
        this.vhost.getVringBase(q);
        this.cRingStops.add();
      } catch (e) {
        reportError(`stopping vring ${q}: ${(e as Error).message}`);
      }
    }
  }
}

function main(): void {
  const plane = new KernelPlane();
  flushMetricNames();
  post({ type: "io-ready", name: spec.name });
  const nRelay = spec.relays.length;
  // [stop, wake, relay 0..n-1]
  const pollfds = new Int32Array(3 * (2 + nRelay));
  const set = (slot: number, fd: number) => {
    pollfds[3 * slot] = fd;
    pollfds[3 * slot + 1] = POLLIN;
  };
  set(0, data.stopFd);
  set(1, spec.wake);
  for (const [q, fd] of spec.relays.entries()) set(2 + q, fd);
  try {
    plane.onWake();
  } catch (e) {
    reportError((e as Error).message);
  }
  for (;;) {
    for (let i = 0; i < pollfds.length; i += 3) pollfds[i + 2] = 0;
    native().poll(pollfds, -1);
    if (pollfds[2] !== 0) break;
    try {
      if (pollfds[5] !== 0) {
        takeEventFd(spec.wake);
        plane.onWake();
      }
      for (let q = 0; q < nRelay; q++) if (pollfds[3 * (2 + q) + 2] !== 0) plane.onRelay(q);
    } catch (e) {
      reportError((e as Error).message);
    }
    flushMetricNames();
  }
  plane.close();
  flushMetricNames();
}

try {
  main();
  post({ type: "io-stopped", name: spec.name });
} catch (e) {
  flushMetricNames();
  post({ type: "io-stopped", name: spec.name, message: (e as Error).message });
}
