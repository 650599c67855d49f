/**
 * A driver for the e1000 model that talks to it only through its registers and guest memory, the way the Linux
 * e1000 driver does: global reset through the I/O window, EEPROM through EERD (or bit-banged Microwire on EECD),
 * PHY through MDIC, descriptor rings and buffers laid out in a GuestMemory, TDT/RDT doorbells, ICR reads.
 *
 * It also carries packet builders and checksum/CRC checkers written independently of src/net/checksum.ts, so
 * tests verify the device's offloads against a second implementation.
 *
 *   const { dev, drv, wire } = makeNic();
 *   drv.reset(); drv.setupTx(); drv.setupRx();
 *   drv.sendLegacy([frame]);                  // frames appear at `wire` (the pair's other end)
 *   wire.send(frame); drv.receive();          // -> [{ data, status, errors, ... }]
 */
import { E1000, type E1000Options } from "../../src/devices/e1000/e1000.ts";
import { REG } from "../../src/devices/e1000/regs.ts";
import { GuestMemory } from "../../src/memory/guest-memory.ts";
import { MetricsSegment } from "../../src/metrics/registry.ts";
import { createPair, type PairBackend } from "../../src/net/pair.ts";

export { REG, STAT } from "../../src/devices/e1000/regs.ts";

// Register bits the driver uses, spelled out here rather than imported so a wrong constant in the model shows.
export const CTRL_SLU = 1 << 6;
export const CTRL_RST = 1 << 26;
export const CTRL_VME = 1 << 30;
export const STATUS_FD = 1;
export const STATUS_LU = 2;
export const EECD_SK = 1;
export const EECD_CS = 2;
export const EECD_DI = 4;
export const EECD_DO = 8;
export const EECD_REQ = 0x40;
export const EECD_GNT = 0x80;
export const EECD_PRES = 0x100;
export const ICR = {
  TXDW: 1 << 0,
  TXQE: 1 << 1,
  LSC: 1 << 2,
  RXDMT0: 1 << 4,
  RXO: 1 << 6,
  RXT0: 1 << 7,
  MDAC: 1 << 9,
} as const;
export const RCTL = {
  EN: 1 << 1,
  UPE: 1 << 3,
  MPE: 1 << 4,
  LPE: 1 << 5,
  BAM: 1 << 15,
  VFE: 1 << 18,
  BSEX: 1 << 25,
  SECRC: 1 << 26,
} as const;
export const TCTL_EN = 1 << 1;
export const TCTL_PSP = 1 << 3;
export const TXCMD = { EOP: 1, IFCS: 2, IC: 4, TSE: 4, RS: 8, DEXT: 0x20, VLE: 0x40, IDE: 0x80 } as const;
export const TUCMD = { TCP: 1, IP: 2, TSE: 4 } as const;
export const POPTS = { IXSM: 1, TXSM: 2 } as const;
export const RXSTAT = { DD: 1, EOP: 2, IXSM: 4, VP: 8, TCPCS: 0x20, IPCS: 0x40, PIF: 0x80 } as const;
export const RXERR = { TCPE: 0x20, IPE: 0x40 } as const;

export const NIC_MAC = Uint8Array.of(0x52, 0x54, 0x00, 0x12, 0x34, 0x56);
export const PEER_MAC = Uint8Array.of(0x52, 0x54, 0x00, 0xab, 0xcd, 0xef);
export const BROADCAST = Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0xff, 0xff);

// ---- Independent checksum and CRC implementations ----

/** RFC 1071 sum of big-endian 16-bit words over [start, end), folded to 16 bits, not complemented. */
export function sum16(b: Uint8Array, start = 0, end = b.length, initial = 0): number {
  let s = initial;
  for (let i = start; i < end; i++) s += (i - start) % 2 === 0 ? (b[i] as number) * 256 : (b[i] as number);
  while (s >> 16) s = (s & 0xffff) + (s >>> 16);
  return s;
}

