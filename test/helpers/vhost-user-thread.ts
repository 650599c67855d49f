/**
 * The vhost-user thread of `vireo run` (src/vhost-user/frontend-thread.ts) in a test, without KVM: guest RAM in a
 * memfd, the device's transport as a vCPU thread sees it (no KVM is touched while MSI-X stays off and the rings
 * ask for no interrupts), and the thread itself as a worker over the spec the test built (as preparePci would).
 */
import { ftruncateSync } from "node:fs";
import { Bus } from "../../src/bus/bus.ts";
import type { VirtioPciTransport } from "../../src/devices/virtio/pci-transport.ts";
import { GuestMemory } from "../../src/memory/guest-memory.ts";
import { MetricsRegistry } from "../../src/metrics/registry.ts";
import { EFD_CLOEXEC, EFD_NONBLOCK, MFD_CLOEXEC, native, signalEventFd } from "../../src/native.ts";
import type { WorkerMessage } from "../../src/vmm/messages.ts";
import { transportFor, type VhostUserSpec } from "../../src/vmm/pci-devices.ts";
import { startTsWorker } from "../../src/vmm/ts-worker.ts";

export type Ram = VhostUserSpec["ram"];

/** Guest RAM for a spec: a memfd of `size` bytes, mapped here; `buffer` is what the thread maps it as. */
export function makeThreadRam(size: number): { ram: Ram; buffer: SharedArrayBuffer; mem: GuestMemory } {
  const n = native();
  const fd = n.memfdCreate("vireo-test-ram", MFD_CLOEXEC);
  ftruncateSync(fd, size);
  const { buffer, address } = n.mmap(fd, size, 0);
  return { ram: { fd, size, hostAddress: address }, buffer, mem: new GuestMemory(buffer) };
}

export const testEventFd = () => native().eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);

/** A dirty log for a spec (VhostUserSpec.dirtyLog), as preparePci makes it: a memfd covering `ramSize`. */
export function makeDirtyLog(ramSize: number): { fd: number; size: number } {
  const size = Math.ceil(ramSize / 4096 / 8 / 8) * 8;
  const fd = native().memfdCreate("vireo-test-log", MFD_CLOEXEC);
  ftruncateSync(fd, size);
  return { fd, size };
}

export interface ThreadHarness {
  transport: VirtioPciTransport;
  /** device-error messages and a stop message, as the main thread would get them. */
  messages: string[];
  metrics: MetricsRegistry;
  /** Stops the thread and waits until it has. */
  stop(): Promise<void>;
}

/** The vCPU side's transport over `spec` and the device's vhost-user thread, started. */
export function startFrontendThread(
  spec: VhostUserSpec,
  ram: SharedArrayBuffer,
  mem: GuestMemory,
): ThreadHarness {
  const transport = transportFor(
    spec,
    { mem, vmFd: -1, pio: new Bus("pio"), mmio: new Bus("mmio"), signalMsi: () => {} },
    true,
  );
  const metrics = new MetricsRegistry();
  const stopFd = testEventFd();
  const worker = startTsWorker(new URL("../../src/vhost-user/frontend-thread.ts", import.meta.url), {
    workerData: {
      spec,
      vmFd: -1,
      ram,
      stopFd,
      metricsBuffer: metrics.shared,
      metricsSegment: metrics.allocateSegment(),
    },
  });
  const workerExit = new Promise((r) => worker.on("exit", r));
  const messages: string[] = [];
  worker.on("message", (m: WorkerMessage) => {
    if (m.type === "metric-names") metrics.addNames(m.segment, m.names);
    else if (m.type === "device-error" || (m.type === "io-stopped" && m.message))
      messages.push(String(m.message));
  });
  return {
    transport,
    messages,
    metrics,
    stop: async () => {
      signalEventFd(stopFd);
      await workerExit;
      native().close(stopFd);
    },
  };
}
