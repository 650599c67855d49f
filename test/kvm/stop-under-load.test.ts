/**
 * Issue 13: a stop always answers. The micro guest's `virtio-blk-hammer` keeps every avail slot of its virtio-blk
 * queue filled with a 64 MiB read naming the same guest MiB over and over, on a large sparse disk, so the device
 * always has work. vireo must still stop at once when asked, by --timeout, by Ctrl-A x on its console and by
 * SIGTERM; the time is vireo's own measurement (`stopMs` in the --metrics document: from the stop request until
 * every thread had stopped), and the test also checks that the device really was busy (slices cut short by the
 * work budget, gigabytes read).
 *
 * "At once" is judged against a reference measured in the same run: each stop kind first stops a guest that
 * leaves the same device idle (the same vireo configuration, disk and --metrics, but the micro guest's `count`,
 * which spins on the TSC and prints a line a second), then the hammering one. The hammering stop must not take
 * much longer than the idle one (at most twice it plus STOP_SLACK_MS), on any host; on hardware KVM it must also
 * stay under 100 ms, and in the emulated KVM host under the looser cap STOP_LIMIT_MS.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { closeSync, ftruncateSync, mkdtempSync, openSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { KvmSystem } from "../../src/kvm/system.ts";
import { VIREO_BIN } from "../helpers/cli.ts";

const skip = KvmSystem.available() ? false : "no usable /dev/kvm on this host: KVM tests skipped";
const emulated = process.env.VIREO_EMULATED_HOST === "1";
/**
 * 100 ms where KVM runs on the hardware. Inside the emulated KVM host (QEMU TCG) every instruction of vireo, the
 * kernel and the guest is emulated, tens of times slower, and its one CPU is shared with the other emulated hosts
 * of the tier: measured 110-122 ms alone, 544 ms with three emulated hosts on this machine's two cores. The cap
 * there is 1500 ms: far below what unbounded work would take (the stop would wait for the rest of 256 reads of
 * 64 MiB, tens of seconds under TCG), far above what the scheduler adds. The comparison with the idle guest below
 * is the check that holds on any host; this cap only catches a stop that is slow for both.
 */
const STOP_LIMIT_MS = emulated ? 1500 : 100;
/**
 * What the hammering stop may take beyond twice the idle one. With the work budget, a stop waits at most for the
 * slice in progress on each thread that serves the device (a slice moves at most 2 MiB; the slowest slice of any
 * device seen in the unit tests took 8 ms of CPU on the 2-core development machine) and for the threads to see the
 * request, which a busy host's scheduler can delay by a few milliseconds more for one run than for the other. On
 * hardware 20 ms covers two such slices and that jitter, and is still well below the 100 ms a stop may take. In the
 * emulated host everything is tens of times slower and its one CPU is shared with the tier's other emulated hosts
 * at different moments for the two runs (a busy stop of 544 ms was seen there with three hosts on two cores; the
 * idle stop alone measured 46-235 ms over fifteen runs on a loaded machine, 2026-12-03), so 400 ms. Unbounded work
 * would still take tens of seconds there; slices of four whole 64 MiB reads held a SIGTERM stop 592 ms against an
 * idle 72 ms and failed this check (docs/hostile-guests.md).
 */
const STOP_SLACK_MS = emulated ? 400 : 20;
const dir = mkdtempSync(join(tmpdir(), "vireo-stop-"));

type StopKind = "timeout" | "ctrl-a-x" | "sigterm";

/** The guest that hammers, and the reference that leaves the device idle: its program and the line it is ready at. */
const GUESTS = {
  hammer: { args: ["micro:virtio-blk-hammer"], ready: "virtio-blk-hammer: hammering" },
  // `count TOTAL MS` spins on the TSC for MS ms between lines and never touches the disk: 10^9 lines are never done.
  idle: { args: ["micro:count", "1000000000", "1000"], ready: "count 1\n" },
} as const;
type GuestKind = keyof typeof GUESTS;

function sparseDisk(name: string): string {
  const path = join(dir, name);
  const fd = openSync(path, "w");
  ftruncateSync(fd, 64 * 2 ** 30);
  closeSync(fd);
  return path;
}

interface Stopped {
  status: number | null;
  stdout: string;
  stderr: string;
  stopMs: number;
  metrics: Record<string, number>;
}

function readDocument(file: string): { stopMs?: number; metrics: Record<string, number> } {
  return JSON.parse(readFileSync(file, "utf8")) as { stopMs?: number; metrics: Record<string, number> };
}

function metric(r: Stopped, re: RegExp): number {
  return Object.entries(r.metrics).find(([k]) => re.test(k))?.[1] ?? 0;
}

/** The hammering guest really kept the device busy. */
function checkBusy(r: Stopped, t: { diagnostic(message: string): void }): void {
  const cut = metric(r, /^virtio\.blk\d+\.budget_exhausted$/);
  const read = metric(r, /^virtio\.blk\d+\.read_bytes$/);
  t.diagnostic(
    `hammering: stop took ${r.stopMs.toFixed(1)} ms; ${cut} slices cut short; ${(read / 2 ** 20).toFixed(0)} MiB read`,
  );
  assert.ok(cut > 0, `the device's slices were cut short by its work budget (budget_exhausted ${cut})`);
  assert.ok(read >= 64 * 2 ** 20, `the guest kept the device busy: ${read} bytes read`);
}

/** The reference guest really left the device idle. */
function checkIdle(r: Stopped, t: { diagnostic(message: string): void }): void {
  const read = metric(r, /^virtio\.blk\d+\.read_bytes$/);
  t.diagnostic(`idle: stop took ${r.stopMs.toFixed(1)} ms; ${read} bytes read`);
  assert.equal(read, 0, "the idle guest read nothing from its disk");
  assert.ok(Number.isFinite(r.stopMs), `the idle run reported its stop time\n${r.stderr}`);
}

