/**
 * Capture of a switch port's frames to a file in the classic libpcap format (pcap-savefile(5); IETF draft
 * "PCAP Capture File Format"), which tcpdump -r and Wireshark read.
 *
 * The file is a 24-byte header (magic 0xa1b2c3d4: microsecond timestamps, version 2.4, snaplen, link type 1 =
 * Ethernet) then one record per frame: a 16-byte header (seconds, microseconds, captured length, original length)
 * and the first `snaplen` bytes of the frame. Fields are little endian (readers take the byte order from the
 * magic).
 *
 * Records go into a preallocated buffer, written out with one write(2) when it is full or on flush(), so a frame
 * costs a copy and no allocation (as long as frames come from the same array, as the switch's slab does). With `maxBytes`, a file never grows past that size:
 *   - files = 1 (default): frames that no longer fit are counted as dropped, never written in part;
 *   - files = N > 1: the full file is rotated: FILE.(N-2) becomes FILE.(N-1) (the oldest, FILE.(N-1), is
 *     removed), ..., FILE becomes FILE.1, and a new FILE starts. FILE is always the newest, FILE.(N-1) the oldest.
 * A frame too big for even an empty file (header + record > maxBytes) is dropped.
 */
import { closeSync, openSync, renameSync, rmSync, writeSync } from "node:fs";
import { VireoError } from "../errors.ts";

export const PCAP_MAGIC_USEC = 0xa1b2c3d4;
export const PCAP_VERSION_MAJOR = 2;
export const PCAP_VERSION_MINOR = 4;
export const LINKTYPE_ETHERNET = 1;
export const PCAP_FILE_HEADER = 24;
export const PCAP_RECORD_HEADER = 16;
export const DEFAULT_SNAPLEN = 65535;
/** libpcap's own largest snaplen (MAXIMUM_SNAPLEN). */
export const MAX_SNAPLEN = 262144;
const BUFFER_BYTES = 256 * 1024;
const MAX_FILES = 1000;

export interface PcapOptions {
  /** Largest size of one file, header included. Default: no cap. */
  maxBytes?: number;
  /** How many files to rotate over when maxBytes is reached (1: stop capturing, count drops). Default 1. */
  files?: number;
  /** Bytes kept of each frame (the rest is counted in the record's original length). Default 65535. */
  snaplen?: number;
  /**
   * Wall-clock milliseconds at which the `nowMs` clock read 0. Default performance.timeOrigin, so that nowMs
   * from performance.now() becomes the Unix time the pcap records carry. (Tests pass 0 and Unix milliseconds.)
   */
  timeOriginMs?: number;
}

export interface PcapStats {
  /** Frames written (in all files). */
  frames: number;
  /** Bytes written to files, headers included. */
  bytes: number;
  /** Files started (1 + rotations). */
  files: number;
  /** Frames not written: past the cap with files = 1, too big for a file, or after an I/O error or close. */
  dropped: number;
  /** The I/O error that stopped the capture, if any. */
  error: string | null;
}

export class PcapError extends VireoError {
  constructor(message: string, options?: { cause?: unknown }) {
    super("VIREO_SWITCH_PCAP", `pcap: ${message}`, options);
  }
}

function intOption(name: string, v: number | undefined, min: number, max: number, dflt: number): number {
  if (v === undefined) return dflt;
  if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max)
    throw new PcapError(`${name} must be an integer from ${min} to ${max}, got ${JSON.stringify(v)}`);
  return v;
}

export class PcapWriter {
  readonly path: string;
  readonly maxBytes: number;
  readonly files: number;
  readonly snaplen: number;
  private readonly timeOrigin: number;
  private readonly buf: Uint8Array;
  private readonly view: DataView;
  // Fields start as numbers so that V8 keeps them unboxed (see rate-limit.ts).
  private fd = -1;
  /** Bytes in `buf` not yet written. */
  private used = 0;
  /** Size of the current file including what is still buffered. */
  private fileBytes = 0;
  private nFrames = 0;
  private nBytes = 0;
  private nFiles = 0;
  private nDropped = 0;
  private error: string | null = null;
  private closed = false;
  /** The last source array and a view of it (see copy()). */
  private src: Uint8Array = new Uint8Array(0);
  private srcView: DataView = new DataView(new ArrayBuffer(0));

  constructor(path: string, opts: PcapOptions = {}) {
    this.path = path;
    this.snaplen = intOption("snaplen", opts.snaplen, 1, MAX_SNAPLEN, DEFAULT_SNAPLEN);
    // The smallest cap holds the file header and one minimal (60-byte) frame.
    this.maxBytes =
      opts.maxBytes === undefined
        ? Number.POSITIVE_INFINITY
        : intOption(
            "maxBytes",
            opts.maxBytes,
            PCAP_FILE_HEADER + PCAP_RECORD_HEADER + 60,
            Number.MAX_SAFE_INTEGER,
            0,
          );
    this.files = intOption("files", opts.files, 1, MAX_FILES, 1);
    this.timeOrigin = opts.timeOriginMs ?? performance.timeOrigin;
    if (!Number.isFinite(this.timeOrigin)) throw new PcapError("timeOriginMs must be a finite number");
    this.buf = new Uint8Array(Math.max(BUFFER_BYTES, PCAP_FILE_HEADER + PCAP_RECORD_HEADER + this.snaplen));
    this.view = new DataView(this.buf.buffer);
    this.startFile();
  }