/** Bit-at-a-time CRC-32 (IEEE 802.3), deliberately not table-driven. */
export function crc32Slow(b: Uint8Array): number {
  let crc = 0xffffffff;
  for (const byte of b) {
    crc ^= byte;
    for (let k = 0; k < 8; k++) crc = crc & 1 ? (crc >>> 1) ^ 0xedb88320 : crc >>> 1;
  }
  return (crc ^ 0xffffffff) >>> 0;
}

export function u16be(b: Uint8Array, off: number): number {
  return ((b[off] as number) << 8) | (b[off + 1] as number);
}

export function u32be(b: Uint8Array, off: number): number {
  return (
    ((b[off] as number) * 0x1000000 +
      ((b[off + 1] as number) << 16) +
      ((b[off + 2] as number) << 8) +
      (b[off + 3] as number)) >>>
    0
  );
}

function putBe16(b: Uint8Array, off: number, v: number): void {
  b[off] = (v >> 8) & 0xff;
  b[off + 1] = v & 0xff;
}

function putBe32(b: Uint8Array, off: number, v: number): void {
  b[off] = (v >>> 24) & 0xff;
  b[off + 1] = (v >>> 16) & 0xff;
  b[off + 2] = (v >>> 8) & 0xff;
  b[off + 3] = v & 0xff;
}

/** True if the IPv4 header at `l3` checksums to zero. */
export function ipv4HeaderOk(f: Uint8Array, l3 = 14): boolean {
  const ihl = ((f[l3] as number) & 0xf) * 4;
  return sum16(f, l3, l3 + ihl) === 0xffff;
}

/** True if the TCP/UDP segment of an IPv4 or IPv6 frame verifies with its pseudo-header. */
export function l4ChecksumOk(f: Uint8Array, l3 = 14): boolean {
  const version = (f[l3] as number) >> 4;
  let l4: number;
  let l4len: number;
  let proto: number;
  let pseudo: number;
  if (version === 4) {
    const ihl = ((f[l3] as number) & 0xf) * 4;
    l4 = l3 + ihl;
    l4len = u16be(f, l3 + 2) - ihl;
    proto = f[l3 + 9] as number;
    pseudo = sum16(f, l3 + 12, l3 + 20);
  } else {
    l4 = l3 + 40;
    l4len = u16be(f, l3 + 4);
    proto = f[l3 + 6] as number;
    pseudo = sum16(f, l3 + 8, l3 + 40);
  }
  const s = sum16(f, l4, l4 + l4len, pseudo + proto + l4len);
  return s === 0xffff;
}

// ---- Packet builders (checksums filled in unless told otherwise) ----

export function ethFrame(dst: Uint8Array, src: Uint8Array, type: number, payload: Uint8Array): Uint8Array {
  const f = new Uint8Array(14 + payload.length);
  f.set(dst, 0);
  f.set(src, 6);
  putBe16(f, 12, type);
  f.set(payload, 14);
  return f;
}

export function pattern(len: number, seed = 1): Uint8Array {
  const p = new Uint8Array(len);
  for (let i = 0; i < len; i++) p[i] = (i * 31 + seed * 17 + (i >> 8)) & 0xff;
  return p;
}

export interface Ipv4Opts {
  src?: number[];
  dst?: number[];
  id?: number;
  proto: 6 | 17;
  /** TCP/UDP header + payload. */
  l4: Uint8Array;
  /** Leave the IP checksum field 0. */
  noIpChecksum?: boolean;
}

export function ipv4Packet(o: Ipv4Opts): Uint8Array {
  const h = new Uint8Array(20 + o.l4.length);
  h[0] = 0x45;
  putBe16(h, 2, h.length);
  putBe16(h, 4, o.id ?? 0x1234);
  h[6] = 0x40; // DF
  h[8] = 64;
  h[9] = o.proto;
  h.set(o.src ?? [10, 0, 0, 1], 12);
  h.set(o.dst ?? [10, 0, 0, 2], 16);
  h.set(o.l4, 20);
  if (!o.noIpChecksum) putBe16(h, 10, ~sum16(h, 0, 20) & 0xffff);
  return h;
}

