/**
 * MSI-X (PCI Local Bus Specification 3.0, §6.8.2): the capability in configuration space, the vector table and
 * the Pending Bit Array as BusDevices to place in memory BARs, and message delivery with masking.
 *
 * Delivery (`notify`) follows §6.8.2.9 (Vector Control, Mask bit) and §6.8.2.10 (Pending Bits): with MSI-X enabled and the vector unmasked (neither the
 * Function Mask bit in Message Control nor the vector's Mask bit set), the message (address, data) of the table
 * entry is signalled at once. While the vector is masked the function records the event in the vector's Pending
 * bit instead, and sends the message (clearing the bit) as soon as the vector becomes unmasked. With MSI-X
 * disabled nothing is recorded: the function uses INTx instead, and while MSI-X is enabled INTx is suppressed.
 *
 * For KVM GSI routing / irqfd, `onRouteChange(vector, route)` reports each vector's effective route whenever it
 * changes: the message while the vector can be delivered directly, null while it cannot (MSI-X disabled or the
 * vector masked, when events must come through `notify` so pending bits are kept).
 *
 * Emulation choices: the table accepts accesses of any size (the spec asks software for aligned dwords or
 * qwords, §6.8.2); Message Address bits 1:0 and Vector Control bits 31:1 are read-only 0; PBA writes are ignored.
 *
 * Threads: like its PciFunction, an Msix is built in every thread from the same inputs (before the function's
 * `attach()`, since it adds a capability), over one shared state (`Msix.createState(vectors)`, or `init: true`
 * on one of them) holding the vector table, the pending bits and the routes last reported. Message Control lives
 * in the function's configuration space. Everything runs under the function's lock, so `notify` may be called
 * from any thread, a vCPU or a device I/O thread, with the same results, also while the caller holds its own
 * device locks (the function's lock is a leaf). `sink.signal` and `onRouteChange` run with that lock held, in the
 * thread that caused them, and must not take device locks: a route change is reported once for the machine, so
 * `onRouteChange` must update machine-wide state (KVM GSI routing), which any thread can do.
 */
import type { BusDevice } from "../../bus/bus.ts";
import type { Counter, MetricsSink } from "../../metrics/registry.ts";
import { type DeviceState, DeviceStateError, StateReader } from "../../shared/device-state.ts";
import { checkStateBuffer, LayoutHash, PCI_CAP_ID, type PciFunction } from "./config.ts";
import { PciLayoutError, PciMsixError, PciStateError } from "./errors.ts";

/** Where MSI / MSI-X messages go: a memory write of `data` to the 64-bit address (addressHi:addressLo). */
export interface MsiSink {
  signal(addressLo: number, addressHi: number, data: number): void;
}

export interface MsixRoute {
  readonly addressLo: number;
  readonly addressHi: number;
  readonly data: number;
}

export interface MsixEntry extends MsixRoute {
  /** The vector's own Mask bit (Vector Control bit 0). */
  readonly masked: boolean;
}

/** What `notify` did: signalled, recorded as pending, or nothing (MSI-X disabled / no such vector). */
export type MsixDelivery = "sent" | "pending" | "disabled" | "invalid";

export interface MsixOptions {
  /** Table size: 1 to 2048 vectors (§6.8.2.3, Table Size is N-1 in 11 bits). */
  vectors: number;
  /** Index of the memory BAR holding the table, and the table's offset in it (qword aligned). */
  tableBar: number;
  tableOffset: number;
  /** Index of the memory BAR holding the PBA, and its offset (qword aligned). */
  pbaBar: number;
  pbaOffset: number;
  sink: MsiSink;
  onRouteChange?: (vector: number, route: MsixRoute | null) => void;
  metrics?: MetricsSink;
  /**
   * The table, PBA and route state, shared by every thread's Msix for this function: `Msix.stateBytes(vectors)`
   * bytes from `Msix.createState(vectors)`, or reset with `init`. Required when the function's state is shared;
   * absent otherwise: a private state.
   */
  state?: SharedArrayBuffer;
  /** Reset the state. Exactly one constructor (before the state is shared) passes true; or use createState. */
  init?: boolean;
}

