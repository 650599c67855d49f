/**
 * What platform firmware does before the OS enumerates PCI: give every BAR an address in the host bridge's
 * windows, enable decode, and fill in the interrupt line. Linux keeps firmware-assigned BARs that lie inside the
 * host bridge windows it learns from ACPI (_CRS), so those windows must match the ones used here.
 *
 * BARs are placed largest first, each naturally aligned (PCI §6.2.5.1: a BAR's address is a multiple of its
 * size), which packs power-of-two sizes without holes. Memory BARs are aligned to at least 4 KiB so no two
 * BARs share a page (an emulation choice: each can then be trapped or mapped by page).
 */
import type { BarKind } from "./config.ts";
import { PCI_COMMAND, PCI_REG } from "./config.ts";
import { PciAllocationError } from "./errors.ts";
import type { PciBus } from "./host-bridge.ts";

/** [base, end) of an address window. */
export interface AddressWindow {
  readonly base: number;
  readonly end: number;
}

export interface PciWindows {
  /** 32-bit memory window, below the 4 GiB hole's fixed devices (IOAPIC 0xFEC00000, LAPIC 0xFEE00000). */
  mmio32: AddressWindow;
  /** 64-bit memory window, for 64-bit BARs that do not fit (or are not wanted) below 4 GiB. */
  mmio64?: AddressWindow;
  /** I/O window, above the legacy ISA ports. */
  io: AddressWindow;
}

export const DEFAULT_PCI_WINDOWS: PciWindows = {
  mmio32: { base: 0xe000_0000, end: 0xfe00_0000 },
  // 256-512 GiB: inside a 39-bit guest physical address space, the smallest common one.
  mmio64: { base: 0x40_0000_0000, end: 0x80_0000_0000 },
  io: { base: 0xc000, end: 0x10000 },
};

export interface AssignBarsOptions {
  windows?: PciWindows;
  /**
   * Where 64-bit memory BARs go: "low" tries the 32-bit window first and falls back to the 64-bit one (what
   * SeaBIOS does while everything fits), "high" uses the 64-bit window first. Default "low".
   */
  mmio64Placement?: "low" | "high";
  /** Set COMMAND.IO / COMMAND.MEMORY on functions with I/O / memory BARs (default true). */
  enableDecode?: boolean;
  /** The GSI that INTx pin `pin` (1-4) of `device` is routed to, written to the interrupt line register. */
  interruptLine?: (device: number, pin: number) => number;
}

export interface BarAssignment {
  readonly device: number;
  readonly function: number;
  readonly bar: number;
  readonly kind: BarKind;
  readonly address: number;
  readonly size: number;
}

const PAGE = 0x1000;

interface Pending {
  device: number;
  func: number;
  bar: number;
  kind: BarKind;
  size: number;
  order: number;
}

/** Assigns every defined BAR on `bus`, programs it into the function, and returns the assignments. */
export function assignBars(bus: PciBus, options: AssignBarsOptions = {}): BarAssignment[] {
  const windows = options.windows ?? DEFAULT_PCI_WINDOWS;
  const cursors = new Map<AddressWindow, number>();
  const pending: Pending[] = [];
  for (const slot of bus.list()) {
    for (const bar of slot.fn.definedBars()) {
      pending.push({
        device: slot.device,
        func: slot.function,
        bar: bar.index,
        kind: bar.kind,
        size: bar.size,
        order: pending.length,
      });
    }
  }
  pending.sort((a, b) => b.size - a.size || a.order - b.order);

  const out: BarAssignment[] = [];
  for (const p of pending) {
    const candidates: AddressWindow[] = [];
    if (p.kind === "io") candidates.push(windows.io);
    else if (p.kind === "mmio32") candidates.push(windows.mmio32);
    else {
      const high = windows.mmio64;
      if (high === undefined) candidates.push(windows.mmio32);
      else if ((options.mmio64Placement ?? "low") === "low") candidates.push(windows.mmio32, high);
      else candidates.push(high, windows.mmio32);
    }
    const align = p.kind === "io" ? p.size : Math.max(p.size, PAGE);
    let address: number | undefined;
    for (const w of candidates) {
      const cursor = cursors.get(w) ?? w.base;
      const at = Math.ceil(cursor / align) * align;
      if (at + p.size <= w.end) {
        address = at;
        cursors.set(w, at + p.size);
        break;
      }
    }
    const fn = bus.get(p.device, p.func);
    if (address === undefined || fn === undefined) {
      throw new PciAllocationError(
        `no room for ${p.kind} BAR ${p.bar} (${p.size} bytes) of ${fn?.name ?? "?"} at 00:${p.device}.${p.func}`,
      );
    }
    fn.setBarAddress(p.bar, address);
    out.push({ device: p.device, function: p.func, bar: p.bar, kind: p.kind, address, size: p.size });
  }

  for (const slot of bus.list()) {
    const fn = slot.fn;
    if (options.enableDecode ?? true) {
      let command = fn.command;
      for (const bar of fn.definedBars()) command |= bar.kind === "io" ? PCI_COMMAND.IO : PCI_COMMAND.MEMORY;
      if (command !== fn.command) fn.configWrite(PCI_REG.COMMAND, 2, command);
    }
    const pin = fn.interruptPin;
    if (pin !== 0 && options.interruptLine !== undefined) {
      fn.configWrite(PCI_REG.INTERRUPT_LINE, 1, options.interruptLine(slot.device, pin));
    }
  }
  out.sort((a, b) => a.device - b.device || a.function - b.function || a.bar - b.bar);
  return out;
}
