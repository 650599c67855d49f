/**
 * The virtio-pci modern transport (OASIS virtio 1.2, 4.1 Virtio Over PCI Bus): a non-transitional PCI function
 * whose vendor-specific capabilities point into one 64-bit memory BAR holding the common configuration, ISR,
 * device configuration and notification structures, with MSI-X table and PBA in a second BAR.
 *
 * BAR 4 (64-bit memory, not prefetchable: the ISR read has a side effect):
 *   0x0000  common configuration (struct virtio_pci_common_cfg, 0x40 bytes)
 *   0x1000  ISR status
 *   0x2000  device-specific configuration
 *   0x3000  notifications: queue q at 0x3000 + 4 * q (queue_notify_off = q, notify_off_multiplier = 4), so every
 *           queue has its own address and can get its own ioeventfd
 * BAR 1 (32-bit memory): MSI-X table at 0, PBA after it; numQueues + 1 vectors by default.
 *
 * The transport knows no device type: it maps registers onto a VirtioDevice (device.ts), which runs the model.
 * All run-time state is shared (VirtioPciState: the virtio registers and queues, the PCI function's
 * configuration space, the MSI-X table), so every thread's transport built over the same state, with the same
 * options, is the same device: a register write handled on one vCPU thread and a queue notification served on
 * another (or on an ioeventfd worker) meet in the shared state.
 */

import type { BusDevice } from "../../bus/bus.ts";
import type { GuestMemory } from "../../memory/guest-memory.ts";
import type { Counter, MetricsSink } from "../../metrics/registry.ts";
import { type DeviceState, nested, StateReader } from "../../shared/device-state.ts";
import type { IrqLine } from "../../shared/irq-line.ts";
import { BarRegions } from "../pci/bars.ts";
import { PCI_CAP_ID, PciFunction, type PciFunctionOptions } from "../pci/config.ts";
import { type MsiSink, Msix } from "../pci/msix.ts";
import { VIRTIO_ID, VIRTIO_MSI_NO_VECTOR } from "./constants.ts";
import { type QueueField, VirtioDevice, type VirtioDeviceModel, type VirtioInterrupts } from "./device.ts";
import type { Defer, NotifyBudget } from "./work-budget.ts";

export const VIRTIO_PCI_VENDOR_ID = 0x1af4;
/** 4.1.2: PCI Device ID = 0x1040 + Virtio Device ID. */
export const VIRTIO_PCI_DEVICE_ID_BASE = 0x1040;

/** cfg_type values of struct virtio_pci_cap (4.1.4). */
export const VIRTIO_PCI_CAP = {
  COMMON_CFG: 1,
  NOTIFY_CFG: 2,
  ISR_CFG: 3,
  DEVICE_CFG: 4,
  PCI_CFG: 5,
} as const;

export const VIRTIO_PCI_BAR = 4;
export const VIRTIO_PCI_MSIX_BAR = 1;
export const COMMON_CFG_OFFSET = 0x0000;
export const COMMON_CFG_LENGTH = 0x40;
export const ISR_OFFSET = 0x1000;
export const DEVICE_CFG_OFFSET = 0x2000;
export const NOTIFY_OFFSET = 0x3000;
export const NOTIFY_OFF_MULTIPLIER = 4;

/** Offsets in struct virtio_pci_common_cfg (4.1.4.3). */
export const COMMON = {
  DEVICE_FEATURE_SELECT: 0x00,
  DEVICE_FEATURE: 0x04,
  DRIVER_FEATURE_SELECT: 0x08,
  DRIVER_FEATURE: 0x0c,
  CONFIG_MSIX_VECTOR: 0x10,
  NUM_QUEUES: 0x12,
  DEVICE_STATUS: 0x14,
  CONFIG_GENERATION: 0x15,
  QUEUE_SELECT: 0x16,
  QUEUE_SIZE: 0x18,
  QUEUE_MSIX_VECTOR: 0x1a,
  QUEUE_ENABLE: 0x1c,
  QUEUE_NOTIFY_OFF: 0x1e,
  QUEUE_DESC: 0x20,
  QUEUE_DRIVER: 0x28,
  QUEUE_DEVICE: 0x30,
  QUEUE_NOTIFY_DATA: 0x38,
  QUEUE_RESET: 0x3a,
} as const;

/** ISR status bits (4.1.4.5). */
export const ISR_QUEUE = 1;
export const ISR_CONFIG = 2;