/** Table entry layout (§6.8.2.6-6.8.2.9). */
export const MSIX_ENTRY_SIZE = 16;
const ENTRY_ADDR_LO = 0;
const ENTRY_ADDR_HI = 4;
const ENTRY_DATA = 8;
const ENTRY_VECTOR_CONTROL = 12;
const VECTOR_CONTROL_MASK = 0x1;
/** Writable bits of each byte of an entry. */
const ENTRY_WMASK = [0xfc, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0, 0, 0];

/** Message Control (§6.8.2.3). */
export const MSIX_CONTROL_ENABLE = 0x8000;
export const MSIX_CONTROL_FUNCTION_MASK = 0x4000;
const MSIX_CONTROL_TABLE_SIZE = 0x07ff;

/** Capability layout: ID, next, Message Control (+2), Table Offset/BIR (+4), PBA Offset/BIR (+8). */
const CAP_CONTROL = 2;
const CAP_TABLE = 4;
const CAP_PBA = 8;
const CAP_BODY_LENGTH = 10;

const NO_COUNTER: Counter = { add() {}, value: 0 };

// Shared state layout: a header, then per vector a table entry (16 bytes, as the guest sees it) and the route
// last reported (valid flag, address low, address high, data), then the PBA.
const S_MAGIC = 0;
const S_SEALED = 4; // 1 once the first Msix built over the state reset the table and recorded the layout
const S_HASH = 8;
const S_VECTORS = 12;
const S_ENTRIES = 16;
const ROUTE_SIZE = 16;
const MAGIC = 0x4d534958; // "MSIX"
const STATE_KIND = "msix";
const STATE_VERSION = 1;

function stateBytes(vectors: number): number {
  return S_ENTRIES + vectors * (MSIX_ENTRY_SIZE + ROUTE_SIZE) + Math.ceil(vectors / 64) * 8;
}

function resetMsixState(state: SharedArrayBuffer): void {
  new Uint8Array(state).fill(0);
  Atomics.store(new Int32Array(state, 0, 4), S_MAGIC / 4, MAGIC);
}

export class Msix {
  readonly vectors: number;
  /** Offset of the capability in configuration space. */
  readonly capOffset: number;
  /** Bytes the table occupies in its BAR (16 per vector). */
  readonly tableLength: number;
  /** Bytes the PBA occupies in its BAR (a qword per 64 vectors). */
  readonly pbaLength: number;
  readonly table: BusDevice;
  readonly pba: BusDevice;
  onRouteChange: ((vector: number, route: MsixRoute | null) => void) | undefined;

  private readonly fn: PciFunction;
  private readonly sink: MsiSink;
  /** Shared: the table as the guest sees it. */
  private readonly entries: Uint8Array;
  private readonly entryView: DataView;
  /** Shared: the routes last reported through onRouteChange. */
  private readonly routeView: DataView;
  /** Shared: the Pending Bit Array. */
  private readonly pending: Uint8Array;
  private readonly sent: Counter;
  private readonly pended: Counter;

  /** Bytes of shared state an Msix with `vectors` vectors needs. */
  static stateBytes(vectors: number): number {
    return stateBytes(vectors);
  }

  /** A fresh state to hand to every thread's Msix for one function. */
  static createState(vectors: number): SharedArrayBuffer {
    if (!Number.isInteger(vectors) || vectors < 1 || vectors > 2048) {
      throw new PciMsixError(`MSI-X table size ${vectors} not in 1-2048`);
    }
    const state = new SharedArrayBuffer(stateBytes(vectors));
    resetMsixState(state);
    return state;
  }

