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

/** Shared state that is not a SharedArrayBuffer, too small, not initialised, or used before `attach()`. */
export class PciStateError extends VireoError {
  constructor(message: string) {
    super("VIREO_PCI_STATE", message);
  }
}

/**
 * A thread built a function (or its MSI-X) differently from the layout already recorded in the shared state:
 * the threads did not run the same construction code on the same inputs, or a state went to the wrong device.
 */
export class PciLayoutError extends VireoError {
  constructor(message: string) {
    super("VIREO_PCI_LAYOUT", message);
  }
}
