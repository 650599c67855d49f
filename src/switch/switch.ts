/**
 * The forwarding engine of `vireo switch`: a learning Ethernet switch in the manner of VALE (Rizzo and Lettieri),
 * with per-port VLANs and interposition (capture, filters, rate limits, mirroring).
 *
 * The data path, per source port:
 * 1. Gather: each frame the port's peer sends is copied once into the switch's staging slab (`receive`). The copy
 *    is what every later step reads and what destinations get: the peer (a guest) may rewrite its buffer at any
 *    time, and a decision made on its memory would not hold for the bytes delivered (VLAN hopping, a spoofed
 *    address slipping past a filter).
 * 2. Decide, for the whole batch at once (`processBatch`, when the batch is full or the source's turn ends):
 *    VLAN admission (tags are stripped on the way in, so each frame is staged untagged with its VLAN beside it),
 *    ingress rate limit, filter and capture, learning, and one destination lookup per frame.
 * 3. Deliver: each frame is copied once into each destination's receive buffers (a tag added for trunk ports).
 *    A run of unicast frames for one port goes in one burst where the port takes bursts (`deliverRun`: one hold
 *    of its ring); other deliveries say more frames follow, and at the end of the batch each destination that got
 *    frames is flushed once: one used-ring update and at most one interrupt per destination per batch.
 * A destination without room drops the frame and counts it (`noBuffers`): no queue grows behind a slow port.
 * Nothing here allocates per frame: the views of the slab handed to destinations are made once per offset and
 * length and reused (`views`).
 */
import { VireoError } from "../errors.ts";
import { FrameInfo, parseFrame } from "./frame.ts";
import { MacTable, type MacTableOptions } from "./mac-table.ts";

/** Why a frame was not delivered. */
export const DROP_REASONS = [
  "noBuffers",
  "filter",
  "rateLimit",
  "vlan",
  "noConnection",
  "malformed",
] as const;
export type DropReason = (typeof DROP_REASONS)[number];

/** What a port kind gives the engine: where frames for the port's peer go. */
export interface PortIo {
  readonly kind: string;
  /**
   * Copies `frame` to the peer; `more` says another frame for this port may follow in the same batch (the port may
   * hold back its notification until `flush`). Returns false when the peer has no room (the frame is dropped),
   * null when no peer is connected.
   */
  deliver(frame: Uint8Array, more: boolean): boolean | null;
  /**
   * Optional: copies the frames `peek` offers to the peer while it has room, calling `take` after each, under one
   * hold of the peer's ring (Receiver.burst; `peek` and `take` must not call into the port); returns how many it
   * took, or null when no peer is connected (nothing peeked). `expected`: how many frames `peek` has at most.
   */
  deliverBurst?(peek: () => Uint8Array | null, take: () => void, expected: number): number | null;
  /** Optional: who is on the other side, for `vireo switch show`. */
  peer?(): PortPeer;
  /** The batch ended: make what was delivered visible to the peer (notify once). */
  flush(): void;
  /** The port is detached or the switch stops. */
  close(): void;
}

/** A port's peer as `vireo switch show` reports it: connected or not, and what it negotiated (virtio features). */
export interface PortPeer {
  connected: boolean;
  features: string[];
}

/** Interposition hooks (src/switch/filter.ts, rate-limit.ts, pcap.ts implement them). */
export interface FrameFilter {
  check(info: FrameInfo): boolean;
}
export interface RateLimiter {
  admit(len: number, nowMs: number): boolean;
}
export interface FrameCapture {
  write(bytes: Uint8Array, off: number, len: number, nowMs: number): void;
  flush(): void;
  close(): void;
}

export type VlanConfig =
  | { mode: "access"; vlan: number }
  | { mode: "trunk"; vlans: number[]; native?: number };

export interface Direction {
  filter: FrameFilter | null;
  rate: RateLimiter | null;
}

export interface PortCounters {
  rxFrames: number;
  rxBytes: number;
  txFrames: number;
  txBytes: number;
  drops: Record<DropReason, number>;
}

export class SwitchError extends VireoError {}

