/**
 * The BIOS-style e820 memory map vireo hands to a Linux guest (through boot_params.e820_table, zero-page.rst).
 *
 * Guest RAM of N bytes is laid out the PC way: the first `lowMemEnd` bytes (at most) at GPA 0, and the rest at
 * 4 GiB, leaving [lowMemEnd, 4 GiB) for the 32-bit PCI window, the IOAPIC and the local APIC. Within low RAM the
 * legacy 640 KiB - 1 MiB hole (VGA window, option ROMs, BIOS area) is reported reserved.
 */
import { VireoError } from "../../errors.ts";

/** An invalid memory layout: overlapping or misplaced ranges, bad sizes, too many entries. */
export class E820Error extends VireoError {
  constructor(message: string) {
    super("VIREO_E820_INVALID", message);
  }
}

/** e820 entry types (ACPI 6.x, 15 "System Address Map Interfaces", Table "Address Range Types"). */
export const E820_RAM = 1;
export const E820_RESERVED = 2;
export const E820_ACPI = 3;
export const E820_NVS = 4;
export const E820_UNUSABLE = 5;
export type E820Type = 1 | 2 | 3 | 4 | 5;

export interface E820Entry {
  addr: number;
  size: number;
  type: E820Type;
}

export interface AddressRange {
  addr: number;
  size: number;
}

export interface ReservedRange extends AddressRange {
  /** Defaults to E820_RESERVED; E820_ACPI / E820_NVS for ACPI tables and the FACS. */
  type?: E820Type;
}

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;
export const PAGE_SIZE = 4 * KiB;
/** End of conventional memory (640 KiB) and of the legacy hole (1 MiB). */
export const LOW_MEM_TOP = 0xa0000;
export const HIGH_MEM_START = 0x100000;
/** Default start of the 32-bit MMIO hole; RAM beyond it is placed at 4 GiB. */
export const DEFAULT_LOW_MEM_END = 3 * GiB;
export const FOUR_GIB = 4 * GiB;

export interface E820Options {
  /** Bytes of guest RAM; a multiple of 4 KiB, at least 1 MiB. */
  memSize: number;
  /** Where low RAM stops and the 32-bit MMIO hole starts (default 3 GiB); 1 MiB..4 GiB, page aligned. */
  lowMemEnd?: number;
  /** Parts of guest RAM (or of the legacy hole) vireo keeps for itself: boot data, ACPI tables. */
  reserved?: readonly ReservedRange[];
  /** MMIO ranges to report reserved (e.g. PCIe ECAM, so Linux accepts the MCFG region). Must not hit RAM. */
  mmio?: readonly AddressRange[];
}

export interface RamRegion {
  /** Guest-physical start. */
  gpa: number;
  size: number;
  /** Offset of this region in the guest RAM backing (RAM is one buffer, split around the hole). */
  offset: number;
}

function hex(v: number): string {
  return `0x${v.toString(16)}`;
}

function rangeStr(r: AddressRange): string {
  return `${hex(r.addr)}-${hex(r.addr + r.size)}`;
}

function checkLayout(memSize: number, lowMemEnd: number): void {
  if (!Number.isSafeInteger(memSize) || memSize < HIGH_MEM_START || memSize % PAGE_SIZE !== 0) {
    throw new E820Error(`guest memory size ${memSize} must be a whole number of 4 KiB pages, at least 1 MiB`);
  }
  if (
    !Number.isSafeInteger(lowMemEnd) ||
    lowMemEnd < HIGH_MEM_START ||
    lowMemEnd > FOUR_GIB ||
    lowMemEnd % PAGE_SIZE !== 0
  ) {
    throw new E820Error(`low memory end ${hex(lowMemEnd)} must be page aligned and within 1 MiB-4 GiB`);
  }
}

/**
 * Where guest RAM of `memSize` bytes lives in guest-physical space: [0, min(memSize, lowMemEnd)) and, when RAM
 * is larger than that, [4 GiB, 4 GiB + the rest).
 */
export function ramRegions(memSize: number, lowMemEnd = DEFAULT_LOW_MEM_END): RamRegion[] {
  checkLayout(memSize, lowMemEnd);
  const low = Math.min(memSize, lowMemEnd);
  const regions: RamRegion[] = [{ gpa: 0, size: low, offset: 0 }];
  if (memSize > low) regions.push({ gpa: FOUR_GIB, size: memSize - low, offset: low });
  return regions;
}

function validRange(r: AddressRange, what: string): void {
  if (!Number.isSafeInteger(r.addr) || !Number.isSafeInteger(r.size) || r.addr < 0 || r.size <= 0) {
    throw new E820Error(
      `${what} range ${r.addr}+${r.size} must have a non-negative start and a positive size`,
    );
  }
  if (!Number.isSafeInteger(r.addr + r.size))
    throw new E820Error(`${what} range ${hex(r.addr)}+${r.size} is too large`);
}

