/**
 * The guest pages a machine's virtio rings occupy, from its saved device sections: the device writes used
 * elements (split) or descriptors (packed) through views of guest memory that the device page log does not see,
 * so a migration sends these pages again in its last round. Sizes are the split ring's (virtio 1.2 2.7: descriptor
 * table 16 × size, driver area 6 + 2 × size, device area 6 + 8 × size), which cover a packed ring's too.
 */
import type { StateSection } from "../snapshot/state-file.ts";

const PAGE = 4096;

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => v !== null && typeof v === "object" && !Array.isArray(v);

export function ringPages(sections: readonly StateSection[], ramBytes: number): number[] {
  const pages = new Set<number>();
  const add = (addr: unknown, len: number) => {
    if (typeof addr !== "number" || !Number.isSafeInteger(addr) || addr < 0 || addr >= ramBytes) return;
    const end = Math.min(addr + len, ramBytes);
    for (let p = Math.floor(addr / PAGE); p * PAGE < end; p++) pages.add(p);
  };
  for (const s of sections) {
    if (s.kind !== "virtio-pci") continue;
    const device = s.data.device;
    const data = isObj(device) && isObj(device.data) ? device.data : null;
    const queues = data && Array.isArray(data.queues) ? data.queues : [];
    for (const q of queues) {
      if (!isObj(q) || q.enable !== true || typeof q.size !== "number") continue;
      const size = q.size;
      add(q.desc, 16 * size);
      add(q.driver, 6 + 2 * size);
      add(q.device, 6 + 8 * size);
    }
  }
  return [...pages].sort((a, b) => a - b);
}
