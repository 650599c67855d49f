/**
 * A small AML encoder: only the constructs vireo's DSDT needs. Section numbers refer to the ACPI 6.x
 * specification, chapter 20 "ACPI Machine Language (AML) Specification" (20.2 "AML Grammar Definition") and
 * chapter 6.4 "Resource Data Types for ACPI".
 *
 * Every builder returns a fresh Uint8Array of encoded AML; compose them by passing results to the containers.
 */
import { AcpiError } from "./errors.ts";

// Opcodes (20.3 "AML Byte Stream Byte Values").
export const AML = {
  zero: 0x00,
  one: 0x01,
  alias: 0x06,
  name: 0x08,
  bytePrefix: 0x0a,
  wordPrefix: 0x0b,
  dwordPrefix: 0x0c,
  stringPrefix: 0x0d,
  qwordPrefix: 0x0e,
  scope: 0x10,
  buffer: 0x11,
  package: 0x12,
  method: 0x14,
  dualNamePrefix: 0x2e,
  multiNamePrefix: 0x2f,
  extOpPrefix: 0x5b,
  deviceExt: 0x82, // after extOpPrefix
  rootChar: 0x5c,
  parentPrefix: 0x5e,
  return: 0xa4,
  ones: 0xff,
} as const;

export type Bytes = Uint8Array;

