/**
 * The vhost-user wire format (QEMU docs/interop/vhost-user.rst, "Message Specification"): a 12-byte header
 * (request u32, flags u32, size u32, native byte order: little-endian on the hosts vireo runs on) and a payload
 * whose layout the request type fixes. File descriptors travel beside the bytes as SCM_RIGHTS ancillary data.
 *
 * The parser is incremental, in the style of pg-protocol's and undici's: bytes arrive in any chunks, `wanted`
 * says how many the next read may take without reaching into the following message (so the fds that come with a
 * read belong to exactly one message), and every size is checked against the request type before the payload
 * is read. A frontend that breaks the framing gets a VhostUserProtocolError with a stable code; the stream cannot
 * be trusted after one, so the connection is closed.
 */
import { VireoError } from "../errors.ts";

export const HEADER_SIZE = 12;

/** flags: "Lower 2 bits are the version (currently 0x01)", bit 2 reply, bit 3 need_reply. */
export const VHOST_USER_VERSION = 0x1;
export const VHOST_USER_VERSION_MASK = 0x3;
export const VHOST_USER_REPLY_MASK = 1 << 2;
export const VHOST_USER_NEED_REPLY_MASK = 1 << 3;

/** Front-end message types ("Front-end message types"). */
export const REQ = {
  GET_FEATURES: 1,
  SET_FEATURES: 2,
  SET_OWNER: 3,
  RESET_OWNER: 4,
  SET_MEM_TABLE: 5,
  SET_LOG_BASE: 6,
  SET_LOG_FD: 7,
  SET_VRING_NUM: 8,
  SET_VRING_ADDR: 9,
  SET_VRING_BASE: 10,
  GET_VRING_BASE: 11,
  SET_VRING_KICK: 12,
  SET_VRING_CALL: 13,
  SET_VRING_ERR: 14,
  GET_PROTOCOL_FEATURES: 15,
  SET_PROTOCOL_FEATURES: 16,
  GET_QUEUE_NUM: 17,
  SET_VRING_ENABLE: 18,
  SEND_RARP: 19,
  NET_SET_MTU: 20,
  SET_SLAVE_REQ_FD: 21,
  IOTLB_MSG: 22,
  SET_VRING_ENDIAN: 23,
  GET_CONFIG: 24,
  SET_CONFIG: 25,
  GET_INFLIGHT_FD: 31,
  SET_INFLIGHT_FD: 32,
  RESET_DEVICE: 34,
  VRING_KICK: 35,
  GET_MAX_MEM_SLOTS: 36,
  ADD_MEM_REG: 37,
  REM_MEM_REG: 38,
  SET_STATUS: 39,
  GET_STATUS: 40,
} as const;

const REQ_NAMES = new Map<number, string>(Object.entries(REQ).map(([k, v]) => [v, k]));

export function requestName(request: number): string {
  return REQ_NAMES.get(request) ?? `request ${request}`;
}

/** "Protocol features". */
export const PROTOCOL_F = {
  MQ: 0,
  LOG_SHMFD: 1,
  RARP: 2,
  REPLY_ACK: 3,
  MTU: 4,
  SLAVE_REQ: 5,
  CROSS_ENDIAN: 6,
  CONFIG: 9,
  INFLIGHT_SHMFD: 12,
  RESET_DEVICE: 13,
  CONFIGURE_MEM_SLOTS: 15,
  STATUS: 16,
} as const;

/** The UNUSED (30) virtio feature bit, reused: the back-end speaks GET/SET_PROTOCOL_FEATURES. */
export const VHOST_USER_F_PROTOCOL_FEATURES = 30;
/** SET_VRING_KICK/CALL/ERR: "Bits (0-7) of the payload contain the vring index. Bit 8 is the invalid FD flag." */
export const VRING_INDEX_MASK = 0xff;
export const VRING_NOFD_MASK = 1 << 8;
/** The memory regions description holds at most 8 regions (region0 ... region7). */
export const MAX_MEM_REGIONS = 8;
export const MEM_REGION_SIZE = 32;
/** The most fds any message carries (a memory table's eight). */
export const MAX_MESSAGE_FDS = MAX_MEM_REGIONS;
/** Virtio device config space payload: offset, size, flags, then at most this many bytes (QEMU's bound). */
export const MAX_CONFIG_SIZE = 256;

export type VhostUserErrorCode =
  | "VHOST_USER_BAD_VERSION"
  | "VHOST_USER_BAD_FLAGS"
  | "VHOST_USER_UNKNOWN_REQUEST"
  | "VHOST_USER_BAD_SIZE"
  | "VHOST_USER_BAD_FDS"
  | "VHOST_USER_BAD_PAYLOAD"
  | "VHOST_USER_PUSH_TOO_MUCH";

