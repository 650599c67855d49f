/**
 * Slow tier: a Linux guest and a DPDK peer on the same `vireo switch`, with the host on a TAP port. QEMU (TCG)
 * boots vireo's Debian guest image with a virtio-net-pci on `-netdev vhost-user` to one switch port; DPDK's
 * testpmd in `icmpecho` mode (it answers ARP requests and ICMP echo requests, whatever the address) sits on a
 * second vhost-user port through `net_virtio_user`; a TAP in the test's network namespace is the third port. The
 * guest pings the host (guest -> switch -> TAP -> host kernel, and back) and the DPDK peer (guest -> switch ->
 * testpmd, and back), while the switch captures the guest's port to a pcap file that Debian's tcpdump reads back.
 * The switch's counters are checked against the TAP's own and the capture's.
 *
 * Where it runs: natively on this host (no KVM needed: QEMU runs the guest under TCG, DPDK needs none).
 * vireo-tier: native
 * Needs root (network namespace, TAP, hugepages), qemu-system-x86_64, dpdk-testpmd, tcpdump (scripts/setup.sh)
 * and the guest image (`./bin/vireo image build`).
 */
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { hasCommand, prepareDpdk } from "../../bench/dpdk.ts";
import { findGuestImage } from "../../src/image/guest-image.ts";
import { repoPath } from "../../src/paths.ts";
import { netnsUnavailable } from "../helpers/netns.ts";

function skipReason(): string | false {
  const ns = netnsUnavailable();
  if (ns) return ns;
  if (!hasCommand("qemu-system-x86_64")) return "no qemu-system-x86_64 (scripts/setup.sh)";
  if (!hasCommand("dpdk-testpmd")) return "no dpdk-testpmd (scripts/setup.sh)";
  if (!hasCommand("tcpdump")) return "no tcpdump (scripts/setup.sh)";
  const image = findGuestImage();
  if (!image) return "no guest image: run ./bin/vireo image build";
  return false;
}

const skip = skipReason();
const dir = mkdtempSync(join(tmpdir(), "vireo-switch-qemu-"));
const ns = `vireo-swq-${process.pid}`;
let release: (() => void) | null = null;

function killNamespace(): void {
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
  killNamespace();
  spawnSync("ip", ["netns", "del", ns]);
  release?.();
  rmSync(dir, { recursive: true, force: true });
});

function shellQuote(s: string): string {
  return `'${s.replaceAll("'", "'\\''")}'`;
}

interface PortShow {
  name: string;
  rx: { frames: number; bytes: number };
  tx: { frames: number; bytes: number };
  drops: Record<string, number>;
}

