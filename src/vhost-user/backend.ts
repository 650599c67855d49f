/**
 * A vhost-user back-end's state machine for one connection (QEMU docs/interop/vhost-user.rst): feature and
 * protocol-feature negotiation, the memory table, and the rings, driving the same VirtioDevice and device model
 * (src/devices/virtio) that a vCPU thread or a data-plane thread runs. The device is driven as a driver would
 * drive it (features, FEATURES_OK, queue configuration, DRIVER_OK), from what the front-end says.
 *
 * Requests are handled one at a time (`handle`). A request the back-end refuses (a value out of range, memory
 * that does not fit, a ring outside the regions) is logged and answered with a non-zero u64 when the front-end
 * asked for a reply (REPLY_ACK); otherwise `handle` throws and the connection is closed, since the front-end has
 * no other way to learn it failed ("If back-end detects some error ... it may also close the connection").
 *
 * Split and packed rings (virtio 1.2, 2.7 and 2.8). A packed ring's base is its next available slot in bits 0-14 and
 * the driver's wrap counter in bit 15, as QEMU and DPDK send it (and, as Linux's vhost answers GET_VRING_BASE, the
 * next used slot and the device's wrap counter in bits 16-30 and 31). A back-end that tracks requests in flight
 * (INFLIGHT_SHMFD: blk) offers split rings only: its inflight buffer is in the split layout.
 */
import { readlinkSync } from "node:fs";
import { hasFeature, VIRTIO_F, VIRTIO_STATUS } from "../devices/virtio/constants.ts";
import { modelFeatures, VirtioDevice, type VirtioDeviceModel } from "../devices/virtio/device.ts";
import { PackedQueue, packedAreaSizes, SplitQueue, splitAreaSizes } from "../devices/virtio/queue/index.ts";
import type { Defer, NotifyBudget } from "../devices/virtio/work-budget.ts";
import { native, signalEventFd } from "../native.ts";
import { configReply, readModelConfig, setConfig } from "./config.ts";
import { VHOST_F_LOG_ALL, VHOST_VRING_F_LOG, VhostUserDirtyLog } from "./dirty-log.ts";
import { decodeInflight, InflightRegion, InflightTracker, inflightPayload } from "./inflight.ts";
import { checkRegions, type MemRegion, VhostUserMemory } from "./memory.ts";
import {
  type Body,
  encodeReply,
  PROTOCOL_F,
  type RawMemRegion,
  REQ,
  requestName,
  statePayload,
  u64Payload,
  VHOST_USER_F_PROTOCOL_FEATURES,
  type VhostUserMessage,
  VhostUserProtocolError,
  VhostUserRequestError,
  VRING_INDEX_MASK,
  VRING_NOFD_MASK,
} from "./protocol.ts";

const bit = (b: number) => 1n << BigInt(b);

/** A checked region as the protocol describes it (to check a table with one more). */
function raw(r: MemRegion): RawMemRegion {
  return {
    guestAddr: BigInt(r.gpa),
    size: BigInt(r.size),
    userAddr: BigInt(r.userAddr),
    mmapOffset: BigInt(r.mmapOffset),
  };
}

/**
 * Protocol features always offered: REPLY_ACK (every request can be acknowledged) and LOG_SHMFD (the dirty log of
 * a live migration: dirty-log.ts; every write this back-end makes to guest memory goes through a GuestMemory write
 * method or is a buffer of a chain it answers, which the queue layer marks).
 */
export const OFFERED_PROTOCOL_FEATURES =
  bit(PROTOCOL_F.REPLY_ACK) | bit(PROTOCOL_F.LOG_SHMFD) | bit(PROTOCOL_F.CONFIGURE_MEM_SLOTS);

/**
 * GET_MAX_MEM_SLOTS's answer: regions a table may hold when ADD_MEM_REG builds it (QEMU's own limit is 509, its
 * default 32; all of them must still lie within the 4 GiB this back-end maps, memory.ts).
 */
export const MAX_MEM_SLOTS = 32;

/** Protocol extensions a back-end may offer besides REPLY_ACK. */
export interface ProtocolExtensions {
  /** PROTOCOL_F_CONFIG: GET_CONFIG / SET_CONFIG on the device's configuration space (config.ts). */
  config?: boolean;
  /** PROTOCOL_F_MQ: GET_QUEUE_NUM answers the device's queue count (a net device's in queue pairs). */
  mq?: boolean;
  /** PROTOCOL_F_INFLIGHT_SHMFD: GET/SET_INFLIGHT_FD and inflight tracking of split rings (inflight.ts). */
  inflight?: boolean;
  /**
   * PROTOCOL_F_RARP (net): SEND_RARP asks the back-end to "broadcast a fake RARP" from the guest's MAC (the
   * payload's first 6 bytes) after a migration, so the network learns where the guest now is. Called with the MAC.
   */
  rarp?: (mac: Uint8Array) => void;
}

/** Transport features the device core offers that this back-end does not serve yet. */
const NOT_OFFERED = bit(VIRTIO_F.RING_RESET);

/** The virtio-level feature bits only (what the device sees): vhost-user's own bits 30 and 26 (LOG_ALL) off. */
const VHOST_ONLY_BITS = bit(VHOST_USER_F_PROTOCOL_FEATURES) | bit(VHOST_F_LOG_ALL);

