/**
 * virtio 1.x devices (OASIS virtio 1.2): the transport-independent device core (device.ts), the modern
 * virtio-pci transport (pci-transport.ts), the device types (blk, net, console, rng) and the virtqueue layer.
 *
 * Wiring one device (details in pci-transport.ts and device.ts):
 *
 *   // main thread, once
 *   const state = VirtioPciTransport.createState(modelLayout);         // { device, pci, msix } SharedArrayBuffers
 *   // every thread that may serve the device (each vCPU worker, the ioeventfd worker, the backend I/O thread)
 *   const model = new VirtioBlk({ backend: new FileBlockBackend(fd) });
 *   const t = new VirtioPciTransport({ state, model, mem, msiSink, intx });
 *   pciBus.add(t.pci, slot); connectBars(t.pci, buses);                // BAR 4: virtio structures, BAR 1: MSI-X
 *   // ioeventfds: t.notifyAddresses() (one 2-byte register per queue), each firing t.notify(queue)
 */
export * from "./blk.ts";
export * from "./console.ts";
export * from "./constants.ts";
export * from "./device.ts";
export * from "./net.ts";
export * from "./pci-transport.ts";
export * from "./rng.ts";
