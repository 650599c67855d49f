import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { MAX_FRAME_BYTES, RateLimitError, TokenBucket } from "../../src/switch/rate-limit.ts";
import { allocationsDuring, HEAP_SLACK } from "../helpers/switch-frames.ts";

/** A small deterministic PRNG (xorshift32), so the offered load is the same on every run. */
function prng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 0x100000000;
  };
}

interface Offered {
  /** Simulated seconds. */
  seconds: number;
  /** Mean frames offered per simulated second (arrivals are jittered around it). */
  offeredFps: number;
  /** Frame size: fixed, or drawn uniformly from [min, max]. */
  size: number | [number, number];
  startMs?: number;
  seed?: number;
}

/** Offers frames to the bucket on a simulated clock; returns what it admitted. */
function offer(
  b: TokenBucket,
  o: Offered,
): { frames: number; bytes: number; offeredBytes: number; endMs: number } {
  const rnd = prng(o.seed ?? 7);
  const start = o.startMs ?? 0;
  const end = start + o.seconds * 1000;
  const gap = 1000 / o.offeredFps;
  let frames = 0;
  let bytes = 0;
  let offeredBytes = 0;
  for (let t = start; t < end; t += gap * (0.5 + rnd())) {
    const len =
      typeof o.size === "number" ? o.size : o.size[0] + Math.floor(rnd() * (o.size[1] - o.size[0] + 1));
    offeredBytes += len;
    if (b.admit(len, t)) {
      frames++;
      bytes += len;
    }
  }
  return { frames, bytes, offeredBytes, endMs: end };
}

function within(actual: number, want: number, tolerance: number, what: string): void {
  const err = Math.abs(actual - want) / want;
  assert.ok(err <= tolerance, `${what}: ${actual} vs ${want} (${(err * 100).toFixed(2)} % off)`);
}

describe("TokenBucket: admitted rate over 10 simulated seconds of overload", () => {
  test("bytes/s: mixed sizes offered at 3x the rate, admitted within 5 % (and within 2 % after the burst)", () => {
    const rate = 12_500_000; // 100 Mbit/s
    const b = new TokenBucket({ bytesPerSec: rate }, 0);
    // 3x the rate in frames of 64-1518 bytes (mean 791).
    const r = offer(b, { seconds: 10, offeredFps: (3 * rate) / 791, size: [64, 1518] });
    assert.ok(r.offeredBytes > 2.5 * rate * 10, `offered ${r.offeredBytes}`);
    within(r.bytes / 10, rate, 0.05, "admitted bytes/s");
    // The only excess is the initial burst (a tenth of a second).
    within(r.bytes - rate / 10, rate * 10, 0.02, "admitted bytes minus the burst");
    const s = b.stats();
    assert.equal(s.admittedBytes, r.bytes);
    assert.equal(s.admitted, r.frames);
    assert.equal(s.admittedBytes + s.droppedBytes, r.offeredBytes);
    assert.equal(s.burstBytes, rate / 10);
  });

  test("frames/s: small frames offered at 4x, admitted within 5 %", () => {
    const rate = 100_000;
    const b = new TokenBucket({ framesPerSec: rate }, 1_000_000);
    const r = offer(b, { seconds: 10, offeredFps: 4 * rate, size: 64, startMs: 1_000_000 });
    within(r.frames / 10, rate, 0.05, "admitted frames/s");
    within(r.frames - rate / 10, rate * 10, 0.02, "admitted frames minus the burst");
    assert.equal(b.stats().dropped + b.stats().admitted, b.stats().admitted + b.stats().dropped);
    assert.ok(b.stats().dropped > 2 * r.frames, `dropped ${b.stats().dropped}`);
  });

  test("both limits: the tighter one binds, for large frames bytes and for small frames frames", () => {
    // 1 MB/s and 1000 frames/s: 1500-byte frames are held to 666/s by the bytes, 64-byte ones to 1000/s by frames.
    const big = new TokenBucket({ bytesPerSec: 1_000_000, framesPerSec: 1000 }, 0);
    const rb = offer(big, { seconds: 10, offeredFps: 5000, size: 1500 });
    within(rb.bytes / 10, 1_000_000, 0.05, "big frames: bytes/s");
    assert.ok(rb.frames / 10 < 700, `big frames: ${rb.frames / 10} frames/s`);
    const small = new TokenBucket({ bytesPerSec: 1_000_000, framesPerSec: 1000 }, 0);
    const rs = offer(small, { seconds: 10, offeredFps: 5000, size: 64 });
    within(rs.frames / 10, 1000, 0.05, "small frames: frames/s");
    assert.ok(rs.bytes / 10 < 70_000, `small frames: ${rs.bytes / 10} bytes/s`);
  });

  test("under the rate nothing is dropped", () => {
    const b = new TokenBucket({ bytesPerSec: 10_000_000, framesPerSec: 20_000 }, 0);
    // 80 % of the byte rate, evenly spaced.
    const r = offer(b, { seconds: 10, offeredFps: 8000, size: 1000 });
    assert.equal(b.stats().dropped, 0);
    assert.equal(r.bytes, r.offeredBytes);
  });

  test("a coarse clock (1 ms ticks, many frames per tick) still holds the rate", () => {
    const rate = 50_000_000;
    const b = new TokenBucket({ bytesPerSec: rate }, 0);
    let bytes = 0;
    for (let ms = 0; ms < 10_000; ms++) for (let i = 0; i < 100; i++) if (b.admit(1000, ms)) bytes += 1000;
    within(bytes / 10, rate, 0.05, "admitted bytes/s");
  });
});

