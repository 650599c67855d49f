/**
 * virtio-blk with its queues on a data-plane thread (`--disk PATH,iothread`): the same guest driver writes and
 * reads back 4 MiB; the image must end up byte-for-byte what the vCPU-served device writes, and the doorbells
 * must have reached the data-plane thread through ioeventfds instead of exiting per request.
 */
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { KvmSystem } from "../../src/kvm/system.ts";
import { readMetrics, vireo } from "../helpers/cli.ts";

const skip = KvmSystem.available() ? false : "no usable /dev/kvm on this host: KVM tests skipped";

test("4 MiB through virtio-blk served by a data-plane thread matches the vCPU-served device", {
  skip,
}, () => {
  const dir = mkdtempSync(join(tmpdir(), "vireo-blk-io-"));
  const images = ["exit.img", "iothread.img"].map((n) => join(dir, n));
  const metrics: Array<Record<string, number>> = [];
  for (const [i, path] of images.entries()) {
    writeFileSync(path, new Uint8Array(8 * 1024 * 1024));
    const m = join(dir, `m${i}.json`);
    const disk = i === 0 ? path : `${path},iothread`;
    const r = vireo(["run", "--guest", "micro:virtio-blk-rw", "4096", "--disk", disk, "--metrics", m]);
    assert.equal(r.status, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /virtio-blk-rw ok/);
    metrics.push(readMetrics(m));
  }
  const [a, b] = images.map((p) => readFileSync(p));
  assert.ok(a && b && a.subarray(0, 4 << 20).some((x) => x !== 0), "the guest wrote data");
  assert.ok(a.equals(b), "both images hold the same bytes");
  const [viaExit, viaThread] = metrics as [Record<string, number>, Record<string, number>];
  assert.equal(viaExit["vhost.blk0.kicks"], undefined, "no data-plane thread without iothread");
  assert.ok((viaThread["vhost.blk0.kicks"] ?? 0) > 0, "doorbells reached the data-plane thread");
  assert.ok(
    (viaThread["exits.mmio"] ?? 0) < (viaExit["exits.mmio"] ?? 0),
    `fewer MMIO exits with iothread (${viaThread["exits.mmio"]} vs ${viaExit["exits.mmio"]})`,
  );
});

test("a data-plane device's MSI-X interrupt goes out through an irqfd", { skip }, () => {
  const dir = mkdtempSync(join(tmpdir(), "vireo-blk-irqfd-"));
  const img = join(dir, "d.img");
  writeFileSync(img, new Uint8Array(1024 * 1024));
  const m = join(dir, "m.json");
  const r = vireo(["run", "--guest", "micro:virtio-msix", "--disk", `${img},iothread`, "--metrics", m]);
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /virtio-msix ok/);
  const metrics = readMetrics(m);
  // The guest's handler saw the interrupt; it left vireo as an eventfd write to a GSI routed to its message.
  assert.equal(metrics["irqfd.blk0.signals"], metrics["msix.blk0.sent"]);
  assert.ok((metrics["irqfd.blk0.signals"] ?? 0) >= 1);
  assert.equal(metrics["irqfd.blk0.routes_set"], 1, "one message, one route");
});
