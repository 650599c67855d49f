import { VireoError } from "../errors.ts";

/** Misuse of a SharedLock (unlocking a lock this object does not hold, re-locking one it does). */
export class LockError extends VireoError {
  constructor(message: string) {
    super("VIREO_LOCK", message);
  }
}

// Lock word states, as in U. Drepper, "Futexes Are Tricky" (2011), section 6 ("mutex2"/"mutex3"): remembering
// whether anyone may be waiting lets the uncontended unlock skip the notify.
const UNLOCKED = 0;
const LOCKED = 1;
const CONTENDED = 2;

/**
 * A mutex over one Int32 slot of a SharedArrayBuffer, shared by the main thread and worker threads.
 *
 * Each thread constructs its own SharedLock over the same slot. The lock is not recursive: a SharedLock object
 * that already holds the lock throws on `lock()` instead of deadlocking, and throws on `unlock()` if it does not
 * hold it. (Two SharedLock objects over the same slot in the same thread would deadlock; don't do that.)
 *
 * The Atomics operations are sequentially consistent, so plain reads and writes of shared memory made while
 * holding the lock are visible to the next holder.
 */
export class SharedLock {
  /** Bytes a lock needs in the shared buffer (one Int32, 4-byte aligned). */
  static readonly BYTES = 4;

  private readonly word: Int32Array;
  private held = false;

  constructor(buffer: SharedArrayBuffer, byteOffset = 0) {
    if (!(buffer instanceof SharedArrayBuffer)) {
      // Atomics.wait only works on shared memory; an ArrayBuffer lock would also protect nothing across threads.
      throw new LockError("SharedLock needs a SharedArrayBuffer");
    }
    if (byteOffset % 4 !== 0 || byteOffset < 0 || byteOffset + 4 > buffer.byteLength) {
      throw new LockError(`SharedLock: byte offset ${byteOffset} is not an aligned slot in the buffer`);
    }
    this.word = new Int32Array(buffer, byteOffset, 1);
  }

  /** Sets the slot to unlocked. Only for fresh state, before any other thread can use it. */
  static init(buffer: SharedArrayBuffer, byteOffset = 0): void {
    Atomics.store(new Int32Array(buffer, byteOffset, 1), 0, UNLOCKED);
  }

  lock(): void {
    if (this.held) throw new LockError("SharedLock is not recursive: this holder already has it");
    const w = this.word;
    let c = Atomics.compareExchange(w, 0, UNLOCKED, LOCKED);
    if (c !== UNLOCKED) {
      // Slow path: mark the lock contended so the holder's unlock wakes us, then sleep until it looks free.
      // Exchanging in CONTENDED (rather than LOCKED) on acquisition is conservative: we may have had company.
      if (c !== CONTENDED) c = Atomics.exchange(w, 0, CONTENDED);
      while (c !== UNLOCKED) {
        Atomics.wait(w, 0, CONTENDED);
        c = Atomics.exchange(w, 0, CONTENDED);
      }
    }
    this.held = true;
  }

  /** Takes the lock if it is free; never waits. */
  tryLock(): boolean {
    if (this.held) throw new LockError("SharedLock is not recursive: this holder already has it");
    if (Atomics.compareExchange(this.word, 0, UNLOCKED, LOCKED) !== UNLOCKED) return false;
    this.held = true;
    return true;
  }

  unlock(): void {
    if (!this.held) throw new LockError("SharedLock.unlock: this holder does not have the lock");
    this.held = false;
    const w = this.word;
    // LOCKED -> UNLOCKED needs no wake-up; CONTENDED means someone may sleep in Atomics.wait.
    if (Atomics.sub(w, 0, 1) !== LOCKED) {
      Atomics.store(w, 0, UNLOCKED);
      Atomics.notify(w, 0, 1);
    }
  }

  /** Whether this object currently holds the lock. */
  get isHeld(): boolean {
    return this.held;
  }

  withLock<T>(fn: () => T): T {
    this.lock();
    try {
      return fn();
    } finally {
      this.unlock();
    }
  }
}
