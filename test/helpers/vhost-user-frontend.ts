/**
 * A minimal vhost-user front-end for tests: guest memory in a memfd (two regions with distinct guest and user
 * addresses), the virtio test driver placing buffers there, eventfds for kicks and calls, and requests sent
 * either over a real Unix socket (to a `vireo vhost-user` process) or straight into an in-process
 * VhostUserBackend through the same parser.
 */
import { ftruncateSync } from "node:fs";
import { VIRTIO_F } from "../../src/devices/virtio/constants.ts";
import type { VirtioDeviceModel } from "../../src/devices/virtio/device.ts";
import { GuestMemory } from "../../src/memory/guest-memory.ts";
import {
  EFD_CLOEXEC,
  EFD_NONBLOCK,
  MFD_CLOEXEC,
  native,
  POLLIN,
  signalEventFd,
  takeEventFd,
} from "../../src/native.ts";
import { DeferredWork } from "../../src/shared/deferred-work.ts";
import { type ProtocolExtensions, VhostUserBackend } from "../../src/vhost-user/backend.ts";
import {
  addrPayload,
  decodeHeader,
  encodeRequest,
  HEADER_SIZE,
  memoryPayload,
  PROTOCOL_F,
  type RawMemRegion,
  REQ,
  statePayload,
  u64Payload,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VhostUserParser,
} from "../../src/vhost-user/protocol.ts";
import { VirtioTestDriver } from "./virtio-driver.ts";

export interface Reply {
  request: number;
  flags: number;
  payload: Uint8Array;
}

/** Where requests go. */
export interface Channel {
  send(bytes: Uint8Array, fds: number[]): void;
  /** The next reply, or null if none comes (timeout, or the back-end closed the connection). */
  receive(timeoutMs: number): Reply | null;
  readonly closed: boolean;
  close(): void;
}

/** A connected socket to a back-end process. */
export class SocketChannel implements Channel {
  closed = false;
  /**
   * `whileWaiting`, when given, runs while a reply is awaited: for a back-end served on this same thread (a
   * VhostUserEndpoint the test turns by hand), which must get turns to answer.
   */
  constructor(
    readonly fd: number,
    private readonly whileWaiting?: () => void,
  ) {}

  static connect(path: string): SocketChannel {
    return new SocketChannel(native().unixConnect(path));
  }

  send(bytes: Uint8Array, fds: number[]): void {
    const n = native().sendmsg(this.fd, bytes, fds);
    if (n !== bytes.length) throw new Error(`sendmsg: ${n}`);
  }

  private readExactly(len: number, deadline: number): Uint8Array | null {
    const out = new Uint8Array(len);
    let have = 0;
    const pfd = new Int32Array([this.fd, POLLIN, 0]);
    while (have < len) {
      const left = deadline - Date.now();
      if (left <= 0) return null;
      if (this.whileWaiting) {
        this.whileWaiting();
        if (native().poll(pfd, 0) === 0) continue;
      } else if (native().poll(pfd, left) === 0) {
        return null;
      }
      const r = native().recvmsg(this.fd, out.subarray(have), 0);
      if (r.bytes <= 0) {
        this.closed = true;
        return null;
      }
      have += r.bytes;
    }
    return out;
  }

  receive(timeoutMs: number): Reply | null {
    const deadline = Date.now() + timeoutMs;
    const h = this.readExactly(HEADER_SIZE, deadline);
    if (h === null) return null;
    const { request, flags, size } = decodeHeader(h);
    const payload = size === 0 ? new Uint8Array(0) : this.readExactly(size, deadline);
    if (payload === null) return null;
    return { request, flags, payload };
  }

  /** Waits for the back-end to close its end (end of stream), up to timeoutMs. */
  waitClosed(timeoutMs: number): boolean {
    const deadline = Date.now() + timeoutMs;
    const pfd = new Int32Array([this.fd, POLLIN, 0]);
    const buf = new Uint8Array(64);
    while (Date.now() < deadline) {
      if (native().poll(pfd, deadline - Date.now()) === 0) return false;
      const r = native().recvmsg(this.fd, buf, 0);
      if (r.bytes <= 0) return true;
    }
    return false;
  }

  close(): void {
    if (this.fd >= 0) native().close(this.fd);
    this.closed = true;
  }
}

/** Requests parsed and handled in this process, as the back-end's connection loop would. */
export class DirectChannel implements Channel {
  closed = false;
  private readonly parser = new VhostUserParser({ closeFd: (fd) => native().close(fd) });
  private replies: Reply[] = [];
  /** Why the back-end would have closed the connection. */
  closeReason: string | null = null;
  readonly backend: VhostUserBackend;
  readonly later = new DeferredWork();
  readonly logged: string[] = [];

  constructor(model: () => VirtioDeviceModel, extensions?: ProtocolExtensions) {
    this.backend = new VhostUserBackend({
      model,
      log: (m) => this.logged.push(m),
      defer: this.later.add,
      closeFd: (fd) => native().close(fd),
      extensions,
    });
  }

