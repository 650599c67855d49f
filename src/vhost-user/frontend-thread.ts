/**
 * A vhost-user device's thread in `vireo run` (the front-end's control plane; the data plane is the back-end's):
 * it owns the connection to the back-end and does the requests the device's life calls for.
 *
 * - DRIVER_OK (a vCPU thread bumps `activations` and wakes this thread): with PROTOCOL_F_INFLIGHT_SHMFD (blk),
 *   GET_INFLIGHT_FD once and SET_INFLIGHT_FD; then SET_FEATURES with the back-end's share
 *   of what the guest negotiated, SET_MEM_TABLE with guest RAM's memfd, and per enabled queue SET_VRING_NUM,
 *   BASE, ADDR, CALL (the irqfd of the queue's MSI-X vector), KICK (the KVM ioeventfd of its notify address) and
 *   ENABLE.
 * - Reset (a vCPU thread bumps `resets` and waits for `resetsDone`): GET_VRING_BASE stops each started ring, and
 *   the inflight buffer is dropped (the next DRIVER_OK gets a fresh one).
 * - The back-end goes away (end of stream, an error, no reply in time): the device stalls and the VM runs on.
 *   This thread tries the socket again every RECONNECT_MS, for as long as it takes; a back-end that listens
 *   again gets the session back (features checked: it must serve everything the guest was offered), and a
 *   running device's rings are restarted from the used index in guest memory (each ring's next available entry
 *   is the first one the old back-end had not returned: virtio-net completes in order, and a frame taken but
 *   never used is sent or received again). A blk back-end is first handed the inflight buffer the old one kept
 *   its requests in (SET_INFLIGHT_FD): it resubmits the requests taken and not completed, so no write the guest
 *   is waiting for is lost, and starts each ring after them.
 * - A back-end that refuses a request (REPLY_ACK non-zero) or sends a malformed reply: the device is marked
 *   DEVICE_NEEDS_RESET with the reason logged; the guest's driver sees a broken device, not a silent one.
 * - MSI-X disabled (INTx): the call fds are eventfds this thread polls, raising INTx with the ISR bit.
 */
import { writeSync } from "node:fs";
import { parentPort, workerData } from "node:worker_threads";
import { Bus } from "../bus/bus.ts";
import type { VirtioPciTransport } from "../devices/virtio/pci-transport.ts";
import { Vm } from "../kvm/vm.ts";
import { GuestMemory } from "../memory/guest-memory.ts";
import { MetricsSegment } from "../metrics/registry.ts";
import { native, POLLIN, takeEventFd } from "../native.ts";
import type { WorkerMessage } from "../vmm/messages.ts";
import { type PciBuildContext, transportFor, type VhostUserSpec } from "../vmm/pci-devices.ts";
import { VHOST_F_LOG_ALL } from "./dirty-log.ts";
import {
  type FrontendRing,
  type InflightBuffer,
  VhostUserFrontend,
  VhostUserFrontendError,
} from "./frontend.ts";
import { backendAck, FRONTEND_WORDS, offeredFromBackend } from "./frontend-device.ts";
import { PROTOCOL_F, VHOST_USER_F_PROTOCOL_FEATURES } from "./protocol.ts";

export interface FrontendThreadData {
  spec: VhostUserSpec;
  vmFd: number;
  ram: SharedArrayBuffer;
  stopFd: number;
  metricsBuffer: SharedArrayBuffer;
  metricsSegment: number;
}

/** How often a lost back-end's socket is tried again. */
export const RECONNECT_MS = 500;

const ISR_QUEUE = 1;
const VIRTIO_MSI_NO_VECTOR = 0xffff;

const data = workerData as FrontendThreadData;
const port = parentPort;
if (!port) throw new Error("the vhost-user thread must run as a worker thread");
const post = (m: WorkerMessage) => port.postMessage(m);
const spec = data.spec;
const metrics = new MetricsSegment(data.metricsBuffer, data.metricsSegment);
const flushMetricNames = () => {
  const names = metrics.drainNewNames();
  if (names.length) post({ type: "metric-names", segment: data.metricsSegment, names });
};
/**
 * Live status lines (connection lost, back again) and errors, on stderr as they happen: written to fd 2 directly,
 * since a worker's process.stderr sends its next chunk only after its own event loop runs, which this thread's
 * never does.
 */
