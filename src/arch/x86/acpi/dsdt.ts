/**
 * The DSDT's AML: the S5 sleep package for power-off, and under \_SB the PCI host bridge and the legacy PC
 * devices vireo emulates. Device ids and predefined names are from ACPI 6.x chapter 6 "Device Configuration".
 */
import {
  concat,
  device,
  dwordMemory,
  eisaId,
  integer,
  ioPort,
  irqNoFlags,
  name,
  pkg,
  qwordMemory,
  resourceTemplate,
  scope,
  wordBusNumber,
  wordIo,
} from "./aml.ts";
import { AcpiError } from "./errors.ts";

export interface Window {
  base: number;
  size: number;
}

export interface PciHostConfig {
  /** PCI segment group (_SEG). Default 0. */
  segment?: number;
  /** Bus range the host bridge decodes (_BBN is busStart). Default 0-0. */
  busStart?: number;
  busEnd?: number;
  /** ECAM base; when set the bridge is a PCIe root (PNP0A08, compatible with PNP0A03) and MCFG is built. */
  ecamBase?: number;
  /** I/O port windows forwarded to PCI (WordIO). */
  ioWindows: readonly Window[];
  /** Memory windows forwarded to PCI: DWordMemory below 4 GiB, QWordMemory above. */
  mmioWindows: readonly Window[];
  /** Claim the configuration mechanism #1 ports 0xcf8-0xcff in _CRS. Default true. */
  configPorts?: boolean;
  /**
   * INTx routing for _PRT: the GSI that pin (0 = INTA# .. 3 = INTD#) of device `slot` on the root bus drives.
   * Without it there is no _PRT, and an OS finds no interrupt for a device that has only INTx.
   */
  intxGsi?: (slot: number, pin: number) => number;
}

export interface LegacyDevicesConfig {
  /** COM1 (PNP0501) at 0x3f8, IRQ 4; false to leave out. */
  com1?: boolean;
  /** CMOS RTC (PNP0B00) at 0x70-0x71, IRQ 8. */
  rtc?: boolean;
  /** PS/2 keyboard controller (PNP0303) at 0x60 and 0x64, IRQ 1. */
  keyboard?: boolean;
}

export interface DsdtConfig {
  /** SLP_TYP value for S5 in the PM1a (and PM1b) control register. */
  s5SlpTyp: number;
  pci?: PciHostConfig;
  legacy?: LegacyDevicesConfig;
}

export const COM1_PORT = 0x3f8;
export const COM1_IRQ = 4;
export const RTC_PORT = 0x70;
export const RTC_IRQ = 8;
export const I8042_DATA_PORT = 0x60;
export const I8042_CMD_PORT = 0x64;
export const I8042_KBD_IRQ = 1;
export const PCI_CONFIG_PORT = 0xcf8;

const FOUR_GIB = 2 ** 32;

function pciHostBridge(pci: PciHostConfig): Uint8Array {
  const busStart = pci.busStart ?? 0;
  const busEnd = pci.busEnd ?? busStart;
  const crs: Uint8Array[] = [wordBusNumber(busStart, busEnd)];
  if (pci.configPorts ?? true) crs.push(ioPort(PCI_CONFIG_PORT, 8));
  for (const w of pci.ioWindows) crs.push(wordIo(w.base, w.size));
  for (const w of pci.mmioWindows) {
    if (!Number.isSafeInteger(w.base) || !Number.isSafeInteger(w.size)) {
      throw new AcpiError(`PCI memory window ${w.base}+${w.size} is not a usable range`);
    }
    crs.push(w.base + w.size <= FOUR_GIB ? dwordMemory(w.base, w.size) : qwordMemory(w.base, w.size));
  }
  const ids =
    pci.ecamBase !== undefined
      ? [name("_HID", integer(eisaId("PNP0A08"))), name("_CID", integer(eisaId("PNP0A03")))]
      : [name("_HID", integer(eisaId("PNP0A03")))];
  return device(
    "PCI0",
    ...ids,
    name("_UID", integer(0)),
    name("_SEG", integer(pci.segment ?? 0)),
    name("_BBN", integer(busStart)),
    name("_CRS", resourceTemplate(...crs)),
    ...(pci.intxGsi ? [name("_PRT", routingTable(pci.intxGsi))] : []),
  );
}

/**
 * ACPI 6.x, 6.2.13 _PRT: one entry per device and pin, { Address (device << 16 | 0xFFFF: any function), Pin,
 * Source (0: SourceIndex is a GSI), SourceIndex }. GSIs routed this way are level-triggered, active-low.
 */
function routingTable(intxGsi: (slot: number, pin: number) => number): Uint8Array {
  const entries: Uint8Array[] = [];
  for (let slot = 0; slot < 32; slot++) {
    for (let pin = 0; pin < 4; pin++) {
      entries.push(
        pkg(integer(slot * 0x10000 + 0xffff), integer(pin), integer(0), integer(intxGsi(slot, pin))),
      );
    }
  }
  return pkg(...entries);
}

function legacyDevices(cfg: LegacyDevicesConfig): Uint8Array[] {
  const out: Uint8Array[] = [];
  if (cfg.com1 ?? true) {
    out.push(
      device(
        "COM1",
        name("_HID", integer(eisaId("PNP0501"))),
        name("_UID", integer(1)),
        name("_CRS", resourceTemplate(ioPort(COM1_PORT, 8), irqNoFlags(COM1_IRQ))),
      ),
    );
  }
  if (cfg.rtc ?? true) {
    out.push(
      device(
        "RTC",
        name("_HID", integer(eisaId("PNP0B00"))),
        name("_CRS", resourceTemplate(ioPort(RTC_PORT, 2), irqNoFlags(RTC_IRQ))),
      ),
    );
  }
  if (cfg.keyboard ?? true) {
    out.push(
      device(
        "KBD",
        name("_HID", integer(eisaId("PNP0303"))),
        name(
          "_CRS",
          resourceTemplate(ioPort(I8042_DATA_PORT, 1), ioPort(I8042_CMD_PORT, 1), irqNoFlags(I8042_KBD_IRQ)),
        ),
      ),
    );
  }
  return out;
}

/** The DSDT's definition block body (the AML after the table header). */
export function buildDsdtAml(cfg: DsdtConfig): Uint8Array {
  if (!Number.isInteger(cfg.s5SlpTyp) || cfg.s5SlpTyp < 0 || cfg.s5SlpTyp > 7) {
    throw new AcpiError(`SLP_TYP ${cfg.s5SlpTyp} must fit the 3-bit PM1_CNT field`);
  }
  // \_S5_ (7.4.2 "\_Sx (System States)"): Package { SLP_TYPa, SLP_TYPb, reserved, reserved }.
  const s5 = name("\\_S5", pkg(integer(cfg.s5SlpTyp), integer(cfg.s5SlpTyp), integer(0), integer(0)));
  const sb: Uint8Array[] = [];
  if (cfg.pci) sb.push(pciHostBridge(cfg.pci));
  sb.push(...legacyDevices(cfg.legacy ?? {}));
  return concat(s5, scope("\\_SB", ...sb));
}
