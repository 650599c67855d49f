/**
 * The front-end side of a vhost-user connection (QEMU docs/interop/vhost-user.rst): vireo as the VMM whose
 * guest's rings another process serves. This is the protocol only, synchronous and bounded: each request is one
 * sendmsg(2) with its fds (SCM_RIGHTS), and a request that has a reply waits for it with poll(2) up to a timeout.
 * The caller decides where it runs (vireo's vhost-user thread, src/vhost-user/frontend-thread.ts) and what guest
 * memory, kick and call fds it hands over.
 *
 * The back-end is another program and may be hostile or gone: every reply is checked (reply flag, request type,
 * payload size) before it is used, and anything wrong — a refusal (a non-zero REPLY_ACK), a reply that does not
 * fit, the end of the stream, no reply in time — is a VhostUserFrontendError with a stable code. After one the
 * connection cannot be trusted and the caller closes it (a refusal leaves the stream in step: it may go on).
 */
import { fstatSync } from "node:fs";
import { VireoError } from "../errors.ts";
import { EAGAIN, EINTR, isErrno, native, POLLIN } from "../native.ts";
import { VHOST_VRING_F_LOG } from "./dirty-log.ts";
import {
  addrPayload,
  decodeHeader,
  encodeRequest,
  HEADER_SIZE,
  memoryPayload,
  PROTOCOL_F,
  type RawMemRegion,
  REQ,
  requestName,
  statePayload,
  u64Payload,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VHOST_USER_REPLY_MASK,
  VHOST_USER_VERSION,
  VHOST_USER_VERSION_MASK,
  VRING_NOFD_MASK,
} from "./protocol.ts";

export type VhostUserFrontendErrorCode =
  /** No back-end at the socket path (missing, not a socket, nobody listening). */
  | "VHOST_USER_CONNECT"
  /** The back-end closed the connection (or the socket failed). */
  | "VHOST_USER_DISCONNECTED"
  /** No reply within the timeout. */
  | "VHOST_USER_TIMEOUT"
  /** The back-end answered a request with a non-zero REPLY_ACK. */
  | "VHOST_USER_REFUSED"
  /** A reply that breaks the protocol (flags, type, size). */
  | "VHOST_USER_BAD_REPLY"
  /** The back-end lacks something vireo needs (VERSION_1, a feature the guest already uses). */
  | "VHOST_USER_INCOMPATIBLE";

export class VhostUserFrontendError extends VireoError {
  declare readonly code: VhostUserFrontendErrorCode;
  constructor(code: VhostUserFrontendErrorCode, message: string) {
    super(code, message);
  }
}

const bit = (b: number) => 1n << BigInt(b);

/**
 * Protocol features this front-end knows: REPLY_ACK (refusals reach us), CONFIG (GET_CONFIG: a device's
 * configuration space read from the back-end), INFLIGHT_SHMFD (GET/SET_INFLIGHT_FD), LOG_SHMFD (a migration's
 * dirty log) and RARP (SEND_RARP, a net device's announcement after a move). A device asks for the ones it uses
 * (negotiate's `wanted`).
 */
export const FRONTEND_PROTOCOL_FEATURES =
  bit(PROTOCOL_F.REPLY_ACK) |
  bit(PROTOCOL_F.CONFIG) |
  bit(PROTOCOL_F.INFLIGHT_SHMFD) |
  bit(PROTOCOL_F.LOG_SHMFD) |
  bit(PROTOCOL_F.RARP);

/** What a device asks for when it names nothing: REPLY_ACK only. */
export const DEFAULT_PROTOCOL_FEATURES = bit(PROTOCOL_F.REPLY_ACK);

/** Largest reply payload accepted: a config reply (12 + 256 bytes) is the largest this front-end asks for. */
const MAX_REPLY = 256 + 12;

/** "Inflight description": mmap_size u64, mmap_offset u64, num_queues u16, queue_size u16 (padded to 24). */
const INFLIGHT_DESCRIPTION_BYTES = 24;
/** The most an inflight buffer may take (a QueueRegionSplit of 32768 entries is ~512 KiB; 64 queues of it). */
const MAX_INFLIGHT_BYTES = 64n << 20n;

