/**
 * Interop with a front-end nobody here wrote: DPDK's testpmd (Debian's dpdk-dev, 22.11) with a `net_virtio_user`
 * vdev drives `vireo vhost-user net --sink` over its socket in txonly mode, on split rings and on packed rings
 * (`packed_vq=1`); the frames testpmd says it sent and the frames vireo counted must match exactly. No KVM is involved. Needs root for hugepages: the test mounts
 * hugetlbfs on /dev/hugepages if nothing is mounted there and reserves what it needs (given back afterwards).
 * Without root or without dpdk-testpmd (scripts/setup.sh installs it) the test is skipped, saying why.
 *
 * testpmd is started by bench/dpdk.ts (`--single-file-segments`, `--in-memory`, its own `--file-prefix`) with
 * `--total-num-mbufs=32768`, which fits in a few hundred MB of hugepages, and its main and forwarding lcores
 * share one CPU (`--lcores 0@1,1@1`) on these 2-CPU machines.
 */
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import {
  connectionEnd,
  ProcessSet,
  prepareDpdk,
  quitTestpmd,
  startTestpmd,
  type TestpmdStats,
  until,
} from "../../bench/dpdk.ts";
import { VIREO_BIN } from "../helpers/cli.ts";

/** What vireo's back-end said when the connection ended (its counts and its ring starts). */
interface ConnectionEnd {
  txFrames: number;
  txBytes: number;
  rxFrames: number;
  refused: number;
  ringStarts: number;
  packedRingStarts: number;
}

/**
 * One run: `vireo vhost-user net MODE --once` on a fresh socket, a testpmd with a virtio_user vdev on it (packed
 * rings if asked) forwarding in `fwd` for 3 s, then stopped, given 1.5 s for the back-end to drain what the ring
 * still holds, and quit (its output goes to a pipe, fully buffered: statistics are read once it has exited).
 * Returns testpmd's statistics and vireo's connection-end line; null when DPDK cannot run here (the test skips).
 */
async function session(
  t: { skip(why: string): void },
  mode: string[],
  ring: "split" | "packed",
  fwd: "txonly" | "rxonly",
): Promise<{ stats: TestpmdStats; end: ConnectionEnd; line: string; log: string } | null> {
  const prep = prepareDpdk(192); // 2 MiB pages: 384 MiB
  if ("why" in prep) {
    t.skip(prep.why);
    return null;
  }
  const set = new ProcessSet();
  const dir = mkdtempSync(join(tmpdir(), "vireo-dpdk-"));
  try {
    const socket = join(dir, "sock");
    const vireo = set.start(
      "vireo",
      VIREO_BIN,
      ["vhost-user", "net", "--socket", socket, ...mode, "--once"],
      {
        boost: false,
      },
    );
    await until(
      "the vhost-user socket",
      () => existsSync(socket),
      60_000,
      () => vireo.out.text,
    );
    const testpmd = await startTestpmd(
      set,
      {
        name: `vhost-user-test-${process.pid}`,
        cpu: 1,
        vdevs: [`net_virtio_user0,path=${socket},queues=1${ring === "packed" ? ",packed_vq=1" : ""}`],
        mode: fwd,
        mbufs: 32768,
      },
      { boost: false },
    );
    testpmd.send("start");
    await sleep(3000);
    testpmd.send("stop");
    await sleep(1500);
    const stats = await quitTestpmd(testpmd);
    assert.equal(await testpmd.exited, 0, testpmd.out.text);
    const { line, end } = await connectionEnd<ConnectionEnd>(vireo);
    assert.equal(await vireo.exited, 0, vireo.out.text);
    return { stats, end, line, log: `${vireo.out.text}\n${testpmd.out.text}` };
  } finally {
    set.killAll();
    rmSync(dir, { recursive: true, force: true });
    prep.release();
  }
}

for (const ring of ["split", "packed"] as const) {
  test(`DPDK testpmd (virtio_user, txonly, ${ring} rings) → vireo vhost-user net --sink: frame counts match exactly`, async (t) => {
    const r = await session(t, ["--sink"], ring, "txonly");
    if (r === null) return;
    const { end, line } = r;
    const sent = r.stats.forward?.txPackets ?? Number.NaN;
    t.diagnostic(
      `testpmd sent ${sent} frames in txonly; vireo counted ${end.txFrames} (${end.txBytes} bytes)`,
    );
    assert.ok(sent > 1000, `testpmd sent only ${sent} frames:\n${r.log}`);
    assert.equal(end.txFrames, sent, r.log);
    // testpmd's txonly frames are 64 bytes with the default segment length (no FCS: 64 on the ring).
    assert.equal(end.txBytes, 64 * sent);
    assert.equal(end.refused, 0);
    // The rings were the kind asked for (testpmd's packed_vq=1 negotiates VIRTIO_F_RING_PACKED).
    assert.ok(end.ringStarts >= 1, line);
    assert.equal(end.packedRingStarts, ring === "packed" ? end.ringStarts : 0, line);
  });
}

test("vireo vhost-user net --gen 64 → DPDK testpmd (virtio_user, rxonly, packed rings): testpmd receives what vireo placed", async (t) => {
  const r = await session(t, ["--gen", "64"], "packed", "rxonly");
  if (r === null) return;
  const { end, line } = r;
  const received = r.stats.forward?.rxPackets ?? Number.NaN;
  t.diagnostic(`vireo placed ${end.rxFrames} frames on a packed receive ring; testpmd received ${received}`);
  assert.ok(received > 1000, `testpmd received only ${received} frames:\n${r.log}`);
  // Every frame testpmd counted was one vireo placed; frames placed after testpmd's stop are not counted by it.
  assert.ok(end.rxFrames >= received, line);
  assert.ok(end.packedRingStarts >= 1, line);
  assert.equal(end.refused, 0, line);
});
