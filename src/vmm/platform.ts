/**
 * The PC platform vireo presents to a Linux guest: the ACPI description of the devices the manifest gives a
 * "pc" machine. The numbers come from the device models themselves (ACPI_PM_FADT), so tables and devices agree.
 */
import type { AcpiConfig } from "../arch/x86/acpi/index.ts";
import { ACPI_PM_FADT } from "../devices/legacy/acpi-pm.ts";
import { RTC_CENTURY_INDEX } from "../devices/legacy/cmos-rtc.ts";
import { DEFAULT_PCI_WINDOWS } from "../devices/pci/bar-allocator.ts";
import { pciIntxGsi } from "./irq.ts";

/**
 * With PCI devices, PCI0's _CRS describes the same windows the BARs are assigned from (DEFAULT_PCI_WINDOWS, with
 * 64-bit BARs placed low), so Linux accepts the firmware's assignments instead of moving them.
 */
export function platformAcpi(
  cpus: number,
  opts: { pci?: boolean } = {},
): Omit<AcpiConfig, "base" | "maxSize"> {
  const w = DEFAULT_PCI_WINDOWS;
  return {
    cpus,
    ...ACPI_PM_FADT,
    centuryIndex: RTC_CENTURY_INDEX,
    legacy: { com1: true, rtc: true, keyboard: true },
    ...(opts.pci
      ? {
          pci: {
            ioWindows: [{ base: w.io.base, size: w.io.end - w.io.base }],
            mmioWindows: [{ base: w.mmio32.base, size: w.mmio32.end - w.mmio32.base }],
            intxGsi: pciIntxGsi,
          },
        }
      : {}),
  };
}
