/**
 * Slow tier: Linux's virtio_net on vireo's vhost-user front-end. `vireo run --net vhost-user=SOCKET` with the
 * rings served by `vireo vhost-user net --tap NAME` on a TAP in a network namespace; the guest pings the TAP's
 * address, so its interrupts are MSI-X vectors whose irqfds the back-end signals. Then the back-end is killed
 * with SIGKILL and started again: the VM runs on, vireo reconnects, restarts the rings from the used indices in
 * guest memory, and the guest's pings get answers again.
 */
import assert from "node:assert/strict";
import { existsSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { findGuestImage } from "../../src/image/guest-image.ts";
import { FAST_BOOT_CMDLINE } from "../../src/image/init-scripts.ts";
import { VIREO_BIN } from "../helpers/cli.ts";
import { LINUX_TEST_TIMEOUT_MS, linuxGuestSkip } from "../helpers/linux-guest.ts";
import { type NetNs, netnsMaker, netnsUnavailable } from "../helpers/netns.ts";
import { type Proc, startProcess } from "../helpers/processes.ts";

const skip = linuxGuestSkip() || (netnsUnavailable() ?? false);
const makeNs = netnsMaker();
const dir = mkdtempSync(join(tmpdir(), "vireo-vu-linux-"));

async function until(what: string, ok: () => boolean, ms: number, why: () => string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`${what} did not happen within ${ms} ms: ${why()}`);
    await sleep(50);
  }
}

/** The back-end, once it says it listens (a dead one's socket file may still be there). */
async function startBackend(ns: NetNs, socket: string): Promise<Proc> {
  const b = startProcess(
    ns.exec([VIREO_BIN, "vhost-user", "net", "--socket", socket, "--tap", ns.tap, "--once"]),
  );
  await until(
    "the back-end listening",
    () => existsSync(socket) && /listening on/.test(b.err()),
    240_000,
    () => `${b.err()} (exit ${b.child.exitCode})`,
  );
  return b;
}

function setupNs(): NetNs {
  const ns = makeNs();
  ns.addTapAddress("10.0.2.1/24");
  return ns;
}

function runGuest(ns: NetNs, socket: string, run: string): Proc {
  const image = findGuestImage();
  if (!image) throw new Error("no guest image");
  return startProcess(
    ns.exec([
      VIREO_BIN,
      "run",
      "--kernel",
      image.kernel,
      "--initrd",
      image.guestInitrd,
      "--net",
      `vhost-user=${socket},mac=02:76:69:00:00:0f`,
      "--timeout",
      String(LINUX_TEST_TIMEOUT_MS / 1000 - 60),
      "--cmdline",
      `${FAST_BOOT_CMDLINE} vireo.run="${run}"`,
    ]),
  );
}

/** A line per step on stderr, so a stuck step is seen where it stuck (the tier watches for silence). */
function step(test: string, t0: number, what: string): void {
  process.stderr.write(`${test}: ${((performance.now() - t0) / 1000).toFixed(1)} s: ${what}\n`);
}

const UP = "ip link set eth0 up; ip addr add 10.0.2.15/24 dev eth0";

test("Linux's virtio_net pings the host through a vhost-user back-end", {
  skip,
  timeout: LINUX_TEST_TIMEOUT_MS,
}, async () => {
  const ns = setupNs();
  const socket = join(dir, "ping.sock");
  const b = await startBackend(ns, socket);
  const t0 = performance.now();
  const vm = runGuest(
    ns,
    socket,
    `basename $(readlink /sys/class/net/eth0/device/driver); ${UP}; ping -c 3 -W 30 10.0.2.1`,
  );
  const status = await vm.exited;
  const seconds = ((performance.now() - t0) / 1000).toFixed(0);
  assert.equal(status, 0, vm.out() + vm.err());
  assert.match(vm.out(), /^virtio_net\r?$/m, vm.out());
  assert.match(vm.out(), /3 packets transmitted, 3 packets received/, vm.out());
  assert.equal(await b.exited, 0, b.err());
  const end = JSON.parse(b.out().trim().split("\n")[0] as string) as Record<string, number>;
  assert.ok((end.txFrames ?? 0) >= 3 && (end.rxFrames ?? 0) >= 3, `back-end counts ${b.out()}`);
  assert.ok((end.calls ?? 0) > 0, "the back-end interrupted the guest through its call fds");
  process.stderr.write(`vhost-user Linux ping: ${seconds} s\n`);
});

test("the back-end killed and started again: vireo reconnects and the guest's pings get answers again", {
  skip,
  timeout: LINUX_TEST_TIMEOUT_MS,
}, async () => {
  const t = performance.now();
  const ns = setupNs();
  step("vhost-user reconnect", t, `namespace ${ns.name} ready`);
  const socket = join(dir, "reconnect.sock");
  const first = await startBackend(ns, socket);
  step("vhost-user reconnect", t, "first back-end listening");
  const vm = runGuest(
    ns,
    socket,
    // Phase two pings once a second or so until one is answered (at most about 4 minutes): busybox's ping -c 3
    // -w 240 gave up after its three requests, all sent into the outage when the guest was quick.
    `${UP}; ping -c 3 -W 30 10.0.2.1; echo PHASE-ONE-DONE; sleep 2; ` +
      "for i in $(seq 1 120); do ping -c 1 -W 2 10.0.2.1 && break; done; echo PHASE-TWO-DONE",
  );
  await until(
    "the first pings",
    () => vm.out().includes("PHASE-ONE-DONE"),
    LINUX_TEST_TIMEOUT_MS - 300_000,
    () => vm.out(),
  );
  assert.match(vm.out(), /3 packets transmitted, 3 packets received/, vm.out());
  step("vhost-user reconnect", t, "first pings answered; killing the back-end");
  first.child.kill("SIGKILL");
  await first.exited;
  await until("vireo noticing", () => /the back-end closed the connection/.test(vm.err()), 60_000, vm.err);
  step("vhost-user reconnect", t, "vireo saw the back-end go");
  // A few seconds without a back-end: the guest keeps transmitting into a stalled ring.
  await sleep(3000);
  const t0 = performance.now();
  const second = await startBackend(ns, socket);
  step("vhost-user reconnect", t, "second back-end listening");
  await until(
    "the reconnect",
    () => /reconnected/.test(vm.err()),
    120_000,
    () => `${vm.err()}\nback-end: ${second.err()}\nguest: ${vm.out().slice(-1500)}`,
  );
  step("vhost-user reconnect", t, "vireo reconnected");
  const status = await vm.exited;
  const seconds = ((performance.now() - t0) / 1000).toFixed(0);
  assert.equal(status, 0, vm.out() + vm.err());
  const tail = vm.out().slice(vm.out().indexOf("PHASE-ONE-DONE"));
  assert.match(tail, /PHASE-TWO-DONE/, tail);
  assert.match(tail, /1 packets transmitted, 1 packets received/, tail);
  assert.equal(await second.exited, 0, second.err());
  process.stderr.write(
    `vhost-user reconnect: pings answered again ${seconds} s after the back-end restarted\n`,
  );
});
