/**
 * The load of `vireo bench switch`'s shm rows (bench/shm-loop.ts) against a real `vireo switch` with two shm ports:
 * it says when its window starts and ends, and the frames it counts are frames the switch delivered (no more),
 * the loop keeping its 2 x burst frames in flight.
 */
import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { repoPath } from "../../src/paths.ts";
import { controlRequest } from "../../src/switch/control.ts";
import { startProcess, waitFor } from "../helpers/processes.ts";
import { startSwitch } from "../helpers/switch-process.ts";

test("bench/shm-loop.ts: its window, and counts the switch's deliveries account for", async () => {
  const dir = mkdtempSync(join(tmpdir(), "vireo-shm-loop-"));
  const a = join(dir, "a0.sock");
  const b = join(dir, "b0.sock");
  const sw = await startSwitch(dir, "loop1", [`shm=${a},name=a0`, `shm=${b},name=b0`]);
  try {
    const loop = startProcess([
      process.execPath,
      "--import",
      "tsx",
      repoPath("bench", "shm-loop.ts"),
      "--size",
      "64",
      "--burst",
      "16",
      "--warmup-ms",
      "300",
      "--ms",
      "700",
      a,
      b,
    ]);
    assert.equal(await loop.exited, 0, loop.err());
    const lines = loop
      .out()
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as { event: string; received?: number; ms?: number });
    assert.deepEqual(
      lines.map((l) => l.event),
      ["shm-loop-counting", "shm-loop-end"],
    );
    const end = lines[1] as { received: number; ms: number };
    assert.ok(end.received > 0, "frames went round");
    // At least the window asked for: it ends --ms after counting starts, however late that is.
    assert.ok(end.ms >= 700 && end.ms < 5000, `window ${end.ms} ms`);
    // The loop closed its connections on the way out: the switch has served its last turn for them.
    await waitFor(
      () => (sw.stderr().match(/shm: peer closed the connection/g) ?? []).length === 2,
      10_000,
      () => sw.stderr(),
    );
    const show = (await controlRequest(sw.control, { op: "show" })) as {
      ports: Array<{ name: string; tx: { frames: number }; drops: Record<string, number> }>;
    };
    const delivered = show.ports.reduce((n, p) => n + p.tx.frames, 0);
    // Warm-up and window together: the switch delivered every frame the loop counted, and at most the 2 x 16 in
    // flight more than the loop received in all (the counted window is part of that).
    assert.ok(delivered >= end.received, `switch delivered ${delivered}, loop counted ${end.received}`);
    assert.equal(
      show.ports.reduce((n, p) => n + (p.drops.noBuffers ?? 0), 0),
      0,
      "no ring overflowed",
    );
  } finally {
    sw.child.kill("SIGTERM");
    await sw.exited;
  }
});