const say = (m: string) => {
  try {
    writeSync(2, `vireo: ${spec.name}: vhost-user: ${m}\n`);
  } catch {
    // stderr closed: nothing to tell
  }
};
const reportError = (message: string) => {
  say(message);
  post({ type: "device-error", vcpu: -1, device: spec.name, message: `vhost-user: ${message}` });
};

class FrontendPlane {
  private conn: VhostUserFrontend | null;
  private protocolFeatures: bigint;
  private backendFeatures: bigint;
  /** Rings the back-end serves now (started and not stopped). */
  private started: number[] = [];
  /** The activations count last served. */
  private activations = 0;
  /** Quiesced for a snapshot or a migration's switch-over (FRONTEND_WORDS.quiesce): no ring is started. */
  private quiesced = false;
  /** A live migration logs dirty pages (FRONTEND_WORDS.logging): rings start with logging on. */
  private logging = false;
  private readonly words: Int32Array;
  private readonly transport: VirtioPciTransport;
  private readonly mem: GuestMemory;
  private nextTry = 0;
  private lastRefusal = "";
  /**
   * The inflight buffer (PROTOCOL_F_INFLIGHT_SHMFD) the first back-end made, kept across back-ends: a new one is
   * handed it before its rings start, and resubmits what the old one had taken and not completed. A device reset
   * drops it (the driver has given up on every request).
   */
  private inflight: InflightBuffer | null = null;
  /** FRONTEND_WORDS.announces as last seen, and whether its SEND_RARP is still to go (no back-end yet). */
  private announces = 0;
  private announcePending = false;
  private readonly cConnects = metrics.counter(`vhost-user.${spec.name}.connects`);
  private readonly cDisconnects = metrics.counter(`vhost-user.${spec.name}.disconnects`);
  private readonly cRingStarts = metrics.counter(`vhost-user.${spec.name}.ring_starts`);
  private readonly cRelayed = metrics.counter(`vhost-user.${spec.name}.intx_relayed`);
  private readonly cAttempts = metrics.counter(`vhost-user.${spec.name}.reconnect_attempts`);
  private readonly cRarps = metrics.counter(`vhost-user.${spec.name}.rarps_sent`);

  constructor() {
    this.words = new Int32Array(spec.block);
    // The first connection, opened and negotiated by the main thread, is this thread's from now on.
    const taken = Atomics.compareExchange(this.words, FRONTEND_WORDS.connTaken, 0, 1) === 0;
    this.conn = taken ? new VhostUserFrontend(spec.connFd, { name: spec.socket }) : null;
    this.conn?.adopt(spec.protocolFeatures);
    this.protocolFeatures = spec.protocolFeatures;
    this.backendFeatures = spec.backendFeatures;
    Atomics.store(this.words, FRONTEND_WORDS.connected, this.conn ? 1 : 0);
    this.mem = new GuestMemory(data.ram);
    const vm = Vm.fromFd(data.vmFd);
    const ctx: PciBuildContext = {
      mem: this.mem,
      vmFd: data.vmFd,
      metrics,
      pio: new Bus("pio"),
      mmio: new Bus("mmio"),
      signalMsi: (lo, hi, value) => {
        vm.signalMsi(lo, hi, value);
      },
      log: reportError,
    };
    this.transport = transportFor(spec, ctx, false, "io");
  }

  get connFd(): number {
    return this.conn?.fd ?? -1;
  }

  /** Timeout for the next poll: the next reconnect attempt while there is no back-end (and no quiesce). */
  timeoutMs(): number {
    if (this.conn || this.quiesced) return -1;
    return Math.max(0, Math.ceil(this.nextTry - performance.now()));
  }

