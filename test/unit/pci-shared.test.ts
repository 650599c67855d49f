/**
 * The PCI layer over shared state: several instances built from the same inputs over the same SharedArrayBuffers
 * (one per vCPU thread in vireo) behave as one device. Most tests put two "threads" in one thread (two object
 * graphs over one set of states, each with its own buses and callbacks); one runs the second graph in a worker.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { isMainThread, type MessagePort, parentPort, Worker, workerData } from "node:worker_threads";
import { Bus, type BusDevice } from "../../src/bus/bus.ts";
import { assignBars } from "../../src/devices/pci/bar-allocator.ts";
import { BarRegions, connectBars } from "../../src/devices/pci/bars.ts";
import { PCI_CAP_ID, PCI_COMMAND, PCI_REG, PCI_STATUS, PciFunction } from "../../src/devices/pci/config.ts";
import { PciLayoutError, PciStateError } from "../../src/devices/pci/errors.ts";
import { configAddress, PciBus, PciConfigIo, PciEcam } from "../../src/devices/pci/host-bridge.ts";
import { Msix, type MsixRoute } from "../../src/devices/pci/msix.ts";
import { SharedLock } from "../../src/shared/shared-lock.ts";
import { le, num } from "../helpers/bytes.ts";

const DEV = 3;
const LAPIC_MSI = 0xfee0_0000;
const ECAM_BASE = 0xb000_0000;
const TABLE = 0x2000;
const PBA = 0x3000;
const VECTORS = 16;
const ENABLE = 0x8000;

/** A device register block answering each byte with (offset + i) & 0xff. */
class Pattern implements BusDevice {
  constructor(readonly name: string) {}
  read(offset: number, data: Uint8Array): void {
    for (let i = 0; i < data.length; i++) data[i] = (offset + i) & 0xff;
  }
  write(): void {}
}

interface States {
  bus: SharedArrayBuffer;
  fn: SharedArrayBuffer;
  msix: SharedArrayBuffer;
}

function createStates(): States {
  return { bus: PciBus.createState(), fn: PciFunction.createState(), msix: Msix.createState(VECTORS) };
}

interface BuildOptions {
  /** Build a different layout (for the mismatch tests). */
  barSize?: number;
  vectors?: number;
  name?: string;
  attach?: boolean;
}

/**
 * What each thread runs: the same construction code over the same states, with its own buses and callbacks.
 * Mirrors how a vCPU worker would build the PCI part of the machine from the manifest.
 */
class Node {
  readonly pio = new Bus("pio");
  readonly mmio = new Bus("mmio");
  readonly pci: PciBus;
  readonly fn: PciFunction;
  readonly msix: Msix;
  readonly signals: Array<[number, number, number]> = [];
  readonly routes: Array<[number, MsixRoute | null]> = [];
  readonly levels: boolean[] = [];

  constructor(states: States, options: BuildOptions = {}) {
    this.pci = new PciBus({ state: states.bus });
    this.fn = new PciFunction(options.name ?? "vnet", {
      vendorId: 0x1af4,
      deviceId: 0x1041,
      classCode: 0x020000,
      interruptPin: 1,
      intx: { set: (l) => this.levels.push(l) },
      state: states.fn,
    });
    const bar0 = new BarRegions("vnet-bar0");
    this.fn.defineBar(0, { kind: "mmio32", size: options.barSize ?? 0x4000, device: bar0 });
    this.fn.defineBar(1, { kind: "io", size: 0x20, device: new Pattern("vnet-io") });
    this.msix = new Msix(this.fn, {
      vectors: options.vectors ?? VECTORS,
      tableBar: 0,
      tableOffset: TABLE,
      pbaBar: 0,
      pbaOffset: PBA,
      sink: { signal: (lo, hi, data) => this.signals.push([lo, hi, data]) },
      onRouteChange: (v, r) => this.routes.push([v, r]),
      state: states.msix,
    });
    bar0
      .add(0, 0x100, new Pattern("vnet-regs"))
      .add(TABLE, this.msix.tableLength, this.msix.table)
      .add(PBA, this.msix.pbaLength, this.msix.pba);
    this.pci.add(this.fn, DEV);
    new PciConfigIo(this.pci).register(this.pio);
    const ecam = new PciEcam(this.pci);
    this.mmio.register(ECAM_BASE, ecam.size, ecam);
    if (options.attach ?? true) {
      this.pci.attach();
      connectBars(this.fn, this);
    }
  }