/** Ethernet without FCS: a 14-byte header at least; at most a 64 KiB payload (no jumbo limit is imposed). */
const MIN_FRAME = 14;
export const MAX_FRAME = 65535 + 14 + 4;
const TPID = 0x8100;

export class SwitchPort {
  readonly counters: PortCounters = {
    rxFrames: 0,
    rxBytes: 0,
    txFrames: 0,
    txBytes: 0,
    drops: { noBuffers: 0, filter: 0, rateLimit: 0, vlan: 0, noConnection: 0, malformed: 0 },
  };
  readonly ingress: Direction = { filter: null, rate: null };
  readonly egress: Direction = { filter: null, rate: null };
  capture: FrameCapture | null = null;
  /** Port index that gets a copy of every frame this port receives and is sent, or -1. */
  mirrorTo = -1;
  /** Member VLANs: 1 for each VID this port carries. */
  readonly member = new Uint8Array(4096);
  /** VID of untagged frames (access VLAN, or a trunk's native VLAN), or -1 for a trunk without one. */
  readonly untaggedVlan: number;
  readonly trunk: boolean;
  /** A frame was delivered in the current batch (flush due). */
  touched = false;

  constructor(
    readonly index: number,
    readonly name: string,
    readonly io: PortIo,
    readonly vlan: VlanConfig,
  ) {
    if (vlan.mode === "access") {
      checkVid(vlan.vlan);
      this.trunk = false;
      this.untaggedVlan = vlan.vlan;
      this.member[vlan.vlan] = 1;
    } else {
      this.trunk = true;
      for (const v of vlan.vlans) {
        checkVid(v);
        this.member[v] = 1;
      }
      if (vlan.native !== undefined) {
        checkVid(vlan.native);
        this.member[vlan.native] = 1;
      }
      this.untaggedVlan = vlan.native ?? -1;
    }
  }

  /** Sends frames of VLAN `vid` tagged (a trunk port's VLANs other than its native one). */
  tags(vid: number): boolean {
    return this.trunk && vid !== this.untaggedVlan;
  }
}

function checkVid(v: number): void {
  // 802.1Q 9.6: VID 0 means "no VLAN" (priority tag) and 4095 is reserved.
  if (!Number.isInteger(v) || v < 1 || v > 4094) {
    throw new SwitchError("VIREO_SWITCH_VLAN", `VLAN ${v} is not a VLAN ID from 1 to 4094`);
  }
}

export interface SwitchOptions {
  /** Frames gathered from a source before they are forwarded. Default 256. */
  batchFrames?: number;
  /** Staging bytes (a batch ends early when they run out). Default 1 MiB. */
  batchBytes?: number;
  macTable?: MacTableOptions;
  /** The clock, in ms (performance.now by default; tests pass their own). */
  now?: () => number;
  /** Ports at most. Default 32. */
  maxPorts?: number;
}

/**
 * Headroom kept before each staged frame, for a tag added on the way out (4 bytes); 8 keeps staged frames 8-byte
 * aligned, as a frame lands in a DPDK receive buffer (128 bytes of headroom): TypedArray.set into guest memory (a
 * SharedArrayBuffer) copies words when source and destination agree mod 8 and bytes otherwise (1518 B: about 110
 * against 500 ns here).
 */
const HEADROOM = 8;

