/**
 * virtio-blk as the driver sees each outcome (virtio 1.2, 5.2.6), through the virtio-pci transport and the test
 * driver, both ring layouts: the status byte and the used length when the backend fails (IOERR; a failed read
 * reports only the status byte as written) and when the device refuses a request itself, GET_ID into short and
 * long buffers, DISCARD and WRITE_ZEROES reaching the backend's own calls within their limits, requests whose
 * header, data and status share or split descriptors, and the configuration fields the options set.
 * (Written against the survivors of mutation testing, docs/mutation-testing.md.)
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { type BlockBackend, BlockIoError } from "../../src/block/backend.ts";
import { MemoryBlockBackend } from "../../src/block/memory.ts";
import { VirtioBlk, type VirtioBlkOptions } from "../../src/devices/virtio/blk.ts";
import { makeVirtioPciRig, type VirtioPciRig, type VirtioTestDriver } from "../helpers/virtio-driver.ts";

// From 5.2 of the specification.
const T_IN = 0;
const T_OUT = 1;
const T_FLUSH = 4;
const T_GET_ID = 8;
const T_DISCARD = 11;
const T_WRITE_ZEROES = 13;
const S_OK = 0;
const S_IOERR = 1;
const S_UNSUPP = 2;
const F_SIZE_MAX = 1n << 1n;
const F_SEG_MAX = 1n << 2n;
const F_RO = 1n << 5n;
const F_BLK_SIZE = 1n << 6n;
const F_MQ = 1n << 12n;
const F_PACKED = 1n << 34n;
const NEEDS_RESET = 0x40;
const MiB = 1 << 20;

/** An in-memory disk whose operations can be made to fail, and which records every call made to it. */
class FaultyBackend implements BlockBackend {
  readonly mem: MemoryBlockBackend;
  /** Operations that throw BlockIoError: read, write, flush, discard, writeZeroes. */
  readonly failing = new Set<string>();
  /** Reads and writes touching [failFrom, failTo) throw (a failure partway through a long request). */
  failFrom = Number.POSITIVE_INFINITY;
  failTo = Number.POSITIVE_INFINITY;
  readonly calls: string[] = [];
  readonly canDiscard: boolean;

  constructor(size: number, opts: { readOnly?: boolean; contents?: Uint8Array; canDiscard?: boolean } = {}) {
    this.mem = new MemoryBlockBackend(size, opts);
    this.canDiscard = opts.canDiscard ?? true;
  }
  get size(): number {
    return this.mem.size;
  }
  get readOnly(): boolean {
    return this.mem.readOnly;
  }
  private check(op: string, offset = 0, length = 0): void {
    const touches = offset < this.failTo && offset + length > this.failFrom;
    if (this.failing.has(op) || touches) throw new BlockIoError(`injected ${op} failure`);
  }

  read(offset: number, dst: Uint8Array): void {
    this.calls.push(`read ${offset}+${dst.length}`);
    this.check("read", offset, dst.length);
    this.mem.read(offset, dst);
  }
  write(offset: number, src: Uint8Array): void {
    this.calls.push(`write ${offset}+${src.length}`);
    this.check("write", offset, src.length);
    this.mem.write(offset, src);
  }
  flush(): void {
    this.calls.push("flush");
    this.check("flush");
    this.mem.flush();
  }
  discard(offset: number, length: number): void {
    this.calls.push(`discard ${offset}+${length}`);
    this.check("discard");
    this.mem.discard(offset, length);
  }
  writeZeroes(offset: number, length: number, mayUnmap: boolean): void {
    this.calls.push(`writeZeroes ${offset}+${length}${mayUnmap ? " unmap" : ""}`);
    this.check("writeZeroes");
    this.mem.writeZeroes(offset, length, mayUnmap);
  }
  close(): void {}
}

function header(type: number, sector = 0): Uint8Array {
  const h = new Uint8Array(16);
  const v = new DataView(h.buffer);
  v.setUint32(0, type, true);
  v.setBigUint64(8, BigInt(sector), true);
  return h;
}

function segment(sector: number, sectors: number, flags = 0): Uint8Array {
  const s = new Uint8Array(16);
  const v = new DataView(s.buffer);
  v.setBigUint64(0, BigInt(sector), true);
  v.setUint32(8, sectors, true);
  v.setUint32(12, flags, true);
  return s;
}

