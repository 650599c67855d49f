/**
 * The vhost-user thread of `vireo run` (src/vhost-user/frontend-thread.ts) without KVM: the test builds the
 * device spec preparePci would (guest RAM in a memfd, kick eventfds, the first connection negotiated here), plays
 * the vCPU side through the device's own transport (features, queues, DRIVER_OK, reset) and the guest's driver
 * (split rings with interrupts suppressed, polled), against `vireo vhost-user net --loopback` as a process. The
 * back-end is then killed with SIGKILL and started again: the thread reconnects by itself and frames go round
 * again from where the rings were; a quiesce (snapshots) stops the rings until it ends; a reset waits until the
 * thread has stopped the rings.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { VIRTIO_STATUS } from "../../src/devices/virtio/constants.ts";
import { VirtioPciTransport } from "../../src/devices/virtio/pci-transport.ts";
import { native, signalEventFd } from "../../src/native.ts";
import { rarpFrame } from "../../src/net/announce.ts";
import { VhostUserDirtyLog } from "../../src/vhost-user/dirty-log.ts";
import { VhostUserFrontend } from "../../src/vhost-user/frontend.ts";
import { createFrontendBlock, FRONTEND_WORDS } from "../../src/vhost-user/frontend-device.ts";
import { guestFeatures } from "../../src/vhost-user/frontend-net.ts";
import { PROTOCOL_F } from "../../src/vhost-user/protocol.ts";
import { MsiRouteTable } from "../../src/vmm/msi-routes.ts";
import type { PciDeviceSpec } from "../../src/vmm/pci-devices.ts";
import { VIREO_BIN } from "../helpers/cli.ts";
import { NET_HDR } from "../helpers/vhost-user-frontend.ts";
import {
  makeDirtyLog,
  makeThreadRam,
  startFrontendThread,
  testEventFd,
} from "../helpers/vhost-user-thread.ts";
import { VirtioTestDriver } from "../helpers/virtio-driver.ts";

const MiB = 1 << 20;
const dir = mkdtempSync(join(tmpdir(), "vireo-vu-thread-"));
const children: ChildProcess[] = [];
after(() => {
  for (const c of children) if (c.exitCode === null) c.kill("SIGKILL");
});

async function until(what: string, ok: () => boolean, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`${what} did not happen within ${ms} ms`);
    await sleep(20);
  }
}

async function startBackend(socket: string) {
  const child = spawn(VIREO_BIN, ["vhost-user", "net", "--socket", socket, "--loopback", "--once"], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.push(child);
  let err = "";
  child.stderr?.on("data", (d) => {
    err += d;
  });
  const exited = new Promise((r) => child.on("exit", r));
  await until("the back-end listening", () => existsSync(socket) && /listening on/.test(err), 60_000);
  return { child, exited, err: () => err };
}

function frame(n: number, seed: number): Uint8Array {
  const f = new Uint8Array(n);
  for (let i = 0; i < n; i++) f[i] = (seed * 11 + i) & 0xff;
  return f;
}

test("the vhost-user thread starts the rings on DRIVER_OK, reconnects to a restarted back-end, stops on reset", async () => {
  const socket = join(dir, "net.sock");
  let backend = await startBackend(socket);
  const { ram: ramSpec, buffer: ram, mem } = makeThreadRam(4 * MiB);
  const ev = testEventFd;
  const conn = VhostUserFrontend.connect(socket);
  const negotiated = conn.negotiate(
    (1n << BigInt(PROTOCOL_F.REPLY_ACK)) |
      (1n << BigInt(PROTOCOL_F.LOG_SHMFD)) |
      (1n << BigInt(PROTOCOL_F.RARP)),
  );
  const block = createFrontendBlock();
  const spec: Extract<PciDeviceSpec, { kind: "vhost-user-net" }> = {
    kind: "vhost-user-net",
    name: "net0",
    slot: 1,
    state: VirtioPciTransport.createState({ numQueues: 2, stateBytes: 8 }),
    mac: [2, 0x76, 0x69, 0, 0, 1],
    socket,
    connFd: conn.fd,
    backendFeatures: negotiated.features,
    protocolFeatures: negotiated.protocolFeatures,
    offered: guestFeatures(negotiated.features),
    kicks: [ev(), ev()],
    irq: { routes: MsiRouteTable.createState(3), pool: [], assigned: new SharedArrayBuffer(12) },
    relays: [ev(), ev()],
    wake: ev(),
    block,
    ram: ramSpec,
    dirtyLog: makeDirtyLog(4 * MiB),
  };
  const { transport, messages, metrics, stop } = startFrontendThread(spec, ram, mem);
  const words = new Int32Array(block);
  try {
    // The driver's side of 3.1.1, as a vCPU thread would see it.
    const d = transport.device;
    d.writeStatus(VIRTIO_STATUS.ACKNOWLEDGE | VIRTIO_STATUS.DRIVER);
    d.driverFeatureSelect = 1;
    d.writeDriverFeatures(1); // VERSION_1
    d.writeStatus(VIRTIO_STATUS.ACKNOWLEDGE | VIRTIO_STATUS.DRIVER | VIRTIO_STATUS.FEATURES_OK);
    assert.ok(d.status & VIRTIO_STATUS.FEATURES_OK);
    const rings = [0, 1].map(
      (q) =>
        new VirtioTestDriver(mem, {
          kind: "split",
          size: 256,
          base: MiB + q * MiB,
          limit: 2 * MiB + q * MiB,
        }),
    );
    const [rx, tx] = rings as [VirtioTestDriver, VirtioTestDriver];
    for (const [q, r] of rings.entries()) {
      r.setUsedNotifications(false);
      const c = r.config;
      d.writeQueue(q, "size", c.size);
      d.writeQueue(q, "desc_lo", c.descAddr);
      d.writeQueue(q, "driver_lo", c.driverAddr);
      d.writeQueue(q, "device_lo", c.deviceAddr);
      d.writeQueue(q, "enable", 1);
    }
    for (let i = 0; i < 64; i++) rx.addChain([], [2048]);
    d.writeStatus(
      VIRTIO_STATUS.ACKNOWLEDGE | VIRTIO_STATUS.DRIVER | VIRTIO_STATUS.FEATURES_OK | VIRTIO_STATUS.DRIVER_OK,
    );
    d.activate();

    let seq = 0;
    let back = 0;
    /** Makes `count` frames available and kicks both queues. */
    const send = (count: number) => {
      for (let k = 0; k < count; k++) {
        const f = frame(100 + (seq % 900), seq);
        const b = new Uint8Array(NET_HDR + f.length);
        b.set(f, NET_HDR);
        tx.addChain([b], []);
        seq++;
      }
      signalEventFd(spec.kicks[1] as number);
      signalEventFd(spec.kicks[0] as number);
    };
    /** Sends `count` frames and waits until each came back, in order. */
    const roundTrip = async (count: number) => {
      send(count);
      await comeBack(seq);
    };
    /** Waits until every frame up to `want` came back, in order. */
    const comeBack = async (want: number) => {
      await until(
        `frames ${back}..${want} back`,
        () => {
          tx.usedChains();
          const got = rx.usedChains();
          for (const u of got) {
            assert.deepEqual(u.written.subarray(NET_HDR), frame(100 + (back % 900), back), `frame ${back}`);
            back++;
            rx.addChain([], [2048]);
          }
          if (got.length > 0) signalEventFd(spec.kicks[0] as number);
          return back === want;
        },
        20_000,
      );
    };
    await roundTrip(40);
    assert.equal(Atomics.load(words, FRONTEND_WORDS.connected), 1);

    // After a restore or an incoming migration the main thread asks for an announcement: SEND_RARP with the
    // guest's MAC. The loopback back-end sends the RARP out as if the guest had, so it comes back on the receive
    // ring, exactly the frame src/net/announce.ts builds.
    Atomics.add(words, FRONTEND_WORDS.announces, 1);
    signalEventFd(spec.wake);
    let announced: Uint8Array | undefined;
    await until(
      "the RARP back on the receive ring",
      () => {
        for (const u of rx.usedChains()) {
          assert.equal(announced, undefined, "one frame");
          announced = u.written.slice(NET_HDR);
          rx.addChain([], [2048]);
        }
        return announced !== undefined;
      },
      10_000,
    );
    signalEventFd(spec.kicks[0] as number);
    assert.deepEqual(announced, rarpFrame(Uint8Array.from(spec.mac)));

    // Quiesced for a snapshot: the thread stops both rings (GET_VRING_BASE) before it says so, and frames the
    // driver queues meanwhile stay in the ring; released, the rings start again from the used indices and they go.
    Atomics.store(words, FRONTEND_WORDS.quiesce, 1);
    signalEventFd(spec.wake);
    await until("the quiesce", () => Atomics.load(words, FRONTEND_WORDS.quiesced) === 1, 10_000);
    send(10);
    await sleep(300);
    assert.equal(tx.usedChains().length, 0, "no frame is taken while the rings are stopped");
    assert.equal(rx.usedChains().length, 0, "no frame is received while the rings are stopped");
    Atomics.store(words, FRONTEND_WORDS.quiesce, 0);
    signalEventFd(spec.wake);
    await until("the release", () => Atomics.load(words, FRONTEND_WORDS.quiesced) === 0, 10_000);
    await comeBack(seq);

    // A migration's dirty logging: the back-end gets the machine's log (SET_LOG_BASE, VHOST_F_LOG_ALL, the rings'
    // used rings logged) and marks the pages it writes, the receive buffers among them, at their guest addresses.
    const { buffer: logBuffer } = native().mmap(spec.dirtyLog.fd, spec.dirtyLog.size, 0);
    const log = new VhostUserDirtyLog(new Uint8Array(logBuffer));
    const setLogging = async (on: boolean) => {
      Atomics.store(words, FRONTEND_WORDS.logging, on ? 1 : 0);
      signalEventFd(spec.wake);
      await until(
        "the logging answer",
        () => Atomics.load(words, FRONTEND_WORDS.loggingAck) === (on ? 1 : 0),
        10_000,
      );
    };
    await setLogging(true);
    await roundTrip(40);
    const marked: number[] = [];
    log.take((p) => marked.push(p));
    const rxPages = marked.filter((p) => p * 4096 >= MiB && p * 4096 < 2 * MiB);
    assert.ok(rxPages.length > 0, `the receive ring's area has pages marked (${marked.join(",")})`);
    assert.ok(
      marked.every((p) => p * 4096 < 4 * MiB),
      "every mark is inside guest RAM",
    );
    await setLogging(false);
    await roundTrip(40);
    let after = 0;
    log.take(() => after++);
    assert.equal(after, 0, "logging off: nothing more is marked");

    // The back-end dies; the device stalls; a new one on the same socket gets the rings back.
    backend.child.kill("SIGKILL");
    await backend.exited;
    await until("the thread noticing", () => Atomics.load(words, FRONTEND_WORDS.connected) === 0, 10_000);
    backend = await startBackend(socket);
    await until("the reconnect", () => Atomics.load(words, FRONTEND_WORDS.connected) === 1, 20_000);
    await roundTrip(40);

    // A migration's switch-over: quiesced with a hand-off, the thread stops the rings and closes the connection
    // (this --once back-end then exits), and does not connect again while quiesced; released (the migration
    // failed), it connects to whatever back-end listens and the frames go round again.
    Atomics.store(words, FRONTEND_WORDS.quiesce, 2);
    signalEventFd(spec.wake);
    await until("the hand-off", () => Atomics.load(words, FRONTEND_WORDS.quiesced) === 1, 10_000);
    assert.equal(Atomics.load(words, FRONTEND_WORDS.connected), 0);
    await backend.exited;
    backend = await startBackend(socket);
    await sleep(1500);
    assert.equal(Atomics.load(words, FRONTEND_WORDS.connected), 0, "no reconnect while quiesced");
    Atomics.store(words, FRONTEND_WORDS.quiesce, 0);
    signalEventFd(spec.wake);
    await until(
      "the reconnect after the hand-off",
      () => Atomics.load(words, FRONTEND_WORDS.connected) === 1,
      20_000,
    );
    await roundTrip(40);

    // A reset returns once the thread has stopped the rings (GET_VRING_BASE).
    const before = Atomics.load(words, FRONTEND_WORDS.resetsDone);
    d.writeStatus(0);
    assert.equal(Atomics.load(words, FRONTEND_WORDS.resetsDone), before + 1, "the reset waited for the stop");
    assert.deepEqual(messages, []);
  } finally {
    await stop();
  }
  const m = metrics.snapshot();
  assert.equal(m["vhost-user.net0.rarps_sent"], 1);
  assert.equal(m["vhost-user.net0.disconnects"], 1);
  assert.equal(m["vhost-user.net0.connects"], 2);
  assert.equal(
    m["vhost-user.net0.ring_starts"],
    8,
    "two rings at DRIVER_OK, two after the quiesce, two after each reconnect",
  );
});
