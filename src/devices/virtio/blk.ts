/**
 * virtio-blk, the block device (OASIS virtio 1.2, 5.2 Block Device), over a BlockBackend (src/block).
 *
 * Requests: IN, OUT, FLUSH, GET_ID, DISCARD, WRITE_ZEROES; anything else completes with VIRTIO_BLK_S_UNSUPP.
 * Requests are served on the thread that handles the queue notification, data moving straight between the
 * backend and guest memory (no copy through the host heap), within the device's work budget (work-budget.ts): an
 * IN or OUT larger than what is left of the slice moves part of its data and is continued in the next slice
 * (IN_PROGRESS), so a request of gigabytes on a large sparse disk costs one slice per notification, never one
 * blocking call. With VIRTIO_BLK_F_MQ every queue has its own lock, so several threads can serve several queues
 * at once.
 *
 * With an I/O pool (`io`, src/block/io-pool.ts: worker threads doing preadv/pwritev on guest memory) reads,
 * writes and flushes are handed to the pool instead (DETACHED) and many are at the disk at once; each is used
 * when it ends, in whatever order they end (2.7.8 / 2.7.13: the device may use buffers in any order). The
 * guest ranges are checked here before a job names them. A FLUSH waits for every write in flight when it
 * arrives, then runs fdatasync: a flush covers at least every write completed before it. A request the pool
 * cannot take (every slot busy, more segments than a job holds, a range outside guest memory) is served on this
 * thread as without a pool. The host waits for the pool's requests before it stops a ring (settleDetached).
 *
 * What the driver got wrong decides the outcome:
 * - a request the device can answer (unknown type, sector beyond capacity, length not a multiple of 512, a
 *   write to a read-only disk, bad discard segments) completes with VIRTIO_BLK_S_IOERR or _UNSUPP (5.2.6.2);
 * - a request that cannot be framed (header shorter than 16 bytes, no device-writable status byte, data in the
 *   wrong direction for its type) is a broken driver: the device sets DEVICE_NEEDS_RESET.
 */
import type { BlockBackend } from "../../block/backend.ts";
import type { BlockIoOwner, BlockIoPool } from "../../block/io-pool.ts";
import { NO_COUNTER } from "../../metrics/registry.ts";
import { featureBit, hasFeature, VIRTIO_ID } from "./constants.ts";
import { type VirtioContext, type VirtioDeviceModel, VirtioRequestError } from "./device.ts";
import type { BufferSegment, DescriptorChain } from "./queue/index.ts";
import { type ChainResult, DETACHED, IN_PROGRESS, type WorkBudget } from "./work-budget.ts";

/** Feature bits (5.2.3). */
export const VIRTIO_BLK_F = {
  SIZE_MAX: 1,
  SEG_MAX: 2,
  GEOMETRY: 4,
  RO: 5,
  BLK_SIZE: 6,
  FLUSH: 9,
  TOPOLOGY: 10,
  CONFIG_WCE: 11,
  MQ: 12,
  DISCARD: 13,
  WRITE_ZEROES: 14,
} as const;

/** Request types (5.2.6). */
export const VIRTIO_BLK_T = {
  IN: 0,
  OUT: 1,
  FLUSH: 4,
  GET_ID: 8,
  GET_LIFETIME: 10,
  DISCARD: 11,
  WRITE_ZEROES: 13,
  SECURE_ERASE: 14,
} as const;

/** Status values (5.2.6). */
export const VIRTIO_BLK_S = { OK: 0, IOERR: 1, UNSUPP: 2 } as const;

/** Offsets in struct virtio_blk_config (5.2.4). */
export const BLK_CONFIG = {
  CAPACITY: 0,
  SIZE_MAX: 8,
  SEG_MAX: 12,
  GEOMETRY: 16,
  BLK_SIZE: 20,
  TOPOLOGY: 24,
  WRITEBACK: 32,
  NUM_QUEUES: 34,
  MAX_DISCARD_SECTORS: 36,
  MAX_DISCARD_SEG: 40,
  DISCARD_SECTOR_ALIGNMENT: 44,
  MAX_WRITE_ZEROES_SECTORS: 48,
  MAX_WRITE_ZEROES_SEG: 52,
  WRITE_ZEROES_MAY_UNMAP: 56,
  SIZE: 60,
} as const;