/** The frontend broke the framing or a payload's form; the connection cannot go on. */
export class VhostUserProtocolError extends VireoError {
  declare readonly code: VhostUserErrorCode;
  constructor(code: VhostUserErrorCode, message: string) {
    super(code, `vhost-user: ${message}`);
  }
}

/** A request well formed but refused (a value out of range, memory that does not fit): NACK or close. */
export class VhostUserRequestError extends VireoError {
  constructor(message: string) {
    super("VHOST_USER_REQUEST", message);
  }
}

/** One memory region ("Memory regions description"); u64 fields as bigints, as received. */
export interface RawMemRegion {
  guestAddr: bigint;
  size: bigint;
  userAddr: bigint;
  mmapOffset: bigint;
}

export type Body =
  | { kind: "none" }
  | { kind: "u64"; value: bigint }
  | { kind: "state"; index: number; num: number }
  | { kind: "addr"; index: number; flags: number; desc: bigint; used: bigint; avail: bigint; log: bigint }
  | { kind: "memory"; regions: RawMemRegion[] }
  | { kind: "region"; region: RawMemRegion }
  | { kind: "log"; size: bigint; offset: bigint }
  | { kind: "config"; offset: number; size: number; flags: number; data: Uint8Array }
  | { kind: "raw"; bytes: Uint8Array };

export interface VhostUserMessage {
  request: number;
  flags: number;
  needReply: boolean;
  /** Owned by whoever takes the message: close them (or keep them) when done. */
  fds: number[];
  body: Body;
}

type Layout =
  | "none"
  | "u64"
  | "state"
  | "addr"
  | "memory"
  | "region"
  | "log"
  | "config"
  | "inflight"
  | "iotlb";

/** What each request's payload is, per the message list (and how many fds it carries). */
const LAYOUT: Record<number, Layout> = {
  [REQ.GET_FEATURES]: "none",
  [REQ.SET_FEATURES]: "u64",
  [REQ.SET_OWNER]: "none",
  [REQ.RESET_OWNER]: "none",
  [REQ.SET_MEM_TABLE]: "memory",
  [REQ.SET_LOG_BASE]: "log",
  [REQ.SET_LOG_FD]: "none",
  [REQ.SET_VRING_NUM]: "state",
  [REQ.SET_VRING_ADDR]: "addr",
  [REQ.SET_VRING_BASE]: "state",
  [REQ.GET_VRING_BASE]: "state",
  [REQ.SET_VRING_KICK]: "u64",
  [REQ.SET_VRING_CALL]: "u64",
  [REQ.SET_VRING_ERR]: "u64",
  [REQ.GET_PROTOCOL_FEATURES]: "none",
  [REQ.SET_PROTOCOL_FEATURES]: "u64",
  [REQ.GET_QUEUE_NUM]: "none",
  [REQ.SET_VRING_ENABLE]: "state",
  [REQ.SEND_RARP]: "u64",
  [REQ.NET_SET_MTU]: "u64",
  [REQ.SET_SLAVE_REQ_FD]: "none",
  [REQ.IOTLB_MSG]: "iotlb",
  [REQ.SET_VRING_ENDIAN]: "state",
  [REQ.GET_CONFIG]: "config",
  [REQ.SET_CONFIG]: "config",
  [REQ.GET_INFLIGHT_FD]: "inflight",
  [REQ.SET_INFLIGHT_FD]: "inflight",
  [REQ.RESET_DEVICE]: "none",
  [REQ.VRING_KICK]: "state",
  [REQ.GET_MAX_MEM_SLOTS]: "none",
  [REQ.ADD_MEM_REG]: "region",
  [REQ.REM_MEM_REG]: "region",
  [REQ.SET_STATUS]: "u64",
  [REQ.GET_STATUS]: "none",
};

/** Fixed payload sizes; memory and config are checked from their own count fields. */
const FIXED_SIZE: Record<Exclude<Layout, "memory" | "config">, number> = {
  none: 0,
  u64: 8,
  state: 8,
  // struct vhost_vring_addr: index, flags, then desc, used, avail and log addresses (u64 each).
  addr: 40,
  // padding u64, then guest address, size, user address, mmap offset.
  region: 40,
  log: 16,
  // mmap size u64, mmap offset u64, num queues u16, queue size u16 (padded to 8 in QEMU's struct).
  inflight: 24,
  // iova, size, uaddr (u64 each), perm u8, type u8, padded to 8.
  iotlb: 32,
};