describe("TokenBucket: bursts and idle time", () => {
  test("the bucket starts full: a back-to-back burst of exactly burstBytes passes, then nothing", () => {
    const b = new TokenBucket({ bytesPerSec: 1_000_000, burstBytes: 10_000 }, 0);
    let n = 0;
    while (b.admit(1000, 0)) n++;
    assert.equal(n, 10);
    assert.equal(b.admit(1, 0), false);
  });

  test("idle time refills only up to the burst", () => {
    const b = new TokenBucket({ bytesPerSec: 1_000_000, framesPerSec: 10_000 }, 0);
    assert.equal(b.stats().burstBytes, 100_000);
    assert.equal(b.stats().burstFrames, 1000);
    // Empty it, then stay idle a minute: 60 MB and 600k frames' worth of time.
    while (b.admit(1000, 5)) {}
    let n = 0;
    while (b.admit(100, 60_005)) n++;
    // The byte bucket holds 100 000 bytes = 1000 frames of 100 bytes; the frame bucket 1000 frames.
    assert.equal(n, 1000);
    // And 10 ms later there are 10 ms' worth: 100 frames by the frame limit, 10 000 bytes = 100 frames by bytes.
    n = 0;
    while (b.admit(100, 60_015)) n++;
    assert.ok(n >= 99 && n <= 100, `${n} frames after 10 ms`);
  });

  test("default bursts: a tenth of a second, at least one 1518-byte frame and one frame", () => {
    let s = new TokenBucket({ bytesPerSec: 1000, framesPerSec: 5 }, 0).stats();
    assert.equal(s.burstBytes, MAX_FRAME_BYTES);
    assert.equal(s.burstFrames, 1);
    s = new TokenBucket({ bytesPerSec: 1e9 }, 0).stats();
    assert.equal(s.burstBytes, 1e8);
    assert.equal(s.burstFrames, null);
    assert.equal(s.framesPerSec, null);
    // A slow limit still passes a full-size frame after a full second.
    const b = new TokenBucket({ bytesPerSec: 1000 }, 0);
    assert.equal(b.admit(1518, 0), true);
    assert.equal(b.admit(1518, 1000), false);
    assert.equal(b.admit(1518, 1519), true);
  });

  test("a clock stepping back refills nothing", () => {
    const b = new TokenBucket({ framesPerSec: 1000, burstFrames: 1 }, 100);
    assert.equal(b.admit(60, 100), true);
    assert.equal(b.admit(60, 50), false);
    assert.equal(b.admit(60, 100.5), false);
    assert.equal(b.admit(60, 101), true);
  });
});

describe("TokenBucket: configuration and cost", () => {
  test("bad configurations throw RateLimitError naming the field", () => {
    const bad: Array<[object, RegExp]> = [
      [{}, /give bytesPerSec, framesPerSec or both/],
      [{ bytesPerSec: 0 }, /bytesPerSec must be a positive number/],
      [{ bytesPerSec: -5 }, /bytesPerSec must be a positive number/],
      [{ framesPerSec: Number.NaN }, /framesPerSec must be a positive number/],
      [{ framesPerSec: Number.POSITIVE_INFINITY }, /framesPerSec must be a positive number/],
      [{ bytesPerSec: 100, burstBytes: 0 }, /burstBytes must be a positive number/],
      [{ framesPerSec: 100, burstFrames: 0.5 }, /burstFrames must be at least 1/],
      [{ framesPerSec: 100, burstBytes: 5000 }, /burstBytes needs bytesPerSec/],
      [{ bytesPerSec: 100, burstFrames: 5 }, /burstFrames needs framesPerSec/],
      [{ bytesPerSec: "100" }, /bytesPerSec must be a positive number/],
    ];
    for (const [cfg, re] of bad)
      assert.throws(
        () => new TokenBucket(cfg, 0),
        (e: unknown) =>
          e instanceof RateLimitError && e.code === "VIREO_SWITCH_RATE_LIMIT" && re.test(e.message),
        JSON.stringify(cfg),
      );
    // Fields given as undefined are absent (the control socket passes them so).
    assert.doesNotThrow(
      () => new TokenBucket({ bytesPerSec: 5, framesPerSec: undefined, burstBytes: undefined }, 0),
    );
  });

  test("admit allocates nothing, with fractional millisecond times as performance.now() gives", async () => {
    // The times are made (boxed) beforehand, as performance.now() hands the caller a number once per batch;
    // each call refills (the clock moves every time) and both the admit and the drop paths run.
    const times: unknown[] = [];
    for (let i = 0; i < 230_000; i++) times.push(0.5 + i * 0.01);
    times.push({}); // keeps the array of tagged values: reading an element allocates nothing
    const b = new TokenBucket({ bytesPerSec: 1e7, framesPerSec: 1e5 }, 0.25);
    let k = 0;
    const { gcs, heapGrowth } = await allocationsDuring((i) => {
      b.admit(64 + (i & 1023), times[k++] as number);
    });
    assert.equal(gcs, 0);
    assert.ok(heapGrowth < HEAP_SLACK, `heap grew ${heapGrowth} bytes`);
    assert.ok(b.stats().admitted > 10_000 && b.stats().dropped > 10_000, JSON.stringify(b.stats()));
  });
});
