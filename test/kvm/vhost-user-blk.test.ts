/**
 * vireo as a vhost-user-blk front-end: `vireo run --disk vhost-user=SOCKET` with the requests served by
 * `vireo vhost-user blk --file IMG` in another process. The micro guest's virtio-blk driver writes a pattern,
 * reads it back and checksums it; the host checks the image file independently. The guest's doorbells are KVM
 * ioeventfds the back-end polls, so no request passes through vireo. Also: readonly, a missing socket, the same
 * guest benchmark through vhost-user and through vireo's in-process virtio-blk (numbers reported, not asserted),
 * and the back-end SIGKILLed while the guest writes, another started on the same socket: vireo reconnects, hands
 * it the inflight buffer, and every write the guest was acknowledged is in the file.
 */
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { KvmSystem } from "../../src/kvm/system.ts";
import { Machine } from "../../src/vmm/machine.ts";
import { microGuest } from "../../src/vmm/micro-guest.ts";
import type { DiskConfig } from "../../src/vmm/pci-devices.ts";
import { expectedSector, fnv1a64, sectorOf } from "../helpers/blk-pattern.ts";
import { metricsPath, readMetrics, VIREO_BIN, vireo } from "../helpers/cli.ts";
import { startListening, startProcess, waitFor } from "../helpers/processes.ts";

const skip = KvmSystem.available() ? false : "no usable /dev/kvm on this host: KVM tests skipped";
const dir = mkdtempSync(join(tmpdir(), "vireo-vu-blk-"));
const MiB = 1 << 20;

function image(name: string, mib: number): string {
  const path = join(dir, name);
  writeFileSync(path, new Uint8Array(mib * MiB));
  return path;
}

/** `vireo vhost-user blk --socket SOCK --file IMG ...`, once it says it listens. */
function startBackend(socket: string, file: string, extra: string[] = []) {
  return startListening(
    [VIREO_BIN, "vhost-user", "blk", "--socket", socket, "--file", file, ...extra],
    "back-end",
  );
}

function expected(sectors: number): Buffer {
  return Buffer.concat(Array.from({ length: sectors }, (_, s) => expectedSector(s)));
}

test("4 MiB written and read back through vireo vhost-user blk: the image holds exactly the guest's data", {
  skip,
}, async () => {
  const path = image("rw.img", 8);
  const socket = join(dir, "rw.sock");
  const b = await startBackend(socket, path, ["--once"]);
  const metricsFile = metricsPath("vireo-vu-blk-");
  const r = vireo(
    [
      "run",
      "--guest",
      "micro:virtio-blk-rw",
      "4096",
      "event-idx",
      "--disk",
      `vhost-user=${socket}`,
      "--metrics",
      metricsFile,
    ],
    { timeoutMs: 300_000 },
  );
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.match(
    r.stdout,
    /virtio-blk: capacity 16384 sectors/,
    "capacity came from the back-end (GET_CONFIG)",
  );
  assert.match(r.stdout, /virtio-blk-rw ok/);
  const disk = readFileSync(path);
  assert.ok(
    disk.subarray(0, 4 * MiB).equals(expected(8192)),
    "every sector written holds the guest's pattern",
  );
  assert.ok(disk.subarray(4 * MiB).equals(Buffer.alloc(4 * MiB)), "nothing beyond 4 MiB");
  assert.equal(/fnv1a64=([0-9a-f]+)/.exec(r.stdout)?.[1], fnv1a64(disk.subarray(0, 4 * MiB)));
  const m = readMetrics(metricsFile);
  assert.ok((m["vhost-user.blk0.ring_starts"] ?? 0) >= 1, JSON.stringify(m));
  assert.equal(m["virtio.blk0.requests"] ?? 0, 0, "vireo served no request itself");
  // The back-end's own counts (its connection-end line, printed when vireo's connection closed).
  assert.equal(await b.exited, 0, b.err());
  const end = JSON.parse(b.out().trim().split("\n")[0] as string) as Record<string, number>;
  assert.equal(end.writtenBytes, 4 * MiB, b.out());
  assert.ok((end.readBytes ?? 0) >= 4 * MiB, b.out());
  assert.ok((end.flushes ?? 0) >= 1, b.out());
});

test("--disk vhost-user=SOCKET,readonly: the guest is offered VIRTIO_BLK_F_RO and writes nothing", {
  skip,
}, async () => {
  const path = image("ro.img", 1);
  const socket = join(dir, "ro.sock");
  const b = await startBackend(socket, path, ["--once", "--readonly"]);
  const r = vireo(
    ["run", "--guest", "micro:virtio-blk-rw", "64", "--disk", `vhost-user=${socket},readonly`],
    {
      timeoutMs: 300_000,
    },
  );
  assert.notEqual(r.status, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /the device is read-only/, `status ${r.status}: ${r.stdout}${r.stderr}${b.err()}`);
  assert.ok(readFileSync(path).equals(Buffer.alloc(MiB)), "the image is unchanged");
  b.child.kill("SIGKILL");
});