function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (seed + i * 13 + (i >> 9)) & 0xff;
  return b;
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

interface Blk {
  rig: VirtioPciRig<VirtioBlk>;
  q: VirtioTestDriver;
}

function start(
  packed: boolean,
  opts: Partial<VirtioBlkOptions> & { memSize?: number; queueBytes?: number } = {},
): Blk {
  const backend = opts.backend ?? new FaultyBackend(MiB);
  const rig = makeVirtioPciRig(new VirtioBlk({ ...opts, backend }), { memSize: opts.memSize });
  assert.ok(rig.drv.negotiate((f) => (packed ? f : f & ~F_PACKED)));
  const q = rig.drv.setupQueue(0, { size: 16, memBytes: opts.queueBytes });
  rig.drv.driverOk();
  return { rig, q };
}

interface Done {
  status: number;
  /** The used length the device reported. */
  len: number;
  /** Every writable byte but the status, after the request. */
  data: Uint8Array;
}

/** Submits one request (writable buffers filled with 0xee first) and returns what the driver sees. */
function request(blk: Blk, readable: Uint8Array[], writable: number[]): Done {
  blk.q.addChain(readable, writable, { fill: 0xee });
  blk.rig.drv.kick(0);
  const used = blk.q.usedChains();
  assert.equal(used.length, 1, "one request completed");
  const u = used[0];
  assert.ok(u);
  const all = concat(u.data);
  return { status: all[all.length - 1] as number, len: u.len, data: all.subarray(0, all.length - 1) };
}

function counter(blk: Blk, name: string): number {
  return blk.rig.metrics.counter(`virtio.blk0.${name}`).value;
}

function needsReset(blk: Blk): boolean {
  return (blk.rig.drv.status & NEEDS_RESET) !== 0;
}

