/**
 * ACPI system description tables (ACPI 6.x chapter 5.2 "ACPI System Description Tables"). Each builder returns
 * the table's bytes with its length and checksum set; addresses of other tables are inputs, so the caller
 * (layout.ts) decides where each table lives.
 */
import { AcpiError } from "./errors.ts";

export const ACPI_OEM_ID = "VIREO";
export const ACPI_OEM_TABLE_ID = "VIREOVM";
export const ACPI_CREATOR_ID = "VIRO";

export const HEADER_SIZE = 36;
export const RSDP_SIZE = 36;
export const FADT_SIZE = 276;
export const FACS_SIZE = 64;

/** Sum of all bytes mod 256; a table is valid when this is 0 (5.2.6 "System Description Table Header"). */
export function byteSum(bytes: Uint8Array): number {
  let s = 0;
  for (const b of bytes) s = (s + b) & 0xff;
  return s;
}

/** Sets bytes[at] so that bytes[start, end) sums to 0 mod 256. */
function fixChecksum(bytes: Uint8Array, at: number, start = 0, end = bytes.length): void {
  bytes[at] = 0;
  bytes[at] = (0x100 - byteSum(bytes.subarray(start, end))) & 0xff;
}

function ascii(view: Uint8Array, at: number, s: string, len: number): void {
  if (s.length > len || !/^[\x20-\x7e]*$/.test(s))
    throw new AcpiError(`"${s}" must be at most ${len} ASCII characters`);
  const padded = s.padEnd(len, " ");
  for (let i = 0; i < len; i++) view[at + i] = padded.charCodeAt(i);
}

export interface TableIds {
  oemId?: string;
  oemTableId?: string;
}

/** A table with its 36-byte header filled in (5.2.6); `body` is written by the caller through the view. */
class Table {
  readonly bytes: Uint8Array;
  readonly view: DataView;
  constructor(signature: string, length: number, revision: number, ids: TableIds) {
    this.bytes = new Uint8Array(length);
    this.view = new DataView(this.bytes.buffer);
    ascii(this.bytes, 0, signature, 4);
    this.view.setUint32(4, length, true);
    this.bytes[8] = revision;
    ascii(this.bytes, 10, ids.oemId ?? ACPI_OEM_ID, 6);
    ascii(this.bytes, 16, ids.oemTableId ?? ACPI_OEM_TABLE_ID, 8);
    this.view.setUint32(24, 1, true); // OEM revision
    ascii(this.bytes, 28, ACPI_CREATOR_ID, 4);
    this.view.setUint32(32, 1, true); // creator revision
  }
  u8(at: number, v: number): void {
    this.view.setUint8(at, v);
  }
  u16(at: number, v: number): void {
    this.view.setUint16(at, v, true);
  }
  u32(at: number, v: number): void {
    this.view.setUint32(at, v, true);
  }
  u64(at: number, v: number | bigint): void {
    this.view.setBigUint64(at, BigInt(v), true);
  }
  done(): Uint8Array {
    fixChecksum(this.bytes, 9);
    return this.bytes;
  }
}

/**
 * RSDP, ACPI 2.0+ form (5.2.5.3): revision 2, the ACPI 1.0 checksum over the first 20 bytes, the extended
 * checksum over all 36. The RSDT address is left 0: revision-2 OSes use the XSDT.
 */
export function buildRsdp(xsdtAddr: number, ids: TableIds = {}): Uint8Array {
  const b = new Uint8Array(RSDP_SIZE);
  const v = new DataView(b.buffer);
  ascii(b, 0, "RSD PTR ", 8);
  ascii(b, 9, ids.oemId ?? ACPI_OEM_ID, 6);
  b[15] = 2;
  v.setUint32(16, 0, true);
  v.setUint32(20, RSDP_SIZE, true);
  v.setBigUint64(24, BigInt(xsdtAddr), true);
  fixChecksum(b, 8, 0, 20);
  fixChecksum(b, 32, 0, RSDP_SIZE);
  return b;
}

/** XSDT (5.2.8): the header, then one 64-bit address per table. */
export function buildXsdt(entries: readonly number[], ids: TableIds = {}): Uint8Array {
  const t = new Table("XSDT", HEADER_SIZE + 8 * entries.length, 1, ids);
  entries.forEach((addr, i) => {
    t.u64(HEADER_SIZE + 8 * i, addr);
  });
  return t.done();
}

