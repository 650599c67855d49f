/** The short table `vireo demo` (and `vireo run --metrics`) users read: what the run cost. */
import type { RunResult } from "../vmm/machine.ts";

export function formatRunSummary(result: RunResult): string {
  const m = result.metrics;
  const rows: Array<[string, string]> = [];
  const section = (title: string, prefix: string, strip = prefix) => {
    const keys = Object.keys(m).filter((k) => k.startsWith(prefix));
    if (!keys.length) return;
    rows.push([title, ""]);
    for (const k of keys) rows.push([`  ${k.slice(strip.length)}`, String(m[k])]);
  };
  section("exits by reason", "exits.");
  section("interrupts raised (rising edges by GSI)", "irq.");
  section("port I/O accesses", "pio.");
  section("MMIO accesses", "mmio.");
  section("UART", "uart.");
  rows.push([
    "outcome",
    `${result.outcome}${result.guestCode !== undefined ? ` (guest exit code ${result.guestCode})` : ""}`,
  ]);
  rows.push(["wall time", `${result.wallMs.toFixed(0)} ms`]);
  if (result.stopMs !== undefined) rows.push(["stop took", `${result.stopMs.toFixed(1)} ms`]);
  const width = Math.max(...rows.map(([k]) => k.length));
  return rows.map(([k, v]) => (v === "" ? k : `${k.padEnd(width)}  ${v.padStart(8)}`)).join("\n");
}
