/**
 * bench/switch.ts's speedWarnings: testpmd's loop does the same work per frame at any pair count, so rates of it
 * far apart within one run (rows or rounds) mean the machine changed speed, and the ratios over the bridge (one
 * CPU, unaffected) are not comparable between those rows. Checked on rows shaped as the bench makes them,
 * including the JSON of a run where it happened (11.6 and 19.6 Mpps).
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { type SwitchBenchRow, speedWarnings } from "../../bench/switch.ts";

function row(
  path: SwitchBenchRow["path"],
  frameBytes: number,
  pairs: number,
  mpps: number,
  samples?: number[],
) {
  return {
    path,
    variant: "plain",
    frameBytes,
    pairs,
    available: true,
    frames: Math.round(mpps * 3e6),
    seconds: 3,
    mpps,
    gbps: 0,
    countedBy: "test",
    ...(samples ? { samples } : {}),
  } satisfies SwitchBenchRow;
}

test("testpmd rates at one size further apart than 1.3x give one warning for that size, naming the range", () => {
  const rows = [
    row("testpmd", 64, 1, 11.56),
    row("testpmd", 64, 2, 19.61),
    row("testpmd", 64, 4, 18.73),
    row("bridge", 64, 1, 0.65),
    row("vireo", 64, 1, 3.2),
    row("testpmd", 1518, 1, 3.36),
    row("testpmd", 1518, 2, 3.45),
  ];
  const w = speedWarnings(rows);
  assert.equal(w.length, 1, w.join("\n"));
  assert.match(w[0] ?? "", /^64 B: testpmd's own rate ranged 11\.56-19\.61 Mpps .*\(1\.7x\)/);
});

test("rounds count too: a row whose median looks steady but whose rounds were not", () => {
  const rows = [
    row("testpmd", 64, 1, 11.4, [11.4, 11.2, 16.9]),
    row("testpmd", 64, 2, 11.2, [11.2, 11.0, 11.3]),
  ];
  assert.equal(speedWarnings(rows).length, 1);
});

test("a steady run, a lone testpmd row, and rows of other paths give none", () => {
  assert.deepEqual(
    speedWarnings([row("testpmd", 64, 1, 11.44), row("testpmd", 64, 2, 11.2), row("testpmd", 64, 4, 10.87)]),
    [],
  );
  assert.deepEqual(speedWarnings([row("testpmd", 64, 1, 11.44)]), []);
  assert.deepEqual(
    speedWarnings([row("vireo", 64, 1, 3), row("vireo", 64, 2, 9), row("js-floor", 64, 1, 1)]),
    [],
  );
  const missing = { ...row("testpmd", 64, 2, 0), available: false };
  assert.deepEqual(speedWarnings([row("testpmd", 64, 1, 11), missing]), []);
});
