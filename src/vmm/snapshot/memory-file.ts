/**
 * The memory file of a snapshot: guest RAM at its guest-physical offsets, written sparsely. Only pages with a
 * non-zero byte are written; the file is then extended to the RAM size with ftruncate, so every all-zero page is
 * a hole (no disk blocks) and reads back as zeros. The runs written are returned (the state file records them),
 * so a restore reads exactly those runs and nothing else, the same extents SEEK_DATA/SEEK_HOLE would find, without
 * a system call Node lacks. docs/snapshot.md says why restore reads instead of mapping the file.
 */
import {
  closeSync,
  fdatasyncSync,
  fstatSync,
  ftruncateSync,
  openSync,
  readSync,
  renameSync,
  rmSync,
  writeSync,
} from "node:fs";
import { VireoError } from "../../errors.ts";
import { type Extents, PAGE } from "./kvm-sections.ts";

/** Pages compared per call: a zero run is found a chunk at a time, a chunk with data page by page. */
const CHUNK = 64 * PAGE;
const ZERO_CHUNK = Buffer.alloc(CHUNK);
const ZERO_PAGE = ZERO_CHUNK.subarray(0, PAGE);

export interface MemoryFileWritten {
  extents: Extents;
  /** Bytes of data written (the rest are holes). */
  bytesWritten: number;
}

/** The runs of `ram` that hold a non-zero byte, page-granular. */
export function dataExtents(ram: Uint8Array): Extents {
  const buf = Buffer.from(ram.buffer, ram.byteOffset, ram.byteLength);
  const out: Extents = [];
  let runStart = -1;
  const close = (at: number) => {
    if (runStart >= 0) out.push([runStart, at - runStart]);
    runStart = -1;
  };
  for (let off = 0; off < buf.length; ) {
    const n = Math.min(CHUNK, buf.length - off);
    if (n === CHUNK && buf.subarray(off, off + CHUNK).equals(ZERO_CHUNK)) {
      close(off);
      off += CHUNK;
      continue;
    }
    const end = off + n;
    for (; off < end; off += PAGE) {
      const len = Math.min(PAGE, end - off);
      const zero = buf.subarray(off, off + len).equals(ZERO_PAGE.subarray(0, len));
      if (zero) close(off);
      else if (runStart < 0) runStart = off;
    }
  }
  close(buf.length);
  return out;
}

/**
 * Writes `path` as a new file (a temporary name renamed over it when whole): a VM lazily restored from the file
 * that was at `path` keeps reading its pages from it (its mapping holds the old file), so a snapshot into the same
 * directory cannot change or truncate the memory under it.
 */
export function writeMemoryFile(path: string, ram: Uint8Array): MemoryFileWritten {
  const extents = dataExtents(ram);
  const tmp = `${path}.tmp`;
  const fd = openSync(tmp, "w", 0o600);
  let ok = false;
  try {
    let bytesWritten = 0;
    for (const [offset, length] of extents) {
      let done = 0;
      while (done < length) done += writeSync(fd, ram, offset + done, length - done, offset + done);
      bytesWritten += length;
    }
    ftruncateSync(fd, ram.byteLength);
    fdatasyncSync(fd);
    ok = true;
    return { extents, bytesWritten };
  } finally {
    closeSync(fd);
    if (ok) renameSync(tmp, path);
    else rmSync(tmp, { force: true });
  }
}

/** Opens the memory file for a lazy restore (read only; mapped private), checking its size against the RAM. */
export function openMemoryFile(path: string, ramBytes: number): number {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (e) {
    throw new MemoryFileError(`memory file ${path}: ${(e as Error).message}`);
  }
  const size = fstatSync(fd).size;
  if (size !== ramBytes) {
    closeSync(fd);
    throw new MemoryFileError(`memory file ${path} is ${size} bytes, the snapshot's RAM ${ramBytes}`);
  }
  return fd;
}

/** The memory file does not fit the state file (another size, or shorter than its extents). */
export class MemoryFileError extends VireoError {
  constructor(message: string) {
    super("VIREO_SNAPSHOT_MEMORY", message);
  }
}

/**
 * Reads the runs `extents` of the memory file into `ram` (which is zero elsewhere: fresh memfd pages).
 * The file must be exactly the RAM's size.
 */
export function readMemoryFile(path: string, ram: Uint8Array, extents: Extents): number {
  const fd = openMemoryFile(path, ram.byteLength);
  try {
    let bytesRead = 0;
    for (const [offset, length] of extents) {
      let done = 0;
      while (done < length) {
        const n = readSync(fd, ram, offset + done, length - done, offset + done);
        if (n === 0) throw new MemoryFileError(`memory file ${path} ended at ${offset + done}`);
        done += n;
      }
      bytesRead += length;
    }
    return bytesRead;
  } finally {
    closeSync(fd);
  }
}