  latch(reg: number, dev = DEV): void {
    this.pio.write(0xcf8, le(configAddress(0, dev, 0, reg & ~3), 4));
  }
  dataIn(reg: number, size: number): number {
    const d = new Uint8Array(size);
    this.pio.read(0xcfc + (reg & 3), d);
    return num(d);
  }
  dataOut(reg: number, size: number, value: number): void {
    this.pio.write(0xcfc + (reg & 3), le(value, size));
  }
  cfgRead(reg: number, size: number, dev = DEV): number {
    this.latch(reg, dev);
    return this.dataIn(reg, size);
  }
  cfgWrite(reg: number, size: number, value: number, dev = DEV): void {
    this.latch(reg, dev);
    this.dataOut(reg, size, value);
  }
  read(addr: number, size: number): number {
    const d = new Uint8Array(size);
    this.mmio.read(addr, d);
    return num(d);
  }
  write(addr: number, size: number, value: number): void {
    this.mmio.write(addr, le(value, size));
  }
  get bar0(): number {
    return (this.cfgRead(PCI_REG.BAR0, 4) & ~0xf) >>> 0;
  }
  program(vector: number, data: number, masked: boolean): void {
    const e = this.bar0 + TABLE + 16 * vector;
    this.write(e, 4, LAPIC_MSI);
    this.write(e + 4, 4, 0);
    this.write(e + 8, 4, data);
    this.write(e + 12, 4, masked ? 1 : 0);
  }
  mask(vector: number, masked: boolean): void {
    this.write(this.bar0 + TABLE + 16 * vector + 12, 4, masked ? 1 : 0);
  }
  get msixControl(): number {
    return this.cfgRead(this.msix.capOffset + 2, 2);
  }
  set msixControl(v: number) {
    this.cfgWrite(this.msix.capOffset + 2, 2, v);
  }
}

/** Two "threads" over one machine state; `a` has run the firmware's BAR assignment. */
function pair(): { a: Node; b: Node; states: States } {
  const states = createStates();
  const a = new Node(states);
  assignBars(a.pci);
  const b = new Node(states);
  return { a, b, states };
}

/**
 * Sets and clears the pending bits of vectors first..first+3 (masked) for `ms` milliseconds after both threads
 * reached `barrier`, checking after each step that its own bits are as it left them: the other thread works on
 * the other half of the same PBA byte, so a read-modify-write outside the lock would lose updates (seen in about
 * one run in four on two cores with the lock bypassed; never with it). Ends with its four vectors pending.
 */
function hammer(
  msix: Msix,
  first: number,
  barrier: Int32Array,
  ms: number,
): { rounds: number; lost: number } {
  Atomics.add(barrier, 0, 1);
  while (Atomics.load(barrier, 0) < 2) {}
  let rounds = 0;
  let lost = 0;
  const end = Date.now() + ms;
  while (Date.now() < end) {
    for (let i = 0; i < 4; i++) {
      const v = first + i;
      msix.notify(v);
      if (!msix.isPending(v)) lost++;
      msix.clearPending(v);
      if (msix.isPending(v)) lost++;
    }
    rounds++;
  }
  for (let i = 0; i < 4; i++) msix.notify(first + i);
  return { rounds, lost };
}

const isState = (e: unknown) => e instanceof PciStateError && e.code === "VIREO_PCI_STATE";
const isLayout = (e: unknown) => e instanceof PciLayoutError && e.code === "VIREO_PCI_LAYOUT";

