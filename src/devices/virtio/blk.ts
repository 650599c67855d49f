/**
 * virtio-blk, the block device (OASIS virtio 1.2, 5.2 Block Device), over a BlockBackend (src/block).
 *
 * Requests: IN, OUT, FLUSH, GET_ID, DISCARD, WRITE_ZEROES; anything else completes with VIRTIO_BLK_S_UNSUPP.
 * Each request is served synchronously on the thread that handles the queue notification, data moving straight
 * between the backend and guest memory (no copy through the host heap). With VIRTIO_BLK_F_MQ every queue has its
 * own lock, so several threads can serve several queues at once.
 *
 * What the driver got wrong decides the outcome:
 * - a request the device can answer (unknown type, sector beyond capacity, length not a multiple of 512, a
 *   write to a read-only disk, bad discard segments) completes with VIRTIO_BLK_S_IOERR or _UNSUPP (5.2.6.2);
 * - a request that cannot be framed (header shorter than 16 bytes, no device-writable status byte, data in the
 *   wrong direction for its type) is a broken driver: the device sets DEVICE_NEEDS_RESET.
 */
import type { BlockBackend } from "../../block/backend.ts";
import type { Counter } from "../../metrics/registry.ts";
import { featureBit, hasFeature, VIRTIO_ID } from "./constants.ts";
import { type VirtioContext, type VirtioDeviceModel, VirtioRequestError } from "./device.ts";
import type { BufferSegment, DescriptorChain } from "./queue/index.ts";

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
  /** blk_size (VIRTIO_BLK_F_BLK_SIZE); default 512. */
  blockSize?: number;
  /** max_discard_sectors / max_write_zeroes_sectors per segment; default 65536 sectors (32 MiB). */
  maxDiscardSectors?: number;
  maxWriteZeroesSectors?: number;
  /** max_discard_seg / max_write_zeroes_seg; default 1. */
  maxDiscardSegments?: number;
  maxWriteZeroesSegments?: number;
}

const NO_COUNTER: Counter = { add() {}, value: 0 };

export class VirtioBlk implements VirtioDeviceModel {
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
  private readonly maxDiscardSectors: number;
  private readonly maxWriteZeroesSectors: number;
  private readonly maxDiscardSeg: number;
  private readonly maxWriteZeroesSeg: number;
  private readonly config: Uint8Array;
  private ctx!: VirtioContext;
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
    this.maxDiscardSectors = opts.maxDiscardSectors ?? 65536;
    this.maxWriteZeroesSectors = opts.maxWriteZeroesSectors ?? 65536;
    this.maxDiscardSeg = opts.maxDiscardSegments ?? 1;
    this.maxWriteZeroesSeg = opts.maxWriteZeroesSegments ?? 1;
    this.serial = new Uint8Array(ID_BYTES);
    const id = new TextEncoder().encode(opts.serial ?? this.name);
    this.serial.set(id.subarray(0, ID_BYTES));

    let f =
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
    this.ctx.drain(q, (chain) => this.handle(chain));
  }

  /** Serves one request; returns the bytes written to the device-writable part (data and status). */
  private handle(chain: DescriptorChain): number {
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
    const readable = new Segments(chain.readable);
    const writable = new Segments(chain.writable);
    const header = new Uint8Array(HEADER_SIZE);
    readable.copyOut(mem, 0, header);
    const hv = new DataView(header.buffer);
    const type = hv.getUint32(0, true);
    const sector = hv.getBigUint64(8, true);
    const inData = readable.length - HEADER_SIZE; // driver-to-device data after the header
    const outData = writable.length - 1; // device-to-driver data before the status byte
    this.c.requests.add();

    let status: number;
    let written = 0;
    switch (type) {
      case VIRTIO_BLK_T.IN:
        this.expect(chain, type, inData === 0, "data must be device-writable");
        status = this.transfer(
          sector,
          outData,
          (off, seg) => {
            this.backend.read(off, mem.slice(seg.addr, seg.len));
          },
          writable,
          0,
        );
        if (status === VIRTIO_BLK_S.OK) {
          written = outData;
          this.c.readBytes.add(outData);
        }
        break;
      case VIRTIO_BLK_T.OUT:
        this.expect(chain, type, outData === 0, "data must be device-readable");
        // 5.2.6.2: with VIRTIO_BLK_F_RO offered, a write fails with IOERR and writes nothing.
        if (this.backend.readOnly) {
          status = VIRTIO_BLK_S.IOERR;
          break;
        }
        status = this.transfer(
          sector,
          inData,
          (off, seg) => {
            this.backend.write(off, mem.slice(seg.addr, seg.len));
          },
          readable,
          HEADER_SIZE,
        );
        if (status === VIRTIO_BLK_S.OK) this.c.writtenBytes.add(inData);
        break;
      case VIRTIO_BLK_T.FLUSH:
        status = this.attempt(() => this.backend.flush());
        this.c.flushes.add();
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
        status = this.discardOrZero(type, readable, inData);
        break;
      default:
        this.c.unsupported.add();
        status = VIRTIO_BLK_S.UNSUPP;
    }
    if (status === VIRTIO_BLK_S.IOERR) this.c.ioErrors.add();
    // The status byte goes last, after the data (5.2.6: "The final status byte is written by the device").
    writable.copyIn(mem, writable.length - 1, Uint8Array.of(status));
    return written + 1;
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

  /**
   * IN or OUT of `length` bytes at `sector`, segment by segment over `segs` from byte `skip`: IOERR if the length
   * is not whole sectors or the range goes past `capacity` (5.2.6.1: the driver MUST NOT ask for that).
   */
  private transfer(
    sector: bigint,
    length: number,
    io: (diskOffset: number, seg: BufferSegment) => void,
    segs: Segments,
    skip: number,
  ): number {
    if (length % SECTOR_SIZE !== 0) return VIRTIO_BLK_S.IOERR;
    if (!this.inRange(sector, BigInt(length / SECTOR_SIZE))) return VIRTIO_BLK_S.IOERR;
    let disk = Number(sector) * SECTOR_SIZE;
    return this.attempt(() => {
      for (const seg of segs.range(skip, length)) {
        io(disk, seg);
        disk += seg.len;
      }
    });
  }

  private inRange(sector: bigint, sectors: bigint): boolean {
    return sector <= BigInt(this.capacity) && sectors <= BigInt(this.capacity) - sector;
  }

  /** 5.2.6.2 for DISCARD and WRITE_ZEROES. */
  private discardOrZero(type: number, readable: Segments, inData: number): number {
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

  copyOut(mem: VirtioContext["mem"], from: number, dst: Uint8Array): void {
    let at = 0;
    for (const s of this.range(from, dst.length)) {
      mem.read(s.addr, dst.subarray(at, at + s.len));
      at += s.len;
    }
  }

  copyIn(mem: VirtioContext["mem"], from: number, src: Uint8Array): void {
    let at = 0;
    for (const s of this.range(from, src.length)) {
      mem.write(s.addr, src.subarray(at, at + s.len));
      at += s.len;
    }
  }
}
