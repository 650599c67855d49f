/**
 * `vireo bench vhost-user-blk`, briefly (0.5 s rows at depths 1 and 4, both modes, a 1 MiB file): the JSON's
 * shape, every row did requests without errors, the driver's reads of blocks it wrote were checked and all
 * matched, for vireo's back-end and, when installed, qemu-storage-daemon's; the same with --cache direct. And the
 * check can fail: when the image is overwritten behind the back-end's back between the write rows and the read
 * rows, the driver reports mismatches.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { closeSync, existsSync, mkdtempSync, openSync, rmSync, writeFileSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { hasCommand } from "../../bench/dpdk.ts";
import { benchVhostUserBlk, buildDriver, DRIVER, formatVhostUserBlk } from "../../bench/vhost-user-blk.ts";
import { VIREO_BIN } from "../helpers/cli.ts";

const MiB = 1 << 20;
const dir = mkdtempSync(join(tmpdir(), "vireo-bench-vub-test-"));
const children: ChildProcess[] = [];
after(() => {
  for (const c of children) if (c.exitCode === null) c.kill("SIGKILL");
  rmSync(dir, { recursive: true, force: true });
});

describe("vireo bench vhost-user-blk", () => {
  test("rows for each back-end, depth and direction; requests done, reads verified, no mismatch", async () => {
    const qsd = hasCommand("qemu-storage-daemon");
    const r = await benchVhostUserBlk({
      json: true,
      seconds: 0.5,
      warmupSeconds: 0.1,
      depths: [1, 4],
      // 256 blocks: written over many times in a write row even on a loaded machine, so reads are checked.
      fileBytes: MiB,
    });
    const backends = qsd ? ["vireo", "qsd"] : ["vireo"];
    assert.deepEqual(r.modes, ["event", "poll"]);
    assert.deepEqual(
      r.rows.map((x) => `${x.mode} ${x.backend} ${x.rw} ${x.depth}`),
      r.modes.flatMap((m) =>
        backends.flatMap((b) => [
          `${m} ${b} write 1`,
          `${m} ${b} write 4`,
          `${m} ${b} read 1`,
          `${m} ${b} read 4`,
        ]),
      ),
    );
    for (const row of r.rows) {
      const what = `${row.mode} ${row.backend} ${row.rw} ${row.depth}`;
      assert.ok(row.requests > 0, `${what}: requests`);
      assert.ok(row.seconds > 0.3 && row.seconds < 5, `${what}: window ${row.seconds}`);
      assert.ok(Math.abs(row.iops / (row.requests / row.seconds) - 1) < 1e-3, `${what}: iops`);
      assert.ok(row.p50Us > 0 && row.p50Us <= row.p90Us && row.p90Us <= row.p99Us, `${what}: percentiles`);
      assert.ok(row.p99Us <= row.p999Us && row.p999Us <= row.maxUs, `${what}: percentiles`);
      assert.ok(row.driverCpuNsPerRequest > 0, `${what}: driver CPU measured`);
      assert.ok(row.backendCpuNsPerRequest >= 0 && row.backendCpuShare <= 1.5, `${what}: back-end CPU`);
      assert.equal(row.errors, 0, what);
      assert.equal(row.mismatches, 0, `${what}: a read differed from the data written`);
      if (row.rw === "read") assert.ok(row.verified > 0, `${what}: reads of written blocks were checked`);
      assert.deepEqual(row.samples, [row.iops]);
    }
    assert.deepEqual(
      r.negotiated.map((n) => n.backend),
      backends,
    );
    for (const n of r.negotiated) assert.equal(typeof n.eventIdx, "boolean");
    if (qsd) {
      assert.equal(r.ratios.length, 8);
      for (const x of r.ratios) {
        const same = (y: (typeof r.rows)[number]) =>
          y.mode === x.mode && y.rw === x.rw && y.depth === x.depth;
        const v = r.rows.find((y) => y.backend === "vireo" && same(y));
        const q = r.rows.find((y) => y.backend === "qsd" && same(y));
        assert.ok(v && q);
        assert.ok(Math.abs(x.iops - v.iops / q.iops) < 1e-9);
      }
    } else {
      assert.match(r.skipped.join("\n"), /qemu-storage-daemon is not installed/);
    }
    assert.match(r.otherLoad.loadavgBefore, /^\d+\.\d+ /);
    const table = formatVhostUserBlk(r);
    assert.match(table, /IOPS v\/q/);
    assert.match(table, /load average/);
  });

  test("--cache direct: vireo --direct and qsd cache.direct=on; reads still verified", async () => {
    const r = await benchVhostUserBlk({
      json: true,
      seconds: 0.3,
      warmupSeconds: 0.1,
      depths: [4],
      modes: ["event"],
      cache: "direct",
      // 32 blocks: every block is written early, so reads find written blocks even at a few hundred IOPS.
      fileBytes: 128 * 1024,
    });
    assert.equal(r.setup.cache, "direct");
    assert.match(r.setup.vireoCommand.event, / --direct$/);
    if (r.setup.qsdCommand) assert.match(r.setup.qsdCommand.event, /cache\.direct=on/);
    // The temporary directory's file system may refuse O_DIRECT (tmpfs): the bench says which.
    assert.match(r.setup.cacheDetail, /vireo --direct \((O_DIRECT|REFUSED by the file system: buffered)\)/);
    assert.ok(r.rows.length >= 2);
    for (const row of r.rows) {
      assert.ok(row.requests > 0, `${row.backend} ${row.rw}`);
      assert.equal(row.mismatches, 0, `${row.backend} ${row.rw}`);
      if (row.rw === "read") assert.ok(row.verified > 0, `${row.backend} read: verified`);
    }
  });

  test("the driver's check fails when the file changes behind the back-end between writes and reads", async () => {
    buildDriver();
    const img = join(dir, "img");
    writeFileSync(img, Buffer.alloc(4 * MiB, 0x5a));
    const socket = join(dir, "v.sock");
    const b = spawn(VIREO_BIN, ["vhost-user", "blk", "--socket", socket, "--file", img, "--once"], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    children.push(b);
    for (let i = 0; i < 600 && !existsSync(socket); i++) await sleep(100);
    assert.ok(existsSync(socket), "the back-end listens");
    const d = spawn(
      DRIVER,
      [
        "--socket",
        socket,
        "--size",
        String(4 * MiB),
        "--rows",
        "write:4,read:4",
        "--seconds",
        "0.5",
        "--warmup",
        "0.2",
      ],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    children.push(d);
    let out = "";
    let clobbered = false;
    d.stdout?.on("data", (chunk) => {
      out += chunk;
      // The write row is done: the read row reads what the file holds now.
      if (!clobbered && out.includes('"rw":"write"')) {
        clobbered = true;
        // In place (no truncation: the back-end's reads must not run past the end of the file).
        const fd = openSync(img, "r+");
        writeSync(fd, Buffer.alloc(4 * MiB, 0), 0, 4 * MiB, 0);
        closeSync(fd);
      }
    });
    const code = await new Promise<number | null>((resolve) => d.on("exit", resolve));
    assert.equal(code, 0, out);
    assert.ok(clobbered);
    const read = out
      .split("\n")
      .filter((l) => l.includes('"rw":"read"'))
      .map((l) => JSON.parse(l) as { verified: number; mismatches: number })[0];
    assert.ok(read, out);
    assert.ok(read.verified > 0);
    // Reads that ran while the zeroes were being written may still match; the rest cannot.
    assert.ok(
      read.mismatches > 0 && read.mismatches >= read.verified / 2,
      `${read.mismatches} of ${read.verified}`,
    );
  });
});
