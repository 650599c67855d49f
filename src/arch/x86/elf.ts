/**
 * ELF64 loading for freestanding x86-64 guests (docs/guest-abi.md, "Loading").
 *
 * Field layouts follow the System V ABI generic specification ("gABI"), chapter 4 (ELF header, e_ident) and
 * chapter 5 (program header), with the x86-64 psABI for EM_X86_64. Every check below is on untrusted input: the
 * image may be any file the user passed to `--kernel`.
 */
import { VireoError } from "../../errors.ts";
import type { GuestMemory } from "../../memory/guest-memory.ts";

/** The image is not a loadable ELF64 x86-64 executable. */
export class ElfError extends VireoError {
  constructor(message: string) {
    super("VIREO_ELF_INVALID", message);
  }
}

/** The image does not fit in guest RAM; `neededMiB` says how much it would take. */
export class MemoryTooSmallError extends VireoError {
  readonly neededBytes: number;
  readonly neededMiB: number;
  constructor(neededBytes: number, haveBytes: number) {
    const neededMiB = Math.ceil(neededBytes / MiB);
    super(
      "VIREO_MEMORY_TOO_SMALL",
      `the kernel image needs ${neededMiB} MiB of guest RAM (it loads up to 0x${neededBytes.toString(16)}), ` +
        `but the guest has ${formatMiB(haveBytes)} MiB`,
    );
    this.neededBytes = neededBytes;
    this.neededMiB = neededMiB;
  }
}

export interface ElfSegment {
  /** Physical load address (p_paddr): where vireo copies the segment. */
  paddr: number;
  vaddr: number;
  /** Offset of the segment's bytes in the file. */
  offset: number;
  filesz: number;
  memsz: number;
  /** PF_X = 1, PF_W = 2, PF_R = 4. */
  flags: number;
}

export interface ElfImage {
  entry: number;
  /** PT_LOAD segments, in program header order. */
  segments: ElfSegment[];
}

const MiB = 1024 * 1024;

// gABI ch. 4, e_ident indexes and values.
const EI_CLASS = 4;
const EI_DATA = 5;
const ELFCLASS64 = 2;
const ELFDATA2LSB = 1;
// ELF header fields (ELF64 offsets).
const E_TYPE = 16;
const E_MACHINE = 18;
const E_ENTRY = 24;
const E_PHOFF = 32;
const E_PHENTSIZE = 54;
const E_PHNUM = 56;
const EHDR_SIZE = 64;
const ET_EXEC = 2;
const EM_X86_64 = 62;
/** gABI: e_phnum == PN_XNUM means the real count is in section header 0; not used by our guests. */
const PN_XNUM = 0xffff;
// gABI ch. 5, Elf64_Phdr.
const PHDR_SIZE = 56;
const P_TYPE = 0;
const P_FLAGS = 4;
const P_OFFSET = 8;
const P_VADDR = 16;
const P_PADDR = 24;
const P_FILESZ = 32;
const P_MEMSZ = 40;
const PT_LOAD = 1;
export const PF_X = 1;
export const PF_W = 2;
export const PF_R = 4;

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

function hex(v: bigint | number): string {
  return `0x${v.toString(16)}`;
}

function formatMiB(bytes: number): string {
  const m = bytes / MiB;
  return Number.isInteger(m) ? String(m) : m.toFixed(2);
}

/**
 * Parses an ELF64 little-endian x86-64 ET_EXEC image and returns its entry point and PT_LOAD segments. All
 * offsets and addresses are checked, so the result can be copied without further validation other than the
 * guest's RAM bounds.
 */
