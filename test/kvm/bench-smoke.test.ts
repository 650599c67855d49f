/** `vireo bench exits` runs end to end and its JSON has every row with a measured reference. Not a timing test. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { KvmSystem } from "../../src/kvm/system.ts";
import { vireo } from "../helpers/cli.ts";

const skip = KvmSystem.available() ? false : "no usable /dev/kvm on this host: KVM tests skipped";

test("bench exits --json reports vireo and the C reference for every configuration", { skip }, () => {
  const r = vireo(["bench", "exits", "--json", "--rounds", "1", "--iterations", "300"], {
    timeoutMs: 120_000,
  });
  assert.equal(r.status, 0, r.stderr);
  const doc = JSON.parse(r.stdout) as {
    benchmark: string;
    iterations: number;
    results: Array<{ kind: string; vireoUs: number[]; refUs: number[]; ratio: number }>;
  };
  assert.equal(doc.benchmark, "exits");
  assert.equal(doc.iterations, 300);
  assert.deepEqual(
    doc.results.map((x) => x.kind),
    ["pio", "mmio", "pio+ioeventfd", "mmio+ioeventfd"],
  );
  for (const row of doc.results) {
    assert.equal(row.vireoUs.length, 1);
    assert.ok(
      row.vireoUs[0] !== undefined && row.vireoUs[0] > 0 && row.refUs[0] !== undefined && row.refUs[0] > 0,
      JSON.stringify(row),
    );
    assert.ok(Number.isFinite(row.ratio) && row.ratio > 0);
  }
});
