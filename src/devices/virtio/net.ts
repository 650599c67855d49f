/**
 * virtio-net, the network device (OASIS virtio 1.2, 5.1 Network Device): one receive and one transmit queue over a
 * NetBackend (src/net/backend.ts).
 *
 * Every buffer starts with struct virtio_net_hdr, 12 bytes with VIRTIO_F_VERSION_1 (5.1.6). What happens to it
 * depends on the backend:
 * - A plain backend carries bare Ethernet frames. The device strips the header on transmit, completing a
 *   partial checksum (VIRTIO_NET_HDR_F_NEEDS_CSUM, with VIRTIO_NET_F_CSUM) in software, and prepends a zeroed
 *   header on receive. Segmentation offloads are not offered (there would be nothing to segment with).
 * - A backend with `vnetHdr` (a TAP opened with IFF_VNET_HDR) takes and produces frames that start with the
 *   12-byte header. The device then offers the checksum and TSO offloads both ways and passes headers through;
 *   `setOffloads` tells the backend what the driver accepted (TUNSETOFFLOAD).
 *
 * Receive: the backend calls the receiver with a frame; the device writes it into the next receive buffer, or
 * with VIRTIO_NET_F_MRG_RXBUF across as many buffers as it needs (num_buffers). With too few buffers the
 * receiver returns false and gives back what it took: the backend keeps the frame, and the device calls
 * `rxReady()` when the driver posts buffers, so nothing is lost within the backend's queue bound.
 *
 * The backend object belongs to the thread that uses it: each thread's VirtioNet gets a NetBackend callable from
 * that thread (on a vCPU thread, a proxy to the I/O thread that owns the real one).
 */
import { NO_COUNTER } from "../../metrics/registry.ts";
import type { NetBackend, Receiver } from "../../net/backend.ts";
import { featureBit, hasFeature, VIRTIO_F, VIRTIO_ID } from "./constants.ts";
import {
  type DrainOptions,
  type VirtioContext,
  type VirtioDeviceModel,
  VirtioRequestError,
} from "./device.ts";
import {
  claimBuffers,
  claimSingles,
  copyFromChain,
  copyToChain,
  type DescriptorChain,
  SingleBuffers,
  unpopRange,
  type Virtqueue,
} from "./queue/index.ts";
import type { WorkBudget } from "./work-budget.ts";

/** Feature bits (5.1.3). */
export const VIRTIO_NET_F = {
  CSUM: 0,
  GUEST_CSUM: 1,
  CTRL_GUEST_OFFLOADS: 2,
  MTU: 3,
  MAC: 5,
  GUEST_TSO4: 7,
  GUEST_TSO6: 8,
  GUEST_ECN: 9,
  GUEST_UFO: 10,
  HOST_TSO4: 11,
  HOST_TSO6: 12,
  HOST_ECN: 13,
  HOST_UFO: 14,
  MRG_RXBUF: 15,
  STATUS: 16,
  CTRL_VQ: 17,
  MQ: 22,
} as const;

/** struct virtio_net_hdr (5.1.6). */
export const VIRTIO_NET_HDR_SIZE = 12;
export const VIRTIO_NET_HDR_F_NEEDS_CSUM = 1;
export const VIRTIO_NET_HDR_F_DATA_VALID = 2;
export const VIRTIO_NET_HDR_GSO_NONE = 0;
export const VIRTIO_NET_HDR_GSO_TCPV4 = 1;
export const VIRTIO_NET_HDR_GSO_UDP = 3;
export const VIRTIO_NET_HDR_GSO_TCPV6 = 4;
export const VIRTIO_NET_HDR_GSO_ECN = 0x80;

/** Offsets in struct virtio_net_config (5.1.4). */
export const NET_CONFIG = {
  MAC: 0,
  STATUS: 6,
  MAX_VIRTQUEUE_PAIRS: 8,
  MTU: 10,
  SPEED: 12,
  DUPLEX: 16,
  SIZE: 20,
} as const;
export const VIRTIO_NET_S_LINK_UP = 1;

export const NET_RX_QUEUE = 0;
export const NET_TX_QUEUE = 1;

/** Frames from this size on are realigned (copyToShared) when source and destination disagree mod 8. */
const REALIGN_FROM = 256;

/**
 * Copies `src` into `dst` (a view of guest memory, a SharedArrayBuffer) at `at`. TypedArray.set into a
 * SharedArrayBuffer copies 8-byte words only when source and destination addresses agree mod 8, and byte by byte
 * otherwise: about 110 ns against 500 ns for 1518 bytes on these machines. A large frame whose alignment disagrees
 * goes through `stage` (an ordinary buffer, where set is a plain memmove) at the destination's alignment first.
 * `dst` and `stage` start at byte 0 of their buffers (GuestMemory.bytes and rxStage are whole buffers), so only
 * the source's byteOffset is read: a getter that costs about 12 ns a call here, where `length` costs 1. (Were
 * they not, the copy would still be right, only not realigned.)
 */