  /** One turn of the back-end's loop: kicks that fired, then work left from earlier slices. */
  pump(): void {
    for (const k of this.backend.kickFds()) if (takeEventFd(k.fd) > 0) this.backend.kick(k.q);
    this.later.runOnce((e) => this.logged.push(String(e)));
    this.backend.afterWork();
  }

  send(bytes: Uint8Array, fds: number[]): void {
    if (this.closed) throw new Error("connection closed");
    // The kernel would give the back-end its own copies of the fds.
    const theirs = fds.map((fd) => dupFd(fd));
    try {
      let at = 0;
      let first = true;
      while (at < bytes.length) {
        const n = Math.min(this.parser.wanted, bytes.length - at);
        const msg = this.parser.push(bytes.subarray(at, at + n), first ? theirs : []);
        first = false;
        at += n;
        if (msg === null) continue;
        const reply = this.backend.handle(msg);
        if (reply !== null) {
          const h = decodeHeader(reply);
          this.replies.push({ request: h.request, flags: h.flags, payload: reply.slice(HEADER_SIZE) });
        }
      }
    } catch (e) {
      this.closeReason = (e as Error).message;
      this.close();
    }
  }

  receive(): Reply | null {
    return this.replies.shift() ?? null;
  }

  close(): void {
    if (!this.closed) this.backend.close();
    this.closed = true;
  }
}

/** A duplicate of `fd` (Node has no dup(2)): passed through a socketpair, as the kernel does for a message. */
function dupFd(fd: number): number {
  const [a, b] = native().socketpair(false);
  native().sendmsg(a, Uint8Array.of(0), [fd]);
  const r = native().recvmsg(b, new Uint8Array(1), 1);
  native().close(a);
  native().close(b);
  const got = r.fds[0];
  if (got === undefined) throw new Error("dup through a socketpair failed");
  return got;
}

const MiB = 1 << 20;

/** The test's guest memory: one memfd, two regions (guest and user addresses differ, and so do the offsets). */
export interface FrontendMemory {
  fd: number;
  regions: RawMemRegion[];
  /** Region 1 as the driver sees it (guest-physical addresses). */
  mem: GuestMemory;
  /** Guest address → front-end user address, in region 1. */
  user(gpa: number): bigint;
}

export const REGION1_GPA = 0x4000_0000;
const REGION1_USER = 0x7f00_0020_0000n;

export function makeFrontendMemory(): FrontendMemory {
  const fd = native().memfdCreate("vhost-user-test", MFD_CLOEXEC);
  ftruncateSync(fd, 4 * MiB);
  const regions: RawMemRegion[] = [
    { guestAddr: 0n, size: BigInt(MiB), userAddr: 0x7f00_0000_0000n, mmapOffset: 0n },
    {
      guestAddr: BigInt(REGION1_GPA),
      size: BigInt(2 * MiB),
      userAddr: REGION1_USER,
      mmapOffset: BigInt(2 * MiB),
    },
  ];
  const { buffer } = native().mmap(fd, 2 * MiB, 2 * MiB);
  const mem = new GuestMemory(buffer, REGION1_GPA);
  return { fd, regions, mem, user: (gpa) => REGION1_USER + BigInt(gpa - REGION1_GPA) };
}

export const NET_HDR = 12;

/** A front-end for a virtio-net back-end: two rings (0 receive, 1 transmit), split or packed. */
export class NetFrontend {
  readonly rx: VirtioTestDriver;
  readonly tx: VirtioTestDriver;
  readonly kick: [number, number];
  readonly call: [number, number];
  readonly memory: FrontendMemory;

  constructor(
    readonly channel: Channel,
    readonly queueSize = 256,
    readonly ring: "split" | "packed" = "split",
  ) {
    this.memory = makeFrontendMemory();
    const { mem } = this.memory;
    this.rx = new VirtioTestDriver(mem, {
      kind: ring,
      size: queueSize,
      base: REGION1_GPA,
      limit: REGION1_GPA + MiB,
    });
    this.tx = new VirtioTestDriver(mem, {
      kind: ring,
      size: queueSize,
      base: REGION1_GPA + MiB,
      limit: REGION1_GPA + 2 * MiB,
    });
    const ev = () => native().eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    this.kick = [ev(), ev()];
    this.call = [ev(), ev()];
  }

  /** Sends a request; with needReply, returns the ack's u64 (0 success). */
  request(
    request: number,
    payload?: Uint8Array,
    opts: { fds?: number[]; needReply?: boolean } = {},
  ): Reply | null {
    this.channel.send(encodeRequest(request, payload, opts.needReply ?? false), opts.fds ?? []);
    if (!opts.needReply && !REPLIES.has(request)) return null;
    return this.channel.receive(10_000);
  }

  /** A request with need_reply: true if acknowledged with 0. */
  acked(request: number, payload?: Uint8Array, fds?: number[]): boolean {
    const r = this.request(request, payload, { fds, needReply: true });
    return (
      r !== null &&
      r.payload.length === 8 &&
      new DataView(r.payload.buffer, r.payload.byteOffset).getBigUint64(0, true) === 0n
    );
  }

