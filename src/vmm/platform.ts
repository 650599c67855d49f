/**
 * The PC platform vireo presents to a Linux guest, in one place: the legacy ports of the devices and the ACPI
 * description of them. The ACPI tables and the device models must agree on every number here.
 */
import type { AcpiConfig } from "../arch/x86/acpi/index.ts";

/** ACPI fixed-hardware register block (ACPI 6.x §4.8): PM1a event (4 bytes), PM1a control (2), PM timer (4). */
export const ACPI_PM_PORTS = { pm1aEvt: 0x600, pm1aCnt: 0x604, pmTmr: 0x608 } as const;
export const ACPI_SCI_IRQ = 9;

export function platformAcpi(cpus: number): Omit<AcpiConfig, "base" | "maxSize"> {
  return {
    cpus,
    pm1aEvtBlk: ACPI_PM_PORTS.pm1aEvt,
    pm1aCntBlk: ACPI_PM_PORTS.pm1aCnt,
    pmTmrBlk: ACPI_PM_PORTS.pmTmr,
    sciIrq: ACPI_SCI_IRQ,
    legacy: { com1: true, rtc: true, keyboard: true },
  };
}