export const SECTOR_SIZE = 512;
/** struct virtio_blk_req header: type, reserved, sector. */
const HEADER_SIZE = 16;
/** struct virtio_blk_discard_write_zeroes. */
const SEGMENT_SIZE = 16;
const ID_BYTES = 20;
const UNMAP_FLAG = 1;

export interface VirtioBlkOptions {
  backend: BlockBackend;
  /** Used in metric names and logs; default "blk0". */
  name?: string;
  /** Request queues; more than one offers VIRTIO_BLK_F_MQ. Default 1. */
  numQueues?: number;
  /** Queue Size offered; default 256. */
  queueSize?: number;
  /** The GET_ID string (at most 20 ASCII bytes); default the name. */
  serial?: string;
  /**
   * size_max (VIRTIO_BLK_F_SIZE_MAX), the longest data segment a request may have; default 1 MiB. With seg_max it
   * bounds a request (a read or write naming longer segments completes with IOERR).
   */
  sizeMax?: number;
  /** blk_size (VIRTIO_BLK_F_BLK_SIZE); default 512. */
  blockSize?: number;
  /**
   * max_discard_sectors / max_write_zeroes_sectors per segment; default 65536 sectors (32 MiB) for discard (the
   * file backend's discard does no I/O) and 2048 (1 MiB) for write zeroes, which writes every byte and is
   * served in one piece, so it must fit a slice of work.
   */
  maxDiscardSectors?: number;
  maxWriteZeroesSectors?: number;
  /** max_discard_seg / max_write_zeroes_seg; default 1. */
  maxDiscardSegments?: number;
  maxWriteZeroesSegments?: number;
  /**
   * Worker threads for reads, writes and flushes (only over a SharedArrayBuffer guest memory): the completions
   * arrive through the pool's completionFd, which the host polls and reaps (BlockIoPool.reap). Only for one
   * thread serving every queue (the pool's owner).
   */
  io?: BlockIoPool;
}

/** A FLUSH waiting for the writes in flight when it arrived. */
interface WaitingFlush {
  q: number;
  chain: DescriptorChain;
  status: Segments;
  /** The newest write sequence number it must wait for. */
  upTo: number;
}

/** The least data a continued IN or OUT moves per slice. */
const SLICE_MIN_BYTES = 64 * 1024;

/** An IN or OUT whose data is moving, kept across slices (per thread: the queue object that popped it). */
interface Transfer {
  isRead: boolean;
  /** Disk byte offset of the request's first sector. */
  disk: number;
  length: number;
  /** Bytes moved so far. */
  done: number;
  /** Where the data is: the writable part (IN) or the readable part after the header (OUT, from `skip`). */
  data: Segments;
  skip: number;
  /** The writable part, whose last byte is the status. */
  status: Segments;
}

export class VirtioBlk implements VirtioDeviceModel, BlockIoOwner {
  readonly type = VIRTIO_ID.BLOCK;
  readonly name: string;
  readonly numQueues: number;
  readonly maxQueueSize: number;
  readonly features: bigint;
  readonly configSize = BLK_CONFIG.SIZE;
  readonly stateBytes = 0;
  readonly backend: BlockBackend;
  private readonly serial: Uint8Array;
  private readonly capacity: number;
  private readonly blockSize: number;
  private readonly sizeMax: number;
  private readonly maxDiscardSectors: number;
  private readonly maxWriteZeroesSectors: number;
  private readonly maxDiscardSeg: number;
  private readonly maxWriteZeroesSeg: number;
  private readonly config: Uint8Array;
  private ctx!: VirtioContext;
  /** Requests continued across slices; a request dropped with its queue (reset) is collected with its chain. */
  private readonly transfers = new WeakMap<DescriptorChain, Transfer>();
  private readonly io: BlockIoPool | undefined;
  /** The guest memory's id in the pool (-1: no pool, or memory the workers cannot share). */
  private memId = -1;
  /** Per queue: requests with the pool, and finished ones to return at the end of the reap. */
  private readonly outstanding: number[];
  private readonly finished: Array<Array<{ chain: DescriptorChain; written: number }>>;
  /** Writes with the pool, by sequence number (ascending: a Set keeps insertion order). */
  private writeSeq = 0;
  private readonly writesInFlight = new Set<number>();
  private readonly waitingFlushes: WaitingFlush[] = [];
  /** Scratch for each request's header and status byte (copied at once; a model object serves one thread). */
  private readonly header = new Uint8Array(HEADER_SIZE);
  private readonly headerView = new DataView(this.header.buffer);
  private readonly statusByte = new Uint8Array(1);
  private c = {
    requests: NO_COUNTER,
    readBytes: NO_COUNTER,
    writtenBytes: NO_COUNTER,
    flushes: NO_COUNTER,
    ioErrors: NO_COUNTER,
    unsupported: NO_COUNTER,
  };

