/**
 * Snapshot round-trips of the legacy devices (UART 16550, CMOS RTC, i8042, ACPI PM): each is driven into a state
 * that is not its reset state, saved, sent through a state file, restored into a fresh instance over a fresh
 * state buffer, and then (1) both instances save the same state and (2) both answer the same sequence of guest
 * accesses the same way. Refused states (wrong kind, version, out-of-range fields) leave the device untouched.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { ACPI_PM_BASE, AcpiPm, PM1_STS_PWRBTN } from "../../src/devices/legacy/acpi-pm.ts";
import { CmosRtc } from "../../src/devices/legacy/cmos-rtc.ts";
import { I8042 } from "../../src/devices/legacy/i8042.ts";
import { Uart16550 } from "../../src/devices/legacy/uart16550.ts";
import { type DeviceState, DeviceStateError } from "../../src/shared/device-state.ts";
import { cloneState, throughFile } from "../helpers/snapshot.ts";

function rd(dev: { read(o: number, d: Uint8Array): void }, offset: number, size = 1): number {
  const d = new Uint8Array(size);
  dev.read(offset, d);
  let v = 0;
  for (let i = size - 1; i >= 0; i--) v = v * 256 + (d[i] as number);
  return v;
}

function wr(dev: { write(o: number, d: Uint8Array): void }, offset: number, v: number, size = 1): void {
  const d = new Uint8Array(size);
  for (let i = 0; i < size; i++) d[i] = (v >>> (8 * i)) & 0xff;
  dev.write(offset, d);
}

/** Every field the device saved must be refused when out of range, and the refusal must change nothing. */
function assertRefusals(
  dev: { saveState(): DeviceState; restoreState(s: DeviceState): void },
  saved: DeviceState,
  bad: Record<string, unknown>,
): void {
  const before = dev.saveState();
  for (const [field, value] of Object.entries(bad)) {
    const s = cloneState(saved);
    (s.data as Record<string, unknown>)[field] = value;
    assert.throws(
      () => dev.restoreState(s),
      (e: unknown) =>
        e instanceof DeviceStateError && e.code === "VIREO_DEVICE_STATE" && e.message.includes(field),
      `${field} = ${String(value)} is refused`,
    );
    assert.deepEqual(dev.saveState(), before, `a refused ${field} changed nothing`);
  }
  assert.throws(
    () => dev.restoreState({ ...saved, version: saved.version + 1 }),
    (e: unknown) => e instanceof DeviceStateError && e.code === "VIREO_DEVICE_STATE_VERSION",
  );
  assert.throws(() => dev.restoreState({ ...saved, kind: "something-else" }), DeviceStateError);
  const missing = cloneState(saved);
  delete (missing.data as Record<string, unknown>)[Object.keys(bad)[0] as string];
  assert.throws(() => dev.restoreState(missing), /is missing/);
}

describe("Uart16550 snapshot", () => {
  const make = (state = Uart16550.createState()) => {
    const out: number[] = [];
    const levels: boolean[] = [];
    const uart = new Uart16550({ state, irq: { set: (l) => levels.push(l) }, output: (b) => out.push(...b) });
    return { uart, out, levels };
  };

  test("divisor, line settings, FIFO contents and pending host input survive; the IRQ line is re-driven", () => {
    const a = make();
    wr(a.uart, 3, 0x80); // DLAB
    wr(a.uart, 0, 0x03); // DLL: 38400 baud
    wr(a.uart, 1, 0x00);
    wr(a.uart, 3, 0x1b); // 8E1, DLAB off
    wr(a.uart, 2, 0xc7); // FIFO on, cleared, trigger 14
    wr(a.uart, 1, 0x0f); // every interrupt
    wr(a.uart, 4, 0x0b); // DTR, RTS, OUT2
    wr(a.uart, 7, 0x5a); // scratch
    const input = Uint8Array.from({ length: 40 }, (_, i) => 0x41 + (i % 26));
    assert.equal(a.uart.receive(input), 40);
    assert.equal(a.uart.receiveBreak(), true);
    assert.equal(rd(a.uart, 0), 0x41);
    assert.equal(rd(a.uart, 0), 0x42);
    assert.equal(a.levels.at(-1), true, "data waiting raises the line");

    const saved = throughFile(a.uart.saveState());
    const b = make();
    b.uart.restoreState(saved);
    assert.deepEqual(b.uart.saveState(), saved);
    assert.deepEqual(b.levels, [true], "the restored device raises its (new, low) line once");

    // Divisor kept.
    wr(b.uart, 3, 0x9b);
    assert.equal(rd(b.uart, 0), 0x03);
    wr(b.uart, 3, 0x1b);
    // The same accesses read the same on both: the 38 bytes and the break after them, IIR, LSR, SCR.
    const trace = (u: Uart16550) => {
      const r: number[] = [rd(u, 2), rd(u, 7), rd(u, 4)];
      for (let i = 0; i < 40; i++) r.push(rd(u, 5), rd(u, 0));
      r.push(rd(u, 2), rd(u, 5));
      return r;
    };
    const ta = trace(a.uart);
    assert.deepEqual(trace(b.uart), ta);
    assert.equal(ta[4], 0x43, "the next byte after the two read before the snapshot");
    wr(b.uart, 0, 0x21);
    assert.deepEqual(b.out, [0x21]);
  });

  test("refuses out-of-range indices and reserved bits, and changes nothing then", () => {
    const a = make();
    a.uart.receive(Uint8Array.of(1, 2, 3));
    assertRefusals(make().uart, a.uart.saveState(), {
      ringHead: 4096,
      ringCount: 4097,
      rxHead: 16,
      rxCount: 17,
      ier: 0x10,
      mcr: 0x20,
      ringData: new Uint8Array(10),
      dll: 256,
      flags: "x",
    });
  });
});

