/**
 * A minimal vhost-user-blk front-end for tests: guest memory in a memfd (makeFrontendMemory's two regions), one
 * split ring per request queue placed by the virtio test driver, eventfd kicks and calls, virtio-blk requests
 * built by hand (5.2.6), and the inflight buffer (GET/SET_INFLIGHT_FD). Requests go to an in-process
 * VhostUserBackend through the parser (BlkDirectChannel) or to a `vireo vhost-user blk` process over its socket
 * (BlkSocketChannel); both hand back the fds a reply carries.
 */
import { VIRTIO_F } from "../../src/devices/virtio/constants.ts";
import type { VirtioDeviceModel } from "../../src/devices/virtio/device.ts";
import type { NotifyBudget } from "../../src/devices/virtio/work-budget.ts";
import { EFD_CLOEXEC, EFD_NONBLOCK, native, POLLIN, signalEventFd, takeEventFd } from "../../src/native.ts";
import { DeferredWork } from "../../src/shared/deferred-work.ts";
import { type ProtocolExtensions, VhostUserBackend } from "../../src/vhost-user/backend.ts";
import { decodeInflight, type InflightDescription, inflightPayload } from "../../src/vhost-user/inflight.ts";
import {
  addrPayload,
  decodeHeader,
  encodeRequest,
  HEADER_SIZE,
  memoryPayload,
  PROTOCOL_F,
  REQ,
  statePayload,
  u64Payload,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VhostUserParser,
} from "../../src/vhost-user/protocol.ts";
import { type FrontendMemory, makeFrontendMemory, REGION1_GPA } from "./vhost-user-frontend.ts";
import { type UsedChain, VirtioTestDriver } from "./virtio-driver.ts";

export interface BlkReply {
  request: number;
  flags: number;
  payload: Uint8Array;
  /** Fds that came with the reply (the caller owns them). */
  fds: number[];
}

export interface BlkChannel {
  send(bytes: Uint8Array, fds: number[]): void;
  receive(timeoutMs: number): BlkReply | null;
  readonly closed: boolean;
  close(): void;
  /** In-process: one turn of the back-end's loop. A process serves on its own: nothing to do. */
  pump(): void;
}

/** A duplicate of `fd` (Node has no dup(2)): passed through a socketpair, as the kernel does for a message. */
export function dupFd(fd: number): number {
  const [a, b] = native().socketpair(false);
  native().sendmsg(a, Uint8Array.of(0), [fd]);
  const r = native().recvmsg(b, new Uint8Array(1), 1);
  native().close(a);
  native().close(b);
  const got = r.fds[0];
  if (got === undefined) throw new Error("dup through a socketpair failed");
  return got;
}

/** Requests parsed and handled in this process, as the back-end's connection loop would. */
export class BlkDirectChannel implements BlkChannel {
  closed = false;
  private readonly parser = new VhostUserParser({ closeFd: (fd) => native().close(fd) });
  private replies: BlkReply[] = [];
  closeReason: string | null = null;
  readonly backend: VhostUserBackend;
  readonly later = new DeferredWork();
  readonly logged: string[] = [];

  constructor(
    model: () => VirtioDeviceModel,
    opts: { extensions?: ProtocolExtensions; budget?: NotifyBudget } = {},
  ) {
    this.backend = new VhostUserBackend({
      model,
      log: (m) => this.logged.push(m),
      defer: this.later.add,
      budget: opts.budget,
      closeFd: (fd) => native().close(fd),
      extensions: opts.extensions ?? { config: true, mq: true, inflight: true },
    });
  }

  /** One turn: kicks that fired, then one round of work left from earlier slices. */
  pump(): void {
    if (this.closed) return;
    for (const k of this.backend.kickFds()) if (takeEventFd(k.fd) > 0) this.backend.kick(k.q);
    this.later.runOnce((e) => this.logged.push(String(e)));
    this.backend.afterWork();
  }

  /** Turns until no work is left (at most `max`). */
  pumpAll(max = 10_000): void {
    this.pump();
    for (let i = 0; i < max && this.later.pending; i++) this.pump();
  }

  send(bytes: Uint8Array, fds: number[]): void {
    if (this.closed) throw new Error("connection closed");
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
          this.replies.push({
            request: h.request,
            flags: h.flags,
            payload: reply.slice(HEADER_SIZE),
            fds: this.backend.takeReplyFds(),
          });
        }
      }
    } catch (e) {
      this.closeReason = (e as Error).message;
      this.close();
    }
  }

  receive(): BlkReply | null {
    return this.replies.shift() ?? null;
  }

  /** The connection ends (as when the back-end process dies, the front-end keeps its own fds). */
  close(): void {
    if (!this.closed) {
      this.parser.dispose();
      this.backend.close();
    }
    this.closed = true;
  }
}

/** A connected socket to a back-end process. */
export class BlkSocketChannel implements BlkChannel {
  closed = false;
  constructor(readonly fd: number) {}