  constructor(opts: VirtioBlkOptions) {
    this.backend = opts.backend;
    this.name = opts.name ?? "blk0";
    this.numQueues = Math.max(1, Math.floor(opts.numQueues ?? 1));
    this.maxQueueSize = opts.queueSize ?? 256;
    this.capacity = Math.floor(this.backend.size / SECTOR_SIZE);
    this.blockSize = opts.blockSize ?? SECTOR_SIZE;
    this.sizeMax = opts.sizeMax ?? 1 << 20;
    this.maxDiscardSectors = opts.maxDiscardSectors ?? 65536;
    this.maxWriteZeroesSectors = opts.maxWriteZeroesSectors ?? 2048;
    this.maxDiscardSeg = opts.maxDiscardSegments ?? 1;
    this.maxWriteZeroesSeg = opts.maxWriteZeroesSegments ?? 1;
    this.io = opts.io;
    this.outstanding = new Array(this.numQueues).fill(0);
    this.finished = Array.from({ length: this.numQueues }, () => []);
    this.serial = new Uint8Array(ID_BYTES);
    const id = new TextEncoder().encode(opts.serial ?? this.name);
    this.serial.set(id.subarray(0, ID_BYTES));

    let f =
      featureBit(VIRTIO_BLK_F.SIZE_MAX) |
      featureBit(VIRTIO_BLK_F.SEG_MAX) |
      featureBit(VIRTIO_BLK_F.BLK_SIZE) |
      featureBit(VIRTIO_BLK_F.FLUSH) |
      featureBit(VIRTIO_BLK_F.DISCARD) |
      featureBit(VIRTIO_BLK_F.WRITE_ZEROES);
    if (this.backend.readOnly) f |= featureBit(VIRTIO_BLK_F.RO);
    if (this.numQueues > 1) f |= featureBit(VIRTIO_BLK_F.MQ);
    this.features = f;

    const cfg = new Uint8Array(BLK_CONFIG.SIZE);
    const v = new DataView(cfg.buffer);
    v.setBigUint64(BLK_CONFIG.CAPACITY, BigInt(this.capacity), true);
    // seg_max: a request has its header and status besides the data segments, all within Queue Size
    // descriptors (2.7.5.3.1) unless indirect; the device itself takes any number.
    v.setUint32(BLK_CONFIG.SEG_MAX, Math.max(1, this.maxQueueSize - 2), true);
    v.setUint32(BLK_CONFIG.SIZE_MAX, this.sizeMax, true);
    v.setUint32(BLK_CONFIG.BLK_SIZE, this.blockSize, true);
    v.setUint16(BLK_CONFIG.NUM_QUEUES, this.numQueues, true);
    v.setUint32(BLK_CONFIG.MAX_DISCARD_SECTORS, this.maxDiscardSectors, true);
    v.setUint32(BLK_CONFIG.MAX_DISCARD_SEG, this.maxDiscardSeg, true);
    v.setUint32(BLK_CONFIG.DISCARD_SECTOR_ALIGNMENT, this.blockSize / SECTOR_SIZE, true);
    v.setUint32(BLK_CONFIG.MAX_WRITE_ZEROES_SECTORS, this.maxWriteZeroesSectors, true);
    v.setUint32(BLK_CONFIG.MAX_WRITE_ZEROES_SEG, this.maxWriteZeroesSeg, true);
    // 5.2.6.2: cleared iff a write zeroes request cannot deallocate anything.
    v.setUint8(BLK_CONFIG.WRITE_ZEROES_MAY_UNMAP, this.backend.canDiscard ? 1 : 0);
    this.config = cfg;
  }