export class Switch {
  readonly macs: MacTable;
  private readonly ports: Array<SwitchPort | null>;
  private readonly now: () => number;
  private readonly slab: Uint8Array;
  private readonly batchMax: number;
  /** Staged frames: offset in the slab, length, VLAN, priority (PCP), destination (-1 flood, -2 none). */
  private readonly fOff: Int32Array;
  private readonly fLen: Int32Array;
  private readonly fVlan: Int32Array;
  private readonly fPcp: Int32Array;
  private readonly fDst: Int32Array;
  private count = 0;
  private slabUsed = 0;
  /** The port the staged frames came from, or -1. */
  private source = -1;
  private readonly info = new FrameInfo();
  private lastSweep = 0;
  /**
   * A run of unicast frames for one port, delivered together (deliverRun): their indices in the batch. A run ends
   * at a frame for another port, a flooded frame, and the end of the batch.
   */
  private readonly run: Int32Array;
  private runLen = 0;
  private runPort: SwitchPort | null = null;
  private runNow = 0;
  /** deliverRun's position in the run, and whether peek offered the frame there (not yet taken). */
  private runAt = 0;
  private runPeeked = false;
  /** The slab as 32-bit words (frames start 8-byte aligned), and the last source memory's words (wordsOf). */
  private readonly slabWords: Int32Array;
  private srcBytes: Uint8Array | null = null;
  private srcWords: Int32Array<ArrayBufferLike> = new Int32Array(0);
  /** srcBytes.byteOffset, and where srcBytes[0] is from srcWords[0] in bytes. */
  private srcByteOffset = 0;
  private srcWordsShift = 0;
  /**
   * Views of the slab handed to ports (PortIo.deliver, deliverBurst's peek), by the frame's offset / 8, reused while
   * offset and length match: a batch of frames of one size lands at the same offsets as the one before, and a view
   * made per delivery cost about 27 ns (TypedArray.subarray, measured here). Ports do not keep what they are given.
   */
  private readonly views: Array<Uint8Array | undefined>;
  /** Each view's offset (its index * 8, or 4 less: a tag inserted; -1 for none) and length. */
  private readonly viewOff: Int32Array;
  private readonly viewLen: Int32Array;
  /** Where egress() left the frame it passed, in the destination's form. */
  private egressOff = 0;
  private egressLen = 0;
  /** Counts over the switch's life (ports come and go). */
  readonly totals = { batches: 0, frames: 0, flooded: 0, delivered: 0, local: 0 };

  constructor(opts: SwitchOptions = {}) {
    this.now = opts.now ?? (() => performance.now());
    const maxPorts = opts.maxPorts ?? 32;
    this.ports = new Array(maxPorts).fill(null);
    this.macs = new MacTable({ maxPorts, ...opts.macTable });
    this.batchMax = opts.batchFrames ?? 256;
    this.slab = new Uint8Array(Math.max(opts.batchBytes ?? 1 << 20, 2 * (MAX_FRAME + HEADROOM + 8)) & ~7);
    this.slabWords = new Int32Array(this.slab.buffer, 0, this.slab.length >>> 2);
    this.fOff = new Int32Array(this.batchMax);
    this.fLen = new Int32Array(this.batchMax);
    this.fVlan = new Int32Array(this.batchMax);
    this.fPcp = new Int32Array(this.batchMax);
    this.fDst = new Int32Array(this.batchMax);
    this.run = new Int32Array(this.batchMax);
    this.views = new Array(this.slab.length >>> 3).fill(undefined);
    this.viewOff = new Int32Array(this.slab.length >>> 3).fill(-1);
    this.viewLen = new Int32Array(this.slab.length >>> 3);
    this.lastSweep = this.now();
  }

  /** Adds a port; returns it. Names are unique. */
  addPort(name: string, io: PortIo, vlan: VlanConfig = { mode: "access", vlan: 1 }): SwitchPort {
    if (this.port(name)) throw new SwitchError("VIREO_SWITCH_PORT_EXISTS", `port ${name} exists`);
    const i = this.ports.indexOf(null);
    if (i < 0) {
      throw new SwitchError("VIREO_SWITCH_FULL", `the switch has ${this.ports.length} ports, its maximum`);
    }
    const p = new SwitchPort(i, name, io, vlan);
    this.ports[i] = p;
    return p;
  }

  /**
   * Detaches a port: frames staged so far are forwarded first, then no frame reaches it again and its stations
   * are forgotten. Its io is closed.
   */
  removePort(name: string): SwitchPort {
    const p = this.port(name);
    if (!p) throw new SwitchError("VIREO_SWITCH_NO_PORT", `no port ${name}`);
    this.endBatch();
    this.ports[p.index] = null;
    this.macs.removePort(p.index);
    for (const q of this.ports) if (q && q.mirrorTo === p.index) q.mirrorTo = -1;
    p.capture?.flush();
    p.io.close();
    return p;
  }

  port(name: string): SwitchPort | undefined {
    for (const p of this.ports) if (p && p.name === name) return p;
    return undefined;
  }

  portAt(index: number): SwitchPort | null {
    return this.ports[index] ?? null;
  }