function copyToShared(dst: Uint8Array, at: number, src: Uint8Array, stage: Uint8Array): void {
  const len = src.length;
  // Short frames first, without reading byteOffset (a getter, which cost 5 % of the switch's time per frame).
  if (len < REALIGN_FROM) {
    dst.set(src, at);
    return;
  }
  const r = at & 7;
  if (((src.byteOffset - r) & 7) === 0 || len + 8 > stage.length) {
    dst.set(src, at);
    return;
  }
  const view = stage.subarray(r, r + len);
  view.set(src);
  dst.set(view, at);
}

/** Frames one Receiver.burst call places at most (the receive queue is held meanwhile). */
const RX_BURST = 256;
const NO_PEEK = (): Uint8Array | null => null;
const NO_TAKE = (): void => {};

/** Received frames whose used buffers may wait for the end of a burst (Receiver `more`) before they are published. */
const RX_HOLD = 64;

/**
 * The start of a receive buffer a burst claims (claimBuffers) when it takes buffers ahead, RX_PUBLISH at a time:
 * the header and a minimal frame (60 bytes), the cache lines every frame writes.
 */
const RX_CLAIM_SPAN = VIRTIO_NET_HDR_SIZE + 60;

/** Frames of a burst published at a time (a power of 2; a DPDK burst). */
const RX_PUBLISH = 64;

/** Largest frame with a GSO header (64 KiB payload plus Ethernet and a VLAN tag), and the TX bound. */
const MAX_FRAME = 65535 + 14 + 4;
/**
 * A backend that reads the frames it is sent gets the start of the next buffers read a batch ahead
 * (DrainOptions.readAhead): the header and a minimal frame (60 bytes). For one that does not read them (a sink,
 * VirtioNetBackend.readsFrames false) nothing is read ahead: reading only the headers ahead was measured slower
 * (guest-tx 64 B into the sink, about 5 %) than letting transmit read each header as it comes.
 */
const READ_AHEAD_FRAMES: DrainOptions = { readAhead: VIRTIO_NET_HDR_SIZE + 60 };
const NO_READ_AHEAD: DrainOptions = {};

/** What the driver accepted of the receive offloads, for a vnet-header backend (TUNSETOFFLOAD). */
export interface NetOffloads {
  csum: boolean;
  tso4: boolean;
  tso6: boolean;
  ecn: boolean;
}

/** A NetBackend, optionally speaking virtio_net_hdr-prefixed frames. */
export interface VirtioNetBackend extends NetBackend {
  /** send() takes and the receiver gets frames that start with a 12-byte struct virtio_net_hdr. */
  readonly vnetHdr?: boolean;
  /** The driver's receive offloads, once negotiated (only called on vnetHdr backends). */
  setOffloads?(offloads: NetOffloads): void;
  /**
   * Optional: sends the frame at bytes[offset, offset + length), as `send` would a Uint8Array of it (the same
   * contract: nothing kept after returning). The device calls it, when present, instead of making a view per
   * frame; `bytes` may be guest memory.
   */
  sendFrom?(bytes: Uint8Array, offset: number, length: number): boolean;
  /**
   * False for a backend that does not read the frames it is sent (a sink that counts them): transmit then reads
   * nothing ahead (DrainOptions.readAhead). Default true.
   */
  readonly readsFrames?: boolean;
}

export interface VirtioNetOptions {
  backend: VirtioNetBackend;
  name?: string;
  /** Default: a random locally administered unicast address. */
  mac?: Uint8Array;
  /** Offer VIRTIO_NET_F_MTU with this MTU. */
  mtu?: number;
  queueSize?: number;
  /** Link state at creation (shared state starts here); default up. */
  linkUp?: boolean;
}

/** 16-bit ones' complement sum of bytes (RFC 1071), not yet complemented. */
function onesSum(b: Uint8Array, from: number, to: number): number {
  let sum = 0;
  let i = from;
  for (; i + 1 < to; i += 2) sum += ((b[i] as number) << 8) | (b[i + 1] as number);
  if (i < to) sum += (b[i] as number) << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return sum;
}

/**
 * 5.1.6.2: completes a partial checksum: the ones' complement of the sum from csum_start to the end of the
 * frame, stored at csum_start + csum_offset (the driver put the pseudo-header sum there). False if the offsets
 * do not fit the frame.
 */
export function completeChecksum(frame: Uint8Array, csumStart: number, csumOffset: number): boolean {
  const at = csumStart + csumOffset;
  if (csumStart >= frame.length || at + 2 > frame.length) return false;
  let c = ~onesSum(frame, csumStart, frame.length) & 0xffff;
  // A zero UDP checksum means "none"; RFC 768 transmits all ones instead. Harmless for TCP (never 0 here).
  if (c === 0) c = 0xffff;
  frame[at] = c >>> 8;
  frame[at + 1] = c & 0xff;
  return true;
}

function randomMac(): Uint8Array {
  const mac = new Uint8Array(6);
  crypto.getRandomValues(mac);
  mac[0] = ((mac[0] as number) & 0xfe) | 0x02; // unicast, locally administered
  return mac;
}

// Shared state: one Int32: link state (0 as created, 1 up, 2 down).
const S_LINK = 0;