export interface TcpOpts {
  srcPort?: number;
  dstPort?: number;
  seq?: number;
  ack?: number;
  /** Default ACK|PSH. */
  flags?: number;
  payload: Uint8Array;
}

export const TCP_FIN = 0x01;
export const TCP_PSH = 0x08;
export const TCP_ACK = 0x10;

export function tcpSegment(o: TcpOpts): Uint8Array {
  const t = new Uint8Array(20 + o.payload.length);
  putBe16(t, 0, o.srcPort ?? 40000);
  putBe16(t, 2, o.dstPort ?? 80);
  putBe32(t, 4, o.seq ?? 1000);
  putBe32(t, 8, o.ack ?? 1);
  t[12] = 5 << 4;
  t[13] = o.flags ?? TCP_ACK | TCP_PSH;
  putBe16(t, 14, 65535);
  t.set(o.payload, 20);
  return t;
}

export function udpDatagram(payload: Uint8Array, srcPort = 5000, dstPort = 53): Uint8Array {
  const u = new Uint8Array(8 + payload.length);
  putBe16(u, 0, srcPort);
  putBe16(u, 2, dstPort);
  putBe16(u, 4, u.length);
  u.set(payload, 8);
  return u;
}

/** Fills the TCP/UDP checksum of an IPv4 frame (l3 at 14), or seeds it with the pseudo-header sum as a driver would. */
export function setL4Checksum(f: Uint8Array, mode: "full" | "pseudo" | "pseudo-nolen", l3 = 14): void {
  const version = (f[l3] as number) >> 4;
  const v4 = version === 4;
  const ihl = v4 ? ((f[l3] as number) & 0xf) * 4 : 40;
  const l4 = l3 + ihl;
  const proto = f[l3 + (v4 ? 9 : 6)] as number;
  const l4len = v4 ? u16be(f, l3 + 2) - ihl : u16be(f, l3 + 4);
  const csumAt = l4 + (proto === 6 ? 16 : 6);
  putBe16(f, csumAt, 0);
  const addrs = v4 ? sum16(f, l3 + 12, l3 + 20) : sum16(f, l3 + 8, l3 + 40);
  const pseudo = sum16(new Uint8Array(0), 0, 0, addrs + proto + (mode === "pseudo-nolen" ? 0 : l4len));
  if (mode === "full") putBe16(f, csumAt, ~sum16(f, l4, l4 + l4len, pseudo) & 0xffff);
  else putBe16(f, csumAt, pseudo); // not complemented: the device adds the rest and complements
}

export function ipv4TcpFrame(
  payload: Uint8Array,
  tcp: Partial<TcpOpts> = {},
  ip: Partial<Ipv4Opts> = {},
): Uint8Array {
  const seg = tcpSegment({ payload, ...tcp });
  const f = ethFrame(PEER_MAC, NIC_MAC, 0x0800, ipv4Packet({ proto: 6, l4: seg, ...ip }));
  setL4Checksum(f, "full");
  return f;
}

export function ipv6TcpFrame(payload: Uint8Array, tcp: Partial<TcpOpts> = {}): Uint8Array {
  const seg = tcpSegment({ payload, ...tcp });
  const h = new Uint8Array(40 + seg.length);
  h[0] = 0x60;
  putBe16(h, 4, seg.length);
  h[6] = 6;
  h[7] = 64;
  for (let i = 0; i < 16; i++) {
    h[8 + i] = i === 0 ? 0xfd : i;
    h[24 + i] = i === 0 ? 0xfd : 0x80 + i;
  }
  h.set(seg, 40);
  const f = ethFrame(PEER_MAC, NIC_MAC, 0x86dd, h);
  setL4Checksum(f, "full");
  return f;
}

