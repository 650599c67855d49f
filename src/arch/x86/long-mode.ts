/**
 * 64-bit entry state for a freestanding guest (docs/guest-abi.md): a flat GDT, identity-mapped page tables
 * for the first 4 GiB, and the control registers of long mode (Intel SDM vol. 3A, 9.8.5 "Initializing IA-32e
 * Mode"; AMD APM vol. 2, 14.6 "Enabling and Activating Long Mode").
 */
import type { GuestMemory } from "../../memory/guest-memory.ts";

export const GDT_ADDR = 0x1000;
export const PML4_ADDR = 0x2000;
export const PDPT_ADDR = 0x3000;
export const PD_ADDR = 0x4000; // four page directories, 0x4000..0x7fff
export const BOOT_INFO_ADDR = 0x8000;
export const CMDLINE_ADDR = 0x9000;
export const CMDLINE_MAX = 4095;
export const GDT_ENTRIES = 8;

export const SELECTOR = {
  code64: 0x08,
  data: 0x10,
  userCode32: 0x18,
  userData: 0x20,
  userCode64: 0x28,
} as const;

/** Segment descriptors (SDM 3A 3.4.5): base 0, limit 0xfffff pages; access byte and flags differ. */
export const GDT_DESCRIPTORS: readonly bigint[] = [
  0n,
  0x00af9a000000ffffn, // 0x08: code, DPL0, L=1 (64-bit), present, execute/read
  0x00cf92000000ffffn, // 0x10: data, DPL0, read/write, 4 KiB granularity
  0x00cffa000000ffffn, // 0x18: code, DPL3, 32-bit
  0x00cff2000000ffffn, // 0x20: data, DPL3
  0x00affa000000ffffn, // 0x28: code, DPL3, 64-bit
  0n, // 0x30/0x38: left for the guest's TSS descriptor
  0n,
];

// Page-table entry bits (SDM 3A 4.5): present, writable, user-accessible, page size (2 MiB in a PD entry).
const PTE_P = 1n;
const PTE_W = 2n;
const PTE_U = 4n;
const PTE_PS = 0x80n;

export function writeGdt(mem: GuestMemory): void {
  GDT_DESCRIPTORS.forEach((d, i) => {
    mem.writeU64(GDT_ADDR + i * 8, d);
  });
}

/** Identity map [0, 4 GiB) with 2 MiB pages, user-accessible so a guest can run code at CPL 3 as-is. */
export function writeIdentityPageTables(mem: GuestMemory): void {
  mem.writeU64(PML4_ADDR, BigInt(PDPT_ADDR) | PTE_P | PTE_W | PTE_U);
  for (let i = 0; i < 4; i++) {
    const pd = PD_ADDR + i * 0x1000;
    mem.writeU64(PDPT_ADDR + i * 8, BigInt(pd) | PTE_P | PTE_W | PTE_U);
    for (let j = 0; j < 512; j++) {
      const frame = BigInt(i * 512 + j) << 21n;
      mem.writeU64(pd + j * 8, frame | PTE_P | PTE_W | PTE_U | PTE_PS);
    }
  }
}

export interface BootInfo {
  memSize: number;
  cmdline: string;
  cpus: number;
}

export const BOOT_INFO_MAGIC = 0x4f524956; // "VIRO"

export class CmdlineTooLongError extends Error {
  readonly code = "VIREO_CMDLINE_TOO_LONG";
}

/** struct vireo_boot_info (docs/guest-abi.md) and the command line it points at. */
export function writeBootInfo(mem: GuestMemory, info: BootInfo): void {
  const cmdline = new TextEncoder().encode(info.cmdline);
  if (cmdline.length > CMDLINE_MAX)
    throw new CmdlineTooLongError(`command line is ${cmdline.length} bytes, at most ${CMDLINE_MAX}`);
  mem.write(CMDLINE_ADDR, cmdline);
  mem.writeU8(CMDLINE_ADDR + cmdline.length, 0);
  mem.writeU32(BOOT_INFO_ADDR, BOOT_INFO_MAGIC);
  mem.writeU32(BOOT_INFO_ADDR + 4, 1);
  mem.writeU64(BOOT_INFO_ADDR + 8, BigInt(info.memSize));
  mem.writeU64(BOOT_INFO_ADDR + 16, BigInt(CMDLINE_ADDR));
  mem.writeU32(BOOT_INFO_ADDR + 24, cmdline.length);
  mem.writeU32(BOOT_INFO_ADDR + 28, info.cpus);
}

/** Everything in guest memory that the 64-bit entry needs. */
export function writeLongModeTables(mem: GuestMemory, info: BootInfo): void {
  writeGdt(mem);
  writeIdentityPageTables(mem);
  writeBootInfo(mem, info);
}

export interface Segment {
  base: bigint;
  limit: number;
  selector: number;
  type: number;
  present: number;
  dpl: number;
  db: number;
  s: number;
  l: number;
  g: number;
}

const flatCode64: Segment = {
  base: 0n,
  limit: 0xffffffff,
  selector: SELECTOR.code64,
  type: 0xb,
  present: 1,
  dpl: 0,
  db: 0,
  s: 1,
  l: 1,
  g: 1,
};
const flatData: Segment = {
  base: 0n,
  limit: 0xffffffff,
  selector: SELECTOR.data,
  type: 0x3,
  present: 1,
  dpl: 0,
  db: 1,
  s: 1,
  l: 0,
  g: 1,
};

export const CR0_PE = 1n;
export const CR0_ET = 1n << 4n;
export const CR0_WP = 1n << 16n;
export const CR0_PG = 1n << 31n;
export const CR4_PAE = 1n << 5n;
export const EFER_LME = 1n << 8n;
export const EFER_LMA = 1n << 10n;

/** Selectors the entry state loads; the GDT at GDT_ADDR must hold matching descriptors. */
export interface EntrySelectors {
  code: number;
  data: number;
}

/** The special registers of 64-bit mode with the tables above (the micro guest's selectors by default). */
export function longModeSregs(selectors: EntrySelectors = { code: SELECTOR.code64, data: SELECTOR.data }): {
  cs: Segment;
  data: Segment;
  gdt: { base: bigint; limit: number };
  idt: { base: bigint; limit: number };
  cr0: bigint;
  cr3: bigint;
  cr4: bigint;
  efer: bigint;
} {
  return {
    cs: { ...flatCode64, selector: selectors.code },
    data: { ...flatData, selector: selectors.data },
    gdt: { base: BigInt(GDT_ADDR), limit: GDT_ENTRIES * 8 - 1 },
    idt: { base: 0n, limit: 0 },
    cr0: CR0_PE | CR0_ET | CR0_WP | CR0_PG,
    cr3: BigInt(PML4_ADDR),
    cr4: CR4_PAE,
    efer: EFER_LME | EFER_LMA,
  };
}