if (!isMainThread) {
  // Worker side of the cross-thread test: the same construction code over the states, its own buses and sink.
  const { states } = workerData as { states: States };
  const port = parentPort as MessagePort;
  const node = new Node(states);
  port.postMessage({ ready: true, bar0: node.fn.barMapping(0), onBus: node.mmio.deviceAt(node.bar0)?.name });
  port.on(
    "message",
    (msg: { step: string; newBar: number; oldBar: number; barrier: Int32Array; ms: number }) => {
      if (msg.step === "go") {
        // The main thread left CONFIG_ADDRESS selecting the device's COMMAND/STATUS dword: no 0xCF8 write here.
        const commandStatus = node.dataIn(PCI_REG.COMMAND, 4);
        const staleBefore = node.mmio.deviceAt(msg.oldBar)?.name ?? null;
        const synced = node.pci.syncBars();
        const again = node.pci.syncBars();
        const reg = node.read(msg.newBar + 0x10, 4);
        const oldGone = node.mmio.deviceAt(msg.oldBar) === undefined;
        const sent = node.msix.notify(0);
        const pended = node.msix.notify(1);
        port.postMessage({
          commandStatus,
          staleBefore,
          synced,
          again,
          reg,
          oldGone,
          sent,
          pended,
          signals: node.signals,
        });
      } else if (msg.step === "stress") {
        port.postMessage(hammer(node.msix, 8, msg.barrier, msg.ms));
      }
    },
  );
} else {
  describe("PCI over shared state: two instances are one device", () => {
    test("config writes through one are read through the other, by 0xCF8/0xCFC and ECAM", () => {
      const { a, b } = pair();
      a.cfgWrite(PCI_REG.INTERRUPT_LINE, 1, 0x0b);
      assert.equal(b.cfgRead(PCI_REG.INTERRUPT_LINE, 1), 0x0b);
      b.cfgWrite(PCI_REG.COMMAND, 2, PCI_COMMAND.BUS_MASTER | PCI_COMMAND.MEMORY | PCI_COMMAND.IO);
      assert.equal(a.fn.busMasterEnabled, true);
      assert.equal(a.read(ECAM_BASE + (DEV << 15) + PCI_REG.COMMAND, 2), 0x0007);
      // RW1C status raised by the device in one thread, cleared by the guest in the other.
      a.fn.raiseStatus(PCI_STATUS.RECEIVED_MASTER_ABORT);
      assert.equal(b.fn.status & PCI_STATUS.RECEIVED_MASTER_ABORT, PCI_STATUS.RECEIVED_MASTER_ABORT);
      b.cfgWrite(PCI_REG.STATUS, 2, PCI_STATUS.RECEIVED_MASTER_ABORT);
      assert.equal(a.cfgRead(PCI_REG.STATUS, 2) & PCI_STATUS.RECEIVED_MASTER_ABORT, 0);
      // The host bridge's state is shared like any other function's.
      b.cfgWrite(PCI_REG.LATENCY_TIMER, 1, 0x40, 0);
      assert.equal(a.cfgRead(PCI_REG.LATENCY_TIMER, 1, 0), 0x40);
      assert.equal(a.pci.get(0)?.attached, true);
    });

    test("the 0xCF8 latch written in one is used by a 0xCFC access in the other", () => {
      const { a, b } = pair();
      a.latch(PCI_REG.VENDOR_ID);
      assert.equal(b.dataIn(PCI_REG.VENDOR_ID, 4), 0x1041_1af4);
      assert.equal(b.pio.deviceAt(0xcf8)?.name, "pci-config-address");
      const d = new Uint8Array(4);
      b.pio.read(0xcf8, d);
      assert.equal(num(d), configAddress(0, DEV, 0, 0));
      b.latch(PCI_REG.INTERRUPT_LINE);
      a.dataOut(PCI_REG.INTERRUPT_LINE, 1, 0x0a);
      assert.equal(b.fn.configRead(PCI_REG.INTERRUPT_LINE, 1), 0x0a);
      assert.equal(a.pci.configAddressLatch, configAddress(0, DEV, 0, PCI_REG.INTERRUPT_LINE));
    });

    test("BAR sizing and programming through one; syncBars in the other registers the BAR on its bus", () => {
      const { a, b } = pair();
      const base = a.fn.barAddress(0) as number;
      const io = a.fn.barAddress(1) as number;
      // b joined after the firmware assigned BARs: connectBars caught it up at once.
      assert.equal(b.mmio.deviceAt(base)?.name, "vnet.bar0");
      assert.equal(b.pio.deviceAt(io)?.name, "vnet.bar1");
      assert.equal(b.pci.syncBars(), false, "nothing changed: fast path");

      // The guest on a's vCPU sizes BAR0 with decode on, then moves it.
      a.cfgWrite(PCI_REG.BAR0, 4, 0xffff_ffff);
      assert.equal(a.cfgRead(PCI_REG.BAR0, 4), 0xffff_c000, "16 KiB");
      assert.equal(b.cfgRead(PCI_REG.BAR0, 4), 0xffff_c000, "the same register in b");
      a.cfgWrite(PCI_REG.BAR0, 4, 0xe800_0000);
      assert.equal(a.mmio.deviceAt(0xe800_0000)?.name, "vnet.bar0", "the writing thread's bus is current");
      assert.equal(b.mmio.deviceAt(base)?.name, "vnet.bar0", "b's bus is stale until it syncs");
      assert.equal(b.fn.barMapping(0), 0xe800_0000, "but the shared decode is already there");
      const gen = b.fn.barGeneration;
      assert.equal(b.pci.syncBars(), true);
      assert.equal(b.mmio.deviceAt(base), undefined);
      assert.equal(b.read(0xe800_0010, 4), 0x1312_1110, "b reaches the device registers at the new place");
      assert.equal(b.pci.syncBars(), false);
      assert.equal(b.fn.syncBars(), false);
      assert.equal(b.fn.barGeneration, gen);

      // Decode off in b: a follows through its own function's syncBars.
      b.cfgWrite(PCI_REG.COMMAND, 2, PCI_COMMAND.MEMORY);
      assert.equal(b.pio.deviceAt(io), undefined);
      assert.equal(a.pio.deviceAt(io)?.name, "vnet.bar1");
      assert.equal(a.fn.syncBars(), true);
      assert.equal(a.pio.deviceAt(io), undefined);
      assert.equal(a.pci.syncBars(), false, "the function already caught up");
    });

    test("each thread's onBarRemap sees its own consistent sequence", () => {
      const { a, states } = pair();
      const base = a.fn.barAddress(0) as number;
      const io = a.fn.barAddress(1) as number;
      const b = new Node(states, { attach: false });
      b.pci.attach();
      const events: Array<[number, number | null, number | null]> = [];
      b.fn.onBarRemap = (i, from, to) => events.push([i, from, to]);
      assert.equal(b.fn.syncBars(), true, "a new handler is caught up with what already decodes");
      assert.deepEqual(events.splice(0), [
        [0, null, base],
        [1, null, io],
      ]);
      // Several changes in a, one sync in b: b is told where the BAR was for it and where it is now.
      a.cfgWrite(PCI_REG.BAR0, 4, 0xe800_0000);
      a.cfgWrite(PCI_REG.BAR0, 4, 0xe900_0000);
      a.cfgWrite(PCI_REG.BAR0, 4, 0xea00_0000);
      assert.equal(b.pci.syncBars(), true);
      assert.deepEqual(events, [[0, base, 0xea00_0000]]);
    });

    test("MSI-X masked through one, notified from the other, delivered where it is unmasked", () => {
      const { a, b } = pair();
      a.msixControl = ENABLE;
      assert.equal(b.msixControl & ENABLE, ENABLE);
      assert.deepEqual(a.levels, [], "INTx suppression is shared: nothing to drive");
      a.program(2, 0x4042, true);
      assert.deepEqual(b.msix.entry(2), { addressLo: LAPIC_MSI, addressHi: 0, data: 0x4042, masked: true });
      assert.equal(b.msix.notify(2), "pending");
      assert.equal(a.msix.isPending(2), true);
      assert.equal(a.read(a.bar0 + PBA, 8), 0b100, "a's guest sees b's pending bit");
      a.mask(2, false);
      assert.deepEqual(
        a.signals,
        [[LAPIC_MSI, 0, 0x4042]],
        "the unmasking thread delivers the pending message",
      );
      assert.deepEqual(b.signals, []);
      assert.equal(b.msix.notify(2), "sent");
      assert.deepEqual(b.signals, [[LAPIC_MSI, 0, 0x4042]], "a notify is delivered by the notifying thread");
      // The route is reported once for the machine, by the thread that made it change.
      assert.deepEqual(a.routes, [[2, { addressLo: LAPIC_MSI, addressHi: 0, data: 0x4042 }]]);
      assert.deepEqual(b.routes, []);
      assert.deepEqual(b.msix.route(2), { addressLo: LAPIC_MSI, addressHi: 0, data: 0x4042 });
      // Function mask set in b holds a's notifies.
      b.msixControl = ENABLE | 0x4000;
      assert.deepEqual(b.routes, [[2, null]]);
      assert.equal(a.msix.notify(2), "pending");
      assert.equal(b.msix.isMasked(2), true);
    });

    test("INTx: one pin level for the machine, driven by the thread that changed it", () => {
      const { a, b } = pair();
      a.fn.setIntx(true);
      assert.deepEqual(a.levels, [true]);
      assert.equal(b.fn.intxAssertedNow, true);
      b.cfgWrite(PCI_REG.COMMAND, 2, PCI_COMMAND.INTX_DISABLE);
      assert.deepEqual(b.levels, [false], "b's write lowered the pin");
      b.fn.setIntx(true);
      assert.deepEqual(b.levels, [false], "no edge while disabled");
      a.cfgWrite(PCI_REG.COMMAND, 2, 0);
      assert.deepEqual(a.levels, [true, true]);
      b.msixControl = ENABLE;
      assert.deepEqual(b.levels, [false, false], "MSI-X enable in b suppresses the pin a raised");
      assert.equal(a.fn.intxAssertedNow, false);
    });

    test("a late thread joining does not reset anything; init: true does", () => {
      const { a, states } = pair();
      a.cfgWrite(PCI_REG.INTERRUPT_LINE, 1, 0x0b);
      a.msixControl = ENABLE;
      a.program(0, 0x4040, false);
      const c = new Node(states);
      assert.equal(c.cfgRead(PCI_REG.INTERRUPT_LINE, 1), 0x0b);
      assert.equal(c.msix.entry(0).data, 0x4040);
      assert.equal(c.read(a.bar0 + 0x10, 1), 0x10, "BARs programmed before it joined are on its bus");
      assert.equal(c.fn.layoutHash, a.fn.recordedLayout);

      // init: true resets the function state: the next attach records the layout and copies the reset image.
      const fresh = new PciFunction("vnet", {
        vendorId: 1,
        deviceId: 2,
        classCode: 0,
        state: states.fn,
        init: true,
      });
      assert.equal(fresh.recordedLayout, null);
      fresh.attach();
      assert.equal(fresh.configRead(PCI_REG.INTERRUPT_LINE, 1), 0);
      assert.equal(fresh.configRead(PCI_REG.VENDOR_ID, 4), 0x0002_0001);
    });

    test("snapshot and restore are copies of the state buffers", () => {
      const { a, states } = pair();
      a.cfgWrite(PCI_REG.BAR0, 4, 0xe800_0000);
      a.msixControl = ENABLE;
      a.program(3, 0x4043, true);
      a.msix.notify(3);
      a.latch(PCI_REG.INTERRUPT_PIN);
      const copy = (s: SharedArrayBuffer) => {
        const c = new SharedArrayBuffer(s.byteLength);
        new Uint8Array(c).set(new Uint8Array(s));
        return c;
      };
      const restored = new Node({ bus: copy(states.bus), fn: copy(states.fn), msix: copy(states.msix) });
      assert.equal(restored.mmio.deviceAt(0xe800_0000)?.name, "vnet.bar0");
      assert.equal(restored.dataIn(PCI_REG.INTERRUPT_PIN, 1), 1, "the latch came along");
      assert.equal(restored.msix.isPending(3), true);
      restored.mask(3, false);
      assert.deepEqual(restored.signals, [[LAPIC_MSI, 0, 0x4043]]);
      assert.equal(a.msix.isPending(3), true, "the original is untouched");
    });
  });

  describe("PCI shared state: construction and errors", () => {
    test("a thread that built a different layout gets a PciLayoutError naming what differs", () => {
      const states = createStates();
      const a = new Node(states);
      assert.throws(
        () => new Node(states, { barSize: 0x8000 }),
        (e: unknown) =>
          isLayout(e) &&
          /PciFunction vnet: this thread built a different layout/.test((e as Error).message) &&
          /\(writable\/RW1C masks and BAR definitions differ; state 0x[0-9a-f]+, built here 0x[0-9a-f]+\)/.test(
            (e as Error).message,
          ),
      );
      assert.throws(
        () => new Node(states, { vectors: 8 }),
        (e: unknown) => isLayout(e) && /Msix vnet: .*8 vectors here, 16 recorded/.test((e as Error).message),
      );
      // The state of another function handed over by mistake: the name (and more) differ.
      assert.throws(
        () => new Node({ ...createStates(), fn: states.fn }, { name: "vblk" }),
        (e: unknown) => isLayout(e) && /\(name differs; /.test((e as Error).message),
      );
      // A mismatch only shows at attach; built but not attached, nothing is checked yet.
      const unattached = new Node(
        { ...states, msix: Msix.createState(VECTORS) },
        { barSize: 0x8000, attach: false },
      );
      assert.notEqual(unattached.fn.layoutHash, a.fn.recordedLayout);
      assert.throws(() => unattached.fn.attach(), isLayout);
      assert.equal(a.cfgRead(PCI_REG.VENDOR_ID, 4), 0x1041_1af4, "the first thread's device is unharmed");
    });

    test("guest and device access before attach, and construction after it, are refused", () => {
      const states = createStates();
      const n = new Node(states, { attach: false });
      assert.equal(n.fn.attached, false);
      assert.equal(n.fn.vendorId, 0x1af4, "the description can be inspected while building");
      assert.throws(() => n.fn.configRead(0, 4), isState);
      assert.throws(() => n.fn.setIntx(true), isState);
      assert.throws(() => n.msix.notify(0), isState);
      assert.equal(n.fn.syncBars(), false, "no handler: nothing to do");
      n.fn.onBarRemap = () => {};
      assert.throws(() => n.fn.syncBars(), isState);
      n.fn.attach();
      assert.equal(n.fn.attach(), n.fn, "idempotent");
      assert.throws(
        () => n.fn.addCapability(PCI_CAP_ID.VENDOR_SPECIFIC, new Uint8Array([2])),
        (e: unknown) => isState(e) && /layout is fixed/.test((e as Error).message),
      );
      assert.throws(() => n.fn.defineBar(2, { kind: "mmio32", size: 0x1000 }), isState);
      assert.equal(n.msix.notify(0), "disabled");
    });

    test("capability hooks run without the function's lock held (it is a leaf lock)", () => {
      const state = PciFunction.createState();
      // The function's lock is the state's first word; another holder can take it only if it is free.
      const probe = new SharedLock(state, 0);
      const free = () => {
        if (!probe.tryLock()) return false;
        probe.unlock();
        return true;
      };
      const seen: string[] = [];
      const fn = new PciFunction("x", { vendorId: 1, deviceId: 2, classCode: 0, state });
      const off = fn.addCapability(PCI_CAP_ID.VENDOR_SPECIFIC, new Uint8Array([6, 0, 0, 0]), {
        writableMask: new Uint8Array([0, 0, 0xff, 0xff]),
        onRead: () => seen.push(`read ${free()}`),
        onWrite: () => {
          seen.push(`write ${free()}`);
          // A hook may call back into the function; it takes the lock itself.
          fn.poke8(off + 5, fn.peek8(off + 4) + 1);
        },
      });
      fn.attach();
      fn.configWrite(off + 4, 1, 0x41);
      assert.equal(fn.configRead(off + 4, 2), 0x4241);
      assert.deepEqual(seen, ["write true", "read true"]);
      assert.equal(free(), true);
    });

    test("state buffers are checked", () => {
      const ids = { vendorId: 1, deviceId: 2, classCode: 0 };
      assert.throws(
        () => new PciFunction("x", { ...ids, state: new SharedArrayBuffer(PciFunction.STATE_BYTES) }),
        isState,
      );
      assert.throws(
        () => new PciFunction("x", { ...ids, state: new SharedArrayBuffer(64), init: true }),
        isState,
      );
      assert.throws(
        () =>
          new PciFunction("x", {
            ...ids,
            state: new ArrayBuffer(PciFunction.STATE_BYTES) as unknown as SharedArrayBuffer,
            init: true,
          }),
        isState,
      );
      assert.throws(() => new PciBus({ state: new SharedArrayBuffer(PciBus.STATE_BYTES) }), isState);
      const fn = new PciFunction("x", { ...ids, state: PciFunction.createState() });
      fn.defineBar(0, { kind: "mmio32", size: 0x1000 });
      const msix = {
        vectors: 2,
        tableBar: 0,
        tableOffset: 0,
        pbaBar: 0,
        pbaOffset: 0x800,
        sink: { signal() {} },
      };
      assert.throws(() => new Msix(fn, msix), isState, "a shared function needs shared MSI-X state");
      assert.throws(
        () => new Msix(fn, { ...msix, state: new SharedArrayBuffer(Msix.stateBytes(2)) }),
        isState,
      );
      assert.throws(() => new Msix(fn, { ...msix, state: Msix.createState(1) }), isState, "too small for 2");
      new Msix(fn, { ...msix, state: new SharedArrayBuffer(Msix.stateBytes(2)), init: true });
    });
  });

  describe("PCI over shared state across a real worker thread", () => {
    test("BAR move, 0xCF8 latch and MSI-X from the main thread; sync, 0xCFC and notify in the worker", async () => {
      const states = createStates();
      const main = new Node(states);
      assignBars(main.pci);
      const oldBar = main.bar0;
      const tsx = import.meta.resolve("tsx/esm/api");
      const w = new Worker(
        `import(${JSON.stringify(tsx)}).then((t) => { t.register(); return import(${JSON.stringify(import.meta.url)}); })`,
        { eval: true, workerData: { states } },
      );
      const next = () =>
        new Promise<Record<string, unknown>>((res, rej) => {
          w.once("message", res);
          w.once("error", rej);
        });
      try {
        const ready = await next();
        assert.deepEqual(ready, { ready: true, bar0: oldBar, onBus: "vnet.bar0" });

        main.msixControl = ENABLE;
        main.program(0, 0x4040, false);
        main.program(1, 0x4041, true);
        main.cfgWrite(PCI_REG.BAR0, 4, 0xe800_0000);
        main.cfgWrite(PCI_REG.COMMAND, 2, PCI_COMMAND.MEMORY | PCI_COMMAND.IO | PCI_COMMAND.BUS_MASTER);
        main.latch(PCI_REG.COMMAND);
        w.postMessage({ step: "go", newBar: 0xe800_0000, oldBar });
        const r = await next();
        assert.equal(
          r.commandStatus,
          0x0010_0007,
          "COMMAND as main wrote it; STATUS has the capability list",
        );
        assert.equal(r.staleBefore, "vnet.bar0", "the worker's bus was stale before syncBars");
        assert.equal(r.synced, true);
        assert.equal(r.again, false);
        assert.equal(r.reg, 0x1312_1110);
        assert.equal(r.oldGone, true);
        assert.equal(r.sent, "sent");
        assert.equal(r.pended, "pending");
        assert.deepEqual(r.signals, [[LAPIC_MSI, 0, 0x4040]], "the worker's sink got its notify");
        assert.deepEqual(main.signals, []);
        assert.equal(main.msix.isPending(1), true, "the worker's pending bit is in the shared PBA");
        main.mask(1, false);
        assert.deepEqual(main.signals, [[LAPIC_MSI, 0, 0x4041]]);

        // Both threads hammer pending bits of the same PBA byte at once; the lock keeps every update.
        for (let v = 8; v < 16; v++) main.mask(v, true);
        const barrier = new Int32Array(new SharedArrayBuffer(4));
        const done = next();
        w.postMessage({ step: "stress", barrier, ms: 150 });
        const mine = hammer(main.msix, 12, barrier, 150);
        const theirs = (await done) as { rounds: number; lost: number };
        assert.ok(mine.rounds > 100 && theirs.rounds > 100, `${mine.rounds} and ${theirs.rounds} rounds`);
        assert.deepEqual([mine.lost, theirs.lost], [0, 0], "no update lost");
        assert.equal(main.read(main.bar0 + PBA, 8), 0xff00, "vectors 8-15 pending, 0-7 not");
      } finally {
        await w.terminate();
      }
    });
  });
}