  /**
   * The wake eventfd fired: resets first (a reset after DRIVER_OK cancels it), then a quiesce or its end, then
   * activation. While quiesced no ring starts (an activation or a reconnect waits for the end of the quiesce).
   */
  onWake(): void {
    const w = this.words;
    const resets = Atomics.load(w, FRONTEND_WORDS.resets);
    if (resets !== Atomics.load(w, FRONTEND_WORDS.resetsDone)) {
      this.stopRings();
      Atomics.store(w, FRONTEND_WORDS.resetsDone, resets);
      Atomics.notify(w, FRONTEND_WORDS.resetsDone);
    }
    const mode = Atomics.load(w, FRONTEND_WORDS.quiesce);
    const quiet = mode !== 0;
    if (quiet !== this.quiesced) {
      this.quiesced = quiet;
      if (quiet) {
        this.suspendRings();
        if (mode === 2) this.handOff();
      }
      Atomics.store(w, FRONTEND_WORDS.quiesced, quiet ? 1 : 0);
      Atomics.notify(w, FRONTEND_WORDS.quiesced);
      if (!quiet) {
        this.nextTry = performance.now();
        this.startRings();
      }
    }
    const logging = Atomics.load(w, FRONTEND_WORDS.logging) !== 0;
    if (logging !== this.logging) {
      this.logging = logging;
      // A back-end that refuses loses its connection (not the device: the guest's I/O is fine), and the
      // migration asking for the log is told and fails; the rings come back without logging.
      const cannot = logging && this.conn !== null && !this.conn.hasProtocol(PROTOCOL_F.LOG_SHMFD);
      if (cannot) reportError("dirty logging: the back-end does not offer VHOST_USER_PROTOCOL_F_LOG_SHMFD");
      const ok =
        !cannot &&
        (this.started.length === 0 || this.talk("dirty logging", (conn) => this.applyLogging(conn), false));
      if (!ok) this.logging = false;
    }
    // Answered on every wake, so a request is never left waiting for a change this thread had already made.
    const ack = this.logging === logging ? (logging ? 1 : 0) : -1;
    if (Atomics.load(w, FRONTEND_WORDS.loggingAck) !== ack) {
      Atomics.store(w, FRONTEND_WORDS.loggingAck, ack);
      Atomics.notify(w, FRONTEND_WORDS.loggingAck);
    }
    const act = Atomics.load(w, FRONTEND_WORDS.activations);
    if (act !== this.activations) {
      this.activations = act;
      this.startRings();
    }
    const announces = Atomics.load(w, FRONTEND_WORDS.announces);
    if (announces !== this.announces) {
      this.announces = announces;
      this.announcePending = spec.kind === "vhost-user-net";
    }
    this.announce();
  }

  /**
   * A pending announcement (the VM was restored or migrated here): SEND_RARP with the guest's MAC, so the back-end
   * tells its network where the guest now is. Waits for a back-end; one without PROTOCOL_F_RARP is said once.
   */
  private announce(): void {
    const conn = this.conn;
    if (!this.announcePending || conn === null || this.quiesced || spec.kind !== "vhost-user-net") return;
    this.announcePending = false;
    if (!conn.hasProtocol(PROTOCOL_F.RARP)) {
      say("the back-end does not offer VHOST_USER_PROTOCOL_F_RARP: the guest's MAC is not announced");
      return;
    }
    const mac = Uint8Array.from(spec.mac);
    if (this.talk("announcing the guest's MAC (SEND_RARP)", (c) => c.sendRarp(mac), false)) this.cRarps.add();
  }

  /** The connection is readable or hung up: the back-end sends nothing unasked, so this is its end. */
  onConnEvent(): void {
    const conn = this.conn;
    if (!conn) return;
    const buf = new Uint8Array(64);
    const r = native().recvmsg(conn.fd, buf, 8);
    for (const fd of r.fds) native().close(fd);
    if (r.bytes > 0) this.lost(`the back-end sent ${r.bytes} bytes nobody asked for`);
    else this.lost("the back-end closed the connection");
  }

  /** A relay call fd fired (MSI-X off): the queue's interrupt as INTx with the ISR bit (4.1.4.5). */
  onRelay(q: number): void {
    if (takeEventFd(spec.relays[q] as number) === 0) return;
    this.cRelayed.add();
    const t = this.transport;
    if (t.msix.enabled) return;
    t.device.isrOr(ISR_QUEUE);
    t.pci.setIntx(true);
  }