  constructor(fn: PciFunction, options: MsixOptions) {
    const { vectors, tableBar, tableOffset, pbaBar, pbaOffset } = options;
    if (!Number.isInteger(vectors) || vectors < 1 || vectors > 2048) {
      throw new PciMsixError(`${fn.name}: MSI-X table size ${vectors} not in 1-2048`);
    }
    this.fn = fn;
    this.vectors = vectors;
    this.sink = options.sink;
    this.onRouteChange = options.onRouteChange;
    this.tableLength = vectors * MSIX_ENTRY_SIZE;
    this.pbaLength = Math.ceil(vectors / 64) * 8;
    this.checkPlacement("table", tableBar, tableOffset, this.tableLength);
    this.checkPlacement("PBA", pbaBar, pbaOffset, this.pbaLength);
    if (
      tableBar === pbaBar &&
      tableOffset < pbaOffset + this.pbaLength &&
      pbaOffset < tableOffset + this.tableLength
    ) {
      throw new PciMsixError(`${fn.name}: MSI-X table and PBA overlap in BAR ${tableBar}`);
    }

    const bytes = stateBytes(vectors);
    let state = options.state;
    if (state === undefined) {
      if (fn.shared) {
        throw new PciStateError(
          `Msix ${fn.name}: the function's state is shared, so MSI-X needs shared state too ` +
            "(Msix.createState(vectors), passed as `state` in every thread)",
        );
      }
      state = new SharedArrayBuffer(bytes);
      resetMsixState(state);
    } else {
      checkStateBuffer(`Msix ${fn.name}`, state, 0, bytes);
      if (options.init) resetMsixState(state);
    }
    const words = new Int32Array(state, 0, S_ENTRIES / 4);
    if (Atomics.load(words, S_MAGIC / 4) !== MAGIC) {
      throw new PciStateError(
        `Msix ${fn.name}: state is not initialised (use Msix.createState(vectors) or init: true)`,
      );
    }
    this.entries = new Uint8Array(state, S_ENTRIES, this.tableLength);
    this.entryView = new DataView(state, S_ENTRIES, this.tableLength);
    this.routeView = new DataView(state, S_ENTRIES + this.tableLength, vectors * ROUTE_SIZE);
    this.pending = new Uint8Array(
      state,
      S_ENTRIES + vectors * (MSIX_ENTRY_SIZE + ROUTE_SIZE),
      this.pbaLength,
    );

    const body = new Uint8Array(CAP_BODY_LENGTH);
    const bodyView = new DataView(body.buffer);
    bodyView.setUint16(0, (vectors - 1) & MSIX_CONTROL_TABLE_SIZE, true);
    bodyView.setUint32(CAP_TABLE - 2, (tableOffset | tableBar) >>> 0, true);
    bodyView.setUint32(CAP_PBA - 2, (pbaOffset | pbaBar) >>> 0, true);
    // Only Function Mask and MSI-X Enable (Message Control bits 14 and 15) are writable.
    const writableMask = new Uint8Array(CAP_BODY_LENGTH);
    writableMask[1] = (MSIX_CONTROL_ENABLE | MSIX_CONTROL_FUNCTION_MASK) >>> 8;
    // Any write to the capability may have flipped Enable or Function Mask; controlChanged only acts on changes.
    // Capability hooks run outside the function's lock: take it for the whole update.
    this.capOffset = fn.addCapability(PCI_CAP_ID.MSIX, body, {
      writableMask,
      onWrite: () => fn.withLock(() => this.controlChanged()),
    });

    // The first Msix over the state resets the table; the others check they describe the same layout.
    const layout =
      new LayoutHash()
        .str(fn.name)
        .u32(vectors)
        .u32(tableBar)
        .u32(tableOffset)
        .u32(pbaBar)
        .u32(pbaOffset)
        .u32(this.capOffset).value | 0;
    fn.withLock(() => {
      if (Atomics.load(words, S_SEALED / 4) === 0) {
        this.resetTable();
        words[S_HASH / 4] = layout;
        words[S_VECTORS / 4] = vectors;
        Atomics.store(words, S_SEALED / 4, 1);
      } else if (words[S_HASH / 4] !== layout) {
        throw new PciLayoutError(
          `Msix ${fn.name}: this thread built a different MSI-X layout from the one recorded in the shared ` +
            `state (${vectors} vectors here, ${words[S_VECTORS / 4]} recorded; table BAR ${tableBar} + ` +
            `${tableOffset}, PBA BAR ${pbaBar} + ${pbaOffset}, capability at ${this.capOffset}). Every thread ` +
            "must build it with the same inputs, and pass each function its own state.",
        );
      }
    });

    const name = fn.name;
    this.sent = options.metrics?.counter(`msix.${name}.sent`) ?? NO_COUNTER;
    this.pended = options.metrics?.counter(`msix.${name}.pending`) ?? NO_COUNTER;
    this.table = {
      name: `${name}.msix-table`,
      read: (offset, data) => this.locked(() => this.readTable(offset, data)),
      write: (offset, data) => this.locked(() => this.writeTable(offset, data)),
    };
    this.pba = {
      name: `${name}.msix-pba`,
      read: (offset, data) =>
        this.locked(() => {
          for (let i = 0; i < data.length; i++) data[i] = this.pending[offset + i] ?? 0;
        }),
      write: () => {},
    };
  }

