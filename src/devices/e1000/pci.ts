/**
 * The 82540EM as a PCI function: an Intel PRO/1000 MT Desktop Adapter (E1000_PCI_IDS: 8086:100E, subsystem
 * 8086:001E, class 02 00 00 Ethernet), with
 *   BAR0  32-bit non-prefetchable memory, 128 KiB: the register space (SDM §4.1, §13)
 *   BAR1  I/O, 64 bytes: the IOADDR/IODATA window (SDM §13.2.1)
 *   INTA# through PciFunction.setIntx, so COMMAND.INTx-disable and STATUS.Interrupt behave as PCI says.
 * No MSI (the 82540EM has none) and no other capability.
 *
 * Like VirtioPciTransport, all run-time state is shared (E1000PciState: the function's configuration space and
 * the E1000 device state), so every thread's E1000Pci built over the same state is the same device: each vCPU
 * thread adds its own `pci` to its PciBus and connects the BARs to its buses (`connectBars`), and the NIC's I/O
 * thread builds one too (its `nic` receives frames from the backend and runs `poll()`); exactly one of them, on
 * the thread that created the state, passes `init: true`.
 */
import type { BusDevice } from "../../bus/bus.ts";
import type { GuestMemory } from "../../memory/guest-memory.ts";
import type { MetricsSink } from "../../metrics/registry.ts";
import type { NetBackend } from "../../net/backend.ts";
import { type DeviceState, nested, StateReader } from "../../shared/device-state.ts";
import type { IrqLine } from "../../shared/irq-line.ts";
import { PciFunction } from "../pci/config.ts";
import { E1000, type E1000StateOptions } from "./e1000.ts";
import { E1000_BARS, E1000_IO_SIZE, E1000_MMIO_SIZE, E1000_PCI_IDS } from "./regs.ts";

/** Everything an e1000 PCI function keeps in shared memory; a plain object of SharedArrayBuffers (postMessage-able). */
export interface E1000PciState {
  /** PciFunction state (configuration space, BAR decode, INTx). */
  pci: SharedArrayBuffer;
  /** E1000 device state (registers, EEPROM, PHY, statistics, timers, interrupts). */
  nic: SharedArrayBuffer;
}

export interface E1000PciOptions {
  /** From E1000Pci.createState. */
  state: E1000PciState;
  /** Reset both states here (exactly one thread, the one that created the state, before sharing it). */
  init?: boolean;
  /** Guest RAM as this thread sees it. */
  mem: GuestMemory;
  /** This thread's side of the network backend (see E1000Options.backend). */
  backend: NetBackend;
  /** The line INTA# drives (the GSI the slot's pin is routed to). */
  intx?: IrqLine;
  /** Name of the PCI function and of the device in logs and metrics. Default "e1000". */
  name?: string;
  metrics?: MetricsSink;
  log?: (message: string) => void;
  /** See E1000Options.now. */
  now?: () => number;
  /** See E1000Options.onDeadlineChanged. */
  onDeadlineChanged?: () => void;
}

export class E1000Pci {
  readonly name: string;
  readonly pci: PciFunction;
  /** The device model: `poll()`, `nextDeadline()`, `setLinkUp()`, `errorCounts()`, `close()`. */
  readonly nic: E1000;
  /** What answers BAR0 (the register space) and BAR1 (the I/O window); also registered in `pci`. */
  readonly mmio: BusDevice;
  readonly io: BusDevice;

  /** A fresh shared state: a PCI function at reset and an E1000 at power-on with `mac` in its EEPROM. */
  static createState(options: E1000StateOptions): E1000PciState {
    return { pci: PciFunction.createState(), nic: E1000.createState(options) };
  }

  constructor(opts: E1000PciOptions) {
    const name = opts.name ?? "e1000";
    this.name = name;
    this.pci = new PciFunction(name, {
      vendorId: E1000_PCI_IDS.vendorId,
      deviceId: E1000_PCI_IDS.deviceId,
      revisionId: E1000_PCI_IDS.revisionId,
      classCode: E1000_PCI_IDS.classCode,
      subsystemVendorId: E1000_PCI_IDS.subsystemVendorId,
      subsystemId: E1000_PCI_IDS.subsystemId,
      interruptPin: E1000_PCI_IDS.interruptPin,
      intx: opts.intx,
      state: opts.state.pci,
      init: opts.init,
    });
    // The BAR devices forward to the model, which is built once the function is attached: building it attaches
    // the backend, which may deliver a frame (and raise INTx) at once.
    this.mmio = {
      name: `${name}.regs`,
      read: (offset, data) => this.nic.read(offset, data),
      write: (offset, data) => this.nic.write(offset, data),
    };
    this.io = {
      name: `${name}.io`,
      read: (offset, data) => this.nic.io.read(offset, data),
      write: (offset, data) => this.nic.io.write(offset, data),
    };
    this.pci.defineBar(E1000_BARS.mmio.index, { kind: "mmio32", size: E1000_MMIO_SIZE, device: this.mmio });
    this.pci.defineBar(E1000_BARS.io.index, { kind: "io", size: E1000_IO_SIZE, device: this.io });
    this.pci.attach();
    this.nic = new E1000({
      state: opts.state.nic,
      init: opts.init,
      mem: opts.mem,
      backend: opts.backend,
      irq: { set: (level) => this.pci.setIntx(level) },
      metrics: opts.metrics,
      log: opts.log,
      name,
      now: opts.now,
      onDeadlineChanged: opts.onDeadlineChanged,
    });
  }

  /** The PCI function (configuration space, BARs, INTx) and the NIC, for a snapshot. */
  saveState(): DeviceState {
    return {
      kind: "e1000-pci",
      version: 1,
      data: { pci: nested(this.pci.saveState()), nic: nested(this.nic.saveState()) },
    };
  }

  /** Restores both parts, each checked before either changes (see PciFunction.prepareRestore, E1000.restoreState). */
  restoreState(s: DeviceState): void {
    const r = StateReader.open(`E1000Pci ${this.name}`, s, "e1000-pci", 1);
    const applyPci = this.pci.prepareRestore(r.state("pci"));
    this.nic.restoreState(r.state("nic"));
    applyPci();
  }
}