export class VirtioNet implements VirtioDeviceModel {
  readonly type = VIRTIO_ID.NET;
  readonly name: string;
  readonly numQueues = 2;
  readonly maxQueueSize: number;
  readonly features: bigint;
  readonly configSize = NET_CONFIG.SIZE;
  readonly stateBytes = 8;
  readonly mac: Uint8Array;
  readonly backend: VirtioNetBackend;
  private readonly mtu: number | undefined;
  private readonly linkUpAtStart: boolean;
  private readonly vnetHdr: boolean;
  /** What transmit reads ahead (READ_AHEAD_FRAMES, or NO_READ_AHEAD for a backend that reads no frame). */
  private readonly readAhead: DrainOptions;
  /** Transmit frames are copied out of guest memory here: allocated once, no allocation per frame. */
  private readonly txBuffer = new Uint8Array(VIRTIO_NET_HDR_SIZE + MAX_FRAME);
  /** The transmit header as read from the chain (struct virtio_net_hdr), reused. */
  private readonly txHeader = new Uint8Array(VIRTIO_NET_HDR_SIZE);
  /** The receive header being written (reused), and the chains one received frame takes (reused). */
  private readonly rxHeader = new Uint8Array(VIRTIO_NET_HDR_SIZE);
  /** Where a large received frame is realigned on its way into guest memory (copyToShared). */
  private readonly rxStage = new Uint8Array(MAX_FRAME + 8);
  private rxChains: DescriptorChain[] = [];
  /** The frame receive() is placing, for the queue callback (bound once, so receiving allocates no closure). */
  private rxFrame: Uint8Array = this.rxHeader;
  private rxMore = false;
  /** Frames placed whose used buffers are not yet published (the backend said more were coming). */
  private rxHeld = 0;
  private readonly placeFrame = (vq: Virtqueue | null): boolean =>
    vq === null ? false : this.place(vq, this.rxFrame);
  private readonly transmitChain = (chain: DescriptorChain, work: WorkBudget): number => {
    // The bytes copied out and handed to the backend (a dropped oversized chain costs next to nothing).
    work.spend(chain.readableLength <= VIRTIO_NET_HDR_SIZE + MAX_FRAME ? chain.readableLength : 1);
    return this.transmit(chain);
  };
  /** Transmit for a chain of one readable descriptor, in its flat form (DrainOptions.readableSingle). */
  private readonly transmitSingle = (off: number, len: number, id: number, work: WorkBudget): number => {
    work.spend(len <= VIRTIO_NET_HDR_SIZE + MAX_FRAME ? len : 1);
    if (this.transmitLengthOk(id, len)) this.transmitBytes(off, len);
    return 0;
  };
  /** What transmit's drain is given: the read-ahead, and transmitSingle (bound once). */
  private readonly txDrain: DrainOptions;
  private ctx!: VirtioContext;
  private link!: Int32Array;
  private c = {
    txPackets: NO_COUNTER,
    txBytes: NO_COUNTER,
    txDropped: NO_COUNTER,
    rxPackets: NO_COUNTER,
    rxBytes: NO_COUNTER,
    rxDropped: NO_COUNTER,
    rxNoBuffers: NO_COUNTER,
  };

  constructor(opts: VirtioNetOptions) {
    this.backend = opts.backend;
    this.name = opts.name ?? "net0";
    this.maxQueueSize = opts.queueSize ?? 256;
    this.mac = opts.mac ? opts.mac.slice(0, 6) : randomMac();
    this.mtu = opts.mtu;
    this.linkUpAtStart = opts.linkUp ?? true;
    this.vnetHdr = opts.backend.vnetHdr === true;
    this.readAhead = opts.backend.readsFrames === false ? NO_READ_AHEAD : READ_AHEAD_FRAMES;
    this.txDrain = { ...this.readAhead, readableSingle: this.transmitSingle };
    let f =
      featureBit(VIRTIO_NET_F.MAC) |
      featureBit(VIRTIO_NET_F.STATUS) |
      featureBit(VIRTIO_NET_F.MRG_RXBUF) |
      featureBit(VIRTIO_NET_F.CSUM) |
      // Every path here uses buffers in the order they came (transmit serves chains in ring order; receive fills
      // buffers in ring order and gives back, last first, those it does not use): 2.7.9.
      featureBit(VIRTIO_F.IN_ORDER);
    if (this.mtu !== undefined) f |= featureBit(VIRTIO_NET_F.MTU);
    if (this.vnetHdr) {
      for (const b of [
        VIRTIO_NET_F.GUEST_CSUM,
        VIRTIO_NET_F.GUEST_TSO4,
        VIRTIO_NET_F.GUEST_TSO6,
        VIRTIO_NET_F.HOST_TSO4,
        VIRTIO_NET_F.HOST_TSO6,
      ]) {
        f |= featureBit(b);
      }
    }
    this.features = f;
  }

  bind(ctx: VirtioContext): void {
    this.ctx = ctx;
    this.link = new Int32Array(ctx.stateBuffer, ctx.stateOffset, 1);
    const m = ctx.metrics;
    if (m) {
      const p = `virtio.${this.name}`;
      this.c = {
        txPackets: m.counter(`${p}.tx_packets`),
        txBytes: m.counter(`${p}.tx_bytes`),
        txDropped: m.counter(`${p}.tx_dropped`),
        rxPackets: m.counter(`${p}.rx_packets`),
        rxBytes: m.counter(`${p}.rx_bytes`),
        rxDropped: m.counter(`${p}.rx_dropped`),
        rxNoBuffers: m.counter(`${p}.rx_no_buffers`),
      };
    }
    const receiver: Receiver = (frame, more) => this.receive(frame, more);
    receiver.burst = (peek, take, expected) => this.receiveBurst(peek, take, expected);
    receiver.flush = () => this.flushReceived();
    this.backend.attach(receiver);
  }