/** PCI class codes by device type (base class << 16 | sub-class << 8 | interface). */
const CLASS_BY_TYPE: Record<number, number> = {
  [VIRTIO_ID.NET]: 0x020000, // network controller, Ethernet
  [VIRTIO_ID.BLOCK]: 0x018000, // mass storage controller, other
  [VIRTIO_ID.CONSOLE]: 0x078000, // simple communication controller, other
  [VIRTIO_ID.ENTROPY]: 0xff0000, // device does not fit any defined class
};

/** Everything a virtio-pci device keeps in shared memory; a plain object of SharedArrayBuffers (postMessage-able). */
export interface VirtioPciState {
  /** VirtioDevice state: status, features, queues, ISR, the model's region. */
  device: SharedArrayBuffer;
  /** PciFunction state (configuration space, BAR decode, INTx). */
  pci: SharedArrayBuffer;
  /** Msix state (vector table, pending bits, routes). */
  msix: SharedArrayBuffer;
}

export interface VirtioPciTransportOptions {
  /** From VirtioPciTransport.createState(model, { msixVectors }) (same msixVectors as here). */
  state: VirtioPciState;
  /** Reset the state here (exactly one thread, before sharing). */
  init?: boolean;
  model: VirtioDeviceModel;
  mem: GuestMemory;
  /** Where MSI-X messages go (KVM_SIGNAL_MSI, or the irqfd of the message's route). */
  msiSink: MsiSink;
  /** INTA#, used while MSI-X is disabled. */
  intx?: IrqLine;
  /** MSI-X table size; default numQueues + 1 (a vector per queue plus one for configuration changes). */
  msixVectors?: number;
  /** PCI Subsystem Device ID; default 0x40 (4.1.2.1: non-transitional devices SHOULD use 0x40 or higher). */
  subsystemId?: number;
  /** Name of the PCI function; default `virtio-<model.name>`. */
  name?: string;
  metrics?: MetricsSink;
  log?: (message: string) => void;
  /** The device's work budget per notification and how its place brings it back (VirtioDeviceOptions). */
  budget?: NotifyBudget;
  defer?: Defer;
}

const NO_COUNTER: Counter = { add() {}, value: 0 };

function pow2AtLeast(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}

function msixVectorCount(numQueues: number, requested: number | undefined): number {
  return Math.min(2048, Math.max(1, requested ?? numQueues + 1));
}

function leRead(data: Uint8Array): number {
  let v = 0;
  for (let i = data.length - 1; i >= 0; i--) v = v * 256 + (data[i] as number);
  return v;
}

/** A queue's notify address, for registering an ioeventfd on it. */
export interface NotifyAddress {
  queue: number;
  /** Guest-physical address of the 2-byte notification register (null while BAR 4 does not decode). */
  address: number | null;
  /** Offset in BAR 4. */
  offset: number;
  length: number;
}

export class VirtioPciTransport {
  readonly pci: PciFunction;
  readonly msix: Msix;
  readonly device: VirtioDevice;
  /** What answers BAR 4 (its device in the PciFunction; exposed for tests and direct wiring). */
  readonly bar: BusDevice;
  readonly barSize: number;
  readonly numQueues: number;
  private readonly model: VirtioDeviceModel;
  private readonly pciCfgCap: number;
  private readonly cBadAccess: Counter;
  private readonly cUnmappedVector: Counter;

  /**
   * A fresh shared state for a transport of this model (a model object, or any { numQueues, stateBytes }).
   * `msixVectors` must be what the transports are given (default numQueues + 1).
   */
  static createState(
    layout: { numQueues: number; stateBytes?: number; maxQueueSize?: number },
    opts: { msixVectors?: number } = {},
  ): VirtioPciState {
    return {
      device: VirtioDevice.createState(layout),
      pci: PciFunction.createState(),
      msix: Msix.createState(msixVectorCount(layout.numQueues, opts.msixVectors)),
    };
  }

