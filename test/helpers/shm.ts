/** Tests' side of shm rings (src/net/shm-ring.ts): what a consumer finds there now. */
import type { ShmRing } from "../../src/net/shm-ring.ts";

/** Copies of every frame published and not yet taken, taken and released. */
export function takeFrames(ring: ShmRing): Uint8Array[] {
  const out: Uint8Array[] = [];
  const k = ring.available();
  for (let i = 0; i < k; i++) {
    const at = ring.frameAt();
    out.push(ring.bytes.slice(at, at + ring.frameLength));
    ring.next();
  }
  ring.release();
  return out;
}
