/**
 * A BlockBackend on a raw image file, with synchronous `fs` calls on one file descriptor. The descriptor is a
 * process-wide number: worker threads of the same process can use the same one (pass `fd` instead of `path`).
 *
 * O_DIRECT (`direct: true`) bypasses the host page cache. Direct I/O needs buffers and offsets aligned to the
 * file system's logical block size, which guest buffers need not be, and some file systems (tmpfs) refuse it:
 * an access the kernel refuses with EINVAL is retried through a second, buffered descriptor, and opening falls
 * back to buffered I/O if O_DIRECT is refused (`direct` then reads false).
 */
import {
  closeSync,
  constants,
  fdatasyncSync,
  fstatSync,
  ftruncateSync,
  openSync,
  readSync,
  writeSync,
} from "node:fs";
import { type BlockBackend, BlockIoError, checkRange } from "./backend.ts";

export interface FileBlockBackendOptions {
  /** Open the file read-only (and refuse writes). */
  readOnly?: boolean;
  /** Try O_DIRECT. */
  direct?: boolean;
}

/** Bytes written per call by writeZeroes. */
const ZERO_CHUNK = 1 << 20;

function errno(e: unknown): string | undefined {
  return typeof e === "object" && e !== null && "code" in e
    ? String((e as { code: unknown }).code)
    : undefined;
}

export class FileBlockBackend implements BlockBackend {
  readonly size: number;
  readonly readOnly: boolean;
  /** Whether the main descriptor uses O_DIRECT. */
  readonly direct: boolean;
  /** There is no hole punching through `fs`: discard is accepted and does nothing (5.2.6.2: "MAY deallocate"). */
  readonly canDiscard = false;
  readonly path: string | undefined;
  private fd: number;
  /** A buffered descriptor for accesses O_DIRECT refuses (only with `direct`). */
  private bufferedFd: number | null = null;
  private readonly ownsFd: boolean;
  private zeroes: Uint8Array | null = null;

  /** Opens `path` (which must exist; its size is the disk size). */
  static open(path: string, opts: FileBlockBackendOptions = {}): FileBlockBackend {
    const readOnly = opts.readOnly ?? false;
    const base = readOnly ? constants.O_RDONLY : constants.O_RDWR;
    let fd: number;
    let direct = false;
    if (opts.direct && constants.O_DIRECT !== undefined) {
      try {
        fd = openSync(path, base | constants.O_DIRECT);
        direct = true;
      } catch (e) {
        if (errno(e) !== "EINVAL") throw new BlockIoError(`cannot open ${path}: ${String(e)}`, { cause: e });
        fd = openSync(path, base);
      }
    } else {
      try {
        fd = openSync(path, base);
      } catch (e) {
        throw new BlockIoError(`cannot open ${path}: ${String(e)}`, { cause: e });
      }
    }
    const b = new FileBlockBackend(fd, { readOnly, ownsFd: true, path, direct });
    if (direct) b.bufferedFd = openSync(path, base);
    return b;
  }

  /** Creates (or truncates) a sparse image of `size` bytes and opens it. */
  static create(path: string, size: number, opts: FileBlockBackendOptions = {}): FileBlockBackend {
    const fd = openSync(path, "w");
    try {
      ftruncateSync(fd, size);
    } finally {
      closeSync(fd);
    }
    return FileBlockBackend.open(path, opts);
  }

  /** Over an open descriptor (e.g. one another thread opened). */
  constructor(
    fd: number,
    opts: FileBlockBackendOptions & { ownsFd?: boolean; path?: string; size?: number } = {},
  ) {
    this.fd = fd;
    this.readOnly = opts.readOnly ?? false;
    this.direct = opts.direct ?? false;
    this.ownsFd = opts.ownsFd ?? false;
    this.path = opts.path;
    this.size = opts.size ?? fstatSync(fd).size;
  }

  /** The main descriptor (to hand to another thread's FileBlockBackend). */
  get descriptor(): number {
    return this.fd;
  }

  /** With O_DIRECT, the buffered descriptor for accesses O_DIRECT refuses (else null). */
  get bufferedDescriptor(): number | null {
    return this.bufferedFd;
  }

  read(offset: number, dst: Uint8Array): void {
    checkRange("read", offset, dst.length, this.size);
    this.io("read", offset, dst, (fd, at, buf) => readSync(fd, buf, 0, buf.length, at));
  }

  write(offset: number, src: Uint8Array): void {
    this.writable("write");
    checkRange("write", offset, src.length, this.size);
    this.io("write", offset, src, (fd, at, buf) => writeSync(fd, buf, 0, buf.length, at));
  }

  flush(): void {
    try {
      fdatasyncSync(this.fd);
      if (this.bufferedFd !== null) fdatasyncSync(this.bufferedFd);
    } catch (e) {
      throw new BlockIoError(`flush: ${String(e)}`, { cause: e });
    }
  }

  discard(offset: number, length: number): void {
    this.writable("discard");
    checkRange("discard", offset, length, this.size);
  }

  writeZeroes(offset: number, length: number, _mayUnmap: boolean): void {
    this.writable("write zeroes");
    checkRange("write zeroes", offset, length, this.size);
    this.zeroes ??= new Uint8Array(ZERO_CHUNK);
    for (let done = 0; done < length; ) {
      const n = Math.min(ZERO_CHUNK, length - done);
      this.write(offset + done, this.zeroes.subarray(0, n));
      done += n;
    }
  }

  close(): void {
    if (!this.ownsFd) return;
    if (this.fd >= 0) closeSync(this.fd);
    if (this.bufferedFd !== null) closeSync(this.bufferedFd);
    this.fd = -1;
    this.bufferedFd = null;
  }

  private writable(what: string): void {
    if (this.readOnly) throw new BlockIoError(`${what}: the disk is read-only`);
  }

  /** Loops over short transfers; an EINVAL from O_DIRECT retries on the buffered descriptor. */
  private io(
    what: string,
    offset: number,
    buf: Uint8Array,
    op: (fd: number, at: number, part: Uint8Array) => number,
  ): void {
    let done = 0;
    let fd = this.fd;
    while (done < buf.length) {
      let n: number;
      try {
        n = op(fd, offset + done, buf.subarray(done));
      } catch (e) {
        if (errno(e) === "EINVAL" && this.bufferedFd !== null && fd !== this.bufferedFd) {
          fd = this.bufferedFd;
          continue;
        }
        throw new BlockIoError(`${what} at ${offset + done}: ${String(e)}`, { cause: e });
      }
      if (n <= 0) {
        // A read past the end of a file that shrank underneath us: the rest reads as zeroes.
        if (what === "read") {
          buf.fill(0, done);
          return;
        }
        throw new BlockIoError(`${what} at ${offset + done}: no progress`);
      }
      done += n;
    }
  }
}