  constructor(opts: VirtioPciTransportOptions) {
    const model = opts.model;
    this.model = model;
    this.numQueues = model.numQueues;
    const name = opts.name ?? `virtio-${model.name}`;
    const functionOptions: PciFunctionOptions = {
      vendorId: VIRTIO_PCI_VENDOR_ID,
      deviceId: VIRTIO_PCI_DEVICE_ID_BASE + model.type,
      classCode: CLASS_BY_TYPE[model.type] ?? 0xff0000,
      // 4.1.2.1: non-transitional devices SHOULD have a Revision ID of 1 or higher.
      revisionId: 1,
      subsystemVendorId: VIRTIO_PCI_VENDOR_ID,
      subsystemId: opts.subsystemId ?? 0x40,
      interruptPin: 1,
      intx: opts.intx,
      state: opts.state.pci,
      init: opts.init,
    };
    this.pci = new PciFunction(name, functionOptions);
    const m = opts.metrics;
    this.cBadAccess = m?.counter(`virtio.${model.name}.bad_register_access`) ?? NO_COUNTER;
    this.cUnmappedVector = m?.counter(`virtio.${model.name}.unmapped_vector`) ?? NO_COUNTER;

    const interrupts: VirtioInterrupts = {
      queue: (vector) => this.deliver(vector, ISR_QUEUE),
      config: (vector) => this.deliver(vector, ISR_CONFIG),
    };
    this.device = new VirtioDevice({
      state: opts.state.device,
      init: opts.init,
      model,
      mem: opts.mem,
      interrupts,
      metrics: m,
      log: opts.log,
      budget: opts.budget,
      defer: opts.defer,
    });

    // BAR 4: the virtio structures, one page each, notifications last.
    const notifyLength = Math.max(2, NOTIFY_OFF_MULTIPLIER * this.numQueues);
    this.barSize = pow2AtLeast(Math.max(0x4000, NOTIFY_OFFSET + notifyLength));
    this.bar = {
      name: `${name}.virtio`,
      read: (offset, data) => this.barRead(offset, data),
      write: (offset, data) => this.barWrite(offset, data),
    };
    this.pci.defineBar(VIRTIO_PCI_BAR, { kind: "mmio64", size: this.barSize, device: this.bar });

    // BAR 1: MSI-X table and PBA.
    const vectors = msixVectorCount(this.numQueues, opts.msixVectors);
    const tableLength = 16 * vectors;
    const pbaOffset = Math.ceil(tableLength / 0x100) * 0x100;
    const pbaLength = Math.ceil(vectors / 64) * 8;
    const msixBarSize = pow2AtLeast(Math.max(0x1000, pbaOffset + pbaLength));
    const msixRegions = new BarRegions(`${name}.msix`);
    this.pci.defineBar(VIRTIO_PCI_MSIX_BAR, { kind: "mmio32", size: msixBarSize, device: msixRegions });

    // 4.1.4: the virtio structure capabilities, in order of preference.
    this.addVirtioCap(VIRTIO_PCI_CAP.COMMON_CFG, COMMON_CFG_OFFSET, COMMON_CFG_LENGTH);
    const notifyExtra = new Uint8Array(4);
    new DataView(notifyExtra.buffer).setUint32(0, NOTIFY_OFF_MULTIPLIER, true);
    this.addVirtioCap(VIRTIO_PCI_CAP.NOTIFY_CFG, NOTIFY_OFFSET, notifyLength, notifyExtra);
    this.addVirtioCap(VIRTIO_PCI_CAP.ISR_CFG, ISR_OFFSET, 1);
    if (model.configSize > 0) {
      this.addVirtioCap(VIRTIO_PCI_CAP.DEVICE_CFG, DEVICE_CFG_OFFSET, Math.min(model.configSize, 0x1000));
    }
    this.pciCfgCap = this.addPciCfgCap();

    this.msix = new Msix(this.pci, {
      vectors,
      tableBar: VIRTIO_PCI_MSIX_BAR,
      tableOffset: 0,
      pbaBar: VIRTIO_PCI_MSIX_BAR,
      pbaOffset,
      sink: opts.msiSink,
      metrics: m,
      state: opts.state.msix,
      init: opts.init,
    });
    msixRegions.add(0, this.msix.tableLength, this.msix.table);
    msixRegions.add(pbaOffset, this.msix.pbaLength, this.msix.pba);
    // The layout is complete: the function goes live (and checks it matches other threads' builds).
    this.pci.attach();
  }

  /** struct virtio_pci_cap (+ extra data) as a vendor-specific capability; returns its config-space offset. */
  private addVirtioCap(cfgType: number, offset: number, length: number, extra?: Uint8Array): number {
    const body = new Uint8Array(14 + (extra?.length ?? 0));
    const v = new DataView(body.buffer);
    body[0] = 2 + body.length; // cap_len, counting cap_vndr and cap_next
    body[1] = cfgType;
    body[2] = VIRTIO_PCI_BAR;
    body[3] = 0; // id
    v.setUint32(6, offset, true);
    v.setUint32(10, length, true);
    if (extra) body.set(extra, 14);
    return this.pci.addCapability(PCI_CAP_ID.VENDOR_SPECIFIC, body);
  }

