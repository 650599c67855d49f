import { VireoError } from "../errors.ts";
import { type Counter, type MetricsSink, NO_COUNTER } from "../metrics/registry.ts";

/**
 * A device on the port-I/O or MMIO bus. `data.length` is the access size (1, 2, 4 or 8 bytes); the value is
 * little endian. `read` fills `data`; `write` consumes it. `offset` is relative to the base the device was
 * registered at.
 */
export interface BusDevice {
  readonly name: string;
  read(offset: number, data: Uint8Array): void;
  write(offset: number, data: Uint8Array): void;
}

export type BusKind = "pio" | "mmio";

/** Two devices claimed overlapping address ranges. */
export class BusOverlapError extends VireoError {
  constructor(message: string) {
    super("VIREO_BUS_OVERLAP", message);
  }
}

/** Bad arguments to Bus.register: an empty range or one outside the address space of the bus. */
export class BusRangeError extends VireoError {
  constructor(message: string) {
    super("VIREO_BUS_RANGE", message);
  }
}

/** x86 I/O ports are 16-bit; MMIO is bounded by the 52-bit physical address width of x86-64. */
const LIMIT: Record<BusKind, number> = { pio: 0x10000, mmio: 2 ** 52 };

interface Range {
  readonly base: number;
  /** One past the last address. */
  readonly end: number;
  readonly device: BusDevice;
  readonly reads: Counter;
  readonly writes: Counter;
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

function span(r: { base: number; end: number }): string {
  return `${hex(r.base)}-${hex(r.end - 1)}`;
}

/**
 * Dispatches guest port-I/O or MMIO accesses to devices by address.
 *
 * Ranges are kept sorted by base and never overlap, so lookup is a binary search; the last range hit is tried
 * first because exits cluster on one device (a UART being polled, a virtqueue notify register).
 *
 * An access is routed by its first byte only: if it straddles the end of a device's range, the whole access goes
 * to that device at `offset = addr - base`, and the device decides what the bytes past its end mean (real buses
 * decode on the start address too). An access whose first byte no device claims is answered as an empty bus
 * does: reads float high (all ones), writes are dropped.
 */
export class Bus {
  readonly kind: BusKind;
  private ranges: Range[] = [];
  private last: Range | undefined;
  private readonly metrics: MetricsSink | undefined;
  private readonly unclaimedReads: Counter;
  private readonly unclaimedWrites: Counter;

  constructor(kind: BusKind, metrics?: MetricsSink) {
    this.kind = kind;
    this.metrics = metrics;
    this.unclaimedReads = metrics?.counter(`${kind}.unclaimed.read`) ?? NO_COUNTER;
    this.unclaimedWrites = metrics?.counter(`${kind}.unclaimed.write`) ?? NO_COUNTER;
  }

  /** Claims [base, base + length) for `device`. A device may hold several ranges. */
  register(base: number, length: number, device: BusDevice): void {
    const limit = LIMIT[this.kind];
    if (!Number.isSafeInteger(base) || base < 0) {
      throw new BusRangeError(`${this.kind} bus: ${device.name}: invalid base ${base}`);
    }
    if (!Number.isSafeInteger(length) || length <= 0) {
      throw new BusRangeError(`${this.kind} bus: ${device.name}: invalid length ${length} at ${hex(base)}`);
    }
    if (base + length > limit) {
      throw new BusRangeError(
        `${this.kind} bus: ${device.name}: range ${hex(base)}+${hex(length)} exceeds the bus (0x0-${hex(limit - 1)})`,
      );
    }
    const end = base + length;
    const i = this.firstEndingAfter(base);
    const next = this.ranges[i];
    if (next !== undefined && next.base < end) {
      throw new BusOverlapError(
        `${this.kind} bus: ${device.name} at ${span({ base, end })} overlaps ${next.device.name} at ${span(next)}`,
      );
    }
    const m = this.metrics;
    const range: Range = {
      base,
      end,
      device,
      reads: m?.counter(`${this.kind}.${device.name}.read`) ?? NO_COUNTER,
      writes: m?.counter(`${this.kind}.${device.name}.write`) ?? NO_COUNTER,
    };
    this.ranges.splice(i, 0, range);
  }

  /** Removes every range `device` holds. Returns whether it held any. */
  unregister(device: BusDevice): boolean {
    const before = this.ranges.length;
    this.ranges = this.ranges.filter((r) => r.device !== device);
    if (this.last?.device === device) this.last = undefined;
    return this.ranges.length !== before;
  }

  /** Reads `data.length` bytes at `addr`. Returns false (and fills 0xff) if no device claims `addr`. */
  read(addr: number, data: Uint8Array): boolean {
    const r = this.find(addr);
    if (r === undefined) {
      data.fill(0xff);
      this.unclaimedReads.add();
      return false;
    }
    r.reads.add();
    r.device.read(addr - r.base, data);
    return true;
  }

  /** Writes `data` at `addr`. Returns false (and drops the write) if no device claims `addr`. */
  write(addr: number, data: Uint8Array): boolean {
    const r = this.find(addr);
    if (r === undefined) {
      this.unclaimedWrites.add();
      return false;
    }
    r.writes.add();
    r.device.write(addr - r.base, data);
    return true;
  }

  /** The device whose range contains `addr`, if any. */
  deviceAt(addr: number): BusDevice | undefined {
    return this.find(addr)?.device;
  }

  /** One line per range, in address order, for logs and `--debug` output. */
  describe(): string {
    if (this.ranges.length === 0) return `${this.kind} bus: (empty)`;
    return this.ranges.map((r) => `${this.kind} ${span(r)} ${r.device.name}`).join("\n");
  }

  private find(addr: number): Range | undefined {
    const last = this.last;
    if (last !== undefined && addr >= last.base && addr < last.end) return last;
    const r = this.ranges[this.firstEndingAfter(addr)];
    // Written as !(>=) so that a NaN address is unclaimed rather than matching the first range.
    if (r === undefined || !(addr >= r.base)) return undefined;
    this.last = r;
    return r;
  }

  /** Index of the first range whose end is above `addr` (ranges.length if none): the only one that can hold it. */
  private firstEndingAfter(addr: number): number {
    const ranges = this.ranges;
    let lo = 0;
    let hi = ranges.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((ranges[mid] as Range).end <= addr) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }
}