for (const packed of [false, true]) {
  const layout = packed ? "packed" : "split";

  describe(`virtio-blk outcomes (${layout})`, () => {
    test("a read the backend fails: IOERR, used length 1 (the status byte only), no bytes counted read", () => {
      const backend = new FaultyBackend(MiB, { contents: pattern(MiB, 3) });
      const blk = start(packed, { backend });
      backend.failing.add("read");
      const r = request(blk, [header(T_IN, 2)], [1024, 1]);
      assert.equal(r.status, S_IOERR);
      assert.equal(r.len, 1, "a failed read reports no data written");
      assert.equal(counter(blk, "read_bytes"), 0);
      assert.equal(counter(blk, "io_errors"), 1);
      assert.equal(needsReset(blk), false, "a backend failure is the request's, not the driver's");
      assert.equal(blk.rig.logs.length, 1, "the failure is logged");
      assert.match(blk.rig.logs[0] as string, /blk0: injected read failure/);
      backend.failing.clear();
      const ok = request(blk, [header(T_IN, 2)], [1024, 1]);
      assert.equal(ok.status, S_OK, "the device goes on serving");
      assert.equal(ok.len, 1025);
      assert.deepEqual(ok.data, pattern(MiB, 3).subarray(1024, 2048));
      assert.equal(counter(blk, "read_bytes"), 1024);
    });

    test("a write the backend fails: IOERR, used length 1, no bytes counted written", () => {
      const backend = new FaultyBackend(MiB);
      const blk = start(packed, { backend });
      backend.failing.add("write");
      const w = request(blk, [header(T_OUT, 0), pattern(512, 1)], [1]);
      assert.equal(w.status, S_IOERR);
      assert.equal(w.len, 1);
      assert.equal(counter(blk, "written_bytes"), 0);
      assert.equal(counter(blk, "io_errors"), 1);
      assert.equal(needsReset(blk), false);
      backend.failing.clear();
      assert.equal(request(blk, [header(T_OUT, 0), pattern(512, 1)], [1]).status, S_OK);
      assert.equal(counter(blk, "written_bytes"), 512);
    });

    test("a flush the backend fails is IOERR, not OK", () => {
      const backend = new FaultyBackend(MiB);
      const blk = start(packed, { backend });
      backend.failing.add("flush");
      const f = request(blk, [header(T_FLUSH)], [1]);
      assert.equal(f.status, S_IOERR);
      assert.equal(f.len, 1);
      assert.deepEqual(backend.calls, ["flush"], "the flush was attempted");
      assert.equal(counter(blk, "flushes"), 1);
      assert.equal(counter(blk, "io_errors"), 1);
      assert.equal(needsReset(blk), false);
      backend.failing.clear();
      assert.equal(request(blk, [header(T_FLUSH)], [1]).status, S_OK);
      assert.equal(backend.mem.flushes, 1);
      assert.equal(counter(blk, "io_errors"), 1, "a successful flush is no error");
    });

    test("a DISCARD or WRITE_ZEROES the backend fails is IOERR", () => {
      const backend = new FaultyBackend(MiB);
      const blk = start(packed, { backend });
      backend.failing.add("discard");
      backend.failing.add("writeZeroes");
      assert.equal(request(blk, [header(T_DISCARD), segment(0, 1)], [1]).status, S_IOERR);
      assert.equal(request(blk, [header(T_WRITE_ZEROES), segment(0, 1)], [1]).status, S_IOERR);
      assert.deepEqual(backend.calls, ["discard 0+512", "writeZeroes 0+512"]);
      assert.equal(counter(blk, "io_errors"), 2);
      assert.equal(needsReset(blk), false);
    });

    test("requests the device refuses report the status byte only, and are counted by outcome", () => {
      const backend = new FaultyBackend(MiB, { contents: pattern(MiB, 9) });
      const blk = start(packed, { backend });
      const refused: Array<[string, Uint8Array[], number[], number]> = [
        ["read past the capacity", [header(T_IN, 2048)], [512, 1], S_IOERR],
        ["read running past the capacity", [header(T_IN, 2047)], [1024, 1], S_IOERR],
        ["read of a partial sector", [header(T_IN, 0)], [100, 1], S_IOERR],
        ["unknown request type", [header(0x7f)], [8, 1], S_UNSUPP],
      ];
      for (const [what, readable, writable, status] of refused) {
        const r = request(blk, readable, writable);
        assert.equal(r.status, status, what);
        assert.equal(r.len, 1, `${what}: only the status byte is written`);
        assert.ok(
          r.data.every((b) => b === 0xee),
          `${what}: the data buffer is untouched`,
        );
      }
      assert.equal(counter(blk, "requests"), 4);
      assert.equal(counter(blk, "io_errors"), 3);
      assert.equal(counter(blk, "unsupported"), 1);
      assert.equal(counter(blk, "read_bytes"), 0);
      assert.equal(blk.rig.logs.length, 0, "refusals are the driver's business, not logged");
      assert.deepEqual(backend.calls, [], "the backend was not asked");
    });

    test("a read failing in a later slice of a long request: IOERR and the status byte only", () => {
      const backend = new FaultyBackend(8 * MiB, { contents: pattern(8 * MiB, 5) });
      const blk = start(packed, { backend, memSize: 16 * MiB, queueBytes: 8 * MiB });
      backend.failFrom = 2 * MiB;
      blk.q.addChain([header(T_IN, 0)], [MiB, MiB, MiB, 1], { fill: 0xee });
      blk.rig.drv.kick(0);
      assert.equal(blk.q.usedChains().length, 0, "not finished in the first slice");
      while (blk.rig.transport.device.serveDeferred()) {}
      const [u] = blk.q.usedChains();
      assert.ok(u);
      assert.equal(u.data[3]?.[0], S_IOERR);
      assert.equal(u.len, 1);
      assert.equal(counter(blk, "read_bytes"), 0);
      assert.equal(needsReset(blk), false);
    });

    test("a read failing in a middle slice stays IOERR though the slices after it succeed", () => {
      const backend = new FaultyBackend(8 * MiB, { contents: pattern(8 * MiB, 5) });
      const blk = start(packed, { backend, memSize: 16 * MiB, queueBytes: 8 * MiB });
      backend.failFrom = MiB + 512;
      backend.failTo = MiB + 1024;
      blk.q.addChain([header(T_IN, 0)], [MiB, MiB, MiB, 1], { fill: 0xee });
      blk.rig.drv.kick(0);
      while (blk.rig.transport.device.serveDeferred()) {}
      const [u] = blk.q.usedChains();
      assert.ok(u);
      assert.equal(u.data[3]?.[0], S_IOERR);
      assert.equal(u.len, 1);
    });

    test("a read across slices up to the disk's last sector succeeds with every byte", () => {
      const contents = pattern(3 * MiB, 12);
      const backend = new FaultyBackend(3 * MiB, { contents });
      const blk = start(packed, { backend, memSize: 16 * MiB, queueBytes: 8 * MiB });
      blk.q.addChain([header(T_IN, 0)], [MiB, MiB, MiB, 1], { fill: 0xee });
      blk.rig.drv.kick(0);
      while (blk.rig.transport.device.serveDeferred()) {}
      const [u] = blk.q.usedChains();
      assert.ok(u);
      assert.equal(u.data[3]?.[0], S_OK);
      assert.equal(u.len, 3 * MiB + 1);
      assert.deepEqual(concat(u.data.slice(0, 3)), contents);
      assert.equal(blk.rig.logs.length, 0);
    });

    test("a write longer than a slice puts every byte in place, in order", () => {
      const backend = new FaultyBackend(8 * MiB);
      const blk = start(packed, { backend, memSize: 16 * MiB, queueBytes: 8 * MiB });
      const data = pattern(3 * MiB + 1536, 11);
      // Uneven pieces, none longer than size_max (1 MiB by default).
      const cuts = [0, MiB - 100, 2 * MiB - 100, 3 * MiB - 100, data.length];
      const parts = cuts.slice(1).map((end, i) => data.subarray(cuts[i], end));
      blk.q.addChain([header(T_OUT, 4), ...parts], [1], { fill: 0xee });
      blk.rig.drv.kick(0);
      while (blk.rig.transport.device.serveDeferred()) {}
      const [u] = blk.q.usedChains();
      assert.ok(u);
      assert.equal(u.data[0]?.[0], S_OK);
      assert.equal(u.len, 1);
      assert.deepEqual(backend.mem.data.subarray(4 * 512, 4 * 512 + data.length), data);
      assert.equal(backend.mem.data[4 * 512 - 1], 0, "nothing before the first sector");
      assert.equal(backend.mem.data[4 * 512 + data.length], 0, "nothing after the last");
      assert.equal(counter(blk, "written_bytes"), data.length);
    });

    test("header, data and status may share or split descriptors", () => {
      const backend = new FaultyBackend(MiB);
      const blk = start(packed, { backend });
      const data = pattern(1536, 21);
      // The header split in two, its second half sharing a descriptor with the first data bytes.
      const h = header(T_OUT, 7);
      const w = request(
        blk,
        [h.subarray(0, 5), concat([h.subarray(5), data.subarray(0, 300)]), data.subarray(300)],
        [1],
      );
      assert.equal(w.status, S_OK);
      assert.deepEqual(backend.mem.data.subarray(7 * 512, 7 * 512 + 1536), data);
      assert.equal(backend.mem.data[7 * 512 + 1536], 0);
      // Data in uneven pieces, the last sharing its descriptor with the status byte.
      const r = request(blk, [header(T_IN, 7)], [100, 900, 537]);
      assert.equal(r.status, S_OK);
      assert.equal(r.len, 1537);
      assert.deepEqual(r.data, data);
      backend.calls.length = 0;
      // Header and one discard segment in a single descriptor.
      assert.equal(request(blk, [concat([header(T_DISCARD), segment(7, 1)])], [1]).status, S_OK);
      assert.deepEqual(backend.calls, ["discard 3584+512"]);
      assert.ok(backend.mem.data.subarray(7 * 512, 8 * 512).every((b) => b === 0));
      assert.deepEqual(backend.mem.data.subarray(8 * 512, 10 * 512), data.subarray(512));
    });

    test("GET_ID fills the driver's buffer up to 20 bytes and reports what it wrote", () => {
      const blk = start(packed, { serial: "0123456789abcdefghijKLMN" });
      const short = request(blk, [header(T_GET_ID)], [8, 1]);
      assert.equal(short.status, S_OK);
      assert.equal(short.len, 9);
      assert.deepEqual(short.data, new TextEncoder().encode("01234567"));
      const long = request(blk, [header(T_GET_ID)], [32, 1]);
      assert.equal(long.status, S_OK);
      assert.equal(long.len, 21);
      assert.deepEqual(long.data.subarray(0, 20), new TextEncoder().encode("0123456789abcdefghij"));
      assert.ok(
        long.data.subarray(20).every((b) => b === 0xee),
        "nothing written past the 20 bytes",
      );
      const split = request(blk, [header(T_GET_ID)], [8, 12, 1]);
      assert.equal(split.len, 21);
      assert.deepEqual(split.data, new TextEncoder().encode("0123456789abcdefghij"), "across two buffers");
      const named = start(packed, { name: "disk7" });
      const id = request(named, [header(T_GET_ID)], [20, 1]);
      const expected = new Uint8Array(20);
      expected.set(new TextEncoder().encode("disk7"));
      assert.deepEqual(id.data, expected, "the serial defaults to the device name, NUL-padded");
    });

    test("DISCARD and WRITE_ZEROES reach their own backend calls; UNMAP only where the driver set it", () => {
      const backend = new FaultyBackend(MiB);
      const blk = start(packed, {
        backend,
        maxDiscardSegments: 2,
        maxWriteZeroesSegments: 2,
        maxDiscardSectors: 8,
        maxWriteZeroesSectors: 4,
      });
      assert.equal(request(blk, [header(T_DISCARD), segment(16, 8), segment(2, 1)], [1]).status, S_OK);
      assert.equal(
        request(blk, [header(T_WRITE_ZEROES), segment(30, 4, 1), segment(40, 2)], [1]).status,
        S_OK,
      );
      assert.deepEqual(backend.calls, [
        "discard 8192+4096",
        "discard 1024+512",
        "writeZeroes 15360+2048 unmap",
        "writeZeroes 20480+1024",
      ]);
      backend.calls.length = 0;
      assert.equal(
        request(blk, [header(T_DISCARD), segment(0, 9)], [1]).status,
        S_IOERR,
        "past max_discard_sectors",
      );
      assert.equal(
        request(blk, [header(T_WRITE_ZEROES), segment(0, 5)], [1]).status,
        S_IOERR,
        "past max_write_zeroes_sectors",
      );
      assert.equal(
        request(blk, [header(T_WRITE_ZEROES), segment(0, 1), segment(1, 1), segment(2, 1)], [1]).status,
        S_IOERR,
        "more segments than max_write_zeroes_seg",
      );
      assert.equal(
        request(blk, [header(T_DISCARD), segment(1, 1), segment(2040, 9)], [1]).status,
        S_IOERR,
        "one bad segment fails the request",
      );
      assert.deepEqual(backend.calls, [], "a refused request touches nothing, not even its good segments");
    });

    test("configuration fields follow the options", () => {
      const rig = makeVirtioPciRig(
        new VirtioBlk({
          backend: new FaultyBackend(1000 * 512 + 100, { canDiscard: false }),
          blockSize: 4096,
          sizeMax: 65536,
          queueSize: 64,
          numQueues: 0,
          maxDiscardSectors: 100,
          maxDiscardSegments: 3,
          maxWriteZeroesSectors: 50,
          maxWriteZeroesSegments: 4,
        }),
      );
      assert.ok(rig.drv.negotiate((f) => (packed ? f : f & ~F_PACKED)));
      const f = rig.drv.deviceFeatures();
      for (const bit of [F_SIZE_MAX, F_SEG_MAX, F_BLK_SIZE]) assert.ok(f & bit);
      assert.equal(f & (F_MQ | F_RO), 0n, "one queue, writable");
      assert.equal(rig.drv.config(0, 4) + rig.drv.config(4, 4) * 2 ** 32, 1000, "capacity: whole sectors");
      assert.equal(rig.drv.config(8, 4), 65536, "size_max");
      assert.equal(rig.drv.config(12, 4), 62, "seg_max: the queue size less header and status");
      assert.equal(rig.drv.config(20, 4), 4096, "blk_size");
      assert.equal(rig.drv.config(34, 2), 1, "num_queues: at least 1");
      assert.equal(rig.drv.config(36, 4), 100, "max_discard_sectors");
      assert.equal(rig.drv.config(40, 4), 3, "max_discard_seg");
      assert.equal(rig.drv.config(44, 4), 8, "discard_sector_alignment, in 512-byte sectors");
      assert.equal(rig.drv.config(48, 4), 50, "max_write_zeroes_sectors");
      assert.equal(rig.drv.config(52, 4), 4, "max_write_zeroes_seg");
      assert.equal(rig.drv.config(56, 1), 0, "write_zeroes_may_unmap: not on a backend that cannot discard");
      rig.drv.setCommon(0x16, 2, 0);
      assert.equal(rig.drv.common(0x18, 2), 64, "queue size offered");
      const other = start(packed);
      assert.equal(other.rig.drv.config(56, 1), 1, "write_zeroes_may_unmap on a backend that can");
      assert.equal(other.rig.drv.config(12, 4), 254);
    });

    test("a read-only disk offers RO and refuses every write, DISCARD and WRITE_ZEROES with IOERR", () => {
      const backend = new FaultyBackend(MiB, { readOnly: true, contents: pattern(MiB, 2) });
      const blk = start(packed, { backend });
      assert.ok(blk.rig.drv.deviceFeatures() & F_RO);
      for (const readable of [
        [header(T_OUT, 0), pattern(512, 4)],
        [header(T_DISCARD), segment(0, 1)],
        [header(T_WRITE_ZEROES), segment(0, 1)],
      ]) {
        const r = request(blk, readable, [1]);
        assert.equal(r.status, S_IOERR);
        assert.equal(r.len, 1);
      }
      assert.deepEqual(backend.calls, [], "the backend was not asked");
      assert.deepEqual(backend.mem.data, pattern(MiB, 2));
      assert.equal(counter(blk, "io_errors"), 3);
      assert.equal(counter(blk, "written_bytes"), 0);
    });

    test("size_max bounds each data segment; header or status may share a segment with size_max bytes", () => {
      const backend = new FaultyBackend(MiB, { contents: pattern(MiB, 6) });
      const blk = start(packed, { backend, sizeMax: 4096 });
      assert.equal(blk.rig.drv.config(8, 4), 4096);
      const data = pattern(4096, 8);
      assert.equal(request(blk, [concat([header(T_OUT, 1), data])], [1]).status, S_OK, "header + size_max");
      assert.deepEqual(backend.mem.data.subarray(512, 512 + 4096), data);
      const r = request(blk, [header(T_IN, 1)], [4097]);
      assert.equal(r.status, S_OK, "size_max + status");
      assert.deepEqual(r.data, data);
      backend.calls.length = 0;
      for (const [what, readable, writable] of [
        ["read", [header(T_IN, 0)], [4608, 1]],
        ["read, the long segment second", [header(T_IN, 0)], [512, 4608, 1]],
        ["write", [header(T_OUT, 0), pattern(4608, 9)], [1]],
      ] as Array<[string, Uint8Array[], number[]]>) {
        const x = request(blk, readable, writable);
        assert.equal(x.status, S_IOERR, what);
        assert.equal(x.len, 1, what);
      }
      assert.deepEqual(backend.calls, [], "refused before any I/O");
      assert.deepEqual(backend.mem.data.subarray(0, 512), pattern(MiB, 6).subarray(0, 512));
    });

    describe("requests that cannot be framed set DEVICE_NEEDS_RESET, and the log says why", () => {
      const cases: Array<[string, Uint8Array[], number[], RegExp]> = [
        [
          "a 15-byte header",
          [header(T_FLUSH).subarray(0, 15)],
          [1],
          /15 device-readable bytes, the header needs 16/,
        ],
        ["no status byte", [header(T_FLUSH)], [], /no device-writable status byte/],
        [
          "IN with device-readable data",
          [header(T_IN), new Uint8Array(512)],
          [1],
          /data must be device-writable/,
        ],
        ["OUT with device-writable data", [header(T_OUT)], [512, 1], /data must be device-readable/],
        [
          "GET_ID with device-readable data",
          [header(T_GET_ID), new Uint8Array(20)],
          [1],
          /id buffer must be/,
        ],
        [
          "DISCARD with device-writable data",
          [header(T_DISCARD), segment(0, 1)],
          [16, 1],
          /segments must be/,
        ],
      ];
      for (const [what, readable, writable, reason] of cases) {
        test(what, () => {
          const backend = new FaultyBackend(MiB);
          const blk = start(packed, { backend });
          blk.q.addChain(readable, writable);
          blk.rig.drv.kick(0);
          assert.ok(needsReset(blk), "DEVICE_NEEDS_RESET");
          assert.equal(blk.q.usedChains().length, 0, "the request is not completed");
          assert.deepEqual(backend.calls, []);
          assert.equal(blk.rig.logs.length, 1);
          assert.match(blk.rig.logs[0] as string, reason);
        });
      }
    });
  });
}
