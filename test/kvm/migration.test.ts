/**
 * Issue 12, live migration on KVM between two "hosts": two network namespaces joined by a veth pair. The
 * destination is `vireo run --incoming tcp:10.77.0.2:PORT` in namespace B, the source a vireo VM in namespace A
 * with the control API; `PUT /v1/vm/migrate` sends it over (pre-copy rounds with KVM's dirty log and the devices'
 * own, then the last pages and the state, with a SHA-256 of guest RAM checked by the destination).
 *
 * - A busy guest: the micro guest writes 112 MiB to a virtio-blk disk and reads it back; it is migrated while
 *   busy and must finish on the destination with its own read-back check passed and every sector of the image
 *   right (the disk is "shared storage": the same file). Once on a data-plane thread, once on a vhost-user
 *   back-end whose writes to guest RAM come through its dirty log.
 * - An idle-ish guest: the micro guest counting on 2 vCPUs. A migration to a port nobody listens on first fails
 *   with the VM running on; then the real one, and the two outputs together are exactly count 1..N.
 * - A destination fed garbage refuses it and runs nothing.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { callApi } from "../../src/cli/ctl.ts";
import { KvmSystem } from "../../src/kvm/system.ts";
import type { MigrationResult } from "../../src/vmm/migration/source.ts";
import { assertImageHoldsPattern, expectedSector, sectorOf } from "../helpers/blk-pattern.ts";
import { VIREO_BIN } from "../helpers/cli.ts";
import { netnsUnavailable } from "../helpers/netns.ts";
import { type Proc, startListening, startProcess, waitFor } from "../helpers/processes.ts";

const skip = KvmSystem.available() ? false : "no usable /dev/kvm on this host: KVM tests skipped";
const netSkip = skip || (netnsUnavailable() ?? false);
const emulated = process.env.VIREO_EMULATED_HOST === "1";
const MiB = 1 << 20;
const t0 = Date.now();
/** The API call, with both vireos' stderr in the error if it fails. */
async function migrateCall(sock: string, body: Record<string, unknown>, procs: Proc[]) {
  try {
    return await callApi(sock, "PUT", "/v1/vm/migrate", 600_000, body);
  } catch (e) {
    throw new Error(
      `${(e as Error).message}\n${procs.map((p) => `--- ${p.child.spawnfile}:\n${p.err()}`).join("\n")}`,
    );
  }
}

const step = (m: string) =>
  process.stderr.write(`migration: ${((Date.now() - t0) / 1000).toFixed(1)} s: ${m}\n`);

function sh(args: string[]): void {
  const r = spawnSync(args[0] as string, args.slice(1), { encoding: "utf8" });
  if (r.status !== 0) throw new Error(`${args.join(" ")}: ${r.stderr.trim()}`);
}

// Registered here, at the top level: an after() inside a test would run when that test ends.
const made: string[] = [];
after(() => {
  for (const ns of made) spawnSync("ip", ["netns", "del", ns]);
});

