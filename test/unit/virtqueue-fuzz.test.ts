/**
 * Property test: whatever a guest writes into the rings and indirect tables, pop() returns a well-formed chain
 * whose every segment lies inside guest RAM, returns null, or throws VirtqueueError; never anything else, never
 * a hang. Garbage comes from a seeded PRNG and is biased toward plausible values (small indices, addresses in
 * RAM, the right AVAIL/USED bits) so that deep paths (chains, indirect tables, wrap) are reached too.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  createVirtqueue,
  type DescriptorChain,
  type QueueKind,
  readChain,
  SingleBuffers,
  VIRTQ_DESC_F_AVAIL,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_USED,
  VIRTQ_DESC_F_WRITE,
  type Virtqueue,
  VirtqueueError,
} from "../../src/devices/virtio/queue/index.ts";
import type { GuestMemory } from "../../src/memory/guest-memory.ts";
import { makeTestMemory, VirtioTestDriver } from "../helpers/virtio-driver.ts";

/** xorshift32: small, seedable, good enough to drive a fuzzer. */
function prng(seed: number): { u32(): number; below(n: number): number; chance(p: number): boolean } {
  let s = seed >>> 0 || 1;
  const u32 = () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s;
  };
  return { u32, below: (n) => u32() % n, chance: (p) => u32() / 2 ** 32 < p };
}

type Rng = ReturnType<typeof prng>;

const RAM_BASE = 0x4000;
const RAM_SIZE = 0x10000;
const TABLES = RAM_BASE + 0x8000;
const TABLES_SIZE = 0x1000;

interface Stats {
  chains: number;
  singles: number;
  multiSegment: number;
  throughIndirect: number;
  errors: Map<string, number>;
}

function randomAddr(r: Rng, mem: GuestMemory): bigint {
  switch (r.below(8)) {
    case 0:
      return BigInt(TABLES + 16 * r.below(TABLES_SIZE / 16));
    case 1:
      return BigInt(mem.end - r.below(64));
    case 2:
      return BigInt(r.below(mem.base + 16));
    case 3:
      return (BigInt(r.u32()) << 32n) | BigInt(r.u32());
    case 4:
      return 2n ** 53n - BigInt(r.below(4));
    default:
      return BigInt(mem.base + r.below(mem.size));
  }
}

function randomLen(r: Rng): number {
  switch (r.below(6)) {
    case 0:
      return 0;
    case 1:
      return 16 * (1 + r.below(8));
    case 2:
      return r.u32();
    case 3:
      return 0xffffffff;
    default:
      return r.below(256);
  }
}

function randomFlags(r: Rng, kind: QueueKind, wrap: number): number {
  if (r.chance(0.1)) return r.u32() & 0xffff;
  let f = 0;
  if (r.chance(0.5)) f |= VIRTQ_DESC_F_NEXT;
  if (r.chance(0.4)) f |= VIRTQ_DESC_F_WRITE;
  if (r.chance(0.15)) f |= VIRTQ_DESC_F_INDIRECT;
  if (kind === "packed") {
    // Mostly "available for this lap", sometimes anything.
    if (r.chance(0.8)) f |= wrap ? VIRTQ_DESC_F_AVAIL : VIRTQ_DESC_F_USED;
    else f |= r.below(4) === 0 ? VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED : 0;
  }
  return f;
}

function writeRandomDesc(
  r: Rng,
  mem: GuestMemory,
  at: number,
  kind: QueueKind,
  size: number,
  wrap: number,
): void {
  mem.writeU64(at, randomAddr(r, mem));
  mem.writeU32(at + 8, randomLen(r) >>> 0);
  const small = r.chance(0.85) ? r.below(size + 2) : r.u32() & 0xffff;
  const flags = randomFlags(r, kind, wrap);
  if (kind === "split") {
    mem.writeU16(at + 12, flags);
    mem.writeU16(at + 14, small);
  } else {
    mem.writeU16(at + 12, small);
    mem.writeU16(at + 14, flags);
  }
}