export interface InflightBuffer {
  /** The shared memory the back-end keeps its inflight state in (the front-end keeps it across back-ends). */
  fd: number;
  mmapSize: bigint;
  mmapOffset: bigint;
  numQueues: number;
  queueSize: number;
}

/** Default wait for a reply: long enough for a loaded machine, short enough that a stuck back-end is noticed. */
export const DEFAULT_REPLY_TIMEOUT_MS = 5000;

export interface FrontendRing {
  /** Ring size (queue_size). */
  num: number;
  /** The next available index the back-end reads (split ring: a 16-bit counter). */
  base: number;
  /** Front-end user addresses (as the memory table maps them) of the ring's three parts. */
  desc: bigint;
  avail: bigint;
  used: bigint;
  /** Eventfd the guest's doorbell signals (a KVM ioeventfd). */
  kickFd: number;
  /** Eventfd the back-end signals to interrupt the guest (a KVM irqfd), or -1 for none (polling driver). */
  callFd: number;
  /** VHOST_VRING_F_LOG: the guest address the used ring's writes are logged at (a live migration), if any. */
  logUsed?: bigint;
}

export interface NegotiatedBackend {
  /** GET_FEATURES: the virtio features the back-end offers (with bit 30 if it speaks protocol features). */
  features: bigint;
  /** The protocol features both sides use (0 without VHOST_USER_F_PROTOCOL_FEATURES). */
  protocolFeatures: bigint;
}

export interface FrontendOptions {
  /** How long a reply may take (default DEFAULT_REPLY_TIMEOUT_MS). */
  replyTimeoutMs?: number;
  /** Where the socket came from, for messages. */
  name?: string;
}

export class VhostUserFrontend {
  private readonly n = native();
  private readonly timeoutMs: number;
  private readonly name: string;
  private closedFd = false;
  private protocolFeatures = 0n;
  private readonly pollfd = new Int32Array(3);
  private readonly header = new Uint8Array(HEADER_SIZE);
  /** Requests sent on this connection. */
  requests = 0;

  constructor(
    readonly fd: number,
    opts: FrontendOptions = {},
  ) {
    this.timeoutMs = opts.replyTimeoutMs ?? DEFAULT_REPLY_TIMEOUT_MS;
    this.name = opts.name ?? "vhost-user";
  }

  /**
   * Connects to a back-end listening at `path`. A missing socket, a path that is not one, or nobody listening is
   * a VHOST_USER_CONNECT error naming the path and the reason.
   */
  static connect(path: string, opts: FrontendOptions = {}): VhostUserFrontend {
    let fd: number;
    try {
      fd = native().unixConnect(path);
    } catch (e) {
      const why = isErrno(e)
        ? e.code === "ENOENT"
          ? "no such socket (is the back-end running?)"
          : e.code === "ECONNREFUSED"
            ? "nobody listens on it (is the back-end running?)"
            : e.code === "ENOTSOCK"
              ? "not a socket"
              : `${e.code}`
        : (e as Error).message;
      throw new VhostUserFrontendError("VHOST_USER_CONNECT", `${path}: ${why}`);
    }
    return new VhostUserFrontend(fd, { name: path, ...opts });
  }

  /** Takes over a connection negotiated elsewhere (another thread of this process), with its protocol features. */
  adopt(protocolFeatures: bigint): void {
    this.protocolFeatures = protocolFeatures & FRONTEND_PROTOCOL_FEATURES;
  }

  get closed(): boolean {
    return this.closedFd;
  }

  /** Whether the back-end acknowledges requests (REPLY_ACK negotiated). */
  get replyAck(): boolean {
    return (this.protocolFeatures & bit(PROTOCOL_F.REPLY_ACK)) !== 0n;
  }

  /** Whether a protocol feature is in use on this connection. */
  hasProtocol(feature: number): boolean {
    return (this.protocolFeatures & bit(feature)) !== 0n;
  }