// ---- The driver ----

export interface RxFrame {
  data: Uint8Array;
  /** Status of the EOP descriptor. */
  status: number;
  errors: number;
  special: number;
  /** Packet checksum field of the first descriptor. */
  csum: number;
  descriptors: number;
  /** Length field of every descriptor used. */
  lengths: number[];
}

export interface TxContextFields {
  ipcss?: number;
  ipcso?: number;
  ipcse?: number;
  tucss?: number;
  tucso?: number;
  tucse?: number;
  paylen?: number;
  tucmd: number;
  hdrlen?: number;
  mss?: number;
  rs?: boolean;
}

export interface DataDescOpts {
  tse?: boolean;
  popts?: number;
  vlan?: number;
  rs?: boolean;
  ide?: boolean;
}

export interface LegacyOpts {
  ic?: { css: number; cso: number };
  vlan?: number;
  rs?: boolean;
  ide?: boolean;
  /** Leave EOP off the last descriptor. */
  noEop?: boolean;
}

export const MEM_SIZE = 4 * 1024 * 1024;
const TX_RING = 0x1000;
const RX_RING = 0x20000;
const TX_HEAP = 0x100000;
const TX_HEAP_END = 0x200000;
const RX_BUFS = 0x200000;

export class E1000Driver {
  txCount = 0;
  rxCount = 0;
  rxBufSize = 2048;
  /** next_to_use of the TX ring. */
  txTail = 0;
  /** next_to_clean of the RX ring. */
  rxNext = 0;
  /** RDT as last written. */
  rxTail = 0;
  private txHeap = TX_HEAP;

  constructor(
    readonly dev: E1000,
    readonly mem: GuestMemory,
  ) {}

  r32(off: number): number {
    const d = new Uint8Array(4);
    this.dev.read(off, d);
    return new DataView(d.buffer).getUint32(0, true);
  }

  w32(off: number, v: number): void {
    const d = new Uint8Array(4);
    new DataView(d.buffer).setUint32(0, v >>> 0, true);
    this.dev.write(off, d);
  }

  /** Register access through the I/O window (IOADDR at 0, IODATA at 4). */
  ioW32(off: number, v: number): void {
    const d = new Uint8Array(4);
    new DataView(d.buffer).setUint32(0, off, true);
    this.dev.io.write(0, d);
    new DataView(d.buffer).setUint32(0, v >>> 0, true);
    this.dev.io.write(4, d);
  }

  ioR32(off: number): number {
    const d = new Uint8Array(4);
    new DataView(d.buffer).setUint32(0, off, true);
    this.dev.io.write(0, d);
    this.dev.io.read(4, d);
    return new DataView(d.buffer).getUint32(0, true);
  }

  /** e1000_reset_hw for the 82540: mask, stop the units, global reset through the I/O window, clear ICR. */
  reset(): void {
    this.w32(REG.IMC, 0xffffffff);
    this.w32(REG.RCTL, 0);
    this.w32(REG.TCTL, TCTL_PSP);
    const ctrl = this.r32(REG.CTRL);
    this.ioW32(REG.CTRL, ctrl | CTRL_RST);
    for (let i = 0; i < 100 && this.r32(REG.CTRL) & CTRL_RST; i++);
    if (this.r32(REG.CTRL) & CTRL_RST) throw new Error("CTRL.RST did not self-clear");
    this.w32(REG.IMC, 0xffffffff);
    this.r32(REG.ICR);
    this.txTail = this.rxNext = this.rxTail = 0;
  }

  /** One EEPROM word through EERD (START, poll DONE, DATA in 31:16). */
  eepromRead(word: number): number {
    this.w32(REG.EERD, (word << 8) | 1);
    for (let i = 0; i < 100; i++) {
      const v = this.r32(REG.EERD);
      if (v & 0x10) return v >>> 16;
    }
    throw new Error("EERD never set DONE");
  }

