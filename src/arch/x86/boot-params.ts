/**
 * struct boot_params (the "zero page") for the 64-bit boot protocol, and placement of the kernel and initrd.
 *
 * Offsets are from Documentation/arch/x86/zero-page.rst (the page) and boot.rst (the setup header at 0x1f1,
 * whose offsets are the same in the image file and in the page).
 */
import { VireoError } from "../../errors.ts";
import type { GuestMemory } from "../../memory/guest-memory.ts";
import {
  type BzImage,
  ENTRY_64_OFFSET,
  HDR,
  LOADFLAG_CAN_USE_HEAP,
  LOADFLAG_LOADED_HIGH,
  type SetupHeader,
  XLF_CAN_BE_LOADED_ABOVE_4G,
} from "./bzimage.ts";
import { E820_RAM, type E820Entry, FOUR_GIB, HIGH_MEM_START } from "./e820.ts";

/** A boot layout that cannot work: things that do not fit, or fields out of range. */
export class BootParamsError extends VireoError {
  constructor(message: string) {
    super("VIREO_BOOT_PARAMS_INVALID", message);
  }
}

export const BOOT_PARAMS_SIZE = 0x1000;

/** boot_params fields outside the setup header (zero-page.rst). */
export const ZP = {
  acpiRsdpAddr: 0x070,
  extRamdiskImage: 0x0c0,
  extRamdiskSize: 0x0c4,
  extCmdLinePtr: 0x0c8,
  e820Entries: 0x1e8,
  sentinel: 0x1ef,
  e820Table: 0x2d0,
} as const;

export const E820_ENTRY_SIZE = 20;
/** e820_table holds 0xa00 bytes: 128 entries of 20 bytes (zero-page.rst). */
export const E820_MAX_ENTRIES = 128;
/** type_of_loader for a loader without an assigned id (boot.rst, "type_of_loader"). */
export const LOADER_TYPE_UNDEFINED = 0xff;
/** vid_mode "normal" (boot.rst, "Special Command Line Options": vga=normal). */
export const VID_MODE_NORMAL = 0xffff;
/** heap_end_ptr per boot.rst's sample configuration: heap end 0xe000 in the real-mode segment, less 0x200. */
export const DEFAULT_HEAP_END_PTR = 0xe000 - 0x200;

export interface BootParamsOptions {
  image: BzImage;
  /** GPA of the NUL-terminated command line (see writeCommandLine). */
  cmdlineAddr: number;
  initrd?: { addr: number; size: number };
  e820: readonly E820Entry[];
  /** GPA of the ACPI RSDP, or undefined to let the kernel scan for it. */
  rsdpAddr?: number;
  /** Protected-mode load address; written to code32_start as boot.rst asks of a relocating loader. */
  kernelAddr?: number;
  heapEndPtr?: number;
}

function hex(v: number): string {
  return `0x${v.toString(16)}`;
}

function checkAddr(v: number, what: string): void {
  if (!Number.isSafeInteger(v) || v < 0) throw new BootParamsError(`${what} ${v} is not a valid address`);
}

/**
 * Writes a 4 KiB struct boot_params at `gpa`: zeroed, the image's setup header copied to 0x1f1, then the fields
 * a boot loader must fill (boot.rst "Details of Header Fields", the obligatory "write"/"modify" ones, and the
 * zero-page.rst extension fields).
 */