  /**
   * Session start: SET_OWNER, GET_FEATURES and, when the back-end speaks them, the protocol features (`wanted`
   * those the back-end also offers; by default REPLY_ACK only). The back-end must offer VIRTIO_F_VERSION_1
   * (vireo's transport is modern).
   */
  negotiate(wanted: bigint = DEFAULT_PROTOCOL_FEATURES): NegotiatedBackend {
    this.send(REQ.SET_OWNER);
    const features = this.getU64(REQ.GET_FEATURES);
    if ((features & bit(32)) === 0n) {
      throw new VhostUserFrontendError(
        "VHOST_USER_INCOMPATIBLE",
        `${this.name}: the back-end does not offer VIRTIO_F_VERSION_1 (features 0x${features.toString(16)})`,
      );
    }
    let protocol = 0n;
    if (features & bit(VHOST_USER_F_PROTOCOL_FEATURES)) {
      const offered = this.getU64(REQ.GET_PROTOCOL_FEATURES);
      protocol = offered & wanted & FRONTEND_PROTOCOL_FEATURES;
      this.send(REQ.SET_PROTOCOL_FEATURES, u64Payload(protocol));
      this.protocolFeatures = protocol;
    }
    return { features, protocolFeatures: protocol };
  }

  /** SET_FEATURES (the caller includes bit 30 when the back-end offered it). */
  setFeatures(features: bigint): void {
    this.command(REQ.SET_FEATURES, u64Payload(features));
  }

  /** SET_MEM_TABLE: one fd per region, in order. */
  setMemTable(regions: RawMemRegion[], fds: number[]): void {
    this.command(REQ.SET_MEM_TABLE, memoryPayload(regions), fds);
  }

  /**
   * Starts ring q: size, base, addresses, call, kick, and (with protocol features) enable. The call fd goes
   * before the kick fd: a back-end may start serving the ring as soon as it has its kick.
   */
  startRing(q: number, r: FrontendRing, enable: boolean): void {
    this.command(REQ.SET_VRING_NUM, statePayload(q, r.num));
    this.command(REQ.SET_VRING_BASE, statePayload(q, r.base));
    this.setRingAddr(q, r);
    if (r.callFd >= 0) this.command(REQ.SET_VRING_CALL, u64Payload(BigInt(q)), [r.callFd]);
    else this.command(REQ.SET_VRING_CALL, u64Payload(BigInt(q | VRING_NOFD_MASK)));
    this.command(REQ.SET_VRING_KICK, u64Payload(BigInt(q)), [r.kickFd]);
    if (enable) this.command(REQ.SET_VRING_ENABLE, statePayload(q, 1));
  }

  /**
   * SET_VRING_ADDR: the ring's addresses, with VHOST_VRING_F_LOG and the used ring's log address while a
   * migration logs (vhost-user.rst, "Migration": sent again to a started ring to turn its logging on or off).
   */
  setRingAddr(q: number, r: Pick<FrontendRing, "desc" | "avail" | "used" | "logUsed">): void {
    const log = r.logUsed === undefined ? {} : { flags: VHOST_VRING_F_LOG, log: r.logUsed };
    this.command(
      REQ.SET_VRING_ADDR,
      addrPayload({ index: q, desc: r.desc, used: r.used, avail: r.avail, ...log }),
    );
  }

  /**
   * SET_LOG_BASE (PROTOCOL_F_LOG_SHMFD): the dirty log, `size` bytes from the start of `fd`, which the back-end
   * marks while VHOST_F_LOG_ALL is negotiated. The back-end answers it (with a u64 or, as DPDK does, nothing).
   */
  setLogBase(fd: number, size: number): void {
    const p = new Uint8Array(16);
    const v = new DataView(p.buffer);
    v.setBigUint64(0, BigInt(size), true);
    v.setBigUint64(8, 0n, true);
    this.send(REQ.SET_LOG_BASE, p, [fd]);
    this.receive(REQ.SET_LOG_BASE, [0, 8]);
  }