export interface VhostUserBackendOptions {
  /** A fresh device model (the device is rebuilt over the same state for each memory table). */
  model: () => VirtioDeviceModel;
  /** Errors and warnings, one line each. */
  log: (message: string) => void;
  /** Where the device leaves work for later (a spent work budget); the connection's loop runs it. */
  defer: Defer;
  budget?: NotifyBudget;
  /** Closes fds the back-end received (default: native close). */
  closeFd?: (fd: number) => void;
  /** Protocol features offered besides REPLY_ACK. */
  extensions?: ProtocolExtensions;
}

interface Ring {
  num: number;
  addr: { desc: bigint; used: bigint; avail: bigint } | null;
  /** Guest addresses of the ring's parts while it is started. */
  areas: { desc: number; avail: number; used: number } | null;
  base: number;
  kick: number;
  call: number;
  err: number;
  enabled: boolean;
  started: boolean;
  /** A kick came while the ring was disabled: serve it when enabled. */
  pendingKick: boolean;
  /** VHOST_VRING_F_LOG: the guest address at which the used ring's writes are logged, or null. */
  logUsed: number | null;
}

/** virtio 1.2, 5: device ID 1 is the network card. */
const VIRTIO_NET_DEVICE_TYPE = 1;

export class VhostUserBackend {
  readonly numQueues: number;
  /** GET_QUEUE_NUM's answer (PROTOCOL_F_MQ). */
  readonly queueNum: number;
  readonly maxQueueSize: number;
  /** Virtio features offered in GET_FEATURES (with VHOST_USER_F_PROTOCOL_FEATURES). */
  readonly offeredFeatures: bigint;
  readonly offeredProtocolFeatures: bigint;
  private acked: bigint | null = null;
  private protocolFeatures = 0n;
  private memory: VhostUserMemory | null = null;
  /**
   * The memory table's regions with the fds they were mapped from, kept open while they are in the table:
   * ADD_MEM_REG and REM_MEM_REG change one region, and the whole table is mapped again from these.
   */
  private table: Array<{ region: MemRegion; fd: number }> = [];
  private device: VirtioDevice | null = null;
  private polled = false;
  private readonly state: SharedArrayBuffer;
  private readonly rings: Ring[];
  private readonly opts: VhostUserBackendOptions;
  private readonly closeFd: (fd: number) => void;
  private reportedFailure = false;
  /** A model object for the configuration space before any memory table (GET_CONFIG comes first). */
  private readonly probe: VirtioDeviceModel;
  private readonly inflight: InflightTracker | null;
  /** SET_LOG_BASE's log, marked while VHOST_F_LOG_ALL is negotiated. */
  private dirtyLog: VhostUserDirtyLog | null = null;
  /** Fds to send with the reply `handle` just returned (GET_INFLIGHT_FD); the caller takes and closes them. */
  private replyFds: number[] = [];
  /** Requests handled, refused (NACK or close). */
  readonly stats = {
    requests: 0,
    refused: 0,
    kicks: 0,
    calls: 0,
    rarps: 0,
    ringStarts: 0,
    packedRingStarts: 0,
  };

  constructor(opts: VhostUserBackendOptions) {
    this.opts = opts;
    this.closeFd = opts.closeFd ?? ((fd) => native().close(fd));
    const probe = opts.model();
    this.probe = probe;
    const ext = opts.extensions ?? {};
    this.offeredProtocolFeatures =
      OFFERED_PROTOCOL_FEATURES |
      (ext.config ? bit(PROTOCOL_F.CONFIG) : 0n) |
      (ext.mq ? bit(PROTOCOL_F.MQ) : 0n) |
      (ext.inflight ? bit(PROTOCOL_F.INFLIGHT_SHMFD) : 0n) |
      (ext.rarp ? bit(PROTOCOL_F.RARP) : 0n);
    this.inflight = ext.inflight
      ? new InflightTracker(probe.numQueues, (q) => {
          // The used ring's idx as published in guest memory ("Set used_idx to the idx value of used ring").
          const used = this.rings[q]?.areas?.used;
          return used !== undefined && this.memory ? this.memory.guest.readU16(used + 2) : 0;
        })
      : null;
    this.numQueues = probe.numQueues;
    // A net device's queues come in pairs, and its front-ends (QEMU's vhost-user netdev, DPDK's virtio_user) read
    // GET_QUEUE_NUM as queue pairs (5.1.2: receiveq1, transmitq1, ...); any other device's count is its queues.
    this.queueNum = probe.type === VIRTIO_NET_DEVICE_TYPE ? Math.floor(probe.numQueues / 2) : probe.numQueues;
    this.maxQueueSize = probe.maxQueueSize;
    // The inflight buffer's layout here is the split one: with it, packed rings are not offered.
    const notOffered = NOT_OFFERED | (ext.inflight ? bit(VIRTIO_F.RING_PACKED) : 0n);
    this.offeredFeatures =
      (modelFeatures(probe) & ~notOffered) | bit(VHOST_USER_F_PROTOCOL_FEATURES) | bit(VHOST_F_LOG_ALL);
    this.state = VirtioDevice.createState({ numQueues: probe.numQueues, stateBytes: probe.stateBytes });
    this.rings = Array.from({ length: probe.numQueues }, () => ({
      num: 0,
      addr: null,
      areas: null,
      base: 0,
      kick: -1,
      call: -1,
      err: -1,
      enabled: false,
      started: false,
      pendingKick: false,
      logUsed: null,
    }));
  }

  /** Fds to send with the last reply (the caller sends, then closes them). */
  takeReplyFds(): number[] {
    const fds = this.replyFds;
    this.replyFds = [];
    return fds;
  }

