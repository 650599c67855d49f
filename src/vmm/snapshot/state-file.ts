/**
 * The snapshot state file: a versioned, self-describing container of sections, one per component (a device, later
 * the vCPUs and the irqchip), each with a name, a kind, the kind's own state version and a payload of JSON values
 * and byte arrays (src/shared/device-state.ts). docs/snapshot.md describes the format; in short:
 *
 *   offset 0   "VIREOSNP"                    magic, 8 bytes
 *          8   u32 LE format version          FORMAT_VERSION
 *         12   u32 LE flags                   0 (reserved)
 *         16   u64 LE total length            of the whole file, checksum included
 *         24   u32 LE header length           bytes of the JSON header that follows
 *         28   u32 LE reserved                0
 *         32   header (JSON, UTF-8)           { vireoVersion, createdAt, sections: [...], blobs: [...] }
 *          …   blob area                      the byte arrays, back to back; the header's blobs[i] = { offset, length }
 *   total-32   SHA-256 of every byte before it
 *
 * In a section's `data`, a byte array is written as { "$blob": i }: blobs keep raw state (a FIFO, a register file)
 * out of JSON, where it would cost a third more as base64 and be parsed for nothing.
 *
 * Reading checks everything before returning anything: the magic, the format version, the length the file says it
 * has against the length it has (truncation), the checksum (any flipped bit), then the header's shape (zod) and
 * every blob reference. A file that fails any check is refused with a SnapshotFileError whose code says which;
 * nothing is half read. The sections' contents are then checked by each component's restoreState, which trusts
 * nothing either (a valid checksum only says the file is what its writer wrote).
 */
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { z } from "zod";
import { VireoError } from "../../errors.ts";
import { repoPath } from "../../paths.ts";
import type { DeviceState, StateObject, StateValue } from "../../shared/device-state.ts";

export const STATE_FILE_MAGIC = "VIREOSNP";
export const FORMAT_VERSION = 1;
const PREAMBLE_BYTES = 32;
const CHECKSUM_BYTES = 32;
/** Larger than any state vireo writes (a few MiB): a length field beyond it is corruption, not a big file. */
export const MAX_STATE_FILE_BYTES = 1 << 30;

export type SnapshotFileErrorCode =
  | "VIREO_SNAPSHOT_NOT_STATE_FILE"
  | "VIREO_SNAPSHOT_TRUNCATED"
  | "VIREO_SNAPSHOT_TRAILING_DATA"
  | "VIREO_SNAPSHOT_VERSION"
  | "VIREO_SNAPSHOT_CHECKSUM"
  | "VIREO_SNAPSHOT_MALFORMED";

