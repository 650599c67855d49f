/**
 * virtio-rng, the entropy device (OASIS virtio 1.2, 5.4 Entropy Device): one request queue whose device-writable
 * buffers the device fills with random bytes from the host's CSPRNG (crypto.randomFillSync). No features, no
 * configuration space.
 */
import { randomFillSync } from "node:crypto";
import type { Counter } from "../../metrics/registry.ts";
import { VIRTIO_ID } from "./constants.ts";
import { type VirtioContext, type VirtioDeviceModel, VirtioRequestError } from "./device.ts";
import type { DescriptorChain } from "./queue/index.ts";
import type { WorkBudget } from "./work-budget.ts";

export interface VirtioRngOptions {
  name?: string;
  queueSize?: number;
  /** Bytes filled per request at most (the used length says how many); default 64 KiB. */
  maxBytesPerRequest?: number;
}

const NO_COUNTER: Counter = { add() {}, value: 0 };

export class VirtioRng implements VirtioDeviceModel {
  readonly type = VIRTIO_ID.ENTROPY;
  readonly name: string;
  readonly numQueues = 1;
  readonly maxQueueSize: number;
  readonly features = 0n;
  readonly configSize = 0;
  readonly stateBytes = 0;
  private readonly maxBytes: number;
  private ctx!: VirtioContext;
  private cRequests: Counter = NO_COUNTER;
  private cBytes: Counter = NO_COUNTER;

  constructor(opts: VirtioRngOptions = {}) {
    this.name = opts.name ?? "rng0";
    this.maxQueueSize = opts.queueSize ?? 64;
    this.maxBytes = opts.maxBytesPerRequest ?? 65536;
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
    let left = this.maxBytes;
    let written = 0;
    for (const seg of chain.writable) {
      if (left === 0) break;
      const n = Math.min(seg.len, left);
      randomFillSync(this.ctx.mem.slice(seg.addr, n));
      written += n;
      left -= n;
    }
    work.spend(Math.max(1, written));
    this.cRequests.add();
    this.cBytes.add(written);
    return written;
  }
}
