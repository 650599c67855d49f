/**
 * Issue 12, snapshot and restore of a machine with PCI devices: the micro guest's virtio-blk driver writes a
 * 48 MiB pattern to a virtio-blk disk served by a data-plane thread (`--disk IMG,iothread`: doorbells are KVM
 * ioeventfds, the thread is quiesced for the snapshot), then reads it all back and checks it. While it is writing
 * the test snapshots it (staying paused), SIGKILLs that vireo, and resumes the snapshot with `vireo run --restore`
 * in a new process, which rebuilds the disk from the state file (same path) and goes on. The guest must finish
 * with its own read-back check passed, and the image must hold exactly the guest's pattern: no write lost, none
 * done twice out of order. Then a restore whose disk file is gone is refused before any vCPU runs.
 */
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { callApi } from "../../src/cli/ctl.ts";
import { KvmSystem } from "../../src/kvm/system.ts";
import type { SnapshotResult } from "../../src/vmm/api-server.ts";
import { expectedSector, restoreBlkWriter, sectorOf } from "../helpers/blk-pattern.ts";
import { VIREO_BIN } from "../helpers/cli.ts";
import { startProcess, waitFor } from "../helpers/processes.ts";

const skip = KvmSystem.available() ? false : "no usable /dev/kvm on this host: KVM tests skipped";
const MiB = 1 << 20;
const t0 = Date.now();
function step(message: string): void {
  process.stderr.write(`snapshot-devices: ${((Date.now() - t0) / 1000).toFixed(1)} s: ${message}\n`);
}

test("a guest writing to its virtio-blk disk (data-plane thread) is snapshotted mid-write, killed, restored, and every byte is on the disk", {
  skip,
  timeout: 900_000,
}, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "vireo-snap-dev-"));
  const disk = join(dir, "disk.img");
  writeFileSync(disk, new Uint8Array(64 * MiB));
  const kib = 48 * 1024;
  const sectors = (kib * 1024) / 512;
  const sock = join(dir, "api.sock");
  const out1 = join(dir, "out1.txt");
  const out2 = join(dir, "out2.txt");
  const snap = join(dir, "snap");
  const first = startProcess([
    VIREO_BIN,
    "run",
    "--guest",
    "micro:virtio-blk-rw",
    String(kib),
    "--disk",
    `${disk},iothread`,
    "--serial",
    `file:${out1}`,
    "--timeout",
    "600",
    "--api-socket",
    sock,
  ]);
  let result: SnapshotResult;
  let stillWriting: boolean;
  try {
    // Well into its writes once the sector at 8 MiB holds the pattern: the rings are long started.
    const mark = (8 * MiB) / 512;
    await waitFor(
      () =>
        (existsSync(sock) && sectorOf(disk, mark).equals(expectedSector(mark))) ||
        first.child.exitCode !== null,
      300_000,
      () => `the guest never wrote: ${first.err()}`,
    );
    assert.equal(first.child.exitCode, null, `vireo ended before the snapshot: ${first.err()}`);
    step("guest is writing; snapshot");
    const answer = await callApi(sock, "PUT", "/v1/vm/snapshot", 600_000, { path: snap, paused: true });
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    result = answer.body as SnapshotResult;
    // Paused: nothing more reaches the disk. The last sector still zero means the snapshot came mid-write.
    stillWriting = sectorOf(disk, sectors - 1).equals(Buffer.alloc(512));
    step(`snapshot: ${JSON.stringify(result)}`);
    t.diagnostic(`snapshot: ${JSON.stringify(result)}`);
  } finally {
    first.child.kill("SIGKILL");
    await first.exited;
  }
  assert.ok(stillWriting, "the snapshot came while the guest was still writing");
  const state = readFileSync(join(snap, "state")).toString("latin1");
  assert.ok(state.includes(disk), "the state file records the disk's path");

  const { metrics: m, stderr } = await restoreBlkWriter({ snap, out1, out2, disk, kib, step });
  const kicks = m["vhost.blk0.kicks"] ?? 0;
  assert.ok(kicks > 0, `the restored disk was served by its data-plane thread (kicks ${kicks})`);
  t.diagnostic(`restored run: ${stderr}; data-plane kicks after restore ${kicks}`);

  // The disk is part of the machine: a restore that cannot reach it is refused before any vCPU runs.
  renameSync(disk, `${disk}.away`);
  const out3 = join(dir, "out3.txt");
  const refused = startProcess([VIREO_BIN, "run", "--restore", snap, "--serial", `file:${out3}`]);
  const refusedStatus = await refused.exited;
  renameSync(`${disk}.away`, disk);
  assert.equal(refusedStatus, 125, refused.err());
  assert.match(refused.err(), /disk\.img/);
  assert.equal(existsSync(out3) ? readFileSync(out3, "utf8") : "", "", "no vCPU ran");
});
