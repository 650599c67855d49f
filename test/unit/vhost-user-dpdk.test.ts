/**
 * Interop with a front-end nobody here wrote: DPDK's testpmd (Debian's dpdk-dev, 22.11) with a `net_virtio_user`
 * vdev drives `vireo vhost-user net --sink` over its socket in txonly mode; the frames testpmd says it sent and
 * the frames vireo counted must match exactly. No KVM is involved. Needs root for hugepages: the test mounts
 * hugetlbfs on /dev/hugepages if nothing is mounted there and reserves what it needs (given back afterwards).
 * Without root or without dpdk-testpmd (scripts/setup.sh installs it) the test is skipped, saying why.
 *
 * testpmd: `--single-file-segments` keeps its memory to a few regions (vhost-user carries at most 8),
 * `--in-memory` leaves no hugepage files behind, `--total-num-mbufs=32768` fits in a few hundred MB of hugepages,
 * and its main and forwarding lcores share one CPU (`--lcores 0@1,1@1`) on these 2-CPU machines.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { VIREO_BIN } from "../helpers/cli.ts";

const HUGEPAGES_NEEDED = 192; // 2 MiB pages: 384 MiB
const NR_HUGEPAGES = "/proc/sys/vm/nr_hugepages";

function meminfo(field: string): number {
  const m = readFileSync("/proc/meminfo", "utf8").match(new RegExp(`^${field}:\\s+(\\d+)`, "m"));
  return m ? Number(m[1]) : 0;
}

function hasCommand(cmd: string): boolean {
  return spawnSync("sh", ["-c", `command -v ${cmd}`]).status === 0;
}

/** Why the test cannot run here, or null. Mounts hugetlbfs and reserves hugepages when it can. */
function prepare(): string | null {
  if (!hasCommand("dpdk-testpmd"))
    return "dpdk-testpmd is not installed (scripts/setup.sh installs dpdk-dev)";
  if (process.getuid?.() !== 0) return "hugepages need root";
  const mounts = readFileSync("/proc/mounts", "utf8");
  if (!/ \/dev\/hugepages hugetlbfs /.test(mounts)) {
    const r = spawnSync("mount", ["-t", "hugetlbfs", "nodev", "/dev/hugepages"]);
    if (r.status !== 0) return `cannot mount hugetlbfs: ${r.stderr}`;
  }
  const free = meminfo("HugePages_Free");
  if (free < HUGEPAGES_NEEDED) {
    const total = meminfo("HugePages_Total");
    try {
      writeFileSync(NR_HUGEPAGES, String(total + HUGEPAGES_NEEDED - free));
    } catch (e) {
      return `cannot reserve hugepages: ${(e as Error).message}`;
    }
    raised = meminfo("HugePages_Total") - total;
    if (meminfo("HugePages_Free") < HUGEPAGES_NEEDED) return "could not reserve enough hugepages";
  }
  return null;
}

let raised = 0;
const children: ChildProcess[] = [];
after(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
  // Give back only what this test reserved (the kernel frees only pages nobody uses).
  if (raised > 0) {
    try {
      writeFileSync(NR_HUGEPAGES, String(Math.max(0, meminfo("HugePages_Total") - raised)));
    } catch {
      // nothing more to give back
    }
  }
});

function run(cmd: string, args: string[], stdin: "pipe" | "ignore") {
  const child = spawn(cmd, args, { stdio: [stdin, "pipe", "pipe"] });
  children.push(child);
  const out = { text: "" };
  child.stdout?.on("data", (d) => {
    out.text += d;
  });
  child.stderr?.on("data", (d) => {
    out.text += d;
  });
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  return { child, out, exited };
}

async function until(what: string, cond: () => boolean, ms: number, log: () => string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}:\n${log()}`);
    await sleep(50);
  }
}

test("DPDK testpmd (virtio_user, txonly) → vireo vhost-user net --sink: frame counts match exactly", async (t) => {
  const why = prepare();
  if (why !== null) {
    t.skip(why);
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), "vireo-dpdk-"));
  const socket = join(dir, "sock");
  const vireo = run(VIREO_BIN, ["vhost-user", "net", "--socket", socket, "--sink", "--once"], "ignore");
  await until(
    "the vhost-user socket",
    () => existsSync(socket),
    60_000,
    () => vireo.out.text,
  );
  const testpmd = run(
    "dpdk-testpmd",
    [
      "--lcores",
      "0@1,1@1",
      "--no-pci",
      "--in-memory",
      "--single-file-segments",
      "--vdev",
      `net_virtio_user0,path=${socket},queues=1`,
      "--",
      "-i",
      "--total-num-mbufs=32768",
      "--forward-mode=txonly",
    ],
    "pipe",
  );
  const send = (line: string) => testpmd.child.stdin?.write(`${line}\n`);
  await until(
    "the testpmd prompt",
    () => testpmd.out.text.includes("testpmd>"),
    60_000,
    () => testpmd.out.text,
  );
  send("start");
  await sleep(3000);
  send("stop");
  // Let the back-end drain what the ring still holds before the port (and the rings) stop. (testpmd's output
  // goes to a pipe, fully buffered: its statistics are read once it has exited.)
  await sleep(1500);
  send("quit");
  testpmd.child.stdin?.end();
  assert.equal(await testpmd.exited, 0, testpmd.out.text);
  const sent = Number(
    testpmd.out.text.match(/Accumulated forward statistics[\s\S]*?TX-packets:\s+(\d+)/)?.[1] ?? Number.NaN,
  );
  await until(
    "vireo's connection-end line",
    () => vireo.out.text.includes('"connection-end"'),
    30_000,
    () => vireo.out.text,
  );
  const line = vireo.out.text.split("\n").find((l) => l.includes('"connection-end"')) as string;
  const end = JSON.parse(line) as { txFrames: number; txBytes: number; refused: number };
  t.diagnostic(`testpmd sent ${sent} frames in txonly; vireo counted ${end.txFrames} (${end.txBytes} bytes)`);
  assert.ok(sent > 1000, `testpmd sent only ${sent} frames:\n${testpmd.out.text}`);
  assert.equal(end.txFrames, sent, `${vireo.out.text}\n${testpmd.out.text}`);
  // testpmd's txonly frames are 64 bytes with the default segment length (no FCS: 64 on the ring).
  assert.equal(end.txBytes, 64 * sent);
  assert.equal(end.refused, 0);
  assert.equal(await vireo.exited, 0);
});