  list(): SwitchPort[] {
    return this.ports.filter((p): p is SwitchPort => p !== null);
  }

  /**
   * One frame from port `src`'s peer: bytes [off, off + len) of `bytes` (the peer's memory, read once here).
   * Returns false if it was dropped at once (malformed), true if staged.
   */
  receive(src: number, bytes: Uint8Array, off: number, len: number): boolean {
    const p = this.ports[src];
    if (!p) return false;
    p.counters.rxFrames++;
    p.counters.rxBytes += len;
    if (len < MIN_FRAME || len > MAX_FRAME) {
      p.counters.drops.malformed++;
      return false;
    }
    if (this.source !== src && this.count > 0) this.processBatch();
    this.source = src;
    let at = this.slabUsed + HEADROOM;
    if (at + len > this.slab.length) {
      this.processBatch();
      this.source = src;
      at = HEADROOM;
    }
    const slab = this.slab;
    if (len <= 64) {
      // A short frame by 32-bit words where both sides allow it (a frame from DPDK's buffers and the slab are 8-byte
      // aligned): a quarter of the loads from shared memory a byte loop makes, and no TypedArray.set call.
      let i = 0;
      if (bytes !== this.srcBytes) this.wordsOf(bytes);
      // Offsets kept from wordsOf: a typed array's byteOffset is a getter, and read per frame it cost 5 % here.
      if (((this.srcByteOffset + off) & 3) === 0) {
        const src = this.srcWords;
        const dst = this.slabWords;
        const s = (this.srcWordsShift + off) >>> 2;
        const d = at >>> 2;
        const n = len >>> 2;
        for (let w = 0; w < n; w++) dst[d + w] = src[s + w] as number;
        i = n << 2;
      }
      for (; i < len; i++) slab[at + i] = bytes[off + i] as number;
    } else {
      slab.set(bytes.subarray(off, off + len), at);
    }
    const k = this.count++;
    this.fOff[k] = at;
    this.fLen[k] = len;
    // Keep the next frame 8-byte aligned.
    this.slabUsed = (at + len + 7) & ~7;
    if (this.count >= this.batchMax) this.processBatch();
    return true;
  }

  /**
   * `bytes`' buffer as 32-bit words from its first 4-aligned byte, made once per source memory (a peer's memory
   * is one mapping, the same array for every frame until its memory table changes).
   */
  private wordsOf(bytes: Uint8Array): void {
    const start = (bytes.byteOffset + 3) & ~3;
    this.srcWords = new Int32Array(bytes.buffer, start, (bytes.byteOffset + bytes.byteLength - start) >>> 2);
    this.srcBytes = bytes;
    this.srcByteOffset = bytes.byteOffset;
    this.srcWordsShift = bytes.byteOffset - start;
  }

  /** The source's turn ended: forwards what is staged and flushes every port that got frames. */
  endBatch(): void {
    if (this.count > 0) this.processBatch();
    for (const p of this.ports) {
      if (p?.touched) {
        p.touched = false;
        p.io.flush();
      }
    }
    const now = this.now();
    if (now - this.lastSweep >= 1000) {
      this.lastSweep = now;
      this.macs.sweep(now);
    }
  }