  /** One EEPROM word by bit-banging Microwire on EECD, following e1000_read_eeprom for the 82540. */
  eepromReadMicrowire(word: number, addressBits = 6): number {
    let eecd = this.r32(REG.EECD);
    this.w32(REG.EECD, eecd | EECD_REQ);
    eecd = this.r32(REG.EECD);
    if (!(eecd & EECD_GNT)) throw new Error("EEPROM grant not given");
    eecd &= ~(EECD_DI | EECD_SK | EECD_DO | EECD_GNT | EECD_PRES);
    this.w32(REG.EECD, eecd);
    eecd |= EECD_CS;
    this.w32(REG.EECD, eecd);
    const clock = (): void => {
      this.w32(REG.EECD, eecd | EECD_SK);
      this.w32(REG.EECD, eecd);
    };
    const shiftOut = (data: number, count: number): void => {
      for (let mask = 1 << (count - 1); mask; mask >>= 1) {
        eecd = data & mask ? eecd | EECD_DI : eecd & ~EECD_DI;
        this.w32(REG.EECD, eecd);
        clock();
      }
      eecd &= ~EECD_DI;
      this.w32(REG.EECD, eecd);
    };
    shiftOut(0b110, 3); // start bit + READ
    shiftOut(word, addressBits);
    let data = 0;
    for (let i = 0; i < 16; i++) {
      this.w32(REG.EECD, eecd | EECD_SK);
      data = (data << 1) | (this.r32(REG.EECD) & EECD_DO ? 1 : 0);
      this.w32(REG.EECD, eecd);
    }
    // release: CS and DI low, a clock pulse, drop the request
    eecd &= ~(EECD_CS | EECD_DI);
    this.w32(REG.EECD, eecd);
    clock();
    this.w32(REG.EECD, eecd & ~EECD_REQ);
    return data;
  }

  eepromChecksumValid(read: (w: number) => number = (w) => this.eepromRead(w)): boolean {
    let sum = 0;
    for (let w = 0; w <= 0x3f; w++) sum = (sum + read(w)) & 0xffff;
    return sum === 0xbaba;
  }

  macFromEeprom(): Uint8Array {
    const mac = new Uint8Array(6);
    for (let i = 0; i < 3; i++) {
      const w = this.eepromRead(i);
      mac[2 * i] = w & 0xff;
      mac[2 * i + 1] = w >> 8;
    }
    return mac;
  }

  /** MDIC read: { value, error } after polling READY. */
  phyRead(reg: number, phyAddr = 1): { value: number; error: boolean } {
    this.w32(REG.MDIC, (reg << 16) | (phyAddr << 21) | (2 << 26));
    for (let i = 0; i < 64; i++) {
      const v = this.r32(REG.MDIC);
      if (v & (1 << 28)) return { value: v & 0xffff, error: (v & (1 << 30)) !== 0 };
    }
    throw new Error("MDIC never became ready");
  }

  phyWrite(reg: number, value: number, phyAddr = 1): boolean {
    this.w32(REG.MDIC, (value & 0xffff) | (reg << 16) | (phyAddr << 21) | (1 << 26));
    for (let i = 0; i < 64; i++) {
      const v = this.r32(REG.MDIC);
      if (v & (1 << 28)) return (v & (1 << 30)) === 0;
    }
    throw new Error("MDIC never became ready");
  }

  /** e1000_check_for_link on copper: PHY status read twice for the latched link bit, then STATUS.LU. */
  linkUp(): boolean {
    this.phyRead(1);
    const st = this.phyRead(1).value;
    return (st & 0x4) !== 0 && (this.r32(REG.STATUS) & STATUS_LU) !== 0;
  }

  // ---- Transmit ----