  /** Snapshots: the region is the link word (0: as at start, 1: up, 2: pulled) and a word kept 0. */
  checkState(region: Uint8Array): string | null {
    const v = new DataView(region.buffer, region.byteOffset, region.byteLength);
    const link = v.getInt32(4 * S_LINK, true);
    if (link < 0 || link > 2) return `link state ${link} is not 0, 1 or 2`;
    if (v.getInt32(4, true) !== 0) return "the unused word is not 0";
    return null;
  }

  get linkUp(): boolean {
    const s = Atomics.load(this.link, S_LINK);
    return s === 0 ? this.linkUpAtStart : s === 1;
  }

  /** Plugs or pulls the cable: config status changes and the driver gets a configuration change (5.1.4). */
  setLinkUp(up: boolean): void {
    if (up === this.linkUp) return;
    Atomics.store(this.link, S_LINK, up ? 1 : 2);
    this.ctx.configChanged();
  }

  readConfig(offset: number, data: Uint8Array): void {
    const cfg = new Uint8Array(NET_CONFIG.SIZE);
    const v = new DataView(cfg.buffer);
    cfg.set(this.mac, NET_CONFIG.MAC);
    v.setUint16(NET_CONFIG.STATUS, this.linkUp ? VIRTIO_NET_S_LINK_UP : 0, true);
    v.setUint16(NET_CONFIG.MAX_VIRTQUEUE_PAIRS, 1, true);
    v.setUint16(NET_CONFIG.MTU, this.mtu ?? 0, true);
    v.setUint32(NET_CONFIG.SPEED, 0xffffffff, true); // unknown
    v.setUint8(NET_CONFIG.DUPLEX, 0xff); // unknown
    data.set(cfg.subarray(offset, offset + data.length));
  }

  /** 5.1.3.1: feature dependencies. */
  validateFeatures(accepted: bigint): string | null {
    const has = (b: number) => hasFeature(accepted, b);
    for (const b of [
      VIRTIO_NET_F.GUEST_TSO4,
      VIRTIO_NET_F.GUEST_TSO6,
      VIRTIO_NET_F.GUEST_ECN,
      VIRTIO_NET_F.GUEST_UFO,
    ]) {
      if (has(b) && !has(VIRTIO_NET_F.GUEST_CSUM)) return `net feature ${b} needs VIRTIO_NET_F_GUEST_CSUM`;
    }
    for (const b of [
      VIRTIO_NET_F.HOST_TSO4,
      VIRTIO_NET_F.HOST_TSO6,
      VIRTIO_NET_F.HOST_ECN,
      VIRTIO_NET_F.HOST_UFO,
    ]) {
      if (has(b) && !has(VIRTIO_NET_F.CSUM)) return `net feature ${b} needs VIRTIO_NET_F_CSUM`;
    }
    return null;
  }

  activate(): void {
    if (this.vnetHdr && this.backend.setOffloads) {
      const has = (b: number) => this.ctx.hasFeature(b);
      this.backend.setOffloads({
        csum: has(VIRTIO_NET_F.GUEST_CSUM),
        tso4: has(VIRTIO_NET_F.GUEST_TSO4),
        tso6: has(VIRTIO_NET_F.GUEST_TSO6),
        ecn: has(VIRTIO_NET_F.GUEST_ECN),
      });
    }
    this.queueNotified(NET_TX_QUEUE);
    this.backend.rxReady();
  }

  queueNotified(q: number): void {
    if (q === NET_RX_QUEUE) this.backend.rxReady();
    else if (q === NET_TX_QUEUE) this.ctx.drain(NET_TX_QUEUE, this.transmitChain, this.txDrain);
  }

  // ---- transmit (5.1.6.2) -------------------------------------------------------------------------------------

  private transmit(chain: DescriptorChain): number {
    if (chain.writableLength > 0) {
      throw new VirtioRequestError(
        `transmit buffer ${chain.id} has ${chain.writableLength} device-writable bytes`,
      );
    }
    if (!this.transmitLengthOk(chain.id, chain.readableLength)) return 0;
    const mem = this.ctx.mem;
    const total = chain.readableLength;
    const frameLen = total - VIRTIO_NET_HDR_SIZE;
    const first = chain.readable[0] as { addr: number; len: number };
    if (first.len >= total) {
      // Header and frame in one segment (as DPDK's virtio_user sends a frame): one bounds check for both.
      this.transmitBytes(mem.check(first.addr, total), total);
      return 0;
    }
    if (this.vnetHdr) {
      // Offloads pass through: the backend gets the header with the frame.
      this.count(this.sendRange(chain, 0, total), frameLen);
      return 0;
    }
    const h = this.txHeader;
    copyFromChain(mem, chain, 0, h, 0, VIRTIO_NET_HDR_SIZE);
    if (!this.plainHeaderSendable(h[0] as number, h[1] as number)) return 0;
    if ((h[0] as number) & VIRTIO_NET_HDR_F_NEEDS_CSUM) {
      const n = copyFromChain(mem, chain, VIRTIO_NET_HDR_SIZE, this.txBuffer, 0, frameLen);
      this.sendChecksummed(n, h);
      return 0;
    }
    this.count(this.sendRange(chain, VIRTIO_NET_HDR_SIZE, frameLen), frameLen);
    return 0;
  }

