/**
 * WebAssembly's floor, for `vireo bench switch`: bench/js-floor.ts's loop written in WebAssembly
 * (bench/wasm-floor.wat), under the same load. Beside the JS floor it says how much of what JavaScript leaves of
 * testpmd's rate a data path in WebAssembly would win back here: the same passes, the same checks, the same
 * protocol code serving the sockets (VhostUserEndpoint), only the rings served by compiled wasm instead of
 * optimized JavaScript.
 *
 * WebAssembly reaches only the memory it imports, so each front-end's memory is mapped a second time, into one
 * shared WebAssembly.Memory. vireo's memory code maps each region of a memory table over a reservation
 * (VhostUserMemory.map: native mmapFixed per region); in this process that call is wrapped so that the region's
 * fd is also mapped at a place of its own in the wasm memory, 2 MiB-aligned (a hugepage file maps only there).
 * Places are not reused: front-ends that send many or large memory tables can fill the 2 GiB, and the table after
 * that is refused (its connection fails), as a memory table vireo could not map is.
 * The module is compiled from its text at start (the wabt package).
 *
 * A benchmark reference, not a switch, with bench/js-floor.ts's limits: frames go to the partner port, only
 * chains of one direct descriptor of split rings are served, and a hostile front-end is kept inside its own memory
 * (the region checks, in wasm) and cannot reach past the wasm memory at all.
 *
 *   node --import tsx bench/wasm-floor.ts SOCKET_A0 SOCKET_B0 [SOCKET_A1 SOCKET_B1 ...]
 *
 * It prints `wasm-floor ready` once it listens and runs until it is killed.
 */
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import type { SplitQueue } from "../src/devices/virtio/queue/split.ts";
import type { GuestMemory } from "../src/memory/guest-memory.ts";
import { native } from "../src/native.ts";
import { RegionGuestMemory } from "../src/vhost-user/memory.ts";
import { runFloorLoop } from "./js-floor.ts";

// The part of WebAssembly's JS API used here (@types/node 20 does not declare it; the DOM library would).
declare namespace WebAssembly {
  class Memory {
    constructor(d: { initial: number; maximum: number; shared: boolean });
    readonly buffer: SharedArrayBuffer;
  }
  class Module {
    constructor(bytes: Uint8Array);
  }
  class Instance {
    constructor(m: Module, imports: object);
    readonly exports: Record<string, unknown>;
  }
}

/** 2 GiB: every offset in it is a non-negative i32, which the module's -1 for "none" relies on. */
const PAGES = 32768;
const WASM_PAGE = 65536;
const HUGE = 2 << 20;
/**
 * Ring states at 0x1000-0x7fff, 256 bytes each (the module's totals are at 0x100, its scratch from 0x8000). A slot
 * is reused RING_SLOTS rings later: the bench's rings are made once per connection, far fewer.
 */
const RING_STATES = 0x1000;
const RING_SLOTS = 112;
const MAX_REGIONS = 8;
/** Front-ends' memory is placed from here on (the state above stays below it). */
const FIRST_PLACE = 1 << 20;
const VIRTQ_USED_F_NO_NOTIFY = 1;

/** The module compiled from bench/wasm-floor.wat, instantiated over `memory`. */
async function instantiate(memory: WebAssembly.Memory): Promise<(tx: number, rx: number) => number> {
  const wabt = await (createRequire(import.meta.url)("wabt") as () => Promise<WabtModule>)();
  const text = readFileSync(new URL("./wasm-floor.wat", import.meta.url), "utf8");
  const parsed = wabt.parseWat("wasm-floor.wat", text, { threads: true });
  const { buffer } = parsed.toBinary({});
  parsed.destroy();
  const instance = new WebAssembly.Instance(new WebAssembly.Module(buffer), { env: { mem: memory } });
  return instance.exports.forward as (tx: number, rx: number) => number;
}

interface WabtModule {
  parseWat(
    name: string,
    text: string,
    features: { threads: boolean },
  ): { toBinary(o: object): { buffer: Uint8Array }; destroy(): void };
}

/**
 * Wraps the native mmapFixed of this process so that every region of a front-end's memory that vireo maps is
 * mapped into `memory` too, at a 2 MiB-aligned place of its own; returns, per reservation (its
 * buffer), where each region (by its offset in the reservation) starts in `memory`.
 */
