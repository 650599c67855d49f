import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import {
  concat,
  eisaId,
  integer,
  ioPort,
  irqNoFlags,
  nameString,
  pkgLength,
  string,
} from "../../src/arch/x86/acpi/aml.ts";
import {
  ACPI_S5_SLP_TYP,
  type AcpiConfig,
  AcpiError,
  type AcpiTables,
  buildAcpiTables,
  PM1_CNT_SCI_EN,
  PM1_CNT_SLP_EN,
  pm1ControlRequestsSleep,
  writeAcpiTables,
} from "../../src/arch/x86/acpi/index.ts";
import { GuestMemory } from "../../src/memory/guest-memory.ts";
import { intxGsi } from "../../src/vmm/pci-devices.ts";
import { platformAcpi } from "../../src/vmm/platform.ts";

// ---------------------------------------------------------------------------------------------------------------
// An independent decoder, written from the ACPI 6.x table layouts (5.2.x) and the AML grammar (20.2), sharing no
// code with the builders.
// ---------------------------------------------------------------------------------------------------------------

class Reader {
  readonly v: DataView;
  constructor(readonly bytes: Uint8Array) {
    this.v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }
  u8(o: number): number {
    return this.v.getUint8(o);
  }
  u16(o: number): number {
    return this.v.getUint16(o, true);
  }
  u32(o: number): number {
    return this.v.getUint32(o, true);
  }
  u64(o: number): number {
    return Number(this.v.getBigUint64(o, true));
  }
  str(o: number, n: number): string {
    return String.fromCharCode(...this.bytes.subarray(o, o + n));
  }
}

function sum8(b: Uint8Array): number {
  return b.reduce((s, x) => (s + x) & 0xff, 0);
}

interface Sdt {
  addr: number;
  signature: string;
  length: number;
  revision: number;
  oemId: string;
  r: Reader;
}

/** Follows the pointers from the RSDP through guest memory, checking each table's checksum and length. */
function walk(mem: GuestMemory, rsdpAddr: number) {
  const rsdp = new Reader(mem.slice(rsdpAddr, 36));
  assert.equal(rsdp.str(0, 8), "RSD PTR ");
  assert.equal(sum8(rsdp.bytes.subarray(0, 20)), 0, "RSDP v1 checksum");
  assert.equal(sum8(rsdp.bytes), 0, "RSDP extended checksum");
  assert.equal(rsdp.u8(15), 2, "RSDP revision");
  assert.equal(rsdp.u32(20), 36, "RSDP length");
  const sdt = (addr: number, sig?: string): Sdt => {
    const len = mem.readU32(addr + 4);
    const r = new Reader(mem.slice(addr, len));
    const t = { addr, signature: r.str(0, 4), length: len, revision: r.u8(8), oemId: r.str(10, 6), r };
    if (sig) assert.equal(t.signature, sig);
    assert.equal(sum8(r.bytes), 0, `${t.signature} checksum`);
    return t;
  };
  const xsdt = sdt(rsdp.u64(24), "XSDT");
  assert.equal((xsdt.length - 36) % 8, 0);
  const tables = new Map<string, Sdt>();
  for (let o = 36; o < xsdt.length; o += 8) {
    const t = sdt(xsdt.r.u64(o));
    assert.ok(!tables.has(t.signature), `duplicate ${t.signature}`);
    tables.set(t.signature, t);
  }
  const fadt = tables.get("FACP");
  assert.ok(fadt, "XSDT lists a FADT");
  const dsdt = sdt(fadt.r.u64(140), "DSDT");
  const facsAddr = fadt.r.u64(132);
  const facs = new Reader(mem.slice(facsAddr, 64));
  return { rsdp, xsdt, tables, fadt, dsdt, facs, facsAddr };
}

interface Gas {
  space: number;
  bitWidth: number;
  bitOffset: number;
  access: number;
  addr: number;
}

function gas(r: Reader, o: number): Gas {
  return {
    space: r.u8(o),
    bitWidth: r.u8(o + 1),
    bitOffset: r.u8(o + 2),
    access: r.u8(o + 3),
    addr: r.u64(o + 4),
  };
}

