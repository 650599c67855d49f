import { VireoError } from "../../../errors.ts";

/** ACPI tables vireo cannot build from the given configuration (bad names, ranges, ports, sizes). */
export class AcpiError extends VireoError {
  constructor(message: string) {
    super("VIREO_ACPI_INVALID", message);
  }
}