  private checkPlacement(what: string, barIndex: number, offset: number, length: number): void {
    const bar = this.fn.bar(barIndex);
    if (bar === undefined || bar.kind === "io") {
      throw new PciMsixError(`${this.fn.name}: MSI-X ${what} BAR ${barIndex} is not a defined memory BAR`);
    }
    // §6.8.2.4 / §6.8.2.5: the low 3 bits of the offset dword hold the BIR, so offsets are qword aligned.
    if (!Number.isInteger(offset) || offset < 0 || offset % 8 !== 0 || offset + length > bar.size) {
      throw new PciMsixError(
        `${this.fn.name}: MSI-X ${what} at offset ${offset} (+${length}) does not fit BAR ${barIndex} (${bar.size})`,
      );
    }
  }

  /** Runs `f` under the function's lock, once the function is attached (its Message Control is live then). */
  private locked<T>(f: () => T): T {
    if (!this.fn.attached) {
      throw new PciStateError(`Msix ${this.fn.name}: used before the function's attach()`);
    }
    return this.fn.withLock(f);
  }

  /** Message Control as the guest last wrote it. */
  get control(): number {
    return this.fn.peek16(this.capOffset + CAP_CONTROL);
  }
  get enabled(): boolean {
    return (this.control & MSIX_CONTROL_ENABLE) !== 0;
  }
  get functionMasked(): boolean {
    return (this.control & MSIX_CONTROL_FUNCTION_MASK) !== 0;
  }

  /** A table entry as the guest programmed it. */
  entry(vector: number): MsixEntry {
    this.checkVector(vector);
    return this.locked(() => {
      const base = vector * MSIX_ENTRY_SIZE;
      const v = this.entryView;
      return {
        addressLo: v.getUint32(base + ENTRY_ADDR_LO, true),
        addressHi: v.getUint32(base + ENTRY_ADDR_HI, true),
        data: v.getUint32(base + ENTRY_DATA, true),
        masked: (v.getUint32(base + ENTRY_VECTOR_CONTROL, true) & VECTOR_CONTROL_MASK) !== 0,
      };
    });
  }

  /** Whether the vector is masked, by its own Mask bit or the Function Mask. */
  isMasked(vector: number): boolean {
    this.checkVector(vector);
    return this.locked(() => this.functionMasked || this.entryMasked(vector));
  }

  isPending(vector: number): boolean {
    this.checkVector(vector);
    return this.locked(() => this.pendingBit(vector));
  }

  /** The vector's effective route: its message while MSI-X is enabled and the vector unmasked, else null. */
  route(vector: number): MsixRoute | null {
    this.checkVector(vector);
    return this.locked(() => this.reportedRoute(vector));
  }

  /**
   * The device raises `vector`. Guest-controlled vector numbers are safe to pass: an out-of-range vector is
   * reported as "invalid" and dropped. Callable from any thread.
   */
  notify(vector: number): MsixDelivery {
    if (!Number.isInteger(vector) || vector < 0 || vector >= this.vectors) return "invalid";
    return this.locked((): MsixDelivery => {
      const control = this.control;
      if (!(control & MSIX_CONTROL_ENABLE)) return "disabled";
      if (control & MSIX_CONTROL_FUNCTION_MASK || this.entryMasked(vector)) {
        this.setPending(vector, true);
        this.pended.add();
        return "pending";
      }
      this.send(vector);
      return "sent";
    });
  }