function decodeFadt(t: Sdt) {
  const r = t.r;
  return {
    length: t.length,
    revision: t.revision,
    firmwareCtrl: r.u32(36),
    dsdt: r.u32(40),
    sciInt: r.u16(46),
    smiCmd: r.u32(48),
    pm1aEvtBlk: r.u32(56),
    pm1bEvtBlk: r.u32(60),
    pm1aCntBlk: r.u32(64),
    pmTmrBlk: r.u32(76),
    pm1EvtLen: r.u8(88),
    pm1CntLen: r.u8(89),
    pmTmrLen: r.u8(91),
    century: r.u8(108),
    iapcBootArch: r.u16(109),
    flags: r.u32(112),
    resetReg: gas(r, 116),
    resetValue: r.u8(128),
    xFirmwareCtrl: r.u64(132),
    xDsdt: r.u64(140),
    xPm1aEvtBlk: gas(r, 148),
    xPm1aCntBlk: gas(r, 172),
    xPmTmrBlk: gas(r, 208),
  };
}

type MadtEntry =
  | { type: "lapic"; uid: number; apicId: number; flags: number }
  | { type: "ioapic"; id: number; addr: number; gsiBase: number }
  | { type: "iso"; bus: number; source: number; gsi: number; flags: number }
  | { type: "nmi"; uid: number; flags: number; lint: number }
  | { type: "other"; code: number };

function decodeMadt(t: Sdt) {
  const r = t.r;
  const entries: MadtEntry[] = [];
  let o = 44;
  while (o < t.length) {
    const type = r.u8(o);
    const len = r.u8(o + 1);
    assert.ok(len >= 2 && o + len <= t.length, `MADT entry at ${o} has length ${len}`);
    if (type === 0) {
      assert.equal(len, 8);
      entries.push({ type: "lapic", uid: r.u8(o + 2), apicId: r.u8(o + 3), flags: r.u32(o + 4) });
    } else if (type === 1) {
      assert.equal(len, 12);
      entries.push({ type: "ioapic", id: r.u8(o + 2), addr: r.u32(o + 4), gsiBase: r.u32(o + 8) });
    } else if (type === 2) {
      assert.equal(len, 10);
      entries.push({
        type: "iso",
        bus: r.u8(o + 2),
        source: r.u8(o + 3),
        gsi: r.u32(o + 4),
        flags: r.u16(o + 8),
      });
    } else if (type === 4) {
      assert.equal(len, 6);
      entries.push({ type: "nmi", uid: r.u8(o + 2), flags: r.u16(o + 3), lint: r.u8(o + 5) });
    } else {
      entries.push({ type: "other", code: type });
    }
    o += len;
  }
  assert.equal(o, t.length, "MADT entries fill the table exactly");
  return { localApicAddr: r.u32(36), flags: r.u32(40), entries };
}

// ---- AML ----

type AmlValue = number | string | Uint8Array | AmlValue[];

class AmlParser {
  /** Named objects by absolute path, e.g. "\\_SB_.COM1._CRS". */
  readonly names = new Map<string, AmlValue>();
  readonly devices: string[] = [];
  private o = 0;
  constructor(private readonly b: Uint8Array) {}

  private byte(): number {
    const x = this.b[this.o++];
    if (x === undefined) throw new Error("AML ends early");
    return x;
  }

  private pkgLength(): number {
    const start = this.o;
    const lead = this.byte();
    const follow = lead >> 6;
    if (follow === 0) return start + (lead & 0x3f);
    let len = lead & 0x0f;
    for (let i = 0; i < follow; i++) len |= this.byte() << (4 + 8 * i);
    return start + len; // end offset: PkgLength counts from its own first byte
  }

  private seg(): string {
    const s = String.fromCharCode(...this.b.subarray(this.o, this.o + 4));
    assert.match(s, /^[A-Z_][A-Z0-9_]{3}$/, `name segment at ${this.o}`);
    this.o += 4;
    return s;
  }

  private nameString(): { root: boolean; parents: number; segs: string[] } {
    let root = false;
    let parents = 0;
    if (this.b[this.o] === 0x5c) {
      root = true;
      this.o++;
    }
    while (this.b[this.o] === 0x5e) {
      parents++;
      this.o++;
    }
    const p = this.byte();
    let segs: string[];
    if (p === 0x00) segs = [];
    else if (p === 0x2e) segs = [this.seg(), this.seg()];
    else if (p === 0x2f) segs = Array.from({ length: this.byte() }, () => this.seg());
    else {
      this.o--;
      segs = [this.seg()];
    }
    return { root, parents, segs };
  }

  private resolve(scope: string[], n: { root: boolean; parents: number; segs: string[] }): string[] {
    const base = n.root ? [] : scope.slice(0, scope.length - n.parents);
    return [...base, ...n.segs];
  }