export function writeBootParams(mem: GuestMemory, gpa: number, opts: BootParamsOptions): void {
  const { image } = opts;
  const hdr = image.header;
  if (opts.e820.length === 0) throw new BootParamsError("the e820 map is empty");
  if (opts.e820.length > E820_MAX_ENTRIES) {
    throw new BootParamsError(
      `the e820 map has ${opts.e820.length} entries; boot_params holds at most ${E820_MAX_ENTRIES}`,
    );
  }
  checkAddr(opts.cmdlineAddr, "command line address");
  const above4g = (hdr.xloadflags & XLF_CAN_BE_LOADED_ABOVE_4G) !== 0;
  const check64 = (v: number, what: string) => {
    checkAddr(v, what);
    if (v >= FOUR_GIB && !above4g) {
      throw new BootParamsError(
        `${what} ${hex(v)} is above 4 GiB, but the kernel lacks XLF_CAN_BE_LOADED_ABOVE_4G`,
      );
    }
  };
  check64(opts.cmdlineAddr, "command line address");
  if (opts.initrd) {
    check64(opts.initrd.addr, "initrd address");
    check64(opts.initrd.size, "initrd size");
  }
  if (opts.kernelAddr !== undefined && (opts.kernelAddr < 0 || opts.kernelAddr >= FOUR_GIB)) {
    throw new BootParamsError(
      `kernel load address ${hex(opts.kernelAddr)} does not fit code32_start (32 bits)`,
    );
  }

  mem.fill(gpa, BOOT_PARAMS_SIZE, 0);
  mem.write(gpa + HDR.setupSects, image.setupHeaderBytes);

  const lo32 = (v: number) => v % FOUR_GIB;
  const hi32 = (v: number) => Math.floor(v / FOUR_GIB);

  mem.writeU16(gpa + HDR.vidMode, VID_MODE_NORMAL);
  mem.writeU8(gpa + HDR.typeOfLoader, LOADER_TYPE_UNDEFINED);
  // Keep the kernel's LOADED_HIGH; say heap_end_ptr is valid. KASLR_FLAG is the kernel's own; QUIET stays off.
  mem.writeU8(gpa + HDR.loadflags, (hdr.loadflags & LOADFLAG_LOADED_HIGH) | LOADFLAG_CAN_USE_HEAP);
  mem.writeU16(gpa + HDR.heapEndPtr, opts.heapEndPtr ?? DEFAULT_HEAP_END_PTR);
  if (opts.kernelAddr !== undefined) mem.writeU32(gpa + HDR.code32Start, opts.kernelAddr);

  mem.writeU32(gpa + HDR.cmdLinePtr, lo32(opts.cmdlineAddr));
  mem.writeU32(gpa + ZP.extCmdLinePtr, hi32(opts.cmdlineAddr));
  if (opts.initrd) {
    mem.writeU32(gpa + HDR.ramdiskImage, lo32(opts.initrd.addr));
    mem.writeU32(gpa + ZP.extRamdiskImage, hi32(opts.initrd.addr));
    mem.writeU32(gpa + HDR.ramdiskSize, lo32(opts.initrd.size));
    mem.writeU32(gpa + ZP.extRamdiskSize, hi32(opts.initrd.size));
  }
  // acpi_rsdp_addr lives in boot_params proper (0x070), read by kernels since 5.0; the 2.14 setup-header
  // variant was withdrawn (boot.rst, "Protocol 2.14"), so the version does not gate this field.
  if (opts.rsdpAddr !== undefined) {
    checkAddr(opts.rsdpAddr, "RSDP address");
    mem.writeU64(gpa + ZP.acpiRsdpAddr, BigInt(opts.rsdpAddr));
  }

  mem.writeU8(gpa + ZP.e820Entries, opts.e820.length);
  opts.e820.forEach((e, i) => {
    const at = gpa + ZP.e820Table + i * E820_ENTRY_SIZE;
    mem.writeU64(at, BigInt(e.addr));
    mem.writeU64(at + 8, BigInt(e.size));
    mem.writeU32(at + 16, e.type);
  });
}

/**
 * Writes `cmdline` NUL-terminated at `gpa` after checking it against the kernel's cmdline_size (the maximum
 * length without the NUL, boot.rst "cmdline_size"). Returns the bytes written, NUL included.
 */
export function writeCommandLine(
  mem: GuestMemory,
  gpa: number,
  cmdline: string,
  header: SetupHeader,
): number {
  const bytes = new TextEncoder().encode(cmdline);
  if (bytes.includes(0)) throw new BootParamsError("the kernel command line contains a NUL byte");
  if (bytes.length > header.cmdlineSize) {
    throw new BootParamsError(
      `the kernel command line is ${bytes.length} bytes; this kernel accepts at most ${header.cmdlineSize}`,
    );
  }
  mem.write(gpa, bytes);
  mem.writeU8(gpa + bytes.length, 0);
  return bytes.length + 1;
}

