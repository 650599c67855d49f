/**
 * virtio-console (OASIS virtio 1.2, 5.3 Console Device), port 0 only (no VIRTIO_CONSOLE_F_MULTIPORT): receiveq0
 * carries input to the guest, transmitq0 output from it. Offers VIRTIO_CONSOLE_F_EMERG_WRITE, and
 * VIRTIO_CONSOLE_F_SIZE when a terminal size is given.
 *
 * Nothing is lost either way: every transmit buffer's bytes go to `output`, in order (under the transmit queue's
 * lock, whichever thread serves it); `input` keeps bytes in a bounded ring in the shared state until the guest
 * posts receive buffers, and tells the caller how many it took.
 */
import { NO_COUNTER } from "../../metrics/registry.ts";
import { featureBit, VIRTIO_ID } from "./constants.ts";
import { type VirtioContext, type VirtioDeviceModel, VirtioRequestError } from "./device.ts";
import { type DescriptorChain, type Virtqueue, writeChain } from "./queue/index.ts";
import type { WorkBudget } from "./work-budget.ts";

/** Feature bits (5.3.3). */
export const VIRTIO_CONSOLE_F = { SIZE: 0, MULTIPORT: 1, EMERG_WRITE: 2 } as const;

/** Offsets in struct virtio_console_config (5.3.4). */
export const CONSOLE_CONFIG = { COLS: 0, ROWS: 2, MAX_NR_PORTS: 4, EMERG_WR: 8, SIZE: 12 } as const;

export const CONSOLE_RX_QUEUE = 0;
export const CONSOLE_TX_QUEUE = 1;

export interface VirtioConsoleOptions {
  /**
   * Receives the guest's output. The array is valid during the call only (the device reuses it): a sink that
   * keeps the bytes copies them.
   */
  output: (bytes: Uint8Array) => void;
  name?: string;
  queueSize?: number;
  /** Terminal size; offers VIRTIO_CONSOLE_F_SIZE. */
  size?: { cols: number; rows: number };
  /** Bytes of input held while the guest has no buffers; default 65536. */
  inputCapacity?: number;
}

// Shared state: Int32 words [input head, input count, cols, rows], then the input ring.
const W_HEAD = 0;
const W_COUNT = 1;
const W_COLS = 2;
const W_ROWS = 3;
const RING_OFFSET = 16;
const OUTPUT_CHUNK = 65536;
/**
 * The longest transmit buffer the device accepts. The specification sets no limit, but Linux's virtio_console
 * never queues more than a pipe's worth (at most 1 MiB with F_SETPIPE_SZ; 32 KiB per write()); a longer chain is
 * a driver naming the same pages again and again to make one notification cost seconds of host time.
 */
export const CONSOLE_MAX_TX_CHAIN = 1 << 20;

export class VirtioConsole implements VirtioDeviceModel {
  readonly type = VIRTIO_ID.CONSOLE;
  readonly name: string;
  readonly numQueues = 2;
  readonly maxQueueSize: number;
  readonly features: bigint;
  readonly configSize = CONSOLE_CONFIG.SIZE;
  readonly stateBytes: number;
  readonly inputCapacity: number;
  private readonly output: (bytes: Uint8Array) => void;
  private readonly initialSize: { cols: number; rows: number } | undefined;
  private ctx!: VirtioContext;
  /** Where transmitted bytes are copied out, piece by piece (allocated once: no allocation per chain). */
  private readonly outputBuffer = new Uint8Array(OUTPUT_CHUNK);
  private words!: Int32Array;
  private ring!: Uint8Array;
  private c = { txBytes: NO_COUNTER, rxBytes: NO_COUNTER };

  constructor(opts: VirtioConsoleOptions) {
    this.output = opts.output;
    this.name = opts.name ?? "console0";
    this.maxQueueSize = opts.queueSize ?? 64;
    this.inputCapacity = opts.inputCapacity ?? 65536;
    this.stateBytes = RING_OFFSET + this.inputCapacity;
    this.initialSize = opts.size;
    let f = featureBit(VIRTIO_CONSOLE_F.EMERG_WRITE);
    if (opts.size) f |= featureBit(VIRTIO_CONSOLE_F.SIZE);
    this.features = f;
  }

  bind(ctx: VirtioContext): void {
    this.ctx = ctx;
    this.words = new Int32Array(ctx.stateBuffer, ctx.stateOffset, 4);
    this.ring = new Uint8Array(ctx.stateBuffer, ctx.stateOffset + RING_OFFSET, this.inputCapacity);
    const m = ctx.metrics;
    if (m) {
      this.c = {
        txBytes: m.counter(`virtio.${this.name}.tx_bytes`),
        rxBytes: m.counter(`virtio.${this.name}.rx_bytes`),
      };
    }
  }

  /** Snapshots: the input ring's head and count must lie in the ring, the size fit its 16-bit fields (5.3.4). */
  checkState(region: Uint8Array): string | null {
    const v = new DataView(region.buffer, region.byteOffset, region.byteLength);
    const head = v.getInt32(4 * W_HEAD, true);
    const count = v.getInt32(4 * W_COUNT, true);
    if (head < 0 || head >= this.inputCapacity)
      return `input ring head ${head} is outside the ring (${this.inputCapacity})`;
    if (count < 0 || count > this.inputCapacity)
      return `input ring count ${count} exceeds the ring (${this.inputCapacity})`;
    for (const [what, w] of [
      ["cols", W_COLS],
      ["rows", W_ROWS],
    ] as const) {
      const n = v.getInt32(4 * w, true);
      if (n < 0 || n > 0xffff) return `${what} ${n} does not fit 16 bits`;
    }
    return null;
  }