  bind(ctx: VirtioContext): void {
    this.ctx = ctx;
    const buffer = ctx.mem.bytes.buffer;
    if (this.io !== undefined && buffer instanceof SharedArrayBuffer) this.memId = this.io.memoryId(buffer);
    const m = ctx.metrics;
    const p = `virtio.${this.name}`;
    if (m) {
      this.c = {
        requests: m.counter(`${p}.requests`),
        readBytes: m.counter(`${p}.read_bytes`),
        writtenBytes: m.counter(`${p}.written_bytes`),
        flushes: m.counter(`${p}.flushes`),
        ioErrors: m.counter(`${p}.io_errors`),
        unsupported: m.counter(`${p}.unsupported`),
      };
    }
  }

  readConfig(offset: number, data: Uint8Array): void {
    data.set(this.config.subarray(offset, offset + data.length));
  }

  queueNotified(q: number): void {
    if (q < 0 || q >= this.numQueues) return;
    const io = this.memId >= 0 ? this.io : undefined;
    if (io === undefined) {
      this.ctx.drain(q, (chain, work) => this.handle(q, chain, work));
      return;
    }
    // The pass's requests go to the pool together when it ends (a lone one runs here: see BlockIoPool.plug).
    io.plug();
    try {
      this.ctx.drain(q, (chain, work) => this.handle(q, chain, work));
    } finally {
      io.unplug();
    }
  }

  /** Waits for queue q's requests with the pool and returns them (a host about to stop the ring). */
  settleDetached(q: number): void {
    const io = this.io;
    if (io === undefined) return;
    io.waitFor(
      () => this.outstanding[q] === 0,
      (ms, n) =>
        this.ctx.warn(
          `${this.name}: queue ${q}: still waiting after ${(ms / 1000).toFixed(0)} s for ${n} request(s) at the disk before the ring can stop (they cannot be cancelled: each may yet write guest memory)`,
        ),
    );
  }

  /** BlockIoOwner: after a reap, the queues' finished requests go to their used rings, one batch per queue. */
  completionsDone(): void {
    // Flushes whose writes have all ended start now (each may end at once, on this thread, if the pool is full).
    while (this.waitingFlushes.length > 0) {
      const f = this.waitingFlushes[0] as WaitingFlush;
      const oldest = this.writesInFlight.values().next();
      if (!oldest.done && oldest.value <= f.upTo) break;
      this.waitingFlushes.shift();
      this.bump(f.q, -1);
      if (!this.queueFlush(f)) {
        this.bump(f.q, 1);
        this.finish(
          f.q,
          f.chain,
          this.complete(
            f.status,
            this.attempt(() => this.backend.flush()),
            0,
          ),
        );
      }
    }
    for (let q = 0; q < this.numQueues; q++) {
      const done = this.finished[q] as Array<{ chain: DescriptorChain; written: number }>;
      if (done.length === 0) continue;
      this.finished[q] = [];
      this.ctx.completeDetached(q, done);
    }
  }