/** Largest payload any request may carry: a full memory table (8 + 8 * 32); config is smaller (12 + 256). */
export const MAX_PAYLOAD = 8 + MAX_MEM_REGIONS * MEM_REGION_SIZE;

/** Checks a header's size field against its request before any payload byte is read. */
function checkSize(request: number, layout: Layout, size: number): void {
  const name = requestName(request);
  if (layout === "memory") {
    // num regions u32, padding u32, then num regions * 32 bytes.
    if (size < 8 + MEM_REGION_SIZE || size > MAX_PAYLOAD || (size - 8) % MEM_REGION_SIZE !== 0) {
      throw new VhostUserProtocolError(
        "VHOST_USER_BAD_SIZE",
        `${name}: payload size ${size} is not 8 + 32 * n for 1 to ${MAX_MEM_REGIONS} regions`,
      );
    }
    return;
  }
  if (layout === "config") {
    if (size < 12 || size > 12 + MAX_CONFIG_SIZE) {
      throw new VhostUserProtocolError(
        "VHOST_USER_BAD_SIZE",
        `${name}: payload size ${size} is not 12 + 0..${MAX_CONFIG_SIZE} bytes`,
      );
    }
    return;
  }
  const want = FIXED_SIZE[layout];
  if (size !== want) {
    throw new VhostUserProtocolError(
      "VHOST_USER_BAD_SIZE",
      `${name}: payload size ${size}, expected ${want}`,
    );
  }
}

/** How many fds a message must carry, given its decoded body; null: 0 or 1 are both accepted. */
function expectedFds(request: number, body: Body): number | null {
  switch (request) {
    case REQ.SET_MEM_TABLE:
      // "The size and ordering of the fds matches the number and ordering of memory regions."
      return body.kind === "memory" ? body.regions.length : 0;
    case REQ.SET_VRING_KICK:
    case REQ.SET_VRING_CALL:
    case REQ.SET_VRING_ERR:
      // Bit 8 set: "there is no file descriptor in the ancillary data".
      return body.kind === "u64" && (body.value & BigInt(VRING_NOFD_MASK)) !== 0n ? 0 : 1;
    case REQ.SET_LOG_FD:
    case REQ.SET_SLAVE_REQ_FD:
    case REQ.SET_INFLIGHT_FD:
    case REQ.ADD_MEM_REG:
      return 1;
    case REQ.SET_LOG_BASE:
    case REQ.REM_MEM_REG:
      // LOG_BASE carries one with LOG_SHMFD only; REM_MEM_REG "MAY accept messages with one file descriptor".
      return null;
    default:
      return 0;
  }
}

function u64(v: DataView, off: number): bigint {
  return v.getBigUint64(off, true);
}

function region(v: DataView, off: number): RawMemRegion {
  return {
    guestAddr: u64(v, off),
    size: u64(v, off + 8),
    userAddr: u64(v, off + 16),
    mmapOffset: u64(v, off + 24),
  };
}

function decode(request: number, layout: Layout, p: Uint8Array): Body {
  const v = new DataView(p.buffer, p.byteOffset, p.byteLength);
  switch (layout) {
    case "none":
      return { kind: "none" };
    case "u64":
      return { kind: "u64", value: u64(v, 0) };
    case "state":
      return { kind: "state", index: v.getUint32(0, true), num: v.getUint32(4, true) };
    case "addr":
      return {
        kind: "addr",
        index: v.getUint32(0, true),
        flags: v.getUint32(4, true),
        desc: u64(v, 8),
        used: u64(v, 16),
        avail: u64(v, 24),
        log: u64(v, 32),
      };
    case "memory": {
      const n = v.getUint32(0, true);
      // The size was checked to be 8 + 32k; the count must say k.
      if (n !== (p.length - 8) / MEM_REGION_SIZE) {
        throw new VhostUserProtocolError(
          "VHOST_USER_BAD_PAYLOAD",
          `${requestName(request)}: num regions ${n} does not match the payload size ${p.length}`,
        );
      }
      const regions: RawMemRegion[] = [];
      for (let i = 0; i < n; i++) regions.push(region(v, 8 + MEM_REGION_SIZE * i));
      return { kind: "memory", regions };
    }
    case "region":
      return { kind: "region", region: region(v, 8) };
    case "log":
      return { kind: "log", size: u64(v, 0), offset: u64(v, 8) };
    case "config": {
      const offset = v.getUint32(0, true);
      const size = v.getUint32(4, true);
      if (size !== p.length - 12) {
        throw new VhostUserProtocolError(
          "VHOST_USER_BAD_PAYLOAD",
          `${requestName(request)}: config size ${size} does not match the payload size ${p.length}`,
        );
      }
      return { kind: "config", offset, size, flags: v.getUint32(8, true), data: p.slice(12) };
    }
    default:
      return { kind: "raw", bytes: p.slice() };
  }
}