  /** No back-end: try the socket again if it is time (not while quiesced: a migration may have handed it off). */
  onTimer(): void {
    if (this.conn || this.quiesced || performance.now() < this.nextTry) return;
    this.nextTry = performance.now() + RECONNECT_MS;
    let conn: VhostUserFrontend;
    this.cAttempts.add();
    try {
      conn = VhostUserFrontend.connect(spec.socket);
    } catch (e) {
      // Nobody listens yet: the device stays stalled, and this thread tries again. Each new reason is said once.
      const msg = (e as Error).message;
      if (msg !== this.lastRefusal) say(`not yet: ${msg}`);
      this.lastRefusal = msg;
      return;
    }
    try {
      const n = conn.negotiate(spec.protocolFeatures);
      // The guest was offered features from the first back-end: a new one must serve all of them, and speak the
      // protocol features the first did (an inflight buffer handed to one that cannot take it would be lost).
      const offered = offeredFromBackend(spec.offered, spec.backendFeatures);
      const missing = offered & ~n.features;
      if (missing !== 0n) {
        throw new VhostUserFrontendError(
          "VHOST_USER_INCOMPATIBLE",
          `${spec.socket}: the back-end lacks features the guest was offered (0x${missing.toString(16)})`,
        );
      }
      // RARP is a courtesy: a back-end without it still serves the device (its MAC is then not announced).
      const missingProtocol = spec.protocolFeatures & ~n.protocolFeatures & ~(1n << BigInt(PROTOCOL_F.RARP));
      if (missingProtocol !== 0n) {
        throw new VhostUserFrontendError(
          "VHOST_USER_INCOMPATIBLE",
          `${spec.socket}: the back-end lacks protocol features the first one had (0x${missingProtocol.toString(16)})`,
        );
      }
      this.conn = conn;
      this.backendFeatures = n.features;
      this.protocolFeatures = n.protocolFeatures;
      this.lastRefusal = "";
    } catch (e) {
      conn.close();
      const msg = (e as Error).message;
      // Said once per kind of refusal, not every RECONNECT_MS.
      if (msg !== this.lastRefusal) reportError(`reconnect refused: ${msg}`);
      this.lastRefusal = msg;
      return;
    }
    this.cConnects.add();
    Atomics.store(this.words, FRONTEND_WORDS.connected, 1);
    say(`reconnected to ${spec.socket}`);
    if (this.transport.device.running) this.startRings();
    this.announce();
  }

  close(): void {
    this.conn?.close();
    this.conn = null;
    this.dropInflight();
  }

  private dropInflight(): void {
    if (this.inflight) native().close(this.inflight.fd);
    this.inflight = null;
  }

  private lost(why: string): void {
    if (!this.conn) return;
    this.conn.close();
    this.conn = null;
    this.started = [];
    this.cDisconnects.add();
    Atomics.store(this.words, FRONTEND_WORDS.connected, 0);
    say(`${why}; the device waits for a back-end on ${spec.socket} (tried every ${RECONNECT_MS} ms)`);
    this.nextTry = performance.now() + RECONNECT_MS;
  }

  /**
   * Runs a conversation. A back-end that goes away (closed, no reply in time) ends the connection and the device
   * waits for the next one. One that refuses a request, or answers with a reply that breaks the protocol, breaks
   * the device (DEVICE_NEEDS_RESET, with the reason logged): after a malformed reply the stream cannot be trusted,
   * so the connection is closed too, and the next DRIVER_OK goes to whatever back-end listens then. While the
   * device is being reset (`breaks` false) there is nothing to break: the connection is only closed.
   */
  private talk(what: string, f: (conn: VhostUserFrontend) => void, breaks = true): boolean {
    const conn = this.conn;
    if (!conn) return false;
    try {
      f(conn);
      return true;
    } catch (e) {
      const msg = (e as Error).message;
      const code = e instanceof VhostUserFrontendError ? e.code : "";
      if (
        breaks &&
        (code === "VHOST_USER_REFUSED" ||
          code === "VHOST_USER_BAD_REPLY" ||
          code === "VHOST_USER_INCOMPATIBLE")
      ) {
        reportError(`${what}: ${msg}`);
        if (code !== "VHOST_USER_REFUSED") this.lost(`${what}: a broken reply`);
        this.transport.device.needsReset(`vhost-user back-end: ${msg}`);
        return false;
      }
      this.lost(`${what}: ${msg}`);
      return false;
    }
  }

