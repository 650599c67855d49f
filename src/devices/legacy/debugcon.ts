/**
 * The "port E9" debug console of Bochs and QEMU's isa-debugcon: a byte written to the port goes to a sink; a read
 * returns 0xE9, by which a guest can tell the port is there. vireo's guest images write a boot marker here,
 * at the same port under vireo and under QEMU, so `vireo bench boot` times both the same way.
 */
import type { BusDevice } from "../../bus/bus.ts";

export const DEBUGCON_PORT = 0xe9;

export class DebugCon implements BusDevice {
  readonly name = "debugcon";
  private readonly onByte: (byte: number) => void;

  constructor(opts: { onByte: (byte: number) => void }) {
    this.onByte = opts.onByte;
  }

  read(_offset: number, data: Uint8Array): void {
    data.fill(DEBUGCON_PORT);
  }

  write(_offset: number, data: Uint8Array): void {
    for (const b of data) this.onByte(b);
  }
}
