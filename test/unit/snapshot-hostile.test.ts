/**
 * Hostile saved states: a state file with a valid checksum can still be hand-made. Each device's real saved state
 * is mutated at random (a field replaced by an out-of-range number, another type, a byte array of the wrong size
 * or random content), then restored into a fresh device. Restoring either refuses with a VireoError
 * (DeviceStateError) or succeeds; and a device that accepted the state must then serve guest accesses, host
 * input and queue notifications without throwing or hanging, as it does for a hostile guest. Deterministic
 * (seeded); the seed and the mutation are in every failure message.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { MemoryBlockBackend } from "../../src/block/memory.ts";
import { E1000 } from "../../src/devices/e1000/e1000.ts";
import { AcpiPm } from "../../src/devices/legacy/acpi-pm.ts";
import { CmosRtc } from "../../src/devices/legacy/cmos-rtc.ts";
import { I8042 } from "../../src/devices/legacy/i8042.ts";
import { Uart16550 } from "../../src/devices/legacy/uart16550.ts";
import { PciBus } from "../../src/devices/pci/host-bridge.ts";
import { VirtioBlk } from "../../src/devices/virtio/blk.ts";
import { VireoError } from "../../src/errors.ts";
import type { DeviceState, StateValue } from "../../src/shared/device-state.ts";
import { attachNic, ethFrame, makeNic, NIC_MAC, PEER_MAC, pattern, REG } from "../helpers/e1000-driver.ts";
import { cloneState, throughFile } from "../helpers/snapshot.ts";
import { makeVirtioPciRig } from "../helpers/virtio-driver.ts";

function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 2 ** 32;
  };
}

type Leaf = { path: string; get(): StateValue; set(v: StateValue): void };

/** Every leaf of a state's data (numbers, booleans, strings, nulls, byte arrays), with a setter. */
function leaves(v: StateValue, path: string, set: (v: StateValue) => void, out: Leaf[]): Leaf[] {
  if (Array.isArray(v)) {
    v.forEach((e, i) => {
      leaves(
        e,
        `${path}[${i}]`,
        (n) => {
          v[i] = n;
        },
        out,
      );
    });
  } else if (v !== null && typeof v === "object" && !(v instanceof Uint8Array)) {
    for (const [k, e] of Object.entries(v)) {
      leaves(
        e,
        `${path}.${k}`,
        (n) => {
          v[k] = n;
        },
        out,
      );
    }
  } else {
    let cur: StateValue = v;
    out.push({
      path,
      get: () => cur,
      set: (n) => {
        cur = n;
        set(n);
      },
    });
  }
  return out;
}

function hostileValue(old: StateValue, r: () => number): StateValue {
  const int = (n: number) => Math.floor(r() * n);
  if (old instanceof Uint8Array) {
    if (r() < 0.2) {
      const lengths = [0, 1, old.length - 1, old.length + 1, old.length * 2 + 8];
      return new Uint8Array(Math.max(0, lengths[int(lengths.length)] as number)).fill(0xa5);
    }
    const b = old.slice();
    for (let i = 0, n = 1 + int(8); i < n && b.length > 0; i++) b[int(b.length)] = int(256);
    // Sometimes fill a whole region with one value (all ones is the classic).
    if (r() < 0.2) b.fill(r() < 0.5 ? 0xff : int(256));
    return b;
  }
  const o = typeof old === "number" ? old : 0;
  const choices: StateValue[] = [
    -1,
    0,
    1,
    2,
    o + 1,
    o - 1,
    o * 2 + 1,
    int(0x10000),
    0xffff,
    0x10000,
    0x7fff_ffff,
    0xffff_ffff,
    2 ** 32,
    2 ** 53,
    -(2 ** 31),
    0.5,
    null,
    true,
    false,
    "x",
    [],
    {},
  ];
  return choices[int(choices.length)] as StateValue;
}

interface Subject {
  name: string;
  /** A saved state of a device driven into a non-trivial state. */
  saved: DeviceState;
  /** A fresh device to restore into, and what to do with it once it accepted a state. */
  fresh(): { restore(s: DeviceState): void; exercise(): void };
}

