/**
 * Slow tier: QEMU as the vhost-user front-end of `vireo vhost-user net --tap`. QEMU (TCG) boots vireo's Debian
 * guest image with a virtio-net-pci on `-netdev vhost-user` over guest RAM in a shared memfd; Linux's virtio_net
 * brings eth0 up and pings the TAP's address on the host, so the echo requests go guest -> vireo -> TAP -> host
 * kernel and the replies come back the other way. The test runs README.md's shell block for this as written
 * (only the socket path is made the test's own), inside a fresh network namespace, then checks the ping replies,
 * the back-end's counts and the TAP's own counters against each other (frames and bytes, both ways). A second
 * test moves a 16 MiB file over TCP each way (the guest downloads it with wget from an HTTP server on the host,
 * then sends it back with nc) with the checksum and segmentation offloads the guest negotiated passing through
 * the TAP: the SHA-256 matches at both ends, and the frames average more than one MTU each way (the host's GSO
 * frames reach the guest whole, the guest's TSO frames reach the host whole).
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
import { createHash, randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
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
const dir = mkdtempSync(join(tmpdir(), "vireo-qemu-net-"));
const namespaces: string[] = [];
/** SIGKILL to every process in namespace `ns` (all started by this test's scripts). */
function killNamespace(ns: string): void {
  const pids = spawnSync("ip", ["netns", "pids", ns], { encoding: "utf8" }).stdout ?? "";
  for (const pid of pids.split("\n").filter(Boolean)) {
    try {
      process.kill(Number(pid), "SIGKILL");
    } catch {
      // already gone
    }
  }
}

after(() => {
  for (const ns of namespaces) {
    killNamespace(ns);
    spawnSync("ip", ["netns", "del", ns]);
  }
  rmSync(dir, { recursive: true, force: true });
});

function inNs(ns: string, argv: string[]): string {
  const r = spawnSync("ip", ["netns", "exec", ns, ...argv], { encoding: "utf8" });
  assert.equal(r.status, 0, `${argv.join(" ")}: ${r.stderr}`);
  return r.stdout;
}

interface ScriptRun {
  ns: string;
  out: string;
  err: string;
  seconds: number;
  log: string;
  /** The back-end's connection-end line, parsed. */
  end: Record<string, number | string>;
  endLine: string;
  /** The TAP's counters (rx: what the guest sent; tx: what the host sent toward the guest). */
  tap: { rx: { packets: number; bytes: number }; tx: { packets: number; bytes: number } };
}

/**
 * Runs `script` with bash -e in a fresh network namespace (IPv6 off on interfaces made there, so the host sends
 * the guest nothing it did not ask for and the TAP's counters and the back-end's must agree exactly); it must
 * exit 0, the guest's command must too, and the back-end must have printed its counts.
 */