  /** Decides and delivers every staged frame (the batch's source is `this.source`). */
  private processBatch(): void {
    const n = this.count;
    this.count = 0;
    this.slabUsed = 0;
    const src = this.ports[this.source];
    if (!src || n === 0) return;
    this.totals.batches++;
    this.totals.frames += n;
    const now = this.now();
    const slab = this.slab;
    const info = this.info;
    const c = src.counters;
    let lastSHi = -1;
    let lastSLo = -1;
    let lastDHi = -1;
    let lastDLo = -1;
    let lastVid = -1;
    let lastDst = -1;
    // Ingress: admission, interposition, learning, lookup.
    for (let i = 0; i < n; i++) {
      this.fDst[i] = -2;
      let off = this.fOff[i] as number;
      let len = this.fLen[i] as number;
      if (src.capture) src.capture.write(slab, off, len, now);
      let vid: number;
      let pcp = 0;
      if (((slab[off + 12] as number) << 8) + (slab[off + 13] as number) === TPID) {
        if (len < MIN_FRAME + 4) {
          c.drops.malformed++;
          continue;
        }
        const tci = ((slab[off + 14] as number) << 8) | (slab[off + 15] as number);
        pcp = tci >>> 13;
        vid = tci & 0xfff;
        // A priority tag (VID 0) belongs to the port's untagged VLAN (802.1Q 6.9.1).
        if (vid === 0) vid = src.untaggedVlan;
        else if (!src.trunk) vid = -1; // an access port's peer may not choose its VLAN
        // Strip the tag in place: the 12 address bytes move up over it.
        slab.copyWithin(off + 4, off, off + 12);
        off += 4;
        len -= 4;
        this.fOff[i] = off;
        this.fLen[i] = len;
      } else {
        vid = src.untaggedVlan;
      }
      if (vid < 0 || src.member[vid] !== 1) {
        c.drops.vlan++;
        continue;
      }
      this.fVlan[i] = vid;
      this.fPcp[i] = pcp;
      if (src.ingress.filter) {
        parseFrame(slab, off, len, info);
        info.vlan = vid;
        info.pcp = pcp;
        if (!src.ingress.filter.check(info)) {
          c.drops.filter++;
          continue;
        }
      }
      // After the filter: a frame the filter denies uses up no tokens.
      if (src.ingress.rate && !src.ingress.rate.admit(len, now)) {
        c.drops.rateLimit++;
        continue;
      }
      const dHi = ((slab[off] as number) << 8) | (slab[off + 1] as number);
      const dLo =
        (((slab[off + 2] as number) << 24) |
          ((slab[off + 3] as number) << 16) |
          ((slab[off + 4] as number) << 8) |
          (slab[off + 5] as number)) >>>
        0;
      const sHi = ((slab[off + 6] as number) << 8) | (slab[off + 7] as number);
      const sLo =
        (((slab[off + 8] as number) << 24) |
          ((slab[off + 9] as number) << 16) |
          ((slab[off + 10] as number) << 8) |
          (slab[off + 11] as number)) >>>
        0;
      // A group address is never a source (IEEE 802.3 3.2.3); such a frame is forwarded but not learned. A run of
      // frames from one station to one station (the common case in a batch) learns and looks up once.
      if (sLo !== lastSLo || sHi !== lastSHi || vid !== lastVid) {
        if ((sHi & 0x0100) === 0) this.macs.learn(vid, sHi, sLo, src.index, now);
        lastSLo = sLo;
        lastSHi = sHi;
        lastDHi = -1;
      }
      if (dLo !== lastDLo || dHi !== lastDHi || vid !== lastVid) {
        lastDst = (dHi & 0x0100) !== 0 ? -1 : this.macs.lookup(vid, dHi, dLo, now);
        lastDLo = dLo;
        lastDHi = dHi;
      }
      lastVid = vid;
      this.fDst[i] = lastDst;
    }
    // Delivery.
    for (let i = 0; i < n; i++) {
      const d = this.fDst[i] as number;
      if (d === -2) continue;
      if (src.mirrorTo >= 0) this.deliverMirror(src.mirrorTo, i);
      if (d >= 0) {
        if (d === src.index) {
          this.totals.local++;
          continue;
        }
        const p = this.ports[d];
        if (p && p.member[this.fVlan[i] as number] === 1) {
          // A port that takes bursts (and mirrors nothing, and the source mirrors nothing: a mirror's copy must not
          // overtake the frames queued before it) gets its frames as a run.
          if (p.io.deliverBurst && p.mirrorTo < 0 && src.mirrorTo < 0) {
            if (this.runPort !== p) this.deliverRun();
            this.runPort = p;
            this.runNow = now;
            this.run[this.runLen++] = i;
          } else {
            this.deliverRun();
            this.deliver(p, i, now, false);
          }
        }
        continue;
      }
      this.deliverRun();
      this.totals.flooded++;
      const vid = this.fVlan[i] as number;
      // Untagged receivers first, then tagged ones: the tag is added in place once, between the two passes.
      for (let pass = 0; pass < 2; pass++) {
        for (const p of this.ports) {
          if (!p || p === src || p.member[vid] !== 1 || p.tags(vid) !== (pass === 1)) continue;
          this.deliver(p, i, now, true);
        }
      }
      this.untag(i);
    }
    this.deliverRun();
  }