  /**
   * The event behind a pending vector went away (§6.8.2.10: the function clears the Pending bit so no spurious
   * message is sent on unmask).
   */
  clearPending(vector: number): void {
    this.checkVector(vector);
    this.locked(() => this.setPending(vector, false));
  }

  /** Back to the reset state: disabled, function unmasked, every vector masked with a zero message, none pending. */
  reset(): void {
    this.locked(() => {
      this.fn.poke16(
        this.capOffset + CAP_CONTROL,
        this.control & ~(MSIX_CONTROL_ENABLE | MSIX_CONTROL_FUNCTION_MASK),
      );
      this.resetTable();
      this.controlChanged();
    });
  }

  /**
   * The vector table and the Pending Bit Array, for a snapshot. Message Control (enable, function mask) is in the
   * function's configuration space, saved with the PciFunction; the routes last reported are derived.
   */
  saveState(): DeviceState {
    return this.locked(() => ({
      kind: STATE_KIND,
      version: STATE_VERSION,
      data: { vectors: this.vectors, table: this.entries.slice(), pba: this.pending.slice() },
    }));
  }

  /**
   * Restores the table and PBA (restore the PciFunction first: Message Control comes from its configuration
   * space). Checked first: the table size must be this one's, read-only entry bits 0 (§6.8.2.6-9), no pending
   * bit past the last vector. Then the routes are reported afresh through onRouteChange (so KVM GSI routes are
   * set up on the restoring side), INTx suppression follows MSI-X Enable, and a pending vector that is
   * deliverable is sent.
   */
  restoreState(s: DeviceState): void {
    this.prepareRestore(s)();
  }

  /** restoreState in two steps: checks `s` now, returns what applies it (see PciFunction.prepareRestore). */
  prepareRestore(s: DeviceState): () => void {
    const name = `Msix ${this.fn.name}`;
    const r = StateReader.open(name, s, STATE_KIND, STATE_VERSION);
    r.int("vectors", this.vectors, this.vectors);
    const table = r.bytes("table", this.tableLength);
    const pba = r.bytes("pba", this.pbaLength);
    for (let o = 0; o < table.length; o++) {
      if ((table[o] as number) & ~(ENTRY_WMASK[o % MSIX_ENTRY_SIZE] as number)) {
        throw new DeviceStateError(
          `${name}: saved table entry ${Math.floor(o / MSIX_ENTRY_SIZE)} has read-only bits set at byte ${o % MSIX_ENTRY_SIZE}`,
        );
      }
    }
    for (let v = this.vectors; v < pba.length * 8; v++) {
      if ((pba[v >>> 3] as number) & (1 << (v & 7))) {
        throw new DeviceStateError(
          `${name}: saved PBA has vector ${v} pending, past the table (${this.vectors})`,
        );
      }
    }
    return () =>
      this.locked(() => {
        this.entries.set(table);
        this.pending.set(pba);
        // Routes as "none reported yet", so that controlChanged reports every deliverable one to this side.
        new Uint8Array(this.routeView.buffer, this.routeView.byteOffset, this.routeView.byteLength).fill(0);
        this.controlChanged();
      });
  }

  /** Every vector masked with a zero message, none pending (lock held). Routes are left for refresh to report. */
  private resetTable(): void {
    this.entries.fill(0);
    // §6.8.2.9: every vector's Mask bit is set after reset.
    for (let v = 0; v < this.vectors; v++)
      this.entries[v * MSIX_ENTRY_SIZE + ENTRY_VECTOR_CONTROL] = VECTOR_CONTROL_MASK;
    this.pending.fill(0);
  }

  private checkVector(vector: number): void {
    if (!Number.isInteger(vector) || vector < 0 || vector >= this.vectors) {
      throw new PciMsixError(`${this.fn.name}: MSI-X vector ${vector} out of range (0-${this.vectors - 1})`);
    }
  }