  getU64(request: number): bigint {
    const r = this.request(request);
    if (r === null || r.payload.length !== 8) throw new Error(`no u64 reply to request ${request}`);
    return new DataView(r.payload.buffer, r.payload.byteOffset).getBigUint64(0, true);
  }

  /** Negotiation and memory: returns the features offered. */
  setup(): bigint {
    this.request(REQ.SET_OWNER);
    const offered = this.getU64(REQ.GET_FEATURES);
    if (!(offered & (1n << BigInt(VHOST_USER_F_PROTOCOL_FEATURES)))) throw new Error("no protocol features");
    const proto = this.getU64(REQ.GET_PROTOCOL_FEATURES);
    const replyAck = 1n << BigInt(PROTOCOL_F.REPLY_ACK);
    if (!(proto & replyAck)) throw new Error("no REPLY_ACK");
    this.request(REQ.SET_PROTOCOL_FEATURES, u64Payload(replyAck));
    const want =
      (1n << BigInt(VIRTIO_F.VERSION_1)) |
      (1n << BigInt(VHOST_USER_F_PROTOCOL_FEATURES)) |
      (this.ring === "packed" ? 1n << BigInt(VIRTIO_F.RING_PACKED) : 0n);
    if (!this.acked(REQ.SET_FEATURES, u64Payload(want))) throw new Error("SET_FEATURES refused");
    const m = this.memory;
    if (!this.acked(REQ.SET_MEM_TABLE, memoryPayload(m.regions), [m.fd, m.fd]))
      throw new Error("SET_MEM_TABLE refused");
    return offered;
  }

  /**
   * Ring q: size, base, addresses, call, kick, enable; with `logUsed`, VHOST_VRING_F_LOG at the used ring. The
   * base is a fresh ring's unless given (a packed ring's: slot 0, wrap counter 1 in bit 15).
   */
  startRing(q: 0 | 1, opts: { logUsed?: boolean; base?: number } = {}): void {
    const d = q === 0 ? this.rx : this.tx;
    const c = d.config;
    const m = this.memory;
    const steps: Array<[number, Uint8Array, number[]]> = [
      [REQ.SET_VRING_NUM, statePayload(q, c.size), []],
      [REQ.SET_VRING_BASE, statePayload(q, opts.base ?? (this.ring === "packed" ? 0x8000 : 0)), []],
      [
        REQ.SET_VRING_ADDR,
        addrPayload({
          index: q,
          desc: m.user(c.descAddr),
          used: m.user(c.deviceAddr),
          avail: m.user(c.driverAddr),
          ...(opts.logUsed ? { flags: 1, log: BigInt(c.deviceAddr) } : {}),
        }),
        [],
      ],
      [REQ.SET_VRING_CALL, u64Payload(BigInt(q)), [this.call[q]]],
      [REQ.SET_VRING_KICK, u64Payload(BigInt(q)), [this.kick[q]]],
      [REQ.SET_VRING_ENABLE, statePayload(q, 1), []],
    ];
    for (const [req, payload, fds] of steps) {
      if (!this.acked(req, payload, fds)) throw new Error(`ring ${q}: request ${req} refused`);
    }
  }

  /** Queues frames (each behind a zeroed 12-byte header) on the transmit ring and kicks. */
  transmit(frames: Uint8Array[]): void {
    for (const f of frames) {
      const b = new Uint8Array(NET_HDR + f.length);
      b.set(f, NET_HDR);
      this.tx.addChain([b], []);
    }
    signalEventFd(this.kick[1]);
  }

  postReceiveBuffers(n: number, len = 2048): void {
    for (let i = 0; i < n; i++) this.rx.addChain([], [len]);
    signalEventFd(this.kick[0]);
  }

  /** Waits for a call on ring q (true) or times out. */
  waitCall(q: 0 | 1, timeoutMs: number): boolean {
    const pfd = new Int32Array([this.call[q], POLLIN, 0]);
    if (native().poll(pfd, timeoutMs) === 0) return false;
    return takeEventFd(this.call[q]) > 0;
  }

  close(): void {
    this.channel.close();
    for (const fd of [...this.kick, ...this.call, this.memory.fd]) native().close(fd);
  }
}

/** A split-ring NetFrontend connected to the back-end listening at `sock`, set up, both rings started. */
export function plugNetFrontend(sock: string): NetFrontend {
  const fe = new NetFrontend(SocketChannel.connect(sock));
  fe.setup();
  fe.startRing(0);
  fe.startRing(1);
  return fe;
}

// SET_LOG_BASE: answered with LOG_SHMFD ("Here is a list of the ones that do [require replies]").
const REPLIES = new Set<number>([
  REQ.GET_FEATURES,
  REQ.GET_PROTOCOL_FEATURES,
  REQ.GET_VRING_BASE,
  REQ.SET_LOG_BASE,
  REQ.GET_MAX_MEM_SLOTS,
  REQ.GET_QUEUE_NUM,
]);