  /**
   * Delivers the run of unicast frames for one port under one hold of its ring (PortIo.deliverBurst), with what
   * deliver() does for each frame: the port's form (tagged or not), egress filter and rate limit, counters,
   * capture. A frame the peer has no room for is a noBuffers drop, and the frames after it go one by one (as they
   * would have); with no peer connected, all of them do (deliver counts them).
   */
  private deliverRun(): void {
    const p = this.runPort;
    const n = this.runLen;
    if (p !== null && n > 0) {
      this.runAt = 0;
      this.runPeeked = false;
      for (;;) {
        const got = p.io.deliverBurst?.(this.runPeek, this.runTake, n - this.runAt) ?? null;
        if (got === null) break;
        if (this.runPeeked) {
          // The peer had no room for the frame offered last (its filter and rate limit passed it).
          this.runPeeked = false;
          p.counters.drops.noBuffers++;
          this.runAt++;
          break;
        }
        // Ended without a refusal: the run is done, or the device's burst bound was reached.
        if (this.runAt >= n || got === 0) break;
      }
      for (let k = this.runAt; k < n; k++) this.deliver(p, this.run[k] as number, this.runNow, false);
    }
    this.runPort = null;
    this.runLen = 0;
  }

  /** deliverRun's peek: the next frame of the run that passes the port's egress checks, in the port's form. */
  private readonly runPeek = (): Uint8Array | null => {
    const p = this.runPort as SwitchPort;
    while (this.runAt < this.runLen) {
      if (this.egress(p, this.run[this.runAt] as number, this.runNow)) {
        this.runPeeked = true;
        return this.view(this.egressOff, this.egressLen);
      }
      this.runAt++;
    }
    return null;
  };

  /** deliverRun's take: the frame peek offered went to the peer. */
  private readonly runTake = (): void => {
    this.runPeeked = false;
    const p = this.runPort as SwitchPort;
    this.delivered(p, this.run[this.runAt] as number, this.egressOff, this.egressLen, this.runNow);
    this.runAt++;
  };

  /** Delivers staged frame `i` to port `p` in the form `p` takes (tagged or not). */
  private deliver(p: SwitchPort, i: number, now: number, flooding: boolean): void {
    if (!this.egress(p, i, now)) return;
    const off = this.egressOff;
    const len = this.egressLen;
    const r = p.io.deliver(this.view(off, len), true);
    if (r === true) {
      this.delivered(p, i, off, len, now);
    } else if (r === null) {
      // A flooded frame is not lost to a port with no peer: only unicast to it counts as a drop.
      if (!flooding) p.counters.drops.noConnection++;
    } else {
      p.counters.drops.noBuffers++;
    }
  }

  /**
   * Puts staged frame `i` in the form port `p` takes and applies the port's egress filter and rate limit: false
   * if it is dropped (counted); else its offset and length are in egressOff and egressLen.
   */
  private egress(p: SwitchPort, i: number, now: number): boolean {
    const tagged = p.tags(this.fVlan[i] as number);
    if (tagged) this.tag(i);
    else this.untag(i);
    let off = this.fOff[i] as number;
    let len = this.fLen[i] as number;
    if (this.isTagged(i)) {
      off -= 4;
      len += 4;
    }
    const e = p.egress;
    const c = p.counters;
    if (e.filter) {
      parseFrame(this.slab, off, len, this.info);
      this.info.vlan = this.fVlan[i] as number;
      if (!e.filter.check(this.info)) {
        c.drops.filter++;
        return false;
      }
    }
    if (e.rate && !e.rate.admit(len, now)) {
      c.drops.rateLimit++;
      return false;
    }
    this.egressOff = off;
    this.egressLen = len;
    return true;
  }

  /** Staged frame `i` (at `off`, `len` bytes in its delivered form) went to port `p`'s peer. */
  private delivered(p: SwitchPort, i: number, off: number, len: number, now: number): void {
    p.touched = true;
    p.counters.txFrames++;
    p.counters.txBytes += len;
    this.totals.delivered++;
    if (p.capture) p.capture.write(this.slab, off, len, now);
    if (p.mirrorTo >= 0) this.deliverMirror(p.mirrorTo, i);
  }

