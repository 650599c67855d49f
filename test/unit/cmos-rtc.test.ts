import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { DEFAULT_CENTURY_INDEX } from "../../src/arch/x86/acpi/index.ts";
import { CmosRtc, CmosRtcError, RTC_CENTURY_INDEX } from "../../src/devices/legacy/cmos-rtc.ts";

// Register indexes and bits, spelled out independently of the implementation (MC146818A datasheet).
const SEC = 0x00;
const SEC_ALARM = 0x01;
const MIN = 0x02;
const MIN_ALARM = 0x03;
const HOUR = 0x04;
const HOUR_ALARM = 0x05;
const DOW = 0x06;
const DAY = 0x07;
const MONTH = 0x08;
const YEAR = 0x09;
const REG_A = 0x0a;
const REG_B = 0x0b;
const REG_C = 0x0c;
const REG_D = 0x0d;
const CENTURY = 0x32;

const B_SET = 0x80;
const B_PIE = 0x40;
const B_AIE = 0x20;
const B_UIE = 0x10;
const B_DM = 0x04;
const B_24H = 0x02;

const C_IRQF = 0x80;
const C_PF = 0x40;
const C_AF = 0x20;
const C_UF = 0x10;

/** A fake wall clock the test moves by hand. */
class Clock {
  constructor(public ms: number) {}
  readonly now = (): Date => new Date(this.ms);
  advance(ms: number): void {
    this.ms += ms;
  }
}

class Harness {
  readonly levels: boolean[] = [];
  readonly rtc: CmosRtc;
  constructor(
    readonly clock: Clock,
    readonly state: SharedArrayBuffer = CmosRtc.createState(),
  ) {
    this.rtc = new CmosRtc({ state, irq: { set: (l) => this.levels.push(l) }, now: clock.now });
  }
  get level(): boolean {
    return this.levels.at(-1) ?? false;
  }
  /** outb(reg, 0x70); inb(0x71) */
  rd(reg: number): number {
    this.rtc.write(0, Uint8Array.of(reg));
    const d = new Uint8Array(1);
    this.rtc.read(1, d);
    return d[0] as number;
  }
  wr(reg: number, v: number): void {
    this.rtc.write(0, Uint8Array.of(reg));
    this.rtc.write(1, Uint8Array.of(v));
  }
  time(): number[] {
    return [SEC, MIN, HOUR, DOW, DAY, MONTH, YEAR, CENTURY].map((r) => this.rd(r));
  }
}

/** Saturday 9 March 2024, 21:07:45.500 UTC. */
const T0 = Date.parse("2024-03-09T21:07:45.500Z");