export function parseElf64(image: Uint8Array): ElfImage {
  if (image.length < EHDR_SIZE) {
    throw new ElfError(`too short for an ELF64 header: ${image.length} bytes, need ${EHDR_SIZE}`);
  }
  if (image[0] !== 0x7f || image[1] !== 0x45 || image[2] !== 0x4c || image[3] !== 0x46) {
    throw new ElfError("not an ELF file (bad magic)");
  }
  if (image[EI_CLASS] !== ELFCLASS64) {
    throw new ElfError(`not a 64-bit ELF file (EI_CLASS ${image[EI_CLASS]}, want ${ELFCLASS64})`);
  }
  if (image[EI_DATA] !== ELFDATA2LSB) {
    throw new ElfError(`not a little-endian ELF file (EI_DATA ${image[EI_DATA]}, want ${ELFDATA2LSB})`);
  }
  const view = new DataView(image.buffer, image.byteOffset, image.byteLength);
  const machine = view.getUint16(E_MACHINE, true);
  if (machine !== EM_X86_64) {
    throw new ElfError(`wrong machine: e_machine ${machine}, want ${EM_X86_64} (x86-64)`);
  }
  const type = view.getUint16(E_TYPE, true);
  if (type !== ET_EXEC) {
    const what =
      type === 3 ? " (ET_DYN: a shared object or PIE)" : type === 1 ? " (ET_REL: an object file)" : "";
    throw new ElfError(`not an executable: e_type ${type}${what}, want ET_EXEC (${ET_EXEC})`);
  }
  const phentsize = view.getUint16(E_PHENTSIZE, true);
  const phnum = view.getUint16(E_PHNUM, true);
  if (phnum !== 0 && phentsize !== PHDR_SIZE) {
    throw new ElfError(`program header entry size is ${phentsize}, want ${PHDR_SIZE}`);
  }
  if (phnum === PN_XNUM) {
    throw new ElfError("extended program header numbering (e_phnum = PN_XNUM) is not supported");
  }
  const phoff = view.getBigUint64(E_PHOFF, true);
  const fileSize = BigInt(image.length);
  if (phoff > fileSize || BigInt(phnum * PHDR_SIZE) > fileSize - phoff) {
    throw new ElfError(
      `program headers outside the file: ${phnum} x ${PHDR_SIZE} bytes at ${hex(phoff)}, file is ${image.length} bytes`,
    );
  }
  const entry = view.getBigUint64(E_ENTRY, true);

  const segments: ElfSegment[] = [];
  let entryInExec = false;
  for (let i = 0; i < phnum; i++) {
    const ph = Number(phoff) + i * PHDR_SIZE;
    if (view.getUint32(ph + P_TYPE, true) !== PT_LOAD) continue;
    const flags = view.getUint32(ph + P_FLAGS, true);
    const offset = view.getBigUint64(ph + P_OFFSET, true);
    const vaddr = view.getBigUint64(ph + P_VADDR, true);
    const paddr = view.getBigUint64(ph + P_PADDR, true);
    const filesz = view.getBigUint64(ph + P_FILESZ, true);
    const memsz = view.getBigUint64(ph + P_MEMSZ, true);
    const where = `segment ${i} (PT_LOAD at paddr ${hex(paddr)})`;
    if (offset > fileSize || filesz > fileSize - offset) {
      throw new ElfError(
        `${where}: data outside the file: ${hex(filesz)} bytes at offset ${hex(offset)}, file is ${image.length} bytes`,
      );
    }
    if (filesz > memsz) {
      throw new ElfError(`${where}: p_filesz ${hex(filesz)} is larger than p_memsz ${hex(memsz)}`);
    }
    // Addresses must fit a JS number exactly (2^53); that also rules out wrapping past 2^64.
    if (paddr + memsz > MAX_SAFE || vaddr + memsz > MAX_SAFE) {
      throw new ElfError(
        `${where}: address overflow: paddr ${hex(paddr)} / vaddr ${hex(vaddr)} + memsz ${hex(memsz)} ` +
          "is beyond 2^53",
      );
    }
    if (flags & PF_X && entry >= vaddr && entry < vaddr + memsz) entryInExec = true;
    segments.push({
      paddr: Number(paddr),
      vaddr: Number(vaddr),
      offset: Number(offset),
      filesz: Number(filesz),
      memsz: Number(memsz),
      flags,
    });
  }
  if (segments.length === 0) throw new ElfError("no PT_LOAD segments: nothing to load");
  // Overlapping segments would overwrite each other depending on header order; no linker emits them.
  const byAddr = segments.filter((s) => s.memsz > 0).sort((a, b) => a.paddr - b.paddr);
  for (let k = 1; k < byAddr.length; k++) {
    const prev = byAddr[k - 1] as ElfSegment;
    const cur = byAddr[k] as ElfSegment;
    if (cur.paddr < prev.paddr + prev.memsz) {
      throw new ElfError(
        `segments overlap in physical memory: ${hex(prev.paddr)}+${hex(prev.memsz)} and ${hex(cur.paddr)}+${hex(cur.memsz)}`,
      );
    }
  }
  if (!entryInExec) throw new ElfError(`entry point ${hex(entry)} is not inside any executable segment`);
  return { entry: Number(entry), segments };
}

/**
 * Loads an ELF image into guest RAM: each PT_LOAD segment's file bytes go to its physical address and the rest
 * of p_memsz is zeroed (docs/guest-abi.md, "Loading"). Everything is validated before the first byte is copied.
 * Returns the entry point and the lowest and highest (exclusive) guest-physical addresses written.
 */
export function loadElf(
  mem: GuestMemory,
  image: Uint8Array,
  opts?: { minAddress?: number },
): { entry: number; lowest: number; highest: number } {
  const minAddress = opts?.minAddress ?? 0x100000;
  const { entry, segments } = parseElf64(image);
  let lowest = Number.POSITIVE_INFINITY;
  let highest = 0;
  for (const [i, s] of segments.entries()) {
    // The ABI reserves guest RAM below 1 MiB for vireo's boot structures (GDT, page tables, boot info).
    if (s.paddr < minAddress || s.paddr < mem.base) {
      throw new ElfError(
        `segment ${i} at paddr ${hex(s.paddr)} is below 0x${Math.max(minAddress, mem.base).toString(16)}, ` +
          "where segments may start",
      );
    }
    lowest = Math.min(lowest, s.paddr);
    highest = Math.max(highest, s.paddr + s.memsz);
  }
  if (highest > mem.end) throw new MemoryTooSmallError(highest, mem.end);
  for (const s of segments) {
    mem.write(s.paddr, image.subarray(s.offset, s.offset + s.filesz));
    mem.fill(s.paddr + s.filesz, s.memsz - s.filesz, 0);
  }
  return { entry, lowest, highest };
}