  /** The started rings' kick fds, for the connection's poll loop. */
  kickFds(): Array<{ q: number; fd: number }> {
    const out: Array<{ q: number; fd: number }> = [];
    this.rings.forEach((r, q) => {
      if (r.started && r.kick >= 0) out.push({ q, fd: r.kick });
    });
    return out;
  }

  /**
   * Serves every started, enabled ring as if it had been kicked (for a loop that polls the rings while traffic
   * flows instead of sleeping until the next kick). Each ring gets one slice within the device's work budget.
   */
  pollRings(): void {
    const dev = this.device;
    if (dev === null) return;
    for (let q = 0; q < this.rings.length; q++) {
      const r = this.rings[q] as Ring;
      if (r.started && r.enabled) dev.notify(q);
    }
    this.checkFailed();
  }

  /**
   * Polled mode (VirtioDevice.setPolled): while the connection's loop polls the rings, the driver is asked not to
   * kick. Kept across memory tables (which rebuild the device). After turning it off, pollRings() once more.
   */
  setPolled(on: boolean): void {
    this.polled = on;
    this.device?.setPolled(on);
  }

  /**
   * A number that changes whenever a started ring takes or returns a buffer (the sum of the rings' available and
   * used indices), so a loop can tell whether a turn moved anything.
   */
  ringProgress(): number {
    const dev = this.device;
    if (dev === null) return 0;
    let sum = 0;
    for (let q = 0; q < this.rings.length; q++) {
      if (!(this.rings[q] as Ring).started) continue;
      const w = dev.queueStateWords(q);
      sum += (w[0] as number) + (w[1] as number);
    }
    return sum;
  }

  /** The ring's kick fd fired: serve it (once enabled). */
  kick(q: number): void {
    const r = this.rings[q];
    if (!r?.started) return;
    this.stats.kicks++;
    if (!r.enabled) {
      r.pendingKick = true;
      return;
    }
    this.device?.notify(q);
    this.checkFailed();
  }

  /**
   * Handles one request; returns the reply to send, or null. Throws (VhostUserRequestError or
   * VhostUserProtocolError) when the connection must close. Takes ownership of the message's fds.
   */
  handle(msg: VhostUserMessage): Uint8Array | null {
    this.stats.requests++;
    const name = requestName(msg.request);
    const ack = msg.needReply && (this.protocolFeatures & bit(PROTOCOL_F.REPLY_ACK)) !== 0n;
    let reply: Uint8Array | null;
    try {
      reply = this.dispatch(msg);
    } catch (e) {
      for (const fd of msg.fds) this.closeQuietly(fd);
      for (const fd of this.takeReplyFds()) this.closeQuietly(fd);
      this.stats.refused++;
      const why = e instanceof Error ? e.message : String(e);
      // A request with its own reply body cannot be NACKed; neither can one the front-end expects no answer to.
      if (ack && !HAS_REPLY.has(msg.request) && !(e instanceof VhostUserProtocolError)) {
        this.opts.log(`vhost-user: ${name} refused: ${why}`);
        return encodeReply(msg.request, u64Payload(1n));
      }
      throw e instanceof VhostUserRequestError || e instanceof VhostUserProtocolError
        ? e
        : new VhostUserRequestError(`${name}: ${why}`);
    }
    // REPLY_ACK: "The payload should be set to zero on success ... unless the message already has an explicit
    // reply body."
    if (reply === null && ack) return encodeReply(msg.request, u64Payload(0n));
    return reply;
  }

  /** Closes every fd the back-end holds and stops the device (the connection ended). */
  close(): void {
    // Requests with other threads (an I/O pool) end first: they write guest memory.
    this.settleAll();
    for (const r of this.rings) {
      for (const fd of [r.kick, r.call, r.err]) if (fd >= 0) this.closeQuietly(fd);
      r.kick = r.call = r.err = -1;
      r.started = false;
    }
    this.device?.reset();
    this.device = null;
    this.memory = null;
    this.closeTable(this.table);
    this.table = [];
  }

  private closeQuietly(fd: number): void {
    try {
      this.closeFd(fd);
    } catch {
      // already closed: nothing to release
    }
  }

  private ring(index: number): Ring {
    const r = this.rings[index];
    if (r === undefined) {
      throw new VhostUserRequestError(`vring index ${index} is not below ${this.numQueues}`);
    }
    return r;
  }

  private stopped(index: number, what: string): Ring {
    const r = this.ring(index);
    if (r.started) throw new VhostUserRequestError(`${what} on vring ${index} while it is started`);
    return r;
  }