export interface ParserOptions {
  /** Closes fds the parser refuses (default: none are closed; the connection does it through this hook). */
  closeFd?: (fd: number) => void;
}

/**
 * Incremental parser of front-end requests. Feed it what one read returned (at most `wanted` bytes) with the
 * fds that came with it; it returns a message once one is complete. Any VhostUserProtocolError leaves it unusable.
 */
export class VhostUserParser {
  private readonly header = new Uint8Array(HEADER_SIZE);
  private readonly headerView = new DataView(this.header.buffer);
  private have = 0;
  private request = 0;
  private flags = 0;
  private layout: Layout = "none";
  private payload: Uint8Array | null = null;
  private fds: number[] = [];
  private failed = false;
  private readonly closeFd: (fd: number) => void;
  /** Messages completed so far. */
  messages = 0;

  constructor(opts: ParserOptions = {}) {
    this.closeFd = opts.closeFd ?? (() => {});
  }

  /** Bytes the next read may take: the rest of the header or of the payload. */
  get wanted(): number {
    return this.payload === null ? HEADER_SIZE - this.have : this.payload.length - this.have;
  }

  /** Whether a message is partly read (a clean end of stream comes between messages). */
  get midMessage(): boolean {
    return this.have > 0 || this.payload !== null || this.fds.length > 0;
  }

  push(chunk: Uint8Array, fds: readonly number[] = []): VhostUserMessage | null {
    if (this.failed) {
      for (const fd of fds) this.closeFd(fd);
      throw new VhostUserProtocolError("VHOST_USER_BAD_PAYLOAD", "parser used after an error");
    }
    try {
      return this.step(chunk, fds);
    } catch (e) {
      this.failed = true;
      this.dropFds();
      throw e;
    }
  }

  /** The connection ended: closes fds that came with a message never completed. */
  dispose(): void {
    this.failed = true;
    this.dropFds();
  }

  private dropFds(): void {
    for (const fd of this.fds) this.closeFd(fd);
    this.fds = [];
  }

  private step(chunk: Uint8Array, fds: readonly number[]): VhostUserMessage | null {
    this.fds.push(...fds);
    if (this.fds.length > MAX_MESSAGE_FDS) {
      throw new VhostUserProtocolError(
        "VHOST_USER_BAD_FDS",
        `more than ${MAX_MESSAGE_FDS} fds with one message`,
      );
    }
    if (chunk.length > this.wanted) {
      throw new VhostUserProtocolError(
        "VHOST_USER_PUSH_TOO_MUCH",
        `${chunk.length} bytes pushed where the message needs ${this.wanted}`,
      );
    }
    if (chunk.length === 0) return null;
    if (this.payload === null) {
      this.header.set(chunk, this.have);
      this.have += chunk.length;
      if (this.have < HEADER_SIZE) return null;
      if (this.startPayload().length > 0) return null;
    } else {
      this.payload.set(chunk, this.have);
      this.have += chunk.length;
      if (this.have < this.payload.length) return null;
    }
    return this.finish();
  }

  private startPayload(): Uint8Array {
    const h = this.headerView;
    const request = h.getUint32(0, true);
    const flags = h.getUint32(4, true);
    const size = h.getUint32(8, true);
    if ((flags & VHOST_USER_VERSION_MASK) !== VHOST_USER_VERSION) {
      throw new VhostUserProtocolError(
        "VHOST_USER_BAD_VERSION",
        `${requestName(request)}: version ${flags & VHOST_USER_VERSION_MASK}, this back-end speaks 1`,
      );
    }
    // Bit 2 is set on replies only (from the back-end); no other bits are defined.
    if ((flags & ~(VHOST_USER_VERSION_MASK | VHOST_USER_NEED_REPLY_MASK)) !== 0) {
      throw new VhostUserProtocolError(
        "VHOST_USER_BAD_FLAGS",
        `${requestName(request)}: flags 0x${flags.toString(16)} (a request may set only version and need_reply)`,
      );
    }
    const layout = LAYOUT[request];
    if (layout === undefined) {
      throw new VhostUserProtocolError(
        "VHOST_USER_UNKNOWN_REQUEST",
        `unknown request ${request} (size ${size})`,
      );
    }
    checkSize(request, layout, size);
    this.request = request;
    this.flags = flags;
    this.layout = layout;
    this.payload = new Uint8Array(size);
    this.have = 0;
    return this.payload;
  }

