/**
 * Imports point one way: cli → vmm → devices → shared primitives, bus, memory → kvm → native. Each top-level part
 * of src/ has a rank; a module may import only from parts of its own rank or below. A new upward import fails
 * here with the file and the import named.
 */
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { test } from "node:test";
import { repoPath } from "../../src/paths.ts";

const RANK: Record<string, number> = {
  "native.ts": 0,
  "paths.ts": 0,
  "errors.ts": 0,
  kvm: 1,
  arch: 1,
  memory: 1,
  metrics: 1,
  shared: 1,
  image: 1,
  bus: 2,
  block: 2,
  // devices and net know each other (a TAP backend implements virtio-net's backend interface).
  devices: 3,
  net: 3,
  // Where a device's data plane runs besides the vCPU thread (src/vmm/vcpu-worker.ts): a thread of this process
  // (io-thread), another process over vhost-user (vhost-user). Each place is a thin host around the same
  // src/devices code, at the VMM's layer.
  "io-thread": 4,
  "vhost-user": 4,
  // The host kernel (/dev/vhost-net) serving a virtio-net card's rings.
  "vhost-net": 4,
  // The software switch (vireo switch): a process of its own, serving vhost-user ports with the same devices.
  switch: 4,
  vmm: 4,
  bench: 5,
  "emulated-host": 5,
  cli: 6,
};

function part(file: string): string {
  const rel = relative(repoPath("src"), file);
  if (rel.startsWith("..")) return rel.startsWith("../bench/") ? "bench" : rel;
  return rel.split("/")[0] ?? rel;
}

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sources(join(dir, e.name)) : e.name.endsWith(".ts") ? [join(dir, e.name)] : [],
  );
}

test("every top-level part of src/ has a rank", () => {
  const parts = new Set(sources(repoPath("src")).map(part));
  for (const p of parts) assert.ok(p in RANK, `src/${p} has no rank in test/unit/layering.test.ts`);
});

test("no module imports from a layer above its own", () => {
  const upward: string[] = [];
  for (const file of sources(repoPath("src"))) {
    const from = part(file);
    for (const m of readFileSync(file, "utf8").matchAll(/(?:from|import)\s*\(?\s*"(\.{1,2}\/[^"]+)"/g)) {
      const target = part(resolve(dirname(file), m[1] as string));
      if ((RANK[target] ?? 99) > (RANK[from] ?? -1))
        upward.push(`${relative(repoPath(), file)} imports ${m[1]} (${from} → ${target})`);
    }
  }
  assert.deepEqual(upward, []);
});