  private startRings(): void {
    const dev = this.transport.device;
    if (!dev.running || this.conn === null || this.started.length > 0 || this.quiesced) return;
    const ram = spec.ram;
    const msix = this.transport.msix;
    const queues: number[] = [];
    for (let q = 0; q < dev.numQueues; q++) if (dev.readQueue(q, "enable") === 1) queues.push(q);
    const withProtocol = (this.backendFeatures & (1n << BigInt(VHOST_USER_F_PROTOCOL_FEATURES))) !== 0n;
    const ok = this.talk("starting the rings", (conn) => {
      // The inflight buffer goes first: a back-end takes it only while no ring is started.
      if (conn.hasProtocol(PROTOCOL_F.INFLIGHT_SHMFD)) {
        if (this.inflight === null) {
          let size = 1;
          for (let q = 0; q < dev.numQueues; q++) size = Math.max(size, dev.readQueue(q, "size"));
          this.inflight = conn.getInflightFd(dev.numQueues, size);
        }
        conn.setInflightFd(this.inflight);
      }
      if (this.logging) conn.setLogBase(spec.dirtyLog.fd, spec.dirtyLog.size);
      conn.setFeatures(this.featuresToSet());
      conn.setMemTable(
        [{ guestAddr: 0n, size: BigInt(ram.size), userAddr: ram.hostAddress, mmapOffset: 0n }],
        [ram.fd],
      );
      for (const q of queues) {
        const { usedGpa: used, ...addrs } = this.ringAddresses(q);
        // The next available entry to serve: the first one not yet in the used ring (0 on a fresh ring).
        const base = used + 4 <= this.mem.size ? this.mem.readU16(used + 2) : 0;
        const vector = dev.readQueue(q, "msix_vector");
        const callFd = !msix.enabled
          ? (spec.relays[q] as number)
          : vector === VIRTIO_MSI_NO_VECTOR
            ? -1
            : (spec.irq.pool[vector]?.fd ?? -1);
        conn.startRing(
          q,
          {
            num: dev.readQueue(q, "size"),
            base,
            ...addrs,
            kickFd: spec.kicks[q] as number,
            callFd,
          },
          withProtocol,
        );
      }
      conn.sync();
    });
    if (ok) {
      this.started = queues;
      this.cRingStarts.add(queues.length);
      return;
    }
    // Refused part way: rings the back-end did start are stopped again, so the next DRIVER_OK starts clean.
    const conn = this.conn;
    if (conn === null) return;
    for (const q of queues) {
      try {
        conn.stopRing(q);
      } catch (e) {
        this.lost(`stopping vring ${q} after a refusal: ${(e as Error).message}`);
        return;
      }
    }
  }

  /** SET_FEATURES's value: the back-end's share of what the guest negotiated, and LOG_ALL while logging. */
  private featuresToSet(): bigint {
    const ack = backendAck(this.transport.device.negotiatedFeatures, this.backendFeatures);
    return this.logging ? ack | (1n << BigInt(VHOST_F_LOG_ALL)) : ack;
  }

  /**
   * Turns the started rings' dirty logging on or off (vhost-user.rst, "Migration": SET_FEATURES with or without
   * VHOST_F_LOG_ALL and SET_VRING_ADDR with or without VHOST_VRING_F_LOG; the log itself first, SET_LOG_BASE).
   */
  private applyLogging(conn: VhostUserFrontend): void {
    if (this.logging) conn.setLogBase(spec.dirtyLog.fd, spec.dirtyLog.size);
    conn.setFeatures(this.featuresToSet());
    for (const q of this.started) {
      const { usedGpa: _, ...addrs } = this.ringAddresses(q);
      conn.setRingAddr(q, addrs);
    }
    conn.sync();
  }