  setupTx(count = 16, tctl = TCTL_EN | TCTL_PSP): void {
    this.txCount = count;
    this.mem.fill(TX_RING, count * 16, 0);
    this.w32(REG.TDBAL, TX_RING);
    this.w32(REG.TDBAH, 0);
    this.w32(REG.TDLEN, count * 16);
    this.w32(REG.TDT, 0);
    this.w32(REG.TDH, 0);
    this.w32(REG.TCTL, tctl);
    this.txTail = 0;
  }

  txDescAddr(i: number): number {
    return TX_RING + i * 16;
  }

  /** Copies bytes into the TX buffer heap and returns their guest address. */
  stage(bytes: Uint8Array): number {
    if (this.txHeap + bytes.length > TX_HEAP_END) this.txHeap = TX_HEAP;
    const at = this.txHeap;
    this.mem.write(at, bytes);
    this.txHeap += (bytes.length + 15) & ~15;
    return at;
  }

  private nextTx(): number {
    const i = this.txTail;
    this.txTail = (this.txTail + 1) % this.txCount;
    return i;
  }

  /** Writes raw descriptor bytes at the tail (for malformed descriptors). Returns its index. */
  putRawTx(desc: Uint8Array): number {
    const i = this.nextTx();
    this.mem.write(this.txDescAddr(i), desc);
    return i;
  }

  /** Legacy descriptors, one per fragment; EOP (and RS, IC, VLE) on the last. Returns the last index. */
  queueLegacy(fragments: Uint8Array[], o: LegacyOpts = {}): number {
    let last = -1;
    fragments.forEach((frag, n) => {
      const isLast = n === fragments.length - 1;
      let cmd = TXCMD.IFCS;
      if (isLast) {
        if (!o.noEop) cmd |= TXCMD.EOP;
        if (o.rs ?? true) cmd |= TXCMD.RS;
        if (o.ide) cmd |= TXCMD.IDE;
        if (o.ic) cmd |= TXCMD.IC;
        if (o.vlan !== undefined) cmd |= TXCMD.VLE;
      }
      const d = new Uint8Array(16);
      const v = new DataView(d.buffer);
      v.setBigUint64(0, BigInt(this.stage(frag)), true);
      v.setUint16(8, frag.length, true);
      d[10] = isLast && o.ic ? o.ic.cso : 0;
      d[11] = cmd;
      d[13] = isLast && o.ic ? o.ic.css : 0;
      v.setUint16(14, isLast && o.vlan !== undefined ? o.vlan : 0, true);
      last = this.putRawTx(d);
    });
    return last;
  }

  queueContext(c: TxContextFields): number {
    const d = new Uint8Array(16);
    const v = new DataView(d.buffer);
    d[0] = c.ipcss ?? 0;
    d[1] = c.ipcso ?? 0;
    v.setUint16(2, c.ipcse ?? 0, true);
    d[4] = c.tucss ?? 0;
    d[5] = c.tucso ?? 0;
    v.setUint16(6, c.tucse ?? 0, true);
    const tucmd = c.tucmd | TXCMD.DEXT | (c.rs ? TXCMD.RS : 0);
    v.setUint32(8, ((c.paylen ?? 0) & 0xfffff) | (0 << 20) | (tucmd << 24), true);
    d[13] = c.hdrlen ?? 0;
    v.setUint16(14, c.mss ?? 0, true);
    return this.putRawTx(d);
  }