async function runScript(script: string): Promise<ScriptRun> {
  const ns = `vireo-qemu-${process.pid}-${namespaces.length}`;
  assert.equal(spawnSync("ip", ["netns", "add", ns]).status, 0, "ip netns add");
  namespaces.push(ns);
  inNs(ns, ["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
  const started = Date.now();
  const child = spawn("ip", ["netns", "exec", ns, "bash", "-ec", script], {
    cwd: repoPath(),
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  child.stdout.on("data", (d) => (out += d));
  child.stderr.on("data", (d) => (err += d));
  // On timeout, end everything the script started in the namespace (QEMU, vireo, the servers keep its output
  // pipes open, so killing bash alone would not end the run).
  const timer = setTimeout(() => killNamespace(ns), 240_000);
  const status = await new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)));
  clearTimeout(timer);
  const seconds = (Date.now() - started) / 1000;
  const log = `status ${status} after ${seconds.toFixed(1)} s\nstdout:\n${out}\nstderr:\n${err}`;
  assert.equal(status, 0, log);
  assert.match(out, /VIREO-RUN-EXIT=0/, log);
  assert.match(err, /vhost-user net \(tap:vt0\) listening/, log);
  const endLine = out.split("\n").find((l) => l.startsWith('{"event":"connection-end"'));
  assert.ok(endLine, `the back-end printed its counts\n${log}`);
  const end = JSON.parse(endLine) as Record<string, number | string>;
  assert.equal(end.reason, "end of stream", log);
  assert.equal(end.refused, 0, "no request of QEMU's was refused");
  assert.equal(end.dropped, 0);
  const link = JSON.parse(inNs(ns, ["ip", "-j", "-s", "link", "show", "vt0"])) as Array<{
    stats64: ScriptRun["tap"];
  }>;
  const tap = link[0]?.stats64;
  assert.ok(tap, "TAP statistics");
  // The host's side of the TAP: what the guest sent arrived (TAP rx), what the host sent reached the guest.
  assert.equal(
    tap.rx.packets,
    end.txFrames,
    "frames the TAP received = frames the back-end sent from the guest",
  );
  assert.equal(tap.rx.bytes, end.txBytes);
  assert.equal(
    tap.tx.packets,
    end.rxFrames,
    "frames the host sent on the TAP = frames the back-end gave the guest",
  );
  assert.equal(tap.tx.bytes, end.rxBytes);
  return { ns, out, err, seconds, log, end, endLine, tap };
}

test("QEMU's virtio-net on vireo's vhost-user back-end pings the host through a TAP", {
  skip,
  timeout: 300_000,
}, async (t) => {
  const socket = join(dir, "net.sock");
  const script = readmeBlock().replaceAll("/tmp/vireo-net.sock", socket);
  assert.ok(script.includes(socket), "the block names the socket /tmp/vireo-net.sock");
  const r = await runScript(script);
  assert.match(r.out, /3 packets transmitted, 3 packets received/, r.log);
  // At least the ARP request and three echo requests out; the ARP reply and three echo replies in.
  assert.ok((r.end.txFrames as number) >= 4, `txFrames ${r.end.txFrames}`);
  assert.ok((r.end.rxFrames as number) >= 4, `rxFrames ${r.end.rxFrames}`);
  t.diagnostic(
    `QEMU (TCG, native) booted, pinged and powered off in ${r.seconds.toFixed(1)} s; back-end: ${r.endLine}`,
  );
  assert.ok(!existsSync(socket), "the back-end removed its socket when it exited");
});

test("the same ping with packed rings (virtio-net-pci packed=on): Linux's virtio_net on vireo's packed rings", {
  skip,
  timeout: 300_000,
}, async (t) => {
  const socket = join(dir, "packed.sock");
  const block = readmeBlock();
  assert.ok(
    block.includes("virtio-net-pci,netdev=net0,"),
    "the README's block has the virtio-net-pci device",
  );
  const script = block
    .replaceAll("/tmp/vireo-net.sock", socket)
    .replace("virtio-net-pci,netdev=net0,", "virtio-net-pci,netdev=net0,packed=on,");
  const r = await runScript(script);
  assert.match(r.out, /3 packets transmitted, 3 packets received/, r.log);
  // Both rings were started as packed rings (QEMU negotiated VIRTIO_F_RING_PACKED with the guest and passed it on).
  assert.ok((r.end.packedRingStarts as number) >= 2, r.endLine);
  assert.equal(r.end.packedRingStarts, r.end.ringStarts, r.endLine);
  t.diagnostic(
    `QEMU (TCG, native), packed rings: pinged in ${r.seconds.toFixed(1)} s; back-end: ${r.endLine}`,
  );
});

test("16 MiB over TCP each way, with the guest's offloads passing through the TAP", {
  skip,
  timeout: 300_000,
}, async (t) => {
  const files = join(dir, "www");
  mkdirSync(files);
  const blob = randomBytes(16 << 20);
  writeFileSync(join(files, "blob"), blob);
  const want = createHash("sha256").update(blob).digest("hex");
  const socket = join(dir, "tcp.sock");
  const received = join(dir, "received.sha256");
  // The host serves the file over HTTP and hashes what comes back on port 9000; the guest fetches, hashes and
  // returns it (the guest's times are from /proc/uptime, for the report only).
  const guest = [
    "ip link set eth0 up",
    "ip addr add 10.0.2.15/24 dev eth0",
    "read a x < /proc/uptime",
    "wget -q -O /tmp/blob http://10.0.2.1:8000/blob",
    "read b x < /proc/uptime",
    "sha256sum /tmp/blob",
    "nc 10.0.2.1 9000 < /tmp/blob",
    "read c x < /proc/uptime",
    "echo GUEST-TIMES $a $b $c",
  ].join("; ");
  const receiver = [
    "import hashlib,socket,sys",
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)",
    "s.bind(('10.0.2.1',9000)); s.listen(1); c,_=s.accept(); h=hashlib.sha256(); n=0",
    "while True:\n d=c.recv(1<<20)\n if not d: break\n h.update(d); n+=len(d)",
    "open(sys.argv[1],'w').write(f'{h.hexdigest()} {n}')",
  ].join("\n");
  const script = `
ip tuntap add dev vt0 mode tap vnet_hdr && ip addr add 10.0.2.1/24 dev vt0 && ip link set vt0 up
python3 -m http.server 8000 --bind 10.0.2.1 --directory ${files} >/dev/null 2>&1 &
python3 -c ${shellQuote(receiver)} ${received} &
./bin/vireo vhost-user net --socket ${socket} --tap vt0 --once &
backend=$!
while [ ! -S ${socket} ]; do kill -0 $backend || exit 1; sleep 0.1; done
qemu-system-x86_64 -accel tcg -m 512 -nographic -no-reboot \\
  -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \\
  -chardev socket,id=chr0,path=${socket} -netdev vhost-user,id=net0,chardev=chr0 \\
  -device virtio-net-pci,netdev=net0,vectors=0,mac=02:76:69:00:00:0f \\
  -kernel .cache/images/debian/vmlinuz -initrd .cache/images/debian/initrd-guest.img \\
  -append ${shellQuote(`console=ttyS0 quiet vireo.run="${guest}"`)}
wait $backend
`;
  const r = await runScript(script);
  assert.match(
    r.out,
    new RegExp(`${want}  /tmp/blob`),
    `the guest's SHA-256 of what it downloaded\n${r.log}`,
  );
  assert.equal(readFileSync(received, "utf8"), `${want} ${blob.length}`, "what the host got back");
  const perFrame = (bytes: unknown, frames: unknown) => (bytes as number) / (frames as number);
  const rxAvg = perFrame(r.end.rxBytes, r.end.rxFrames);
  const txAvg = perFrame(r.end.txBytes, r.end.txFrames);
  assert.ok(
    rxAvg > 1514,
    `host to guest: ${rxAvg.toFixed(0)} bytes a frame (GSO frames from the host whole)`,
  );
  assert.ok(txAvg > 1514, `guest to host: ${txAvg.toFixed(0)} bytes a frame (the guest's TSO frames whole)`);
  const times = /GUEST-TIMES ([\d.]+) ([\d.]+) ([\d.]+)/.exec(r.out);
  const [a, b, c] = (times?.slice(1) ?? []).map(Number) as [number, number, number];
  const mbit = (s: number) => ((blob.length * 8) / s / 1e6).toFixed(0);
  t.diagnostic(
    `16 MiB down in ${(b - a).toFixed(2)} s guest time (${mbit(b - a)} Mbit/s, ${rxAvg.toFixed(0)} B/frame), up in ${(c - b).toFixed(2)} s (${mbit(c - b)} Mbit/s, ${txAvg.toFixed(0)} B/frame); all in ${r.seconds.toFixed(1)} s; back-end: ${r.endLine}`,
  );
});

function shellQuote(s: string): string {
  return `'${s.replaceAll("'", "'\\''")}'`;
}