  /**
   * Serves one request, or the next part of one (IN_PROGRESS until its data has all moved); returns the bytes
   * written to the device-writable part (data and status).
   */
  private handle(q: number, chain: DescriptorChain, work: WorkBudget): ChainResult {
    const going = this.transfers.get(chain);
    if (going !== undefined) return this.advance(chain, going, work);
    const mem = this.ctx.mem;
    // 5.2.6: header (device-readable) ... status (the last device-writable byte).
    if (chain.readableLength < HEADER_SIZE) {
      throw new VirtioRequestError(
        `request ${chain.id}: ${chain.readableLength} device-readable bytes, the header needs ${HEADER_SIZE}`,
      );
    }
    if (chain.writableLength < 1) {
      throw new VirtioRequestError(`request ${chain.id}: no device-writable status byte`);
    }
    // Charged at least its header: a request that fails early moves nothing else (the core would otherwise charge
    // the length it declares).
    work.spend(HEADER_SIZE);
    const readable = new Segments(chain.readable);
    const writable = new Segments(chain.writable);
    const header = this.header;
    readable.copyOut(mem, 0, header);
    const hv = this.headerView;
    const type = hv.getUint32(0, true);
    const sector = hv.getBigUint64(8, true);
    const inData = readable.length - HEADER_SIZE; // driver-to-device data after the header
    const outData = writable.length - 1; // device-to-driver data before the status byte
    this.c.requests.add();

    let status: number;
    let written = 0;
    switch (type) {
      case VIRTIO_BLK_T.IN:
      case VIRTIO_BLK_T.OUT: {
        const isRead = type === VIRTIO_BLK_T.IN;
        this.expect(
          chain,
          type,
          isRead ? inData === 0 : outData === 0,
          isRead ? "data must be device-writable" : "data must be device-readable",
        );
        // 5.2.6.2: with VIRTIO_BLK_F_RO offered, a write fails with IOERR and writes nothing.
        if (!isRead && this.backend.readOnly) {
          status = VIRTIO_BLK_S.IOERR;
          break;
        }
        const length = isRead ? outData : inData;
        // 5.2.4: size_max is the largest segment the driver may use (header and status bytes may share one).
        const segs = isRead ? chain.writable : chain.readable;
        if (segs.some((seg) => seg.len > this.sizeMax + HEADER_SIZE + 1)) {
          status = VIRTIO_BLK_S.IOERR;
          break;
        }
        // 5.2.6.1: the driver MUST NOT ask for a length that is not whole sectors, or past the capacity.
        if (length % SECTOR_SIZE !== 0 || !this.inRange(sector, BigInt(length / SECTOR_SIZE))) {
          status = VIRTIO_BLK_S.IOERR;
          break;
        }
        const t: Transfer = {
          isRead,
          disk: Number(sector) * SECTOR_SIZE,
          length,
          done: 0,
          data: isRead ? writable : readable,
          skip: isRead ? 0 : HEADER_SIZE,
          status: writable,
        };
        if (this.memId >= 0 && length > 0 && this.submit(q, chain, t)) {
          work.spend(length);
          return DETACHED;
        }
        this.transfers.set(chain, t);
        return this.advance(chain, t, work);
      }
      case VIRTIO_BLK_T.FLUSH:
        this.c.flushes.add();
        if (this.memId >= 0) {
          const f: WaitingFlush = { q, chain, status: writable, upTo: this.writeSeq };
          if (this.writesInFlight.size > 0) {
            this.bump(q, 1);
            this.waitingFlushes.push(f);
            return DETACHED;
          }
          if (this.queueFlush(f)) return DETACHED;
        }
        status = this.attempt(() => this.backend.flush());
        break;
      case VIRTIO_BLK_T.GET_ID: {
        this.expect(chain, type, inData === 0, "the id buffer must be device-writable");
        // 5.2.6: up to 20 bytes, NUL-padded; the driver's buffer is 20 bytes (we fill what there is).
        const n = Math.min(outData, ID_BYTES);
        writable.copyIn(mem, 0, this.serial.subarray(0, n));
        written = n;
        status = VIRTIO_BLK_S.OK;
        break;
      }
      case VIRTIO_BLK_T.DISCARD:
      case VIRTIO_BLK_T.WRITE_ZEROES:
        this.expect(chain, type, outData === 0, "segments must be device-readable");
        status = this.discardOrZero(type, readable, inData, work);
        break;
      default:
        this.c.unsupported.add();
        status = VIRTIO_BLK_S.UNSUPP;
    }
    return this.complete(writable, status, written);
  }

  /**
   * Hands an IN or OUT to the pool: every guest range checked (as a synchronous transfer checks it); false if
   * the pool cannot take it (the caller serves it on this thread).
   */
  private submit(q: number, chain: DescriptorChain, t: Transfer): boolean {
    const io = this.io as BlockIoPool;
    const mem = this.ctx.mem;
    if (!io.begin(t.isRead ? "read" : "write", this.memId, t.disk)) return false;
    const fits = t.data.every(t.skip, t.length, (addr, len) => {
      let at: number;
      try {
        at = mem.check(addr, len);
      } catch {
        return false;
      }
      return io.segment(at, len);
    });
    if (!fits) {
      io.abandon();
      return false;
    }
    const seq = t.isRead ? 0 : ++this.writeSeq;
    if (!t.isRead) this.writesInFlight.add(seq);
    this.bump(q, 1);
    io.submit(
      (result) => {
        if (!t.isRead) this.writesInFlight.delete(seq);
        let status: number = VIRTIO_BLK_S.OK;
        if (result !== t.length) {
          status = VIRTIO_BLK_S.IOERR;
          const why = result < 0 ? `errno ${-result}` : `${result} of ${t.length} bytes`;
          this.ctx.warn(`${this.name}: ${t.isRead ? "read" : "write"} at ${t.disk}: ${why}`);
        } else if (t.isRead) {
          this.c.readBytes.add(t.length);
        } else {
          this.c.writtenBytes.add(t.length);
        }
        const ok = status === VIRTIO_BLK_S.OK;
        this.finish(q, chain, this.complete(t.status, status, ok && t.isRead ? t.length : 0));
      },
      this,
      t.length,
    );
    return true;
  }