  /**
   * SEND_RARP (PROTOCOL_F_RARP): "broadcast a fake RARP to notify the migration is terminated"; the payload's
   * first 6 bytes are the guest's MAC.
   */
  sendRarp(mac: Uint8Array): void {
    if (mac.length !== 6) throw new RangeError(`a MAC has 6 bytes, not ${mac.length}`);
    const p = new Uint8Array(8);
    p.set(mac);
    this.command(REQ.SEND_RARP, p);
  }

  /**
   * GET_CONFIG (PROTOCOL_F_CONFIG): `size` bytes of the device's configuration space from offset 0. "vhost-user
   * back-end uses zero length of payload to indicate an error": a refusal; a reply that echoes another offset,
   * size or flags breaks the protocol.
   */
  getConfig(size: number): Uint8Array {
    const req = new Uint8Array(12 + size);
    const v = new DataView(req.buffer);
    v.setUint32(4, size, true);
    this.send(REQ.GET_CONFIG, req);
    const p = this.receive(REQ.GET_CONFIG, [0, 12 + size]);
    if (p.length === 0) {
      throw new VhostUserFrontendError(
        "VHOST_USER_REFUSED",
        `${this.name}: the back-end refused GET_CONFIG of ${size} bytes (an empty reply; see its log)`,
      );
    }
    if (p.length !== 12 + size) {
      throw new VhostUserFrontendError(
        "VHOST_USER_BAD_REPLY",
        `${this.name}: reply to GET_CONFIG has ${p.length} payload bytes, expected ${12 + size} (or 0 to refuse)`,
      );
    }
    const r = new DataView(p.buffer, p.byteOffset, 12);
    const [offset, got, flags] = [r.getUint32(0, true), r.getUint32(4, true), r.getUint32(8, true)];
    if (offset !== 0 || got !== size || flags !== 0) {
      throw new VhostUserFrontendError(
        "VHOST_USER_BAD_REPLY",
        `${this.name}: GET_CONFIG for offset 0, size ${size}, flags 0 answered offset ${offset}, size ${got}, flags ${flags}`,
      );
    }
    return p.slice(12);
  }

  /**
   * GET_INFLIGHT_FD (PROTOCOL_F_INFLIGHT_SHMFD): the back-end makes the shared buffer it tracks requests in, for
   * `numQueues` rings of up to `queueSize`; the front-end keeps the fd and hands it to every later back-end
   * (SET_INFLIGHT_FD). The reply must carry exactly one fd, a regular file (a memfd) that holds mmap_offset +
   * mmap_size bytes, described for the queues asked for.
   */
  getInflightFd(numQueues: number, queueSize: number): InflightBuffer {
    const req = new Uint8Array(INFLIGHT_DESCRIPTION_BYTES);
    const v = new DataView(req.buffer);
    v.setUint16(16, numQueues, true);
    v.setUint16(18, queueSize, true);
    this.send(REQ.GET_INFLIGHT_FD, req);
    const fds: number[] = [];
    let p: Uint8Array;
    try {
      p = this.receive(REQ.GET_INFLIGHT_FD, [INFLIGHT_DESCRIPTION_BYTES, INFLIGHT_DESCRIPTION_BYTES], fds);
    } catch (e) {
      for (const fd of fds) this.n.close(fd);
      throw e;
    }
    const r = new DataView(p.buffer, p.byteOffset, p.byteLength);
    const d = {
      mmapSize: r.getBigUint64(0, true),
      mmapOffset: r.getBigUint64(8, true),
      numQueues: r.getUint16(16, true),
      queueSize: r.getUint16(18, true),
    };
    const bad = (why: string): never => {
      for (const fd of fds) this.n.close(fd);
      throw new VhostUserFrontendError("VHOST_USER_BAD_REPLY", `${this.name}: GET_INFLIGHT_FD: ${why}`);
    };
    if (fds.length !== 1) bad(`the reply carried ${fds.length} fds, not 1`);
    if (d.numQueues !== numQueues || d.queueSize !== queueSize)
      bad(`asked for ${numQueues} queues of ${queueSize}, described ${d.numQueues} of ${d.queueSize}`);
    if (d.mmapSize === 0n || d.mmapSize > MAX_INFLIGHT_BYTES || d.mmapOffset > MAX_INFLIGHT_BYTES)
      bad(`mmap size ${d.mmapSize} at offset ${d.mmapOffset} is not a buffer this front-end keeps`);
    const fd = fds[0] as number;
    let size: number;
    try {
      const st = fstatSync(fd);
      if (!st.isFile()) bad("the fd is not a regular file (a memfd)");
      size = st.size;
    } catch (e) {
      if (e instanceof VhostUserFrontendError) throw e;
      return bad(`fstat: ${(e as Error).message}`);
    }
    if (BigInt(size) < d.mmapOffset + d.mmapSize)
      bad(`the file has ${size} bytes, the buffer ends at ${d.mmapOffset + d.mmapSize}`);
    return { fd, ...d };
  }

