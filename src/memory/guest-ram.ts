/**
 * Guest RAM: one memfd-backed shared mapping, exposed as a SharedArrayBuffer. The memfd makes the same pages
 * shareable with other processes later (vhost-user); the SharedArrayBuffer shares them with worker threads.
 */
import { ftruncateSync } from "node:fs";
import { ConfigError } from "../errors.ts";
import { MFD_CLOEXEC, native } from "../native.ts";
import { GuestMemory } from "./guest-memory.ts";

export interface GuestRam {
  memory: GuestMemory;
  buffer: SharedArrayBuffer;
  /** Host virtual address of the mapping, for KVM_SET_USER_MEMORY_REGION. */
  hostAddress: bigint;
  fd: number;
  size: number;
}

export const MIN_MEM_MIB = 2;
/** Guest RAM must end below the 32-bit MMIO hole in this flat layout (PCI, IOAPIC, LAPIC live above 3 GiB). */
export const MAX_MEM_MIB = 3072;

/** Bytes of guest RAM for `mib`, or a ConfigError naming the allowed range. */
export function guestRamBytes(mib: number): number {
  if (!Number.isInteger(mib) || mib < MIN_MEM_MIB || mib > MAX_MEM_MIB) {
    throw new ConfigError(
      `--mem must be a whole number of MiB from ${MIN_MEM_MIB} to ${MAX_MEM_MIB}, got ${mib}`,
    );
  }
  return mib * 1024 * 1024;
}

export function allocateGuestRam(mib: number): GuestRam {
  const size = guestRamBytes(mib);
  const fd = native().memfdCreate("vireo-guest-ram", MFD_CLOEXEC);
  ftruncateSync(fd, size);
  const { buffer, address } = native().mmap(fd, size, 0);
  return { memory: new GuestMemory(buffer), buffer, hostAddress: address, fd, size };
}
