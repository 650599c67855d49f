/**
 * The source side of a live migration (docs/migration.md): pre-copy of guest RAM in rounds while the guest runs,
 * then stop, the last dirty pages and the machine's state, and the destination's answer.
 *
 * Dirty pages come from three logs: KVM's (KVM_MEM_LOG_DIRTY_PAGES on the RAM slot, read and cleared with
 * KVM_GET_DIRTY_LOG) for the vCPUs' writes, vireo's own (src/memory/device-page-log.ts) for its devices', and the
 * one vhost-user back-ends mark (PROTOCOL_F_LOG_SHMFD, src/vhost-user/dirty-log.ts) for theirs.
 * Round 1 sends every page that is not all zeros (the destination's RAM starts zeroed); each later round sends
 * the pages dirtied since the previous one was taken. When a round's pages would take less than the downtime
 * limit at the rate measured so far (or after maxRounds), the guest is stopped: vCPUs paused, data-plane threads
 * quiesced, state saved; the pages dirtied since, and every page of the devices' rings, go last, then the state,
 * then END. Until the destination answers ok nothing on the source has changed for good: on any failure dirty
 * logging is turned off and the guest resumed.
 */
import { createHash } from "node:crypto";
import { createConnection, type Socket } from "node:net";
import { VireoError } from "../../errors.ts";
import type { MemorySlot, Vm } from "../../kvm/vm.ts";
import { type DevicePageLog, forEachSetBit } from "../../memory/device-page-log.ts";
import { dataExtents } from "../snapshot/memory-file.ts";
import { encodeStateFile, type StateSection } from "../snapshot/state-file.ts";
import { describeEndpoint, type Endpoint } from "./endpoint.ts";
import { helloRecord, PAGE, PAGES_PER_RECORD, pagesRecord, preamble, RECORD, record } from "./stream.ts";

export const DEFAULT_DOWNTIME_MS = 300;
export const DEFAULT_MAX_ROUNDS = 30;

export interface MigrationOptions {
  downtimeMs: number;
  maxRounds: number;
  /** Send a SHA-256 of all of guest RAM with END; the destination refuses to start on a mismatch. */
  verify: boolean;
  /** How long to wait for the destination's answer after END (it builds the machine meanwhile). */
  replyTimeoutMs: number;
  /** Progress, a line per round and per step of the switch-over. */
  log?: (line: string) => void;
}

export interface RoundStats {
  pages: number;
  ms: number;
}

export interface MigrationResult {
  to: string;
  ramBytes: number;
  rounds: RoundStats[];
  /** Pages and bytes put on the wire, all rounds and the last one together. */
  pagesSent: number;
  bytesSent: number;
  /** The last round, sent with the guest stopped. */
  finalPages: number;
  converged: boolean;
  verified: boolean;
  /** From the guest's stop to the destination's ok. */
  downtimeMs: number;
  totalMs: number;
}

export interface MigrationSource {
  ram: Uint8Array;
  vm: Vm;
  /** The RAM's memory slot as registered, to register again with dirty logging on and off. */
  slot: MemorySlot;
  pageLog: DevicePageLog;
  /**
   * A third log, of writes made by other processes (vhost-user back-ends, src/vhost-user/dirty-log.ts): started
   * before the first round (resolves once every back-end logs), taken with the others, stopped after a failure.
   */
  externalLog?: { start(): Promise<void>; take(add: (page: number) => void): void; stop(): void };
  cpus: number;
  /** Stops the guest and its devices and saves the machine; also the pages the devices' rings are in. */
  stop(): Promise<{ sections: StateSection[]; ringPages: number[] }>;
  /** After a failure: lets the guest and devices run on (undoes stop). */
  resume(): void;
}

export class MigrationError extends VireoError {}

/** A connection with write backpressure and the destination's one-line answer. */
class Link {
  private failure: Error | null = null;
  private replyText = "";
  private replyWaiter: (() => void) | null = null;
  bytes = 0;

  private constructor(private readonly socket: Socket) {
    socket.on("error", (e) => this.fail(e));
    socket.on("close", () => this.fail(new Error("the destination closed the connection")));
    socket.on("data", (d: Buffer) => {
      this.replyText += d.toString("utf8");
      if (this.replyText.length > 65536) this.fail(new Error("the destination's answer is too long"));
      this.replyWaiter?.();
    });
  }