/** Two namespaces, "hosts" A (10.77.0.1) and B (10.77.0.2), joined by a veth pair. */
function twoHosts(): { a: string[]; b: string[] } {
  const tag = `${process.pid % 100000}`;
  const A = `vireo-migA-${tag}`;
  const B = `vireo-migB-${tag}`;
  sh(["ip", "netns", "add", A]);
  sh(["ip", "netns", "add", B]);
  made.push(A, B);
  sh(["ip", "link", "add", `vmA${tag}`, "netns", A, "type", "veth", "peer", "name", `vmB${tag}`, "netns", B]);
  for (const [ns, dev, addr] of [
    [A, `vmA${tag}`, "10.77.0.1/24"],
    [B, `vmB${tag}`, "10.77.0.2/24"],
  ] as const) {
    sh(["ip", "netns", "exec", ns, "ip", "addr", "add", addr, "dev", dev]);
    sh(["ip", "netns", "exec", ns, "ip", "link", "set", dev, "up"]);
    sh(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"]);
  }
  return { a: ["ip", "netns", "exec", A], b: ["ip", "netns", "exec", B] };
}

let hosts: { a: string[]; b: string[] } | null = null;
const getHosts = () => {
  hosts ??= twoHosts();
  return hosts;
};

async function destination(port: number, out: string): Promise<Proc> {
  const d = startProcess([
    ...getHosts().b,
    VIREO_BIN,
    "run",
    "--incoming",
    `tcp:10.77.0.2:${port}`,
    "--serial",
    `file:${out}`,
    "--timeout",
    "600",
  ]);
  await waitFor(
    () => /waiting for a migration/.test(d.err()) || d.child.exitCode !== null,
    120_000,
    () => `the destination did not listen: ${d.err()}`,
  );
  assert.equal(d.child.exitCode, null, d.err());
  return d;
}

/**
 * The micro guest writes 112 MiB (48 MiB through vhost-user) to a virtio-blk disk and reads it back; it is migrated while busy, and must finish
 * on the destination with its read-back check passed, guest RAM equal to the source's (SHA-256) and every sector of
 * the image right (the disk is "shared storage": the same file).
 * - `iothread`: vireo's own virtio-blk on a data-plane thread, migrated while it writes.
 * - `vhost-user`: `vireo vhost-user blk` in the first host's namespace serves the disk; both vireos connect to its
 *   socket (the source hands the connection over at the switch-over), and the back-end logs its writes to guest
 *   RAM (PROTOCOL_F_LOG_SHMFD). Migrated while the guest writes (its status bytes and used ring are the back-end's
 *   writes then). This guest cannot show a page the log missed, though: it rewrites each buffer the back-end
 *   fills, so KVM's log names those pages anyway (checked, migrated mid-read: it passed with the back-ends' log
 *   switched off). The log's own tests are test/unit/migration-source.test.ts, vhost-user-dirty-log.test.ts and
 *   vhost-user-frontend-thread.test.ts.
 */
async function busyDiskMigration(
  t: { diagnostic(m: string): void },
  kind: "iothread" | "vhost-user",
  port: number,
): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), `vireo-mig-${kind}-`));
  const disk = join(dir, "disk.img");
  writeFileSync(disk, new Uint8Array(128 * MiB));
  // Through vhost-user the guest's I/O is faster in the emulated host: 48 MiB still outlasts the migration, and
  // keeps the test (and CI) shorter.
  const kib = (kind === "iothread" ? 112 : 48) * 1024;
  const sock = join(dir, "api.sock");
  const out1 = join(dir, "out1.txt");
  const out2 = join(dir, "out2.txt");
  let backend: Proc | null = null;
  let diskArg = `${disk},iothread`;
  if (kind === "vhost-user") {
    const blkSock = join(dir, "blk.sock");
    backend = await startListening(
      [...getHosts().a, VIREO_BIN, "vhost-user", "blk", "--socket", blkSock, "--file", disk],
      "the back-end",
    );
    diskArg = `vhost-user=${blkSock}`;
  }
  const dest = await destination(port, out2);
  const src = startProcess([
    ...getHosts().a,
    VIREO_BIN,
    "run",
    "--guest",
    "micro:virtio-blk-rw",
    String(kib),
    "--disk",
    diskArg,
    "--serial",
    `file:${out1}`,
    "--timeout",
    "600",
    "--api-socket",
    sock,
  ]);
  // Writing: the sector at 8 MiB holds the pattern.
  const mark = (8 * MiB) / 512;
  await waitFor(
    () =>
      (existsSync(sock) && sectorOf(disk, mark).equals(expectedSector(mark))) || src.child.exitCode !== null,
    300_000,
    () => `the guest never wrote: ${src.err()}`,
  );
  assert.equal(src.child.exitCode, null, src.err());
  step("guest is writing; migrate");
  // At most 5 rounds: the guest rewrites its 4 MiB buffer faster than the emulated host can send it (about
  // 7 MB/s there), so it would not converge to 300 ms and would finish its writes first; the switch-over then
  // happens with it busy, which is what this test is about.
  const procs = backend ? [src, dest, backend] : [src, dest];
  const answer = await migrateCall(sock, { to: `tcp:10.77.0.2:${port}`, verify: true, maxRounds: 5 }, procs);
  assert.equal(
    answer.status,
    200,
    `${JSON.stringify(answer.body)}\n--- source:\n${src.err()}\n--- destination:\n${dest.err()}\n--- guest:\n${readFileSync(out1, "utf8")}`,
  );
  const r = answer.body as MigrationResult;
  step(`migrated: ${JSON.stringify(r)}`);
  t.diagnostic(`busy guest (${kib / 1024} MiB through ${kind}), 64 MiB RAM: ${JSON.stringify(r)}`);
  assert.equal(await src.exited, 0, `the source exits 0 once the destination has the VM\n${src.err()}`);
  assert.match(src.err(), new RegExp(`migrated to tcp:10\\.77\\.0\\.2:${port}`));
  const status = await dest.exited;
  const text2 = readFileSync(out2, "utf8");
  assert.equal(status, 0, `${dest.err()}\n--- output:\n${text2}`);
  assert.match(dest.err(), /guest RAM matches the source's SHA-256/);
  assert.match(text2, /virtio-blk-rw ok/, "the guest's read-back check passed on the destination");
  // Mid-run: the source's guest had not finished (its last line would be there), the destination's did.
  assert.doesNotMatch(readFileSync(out1, "utf8"), /virtio-blk-rw ok/);
  assertImageHoldsPattern(disk, kib, text2);
  assert.ok(
    r.rounds.length >= 1 && r.rounds.length <= 5 && r.pagesSent > 0 && r.bytesSent > r.pagesSent * 4096,
  );
  assert.ok(r.converged || r.rounds.length === 5, "stopped at convergence or at maxRounds");
  assert.ok(r.finalPages > 0, "the last round sent what the stopped guest and its devices had dirtied");
  if (backend) {
    // The back-end served the source, then the destination, on the same socket.
    assert.equal(backend.err().match(/front-end connected/g)?.length, 2, backend.err());
    assert.match(src.err(), /closed for the migration's switch-over/);
    backend.child.kill("SIGTERM");
  }
}

test(
  "a guest writing to its virtio-blk disk migrates to another host mid-write and finishes there with every byte",
  {
    skip: netSkip,
    timeout: 900_000,
  },
  (t) => busyDiskMigration(t, "iothread", 7070),
);

test(
  "a guest writing to a vhost-user disk migrates mid-write: the back-end is handed over, logging, and the guest finishes with every byte",
  {
    skip: netSkip,
    timeout: 900_000,
  },
  (t) => busyDiskMigration(t, "vhost-user", 7072),
);

const TOTAL = 120;
const TAP = `vmt${process.pid % 10000}`;
const ANNOUNCED_MAC = "02:76:69:4d:49:47";
const PERIOD_MS = emulated ? 300 : 100;
const counts = (text: string) => [...text.matchAll(/^count (\d+)$/gm)].map((m) => Number(m[1]));

test("a counting guest: a migration nobody takes fails and the VM runs on; the next one moves it, no line lost or repeated, and its NIC's MAC is announced on the destination's TAP", {
  skip: netSkip,
  timeout: 900_000,
}, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), "vireo-mig-count-"));
  const sock = join(dir, "api.sock");
  const out1 = join(dir, "out1.txt");
  const out2 = join(dir, "out2.txt");
  const src = startProcess([
    ...getHosts().a,
    VIREO_BIN,
    "run",
    "--guest",
    "micro:count",
    String(TOTAL),
    String(PERIOD_MS),
    "--cpus",
    "2",
    // A NIC the guest leaves alone: its TAP is opened by name on each host, and the destination announces its MAC.
    "--net",
    `tap=${TAP},mac=${ANNOUNCED_MAC}`,
    "--serial",
    `file:${out1}`,
    "--timeout",
    "600",
    "--api-socket",
    sock,
  ]);
  const printed = () => (existsSync(out1) ? counts(readFileSync(out1, "utf8")) : []);
  await waitFor(
    () => (existsSync(sock) && printed().length >= 2) || src.child.exitCode !== null,
    300_000,
    () => `the guest did not count: ${src.err()}`,
  );
  assert.equal(src.child.exitCode, null, src.err());
  const nobody = await migrateCall(sock, { to: "tcp:10.77.0.2:7999" }, [src]);
  assert.equal(nobody.status, 502, JSON.stringify(nobody.body));
  assert.match(JSON.stringify(nobody.body), /VIREO_MIGRATION_CONNECT/);
  const before = printed().length;
  await waitFor(
    () => printed().length > before || src.child.exitCode !== null,
    60_000,
    () => "the guest stopped counting after a failed migration",
  );
  const info = await callApi(sock, "GET", "/v1/vm");
  assert.equal((info.body as { state: string }).state, "running");

  // The destination's TAP exists and is up before vireo attaches to it (a TAP that is down drops what is written),
  // and tcpdump there waits for the RARP requests.
  sh([...getHosts().b, "ip", "tuntap", "add", "dev", TAP, "mode", "tap"]);
  sh([...getHosts().b, "ip", "link", "set", TAP, "up"]);
  const capture = startProcess([
    ...getHosts().b,
    "tcpdump",
    "-i",
    TAP,
    "-n",
    "-e",
    "-l",
    "-c",
    "5",
    "ether",
    "proto",
    "0x8035",
  ]);
  await waitFor(
    () => /listening on/.test(capture.err()) || capture.child.exitCode !== null,
    60_000,
    () => `tcpdump did not start: ${capture.err()}`,
  );
  const dest = await destination(7071, out2);
  const answer = await migrateCall(sock, { to: "tcp:10.77.0.2:7071", verify: true }, [src, dest]);
  assert.equal(
    answer.status,
    200,
    `${JSON.stringify(answer.body)}\n--- source:\n${src.err()}\n--- destination:\n${dest.err()}`,
  );
  const r = answer.body as MigrationResult;
  step(`count guest migrated: ${JSON.stringify(r)}`);
  t.diagnostic(`counting guest, 64 MiB RAM, 2 vCPUs: ${JSON.stringify(r)}`);
  assert.equal(await src.exited, 0, src.err());
  assert.equal(await dest.exited, 0, dest.err());
  const text1 = readFileSync(out1, "utf8");
  const text2 = readFileSync(out2, "utf8");
  const expected = `${Array.from({ length: TOTAL }, (_, i) => `count ${i + 1}\n`).join("")}count done\n`;
  assert.equal(text1 + text2, expected, `before:\n${text1}\nafter:\n${text2}`);
  assert.ok((counts(text2)[0] ?? 0) > 1, "the destination went on, not from 1");
  // Five broadcast RARP requests from the NIC's MAC came out of the destination's TAP (src/net/announce.ts).
  await waitFor(
    () => capture.child.exitCode !== null,
    60_000,
    () => `tcpdump saw fewer than 5 RARP requests:\n${capture.out()}\n${capture.err()}\n${dest.err()}`,
  );
  assert.equal(capture.child.exitCode, 0, capture.err());
  const rarps = capture
    .out()
    .split("\n")
    .filter((l) => l.includes(`${ANNOUNCED_MAC} > ff:ff:ff:ff:ff:ff`));
  assert.equal(rarps.length, 5, capture.out());
  t.diagnostic(`announced on the destination: ${rarps[0]}`);
});

test("a destination fed a stream that is not a migration refuses it and runs nothing", { skip }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "vireo-mig-bad-"));
  const path = join(dir, "in.sock");
  const out = join(dir, "out.txt");
  const d = startProcess([VIREO_BIN, "run", "--incoming", `unix:${path}`, "--serial", `file:${out}`]);
  await waitFor(
    () => /waiting for a migration/.test(d.err()) || d.child.exitCode !== null,
    120_000,
    () => d.err(),
  );
  const reply = await new Promise<string>((resolve) => {
    const s = connect(path);
    let text = "";
    s.on("data", (c) => (text += c));
    s.on("close", () => resolve(text));
    s.on("error", () => resolve(text));
    s.end(Buffer.from("VIREOMIG\x01\x00\x00\x00\x00\x00\x00\x00\x07\x00\x00\x00\x04\x00\x00\x00junk"));
  });
  assert.match(reply, /"ok":false/);
  assert.match(reply, /unknown record type 7/);
  assert.equal(await d.exited, 125, d.err());
  assert.match(d.err(), /VIREO_MIGRATION_STREAM/);
  assert.equal(existsSync(out), false, "no machine was built: the serial output was never opened");
});