/** Generic Address Structure address space ids and access sizes (5.2.3.2). */
export const GAS_SYSTEM_IO = 1;
export const GAS_ACCESS_BYTE = 1;
export const GAS_ACCESS_WORD = 2;
export const GAS_ACCESS_DWORD = 3;

/** Fixed feature flags (5.2.9, Table "Fixed ACPI Description Table Fixed Feature Flags"): bit numbers. */
export const FADT_FLAG = {
  WBINVD: 1 << 0,
  PROC_C1: 1 << 2,
  PWR_BUTTON: 1 << 4,
  SLP_BUTTON: 1 << 5,
  FIX_RTC: 1 << 6,
  TMR_VAL_EXT: 1 << 8,
  RESET_REG_SUP: 1 << 10,
  HW_REDUCED_ACPI: 1 << 20,
} as const;

/** IA-PC boot architecture flags (5.2.9.3). */
export const IAPC_BOOT_ARCH = {
  LEGACY_DEVICES: 1 << 0,
  I8042: 1 << 1,
  VGA_NOT_PRESENT: 1 << 2,
  MSI_NOT_SUPPORTED: 1 << 3,
  PCIE_ASPM_CONTROLS: 1 << 4,
  CMOS_RTC_NOT_PRESENT: 1 << 5,
} as const;

/** FADT field offsets (5.2.9, Table "FADT Format"). */
export const FADT = {
  firmwareCtrl: 36,
  dsdt: 40,
  preferredPmProfile: 45,
  sciInt: 46,
  smiCmd: 48,
  pm1aEvtBlk: 56,
  pm1aCntBlk: 64,
  pmTmrBlk: 76,
  gpe0Blk: 80,
  pm1EvtLen: 88,
  pm1CntLen: 89,
  pmTmrLen: 91,
  gpe0BlkLen: 92,
  pLvl2Lat: 96,
  pLvl3Lat: 98,
  century: 108,
  iapcBootArch: 109,
  flags: 112,
  resetReg: 116,
  resetValue: 128,
  minorVersion: 131,
  xFirmwareCtrl: 132,
  xDsdt: 140,
  xPm1aEvtBlk: 148,
  xPm1aCntBlk: 172,
  xPmTmrBlk: 208,
  xGpe0Blk: 220,
} as const;

export interface FadtConfig {
  dsdtAddr: number;
  facsAddr: number;
  sciIrq: number;
  /** PM1a event block: PM1_STS then PM1_EN, 2 bytes each (4.8.3.1). */
  pm1aEvtBlk: number;
  /** PM1a control block: 2 bytes holding SCI_EN, SLP_TYP and SLP_EN (4.8.3.2.1). */
  pm1aCntBlk: number;
  /** 32-bit ACPI PM timer port (4 bytes), if the VMM emulates one. */
  pmTmrBlk?: number;
  /** GPE0 block port and length in bytes (even: status half then enable half), if emulated. */
  gpe0Blk?: { port: number; len: number };
  /** Reset register: an I/O port and the byte to write to reset the machine. */
  reset?: { port: number; value: number };
  /** CMOS index of the RTC century register (0 = none). */
  centuryIndex: number;
  iapcBootArch: number;
  /** Whether a fixed-hardware power button exists (PWR_BUTTON flag clear). */
  fixedPowerButton?: boolean;
}

function gas(t: Table, at: number, port: number, bytes: number, access: number): void {
  t.u8(at, GAS_SYSTEM_IO);
  t.u8(at + 1, bytes * 8); // register bit width
  t.u8(at + 2, 0); // bit offset
  t.u8(at + 3, access);
  t.u64(at + 4, port);
}

function checkPort(what: string, port: number, len: number): void {
  if (!Number.isInteger(port) || port <= 0 || port + len > 0x10000) {
    throw new AcpiError(`${what} I/O port 0x${port.toString(16)} (+${len}) is outside the I/O space`);
  }
}

/**
 * FADT revision 6 (5.2.9) for a PC-compatible (not hardware-reduced) platform: SCI on an ISA IRQ, PM1a event
 * and control blocks in I/O space, no SMI command port (SMI_CMD = 0 means the platform is always in ACPI mode,
 * so PM1 control must read back with SCI_EN set). The 32-bit and X_ addresses are set to the same values.
 */
