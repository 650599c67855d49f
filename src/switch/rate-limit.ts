/**
 * A token-bucket rate limit for one direction of a switch port, in bytes per second, frames per second, or
 * both (a frame passes only when both buckets hold enough). Each bucket refills continuously at its rate up to
 * its burst, and starts full; a frame that does not fit is dropped (the switch queues nothing), and takes no
 * tokens. Time comes in as milliseconds from a monotonic clock (performance.now()), so tests can simulate it.
 * admit() allocates nothing.
 */
import { VireoError } from "../errors.ts";

/** The largest untagged Ethernet frame without FCS plus its FCS (IEEE 802.3): the least default byte burst. */
export const MAX_FRAME_BYTES = 1518;

export interface RateLimitConfig {
  bytesPerSec?: number;
  framesPerSec?: number;
  /** Bucket sizes. Defaults: a tenth of a second at the rate, at least one 1518-byte frame / one frame. */
  burstBytes?: number;
  burstFrames?: number;
}

export interface RateLimitStats {
  admitted: number;
  dropped: number;
  admittedBytes: number;
  droppedBytes: number;
  bytesPerSec: number | null;
  framesPerSec: number | null;
  burstBytes: number | null;
  burstFrames: number | null;
}

export class RateLimitError extends VireoError {
  constructor(message: string) {
    super("VIREO_SWITCH_RATE_LIMIT", `rate limit: ${message}`);
  }
}

function positive(name: string, v: number | undefined): number | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== "number" || !Number.isFinite(v) || v <= 0)
    throw new RateLimitError(`${name} must be a positive number, got ${JSON.stringify(v)}`);
  return v;
}

export class TokenBucket {
  // A missing limit is Infinity: its bucket never runs short, and the checks stay branch-free.
  // Every field starts as a number (not declared bare, which defines it as undefined first): V8 then keeps
  // the fields as unboxed doubles, where a field that once held undefined boxes every double stored into it,
  // which allocates on each admit().
  private readonly byteRate: number = 0;
  private readonly frameRate: number = 0;
  private readonly byteBurst: number = 0;
  private readonly frameBurst: number = 0;
  private byteTokens = 0;
  private frameTokens = 0;
  private last = 0;
  private admitted = 0;
  private dropped = 0;
  private admittedBytes = 0;
  private droppedBytes = 0;

  constructor(cfg: RateLimitConfig, nowMs: number) {
    const bps = positive("bytesPerSec", cfg.bytesPerSec);
    const fps = positive("framesPerSec", cfg.framesPerSec);
    if (bps === undefined && fps === undefined)
      throw new RateLimitError("give bytesPerSec, framesPerSec or both");
    let bb = positive("burstBytes", cfg.burstBytes);
    let bf = positive("burstFrames", cfg.burstFrames);
    if (bb !== undefined && bps === undefined) throw new RateLimitError("burstBytes needs bytesPerSec");
    if (bf !== undefined && fps === undefined) throw new RateLimitError("burstFrames needs framesPerSec");
    if (bps !== undefined) bb ??= Math.max(bps / 10, MAX_FRAME_BYTES);
    if (fps !== undefined) bf ??= Math.max(fps / 10, 1);
    if (bf !== undefined && bf < 1)
      throw new RateLimitError(`burstFrames must be at least 1 (no frame could pass), got ${bf}`);
    this.byteRate = bps ?? Number.POSITIVE_INFINITY;
    this.frameRate = fps ?? Number.POSITIVE_INFINITY;
    this.byteBurst = bb ?? Number.POSITIVE_INFINITY;
    this.frameBurst = bf ?? Number.POSITIVE_INFINITY;
    this.byteTokens = this.byteBurst;
    this.frameTokens = this.frameBurst;
    this.last = nowMs;
  }

  /** Whether a frame of `len` bytes may pass at time `nowMs`; if so its tokens are taken. */
  admit(len: number, nowMs: number): boolean {
    const dt = nowMs - this.last;
    // A clock that stands still or steps back refills nothing (and the next step forward counts from `last`).
    if (dt > 0) {
      this.last = nowMs;
      if (this.byteTokens < this.byteBurst)
        this.byteTokens = Math.min(this.byteBurst, this.byteTokens + (dt * this.byteRate) / 1000);
      if (this.frameTokens < this.frameBurst)
        this.frameTokens = Math.min(this.frameBurst, this.frameTokens + (dt * this.frameRate) / 1000);
    }
    if (this.byteTokens >= len && this.frameTokens >= 1) {
      this.byteTokens -= len;
      this.frameTokens -= 1;
      this.admitted++;
      this.admittedBytes += len;
      return true;
    }
    this.dropped++;
    this.droppedBytes += len;
    return false;
  }

  stats(): RateLimitStats {
    const fin = (v: number): number | null => (Number.isFinite(v) ? v : null);
    return {
      admitted: this.admitted,
      dropped: this.dropped,
      admittedBytes: this.admittedBytes,
      droppedBytes: this.droppedBytes,
      bytesPerSec: fin(this.byteRate),
      framesPerSec: fin(this.frameRate),
      burstBytes: fin(this.byteBurst),
      burstFrames: fin(this.frameBurst),
    };
  }
}