  /**
   * 4.1.4.9 PCI configuration access capability: bar, offset, length and pci_cfg_data are read-write; an access
   * to pci_cfg_data is an access of `length` bytes at `offset` in BAR `bar`.
   */
  private addPciCfgCap(): number {
    const body = new Uint8Array(18);
    body[0] = 20;
    body[1] = VIRTIO_PCI_CAP.PCI_CFG;
    const mask = new Uint8Array(18);
    mask[2] = 0xff; // bar
    mask.fill(0xff, 6, 18); // offset, length, pci_cfg_data
    // Capability-relative offsets: bar at 4, offset at 8, length at 12, pci_cfg_data at 16..19.
    return this.pci.addCapability(PCI_CAP_ID.VENDOR_SPECIFIC, body, {
      writableMask: mask,
      onWrite: (off, len) => {
        if (off < 20 && off + len > 16) this.pciCfgAccess("write");
      },
      onRead: (off, len) => {
        if (off < 20 && off + len > 16) this.pciCfgAccess("read");
      },
    });
  }

  private pciCfgAccess(op: "read" | "write"): void {
    const cap = this.pciCfgCap;
    const bar = this.pci.peek8(cap + 4);
    const offset = this.pci.peek32(cap + 8);
    const length = this.pci.peek32(cap + 12);
    // 4.1.4.9.2: the driver uses aligned 1, 2 or 4-byte windows inside a virtio structure; anything else does
    // nothing (and reads keep the old data).
    if (bar !== VIRTIO_PCI_BAR || !(length === 1 || length === 2 || length === 4)) {
      this.cBadAccess.add();
      return;
    }
    if (offset % length !== 0 || offset + length > this.barSize) {
      this.cBadAccess.add();
      return;
    }
    const data = new Uint8Array(length);
    if (op === "write") {
      for (let i = 0; i < length; i++) data[i] = this.pci.peek8(cap + 16 + i);
      this.barWrite(offset, data);
    } else {
      this.barRead(offset, data);
      for (let i = 0; i < length; i++) this.pci.poke8(cap + 16 + i, data[i] as number);
    }
  }

  // ---- interrupts -----------------------------------------------------------------------------------------

  /**
   * 4.1.4.5 / 4.1.5.3-4: with MSI-X enabled the vector's message goes out (nothing for NO_VECTOR); without, the
   * ISR bit is set and INTx asserted until the driver reads the ISR. The configuration bit is set either way.
   */
  private deliver(vector: number, isrBit: number): void {
    const msix = this.msix;
    if (isrBit === ISR_CONFIG || !msix.enabled) this.device.isrOr(isrBit);
    if (msix.enabled) {
      if (vector === VIRTIO_MSI_NO_VECTOR || msix.notify(vector) === "invalid") this.cUnmappedVector.add();
      return;
    }
    this.pci.setIntx(true);
  }

  // ---- BAR 4 ------------------------------------------------------------------------------------------------

  /** Offset in BAR 4 of queue q's notification register. */
  notifyOffset(q: number): number {
    return NOTIFY_OFFSET + NOTIFY_OFF_MULTIPLIER * q;
  }

  /** Every queue's notification register, for ioeventfds (re-read after BAR 4 moves: see PciFunction.onBarRemap). */
  notifyAddresses(): NotifyAddress[] {
    const base = this.pci.barMapping(VIRTIO_PCI_BAR);
    const out: NotifyAddress[] = [];
    for (let q = 0; q < this.numQueues; q++) {
      const offset = this.notifyOffset(q);
      out.push({ queue: q, offset, length: 2, address: base === null ? null : base + offset });
    }
    return out;
  }

  /** The available buffer notification for queue q, as an ioeventfd worker delivers it. */
  notify(q: number): void {
    this.device.notify(q);
  }

  private barRead(offset: number, data: Uint8Array): void {
    data.fill(0);
    if (offset >= COMMON_CFG_OFFSET && offset < COMMON_CFG_OFFSET + COMMON_CFG_LENGTH) {
      this.readCommon(offset - COMMON_CFG_OFFSET, data);
    } else if (offset === ISR_OFFSET) {
      // 4.1.4.5: reading the ISR returns it, resets it to 0 and de-asserts the interrupt.
      data[0] = this.device.isrTake();
      this.pci.setIntx(false);
    } else if (offset >= DEVICE_CFG_OFFSET && offset < DEVICE_CFG_OFFSET + 0x1000) {
      this.device.readConfig(offset - DEVICE_CFG_OFFSET, data);
    }
  }

