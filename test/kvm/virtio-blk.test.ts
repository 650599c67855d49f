/**
 * virtio-blk with a real guest driver: the micro guest enumerates PCI, initializes the device by 3.1.1, and moves
 * data through split-ring or packed-ring requests (with or without EVENT_IDX); the host checks the image file
 * independently of what the guest reports.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { KvmSystem } from "../../src/kvm/system.ts";
import { expectedSector, fnv1a64 } from "../helpers/blk-pattern.ts";
import { vireo } from "../helpers/cli.ts";

const skip = KvmSystem.available() ? false : "no usable /dev/kvm on this host: KVM tests skipped";
const dir = mkdtempSync(join(tmpdir(), "vireo-blk-"));

function image(name: string, mib: number): string {
  const path = join(dir, name);
  writeFileSync(path, new Uint8Array(mib * 1024 * 1024));
  return path;
}

test("the micro guest finds the virtio-blk function and its capabilities on the PCI bus", { skip }, () => {
  const r = vireo(["run", "--guest", "micro:pci", "--disk", image("pci.img", 1)]);
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /00:00\.0 8086:29c0/i, "host bridge");
  assert.match(r.stdout, /00:01\.0 1af4:1042/i, "virtio-blk, modern");
  for (const cap of ["common", "notify", "isr", "device"]) assert.match(r.stdout, new RegExp(cap, "i"));
});

test("4 MiB written and read back through virtio-blk: the image file holds exactly the guest's data", {
  skip,
}, () => {
  const path = image("rw.img", 8);
  const metrics = join(dir, "rw-metrics.json");
  const r = vireo(["run", "--guest", "micro:virtio-blk-rw", "4096", "--disk", path, "--metrics", metrics], {
    timeoutMs: 120_000,
  });
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /virtio-blk-rw ok/);
  const disk = readFileSync(path);
  const written = disk.subarray(0, 4 * 1024 * 1024);
  for (const sector of [0, 1, 4095, 8191])
    assert.deepEqual(
      disk.subarray(sector * 512, sector * 512 + 512),
      expectedSector(sector),
      `sector ${sector}`,
    );
  assert.deepEqual(
    disk.subarray(4 * 1024 * 1024, 4 * 1024 * 1024 + 512),
    Buffer.alloc(512),
    "nothing beyond 4 MiB",
  );
  const guestSum = /fnv1a64=([0-9a-f]+)/.exec(r.stdout)?.[1];
  assert.equal(
    guestSum,
    fnv1a64(written),
    "the guest's checksum of what it read equals the host's of the file",
  );
  assert.equal(
    createHash("sha256").update(written).digest("hex"),
    createHash("sha256")
      .update(Buffer.concat(Array.from({ length: 8192 }, (_, s) => expectedSector(s))))
      .digest("hex"),
  );
  const m = (JSON.parse(readFileSync(metrics, "utf8")) as { metrics: Record<string, number> }).metrics;
  assert.ok((m["exits.mmio"] ?? 0) > 0, JSON.stringify(m));
});

// The same driver over the other ring layouts (VIRTIO_F_RING_PACKED) and with VIRTIO_F_RING_EVENT_IDX: 8 MiB in
// 64 KiB requests is 128 requests of three descriptors each way, so both rings wrap (the packed ring's wrap
// counters flip) several times. The polled guest asks for no used buffer notifications in every layout.
for (const words of [["packed"], ["event-idx"], ["packed", "event-idx"]]) {
  const ring = `${words.includes("packed") ? "packed" : "split"} ring${words.includes("event-idx") ? " with EVENT_IDX" : ""}`;
  test(`8 MiB written and read back over a ${ring}: the file holds the guest's data`, {
    skip,
  }, () => {
    const name = words.join("-");
    const path = image(`rw-${name}.img`, 8);
    const metrics = join(dir, `rw-${name}-metrics.json`);
    const r = vireo(
      ["run", "--guest", "micro:virtio-blk-rw", "8192", ...words, "--disk", path, "--metrics", metrics],
      { timeoutMs: 120_000 },
    );
    assert.equal(r.status, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /virtio-blk-rw ok/);
    const disk = readFileSync(path);
    const expected = Buffer.concat(Array.from({ length: 16384 }, (_, s) => expectedSector(s)));
    assert.ok(disk.equals(expected), "every sector holds the guest's pattern");
    assert.equal(/fnv1a64=([0-9a-f]+)/.exec(r.stdout)?.[1], fnv1a64(disk));
    const m = (JSON.parse(readFileSync(metrics, "utf8")) as { metrics: Record<string, number> }).metrics;
    assert.ok((m["virtio.blk0.notifications"] ?? 0) > 0, "the guest notified the device");
    assert.equal(m["virtio.blk0.queue_interrupts"] ?? 0, 0, "no used buffer notification was wanted");
    assert.equal(m["virtq.blk0.q0.errors"] ?? 0, 0, "the device found nothing wrong with the ring");
  });

  test(`bench-virtio-blk over a ${ring}: 600 reads between the markers`, { skip }, () => {
    const r = vireo([
      "run",
      "--guest",
      "micro:bench-virtio-blk",
      "600",
      ...words,
      "--disk",
      image(`bench-${words.join("-")}.img`, 1),
    ]);
    assert.equal(r.status, 0, r.stdout + r.stderr);
    assert.equal(r.stdout, "", "the benchmark prints nothing when every request succeeds");
  });
}

test("the ring words are checked: an unknown word exits 2 before touching the device", { skip }, () => {
  const r = vireo(["run", "--guest", "micro:virtio-blk-rw", "64", "packd", "--disk", image("word.img", 1)]);
  assert.equal(r.status, 2, r.stdout + r.stderr);
  assert.match(r.stdout, /virtio-blk-rw: bad argument 'packd'/);
});

test("--rng adds a virtio-rng function after the disks", { skip }, () => {
  const r = vireo(["run", "--guest", "micro:pci", "--disk", image("rng.img", 1), "--rng"]);
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /00:01\.0 1af4:1042/i);
  assert.match(r.stdout, /00:02\.0 1af4:1044/i, "virtio-rng, modern (0x1040 + 4)");
});

test("GET_ID returns the disk's serial", { skip }, () => {
  const r = vireo(["run", "--guest", "micro:virtio-blk-id", "--disk", image("id.img", 1)]);
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /vireo-blk0/);
});

test("a used-buffer notification arrives as an MSI-X message through the LAPIC", { skip }, () => {
  const r = vireo(["run", "--guest", "micro:virtio-msix", "--disk", image("msix.img", 1)]);
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /virtio-msix ok \(vector 0x50\)/);
});

test("a read-only disk refuses the guest's writes and the file is unchanged", { skip }, () => {
  const path = image("ro.img", 8);
  const r = vireo(["run", "--guest", "micro:virtio-blk-rw", "64", "--disk", `${path},readonly`]);
  assert.notEqual(r.status, 0, "the write must fail");
  assert.deepEqual(readFileSync(path), Buffer.alloc(8 * 1024 * 1024));
});

test("--disk errors: a missing file and an unknown option", () => {
  const missing = vireo(["run", "--guest", "micro:pci", "--disk", join(dir, "absent.img")]);
  assert.equal(missing.status, 125);
  assert.match(missing.stderr, /^vireo: --disk .*absent\.img: /);
  const bad = vireo(["run", "--guest", "micro:pci", "--disk", `${image("opt.img", 1)},fast`]);
  assert.equal(bad.status, 125);
  assert.match(bad.stderr, /unknown --disk option 'fast' \(known: readonly, direct, iothread\)/);
});
