/**
 * The switch's forwarding table: (VLAN, MAC) → port, learned from source addresses, aged out, and bounded so a
 * guest flooding random source MACs cannot grow it, evict other ports' stations, or slow lookups down.
 *
 * - Fixed memory: `capacity` entries in typed arrays, set-associative (WAYS entries per bucket), so a lookup or
 *   a learn looks at WAYS entries whatever the table holds. The bucket hash is keyed with a random seed per
 *   table, so a guest cannot aim its addresses at one bucket.
 * - A live entry is not evicted by a new address, with one exception: when the source port has as many live
 *   entries as `perPortLimit`, or its address's bucket is full, the new address is not learned (counted), and
 *   frames to it are flooded, as to any unknown address. A flooding port thus fills at most its own quota. The
 *   exception keeps a flood from holding the buckets it hashes to: a full bucket gives up the oldest entry of a
 *   heavy port (one holding at least half its quota and more than twice the learner's entries) to the learner.
 * - Ageing: an entry not refreshed for `ageMs` no longer answers lookups, and its slot is free for reuse;
 *   `sweep` reclaims expired entries in bulk and corrects the per-port counts (the switch runs it about once a
 *   second).
 */

const WAYS = 4;
const FREE = -1;

export interface MacTableOptions {
  /** Entries in all (rounded up to a power of 2, at least WAYS). Default 8192. */
  capacity?: number;
  /** Live entries one port may hold. Default 1024. */
  perPortLimit?: number;
  /** Age after which an entry not seen again expires, in ms. Default 300,000 (IEEE 802.1Q's default). */
  ageMs?: number;
  /** Ports the table may see (port indices are 0 to maxPorts - 1). Default 64. */
  maxPorts?: number;
  /** The bucket hash's key. Default random per table; tests fix it to be repeatable. */
  seed?: number;
}

export interface MacEntry {
  vlan: number;
  mac: string;
  port: number;
  ageMs: number;
}

export function macString(hi: number, lo: number): string {
  const b = [hi >>> 8, hi & 0xff, lo >>> 24, (lo >>> 16) & 0xff, (lo >>> 8) & 0xff, lo & 0xff];
  return b.map((x) => x.toString(16).padStart(2, "0")).join(":");
}

export class MacTable {
  readonly capacity: number;
  readonly perPortLimit: number;
  readonly ageMs: number;
  private readonly buckets: number;
  /** VLAN (12 bits) << 16 | MAC's top 16 bits; FREE for an unused slot. */
  private readonly keyHi: Int32Array;
  /** MAC's low 32 bits. */
  private readonly keyLo: Int32Array;
  private readonly port: Int32Array;
  private readonly seen: Float64Array;
  /** Entries per port, live or expired but not yet reclaimed. */
  private readonly perPort: Int32Array;
  private readonly seed: number;
  private used = 0;
  readonly stats = { learned: 0, moved: 0, aged: 0, refusedPortLimit: 0, refusedFull: 0, evictedFlooder: 0 };

  constructor(opts: MacTableOptions = {}) {
    let cap = WAYS;
    while (cap < (opts.capacity ?? 8192)) cap *= 2;
    this.capacity = cap;
    this.buckets = cap / WAYS;
    this.perPortLimit = opts.perPortLimit ?? 1024;
    this.ageMs = opts.ageMs ?? 300_000;
    this.keyHi = new Int32Array(cap).fill(FREE);
    this.keyLo = new Int32Array(cap);
    this.port = new Int32Array(cap);
    this.seen = new Float64Array(cap);
    this.perPort = new Int32Array(opts.maxPorts ?? 64);
    this.seed = (opts.seed ?? Math.random() * 0x7fffffff) | 1;
  }

  /** Entries in use (live, or expired and not yet reclaimed). */
  get size(): number {
    return this.used;
  }

  /** Entries port `p` holds. */
  portEntries(p: number): number {
    return this.perPort[p] ?? 0;
  }

  private bucket(kh: number, lo: number): number {
    let h = Math.imul(kh ^ this.seed, 0x9e3779b1);
    h = Math.imul(h ^ lo ^ (h >>> 15), 0x85ebca77);
    h ^= h >>> 13;
    return (h >>> 0) % this.buckets;
  }