  private dispatch(msg: VhostUserMessage): Uint8Array | null {
    const b = msg.body;
    switch (msg.request) {
      case REQ.GET_FEATURES:
        return encodeReply(msg.request, u64Payload(this.offeredFeatures));
      case REQ.SET_FEATURES:
        this.setFeatures(u64Of(b));
        return null;
      case REQ.GET_PROTOCOL_FEATURES:
        return encodeReply(msg.request, u64Payload(this.offeredProtocolFeatures));
      case REQ.SET_PROTOCOL_FEATURES: {
        const v = u64Of(b);
        const extra = v & ~this.offeredProtocolFeatures;
        if (extra !== 0n)
          throw new VhostUserRequestError(`protocol features 0x${extra.toString(16)} not offered`);
        this.protocolFeatures = v;
        return null;
      }
      case REQ.SET_OWNER:
        // "Issued when a new connection is established": a session start; nothing to do.
        return null;
      case REQ.RESET_OWNER:
        // Deprecated; "recommended that back-ends either ignore this message, or use it to disable all rings".
        for (let q = 0; q < this.numQueues; q++) this.stopRing(q);
        return null;
      case REQ.SET_MEM_TABLE:
        this.setMemTable(b, msg.fds);
        return null;
      case REQ.GET_MAX_MEM_SLOTS:
        this.need(PROTOCOL_F.CONFIGURE_MEM_SLOTS, msg.request);
        return encodeReply(msg.request, u64Payload(BigInt(MAX_MEM_SLOTS)));
      case REQ.ADD_MEM_REG:
        this.need(PROTOCOL_F.CONFIGURE_MEM_SLOTS, msg.request);
        this.addMemRegion(b, msg.fds);
        return null;
      case REQ.REM_MEM_REG:
        this.need(PROTOCOL_F.CONFIGURE_MEM_SLOTS, msg.request);
        this.removeMemRegion(b, msg.fds);
        return null;
      case REQ.SET_VRING_NUM: {
        const s = stateOf(b);
        const r = this.stopped(s.index, "SET_VRING_NUM");
        // The device offers up to maxQueueSize; 2.7.10.1: a split ring's Queue Size is a power of 2, a packed
        // ring's need not be (2.8.10.1). Checked again when the ring starts (the features may change between).
        if (s.num < 1 || s.num > this.maxQueueSize || (!this.packed() && (s.num & (s.num - 1)) !== 0)) {
          throw new VhostUserRequestError(
            `vring ${s.index}: size ${s.num} is not ${this.packed() ? "" : "a power of 2 "}from 1 to ${this.maxQueueSize}`,
          );
        }
        r.num = s.num;
        return null;
      }
      case REQ.SET_VRING_ADDR: {
        if (b.kind !== "addr") throw new Error("unreachable");
        const r = this.ring(b.index);
        const same = r.addr && r.addr.desc === b.desc && r.addr.used === b.used && r.addr.avail === b.avail;
        // While a ring runs the front-end may resend its addresses (to switch logging); moving it is refused.
        if (r.started && !same) throw new VhostUserRequestError(`vring ${b.index}: moved while started`);
        if ((b.flags & ~VHOST_VRING_F_LOG) !== 0)
          throw new VhostUserRequestError(
            `vring ${b.index}: flags 0x${b.flags.toString(16)} (only LOG is known)`,
          );
        if ((b.flags & VHOST_VRING_F_LOG) !== 0 && b.log > BigInt(Number.MAX_SAFE_INTEGER))
          throw new VhostUserRequestError(
            `vring ${b.index}: log address 0x${b.log.toString(16)} is above 2^53`,
          );
        r.addr = { desc: b.desc, used: b.used, avail: b.avail };
        r.logUsed = (b.flags & VHOST_VRING_F_LOG) !== 0 ? Number(b.log) : null;
        return null;
      }
      case REQ.SET_VRING_BASE: {
        const s = stateOf(b);
        const r = this.stopped(s.index, "SET_VRING_BASE");
        // A split ring's indices are 16-bit free-running counters (2.7.6); a packed ring's base may use all 32
        // bits. Checked against the ring's kind and size when it starts.
        if (!this.packed() && s.num > 0xffff)
          throw new VhostUserRequestError(`vring ${s.index}: base ${s.num} is above 0xffff`);
        r.base = s.num;
        return null;
      }
      case REQ.GET_VRING_BASE: {
        const s = stateOf(b);
        this.ring(s.index);
        // "stop ring upon receiving VHOST_USER_GET_VRING_BASE"; the reply is the next available index to read.
        const base = this.stopRing(s.index);
        return encodeReply(msg.request, statePayload(s.index, base));
      }
      case REQ.SET_VRING_KICK:
      case REQ.SET_VRING_CALL:
      case REQ.SET_VRING_ERR:
        this.setVringFd(msg.request, u64Of(b), msg.fds);
        return null;
      case REQ.SET_VRING_ENABLE: {
        const s = stateOf(b);
        const r = this.ring(s.index);
        if (s.num > 1) throw new VhostUserRequestError(`vring ${s.index}: enable ${s.num} is not 0 or 1`);
        r.enabled = s.num === 1;
        if (r.enabled && r.started && r.pendingKick) {
          r.pendingKick = false;
          this.device?.notify(s.index);
          this.checkFailed();
        }
        return null;
      }
      case REQ.GET_QUEUE_NUM:
        this.need(PROTOCOL_F.MQ, msg.request);
        return encodeReply(msg.request, u64Payload(BigInt(this.queueNum)));
      case REQ.GET_CONFIG: {
        this.need(PROTOCOL_F.CONFIG, msg.request);
        if (b.kind !== "config") throw new Error("unreachable");
        const r = configReply(b, (o, d) =>
          this.device ? this.device.readConfig(o, d) : readModelConfig(this.probe, o, d),
        );
        if (r.error !== null) {
          this.stats.refused++;
          this.opts.log(`vhost-user: GET_CONFIG refused: ${r.error}`);
        }
        return encodeReply(msg.request, r.payload);
      }
      case REQ.SET_CONFIG:
        this.need(PROTOCOL_F.CONFIG, msg.request);
        if (b.kind !== "config") throw new Error("unreachable");
        setConfig(b, this.probe, this.device);
        return null;
      case REQ.SET_LOG_BASE: {
        this.need(PROTOCOL_F.LOG_SHMFD, msg.request);
        if (b.kind !== "log") throw new Error("unreachable");
        const fd = msg.fds[0];
        if (fd === undefined || msg.fds.length !== 1)
          throw new VhostUserRequestError(`SET_LOG_BASE carries ${msg.fds.length} fds, not the log's one`);
        msg.fds.length = 0;
        try {
          this.dirtyLog = VhostUserDirtyLog.map(fd, b.size, b.offset);
        } finally {
          // The mapping keeps the file.
          this.closeQuietly(fd);
        }
        this.applyLog();
        // With LOG_SHMFD the front-end waits for an answer ("Here is a list of the ones that do [require replies]").
        return encodeReply(msg.request, u64Payload(0n));
      }
      case REQ.GET_INFLIGHT_FD: {
        this.need(PROTOCOL_F.INFLIGHT_SHMFD, msg.request);
        if (b.kind !== "raw") throw new Error("unreachable");
        const { fd, description } = InflightRegion.create(decodeInflight(b.bytes), this.numQueues);
        this.replyFds = [fd];
        return encodeReply(msg.request, inflightPayload(description));
      }
      case REQ.SET_INFLIGHT_FD: {
        this.need(PROTOCOL_F.INFLIGHT_SHMFD, msg.request);
        if (b.kind !== "raw" || this.inflight === null) throw new Error("unreachable");
        if (this.rings.some((r) => r.started)) {
          throw new VhostUserRequestError("SET_INFLIGHT_FD while a vring is started");
        }
        const fd = msg.fds[0] as number;
        msg.fds.length = 0;
        try {
          this.inflight.region = InflightRegion.map(fd, decodeInflight(b.bytes), this.numQueues);
        } finally {
          // The mapping keeps the file.
          this.closeQuietly(fd);
        }
        return null;
      }
      case REQ.SEND_RARP: {
        this.need(PROTOCOL_F.RARP, msg.request);
        // "The first 6 bytes of the payload contain the mac address of the guest": the u64's bytes in order.
        const v = u64Of(b);
        const mac = new Uint8Array(6);
        for (let i = 0; i < 6; i++) mac[i] = Number((v >> BigInt(8 * i)) & 0xffn);
        this.stats.rarps++;
        this.opts.extensions?.rarp?.(mac);
        return null;
      }
      default:
        throw new VhostUserRequestError(`${requestName(msg.request)} is not supported by this back-end`);
    }
  }