  /**
   * A transmit buffer of `len` readable bytes: shorter than the header is the driver's error (5.1.6.2: every
   * buffer starts with it); longer than the header and the largest frame is dropped (counted), unread.
   */
  private transmitLengthOk(id: number, len: number): boolean {
    if (len < VIRTIO_NET_HDR_SIZE) {
      throw new VirtioRequestError(
        `transmit buffer ${id} has ${len} bytes, shorter than the ${VIRTIO_NET_HDR_SIZE}-byte header`,
      );
    }
    if (len > VIRTIO_NET_HDR_SIZE + MAX_FRAME) {
      this.c.txDropped.add();
      return false;
    }
    return true;
  }

  /**
   * Transmits a frame whose header and bytes are one buffer, mem.bytes[off, off + total) (total from the header's
   * 12 bytes to 12 + MAX_FRAME, checked by the caller).
   */
  private transmitBytes(off: number, total: number): void {
    const bytes = this.ctx.mem.bytes;
    const frameLen = total - VIRTIO_NET_HDR_SIZE;
    const b = this.backend;
    if (this.vnetHdr) {
      // Offloads pass through: the backend gets the header with the frame.
      this.count(
        b.sendFrom ? b.sendFrom(bytes, off, total) : b.send(bytes.subarray(off, off + total)),
        frameLen,
      );
      return;
    }
    const flags = bytes[off] as number;
    const gso = bytes[off + 1] as number;
    if ((flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) === 0 && (gso & ~VIRTIO_NET_HDR_GSO_ECN) === 0) {
      const at = off + VIRTIO_NET_HDR_SIZE;
      this.count(
        b.sendFrom ? b.sendFrom(bytes, at, frameLen) : b.send(bytes.subarray(at, at + frameLen)),
        frameLen,
      );
      return;
    }
    if (!this.plainHeaderSendable(flags, gso)) return;
    // NEEDS_CSUM: the header is read once, into txHeader (the guest may rewrite its buffer meanwhile).
    const h = this.txHeader;
    h.set(bytes.subarray(off, off + VIRTIO_NET_HDR_SIZE));
    this.txBuffer.set(bytes.subarray(off + VIRTIO_NET_HDR_SIZE, off + total));
    this.sendChecksummed(frameLen, h);
  }

  /**
   * For a plain backend: can a frame with these header flags and gso_type be sent? A GSO frame (we offer no
   * HOST_TSO to a plain backend, so the driver sends none) and a partial checksum without VIRTIO_NET_F_CSUM are
   * dropped (counted).
   */
  private plainHeaderSendable(flags: number, gso: number): boolean {
    if ((gso & ~VIRTIO_NET_HDR_GSO_ECN) !== VIRTIO_NET_HDR_GSO_NONE) {
      this.c.txDropped.add();
      return false;
    }
    if (flags & VIRTIO_NET_HDR_F_NEEDS_CSUM && !this.ctx.hasFeature(VIRTIO_NET_F.CSUM)) {
      this.c.txDropped.add();
      return false;
    }
    return true;
  }

  /**
   * Sends txBuffer's first `frameLen` bytes after completing the partial checksum header `h` asks for (5.1.6.2):
   * the checksum is written into this copy, never into the guest's buffer.
   */
  private sendChecksummed(frameLen: number, h: Uint8Array): void {
    const frame = this.txBuffer.subarray(0, frameLen);
    const start = (h[6] as number) | ((h[7] as number) << 8);
    const offset = (h[8] as number) | ((h[9] as number) << 8);
    if (!completeChecksum(frame, start, offset)) {
      this.c.txDropped.add();
      return;
    }
    this.count(this.backend.send(frame), frameLen);
  }

  /**
   * Hands the backend `len` readable bytes of the chain from `skip` on. Bytes in one guest segment go as they
   * are (backends do not keep the frame, NetBackend.send); bytes spread over several are copied into txBuffer
   * first. The guest may change its buffer meanwhile: that changes only what its own frame carries.
   */
  private sendRange(chain: DescriptorChain, skip: number, len: number): boolean {
    const mem = this.ctx.mem;
    const segs = chain.readable;
    let left = skip;
    for (let i = 0; i < segs.length; i++) {
      const s = segs[i] as { addr: number; len: number };
      if (left >= s.len) {
        left -= s.len;
        continue;
      }
      if (s.len - left < len) break;
      // mem.check refuses what lies outside guest memory (for vhost-user: outside one region).
      const off = mem.check(s.addr + left, len);
      const b = this.backend;
      return b.sendFrom ? b.sendFrom(mem.bytes, off, len) : b.send(mem.bytes.subarray(off, off + len));
    }
    const n = copyFromChain(mem, chain, skip, this.txBuffer, 0, len);
    return this.backend.send(this.txBuffer.subarray(0, n));
  }