  private data(): AmlValue {
    const op = this.byte();
    const le = (bytes: number) => {
      let v = 0;
      for (let i = 0; i < bytes; i++) v += this.byte() * 2 ** (8 * i);
      return v;
    };
    switch (op) {
      case 0x00:
        return 0;
      case 0x01:
        return 1;
      case 0xff:
        return Number.MAX_SAFE_INTEGER; // Ones
      case 0x0a:
        return le(1);
      case 0x0b:
        return le(2);
      case 0x0c:
        return le(4);
      case 0x0e:
        return le(8);
      case 0x0d: {
        const start = this.o;
        while (this.byte() !== 0);
        return String.fromCharCode(...this.b.subarray(start, this.o - 1));
      }
      case 0x11: {
        const end = this.pkgLength();
        const size = this.data();
        assert.equal(typeof size, "number");
        const bytes = this.b.slice(this.o, end);
        assert.equal(bytes.length, size, "Buffer size matches its initializer");
        this.o = end;
        return bytes;
      }
      case 0x12: {
        const end = this.pkgLength();
        const count = this.byte();
        const items: AmlValue[] = [];
        while (this.o < end) items.push(this.data());
        assert.equal(this.o, end);
        assert.equal(items.length, count, "Package NumElements");
        return items;
      }
      default:
        throw new Error(`unexpected data opcode 0x${op.toString(16)} at ${this.o - 1}`);
    }
  }

  parse(scope: string[] = [], end = this.b.length): this {
    while (this.o < end) {
      const op = this.byte();
      if (op === 0x08) {
        const path = this.resolve(scope, this.nameString());
        this.names.set(`\\${path.join(".")}`, this.data());
      } else if (op === 0x10) {
        const e = this.pkgLength();
        this.parse(this.resolve(scope, this.nameString()), e);
      } else if (op === 0x5b && this.b[this.o] === 0x82) {
        this.o++;
        const e = this.pkgLength();
        const path = this.resolve(scope, this.nameString());
        this.devices.push(`\\${path.join(".")}`);
        this.parse(path, e);
      } else {
        throw new Error(`unexpected opcode 0x${op.toString(16)} at ${this.o - 1}`);
      }
    }
    assert.equal(this.o, end, "term list ends exactly at its package end");
    return this;
  }
}

type Resource =
  | { kind: "io"; decode16: boolean; min: number; max: number; align: number; len: number }
  | { kind: "irq"; irqs: number[]; flags?: number }
  | {
      kind: "addr";
      width: number;
      type: number;
      gen: number;
      spec: number;
      min: number;
      max: number;
      len: number;
    };

/** Decodes a resource template buffer (6.4), requiring an End Tag as the last descriptor. */
function decodeResources(buf: Uint8Array): Resource[] {
  const r = new Reader(buf);
  const out: Resource[] = [];
  let o = 0;
  for (;;) {
    const tag = r.u8(o);
    if (tag & 0x80) {
      const len = r.u16(o + 1);
      const w = tag === 0x88 ? 2 : tag === 0x87 ? 4 : tag === 0x8a ? 8 : 0;
      assert.ok(w > 0, `large resource 0x${tag.toString(16)}`);
      assert.equal(len, 3 + 5 * w, "address space descriptor length");
      const f = (i: number) =>
        w === 2 ? r.u16(o + 6 + i * w) : w === 4 ? r.u32(o + 6 + i * w) : r.u64(o + 6 + i * w);
      out.push({
        kind: "addr",
        width: w,
        type: r.u8(o + 3),
        gen: r.u8(o + 4),
        spec: r.u8(o + 5),
        min: f(1),
        max: f(2),
        len: f(4),
      });
      o += 3 + len;
      continue;
    }
    const name = (tag >> 3) & 0x0f;
    const len = tag & 0x07;
    if (name === 0x0f) {
      assert.equal(len, 1);
      assert.equal(o + 2, buf.length, "End Tag is last");
      return out;
    }
    if (name === 0x08) {
      assert.equal(len, 7);
      out.push({
        kind: "io",
        decode16: (r.u8(o + 1) & 1) === 1,
        min: r.u16(o + 2),
        max: r.u16(o + 4),
        align: r.u8(o + 6),
        len: r.u8(o + 7),
      });
    } else if (name === 0x04) {
      const mask = r.u16(o + 1);
      const irqs = Array.from({ length: 16 }, (_, i) => i).filter((i) => mask & (1 << i));
      out.push(len === 3 ? { kind: "irq", irqs, flags: r.u8(o + 3) } : { kind: "irq", irqs });
    } else {
      throw new Error(`small resource 0x${tag.toString(16)}`);
    }
    o += 1 + len;
  }
}

