/**
 * The emulated 82540EM (--net tap=NAME,model=e1000) driven by a real guest driver: the micro guest's e1000 driver
 * sends 10,000 frames to the host and echoes 10,000 frames the host sends, through a TAP device in a network
 * namespace this test creates; the host side (test/helpers/netpeer.py) checks every frame's content and order
 * itself. e1000-irq takes INTA# through the in-kernel I/O APIC to the LAPIC, at CPL 0.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { test } from "node:test";
import { KvmSystem } from "../../src/kvm/system.ts";
import { MICRO_PROGRAMS } from "../../src/vmm/micro-guest.ts";
import { metricsPath, readMetrics, VIREO_BIN, vireo } from "../helpers/cli.ts";
import {
  assertFramesExchanged,
  exchangeFrames,
  type NetNs,
  netnsMaker,
  netnsUnavailable,
} from "../helpers/netns.ts";

const kvmSkip = KvmSystem.available() ? false : "no usable /dev/kvm on this host: KVM tests skipped";
const programSkip = (MICRO_PROGRAMS as readonly string[]).includes("e1000-test")
  ? false
  : "the micro guest has no e1000 programs yet";
const netSkip = kvmSkip || programSkip || (netnsUnavailable() ?? false);

const netns = netnsMaker();
const metricsFile = () => metricsPath("vireo-e1000-");

/** `vireo run ARGS` inside the namespace. */
function runIn(ns: NetNs, args: string[], timeoutMs = 60_000) {
  const argv = ns.exec([VIREO_BIN, "run", ...args]);
  const r = spawnSync(argv[0] as string, argv.slice(1), { encoding: "utf8", timeout: timeoutMs });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

test("10,000 frames each way between the guest's e1000 driver and a TAP", { skip: netSkip }, async () => {
  const ns = netns();
  const count = 10_000;
  const size = 1000;
  const mac = "02:76:69:aa:bb:02";
  const file = metricsFile();
  const args = [
    "--guest",
    "micro:e1000-test",
    String(count),
    String(size),
    "--net",
    `tap=${ns.tap},mac=${mac},model=e1000`,
    "--timeout",
    "100",
    "--metrics",
    file,
  ];
  const r = await exchangeFrames(ns, args, { count, size });
  assertFramesExchanged(r, count, mac, "the guest used the MAC from the EEPROM, which --net sets");
  const out = r.vireo.stdout;
  assert.match(out, new RegExp(`^e1000: mac ${mac}$`, "m"));
  assert.match(out, /^e1000: link up$/m);
  assert.match(out, new RegExp(`^e1000: sent ${count} frames$`, "m"));
  assert.match(out, new RegExp(`^e1000: received ${count} frames, echoed ${count}, ignored \\d+$`, "m"));
  assert.match(out, /^e1000-test ok$/m);
  const m = readMetrics(file);
  assert.ok((m["net0.tx.frames"] ?? 0) >= 2 * count, `tx frames counts both phases: ${m["net0.tx.frames"]}`);
  assert.ok((m["net0.rx.frames"] ?? 0) >= count, `rx frames: ${m["net0.rx.frames"]}`);
  assert.equal(m["net0.irq.raised"] ?? 0, 0, "the polled driver masks every cause (and disables INTx)");
  // The driver polls DD in the descriptors (guest memory), not TDH/RDH: register reads do not grow per frame.
  assert.ok((m["mmio.net0.bar0.read"] ?? 0) < 1000, `BAR0 reads ${m["mmio.net0.bar0.read"]}`);
});

test("e1000-irq: TXDW and an ICS-raised LSC arrive through INTA#, the I/O APIC and the LAPIC", {
  skip: netSkip,
}, () => {
  const ns = netns();
  const file = metricsFile();
  const r = runIn(ns, [
    "--guest",
    "micro:e1000-irq",
    "--net",
    `tap=${ns.tap},model=e1000`,
    "--timeout",
    "50",
    "--metrics",
    file,
  ]);
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /^e1000-irq ok \(txdw=1 lsc=1\)$/m);
  assert.equal(readMetrics(file)["net0.irq.raised"], 2, "INTA# rose once for TXDW and once for LSC");
});

test("e1000-test without a peer gives up after 10 s of no progress and prints the ring registers", {
  skip: netSkip,
}, () => {
  const ns = netns();
  const r = runIn(ns, ["--guest", "micro:e1000-test", "5", "100", "--net", `tap=${ns.tap},model=e1000`]);
  assert.equal(r.status, 1, r.stdout + r.stderr);
  assert.match(r.stdout, /^e1000: sent 5 frames$/m);
  assert.match(r.stdout, /^e1000: no progress for 10 s receiving: 0 of 5 frames, expecting seq 0/m);
  assert.match(r.stdout, /TDH=5 TDT=5 .* RDH=0 RDT=255/);
  assert.match(r.stdout, /^e1000-test failed$/m);
});

test("e1000 programs reject bad arguments with exit 2", { skip: kvmSkip || programSkip }, () => {
  for (const [program, args, message] of [
    ["e1000-test", ["10", "59"], /bad frame size '59'/],
    ["e1000-test", ["10", "1515"], /bad frame size '1515'/],
    ["e1000-test", ["ten"], /bad frame count 'ten'/],
    ["e1000-test", ["1", "60", "x"], /usage: e1000-test \[N\] \[SIZE\]/],
    ["bench-e1000", ["10", "2000"], /bad frame size '2000'/],
    ["e1000-irq", ["1"], /usage: e1000-irq/],
  ] as const) {
    const r = vireo(["run", "--guest", `micro:${program}`, ...args]);
    assert.equal(r.status, 2, `${program} ${args.join(" ")}: ${r.stdout}${r.stderr}`);
    assert.match(r.stdout, message);
  }
});