  private count(sent: boolean, bytes: number): void {
    if (!sent) {
      this.c.txDropped.add();
      return;
    }
    this.c.txPackets.add();
    this.c.txBytes.add(bytes);
  }

  // ---- receive (5.1.6.3, 5.1.6.4) -----------------------------------------------------------------------------

  /** The backend's receiver: false when the guest has no buffer for the frame yet (the backend keeps it). */
  receive(frame: Uint8Array, more = false): boolean {
    this.rxFrame = frame;
    this.rxMore = more;
    const placed = this.ctx.withQueue(NET_RX_QUEUE, this.placeFrame);
    this.rxFrame = this.rxHeader;
    if (placed === undefined) this.rxHeld = 0; // the device failed: nothing more will be published
    return placed ?? false;
  }

  /** Receiver.flush: publishes the used buffers of frames placed with `more` and not yet published. */
  flushReceived(): void {
    if (this.rxHeld === 0) return;
    this.ctx.withQueue(NET_RX_QUEUE, this.publishHeld);
  }

  private readonly publishHeld = (vq: Virtqueue | null): void => {
    const held = this.rxHeld;
    this.rxHeld = 0;
    if (vq !== null && held > 0) this.ctx.notifyUsed(NET_RX_QUEUE, vq);
  };

  /**
   * Receiver.burst: frames from `peek` placed under one hold of the receive queue, at most RX_BURST, published
   * and notified once at the end (or when a frame finds no buffer). `expected`: how many frames `peek` has, if
   * known (the buffers claimed ahead are bounded by it).
   */
  receiveBurst(peek: () => Uint8Array | null, take: () => void, expected = RX_BURST): number {
    this.rxPeek = peek;
    this.rxTake = take;
    this.rxExpected = expected;
    const n = this.ctx.withQueue(NET_RX_QUEUE, this.placeBurst);
    this.rxPeek = NO_PEEK;
    this.rxTake = NO_TAKE;
    return n ?? 0;
  }

  private rxPeek: () => Uint8Array | null = NO_PEEK;
  private rxTake: () => void = NO_TAKE;
  private rxExpected = RX_BURST;
  private readonly placeBurst = (vq: Virtqueue | null): number => {
    if (vq === null) return 0;
    // Features cannot change while the queue is held: asked once per burst, not per frame.
    const mergeable = this.ctx.hasFeature(VIRTIO_NET_F.MRG_RXBUF);
    let n = 0;
    try {
      while (n < RX_BURST) {
        // Take the next buffers a batch at a time, as many as frames are expected (one by one for a lone frame).
        if ((n & (RX_PUBLISH - 1)) === 0)
          this.rxBatch = Math.max(1, Math.min(RX_PUBLISH, this.rxExpected - n));
        const f = this.rxPeek();
        if (f === null || !this.placeOne(vq, f, mergeable)) break;
        this.rxTake();
        // Published RX_PUBLISH frames at a time, not only at the end: a driver polling on another CPU takes them
        // while the burst goes on. (Whole frames only: a frame's buffers are used together, 5.1.6.4.)
        if ((++n & (RX_PUBLISH - 1)) === 0) vq.publishUsed();
      }
    } finally {
      this.rxBatch = 1;
      // Buffers taken ahead and not used go back (a failure there must not hide an earlier one).
      try {
        this.giveBackAhead(vq);
      } finally {
        // Frames placed are published even if a later one broke the device (as frame by frame they would be).
        if (n > 0) this.ctx.notifyUsed(NET_RX_QUEUE, vq);
      }
    }
    return n;
  };

  /**
   * Receive buffers a burst took ahead (Virtqueue.popBatch, rxBatch at a time) and has not used yet:
   * rxAhead[rxAheadAt, rxAheadEnd). Outside a burst none are held (rxBatch 1: one pop per buffer).
   */
  private readonly rxAhead: DescriptorChain[] = [];
  private rxAheadAt = 0;
  private rxAheadEnd = 0;
  private rxBatch = 1;
  /**
   * Receive buffers of one writable descriptor taken ahead in their flat form (Virtqueue.popSingles), rxBatch at
   * a time: rxSingles' entries [rxSinglesAt, rxSinglesEnd). Used while no chains are held ahead (rxAhead), so that
   * the buffers are used in ring order; a frame one does not fit gives them back and goes the chain way.
   */
  private readonly rxSingles = new SingleBuffers(RX_PUBLISH);
  private rxSinglesAt = 0;
  private rxSinglesEnd = 0;

  /** The next receive buffer: from those taken ahead, else popped (a batch of rxBatch), or null if none. */
  private nextRxBuffer(vq: Virtqueue): DescriptorChain | null {
    if (this.rxAheadAt < this.rxAheadEnd) return this.rxAhead[this.rxAheadAt++] as DescriptorChain;
    if (this.rxBatch <= 1) return vq.pop();
    this.rxAheadAt = 0;
    this.rxAheadEnd = vq.popBatch(this.rxAhead, this.rxBatch);
    // Their first lines claimed together (a lone buffer is not worth it: it is written at once).
    if (this.rxAheadEnd > 1) claimBuffers(this.ctx.mem, this.rxAhead, this.rxAheadEnd, RX_CLAIM_SPAN);
    return this.rxAheadEnd > 0 ? (this.rxAhead[this.rxAheadAt++] as DescriptorChain) : null;
  }