test("--disk vhost-user= with no back-end on the socket is one clear line, status 125", { skip }, () => {
  const missing = join(dir, "nobody.sock");
  const r = vireo(["run", "--guest", "micro:pci", "--disk", `vhost-user=${missing}`]);
  assert.equal(r.status, 125, r.stdout + r.stderr);
  const lines = r.stderr.trim().split("\n");
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0] ?? "", /^vireo: --disk vhost-user=\S+nobody\.sock: \S+nobody\.sock: no such socket/);
});

/** One run of micro:bench-virtio-blk N on `disk`, in this process: nanoseconds per read between the markers. */
async function benchReads(disk: DiskConfig, reads: number): Promise<number> {
  const { kernel, cmdline } = microGuest("micro:bench-virtio-blk", [String(reads)]);
  const r = await new Machine({
    kernel,
    cmdline,
    memMiB: 64,
    cpus: 1,
    serial: { kind: "none" },
    disks: [disk],
    timeoutMs: 600_000,
  }).run();
  assert.equal(r.status, 0, `${r.message ?? ""} ${r.deviceErrors.join("; ")}`);
  const t1 = r.markers.get(1);
  const t2 = r.markers.get(2);
  assert.ok(t1 !== undefined && t2 !== undefined && t2 > t1, "both markers came");
  return (t2 - t1) / reads;
}

test("bench-virtio-blk: 4 KiB reads at queue depth 1, vhost-user against in-process virtio-blk", {
  skip,
}, async () => {
  const path = image("bench.img", 4);
  const socket = join(dir, "bench.sock");
  const b = await startBackend(socket, path);
  const reads = 500;
  const rounds: Array<{ local: number; vhost: number }> = [];
  for (let i = 0; i < 2; i++) {
    const local = await benchReads({ path, readOnly: false, direct: false }, reads);
    const vhost = await benchReads({ path: socket, vhostUser: true, readOnly: false, direct: false }, reads);
    rounds.push({ local, vhost });
  }
  b.child.kill("SIGTERM");
  const best = (k: "local" | "vhost") => Math.min(...rounds.map((x) => x[k]));
  const us = (ns: number) => (ns / 1000).toFixed(1);
  process.stderr.write(
    `bench-virtio-blk, ${reads} reads of 4 KiB at QD1, best of ${rounds.length}: in-process virtio-blk ${us(best("local"))} us/read, vhost-user (vireo vhost-user blk) ${us(best("vhost"))} us/read, vhost-user/in-process IOPS ratio ${(best("local") / best("vhost")).toFixed(2)}${process.env.VIREO_EMULATED_HOST === "1" ? " (emulated KVM host: QEMU TCG, every number distorted)" : ""}\n`,
  );
  for (const r of rounds) assert.ok(r.local > 0 && r.vhost > 0);
});

/** The first 512 bytes at sector `s` of `path`. */
test("the back-end SIGKILLed while the guest writes, another started on the socket: every write is in the file", {
  skip,
}, async () => {
  const kib = 48 * 1024;
  const sectors = (kib * 1024) / 512;
  const path = image("rc.img", 64);
  const socket = join(dir, "rc.sock");
  const first = await startBackend(socket, path);
  // The replacement starts now, on a path of its own (starting a process takes seconds in the emulated host,
  // longer than the guest's writes): at the kill its socket is renamed onto the device's path, so the outage is
  // vireo's reconnect interval, and the micro guest (which gives up on a request after 10 s without progress)
  // waits it out.
  const spare = join(dir, "rc-next.sock");
  const second = await startBackend(spare, path);
  const vm = startProcess([
    VIREO_BIN,
    "run",
    "--guest",
    "micro:virtio-blk-rw",
    String(kib),
    "--disk",
    `vhost-user=${socket}`,
    "--timeout",
    "600",
  ]);
  // The guest is well into its writes once the sector at 8 MiB holds its pattern: the rings have long been
  // started, and the guest's last progress is recent (it waits at most 10 s for the next).
  const mark = (8 * MiB) / 512;
  await waitFor(
    () => sectorOf(path, mark).equals(expectedSector(mark)) || vm.child.exitCode !== null,
    300_000,
    () => `the guest never wrote: ${vm.out()} ${vm.err()}`,
  );
  renameSync(spare, socket);
  first.child.kill("SIGKILL");
  const stillWriting = sectorOf(path, sectors - 1).equals(Buffer.alloc(512));
  await first.exited;
  const status = await vm.exited;
  assert.equal(status, 0, `${vm.out()}\n${vm.err()}\n--- second back-end ---\n${second.err()}`);
  assert.ok(stillWriting, "the kill came while the guest was still writing");
  assert.match(vm.out(), /virtio-blk-rw ok/);
  assert.match(vm.err(), /reconnected to /, vm.err());
  const disk = readFileSync(path);
  assert.ok(disk.subarray(0, kib * 1024).equals(expected(sectors)), "every sector holds the guest's pattern");
  assert.equal(/fnv1a64=([0-9a-f]+)/.exec(vm.out())?.[1], fnv1a64(disk.subarray(0, kib * 1024)));
  const resubmitted = /inflight: (\d+) requests resubmitted/.exec(second.err())?.[1] ?? "0";
  process.stderr.write(
    `vhost-user blk reconnect: the second back-end resubmitted ${resubmitted} request(s) the first had taken\n`,
  );
  second.child.kill("SIGTERM");
});
