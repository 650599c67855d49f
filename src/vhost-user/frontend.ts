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
import { VireoError } from "../errors.ts";
import { EAGAIN, EINTR, isErrno, native, POLLIN } from "../native.ts";
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

/** Protocol features this front-end uses when the back-end offers them: REPLY_ACK (refusals reach us). */
export const FRONTEND_PROTOCOL_FEATURES = bit(PROTOCOL_F.REPLY_ACK);

/** Largest reply payload accepted: the u64, vring state and config replies are all far smaller. */
const MAX_REPLY = 256 + 12;

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

  /**
   * Session start: SET_OWNER, GET_FEATURES and, when the back-end speaks them, the protocol features (this
   * front-end asks only for REPLY_ACK). The back-end must offer VIRTIO_F_VERSION_1 (vireo's transport is modern).
   */
  negotiate(): NegotiatedBackend {
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
      protocol = offered & FRONTEND_PROTOCOL_FEATURES;
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
    this.command(REQ.SET_VRING_ADDR, addrPayload({ index: q, desc: r.desc, used: r.used, avail: r.avail }));
    if (r.callFd >= 0) this.command(REQ.SET_VRING_CALL, u64Payload(BigInt(q)), [r.callFd]);
    else this.command(REQ.SET_VRING_CALL, u64Payload(BigInt(q | VRING_NOFD_MASK)));
    this.command(REQ.SET_VRING_KICK, u64Payload(BigInt(q)), [r.kickFd]);
    if (enable) this.command(REQ.SET_VRING_ENABLE, statePayload(q, 1));
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
    const p = this.receive(request, 8);
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
    return this.receive(request, size);
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

  /** The reply to `request`: header checked, then exactly `size` payload bytes. */
  private receive(request: number, size: number): Uint8Array {
    const deadline = performance.now() + this.timeoutMs;
    this.readExactly(this.header, deadline, request);
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
    if (h.size !== size || h.size > MAX_REPLY) {
      throw new VhostUserFrontendError(
        "VHOST_USER_BAD_REPLY",
        `${this.name}: reply to ${name} has ${h.size} payload bytes, expected ${size}`,
      );
    }
    const p = new Uint8Array(size);
    this.readExactly(p, deadline, request);
    return p;
  }

  private readExactly(into: Uint8Array, deadline: number, request: number): void {
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
      // No fds are expected in a reply this front-end asks for: any that come are closed at once.
      const r = this.n.recvmsg(this.fd, into.subarray(have), 8);
      for (const fd of r.fds) this.n.close(fd);
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