  /** A FLUSH whose writes have ended: fdatasync in the pool; false if the pool is full (the caller does it). */
  private queueFlush(f: WaitingFlush): boolean {
    const io = this.io as BlockIoPool;
    const queued = io.flush((result) => {
      if (result < 0) this.ctx.warn(`${this.name}: flush: errno ${-result}`);
      const status = result < 0 ? VIRTIO_BLK_S.IOERR : VIRTIO_BLK_S.OK;
      this.finish(f.q, f.chain, this.complete(f.status, status, 0));
    }, this);
    if (queued) this.bump(f.q, 1);
    return queued;
  }

  private bump(q: number, by: number): void {
    this.outstanding[q] = (this.outstanding[q] ?? 0) + by;
  }

  private finish(q: number, chain: DescriptorChain, written: number): void {
    this.bump(q, -1);
    this.finished[q]?.push({ chain, written });
  }

  /** Writes the status byte, last, after the data (5.2.6: "The final status byte is written by the device"). */
  private complete(writable: Segments, status: number, written: number): number {
    if (status === VIRTIO_BLK_S.IOERR) this.c.ioErrors.add();
    const b = this.statusByte;
    b[0] = status;
    writable.copyIn(this.ctx.mem, writable.length - 1, b);
    return written + 1;
  }

  /**
   * Moves the next part of an IN or OUT: what is left of the slice's byte budget, but at least SLICE_MIN_BYTES
   * (so a request continued in a fresh slice always advances), in whole sectors. The used length counts the data
   * only when all of it was read (a failed read reports just the status byte).
   */
  private advance(chain: DescriptorChain, t: Transfer, work: WorkBudget): ChainResult {
    const left = t.length - t.done;
    const allowed = Math.floor(work.allowance(SLICE_MIN_BYTES) / SECTOR_SIZE) * SECTOR_SIZE;
    const n = Math.min(left, allowed);
    const mem = this.ctx.mem;
    let disk = t.disk + t.done;
    const status = this.attempt(() => {
      for (const seg of t.data.range(t.skip + t.done, n)) {
        const buf = mem.slice(seg.addr, seg.len);
        if (t.isRead) this.backend.read(disk, buf);
        else this.backend.write(disk, buf);
        disk += seg.len;
      }
    });
    work.spend(Math.max(1, n));
    t.done += n;
    if (status === VIRTIO_BLK_S.OK && t.done < t.length) return IN_PROGRESS;
    this.transfers.delete(chain);
    let written = 0;
    if (status === VIRTIO_BLK_S.OK) {
      if (t.isRead) {
        written = t.length;
        this.c.readBytes.add(t.length);
      } else {
        this.c.writtenBytes.add(t.length);
      }
    }
    return this.complete(t.status, status, written);
  }

  private expect(chain: DescriptorChain, type: number, ok: boolean, what: string): void {
    if (!ok) {
      throw new VirtioRequestError(
        `request ${chain.id} (type ${type}): ${what} (readable ${chain.readableLength}, writable ${chain.writableLength})`,
      );
    }
  }

  /** IOERR if the backend throws. */
  private attempt(fn: () => void): number {
    try {
      fn();
      return VIRTIO_BLK_S.OK;
    } catch (e) {
      this.ctx.warn(`${this.name}: ${e instanceof Error ? e.message : String(e)}`);
      return VIRTIO_BLK_S.IOERR;
    }
  }

  private inRange(sector: bigint, sectors: bigint): boolean {
    return sector <= BigInt(this.capacity) && sectors <= BigInt(this.capacity) - sector;
  }