export interface KernelPlacement {
  /** Where the protected-mode kernel is loaded. */
  loadAddr: number;
  /** The 64-bit entry point: loadAddr + 0x200 (boot.rst, "64-bit Boot Protocol"). */
  entry: number;
  /** One past the memory the kernel needs from loadAddr before it reads the memory map. */
  end: number;
}

function alignUp(v: number, a: number): number {
  return Math.ceil(v / a) * a;
}

function alignDown(v: number, a: number): number {
  return Math.floor(v / a) * a;
}

function ramEntries(e820: readonly E820Entry[]): E820Entry[] {
  return e820.filter((e) => e.type === E820_RAM).sort((a, b) => a.addr - b.addr);
}

/**
 * Chooses the protected-mode load address: pref_address if [pref, pref + footprint) is usable RAM, else the
 * lowest kernel_alignment-aligned address from 1 MiB on where it fits. The footprint is the larger of
 * init_size and the kernel's file size (boot.rst, "init_size").
 */
export function placeKernel(image: BzImage, e820: readonly E820Entry[]): KernelPlacement {
  const hdr = image.header;
  const footprint = Math.max(hdr.initSize, image.kernel.length);
  const ram = ramEntries(e820);
  const fits = (addr: number) => ram.some((e) => addr >= e.addr && addr + footprint <= e.addr + e.size);
  const at = (addr: number): KernelPlacement => ({
    loadAddr: addr,
    entry: addr + ENTRY_64_OFFSET,
    end: addr + footprint,
  });
  // With a relocatable kernel the runtime start is align_up(load, kernel_alignment) (boot.rst "init_size"),
  // so a preferred address is used as is only when it is aligned.
  if (
    hdr.prefAddress >= HIGH_MEM_START &&
    hdr.prefAddress % hdr.kernelAlignment === 0 &&
    fits(hdr.prefAddress)
  ) {
    return at(hdr.prefAddress);
  }
  for (const e of ram) {
    const addr = alignUp(Math.max(e.addr, HIGH_MEM_START), hdr.kernelAlignment);
    if (addr + footprint <= e.addr + e.size) return at(addr);
  }
  throw new BootParamsError(
    `no usable RAM region holds the kernel: it needs ${footprint} bytes (init_size) at a ${hex(hdr.kernelAlignment)}-aligned address`,
  );
}

export interface InitrdPlacementOptions {
  /** Lowest address the initrd may use, e.g. KernelPlacement.end. */
  minAddr: number;
  /** Alignment of the initrd start (default 4 KiB). */
  align?: number;
}

/**
 * Chooses where to load an initrd of `size` bytes: the highest aligned address such that the whole initrd lies
 * in one RAM entry, at or above minAddr, and at or below initrd_addr_max (the address of the highest byte the
 * initrd may occupy, boot.rst "initrd_addr_max").
 */
export function placeInitrd(
  image: BzImage,
  size: number,
  e820: readonly E820Entry[],
  opts: InitrdPlacementOptions,
): number {
  const align = opts.align ?? 0x1000;
  if (!Number.isSafeInteger(size) || size <= 0)
    throw new BootParamsError(`initrd size ${size} must be positive`);
  const limit = image.header.initrdAddrMax + 1;
  const ram = ramEntries(e820).reverse();
  for (const e of ram) {
    const top = Math.min(e.addr + e.size, limit);
    const addr = alignDown(top - size, align);
    if (addr >= Math.max(e.addr, opts.minAddr) && addr + size <= top) return addr;
  }
  throw new BootParamsError(
    `no room for a ${size}-byte initrd between ${hex(opts.minAddr)} and initrd_addr_max ${hex(image.header.initrdAddrMax)}`,
  );
}
