/**
 * Slow tier, issue 12: a Debian guest live-migrated between two "hosts" (network namespaces A and B joined by a
 * veth pair that carries the migration stream) while it writes to its virtio-blk disk and has a virtio-net NIC on
 * a TAP. Each host has a TAP of the same name with the same address and MAC (one gateway on one segment): the NIC
 * reattaches by name on the destination. The disk is "shared storage" (the same file). The
 * guest writes 64 KiB chunks of random data, printing each one's SHA-256, one a second; after a few the test
 * migrates it (the destination checks a SHA-256 of all of RAM); the guest must go on on B, every chunk must be on
 * the disk with the hash the guest printed, and ping must answer through B's TAP.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { callApi } from "../../src/cli/ctl.ts";
import type { MigrationResult } from "../../src/vmm/migration/source.ts";
import { VIREO_BIN } from "../helpers/cli.ts";
import { assertChunksWhole, CHUNK_WRITER, chunkLines } from "../helpers/linux-chunks.ts";
import { LINUX_TEST_TIMEOUT_MS, linuxGuestSkip, linuxRunArgs } from "../helpers/linux-guest.ts";
import { netnsMaker, netnsUnavailable } from "../helpers/netns.ts";
import { startProcess, waitFor } from "../helpers/processes.ts";

const skip = linuxGuestSkip() || (netnsUnavailable() ?? false);
const makeNs = netnsMaker();
const t0 = Date.now();
const step = (m: string) =>
  process.stderr.write(`linux-migration: ${((Date.now() - t0) / 1000).toFixed(1)} s: ${m}\n`);

function sh(args: string[]): void {
  const r = spawnSync(args[0] as string, args.slice(1), { encoding: "utf8" });
  assert.equal(r.status, 0, `${args.join(" ")}: ${r.stderr}`);
}

test("a Linux guest writing to virtio-blk and on virtio-net migrates to another host and goes on: every chunk on the disk, ping answers there", {
  skip,
  timeout: LINUX_TEST_TIMEOUT_MS,
}, async () => {
  const a = makeNs();
  const b = makeNs();
  // The same gateway on both hosts: same address and same MAC (a TAP's is random), as one router on the segment
  // would be; the guest's ARP entry for it stays right across the move (vireo does not make the guest announce
  // itself, VIRTIO_NET_F_GUEST_ANNOUNCE, nor re-resolve its neighbours).
  for (const ns of [a, b]) {
    sh(ns.exec(["ip", "link", "set", ns.tap, "address", "02:76:69:ff:00:01"]));
    sh(ns.exec(["ip", "addr", "add", "10.0.2.1/24", "dev", ns.tap]));
  }
  const tag = String(process.pid % 100000);
  sh([
    "ip",
    "link",
    "add",
    `lmA${tag}`,
    "netns",
    a.name,
    "type",
    "veth",
    "peer",
    "name",
    `lmB${tag}`,
    "netns",
    b.name,
  ]);
  sh(a.exec(["ip", "addr", "add", "10.78.0.1/24", "dev", `lmA${tag}`]));
  sh(b.exec(["ip", "addr", "add", "10.78.0.2/24", "dev", `lmB${tag}`]));
  sh(a.exec(["ip", "link", "set", `lmA${tag}`, "up"]));
  sh(b.exec(["ip", "link", "set", `lmB${tag}`, "up"]));

  const dir = mkdtempSync(join(tmpdir(), "vireo-linux-mig-"));
  const disk = join(dir, "vda.img");
  writeFileSync(disk, "");
  truncateSync(disk, 16 << 20);
  const sock = join(dir, "api.sock");
  const out1 = join(dir, "out1.txt");
  const out2 = join(dir, "out2.txt");
  const run = CHUNK_WRITER;
  const dest = startProcess([
    ...b.exec([]),
    VIREO_BIN,
    "run",
    "--incoming",
    "tcp:10.78.0.2:7072",
    "--serial",
    `file:${out2}`,
    "--timeout",
    String(LINUX_TEST_TIMEOUT_MS / 1000 - 60),
  ]);
  const src = startProcess([
    ...a.exec([]),
    VIREO_BIN,
    ...linuxRunArgs(run, [
      "--disk",
      disk,
      "--net",
      `tap=${a.tap},model=virtio,mac=02:76:69:00:00:0f`,
      "--serial",
      `file:${out1}`,
      "--api-socket",
      sock,
    ]),
  ]);
  const printed = () => (existsSync(out1) ? readFileSync(out1, "utf8") : "");
  await waitFor(
    () => chunkLines(printed()).length >= 3 || src.child.exitCode !== null,
    LINUX_TEST_TIMEOUT_MS / 2,
    () => `the guest did not write 3 chunks: ${src.err()}\n--- serial:\n${printed()}`,
  );
  assert.equal(src.child.exitCode, null, `vireo ended early: ${src.err()}\n--- serial:\n${printed()}`);
  assert.match(dest.err(), /waiting for a migration/, dest.err());
  const answer = await callApi(sock, "PUT", "/v1/vm/migrate", 600_000, {
    to: "tcp:10.78.0.2:7072",
    verify: true,
    maxRounds: 10,
  });
  assert.equal(
    answer.status,
    200,
    `${JSON.stringify(answer.body)}\n--- source:\n${src.err()}\n--- destination:\n${dest.err()}`,
  );
  step(
    `migrated after chunk ${chunkLines(printed()).at(-1)?.i}: ${JSON.stringify(answer.body as MigrationResult)}`,
  );
  assert.equal(await src.exited, 0, src.err());
  const status = await dest.exited;
  const text1 = printed();
  const text2 = existsSync(out2) ? readFileSync(out2, "utf8") : "";
  step(`destination exited ${status}: ${dest.err().trim()}`);
  assert.equal(status, 0, `${dest.err()}\n--- before:\n${text1}\n--- after:\n${text2}`);
  assert.match(dest.err(), /guest RAM matches the source's SHA-256/);
  assertChunksWhole(disk, text1, text2);
});
