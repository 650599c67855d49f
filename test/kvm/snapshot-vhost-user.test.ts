/**
 * Issue 12, snapshots of a machine whose devices other processes serve (vhost-user): the micro guest's virtio-blk
 * driver writes a pattern to a disk that `vireo vhost-user blk` serves (`--disk vhost-user=SOCKET`), and the
 * machine also has a NIC on `vireo vhost-user net --sink` (`--net vhost-user=SOCKET`; this guest leaves it alone,
 * so it checks that the machine section brings it back). While the guest writes, the
 * test takes a paused snapshot (the back-ends' rings are stopped with GET_VRING_BASE for the save and started
 * again after), resumes the VM and sees its writes go on, then SIGKILLs that vireo and resumes the snapshot with
 * `vireo run --restore` in a new process: it connects to the same back-ends again (the machine section records
 * their sockets) and starts their rings from the used indices in the restored RAM. The guest must finish with
 * its own read-back check passed and the image must hold exactly its pattern: no write lost, none out of order.
 */
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { callApi } from "../../src/cli/ctl.ts";
import { KvmSystem } from "../../src/kvm/system.ts";
import type { SnapshotResult } from "../../src/vmm/api-server.ts";
import { expectedSector, restoreBlkWriter, sectorOf } from "../helpers/blk-pattern.ts";
import { VIREO_BIN } from "../helpers/cli.ts";
import { type Proc, startListening, startProcess, waitFor } from "../helpers/processes.ts";

const skip = KvmSystem.available() ? false : "no usable /dev/kvm on this host: KVM tests skipped";
const MiB = 1 << 20;
const t0 = Date.now();
function step(message: string): void {
  process.stderr.write(`snapshot-vhost-user: ${((Date.now() - t0) / 1000).toFixed(1)} s: ${message}\n`);
}

/** `vireo vhost-user KIND --socket SOCK ...` serving connection after connection, once it says it listens. */
function startBackend(kind: "blk" | "net", socket: string, args: string[]): Promise<Proc> {
  return startListening([VIREO_BIN, "vhost-user", kind, "--socket", socket, ...args], `the ${kind} back-end`);
}

test("a guest writing to a vhost-user disk is snapshotted mid-write, resumed (its writes go on), killed, restored onto the same back-ends, and every byte is on the disk", {
  skip,
  timeout: 900_000,
}, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "vireo-snap-vu-"));
  const disk = join(dir, "disk.img");
  writeFileSync(disk, new Uint8Array(48 * MiB));
  const kib = 32 * 1024;
  const sectors = (kib * 1024) / 512;
  const blkSock = join(dir, "blk.sock");
  const netSock = join(dir, "net.sock");
  const blk = await startBackend("blk", blkSock, ["--file", disk]);
  const net = await startBackend("net", netSock, ["--sink"]);
  const api = join(dir, "api.sock");
  const out1 = join(dir, "out1.txt");
  const out2 = join(dir, "out2.txt");
  const first = startProcess([
    VIREO_BIN,
    "run",
    "--guest",
    "micro:virtio-blk-rw",
    String(kib),
    "--disk",
    `vhost-user=${blkSock}`,
    "--net",
    `vhost-user=${netSock}`,
    "--serial",
    `file:${out1}`,
    "--timeout",
    "600",
    "--api-socket",
    api,
  ]);
  const written = (mib: number) =>
    sectorOf(disk, (mib * MiB) / 512).equals(expectedSector((mib * MiB) / 512));
  let stillWriting: boolean;
  try {
    await waitFor(
      () => (existsSync(api) && written(4)) || first.child.exitCode !== null,
      300_000,
      () => `the guest never wrote: ${first.err()}`,
    );
    assert.equal(first.child.exitCode, null, `vireo ended before the snapshot: ${first.err()}`);
    step("guest is writing; snapshot, paused");
    const paused = await callApi(api, "PUT", "/v1/vm/snapshot", 600_000, {
      path: join(dir, "snap"),
      paused: true,
    });
    assert.equal(paused.status, 200, JSON.stringify(paused.body));
    t.diagnostic(`snapshot paused: ${JSON.stringify(paused.body as SnapshotResult)}`);
    // Paused, rings stopped: the last sector still zero means the snapshot came mid-write.
    stillWriting = sectorOf(disk, sectors - 1).equals(Buffer.alloc(512));
    // Resumed: the rings, stopped for the save, started again, and the guest's writes go on reaching the disk (the
    // first MiB not written when it was paused gets written). Then this vireo dies, and the paused snapshot resumes
    // elsewhere: the writes it makes again are the same data.
    const resumed = await callApi(api, "PUT", "/v1/vm/resume", 60_000);
    assert.equal(resumed.status, 200, JSON.stringify(resumed.body));
    let next = 4;
    while (next < kib / 1024 - 1 && written(next)) next++;
    await waitFor(
      () => written(next) || first.child.exitCode !== null,
      300_000,
      () => `the guest's writes did not go on after the snapshot: ${first.err()}`,
    );
    assert.equal(first.child.exitCode, null, `vireo ended after the resume: ${first.err()}`);
    step("writes went on after the resume");
  } finally {
    first.child.kill("SIGKILL");
    await first.exited;
  }
  assert.ok(stillWriting, "the snapshot came while the guest was still writing");
  const state = readFileSync(join(dir, "snap", "state")).toString("latin1");
  assert.ok(
    state.includes(blkSock) && state.includes(netSock),
    "the state file records both back-ends' sockets",
  );

  const { metrics: m, stderr } = await restoreBlkWriter({
    snap: join(dir, "snap"),
    out1,
    out2,
    disk,
    kib,
    step,
  });
  const starts = (re: RegExp) =>
    Object.entries(m)
      .filter(([k]) => re.test(k))
      .reduce((a, [, v]) => a + v, 0);
  const blkStarts = starts(/^vhost-user\.blk\d+\.ring_starts$/);
  t.diagnostic(`restored run: blk ring starts ${blkStarts}; ${stderr}`);
  assert.ok(blkStarts > 0, `the restored disk's rings were started on the back-end (${blkStarts})`);
  // The NIC (which this guest leaves alone) was rebuilt on its back-end too: a second front-end connected there.
  const connected = (p: Proc) => p.err().match(/front-end connected/g)?.length ?? 0;
  assert.equal(connected(net), 2, `the net back-end saw vireo and the restored vireo connect: ${net.err()}`);
  assert.equal(connected(blk), 2, `the blk back-end saw vireo and the restored vireo connect: ${blk.err()}`);
  // Restored somewhere new as far as the network knows: the NIC's thread asked its back-end to announce the
  // guest's MAC (SEND_RARP), once, and the first vireo never did.
  assert.equal(m["vhost-user.net0.rarps_sent"], 1, "the restored vireo sent SEND_RARP once");
  const ends = () =>
    net
      .out()
      .split("\n")
      .filter((l) => l.includes('"connection-end"'))
      .map((l) => JSON.parse(l) as { rarps: number });
  await waitFor(
    () => ends().length === 2,
    60_000,
    () => `the net back-end's two connections did not both end: ${net.out()}`,
  );
  assert.deepEqual(
    ends().map((e) => e.rarps),
    [0, 1],
    "the back-end was asked to announce by the restored vireo only",
  );
  assert.equal(blk.child.exitCode, null, `the blk back-end is still serving: ${blk.err()}`);
  assert.equal(net.child.exitCode, null, `the net back-end is still serving: ${net.err()}`);
  blk.child.kill("SIGTERM");
  net.child.kill("SIGTERM");
});
