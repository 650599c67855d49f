/**
 * Linux bzImage setup-header parser, written from the x86 boot protocol (Documentation/arch/x86/boot.rst,
 * "The Real-Mode Kernel Header" and "Details of Header Fields").
 *
 * vireo boots through the 64-bit boot protocol: it loads only the protected-mode part of the image and jumps to
 * its 64-bit entry point (load address + 0x200), so it requires protocol 2.12+ (xloadflags), a relocatable
 * kernel, and XLF_KERNEL_64.
 */
import { VireoError } from "../../errors.ts";

/** A kernel image vireo cannot boot; the message says which rule failed. */
export class BzImageError extends VireoError {
  constructor(message: string) {
    super("VIREO_BZIMAGE_INVALID", message);
  }
}

/** Offsets of setup-header fields in the image file (and in struct boot_params, where the header is copied). */
export const HDR = {
  setupSects: 0x1f1,
  rootFlags: 0x1f2,
  syssize: 0x1f4,
  vidMode: 0x1fa,
  rootDev: 0x1fc,
  bootFlag: 0x1fe,
  jump: 0x200,
  header: 0x202,
  version: 0x206,
  kernelVersion: 0x20e,
  typeOfLoader: 0x210,
  loadflags: 0x211,
  code32Start: 0x214,
  ramdiskImage: 0x218,
  ramdiskSize: 0x21c,
  heapEndPtr: 0x224,
  extLoaderVer: 0x226,
  extLoaderType: 0x227,
  cmdLinePtr: 0x228,
  initrdAddrMax: 0x22c,
  kernelAlignment: 0x230,
  relocatableKernel: 0x234,
  minAlignment: 0x235,
  xloadflags: 0x236,
  cmdlineSize: 0x238,
  hardwareSubarch: 0x23c,
  payloadOffset: 0x248,
  payloadLength: 0x24c,
  setupData: 0x250,
  prefAddress: 0x258,
  initSize: 0x260,
  handoverOffset: 0x264,
  kernelInfoOffset: 0x268,
} as const;

export const BOOT_FLAG = 0xaa55;
/** "HdrS" read as a little-endian u32. */
export const HDRS_MAGIC = 0x53726448;
/** Protocol 2.12 added xloadflags, which is how a kernel says it has a 64-bit entry point. */
export const MIN_PROTOCOL = 0x020c;

/** loadflags bits (boot.rst, "loadflags"). */
export const LOADFLAG_LOADED_HIGH = 0x01;
export const LOADFLAG_KASLR = 0x02;
export const LOADFLAG_QUIET = 0x20;
export const LOADFLAG_CAN_USE_HEAP = 0x80;

/** xloadflags bits (boot.rst, "xloadflags"). */
export const XLF_KERNEL_64 = 0x01;
export const XLF_CAN_BE_LOADED_ABOVE_4G = 0x02;
export const XLF_EFI_HANDOVER_32 = 0x04;
export const XLF_EFI_HANDOVER_64 = 0x08;
export const XLF_EFI_KEXEC = 0x10;

/** Offset of the 64-bit entry point from the protected-mode load address (boot.rst, "64-bit Boot Protocol"). */
export const ENTRY_64_OFFSET = 0x200;

/**
 * The header must reach init_size (the last 2.12 field vireo reads) and must fit the hole that struct
 * boot_params leaves for it, which ends at edd_mbr_sig_buffer (0x290, zero-page.rst).
 */
const MIN_HEADER_END = HDR.initSize + 4;
const MAX_HEADER_END = 0x290;

export interface SetupHeader {
  /** Setup sectors after the boot sector, with the "0 means 4" rule applied. */
  setupSects: number;
  /** Size of the protected-mode code in 16-byte paragraphs. */
  syssize: number;
  vidMode: number;
  bootFlag: number;
  /** Protocol version as (major << 8) | minor, e.g. 0x020f for 2.15. */
  version: number;
  loadflags: number;
  /** Highest address the initrd may occupy (the address of its last byte). */
  initrdAddrMax: number;
  kernelAlignment: number;
  relocatable: boolean;
  /** Minimum alignment as a power of two (0 if the kernel gives none). */
  minAlignment: number;
  xloadflags: number;
  /** Maximum command-line length, not counting the terminating NUL. */
  cmdlineSize: number;
  payloadOffset: number;
  payloadLength: number;
  /** Preferred load address of the protected-mode kernel. */
  prefAddress: number;
  /** Contiguous memory the kernel needs from its load address before it can read the memory map. */
  initSize: number;
  handoverOffset: number;
  /** One past the last byte of the setup header in the image: 0x202 + the byte at 0x201. */
  headerEnd: number;
}

export interface BzImage {
  header: SetupHeader;
  /** The setup header bytes, image offsets [0x1f1, headerEnd), to be copied into boot_params at 0x1f1. */
  setupHeaderBytes: Uint8Array;
  /** Offset of the protected-mode kernel in the image: (setup_sects + 1) * 512. */
  kernelOffset: number;
  /** The protected-mode kernel: syssize * 16 bytes from kernelOffset (a view of the input, not a copy). */
  kernel: Uint8Array;
  /** The kernel version string the setup header points at, if any. */
  kernelVersion: string | undefined;
}

function hex(v: number, digits = 0): string {
  return `0x${v.toString(16).padStart(digits, "0")}`;
}

function protocolString(v: number): string {
  return `${v >> 8}.${(v & 0xff).toString().padStart(2, "0")}`;
}

/** Reads the NUL-terminated kernel version string at kernel_version + 0x200, if it lies inside the setup code. */
function readKernelVersion(image: Uint8Array, ptr: number, setupEnd: number): string | undefined {
  if (ptr === 0) return undefined;
  const start = ptr + 0x200;
  if (start >= setupEnd) return undefined;
  let end = start;
  while (end < setupEnd && end - start < 256 && image[end] !== 0) end++;
  const s = new TextDecoder("latin1").decode(image.subarray(start, end));
  return s.length > 0 ? s : undefined;
}

