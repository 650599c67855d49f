import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  ACPI_S5_SLP_TYP,
  buildAcpiTables,
  PM1_CNT_SLP_EN,
  PM1_CNT_SLP_TYP_SHIFT,
} from "../../src/arch/x86/acpi/index.ts";
import { FADT, FADT_FLAG } from "../../src/arch/x86/acpi/tables.ts";
import { Bus } from "../../src/bus/bus.ts";
import {
  ACPI_PM_BASE,
  ACPI_PM_FADT,
  ACPI_PM_LEN,
  AcpiPm,
  AcpiPmError,
} from "../../src/devices/legacy/acpi-pm.ts";

// Register offsets and bits, spelled out independently of the implementation (ACPI 6.x §4.8.3).
const STS = 0x0;
const EN = 0x2;
const CNT = 0x4;
const TMR = 0x8;
const RESET = 0xc;

const TMR_STS = 0x0001;
const PWRBTN_STS = 0x0100;
const WAK_STS = 0x8000;
const SCI_EN = 0x0001;

const HZ = 3_579_545n;

/** The first nanosecond at which the PM timer has counted `ticks` ticks. */
function nsFor(ticks: bigint): bigint {
  return (ticks * 1_000_000_000n + HZ - 1n) / HZ;
}

class Harness {
  readonly levels: boolean[] = [];
  readonly logs: string[] = [];
  powerOffs = 0;
  resets = 0;
  ns = 1_000_000_000n;
  onPowerOff: () => void = () => {};
  readonly pm: AcpiPm;
  constructor(readonly state: SharedArrayBuffer = AcpiPm.createState()) {
    this.pm = new AcpiPm({
      state,
      irq: { set: (l) => this.levels.push(l) },
      onPowerOff: () => {
        this.powerOffs++;
        this.onPowerOff();
      },
      onReset: () => this.resets++,
      clockNs: () => this.ns,
      log: (m) => this.logs.push(m),
    });
  }
  get level(): boolean {
    return this.levels.at(-1) ?? false;
  }
  r16(off: number): number {
    const d = new Uint8Array(2);
    this.pm.read(off, d);
    return new DataView(d.buffer).getUint16(0, true);
  }
  w16(off: number, v: number): void {
    const d = new Uint8Array(2);
    new DataView(d.buffer).setUint16(0, v, true);
    this.pm.write(off, d);
  }
  r32(off: number): number {
    const d = new Uint8Array(4);
    this.pm.read(off, d);
    return new DataView(d.buffer).getUint32(0, true);
  }
  r8(off: number): number {
    const d = new Uint8Array(1);
    this.pm.read(off, d);
    return d[0] as number;
  }
  w8(off: number, v: number): void {
    this.pm.write(off, Uint8Array.of(v));
  }
}