export function buildFadt(cfg: FadtConfig, ids: TableIds = {}): Uint8Array {
  const t = new Table("FACP", FADT_SIZE, 6, ids);
  if (cfg.dsdtAddr >= 2 ** 32 || cfg.facsAddr >= 2 ** 32) {
    throw new AcpiError("the DSDT and FACS must lie below 4 GiB (the FADT's 32-bit fields hold them too)");
  }
  checkPort("PM1a event block", cfg.pm1aEvtBlk, 4);
  checkPort("PM1a control block", cfg.pm1aCntBlk, 2);
  t.u32(FADT.firmwareCtrl, cfg.facsAddr);
  t.u32(FADT.dsdt, cfg.dsdtAddr);
  t.u8(FADT.preferredPmProfile, 0); // unspecified
  t.u16(FADT.sciInt, cfg.sciIrq);
  t.u32(FADT.smiCmd, 0);
  t.u32(FADT.pm1aEvtBlk, cfg.pm1aEvtBlk);
  t.u32(FADT.pm1aCntBlk, cfg.pm1aCntBlk);
  t.u8(FADT.pm1EvtLen, 4);
  t.u8(FADT.pm1CntLen, 2);
  gas(t, FADT.xPm1aEvtBlk, cfg.pm1aEvtBlk, 4, GAS_ACCESS_WORD);
  gas(t, FADT.xPm1aCntBlk, cfg.pm1aCntBlk, 2, GAS_ACCESS_WORD);
  let flags = FADT_FLAG.WBINVD | FADT_FLAG.PROC_C1 | FADT_FLAG.SLP_BUTTON | FADT_FLAG.FIX_RTC;
  if (!cfg.fixedPowerButton) flags |= FADT_FLAG.PWR_BUTTON;
  if (cfg.pmTmrBlk !== undefined) {
    checkPort("PM timer", cfg.pmTmrBlk, 4);
    t.u32(FADT.pmTmrBlk, cfg.pmTmrBlk);
    t.u8(FADT.pmTmrLen, 4);
    gas(t, FADT.xPmTmrBlk, cfg.pmTmrBlk, 4, GAS_ACCESS_DWORD);
    flags |= FADT_FLAG.TMR_VAL_EXT;
  }
  if (cfg.gpe0Blk !== undefined) {
    const { port, len } = cfg.gpe0Blk;
    if (len <= 0 || len % 2 !== 0 || len > 0xff)
      throw new AcpiError(`GPE0 block length ${len} must be even, 2-254`);
    checkPort("GPE0 block", port, len);
    t.u32(FADT.gpe0Blk, port);
    t.u8(FADT.gpe0BlkLen, len);
    gas(t, FADT.xGpe0Blk, port, len, GAS_ACCESS_BYTE);
  }
  if (cfg.reset !== undefined) {
    checkPort("reset register", cfg.reset.port, 1);
    gas(t, FADT.resetReg, cfg.reset.port, 1, GAS_ACCESS_BYTE);
    t.u8(FADT.resetValue, cfg.reset.value);
    flags |= FADT_FLAG.RESET_REG_SUP;
  }
  // C2/C3 latencies above 100/1000 us say those states are not supported (5.2.9).
  t.u16(FADT.pLvl2Lat, 101);
  t.u16(FADT.pLvl3Lat, 1001);
  t.u8(FADT.century, cfg.centuryIndex);
  t.u16(FADT.iapcBootArch, cfg.iapcBootArch);
  t.u32(FADT.flags, flags);
  t.u8(FADT.minorVersion, 4); // ACPI 6.4
  t.u64(FADT.xFirmwareCtrl, cfg.facsAddr);
  t.u64(FADT.xDsdt, cfg.dsdtAddr);
  return t.done();
}

/**
 * FACS (5.2.10): required when the platform is not hardware-reduced. No checksum; 64-byte aligned; version 2.
 * The waking vectors stay 0: vireo does not resume from S3/S4.
 */
export function buildFacs(): Uint8Array {
  const b = new Uint8Array(FACS_SIZE);
  const v = new DataView(b.buffer);
  ascii(b, 0, "FACS", 4);
  v.setUint32(4, FACS_SIZE, true);
  b[32] = 2; // version
  return b;
}

/** MADT entry types (5.2.12, Table "Interrupt Controller Structure Types"). */
export const MADT_TYPE = {
  LOCAL_APIC: 0,
  IO_APIC: 1,
  INTERRUPT_SOURCE_OVERRIDE: 2,
  LOCAL_APIC_NMI: 4,
} as const;
export const MADT_PCAT_COMPAT = 1;
export const MADT_LAPIC_ENABLED = 1;
/** MPS INTI flags (5.2.12.5): polarity in bits 1:0, trigger mode in bits 3:2. */
export const MPS_INTI = {
  CONFORMS: 0,
  ACTIVE_HIGH: 0b01,
  ACTIVE_LOW: 0b11,
  EDGE: 0b01 << 2,
  LEVEL: 0b11 << 2,
} as const;