  /** Extended data descriptors, one per fragment; POPTS/TSE on each, EOP/RS/VLE on the last. */
  queueData(fragments: Uint8Array[], o: DataDescOpts = {}): number {
    let last = -1;
    fragments.forEach((frag, n) => {
      const isLast = n === fragments.length - 1;
      let dcmd = TXCMD.DEXT | TXCMD.IFCS | (o.tse ? TXCMD.TSE : 0);
      if (isLast) {
        dcmd |= TXCMD.EOP;
        if (o.rs ?? true) dcmd |= TXCMD.RS;
        if (o.ide) dcmd |= TXCMD.IDE;
      }
      // VLE: the first descriptor for TSO, the last otherwise (SDM §3.3.7.1 note).
      if (o.vlan !== undefined && (o.tse ? n === 0 : isLast)) dcmd |= TXCMD.VLE;
      const d = new Uint8Array(16);
      const v = new DataView(d.buffer);
      v.setBigUint64(0, BigInt(this.stage(frag)), true);
      v.setUint32(8, (frag.length & 0xfffff) | (1 << 20) | (dcmd << 24), true);
      d[13] = o.popts ?? 0;
      v.setUint16(14, o.vlan ?? 0, true);
      last = this.putRawTx(d);
    });
    return last;
  }

  /** Rings the doorbell: TDT = next_to_use. */
  kick(): void {
    this.w32(REG.TDT, this.txTail);
  }

  sendLegacy(fragments: Uint8Array[], o: LegacyOpts = {}): number {
    const last = this.queueLegacy(fragments, o);
    this.kick();
    return last;
  }

  /** DD written back in descriptor i? */
  txDone(i: number): boolean {
    return (this.mem.readU8(this.txDescAddr(i) + 12) & 1) === 1;
  }

  // ---- Receive ----

  rxDescAddr(i: number): number {
    return RX_RING + i * 16;
  }

  rxBufAddr(i: number): number {
    return RX_BUFS + i * 16384;
  }

  /**
   * Rings and enables the receiver like e1000_configure_rx: RCTL.EN off, ring registers, RDT = RDH = 0, then
   * RCTL with EN, then all but one buffer posted (RDT = count - 1) unless `post` says otherwise.
   */
  setupRx(o: { count?: number; rctl?: number; bufSize?: number; post?: number } = {}): void {
    const count = o.count ?? 16;
    this.rxCount = count;
    this.rxBufSize = o.bufSize ?? 2048;
    this.mem.fill(RX_RING, count * 16, 0);
    const rctl = o.rctl ?? RCTL.BAM;
    this.w32(REG.RCTL, rctl & ~RCTL.EN);
    this.w32(REG.RDBAL, RX_RING);
    this.w32(REG.RDBAH, 0);
    this.w32(REG.RDLEN, count * 16);
    this.w32(REG.RDT, 0);
    this.w32(REG.RDH, 0);
    for (let i = 0; i < count; i++) {
      this.mem.writeU64(this.rxDescAddr(i), BigInt(this.rxBufAddr(i)));
    }
    this.rxNext = 0;
    this.rxTail = 0;
    this.w32(REG.RCTL, rctl | RCTL.EN);
    this.postRx(o.post ?? count - 1);
  }

  /** Gives `n` more buffers to the device: clears their status and advances RDT. */
  postRx(n: number): void {
    for (let k = 0; k < n; k++) {
      const i = this.rxTail;
      this.mem.writeU64(this.rxDescAddr(i), BigInt(this.rxBufAddr(i)));
      this.mem.fill(this.rxDescAddr(i) + 8, 8, 0);
      this.rxTail = (this.rxTail + 1) % this.rxCount;
    }
    this.w32(REG.RDT, this.rxTail);
  }