describe("AcpiPm", () => {
  test("the exported layout is what the ACPI builder puts in the FADT", () => {
    const t = buildAcpiTables({ base: 0xe0000, cpus: 2, ...ACPI_PM_FADT });
    const facp = t.tables.find((x) => x.signature === "FACP");
    assert.ok(facp);
    const v = new DataView(t.bytes.buffer, t.bytes.byteOffset + (facp.addr - t.base), facp.length);
    assert.equal(v.getUint32(FADT.pm1aEvtBlk, true), 0x600);
    assert.equal(v.getUint32(FADT.pm1aCntBlk, true), 0x604);
    assert.equal(v.getUint32(FADT.pmTmrBlk, true), 0x608);
    assert.equal(v.getUint8(FADT.pmTmrLen), 4);
    assert.equal(v.getUint16(FADT.sciInt, true), 9);
    assert.equal(v.getUint32(FADT.smiCmd, true), 0, "no SMI_CMD: always in ACPI mode");
    const flags = v.getUint32(FADT.flags, true);
    assert.equal(flags & FADT_FLAG.TMR_VAL_EXT, FADT_FLAG.TMR_VAL_EXT, "a 32-bit PM timer");
    assert.equal(flags & FADT_FLAG.RESET_REG_SUP, FADT_FLAG.RESET_REG_SUP);
    assert.equal(flags & FADT_FLAG.PWR_BUTTON, 0, "a fixed-hardware power button");
    // RESET_REG: GAS { SystemIO, 8 bits, offset 0, byte access, address 0x60c }, RESET_VALUE 0x06
    assert.deepEqual([...new Uint8Array(v.buffer, v.byteOffset + FADT.resetReg, 4)], [1, 8, 0, 1]);
    assert.equal(v.getBigUint64(FADT.resetReg + 4, true), 0x60cn);
    assert.equal(v.getUint8(FADT.resetValue), 0x06);
  });

  test("the block fits among the other PC ports", () => {
    const bus = new Bus("pio");
    const dev = (name: string) => ({ name, read() {}, write() {} });
    bus.register(0x60, 1, dev("kbd-data"));
    bus.register(0x64, 1, dev("kbd-cmd"));
    bus.register(0x70, 2, dev("rtc"));
    bus.register(0x3f8, 8, dev("com1"));
    bus.register(0x501, 1, dev("debug-exit"));
    bus.register(0x510, 0x10, dev("test-device"));
    bus.register(0xcf8, 8, dev("pci-config"));
    bus.register(0xc000, 0x4000, dev("pci-io"));
    bus.register(ACPI_PM_BASE, ACPI_PM_LEN, dev("acpi-pm")); // throws BusOverlapError on a collision
    assert.equal(bus.deviceAt(0x600)?.name, "acpi-pm");
    assert.equal(bus.deviceAt(0x60c)?.name, "acpi-pm");
  });

  test("reset state; SCI_EN reads 1 whatever is written", () => {
    const h = new Harness();
    assert.equal(h.r16(STS), 0);
    assert.equal(h.r16(EN), 0);
    assert.equal(h.r16(CNT), SCI_EN);
    h.w16(CNT, 0x0000);
    assert.equal(h.r16(CNT), SCI_EN);
    h.w16(CNT, 0x0002); // BM_RLD
    assert.equal(h.r16(CNT), SCI_EN | 0x0002);
    assert.deepEqual(h.levels, []);
  });

  test("PM1 status bits are write-1-to-clear, word or byte wide", () => {
    const h = new Harness();
    h.pm.pressPowerButton();
    assert.equal(h.r16(STS), PWRBTN_STS);
    h.w16(STS, 0x0000);
    assert.equal(h.r16(STS), PWRBTN_STS, "writing 0 leaves it");
    h.w16(STS, 0xfeff);
    assert.equal(h.r16(STS), PWRBTN_STS, "writing 1 elsewhere leaves it");
    h.w16(STS, PWRBTN_STS);
    assert.equal(h.r16(STS), 0);
    h.pm.pressPowerButton();
    h.w8(STS + 1, 0x01); // the high byte alone
    assert.equal(h.r16(STS), 0);
  });

  test("the SCI is high while an enabled status bit is set", () => {
    const h = new Harness();
    assert.equal(h.pm.pressPowerButton(), false, "not enabled yet");
    assert.deepEqual(h.levels, [], "status without enable: no SCI");
    h.w16(EN, 0x0100); // PWRBTN_EN
    assert.equal(h.r16(EN), 0x0100);
    assert.deepEqual(h.levels, [true]);
    h.w16(STS, PWRBTN_STS | WAK_STS);
    assert.deepEqual(h.levels, [true, false]);
    assert.equal(h.pm.pressPowerButton(), true);
    assert.deepEqual(h.levels, [true, false, true]);
    h.w16(EN, 0);
    assert.deepEqual(h.levels, [true, false, true, false], "disabling the event drops the SCI");
    assert.equal(h.r16(STS), PWRBTN_STS, "the status stays");
  });

  test("S5: SLP_EN with the DSDT's S5 SLP_TYP powers off (Linux writes SLP_TYP first, then SLP_EN)", () => {
    const h = new Harness();
    const slpTyp = ACPI_S5_SLP_TYP << PM1_CNT_SLP_TYP_SHIFT;
    assert.equal(slpTyp | PM1_CNT_SLP_EN, 0x3400, "SLP_TYP=5 in bits 12:10, SLP_EN bit 13");
    h.w16(CNT, SCI_EN | slpTyp);
    assert.equal(h.powerOffs, 0, "SLP_TYP alone does nothing");
    assert.equal(h.r16(CNT), SCI_EN | slpTyp, "SLP_TYP reads back");
    h.w16(CNT, SCI_EN | slpTyp | PM1_CNT_SLP_EN);
    assert.equal(h.powerOffs, 1);
    assert.equal(h.r16(CNT) & PM1_CNT_SLP_EN, 0, "SLP_EN is write-only");
    // As two byte writes, low byte first.
    h.w8(CNT, 0x01);
    h.w8(CNT + 1, 0x34);
    assert.equal(h.powerOffs, 2);
    assert.deepEqual(h.logs, []);
  });

  test("other sleep types are logged and ignored", () => {
    const h = new Harness();
    for (const typ of [0, 1, 3, 4, 6, 7]) h.w16(CNT, PM1_CNT_SLP_EN | (typ << 10));
    assert.equal(h.powerOffs, 0);
    assert.equal(h.logs.length, 6);
    assert.match(h.logs[2] as string, /SLP_TYP=3/);
    assert.equal(h.r16(CNT), SCI_EN | (7 << 10));
  });

  test("the S5 SLP_TYP follows the state's setting", () => {
    const h = new Harness(AcpiPm.createState({ s5SlpTyp: 7 }));
    h.w16(CNT, 0x3400);
    assert.equal(h.powerOffs, 0);
    h.w16(CNT, 0x3c00);
    assert.equal(h.powerOffs, 1);
  });

  test("onPowerOff runs after the device lock is released", () => {
    const h = new Harness();
    let cnt = -1;
    h.onPowerOff = () => {
      cnt = h.r16(CNT); // would throw LockError with this instance's lock held
    };
    h.w16(CNT, 0x3400);
    assert.equal(cnt, SCI_EN | 0x1400);
  });

  test("PM timer: 3.579545 MHz from the monotonic clock, one sample per access", () => {
    const h = new Harness();
    h.ns = 1_000_000_000n;
    assert.equal(h.r32(TMR), 3_579_545);
    h.ns += 1_000_000n; // 1 ms
    assert.equal(h.r32(TMR), 3_579_545 + 3_579);
    const bytes = new Uint8Array(4);
    h.pm.read(TMR, bytes);
    assert.deepEqual([...bytes], [0x94, 0xac, 0x36, 0x00], "3583124 = 0x0036ac94, little endian");
    assert.equal(h.r8(TMR + 2), 0x36);
    let last = h.r32(TMR);
    for (let i = 0; i < 1000; i++) {
      h.ns += BigInt(i * 37);
      const now = h.r32(TMR);
      assert.ok(now >= last, "monotonic");
      last = now;
    }
    h.pm.write(TMR, Uint8Array.of(0, 0, 0, 0));
    assert.equal(h.r32(TMR), last, "read-only");
  });

  test("PM timer wraps at 32 bits by default (TMR_VAL_EXT) and at 24 when asked", () => {
    const h32 = new Harness();
    h32.ns = nsFor(2n ** 32n - 2n);
    assert.equal(h32.r32(TMR), 0xffff_fffe);
    h32.ns = nsFor(2n ** 32n + 3n);
    assert.equal(h32.r32(TMR), 3);
    const h24 = new Harness(AcpiPm.createState({ timerBits: 24 }));
    h24.ns = nsFor(5n * 2n ** 24n - 2n);
    assert.equal(h24.r32(TMR), 0xff_fffe);
    h24.ns = nsFor(5n * 2n ** 24n + 3n);
    assert.equal(h24.r32(TMR), 3, "bits 31:24 read 0");
  });

  test("TMR_STS when the timer's top bit changes; with TMR_EN it raises the SCI", () => {
    const h = new Harness(AcpiPm.createState({ timerBits: 24 }));
    h.ns = nsFor(2n ** 23n - 10n);
    assert.equal(h.r16(STS), 0);
    h.w16(EN, 0x0001); // TMR_EN
    h.ns = nsFor(2n ** 23n - 1n);
    h.pm.poll();
    assert.equal(h.level, false);
    h.ns = nsFor(2n ** 23n);
    h.pm.poll();
    assert.equal(h.level, true, "bit 23 went 0 -> 1");
    assert.equal(h.r16(STS), TMR_STS);
    h.w16(STS, TMR_STS);
    assert.equal(h.level, false);
    h.ns = nsFor(2n ** 24n + 5n);
    assert.equal(h.r16(STS), TMR_STS, "bit 23 went 1 -> 0 (the wrap)");
    const h32 = new Harness();
    h32.ns = nsFor(2n ** 31n - 1n);
    h32.r16(STS);
    h32.ns = nsFor(2n ** 31n);
    assert.equal(h32.r16(STS), TMR_STS, "32-bit timer: bit 31");
  });

  test("reset register: the FADT value resets, anything else does nothing", () => {
    const h = new Harness();
    h.w8(RESET, 0x01);
    h.w8(RESET, 0x0e);
    assert.equal(h.resets, 0);
    h.w8(RESET, 0x06);
    assert.equal(h.resets, 1);
    assert.equal(h.r8(RESET), 0);
    const other = new Harness(AcpiPm.createState({ resetValue: 0xa5 }));
    other.w8(RESET, 0x06);
    other.w8(RESET, 0xa5);
    assert.equal(other.resets, 1);
  });

  test("two instances over one state are one PM block", () => {
    const a = new Harness();
    const b = new Harness(a.state);
    b.w16(EN, 0x0100);
    assert.equal(a.r16(EN), 0x0100);
    a.pm.pressPowerButton();
    assert.deepEqual(a.levels, [true]);
    assert.equal(b.r16(STS), PWRBTN_STS);
    b.w16(STS, PWRBTN_STS);
    assert.deepEqual(b.levels, [false], "the shared line is lowered by whichever instance clears it");
    assert.equal(a.r16(STS), 0);
    a.w16(CNT, 0x3400);
    assert.deepEqual([a.powerOffs, b.powerOffs], [1, 0], "the instance that trapped the write reports it");
    assert.equal(a.pm.timerEventEnabled, false);
    b.w16(EN, 0x0101);
    assert.equal(a.pm.timerEventEnabled, true);
  });

  test("attaching requires initialised state; bad state options are refused", () => {
    const base = { irq: { set() {} }, onPowerOff() {}, onReset() {} };
    assert.throws(
      () => new AcpiPm({ ...base, state: new SharedArrayBuffer(AcpiPm.STATE_BYTES) }),
      (e: unknown) => e instanceof AcpiPmError && e.code === "VIREO_ACPI_PM",
    );
    assert.throws(() => new AcpiPm({ ...base, state: new SharedArrayBuffer(8), init: true }), AcpiPmError);
    assert.throws(() => AcpiPm.createState({ timerBits: 16 as 24 }), AcpiPmError);
    assert.throws(() => AcpiPm.createState({ s5SlpTyp: 8 }), AcpiPmError);
    assert.throws(() => AcpiPm.createState({ resetValue: 0x100 }), AcpiPmError);
    const pm = new AcpiPm({ ...base, state: new SharedArrayBuffer(AcpiPm.STATE_BYTES), init: true });
    assert.equal(pm.name, "acpi-pm");
    const d = new Uint8Array(4);
    pm.read(TMR, d); // the default clock is process.hrtime
    assert.ok(new DataView(d.buffer).getUint32(0, true) >= 0);
  });
});