  static connect(to: Endpoint, timeoutMs: number): Promise<Link> {
    return new Promise((resolve, reject) => {
      const socket =
        to.kind === "unix"
          ? createConnection({ path: to.path })
          : createConnection({ host: to.host, port: to.port });
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new Error(`no connection within ${timeoutMs} ms`));
      }, timeoutMs);
      socket.once("error", (e) => {
        clearTimeout(timer);
        reject(e);
      });
      socket.once("connect", () => {
        clearTimeout(timer);
        socket.setNoDelay(true);
        resolve(new Link(socket));
      });
    });
  }

  private fail(e: Error): void {
    this.failure ??= e;
    this.replyWaiter?.();
  }

  async send(bufs: Buffer[]): Promise<void> {
    if (this.failure) throw this.failure;
    let ok = true;
    for (const b of bufs) {
      ok = this.socket.write(b);
      this.bytes += b.length;
    }
    if (!ok) {
      await new Promise<void>((resolve) => {
        const done = () => {
          this.socket.off("drain", done);
          this.socket.off("close", done);
          resolve();
        };
        this.socket.on("drain", done);
        this.socket.on("close", done);
      });
    }
    if (this.failure) throw this.failure;
  }

  /** The destination's answer line, parsed. */
  async reply(timeoutMs: number): Promise<{ ok: boolean; error?: string }> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const nl = this.replyText.indexOf("\n");
      if (nl >= 0) {
        try {
          const r = JSON.parse(this.replyText.slice(0, nl)) as { ok?: unknown; error?: unknown };
          return { ok: r.ok === true, error: typeof r.error === "string" ? r.error : undefined };
        } catch {
          throw new Error(
            `the destination answered something else than JSON: ${this.replyText.slice(0, 200)}`,
          );
        }
      }
      if (this.failure) throw this.failure;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`the destination did not answer within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.replyWaiter = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.replyWaiter = null;
    }
  }

  close(): void {
    this.socket.destroy();
  }
}

/** Sends `pages` (ascending page indices) in records of PAGES_PER_RECORD. */
async function sendPages(link: Link, ram: Uint8Array, pages: number[]): Promise<void> {
  for (let i = 0; i < pages.length; i += PAGES_PER_RECORD)
    await link.send(pagesRecord(ram, pages.slice(i, i + PAGES_PER_RECORD)));
}

/** Every page with a non-zero byte (the destination's RAM starts zeroed), found as the memory file finds them. */
function nonZeroPages(ram: Uint8Array): number[] {
  const out: number[] = [];
  for (const [offset, length] of dataExtents(ram))
    for (let p = offset / PAGE; p < (offset + length) / PAGE; p++) out.push(p);
  return out;
}

export async function migrate(
  to: Endpoint,
  opts: MigrationOptions,
  src: MigrationSource,
): Promise<MigrationResult> {
  const t0 = performance.now();
  const where = describeEndpoint(to);
  const ram = src.ram;
  const npages = ram.length / PAGE;
  const kvmBitmap = new BigUint64Array(Math.ceil(npages / 64));
  const dirty = new Uint8Array(npages);
  /** Takes both logs' pages (KVM's and the devices') plus `extra`, ascending, and clears the logs. */
  const takeDirty = (extra: readonly number[] = []): number[] => {
    src.vm.getDirtyLog(src.slot.slot, kvmBitmap);
    const out: number[] = [];
    const add = (p: number) => {
      if (p < npages && dirty[p] === 0) {
        dirty[p] = 1;
        out.push(p);
      }
    };
    forEachSetBit(kvmBitmap, add);
    src.pageLog.take(add);
    src.externalLog?.take(add);
    for (const p of extra) add(p);
    for (const p of out) dirty[p] = 0;
    return out.sort((a, b) => a - b);
  };

  let link: Link;
  try {
    link = await Link.connect(to, 30_000);
  } catch (e) {
    throw new MigrationError(
      "VIREO_MIGRATION_CONNECT",
      `cannot reach the destination ${where}: ${(e as Error).message}`,
    );
  }
  let logging = false;
  let stopped = false;
  let tStop = 0;
  try {
    await link.send([preamble(), ...helloRecord({ ramBytes: ram.length, cpus: src.cpus })]);
    src.vm.setUserMemoryRegion({ ...src.slot, logDirty: true });
    logging = true;
    src.pageLog.start();
    await src.externalLog?.start();
    src.vm.getDirtyLog(src.slot.slot, kvmBitmap); // from now on

    const rounds: RoundStats[] = [];
    let pagesSent = 0;
    let converged = false;
    let pages = nonZeroPages(ram);
    for (;;) {
      const tr = performance.now();
      await sendPages(link, ram, pages);
      const ms = performance.now() - tr;
      rounds.push({ pages: pages.length, ms: Math.round(ms * 10) / 10 });
      opts.log?.(`round ${rounds.length}: ${pages.length} pages sent in ${ms.toFixed(0)} ms`);
      pagesSent += pages.length;
      const elapsed = performance.now() - t0;
      const rate = (link.bytes / Math.max(elapsed, 1)) * 1000; // bytes/s so far
      pages = takeDirty();
      // The next round is about this size if the guest goes on dirtying at the same pace.
      if ((pages.length * PAGE * 1000) / rate <= opts.downtimeMs) {
        converged = true;
        break;
      }
      if (rounds.length >= opts.maxRounds) break;
    }

    opts.log?.(
      `${converged ? "" : `no convergence after ${rounds.length} rounds: `}stopping the guest with ${pages.length} pages dirty`,
    );
    tStop = performance.now();
    stopped = true;
    const { sections, ringPages } = await src.stop();
    const last = takeDirty([...pages, ...ringPages]);
    await sendPages(link, ram, last);
    opts.log?.(`guest stopped: ${last.length} pages sent with it, then its state`);
    pagesSent += last.length;
    await link.send(record(RECORD.state, encodeStateFile({ sections })));
    const hash = opts.verify ? createHash("sha256").update(ram).digest() : Buffer.alloc(0);
    await link.send(record(RECORD.end, hash));
    const answer = await link.reply(opts.replyTimeoutMs);
    if (!answer.ok)
      throw new MigrationError(
        "VIREO_MIGRATION_REFUSED",
        `the destination refused the migration: ${answer.error ?? "no reason given"}`,
      );
    const done = performance.now();
    return {
      to: where,
      ramBytes: ram.length,
      rounds,
      pagesSent,
      bytesSent: link.bytes,
      finalPages: last.length,
      converged,
      verified: opts.verify,
      downtimeMs: Math.round(done - tStop),
      totalMs: Math.round(done - t0),
    };
  } catch (e) {
    if (logging) {
      src.pageLog.stop();
      src.externalLog?.stop();
      try {
        src.vm.setUserMemoryRegion({ ...src.slot, logDirty: false });
      } catch {
        // The slot stays logged: harmless, only slower.
      }
    }
    if (stopped) src.resume();
    if (e instanceof VireoError) throw e;
    throw new MigrationError(
      "VIREO_MIGRATION_FAILED",
      `migration to ${where} failed: ${(e as Error).message}`,
    );
  } finally {
    link.close();
  }
}
