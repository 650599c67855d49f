/**
 * The machine's devices as plain data. The main thread decides what the machine has; every thread that serves
 * exits (each vCPU worker) builds its own bus from this manifest. Devices whose state must be one device across
 * threads (the UART) keep that state in a SharedArrayBuffer named here.
 */
import { writeSync } from "node:fs";
import { Bus } from "../bus/bus.ts";
import { ACPI_PM_BASE, ACPI_PM_LEN, ACPI_SCI_IRQ, AcpiPm } from "../devices/legacy/acpi-pm.ts";
import { CmosRtc, RTC_IRQ, RTC_PORT, RTC_PORT_COUNT } from "../devices/legacy/cmos-rtc.ts";
import { DebugExit } from "../devices/legacy/debug-exit.ts";
import { DEBUGCON_PORT, DebugCon } from "../devices/legacy/debugcon.ts";
import {
  I8042,
  I8042_AUX_IRQ,
  I8042_COMMAND_PORT,
  I8042_DATA_PORT,
  I8042_KBD_IRQ,
} from "../devices/legacy/i8042.ts";
import { TestDevice } from "../devices/legacy/test-device.ts";
import { Uart16550 } from "../devices/legacy/uart16550.ts";
import type { MetricsSink } from "../metrics/registry.ts";
import { eventfdIrqLine, kvmIrqLine } from "./irq.ts";

export type DeviceSpec =
  | {
      kind: "uart16550";
      name: string;
      port: number;
      irq: number;
      state: SharedArrayBuffer;
      outputFd: number | null;
    }
  | { kind: "debug-exit"; port: number }
  | { kind: "test-device"; pioBase: number; mmioBase: number; irq: number; irqfd?: number }
  | { kind: "cmos-rtc"; state: SharedArrayBuffer }
  | { kind: "i8042"; state: SharedArrayBuffer }
  | { kind: "acpi-pm"; state: SharedArrayBuffer }
  | { kind: "debugcon"; port: number };

/** What the thread building the buses provides to its devices. */
export interface DeviceHost {
  vmFd: number;
  metrics: MetricsSink;
  onGuestExit(code: number): void;
  onPowerOff(): void;
  onReset(): void;
  onMarker(id: number): void;
}

export interface Buses {
  pio: Bus;
  mmio: Bus;
}

/**
 * COM1 and the micro-guest devices of docs/guest-abi.md; a Linux guest ("pc") also gets the PC platform devices
 * its ACPI tables describe: CMOS RTC, i8042 and the ACPI PM block (power-off, reset, PM timer).
 */
export function defaultDevices(opts: {
  outputFd: number | null;
  platform?: "micro" | "pc";
  memSize?: number;
}): DeviceSpec[] {
  const pc: DeviceSpec[] =
    opts.platform === "pc"
      ? [
          { kind: "cmos-rtc", state: CmosRtc.createState({ memSize: opts.memSize }) },
          { kind: "i8042", state: I8042.createState() },
          { kind: "acpi-pm", state: AcpiPm.createState() },
          { kind: "debugcon", port: DEBUGCON_PORT },
        ]
      : [];
  return [
    ...pc,
    {
      kind: "uart16550",
      name: "com1",
      port: 0x3f8,
      irq: 4,
      state: Uart16550.createState(),
      outputFd: opts.outputFd,
    },
    { kind: "debug-exit", port: 0x501 },
    { kind: "test-device", pioBase: 0x510, mmioBase: 0xfeb00000, irq: 5 },
  ];
}

export function buildBuses(specs: readonly DeviceSpec[], host: DeviceHost): Buses {
  const pio = new Bus("pio", host.metrics);
  const mmio = new Bus("mmio", host.metrics);
  for (const spec of specs) {
    switch (spec.kind) {
      case "uart16550": {
        const fd = spec.outputFd;
        const uart = new Uart16550({
          state: spec.state,
          name: spec.name,
          irq: kvmIrqLine(host.vmFd, spec.irq, host.metrics),
          output: fd === null ? () => {} : (bytes) => writeAll(fd, bytes),
          metrics: host.metrics,
        });
        pio.register(spec.port, 8, uart);
        break;
      }
      case "debug-exit":
        pio.register(spec.port, 1, new DebugExit({ onExit: host.onGuestExit }));
        break;
      case "test-device": {
        const irq =
          spec.irqfd === undefined
            ? kvmIrqLine(host.vmFd, spec.irq, host.metrics)
            : eventfdIrqLine(spec.irqfd, spec.irq, host.metrics);
        pio.register(spec.pioBase, 0x10, new TestDevice({ kind: "pio", irq, onMarker: host.onMarker }));
        mmio.register(spec.mmioBase, 0x1000, new TestDevice({ kind: "mmio", irq, onMarker: host.onMarker }));
        break;
      }
      case "cmos-rtc":
        pio.register(
          RTC_PORT,
          RTC_PORT_COUNT,
          new CmosRtc({
            state: spec.state,
            irq: kvmIrqLine(host.vmFd, RTC_IRQ, host.metrics),
            metrics: host.metrics,
          }),
        );
        break;
      case "i8042": {
        const kbc = new I8042({
          state: spec.state,
          kbdIrq: kvmIrqLine(host.vmFd, I8042_KBD_IRQ, host.metrics),
          auxIrq: kvmIrqLine(host.vmFd, I8042_AUX_IRQ, host.metrics),
          onReset: host.onReset,
          metrics: host.metrics,
        });
        pio.register(I8042_DATA_PORT, 1, kbc.dataPort);
        pio.register(I8042_COMMAND_PORT, 1, kbc.commandPort);
        break;
      }
      case "debugcon":
        // A byte written here is a marker with that id (guest images write 1 when init starts).
        pio.register(spec.port, 1, new DebugCon({ onByte: host.onMarker }));
        break;
      case "acpi-pm":
        pio.register(
          ACPI_PM_BASE,
          ACPI_PM_LEN,
          new AcpiPm({
            state: spec.state,
            irq: kvmIrqLine(host.vmFd, ACPI_SCI_IRQ, host.metrics),
            onPowerOff: host.onPowerOff,
            onReset: host.onReset,
            metrics: host.metrics,
          }),
        );
        break;
    }
  }
  return { pio, mmio };
}

/** Writes every byte to fd, retrying while a non-blocking terminal or pipe says EAGAIN. */
export function writeAll(fd: number, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.length) {
    try {
      done += writeSync(fd, bytes, done, bytes.length - done);
    } catch (e) {
      // A terminal or pipe in non-blocking mode can refuse for a moment; output is not dropped for that.
      if ((e as NodeJS.ErrnoException).code !== "EAGAIN") throw e;
    }
  }
}
