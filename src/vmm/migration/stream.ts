/**
 * The live-migration stream (docs/migration.md): what a source vireo sends a destination started with
 * `--incoming`, and the destination's incremental, checking reader of it.
 *
 *   preamble  "VIREOMIG" (8 bytes), u32 LE version (1), u32 LE flags (0)
 *   records   u8 type, 3 bytes 0, u32 LE payload length, payload
 *     HELLO  (1)  JSON { ramBytes, cpus }: first, once; the destination allocates guest RAM
 *     PAGES  (2)  u32 LE n (1..PAGES_PER_RECORD), n × u32 LE page index, n × 4096 bytes of page data
 *     STATE  (3)  a state file (src/vmm/snapshot/state-file.ts): vCPUs, irqchip, devices, machine; once
 *     END    (4)  32 bytes of SHA-256 over all of guest RAM as the source had it at switch-over, or 0 bytes
 *                 (no check); last
 *   reply     the destination answers one line of JSON: {"ok":true} once its vCPUs are ready to run, or
 *             {"ok":false,"error":"..."}; the source resumes its guest on anything but ok.
 *
 * The reader trusts nothing: the magic and version, record types and order, every length (a page record's exact
 * size, a state of at most MAX_STATE_BYTES), every page index against RAM; a stream that ends before END (cut
 * anywhere) is incomplete. Any of these is a MigrationStreamError, and nothing is started.
 */
import { VireoError } from "../../errors.ts";

export const MIGRATION_MAGIC = "VIREOMIG";
export const MIGRATION_VERSION = 1;
export const PAGE = 4096;
/** Pages per PAGES record: 1 MiB of data, so a record is buffered whole without much memory. */
export const PAGES_PER_RECORD = 256;
export const MAX_STATE_BYTES = 64 << 20;
const MAX_HELLO_BYTES = 4096;
export const RECORD = { hello: 1, pages: 2, state: 3, end: 4 } as const;
const PREAMBLE_BYTES = 16;
const HEADER_BYTES = 8;

export class MigrationStreamError extends VireoError {
  constructor(message: string, code = "VIREO_MIGRATION_STREAM") {
    super(code, message);
  }
}

export function preamble(): Buffer {
  const b = Buffer.alloc(PREAMBLE_BYTES);
  b.write(MIGRATION_MAGIC, 0, "latin1");
  b.writeUInt32LE(MIGRATION_VERSION, 8);
  return b;
}

export function record(type: number, payload: Uint8Array): Buffer[] {
  const h = Buffer.alloc(HEADER_BYTES);
  h.writeUInt8(type, 0);
  h.writeUInt32LE(payload.length, 4);
  return [h, Buffer.from(payload.buffer, payload.byteOffset, payload.length)];
}

export function helloRecord(hello: { ramBytes: number; cpus: number }): Buffer[] {
  return record(RECORD.hello, Buffer.from(JSON.stringify(hello)));
}

/**
 * A PAGES record of `pages` (indices, at most PAGES_PER_RECORD), their data copied from `ram` now: the copy is
 * what is sent, whatever the guest writes afterwards.
 */
export function pagesRecord(ram: Uint8Array, pages: readonly number[]): Buffer[] {
  const n = pages.length;
  if (n < 1 || n > PAGES_PER_RECORD) throw new RangeError(`pagesRecord: ${n} pages`);
  const payload = Buffer.allocUnsafe(4 + 4 * n + PAGE * n);
  payload.writeUInt32LE(n, 0);
  for (let i = 0; i < n; i++) {
    const p = pages[i] as number;
    payload.writeUInt32LE(p, 4 + 4 * i);
    payload.set(ram.subarray(p * PAGE, (p + 1) * PAGE), 4 + 4 * n + PAGE * i);
  }
  return record(RECORD.pages, payload);
}

export interface Hello {
  ramBytes: number;
  cpus: number;
}

/**
 * The destination's reader: feed it the bytes as they come (`push`); it asks for guest RAM once it knows the size
 * (`allocate`, which returns the RAM's bytes), writes pages into it, and once END has come `done` holds the state
 * file's bytes and the source's RAM hash. `finish()` says whether the stream was whole.
 */