  readConfig(offset: number, data: Uint8Array): void {
    const cfg = new Uint8Array(CONSOLE_CONFIG.SIZE);
    const v = new DataView(cfg.buffer);
    const cols = Atomics.load(this.words, W_COLS) || (this.initialSize?.cols ?? 0);
    const rows = Atomics.load(this.words, W_ROWS) || (this.initialSize?.rows ?? 0);
    v.setUint16(CONSOLE_CONFIG.COLS, cols, true);
    v.setUint16(CONSOLE_CONFIG.ROWS, rows, true);
    v.setUint32(CONSOLE_CONFIG.MAX_NR_PORTS, 1, true);
    data.set(cfg.subarray(offset, offset + data.length));
  }

  /** 5.3.4: a write to emerg_wr outputs one character, queues or not. */
  writeConfig(offset: number, data: Uint8Array): void {
    if (offset === CONSOLE_CONFIG.EMERG_WR && data.length >= 1) {
      this.output(Uint8Array.of(data[0] as number));
      this.c.txBytes.add();
    }
  }

  /** The terminal was resized: new cols/rows and a configuration change (5.3.6.2, with VIRTIO_CONSOLE_F_SIZE). */
  resize(cols: number, rows: number): void {
    Atomics.store(this.words, W_COLS, cols & 0xffff);
    Atomics.store(this.words, W_ROWS, rows & 0xffff);
    this.ctx.configChanged();
  }

  /**
   * Offers terminal input. Returns how many bytes (a prefix of `bytes`) were taken; the caller keeps the rest and
   * offers it again later (after the guest has read some).
   */
  input(bytes: Uint8Array): number {
    const taken =
      this.ctx.withQueue(CONSOLE_RX_QUEUE, () => {
        const w = this.words;
        const cap = this.inputCapacity;
        const count = w[W_COUNT] as number;
        const n = Math.min(bytes.length, cap - count);
        const tail = ((w[W_HEAD] as number) + count) % cap;
        const first = Math.min(n, cap - tail);
        this.ring.set(bytes.subarray(0, first), tail);
        this.ring.set(bytes.subarray(first, n), 0);
        w[W_COUNT] = count + n;
        return n;
      }) ?? 0;
    this.deliver();
    return taken;
  }

  /** Bytes of input waiting for receive buffers. */
  get pendingInput(): number {
    return this.ctx.withQueue(CONSOLE_RX_QUEUE, () => this.words[W_COUNT] as number) ?? 0;
  }

  queueNotified(q: number): void {
    if (q === CONSOLE_RX_QUEUE) this.deliver();
    else if (q === CONSOLE_TX_QUEUE)
      this.ctx.drain(CONSOLE_TX_QUEUE, (chain, work) => this.transmit(chain, work));
  }

  private transmit(chain: DescriptorChain, work: WorkBudget): number {
    if (chain.writableLength > 0) {
      throw new VirtioRequestError(`console transmit buffer ${chain.id} has device-writable bytes`);
    }
    if (chain.readableLength > CONSOLE_MAX_TX_CHAIN) {
      throw new VirtioRequestError(
        `console transmit buffer ${chain.id} declares ${chain.readableLength} bytes (the device takes at most ${CONSOLE_MAX_TX_CHAIN})`,
      );
    }
    // Copied out in pieces of at most OUTPUT_CHUNK bytes through one reused buffer.
    work.spend(Math.max(1, chain.readableLength));
    for (const seg of chain.readable) {
      for (let done = 0; done < seg.len; done += OUTPUT_CHUNK) {
        const n = Math.min(OUTPUT_CHUNK, seg.len - done);
        const piece = this.outputBuffer.subarray(0, n);
        this.ctx.mem.read(seg.addr + done, piece);
        this.output(piece);
        this.c.txBytes.add(n);
      }
    }
    return 0;
  }

  /** Moves pending input into the guest's receive buffers. */
  private deliver(): void {
    this.ctx.withQueue(CONSOLE_RX_QUEUE, (vq) => {
      if (vq === null) return;
      this.fill(vq);
    });
  }

  private fill(vq: Virtqueue): void {
    const w = this.words;
    const cap = this.inputCapacity;
    let pushed = false;
    while ((w[W_COUNT] as number) > 0) {
      const c = vq.pop();
      if (c === null) break;
      if (c.readableLength > 0) {
        throw new VirtioRequestError(`console receive buffer ${c.id} has device-readable bytes`);
      }
      const count = w[W_COUNT] as number;
      const head = w[W_HEAD] as number;
      const n = Math.min(count, c.writableLength);
      const first = Math.min(n, cap - head);
      writeChain(this.ctx.mem, c, this.ring.subarray(head, head + first));
      if (n > first) writeChain(this.ctx.mem, c, this.ring.subarray(0, n - first), first);
      vq.pushUsed(c, n);
      w[W_HEAD] = (head + n) % cap;
      w[W_COUNT] = count - n;
      this.c.rxBytes.add(n);
      pushed = true;
    }
    if (pushed) this.ctx.notifyUsed(CONSOLE_RX_QUEUE, vq);
  }
}
