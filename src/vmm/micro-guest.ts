/** vireo's own micro guest (guest/micro): where it is built and which programs it has. */
import { existsSync } from "node:fs";
import { ConfigError, VireoError } from "../errors.ts";
import { repoPath } from "../paths.ts";

export const MICRO_GUEST_ELF = repoPath("guest", "micro", "build", "micro.elf");

/** The programs guest/micro/README.md describes, selected by the first word of the guest command line. */
export const MICRO_PROGRAMS = [
  "hello",
  "exit42",
  "pio",
  "mmio",
  "irq",
  "user",
  "bench-pio",
  "bench-mmio",
  "triple-fault",
  "echo",
  "pci",
  "virtio-blk-rw",
  "virtio-blk-id",
  "virtio-msix",
  "bench-virtio-blk",
  "virtio-net-test",
  "bench-virtio-net",
  "virtio-console",
  "e1000-test",
  "e1000-irq",
  "bench-e1000",
  "virtio-blk-hammer",
  "count",
  "dirty",
  "tour",
] as const;
export type MicroProgram = (typeof MICRO_PROGRAMS)[number];

/** Resolves `micro:NAME` to the micro guest ELF and its command line. */
export function microGuest(spec: string, args: readonly string[] = []): { kernel: string; cmdline: string } {
  const name = spec.replace(/^micro:/, "");
  if (!(MICRO_PROGRAMS as readonly string[]).includes(name)) {
    throw new ConfigError(`unknown micro guest program '${name}' (known: ${MICRO_PROGRAMS.join(", ")})`);
  }
  if (!existsSync(MICRO_GUEST_ELF)) {
    throw new VireoError(
      "VIREO_MICRO_GUEST_MISSING",
      `the micro guest is not built (${MICRO_GUEST_ELF}); run: npm run build:guest`,
    );
  }
  return { kernel: MICRO_GUEST_ELF, cmdline: [name, ...args].join(" ") };
}