function eisaToString(v: number): string {
  const b = [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff] as const;
  const letters = (b[0] << 8) | b[1];
  const ch = (x: number) => String.fromCharCode(0x40 + (x & 0x1f));
  const hex = ((b[2] << 8) | b[3]).toString(16).toUpperCase().padStart(4, "0");
  return ch(letters >> 10) + ch(letters >> 5) + ch(letters) + hex;
}

// ---------------------------------------------------------------------------------------------------------------

const BASE = 0xe0000;
const ECAM = 0xb0000000;

const config: AcpiConfig = {
  base: BASE,
  maxSize: 0x10000,
  cpus: 4,
  pm1aEvtBlk: 0x600,
  pm1aCntBlk: 0x604,
  pmTmrBlk: 0x608,
  reset: { port: 0xcf9, value: 0x06 },
  pci: {
    ecamBase: ECAM,
    busStart: 0,
    busEnd: 0,
    ioWindows: [
      { base: 0x0000, size: 0xcf8 },
      { base: 0x0d00, size: 0xf300 },
    ],
    mmioWindows: [
      { base: 0xc0000000, size: 0x3ec00000 },
      { base: 0x8000000000, size: 0x4000000000 },
    ],
    intxGsi: (slot, pin) => 16 + ((slot + pin) % 4),
  },
};

function build(cfg: AcpiConfig = config): { mem: GuestMemory; t: AcpiTables } {
  const mem = new GuestMemory(new ArrayBuffer(2 * 1024 * 1024));
  const t = writeAcpiTables(mem, cfg);
  return { mem, t };
}

