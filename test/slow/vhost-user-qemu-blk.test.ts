/**
 * Slow tier: QEMU as the vhost-user front-end of `vireo vhost-user blk`. QEMU (TCG) boots vireo's Debian guest
 * image with a vhost-user-blk-pci over guest RAM in a shared memfd; Linux's virtio_blk sees /dev/vda with the
 * image's capacity and writes a line to sector 2048 with conv=fsync (a FLUSH); the host then reads it from the
 * image. The test runs README.md's shell block for this as written (only the paths are made the test's own) and
 * checks the guest's output, the image's bytes and the back-end's counts (a flush, nothing refused).
 *
 * Where it runs: natively on this host, in every case (no KVM: QEMU runs the guest under TCG, about 20 s here).
 * vireo-tier: native
 * Needs qemu-system-x86_64 (scripts/setup.sh) and the guest image (`./bin/vireo image build`); not root.
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { findGuestImage } from "../../src/image/guest-image.ts";
import { repoPath } from "../../src/paths.ts";

/** README.md's block for this: the shell block that starts vireo vhost-user blk and QEMU's vhost-user-blk-pci. */
function readmeBlock(): string {
  const readme = readFileSync(repoPath("README.md"), "utf8");
  const blocks = [...readme.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1] as string);
  const block = blocks.find((b) => b.includes("vhost-user blk") && b.includes("vhost-user-blk-pci"));
  if (!block) throw new Error("README.md has no shell block with `vhost-user blk` and `vhost-user-blk-pci`");
  return block;
}

function skipReason(): string | false {
  if (spawnSync("qemu-system-x86_64", ["--version"]).status !== 0)
    return "no qemu-system-x86_64 (scripts/setup.sh)";
  const image = findGuestImage();
  if (!image) return "no guest image: run ./bin/vireo image build";
  if (image.dir !== repoPath(".cache", "images", "debian"))
    return `the guest image is in ${image.dir}, not where README.md's command looks (.cache/images/debian)`;
  return false;
}

const skip = skipReason();
const dir = mkdtempSync(join(tmpdir(), "vireo-qemu-blk-"));
after(() => rmSync(dir, { recursive: true, force: true }));

test("QEMU's vhost-user-blk-pci on vireo's back-end: the guest's write is in the image after its FLUSH", {
  skip,
  timeout: 300_000,
}, async (t) => {
  const socket = join(dir, "blk.sock");
  const img = join(dir, "blk.img");
  const script = readmeBlock()
    .replaceAll("/tmp/vireo-blk.sock", socket)
    .replaceAll("/tmp/vireo-blk.img", img);
  assert.ok(script.includes(socket) && script.includes(img), "the block names /tmp/vireo-blk.{sock,img}");
  const started = Date.now();
  const child = spawn("bash", ["-ec", script], { cwd: repoPath(), stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  child.stdout.on("data", (d) => (out += d));
  child.stderr.on("data", (d) => (err += d));
  const timer = setTimeout(() => child.kill("SIGKILL"), 240_000);
  const status = await new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)));
  clearTimeout(timer);
  const seconds = (Date.now() - started) / 1000;
  const log = `status ${status} after ${seconds.toFixed(1)} s\nstdout:\n${out}\nstderr:\n${err}`;
  assert.equal(status, 0, log);
  // Without carriage returns and the terminal escapes SeaBIOS and the guest console print.
  // biome-ignore lint/suspicious/noControlCharactersInRegex: the escapes are what is removed
  const clean = out.replace(/\r/g, "").replace(/\x1b(\[[0-9;?]*[a-zA-Z]|c)/g, "");
  assert.match(clean, /^131072$/m, `64 MiB = 131072 sectors\n${log}`);
  assert.match(clean, /VIREO-RUN-EXIT=0/, log);
  assert.match(err, /vhost-user blk listening on .*67108864 bytes/, log);
  // The block's last command prints the sector from the image, as the host sees it.
  assert.ok(clean.trimEnd().endsWith("vireo-vhost-user-blk"), log);
  const bytes = readFileSync(img).subarray(2048 * 512, 2048 * 512 + 21);
  assert.equal(bytes.toString("latin1"), "vireo-vhost-user-blk\n");

  const endLine = clean.split("\n").find((l) => l.startsWith('{"event":"connection-end"'));
  assert.ok(endLine, `the back-end printed its counts\n${log}`);
  const end = JSON.parse(endLine) as Record<string, number | string>;
  assert.equal(end.reason, "end of stream", log);
  assert.equal(end.refused, 0, "no request of QEMU's was refused");
  assert.ok((end.flushes as number) >= 1, `flushes ${end.flushes}`);
  assert.ok((end.writes as number) >= 1, `writes ${end.writes}`);
  assert.equal(end.errors, 0);
  t.diagnostic(
    `QEMU (TCG, native) booted, wrote and powered off in ${seconds.toFixed(1)} s; back-end: ${endLine}`,
  );
  assert.ok(!existsSync(socket), "the back-end removed its socket when it exited");
});