/** Parses and validates a bzImage for the 64-bit boot protocol. The returned slices view `image`. */
export function parseBzImage(image: Uint8Array): BzImage {
  if (image.length < MIN_HEADER_END) {
    throw new BzImageError(
      `kernel image is too small (${image.length} bytes): a bzImage setup header needs at least ${MIN_HEADER_END}`,
    );
  }
  const v = new DataView(image.buffer, image.byteOffset, image.byteLength);
  const u8 = (o: number) => v.getUint8(o);
  const u16 = (o: number) => v.getUint16(o, true);
  const u32 = (o: number) => v.getUint32(o, true);

  const bootFlag = u16(HDR.bootFlag);
  if (bootFlag !== BOOT_FLAG) {
    throw new BzImageError(`kernel image has no boot flag: ${hex(bootFlag, 4)} at 0x1fe, expected 0xaa55`);
  }
  if (u32(HDR.header) !== HDRS_MAGIC) {
    throw new BzImageError(
      'not a bzImage: no "HdrS" setup-header magic at 0x202 (an ELF vmlinux or old zImage?)',
    );
  }
  const version = u16(HDR.version);
  if (version < MIN_PROTOCOL) {
    throw new BzImageError(
      `boot protocol ${protocolString(version)} (${hex(version, 4)}) is too old: vireo needs 2.12 or later for the 64-bit entry point`,
    );
  }
  // boot.rst "32-bit Boot Protocol": the header ends at 0x202 + the byte at 0x201 (the jump's displacement).
  const headerEnd = 0x202 + u8(HDR.jump + 1);
  if (u8(HDR.jump) !== 0xeb || headerEnd < MIN_HEADER_END || headerEnd > MAX_HEADER_END) {
    throw new BzImageError(
      `setup header length is invalid: jump ${hex(u8(HDR.jump), 2)} ${hex(u8(HDR.jump + 1), 2)} gives a header ending at ${hex(headerEnd)}, expected 0x${MIN_HEADER_END.toString(16)}-0x${MAX_HEADER_END.toString(16)}`,
    );
  }
  if (image.length < headerEnd) {
    throw new BzImageError(
      `kernel image is too small (${image.length} bytes) for its ${hex(headerEnd)}-byte setup header`,
    );
  }
  const loadflags = u8(HDR.loadflags);
  // boot.rst "Loading The Rest of The Kernel": bzImage = protocol >= 2.00 and LOADED_HIGH.
  if ((loadflags & LOADFLAG_LOADED_HIGH) === 0) {
    throw new BzImageError("not a bzImage: loadflags has no LOADED_HIGH (a zImage loads at 0x10000)");
  }
  const relocatable = u8(HDR.relocatableKernel) !== 0;
  if (!relocatable) {
    throw new BzImageError(
      "kernel is not relocatable (relocatable_kernel = 0 at 0x234): build with CONFIG_RELOCATABLE",
    );
  }
  const xloadflags = u16(HDR.xloadflags);
  if ((xloadflags & XLF_KERNEL_64) === 0) {
    throw new BzImageError(
      `kernel has no 64-bit entry point (xloadflags ${hex(xloadflags, 4)} lacks XLF_KERNEL_64): is it a 32-bit kernel?`,
    );
  }

  const rawSects = u8(HDR.setupSects);
  const setupSects = rawSects === 0 ? 4 : rawSects; // boot.rst note (1)
  const kernelOffset = (setupSects + 1) * 512;
  const syssize = u32(HDR.syssize);
  if (syssize === 0) throw new BzImageError("kernel image declares no protected-mode code (syssize = 0)");
  const kernelSize = syssize * 16;
  if (image.length < kernelOffset + kernelSize) {
    throw new BzImageError(
      `kernel data is truncated: setup is ${kernelOffset} bytes and syssize says ${kernelSize} bytes of kernel follow, but the image is ${image.length} bytes`,
    );
  }

  const prefBig = v.getBigUint64(HDR.prefAddress, true);
  if (prefBig > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new BzImageError(`pref_address 0x${prefBig.toString(16)} is not a usable address`);
  }
  const kernelAlignment = u32(HDR.kernelAlignment);
  if (kernelAlignment === 0 || (kernelAlignment & (kernelAlignment - 1)) !== 0) {
    throw new BzImageError(`kernel_alignment ${hex(kernelAlignment)} is not a power of two`);
  }

  const header: SetupHeader = {
    setupSects,
    syssize,
    vidMode: u16(HDR.vidMode),
    bootFlag,
    version,
    loadflags,
    initrdAddrMax: u32(HDR.initrdAddrMax),
    kernelAlignment,
    relocatable,
    minAlignment: u8(HDR.minAlignment),
    xloadflags,
    cmdlineSize: u32(HDR.cmdlineSize),
    payloadOffset: u32(HDR.payloadOffset),
    payloadLength: u32(HDR.payloadLength),
    prefAddress: Number(prefBig),
    initSize: u32(HDR.initSize),
    handoverOffset: u32(HDR.handoverOffset),
    headerEnd,
  };
  return {
    header,
    setupHeaderBytes: image.subarray(HDR.setupSects, headerEnd),
    kernelOffset,
    kernel: image.subarray(kernelOffset, kernelOffset + kernelSize),
    kernelVersion: readKernelVersion(image, u16(HDR.kernelVersion), Math.min(kernelOffset, image.length)),
  };
}

/** "2.15" for 0x020f. */
export function formatProtocolVersion(version: number): string {
  return protocolString(version);
}