export function concat(...parts: readonly (Uint8Array | readonly number[])[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/**
 * PkgLength for a body of `bodyLen` bytes (20.2.4 "Package Length Encoding"). The encoded value counts the
 * PkgLength bytes themselves. One byte holds up to 63; otherwise the lead byte's bits 7-6 give the number of
 * following bytes, its bits 3-0 the low nibble, and each following byte the next 8 bits.
 */
export function pkgLength(bodyLen: number): Uint8Array {
  if (bodyLen + 1 <= 0x3f) return Uint8Array.of(bodyLen + 1);
  for (let extra = 1; extra <= 3; extra++) {
    const total = bodyLen + 1 + extra;
    if (total < 2 ** (4 + 8 * extra)) {
      const out = new Uint8Array(1 + extra);
      out[0] = (extra << 6) | (total & 0x0f);
      for (let i = 0; i < extra; i++) out[1 + i] = (total >> (4 + 8 * i)) & 0xff;
      return out;
    }
  }
  throw new AcpiError(`AML package of ${bodyLen} bytes exceeds the 2^28-byte PkgLength limit`);
}

/** A NameSeg (20.2.2): a lead character A-Z or '_', then A-Z, 0-9 or '_', padded with '_' to 4 characters. */
export function nameSeg(seg: string): Uint8Array {
  if (!/^[A-Z_][A-Z0-9_]{0,3}$/.test(seg)) throw new AcpiError(`"${seg}" is not a valid AML name segment`);
  const padded = seg.padEnd(4, "_");
  return Uint8Array.from(padded, (c) => c.charCodeAt(0));
}

/**
 * A NameString (20.2.2): optional '\' (root) or '^'s (parent), then segments joined by '.'. Two segments use
 * DualNamePrefix, more use MultiNamePrefix with a count, none is NullName.
 */
export function nameString(path: string): Uint8Array {
  let rest = path;
  const prefix: number[] = [];
  if (rest.startsWith("\\")) {
    prefix.push(AML.rootChar);
    rest = rest.slice(1);
  } else {
    while (rest.startsWith("^")) {
      prefix.push(AML.parentPrefix);
      rest = rest.slice(1);
    }
  }
  const segs = rest === "" ? [] : rest.split(".").map(nameSeg);
  if (segs.length === 0) return concat(prefix, [0x00]);
  if (segs.length === 1) return concat(prefix, ...segs);
  if (segs.length === 2) return concat(prefix, [AML.dualNamePrefix], ...segs);
  if (segs.length > 255) throw new AcpiError(`AML name "${path}" has too many segments`);
  return concat(prefix, [AML.multiNamePrefix, segs.length], ...segs);
}

/** An Integer constant with the shortest encoding (20.2.3 "Data Objects Encoding": ComputationalData). */
export function integer(value: number | bigint): Uint8Array {
  const v = BigInt(value);
  if (v < 0n || v > 0xffff_ffff_ffff_ffffn) throw new AcpiError(`AML integer ${value} is outside 0..2^64-1`);
  if (v === 0n) return Uint8Array.of(AML.zero);
  if (v === 1n) return Uint8Array.of(AML.one);
  const le = (prefix: number, bytes: number) => {
    const out = new Uint8Array(1 + bytes);
    out[0] = prefix;
    for (let i = 0; i < bytes; i++) out[1 + i] = Number((v >> BigInt(8 * i)) & 0xffn);
    return out;
  };
  if (v <= 0xffn) return le(AML.bytePrefix, 1);
  if (v <= 0xffffn) return le(AML.wordPrefix, 2);
  if (v <= 0xffff_ffffn) return le(AML.dwordPrefix, 4);
  return le(AML.qwordPrefix, 8);
}

/** A String constant: StringPrefix, ASCII characters 0x01-0x7f, NUL (20.2.3). */
export function string(s: string): Uint8Array {
  for (const c of s) {
    const code = c.charCodeAt(0);
    if (code < 1 || code > 0x7f) throw new AcpiError(`AML string "${s}" has a character outside 0x01-0x7f`);
  }
  return concat(
    [AML.stringPrefix],
    Array.from(s, (c) => c.charCodeAt(0)),
    [0],
  );
}

/**
 * The 32-bit compressed EISA id for _HID/_CID (6.1.5 "_HID": EISAID): three letters in 5 bits each and four
 * hex digits, stored so that the bytes in memory read letters-high, letters-low, digits 0-1, digits 2-3.
 */
export function eisaId(id: string): number {
  if (!/^[A-Z]{3}[0-9A-F]{4}$/.test(id)) throw new AcpiError(`"${id}" is not an EISA id like PNP0A03`);
  const letter = (i: number) => id.charCodeAt(i) - 0x40;
  const letters = (letter(0) << 10) | (letter(1) << 5) | letter(2);
  const digits = Number.parseInt(id.slice(3), 16);
  const b0 = letters >> 8;
  const b1 = letters & 0xff;
  const b2 = digits >> 8;
  const b3 = digits & 0xff;
  return (b0 | (b1 << 8) | (b2 << 16) | (b3 << 24)) >>> 0;
}

/** Name(path, object) (20.2.5.1 DefName). */
export function name(path: string, object: Uint8Array): Uint8Array {
  return concat([AML.name], nameString(path), object);
}

/** Scope(path) { body } (20.2.5.1 DefScope). */
export function scope(path: string, ...body: Uint8Array[]): Uint8Array {
  const inner = concat(nameString(path), ...body);
  return concat([AML.scope], pkgLength(inner.length), inner);
}

/** Device(path) { body } (20.2.5.2 DefDevice). */
export function device(path: string, ...body: Uint8Array[]): Uint8Array {
  const inner = concat(nameString(path), ...body);
  return concat([AML.extOpPrefix, AML.deviceExt], pkgLength(inner.length), inner);
}

/** Method(path, argCount, NotSerialized) { Return(value) }: a method that returns a constant. */
export function methodReturning(path: string, argCount: number, value: Uint8Array): Uint8Array {
  if (!Number.isInteger(argCount) || argCount < 0 || argCount > 7)
    throw new AcpiError("AML methods take 0-7 args");
  const inner = concat(nameString(path), [argCount], [AML.return], value);
  return concat([AML.method], pkgLength(inner.length), inner);
}

/** Package(n) { elements } (20.2.5.4 DefPackage, NumElements a byte). */
export function pkg(...elements: Uint8Array[]): Uint8Array {
  if (elements.length > 255) throw new AcpiError("AML Package with more than 255 elements needs VarPackage");
  const inner = concat([elements.length], ...elements);
  return concat([AML.package], pkgLength(inner.length), inner);
}

/** Buffer(n) { bytes } (20.2.5.4 DefBuffer: BufferSize is a TermArg, here an Integer constant). */
export function buffer(bytes: Uint8Array): Uint8Array {
  const inner = concat(integer(bytes.length), bytes);
  return concat([AML.buffer], pkgLength(inner.length), inner);
}

// ---- Resource descriptors (6.4) ----

function u16le(v: number): number[] {
  return [v & 0xff, (v >> 8) & 0xff];
}

function uNle(v: bigint, bytes: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < bytes; i++) out.push(Number((v >> BigInt(8 * i)) & 0xffn));
  return out;
}

function checkRange(what: string, min: number | bigint, len: number | bigint, limit: bigint): void {
  const lo = BigInt(min);
  const n = BigInt(len);
  if (lo < 0n || n <= 0n || lo + n - 1n > limit) {
    throw new AcpiError(`${what} range 0x${lo.toString(16)}+0x${n.toString(16)} does not fit the descriptor`);
  }
}

/** IO(Decode16, min, min, align, len): I/O Port Descriptor, fixed location (6.4.2.5). */
export function ioPort(base: number, len: number, align = 1): Uint8Array {
  checkRange("I/O port", base, len, 0xffffn);
  if (len > 0xff || align > 0xff) throw new AcpiError("I/O port descriptor length and alignment are 8-bit");
  // Byte 0: small item, name 0x08, length 7. Byte 1 bit 0: decodes 16 address bits.
  return Uint8Array.from([0x47, 0x01, ...u16le(base), ...u16le(base), align, len]);
}

/** IRQNoFlags() { irqs }: IRQ Descriptor without the flags byte, meaning edge-triggered active-high (6.4.2.1). */
export function irqNoFlags(...irqs: number[]): Uint8Array {
  let mask = 0;
  for (const irq of irqs) {
    if (!Number.isInteger(irq) || irq < 0 || irq > 15) throw new AcpiError(`ISA IRQ ${irq} is outside 0-15`);
    mask |= 1 << irq;
  }
  return Uint8Array.from([0x22, ...u16le(mask)]);
}

/** Address space resource types (6.4.3.5, "Resource Type" byte). */
export const ADDR_SPACE = { memory: 0, io: 1, busNumber: 2 } as const;
/** General flags of a bridge window: producer (bit 0 clear), positive decode, _MIF and _MAF fixed. */
const GEN_FLAGS_FIXED_WINDOW = 0x0c;
/** Type-specific flags: I/O _RNG = entire range (bits 1:0 = 3); memory _RW read-write, non-cacheable. */
const IO_FLAGS_ENTIRE_RANGE = 0x03;
const MEM_FLAGS_RW_NONCACHEABLE = 0x01;

function addressSpace(
  width: 2 | 4 | 8,
  type: number,
  typeFlags: number,
  min: bigint,
  len: bigint,
): Uint8Array {
  // Large items (6.4.3): tag 0x88 Word, 0x87 DWord, 0x8a QWord; then a 16-bit length of what follows.
  const tag = width === 2 ? 0x88 : width === 4 ? 0x87 : 0x8a;
  const body = [
    type,
    GEN_FLAGS_FIXED_WINDOW,
    typeFlags,
    ...uNle(0n, width), // _GRA
    ...uNle(min, width), // _MIN
    ...uNle(min + len - 1n, width), // _MAX
    ...uNle(0n, width), // _TRA
    ...uNle(len, width), // _LEN
  ];
  return Uint8Array.from([tag, ...u16le(body.length), ...body]);
}

/** WordBusNumber(ResourceProducer, MinFixed, MaxFixed, PosDecode, 0, first, last, 0, count) (6.4.3.5.3). */
export function wordBusNumber(first: number, last: number): Uint8Array {
  if (!(Number.isInteger(first) && Number.isInteger(last) && first >= 0 && last >= first && last <= 0xff)) {
    throw new AcpiError(`PCI bus range ${first}-${last} is invalid`);
  }
  return addressSpace(2, ADDR_SPACE.busNumber, 0, BigInt(first), BigInt(last - first + 1));
}

/** WordIO(ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, ...) (6.4.3.5.3). */
export function wordIo(base: number, len: number): Uint8Array {
  checkRange("I/O window", base, len, 0xffffn);
  return addressSpace(2, ADDR_SPACE.io, IO_FLAGS_ENTIRE_RANGE, BigInt(base), BigInt(len));
}

/** DWordMemory(ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite, ...) (6.4.3.5.2). */
export function dwordMemory(base: number, len: number): Uint8Array {
  checkRange("32-bit memory window", base, len, 0xffff_ffffn);
  return addressSpace(4, ADDR_SPACE.memory, MEM_FLAGS_RW_NONCACHEABLE, BigInt(base), BigInt(len));
}

/** QWordMemory(ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite, ...) (6.4.3.5.1). */
export function qwordMemory(base: number | bigint, len: number | bigint): Uint8Array {
  checkRange("64-bit memory window", base, len, 0xffff_ffff_ffff_ffffn);
  return addressSpace(8, ADDR_SPACE.memory, MEM_FLAGS_RW_NONCACHEABLE, BigInt(base), BigInt(len));
}

/**
 * ResourceTemplate() { descriptors }: a Buffer holding the descriptors and an End Tag (6.4.2.9: small item
 * 0x0f, length 1; a checksum byte of 0 means "treat as valid").
 */
export function resourceTemplate(...descriptors: Uint8Array[]): Uint8Array {
  return buffer(concat(...descriptors, [0x79, 0x00]));
}