  /** SET_INFLIGHT_FD: hands the buffer back (to the back-end that made it, or to a new one after a reconnect). */
  setInflightFd(b: InflightBuffer): void {
    const p = new Uint8Array(INFLIGHT_DESCRIPTION_BYTES);
    const v = new DataView(p.buffer);
    v.setBigUint64(0, b.mmapSize, true);
    v.setBigUint64(8, b.mmapOffset, true);
    v.setUint16(16, b.numQueues, true);
    v.setUint16(18, b.queueSize, true);
    this.command(REQ.SET_INFLIGHT_FD, p, [b.fd]);
  }

  /** Points ring q's interrupts at another fd (or none) while it runs. */
  setCall(q: number, callFd: number): void {
    if (callFd >= 0) this.command(REQ.SET_VRING_CALL, u64Payload(BigInt(q)), [callFd]);
    else this.command(REQ.SET_VRING_CALL, u64Payload(BigInt(q | VRING_NOFD_MASK)));
  }

  /** GET_VRING_BASE: stops ring q; returns the next available index the back-end would have read. */
  stopRing(q: number): number {
    const p = this.call(REQ.GET_VRING_BASE, statePayload(q, 0), 8);
    const v = new DataView(p.buffer, p.byteOffset, 8);
    const index = v.getUint32(0, true);
    const num = v.getUint32(4, true);
    if (index !== q) {
      throw new VhostUserFrontendError(
        "VHOST_USER_BAD_REPLY",
        `${this.name}: GET_VRING_BASE for vring ${q} answered for vring ${index}`,
      );
    }
    if (num > 0xffff) {
      throw new VhostUserFrontendError(
        "VHOST_USER_BAD_REPLY",
        `${this.name}: GET_VRING_BASE for vring ${q} answered ${num}, not a 16-bit index`,
      );
    }
    return num;
  }

  /**
   * Without REPLY_ACK a refusal shows only as a closed connection: a GET_FEATURES round trip after a batch of
   * requests tells the caller the back-end took them (QEMU does the same).
   */
  sync(): void {
    if (!this.replyAck) this.getU64(REQ.GET_FEATURES);
  }

  close(): void {
    if (this.closedFd) return;
    this.closedFd = true;
    try {
      this.n.close(this.fd);
    } catch {
      // already closed
    }
  }

  // ---- requests ---------------------------------------------------------------------------------------------

  /** A request without a reply of its own: acknowledged (and a refusal thrown) with REPLY_ACK. */
  private command(request: number, payload?: Uint8Array, fds: number[] = []): void {
    if (!this.replyAck) {
      this.send(request, payload, fds);
      return;
    }
    this.send(request, payload, fds, true);
    const p = this.receive(request, [8, 8]);
    const status = new DataView(p.buffer, p.byteOffset, 8).getBigUint64(0, true);
    if (status !== 0n) {
      throw new VhostUserFrontendError(
        "VHOST_USER_REFUSED",
        `${this.name}: the back-end refused ${requestName(request)} (status ${status}; see its log)`,
      );
    }
  }

  private getU64(request: number): bigint {
    const p = this.call(request, undefined, 8);
    return new DataView(p.buffer, p.byteOffset, 8).getBigUint64(0, true);
  }

  /** A request with a reply body of exactly `size` bytes. */
  private call(request: number, payload: Uint8Array | undefined, size: number): Uint8Array {
    this.send(request, payload);
    return this.receive(request, [size, size]);
  }