  /** A copy for a mirror port, in its form, whatever its VLANs; no interposition of its own. */
  private deliverMirror(m: number, i: number): void {
    const p = this.ports[m];
    if (!p) return;
    if (p.trunk) this.tag(i);
    else this.untag(i);
    let off = this.fOff[i] as number;
    let len = this.fLen[i] as number;
    if (this.isTagged(i)) {
      off -= 4;
      len += 4;
    }
    const r = p.io.deliver(this.view(off, len), true);
    if (r === true) {
      p.touched = true;
      p.counters.txFrames++;
      p.counters.txBytes += len;
    } else if (r === false) {
      p.counters.drops.noBuffers++;
    }
  }

  /** Bytes [off, off + len) of the slab, as a view made once per offset and length (`views`). */
  private view(off: number, len: number): Uint8Array {
    const k = off >>> 3;
    if (this.viewOff[k] === off && this.viewLen[k] === len) return this.views[k] as Uint8Array;
    const v = this.slab.subarray(off, off + len);
    this.views[k] = v;
    this.viewOff[k] = off;
    this.viewLen[k] = len;
    return v;
  }

  /** Tag state of staged frame i: its bytes start 4 before fOff (a tag inserted) when fPcp has bit 8 set. */
  private isTagged(i: number): boolean {
    return ((this.fPcp[i] as number) & 0x100) !== 0;
  }

  /** Inserts the 802.1Q tag before staged frame i's ethertype (into the headroom), if not already there. */
  private tag(i: number): void {
    if (this.isTagged(i)) return;
    const off = this.fOff[i] as number;
    const s = this.slab;
    s.copyWithin(off - 4, off, off + 12);
    const pcp = (this.fPcp[i] as number) & 7;
    const tci = (pcp << 13) | (this.fVlan[i] as number);
    s[off + 8] = TPID >>> 8;
    s[off + 9] = TPID & 0xff;
    s[off + 10] = tci >>> 8;
    s[off + 11] = tci & 0xff;
    this.fPcp[i] = pcp | 0x100;
  }

  /** Removes a tag `tag` inserted. */
  private untag(i: number): void {
    if (!this.isTagged(i)) return;
    const off = this.fOff[i] as number;
    this.slab.copyWithin(off, off - 4, off + 8);
    this.fPcp[i] = (this.fPcp[i] as number) & 7;
  }

  /** Per-port state for `vireo switch show`. */
  snapshot(): SwitchShow {
    const now = this.now();
    return {
      ports: this.list().map((p) => ({
        name: p.name,
        index: p.index,
        kind: p.io.kind,
        peer: p.io.peer?.() ?? null,
        vlan: p.vlan,
        mirrorTo: p.mirrorTo >= 0 ? (this.ports[p.mirrorTo]?.name ?? null) : null,
        macs: this.macs.portEntries(p.index),
        rx: { frames: p.counters.rxFrames, bytes: p.counters.rxBytes },
        tx: { frames: p.counters.txFrames, bytes: p.counters.txBytes },
        drops: { ...p.counters.drops },
      })),
      macTable: {
        size: this.macs.size,
        capacity: this.macs.capacity,
        perPortLimit: this.macs.perPortLimit,
        ageMs: this.macs.ageMs,
        stats: { ...this.macs.stats },
        entries: this.macs.entries(now, 1024),
      },
      totals: { ...this.totals },
    };
  }
}

export interface SwitchShow {
  ports: Array<{
    name: string;
    index: number;
    kind: string;
    peer: PortPeer | null;
    vlan: VlanConfig;
    mirrorTo: string | null;
    macs: number;
    rx: { frames: number; bytes: number };
    tx: { frames: number; bytes: number };
    drops: Record<DropReason, number>;
  }>;
  macTable: {
    size: number;
    capacity: number;
    perPortLimit: number;
    ageMs: number;
    stats: MacTable["stats"];
    entries: ReturnType<MacTable["entries"]>;
  };
  totals: Switch["totals"];
}
