/**
 * Issue 12, snapshot and restore on KVM: the micro guest's `count` prints "count K" for K = 1..TOTAL, a line
 * every PERIOD_MS of guest TSC time. It runs
 * with --api-socket; once it has printed a few lines the test snapshots it (staying paused), SIGKILLs that vireo,
 * and resumes the snapshot with `vireo run --restore` in a new process. The two outputs put together must be
 * exactly count 1..TOTAL and "count done" (each line once: nothing lost, nothing repeated), the restored part must
 * not start from 1, and the restored guest exits 0. Then a state file with one flipped bit is refused with its
 * code before any vCPU runs (no serial output file is even created), and a well-formed one with an impossible
 * CR0 is refused by KVM_SET_SREGS before any vCPU is let go.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { cpSync, existsSync, mkdtempSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { callApi } from "../../src/cli/ctl.ts";
import { SREGS } from "../../src/kvm/abi.ts";
import { KvmSystem } from "../../src/kvm/system.ts";
import type { SnapshotResult } from "../../src/vmm/api-server.ts";
import { decodeStateFile, writeStateFile } from "../../src/vmm/snapshot/state-file.ts";
import { VIREO_BIN } from "../helpers/cli.ts";

const skip = KvmSystem.available() ? false : "no usable /dev/kvm on this host: KVM tests skipped";
const emulated = process.env.VIREO_EMULATED_HOST === "1";
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const t0 = Date.now();
function step(message: string): void {
  process.stderr.write(`snapshot: ${((Date.now() - t0) / 1000).toFixed(1)} s: ${message}\n`);
}

const TOTAL = 40;
// Milliseconds of guest TSC time between lines: long enough that the guest is still counting when the snapshot
// request arrives, even in the emulated host, where printing a line takes tens of exits.
const PERIOD_MS = emulated ? 300 : 100;

function start(args: string[]) {
  const child = spawn(VIREO_BIN, args, { stdio: ["ignore", "pipe", "pipe"] });
  let stderr = "";
  child.stdout.resume();
  child.stderr.on("data", (c) => {
    stderr += c;
  });
  const exited = new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)));
  return { child, exited, stderr: () => stderr };
}

const counts = (text: string) => [...text.matchAll(/^count (\d+)$/gm)].map((m) => Number(m[1]));

test("a counting guest snapshotted, killed and restored in a new process goes on counting", {
  skip,
  timeout: 900_000,
}, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "vireo-snap-kvm-"));
  const sock = join(dir, "api.sock");
  const out1 = join(dir, "out1.txt");
  const out2 = join(dir, "out2.txt");
  const snap = join(dir, "snap");
  const first = start([
    "run",
    "--guest",
    "micro:count",
    String(TOTAL),
    String(PERIOD_MS),
    "--serial",
    `file:${out1}`,
    // Two vCPUs: the second waits for a SIPI that never comes, and is saved and restored in that state too.
    "--cpus",
    "2",
    "--timeout",
    "600",
    "--api-socket",
    sock,
  ]);
  step(`started vireo (pid ${first.child.pid})`);
  let result: SnapshotResult;
  try {
    const deadline = Date.now() + (emulated ? 300_000 : 30_000);
    const printed = () => (existsSync(out1) ? counts(readFileSync(out1, "utf8")) : []);
    const ended: { code: number | null | "running" } = { code: "running" };
    void first.exited.then((c) => {
      ended.code = c;
    });
    while (!existsSync(sock) || printed().length < 3) {
      const why = `socket ${existsSync(sock) ? "up" : "missing"}, ${printed().length} lines, vireo ${ended.code}`;
      if (ended.code !== "running")
        assert.fail(
          `vireo ended before the snapshot (${why})\n${first.stderr()}\n--- serial:\n${existsSync(out1) ? readFileSync(out1, "utf8") : ""}`,
        );
      assert.ok(Date.now() < deadline, `the guest did not print 3 lines (${why})\n${first.stderr()}`);
      await sleep(20);
    }
    const before = printed().length;
    const tSnap = performance.now();
    const answer = await callApi(sock, "PUT", "/v1/vm/snapshot", 600_000, { path: snap, paused: true });
    const snapWallMs = performance.now() - tSnap;
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    result = answer.body as SnapshotResult;
    step(
      `snapshot after line ${before}: ${JSON.stringify(result)} (${snapWallMs.toFixed(0)} ms at the client)`,
    );
    t.diagnostic(`snapshot: ${JSON.stringify(result)}; client saw ${snapWallMs.toFixed(0)} ms`);
    assert.equal(result.state, "paused");
    assert.ok(
      printed().length < TOTAL,
      `the guest finished before the snapshot (${printed().length} lines): PERIOD_MS too small`,
    );
  } finally {
    first.child.kill("SIGKILL");
    await first.exited;
  }
  step("first vireo killed");
  const text1 = readFileSync(out1, "utf8");

  // The memory file: RAM-sized, mostly holes, and no more on disk than was written (plus block rounding).
  const mem = statSync(join(snap, "memory"));
  assert.equal(mem.size, result.ramBytes);
  assert.ok(result.memoryBytesWritten < result.ramBytes / 4, `wrote ${result.memoryBytesWritten} bytes`);
  assert.ok(mem.blocks * 512 <= result.memoryBytesWritten + 64 * 1024, `${mem.blocks * 512} bytes on disk`);
  assert.equal(statSync(join(snap, "state")).size, result.stateFileBytes);
  t.diagnostic(
    `memory file: ${result.memoryBytesWritten} bytes written of ${result.ramBytes} (${mem.blocks * 512} on disk); state file ${result.stateFileBytes} bytes`,
  );

  const tRestore = performance.now();
  const second = start(["run", "--restore", snap, "--serial", `file:${out2}`, "--timeout", "600"]);
  const status = await second.exited;
  const restoreWallMs = performance.now() - tRestore;
  step(`restored vireo exited ${status} after ${restoreWallMs.toFixed(0)} ms: ${second.stderr().trim()}`);
  t.diagnostic(`restore run: ${second.stderr().trim()}; whole process ${restoreWallMs.toFixed(0)} ms`);
  const text2 = readFileSync(out2, "utf8");
  assert.equal(status, 0, `the restored guest exits 0\n${second.stderr()}\n--- output:\n${text2}`);
  assert.match(second.stderr(), /restored .* in [\d.]+ ms/);
  const expected = `${Array.from({ length: TOTAL }, (_, i) => `count ${i + 1}\n`).join("")}count done\n`;
  assert.equal(text1 + text2, expected, `before:\n${text1}\nafter:\n${text2}`);
  const resumedAt = counts(text2)[0];
  assert.ok(resumedAt !== undefined && resumedAt > 1, `the restored guest went on from ${resumedAt}, not 1`);
  t.diagnostic(`counted to ${counts(text1).at(-1)} before, went on from ${resumedAt} after restore`);

  // The same snapshot again, its memory file mapped (--lazy): the same continuation, and the file unchanged by
  // the guest's writes (the mapping is private).
  const memoryBefore = readFileSync(join(snap, "memory"));
  const out2b = join(dir, "out2b.txt");
  const lazy = start(["run", "--restore", snap, "--lazy", "--serial", `file:${out2b}`, "--timeout", "600"]);
  assert.equal(await lazy.exited, 0, lazy.stderr());
  assert.match(lazy.stderr(), /restored .* in [\d.]+ ms \(memory mapped lazily\)/);
  assert.equal(readFileSync(out2b, "utf8"), text2, "a lazy restore goes on exactly as the copying one");
  assert.ok(readFileSync(join(snap, "memory")).equals(memoryBefore), "the memory file is not written");
  step(`lazy restore: ${lazy.stderr().trim()}`);
  t.diagnostic(`lazy restore run: ${lazy.stderr().trim()}`);

  // One flipped bit in the state file's body: refused by its checksum, before the machine is built.
  const bad = join(dir, "bad");
  cpSync(snap, bad, { recursive: true });
  const state = readFileSync(join(bad, "state"));
  state[200] = (state[200] ?? 0) ^ 0x10;
  writeFileSync(join(bad, "state"), state);
  const out3 = join(dir, "out3.txt");
  const refused = start(["run", "--restore", bad, "--serial", `file:${out3}`]);
  assert.equal(await refused.exited, 125);
  assert.match(refused.stderr(), /VIREO_SNAPSHOT_CHECKSUM/);
  assert.equal(existsSync(out3), false, "nothing ran: the serial output was never opened");
  step("corrupted state file refused");

  // A well-formed file (valid checksum) whose vCPU 0 has CR0.PG without CR0.PE: KVM_SET_SREGS refuses it on the
  // vCPU's thread, before that vCPU's first entry, and no vCPU is let go: the guest prints nothing.
  const forged = join(dir, "forged");
  cpSync(snap, forged, { recursive: true });
  const file = decodeStateFile(readFileSync(join(forged, "state")));
  const sregs = file.sections.find((x) => x.name === "vcpu-0")?.data.sregs;
  assert.ok(sregs instanceof Uint8Array);
  new DataView(sregs.buffer, sregs.byteOffset, sregs.byteLength).setBigUint64(SREGS.cr0, 0x80000000n, true);
  writeStateFile(join(forged, "state"), { sections: file.sections });
  const out4 = join(dir, "out4.txt");
  const kvmRefused = start(["run", "--restore", forged, "--serial", `file:${out4}`, "--timeout", "120"]);
  assert.equal(await kvmRefused.exited, 125, kvmRefused.stderr());
  assert.match(kvmRefused.stderr(), /KVM_SET_SREGS/);
  assert.equal(
    existsSync(out4) ? readFileSync(out4, "utf8") : "",
    "",
    "the guest ran no instruction that printed",
  );
  step("forged vCPU state refused by KVM before any vCPU ran");
});
