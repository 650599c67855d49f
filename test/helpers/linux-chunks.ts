/**
 * A Debian guest's workload for the snapshot and migration slow tests: bring eth0 up and ping the host, then write
 * CHUNKS 64 KiB chunks of random data to /dev/vda, one a second, printing each one's SHA-256, then ping three
 * times. A snapshot or migration in the middle must leave every chunk on the disk with the hash printed, each
 * printed once, and ping answering after.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";

export const CHUNKS = 16;

/** The guest's command (vireo.run=...): no double quotes, the kernel command line carries it in them. */
export const CHUNK_WRITER = [
  "ip link set eth0 up",
  "ip addr add 10.0.2.15/24 dev eth0",
  "ping -c 1 -W 60 10.0.2.1 >/dev/null && echo net up",
  "i=0",
  `while [ $i -lt ${CHUNKS} ]; do head -c 65536 /dev/urandom > /tmp/c; dd if=/tmp/c of=/dev/vda bs=65536 seek=$i conv=fsync 2>/dev/null; echo chunk $i $(sha256sum /tmp/c); i=$((i+1)); sleep 1; done`,
  "ping -c 3 -W 30 10.0.2.1",
].join("; ");

export function chunkLines(text: string): Array<{ i: number; sha: string }> {
  return [...text.replace(/\r/g, "").matchAll(/^chunk (\d+) ([0-9a-f]{64}) /gm)].map((m) => ({
    i: Number(m[1]),
    sha: m[2] as string,
  }));
}

/**
 * The two runs' output together (before and after the snapshot or migration): every chunk once and in order, some
 * written after, ping answering after, and the disk holding each chunk with the hash the guest printed.
 */
export function assertChunksWhole(disk: string, before: string, after: string): void {
  const chunks = chunkLines(before + after);
  assert.deepEqual(
    chunks.map((c) => c.i),
    Array.from({ length: CHUNKS }, (_, i) => i),
    `every chunk once, in order:\n${before}\n---\n${after}`,
  );
  assert.ok(chunkLines(after).length > 0, "the guest went on writing afterwards");
  assert.match(after, /3 packets transmitted, 3 packets received/, "ping answers afterwards");
  const img = readFileSync(disk);
  for (const c of chunks) {
    const sha = createHash("sha256")
      .update(img.subarray(c.i * 65536, (c.i + 1) * 65536))
      .digest("hex");
    assert.equal(sha, c.sha, `chunk ${c.i} on the disk is what the guest wrote`);
  }
}
