/** What the micro guest's virtio-blk-rw writes (guest/micro/virtio_blk.c), and the checksum it prints. */
import assert from "node:assert/strict";
import { closeSync, openSync, readFileSync, readSync } from "node:fs";
import { metricsPath, readMetrics, VIREO_BIN } from "./cli.ts";
import { startProcess } from "./processes.ts";

/** Per sector, 128 words of a 32-bit LCG seeded with the sector number. */
export function expectedSector(sector: number): Buffer {
  const out = Buffer.alloc(512);
  let x = sector >>> 0;
  for (let i = 0; i < 128; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    out.writeUInt32LE(x, i * 4);
  }
  return out;
}

/** FNV-1a, 64 bits, as lowercase hex without leading zeros (the guest prints `fnv1a64=HEX`). */
export function fnv1a64(bytes: Uint8Array): string {
  let h = 0xcbf29ce484222325n;
  for (const b of bytes) h = BigInt.asUintN(64, (h ^ BigInt(b)) * 0x100000001b3n);
  return h.toString(16);
}

/** Sector `s` (512 bytes) of an image file as it is now. */
export function sectorOf(path: string, s: number): Buffer {
  const fd = openSync(path, "r");
  try {
    const buf = Buffer.alloc(512);
    readSync(fd, buf, 0, 512, s * 512);
    return buf;
  } finally {
    closeSync(fd);
  }
}

/**
 * Checks that the first `kib` KiB of the image hold exactly virtio-blk-rw's pattern and that the guest's printed
 * checksum (`fnv1a64=HEX` in `guestOutput`) is the image's.
 */
export function assertImageHoldsPattern(path: string, kib: number, guestOutput: string): void {
  const image = readFileSync(path).subarray(0, kib * 1024);
  for (let s = 0; s < (kib * 1024) / 512; s++) {
    if (!image.subarray(s * 512, (s + 1) * 512).equals(expectedSector(s)))
      assert.fail(`sector ${s} does not hold the guest's pattern`);
  }
  const printed = /fnv1a64=([0-9a-f]+)/.exec(guestOutput)?.[1];
  assert.equal(
    printed?.padStart(16, "0"),
    fnv1a64(image).padStart(16, "0"),
    `the guest's checksum is the image's\n--- guest output:\n${guestOutput}`,
  );
}

/**
 * Resumes a snapshot of the micro guest's virtio-blk-rw (`vireo run --restore SNAP`) and checks it finished there:
 * status 0, its read-back check passed, not already before the snapshot (`out1`, the first run's output), and the
 * image holds exactly its pattern. Returns the restored run's metrics and its stderr.
 */
export async function restoreBlkWriter(o: {
  snap: string;
  out1: string;
  out2: string;
  disk: string;
  kib: number;
  step(message: string): void;
}): Promise<{ metrics: Record<string, number>; stderr: string }> {
  const metrics = metricsPath();
  const second = startProcess([
    VIREO_BIN,
    "run",
    "--restore",
    o.snap,
    "--serial",
    `file:${o.out2}`,
    "--timeout",
    "600",
    "--metrics",
    metrics,
  ]);
  const status = await second.exited;
  const text2 = readFileSync(o.out2, "utf8");
  o.step(`restored vireo exited ${status}: ${second.err().trim()}`);
  assert.equal(status, 0, `the restored guest exits 0\n${second.err()}\n--- output:\n${text2}`);
  assert.match(text2, /virtio-blk-rw ok/, "the guest's own read-back check passed after the restore");
  assert.doesNotMatch(readFileSync(o.out1, "utf8"), /virtio-blk-rw ok/);
  assertImageHoldsPattern(o.disk, o.kib, text2);
  return { metrics: readMetrics(metrics), stderr: second.err().trim() };
}