  static connect(path: string): BlkSocketChannel {
    return new BlkSocketChannel(native().unixConnect(path));
  }

  pump(): void {}

  send(bytes: Uint8Array, fds: number[]): void {
    const n = native().sendmsg(this.fd, bytes, fds);
    if (n !== bytes.length) throw new Error(`sendmsg: ${n}`);
  }

  private readExactly(len: number, deadline: number, fds: number[]): Uint8Array | null {
    const out = new Uint8Array(len);
    let have = 0;
    const pfd = new Int32Array([this.fd, POLLIN, 0]);
    while (have < len) {
      const left = deadline - Date.now();
      if (left <= 0 || native().poll(pfd, left) === 0) return null;
      const r = native().recvmsg(this.fd, out.subarray(have), 8);
      fds.push(...r.fds);
      if (r.bytes <= 0) {
        this.closed = true;
        return null;
      }
      have += r.bytes;
    }
    return out;
  }

  receive(timeoutMs: number): BlkReply | null {
    const deadline = Date.now() + timeoutMs;
    const fds: number[] = [];
    const h = this.readExactly(HEADER_SIZE, deadline, fds);
    if (h === null) return null;
    const { request, flags, size } = decodeHeader(h);
    const payload = size === 0 ? new Uint8Array(0) : this.readExactly(size, deadline, fds);
    if (payload === null) return null;
    return { request, flags, payload, fds };
  }

  close(): void {
    if (!this.closed && this.fd >= 0) native().close(this.fd);
    this.closed = true;
  }
}

export const BLK_T = { IN: 0, OUT: 1, FLUSH: 4, GET_ID: 8, DISCARD: 11, WRITE_ZEROES: 13 } as const;
export const BLK_F = { RO: 5, BLK_SIZE: 6, FLUSH: 9, MQ: 12, DISCARD: 13, WRITE_ZEROES: 14 } as const;

export function blkHeader(type: number, sector: number): Uint8Array {
  const h = new Uint8Array(16);
  const v = new DataView(h.buffer);
  v.setUint32(0, type, true);
  v.setBigUint64(8, BigInt(sector), true);
  return h;
}

/** A finished request: its status byte and, for IN and GET_ID, the data before it. */
export interface BlkResult {
  id: number;
  status: number;
  data: Uint8Array;
  len: number;
}

const MiB = 1 << 20;

export class BlkFrontend {
  readonly rings: VirtioTestDriver[];
  readonly kick: number[];
  readonly call: number[];
  readonly memory: FrontendMemory;
  /** Features offered by the back-end (GET_FEATURES), after setup(). */
  offered = 0n;
  offeredProtocol = 0n;

  constructor(
    public channel: BlkChannel,
    readonly numQueues = 1,
    readonly queueSize = 128,
  ) {
    this.memory = makeFrontendMemory();
    const span = (2 * MiB) / numQueues;
    this.rings = Array.from(
      { length: numQueues },
      (_, q) =>
        new VirtioTestDriver(this.memory.mem, {
          kind: "split",
          size: queueSize,
          base: REGION1_GPA + q * span,
          limit: REGION1_GPA + (q + 1) * span,
        }),
    );
    const ev = () => native().eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    this.kick = this.rings.map(ev);
    this.call = this.rings.map(ev);
  }

  request(
    request: number,
    payload?: Uint8Array,
    opts: { fds?: number[]; needReply?: boolean } = {},
  ): BlkReply | null {
    this.channel.send(encodeRequest(request, payload, opts.needReply ?? false), opts.fds ?? []);
    if (!opts.needReply && !REPLIES.has(request)) return null;
    return this.channel.receive(10_000);
  }

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

  /**
   * Negotiation (every protocol feature offered unless `protocol` says which) and the memory table; the device
   * features acked are VERSION_1 and the blk bits offered among FLUSH, DISCARD, WRITE_ZEROES, RO, BLK_SIZE, MQ.
   */
  setup(opts: { protocol?: bigint } = {}): void {
    this.request(REQ.SET_OWNER);
    this.offered = this.getU64(REQ.GET_FEATURES);
    this.offeredProtocol = this.getU64(REQ.GET_PROTOCOL_FEATURES);
    const proto = opts.protocol ?? this.offeredProtocol;
    this.request(REQ.SET_PROTOCOL_FEATURES, u64Payload(proto | (1n << BigInt(PROTOCOL_F.REPLY_ACK))));
    let want = (1n << BigInt(VIRTIO_F.VERSION_1)) | (1n << BigInt(VHOST_USER_F_PROTOCOL_FEATURES));
    for (const b of Object.values(BLK_F)) want |= this.offered & (1n << BigInt(b));
    if (!this.acked(REQ.SET_FEATURES, u64Payload(want))) throw new Error("SET_FEATURES refused");
    const m = this.memory;
    if (!this.acked(REQ.SET_MEM_TABLE, memoryPayload(m.regions), [m.fd, m.fd])) {
      throw new Error("SET_MEM_TABLE refused");
    }
  }