  private barWrite(offset: number, data: Uint8Array): void {
    if (offset >= COMMON_CFG_OFFSET && offset < COMMON_CFG_OFFSET + COMMON_CFG_LENGTH) {
      this.writeCommon(offset - COMMON_CFG_OFFSET, data);
    } else if (offset >= DEVICE_CFG_OFFSET && offset < DEVICE_CFG_OFFSET + 0x1000) {
      this.device.writeConfig(offset - DEVICE_CFG_OFFSET, data);
    } else if (offset >= NOTIFY_OFFSET && offset < NOTIFY_OFFSET + NOTIFY_OFF_MULTIPLIER * this.numQueues) {
      // 4.1.5.2: the queue is the one whose notify address was written; the value (its index) adds nothing.
      this.device.notify(Math.floor((offset - NOTIFY_OFFSET) / NOTIFY_OFF_MULTIPLIER));
    } else {
      this.cBadAccess.add();
    }
  }

  /** The common configuration structure as it reads now, for any access size. */
  private readCommon(offset: number, data: Uint8Array): void {
    const d = this.device;
    const buf = new Uint8Array(COMMON_CFG_LENGTH);
    const v = new DataView(buf.buffer);
    const q = d.queueSelect;
    v.setUint32(COMMON.DEVICE_FEATURE_SELECT, d.deviceFeatureSelect, true);
    v.setUint32(COMMON.DEVICE_FEATURE, d.readDeviceFeatures(), true);
    v.setUint32(COMMON.DRIVER_FEATURE_SELECT, d.driverFeatureSelect, true);
    v.setUint32(COMMON.DRIVER_FEATURE, d.readDriverFeatures(), true);
    v.setUint16(COMMON.CONFIG_MSIX_VECTOR, d.configVector, true);
    v.setUint16(COMMON.NUM_QUEUES, this.numQueues, true);
    v.setUint8(COMMON.DEVICE_STATUS, d.status);
    v.setUint8(COMMON.CONFIG_GENERATION, d.configGeneration);
    v.setUint16(COMMON.QUEUE_SELECT, q, true);
    v.setUint16(COMMON.QUEUE_SIZE, d.readQueue(q, "size"), true);
    v.setUint16(COMMON.QUEUE_MSIX_VECTOR, d.readQueue(q, "msix_vector"), true);
    v.setUint16(COMMON.QUEUE_ENABLE, d.readQueue(q, "enable"), true);
    const exists = q < this.numQueues;
    v.setUint16(COMMON.QUEUE_NOTIFY_OFF, exists ? q : 0, true);
    v.setUint32(COMMON.QUEUE_DESC, d.readQueue(q, "desc_lo"), true);
    v.setUint32(COMMON.QUEUE_DESC + 4, d.readQueue(q, "desc_hi"), true);
    v.setUint32(COMMON.QUEUE_DRIVER, d.readQueue(q, "driver_lo"), true);
    v.setUint32(COMMON.QUEUE_DRIVER + 4, d.readQueue(q, "driver_hi"), true);
    v.setUint32(COMMON.QUEUE_DEVICE, d.readQueue(q, "device_lo"), true);
    v.setUint32(COMMON.QUEUE_DEVICE + 4, d.readQueue(q, "device_hi"), true);
    v.setUint16(COMMON.QUEUE_NOTIFY_DATA, exists ? q : 0, true);
    v.setUint16(COMMON.QUEUE_RESET, d.readQueue(q, "reset"), true);
    for (let i = 0; i < data.length; i++) data[i] = buf[offset + i] ?? 0;
  }

  /** A vector the MSI-X table has, or NO_VECTOR: 4.1.5.1.2, a failed mapping reads back as NO_VECTOR. */
  private mapVector(v: number): number {
    return v < this.msix.vectors ? v : VIRTIO_MSI_NO_VECTOR;
  }

