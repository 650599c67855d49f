/**
 * A writer for cpio archives in the SVR4 "newc" format (man 5 cpio, "New ASCII Format"), gzip-compressed for use
 * as a Linux initramfs (Documentation/driver-api/early-userspace/buffer-format.rst).
 *
 * Each member is a 110-byte ASCII header ("070701" then 13 eight-digit hex fields), the NUL-terminated path
 * name padded so header + name is a multiple of 4 bytes, then the data padded to a multiple of 4. The archive
 * ends with a member named "TRAILER!!!".
 */
import { gzipSync } from "node:zlib";
import { VireoError } from "../errors.ts";

/** An entry the archive cannot hold: bad path, duplicate, oversized file, out-of-range field. */
export class CpioError extends VireoError {
  constructor(message: string) {
    super("VIREO_CPIO_INVALID", message);
  }
}

export const NEWC_MAGIC = "070701";
export const NEWC_HEADER_SIZE = 110;
export const TRAILER_NAME = "TRAILER!!!";

/** File type bits of st_mode (man 7 inode, "The file type and mode"). */
export const S_IFMT = 0o170000;
export const S_IFDIR = 0o040000;
export const S_IFREG = 0o100000;
export const S_IFLNK = 0o120000;
export const S_IFCHR = 0o020000;
export const S_IFBLK = 0o060000;
export const S_IFIFO = 0o010000;

export interface EntryOptions {
  /** Permission bits (including setuid/setgid/sticky); the type bits come from the entry kind. */
  mode?: number;
  uid?: number;
  gid?: number;
  /** Seconds since the epoch; defaults to the writer's mtime. */
  mtime?: number;
}

export interface CpioWriterOptions {
  /** mtime for entries that do not give one (default 0, for reproducible archives). */
  mtime?: number;
  uid?: number;
  gid?: number;
  /** Add missing parent directories (mode 0755) before an entry, as the kernel's unpacker needs. Default true. */
  createParents?: boolean;
}

interface Member {
  name: string;
  mode: number;
  uid: number;
  gid: number;
  nlink: number;
  mtime: number;
  data: Uint8Array;
  rdevMajor: number;
  rdevMinor: number;
}

const U32_MAX = 0xffff_ffff;

function field(v: number, what: string): string {
  if (!Number.isInteger(v) || v < 0 || v > U32_MAX)
    throw new CpioError(`cpio ${what} ${v} does not fit 32 bits`);
  return v.toString(16).toUpperCase().padStart(8, "0");
}

function pad4(n: number): number {
  return (4 - (n % 4)) % 4;
}

/** Normalizes "/dev/console" and "dev//console/" to "dev/console"; rejects empty, "." and ".." components. */
function normalizePath(path: string): string {
  const parts = path.split("/").filter((p) => p !== "");
  if (parts.length === 0) throw new CpioError(`cpio path "${path}" names no file`);
  for (const p of parts) {
    if (p === "." || p === "..") throw new CpioError(`cpio path "${path}" contains "${p}"`);
    if (p.includes("\0")) throw new CpioError(`cpio path "${path}" contains a NUL byte`);
  }
  const name = parts.join("/");
  if (name === TRAILER_NAME) throw new CpioError(`"${TRAILER_NAME}" is reserved for the archive trailer`);
  return name;
}

/**
 * Collects entries and serializes them as a newc archive. Inode numbers are assigned 1, 2, ... in the order
 * entries are added; device numbers of the archive members themselves are 0.
 */
export class CpioWriter {
  private readonly members: Member[] = [];
  private readonly names = new Set<string>();
  private readonly dirs = new Set<string>();
  private readonly defaults: Required<Omit<CpioWriterOptions, "createParents">>;
  private readonly createParents: boolean;

  constructor(opts: CpioWriterOptions = {}) {
    this.defaults = { mtime: opts.mtime ?? 0, uid: opts.uid ?? 0, gid: opts.gid ?? 0 };
    this.createParents = opts.createParents ?? true;
  }

  /** A directory (default mode 0755). */
  dir(path: string, opts: EntryOptions = {}): this {
    const name = normalizePath(path);
    this.add(name, S_IFDIR, opts.mode ?? 0o755, opts, new Uint8Array(0), 2);
    this.dirs.add(name);
    return this;
  }

  /** A regular file (default mode 0644); strings are written as UTF-8. */
  file(path: string, data: Uint8Array | string, opts: EntryOptions = {}): this {
    const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
    if (bytes.length > U32_MAX) throw new CpioError(`cpio file "${path}" is larger than 4 GiB - 1`);
    this.add(normalizePath(path), S_IFREG, opts.mode ?? 0o644, opts, bytes, 1);
    return this;
  }

  /** A symbolic link; the target is stored as the member's data (mode 0777). */
  symlink(path: string, target: string, opts: EntryOptions = {}): this {
    if (target === "" || target.includes("\0"))
      throw new CpioError(`symlink "${path}" needs a non-empty target`);
    this.add(normalizePath(path), S_IFLNK, opts.mode ?? 0o777, opts, new TextEncoder().encode(target), 1);
    return this;
  }