function scribble(r: Rng, mem: GuestMemory, drv: VirtioTestDriver, kind: QueueKind, wrap: number): void {
  const size = drv.size;
  const n = r.chance(0.3) ? size : 1 + r.below(Math.min(size, 4));
  for (let i = 0; i < n; i++)
    writeRandomDesc(r, mem, drv.layout.descAddr + 16 * r.below(size), kind, size, wrap);
  for (let i = 0; i < 4; i++)
    writeRandomDesc(r, mem, TABLES + 16 * r.below(TABLES_SIZE / 16), kind, size, wrap);
  if (kind === "split") {
    const avail = drv.layout.driverAddr;
    if (r.chance(0.5)) {
      const idx = mem.readU16(avail + 2);
      mem.writeU16(avail + 2, r.chance(0.9) ? (idx + r.below(size + 2)) & 0xffff : r.u32() & 0xffff);
    }
    for (let i = 0; i < 2; i++) {
      mem.writeU16(avail + 4 + 2 * r.below(size), r.chance(0.9) ? r.below(size + 1) : r.u32() & 0xffff);
    }
    if (r.chance(0.2)) mem.writeU16(avail, r.u32() & 0xffff); // flags
    if (r.chance(0.2)) mem.writeU16(avail + 4 + 2 * size, r.u32() & 0xffff); // used_event
    // The guest may also scribble over the device-owned used ring.
    if (r.chance(0.1)) mem.writeU32(drv.layout.deviceAddr + r.below(6 + 8 * size - 3), r.u32());
  } else {
    if (r.chance(0.3)) mem.writeU32(drv.layout.driverAddr, r.u32());
    if (r.chance(0.1)) mem.writeU32(drv.layout.deviceAddr, r.u32());
  }
}

function checkChain(c: DescriptorChain, q: Virtqueue, mem: GuestMemory): void {
  assert.ok(Number.isInteger(c.id) && c.id >= 0 && c.id < q.size, `id ${c.id}`);
  assert.ok(c.descriptorCount >= 1 && c.descriptorCount <= q.size, `descriptorCount ${c.descriptorCount}`);
  assert.ok(c.readable.length + c.writable.length <= q.size, "more segments than the queue size");
  let rl = 0;
  let wl = 0;
  for (const [list, isWritable] of [
    [c.readable, false],
    [c.writable, true],
  ] as const) {
    for (const s of list) {
      assert.ok(Number.isSafeInteger(s.addr) && Number.isSafeInteger(s.len), "integer segment");
      assert.ok(s.len > 0, "zero-length segments are not returned");
      assert.ok(s.addr >= mem.base && s.addr + s.len <= mem.end, `segment 0x${s.addr.toString(16)}+${s.len}`);
      if (isWritable) wl += s.len;
      else rl += s.len;
    }
  }
  assert.equal(c.readableLength, rl);
  assert.equal(c.writableLength, wl);
  assert.ok(rl + wl <= 2 ** 32);
  // The chain's bytes are readable without touching anything outside RAM.
  readChain(mem, c, new Uint8Array(Math.min(rl, 4096)));
}

function classify(e: unknown): string {
  assert.ok(e instanceof VirtqueueError, `non-VirtqueueError escaped: ${String(e)}`);
  assert.equal(e.code, "VIREO_VIRTQUEUE_MALFORMED");
  // A GuestMemoryError converted at the boundary would mean a check is missing.
  assert.doesNotMatch(e.message, /unexpected failure/);
  return e.message
    .replace(/^virtq \w+: /, "")
    .replace(/0x[0-9a-f]+|\d+/g, "#")
    .slice(0, 40);
}

