/**
 * Shared by the switch's unit tests: frame builders and an allocation check. (Not a test file: no `.test.ts`.)
 */
import { PerformanceObserver } from "node:perf_hooks";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";

setFlagsFromString("--expose-gc");
const gc = runInNewContext("gc") as () => void;

/**
 * Heap growth a loop of allocationsDuring's 200,000 calls may show without allocating per call: one object of 16
 * bytes per call would grow the heap by 3.2 MB; the engine's own bookkeeping (feedback, inline caches, code
 * finishing compilation) was seen to add up to 277 KB while the machine was loaded, with no collection.
 */
export const HEAP_SLACK = 1024 * 1024;

/** Measurements allocationsDuring makes at most before it gives the last one. */
const ATTEMPTS = 5;

/**
 * Runs `fn` `iterations` times after a full collection and reports how many garbage collections ran meanwhile
 * and how much the heap grew. A function that allocates nothing grows the heap by (almost) nothing and never
 * triggers a scavenge; one that allocates even one small object per call grows it by megabytes over 200k calls
 * (or, if the young generation fills first, triggers a collection the observer sees).
 *
 * The first clean measurement (no collection, growth under HEAP_SLACK) of up to ATTEMPTS is given, 100 ms apart:
 * on a loaded machine the optimizing compiler, which works on a thread of its own, may not have finished when a
 * measurement starts, and the baseline code boxes numbers (CI saw 3.5 MB in three measurements in a row while the
 * KVM tier's emulated hosts ran beside it). An allocation `fn` itself makes shows in every measurement.
 */
export async function allocationsDuring(
  fn: (i: number) => void,
  iterations = 200_000,
): Promise<{ gcs: number; heapGrowth: number }> {
  // Warm up so that compiling the function is not charged to the measured loop.
  for (let i = 0; i < 20_000; i++) fn(i);
  let m = await measureOnce(fn, iterations);
  for (let attempt = 1; attempt < ATTEMPTS && (m.gcs > 0 || m.heapGrowth >= HEAP_SLACK); attempt++) {
    await new Promise((r) => setTimeout(r, 100));
    m = await measureOnce(fn, iterations);
  }
  return m;
}

async function measureOnce(
  fn: (i: number) => void,
  iterations: number,
): Promise<{ gcs: number; heapGrowth: number }> {
  let gcs = 0;
  let t0 = Number.POSITIVE_INFINITY;
  let t1 = Number.POSITIVE_INFINITY;
  // Entries arrive later, so each is placed by its start time: only collections inside the loop count.
  const obs = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) if (e.startTime >= t0 && e.startTime <= t1) gcs++;
  });
  obs.observe({ entryTypes: ["gc"] });
  // Let the observer's own setup settle, then collect everything.
  await new Promise((r) => setImmediate(r));
  gc();
  const before = process.memoryUsage().heapUsed;
  t0 = performance.now();
  for (let i = 0; i < iterations; i++) fn(i);
  t1 = performance.now();
  const after = process.memoryUsage().heapUsed;
  await new Promise((r) => setTimeout(r, 20));
  obs.disconnect();
  return { gcs, heapGrowth: after - before };
}

/** Builder for test frames: big-endian writes into a growing byte list. */
export class FrameBuilder {
  readonly bytes: number[] = [];
  u8(...v: number[]): this {
    for (const x of v) this.bytes.push(x & 0xff);
    return this;
  }
  u16(v: number): this {
    return this.u8(v >>> 8, v);
  }
  u32(v: number): this {
    return this.u8(v >>> 24, v >>> 16, v >>> 8, v);
  }
  mac(s: string): this {
    return this.u8(...s.split(":").map((h) => Number.parseInt(h, 16)));
  }
  ip4(s: string): this {
    return this.u8(...s.split(".").map(Number));
  }
  ip6(s: string): this {
    return this.u8(...ipv6Bytes(s));
  }
  zeros(n: number): this {
    for (let i = 0; i < n; i++) this.bytes.push(0);
    return this;
  }
  /** Ethernet header, with an 802.1Q tag when `vlan` is given. */
  eth(dst: string, src: string, ethertype: number, vlan?: { vid: number; pcp?: number }): this {
    this.mac(dst).mac(src);
    if (vlan) this.u16(0x8100).u16(((vlan.pcp ?? 0) << 13) | vlan.vid);
    return this.u16(ethertype);
  }
  /** An IPv4 header (no options unless `options` bytes are given; IHL follows). */
  ipv4(
    src: string,
    dst: string,
    proto: number,
    payloadLen: number,
    o: { fragOffset?: number; mf?: boolean; options?: number; totalLen?: number } = {},
  ): this {
    const opt = o.options ?? 0;
    const ihl = 5 + opt / 4;
    this.u8(0x40 | ihl, 0)
      .u16(o.totalLen ?? ihl * 4 + payloadLen)
      .u16(0x1234)
      .u16((o.mf ? 0x2000 : 0) | (o.fragOffset ?? 0))
      .u8(64, proto)
      .u16(0)
      .ip4(src)
      .ip4(dst);
    for (let i = 0; i < opt; i++) this.u8(1); // NOP options
    return this;
  }
  ipv6(src: string, dst: string, nextHeader: number, payloadLen: number): this {
    return this.u32(0x60000000).u16(payloadLen).u8(nextHeader, 64).ip6(src).ip6(dst);
  }
  udp(sport: number, dport: number, payload = 0): this {
    return this.u16(sport)
      .u16(dport)
      .u16(8 + payload)
      .u16(0)
      .zeros(payload);
  }
  tcp(sport: number, dport: number): this {
    return this.u16(sport).u16(dport).u32(1).u32(0).u16(0x5002).u16(0xffff).u16(0).u16(0);
  }
  build(): Uint8Array {
    return Uint8Array.from(this.bytes);
  }
  get length(): number {
    return this.bytes.length;
  }
}

/** Test-side IPv6 text to bytes (full or "::"-compressed hex groups, an optional dotted IPv4 tail). */
export function ipv6Bytes(s: string): number[] {
  const [head, tail] = s.includes("::") ? s.split("::") : [s, undefined];
  const h = head ? head.split(":") : [];
  const t = tail ? tail.split(":") : [];
  const last = (tail === undefined ? h : t).at(-1);
  if (last?.includes(".")) {
    const [a, b, c, d] = last.split(".").map(Number) as [number, number, number, number];
    (tail === undefined ? h : t).splice(-1, 1, ((a << 8) | b).toString(16), ((c << 8) | d).toString(16));
  }
  const groups = tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill("0"), ...t];
  const out: number[] = [];
  for (const g of groups) {
    const v = Number.parseInt(g, 16);
    out.push(v >>> 8, v & 0xff);
  }
  return out;
}
