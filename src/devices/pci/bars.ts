/**
 * Putting BARs on the buses: a BAR device made of several sub-regions, and a ready-made `onBarRemap` handler
 * that (re-)registers each BAR's device on the port-I/O or MMIO bus wherever the guest has it decode.
 *
 * Each vCPU thread has its own buses, so each thread calls `connectBars` for its own PciFunction objects and
 * buses. A guest BAR or COMMAND write updates the handling thread's buses at once; every other thread's buses
 * follow when it calls `PciBus.syncBars()` (or `PciFunction.syncBars()`), which the integrator does before
 * dispatching each MMIO / port-I/O exit: one Atomics.load while no decode changed.
 */
import { Bus, type BusDevice, BusOverlapError, BusRangeError } from "../../bus/bus.ts";
import type { VireoError } from "../../errors.ts";
import type { PciFunction } from "./config.ts";

/**
 * Several BusDevices laid out inside one BAR, each at its own offset (for example the MSI-X table and PBA next to
 * a device's registers). Offsets no region claims read as 0 and ignore writes.
 */
export class BarRegions implements BusDevice {
  readonly name: string;
  private readonly inner = new Bus("mmio");

  constructor(name: string) {
    this.name = name;
  }

  /** Places `device` at [offset, offset + length) of the BAR. Throws BusOverlapError on overlap. */
  add(offset: number, length: number, device: BusDevice): this {
    this.inner.register(offset, length, device);
    return this;
  }

  read(offset: number, data: Uint8Array): void {
    if (!this.inner.read(offset, data)) data.fill(0);
  }

  write(offset: number, data: Uint8Array): void {
    this.inner.write(offset, data);
  }
}

export interface BarBuses {
  pio: Bus;
  mmio: Bus;
}

export interface ConnectBarsOptions {
  /**
   * The guest placed a BAR where it overlaps another device or leaves the bus. The BAR then stays off the bus
   * (what a conflicting decode does is undefined on real hardware); the default is to ignore it silently.
   */
  onConflict?: (index: number, address: number, error: VireoError) => void;
}

const windowsOf = new WeakMap<PciFunction, Map<number, BusDevice>>();

/**
 * Sets `fn.onBarRemap` so that every BAR defined with a `device` is registered on `buses.pio` (I/O BARs) or
 * `buses.mmio` (memory BARs) at the address it decodes at, and unregistered when it stops decoding there.
 * Each BAR gets its own named window device (`<fn>.bar<i>`), so two BARs never share a bus registration.
 * If the function is attached, BARs that already decode (programmed by another thread, or before this call)
 * are registered at once.
 */
export function connectBars(fn: PciFunction, buses: BarBuses, options: ConnectBarsOptions = {}): void {
  // Shared by repeated calls for the same function, so a new handler can still unregister the old windows.
  let windows = windowsOf.get(fn);
  if (windows === undefined) {
    windows = new Map();
    windowsOf.set(fn, windows);
  }
  fn.onBarRemap = (index, oldAddr, newAddr) => {
    const bar = fn.bar(index);
    const target = bar?.device;
    if (bar === undefined || target === undefined) return;
    let window = windows.get(index);
    if (window === undefined) {
      window = {
        name: `${fn.name}.bar${index}`,
        read: (offset, data) => target.read(offset, data),
        write: (offset, data) => target.write(offset, data),
      };
      windows.set(index, window);
    }
    const bus = bar.kind === "io" ? buses.pio : buses.mmio;
    if (oldAddr !== null) bus.unregister(window);
    if (newAddr === null) return;
    try {
      bus.register(newAddr, bar.size, window);
    } catch (e) {
      if (!(e instanceof BusOverlapError || e instanceof BusRangeError)) throw e;
      options.onConflict?.(index, newAddr, e);
    }
  };
  if (fn.attached) fn.syncBars();
}
