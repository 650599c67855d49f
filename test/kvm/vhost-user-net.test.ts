/**
 * vireo as a vhost-user front-end: `vireo run --net vhost-user=SOCKET` with the rings served by another process,
 * `vireo vhost-user net --tap NAME`, on a TAP in a network namespace. The micro guest's virtio-net driver sends
 * frames to the host and echoes frames the host sends (test/helpers/netpeer.py checks every one); the guest's
 * doorbells are KVM ioeventfds the back-end polls, so no frame and no doorbell passes through vireo. The same
 * guest through vireo switch, on a vhost-user port and on an shm port (`--net shm=`, the VM's data-plane thread
 * copying frames through the switch's shared-memory rings). Also: a missing socket is a one-line error naming --net.
 */
import assert from "node:assert/strict";
import { existsSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { KvmSystem } from "../../src/kvm/system.ts";
import { metricsPath, readMetrics, VIREO_BIN, vireo } from "../helpers/cli.ts";
import { assertFramesExchanged, exchangeFrames, netnsMaker, netnsUnavailable } from "../helpers/netns.ts";
import { startProcess, waitFor } from "../helpers/processes.ts";

const kvmSkip = KvmSystem.available() ? false : "no usable /dev/kvm on this host: KVM tests skipped";
const netSkip = kvmSkip || (netnsUnavailable() ?? false);
const netns = netnsMaker();
const dir = mkdtempSync(join(tmpdir(), "vireo-vu-run-"));

/** `vireo vhost-user net --socket SOCK --tap TAP --once` in the namespace, once its socket exists. */
async function startBackend(argv: string[], socket: string) {
  const b = startProcess(argv);
  await waitFor(
    () => existsSync(socket) || b.child.exitCode !== null,
    120_000,
    () => `back-end did not start: ${b.err()}`,
  );
  if (!existsSync(socket)) throw new Error(`back-end did not start: ${b.err()}`);
  return b;
}

test("the micro guest's virtio-net exchanges 2,000 frames each way through a vhost-user back-end", {
  skip: netSkip,
}, async () => {
  const ns = netns();
  const socket = join(dir, "net.sock");
  const b = await startBackend(
    ns.exec([VIREO_BIN, "vhost-user", "net", "--socket", socket, "--tap", ns.tap, "--once"]),
    socket,
  );
  const count = 2000;
  const size = 1000;
  const mac = "02:76:69:aa:bb:07";
  const metricsFile = metricsPath("vireo-vu-net-");
  const t0 = performance.now();
  const r = await exchangeFrames(
    ns,
    [
      "--guest",
      "micro:virtio-net-test",
      String(count),
      String(size),
      "event-idx",
      "--net",
      `vhost-user=${socket},mac=${mac}`,
      "--timeout",
      "240",
      "--metrics",
      metricsFile,
    ],
    { count, size },
    300_000,
  );
  const seconds = ((performance.now() - t0) / 1000).toFixed(1);
  assertFramesExchanged(r, count, mac, "the guest used the MAC given with --net");
  assert.match(r.vireo.stdout, /virtio-net-test ok/);
  const metrics = readMetrics(metricsFile);
  assert.ok((metrics["vhost-user.net0.ring_starts"] ?? 0) >= 2, "both rings were started on the back-end");
  // No frame went through vireo's own virtio-net code: the back-end moved them all.
  assert.equal(metrics["virtio.net0.tx_packets"] ?? 0, 0, "vireo transmitted nothing itself");
  assert.equal(metrics["virtio.net0.rx_packets"] ?? 0, 0, "vireo received nothing itself");
  // Doorbells were KVM ioeventfds: MMIO exits are the driver's setup, not one per frame.
  assert.ok(
    (metrics["exits.mmio"] ?? 0) < count,
    `MMIO exits ${metrics["exits.mmio"]} should not grow per frame`,
  );
  // The back-end counted the frames (its connection-end line, printed when vireo's connection closed).
  assert.equal(await b.exited, 0, b.err());
  const end = JSON.parse(b.out().trim().split("\n")[0] as string) as Record<string, number>;
  assert.ok((end.txFrames ?? 0) >= 2 * count, `back-end txFrames ${end.txFrames}`);
  assert.ok((end.rxFrames ?? 0) >= count, `back-end rxFrames ${end.rxFrames}`);
  process.stderr.write(`vhost-user net exchange: ${seconds} s (vireo run with the back-end)\n`);
});

// The micro guest through vireo switch on each kind of port a VM can take, with a TAP port toward the peer:
// vhost-user (the switch serves the guest's rings) and shm (the VM's data-plane thread copies frames through the
// switch's shared-memory rings, --net shm=).
for (const { kind, n } of [
  { kind: "vhost-user", n: 8 },
  { kind: "shm", n: 9 },
] as const) {
  test(`the micro guest's frames cross vireo switch (${kind === "shm" ? "an" : "a"} ${kind} port and a TAP port) both ways`, {
    skip: netSkip,
  }, async () => {
    const ns = netns();
    const socket = join(dir, `switch-${kind}-port.sock`);
    const sw = startProcess(
      ns.exec([
        VIREO_BIN,
        "switch",
        `sw${n}`,
        "--control",
        join(dir, `sw${n}.ctl`),
        "--port",
        `${kind}=${socket},name=vm`,
        "--port",
        `tap=${ns.tap}`,
      ]),
    );
    await waitFor(
      () => existsSync(socket),
      120_000,
      () => `the switch did not start: ${sw.err()}`,
    );
    const count = 500;
    const size = 600;
    const mac = `02:76:69:aa:bb:0${n}`;
    const metricsFile = metricsPath(`vireo-switch-${kind}-`);
    const r = await exchangeFrames(
      ns,
      [
        "--guest",
        "micro:virtio-net-test",
        String(count),
        String(size),
        "--net",
        `${kind}=${socket},mac=${mac}`,
        "--timeout",
        "240",
        "--metrics",
        metricsFile,
      ],
      { count, size },
      300_000,
    );
    sw.child.kill("SIGTERM");
    await sw.exited;
    assertFramesExchanged(r, count, mac, "the guest used the MAC given with --net");
    const end = JSON.parse(sw.out().trim().split("\n").pop() as string) as {
      ports: Array<{ name: string; rx: { frames: number }; tx: { frames: number } }>;
    };
    const vm = end.ports.find((p) => p.name === "vm");
    assert.ok((vm?.rx.frames ?? 0) >= 2 * count, `the switch received the guest's frames: ${sw.out()}`);
    assert.ok((vm?.tx.frames ?? 0) >= count, `the switch delivered the peer's frames to the VM: ${sw.out()}`);
    if (kind === "shm") {
      // vireo's own virtio-net served the guest's rings on its data-plane thread; the shm backend moved them.
      const metrics = readMetrics(metricsFile);
      assert.ok((metrics["net.shm.net0.tx_packets"] ?? 0) >= 2 * count, JSON.stringify(metrics));
      assert.ok((metrics["net.shm.net0.rx_packets"] ?? 0) >= count, JSON.stringify(metrics));
    }
  });
}

test("--net shm= with nothing listening is one clear line, status 125", { skip: kvmSkip }, () => {
  const r = vireo([
    "run",
    "--guest",
    "micro:hello",
    "--net",
    `shm=${join(dir, "nobody.sock")}`,
    "--timeout",
    "60",
  ]);
  assert.equal(r.status, 125, r.stderr);
  assert.match(
    r.stderr,
    /--net shm=.*nobody\.sock: cannot connect \(ENOENT\): is a vireo switch shm port listening there\?/,
  );
});

test("--net vhost-user= with no back-end on the socket is one clear line, status 125", {
  skip: kvmSkip,
}, () => {
  const missing = join(dir, "nobody.sock");
  const r = vireo(["run", "--guest", "micro:pci", "--net", `vhost-user=${missing}`]);
  assert.equal(r.status, 125, r.stdout + r.stderr);
  const lines = r.stderr.trim().split("\n");
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0] ?? "", /^vireo: --net vhost-user=\S+nobody\.sock: \S+nobody\.sock: no such socket/);
});