function run(subject: Subject, cases: number, seed: number): { refused: number; accepted: number } {
  const r = rng(seed);
  let refused = 0;
  let accepted = 0;
  for (let c = 0; c < cases; c++) {
    const s = cloneState(subject.saved);
    const ls = leaves(s.data, "data", () => {}, []);
    const what: string[] = [];
    for (let m = 0, n = 1 + Math.floor(r() * 3); m < n; m++) {
      const leaf = ls[Math.floor(r() * ls.length)] as Leaf;
      const v = hostileValue(leaf.get(), r);
      leaf.set(v);
      what.push(`${leaf.path} = ${v instanceof Uint8Array ? `${v.length} bytes` : JSON.stringify(v)}`);
    }
    const dev = subject.fresh();
    const label = `${subject.name}, seed ${seed}, case ${c}: ${what.join("; ")}`;
    let ok = false;
    try {
      dev.restore(s);
      ok = true;
    } catch (e) {
      assert.ok(e instanceof VireoError, `${label}: restore threw ${String(e)}`);
      refused++;
    }
    if (!ok) continue;
    accepted++;
    try {
      dev.exercise();
    } catch (e) {
      assert.fail(`${label}: the restored device threw ${e instanceof Error ? e.stack : String(e)}`);
    }
  }
  return { refused, accepted };
}

const bytes = (n: number) => new Uint8Array(n);

function legacySubjects(): Subject[] {
  const uart = () => new Uart16550({ state: Uart16550.createState(), irq: { set() {} }, output() {} });
  const u = uart();
  u.write(4, Uint8Array.of(0x0b));
  u.write(1, Uint8Array.of(0x0f));
  u.write(2, Uint8Array.of(0xc7));
  u.receive(pattern(40));
  const rtc = () => new CmosRtc({ state: CmosRtc.createState({ memSize: 64 << 20 }), irq: { set() {} } });
  const kbc = () =>
    new I8042({ state: I8042.createState(), kbdIrq: { set() {} }, auxIrq: { set() {} }, onReset() {} });
  const k = kbc();
  k.pushKeyboardInput(Uint8Array.of(0x1c, 0xf0, 0x1c, 0x32));
  const pm = () =>
    new AcpiPm({ state: AcpiPm.createState(), irq: { set() {} }, onPowerOff() {}, onReset() {} });
  const readAll = (
    d: { read(o: number, b: Uint8Array): void; write(o: number, b: Uint8Array): void },
    n: number,
  ) => {
    for (let o = 0; o < n; o++) {
      d.read(o, bytes(1));
      d.read(o, bytes(4));
    }
  };
  return [
    {
      name: "uart16550",
      saved: throughFile(u.saveState()),
      fresh: () => {
        const d = uart();
        return {
          restore: (s) => d.restoreState(s),
          exercise: () => {
            for (let i = 0; i < 40; i++) readAll(d, 8);
            d.write(0, Uint8Array.of(0x41));
            d.receive(pattern(5000));
            d.receiveBreak();
            readAll(d, 8);
            d.saveState();
          },
        };
      },
    },
    {
      name: "cmos-rtc",
      saved: throughFile(rtc().saveState()),
      fresh: () => {
        const d = rtc();
        return {
          restore: (s) => d.restoreState(s),
          exercise: () => {
            for (let reg = 0; reg < 0x80; reg++) {
              d.write(0, Uint8Array.of(reg));
              d.read(1, bytes(1));
            }
            d.poll();
            d.nextEventDelayMs();
            d.saveState();
          },
        };
      },
    },
    {
      name: "i8042",
      saved: throughFile(k.saveState()),
      fresh: () => {
        const d = kbc();
        return {
          restore: (s) => d.restoreState(s),
          exercise: () => {
            for (let i = 0; i < 40; i++) readAll(d, 5);
            d.write(4, Uint8Array.of(0x20));
            d.write(0, Uint8Array.of(0xf2));
            d.pushKeyboardInput(pattern(40));
            readAll(d, 5);
            d.saveState();
          },
        };
      },
    },
    {
      name: "acpi-pm",
      saved: throughFile(pm().saveState()),
      fresh: () => {
        const d = pm();
        return {
          restore: (s) => d.restoreState(s),
          exercise: () => {
            readAll(d, 16);
            d.write(0, Uint8Array.of(0xff, 0xff));
            d.write(4, Uint8Array.of(0x00, 0x34));
            d.pressPowerButton();
            d.poll();
            d.saveState();
          },
        };
      },
    },
  ];
}