describe("ACPI tables", () => {
  it("gives every table a correct length and checksum", () => {
    const { t } = build();
    assert.deepEqual(
      t.tables.map((x) => x.signature),
      ["RSDP", "XSDT", "FACP", "FACS", "DSDT", "APIC", "MCFG"],
    );
    for (const x of t.tables) {
      const b = t.bytes.subarray(x.addr - t.base, x.addr - t.base + x.length);
      if (x.signature === "RSDP") {
        assert.equal(sum8(b.subarray(0, 20)), 0);
        assert.equal(sum8(b), 0);
        continue;
      }
      assert.equal(
        new DataView(b.buffer, b.byteOffset).getUint32(4, true),
        x.length,
        `${x.signature} length`,
      );
      if (x.signature !== "FACS") assert.equal(sum8(b), 0, `${x.signature} checksum`);
      assert.equal(x.addr % (x.signature === "FACS" ? 64 : 8), 0, `${x.signature} alignment`);
    }
    assert.equal(t.rsdpAddr, BASE);
    // Tables do not overlap and the region ends with the last one.
    for (let i = 1; i < t.tables.length; i++) {
      const a = t.tables[i - 1];
      const b = t.tables[i];
      assert.ok(a && b && a.addr + a.length <= b.addr);
    }
    const last = t.tables.at(-1);
    assert.equal(t.base + t.bytes.length, (last?.addr ?? 0) + (last?.length ?? 0));
  });

  it("walks RSDP -> XSDT -> FADT/MADT/MCFG and decodes the FADT at its spec offsets", () => {
    const { mem } = build();
    const w = walk(mem, BASE);
    assert.deepEqual([...w.tables.keys()].sort(), ["APIC", "FACP", "MCFG"]);
    assert.equal(w.rsdp.str(9, 6), "VIREO ");
    const f = decodeFadt(w.fadt);
    assert.equal(f.length, 276);
    assert.equal(f.revision, 6);
    assert.equal(f.sciInt, 9);
    assert.equal(f.smiCmd, 0, "no SMI: always in ACPI mode");
    assert.equal(f.pm1aEvtBlk, 0x600);
    assert.equal(f.pm1bEvtBlk, 0);
    assert.equal(f.pm1aCntBlk, 0x604);
    assert.equal(f.pm1EvtLen, 4);
    assert.equal(f.pm1CntLen, 2);
    assert.equal(f.pmTmrBlk, 0x608);
    assert.equal(f.pmTmrLen, 4);
    assert.equal(f.century, 0x32);
    assert.equal(f.iapcBootArch, 0b110, "8042 present, VGA not present");
    assert.equal(f.flags & (1 << 20), 0, "not HW_REDUCED_ACPI");
    assert.ok(f.flags & (1 << 10), "RESET_REG_SUP");
    assert.ok(f.flags & (1 << 8), "TMR_VAL_EXT");
    assert.deepEqual(f.resetReg, { space: 1, bitWidth: 8, bitOffset: 0, access: 1, addr: 0xcf9 });
    assert.equal(f.resetValue, 6);
    assert.equal(f.xDsdt, w.dsdt.addr);
    assert.equal(f.dsdt, w.dsdt.addr);
    assert.equal(f.xFirmwareCtrl, w.facsAddr);
    assert.equal(f.firmwareCtrl, w.facsAddr);
    assert.deepEqual(f.xPm1aEvtBlk, { space: 1, bitWidth: 32, bitOffset: 0, access: 2, addr: 0x600 });
    assert.deepEqual(f.xPm1aCntBlk, { space: 1, bitWidth: 16, bitOffset: 0, access: 2, addr: 0x604 });
    assert.deepEqual(f.xPmTmrBlk, { space: 1, bitWidth: 32, bitOffset: 0, access: 3, addr: 0x608 });
    // FACS: signature, length, 64-byte alignment, version.
    assert.equal(w.facs.str(0, 4), "FACS");
    assert.equal(w.facs.u32(4), 64);
    assert.equal(w.facsAddr % 64, 0);
    assert.equal(w.facs.u8(32), 2);
  });

  it("decodes the MADT: one enabled local APIC per vCPU, the IOAPIC, overrides, LINT1 NMI", () => {
    const { mem } = build();
    const m = decodeMadt(walk(mem, BASE).tables.get("APIC") as Sdt);
    assert.equal(m.localApicAddr, 0xfee00000);
    assert.equal(m.flags & 1, 1, "PCAT_COMPAT");
    assert.deepEqual(
      m.entries.filter((e) => e.type === "lapic"),
      [0, 1, 2, 3].map((i) => ({ type: "lapic", uid: i, apicId: i, flags: 1 })),
    );
    assert.deepEqual(
      m.entries.filter((e) => e.type === "ioapic"),
      [{ type: "ioapic", id: 4, addr: 0xfec00000, gsiBase: 0 }],
    );
    assert.deepEqual(
      m.entries.filter((e) => e.type === "iso"),
      [
        { type: "iso", bus: 0, source: 0, gsi: 2, flags: 0 },
        // Polarity 01 (active high), trigger 11 (level).
        { type: "iso", bus: 0, source: 9, gsi: 9, flags: 0b1101 },
      ],
    );
    assert.deepEqual(
      m.entries.filter((e) => e.type === "nmi"),
      [{ type: "nmi", uid: 0xff, flags: 0, lint: 1 }],
    );
    assert.equal(m.entries.filter((e) => e.type === "other").length, 0);
  });

  it("decodes the MCFG allocation", () => {
    const { mem } = build();
    const t = walk(mem, BASE).tables.get("MCFG") as Sdt;
    assert.equal(t.length, 36 + 8 + 16);
    assert.equal(t.r.u64(44), ECAM);
    assert.equal(t.r.u16(52), 0, "segment");
    assert.equal(t.r.u8(54), 0, "start bus");
    assert.equal(t.r.u8(55), 0, "end bus");
  });

  it("leaves out MCFG and PCI0 without PCI, and uses PNP0A03 without ECAM", () => {
    const { pci: _pci, ...noPci } = config;
    let { mem } = build(noPci);
    let w = walk(mem, BASE);
    assert.deepEqual([...w.tables.keys()].sort(), ["APIC", "FACP"]);
    let aml = new AmlParser(w.dsdt.r.bytes.subarray(36)).parse();
    assert.ok(!aml.devices.includes("\\_SB_.PCI0"));

    ({ mem } = build({ ...config, pci: { ...config.pci, ecamBase: undefined } as AcpiConfig["pci"] }));
    w = walk(mem, BASE);
    assert.ok(!w.tables.has("MCFG"));
    aml = new AmlParser(w.dsdt.r.bytes.subarray(36)).parse();
    assert.equal(eisaToString(aml.names.get("\\_SB_.PCI0._HID") as number), "PNP0A03");
    assert.equal(aml.names.get("\\_SB_.PCI0._CID"), undefined);
  });

  it("honours configuration: one CPU, IOAPIC id, no reset or timer, legacy devices off", () => {
    const { mem } = build({
      base: BASE,
      cpus: 1,
      pm1aEvtBlk: 0xb000,
      pm1aCntBlk: 0xb004,
      ioApic: { id: 8 },
      legacy: { com1: false, rtc: false, keyboard: false },
    });
    const w = walk(mem, BASE);
    const f = decodeFadt(w.fadt);
    assert.equal(f.flags & (1 << 10), 0);
    assert.equal(f.pmTmrLen, 0);
    assert.equal(f.resetReg.addr, 0);
    const m = decodeMadt(w.tables.get("APIC") as Sdt);
    assert.equal(m.entries.filter((e) => e.type === "lapic").length, 1);
    assert.ok(m.entries.some((e) => e.type === "ioapic" && e.id === 8));
    const aml = new AmlParser(w.dsdt.r.bytes.subarray(36)).parse();
    assert.deepEqual(aml.devices, []);
    assert.deepEqual(aml.names.get("\\_S5_"), [5, 5, 0, 0]);
  });

  it("rejects bad configurations with AcpiError", () => {
    const bad = (cfg: Partial<AcpiConfig>, pattern: RegExp) =>
      assert.throws(
        () => buildAcpiTables({ ...config, ...cfg }),
        (e: unknown) => e instanceof AcpiError && e.code === "VIREO_ACPI_INVALID" && pattern.test(e.message),
      );
    bad({ base: 0xe0004 }, /16-byte aligned/);
    bad({ cpus: 0 }, /vCPU count/);
    bad({ maxSize: 256 }, /only 256 are reserved/);
    bad({ pm1aCntBlk: 0xffff }, /PM1a control block/);
    bad({ sciIrq: 20 }, /SCI IRQ/);
    bad({ s5SlpTyp: 8 }, /SLP_TYP 8/);
    bad({ pci: { ioWindows: [{ base: 0xff00, size: 0x200 }], mmioWindows: [] } }, /I\/O window/);
    bad({ pci: { ioWindows: [], mmioWindows: [], busStart: 2, busEnd: 1 } }, /bus range/);
  });
});