test("a Linux guest pings the host (TAP port) and a DPDK peer through vireo switch; tcpdump reads the capture", {
  skip,
  timeout: 400_000,
}, async (t) => {
  const dpdk = prepareDpdk(64);
  if ("why" in dpdk) {
    t.skip(dpdk.why);
    return;
  }
  release = dpdk.release;
  assert.equal(spawnSync("ip", ["netns", "add", ns]).status, 0, "ip netns add");
  const guestSock = join(dir, "guest.sock");
  const dpdkSock = join(dir, "dpdk.sock");
  const control = join(dir, "control.sock");
  const pcap = join(dir, "guest.pcap");
  const guest = [
    "ip link set eth0 up",
    "ip addr add 10.0.3.15/24 dev eth0",
    "ping -c 3 10.0.3.1",
    "ping -c 3 10.0.3.99",
  ].join("; ");
  const script = `
sysctl -qw net.ipv6.conf.default.disable_ipv6=1
ip link set lo up
ip tuntap add dev st0 mode tap && ip addr add 10.0.3.1/24 dev st0 && ip link set st0 up
./bin/vireo switch s0 --control ${control} \\
  --port vhost-user=${guestSock},name=guest --port tap=st0,name=host --port vhost-user=${dpdkSock},name=dpdk \\
  --pcap guest=${pcap} > ${dir}/switch.out 2> ${dir}/switch.err &
sw=$!
while ! grep -q ready ${dir}/switch.err; do kill -0 $sw || { cat ${dir}/switch.err; exit 1; }; sleep 0.1; done
# testpmd without -i quits when its stdin ends: give it one that stays open (and line-buffered output for the log).
stdbuf -oL dpdk-testpmd --no-pci --in-memory --single-file-segments --file-prefix=vireo-swq-${process.pid} \\
  --vdev net_virtio_user0,path=${dpdkSock},queues=1 -- --forward-mode=icmpecho -a --total-num-mbufs=4096 \\
  < <(exec sleep 600 2>/dev/null) > ${dir}/testpmd.out 2>&1 &
pmd=$!
until grep -q "port dpdk: vhost-user: front-end connected" ${dir}/switch.err; do kill -0 $pmd || { cat ${dir}/testpmd.out; exit 1; }; sleep 0.2; done
sleep 2
qemu-system-x86_64 -accel tcg -m 512 -nographic -no-reboot \\
  -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \\
  -chardev socket,id=chr0,path=${guestSock} -netdev vhost-user,id=net0,chardev=chr0 \\
  -device virtio-net-pci,netdev=net0,vectors=0,mac=02:76:69:00:00:0f \\
  -kernel .cache/images/debian/vmlinuz -initrd .cache/images/debian/initrd-guest.img \\
  -append ${shellQuote(`console=ttyS0 quiet vireo.run="${guest}"`)}
# The host may send on the TAP at any moment (an ARP probe): the switch's counters and the TAP's are compared
# only from a reading during which the TAP's did not change.
for i in 1 2 3 4 5 6 7 8; do
  ip -j -s link show st0 > ${dir}/tap-before.json
  ./bin/vireo switch show s0 --control ${control} --json > ${dir}/show.json
  ip -j -s link show st0 > ${dir}/tap.json
  cmp -s ${dir}/tap-before.json ${dir}/tap.json && break
  sleep 1
done
# testpmd (non-interactive) waits for enter after a signal: it is ended for good.
kill -KILL $pmd; wait $pmd || true
kill $sw; wait $sw
`;
  const started = Date.now();
  const child = spawn("ip", ["netns", "exec", ns, "bash", "-ec", script], {
    cwd: repoPath(),
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  child.stdout.on("data", (d) => (out += d));
  child.stderr.on("data", (d) => (err += d));
  const timer = setTimeout(killNamespace, 200_000);
  const status = await new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)));
  clearTimeout(timer);
  const read = (f: string) => spawnSync("cat", [join(dir, f)], { encoding: "utf8" }).stdout ?? "";
  const log = `status ${status}\nstdout:\n${out}\nstderr:\n${err}\nswitch:\n${read("switch.err")}\ntestpmd:\n${read("testpmd.out").slice(-3000)}`;
  assert.equal(status, 0, log);
  assert.match(out, /VIREO-RUN-EXIT=0/, log);
  const pings = [...out.matchAll(/3 packets transmitted, 3 packets received/g)].length;
  assert.equal(pings, 2, `both pings answered\n${log}`);

  const show = JSON.parse(read("show.json")) as { ports: PortShow[] };
  const end = JSON.parse(read("switch.out").trim().split("\n").at(-1) as string) as {
    event: string;
    ports: PortShow[];
  };
  assert.equal(end.event, "switch-end");
  const port = (n: string) => end.ports.find((p) => p.name === n) as PortShow;
  // The TAP's own counters against the switch's host port: what the switch delivered to the TAP is what the host
  // received on it (TAP rx), and what the host sent (TAP tx) the switch received.
  const link = JSON.parse(read("tap.json")) as Array<{
    stats64: { rx: { packets: number }; tx: { packets: number } };
  }>;
  const tap = link[0]?.stats64;
  assert.ok(tap);
  const hostAtShow = show.ports.find((p) => p.name === "host") as PortShow;
  assert.equal(tap.rx.packets, hostAtShow.tx.frames, "frames the switch wrote to the TAP = TAP rx");
  assert.equal(
    tap.tx.packets,
    hostAtShow.rx.frames,
    "frames the host sent on the TAP = the switch's host rx",
  );
  assert.ok(port("dpdk").rx.frames >= 4, "the DPDK peer answered (ARP + 3 echo replies)");
  assert.equal(port("guest").drops.noBuffers, 0);

  // tcpdump reads the capture: the echo requests and replies, both peers, are there.
  const td = spawnSync("tcpdump", ["-r", pcap, "-nn"], { encoding: "utf8" });
  assert.equal(td.status, 0, td.stderr);
  const lines = td.stdout.trim().split("\n");
  const count = (re: RegExp) => lines.filter((l) => re.test(l)).length;
  assert.equal(count(/10\.0\.3\.15 > 10\.0\.3\.1: ICMP echo request/), 3, td.stdout);
  assert.equal(count(/10\.0\.3\.1 > 10\.0\.3\.15: ICMP echo reply/), 3, td.stdout);
  assert.equal(count(/10\.0\.3\.15 > 10\.0\.3\.99: ICMP echo request/), 3, td.stdout);
  assert.equal(count(/10\.0\.3\.99 > 10\.0\.3\.15: ICMP echo reply/), 3, td.stdout);
  const g = port("guest");
  assert.equal(lines.length, g.rx.frames + g.tx.frames, "the capture holds every frame of the guest's port");
  t.diagnostic(`done in ${((Date.now() - started) / 1000).toFixed(1)} s; guest port ${JSON.stringify(g)}`);
});