function overlaps(a: AddressRange, b: AddressRange): boolean {
  return a.addr < b.addr + b.size && b.addr < a.addr + a.size;
}

/** Sorts, checks for overlap, and merges touching entries of the same type. */
export function normalizeE820(entries: readonly E820Entry[]): E820Entry[] {
  const sorted = entries.filter((e) => e.size > 0).sort((a, b) => a.addr - b.addr);
  const out: E820Entry[] = [];
  for (const e of sorted) {
    const last = out[out.length - 1];
    if (last && e.addr < last.addr + last.size) {
      throw new E820Error(`e820 entries overlap: ${rangeStr(last)} and ${rangeStr(e)}`);
    }
    if (last && last.type === e.type && last.addr + last.size === e.addr) {
      last.size += e.size;
    } else {
      out.push({ addr: e.addr, size: e.size, type: e.type });
    }
  }
  return out;
}

/** Removes `cut` from each entry of `base`, splitting entries where needed. */
function subtract(base: E820Entry[], cut: AddressRange): E820Entry[] {
  const out: E820Entry[] = [];
  const cutEnd = cut.addr + cut.size;
  for (const e of base) {
    const end = e.addr + e.size;
    if (!overlaps(e, cut)) {
      out.push(e);
      continue;
    }
    if (e.addr < cut.addr) out.push({ addr: e.addr, size: cut.addr - e.addr, type: e.type });
    if (end > cutEnd) out.push({ addr: cutEnd, size: end - cutEnd, type: e.type });
  }
  return out;
}

/**
 * Builds the guest's e820 map: sorted, non-overlapping, touching same-type entries merged.
 *
 * Reserved ranges must lie inside guest RAM or the legacy hole, and must not overlap each other; MMIO ranges
 * must lie outside guest RAM and must not overlap each other or a reserved range.
 */
export function buildE820(opts: E820Options): E820Entry[] {
  const lowMemEnd = opts.lowMemEnd ?? DEFAULT_LOW_MEM_END;
  const regions = ramRegions(opts.memSize, lowMemEnd);
  const reserved = opts.reserved ?? [];
  const mmio = opts.mmio ?? [];

  // The base map: conventional RAM, the legacy hole, extended RAM, RAM above 4 GiB.
  let map: E820Entry[] = [
    { addr: 0, size: LOW_MEM_TOP, type: E820_RAM },
    { addr: LOW_MEM_TOP, size: HIGH_MEM_START - LOW_MEM_TOP, type: E820_RESERVED },
  ];
  for (const r of regions) {
    const start = Math.max(r.gpa, HIGH_MEM_START);
    const end = r.gpa + r.size;
    if (end > start) map.push({ addr: start, size: end - start, type: E820_RAM });
  }
  // Low RAM always covers the first 1 MiB, so a range in the legacy hole counts as inside guest RAM.
  const inMemory = (r: AddressRange) =>
    regions.some((g) => r.addr >= g.gpa && r.addr + r.size <= g.gpa + g.size);

  const explicit: { range: AddressRange; what: string; type: E820Type }[] = [];
  for (const r of reserved) {
    validRange(r, "reserved");
    const type = r.type ?? E820_RESERVED;
    if (![E820_RESERVED, E820_ACPI, E820_NVS, E820_UNUSABLE].includes(type)) {
      throw new E820Error(`reserved range ${rangeStr(r)} has type ${type}, which is not a reserved type`);
    }
    if (!inMemory(r)) throw new E820Error(`reserved range ${rangeStr(r)} is not inside guest RAM`);
    explicit.push({ range: r, what: "reserved", type });
  }
  for (const r of mmio) {
    validRange(r, "MMIO");
    for (const g of regions) {
      if (overlaps(r, { addr: g.gpa, size: g.size })) {
        throw new E820Error(
          `MMIO range ${rangeStr(r)} overlaps guest RAM ${rangeStr({ addr: g.gpa, size: g.size })}`,
        );
      }
    }
    explicit.push({ range: r, what: "MMIO", type: E820_RESERVED });
  }
  for (let i = 0; i < explicit.length; i++) {
    for (let j = i + 1; j < explicit.length; j++) {
      const a = explicit[i];
      const b = explicit[j];
      if (a && b && overlaps(a.range, b.range)) {
        throw new E820Error(
          `${a.what} range ${rangeStr(a.range)} overlaps ${b.what} range ${rangeStr(b.range)}`,
        );
      }
    }
  }
  for (const x of explicit) {
    map = subtract(map, x.range);
    map.push({ addr: x.range.addr, size: x.range.size, type: x.type });
  }
  return normalizeE820(map);
}

/** The RAM entries of a map, e.g. to place the kernel and the initrd. */
export function usableRam(map: readonly E820Entry[]): E820Entry[] {
  return map.filter((e) => e.type === E820_RAM);
}
