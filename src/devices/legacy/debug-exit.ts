/**
 * The debug-exit port of docs/guest-abi.md ("Devices"): a 1, 2 or 4-byte write to I/O 0x501 ends the run and
 * vireo exits with `value & 0xff`. Reads return all ones, like an empty port.
 */
import type { BusDevice } from "../../bus/bus.ts";

export const DEBUG_EXIT_PORT = 0x501;

export interface DebugExitOptions {
  /** Called with the exit status the guest asked for (0-255). */
  onExit: (status: number) => void;
  name?: string;
}

export class DebugExit implements BusDevice {
  readonly name: string;
  private readonly onExit: (status: number) => void;

  constructor(opts: DebugExitOptions) {
    this.onExit = opts.onExit;
    this.name = opts.name ?? "debug-exit";
  }

  read(_offset: number, data: Uint8Array): void {
    data.fill(0xff);
  }

  write(_offset: number, data: Uint8Array): void {
    // Little endian: the low byte of the written value is the first byte; wider writes carry nothing more.
    if (data.length > 0) this.onExit((data[0] as number) & 0xff);
  }
}
