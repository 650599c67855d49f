/**
 * virtio-rng, the entropy device (OASIS virtio 1.2, 5.4 Entropy Device): one request queue whose device-writable
 * buffers the device fills with random bytes from the host's CSPRNG (crypto.randomFillSync). No features, no
 * configuration space.
 */
import { randomFillSync } from "node:crypto";
import { type Counter, NO_COUNTER } from "../../metrics/registry.ts";
import { VIRTIO_ID } from "./constants.ts";
import { type VirtioContext, type VirtioDeviceModel, VirtioRequestError } from "./device.ts";
import { type DescriptorChain, writeChain } from "./queue/index.ts";
import type { WorkBudget } from "./work-budget.ts";

export interface VirtioRngOptions {
  name?: string;
  queueSize?: number;
  /** Bytes filled per request at most (the used length says how many); default 64 KiB. */
  maxBytesPerRequest?: number;
}

export class VirtioRng implements VirtioDeviceModel {
  readonly type = VIRTIO_ID.ENTROPY;
  readonly name: string;
  readonly numQueues = 1;
  readonly maxQueueSize: number;
  readonly features = 0n;
  readonly configSize = 0;
  readonly stateBytes = 0;
  private readonly maxBytes: number;
  /**
   * A pool of random bytes, made 64 KiB at a time and handed out in order (each byte once), copied to the driver's
   * segments: one randomFillSync call costs 7 to 40 µs on these machines whatever its length, so a call per segment
   * let a slice of 4096 one-byte segments take 30 ms. `entropyLeft` bytes at the pool's end are still unused.
   */
  private readonly entropy: Uint8Array;
  private entropyLeft = 0;
  private ctx!: VirtioContext;
  private cRequests: Counter = NO_COUNTER;
  private cBytes: Counter = NO_COUNTER;

  constructor(opts: VirtioRngOptions = {}) {
    this.name = opts.name ?? "rng0";
    this.maxQueueSize = opts.queueSize ?? 64;
    this.maxBytes = opts.maxBytesPerRequest ?? 65536;
    this.entropy = new Uint8Array(Math.max(1, Math.min(this.maxBytes, 65536)));
  }

  bind(ctx: VirtioContext): void {
    this.ctx = ctx;
    this.cRequests = ctx.metrics?.counter(`virtio.${this.name}.requests`) ?? NO_COUNTER;
    this.cBytes = ctx.metrics?.counter(`virtio.${this.name}.bytes`) ?? NO_COUNTER;
  }

  readConfig(_offset: number, _data: Uint8Array): void {}

  queueNotified(q: number): void {
    if (q !== 0) return;
    this.ctx.drain(0, (chain, work) => this.fill(chain, work));
  }

  /** 5.4.6: the driver's buffers are device-writable; the device fills them with entropy. */
  private fill(chain: DescriptorChain, work: WorkBudget): number {
    if (chain.readableLength > 0) {
      throw new VirtioRequestError(
        `rng request ${chain.id} has ${chain.readableLength} device-readable bytes`,
      );
    }
    const written = Math.min(this.maxBytes, chain.writableLength);
    for (let done = 0; done < written; ) {
      const piece = this.random(Math.min(this.entropy.length, written - done));
      writeChain(this.ctx.mem, chain, piece, done);
      done += piece.length;
    }
    work.spend(Math.max(1, written));
    this.cRequests.add();
    this.cBytes.add(written);
    return written;
  }

  /** `n` (at most the pool's size) random bytes from the pool, which is refilled when it has fewer left. */
  private random(n: number): Uint8Array {
    const pool = this.entropy;
    if (this.entropyLeft < n) {
      randomFillSync(pool);
      this.entropyLeft = pool.length;
    }
    const at = pool.length - this.entropyLeft;
    this.entropyLeft -= n;
    return pool.subarray(at, at + n);
  }
}