describe("DSDT AML", () => {
  const { mem } = build();
  const dsdt = walk(mem, BASE).dsdt;
  const aml = new AmlParser(dsdt.r.bytes.subarray(36)).parse();

  it("has revision 2 and parses completely", () => {
    assert.equal(dsdt.revision, 2);
    assert.deepEqual(aml.devices, ["\\_SB_.PCI0", "\\_SB_.COM1", "\\_SB_.RTC_", "\\_SB_.KBD_"]);
  });

  it("has an \\_S5_ package whose SLP_TYP the PM1 control emulation accepts", () => {
    const s5 = aml.names.get("\\_S5_");
    assert.deepEqual(s5, [ACPI_S5_SLP_TYP, ACPI_S5_SLP_TYP, 0, 0]);
    const slpTyp = (s5 as number[])[0] as number;
    // What Linux writes to PM1a_CNT to power off: SLP_TYP in bits 12:10, then SLP_EN (bit 13).
    const write = PM1_CNT_SCI_EN | (slpTyp << 10) | (1 << 13);
    assert.equal(write & PM1_CNT_SLP_EN, PM1_CNT_SLP_EN);
    assert.ok(pm1ControlRequestsSleep(write));
    assert.ok(!pm1ControlRequestsSleep(write & ~PM1_CNT_SLP_EN), "SLP_TYP without SLP_EN does not sleep");
    assert.ok(!pm1ControlRequestsSleep(PM1_CNT_SCI_EN | (1 << 13)), "S0's SLP_TYP is not S5");
  });

  it("describes COM1 as PNP0501 at 0x3f8, 8 ports, IRQ 4", () => {
    assert.equal(eisaToString(aml.names.get("\\_SB_.COM1._HID") as number), "PNP0501");
    assert.equal(aml.names.get("\\_SB_.COM1._UID"), 1);
    assert.deepEqual(decodeResources(aml.names.get("\\_SB_.COM1._CRS") as Uint8Array), [
      { kind: "io", decode16: true, min: 0x3f8, max: 0x3f8, align: 1, len: 8 },
      { kind: "irq", irqs: [4] },
    ]);
  });

  it("describes the RTC and the PS/2 controller", () => {
    assert.equal(eisaToString(aml.names.get("\\_SB_.RTC_._HID") as number), "PNP0B00");
    assert.deepEqual(decodeResources(aml.names.get("\\_SB_.RTC_._CRS") as Uint8Array), [
      { kind: "io", decode16: true, min: 0x70, max: 0x70, align: 1, len: 2 },
      { kind: "irq", irqs: [8] },
    ]);
    assert.equal(eisaToString(aml.names.get("\\_SB_.KBD_._HID") as number), "PNP0303");
    assert.deepEqual(decodeResources(aml.names.get("\\_SB_.KBD_._CRS") as Uint8Array), [
      { kind: "io", decode16: true, min: 0x60, max: 0x60, align: 1, len: 1 },
      { kind: "io", decode16: true, min: 0x64, max: 0x64, align: 1, len: 1 },
      { kind: "irq", irqs: [1] },
    ]);
  });

  it("describes the PCI host bridge: ids, segment, bus, and windows", () => {
    assert.equal(eisaToString(aml.names.get("\\_SB_.PCI0._HID") as number), "PNP0A08");
    assert.equal(eisaToString(aml.names.get("\\_SB_.PCI0._CID") as number), "PNP0A03");
    assert.equal(aml.names.get("\\_SB_.PCI0._SEG"), 0);
    assert.equal(aml.names.get("\\_SB_.PCI0._BBN"), 0);
    const crs = decodeResources(aml.names.get("\\_SB_.PCI0._CRS") as Uint8Array);
    // Producer, positive decode, min and max fixed.
    const win = { gen: 0x0c };
    assert.deepEqual(crs, [
      { kind: "addr", width: 2, type: 2, ...win, spec: 0, min: 0, max: 0, len: 1 },
      { kind: "io", decode16: true, min: 0xcf8, max: 0xcf8, align: 1, len: 8 },
      { kind: "addr", width: 2, type: 1, ...win, spec: 3, min: 0, max: 0xcf7, len: 0xcf8 },
      { kind: "addr", width: 2, type: 1, ...win, spec: 3, min: 0xd00, max: 0xffff, len: 0xf300 },
      { kind: "addr", width: 4, type: 0, ...win, spec: 1, min: 0xc0000000, max: 0xfebfffff, len: 0x3ec00000 },
      {
        kind: "addr",
        width: 8,
        type: 0,
        ...win,
        spec: 1,
        min: 0x8000000000,
        max: 0xbfffffffff,
        len: 0x4000000000,
      },
    ]);
  });
});

