/** A BlockBackend that counts what passes through it to another (for a back-end's per-connection report). */
import type { BlockBackend } from "./backend.ts";

export interface BlockCounts {
  reads: number;
  readBytes: number;
  writes: number;
  writtenBytes: number;
  flushes: number;
  discards: number;
  writeZeroes: number;
  /** Calls the inner backend refused (it threw). */
  errors: number;
}

export function zeroBlockCounts(): BlockCounts {
  return {
    reads: 0,
    readBytes: 0,
    writes: 0,
    writtenBytes: 0,
    flushes: 0,
    discards: 0,
    writeZeroes: 0,
    errors: 0,
  };
}

export class CountingBlockBackend implements BlockBackend {
  constructor(
    readonly inner: BlockBackend,
    readonly counts: BlockCounts = zeroBlockCounts(),
  ) {}

  get size(): number {
    return this.inner.size;
  }
  get readOnly(): boolean {
    return this.inner.readOnly;
  }
  get canDiscard(): boolean {
    return this.inner.canDiscard;
  }

  private count<T>(fn: () => T): T {
    try {
      return fn();
    } catch (e) {
      this.counts.errors++;
      throw e;
    }
  }

  read(offset: number, dst: Uint8Array): void {
    this.count(() => this.inner.read(offset, dst));
    this.counts.reads++;
    this.counts.readBytes += dst.length;
  }
  write(offset: number, src: Uint8Array): void {
    this.count(() => this.inner.write(offset, src));
    this.counts.writes++;
    this.counts.writtenBytes += src.length;
  }
  flush(): void {
    this.count(() => this.inner.flush());
    this.counts.flushes++;
  }
  discard(offset: number, length: number): void {
    this.count(() => this.inner.discard(offset, length));
    this.counts.discards++;
  }
  writeZeroes(offset: number, length: number, mayUnmap: boolean): void {
    this.count(() => this.inner.writeZeroes(offset, length, mayUnmap));
    this.counts.writeZeroes++;
  }
  close(): void {
    this.inner.close();
  }
}
