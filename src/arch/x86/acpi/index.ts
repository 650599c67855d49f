/**
 * Lays out vireo's ACPI tables in one contiguous region of guest memory:
 *
 *   RSDP -> XSDT -> { FADT (-> FACS, DSDT), MADT, MCFG? }
 *
 * The region starts with the RSDP (16-byte aligned, as 5.2.5.1 asks of RSDPs found by scanning); other tables
 * are 8-byte aligned and the FACS 64-byte aligned (5.2.10). The caller reports the region as reserved/ACPI in
 * the e820 map and passes rsdpAddr to the kernel in boot_params.acpi_rsdp_addr.
 */
import type { GuestMemory } from "../../../memory/guest-memory.ts";
import { buildDsdtAml, type LegacyDevicesConfig, type PciHostConfig } from "./dsdt.ts";
import { AcpiError } from "./errors.ts";
import {
  buildDsdt,
  buildFacs,
  buildFadt,
  buildMadt,
  buildMcfg,
  buildRsdp,
  buildXsdt,
  FADT_SIZE,
  IAPC_BOOT_ARCH,
  type InterruptOverride,
  MPS_INTI,
  RSDP_SIZE,
  type TableIds,
} from "./tables.ts";

export type { LegacyDevicesConfig, PciHostConfig, Window } from "./dsdt.ts";
export { AcpiError } from "./errors.ts";

export const LOCAL_APIC_ADDR = 0xfee00000;
export const IO_APIC_ADDR = 0xfec00000;
export const DEFAULT_SCI_IRQ = 9;
/** CMOS index of the century byte, as on PC firmware. */
export const DEFAULT_CENTURY_INDEX = 0x32;

/**
 * PM1 control register bits (ACPI 6.x 4.8.3.2.1, Table "PM1 Control Registers Fixed Hardware Feature Control
 * Bits") for the PM1 emulation: software writes SLP_TYP with SLP_EN set to enter a sleep state; S5 (soft-off)
 * uses ACPI_S5_SLP_TYP, the value this DSDT's \_S5_ package gives.
 */
export const PM1_CNT_SCI_EN = 1 << 0;
export const PM1_CNT_SLP_TYP_SHIFT = 10;
export const PM1_CNT_SLP_TYP_MASK = 0x7 << PM1_CNT_SLP_TYP_SHIFT;
export const PM1_CNT_SLP_EN = 1 << 13;
export const ACPI_S5_SLP_TYP = 5;

/** True if a 16-bit PM1 control write requests the sleep state whose SLP_TYP is `slpTyp` (S5 by default). */
export function pm1ControlRequestsSleep(value: number, slpTyp = ACPI_S5_SLP_TYP): boolean {
  return (value & PM1_CNT_SLP_EN) !== 0 && (value & PM1_CNT_SLP_TYP_MASK) >> PM1_CNT_SLP_TYP_SHIFT === slpTyp;
}

export interface AcpiConfig extends TableIds {
  /** GPA of the table region; 16-byte aligned, below 4 GiB. */
  base: number;
  /** Room available at base; building fails if the tables need more. */
  maxSize?: number;
  /** Number of vCPUs; APIC ids 0..cpus-1. */
  cpus: number;
  localApicAddr?: number;
  ioApic?: { addr?: number; id?: number; gsiBase?: number };
  sciIrq?: number;
  pm1aEvtBlk: number;
  pm1aCntBlk: number;
  pmTmrBlk?: number;
  gpe0Blk?: { port: number; len: number };
  reset?: { port: number; value: number };
  centuryIndex?: number;
  /** IA-PC boot architecture flags; default 8042 present, VGA not present. */
  iapcBootArch?: number;
  fixedPowerButton?: boolean;
  s5SlpTyp?: number;
  pci?: PciHostConfig;
  legacy?: LegacyDevicesConfig;
}

export interface AcpiTableInfo {
  signature: string;
  addr: number;
  length: number;
}

export interface AcpiTables {
  base: number;
  /** The whole region, RSDP first; write it at `base`. */
  bytes: Uint8Array;
  rsdpAddr: number;
  /** Every structure in the region, in address order (RSDP and FACS included). */
  tables: AcpiTableInfo[];
}

function align(v: number, a: number): number {
  return Math.ceil(v / a) * a;
}