describe("DSDT _PRT", () => {
  it("routes every pin of every root-bus device to the GSI the platform wires it to", () => {
    const { mem } = build();
    const aml = new AmlParser(walk(mem, BASE).dsdt.r.bytes.subarray(36)).parse();
    const prt = aml.names.get("\\_SB_.PCI0._PRT") as number[][];
    assert.equal(prt.length, 32 * 4);
    for (let slot = 0; slot < 32; slot++) {
      for (let pin = 0; pin < 4; pin++) {
        // ACPI 6.2.13: Address is device << 16 with 0xFFFF for any function; Source 0 means SourceIndex is a GSI.
        assert.deepEqual(prt[slot * 4 + pin], [slot * 0x10000 + 0xffff, pin, 0, 16 + ((slot + pin) % 4)]);
      }
    }
  });

  it("is left out without an INTx routing", () => {
    const { pci, ...rest } = config;
    const { mem } = build({
      ...rest,
      pci: { ...(pci as NonNullable<AcpiConfig["pci"]>), intxGsi: undefined },
    });
    const aml = new AmlParser(walk(mem, BASE).dsdt.r.bytes.subarray(36)).parse();
    assert.equal(aml.names.get("\\_SB_.PCI0._PRT"), undefined);
  });

  it("agrees with the GSI vireo's PCI devices drive (intxGsi)", () => {
    const prt = platformAcpi(1, { pci: true }).pci?.intxGsi;
    assert.ok(prt);
    for (let slot = 0; slot < 32; slot++) assert.equal(prt(slot, 0), intxGsi(slot));
  });
});

