/** `vireo bench exits` and `vireo bench virtio` run end to end and their JSON has every row they promise. Not timing tests. */
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

test("bench virtio --served-by vhost-user: split rows served by a vireo vhost-user process, whose doorbells never exit to vireo", {
  skip,
}, () => {
  const r = vireo(
    ["bench", "virtio", "--json", "--rounds", "1", "--iterations", "100", "--served-by", "vhost-user"],
    { timeoutMs: 600_000 },
  );
  assert.equal(r.status, 0, r.stderr);
  const doc = JSON.parse(r.stdout) as {
    benchmark: string;
    rows: Array<{
      workload: string;
      servedBy: string;
      ring: string;
      eventIdx: boolean;
      notificationsFrom: string;
      perOp: { exits: number; notifications: number; hostUs: number };
    }>;
    skipped: string[];
  };
  assert.equal(doc.benchmark, "virtio");
  assert.deepEqual(
    doc.rows.map((x) => `${x.workload} ${x.servedBy} ${x.ring} ${x.eventIdx}`),
    [
      "blk-read-4k vhost-user split false",
      "net-tx-1500 vhost-user split false",
      "blk-read-4k vhost-user split true",
      "net-tx-1500 vhost-user split true",
    ],
  );
  assert.ok(
    doc.skipped.some((s) => /packed/.test(s)),
    "packed rows are said to be skipped",
  );
  for (const row of doc.rows) {
    assert.equal(row.notificationsFrom, "back-end");
    assert.ok(row.perOp.hostUs > 0, JSON.stringify(row));
    // The doorbell is a KVM ioeventfd the back-end reads: a few exits while the guest sets up, none per request.
    assert.ok(row.perOp.exits < 0.2, `exits per operation ${row.perOp.exits}: ${JSON.stringify(row)}`);
  }
  // One request at a time, each notified: the back-end counted about one kick per 4 KiB read.
  const blk = doc.rows.filter((x) => x.workload === "blk-read-4k");
  for (const row of blk) assert.ok(row.perOp.notifications >= 0.9, JSON.stringify(row));
});
