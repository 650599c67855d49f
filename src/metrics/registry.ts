/**
 * One metrics registry for the whole VM, across threads.
 *
 * Each thread owns a segment of a SharedArrayBuffer of float64 slots and is the only writer of its segment, so
 * counting needs no atomics and costs one add. Counter names are kept per segment; the owning thread sends new
 * names to the main thread (see `MetricsSegment.drainNewNames`), which sums the same name across segments.
 */
export interface Counter {
  add(n?: number): void;
  /** The value this thread has counted (not the VM-wide total). */
  readonly value: number;
}

export interface MetricsSink {
  counter(name: string): Counter;
}

/** A counter that counts nothing: for code built without a metrics sink. */
class NoCounter implements Counter {
  readonly value = 0;
  add(_n?: number): void {}
}
export const NO_COUNTER: Counter = Object.freeze(new NoCounter());

/**
 * A counter in a segment's slot. One class for every counter, so that `add` is one function wherever it is
 * called: a call site that sees the counters of several devices (a switch's ports) stays monomorphic and the add
 * is inlined. Closures per counter made such sites polymorphic, about 7 ns an add here.
 */
class SlotCounter implements Counter {
  constructor(
    private readonly slots: Float64Array,
    private readonly index: number,
  ) {}
  add(n = 1): void {
    this.slots[this.index] = (this.slots[this.index] as number) + n;
  }
  get value(): number {
    return this.slots[this.index] as number;
  }
}

/** Counters `PREFIX.NAME` of `m` for each key's NAME, or NO_COUNTER for each when there is no sink. */
export function counterSet<K extends string>(
  m: MetricsSink | undefined,
  prefix: string,
  names: Readonly<Record<K, string>>,
): Record<K, Counter> {
  const out = {} as Record<K, Counter>;
  for (const k of Object.keys(names) as K[]) out[k] = m ? m.counter(`${prefix}.${names[k]}`) : NO_COUNTER;
  return out;
}

export const SLOTS_PER_SEGMENT = 1024;

export class MetricsOverflowError extends Error {
  readonly code = "VIREO_METRICS_FULL";
}

/** A thread's own segment of the shared counter array. */
export class MetricsSegment implements MetricsSink {
  private readonly slots: Float64Array;
  private readonly bySlot = new Map<string, number>();
  private readonly unsent: Array<[string, number]> = [];

  constructor(shared: SharedArrayBuffer | ArrayBuffer, segment: number) {
    this.slots = new Float64Array(shared, segment * SLOTS_PER_SEGMENT * 8, SLOTS_PER_SEGMENT);
  }

  counter(name: string): Counter {
    let slot = this.bySlot.get(name);
    if (slot === undefined) {
      slot = this.bySlot.size;
      if (slot >= SLOTS_PER_SEGMENT)
        throw new MetricsOverflowError(`too many counters (${SLOTS_PER_SEGMENT})`);
      this.bySlot.set(name, slot);
      this.unsent.push([name, slot]);
    }
    return new SlotCounter(this.slots, slot);
  }

  /** Names created since the last call, for the main thread's name table. */
  drainNewNames(): Array<[string, number]> {
    return this.unsent.splice(0);
  }

  names(): Array<[string, number]> {
    return [...this.bySlot];
  }
}

/** The main thread's view: the shared buffer plus every segment's name table. */
/** A copy of every counter of a registry's shared array, as of now (from any thread); see MetricsRegistry.snapshot. */
export function copyValues(shared: SharedArrayBuffer): Float64Array {
  return new Float64Array(shared).slice();
}

export class MetricsRegistry {
  readonly shared: SharedArrayBuffer;
  private readonly names: Array<Map<string, number>> = [];
  private nextSegment = 0;

  constructor(maxSegments = 64) {
    this.shared = new SharedArrayBuffer(maxSegments * SLOTS_PER_SEGMENT * 8);
    this.maxSegments = maxSegments;
  }
  private readonly maxSegments: number;

  /** Reserve a segment for a thread (the main thread takes one too, for devices it owns). */
  allocateSegment(): number {
    if (this.nextSegment >= this.maxSegments) throw new MetricsOverflowError("no metrics segment left");
    this.names.push(new Map());
    return this.nextSegment++;
  }

  /** Record names a thread reported for its segment. */
  addNames(segment: number, entries: Array<[string, number]>): void {
    const table = this.names[segment];
    if (!table) throw new MetricsOverflowError(`unknown metrics segment ${segment}`);
    for (const [name, slot] of entries) table.set(name, slot);
  }

  /**
   * Totals by name, summed across all segments, sorted by name: of the live counters, or of `values`, a copy of
   * the shared array taken earlier by any thread (`copyValues`).
   */
  snapshot(values: Float64Array = new Float64Array(this.shared)): Record<string, number> {
    const totals = new Map<string, number>();
    this.names.forEach((table, segment) => {
      for (const [name, slot] of table) {
        const v = values[segment * SLOTS_PER_SEGMENT + slot] ?? 0;
        totals.set(name, (totals.get(name) ?? 0) + v);
      }
    });
    return Object.fromEntries([...totals].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
  }
}