  /** GET_INFLIGHT_FD: the fd and description of a fresh buffer. */
  getInflight(
    numQueues = this.numQueues,
    queueSize = this.queueSize,
  ): {
    fd: number;
    description: InflightDescription;
  } | null {
    const r = this.request(
      REQ.GET_INFLIGHT_FD,
      inflightPayload({ mmapSize: 0n, mmapOffset: 0n, numQueues, queueSize }),
    );
    if (r === null || r.payload.length !== 24 || r.fds.length !== 1) return null;
    return { fd: r.fds[0] as number, description: decodeInflight(r.payload) };
  }

  setInflight(fd: number, d: InflightDescription): boolean {
    return this.acked(REQ.SET_INFLIGHT_FD, inflightPayload(d), [fd]);
  }

  /** Ring q: size, base, addresses, call, kick, enable (false if any step is refused). */
  startRing(q: number, base = 0): boolean {
    const c = this.rings[q]?.config;
    if (c === undefined) throw new Error(`no ring ${q}`);
    const m = this.memory;
    const steps: Array<[number, Uint8Array, number[]]> = [
      [REQ.SET_VRING_NUM, statePayload(q, c.size), []],
      [REQ.SET_VRING_BASE, statePayload(q, base), []],
      [
        REQ.SET_VRING_ADDR,
        addrPayload({
          index: q,
          desc: m.user(c.descAddr),
          used: m.user(c.deviceAddr),
          avail: m.user(c.driverAddr),
        }),
        [],
      ],
      [REQ.SET_VRING_CALL, u64Payload(BigInt(q)), [this.call[q] as number]],
      [REQ.SET_VRING_KICK, u64Payload(BigInt(q)), [this.kick[q] as number]],
      [REQ.SET_VRING_ENABLE, statePayload(q, 1), []],
    ];
    return steps.every(([req, payload, fds]) => this.acked(req, payload, fds));
  }

  private ring(q: number): VirtioTestDriver {
    const r = this.rings[q];
    if (r === undefined) throw new Error(`no ring ${q}`);
    return r;
  }

  /** Queues a request without kicking: header (+ data) readable, `inLen` data bytes + status writable. */
  add(q: number, type: number, sector: number, data: Uint8Array[] = [], inLen = 0): number {
    const writable = inLen > 0 ? [inLen, 1] : [1];
    return this.ring(q).addChain([blkHeader(type, sector), ...data], writable, { fill: 0xee });
  }

  write(q: number, sector: number, data: Uint8Array): number {
    return this.add(q, BLK_T.OUT, sector, [data]);
  }
  read(q: number, sector: number, len: number): number {
    return this.add(q, BLK_T.IN, sector, [], len);
  }
  flush(q: number): number {
    return this.add(q, BLK_T.FLUSH, 0);
  }
  getId(q: number): number {
    return this.add(q, BLK_T.GET_ID, 0, [], 20);
  }
  /** DISCARD or WRITE_ZEROES with one segment. */
  segment(q: number, type: number, sector: number, sectors: number, flags = 0): number {
    const seg = new Uint8Array(16);
    const v = new DataView(seg.buffer);
    v.setBigUint64(0, BigInt(sector), true);
    v.setUint32(8, sectors, true);
    v.setUint32(12, flags, true);
    return this.add(q, type, 0, [seg]);
  }

  kickRing(q: number): void {
    signalEventFd(this.kick[q] as number);
  }

  /** Used buffers on ring q since the last call, with their status byte split off. */
  results(q: number): BlkResult[] {
    return this.ring(q)
      .usedChains()
      .map((u: UsedChain) => {
        const status = u.data[u.data.length - 1]?.[0] ?? -1;
        const data = u.data.length > 1 ? (u.data[0] as Uint8Array) : new Uint8Array(0);
        return { id: u.id, status, data, len: u.len };
      });
  }

  /** Kicks ring q, serves, and returns what completed; for a process, polls until `want` results came. */
  run(q: number, want = 1, timeoutMs = 20_000): BlkResult[] {
    this.kickRing(q);
    const out: BlkResult[] = [];
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      this.channel.pump();
      out.push(...this.results(q));
      if (out.length >= want || Date.now() > deadline) return out;
      if (this.channel instanceof BlkDirectChannel) {
        if (!this.channel.later.pending) return out;
      } else {
        const pfd = new Int32Array([this.call[q] as number, POLLIN, 0]);
        if (native().poll(pfd, 50) > 0) takeEventFd(this.call[q] as number);
      }
    }
  }

  close(): void {
    this.channel.close();
    for (const fd of [...this.kick, ...this.call, this.memory.fd]) native().close(fd);
  }
}

const REPLIES = new Set<number>([
  REQ.GET_FEATURES,
  REQ.GET_PROTOCOL_FEATURES,
  REQ.GET_VRING_BASE,
  REQ.GET_QUEUE_NUM,
  REQ.GET_CONFIG,
  REQ.GET_INFLIGHT_FD,
]);