  /** Gives back, last first, the buffers taken ahead and not used (so that those popped before can be too). */
  private giveBackAhead(vq: Virtqueue): void {
    const at = this.rxAheadAt;
    const end = this.rxAheadEnd;
    this.rxAheadAt = this.rxAheadEnd = 0;
    unpopRange(vq, this.rxAhead, at, end);
    this.giveBackSingles(vq);
  }

  private giveBackSingles(vq: Virtqueue): void {
    const at = this.rxSinglesAt;
    const end = this.rxSinglesEnd;
    this.rxSinglesAt = this.rxSinglesEnd = 0;
    if (at < end) vq.unpopSingles(this.rxSingles, at, end);
  }

  /**
   * Places a frame of `total` bytes with its header into the next receive buffer of one writable descriptor, in
   * its flat form, if there is one (and no chains are held ahead) and the frame fits it: true if placed. Else the
   * buffers taken that way go back, and the chain way (placeOne) places the frame.
   */
  private placeSingle(vq: Virtqueue, payload: Uint8Array, total: number, plain: boolean): boolean {
    if (this.rxAheadAt !== this.rxAheadEnd) return false;
    const s = this.rxSingles;
    if (this.rxSinglesAt === this.rxSinglesEnd) {
      this.rxSinglesAt = 0;
      this.rxSinglesEnd = vq.popSingles(s, this.rxBatch, true);
      // Their first lines claimed together (a lone buffer is not worth it: it is written at once).
      if (this.rxSinglesEnd > 1) claimSingles(this.ctx.mem, s, this.rxSinglesEnd, RX_CLAIM_SPAN);
      if (this.rxSinglesEnd === 0) return false;
    }
    const k = this.rxSinglesAt;
    if ((s.lens[k] as number) < total) {
      this.giveBackSingles(vq);
      return false;
    }
    this.rxSinglesAt = k + 1;
    const off = s.offs[k] as number;
    const mem = this.ctx.mem;
    this.writeHeader(off, plain, 1);
    copyToShared(mem.bytes, off + VIRTIO_NET_HDR_SIZE, payload, this.rxStage);
    vq.pushUsedSingle(s.ids[k] as number, total, false);
    this.c.rxPackets.add();
    this.c.rxBytes.add(payload.length);
    return true;
  }

  /**
   * Writes struct virtio_net_hdr at mem.bytes[off] (checked by the caller): zeros but num_buffers for a plain
   * backend, else rxHeader; num_buffers (le16 at offset 10, 5.1.6.4) is `buffers`.
   */
  private writeHeader(off: number, plain: boolean, buffers: number): void {
    const mem = this.ctx.mem;
    if (plain) {
      // Four stores instead of twelve byte stores (this is the first touch of a buffer the driver's CPU owns).
      const v = mem.dataView;
      v.setUint32(off, 0, true);
      v.setUint32(off + 4, 0, true);
      v.setUint16(off + 8, 0, true);
      v.setUint16(off + 10, buffers, true);
      return;
    }
    const header = this.rxHeader;
    header[10] = buffers & 0xff;
    header[11] = buffers >>> 8;
    const bytes = mem.bytes;
    for (let i = 0; i < VIRTIO_NET_HDR_SIZE; i++) bytes[off + i] = header[i] as number;
  }

  /**
   * Places one frame; then publishes the used buffers (and notifies) unless the backend said more frames follow
   * and fewer than RX_HOLD are held back. A frame that cannot be placed publishes what is held first.
   */
  private place(vq: Virtqueue, input: Uint8Array): boolean {
    const r = this.placeOne(vq, input, this.ctx.hasFeature(VIRTIO_NET_F.MRG_RXBUF));
    if (r) this.rxHeld++;
    if (this.rxHeld > 0 && (!r || !this.rxMore || this.rxHeld >= RX_HOLD)) {
      this.rxHeld = 0;
      this.ctx.notifyUsed(NET_RX_QUEUE, vq);
    }
    return r;
  }