  private finish(): VhostUserMessage {
    const request = this.request;
    const body = decode(request, this.layout, this.payload as Uint8Array);
    const want = expectedFds(request, body);
    const got = this.fds.length;
    if (want === null ? got > 1 : got !== want) {
      throw new VhostUserProtocolError(
        "VHOST_USER_BAD_FDS",
        `${requestName(request)}: ${got} fds, expected ${want === null ? "0 or 1" : want}`,
      );
    }
    const msg: VhostUserMessage = {
      request,
      flags: this.flags,
      needReply: (this.flags & VHOST_USER_NEED_REPLY_MASK) !== 0,
      fds: this.fds,
      body,
    };
    this.fds = [];
    this.payload = null;
    this.have = 0;
    this.messages++;
    return msg;
  }
}

// ---- encoding ---------------------------------------------------------------------------------------------------

function frame(request: number, flags: number, payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(HEADER_SIZE + payload.length);
  const v = new DataView(out.buffer);
  v.setUint32(0, request, true);
  v.setUint32(4, flags, true);
  v.setUint32(8, payload.length, true);
  out.set(payload, HEADER_SIZE);
  return out;
}

/** A back-end reply: the request's type, version 1 with the reply flag. */
export function encodeReply(request: number, payload: Uint8Array): Uint8Array {
  return frame(request, VHOST_USER_VERSION | VHOST_USER_REPLY_MASK, payload);
}

export function u64Payload(value: bigint): Uint8Array {
  const p = new Uint8Array(8);
  new DataView(p.buffer).setBigUint64(0, BigInt.asUintN(64, value), true);
  return p;
}

export function statePayload(index: number, num: number): Uint8Array {
  const p = new Uint8Array(8);
  const v = new DataView(p.buffer);
  v.setUint32(0, index >>> 0, true);
  v.setUint32(4, num >>> 0, true);
  return p;
}

export function addrPayload(a: {
  index: number;
  flags?: number;
  desc: bigint;
  used: bigint;
  avail: bigint;
  log?: bigint;
}): Uint8Array {
  const p = new Uint8Array(40);
  const v = new DataView(p.buffer);
  v.setUint32(0, a.index >>> 0, true);
  v.setUint32(4, (a.flags ?? 0) >>> 0, true);
  v.setBigUint64(8, a.desc, true);
  v.setBigUint64(16, a.used, true);
  v.setBigUint64(24, a.avail, true);
  v.setBigUint64(32, a.log ?? 0n, true);
  return p;
}

export function memoryPayload(regions: RawMemRegion[]): Uint8Array {
  const p = new Uint8Array(8 + MEM_REGION_SIZE * regions.length);
  const v = new DataView(p.buffer);
  v.setUint32(0, regions.length, true);
  regions.forEach((r, i) => {
    const o = 8 + MEM_REGION_SIZE * i;
    v.setBigUint64(o, r.guestAddr, true);
    v.setBigUint64(o + 8, r.size, true);
    v.setBigUint64(o + 16, r.userAddr, true);
    v.setBigUint64(o + 24, r.mmapOffset, true);
  });
  return p;
}

/** ADD_MEM_REG / REM_MEM_REG's "single memory region description": 64-bit padding, then the region. */
export function regionPayload(r: RawMemRegion): Uint8Array {
  const p = new Uint8Array(8 + MEM_REGION_SIZE);
  const v = new DataView(p.buffer);
  v.setBigUint64(8, r.guestAddr, true);
  v.setBigUint64(16, r.size, true);
  v.setBigUint64(24, r.userAddr, true);
  v.setBigUint64(32, r.mmapOffset, true);
  return p;
}

/** A front-end request (for tests and for a future vireo front-end). */
export function encodeRequest(
  request: number,
  payload: Uint8Array = new Uint8Array(0),
  needReply = false,
): Uint8Array {
  return frame(request, VHOST_USER_VERSION | (needReply ? VHOST_USER_NEED_REPLY_MASK : 0), payload);
}

/** Parses a back-end reply header: request, flags, size (for front-ends). */
export function decodeHeader(bytes: Uint8Array): { request: number; flags: number; size: number } {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return { request: v.getUint32(0, true), flags: v.getUint32(4, true), size: v.getUint32(8, true) };
}
