/**
 * Slow tier: `vireo vhost-user blk` killed with SIGKILL while QEMU's guest writes to it, each
 * time restarted on the same socket (up to three times); QEMU (`reconnect=1`) reconnects, hands the new back-end the inflight buffer
 * it kept, and restarts the rings at their used index. The guest writes 32 MiB of random data with O_DIRECT in
 * 4 KiB requests, reads the disk back, and prints both SHA-256 sums; the host hashes the image. All three must
 * agree, and the guest must finish (a request lost with a dead back-end would hang its dd forever).
 *
 * Whether a kill lands while a request is in the back-end's hands is up to timing (each is served in
 * microseconds); the test reports how many requests the new back-ends resubmitted. The in-process and process
 * tests (test/unit/vhost-user-blk-inflight.test.ts, vhost-user-blk-cli.test.ts) cover resubmission exactly.
 *
 * vireo-tier: native
 * Needs qemu-system-x86_64 (scripts/setup.sh) and the guest image (`./bin/vireo image build`); not root.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { findGuestImage } from "../../src/image/guest-image.ts";
import { repoPath } from "../../src/paths.ts";
import { VIREO_BIN } from "../helpers/cli.ts";

function skipReason(): string | false {
  if (spawnSync("qemu-system-x86_64", ["--version"]).status !== 0)
    return "no qemu-system-x86_64 (scripts/setup.sh)";
  if (!findGuestImage()) return "no guest image: run ./bin/vireo image build";
  return false;
}

const skip = skipReason();
const dir = mkdtempSync(join(tmpdir(), "vireo-qemu-blk-rc-"));
const procs: ChildProcess[] = [];
after(() => {
  for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
  rmSync(dir, { recursive: true, force: true });
});

interface Proc {
  child: ChildProcess;
  out: () => string;
  err: () => string;
  exited: Promise<number | null>;
}

function start(cmd: string, args: string[]): Proc {
  const child = spawn(cmd, args, { cwd: repoPath(), stdio: ["ignore", "pipe", "pipe"] });
  procs.push(child);
  let out = "";
  let err = "";
  child.stdout?.on("data", (d) => (out += d));
  child.stderr?.on("data", (d) => (err += d));
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  return { child, out: () => out, err: () => err, exited };
}

const MiB = 1 << 20;

test("SIGKILLed and restarted under QEMU mid-write, the back-end loses nothing: the image holds what the guest wrote", {
  skip,
  timeout: 600_000,
}, async (t) => {
  const image = findGuestImage();
  assert.ok(image);
  const socket = join(dir, "blk.sock");
  const img = join(dir, "blk.img");
  writeFileSync(img, "");
  truncateSync(img, 64 * MiB);
  const backend = async (): Promise<Proc> => {
    const p = start(VIREO_BIN, ["vhost-user", "blk", "--socket", socket, "--file", img]);
    const deadline = Date.now() + 60_000;
    while (!p.err().includes("listening")) {
      if (p.child.exitCode !== null || Date.now() > deadline) throw new Error(`back-end: ${p.err()}`);
      await sleep(20);
    }
    return p;
  };
  const backends: Proc[] = [await backend()];
  const run = [
    "head -c 33554432 /dev/urandom > /tmp/f",
    "sha256sum /tmp/f",
    "echo WRITING",
    "dd if=/tmp/f of=/dev/vda bs=4096 oflag=direct 2>&1",
    "echo WRITTEN",
    "head -c 33554432 /dev/vda | sha256sum",
  ].join("; ");
  const qemu = start("qemu-system-x86_64", [
    ...["-accel", "tcg", "-m", "512", "-nographic", "-no-reboot"],
    ...["-object", "memory-backend-memfd,id=mem,size=512M,share=on", "-numa", "node,memdev=mem"],
    ...["-chardev", `socket,id=chr0,path=${socket},reconnect=1`],
    ...["-device", "vhost-user-blk-pci,chardev=chr0"],
    ...["-kernel", join(image.dir, "vmlinuz"), "-initrd", join(image.dir, "initrd-guest.img")],
    ...["-append", `console=ttyS0 quiet vireo.run="${run}"`],
  ]);
  const started = Date.now();
  while (!qemu.out().includes("WRITING")) {
    if (qemu.child.exitCode !== null || Date.now() - started > 240_000) {
      throw new Error(`the guest did not start writing\n${qemu.out()}\n${qemu.err()}`);
    }
    await sleep(20);
  }
  // Kill the back-end while the guest writes, up to three times, each once QEMU has reconnected to it and the
  // guest's I/O has run on it for a second (a kill inside QEMU's handshake leaves QEMU 7.2's device dead: its
  // vhost_backend_init fails and it does not try again), starting a new one each time.
  let kills = 0;
  while (kills < 3) {
    const cur = backends[backends.length - 1] as Proc;
    const deadline = Date.now() + 60_000;
    while (!cur.err().includes("front-end connected") && Date.now() < deadline) await sleep(20);
    // The first back-end's handshake ended before the guest booted: kill it as soon as the guest writes (on an
    // idle machine the whole dd takes about a second, so a second's wait let it finish before any kill).
    if (kills > 0) await sleep(1000);
    if (qemu.out().includes("WRITTEN") || qemu.child.exitCode !== null) break;
    cur.child.kill("SIGKILL");
    await cur.exited;
    kills++;
    backends.push(await backend());
  }
  const timer = setTimeout(() => qemu.child.kill("SIGKILL"), 300_000);
  const qstatus = await qemu.exited;
  clearTimeout(timer);
  const last = backends[backends.length - 1] as Proc;
  last.child.kill("SIGTERM");
  await last.exited;
  const seconds = (Date.now() - started) / 1000;
  const out = qemu
    .out()
    .replace(/\r/g, "")
    // biome-ignore lint/suspicious/noControlCharactersInRegex: the escapes are what is removed
    .replace(/\x1b(\[[0-9;?]*[a-zA-Z]|c)/g, "");
  const log = `qemu ${qstatus} after ${seconds.toFixed(1)} s, ${kills} kills\n${out}\n${qemu.err()}\n${backends.map((b) => b.err()).join("\n")}`;
  assert.equal(qstatus, 0, log);
  assert.match(out, /VIREO-RUN-EXIT=0/, log);
  assert.ok(kills >= 1, `at least one kill landed while the guest wrote\n${log}`);
  const source = /^([0-9a-f]{64})\s+\/tmp\/f$/m.exec(out)?.[1];
  const readBack = /^([0-9a-f]{64})\s+-$/m.exec(out)?.[1];
  assert.ok(source && readBack, log);
  assert.equal(readBack, source, "the guest reads back what it wrote");
  const host = createHash("sha256")
    .update(readFileSync(img).subarray(0, 32 * MiB))
    .digest("hex");
  assert.equal(host, source, "the image holds what the guest wrote");
  const resubmitted = backends
    .map((b) => [...b.err().matchAll(/(\d+) requests resubmitted/g)].reduce((s, m) => s + Number(m[1]), 0))
    .reduce((a, b) => a + b, 0);
  t.diagnostic(
    `${kills} SIGKILLs while the guest wrote 32 MiB in 4 KiB O_DIRECT requests; ${resubmitted} requests resubmitted by the new back-ends; guest done in ${seconds.toFixed(1)} s`,
  );
});
