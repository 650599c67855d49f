/**
 * Tier 2: vireo runs its micro guest on the host's real /dev/kvm (PVM here), through the real CLI.
 * Every exit is real: KVM_EXIT_IO / KVM_EXIT_MMIO served on the vCPU thread, interrupts through the in-kernel
 * irqchip. Skipped, with the reason, where /dev/kvm is absent.
 */
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { KvmSystem } from "../../src/kvm/system.ts";
import { vireo } from "../helpers/cli.ts";
import { buildElf } from "../helpers/elf-builder.ts";

const skip = KvmSystem.available() ? false : "no usable /dev/kvm on this host: KVM tests skipped";
const dir = mkdtempSync(join(tmpdir(), "vireo-kvm-"));

function runWithMetrics(args: string[]) {
  const file = join(dir, `metrics-${Math.random().toString(36).slice(2)}.json`);
  const r = vireo(["run", ...args, "--metrics", file]);
  const doc = JSON.parse(readFileSync(file, "utf8")) as {
    outcome: string;
    status: number;
    metrics: Record<string, number>;
  };
  return { ...r, doc, m: doc.metrics };
}

test("micro:hello prints its greeting and exits 0", { skip }, () => {
  const r = vireo(["run", "--guest", "micro:hello"]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, "Hello from the guest\n");
});

test("micro:exit42 exits with the guest's code", { skip }, () => {
  const r = vireo(["run", "--guest", "micro:exit42"]);
  assert.equal(r.status, 42, r.stderr);
});

test("port I/O: the test device round-trips values and the exits are counted", { skip }, () => {
  const r = runWithMetrics(["--guest", "micro:pio"]);
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /pio ok/);
  assert.ok((r.m["exits.io"] ?? 0) > 10, `io exits counted: ${JSON.stringify(r.m)}`);
  assert.ok((r.m["pio.test-pio.read"] ?? 0) > 0 && (r.m["pio.test-pio.write"] ?? 0) > 0, JSON.stringify(r.m));
  assert.equal(r.doc.outcome, "guest-exit");
});

test("MMIO: 1/2/4/8-byte accesses reach the test device as KVM_EXIT_MMIO", { skip }, () => {
  const r = runWithMetrics(["--guest", "micro:mmio"]);
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /mmio ok/);
  assert.ok((r.m["exits.mmio"] ?? 0) > 4, JSON.stringify(r.m));
  assert.ok((r.m["mmio.test-mmio.write"] ?? 0) > 0, JSON.stringify(r.m));
});

test("interrupts: test-device IRQ 5 and the UART's THR-empty IRQ 4 reach the guest", { skip }, () => {
  const r = runWithMetrics(["--guest", "micro:irq"]);
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /irq ok/);
  assert.ok((r.m["irq.gsi5.raised"] ?? 0) >= 1, JSON.stringify(r.m));
  assert.ok((r.m["irq.gsi4.raised"] ?? 0) >= 1, JSON.stringify(r.m));
});

test("CPL 3 with IOPL 3: port I/O and an interrupt from user mode", { skip }, () => {
  const r = vireo(["run", "--guest", "micro:user"]);
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /hello from CPL 3/);
  assert.match(r.stdout, /user ok/);
});

test("a triple fault ends the run with status 123 and says so", { skip }, () => {
  const r = vireo(["run", "--guest", "micro:triple-fault"]);
  assert.equal(r.status, 123, r.stdout + r.stderr);
  assert.match(r.stderr, /triple-faulted/);
});

test("--timeout stops a guest spinning in a loop (the vCPU is kicked out of KVM_RUN)", { skip }, () => {
  const path = join(dir, "spin.elf");
  writeFileSync(path, buildElf([{ paddr: 0x100000, code: new Uint8Array([0xeb, 0xfe]) }])); // jmp .
  const started = Date.now();
  const r = vireo(["run", "--kernel", path, "--timeout", "1"]);
  assert.equal(r.status, 124, r.stderr);
  assert.match(r.stderr, /did not finish within 1000 ms/);
  assert.ok(Date.now() - started < 20_000, "stopped promptly");
});

test("two vCPUs: the boot vCPU runs the guest while the other waits for SIPI, and both stop", {
  skip,
}, () => {
  const r = vireo(["run", "--guest", "micro:hello", "--cpus", "2"]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, "Hello from the guest\n");
});

test("--serial file: writes the guest's output to the file, nothing to stdout", { skip }, () => {
  const out = join(dir, "serial.txt");
  const r = vireo(["run", "--guest", "micro:hello", "--serial", `file:${out}`]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, "");
  assert.equal(readFileSync(out, "utf8"), "Hello from the guest\n");
});

test("terminal input: 6000 bytes piped to COM1 come back through the guest's echo, none lost", {
  skip,
}, () => {
  const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789 \n";
  let seed = 7;
  const text = Array.from({ length: 6000 }, () => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    return alphabet[seed % alphabet.length];
  }).join("");
  // It takes 13-30 s in the emulated host. vireo's own --timeout ends a stuck run before the harness's kill does,
  // so a failure leaves the UART's counters (bytes taken, interrupts raised) to say where input stopped.
  const metrics = join(dir, "echo-metrics.json");
  const r = vireo(["run", "--guest", "micro:echo", "--timeout", "200", "--metrics", metrics], {
    input: `${text}\x04`,
  });
  const why = () =>
    `status ${r.status}, ${r.stdout.length} bytes out, stderr: ${r.stderr}\n${existsSync(metrics) ? readFileSync(metrics, "utf8") : "no metrics file"}`;
  assert.equal(r.status, 0, why());
  assert.equal(r.stdout, `${text}echo done (6000 bytes)\n`, why());
});

test("--stats prints live exit rates to stderr while the guest runs", { skip }, () => {
  const r = vireo(["run", "--guest", "micro:bench-pio", "120000", "--serial", "none", "--stats", "1"], {
    timeoutMs: 120_000,
  });
  assert.equal(r.status, 0, r.stderr);
  const lines = r.stderr.split("\n").filter((l) => l.startsWith("vireo: "));
  assert.ok(lines.length >= 1, `at least one stats line: ${r.stderr}`);
  for (const l of lines)
    assert.match(
      l,
      /^vireo: \d+ s: exits (none|[a-z_]+ \d+\/s(, [a-z_]+ \d+\/s)*); irqs \d+\/s; \d+ exits so far$/,
    );
  // Where starting the vCPU takes longer than an interval (the emulated host), the first lines show no exits yet.
  const m = lines
    .map((l) => /^vireo: \d+ s: exits io (\d+)\/s; irqs \d+\/s; (\d+) exits so far$/.exec(l))
    .find((x) => x);
  assert.ok(m, `a line counting the guest's port writes: ${lines.join("\n")}`);
  assert.ok(Number(m[1]) > 0 && Number(m[2]) > 0, "the guest's port writes are being counted");
});

test("vireo demo runs the tour and ends with a table of exits and interrupts", { skip }, () => {
  const r = vireo(["demo"]);
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /tour ok/);
  assert.match(r.stdout, /exits by reason\n\s+io\s+\d+/);
  assert.match(r.stdout, /interrupts raised/);
});