  /** 5.2.6.2 for DISCARD and WRITE_ZEROES. */
  private discardOrZero(type: number, readable: Segments, inData: number, work: WorkBudget): number {
    const discard = type === VIRTIO_BLK_T.DISCARD;
    const feature = discard ? VIRTIO_BLK_F.DISCARD : VIRTIO_BLK_F.WRITE_ZEROES;
    if (!hasFeature(this.ctx.features(), feature)) {
      this.c.unsupported.add();
      return VIRTIO_BLK_S.UNSUPP;
    }
    if (this.backend.readOnly) return VIRTIO_BLK_S.IOERR;
    const maxSeg = discard ? this.maxDiscardSeg : this.maxWriteZeroesSeg;
    const maxSectors = discard ? this.maxDiscardSectors : this.maxWriteZeroesSectors;
    const count = inData / SEGMENT_SIZE;
    // Served in one piece (bounded by max_*_sectors x max_*_seg); charged as the bytes it covers.
    if (!Number.isInteger(count) || count === 0 || count > maxSeg) return VIRTIO_BLK_S.IOERR;
    const raw = new Uint8Array(inData);
    readable.copyOut(this.ctx.mem, HEADER_SIZE, raw);
    const v = new DataView(raw.buffer);
    const ranges: Array<{ offset: number; length: number; unmap: boolean }> = [];
    for (let i = 0; i < count; i++) {
      const sector = v.getBigUint64(i * SEGMENT_SIZE, true);
      const sectors = v.getUint32(i * SEGMENT_SIZE + 8, true);
      const flags = v.getUint32(i * SEGMENT_SIZE + 12, true);
      // Unknown flags, and unmap on a discard, are UNSUPP.
      if (flags & ~UNMAP_FLAG || (discard && flags & UNMAP_FLAG)) {
        this.c.unsupported.add();
        return VIRTIO_BLK_S.UNSUPP;
      }
      if (sectors > maxSectors || !this.inRange(sector, BigInt(sectors))) return VIRTIO_BLK_S.IOERR;
      ranges.push({
        offset: Number(sector) * SECTOR_SIZE,
        length: sectors * SECTOR_SIZE,
        unmap: (flags & UNMAP_FLAG) !== 0,
      });
    }
    work.spend(
      Math.max(
        1,
        ranges.reduce((sum, r) => sum + r.length, 0),
      ),
    );
    return this.attempt(() => {
      for (const r of ranges) {
        if (discard) this.backend.discard(r.offset, r.length);
        else this.backend.writeZeroes(r.offset, r.length, r.unmap);
      }
    });
  }
}

/** A chain's segments on one side, addressed as one byte range. */
class Segments {
  readonly length: number;

  constructor(private readonly segs: readonly BufferSegment[]) {
    let n = 0;
    for (const s of segs) n += s.len;
    this.length = n;
  }

  /** The pieces of [from, from + length) as guest segments. */
  *range(from: number, length: number): Generator<BufferSegment> {
    let skip = from;
    let left = length;
    for (const s of this.segs) {
      if (left === 0) return;
      if (skip >= s.len) {
        skip -= s.len;
        continue;
      }
      const len = Math.min(s.len - skip, left);
      yield { addr: s.addr + skip, len };
      left -= len;
      skip = 0;
    }
  }

  /** `visit` for each piece of [from, from + length) in order, while it returns true; whether all were visited. */
  every(from: number, length: number, visit: (addr: number, len: number) => boolean): boolean {
    let skip = from;
    let left = length;
    for (const s of this.segs) {
      if (left === 0) return true;
      if (skip >= s.len) {
        skip -= s.len;
        continue;
      }
      const len = Math.min(s.len - skip, left);
      if (!visit(s.addr + skip, len)) return false;
      left -= len;
      skip = 0;
    }
    return true;
  }

  /** Copies [from, from + dst.length) out of guest memory (a piece that is all of dst is copied without a view). */
  copyOut(mem: VirtioContext["mem"], from: number, dst: Uint8Array): void {
    let at = 0;
    this.every(from, dst.length, (addr, len) => {
      mem.read(addr, len === dst.length ? dst : dst.subarray(at, at + len));
      at += len;
      return true;
    });
  }

  copyIn(mem: VirtioContext["mem"], from: number, src: Uint8Array): void {
    let at = 0;
    this.every(from, src.length, (addr, len) => {
      mem.write(addr, len === src.length ? src : src.subarray(at, at + len));
      at += len;
      return true;
    });
  }
}