/** The hammering stop against the idle one measured just before it, and against the absolute cap. */
function compareStops(
  how: StopKind,
  idle: Stopped,
  busy: Stopped,
  t: { diagnostic(message: string): void },
): void {
  const bound = 2 * idle.stopMs + STOP_SLACK_MS;
  t.diagnostic(
    `${how}: idle ${idle.stopMs.toFixed(1)} ms, hammering ${busy.stopMs.toFixed(1)} ms, ratio ${(busy.stopMs / idle.stopMs).toFixed(2)} (bound 2 x idle + ${STOP_SLACK_MS} ms = ${bound.toFixed(1)} ms)`,
  );
  assert.ok(
    busy.stopMs <= bound,
    `the hammering guest's stop took ${busy.stopMs.toFixed(1)} ms, more than 2 x the idle guest's ${idle.stopMs.toFixed(1)} ms + ${STOP_SLACK_MS} ms\n${busy.stderr}`,
  );
  assert.ok(
    busy.stopMs < STOP_LIMIT_MS,
    `vireo stopped ${busy.stopMs.toFixed(1)} ms after the request (limit ${STOP_LIMIT_MS} ms)\n${busy.stderr}`,
  );
}

/**
 * Starts `guest` on a fresh sparse disk and stops it with `how`: `timeout` gives vireo `--timeout`, the others
 * wait until the guest prints its ready line and `settleMs` more, then type Ctrl-A x or send SIGTERM.
 */
function runAndStop(guest: GuestKind, how: StopKind, settleMs: number): Promise<Stopped> {
  const name = `${guest}-${how}`;
  const metrics = join(dir, `${name}.json`);
  const { args, ready } = GUESTS[guest];
  const timeout = how === "timeout" ? ["--timeout", String(Math.round(settleMs / 1000))] : [];
  const child = spawn(
    VIREO_BIN,
    ["run", "--guest", ...args, "--disk", sparseDisk(`${name}.img`), ...timeout, "--metrics", metrics],
    // Ctrl-A x is honoured on a terminal; VIREO_CONSOLE_ESCAPE=1 says the pipe stands for one.
    { stdio: ["pipe", "pipe", "pipe"], env: { ...process.env, VIREO_CONSOLE_ESCAPE: "1" } },
  );
  let stdout = "";
  let stderr = "";
  let asked = false;
  child.stderr.on("data", (b: Buffer) => {
    stderr += b.toString();
  });
  return new Promise((resolve, reject) => {
    const guard = setTimeout(
      () => {
        child.kill("SIGKILL");
        reject(new Error(`vireo (${name}) did not stop in time\nstdout: ${stdout}\nstderr: ${stderr}`));
      },
      emulated ? 240_000 : 60_000,
    );
    child.stdout.on("data", (b: Buffer) => {
      stdout += b.toString();
      if (!asked && how !== "timeout" && stdout.includes(ready)) {
        asked = true;
        setTimeout(() => {
          if (how === "ctrl-a-x") child.stdin.write("\x01x");
          else child.kill("SIGTERM");
        }, settleMs);
      }
    });
    child.on("exit", (status) => {
      clearTimeout(guard);
      try {
        assert.ok(
          stdout.includes(ready),
          `the ${guest} guest (${name}) got going: ${JSON.stringify(ready)}\n${stdout}\n${stderr}`,
        );
        const doc = readDocument(metrics);
        resolve({ status, stdout, stderr, stopMs: doc.stopMs ?? Number.NaN, metrics: doc.metrics });
      } catch (e) {
        reject(new Error(`${name}: ${String(e)}\nstdout: ${stdout}\nstderr: ${stderr}`));
      }
    });
  });
}

/**
 * Stops the idle guest, then the hammering one, the same way; checks both and compares their stop times. The idle
 * guest runs `idleSettleMs` before the stop (shorter than the hammer's `settleMs`, to keep the tier's time down:
 * nothing builds up in a run that leaves the device idle), the hammer `settleMs` so that it reads gigabytes first.
 */
async function idleThenHammer(
  how: StopKind,
  idleSettleMs: number,
  settleMs: number,
  status: number,
  t: { diagnostic(message: string): void },
): Promise<void> {
  const idle = await runAndStop("idle", how, idleSettleMs);
  assert.equal(idle.status, status, idle.stdout + idle.stderr);
  checkIdle(idle, t);
  const busy = await runAndStop("hammer", how, settleMs);
  assert.equal(busy.status, status, busy.stdout + busy.stderr);
  checkBusy(busy, t);
  compareStops(how, idle, busy, t);
}

// Two vireo runs per test, each given up on after 240 s in the emulated host.
const timeout = emulated ? 540_000 : 150_000;

test("--timeout stops a guest that keeps its virtio-blk queue full of 64 MiB reads as soon as one that leaves it idle", {
  skip,
  timeout,
}, async (t) => {
  await idleThenHammer("timeout", emulated ? 10_000 : 2000, emulated ? 20_000 : 3000, 124, t);
});

test("Ctrl-A x stops the hammering guest as soon as the idle one (status 130)", {
  skip,
  timeout,
}, async (t) => {
  await idleThenHammer("ctrl-a-x", emulated ? 2000 : 500, emulated ? 5000 : 1000, 130, t);
});

test("SIGTERM stops the hammering guest as soon as the idle one (status 130)", {
  skip,
  timeout,
}, async (t) => {
  await idleThenHammer("sigterm", emulated ? 2000 : 500, emulated ? 5000 : 1000, 130, t);
});