  /** The port (VLAN `vlan`, MAC hi16:lo32) was last seen on, or -1 if unknown or aged out. */
  lookup(vlan: number, hi: number, lo: number, now: number): number {
    const kh = (vlan << 16) | hi;
    const b = this.bucket(kh, lo | 0) * WAYS;
    for (let i = b; i < b + WAYS; i++) {
      if (this.keyHi[i] === kh && this.keyLo[i] === (lo | 0)) {
        return now - (this.seen[i] as number) > this.ageMs ? -1 : (this.port[i] as number);
      }
    }
    return -1;
  }

  /** Records that (vlan, MAC) was seen as a source on port `p`. */
  learn(vlan: number, hi: number, lo: number, p: number, now: number): void {
    const kh = (vlan << 16) | hi;
    const l = lo | 0;
    const b = this.bucket(kh, l) * WAYS;
    let free = -1;
    for (let i = b; i < b + WAYS; i++) {
      const k = this.keyHi[i] as number;
      if (k === kh && this.keyLo[i] === l) {
        const old = this.port[i] as number;
        if (old !== p) {
          // The station moved (or its address is claimed by another port): the new port's quota applies.
          if ((this.perPort[p] as number) >= this.perPortLimit) {
            this.stats.refusedPortLimit++;
            return;
          }
          this.perPort[old] = (this.perPort[old] as number) - 1;
          this.perPort[p] = (this.perPort[p] as number) + 1;
          this.port[i] = p;
          this.stats.moved++;
        }
        this.seen[i] = now;
        return;
      }
      if (free < 0 && (k === FREE || now - (this.seen[i] as number) > this.ageMs)) free = i;
    }
    if ((this.perPort[p] as number) >= this.perPortLimit) {
      this.stats.refusedPortLimit++;
      return;
    }
    if (free < 0) {
      free = this.flooderVictim(b, p);
      if (free < 0) {
        this.stats.refusedFull++;
        return;
      }
      this.stats.evictedFlooder++;
      this.free(free);
    }
    if (this.keyHi[free] !== FREE) {
      // Reusing an expired entry.
      const old = this.port[free] as number;
      this.perPort[old] = (this.perPort[old] as number) - 1;
      this.used--;
      this.stats.aged++;
    }
    this.keyHi[free] = kh;
    this.keyLo[free] = l;
    this.port[free] = p;
    this.seen[free] = now;
    this.perPort[p] = (this.perPort[p] as number) + 1;
    this.used++;
    this.stats.learned++;
  }

  /** In the full bucket at `b`, the oldest entry of a heavy port (see the top of the file) for port `p`, or -1. */
  private flooderVictim(b: number, p: number): number {
    const mine = this.perPort[p] as number;
    let victim = -1;
    for (let i = b; i < b + WAYS; i++) {
      const n = this.perPort[this.port[i] as number] as number;
      if (n * 2 < this.perPortLimit || n <= 2 * mine) continue;
      if (victim < 0 || (this.seen[i] as number) < (this.seen[victim] as number)) victim = i;
    }
    return victim;
  }

  /** Frees every expired entry; returns how many. */
  sweep(now: number): number {
    let n = 0;
    for (let i = 0; i < this.capacity; i++) {
      if (this.keyHi[i] !== FREE && now - (this.seen[i] as number) > this.ageMs) {
        this.free(i);
        n++;
      }
    }
    this.stats.aged += n;
    return n;
  }

  /** Forgets every entry of port `p` (detached). */
  removePort(p: number): void {
    for (let i = 0; i < this.capacity; i++) if (this.keyHi[i] !== FREE && this.port[i] === p) this.free(i);
  }

  /** The live entries (for `vireo switch show`), at most `limit`. */
  entries(now: number, limit = 4096): MacEntry[] {
    const out: MacEntry[] = [];
    for (let i = 0; i < this.capacity && out.length < limit; i++) {
      const k = this.keyHi[i] as number;
      const age = now - (this.seen[i] as number);
      if (k === FREE || age > this.ageMs) continue;
      out.push({
        vlan: k >>> 16,
        mac: macString(k & 0xffff, (this.keyLo[i] as number) >>> 0),
        port: this.port[i] as number,
        ageMs: Math.round(age),
      });
    }
    return out;
  }

  private free(i: number): void {
    const p = this.port[i] as number;
    this.perPort[p] = (this.perPort[p] as number) - 1;
    this.keyHi[i] = FREE;
    this.used--;
  }
}