describe("CmosRtc snapshot", () => {
  const T0 = Date.parse("2024-03-09T21:07:45.500Z");
  const make = (clock: { ms: number }, state = CmosRtc.createState({ memSize: 256 << 20 })) => {
    const levels: boolean[] = [];
    const rtc = new CmosRtc({ state, irq: { set: (l) => levels.push(l) }, now: () => new Date(clock.ms) });
    return { rtc, levels };
  };
  const reg = (rtc: CmosRtc, r: number) => {
    wr(rtc, 0, r);
    return rd(rtc, 1);
  };
  const setReg = (rtc: CmosRtc, r: number, v: number) => {
    wr(rtc, 0, r);
    wr(rtc, 1, v);
  };

  test("the guest's clock offset, CMOS RAM, register B and a latched interrupt survive", () => {
    const clock = { ms: T0 };
    const a = make(clock);
    setReg(a.rtc, 0x0b, 0x82); // SET
    setReg(a.rtc, 0x04, 0x08); // 08 h
    setReg(a.rtc, 0x09, 0x30); // year 30
    setReg(a.rtc, 0x0b, 0x52); // run, PIE + UIE, 24 h
    setReg(a.rtc, 0x40, 0x99); // user RAM
    clock.ms += 1500;
    a.rtc.poll();
    assert.equal(a.levels.at(-1), true, "periodic/update interrupt latched");
    wr(a.rtc, 0, 0x80 | 0x40); // NMI disabled, index 0x40

    const saved = throughFile(a.rtc.saveState());
    const b = make(clock, CmosRtc.createState());
    b.rtc.restoreState(saved);
    assert.deepEqual(b.rtc.saveState(), saved);
    assert.deepEqual(b.levels, [true]);
    assert.equal(b.rtc.nmiDisabled, true);
    assert.equal(rd(b.rtc, 1), 0x99, "the index latch points at the user byte");
    // 10 s later both read the same time, which goes on from the guest's (not the host's) clock.
    clock.ms += 10_000;
    const regs = [0x00, 0x02, 0x04, 0x07, 0x08, 0x09, 0x0b, 0x0c, 0x0c, 0x32, 0x15, 0x2e, 0x2f];
    const ra = regs.map((r) => reg(a.rtc, r));
    assert.deepEqual(
      regs.map((r) => reg(b.rtc, r)),
      ra,
    );
    assert.equal(ra[2], 0x08, "hour set by the guest");
    assert.equal(ra[5], 0x30);
    assert.notEqual(ra[10], 0, "memory size bytes came along (the fresh state had none)");
  });

  test("refuses an index or century byte out of range", () => {
    const clock = { ms: T0 };
    assertRefusals(make(clock).rtc, make(clock).rtc.saveState(), {
      index: 128,
      centuryIndex: 0x0d,
      nmiDisabled: 2,
      ram: new Uint8Array(127),
      offsetMs: "soon",
    });
  });
});

