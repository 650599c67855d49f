/**
 * Loads an unmodified Linux bzImage for the 64-bit boot protocol (Documentation/arch/x86/boot.rst, "64-bit Boot
 * Protocol"): the protected-mode kernel at its preferred address, the initrd high in RAM, boot_params with the
 * e820 map and the command line, ACPI tables describing the platform, and page tables and a GDT with the
 * selectors the protocol requires (__BOOT_CS = 0x10, __BOOT_DS = 0x18).
 */
import { closeSync, openSync, readSync } from "node:fs";
import type { GuestMemory } from "../../memory/guest-memory.ts";
import { type AcpiConfig, writeAcpiTables } from "./acpi/index.ts";
import { placeInitrd, placeKernel, writeBootParams, writeCommandLine } from "./boot-params.ts";
import { type BzImage, parseBzImage } from "./bzimage.ts";
import { buildE820, E820_ACPI, type E820Entry } from "./e820.ts";
import { GDT_ADDR, writeIdentityPageTables } from "./long-mode.ts";

export const LINUX_BOOT_PARAMS_ADDR = 0x8000;
export const LINUX_CMDLINE_ADDR = 0x9000;
/** ACPI tables in the BIOS area, where a kernel that scans for the RSDP would also find it. */
export const ACPI_TABLES_ADDR = 0xe0000;
export const ACPI_TABLES_MAX = 0x20000;
export const LINUX_SELECTORS = { code: 0x10, data: 0x18 } as const;

/** boot.rst: __BOOT_CS (0x10) and __BOOT_DS (0x18) must be 4 GiB flat, execute/read and read/write. */
const LINUX_GDT: readonly bigint[] = [0n, 0n, 0x00af9a000000ffffn, 0x00cf92000000ffffn];

export interface LinuxBootConfig {
  kernel: Uint8Array;
  initrd?: Uint8Array;
  cmdline: string;
  memSize: number;
  /** Platform description for the ACPI tables (vCPUs, PM ports, legacy devices). */
  acpi: Omit<AcpiConfig, "base" | "maxSize">;
}

export interface LinuxBootInfo {
  image: BzImage;
  entry: number;
  bootParams: number;
  kernelAddr: number;
  initrd?: { addr: number; size: number };
  rsdpAddr: number;
  e820: E820Entry[];
}

export function loadLinux(mem: GuestMemory, cfg: LinuxBootConfig): LinuxBootInfo {
  const image = parseBzImage(cfg.kernel);
  const acpi = writeAcpiTables(mem, { ...cfg.acpi, base: ACPI_TABLES_ADDR, maxSize: ACPI_TABLES_MAX });
  // Our GDT, page tables, boot_params and command line sit in the first 64 KiB, which Linux keeps for itself
  // (CONFIG_X86_RESERVE_LOW); the ACPI tables are inside the 640K-1M hole that e820 reports reserved anyway.
  const e820 = buildE820({
    memSize: cfg.memSize,
    reserved: [{ addr: ACPI_TABLES_ADDR, size: ACPI_TABLES_MAX, type: E820_ACPI }],
  });
  const placement = placeKernel(image, e820);
  mem.write(placement.loadAddr, image.kernel);
  let initrd: { addr: number; size: number } | undefined;
  if (cfg.initrd) {
    const addr = placeInitrd(image, cfg.initrd.length, e820, { minAddr: placement.end });
    mem.write(addr, cfg.initrd);
    initrd = { addr, size: cfg.initrd.length };
  }
  writeCommandLine(mem, LINUX_CMDLINE_ADDR, cfg.cmdline, image.header);
  writeBootParams(mem, LINUX_BOOT_PARAMS_ADDR, {
    image,
    cmdlineAddr: LINUX_CMDLINE_ADDR,
    initrd,
    e820,
    rsdpAddr: acpi.rsdpAddr,
    kernelAddr: placement.loadAddr,
  });
  LINUX_GDT.forEach((d, i) => {
    mem.writeU64(GDT_ADDR + i * 8, d);
  });
  writeIdentityPageTables(mem);
  return {
    image,
    entry: placement.entry,
    bootParams: LINUX_BOOT_PARAMS_ADDR,
    kernelAddr: placement.loadAddr,
    initrd,
    rsdpAddr: acpi.rsdpAddr,
    e820,
  };
}

/** True when the image starts like a bzImage (the "HdrS" magic at 0x202), as opposed to an ELF guest. */
export function looksLikeBzImage(image: Uint8Array): boolean {
  return (
    image.length > 0x206 &&
    image[0x202] === 0x48 &&
    image[0x203] === 0x64 &&
    image[0x204] === 0x72 &&
    image[0x205] === 0x53
  );
}

/** looksLikeBzImage on a file, reading only its header; false for a file that cannot be read. */
export function fileLooksLikeBzImage(path: string): boolean {
  let fd: number | undefined;
  try {
    fd = openSync(path, "r");
    const head = new Uint8Array(0x208);
    readSync(fd, head, 0, head.length, 0);
    return looksLikeBzImage(head);
  } catch {
    return false;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}