/** Builds all tables for `cfg`, addressed for placement at cfg.base. */
export function buildAcpiTables(cfg: AcpiConfig): AcpiTables {
  const { base } = cfg;
  if (!Number.isSafeInteger(base) || base < 0 || base % 16 !== 0 || base >= 2 ** 32) {
    throw new AcpiError(`ACPI table base 0x${base.toString(16)} must be 16-byte aligned and below 4 GiB`);
  }
  if (!Number.isInteger(cfg.cpus) || cfg.cpus < 1 || cfg.cpus > 255) {
    throw new AcpiError(`vCPU count ${cfg.cpus} must be 1-255`);
  }
  const ids: TableIds = { oemId: cfg.oemId, oemTableId: cfg.oemTableId };
  const sciIrq = cfg.sciIrq ?? DEFAULT_SCI_IRQ;
  if (!Number.isInteger(sciIrq) || sciIrq < 0 || sciIrq > 15)
    throw new AcpiError(`SCI IRQ ${sciIrq} must be 0-15`);

  const dsdt = buildDsdt(
    buildDsdtAml({ s5SlpTyp: cfg.s5SlpTyp ?? ACPI_S5_SLP_TYP, pci: cfg.pci, legacy: cfg.legacy }),
    ids,
  );
  const facs = buildFacs();
  const overrides: InterruptOverride[] = [
    // The PIT's IRQ 0 is wired to IOAPIC pin 2 on PCs (pin 0 carries the 8259's INTR).
    { source: 0, gsi: 2, flags: MPS_INTI.CONFORMS },
    // The SCI is level-triggered; vireo drives its line active-high.
    { source: sciIrq, gsi: sciIrq, flags: MPS_INTI.ACTIVE_HIGH | MPS_INTI.LEVEL },
  ];
  const madt = buildMadt(
    {
      localApicAddr: cfg.localApicAddr ?? LOCAL_APIC_ADDR,
      apicIds: Array.from({ length: cfg.cpus }, (_, i) => i),
      ioApic: {
        id: cfg.ioApic?.id ?? cfg.cpus,
        addr: cfg.ioApic?.addr ?? IO_APIC_ADDR,
        gsiBase: cfg.ioApic?.gsiBase ?? 0,
      },
      overrides,
      nmiLint: 1,
    },
    ids,
  );
  const mcfg =
    cfg.pci?.ecamBase !== undefined
      ? buildMcfg(
          [
            {
              base: cfg.pci.ecamBase,
              segment: cfg.pci.segment ?? 0,
              busStart: cfg.pci.busStart ?? 0,
              busEnd: cfg.pci.busEnd ?? cfg.pci.busStart ?? 0,
            },
          ],
          ids,
        )
      : undefined;

  // Addresses: RSDP, XSDT, FADT, FACS, DSDT, MADT, MCFG.
  const others = mcfg ? [madt, mcfg] : [madt];
  let at = base + RSDP_SIZE;
  const xsdtAddr = align(at, 8);
  const xsdtLen = 36 + 8 * (1 + others.length);
  const fadtAddr = align(xsdtAddr + xsdtLen, 8);
  const facsAddr = align(fadtAddr + FADT_SIZE, 64);
  const dsdtAddr = align(facsAddr + facs.length, 8);
  at = dsdtAddr + dsdt.length;
  const otherAddrs: number[] = [];
  for (const t of others) {
    at = align(at, 8);
    otherAddrs.push(at);
    at += t.length;
  }
  const fadt = buildFadt(
    {
      dsdtAddr,
      facsAddr,
      sciIrq,
      pm1aEvtBlk: cfg.pm1aEvtBlk,
      pm1aCntBlk: cfg.pm1aCntBlk,
      pmTmrBlk: cfg.pmTmrBlk,
      gpe0Blk: cfg.gpe0Blk,
      reset: cfg.reset,
      centuryIndex: cfg.centuryIndex ?? DEFAULT_CENTURY_INDEX,
      iapcBootArch: cfg.iapcBootArch ?? IAPC_BOOT_ARCH.I8042 | IAPC_BOOT_ARCH.VGA_NOT_PRESENT,
      fixedPowerButton: cfg.fixedPowerButton,
    },
    ids,
  );
  const xsdt = buildXsdt([fadtAddr, ...otherAddrs], ids);
  const rsdp = buildRsdp(xsdtAddr, ids);

  const size = at - base;
  if (cfg.maxSize !== undefined && size > cfg.maxSize) {
    throw new AcpiError(`ACPI tables need ${size} bytes but only ${cfg.maxSize} are reserved for them`);
  }
  const bytes = new Uint8Array(size);
  const placed: [string, number, Uint8Array][] = [
    ["RSDP", base, rsdp],
    ["XSDT", xsdtAddr, xsdt],
    ["FACP", fadtAddr, fadt],
    ["FACS", facsAddr, facs],
    ["DSDT", dsdtAddr, dsdt],
    ...others.map((t, i): [string, number, Uint8Array] => [
      String.fromCharCode(...t.subarray(0, 4)),
      otherAddrs[i] as number,
      t,
    ]),
  ];
  for (const [, addr, t] of placed) bytes.set(t, addr - base);
  return {
    base,
    bytes,
    rsdpAddr: base,
    tables: placed.map(([signature, addr, t]) => ({ signature, addr, length: t.length })),
  };
}

/** Builds the tables and writes them into guest memory at cfg.base. */
export function writeAcpiTables(mem: GuestMemory, cfg: AcpiConfig): AcpiTables {
  const tables = buildAcpiTables(cfg);
  mem.write(tables.base, tables.bytes);
  return tables;
}
