/**
 * virtio-blk through the virtio-pci transport, with the test driver writing real requests into guest memory,
 * for both ring layouts: I/O on the in-memory and file backends, flush, GET_ID, DISCARD, WRITE_ZEROES, read-only
 * disks, range checks, several queues, and malformed requests reaching DEVICE_NEEDS_RESET.
 */
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { FileBlockBackend } from "../../src/block/file.ts";
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
const F_RO = 1n << 5n;
const F_FLUSH = 1n << 9n;
const F_MQ = 1n << 12n;
const F_DISCARD = 1n << 13n;
const F_WRITE_ZEROES = 1n << 14n;
const F_PACKED = 1n << 34n;
const NEEDS_RESET = 0x40;

const tmp = mkdtempSync(join(tmpdir(), "vireo-blk-"));
after(() => rmSync(tmp, { recursive: true, force: true }));

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
  for (let i = 0; i < n; i++) b[i] = (seed + i * 13) & 0xff;
  return b;
}

interface Blk {
  rig: VirtioPciRig<VirtioBlk>;
  queues: VirtioTestDriver[];
}

function start(
  packed: boolean,
  opts: Partial<VirtioBlkOptions> & { accept?: (f: bigint) => bigint } = {},
): Blk {
  const backend = opts.backend ?? new MemoryBlockBackend(1 << 20);
  const rig = makeVirtioPciRig(new VirtioBlk({ ...opts, backend }));
  const accept = opts.accept ?? ((f: bigint) => f);
  assert.ok(rig.drv.negotiate((f) => accept(packed ? f : f & ~F_PACKED)));
  const queues: VirtioTestDriver[] = [];
  const n = rig.drv.common(0x12, 2);
  for (let q = 0; q < n; q++) queues.push(rig.drv.setupQueue(q, { size: 16 }));
  rig.drv.driverOk();
  return { rig, queues };
}

/** Submits one request and returns (status, data before the status, used length). */
function request(
  blk: Blk,
  readable: Uint8Array[],
  writable: number[],
  opts: { queue?: number; indirect?: boolean } = {},
): { status: number; data: Uint8Array; len: number } {
  const q = opts.queue ?? 0;
  const drv = blk.queues[q] as VirtioTestDriver;
  drv.addChain(readable, writable, { indirect: opts.indirect, fill: 0xee });
  blk.rig.drv.kick(q);
  const used = drv.usedChains();
  assert.equal(used.length, 1, "one request completed");
  const u = used[0];
  assert.ok(u);
  const all = new Uint8Array(u.data.reduce((n, d) => n + d.length, 0));
  let at = 0;
  for (const d of u.data) {
    all.set(d, at);
    at += d.length;
  }
  return { status: all[all.length - 1] as number, data: all.subarray(0, all.length - 1), len: u.len };
}

