/**
 * virtio-net with a real guest driver and a real TAP: the micro guest's virtio-net driver (split or packed ring)
 * sends 10,000 frames to the host and echoes 10,000 frames the host sends, through a TAP device in a network
 * namespace this test creates. The host side (test/helpers/netpeer.py, a raw socket on the TAP) checks every
 * frame's content and order itself. The guest's doorbells reach vireo's data-plane thread through ioeventfds.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { test } from "node:test";
import { KvmSystem } from "../../src/kvm/system.ts";
import { MICRO_PROGRAMS } from "../../src/vmm/micro-guest.ts";
import { metricsPath, readMetrics, VIREO_BIN } from "../helpers/cli.ts";
import { assertFramesExchanged, exchangeFrames, netnsMaker, netnsUnavailable } from "../helpers/netns.ts";

const netSkip = !KvmSystem.available()
  ? "no usable /dev/kvm on this host: KVM tests skipped"
  : (netnsUnavailable() ?? false);
const skip =
  netSkip ||
  ((MICRO_PROGRAMS as readonly string[]).includes("virtio-net-test")
    ? false
    : "the micro guest has no virtio-net-test program yet");

const netns = netnsMaker();

for (const layout of ["split", "packed"] as const) {
  test(`10,000 frames each way between the guest's virtio-net (${layout} ring) and a TAP`, {
    skip,
  }, async () => {
    const ns = netns();
    const count = 10_000;
    const size = 1000;
    const mac = "02:76:69:aa:bb:01";
    const metricsFile = metricsPath("vireo-net-");
    const args = [
      "--guest",
      "micro:virtio-net-test",
      String(count),
      String(size),
      ...(layout === "packed" ? ["packed"] : []),
      "event-idx",
      "--net",
      `tap=${ns.tap},mac=${mac}`,
      "--timeout",
      "100",
      "--metrics",
      metricsFile,
    ];
    const r = await exchangeFrames(ns, args, { count, size });
    assertFramesExchanged(r, count, mac, "the guest used the MAC given with --net");
    assert.match(r.vireo.stdout, /virtio-net-test ok/);
    // The data plane did the work: the data-plane thread's counters saw every frame, through doorbells that did
    // not exit to vireo (no MMIO exits per frame).
    const metrics = readMetrics(metricsFile);
    assert.ok((metrics["virtio.net0.tx_packets"] ?? 0) >= 2 * count, "tx_packets counts both phases");
    assert.ok((metrics["virtio.net0.rx_packets"] ?? 0) >= count, "rx_packets");
    assert.ok((metrics["vhost.net0.kicks"] ?? 0) > 0, "doorbells arrived through the ioeventfds");
    // Driver setup exits (common configuration), so the counter is there; per-frame doorbells would add 10,000.
    assert.ok(metrics["exits.mmio"] !== undefined, "MMIO exits are counted");
    assert.ok(
      (metrics["exits.mmio"] ?? 0) < count,
      `MMIO exits ${metrics["exits.mmio"]} should not grow per frame`,
    );
  });
}

test("a TAP another process holds gives a one-line error", { skip: netSkip }, () => {
  const ns = netns();
  // A second attach to a single-queue TAP is refused with EBUSY: python holds it and runs vireo meanwhile.
  const hold = [
    "import fcntl, struct, os, subprocess, sys",
    "fd = os.open('/dev/net/tun', os.O_RDWR)",
    `fcntl.ioctl(fd, 0x400454ca, struct.pack('16sH', b'${ns.tap}', 0x1002 | 0x4000))`,
    "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)",
    "print(r.returncode); print(r.stderr, end='')",
  ].join("\n");
  const argv = ns.exec([
    "python3",
    "-c",
    hold,
    VIREO_BIN,
    "run",
    "--guest",
    "micro:pci",
    "--net",
    `tap=${ns.tap}`,
  ]);
  const r = spawnSync(argv[0] as string, argv.slice(1), { encoding: "utf8", timeout: 60_000 });
  const [status, ...lines] = r.stdout.trim().split("\n");
  assert.equal(status, "125", r.stdout + r.stderr);
  assert.equal(lines.length, 1, `one line on stderr: ${lines.join(" / ")}`);
  assert.match(lines[0] ?? "", /^vireo: tap=vt0: TAP device vt0 is busy/);
});
