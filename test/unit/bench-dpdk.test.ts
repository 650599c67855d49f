/**
 * The benchmark plumbing that needs no DPDK to check: reading testpmd's statistics out of what it printed
 * (bench/dpdk.ts), its command line, a process's stdout kept apart from its stderr, and the frame the Linux
 * bridge row sends (bench/switch.ts).
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { ProcessSet, parseTestpmdStats, testpmdArgs } from "../../bench/dpdk.ts";
import { udpFrame } from "../../bench/switch.ts";

// As testpmd 22.11 prints them: `stop` (per-port and accumulated forward statistics), `show port stats all`.
const forwardBlock = (rx: number, tx: number, txDropped: number) => `
  ---------------------- Forward statistics for port 0  ----------------------
  RX-packets: ${rx}              RX-dropped: 0             RX-total: ${rx}
  TX-packets: ${tx}           TX-dropped: ${txDropped}            TX-total: ${tx + txDropped}
  ----------------------------------------------------------------------------

  ---------------------- Forward statistics for port 1  ----------------------
  RX-packets: 7              RX-dropped: 0             RX-total: 7
  TX-packets: 0              TX-dropped: 0             TX-total: 0
  ----------------------------------------------------------------------------

  +++++++++++++++ Accumulated forward statistics for all ports+++++++++++++++
  RX-packets: ${rx + 7}              RX-dropped: 0             RX-total: ${rx + 7}
  TX-packets: ${tx}           TX-dropped: ${txDropped}            TX-total: ${tx + txDropped}
  ++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++

Done.
`;

const nicBlock = (port: number, rx: number, rxBytes: number) => `
  ######################## NIC statistics for port ${port}  ########################
  RX-packets: ${rx}          RX-missed: 0          RX-bytes:  ${rxBytes}
  RX-errors: 0
  RX-nombuf:  0
  TX-packets: 3          TX-errors: 0          TX-bytes:  192

  Throughput (since last show)
  Rx-pps:            0          Rx-bps:            0
  Tx-pps:            0          Tx-bps:            0
  ############################################################################
`;

test("testpmd's statistics: the last stop's forward counts, per port and in all, and each port's NIC counts", () => {
  const text = `testpmd> start\ntestpmd> stop\nTelling cores to stop...\n${forwardBlock(1, 2, 3)}testpmd> start\ntestpmd> stop\n${forwardBlock(1000, 2_000_000, 55)}testpmd> show port stats all\n${nicBlock(0, 123456, 7901184)}${nicBlock(1, 9, 576)}testpmd> quit\n`;
  const s = parseTestpmdStats(text);
  assert.deepEqual(s.forward, { rxPackets: 1007, txPackets: 2_000_000, rxDropped: 0, txDropped: 55 });
  assert.deepEqual(s.forwardPorts.get(0), {
    rxPackets: 1000,
    txPackets: 2_000_000,
    rxDropped: 0,
    txDropped: 55,
  });
  assert.equal(s.forwardPorts.get(1)?.rxPackets, 7);
  assert.deepEqual(s.ports.get(0), { rxPackets: 123456, txPackets: 3, rxBytes: 7901184, txBytes: 192 });
  assert.deepEqual(s.ports.get(1), { rxPackets: 9, txPackets: 3, rxBytes: 576, txBytes: 192 });
  assert.equal(s.ports.size, 2);
});

test("testpmd's statistics: output without any is read as none, not as zeros", () => {
  const s = parseTestpmdStats("EAL: Detected CPU lcores: 2\ntestpmd> quit\n");
  assert.equal(s.forward, null);
  assert.equal(s.forwardPorts.size, 0);
  assert.equal(s.ports.size, 0);
});

test("testpmd's command line: lcores on one CPU, no PCI, its own file prefix, every vdev, the mode", () => {
  const args = testpmdArgs({
    name: "t1",
    cpu: 1,
    vdevs: ["net_vhost0,iface=/tmp/a", "net_vhost1,iface=/tmp/b"],
    mode: "io",
    mbufs: 4096,
    extra: ["--eth-peer=0,02:00:00:00:0b:00"],
  });
  assert.deepEqual(args.slice(0, 2), ["--lcores", "0@1,1@1"]);
  for (const a of ["--no-pci", "--in-memory", "--single-file-segments", "--file-prefix=vireo-t1", "-i"])
    assert.ok(args.includes(a), a);
  assert.deepEqual(
    args.filter((_, i) => args[i - 1] === "--vdev"),
    ["net_vhost0,iface=/tmp/a", "net_vhost1,iface=/tmp/b"],
  );
  // EAL arguments before "--", testpmd's after it.
  const dash = args.indexOf("--");
  assert.ok(dash > args.indexOf("--no-pci"));
  assert.ok(args.indexOf("--forward-mode=io") > dash);
  assert.ok(args.indexOf("--total-num-mbufs=4096") > dash);
  assert.ok(args.indexOf("--eth-peer=0,02:00:00:00:0b:00") > dash);
  assert.ok(!args.some((a) => a.startsWith("--txpkts")));
  assert.ok(!testpmdArgs({ name: "t2", cpu: null, vdevs: [], mode: "rxonly" }).includes("--lcores"));
});

test("the bridge row's frame: its length, MACs, IPv4 header with a valid checksum, UDP lengths", () => {
  for (const size of [60, 64, 1518]) {
    const f = udpFrame(size, "02:00:00:00:0b:03", "02:00:00:00:0a:03");
    assert.equal(f.length, size);
    assert.deepEqual([...f.subarray(0, 12)], [2, 0, 0, 0, 0x0b, 3, 2, 0, 0, 0, 0x0a, 3]);
    assert.deepEqual([...f.subarray(12, 14)], [0x08, 0x00]);
    const word = (o: number) => ((f[o] as number) << 8) | (f[o + 1] as number);
    // RFC 791: the one's complement sum over the header, checksum included, is all ones.
    let sum = 0;
    for (let i = 14; i < 34; i += 2) sum += word(i);
    while (sum > 0xffff) sum = (sum & 0xffff) + (sum >> 16);
    assert.equal(sum, 0xffff, `size ${size}`);
    assert.equal(word(16), size - 14); // IPv4 total length
    assert.equal(f[23], 17); // UDP
    assert.deepEqual([...f.subarray(26, 34)], [198, 18, 0, 1, 198, 18, 0, 2]);
    assert.equal(word(34), 9);
    assert.equal(word(36), 9);
    assert.equal(word(38), size - 34); // UDP length
  }
});

test("a process's stdout is kept whole when its stderr writes into the middle of a line", async () => {
  // As testpmd did once: its prompt cut by a warning on stderr. The prompt and statistics are read from stdout.
  const set = new ProcessSet();
  try {
    const p = set.start(
      "split-prompt",
      "sh",
      [
        "-c",
        "printf tes; sleep 0.2; printf 'Error during enabling promiscuous mode\\n' >&2; sleep 0.2; printf 'tpmd> '",
      ],
      { boost: false },
    );
    assert.equal(await p.exited, 0);
    assert.equal(p.stdout.text, "testpmd> ");
    assert.ok(!p.out.text.includes("testpmd>"), "interleaved, the prompt is not whole");
    assert.ok(p.out.text.includes("Error during enabling promiscuous mode"));
  } finally {
    set.killAll();
  }
});