describe("I8042 snapshot", () => {
  const make = (state = I8042.createState()) => {
    const kbd: boolean[] = [];
    const aux: boolean[] = [];
    const kbc = new I8042({
      state,
      kbdIrq: { set: (l) => kbd.push(l) },
      auxIrq: { set: (l) => aux.push(l) },
      onReset: () => {},
    });
    return { kbc, kbd, aux };
  };

  test("command byte, LEDs, scan set and queued keyboard bytes survive; IRQ 1 is re-driven", () => {
    const a = make();
    wr(a.kbc, 4, 0x60); // write command byte
    wr(a.kbc, 0, 0x47); // KBDINT, SYS, XLATE... as Linux sets it
    wr(a.kbc, 0, 0xed); // set LEDs
    assert.equal(rd(a.kbc, 0), 0xfa);
    wr(a.kbc, 0, 0x05);
    assert.equal(rd(a.kbc, 0), 0xfa);
    wr(a.kbc, 0, 0xf0); // scan set 3
    rd(a.kbc, 0);
    wr(a.kbc, 0, 0x03);
    rd(a.kbc, 0);
    assert.equal(a.kbc.pushKeyboardInput(Uint8Array.of(0x1c, 0xf0, 0x1c, 0x32, 0xf0, 0x32)), 6);
    assert.equal(rd(a.kbc, 0), 0x1c);
    assert.equal(a.kbd.at(-1), true);

    const saved = throughFile(a.kbc.saveState());
    const b = make();
    b.kbc.restoreState(saved);
    assert.deepEqual(b.kbc.saveState(), saved);
    assert.deepEqual(b.kbd, [true]);
    assert.equal(b.kbc.leds, 5);
    const trace = (k: I8042) => {
      const r: number[] = [];
      for (let i = 0; i < 6; i++) r.push(rd(k, 4), rd(k, 0));
      wr(k, 4, 0x20);
      r.push(rd(k, 0));
      wr(k, 0, 0xf0);
      rd(k, 0);
      wr(k, 0, 0x00);
      r.push(rd(k, 0), rd(k, 0));
      return r;
    };
    const ta = trace(a.kbc);
    assert.deepEqual(trace(b.kbc), ta);
    assert.deepEqual(
      ta.slice(1, 10).filter((_, i) => i % 2 === 0),
      [0xf0, 0x1c, 0x32, 0xf0, 0x32],
    );
    assert.deepEqual(ta.slice(-2), [0xfa, 0x03], "scan set 3 kept");
  });

  test("refuses queue indices out of range", () => {
    assertRefusals(make().kbc, make().kbc.saveState(), {
      controllerQueueHead: 16,
      controllerQueueCount: 17,
      kbdQueueHead: 32,
      kbdQueueCount: 33,
      kbdScanSet: 0,
      ram: new Uint8Array(31),
    });
  });
});

describe("AcpiPm snapshot", () => {
  const make = (state = AcpiPm.createState()) => {
    const levels: boolean[] = [];
    let ns = 123_456_789n;
    const pm = new AcpiPm({
      state,
      irq: { set: (l) => levels.push(l) },
      onPowerOff: () => {},
      onReset: () => {},
      clockNs: () => ns,
    });
    return { pm, levels, tick: (d: bigint) => (ns += d) };
  };
  void ACPI_PM_BASE;

  test("status, enables and control survive; the SCI is re-driven; the timer runs from the new host clock", () => {
    const a = make();
    wr(a.pm, 2, PM1_STS_PWRBTN, 2); // PWRBTN_EN
    wr(a.pm, 4, 1 << 10, 2); // SLP_TYP 1, no SLP_EN
    assert.equal(a.pm.pressPowerButton(), true);
    assert.equal(a.levels.at(-1), true);

    const saved = throughFile(a.pm.saveState());
    const b = make(AcpiPm.createState({ timerBits: 24 }));
    b.pm.restoreState(saved);
    assert.deepEqual(b.pm.saveState(), saved);
    assert.deepEqual(b.levels, [true]);
    for (const off of [0, 2, 4]) assert.equal(rd(b.pm, off, 2), rd(a.pm, off, 2), `register ${off}`);
    assert.equal(rd(b.pm, 8, 4), rd(a.pm, 8, 4), "32-bit timer width restored (the fresh state had 24)");
    wr(b.pm, 0, PM1_STS_PWRBTN, 2);
    assert.equal(b.levels.at(-1), false, "the guest clears the event as before");
  });

  test("refuses reserved bits and a timer width other than 24 or 32", () => {
    assertRefusals(make().pm, make().pm.saveState(), {
      timerBits: 25,
      status: 0x0002,
      enable: 0x8000,
      s5SlpTyp: 8,
    });
  });
});
