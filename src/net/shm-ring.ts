/**
 * A single-producer, single-consumer ring of Ethernet frames in shared memory, for two processes (or threads) that
 * map the same file: the transport of `vireo switch`'s shm ports (docs/switch.md, "shm ports"), in the manner of
 * netmap's rings that VALE switches between.
 *
 * Layout of one ring, all little-endian 32-bit words, each index on a cache line of its own so that the producer
 * and the consumer do not write the same line:
 *
 *   0    head       frames the producer has published (free-running)
 *   64   tail       frames the consumer has taken (free-running)
 *   128  wantsKick  1: the consumer found the ring empty and may sleep on its eventfd; the producer kicks after
 *                   publishing (and the consumer clears it when it finds frames again)
 *   192  slots, slotSize, reserved
 *   256  lengths: one u32 per slot (frame i's length is in entry i mod slots), padded to a cache line
 *   then slots * slotSize bytes of frames, 64-byte aligned, frame i in slot i mod slots from its first byte
 *
 * The lengths apart from the frames (as netmap keeps its slots apart from its buffers) keep a 64-byte frame on
 * one cache line and sixteen lengths on another: with the length before each frame, a 64-byte frame took two
 * lines. Each line written by one CPU and read by the other moves between them, so lines are the cost.
 *
 * The producer writes a frame's slot, then publishes head (release); the consumer reads head (acquire), reads the
 * slots before it, then publishes tail. Neither side trusts the other: the consumer checks every length against
 * the slot, and a head more than `slots` ahead of tail (or behind it) is a corrupt ring, refused with an error.
 */
import { VireoError } from "../errors.ts";

export const SHM_RING_HEADER = 256;
const HEAD = 0;
const TAIL = 16;
const WANTS_KICK = 32;
const SLOTS = 48;
const SLOT_SIZE = 49;

/** A frame of up to 1518 bytes plus an 802.1Q tag, rounded up to whole cache lines. */
export const SHM_DEFAULT_SLOT_SIZE = 1536;
export const SHM_DEFAULT_SLOTS = 512;

export class ShmRingError extends VireoError {
  constructor(message: string) {
    super("VIREO_SHM_RING", message);
  }
}

/** Throws ShmRingError unless rings of `slots` slots of `slotSize` bytes can be. */
export function checkShmGeometry(slots: number, slotSize: number): void {
  if (!Number.isInteger(slots) || slots < 1 || (slots & (slots - 1)) !== 0 || slots > 65536)
    throw new ShmRingError(`a ring has a power of 2 of slots up to 65536, not ${slots}`);
  if (!Number.isInteger(slotSize) || slotSize < 64 || slotSize % 64 !== 0 || slotSize > 65536)
    throw new ShmRingError(`a slot is a multiple of 64 bytes from 64 to 65536, not ${slotSize}`);
}

/** Bytes one ring of `slots` slots of `slotSize` bytes takes. */
export function shmRingBytes(slots: number, slotSize: number): number {
  return SHM_RING_HEADER + lengthsBytes(slots) + slots * slotSize;
}

function lengthsBytes(slots: number): number {
  return (4 * slots + 63) & ~63;
}

/** One end's view of a ring at byte `offset` of `buffer`. */
export class ShmRing {
  readonly slots: number;
  readonly slotSize: number;
  /** The largest frame a slot holds. */
  readonly maxFrame: number;
  readonly bytes: Uint8Array;
  private readonly words: Int32Array;
  /** The slots' frame lengths. */
  private readonly lengths: Uint32Array;
  /** Where slot 0's frame starts, in `bytes`. */
  private readonly base: number;
  /** The producer's next frame (not yet published) or the consumer's next frame (not yet released). */
  private local = 0;
  /** The other side's index as last read. */
  private seen = 0;

  /**
   * Formats the ring (`init`: the side that creates the memory) or checks an existing one against the sizes it
   * was agreed with.
   */
  constructor(buffer: SharedArrayBuffer, offset: number, slots: number, slotSize: number, init: boolean) {
    checkShmGeometry(slots, slotSize);
    if (offset % 64 !== 0 || offset + shmRingBytes(slots, slotSize) > buffer.byteLength)
      throw new ShmRingError(
        `a ring of ${slots} x ${slotSize} bytes does not fit at ${offset} of ${buffer.byteLength}`,
      );
    this.slots = slots;
    this.slotSize = slotSize;
    this.maxFrame = slotSize;
    this.words = new Int32Array(buffer, offset, SHM_RING_HEADER / 4);
    this.lengths = new Uint32Array(buffer, offset + SHM_RING_HEADER, slots);
    this.bytes = new Uint8Array(buffer);
    this.base = offset + SHM_RING_HEADER + lengthsBytes(slots);
    if (init) {
      this.words.fill(0);
      this.words[SLOTS] = slots;
      this.words[SLOT_SIZE] = slotSize;
    } else if (this.words[SLOTS] !== slots || this.words[SLOT_SIZE] !== slotSize) {
      throw new ShmRingError(
        `the ring says ${this.words[SLOTS]} slots of ${this.words[SLOT_SIZE]} bytes, not ${slots} of ${slotSize}`,
      );
    }
  }