  /**
   * A write to the common configuration. 4.1.3.1: the driver uses the natural width of each field (32-bit
   * halves for 64-bit fields); other accesses, and writes to read-only fields, are ignored and counted.
   */
  private writeCommon(offset: number, data: Uint8Array): void {
    const d = this.device;
    const size = data.length;
    const value = leRead(data);
    const q = d.queueSelect;
    const queueWrite = (field: QueueField, v: number) => d.writeQueue(q, field, v);
    const addr64 = (base: number, lo: QueueField, hi: QueueField): boolean => {
      if (offset === base && size === 4) queueWrite(lo, value);
      else if (offset === base + 4 && size === 4) queueWrite(hi, value);
      else if (offset === base && size === 8) {
        queueWrite(lo, value % 2 ** 32);
        queueWrite(hi, Math.floor(value / 2 ** 32));
      } else return false;
      return true;
    };
    switch (size === 1 || size === 2 || size === 4 ? `${offset}/${size}` : "") {
      case `${COMMON.DEVICE_FEATURE_SELECT}/4`:
        d.deviceFeatureSelect = value;
        return;
      case `${COMMON.DRIVER_FEATURE_SELECT}/4`:
        d.driverFeatureSelect = value;
        return;
      case `${COMMON.DRIVER_FEATURE}/4`:
        d.writeDriverFeatures(value);
        return;
      case `${COMMON.CONFIG_MSIX_VECTOR}/2`:
        d.configVector = this.mapVector(value);
        return;
      case `${COMMON.DEVICE_STATUS}/1`:
        d.writeStatus(value);
        if (value === 0) this.pci.setIntx(false);
        return;
      case `${COMMON.QUEUE_SELECT}/2`:
        d.queueSelect = value;
        return;
      case `${COMMON.QUEUE_SIZE}/2`:
        queueWrite("size", value);
        return;
      case `${COMMON.QUEUE_MSIX_VECTOR}/2`:
        queueWrite("msix_vector", this.mapVector(value));
        return;
      case `${COMMON.QUEUE_ENABLE}/2`:
        queueWrite("enable", value);
        return;
      case `${COMMON.QUEUE_RESET}/2`:
        queueWrite("reset", value);
        return;
    }
    if (
      addr64(COMMON.QUEUE_DESC, "desc_lo", "desc_hi") ||
      addr64(COMMON.QUEUE_DRIVER, "driver_lo", "driver_hi") ||
      addr64(COMMON.QUEUE_DEVICE, "device_lo", "device_hi")
    ) {
      return;
    }
    this.cBadAccess.add();
  }

  // ---- snapshots ----------------------------------------------------------------------------------------------

  /**
   * The whole virtio-pci device, for a snapshot: its PCI function (configuration space, BARs, INTx), MSI-X table
   * and pending bits, and the virtio device (status, features, queues and their indices, the model's state). See
   * VirtioDevice.saveState for requests in flight (DeviceBusyError until the device has finished them).
   */
  saveState(): DeviceState {
    return {
      kind: "virtio-pci",
      version: 1,
      data: {
        pci: nested(this.pci.saveState()),
        msix: nested(this.msix.saveState()),
        device: nested(this.device.saveState()),
      },
    };
  }

  /**
   * Restores a saved device into this transport (built with the same model options; its guest paused). Every
   * part is checked before any is changed: the PCI function and MSI-X state, every vector the device would
   * signal (one the table has, or NO_VECTOR), then the virtio device, whose own checks come last since it puts
   * itself back if its configuration turns out to differ. Then call `device.activate()` to go on.
   */
  restoreState(s: DeviceState): void {
    const r = StateReader.open(`virtio-pci ${this.name}`, s, "virtio-pci", 1);
    const applyPci = this.pci.prepareRestore(r.state("pci"));
    const applyMsix = this.msix.prepareRestore(r.state("msix"));
    const device = r.state("device");
    const d = new StateReader(`virtio-pci ${this.name}`, device.data, "device.");
    const vectorOk = (v: number) => v === VIRTIO_MSI_NO_VECTOR || v < this.msix.vectors;
    const cv = d.int("configVector", 0, 0xffff);
    if (!vectorOk(cv)) d.fail("configVector", `is ${cv}; the MSI-X table has ${this.msix.vectors} vectors`);
    for (const [q, qr] of d.objects("queues", this.numQueues).entries()) {
      const v = qr.int("vector", 0, 0xffff);
      if (!vectorOk(v))
        qr.fail("vector", `of queue ${q} is ${v}; the MSI-X table has ${this.msix.vectors} vectors`);
    }
    this.device.restoreState(device);
    applyPci();
    applyMsix();
  }

  /** The model's name (for logs). */
  get name(): string {
    return this.model.name;
  }
}
