/**
 * The test device of docs/guest-abi.md ("Devices", test device registers), used by the micro guest's device
 * checks and by exit-cost benchmarks. The same register set appears in a PIO window (I/O 0x510-0x51F) and an
 * MMIO window (GPA 0xFEB00000-0xFEB00FFF); each window is its own TestDevice.
 *
 * Registers are decoded by exact offset; other offsets (including unaligned ones inside a register) read 0 and
 * ignore writes, as the ABI says. State is per instance: every thread builds its own devices, so the scratch
 * register and the access counter are per window and per thread. That is enough for a test device whose users
 * run on one vCPU.
 */
import type { BusDevice } from "../../bus/bus.ts";

export const TEST_DEVICE_PIO_BASE = 0x510;
export const TEST_DEVICE_PIO_SIZE = 0x10;
export const TEST_DEVICE_MMIO_BASE = 0xfeb00000;
export const TEST_DEVICE_MMIO_SIZE = 0x1000;
export const TEST_DEVICE_IRQ = 5;

const REG_SCRATCH = 0x0;
const REG_COUNT = 0x4;
const REG_MARKER = 0x8;
const REG_IRQ = 0xc;

export interface TestDeviceOptions {
  kind: "pio" | "mmio";
  /** IRQ line 5 (the ABI's test-device line); the guest drives its level through register 0xC. */
  irq?: { set(level: boolean): void };
  /** Called for a marker write (register 0x8) with the marker id, e.g. 1 = start and 2 = stop of a timed loop. */
  onMarker?: (id: number) => void;
  name?: string;
}

export class TestDevice implements BusDevice {
  readonly name: string;
  readonly kind: "pio" | "mmio";
  /** Window length in bytes, for Bus.register. */
  readonly size: number;
  private readonly irq: { set(level: boolean): void } | undefined;
  private readonly onMarker: ((id: number) => void) | undefined;
  private scratchLo = 0;
  private scratchHi = 0;
  private count = 0;

  constructor(opts: TestDeviceOptions) {
    this.kind = opts.kind;
    this.size = opts.kind === "pio" ? TEST_DEVICE_PIO_SIZE : TEST_DEVICE_MMIO_SIZE;
    this.irq = opts.irq;
    this.onMarker = opts.onMarker;
    this.name = opts.name ?? `test-${opts.kind}`;
  }

  /** Accesses served so far (all offsets, reads and writes). */
  get accesses(): number {
    return this.count;
  }

  /** The scratch register; 64 bits wide on the MMIO window. */
  get scratch(): bigint {
    return (BigInt(this.scratchHi) << 32n) | BigInt(this.scratchLo);
  }

  read(offset: number, data: Uint8Array): void {
    // The counter includes the access that reads it: "accesses served so far" once this one is served.
    this.count++;
    data.fill(0);
    switch (offset) {
      case REG_SCRATCH:
        putLe32(data, 0, this.scratchLo);
        if (data.length === 8 && this.kind === "mmio") putLe32(data, 4, this.scratchHi);
        return;
      case REG_COUNT:
        putLe32(data, 0, this.count >>> 0);
        return;
      default:
        return;
    }
  }

  write(offset: number, data: Uint8Array): void {
    this.count++;
    const value = getLe32(data);
    switch (offset) {
      case REG_SCRATCH:
        // A write replaces the register, zero-extended, so every width reads back what it last wrote; the ABI
        // leaves merging of narrow writes unspecified.
        this.scratchLo = value;
        this.scratchHi = data.length === 8 && this.kind === "mmio" ? getLe32(data.subarray(4)) : 0;
        return;
      case REG_COUNT:
        // Counted above and otherwise ignored: the cheapest possible exit, for benchmarks.
        return;
      case REG_MARKER:
        this.onMarker?.(value);
        return;
      case REG_IRQ:
        // The ABI defines 1 (raise) and 0 (lower); any other nonzero value raises too. Every write is passed
        // on, even at an unchanged level, because the guest asked for it explicitly.
        this.irq?.set(value !== 0);
        return;
      default:
        return;
    }
  }
}

/** The low 32 bits of a little-endian access (fewer bytes: zero-extended). */
function getLe32(data: Uint8Array): number {
  let v = 0;
  const n = Math.min(data.length, 4);
  for (let i = 0; i < n; i++) v |= (data[i] as number) << (8 * i);
  return v >>> 0;
}

/** Stores as many of the low bytes of `v` as fit in `data` from `at`, little endian. */
function putLe32(data: Uint8Array, at: number, v: number): void {
  for (let i = 0; i < 4 && at + i < data.length; i++) data[at + i] = (v >>> (8 * i)) & 0xff;
}