  /** Requests of a protocol extension are refused unless it was negotiated. */
  private need(feature: number, request: number): void {
    if ((this.protocolFeatures & bit(feature)) === 0n) {
      throw new VhostUserRequestError(
        `${requestName(request)} without its protocol feature (bit ${feature}) negotiated`,
      );
    }
  }

  /** What the front-end's SET_FEATURES said last (virtio and vhost-user bits), or null before it. */
  get ackedFeatures(): bigint | null {
    return this.acked;
  }

  private setFeatures(v: bigint): void {
    const extra = v & ~this.offeredFeatures;
    if (extra !== 0n) throw new VhostUserRequestError(`features 0x${extra.toString(16)} not offered`);
    const device = v & ~VHOST_ONLY_BITS;
    if (
      this.rings.some((r) => r.started) &&
      this.acked !== null &&
      (this.acked & ~VHOST_ONLY_BITS) !== device
    ) {
      throw new VhostUserRequestError("virtio features changed while rings are started");
    }
    this.acked = v;
    this.applyLog();
  }

  /** Logging is on while VHOST_F_LOG_ALL is negotiated and a log is mapped: the guest memory's writes go to it. */
  private applyLog(): void {
    const log = this.dirtyLog;
    const on = log !== null && this.acked !== null && (this.acked & bit(VHOST_F_LOG_ALL)) !== 0n;
    if (log) log.enabled = on;
    const guest = this.memory?.guest;
    if (!guest) return;
    if (log) log.base = guest.base;
    guest.pageLog = on ? log : null;
  }

  private setMemTable(b: Body, fds: number[]): void {
    if (b.kind !== "memory") throw new Error("unreachable");
    const regions = checkRegions(b.regions);
    if (fds.length !== regions.length)
      throw new VhostUserRequestError(`${regions.length} memory regions but ${fds.length} fds`);
    this.installTable(regions.map((region, i) => ({ region, fd: fds[i] as number })));
    fds.length = 0;
  }

  /**
   * ADD_MEM_REG: one more region ("a region of guest memory which the back-end device must map in"), with its fd.
   * The table with it must still be a valid one (no overlap, within the slots and the span).
   */
  private addMemRegion(b: Body, fds: number[]): void {
    if (b.kind !== "region") throw new Error("unreachable");
    const fd = fds[0];
    if (fd === undefined || fds.length !== 1)
      throw new VhostUserRequestError(`ADD_MEM_REG carries ${fds.length} fds, not the region's one`);
    const regions = checkRegions([...this.table.map((t) => raw(t.region)), b.region], MAX_MEM_SLOTS);
    const added = regions[regions.length - 1] as MemRegion;
    this.installTable([...this.table, { region: added, fd }]);
    fds.length = 0;
  }

