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

/**
 * Guest RAM as a private mapping of a snapshot's memory file (a lazy restore): nothing is read now; each page is
 * read from the file when the guest, KVM or a device first touches it, and writes stay in this process (copy on
 * write), so the file is never changed. The file must keep its contents and size while the VM runs (a truncated
 * file would make the next touch of a page past its end fail with SIGBUS). `fd` is the file's, not a memfd: such
 * RAM cannot be shared with another process (vhost-user).
 */
export function mapGuestRamFromFile(fd: number, mib: number): GuestRam {
  const size = guestRamBytes(mib);
  const { buffer, address } = native().mmap(fd, size, 0, true);
  return { memory: new GuestMemory(buffer), buffer, hostAddress: address, fd, size };
}
