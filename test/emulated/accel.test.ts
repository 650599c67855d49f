/**
 * vireo run --accel emulated (and auto on a host without /dev/kvm): the same command runs inside the emulated KVM
 * host, and what a user sees here is the same as directly: output, input, Ctrl-A x, the status, the --metrics and
 * --serial files, and a read-write disk changed in place.
 */
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { emulatedHostUnavailable } from "../../src/emulated-host/host.ts";
import { expectedSector, fnv1a64 } from "../helpers/blk-pattern.ts";
import { readMetrics, vireo } from "../helpers/cli.ts";

const skip = emulatedHostUnavailable() ?? false;
const timeout = 300_000;
const dir = mkdtempSync(join(tmpdir(), "vireo-accel-"));
const AUTO_LINE = /^vireo: no usable \/dev\/kvm here: running inside vireo's emulated KVM host \(.*\)$/;

test("auto without /dev/kvm says so in one line and passes the guest's status through", {
  skip,
  timeout,
}, () => {
  // VIREO_KVM_DEVICE makes this host look KVM-less even where it has KVM; inside, the real device is used.
  const r = vireo(["run", "--guest", "micro:exit42"], {
    env: { VIREO_KVM_DEVICE: join(dir, "no-kvm") },
    timeoutMs: timeout - 10_000,
  });
  assert.equal(r.status, 42, r.stderr);
  const lines = r.stderr.trimEnd().split("\n");
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0] ?? "", AUTO_LINE);
});

test("--metrics and --serial file: are written on this host", { skip, timeout }, () => {
  const metrics = join(dir, "m.json");
  const serial = join(dir, "serial.txt");
  const r = vireo(
    [
      "run",
      "--guest",
      "micro:hello",
      "--accel",
      "emulated",
      "--metrics",
      metrics,
      "--serial",
      `file:${serial}`,
    ],
    { timeoutMs: timeout - 10_000 },
  );
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, "", "serial output went to the file");
  assert.equal(readFileSync(serial, "utf8"), "Hello from the guest\n");
  const m = readMetrics(metrics);
  assert.ok((m["exits.io"] ?? 0) > 0, JSON.stringify(m));
});

test("console input reaches the guest, and Ctrl-A x stops it with status 130", { skip, timeout }, () => {
  const echo = vireo(["run", "--guest", "micro:echo", "--accel", "emulated"], {
    input: "abc\x04",
    timeoutMs: timeout - 10_000,
  });
  assert.equal(echo.status, 0, echo.stderr);
  assert.equal(echo.stdout, "abcecho done (3 bytes)\n");
  const stopped = vireo(["run", "--guest", "micro:echo", "--accel", "emulated"], {
    input: "ab\x01x",
    timeoutMs: timeout - 10_000,
  });
  assert.equal(stopped.status, 130, stopped.stderr);
  assert.match(stopped.stderr, /^vireo: stopped$/m);
});

test("a read-write --disk image is changed in place", { skip, timeout }, () => {
  const disk = join(dir, "disk.img");
  writeFileSync(disk, new Uint8Array(2 * 1024 * 1024));
  const r = vireo(["run", "--guest", "micro:virtio-blk-rw", "1024", "--disk", disk, "--accel", "emulated"], {
    timeoutMs: timeout - 10_000,
  });
  assert.equal(r.status, 0, r.stdout + r.stderr);
  const file = readFileSync(disk);
  for (const sector of [0, 1, 2047])
    assert.deepEqual(file.subarray(sector * 512, sector * 512 + 512), expectedSector(sector));
  assert.deepEqual(file.subarray(1 << 20, (1 << 20) + 512), Buffer.alloc(512), "nothing past 1 MiB");
  assert.equal(/fnv1a64=([0-9a-f]+)/.exec(r.stdout)?.[1], fnv1a64(file.subarray(0, 1 << 20)));
});
