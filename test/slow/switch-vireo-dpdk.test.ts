/**
 * Slow tier: a vireo VM running Linux and a DPDK peer on the same `vireo switch`, on KVM (the emulated KVM host
 * where this machine has none). The VM's NIC joins the switch with `vireo run --net switch=NAME` (a vhost-user port
 * attached through the control socket); DPDK's testpmd in `icmpecho` mode (it answers ARP and ICMP echo requests
 * for any address) sits on a second vhost-user port through `net_virtio_user`. Linux's virtio_net in the guest
 * pings the peer through the switch, and the switch's counters are checked against what both ends saw.
 *
 * testpmd polls without sleeping, and the emulated host has one CPU: it is started only once the guest's network
 * is up, and the guest pings until the first answer before the counted ping.
 * Needs root (hugepages), dpdk-testpmd (scripts/setup.sh) and the guest image (`./bin/vireo image build`).
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { hasCommand, prepareDpdk } from "../../bench/dpdk.ts";
import { findGuestImage } from "../../src/image/guest-image.ts";
import { FAST_BOOT_CMDLINE } from "../../src/image/init-scripts.ts";
import { repoPath } from "../../src/paths.ts";
import { VIREO_BIN } from "../helpers/cli.ts";
import { LINUX_TEST_TIMEOUT_MS, linuxGuestSkip } from "../helpers/linux-guest.ts";

function skipReason(): string | false {
  const linux = linuxGuestSkip();
  if (linux) return linux;
  if (process.getuid?.() !== 0) return "needs root (hugepages)";
  if (!hasCommand("dpdk-testpmd")) return "no dpdk-testpmd (scripts/setup.sh)";
  return false;
}

const skip = skipReason();
const dir = mkdtempSync(join(tmpdir(), "vireo-swd-"));
const children: ChildProcess[] = [];
let release: (() => void) | null = null;

after(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  release?.();
  rmSync(dir, { recursive: true, force: true });
});

interface PortShow {
  name: string;
  rx: { frames: number; bytes: number };
  tx: { frames: number; bytes: number };
  drops: Record<string, number>;
}

/** Starts a process whose output is collected; `seen(re)` resolves once stdout or stderr matches. */
function start(argv: string[], env: Record<string, string>, keepStdinOpen = false) {
  const child = spawn(argv[0] as string, argv.slice(1), {
    cwd: repoPath(),
    env: { ...process.env, ...env },
    stdio: [keepStdinOpen ? "pipe" : "ignore", "pipe", "pipe"],
  });
  children.push(child);
  const out = { stdout: "", stderr: "" };
  const waiters: Array<() => void> = [];
  const poke = () => {
    for (const w of waiters.splice(0)) w();
  };
  child.stdout?.on("data", (d) => {
    out.stdout += d;
    poke();
  });
  child.stderr?.on("data", (d) => {
    out.stderr += d;
    poke();
  });
  const closed = new Promise<number | null>((r) => child.on("close", (code) => r(code)));
  const seen = async (re: RegExp, what: string): Promise<void> => {
    for (;;) {
      if (re.test(out.stdout) || re.test(out.stderr)) return;
      if (child.exitCode !== null || child.signalCode !== null)
        throw new Error(`${argv[0]} ended before ${what}:\n${out.stdout}\n${out.stderr}`);
      await new Promise<void>((r) => {
        waiters.push(r);
        setTimeout(r, 500);
      });
    }
  };
  return { child, out, closed, seen };
}