describe("CmosRtc", () => {
  test("reset state: register A 0x26 with UIP 0, B 24-hour BCD, C clear, D valid", () => {
    const h = new Harness(new Clock(T0));
    assert.equal(h.rd(REG_A), 0x26);
    assert.equal(h.rd(REG_B), B_24H);
    assert.equal(h.rd(REG_C), 0);
    assert.equal(h.rd(REG_D), 0x80);
    assert.deepEqual(h.levels, []);
  });

  test("UIP always reads 0 while the clock runs; rate select and divider bits are writable", () => {
    const h = new Harness(new Clock(T0));
    for (let i = 0; i < 2000; i++) {
      h.clock.advance(1);
      assert.equal(h.rd(REG_A) & 0x80, 0);
    }
    h.wr(REG_A, 0xff);
    assert.equal(h.rd(REG_A), 0x7f, "UIP is read-only");
    h.wr(REG_A, 0x2f);
    assert.equal(h.rd(REG_A), 0x2f);
  });

  test("time and date in BCD, 24-hour (the PC default)", () => {
    const h = new Harness(new Clock(T0));
    // 45 s, 07 min, 21 h, Saturday (7; Sunday = 1), 9th, March, (20)24
    assert.deepEqual(h.time(), [0x45, 0x07, 0x21, 0x07, 0x09, 0x03, 0x24, 0x20]);
  });

  test("time and date in binary", () => {
    const h = new Harness(new Clock(T0));
    h.wr(REG_B, B_24H | B_DM);
    assert.deepEqual(h.time(), [45, 7, 21, 7, 9, 3, 24, 20]);
  });

  test("12-hour mode: 1-12 with bit 7 = PM, in BCD and binary", () => {
    const clock = new Clock(T0);
    const h = new Harness(clock);
    h.wr(REG_B, 0); // 12-hour, BCD
    assert.equal(h.rd(HOUR), 0x89, "21:07 is 9 PM");
    clock.ms = Date.parse("2024-03-09T00:30:00Z");
    assert.equal(h.rd(HOUR), 0x12, "00:30 is 12 AM");
    clock.ms = Date.parse("2024-03-09T12:30:00Z");
    assert.equal(h.rd(HOUR), 0x92, "12:30 is 12 PM");
    clock.ms = Date.parse("2024-03-09T11:30:00Z");
    assert.equal(h.rd(HOUR), 0x11, "11:30 is 11 AM");
    h.wr(REG_B, B_DM); // 12-hour, binary
    assert.equal(h.rd(HOUR), 11);
    clock.ms = Date.parse("2024-03-09T23:00:00Z");
    assert.equal(h.rd(HOUR), 0x80 | 11);
  });

  test("the NMI-disable bit of the index is not part of the address", () => {
    const h = new Harness(new Clock(T0));
    h.rtc.write(0, Uint8Array.of(0x80 | SEC));
    const d = new Uint8Array(1);
    h.rtc.read(1, d);
    assert.equal(d[0], 0x45);
    assert.equal(h.rtc.nmiDisabled, true);
    h.rtc.write(0, Uint8Array.of(0x80 | REG_D));
    h.rtc.read(1, d);
    assert.equal(d[0], 0x80);
    h.rtc.write(0, Uint8Array.of(0x40));
    h.rtc.write(1, Uint8Array.of(0x5a));
    assert.equal(h.rtc.nmiDisabled, false);
    assert.equal(h.rd(0x80 | 0x40), 0x5a, "index 0xc0 is RAM byte 0x40");
  });

  test("SET mode: written time holds until SET clears, then runs on with the clock", () => {
    const clock = new Clock(T0);
    const h = new Harness(clock);
    // Linux's sequence: B |= SET, write the fields, restore B.
    h.wr(REG_B, B_24H | B_SET);
    h.wr(SEC, 0x58);
    h.wr(MIN, 0x59);
    h.wr(HOUR, 0x23);
    h.wr(DAY, 0x31);
    h.wr(MONTH, 0x12);
    h.wr(YEAR, 0x31);
    h.wr(CENTURY, 0x20);
    clock.advance(5000);
    assert.equal(h.rd(SEC), 0x58, "no updates while SET is 1");
    assert.equal(h.rd(YEAR), 0x31);
    h.wr(REG_B, B_24H);
    assert.deepEqual(h.time().slice(0, 3), [0x58, 0x59, 0x23]);
    assert.equal(h.rtc.guestTime().toISOString(), "2031-12-31T23:59:58.000Z");
    clock.advance(2500);
    // 2032-01-01 00:00:00.500 is a Thursday (5)
    assert.deepEqual(h.time(), [0x00, 0x00, 0x00, 0x05, 0x01, 0x01, 0x32, 0x20]);
    clock.advance(60_000);
    assert.equal(h.rd(MIN), 0x01);
  });

  test("SET mode writes in binary 12-hour encoding", () => {
    const clock = new Clock(T0);
    const h = new Harness(clock);
    h.wr(REG_B, B_DM | B_SET);
    h.wr(SEC, 30);
    h.wr(MIN, 15);
    h.wr(HOUR, 0x80 | 7); // 7 PM
    h.wr(DAY, 1);
    h.wr(MONTH, 2);
    h.wr(YEAR, 99);
    h.wr(CENTURY, 19);
    h.wr(REG_B, B_DM);
    assert.equal(h.rtc.guestTime().toISOString(), "1999-02-01T19:15:30.000Z");
    h.wr(REG_B, B_24H | B_DM);
    assert.equal(h.rd(HOUR), 19);
  });

  test("entering and leaving SET without writing the time does not move the clock", () => {
    const clock = new Clock(T0);
    const h = new Harness(clock);
    h.wr(REG_B, B_24H | B_SET);
    h.wr(REG_B, B_24H);
    assert.equal(h.rtc.guestTime().getTime(), T0, "sub-second phase kept");
  });

  test("a time write outside SET mode takes effect at once", () => {
    const clock = new Clock(T0);
    const h = new Harness(clock);
    h.wr(MIN, 0x30);
    assert.equal(h.rtc.guestTime().toISOString(), "2024-03-09T21:30:45.500Z");
    h.wr(CENTURY, 0x21);
    assert.equal(h.rd(CENTURY), 0x21);
    assert.equal(h.rtc.guestTime().toISOString(), "2124-03-09T21:30:45.500Z");
    h.wr(DOW, 0x02);
    assert.equal(h.rd(DOW), 0x05, "day of week follows the date (9 March 2124 is a Thursday)");
  });

  test("update-ended interrupt: UF and IRQF, IRQ 8 level, register C clears on read", () => {
    const clock = new Clock(T0);
    const h = new Harness(clock);
    h.wr(REG_A, 0x20); // no periodic rate, so PF stays out of the way
    h.wr(REG_B, B_24H | B_UIE);
    assert.deepEqual(h.levels, []);
    clock.advance(400); // 21:07:45.900: no update yet
    h.rtc.poll();
    assert.deepEqual(h.levels, []);
    clock.advance(200); // crosses 21:07:46
    h.rtc.poll();
    assert.deepEqual(h.levels, [true]);
    assert.equal(h.rd(REG_C), C_IRQF | C_UF);
    assert.deepEqual(h.levels, [true, false], "reading C lowers the line");
    assert.equal(h.rd(REG_C), 0, "and the flags are gone");
  });

  test("flags are set without their enables, but then IRQF and the line stay low", () => {
    const clock = new Clock(T0);
    const h = new Harness(clock);
    h.wr(REG_A, 0x2f); // 2 Hz periodic rate
    h.rd(REG_C);
    clock.advance(1000);
    h.rtc.poll();
    assert.deepEqual(h.levels, []);
    assert.equal(h.rd(REG_C), C_PF | C_UF);
    clock.advance(1000);
    h.rtc.poll();
    // Enabling an interrupt whose flag is already set raises IRQF (IRQF = PF·PIE + AF·AIE + UF·UIE).
    h.wr(REG_B, B_24H | B_PIE);
    assert.deepEqual(h.levels, [true]);
    assert.equal(h.rd(REG_C), C_IRQF | C_PF | C_UF);
    assert.equal(h.level, false);
  });

  test("periodic interrupt at the register A rate", () => {
    const clock = new Clock(Date.parse("2024-03-09T21:07:45.000Z"));
    const h = new Harness(clock);
    h.wr(REG_A, 0x2f); // RS = 15: 2 Hz, a tick every 500 ms
    h.wr(REG_B, B_24H | B_PIE);
    h.rd(REG_C);
    clock.advance(499);
    h.rtc.poll();
    assert.equal(h.level, false);
    assert.equal(h.rtc.nextEventDelayMs(), 1);
    clock.advance(1);
    h.rtc.poll();
    assert.equal(h.level, true);
    assert.equal(h.rd(REG_C), C_IRQF | C_PF);
    h.wr(REG_A, 0x20); // RS = 0: no periodic interrupt
    clock.advance(5000);
    h.rtc.poll();
    assert.equal(h.rd(REG_C) & C_PF, 0);
    assert.equal(h.rtc.nextEventDelayMs(), null);
  });

  test("alarm interrupt when seconds, minutes and hours match; 0xC0-0xFF is don't care", () => {
    const clock = new Clock(T0); // 21:07:45.5
    const h = new Harness(clock);
    h.wr(REG_A, 0x20); // no periodic rate, so PF stays out of the way
    h.wr(SEC_ALARM, 0x50);
    h.wr(MIN_ALARM, 0x07);
    h.wr(HOUR_ALARM, 0x21);
    h.wr(REG_B, B_24H | B_AIE);
    clock.advance(4000); // 21:07:49.5
    h.rtc.poll();
    assert.equal(h.level, false);
    assert.equal(h.rd(REG_C), C_UF, "updates happened, no alarm yet");
    clock.advance(1000); // 21:07:50.5
    h.rtc.poll();
    assert.equal(h.level, true);
    assert.equal(h.rd(REG_C), C_IRQF | C_AF | C_UF);
    // A long gap still finds the match: 21:07:50 comes round again a day later.
    clock.advance(86_400_000);
    h.rtc.poll();
    assert.equal(h.rd(REG_C), C_IRQF | C_AF | C_UF);
    // Don't-care in all three: once a second.
    h.wr(SEC_ALARM, 0xc0);
    h.wr(MIN_ALARM, 0xff);
    h.wr(HOUR_ALARM, 0xc3);
    clock.advance(1000);
    h.rtc.poll();
    assert.equal(h.rd(REG_C), C_IRQF | C_AF | C_UF);
  });

  test("SET clears UIE and inhibits updates, not the periodic flag", () => {
    const clock = new Clock(T0);
    const h = new Harness(clock);
    h.wr(REG_B, B_24H | B_UIE | B_SET);
    assert.equal(h.rd(REG_B), B_24H | B_SET);
    clock.advance(3000);
    h.rtc.poll();
    assert.equal(h.rd(REG_C), C_PF, "no UF; the periodic tap (1024 Hz at reset) runs on");
    assert.equal(h.rtc.nextEventDelayMs(), null);
  });

  test("nextEventDelayMs: time to the next update while UIE is set", () => {
    const h = new Harness(new Clock(T0));
    assert.equal(h.rtc.nextEventDelayMs(), null);
    h.wr(REG_B, B_24H | B_UIE);
    assert.equal(h.rtc.nextEventDelayMs(), 500);
  });

  test("the century byte is at the index the ACPI tables announce", () => {
    assert.equal(RTC_CENTURY_INDEX, DEFAULT_CENTURY_INDEX);
    const clock = new Clock(T0);
    const h = new Harness(clock, CmosRtc.createState({ centuryIndex: 0x48 }));
    assert.equal(h.rd(0x48), 0x20);
    h.wr(0x32, 0x77);
    assert.equal(h.rd(0x32), 0x77, "0x32 is plain RAM when the century lives elsewhere");
  });

  test("NVRAM bytes are plain storage; C and D ignore writes", () => {
    const h = new Harness(new Clock(T0));
    for (let r = 0x0e; r < 0x80; r++) if (r !== CENTURY) h.wr(r, (r * 7) & 0xff);
    for (let r = 0x0e; r < 0x80; r++) if (r !== CENTURY) assert.equal(h.rd(r), (r * 7) & 0xff, `byte ${r}`);
    h.wr(REG_C, 0xff);
    h.wr(REG_D, 0x00);
    assert.equal(h.rd(REG_C), 0);
    assert.equal(h.rd(REG_D), 0x80);
  });

  test("memSize fills the PC BIOS memory-size bytes and their checksum", () => {
    const MiB = 1024 * 1024;
    const h = new Harness(new Clock(T0), CmosRtc.createState({ memSize: 40 * MiB }));
    assert.deepEqual([h.rd(0x15), h.rd(0x16)], [0x80, 0x02], "640 KiB base memory");
    // (40 MiB - 1 MiB) / 1 KiB = 39936 = 0x9c00
    assert.deepEqual([h.rd(0x17), h.rd(0x18)], [0x00, 0x9c]);
    assert.deepEqual([h.rd(0x30), h.rd(0x31)], [0x00, 0x9c]);
    // (40 MiB - 16 MiB) / 64 KiB = 384 = 0x0180
    assert.deepEqual([h.rd(0x34), h.rd(0x35)], [0x80, 0x01]);
    const sum = 0x80 + 0x02 + 0x00 + 0x9c;
    assert.deepEqual([h.rd(0x2e), h.rd(0x2f)], [sum >> 8, sum & 0xff]);
    const big = new Harness(new Clock(T0), CmosRtc.createState({ memSize: 3 * 1024 * MiB }));
    assert.deepEqual([big.rd(0x17), big.rd(0x18)], [0xff, 0xff], "saturates at 0xffff KiB");
    // (3 GiB - 16 MiB) / 64 KiB = 48896 = 0xbf00
    assert.deepEqual([big.rd(0x34), big.rd(0x35)], [0x00, 0xbf]);
  });

  test("a 16-bit access covers the index and data ports", () => {
    const h = new Harness(new Clock(T0));
    h.rtc.write(0, Uint8Array.of(0x40, 0xa5)); // index 0x40, then data 0xa5
    assert.equal(h.rd(0x40), 0xa5);
    h.rtc.write(0, Uint8Array.of(MIN));
    const d = new Uint8Array(2);
    h.rtc.read(0, d);
    assert.deepEqual([...d], [0xff, 0x07], "the index port reads 0xff, the data port the minutes");
  });

  test("two instances over one state are one RTC", () => {
    const clock = new Clock(T0);
    const a = new Harness(clock);
    const b = new Harness(clock, a.state);
    a.wr(REG_A, 0x20);
    a.wr(REG_B, B_24H | B_SET);
    b.wr(HOUR, 0x05); // b writes while a started the SET cycle
    assert.equal(a.rd(HOUR), 0x05);
    b.wr(REG_B, B_24H | B_UIE);
    assert.equal(a.rtc.guestTime().toISOString(), "2024-03-09T05:07:45.000Z");
    a.rtc.write(0, Uint8Array.of(REG_C)); // index selected through a ...
    clock.advance(1000);
    a.rtc.poll();
    assert.deepEqual(a.levels, [true]);
    const d = new Uint8Array(1);
    b.rtc.read(1, d); // ... and read through b
    assert.equal(d[0], C_IRQF | C_UF);
    assert.deepEqual(b.levels, [false], "the instance that cleared IRQF lowers the shared line");
    assert.equal(a.rd(REG_C), 0);
  });

  test("attaching requires initialised state of the right kind and size", () => {
    const irq = { set() {} };
    assert.throws(
      () => new CmosRtc({ state: new SharedArrayBuffer(CmosRtc.STATE_BYTES), irq }),
      (e: unknown) => e instanceof CmosRtcError && e.code === "VIREO_CMOS_RTC",
    );
    assert.throws(() => new CmosRtc({ state: new SharedArrayBuffer(16), init: true, irq }), CmosRtcError);
    assert.throws(
      () => new CmosRtc({ state: new ArrayBuffer(256) as unknown as SharedArrayBuffer, init: true, irq }),
      CmosRtcError,
    );
    assert.throws(() => CmosRtc.createState({ centuryIndex: 0x0b }), CmosRtcError);
    const rtc = new CmosRtc({ state: new SharedArrayBuffer(CmosRtc.STATE_BYTES), init: true, irq });
    assert.equal(rtc.name, "cmos");
  });
});
