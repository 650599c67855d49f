/**
 * Interop through `vireo switch` with front-ends nobody here wrote: two DPDK testpmds (Debian's dpdk-dev, 22.11),
 * each with a `net_virtio_user` vdev on one of the switch's vhost-user ports, one in txonly mode (the sender),
 * one in rxonly mode (the receiver). No KVM is involved. After the sender stops and the switch has drained its
 * ring, the counts must agree exactly, frame for frame:
 *   - the receiver's own count (its port statistics and its forward statistics) = the frames the switch says it
 *     delivered to the receiver's port (`vireo switch show --json` while it runs, and its switch-end line);
 *   - the sender's count = the frames the switch received from the sender's port;
 *   - every frame the switch received was delivered or dropped with a reason (the receiver shares a CPU with the
 *     sender and polls only while scheduled, so its ring is often full: those drops are counted, not lost).
 * The receiver never transmits, so the switch never learns its MAC: the sender's frames are unknown unicast,
 * flooded to the only other port.
 *
 * Needs root (hugepages, reserved and given back by bench/dpdk.ts) and dpdk-testpmd (scripts/setup.sh); without
 * them the test is skipped, saying why.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import {
  type Proc,
  ProcessSet,
  prepareDpdk,
  quitTestpmd,
  startTestpmd,
  type TestpmdStats,
  until,
} from "../../bench/dpdk.ts";
import { VIREO_BIN } from "../helpers/cli.ts";

interface PortCounters {
  name: string;
  rx: { frames: number; bytes: number };
  tx: { frames: number; bytes: number };
  drops: Record<string, number>;
  peer: { connected: boolean; features: string[] } | null;
}

const RX_MAC = "02:00:00:00:0b:00";
const FRAME = 64; // testpmd txonly's default frame: 64 bytes on the ring (no FCS)

function port(ports: PortCounters[], name: string): PortCounters {
  const p = ports.find((x) => x.name === name);
  assert.ok(p, `no port ${name} in ${JSON.stringify(ports)}`);
  return p;
}

const dropsOf = (p: PortCounters) =>
  Object.values(p.drops).reduce((s, n) => s + (typeof n === "number" ? n : 0), 0);

function show(name: string, control: string): PortCounters[] {
  const r = spawnSync(VIREO_BIN, ["switch", "show", name, "--control", control, "--json"], {
    encoding: "utf8",
    timeout: 60_000,
  });
  assert.equal(r.status, 0, `vireo switch show: ${r.stderr}`);
  return (JSON.parse(r.stdout) as { ports: PortCounters[] }).ports;
}

// DPDK's virtio_user takes VIRTIO_F_IN_ORDER, which vireo's virtio-net offers (a transmit batch then gets one used
// element, virtio 1.2 2.7.9); `in_order=0` keeps it from negotiating it, for the path with an element per buffer.
const variants = [
  { label: "split rings", vdev: "", ring: "split", inOrder: true },
  { label: "split rings, IN_ORDER not negotiated", vdev: ",in_order=0", ring: "split", inOrder: false },
  { label: "packed rings", vdev: ",packed_vq=1", ring: "packed", inOrder: true },
] as const;

for (const { label, vdev: vq, ring, inOrder } of variants) {
  test(`DPDK testpmd txonly → vireo switch → testpmd rxonly (${label}): the receiver's count is the switch's, exactly`, async (t) => {
    // Only a build that predates `vireo switch` skips; any other failure to start it fails below.
    const help = spawnSync(VIREO_BIN, ["switch", "--help"], { encoding: "utf8", timeout: 60_000 });
    if (help.status !== 0 && /unknown command 'switch'/.test(help.stderr)) {
      t.skip("this vireo has no switch command yet");
      return;
    }
    const prep = prepareDpdk(192);
    if ("why" in prep) {
      t.skip(prep.why);
      return;
    }
    const set = new ProcessSet();
    const dir = mkdtempSync(join(tmpdir(), "vireo-switch-dpdk-"));
    const name = `dpdk${process.pid}`;
    const control = join(dir, "control.sock");
    const txSock = join(dir, "tx.sock");
    const rxSock = join(dir, "rx.sock");
    let sw: Proc | undefined;
    try {
      // The switch on CPU 0, both testpmds on CPU 1 (this machine has two), none of them boosted.
      sw = set.start(
        "vireo switch",
        VIREO_BIN,
        [
          "switch",
          name,
          "--control",
          control,
          "--port",
          `vhost-user=${txSock},name=tx`,
          "--port",
          `vhost-user=${rxSock},name=rx`,
        ],
        { cpu: 0, boost: false },
      );
      const swp = sw;
      await until(
        "vireo switch ready",
        () => /switch \S+ ready/.test(swp.out.text) || swp.child.exitCode !== null,
        60_000,
        () => swp.out.text,
      );
      assert.equal(sw.child.exitCode, null, sw.out.text);
      const rx = await startTestpmd(
        set,
        {
          name: `switch-test-rx-${process.pid}`,
          cpu: 1,
          vdevs: [`net_virtio_user0,path=${rxSock},queues=1,mac=${RX_MAC}${vq}`],
          mode: "rxonly",
          mbufs: 8192,
        },
        { boost: false },
      );
      const tx = await startTestpmd(
        set,
        {
          name: `switch-test-tx-${process.pid}`,
          cpu: 1,
          vdevs: [`net_virtio_user0,path=${txSock},queues=1,mac=02:00:00:00:0a:00${vq}`],
          mode: "txonly",
          mbufs: 8192,
          extra: [`--eth-peer=0,${RX_MAC}`],
        },
        { boost: false },
      );
      rx.send("start");
      await sleep(300);
      tx.send("start");
      // At least 3 s, and until the switch has taken 10^4 frames (up to 30 s): on a loaded machine the switch may get
      // little of its CPU, and the count is what is checked, not the rate.
      const t0 = Date.now();
      await sleep(3000);
      while (Date.now() - t0 < 30_000 && port(show(name, control), "tx").rx.frames < 10_000) await sleep(500);
      tx.send("stop");
      // Let the switch take what the sender's ring still holds, and the receiver take what its ring holds, before
      // anything stops: a port that stops takes its ring's frames with it.
      await sleep(1500);
      const running = show(name, control);
      // What the front-ends negotiated, as `vireo switch show` reports it.
      for (const side of ["tx", "rx"]) {
        const peer = port(running, side).peer;
        assert.equal(peer?.connected, true, `${side}: ${JSON.stringify(peer)}`);
        const features = peer?.features ?? [];
        assert.ok(features.includes("VERSION_1"), `${side}: ${features}`);
        assert.equal(features.includes("RING_PACKED"), ring === "packed", `${side}: ${features}`);
        assert.equal(features.includes("IN_ORDER"), inOrder, `${side}: ${features}`);
      }
      const rxStats: TestpmdStats = await quitTestpmd(rx, { portStats: true });
      const txStats: TestpmdStats = await quitTestpmd(tx, { portStats: true });
      sw.child.kill("SIGTERM");
      await until(
        "the switch-end line",
        () => swp.stdout.text.includes('"switch-end"') || swp.child.exitCode !== null,
        30_000,
        () => swp.out.text,
      );
      const line = sw.stdout.text.split("\n").find((l) => l.includes('"switch-end"'));
      assert.ok(line, `no switch-end line:\n${sw.out.text}`);
      const end = (JSON.parse(line) as { ports: PortCounters[] }).ports;
      assert.equal(await sw.exited, 0, sw.out.text);

      const received = rxStats.ports.get(0);
      const sent = txStats.ports.get(0);
      assert.ok(
        received && sent,
        `no port statistics:\n${rx.out.text.slice(-2000)}\n${tx.out.text.slice(-2000)}`,
      );
      const swTx = port(end, "tx");
      const swRx = port(end, "rx");
      t.diagnostic(
        `sender ${sent.txPackets} frames; switch took ${swTx.rx.frames}, delivered ${swRx.tx.frames}, dropped ${JSON.stringify(
          {
            ...swTx.drops,
            ...Object.fromEntries(Object.entries(swRx.drops).map(([k, v]) => [`rx.${k}`, v])),
          },
        )}; receiver counted ${received.rxPackets}; the sender's ring refused ${txStats.forward?.txDropped} frames`,
      );
      // Few frames sent with many refused (TX-dropped: its ring stayed full) means the switch stopped taking frames
      // from the ring or stopped handing the buffers back; few with few refused, that the sender hardly ran.
      const refused = txStats.forward?.txDropped ?? Number.NaN;
      assert.ok(
        sent.txPackets >= 10_000,
        `the sender sent only ${sent.txPackets} frames (${refused} refused by a full ring); the switch while running: ${JSON.stringify(running)}`,
      );
      assert.ok(received.rxPackets > 0, "the receiver got nothing");
      // The receiver's count, by both of testpmd's measures, is what the switch delivered to its port.
      assert.equal(received.rxPackets, swRx.tx.frames);
      assert.equal(rxStats.forward?.rxPackets, swRx.tx.frames);
      assert.equal(received.rxBytes, swRx.tx.bytes);
      assert.equal(swRx.tx.bytes, FRAME * swRx.tx.frames);
      // The same while the switch ran (nothing moved after the sender stopped and the rings drained).
      assert.equal(port(running, "rx").tx.frames, received.rxPackets);
      assert.equal(port(running, "tx").rx.frames, sent.txPackets);
      // Everything the sender put on its ring reached the switch; each frame was delivered or dropped, counted.
      assert.equal(swTx.rx.frames, sent.txPackets);
      assert.equal(swTx.rx.bytes, FRAME * sent.txPackets);
      assert.equal(swTx.rx.frames, swRx.tx.frames + dropsOf(swTx) + dropsOf(swRx));
      // Nothing went the other way: the receiver never transmits.
      assert.equal(swRx.rx.frames, 0);
      assert.equal(swTx.tx.frames, 0);
    } finally {
      set.killAll();
      rmSync(dir, { recursive: true, force: true });
      prep.release();
    }
  });
}