  /**
   * Ring q's parts as SET_VRING_ADDR names them (front-end user addresses: guest RAM is one region at guest
   * address 0), the used ring's guest address as its log address while logging, and that guest address itself.
   */
  private ringAddresses(
    q: number,
  ): Pick<FrontendRing, "desc" | "avail" | "used" | "logUsed"> & { usedGpa: number } {
    const dev = this.transport.device;
    const addr = (lo: "desc_lo" | "driver_lo" | "device_lo", hi: "desc_hi" | "driver_hi" | "device_hi") =>
      dev.readQueue(q, hi) * 2 ** 32 + dev.readQueue(q, lo);
    const user = (gpa: number) => spec.ram.hostAddress + BigInt(gpa);
    const usedGpa = addr("device_lo", "device_hi");
    return {
      desc: user(addr("desc_lo", "desc_hi")),
      avail: user(addr("driver_lo", "driver_hi")),
      used: user(usedGpa),
      ...(this.logging ? { logUsed: BigInt(usedGpa) } : {}),
      usedGpa,
    };
  }

  /**
   * A migration's switch-over: the rings are stopped, and the connection is closed so that the destination's
   * vireo, which connects to the back-end at the same socket, is served (a back-end serves one front-end at a
   * time). Should the migration fail, the quiesce's end connects again.
   */
  private handOff(): void {
    const conn = this.conn;
    if (!conn) return;
    conn.close();
    this.conn = null;
    this.started = [];
    Atomics.store(this.words, FRONTEND_WORDS.connected, 0);
    say(`connection to ${spec.socket} closed for the migration's switch-over`);
  }

  /**
   * Quiesced: every started ring stops (GET_VRING_BASE, which a back-end answers once it has finished the requests
   * it took: vhost-user.rst, "stop ring upon receiving VHOST_USER_GET_VRING_BASE"), so guest RAM and the used rings
   * hold everything it did and it writes no more. The inflight buffer stays: the device has not been reset. The
   * rings start again from the used indices when the quiesce ends; a restore elsewhere starts them the same way.
   * A back-end that does not answer loses its connection (and is asked again when it is back).
   */
  private suspendRings(what = "stopping the rings for a snapshot"): void {
    const rings = this.started;
    this.started = [];
    if (rings.length === 0) return;
    this.talk(
      what,
      (conn) => {
        for (const q of rings) conn.stopRing(q);
      },
      false,
    );
  }

  /** The device is reset: the rings stop, and the requests the inflight buffer holds are the driver's no more. */
  private stopRings(): void {
    this.dropInflight();
    this.suspendRings("stopping the rings");
  }
}

function main(): void {
  const plane = new FrontendPlane();
  flushMetricNames();
  post({ type: "io-ready", name: spec.name });
  const nRelay = spec.relays.length;
  // [stop, wake, connection, relay 0..n-1]
  const pollfds = new Int32Array(3 * (3 + nRelay));
  const set = (slot: number, fd: number) => {
    pollfds[3 * slot] = fd;
    pollfds[3 * slot + 1] = POLLIN;
  };
  set(0, data.stopFd);
  set(1, spec.wake);
  for (const [q, fd] of spec.relays.entries()) set(3 + q, fd);
  // Whatever the vCPUs asked before this thread ran (DRIVER_OK, a reset); an error here is reported like one in
  // the loop, not the end of the thread.
  try {
    plane.onWake();
  } catch (e) {
    reportError((e as Error).message);
  }
  for (;;) {
    set(2, plane.connFd); // poll ignores -1
    for (let i = 0; i < pollfds.length; i += 3) pollfds[i + 2] = 0;
    native().poll(pollfds, plane.timeoutMs());
    if (pollfds[2] !== 0) break;
    try {
      if (pollfds[5] !== 0) {
        takeEventFd(spec.wake);
        plane.onWake();
      }
      if (pollfds[8] !== 0) plane.onConnEvent();
      for (let q = 0; q < nRelay; q++) if (pollfds[3 * (3 + q) + 2] !== 0) plane.onRelay(q);
      plane.onTimer();
    } catch (e) {
      reportError((e as Error).message);
    }
    flushMetricNames();
  }
  plane.close();
  flushMetricNames();
}

try {
  main();
  post({ type: "io-stopped", name: spec.name });
} catch (e) {
  flushMetricNames();
  post({ type: "io-stopped", name: spec.name, message: (e as Error).message });
}
