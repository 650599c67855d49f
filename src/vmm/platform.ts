/**
 * The PC platform vireo presents to a Linux guest: the ACPI description of the devices the manifest gives a
 * "pc" machine. The numbers come from the device models themselves (ACPI_PM_FADT), so tables and devices agree.
 */
import type { AcpiConfig } from "../arch/x86/acpi/index.ts";
import { ACPI_PM_FADT } from "../devices/legacy/acpi-pm.ts";
import { RTC_CENTURY_INDEX } from "../devices/legacy/cmos-rtc.ts";

export function platformAcpi(cpus: number): Omit<AcpiConfig, "base" | "maxSize"> {
  return {
    cpus,
    ...ACPI_PM_FADT,
    centuryIndex: RTC_CENTURY_INDEX,
    legacy: { com1: true, rtc: true, keyboard: true },
  };
}