  /**
   * REM_MEM_REG: the region with this guest address, user address and size goes ("The mmap offset is ignored");
   * an fd sent with it is closed unused ("the back-end MUST close it"). Removing a region a started ring lies in
   * is refused, as SET_MEM_TABLE's moving it is.
   */
  private removeMemRegion(b: Body, fds: number[]): void {
    if (b.kind !== "region") throw new Error("unreachable");
    for (const fd of fds.splice(0)) this.closeQuietly(fd);
    const r = b.region;
    const at = this.table.findIndex(
      (t) =>
        BigInt(t.region.gpa) === r.guestAddr &&
        BigInt(t.region.userAddr) === r.userAddr &&
        BigInt(t.region.size) === r.size,
    );
    if (at < 0) {
      throw new VhostUserRequestError(
        `REM_MEM_REG: no region at guest address 0x${r.guestAddr.toString(16)}, user address 0x${r.userAddr.toString(16)}, size 0x${r.size.toString(16)}`,
      );
    }
    const rest = this.table.filter((_, i) => i !== at);
    if (rest.length > 0) {
      this.installTable(rest);
      return;
    }
    // The last region: no memory at all, which no started ring can live with.
    if (this.rings.some((ring) => ring.started))
      throw new VhostUserRequestError("REM_MEM_REG would remove the memory of started vrings");
    this.settleAll();
    this.closeTable(this.table);
    this.table = [];
    this.memory = null;
    this.device = null;
  }

  private closeTable(entries: ReadonlyArray<{ fd: number }>): void {
    for (const t of entries) this.closeQuietly(t.fd);
  }

  /**
   * Maps a new memory table (its fds kept for later changes) and rebuilds the device over it; the old table's
   * entries that are not in the new one have their fds closed. Nothing changes if it is refused (the caller
   * still owns the new entries' fds then).
   */
  private installTable(entries: Array<{ region: MemRegion; fd: number }>): void {
    const regions = entries.map((t) => t.region);
    const memory = VhostUserMemory.map(
      regions,
      entries.map((t) => t.fd),
    );
    // Requests still with other threads end on the device and memory they were taken with.
    this.settleAll();
    // A started ring keeps its guest addresses: the new table must map its user addresses to the same ones.
    this.rings.forEach((r, q) => {
      if (!r.started || r.areas === null || r.addr === null) return;
      const now = this.translate(memory, r.addr, r.num);
      if (
        now === null ||
        now.desc !== r.areas.desc ||
        now.avail !== r.areas.avail ||
        now.used !== r.areas.used
      ) {
        throw new VhostUserRequestError(`the new memory table moves or drops started vring ${q}`);
      }
    });
    // The mappings keep the files; the fds are kept for the next ADD_MEM_REG or REM_MEM_REG, which maps the
    // table again; those of regions that left the table are closed.
    this.closeTable(this.table.filter((t) => !entries.includes(t)));
    this.table = entries;
    this.memory = memory;
    this.applyLog();
    // The device is rebuilt over the same state with the new memory: started rings go on at their indices.
    this.device = new VirtioDevice({
      state: this.state,
      model: this.inflight ? this.inflight.wrap(this.opts.model()) : this.opts.model(),
      mem: memory.guest,
      interrupts: {
        queue: (vector) => this.interrupt(vector),
        config: () => {},
      },
      log: this.opts.log,
      budget: this.opts.budget,
      defer: this.opts.defer,
    });
    if (this.polled) this.device.setPolled(true);
  }

  private setVringFd(request: number, v: bigint, fds: number[]): void {
    const index = Number(v & BigInt(VRING_INDEX_MASK));
    if (v >> 9n !== 0n) {
      throw new VhostUserRequestError(
        `${requestName(request)}: payload 0x${v.toString(16)} sets bits above 8`,
      );
    }
    const noFd = (v & BigInt(VRING_NOFD_MASK)) !== 0n;
    const r = this.ring(index);
    const fd = noFd ? -1 : (fds[0] as number);
    fds.length = 0;
    // Kicks, calls and errors are eventfds (or pipes): anything else (a file is always readable) is refused.
    if (fd >= 0 && !isEventFdOrPipe(fd)) {
      this.closeQuietly(fd);
      throw new VhostUserRequestError(
        `${requestName(request)}: vring ${index}: the fd is not an eventfd or a pipe`,
      );
    }
    if (request === REQ.SET_VRING_KICK) {
      if (noFd) {
        this.closeQuietly(fd);
        throw new VhostUserRequestError(`vring ${index}: polling (no kick fd) is not supported`);
      }
      if (r.kick >= 0) this.closeQuietly(r.kick);
      r.kick = fd;
      native().setNonBlocking(fd, true);
      // "The back-end must start ring upon receiving a kick"; the kick fd is what a kick arrives on, so the ring
      // starts here and serves whatever is already available.
      if (!r.started) this.startRing(index);
      return;
    }
    if (request === REQ.SET_VRING_CALL) {
      if (r.call >= 0) this.closeQuietly(r.call);
      r.call = fd;
    } else {
      if (r.err >= 0) this.closeQuietly(r.err);
      r.err = fd;
    }
  }