describe("hostile saved states are refused or leave a working device", () => {
  test("legacy devices", () => {
    for (const [i, subject] of legacySubjects().entries()) {
      const { refused, accepted } = run(subject, 250, 0x1000 + i);
      assert.ok(refused > 50 && accepted > 0, `${subject.name}: ${refused} refused, ${accepted} accepted`);
    }
  });

  test("PCI bus and host bridge", () => {
    const a = new PciBus();
    a.latchConfigAddress(0x8000_0004);
    const subject: Subject = {
      name: "pci-bus",
      saved: throughFile(a.saveState()),
      fresh: () => {
        const d = new PciBus();
        return {
          restore: (s) => d.restoreState(s),
          exercise: () => {
            const b = bytes(4);
            for (let o = 0; o < 0x100; o += 4) d.readConfig(0, 0, 0, o, b);
            d.writeConfig(0, 0, 0, 4, Uint8Array.of(7, 0));
            d.saveState();
          },
        };
      },
    };
    const { refused, accepted } = run(subject, 250, 0x2000);
    assert.ok(refused > 50 && accepted > 0, `${refused} refused, ${accepted} accepted`);
  });

  test("virtio-pci (blk, split ring with requests served)", () => {
    const backend = new MemoryBlockBackend(1 << 20);
    const a = makeVirtioPciRig(new VirtioBlk({ backend }), { memSize: 2 << 20 });
    a.drv.negotiate((f) => f & ~(1n << 34n));
    a.drv.enableMsix(2);
    const q = a.drv.setupQueue(0, { size: 16, vector: 0, memBytes: 0x40000 });
    a.drv.driverOk();
    for (let i = 0; i < 20; i++) {
      const h = new Uint8Array(16);
      q.addChain([h], [512, 1]);
      a.drv.kick(0);
      q.usedChains();
    }
    const subject: Subject = {
      name: "virtio-pci",
      saved: throughFile(a.transport.saveState()),
      fresh: () => {
        const b = makeVirtioPciRig(new VirtioBlk({ backend }), { mem: a.mem });
        return {
          restore: (s) => b.transport.restoreState(s),
          exercise: () => {
            b.transport.device.activate();
            b.transport.notify(0);
            for (let i = 0; i < 64 && b.transport.device.serveDeferred(); i++) {}
            const data = bytes(4);
            for (let o = 0; o < 0x40; o += 4) b.transport.bar.read(o, data);
            b.transport.bar.read(0x1000, bytes(1));
            b.transport.msix.notify(0);
          },
        };
      },
    };
    const { refused, accepted } = run(subject, 200, 0x3000);
    assert.ok(refused > 50 && accepted > 0, `${refused} refused, ${accepted} accepted`);
  });

  test("e1000", () => {
    const a = makeNic();
    a.drv.reset();
    a.drv.setupTx(16);
    a.drv.setupRx({ count: 16 });
    for (let i = 0; i < 20; i++) {
      a.drv.sendLegacy([ethFrame(PEER_MAC, NIC_MAC, 0x88b5, pattern(100, i))]);
      a.wire.send(ethFrame(NIC_MAC, PEER_MAC, 0x88b5, pattern(100, i)));
      a.drv.receive();
    }
    const subject: Subject = {
      name: "e1000",
      saved: throughFile(a.dev.saveState()),
      fresh: () => {
        const b = attachNic(E1000.createState({ mac: NIC_MAC }), a.mem, { t: 0 });
        return {
          restore: (s) => b.dev.restoreState(s),
          exercise: () => {
            for (let i = 0; i < 8 && b.dev.nextDeadline() !== undefined; i++) b.dev.poll();
            for (const reg of [REG.CTRL, REG.STATUS, REG.ICR, REG.TDH, REG.RDH, REG.EERD, REG.MDIC])
              b.drv.r32(reg);
            b.drv.w32(REG.TDT, 3);
            b.drv.w32(REG.RDT, 5);
            b.wire.send(ethFrame(NIC_MAC, PEER_MAC, 0x88b5, pattern(60)));
            b.dev.saveState();
          },
        };
      },
    };
    const { refused, accepted } = run(subject, 120, 0x4000);
    assert.ok(refused > 50 && accepted > 0, `${refused} refused, ${accepted} accepted`);
  });
});