  // ---- everything below runs with the function's lock held ----

  private entryMasked(vector: number): boolean {
    return (
      ((this.entries[vector * MSIX_ENTRY_SIZE + ENTRY_VECTOR_CONTROL] as number) & VECTOR_CONTROL_MASK) !== 0
    );
  }

  private pendingBit(vector: number): boolean {
    return ((this.pending[vector >>> 3] as number) & (1 << (vector & 7))) !== 0;
  }

  private setPending(vector: number, on: boolean): void {
    const i = vector >>> 3;
    const bit = 1 << (vector & 7);
    const b = this.pending[i] as number;
    this.pending[i] = on ? b | bit : b & ~bit;
  }

  private send(vector: number): void {
    const base = vector * MSIX_ENTRY_SIZE;
    const v = this.entryView;
    this.sent.add();
    this.sink.signal(
      v.getUint32(base + ENTRY_ADDR_LO, true),
      v.getUint32(base + ENTRY_ADDR_HI, true),
      v.getUint32(base + ENTRY_DATA, true),
    );
  }

  private reportedRoute(vector: number): MsixRoute | null {
    const r = this.routeView;
    const base = vector * ROUTE_SIZE;
    if (r.getUint32(base, true) === 0) return null;
    return {
      addressLo: r.getUint32(base + 4, true),
      addressHi: r.getUint32(base + 8, true),
      data: r.getUint32(base + 12, true),
    };
  }

  /** After anything that can unmask a vector or change its message: deliver what is pending, report routes. */
  private refresh(vector: number, control: number): void {
    const deliverable =
      (control & MSIX_CONTROL_ENABLE) !== 0 &&
      (control & MSIX_CONTROL_FUNCTION_MASK) === 0 &&
      !this.entryMasked(vector);
    if (deliverable && this.pendingBit(vector)) {
      this.setPending(vector, false);
      this.send(vector);
    }
    const r = this.routeView;
    const base = vector * ROUTE_SIZE;
    const e = this.entryView;
    const entry = vector * MSIX_ENTRY_SIZE;
    const lo = e.getUint32(entry + ENTRY_ADDR_LO, true);
    const hi = e.getUint32(entry + ENTRY_ADDR_HI, true);
    const data = e.getUint32(entry + ENTRY_DATA, true);
    const had = r.getUint32(base, true) !== 0;
    if (!deliverable && !had) return;
    if (
      deliverable &&
      had &&
      r.getUint32(base + 4, true) === lo &&
      r.getUint32(base + 8, true) === hi &&
      r.getUint32(base + 12, true) === data
    ) {
      return;
    }
    r.setUint32(base, deliverable ? 1 : 0, true);
    r.setUint32(base + 4, deliverable ? lo : 0, true);
    r.setUint32(base + 8, deliverable ? hi : 0, true);
    r.setUint32(base + 12, deliverable ? data : 0, true);
    this.onRouteChange?.(vector, deliverable ? { addressLo: lo, addressHi: hi, data } : null);
  }

  private controlChanged(): void {
    const control = this.control;
    this.fn.setIntxSuppressed((control & MSIX_CONTROL_ENABLE) !== 0);
    for (let v = 0; v < this.vectors; v++) this.refresh(v, control);
  }

  private readTable(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) data[i] = this.entries[offset + i] ?? 0;
  }

  private writeTable(offset: number, data: Uint8Array): void {
    const end = Math.min(offset + data.length, this.tableLength);
    if (offset >= end) return;
    for (let o = offset; o < end; o++) {
      const w = ENTRY_WMASK[o % MSIX_ENTRY_SIZE] as number;
      this.entries[o] = ((this.entries[o] as number) & ~w) | ((data[o - offset] as number) & w);
    }
    const first = Math.floor(offset / MSIX_ENTRY_SIZE);
    const last = Math.floor((end - 1) / MSIX_ENTRY_SIZE);
    const control = this.control;
    for (let v = first; v <= last; v++) this.refresh(v, control);
  }
}