  /** Name of rotated file i (0 is the current one). */
  fileName(i: number): string {
    return i === 0 ? this.path : `${this.path}.${i}`;
  }

  private startFile(): void {
    try {
      this.fd = openSync(this.path, "w", 0o644);
    } catch (e) {
      throw new PcapError(`cannot create ${this.path}: ${(e as Error).message}`, { cause: e });
    }
    this.nFiles++;
    // pcap-savefile(5): magic, major, minor, two reserved words (0), snaplen, link type.
    const v = this.view;
    const p = this.used;
    v.setUint32(p, PCAP_MAGIC_USEC, true);
    v.setUint16(p + 4, PCAP_VERSION_MAJOR, true);
    v.setUint16(p + 6, PCAP_VERSION_MINOR, true);
    v.setUint32(p + 8, 0, true);
    v.setUint32(p + 12, 0, true);
    v.setUint32(p + 16, this.snaplen, true);
    v.setUint32(p + 20, LINKTYPE_ETHERNET, true);
    this.used += PCAP_FILE_HEADER;
    this.fileBytes = PCAP_FILE_HEADER;
  }

  /** Captures bytes [off, off+len) of `bytes` as one frame seen at `nowMs` (performance.now() style). */
  write(bytes: Uint8Array, off: number, len: number, nowMs: number): void {
    if (this.closed) {
      this.nDropped++;
      return;
    }
    // Never read outside the array, whatever the caller says.
    const avail = off >= 0 && off <= bytes.length ? Math.min(len, bytes.length - off) : 0;
    const incl = Math.max(0, Math.min(avail, this.snaplen));
    const rec = PCAP_RECORD_HEADER + incl;
    if (this.fileBytes + rec > this.maxBytes) {
      if (this.files === 1 || PCAP_FILE_HEADER + rec > this.maxBytes) {
        this.nDropped++;
        return;
      }
      if (!this.rotate()) {
        this.nDropped++;
        return;
      }
    }
    if (this.used + rec > this.buf.length && !this.writeOut()) {
      this.nDropped++;
      return;
    }
    const ms = this.timeOrigin + nowMs;
    let sec = Math.floor(ms / 1000);
    let usec = Math.floor((ms - sec * 1000) * 1000);
    if (usec > 999_999) usec = 999_999;
    if (usec < 0) usec = 0;
    if (sec < 0) sec = 0;
    const v = this.view;
    const p = this.used;
    v.setUint32(p, sec >>> 0, true);
    v.setUint32(p + 4, usec, true);
    v.setUint32(p + 8, incl, true);
    v.setUint32(p + 12, Math.max(0, len) >>> 0, true);
    this.copy(bytes, off, p + PCAP_RECORD_HEADER, incl);
    this.used += rec;
    this.fileBytes += rec;
    this.nFrames++;
  }

  /**
   * Copies n bytes of `bytes` from `off` into the buffer at `d`, four at a time through a DataView (a byte loop
   * over guest memory, a SharedArrayBuffer, costs about 4x more; TypedArray.set would need a subarray view, an
   * allocation per frame). The view is made once per source array: the switch always captures from its slab.
   */
  private copy(bytes: Uint8Array, off: number, d: number, n: number): void {
    if (bytes !== this.src) {
      this.src = bytes;
      this.srcView = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    }
    const sv = this.srcView;
    const v = this.view;
    let i = 0;
    for (; i + 4 <= n; i += 4) v.setUint32(d + i, sv.getUint32(off + i));
    const b = this.buf;
    for (; i < n; i++) b[d + i] = bytes[off + i] as number;
  }

  /** Writes out what is buffered. False (and capture stopped) on an I/O error. */
  private writeOut(): boolean {
    let done = 0;
    try {
      while (done < this.used) done += writeSync(this.fd, this.buf, done, this.used - done);
    } catch (e) {
      this.fail(e);
      return false;
    }
    this.nBytes += this.used;
    this.used = 0;
    return true;
  }

  private rotate(): boolean {
    if (!this.writeOut()) return false;
    try {
      closeSync(this.fd);
      this.fd = -1;
      rmSync(this.fileName(this.files - 1), { force: true });
      for (let i = this.files - 2; i >= 0; i--) {
        try {
          renameSync(this.fileName(i), this.fileName(i + 1));
        } catch (e) {
          // A file missing from the middle (removed by hand) leaves a gap, nothing more.
          if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
        }
      }
      this.startFile();
    } catch (e) {
      this.fail(e);
      return false;
    }
    return true;
  }

  /** An I/O error ends the capture: the data path must not throw for it. */
  private fail(e: unknown): void {
    this.error = (e as Error).message;
    this.used = 0;
    this.closed = true;
    if (this.fd >= 0) {
      try {
        closeSync(this.fd);
      } catch {}
      this.fd = -1;
    }
  }

  /** Writes buffered frames to the file (the switch's control flushes every capture once a second, and on stop). */
  flush(): void {
    if (!this.closed && this.used > 0) this.writeOut();
  }

  close(): void {
    if (this.closed) return;
    this.flush();
    if (this.fd >= 0) {
      try {
        closeSync(this.fd);
      } catch {}
      this.fd = -1;
    }
    this.closed = true;
  }

  stats(): PcapStats {
    return {
      frames: this.nFrames,
      bytes: this.nBytes + this.used,
      files: this.nFiles,
      dropped: this.nDropped,
      error: this.error,
    };
  }
}