  /** Collects completed frames from next_to_clean on (DD set), joining descriptors up to EOP. */
  receive(refill = true): RxFrame[] {
    const frames: RxFrame[] = [];
    let parts: Uint8Array[] = [];
    let lengths: number[] = [];
    let csum = 0;
    let used = 0;
    let consumed = 0;
    for (let guard = 0; guard < this.rxCount; guard++) {
      const at = this.rxDescAddr(this.rxNext);
      const status = this.mem.readU8(at + 12);
      if (!(status & RXSTAT.DD)) break;
      const len = this.mem.readU16(at + 8);
      const buf = Number(this.mem.readU64(at));
      if (parts.length === 0) csum = this.mem.readU16(at + 10);
      parts.push(this.mem.slice(buf, len).slice());
      lengths.push(len);
      const errors = this.mem.readU8(at + 13);
      const special = this.mem.readU16(at + 14);
      // Cleaned: DD off at once, as e1000_clean_rx_irq does, so a descriptor not yet given back is never read
      // twice when the ring comes round.
      this.mem.writeU8(at + 12, 0);
      used++;
      this.rxNext = (this.rxNext + 1) % this.rxCount;
      if (status & RXSTAT.EOP) {
        const total = parts.reduce((s, p) => s + p.length, 0);
        const data = new Uint8Array(total);
        let o = 0;
        for (const p of parts) {
          data.set(p, o);
          o += p.length;
        }
        frames.push({
          data,
          status,
          errors,
          special,
          csum,
          descriptors: used,
          lengths,
        });
        consumed += used;
        parts = [];
        lengths = [];
        used = 0;
      }
    }
    if (refill && consumed > 0) this.postRx(consumed);
    return frames;
  }

  readIcr(): number {
    return this.r32(REG.ICR);
  }
}

export interface NicHarness {
  dev: E1000;
  drv: E1000Driver;
  mem: GuestMemory;
  /** The device's shared state (E1000.createState), for more E1000 objects over the same device. */
  state: SharedArrayBuffer;
  /** The far end of the wire: frames the NIC sends arrive here; frames sent here go to the NIC. */
  wire: PairBackend;
  /** Frames received at `wire` so far. */
  sent: Uint8Array[];
  /** irq.set calls, in order. */
  irqLevels: boolean[];
  readonly irqLevel: boolean;
  logs: string[];
  metrics: MetricsSegment;
  clock: { t: number };
}

/** What makeNic takes: the state's MAC, the pair's capacity, and E1000Options other than the wiring. */
export type NicOptions = Partial<Omit<E1000Options, "state" | "mem" | "backend" | "irq">> & {
  mac?: Uint8Array;
  capacity?: number;
};

/**
 * A NIC on a 4 MiB guest (shared memory, as vireo's guest RAM is), attached to one end of a pair; time is a
 * manual clock in milliseconds.
 */
export function makeNic(opts: NicOptions = {}): NicHarness {
  const mem = new GuestMemory(new SharedArrayBuffer(MEM_SIZE));
  const state = E1000.createState({ mac: opts.mac ?? NIC_MAC });
  const clock = { t: 0 };
  return attachNic(state, mem, clock, { ...opts, init: opts.init ?? true });
}

/**
 * Another E1000 object over an existing device state and guest memory, as another thread would build one: its
 * own pair (wire), interrupt line log, logs and metrics; the clock is shared with the caller.
 */
export function attachNic(
  state: SharedArrayBuffer,
  mem: GuestMemory,
  clock: { t: number },
  opts: NicOptions = {},
): NicHarness {
  const { mac: _mac, capacity, ...rest } = opts;
  const [nicEnd, wire] = createPair({ capacity: capacity ?? 1024 });
  const sent: Uint8Array[] = [];
  wire.attach((f) => {
    sent.push(f);
    return true;
  });
  const irqLevels: boolean[] = [];
  const logs: string[] = [];
  const metrics = new MetricsSegment(new ArrayBuffer(1024 * 8), 0);
  const dev = new E1000({
    state,
    mem,
    backend: nicEnd,
    irq: { set: (l) => irqLevels.push(l) },
    metrics,
    now: () => clock.t,
    log: (m) => logs.push(m),
    ...rest,
  });
  const drv = new E1000Driver(dev, mem);
  return {
    dev,
    drv,
    mem,
    state,
    wire,
    sent,
    irqLevels,
    get irqLevel() {
      return irqLevels.length > 0 && (irqLevels[irqLevels.length - 1] as boolean);
    },
    logs,
    metrics,
    clock,
  };
}
