/**
 * Slow tier: QEMU as the vhost-user front-end of `vireo vhost-user net --tap`. QEMU (TCG) boots vireo's Debian
 * guest image with a virtio-net-pci on `-netdev vhost-user` over guest RAM in a shared memfd; Linux's virtio_net
 * brings eth0 up and pings the TAP's address on the host, so the echo requests go guest -> vireo -> TAP -> host
 * kernel and the replies come back the other way. The test runs README.md's shell block for this as written
 * (only the socket path is made the test's own), inside a fresh network namespace, then checks the ping replies,
 * the back-end's counts and the TAP's own counters against each other (frames and bytes, both ways).
 *
 * Where it runs: natively on this host, in every case. It needs no KVM (QEMU runs the guest under TCG), and TCG
 * natively boots the guest in about 15 s here where TCG nested inside the emulated KVM host (which is what the
 * rest of the slow tier uses on a host without VMX/SVM) would take many minutes. test/realkvm/tier.ts runs a
 * file that carries the marker on the next line on this host and the rest of the tier where KVM is.
 * vireo-tier: native
 * Needs root (network namespace, TAP), qemu-system-x86_64 (scripts/setup.sh) and the guest image
 * (`./bin/vireo image build`).
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { findGuestImage } from "../../src/image/guest-image.ts";
import { repoPath } from "../../src/paths.ts";
import { netnsUnavailable } from "../helpers/netns.ts";

/** README.md's block for this: the shell block that starts vireo with --tap and QEMU with -netdev vhost-user. */
function readmeBlock(): string {
  const readme = readFileSync(repoPath("README.md"), "utf8");
  const blocks = [...readme.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1] as string);
  const block = blocks.find((b) => b.includes("--tap vt0") && b.includes("-netdev vhost-user"));
  if (!block) throw new Error("README.md has no shell block with `--tap vt0` and `-netdev vhost-user`");
  return block;
}

function skipReason(): string | false {
  const ns = netnsUnavailable();
  if (ns) return ns;
  if (spawnSync("qemu-system-x86_64", ["--version"]).status !== 0)
    return "no qemu-system-x86_64 (scripts/setup.sh)";
  const image = findGuestImage();
  if (!image) return "no guest image: run ./bin/vireo image build";
  // The README block names the image where `vireo image build` puts it by default.
  if (image.dir !== repoPath(".cache", "images", "debian"))
    return `the guest image is in ${image.dir}, not where README.md's command looks (.cache/images/debian)`;
  return false;
}

const skip = skipReason();
const ns = `vireo-qemu-${process.pid}`;
const dir = mkdtempSync(join(tmpdir(), "vireo-qemu-net-"));
after(() => {
  // Whatever the block left running in the namespace (it was started by this test), then the namespace.
  const pids = spawnSync("ip", ["netns", "pids", ns], { encoding: "utf8" }).stdout ?? "";
  for (const pid of pids.split("\n").filter(Boolean)) {
    try {
      process.kill(Number(pid), "SIGKILL");
    } catch {
      // already gone
    }
  }
  spawnSync("ip", ["netns", "del", ns]);
  rmSync(dir, { recursive: true, force: true });
});

function inNs(argv: string[]): string {
  const r = spawnSync("ip", ["netns", "exec", ns, ...argv], { encoding: "utf8" });
  assert.equal(r.status, 0, `${argv.join(" ")}: ${r.stderr}`);
  return r.stdout;
}

test("QEMU's virtio-net on vireo's vhost-user back-end pings the host through a TAP", {
  skip,
  timeout: 300_000,
}, async (t) => {
  const socket = join(dir, "net.sock");
  const script = readmeBlock().replaceAll("/tmp/vireo-net.sock", socket);
  assert.ok(script.includes(socket), "the block names the socket /tmp/vireo-net.sock");
  assert.equal(spawnSync("ip", ["netns", "add", ns]).status, 0, "ip netns add");
  // No IPv6 on interfaces made in there: the host then sends the guest nothing it did not ask for, so the TAP's
  // counters and the back-end's must agree exactly.
  inNs(["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);

  const started = Date.now();
  const child = spawn("ip", ["netns", "exec", ns, "bash", "-ec", script], {
    cwd: repoPath(),
    stdio: ["ignore", "pipe", "pipe"],
  });
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
  assert.match(out, /3 packets transmitted, 3 packets received/, log);
  assert.match(out, /VIREO-RUN-EXIT=0/, log);
  assert.match(err, /vhost-user net \(tap:vt0\) listening/, log);

  const endLine = out.split("\n").find((l) => l.startsWith('{"event":"connection-end"'));
  assert.ok(endLine, `the back-end printed its counts\n${log}`);
  const end = JSON.parse(endLine) as Record<string, number | string>;
  assert.equal(end.reason, "end of stream", log);
  assert.equal(end.refused, 0, "no request of QEMU's was refused");
  assert.equal(end.dropped, 0);
  // At least the ARP request and three echo requests out; the ARP reply and three echo replies in.
  assert.ok((end.txFrames as number) >= 4, `txFrames ${end.txFrames}`);
  assert.ok((end.rxFrames as number) >= 4, `rxFrames ${end.rxFrames}`);

  // The host's side of the TAP: what the guest sent arrived (TAP rx), what the host sent reached the guest.
  const link = JSON.parse(inNs(["ip", "-j", "-s", "link", "show", "vt0"])) as Array<{
    stats64: { rx: { packets: number; bytes: number }; tx: { packets: number; bytes: number } };
  }>;
  const s = link[0]?.stats64;
  assert.ok(s, "TAP statistics");
  assert.equal(
    s.rx.packets,
    end.txFrames,
    "frames the TAP received = frames the back-end sent from the guest",
  );
  assert.equal(s.rx.bytes, end.txBytes);
  assert.equal(
    s.tx.packets,
    end.rxFrames,
    "frames the host sent on the TAP = frames the back-end gave the guest",
  );
  assert.equal(s.tx.bytes, end.rxBytes);
  t.diagnostic(
    `QEMU (TCG, native) booted, pinged and powered off in ${seconds.toFixed(1)} s; back-end: ${endLine}`,
  );
  assert.ok(!existsSync(socket), "the back-end removed its socket when it exited");
});