  // --- producer ---

  /** Frames the producer may still write before the consumer releases some (reads tail when it must). */
  room(): number {
    let free = this.slots - ((this.local - this.seen) | 0);
    if (free > 0) return free;
    const tail = Atomics.load(this.words, TAIL);
    free = this.slots - ((this.local - tail) | 0);
    // Kept only once checked: a bad index must not be counted on later.
    if (free < 0 || free > this.slots) throw this.corrupt("tail", tail);
    this.seen = tail;
    return free;
  }

  /**
   * Byte offset in `bytes` where the next frame's data goes (its length is set by `commit`), or -1 if the ring
   * is full. The frame is not visible until `publish`.
   */
  reserve(): number {
    if (this.room() === 0) return -1;
    return this.base + (this.local & (this.slots - 1)) * this.slotSize;
  }

  /** Ends the frame written at reserve()'s offset: `len` bytes (at most maxFrame; the consumer checks). */
  commit(len: number): void {
    this.lengths[this.local & (this.slots - 1)] = len;
    this.local = (this.local + 1) | 0;
  }

  /** Copies `len` bytes of `src` from `from` into the next slot and commits it; false if the ring is full. */
  push(src: Uint8Array, from: number, len: number): boolean {
    if (len > this.maxFrame)
      throw new ShmRingError(`a frame of ${len} bytes does not fit a slot (${this.maxFrame})`);
    const at = this.reserve();
    if (at < 0) return false;
    const b = this.bytes;
    if (len <= 64) {
      // A short frame byte by byte: cheaper than making a view for TypedArray.set.
      for (let i = 0; i < len; i++) b[at + i] = src[from + i] as number;
    } else {
      b.set(src.subarray(from, from + len), at);
    }
    this.commit(len);
    return true;
  }

  /** Makes the committed frames visible; returns true if the consumer asked to be kicked. */
  publish(): boolean {
    Atomics.store(this.words, HEAD, this.local);
    return Atomics.load(this.words, WANTS_KICK) === 1;
  }

  // --- consumer ---

  /** Frames published and not yet taken (reads head when none are known). */
  available(): number {
    let n = (this.seen - this.local) | 0;
    if (n > 0) return n;
    const head = Atomics.load(this.words, HEAD);
    n = (head - this.local) | 0;
    if (n < 0 || n > this.slots) throw this.corrupt("head", head);
    this.seen = head;
    return n;
  }

  /**
   * The next frame's data offset in `bytes` (its length in `frameLength`), after available() said there is one.
   * Throws ShmRingError if the producer wrote a length that does not fit the slot.
   */
  frameAt(): number {
    const i = this.local & (this.slots - 1);
    const len = this.lengths[i] as number;
    if (len > this.maxFrame)
      throw new ShmRingError(
        `frame ${this.local >>> 0} has length ${len}, more than a slot holds (${this.maxFrame})`,
      );
    this.frameLength = len;
    return this.base + i * this.slotSize;
  }

  /** The length of the frame frameAt() last returned. */
  frameLength = 0;

  /** Takes the frame frameAt() returned (its slot is the producer's again after `release`). */
  next(): void {
    this.local = (this.local + 1) | 0;
  }

  /** Hands the slots of the frames taken back to the producer. */
  release(): void {
    Atomics.store(this.words, TAIL, this.local);
  }

  /**
   * The consumer is about to sleep: asks the producer to kick, then looks again (a frame published before the
   * request was seen would otherwise wait for the next one). Returns true if frames came meanwhile (then it does
   * not sleep; the request stays until `awake`).
   */
  sleep(): boolean {
    Atomics.store(this.words, WANTS_KICK, 1);
    return this.available() > 0;
  }

  /** The consumer found frames: the producer need not kick. */
  awake(): void {
    if (this.words[WANTS_KICK] !== 0) Atomics.store(this.words, WANTS_KICK, 0);
  }

  private corrupt(which: string, value: number): ShmRingError {
    return new ShmRingError(
      `the ring's ${which} is ${value >>> 0}, which cannot follow the frames this side counted (${this.local >>> 0}); the peer broke the ring`,
    );
  }
}