describe("AML encoder", () => {
  it("encodes PkgLength in 1-4 bytes, counting itself", () => {
    assert.deepEqual([...pkgLength(0)], [1]);
    assert.deepEqual([...pkgLength(62)], [63]);
    // 63 body bytes + 2 length bytes = 65 = 0x41: lead 0x40 | 0x1, then 0x41 >> 4 = 4.
    assert.deepEqual([...pkgLength(63)], [0x41, 0x04]);
    assert.deepEqual([...pkgLength(4093)], [0x4f, 0xff]);
    // 4094 + 3 = 4097 = 0x1001.
    assert.deepEqual([...pkgLength(4094)], [0x81, 0x00, 0x01]);
    assert.deepEqual([...pkgLength(0x100000)], [0xc4, 0x00, 0x00, 0x01]);
    assert.throws(() => pkgLength(2 ** 28), AcpiError);
  });

  it("encodes name strings", () => {
    const s = (x: Uint8Array) => [...x];
    const c = (t: string) => [...t].map((ch) => ch.charCodeAt(0));
    assert.deepEqual(s(nameString("_S5")), c("_S5_"));
    assert.deepEqual(s(nameString("\\_SB")), [0x5c, ...c("_SB_")]);
    assert.deepEqual(s(nameString("\\_SB.PCI0")), [0x5c, 0x2e, ...c("_SB_PCI0")]);
    assert.deepEqual(s(nameString("\\_SB.PCI0.ISA")), [0x5c, 0x2f, 3, ...c("_SB_PCI0ISA_")]);
    assert.deepEqual(s(nameString("^^FOO")), [0x5e, 0x5e, ...c("FOO_")]);
    assert.deepEqual(s(nameString("\\")), [0x5c, 0x00]);
    for (const bad of ["toolong", "1ABC", "a", "\\_SB..X", "AB-C"])
      assert.throws(() => nameString(bad), AcpiError);
  });

  it("encodes integers with the shortest prefix", () => {
    const s = (v: number | bigint) => [...integer(v)];
    assert.deepEqual(s(0), [0x00]);
    assert.deepEqual(s(1), [0x01]);
    assert.deepEqual(s(2), [0x0a, 2]);
    assert.deepEqual(s(0xff), [0x0a, 0xff]);
    assert.deepEqual(s(0x100), [0x0b, 0x00, 0x01]);
    assert.deepEqual(s(0x12345678), [0x0c, 0x78, 0x56, 0x34, 0x12]);
    assert.deepEqual(s(0x1_0000_0000), [0x0e, 0, 0, 0, 0, 1, 0, 0, 0]);
    assert.throws(() => integer(-1), AcpiError);
    assert.throws(() => integer(2n ** 64n), AcpiError);
  });

  it("encodes strings, EISA ids and small resource descriptors", () => {
    assert.deepEqual([...string("AB")], [0x0d, 0x41, 0x42, 0x00]);
    assert.equal(eisaId("PNP0A03"), 0x030ad041);
    assert.equal(eisaToString(eisaId("PNP0501")), "PNP0501");
    assert.throws(() => eisaId("pnp0a03"), AcpiError);
    assert.deepEqual([...ioPort(0x3f8, 8)], [0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08]);
    assert.deepEqual([...irqNoFlags(4)], [0x22, 0x10, 0x00]);
    assert.deepEqual([...irqNoFlags(1, 12)], [0x22, 0x02, 0x10]);
    assert.throws(() => irqNoFlags(16), AcpiError);
    assert.deepEqual([...concat([1, 2], Uint8Array.of(3))], [1, 2, 3]);
  });
});

// ---------------------------------------------------------------------------------------------------------------
// Optional: ACPICA's iasl (Debian package acpica-tools) as an independent parser.
// ---------------------------------------------------------------------------------------------------------------

const hasIasl = spawnSync("iasl", ["-v"], { stdio: "ignore" }).status === 0;

describe("iasl cross-check", {
  skip: hasIasl ? false : "iasl not installed (apt-get install acpica-tools)",
}, () => {
  it("disassembles every table without errors, and recompiles the DSDT to the same AML", () => {
    const { t } = build();
    const dir = mkdtempSync(join(tmpdir(), "vireo-acpi-"));
    try {
      for (const x of t.tables) {
        if (x.signature === "RSDP") continue;
        const file = join(dir, `${x.signature.toLowerCase()}.dat`);
        writeFileSync(file, t.bytes.subarray(x.addr - t.base, x.addr - t.base + x.length));
        const out = execFileSync("iasl", ["-d", file], { cwd: dir, encoding: "utf8" });
        assert.doesNotMatch(out, /error|warning|invalid|checksum/i, `${x.signature}: ${out}`);
      }
      const dsl = readFileSync(join(dir, "dsdt.dsl"), "utf8");
      assert.match(dsl, /Name \(\\_S5, Package \(0x04\)/);
      assert.match(dsl, /Device \(COM1\)/);
      // -oa: no optimizations, so the recompiled AML must equal vireo's byte for byte.
      const out = execFileSync("iasl", ["-oa", "-p", join(dir, "recompiled"), join(dir, "dsdt.dsl")], {
        encoding: "utf8",
      });
      assert.match(out, /0 Errors, 0 Warnings, 0 Remarks/);
      const recompiled = readFileSync(join(dir, "recompiled.aml"));
      const dsdt = t.tables.find((x) => x.signature === "DSDT");
      assert.ok(dsdt);
      const ours = t.bytes.subarray(dsdt.addr - t.base + 36, dsdt.addr - t.base + dsdt.length);
      assert.deepEqual(new Uint8Array(recompiled.subarray(36)), new Uint8Array(ours));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