function mirrorMappings(memory: WebAssembly.Memory): WeakMap<ArrayBufferLike, Map<number, number>> {
  const n = native();
  const base = Number(n.addressOf(new Uint8Array(memory.buffer)) % BigInt(HUGE));
  let next = (HUGE - base) % HUGE;
  while (next < FIRST_PLACE) next += HUGE;
  const places = new WeakMap<ArrayBufferLike, Map<number, number>>();
  const fixed = n.mmapFixed.bind(n);
  n.mmapFixed = (view, fd, offset) => {
    fixed(view, fd, offset);
    const at = next;
    const end = at + Math.ceil(view.byteLength / HUGE) * HUGE;
    if (end > PAGES * WASM_PAGE) {
      throw new Error(`wasm-floor: no room left in the wasm memory for a ${view.byteLength}-byte region`);
    }
    fixed(new Uint8Array(memory.buffer, at, view.byteLength), fd, offset);
    next = end;
    let m = places.get(view.buffer);
    if (m === undefined) {
      m = new Map();
      places.set(view.buffer, m);
    }
    m.set(view.byteOffset, at);
  };
  return places;
}

/** Serves the sockets' pairs until killed, with the rings served by the wasm module. */
export async function runWasmFloor(sockets: string[], log: (m: string) => void): Promise<never> {
  const memory = new WebAssembly.Memory({ initial: PAGES, maximum: PAGES, shared: true });
  const state = new DataView(memory.buffer);
  const places = mirrorMappings(memory);
  const forward = await instantiate(memory);
  let slots = 0;
  // A ring's state in the wasm memory, from the device's view of it: where its parts and the front-end's
  // regions are in the wasm memory, and its indices.
  const makeRing = (vq: SplitQueue, mem: GuestMemory, inOrder: boolean): number | null => {
    const regionPlaces = places.get(mem.bytes.buffer);
    if (
      regionPlaces === undefined ||
      !(mem instanceof RegionGuestMemory) ||
      mem.regions.length > MAX_REGIONS
    ) {
      log(
        `a ring over memory not mapped into the wasm memory (or of more than ${MAX_REGIONS} regions): not served`,
      );
      return null;
    }
    const regions = mem.regions.map((g) => ({ ...g, at: regionPlaces.get(g.gpa - mem.base) ?? -1 }));
    // Where the ring part at offset `off` of the device's view (`len` bytes) is in the wasm memory.
    const placed = (off: number, len: number): number => {
      const gpa = off + mem.base;
      const g = regions.find((r) => r.at >= 0 && gpa >= r.gpa && gpa + len <= r.gpa + r.size);
      return g === undefined ? -1 : g.at + (gpa - g.gpa);
    };
    const l = vq.rawLayout();
    const size = vq.size;
    const parts = [
      placed(l.descOff, 16 * size),
      placed(l.availOff, 4 + 2 * size),
      placed(l.usedOff, 4 + 8 * size),
    ];
    if (parts.some((x) => x < 0) || regions.some((g) => g.at < 0)) {
      log("a ring whose parts or regions are not in the wasm memory: not served");
      return null;
    }
    const at = RING_STATES + 256 * (slots++ % RING_SLOTS);
    const words = [...parts, size - 1, size, l.lastAvail, l.usedIdx, inOrder ? 1 : 0, regions.length];
    for (const [i, w] of words.entries()) state.setInt32(at + 4 * i, w, true);
    for (const [i, g] of regions.entries()) {
      const p = at + 40 + 24 * i;
      state.setBigUint64(p, BigInt(g.gpa), true);
      state.setBigUint64(p + 8, BigInt(g.size), true);
      state.setInt32(p + 16, g.at, true);
    }
    // The driver is asked not to notify (2.7.10): the loop polls.
    mem.dataView.setUint16(l.usedOff, VIRTQ_USED_F_NO_NOTIFY, true);
    return at;
  };
  return runFloorLoop("wasm-floor", sockets, log, makeRing, forward);
}

if (import.meta.url === `file://${process.argv[1]}`) {
  await runWasmFloor(process.argv.slice(2), (m) => process.stdout.write(`${m}\n`));
}
