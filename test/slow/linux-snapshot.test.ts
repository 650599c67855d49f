/**
 * Slow tier, issue 12: a Debian guest with a virtio-blk disk (served on the vCPU threads) and a virtio-net NIC
 * (served by its data-plane thread, on a TAP in a network namespace) writes 64 KiB chunks of random data to
 * /dev/vda, one a second, printing each chunk's SHA-256. After a few chunks the test snapshots it (paused),
 * SIGKILLs that vireo and resumes the snapshot with `vireo run --restore` in a new process, in the same namespace:
 * the TAP is reattached by name, the disk by path. The restored guest must go on writing where it was and then
 * ping the host through the restored NIC; the image must hold every chunk with the hash the guest printed.
 */
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { callApi } from "../../src/cli/ctl.ts";
import type { SnapshotResult } from "../../src/vmm/api-server.ts";
import { VIREO_BIN } from "../helpers/cli.ts";
import { assertChunksWhole, CHUNK_WRITER, CHUNKS, chunkLines } from "../helpers/linux-chunks.ts";
import { LINUX_TEST_TIMEOUT_MS, linuxGuestSkip, linuxRunArgs } from "../helpers/linux-guest.ts";
import { netnsMaker, netnsUnavailable } from "../helpers/netns.ts";
import { startProcess, waitFor } from "../helpers/processes.ts";

const skip = linuxGuestSkip() || (netnsUnavailable() ?? false);
const makeNs = netnsMaker();
const t0 = Date.now();
function step(message: string): void {
  process.stderr.write(`linux-snapshot: ${((Date.now() - t0) / 1000).toFixed(1)} s: ${message}\n`);
}

test("a Linux guest writing to virtio-blk and on virtio-net is snapshotted, killed, restored, and goes on: every chunk on the disk, ping answers", {
  skip,
  timeout: LINUX_TEST_TIMEOUT_MS,
}, async () => {
  const ns = makeNs();
  ns.addTapAddress("10.0.2.1/24");
  const dir = mkdtempSync(join(tmpdir(), "vireo-linux-snap-"));
  const disk = join(dir, "vda.img");
  writeFileSync(disk, "");
  truncateSync(disk, 16 << 20);
  const sock = join(dir, "api.sock");
  const out1 = join(dir, "out1.txt");
  const out2 = join(dir, "out2.txt");
  const snap = join(dir, "snap");
  const run = CHUNK_WRITER;
  const first = startProcess([
    ...ns.exec([]),
    VIREO_BIN,
    ...linuxRunArgs(run, [
      "--disk",
      disk,
      "--net",
      `tap=${ns.tap},model=virtio,mac=02:76:69:00:00:0f`,
      "--serial",
      `file:${out1}`,
      "--api-socket",
      sock,
    ]),
  ]);
  const printed = () => (existsSync(out1) ? readFileSync(out1, "utf8") : "");
  try {
    await waitFor(
      () => chunkLines(printed()).length >= 3 || first.child.exitCode !== null,
      LINUX_TEST_TIMEOUT_MS / 2,
      () => `the guest did not write 3 chunks: ${first.err()}\n--- serial:\n${printed()}`,
    );
    assert.equal(first.child.exitCode, null, `vireo ended early: ${first.err()}\n--- serial:\n${printed()}`);
    assert.match(printed(), /^net up/m);
    const answer = await callApi(sock, "PUT", "/v1/vm/snapshot", 300_000, { path: snap, paused: true });
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    step(
      `snapshot after chunk ${chunkLines(printed()).at(-1)?.i}: ${JSON.stringify(answer.body as SnapshotResult)}`,
    );
  } finally {
    first.child.kill("SIGKILL");
    await first.exited;
  }
  const text1 = printed();
  assert.ok(chunkLines(text1).length < CHUNKS, "the snapshot came while the guest was still writing");

  const second = startProcess([
    ...ns.exec([]),
    VIREO_BIN,
    "run",
    "--restore",
    snap,
    "--serial",
    `file:${out2}`,
    "--timeout",
    String(LINUX_TEST_TIMEOUT_MS / 1000 - 120),
  ]);
  const status = await second.exited;
  const text2 = existsSync(out2) ? readFileSync(out2, "utf8") : "";
  step(`restored vireo exited ${status}: ${second.err().trim()}`);
  assert.equal(status, 0, `${second.err()}\n--- before:\n${text1}\n--- after:\n${text2}`);
  assertChunksWhole(disk, text1, text2);
});