test("Linux's virtio_net in a vireo VM pings a DPDK peer through vireo switch (--net switch=)", {
  skip,
  timeout: LINUX_TEST_TIMEOUT_MS,
}, async (t) => {
  const dpdk = prepareDpdk(64);
  if ("why" in dpdk) {
    // A machine that cannot reserve hugepages fails this test rather than skipping it silently.
    assert.fail(dpdk.why);
  }
  release = dpdk.release;
  const env = { VIREO_RUN_DIR: dir };
  const dpdkSock = join(dir, "dpdk.sock");
  const sw = start([VIREO_BIN, "switch", "s0", "--port", `vhost-user=${dpdkSock},name=dpdk`], env);
  await sw.seen(/ready/, "the switch was ready");

  const image = findGuestImage();
  assert.ok(image);
  const guest = [
    "basename $(readlink /sys/class/net/eth0/device/driver)",
    "ip link set eth0 up",
    "ip addr add 10.0.3.15/24 dev eth0",
    "echo guest-net-up",
    // The peer starts only now: ping until it answers, then count three.
    "n=0; until ping -c 1 -W 5 10.0.3.99 >/dev/null; do n=$((n+1)); [ $n -ge 60 ] && break; done",
    "ping -c 3 -W 30 10.0.3.99",
  ].join("; ");
  const vm = start(
    [
      VIREO_BIN,
      "run",
      "--kernel",
      image.kernel,
      "--initrd",
      image.guestInitrd,
      "--net",
      "switch=s0,mac=02:76:69:00:00:0f",
      "--timeout",
      String(LINUX_TEST_TIMEOUT_MS / 1000 - 120),
      "--cmdline",
      `${FAST_BOOT_CMDLINE} vireo.run="${guest}"`,
    ],
    env,
  );
  await vm.seen(/guest-net-up/, "the guest's network was up");

  // testpmd without -i quits when its stdin ends: it gets a pipe that stays open.
  const pmd = start(
    [
      "stdbuf",
      "-oL",
      "dpdk-testpmd",
      // The emulated host has one CPU, and testpmd needs a forwarding lcore besides its main one: both on CPU 0.
      "--lcores=0@0,1@0",
      "--no-pci",
      "--in-memory",
      "--single-file-segments",
      `--file-prefix=vireo-swd-${process.pid}`,
      "--vdev",
      `net_virtio_user0,path=${dpdkSock},queues=1`,
      "--",
      "--forward-mode=icmpecho",
      "-a",
      "--total-num-mbufs=4096",
    ],
    {},
    true,
  );
  const vmStatus = await vm.closed;
  const log = () =>
    `vm status ${vmStatus}\nvm:\n${vm.out.stdout}\n${vm.out.stderr}\nswitch:\n${sw.out.stderr}\ntestpmd:\n${pmd.out.stdout.slice(-3000)}\n${pmd.out.stderr.slice(-2000)}`;
  assert.equal(vmStatus, 0, log());
  assert.match(vm.out.stdout, /^virtio_net\r?$/m, log());
  assert.match(vm.out.stdout, /3 packets transmitted, 3 packets received/, log());

  // The VM's port was detached when it ended; the switch's final counters still have the peer's port.
  pmd.child.kill("SIGKILL");
  await pmd.closed;
  sw.child.kill("SIGTERM");
  assert.equal(await sw.closed, 0, log());
  const end = JSON.parse(sw.out.stdout.trim().split("\n").at(-1) as string) as {
    event: string;
    ports: PortShow[];
  };
  assert.equal(end.event, "switch-end");
  const peer = end.ports.find((p) => p.name === "dpdk");
  assert.ok(peer, JSON.stringify(end));
  // The peer answered at least the ARP request and the three counted echoes, and received as many requests.
  assert.ok(peer.rx.frames >= 4, `the DPDK peer answered: ${JSON.stringify(peer)}`);
  assert.ok(peer.tx.frames >= peer.rx.frames, `every answer had a request: ${JSON.stringify(peer)}`);
  // The VM's port was attached for the run and detached after it.
  assert.match(sw.out.stderr, /port vm\d+-0 \(vhost-user\) listening on/, log());
  assert.match(sw.out.stderr, /port vm\d+-0 detached/, log());
  t.diagnostic(`peer port ${JSON.stringify(peer)}`);
});