  private send(request: number, payload?: Uint8Array, fds: number[] = [], needReply = false): void {
    this.checkOpen();
    const bytes = encodeRequest(request, payload, needReply);
    let sent: number;
    for (;;) {
      sent = this.n.sendmsg(this.fd, bytes, fds);
      if (sent !== -EINTR) break;
    }
    this.requests++;
    if (sent !== bytes.length) {
      // A blocking stream socket sends all of a small message or fails: EPIPE/ECONNRESET when the peer is gone.
      throw new VhostUserFrontendError(
        "VHOST_USER_DISCONNECTED",
        `${this.name}: ${requestName(request)} not sent (${sent < 0 ? `errno ${-sent}` : `${sent} of ${bytes.length} bytes`}): the back-end went away`,
      );
    }
  }

  /**
   * The reply to `request`: header checked, then its payload, of `sizes[0]` to `sizes[1]` bytes. Fds that come
   * with it go to `fds` when given, else they are closed.
   */
  private receive(request: number, sizes: [number, number], fds?: number[]): Uint8Array {
    const deadline = performance.now() + this.timeoutMs;
    this.readExactly(this.header, deadline, request, fds);
    const h = decodeHeader(this.header);
    const name = requestName(request);
    if ((h.flags & VHOST_USER_VERSION_MASK) !== VHOST_USER_VERSION || !(h.flags & VHOST_USER_REPLY_MASK)) {
      throw new VhostUserFrontendError(
        "VHOST_USER_BAD_REPLY",
        `${this.name}: reply to ${name} has flags 0x${h.flags.toString(16)} (want version 1 with the reply bit)`,
      );
    }
    if (h.request !== request) {
      throw new VhostUserFrontendError(
        "VHOST_USER_BAD_REPLY",
        `${this.name}: expected the reply to ${name}, got one to ${requestName(h.request)}`,
      );
    }
    if (h.size < sizes[0] || h.size > sizes[1] || h.size > MAX_REPLY) {
      const want = sizes[0] === sizes[1] ? `${sizes[0]}` : `${sizes[0]} to ${sizes[1]}`;
      throw new VhostUserFrontendError(
        "VHOST_USER_BAD_REPLY",
        `${this.name}: reply to ${name} has ${h.size} payload bytes, expected ${want}`,
      );
    }
    const p = new Uint8Array(h.size);
    this.readExactly(p, deadline, request, fds);
    return p;
  }

  private readExactly(into: Uint8Array, deadline: number, request: number, keep?: number[]): void {
    const pfd = this.pollfd;
    let have = 0;
    while (have < into.length) {
      this.checkOpen();
      const left = Math.ceil(deadline - performance.now());
      pfd[0] = this.fd;
      pfd[1] = POLLIN;
      pfd[2] = 0;
      if (left <= 0 || this.n.poll(pfd, left) === 0) {
        if (performance.now() < deadline) continue; // EINTR: poll returned early
        throw new VhostUserFrontendError(
          "VHOST_USER_TIMEOUT",
          `${this.name}: no reply to ${requestName(request)} within ${this.timeoutMs} ms`,
        );
      }
      // Only GET_INFLIGHT_FD's reply carries an fd (kept for the caller to check); others are closed at once.
      const r = this.n.recvmsg(this.fd, into.subarray(have), 8);
      for (const fd of r.fds) {
        if (keep) keep.push(fd);
        else this.n.close(fd);
      }
      if (r.bytes === -EINTR || r.bytes === -EAGAIN) continue;
      if (r.bytes <= 0) {
        throw new VhostUserFrontendError(
          "VHOST_USER_DISCONNECTED",
          `${this.name}: the back-end closed the connection (waiting for the reply to ${requestName(request)}${r.bytes < 0 ? `, errno ${-r.bytes}` : ""})`,
        );
      }
      have += r.bytes;
    }
  }

  private checkOpen(): void {
    if (this.closedFd) {
      throw new VhostUserFrontendError("VHOST_USER_DISCONNECTED", `${this.name}: the connection is closed`);
    }
  }
}