/** A state file that cannot be read: the code says why (see SnapshotFileErrorCode). */
export class SnapshotFileError extends VireoError {
  constructor(code: SnapshotFileErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}

/** One component's saved state in a state file. */
export interface StateSection extends DeviceState {
  /** Unique in the file: which component ("com1", "pci.00:03.0", "virtio-blk0"). */
  name: string;
}

export interface StateFile {
  vireoVersion: string;
  /** ISO 8601. */
  createdAt: string;
  sections: StateSection[];
}

let cachedVersion: string | undefined;

/** vireo's version, from package.json. */
export function vireoVersion(): string {
  if (cachedVersion === undefined) {
    try {
      const pkg = JSON.parse(readFileSync(repoPath("package.json"), "utf8")) as { version?: unknown };
      cachedVersion = typeof pkg.version === "string" ? pkg.version : "unknown";
    } catch {
      cachedVersion = "unknown";
    }
  }
  return cachedVersion;
}

// ---- writing ------------------------------------------------------------------------------------------------------

/** Encodes sections into a state file. Throws SnapshotFileError (MALFORMED) for data that is not encodable. */
export function encodeStateFile(file: {
  sections: readonly StateSection[];
  vireoVersion?: string;
  createdAt?: Date;
}): Uint8Array {
  const names = new Set<string>();
  const blobs: Uint8Array[] = [];
  const blobTable: Array<{ offset: number; length: number }> = [];
  let blobBytes = 0;
  const encode = (v: StateValue, path: string): unknown => {
    if (v instanceof Uint8Array) {
      blobs.push(v);
      blobTable.push({ offset: blobBytes, length: v.length });
      blobBytes += v.length;
      return { $blob: blobs.length - 1 };
    }
    if (v === null || typeof v === "boolean" || typeof v === "string") return v;
    if (typeof v === "number") {
      if (!Number.isFinite(v)) throw malformed(`${path} is ${v}: state numbers must be finite`);
      return v;
    }
    if (Array.isArray(v)) return v.map((e, i) => encode(e, `${path}[${i}]`));
    if (typeof v === "object") {
      if (Object.hasOwn(v, "$blob")) throw malformed(`${path} has a "$blob" key, which the format reserves`);
      const out: Record<string, unknown> = {};
      for (const [k, e] of Object.entries(v)) out[k] = encode(e, `${path}.${k}`);
      return out;
    }
    throw malformed(`${path} is a ${typeof v}, which a state file cannot hold`);
  };
  const sections = file.sections.map((s) => {
    if (names.has(s.name)) throw malformed(`two sections are named "${s.name}"`);
    names.add(s.name);
    return { name: s.name, kind: s.kind, version: s.version, data: encode(s.data, s.name) };
  });
  const header = new TextEncoder().encode(
    JSON.stringify({
      vireoVersion: file.vireoVersion ?? vireoVersion(),
      createdAt: (file.createdAt ?? new Date()).toISOString(),
      sections,
      blobs: blobTable,
    }),
  );
  const total = PREAMBLE_BYTES + header.length + blobBytes + CHECKSUM_BYTES;
  const out = new Uint8Array(total);
  const view = new DataView(out.buffer);
  out.set(new TextEncoder().encode(STATE_FILE_MAGIC), 0);
  view.setUint32(8, FORMAT_VERSION, true);
  view.setUint32(12, 0, true);
  view.setBigUint64(16, BigInt(total), true);
  view.setUint32(24, header.length, true);
  out.set(header, PREAMBLE_BYTES);
  let at = PREAMBLE_BYTES + header.length;
  for (const b of blobs) {
    out.set(b, at);
    at += b.length;
  }
  out.set(sha256(out.subarray(0, total - CHECKSUM_BYTES)), total - CHECKSUM_BYTES);
  return out;
}

export function writeStateFile(path: string, file: Parameters<typeof encodeStateFile>[0]): number {
  const bytes = encodeStateFile(file);
  writeFileSync(path, bytes);
  return bytes.length;
}

// ---- reading ------------------------------------------------------------------------------------------------------

const blobRef = z.object({ $blob: z.number().int().nonnegative() }).strict();

const headerSchema = z.object({
  vireoVersion: z.string().min(1).max(64),
  createdAt: z.iso.datetime(),
  sections: z.array(
    z.object({
      name: z.string().min(1).max(128),
      kind: z.string().min(1).max(64),
      version: z.number().int().nonnegative().max(0xffff),
      data: z.record(z.string(), z.unknown()),
    }),
  ),
  blobs: z.array(
    z.object({ offset: z.number().int().nonnegative(), length: z.number().int().nonnegative() }),
  ),
});

/**
 * Decodes and checks a state file. Throws SnapshotFileError for anything but a whole, unmodified file of this
 * format version; never returns part of one.
 */
export function decodeStateFile(input: Uint8Array): StateFile {
  // A plain Uint8Array view (a Buffer's slice would alias the file's memory instead of copying).
  const bytes = new Uint8Array(input.buffer, input.byteOffset, input.byteLength);
  const magic = new TextEncoder().encode(STATE_FILE_MAGIC);
  const seen = Math.min(bytes.length, magic.length);
  for (let i = 0; i < seen; i++) {
    if (bytes[i] !== magic[i]) {
      throw new SnapshotFileError(
        "VIREO_SNAPSHOT_NOT_STATE_FILE",
        `not a vireo state file (it does not start with "${STATE_FILE_MAGIC}")`,
      );
    }
  }
  if (bytes.length < PREAMBLE_BYTES + CHECKSUM_BYTES) {
    throw new SnapshotFileError(
      "VIREO_SNAPSHOT_TRUNCATED",
      `state file truncated: ${bytes.length} bytes, shorter than any state file (${PREAMBLE_BYTES + CHECKSUM_BYTES})`,
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = view.getUint32(8, true);
  if (version !== FORMAT_VERSION) {
    throw new SnapshotFileError(
      "VIREO_SNAPSHOT_VERSION",
      `state file format version ${version}; this vireo (${vireoVersion()}) reads version ${FORMAT_VERSION} only`,
    );
  }
  const total = view.getBigUint64(16, true);
  if (total > BigInt(MAX_STATE_FILE_BYTES) || total < BigInt(PREAMBLE_BYTES + CHECKSUM_BYTES)) {
    throw new SnapshotFileError(
      "VIREO_SNAPSHOT_MALFORMED",
      `state file header gives a length of ${total} bytes, which no state file has (corrupted)`,
    );
  }
  if (BigInt(bytes.length) < total) {
    throw new SnapshotFileError(
      "VIREO_SNAPSHOT_TRUNCATED",
      `state file truncated: ${bytes.length} bytes of the ${total} its header gives`,
    );
  }
  if (BigInt(bytes.length) > total) {
    throw new SnapshotFileError(
      "VIREO_SNAPSHOT_TRAILING_DATA",
      `state file has ${bytes.length - Number(total)} bytes after its end (${total} bytes): not written by vireo as is`,
    );
  }
  const end = Number(total) - CHECKSUM_BYTES;
  const expected = sha256(bytes.subarray(0, end));
  const stored = bytes.subarray(end);
  if (!expected.every((b, i) => b === stored[i])) {
    throw new SnapshotFileError(
      "VIREO_SNAPSHOT_CHECKSUM",
      "state file checksum mismatch: the file is corrupted (its SHA-256 does not match its contents)",
    );
  }
  // From here the bytes are what a writer wrote; their shape is still checked, as a hand-made file could be wrong.
  const headerLength = view.getUint32(24, true);
  if (view.getUint32(12, true) !== 0 || view.getUint32(28, true) !== 0) {
    throw malformed("reserved preamble fields are not 0");
  }
  if (headerLength > end - PREAMBLE_BYTES) {
    throw malformed(`header length ${headerLength} runs past the end of the file`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(
      new TextDecoder("utf-8", { fatal: true }).decode(
        bytes.subarray(PREAMBLE_BYTES, PREAMBLE_BYTES + headerLength),
      ),
    );
  } catch (e) {
    throw malformed(`header is not JSON: ${e instanceof Error ? e.message : String(e)}`, e);
  }
  const parsed = headerSchema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw malformed(`header: ${issue ? `${issue.path.join(".") || "(top)"}: ${issue.message}` : "invalid"}`);
  }
  const header = parsed.data;
  const areaStart = PREAMBLE_BYTES + headerLength;
  const areaLength = end - areaStart;
  for (const [i, b] of header.blobs.entries()) {
    if (b.offset + b.length > areaLength) {
      throw malformed(`blob ${i} (${b.offset}+${b.length}) lies outside the blob area (${areaLength} bytes)`);
    }
  }
  const names = new Set<string>();
  const sections = header.sections.map((s): StateSection => {
    if (names.has(s.name)) throw malformed(`two sections are named "${s.name}"`);
    names.add(s.name);
    const resolve = (v: unknown, path: string, depth: number): StateValue => {
      if (depth > 32) throw malformed(`${path}: nested too deep`);
      if (v === null || typeof v === "boolean" || typeof v === "string" || typeof v === "number") return v;
      if (Array.isArray(v)) return v.map((e, i) => resolve(e, `${path}[${i}]`, depth + 1));
      if (typeof v === "object") {
        if (Object.hasOwn(v, "$blob")) {
          const ref = blobRef.safeParse(v);
          const b = ref.success ? header.blobs[ref.data.$blob] : undefined;
          if (!ref.success || b === undefined) throw malformed(`${path}: bad blob reference`);
          return bytes.slice(areaStart + b.offset, areaStart + b.offset + b.length);
        }
        const out: StateObject = {};
        for (const [k, e] of Object.entries(v)) out[k] = resolve(e, `${path}.${k}`, depth + 1);
        return out;
      }
      throw malformed(`${path}: not a state value`);
    };
    return {
      name: s.name,
      kind: s.kind,
      version: s.version,
      data: resolve(s.data, s.name, 0) as StateObject,
    };
  });
  return { vireoVersion: header.vireoVersion, createdAt: header.createdAt, sections };
}

export function readStateFile(path: string): StateFile {
  return decodeStateFile(readFileSync(path));
}

/** The section named `name`, or a SnapshotFileError (MALFORMED) naming what is missing. */
export function section(file: StateFile, name: string): StateSection {
  const s = file.sections.find((x) => x.name === name);
  if (s === undefined)
    throw malformed(
      `no section "${name}" (the file has ${file.sections.map((x) => x.name).join(", ") || "none"})`,
    );
  return s;
}

function malformed(message: string, cause?: unknown): SnapshotFileError {
  return new SnapshotFileError("VIREO_SNAPSHOT_MALFORMED", `state file malformed: ${message}`, { cause });
}

function sha256(data: Uint8Array): Uint8Array {
  return new Uint8Array(createHash("sha256").update(data).digest());
}