  private startRing(q: number): void {
    const r = this.rings[q] as Ring;
    const mem = this.memory;
    const dev = this.device;
    if (mem === null || dev === null)
      throw new VhostUserRequestError(`vring ${q}: started before SET_MEM_TABLE`);
    if (this.acked === null) throw new VhostUserRequestError(`vring ${q}: started before SET_FEATURES`);
    if (r.num === 0 || r.addr === null) {
      throw new VhostUserRequestError(`vring ${q}: started before SET_VRING_NUM and SET_VRING_ADDR`);
    }
    const areas = this.translate(mem, r.addr, r.num, q);
    if (areas === null) throw new Error("unreachable: translate throws with a ring index");
    const { desc, avail, used } = areas;
    const packed = this.packed();
    const seed = packed ? this.packedSeed(q, r) : null;
    if (!packed && ((r.num & (r.num - 1)) !== 0 || r.base > 0xffff)) {
      throw new VhostUserRequestError(
        `vring ${q}: size ${r.num} or base ${r.base} does not fit a split ring`,
      );
    }
    // SET_VRING_BASE gives the next available entry; a split ring's used idx is whatever the ring says. With an
    // inflight buffer the ring resumes after the requests still in flight, which are resubmitted ("Inflight I/O
    // tracking").
    const usedIdx = packed ? 0 : mem.guest.readU16((used as number) + 2);
    const plan = this.inflight?.start(q, r.num, usedIdx, this.opts.log) ?? null;
    if (plan !== null && plan.lastAvail !== null) {
      if (plan.lastAvail !== r.base || plan.resubmit.length > 0 || plan.settled > 0) {
        this.opts.log(
          `vhost-user: vring ${q}: inflight: ${plan.resubmit.length} requests resubmitted, ${plan.settled} already used; next available index ${plan.lastAvail} (front-end base ${r.base})`,
        );
      }
      r.base = plan.lastAvail;
    }
    this.ensureLive(dev);
    const set = (field: "desc" | "driver" | "device", gpa: number) => {
      dev.writeQueue(q, `${field}_lo`, gpa % 2 ** 32);
      dev.writeQueue(q, `${field}_hi`, Math.floor(gpa / 2 ** 32));
    };
    dev.writeQueue(q, "size", r.num);
    set("desc", desc as number);
    set("driver", avail as number);
    set("device", used as number);
    dev.writeQueue(q, "msix_vector", q);
    dev.writeQueue(q, "enable", 1);
    if (dev.status & VIRTIO_STATUS.DEVICE_NEEDS_RESET) {
      throw new VhostUserRequestError(`vring ${q}: the device refused the ring (see the log)`);
    }
    if (seed) PackedQueue.seedState(dev.queueStateWords(q), r.num, seed.avail, seed.used);
    else SplitQueue.seedState(dev.queueStateWords(q), r.base, usedIdx);
    this.stats.ringStarts++;
    if (packed) this.stats.packedRingStarts++;
    r.started = true;
    r.areas = areas;
    // "If VHOST_USER_F_PROTOCOL_FEATURES has not been negotiated, the ring starts directly in the enabled state."
    r.enabled = r.enabled || !hasFeature(this.acked, VHOST_USER_F_PROTOCOL_FEATURES);
    this.reportedFailure = false;
    if (r.enabled) {
      dev.notify(q);
      this.checkFailed();
    } else {
      r.pendingKick = true;
    }
  }

  /** VIRTIO_F_RING_PACKED was acknowledged: the rings are packed (2.8). */
  private packed(): boolean {
    return this.acked !== null && hasFeature(this.acked, VIRTIO_F.RING_PACKED);
  }

  /**
   * A packed ring's base as positions: the next available slot (bits 0-14) and the driver's wrap counter (bit 15);
   * bits 16-30 and 31 the next used slot and the device's wrap counter if given, else the same as the available
   * ones (nothing in flight).
   */
  private packedSeed(
    q: number,
    r: Ring,
  ): { avail: { slot: number; wrap: number }; used: { slot: number; wrap: number } } {
    const avail = { slot: r.base & 0x7fff, wrap: (r.base >>> 15) & 1 };
    const used = r.base > 0xffff ? { slot: (r.base >>> 16) & 0x7fff, wrap: r.base >>> 31 } : { ...avail };
    if (avail.slot >= r.num || used.slot >= r.num) {
      throw new VhostUserRequestError(
        `vring ${q}: base 0x${r.base.toString(16)} names slot ${Math.max(avail.slot, used.slot)} of a packed ring of ${r.num}`,
      );
    }
    return { avail, used };
  }

  /** A packed ring's base for GET_VRING_BASE, from its positions (the layout packedSeed reads). */
  private static packedBase(words: Int32Array): number {
    const p = PackedQueue.positions(words);
    return (p.avail.slot | (p.avail.wrap << 15) | (p.used.slot << 16) | (p.used.wrap << 31)) >>> 0;
  }

  /**
   * Ring addresses are front-end user addresses: each part of the ring must lie in one region; their guest
   * addresses (a packed ring's driver and device areas stand where a split ring's available and used rings do).
   * With `q`, a part outside the regions is an error naming it; without, null.
   */
  private translate(
    mem: VhostUserMemory,
    addr: NonNullable<Ring["addr"]>,
    num: number,
    q?: number,
  ): { desc: number; avail: number; used: number } | null {
    const packed = this.packed();
    const sizes = packed ? packedAreaSizes(num) : splitAreaSizes(num);
    const parts = [
      [packed ? "descriptor ring" : "descriptor table", mem.userToGuest(addr.desc, sizes.desc), addr.desc],
      [
        packed ? "driver event suppression area" : "available ring",
        mem.userToGuest(addr.avail, "avail" in sizes ? sizes.avail : sizes.driver),
        addr.avail,
      ],
      [
        packed ? "device event suppression area" : "used ring",
        mem.userToGuest(addr.used, "used" in sizes ? sizes.used : sizes.device),
        addr.used,
      ],
    ] as const;
    for (const [what, gpa, ua] of parts) {
      if (gpa !== null) continue;
      if (q === undefined) return null;
      throw new VhostUserRequestError(
        `vring ${q}: ${what} at user address 0x${ua.toString(16)} is outside the memory regions`,
      );
    }
    return { desc: parts[0][1] as number, avail: parts[1][1] as number, used: parts[2][1] as number };
  }