for (const packed of [false, true]) {
  const layout = packed ? "packed" : "split";

  describe(`virtio-blk (${layout})`, () => {
    test("configuration: capacity, blk_size, seg_max, discard and write-zeroes limits", () => {
      const { rig } = start(packed);
      assert.equal(rig.drv.config(0, 4) + rig.drv.config(4, 4) * 2 ** 32, 2048, "capacity in sectors");
      assert.equal(rig.drv.config(20, 4), 512);
      assert.equal(rig.drv.config(12, 4), 254);
      assert.ok(rig.drv.config(36, 4) > 0 && rig.drv.config(40, 4) >= 1);
      assert.ok(rig.drv.config(48, 4) > 0 && rig.drv.config(52, 4) >= 1);
      const f = rig.drv.deviceFeatures();
      assert.ok(f & F_FLUSH && f & F_DISCARD && f & F_WRITE_ZEROES);
      assert.equal(f & F_RO, 0n);
      assert.equal(f & F_MQ, 0n);
    });

    test("write, read back, flush (memory backend)", () => {
      const backend = new MemoryBlockBackend(1 << 20);
      const blk = start(packed, { backend });
      const data = pattern(4096, 7);
      const w = request(blk, [header(T_OUT, 3), data.subarray(0, 1000), data.subarray(1000)], [1]);
      assert.equal(w.status, S_OK);
      assert.equal(w.len, 1, "only the status byte was written");
      assert.deepEqual(backend.data.subarray(3 * 512, 3 * 512 + 4096), data);
      const r = request(blk, [header(T_IN, 3)], [512, 3584, 1]);
      assert.equal(r.status, S_OK);
      assert.equal(r.len, 4097);
      assert.deepEqual(r.data, data);
      const f = request(blk, [header(T_FLUSH)], [1]);
      assert.equal(f.status, S_OK);
      assert.equal(backend.flushes, 1);
      const m = blk.rig.metrics;
      assert.equal(m.counter("virtio.blk0.requests").value, 3);
      assert.equal(m.counter("virtio.blk0.read_bytes").value, 4096);
      assert.equal(m.counter("virtio.blk0.written_bytes").value, 4096);
    });

    test("write, read back, flush on a temporary file; the file holds the bytes", () => {
      const path = join(tmp, `disk-${layout}.img`);
      const backend = FileBlockBackend.create(path, 1 << 20, { direct: true });
      try {
        const blk = start(packed, { backend });
        const data = pattern(8192, 99);
        assert.equal(request(blk, [header(T_OUT, 10), data], [1], { indirect: true }).status, S_OK);
        assert.equal(request(blk, [header(T_FLUSH)], [1]).status, S_OK);
        const file = readFileSync(path);
        assert.equal(file.length, 1 << 20);
        assert.deepEqual(new Uint8Array(file.subarray(10 * 512, 10 * 512 + 8192)), data);
        assert.equal(file[10 * 512 - 1], 0);
        const r = request(blk, [header(T_IN, 10)], [8192, 1]);
        assert.deepEqual(r.data, data);
      } finally {
        backend.close();
      }
    });

    test("GET_ID returns the 20-byte NUL-padded serial", () => {
      const blk = start(packed, { serial: "vireo-disk-1" });
      const r = request(blk, [header(T_GET_ID)], [20, 1]);
      assert.equal(r.status, S_OK);
      assert.equal(r.len, 21);
      const expected = new Uint8Array(20);
      expected.set(new TextEncoder().encode("vireo-disk-1"));
      assert.deepEqual(r.data, expected);
    });

    test("DISCARD and WRITE_ZEROES (with UNMAP); unmap on discard and unknown flags are UNSUPP", () => {
      const backend = new MemoryBlockBackend(1 << 20, { contents: pattern(1 << 20, 1) });
      const blk = start(packed, { backend, maxWriteZeroesSegments: 2 });
      assert.equal(
        request(blk, [header(T_WRITE_ZEROES), segment(4, 2), segment(100, 1, 1)], [1]).status,
        S_OK,
      );
      assert.ok(backend.data.subarray(4 * 512, 6 * 512).every((b) => b === 0));
      assert.ok(backend.data.subarray(100 * 512, 101 * 512).every((b) => b === 0));
      assert.notEqual(backend.data[6 * 512], 0, "only the segments were zeroed");
      assert.equal(request(blk, [header(T_DISCARD), segment(8, 8)], [1]).status, S_OK);
      assert.equal(request(blk, [header(T_DISCARD), segment(8, 8, 1)], [1]).status, S_UNSUPP);
      assert.equal(request(blk, [header(T_WRITE_ZEROES), segment(8, 8, 2)], [1]).status, S_UNSUPP);
      assert.equal(
        request(blk, [header(T_DISCARD), segment(0, 1), segment(2, 1)], [1]).status,
        S_IOERR,
        "max_discard_seg is 1",
      );
      assert.equal(request(blk, [header(T_DISCARD), segment(2047, 2)], [1]).status, S_IOERR, "past capacity");
      assert.equal(
        request(blk, [header(T_DISCARD), new Uint8Array(10)], [1]).status,
        S_IOERR,
        "partial segment",
      );
    });

    test("DISCARD without the feature negotiated is UNSUPP", () => {
      const blk = start(packed, { accept: (f) => f & ~F_DISCARD });
      assert.equal(request(blk, [header(T_DISCARD), segment(0, 1)], [1]).status, S_UNSUPP);
    });

    test("read-only disk: RO offered, writes fail with IOERR and write nothing", () => {
      const backend = new MemoryBlockBackend(1 << 16, { readOnly: true, contents: pattern(1 << 16, 5) });
      const blk = start(packed, { backend });
      assert.ok(blk.rig.drv.deviceFeatures() & F_RO);
      const before = backend.data.slice();
      assert.equal(request(blk, [header(T_OUT, 0), new Uint8Array(512)], [1]).status, S_IOERR);
      assert.equal(request(blk, [header(T_WRITE_ZEROES), segment(0, 1)], [1]).status, S_IOERR);
      assert.deepEqual(backend.data, before);
      assert.equal(request(blk, [header(T_IN, 0)], [512, 1]).status, S_OK, "reads still work");
    });

    test("out-of-range sectors and partial sectors are IOERR; unknown types UNSUPP", () => {
      const blk = start(packed);
      assert.equal(request(blk, [header(T_IN, 2048)], [512, 1]).status, S_IOERR);
      assert.equal(request(blk, [header(T_IN, 2047)], [1024, 1]).status, S_IOERR);
      assert.equal(request(blk, [header(T_IN, 2 ** 60)], [512, 1]).status, S_IOERR);
      assert.equal(request(blk, [header(T_OUT, 2047), new Uint8Array(1024)], [1]).status, S_IOERR);
      assert.equal(request(blk, [header(T_IN, 0)], [100, 1]).status, S_IOERR);
      assert.equal(request(blk, [header(T_IN, 2047)], [512, 1]).status, S_OK, "the last sector is fine");
      assert.equal(request(blk, [header(77)], [1]).status, S_UNSUPP);
      assert.equal(request(blk, [header(10)], [8, 1]).status, S_UNSUPP, "GET_LIFETIME not offered");
    });

    test("several queues (VIRTIO_BLK_F_MQ): each serves requests", () => {
      const backend = new MemoryBlockBackend(1 << 20);
      const blk = start(packed, { backend, numQueues: 3 });
      assert.ok(blk.rig.drv.deviceFeatures() & F_MQ);
      assert.equal(blk.rig.drv.config(34, 2), 3);
      assert.equal(blk.queues.length, 3);
      for (let q = 0; q < 3; q++) {
        assert.equal(request(blk, [header(T_OUT, q * 8), pattern(512, q)], [1], { queue: q }).status, S_OK);
      }
      for (let q = 0; q < 3; q++) {
        const r = request(blk, [header(T_IN, q * 8)], [512, 1], { queue: (q + 1) % 3 });
        assert.deepEqual(r.data, pattern(512, q));
      }
    });

    describe("malformed requests reach DEVICE_NEEDS_RESET without a host exception", () => {
      const cases: Array<[string, (drv: VirtioTestDriver) => void]> = [
        ["header too short", (d) => d.addChain([new Uint8Array(8)], [1])],
        ["no status byte", (d) => d.addChain([header(T_IN, 0)], [])],
        ["IN with device-readable data", (d) => d.addChain([header(T_IN, 0), new Uint8Array(512)], [1])],
        ["OUT with device-writable data", (d) => d.addChain([header(T_OUT, 0)], [512, 1])],
        [
          "descriptor outside guest RAM",
          (d) => {
            if (d.kind === "split") {
              d.writeDesc(0, { addr: 0x10, len: 16, flags: 0 });
              d.pushAvail(0);
            } else d.makeAvailableRaw([{ addr: 0x10, len: 16, flags: 0, id: 0 }]);
          },
        ],
        [
          "readable after writable",
          (d) => {
            const a = d.alloc(64);
            if (d.kind === "split") {
              d.writeDesc(0, { addr: a, len: 1, flags: 2 | 1, next: 1 });
              d.writeDesc(1, { addr: a + 16, len: 16, flags: 0 });
              d.pushAvail(0);
            } else {
              d.makeAvailableRaw([
                { addr: a, len: 1, flags: 2 | 1, id: 0 },
                { addr: a + 16, len: 16, flags: 0, id: 0 },
              ]);
            }
          },
        ],
      ];
      for (const [what, make] of cases) {
        test(what, () => {
          const blk = start(packed);
          blk.rig.drv.enableMsix(2);
          blk.rig.drv.setCommon(0x10, 2, 1);
          make(blk.queues[0] as VirtioTestDriver);
          assert.doesNotThrow(() => blk.rig.drv.kick(0));
          assert.ok(blk.rig.drv.status & NEEDS_RESET, "DEVICE_NEEDS_RESET");
          assert.deepEqual(blk.rig.msis, [0x41], "configuration change notification");
          assert.equal(blk.rig.logs.length, 1, "reported once");
          blk.rig.drv.kick(0);
          assert.equal(blk.rig.logs.length, 1, "still once");
        });
      }
    });
  });
}