export interface InterruptOverride {
  /** ISA IRQ (bus 0 = ISA). */
  source: number;
  gsi: number;
  flags: number;
}

export interface MadtConfig {
  localApicAddr: number;
  /** APIC id of each vCPU; the ACPI processor UID is the index. */
  apicIds: readonly number[];
  ioApic: { id: number; addr: number; gsiBase: number };
  overrides: readonly InterruptOverride[];
  /** LINT pin of every local APIC wired to NMI (LINT1 on a PC), or undefined for none. */
  nmiLint?: number;
}

/** MADT revision 5 (5.2.12): local APIC address, PCAT_COMPAT, then interrupt controller structures. */
export function buildMadt(cfg: MadtConfig, ids: TableIds = {}): Uint8Array {
  const entries: number[][] = [];
  cfg.apicIds.forEach((apicId, uid) => {
    if (uid > 0xfe || apicId > 0xfe)
      throw new AcpiError("xAPIC MADT entries support at most 255 CPUs (ids 0-254)");
    // Processor Local APIC (5.2.12.2): type, length 8, UID, APIC id, flags (bit 0 enabled).
    entries.push([MADT_TYPE.LOCAL_APIC, 8, uid, apicId, MADT_LAPIC_ENABLED, 0, 0, 0]);
  });
  const io = cfg.ioApic;
  // I/O APIC (5.2.12.3): type, length 12, id, reserved, address, GSI base.
  entries.push([MADT_TYPE.IO_APIC, 12, io.id, 0, ...le32(io.addr), ...le32(io.gsiBase)]);
  for (const o of cfg.overrides) {
    // Interrupt Source Override (5.2.12.5): type, length 10, bus 0 (ISA), source IRQ, GSI, MPS INTI flags.
    entries.push([
      MADT_TYPE.INTERRUPT_SOURCE_OVERRIDE,
      10,
      0,
      o.source,
      ...le32(o.gsi),
      o.flags & 0xff,
      o.flags >> 8,
    ]);
  }
  if (cfg.nmiLint !== undefined) {
    // Local APIC NMI (5.2.12.7): type, length 6, UID 0xff = all processors, flags, LINT#.
    entries.push([MADT_TYPE.LOCAL_APIC_NMI, 6, 0xff, 0, 0, cfg.nmiLint]);
  }
  const bodyLen = entries.reduce((n, e) => n + e.length, 0);
  const t = new Table("APIC", HEADER_SIZE + 8 + bodyLen, 5, ids);
  t.u32(36, cfg.localApicAddr);
  t.u32(40, MADT_PCAT_COMPAT);
  let at = HEADER_SIZE + 8;
  for (const e of entries) {
    t.bytes.set(e, at);
    at += e.length;
  }
  return t.done();
}

function le32(v: number): number[] {
  return [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff];
}

export interface McfgAllocation {
  /** ECAM base of this segment's bus `busStart`. */
  base: number;
  segment: number;
  busStart: number;
  busEnd: number;
}

/**
 * MCFG (PCI Firmware Specification 3.x, 4.1.2 "MCFG Table Description"): the header, 8 reserved bytes, then
 * 16-byte allocations: base address, segment group, start bus, end bus, 4 reserved bytes.
 */
export function buildMcfg(allocations: readonly McfgAllocation[], ids: TableIds = {}): Uint8Array {
  const t = new Table("MCFG", HEADER_SIZE + 8 + 16 * allocations.length, 1, ids);
  allocations.forEach((a, i) => {
    if (a.busEnd < a.busStart || a.busEnd > 0xff || a.busStart < 0) {
      throw new AcpiError(`MCFG bus range ${a.busStart}-${a.busEnd} is invalid`);
    }
    const at = HEADER_SIZE + 8 + 16 * i;
    t.u64(at, a.base);
    t.u16(at + 8, a.segment);
    t.u8(at + 10, a.busStart);
    t.u8(at + 11, a.busEnd);
  });
  return t.done();
}

/** DSDT (5.2.11.1): the header followed by an AML definition block. Revision 2 means 64-bit AML integers. */
export function buildDsdt(aml: Uint8Array, ids: TableIds = {}): Uint8Array {
  const t = new Table("DSDT", HEADER_SIZE + aml.length, 2, ids);
  t.bytes.set(aml, HEADER_SIZE);
  return t.done();
}