  /** Brings the device to DRIVER_OK with the acknowledged features (a fresh reset if it is not live). */
  private ensureLive(dev: VirtioDevice): void {
    const s = dev.status;
    if (s & VIRTIO_STATUS.DEVICE_NEEDS_RESET) {
      if (this.rings.some((r) => r.started)) {
        throw new VhostUserRequestError("the device failed; stop every ring (GET_VRING_BASE) to reset it");
      }
    } else if (s & VIRTIO_STATUS.DRIVER_OK) {
      return;
    }
    const features = (this.acked as bigint) & ~VHOST_ONLY_BITS;
    dev.writeStatus(0);
    dev.writeStatus(VIRTIO_STATUS.ACKNOWLEDGE | VIRTIO_STATUS.DRIVER);
    for (const sel of [0, 1]) {
      dev.driverFeatureSelect = sel;
      dev.writeDriverFeatures(Number((features >> BigInt(32 * sel)) & 0xffffffffn));
    }
    const ok = VIRTIO_STATUS.ACKNOWLEDGE | VIRTIO_STATUS.DRIVER | VIRTIO_STATUS.FEATURES_OK;
    dev.writeStatus(ok);
    if (!(dev.status & VIRTIO_STATUS.FEATURES_OK)) {
      throw new VhostUserRequestError(`the device refused features 0x${features.toString(16)} (see the log)`);
    }
    dev.writeStatus(ok | VIRTIO_STATUS.DRIVER_OK);
  }

  /** Stops ring q; returns the next available index it would have read (its base for a later start). */
  private stopRing(q: number): number {
    const r = this.rings[q] as Ring;
    if (r.started && this.device) {
      this.finishInProgress(q, r.num);
      const words = this.device.queueStateWords(q);
      const packed = this.packed();
      r.base = packed ? VhostUserBackend.packedBase(words) : SplitQueue.indices(words).lastAvail;
      this.device.resetQueue(q);
      // The used ring's writes are not marked one by one; its last state is, once the ring has stopped: a
      // migration's final pass, which comes after the stop, sends it. A packed ring's used descriptors are
      // written into its descriptor ring, so that is marked (at its guest address) instead.
      const log = this.dirtyLog;
      if (log?.enabled && r.logUsed !== null) {
        if (packed && r.areas) log.markGuest(r.areas.desc, packedAreaSizes(r.num).desc);
        else log.markGuest(r.logUsed, splitAreaSizes(r.num).used);
      }
    }
    this.inflight?.stop(q);
    r.started = false;
    r.areas = null;
    r.pendingKick = false;
    if (r.kick >= 0) this.closeQuietly(r.kick);
    r.kick = -1;
    // With every ring stopped the device goes back to reset, so a failed device can start again.
    if (!this.rings.some((x) => x.started)) this.device?.reset();
    return r.base;
  }

  /**
   * The base GET_VRING_BASE returns counts every request taken from the ring, so one still in progress (a large
   * blk request moves in slices, or requests out with an I/O pool's threads) is served to its end before the
   * ring stops: otherwise a front-end without an inflight buffer would never see it used (and a pool's thread
   * could write guest memory after the front-end took the ring back). Requests with other threads are waited
   * for; a request is at most a ring of size_max segments, so num + 16 slices finish any sliced one; past that
   * (a front-end that keeps adding work meanwhile) it is dropped, and said so.
   */
  private finishInProgress(q: number, num: number): void {
    const dev = this.device;
    if (dev === null) return;
    if (dev.finishUnfinished(q, num + 16)) {
      dev.settleDetached(q);
      if (dev.hasUnfinished(q)) {
        this.opts.log(`vhost-user: vring ${q}: a request still in progress when the ring stopped is dropped`);
      }
    }
  }

  /** Waits for every request out with other threads (an I/O pool), on every ring. */
  private settleAll(): void {
    const dev = this.device;
    if (dev === null) return;
    for (let q = 0; q < this.numQueues; q++) dev.settleDetached(q);
  }

  private interrupt(vector: number): void {
    const fd = this.rings[vector]?.call ?? -1;
    if (fd < 0) return;
    this.stats.calls++;
    signalEventFd(fd);
  }

  /** After serving: a device that needs reset tells the front-end through the rings' error fds, once. */
  private checkFailed(): void {
    const dev = this.device;
    if (!dev || this.reportedFailure || !(dev.status & VIRTIO_STATUS.DEVICE_NEEDS_RESET)) return;
    this.reportedFailure = true;
    for (const r of this.rings) if (r.started && r.err >= 0) signalEventFd(r.err);
  }

  /** Runs after deferred slices too (the loop calls it). */
  afterWork(): void {
    this.checkFailed();
  }
}

/** Requests whose reply carries a body (so REPLY_ACK adds nothing and a refusal closes the connection). */
const HAS_REPLY = new Set<number>([
  REQ.GET_FEATURES,
  REQ.GET_PROTOCOL_FEATURES,
  REQ.GET_VRING_BASE,
  REQ.GET_QUEUE_NUM,
  REQ.GET_CONFIG,
  REQ.GET_MAX_MEM_SLOTS,
  REQ.GET_STATUS,
  REQ.GET_INFLIGHT_FD,
  REQ.SET_LOG_BASE,
]);

function isEventFdOrPipe(fd: number): boolean {
  try {
    const target = readlinkSync(`/proc/self/fd/${fd}`);
    return target === "anon_inode:[eventfd]" || target.startsWith("pipe:");
  } catch {
    return false;
  }
}

function u64Of(b: Body): bigint {
  if (b.kind !== "u64") throw new Error("unreachable: the parser fixed the layout");
  return b.value;
}

function stateOf(b: Body): { index: number; num: number } {
  if (b.kind !== "state") throw new Error("unreachable: the parser fixed the layout");
  return b;
}
