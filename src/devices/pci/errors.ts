import { VireoError } from "../../errors.ts";

/** A BAR definition the PCI rules do not allow (bad index, size, kind, or a slot already in use). */
export class PciBarError extends VireoError {
  constructor(message: string) {
    super("VIREO_PCI_BAR", message);
  }
}

/** A capability that does not fit in configuration space, or is malformed. */
export class PciCapabilityError extends VireoError {
  constructor(message: string) {
    super("VIREO_PCI_CAPABILITY", message);
  }
}

/** A device/function number out of range, or a slot already taken. */
export class PciSlotError extends VireoError {
  constructor(message: string) {
    super("VIREO_PCI_SLOT", message);
  }
}

/** The BAR allocator ran out of room in an address window. */
export class PciAllocationError extends VireoError {
  constructor(message: string) {
    super("VIREO_PCI_ALLOCATION", message);
  }
}

/** An MSI-X layout that does not fit the function's BARs or the MSI-X rules. */
export class PciMsixError extends VireoError {
  constructor(message: string) {
    super("VIREO_PCI_MSIX", message);
  }
}