export class MigrationReceiver {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private sawPreamble = false;
  private hello: Hello | null = null;
  private ram: Uint8Array | null = null;
  private state: Uint8Array | null = null;
  done: { hello: Hello; state: Uint8Array; ramSha256: Uint8Array | null } | null = null;
  readonly stats = { records: 0, pages: 0, bytes: 0 };

  constructor(
    private readonly allocate: (hello: Hello) => Uint8Array,
    private readonly limits: { maxRamBytes: number; maxCpus: number },
  ) {}

  push(chunk: Uint8Array): void {
    if (this.done) throw new MigrationStreamError("data after the end of the migration stream");
    this.stats.bytes += chunk.length;
    if (chunk.length === 0) return;
    this.pending.push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length));
    this.pendingBytes += chunk.length;
    for (;;) {
      if (!this.sawPreamble) {
        if (!this.preambleSoFar()) return;
        this.sawPreamble = true;
        this.consume(PREAMBLE_BYTES);
      }
      const head = this.peek(HEADER_BYTES + 4);
      if (head === null && this.pendingBytes < HEADER_BYTES) return;
      const h = head ?? (this.peek(HEADER_BYTES) as Buffer);
      const type = h.readUInt8(0);
      if (h[1] !== 0 || h[2] !== 0 || h[3] !== 0)
        throw new MigrationStreamError(`record ${this.stats.records}: reserved header bytes are not 0`);
      const len = h.readUInt32LE(4);
      this.checkLength(type, len, head === null ? null : head.readUInt32LE(HEADER_BYTES));
      const whole = this.peek(HEADER_BYTES + len);
      if (whole === null) return;
      const payload = whole.subarray(HEADER_BYTES, HEADER_BYTES + len);
      this.record(type, payload);
      this.consume(HEADER_BYTES + len);
      this.stats.records++;
      if (this.done) {
        if (this.pendingBytes > 0)
          throw new MigrationStreamError("data after the end of the migration stream");
        return;
      }
    }
  }

  /** The first n pending bytes as one buffer (chunks joined only when a record spans them), or null. */
  private peek(n: number): Buffer | null {
    if (this.pendingBytes < n) return null;
    const first = this.pending[0] as Buffer;
    if (first.length >= n) return first;
    const joined = Buffer.concat(this.pending, this.pendingBytes);
    this.pending = [joined];
    return joined;
  }

  private consume(n: number): void {
    this.pendingBytes -= n;
    while (n > 0) {
      const first = this.pending[0] as Buffer;
      if (first.length <= n) {
        this.pending.shift();
        n -= first.length;
      } else {
        this.pending[0] = first.subarray(n);
        n = 0;
      }
    }
  }

  /** The stream ended (the connection closed): throws unless END came. */
  finish(): NonNullable<MigrationReceiver["done"]> {
    if (this.done) return this.done;
    const where = this.hello === null ? "before HELLO" : this.state === null ? "before STATE" : "before END";
    throw new MigrationStreamError(
      `the migration stream ended ${where} (after ${this.stats.records} records, ${this.stats.bytes} bytes)`,
      "VIREO_MIGRATION_INCOMPLETE",
    );
  }

  /** Whether the buffered bytes start a valid preamble and it is whole (throws on a wrong one). */
  private preambleSoFar(): boolean {
    const have = this.peek(Math.min(this.pendingBytes, PREAMBLE_BYTES)) as Buffer;
    const n = Math.min(have.length, 8);
    if (have.subarray(0, n).toString("latin1") !== MIGRATION_MAGIC.slice(0, n))
      throw new MigrationStreamError("not a vireo migration stream (bad magic)");
    if (this.pendingBytes < PREAMBLE_BYTES) return false;
    const version = have.readUInt32LE(8);
    if (version !== MIGRATION_VERSION)
      throw new MigrationStreamError(
        `migration stream version ${version}; this vireo reads version ${MIGRATION_VERSION}`,
        "VIREO_MIGRATION_VERSION",
      );
    if (have.readUInt32LE(12) !== 0) throw new MigrationStreamError("preamble flags are not 0");
    return true;
  }

  /** `first`: a PAGES record's page count, if it is buffered yet. */
  private checkLength(type: number, len: number, first: number | null): void {
    const at = `record ${this.stats.records}`;
    switch (type) {
      case RECORD.hello:
        if (len < 2 || len > MAX_HELLO_BYTES) throw new MigrationStreamError(`${at}: HELLO of ${len} bytes`);
        return;
      case RECORD.pages: {
        if (len < 4 + 4 + PAGE || len > 4 + PAGES_PER_RECORD * (4 + PAGE))
          throw new MigrationStreamError(`${at}: PAGES of ${len} bytes`);
        if (first !== null && (first < 1 || first > PAGES_PER_RECORD || len !== 4 + first * (4 + PAGE)))
          throw new MigrationStreamError(`${at}: PAGES says ${first} pages in ${len} bytes`);
        return;
      }
      case RECORD.state:
        if (len < 1 || len > MAX_STATE_BYTES) throw new MigrationStreamError(`${at}: STATE of ${len} bytes`);
        return;
      case RECORD.end:
        if (len !== 0 && len !== 32) throw new MigrationStreamError(`${at}: END of ${len} bytes`);
        return;
      default:
        throw new MigrationStreamError(`${at}: unknown record type ${type}`);
    }
  }

  private record(type: number, payload: Buffer): void {
    const at = `record ${this.stats.records}`;
    if (type !== RECORD.hello && this.hello === null)
      throw new MigrationStreamError(`${at}: the stream does not start with HELLO`);
    switch (type) {
      case RECORD.hello: {
        if (this.hello !== null) throw new MigrationStreamError(`${at}: a second HELLO`);
        let h: unknown;
        try {
          h = JSON.parse(payload.toString("utf8"));
        } catch {
          throw new MigrationStreamError(`${at}: HELLO is not JSON`);
        }
        const { ramBytes, cpus } = (h ?? {}) as Record<string, unknown>;
        if (
          typeof ramBytes !== "number" ||
          !Number.isSafeInteger(ramBytes) ||
          ramBytes < 1 << 20 ||
          ramBytes > this.limits.maxRamBytes ||
          ramBytes % (1 << 20) !== 0
        )
          throw new MigrationStreamError(
            `${at}: HELLO ramBytes ${String(ramBytes)} is not a RAM size vireo can have`,
          );
        if (typeof cpus !== "number" || !Number.isInteger(cpus) || cpus < 1 || cpus > this.limits.maxCpus)
          throw new MigrationStreamError(`${at}: HELLO cpus ${String(cpus)}`);
        this.hello = { ramBytes, cpus };
        this.ram = this.allocate(this.hello);
        if (this.ram.length !== ramBytes) throw new Error("allocate returned RAM of another size");
        return;
      }
      case RECORD.pages: {
        if (this.state !== null) throw new MigrationStreamError(`${at}: PAGES after STATE`);
        const ram = this.ram as Uint8Array;
        const n = payload.readUInt32LE(0);
        const pages = ram.length / PAGE;
        for (let i = 0; i < n; i++) {
          const p = payload.readUInt32LE(4 + 4 * i);
          if (p >= pages)
            throw new MigrationStreamError(`${at}: page ${p} is outside guest RAM (${pages} pages)`);
        }
        const data = 4 + 4 * n;
        for (let i = 0; i < n; i++) {
          const p = payload.readUInt32LE(4 + 4 * i);
          ram.set(payload.subarray(data + PAGE * i, data + PAGE * (i + 1)), p * PAGE);
        }
        this.stats.pages += n;
        return;
      }
      case RECORD.state:
        if (this.state !== null) throw new MigrationStreamError(`${at}: a second STATE`);
        this.state = Uint8Array.from(payload);
        return;
      case RECORD.end:
        if (this.state === null) throw new MigrationStreamError(`${at}: END before STATE`);
        this.done = {
          hello: this.hello as Hello,
          state: this.state,
          ramSha256: payload.length === 32 ? Uint8Array.from(payload) : null,
        };
        return;
    }
  }
}