  /** A character device node, e.g. charDevice("/dev/console", 5, 1) (default mode 0600). */
  charDevice(path: string, major: number, minor: number, opts: EntryOptions = {}): this {
    this.add(normalizePath(path), S_IFCHR, opts.mode ?? 0o600, opts, new Uint8Array(0), 1, major, minor);
    return this;
  }

  /** A block device node (default mode 0600). */
  blockDevice(path: string, major: number, minor: number, opts: EntryOptions = {}): this {
    this.add(normalizePath(path), S_IFBLK, opts.mode ?? 0o600, opts, new Uint8Array(0), 1, major, minor);
    return this;
  }

  /** A named pipe (default mode 0644). */
  fifo(path: string, opts: EntryOptions = {}): this {
    this.add(normalizePath(path), S_IFIFO, opts.mode ?? 0o644, opts, new Uint8Array(0), 1);
    return this;
  }

  /** Number of members added so far (created parents included, trailer excluded). */
  get size(): number {
    return this.members.length;
  }

  private add(
    name: string,
    type: number,
    perm: number,
    opts: EntryOptions,
    data: Uint8Array,
    nlink: number,
    rdevMajor = 0,
    rdevMinor = 0,
  ): void {
    if (!Number.isInteger(perm) || perm < 0 || perm > 0o7777) {
      throw new CpioError(
        `mode 0o${perm.toString(8)} of "${name}" has bits outside the permission bits 07777`,
      );
    }
    if (this.names.has(name)) throw new CpioError(`cpio archive already has an entry "${name}"`);
    const slash = name.lastIndexOf("/");
    if (slash > 0) {
      const parent = name.slice(0, slash);
      if (!this.dirs.has(parent)) {
        if (this.names.has(parent)) throw new CpioError(`parent "${parent}" of "${name}" is not a directory`);
        if (!this.createParents)
          throw new CpioError(`parent directory "${parent}" of "${name}" was not added first`);
        this.dir(parent);
      }
    }
    const member: Member = {
      name,
      mode: type | perm,
      uid: opts.uid ?? this.defaults.uid,
      gid: opts.gid ?? this.defaults.gid,
      nlink,
      mtime: opts.mtime ?? this.defaults.mtime,
      data,
      rdevMajor,
      rdevMinor,
    };
    // Validate the numeric fields now, so the error names the entry that caused it.
    field(member.uid, `uid of "${name}"`);
    field(member.gid, `gid of "${name}"`);
    field(member.mtime, `mtime of "${name}"`);
    field(rdevMajor, `device major of "${name}"`);
    field(rdevMinor, `device minor of "${name}"`);
    this.members.push(member);
    this.names.add(name);
  }

  /** The uncompressed newc archive, trailer included. */
  toCpio(): Uint8Array {
    const enc = new TextEncoder();
    const chunks: Uint8Array[] = [];
    let total = 0;
    const push = (b: Uint8Array) => {
      chunks.push(b);
      total += b.length;
    };
    const emit = (m: Member, ino: number) => {
      const nameBytes = enc.encode(m.name);
      const namesize = nameBytes.length + 1;
      // The 13 fields in man 5 cpio order; c_check is 0 for "070701" (it is only used by "070702").
      const header =
        NEWC_MAGIC +
        field(ino, "inode") +
        field(m.mode, "mode") +
        field(m.uid, "uid") +
        field(m.gid, "gid") +
        field(m.nlink, "nlink") +
        field(m.mtime, "mtime") +
        field(m.data.length, "filesize") +
        field(0, "devmajor") +
        field(0, "devminor") +
        field(m.rdevMajor, "rdevmajor") +
        field(m.rdevMinor, "rdevminor") +
        field(namesize, "namesize") +
        field(0, "check");
      push(enc.encode(header));
      push(nameBytes);
      push(new Uint8Array(1 + pad4(NEWC_HEADER_SIZE + namesize)));
      if (m.data.length > 0) {
        push(m.data);
        push(new Uint8Array(pad4(m.data.length)));
      }
    };
    this.members.forEach((m, i) => {
      emit(m, i + 1);
    });
    emit(
      {
        name: TRAILER_NAME,
        mode: 0,
        uid: 0,
        gid: 0,
        nlink: 1,
        mtime: 0,
        data: new Uint8Array(0),
        rdevMajor: 0,
        rdevMinor: 0,
      },
      0,
    );
    const out = new Uint8Array(total);
    let at = 0;
    for (const c of chunks) {
      out.set(c, at);
      at += c.length;
    }
    return out;
  }

  /** The gzip-compressed archive, ready to load as an initrd. */
  toInitramfs(level = 6): Uint8Array {
    return new Uint8Array(gzipSync(this.toCpio(), { level }));
  }
}