function fuzz(kind: QueueKind, seed: number, iterations: number): Stats {
  const r = prng(seed);
  // Shared, so that split queues also take one-descriptor chains in their flat form (popSingles).
  const mem = makeTestMemory({ size: RAM_SIZE, base: RAM_BASE, shared: true });
  const stats: Stats = { chains: 0, singles: 0, multiSegment: 0, throughIndirect: 0, errors: new Map() };
  const singles = new SingleBuffers(4);
  const sizes = kind === "split" ? [1, 2, 4, 8, 16] : [1, 2, 3, 4, 7, 8, 16];
  for (let it = 0; it < iterations; it++) {
    const size = sizes[r.below(sizes.length)] as number;
    const features = { eventIdx: r.chance(0.5), indirect: r.chance(0.7) };
    mem.fill(mem.base, 0x8000, 0);
    const drv = new VirtioTestDriver(mem, { kind, size, features, limit: TABLES });
    const q = createVirtqueue(kind, mem, drv.config, features, { name: "fuzz" });
    const inFlight: DescriptorChain[] = [];
    /** Chains popSingles took and not yet used: id and writable length. */
    const singlesInFlight: Array<{ id: number; room: number }> = [];
    // Start from a few well-formed buffers, so garbage lands in a live ring.
    for (let i = 0; i < r.below(size + 1); i++) {
      if (drv.freeSlots < 2) break;
      drv.addChain([Uint8Array.of(1, 2, 3)], [8], { indirect: features.indirect && r.chance(0.3) });
    }
    let wrap = 1;
    for (let step = 0; step < 3 * size + 6; step++) {
      if (r.chance(0.6)) scribble(r, mem, drv, kind, wrap);
      if (r.chance(0.1)) wrap ^= 1;
      let c: DescriptorChain | null = null;
      try {
        if (r.chance(0.4)) {
          // The flat form: every buffer handed out lies inside guest RAM; some are given back at once.
          const writable = r.chance(0.5);
          const n = q.popSingles(singles, 1 + r.below(4), writable);
          for (let k = 0; k < n; k++) {
            const off = singles.offs[k] as number;
            const len = singles.lens[k] as number;
            assert.ok(
              Number.isSafeInteger(off) && off >= 0 && len > 0 && off + len <= mem.size,
              "single in RAM",
            );
            stats.singles++;
          }
          const keep = r.chance(0.3) ? r.below(n + 1) : n;
          q.unpopSingles(singles, keep, n);
          for (let k = 0; k < keep; k++) {
            const id = singles.ids[k] as number;
            singlesInFlight.push({ id, room: writable ? (singles.lens[k] as number) : 0 });
          }
        } else {
          c = q.pop();
        }
      } catch (e) {
        const k = classify(e);
        stats.errors.set(k, (stats.errors.get(k) ?? 0) + 1);
        continue;
      }
      if (c) {
        checkChain(c, q, mem);
        stats.chains++;
        if (c.readable.length + c.writable.length > 1) stats.multiSegment++;
        if (c.readable.length + c.writable.length > c.descriptorCount) stats.throughIndirect++;
        inFlight.push(c);
      }
      // Return some buffers (in any order) and exercise notification paths; none of this may throw.
      while (inFlight.length > 0 && r.chance(0.5)) {
        const i = r.below(inFlight.length);
        const done = inFlight.splice(i, 1)[0] as DescriptorChain;
        q.pushUsed(done, r.below(done.writableLength + 1));
      }
      while (singlesInFlight.length > 0 && r.chance(0.5)) {
        const done = singlesInFlight.splice(r.below(singlesInFlight.length), 1)[0] as {
          id: number;
          room: number;
        };
        q.pushUsedSingle(done.id, r.below(Math.min(done.room, 1 << 20) + 1));
      }
      q.shouldNotifyDriver();
      if (r.chance(0.2)) q.setDriverNotifications(r.chance(0.5));
    }
  }
  return stats;
}

for (const kind of ["split", "packed"] as const) {
  describe(`virtqueue fuzz (${kind})`, () => {
    for (const seed of [1, 0xc0ffee, 20250101]) {
      test(`seed ${seed}: garbage never escapes as anything but VirtqueueError`, { timeout: 60_000 }, () => {
        const stats = fuzz(kind, seed, 1500);
        // The fuzzer has to reach deep paths for the property to mean anything.
        assert.ok(stats.chains > 500, `chains popped: ${stats.chains}`);
        if (kind === "split")
          assert.ok(stats.singles > 100, `chains popped in their flat form: ${stats.singles}`);
        assert.ok(stats.multiSegment > 50, `multi-segment chains: ${stats.multiSegment}`);
        assert.ok(stats.throughIndirect > 10, `chains through indirect tables: ${stats.throughIndirect}`);
        assert.ok(stats.errors.size >= 8, `distinct errors: ${[...stats.errors.keys()].join(" | ")}`);
      });
    }
  });
}