  private placeOne(vq: Virtqueue, input: Uint8Array, mergeable: boolean): boolean {
    const header = this.rxHeader;
    let payload: Uint8Array;
    // Without a vnet-header backend the header is zeros but num_buffers: written straight into the buffer on the
    // one-segment path, built in rxHeader only for the others.
    const plain = !this.vnetHdr;
    if (!plain) {
      if (input.length < VIRTIO_NET_HDR_SIZE) {
        this.c.rxDropped.add();
        return true;
      }
      header.set(input.subarray(0, VIRTIO_NET_HDR_SIZE));
      const fitted = this.fitOffloads(header, input.subarray(VIRTIO_NET_HDR_SIZE));
      if (fitted === null) {
        this.c.rxDropped.add();
        return true;
      }
      payload = fitted;
    } else {
      payload = input;
    }
    if (payload.length > MAX_FRAME) {
      this.c.rxDropped.add();
      return true;
    }
    const total = VIRTIO_NET_HDR_SIZE + payload.length;
    if (this.placeSingle(vq, payload, total, plain)) return true;
    const chains = this.rxChains;
    let n = 0;
    let room = 0;
    while (room < total) {
      const c = this.nextRxBuffer(vq);
      if (c === null) {
        // Not enough buffers now: give back what we took, keep the frame for rxReady.
        this.giveBackAhead(vq);
        unpopRange(vq, chains, 0, n);
        this.c.rxNoBuffers.add();
        return false;
      }
      chains[n++] = c;
      // 5.1.6.3.1: receive buffers are device-writable, and (mergeable) each holds at least the header.
      if (c.readableLength > 0) {
        throw new VirtioRequestError(`receive buffer ${c.id} has ${c.readableLength} device-readable bytes`);
      }
      if (c.writableLength < VIRTIO_NET_HDR_SIZE) {
        throw new VirtioRequestError(
          `receive buffer ${c.id} has ${c.writableLength} bytes, less than the ${VIRTIO_NET_HDR_SIZE}-byte header`,
        );
      }
      room += c.writableLength;
      if (!mergeable) break;
    }
    if (room < total) {
      // Without MRG_RXBUF the frame must fit one buffer; this one is too small: drop the frame, keep the buffer.
      this.giveBackAhead(vq);
      vq.unpop(chains[0] as DescriptorChain);
      this.c.rxDropped.add();
      return true;
    }
    // 5.1.6.4: num_buffers (le16 at offset 10) is the number of buffers the packet spans (1 without MRG_RXBUF).
    const mem = this.ctx.mem;
    const only = (chains[0] as DescriptorChain).writable[0] as { addr: number; len: number };
    if (n === 1 && only.len >= total) {
      // Header and frame into one segment (a buffer as DPDK's virtio_user posts it): one bounds check for both.
      const off = mem.check(only.addr, total);
      this.writeHeader(off, plain, 1);
      copyToShared(mem.bytes, off + VIRTIO_NET_HDR_SIZE, payload, this.rxStage);
      vq.pushUsed(chains[0] as DescriptorChain, total, false);
      this.c.rxPackets.add();
      this.c.rxBytes.add(payload.length);
      return true;
    }
    if (plain) header.fill(0);
    header[10] = n & 0xff;
    header[11] = n >>> 8;
    let at = 0;
    for (let i = 0; i < n; i++) {
      const c = chains[i] as DescriptorChain;
      const take = Math.min(c.writableLength, total - at);
      let written = 0;
      if (at < VIRTIO_NET_HDR_SIZE) {
        const h = Math.min(VIRTIO_NET_HDR_SIZE, at + take) - at;
        written = copyToChain(mem, c, 0, header, at, h);
      }
      const dataFrom = Math.max(0, at - VIRTIO_NET_HDR_SIZE);
      const dataTo = at + take - VIRTIO_NET_HDR_SIZE;
      if (dataTo > dataFrom) copyToChain(mem, c, written, payload, dataFrom, dataTo - dataFrom);
      at += take;
    }
    // Every buffer is written before any is used; the used idx moves once for all of them (a driver that sees
    // the first buffer of a packet finds the others used too).
    at = 0;
    for (let i = 0; i < n; i++) {
      const c = chains[i] as DescriptorChain;
      const take = Math.min(c.writableLength, total - at);
      vq.pushUsed(c, take, false);
      at += take;
    }
    this.c.rxPackets.add();
    this.c.rxBytes.add(payload.length);
    return true;
  }

  /**
   * A header from a vnet-header backend, checked against what the driver accepted: a partial checksum the driver
   * cannot take is completed here (in a copy: the backend may offer the frame again); a GSO frame it cannot take
   * is refused (null).
   */
  private fitOffloads(header: Uint8Array, payload: Uint8Array): Uint8Array | null {
    const v = new DataView(header.buffer);
    const gso = v.getUint8(1) & ~VIRTIO_NET_HDR_GSO_ECN;
    const has = (b: number) => this.ctx.hasFeature(b);
    if (gso === VIRTIO_NET_HDR_GSO_TCPV4 && !has(VIRTIO_NET_F.GUEST_TSO4)) return null;
    if (gso === VIRTIO_NET_HDR_GSO_TCPV6 && !has(VIRTIO_NET_F.GUEST_TSO6)) return null;
    if (
      gso !== VIRTIO_NET_HDR_GSO_NONE &&
      gso !== VIRTIO_NET_HDR_GSO_TCPV4 &&
      gso !== VIRTIO_NET_HDR_GSO_TCPV6
    ) {
      return null;
    }
    let out = payload;
    if (v.getUint8(0) & VIRTIO_NET_HDR_F_NEEDS_CSUM && !has(VIRTIO_NET_F.GUEST_CSUM)) {
      if (gso !== VIRTIO_NET_HDR_GSO_NONE) return null;
      out = payload.slice();
      if (!completeChecksum(out, v.getUint16(6, true), v.getUint16(8, true))) return null;
      v.setUint8(0, 0);
    }
    if (!has(VIRTIO_NET_F.GUEST_CSUM)) v.setUint8(0, v.getUint8(0) & ~VIRTIO_NET_HDR_F_DATA_VALID);
    return out;
  }
}
