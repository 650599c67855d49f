/**
 * virtio-net as the driver and the host see each outcome (virtio 1.2, 5.1), through the virtio-pci transport and
 * the test driver, both ring layouts, against a scripted backend: transmit drops (GSO to a plain backend, a
 * partial checksum that cannot be completed, oversized buffers, a backend refusing the frame) and the checksum
 * completion's edge cases; receive with the header in a buffer of its own, frames too long to take, interrupts;
 * the offloads a vnet-header backend is told and the headers it gets back; feature dependencies; the MAC, MTU
 * and link fields. (Written against the survivors of mutation testing, docs/mutation-testing.md.)
 */
import assert from "node:assert/strict";
import { before, describe, test } from "node:test";
import {
  completeChecksum,
  type NetOffloads,
  VirtioNet,
  type VirtioNetBackend,
} from "../../src/devices/virtio/net.ts";
import { makeVirtioPciRig, type VirtioPciRig, type VirtioTestDriver } from "../helpers/virtio-driver.ts";

// From 5.1 of the specification.
const F_CSUM = 1n << 0n;
const F_GUEST_CSUM = 1n << 1n;
const F_MTU = 1n << 3n;
const F_GUEST_TSO4 = 1n << 7n;
const F_GUEST_TSO6 = 1n << 8n;
const F_GUEST_ECN = 1n << 9n;
const F_GUEST_UFO = 1n << 10n;
const F_HOST_TSO4 = 1n << 11n;
const F_HOST_TSO6 = 1n << 12n;
const F_HOST_ECN = 1n << 13n;
const F_HOST_UFO = 1n << 14n;
const F_MRG_RXBUF = 1n << 15n;
const F_PACKED = 1n << 34n;
const HDR = 12;
const NEEDS_CSUM = 1;
const DATA_VALID = 2;
const GSO_TCPV4 = 1;
const GSO_UDP = 3;
const GSO_TCPV6 = 4;
const GSO_ECN = 0x80;
/** Largest frame the device carries: 64 KiB of payload plus Ethernet and a VLAN tag. */
const MAX_FRAME = 65535 + 14 + 4;
const MAC = Uint8Array.of(0x52, 0x54, 0x00, 0xab, 0xcd, 0xef);

/** A backend that records what it is given and answers as told. */
class ScriptedBackend implements VirtioNetBackend {
  readonly name = "scripted";
  readonly sent: Uint8Array[] = [];
  /** What send() answers. */
  accept = true;
  receiver: ((f: Uint8Array) => boolean) | undefined;
  rxReadyCalls = 0;
  offloads: NetOffloads | undefined;
  readonly setOffloads?: (o: NetOffloads) => void;

  constructor(readonly vnetHdr = false) {
    if (vnetHdr) this.setOffloads = (o) => (this.offloads = o);
  }
  send(f: Uint8Array): boolean {
    this.sent.push(f.slice());
    return this.accept;
  }
  attach(r: (f: Uint8Array) => boolean): void {
    this.receiver = r;
  }
  rxReady(): void {
    this.rxReadyCalls++;
  }
  close(): void {}
  /** Hands a frame to the device as the host would. */
  deliver(f: Uint8Array): boolean {
    assert.ok(this.receiver, "the device attached a receiver");
    return this.receiver(f);
  }
}

interface Net {
  rig: VirtioPciRig<VirtioNet>;
  backend: ScriptedBackend;
  rx: VirtioTestDriver;
  tx: VirtioTestDriver;
}

function start(
  packed: boolean,
  opts: { vnetHdr?: boolean; accept?: (offered: bigint) => bigint; mtu?: number; msix?: boolean } = {},
): Net {
  const backend = new ScriptedBackend(opts.vnetHdr);
  const rig = makeVirtioPciRig(new VirtioNet({ backend, mac: MAC, mtu: opts.mtu }));
  const accept = opts.accept ?? ((f: bigint) => f & ~F_MRG_RXBUF);
  assert.ok(rig.drv.negotiate((f) => accept(packed ? f : f & ~F_PACKED)));
  if (opts.msix) {
    rig.drv.enableMsix(3);
    rig.drv.setCommon(0x10, 2, 0);
  }
  const rx = rig.drv.setupQueue(0, { size: 16, vector: opts.msix ? 1 : undefined });
  const tx = rig.drv.setupQueue(1, { size: 16, vector: opts.msix ? 2 : undefined });
  rig.drv.driverOk();
  return { rig, backend, rx, tx };
}

function netHdr(
  fields: { flags?: number; gso?: number; csumStart?: number; csumOffset?: number } = {},
): Uint8Array {
  const h = new Uint8Array(HDR);
  const v = new DataView(h.buffer);
  v.setUint8(0, fields.flags ?? 0);
  v.setUint8(1, fields.gso ?? 0);
  v.setUint16(6, fields.csumStart ?? 0, true);
  v.setUint16(8, fields.csumOffset ?? 0, true);
  return h;
}

function frame(n: number, seed: number): Uint8Array {
  const f = new Uint8Array(n);
  for (let i = 0; i < n; i++) f[i] = (seed * 29 + i * 7) & 0xff;
  f.set(MAC, 0);
  return f;
}

/** Independent RFC 1071 sum over b, folded, not complemented. */
function sum16(b: Uint8Array): number {
  let s = 0;
  for (let i = 0; i < b.length; i += 2) s += ((b[i] as number) << 8) | (b[i + 1] ?? 0);
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return s;
}

/**
 * Set by each outcomes suite (before): transmit buffers posted as one descriptor, header and frame together (as
 * DPDK's virtio_user posts them: the flat form, Virtqueue.popSingles, on split rings), or one descriptor per array.
 */
let joinTransmit = false;

function transmit(net: Net, readable: Uint8Array[]): void {
  if (joinTransmit && readable.length > 1) {
    const all = new Uint8Array(readable.reduce((n, r) => n + r.length, 0));
    let at = 0;
    for (const r of readable) {
      all.set(r, at);
      at += r.length;
    }
    net.tx.addChain([all], []);
  } else {
    net.tx.addChain(readable, []);
  }
  net.rig.drv.kick(1);
}

function counter(net: Net, name: string): number {
  return net.rig.metrics.counter(`virtio.net0.${name}`).value;
}

describe("completeChecksum (5.1.6.2)", () => {
  test("stores the ones' complement of the sum from csum_start, big-endian, at csum_start + csum_offset", () => {
    // Odd length, and enough 0xff bytes that the sum carries more than once.
    const f = new Uint8Array(41).fill(0xff);
    f[10] = 0x12;
    f[11] = 0x34;
    f[40] = 0x80;
    f[14] = 0;
    f[15] = 0;
    assert.equal(completeChecksum(f, 10, 4), true);
    const stored = (f[14] as number) * 256 + (f[15] as number);
    const check = f.slice(10);
    check[4] = 0;
    check[5] = 0;
    assert.equal(stored, ~sum16(check) & 0xffff);
    // The sum over the range, stored checksum included, is all ones: what a receiver verifies.
    assert.equal(sum16(f.subarray(10)), 0xffff);
  });

  test("a result of zero is sent as 0xffff (RFC 768: zero means no checksum)", () => {
    const f = new Uint8Array(8);
    f.set([0xff, 0xff], 0); // the sum of the range is 0xffff, so its complement is 0
    assert.equal(completeChecksum(f, 0, 2), true);
    assert.deepEqual([f[2], f[3]], [0xff, 0xff]);
  });

  test("offsets that do not fit the frame are refused and nothing is written", () => {
    const f = frame(60, 1);
    const before = f.slice();
    assert.equal(completeChecksum(f, 60, 0), false, "csum_start at the end");
    assert.equal(completeChecksum(f, 50, 9), false, "field would end past the frame");
    assert.deepEqual(f, before);
    assert.equal(completeChecksum(f, 50, 8), true, "field ending exactly at the frame's end");
  });
});

for (const [packed, joined] of [
  [false, false],
  [false, true],
  [true, false],
] as const) {
  const layout = packed ? "packed" : "split";

  describe(`virtio-net outcomes (${layout}${joined ? ", transmit buffers of one descriptor" : ""})`, () => {
    before(() => {
      joinTransmit = joined;
    });
    test("transmit to a plain backend: GSO frames and partial checksums it cannot complete are dropped", () => {
      const net = start(packed);
      const f = frame(100, 1);
      transmit(net, [netHdr({ gso: GSO_TCPV4 }), f]);
      transmit(net, [netHdr({ gso: GSO_TCPV6 }), f]);
      transmit(net, [netHdr({ flags: NEEDS_CSUM, csumStart: 100, csumOffset: 0 }), f]);
      transmit(net, [netHdr({ flags: NEEDS_CSUM, csumStart: 90, csumOffset: 9 }), f]);
      assert.deepEqual(net.backend.sent, [], "nothing reached the backend");
      assert.equal(counter(net, "tx_dropped"), 4);
      assert.equal(counter(net, "tx_packets"), 0);
      assert.deepEqual(
        net.tx.usedChains().map((u) => u.len),
        [0, 0, 0, 0],
        "every buffer is returned, nothing written",
      );
      // The ECN bit alone is no segmentation: the frame goes out.
      transmit(net, [netHdr({ gso: GSO_ECN }), f]);
      assert.deepEqual(net.backend.sent, [f]);
      assert.equal(counter(net, "tx_packets"), 1);
      assert.equal(counter(net, "tx_bytes"), 100);
    });

    test("transmit: NEEDS_CSUM without VIRTIO_NET_F_CSUM negotiated is dropped, not completed", () => {
      const net = start(packed, { accept: (f) => f & ~F_CSUM & ~F_MRG_RXBUF });
      transmit(net, [netHdr({ flags: NEEDS_CSUM, csumStart: 20, csumOffset: 4 }), frame(80, 2)]);
      assert.deepEqual(net.backend.sent, []);
      assert.equal(counter(net, "tx_dropped"), 1);
    });

    test("transmit: the completed checksum lands in the frame the backend gets", () => {
      const net = start(packed);
      const f = frame(75, 3);
      f[40] = 0;
      f[41] = 0;
      transmit(net, [netHdr({ flags: NEEDS_CSUM, csumStart: 30, csumOffset: 10 }), f]);
      const [got] = net.backend.sent;
      assert.ok(got);
      assert.equal(got.length, 75);
      assert.deepEqual(got.subarray(0, 40), f.subarray(0, 40));
      assert.deepEqual(got.subarray(42), f.subarray(42));
      assert.equal(sum16(got.subarray(30)), 0xffff, "the range now sums to all ones");
    });

    test("transmit: a frame of the largest size goes out, a longer buffer is dropped without reading it", () => {
      const net = start(packed);
      const big = frame(MAX_FRAME, 4);
      transmit(net, [netHdr(), big.subarray(0, 40000), big.subarray(40000)]);
      assert.equal(net.backend.sent.length, 1);
      assert.deepEqual(net.backend.sent[0], big);
      transmit(net, [netHdr(), frame(MAX_FRAME + 1, 5)]);
      assert.equal(net.backend.sent.length, 1, "the oversized buffer did not reach the backend");
      assert.equal(counter(net, "tx_dropped"), 1);
      assert.equal(net.tx.usedChains().length, 2, "both buffers returned");
      assert.equal(counter(net, "tx_bytes"), MAX_FRAME);
    });

    test("transmit: a frame the backend refuses is counted dropped, the buffer still returned", () => {
      const net = start(packed);
      net.backend.accept = false;
      transmit(net, [netHdr(), frame(60, 6)]);
      assert.equal(net.backend.sent.length, 1, "offered to the backend");
      assert.equal(counter(net, "tx_dropped"), 1);
      assert.equal(counter(net, "tx_packets"), 0);
      assert.equal(counter(net, "tx_bytes"), 0);
      assert.equal(net.tx.usedChains().length, 1);
    });

    test("transmit buffers posted before DRIVER_OK go out when the driver sets it", () => {
      const backend = new ScriptedBackend();
      const rig = makeVirtioPciRig(new VirtioNet({ backend, mac: MAC }));
      assert.ok(rig.drv.negotiate((f) => (packed ? f : f & ~F_PACKED)));
      rig.drv.setupQueue(0, { size: 8 });
      const tx = rig.drv.setupQueue(1, { size: 8 });
      tx.addChain([netHdr(), frame(64, 7)], []);
      const rxReadyBefore = backend.rxReadyCalls;
      rig.drv.driverOk();
      assert.deepEqual(backend.sent, [frame(64, 7)]);
      assert.ok(backend.rxReadyCalls > rxReadyBefore, "the backend is told receive buffers may be there");
    });

    test("receive: a frame with no queue enabled waits at the backend; one too long for the device is dropped", () => {
      const backend = new ScriptedBackend();
      const rig = makeVirtioPciRig(new VirtioNet({ backend, mac: MAC }));
      assert.ok(rig.drv.negotiate((f) => (packed ? f : f & ~F_PACKED)));
      assert.equal(backend.deliver(frame(60, 8)), false, "no receive queue yet");
      assert.equal(rig.drv.status & 0x40, 0, "which is no error");
      const net = start(packed);
      net.rx.addChain([], [HDR + MAX_FRAME + 10]);
      net.rig.drv.kick(0);
      assert.equal(net.backend.deliver(frame(MAX_FRAME + 1, 9)), true, "taken, and dropped");
      assert.equal(counter(net, "rx_dropped"), 1);
      assert.equal(net.rx.usedChains().length, 0, "the buffer is kept for the next frame");
      assert.equal(net.backend.deliver(frame(MAX_FRAME, 10)), true);
      const [u] = net.rx.usedChains();
      assert.equal(u?.len, HDR + MAX_FRAME);
      assert.deepEqual(u?.written.subarray(HDR), frame(MAX_FRAME, 10));
      assert.equal(counter(net, "rx_bytes"), MAX_FRAME);
    });

    test("receive: a buffer exactly one header long works; a shorter one is the driver's error", () => {
      const net = start(packed, { accept: (f) => f });
      net.rx.addChain([], [HDR]);
      net.rx.addChain([], [50]);
      net.rig.drv.kick(0);
      const f = frame(50, 11);
      assert.equal(net.backend.deliver(f), true);
      const used = net.rx.usedChains();
      assert.deepEqual(
        used.map((u) => u.len),
        [HDR, 50],
      );
      assert.equal(
        new DataView(used[0]?.written.buffer as ArrayBuffer).getUint16(10, true),
        2,
        "num_buffers",
      );
      assert.deepEqual(used[1]?.written, f);
      const bad = start(packed);
      bad.rx.addChain([], [HDR - 1]);
      bad.rig.drv.kick(0);
      assert.doesNotThrow(() => bad.backend.deliver(frame(60, 12)));
      assert.ok(bad.rig.drv.status & 0x40, "DEVICE_NEEDS_RESET");
    });

    test("receive: the used buffer notification is sent, and suppressed when the driver asks", () => {
      const net = start(packed, { msix: true });
      net.rx.addChain([], [1526]);
      net.rx.addChain([], [1526]);
      net.rig.drv.kick(0);
      net.backend.deliver(frame(60, 13));
      assert.deepEqual(net.rig.msis, [0x41], "receive queue vector");
      net.rx.setUsedNotifications(false);
      net.backend.deliver(frame(60, 14));
      assert.deepEqual(net.rig.msis, [0x41]);
      assert.equal(net.rx.usedChains().length, 2);
      assert.equal(counter(net, "rx_packets"), 2);
    });

    test("vnet-header backend: the driver's receive offloads are reported", () => {
      const all = start(packed, { vnetHdr: true, accept: (f) => f });
      assert.deepEqual(all.backend.offloads, { csum: true, tso4: true, tso6: true, ecn: false });
      const none = start(packed, {
        vnetHdr: true,
        accept: (f) => f & ~(F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_TSO6),
      });
      assert.deepEqual(none.backend.offloads, { csum: false, tso4: false, tso6: false, ecn: false });
      const v4 = start(packed, { vnetHdr: true, accept: (f) => f & ~F_GUEST_TSO6 });
      assert.deepEqual(v4.backend.offloads, { csum: true, tso4: true, tso6: false, ecn: false });
    });

    test("vnet-header backend: transmit hands over header and frame, counting the frame's bytes", () => {
      const net = start(packed, { vnetHdr: true, accept: (f) => f });
      const h = netHdr({ flags: NEEDS_CSUM, gso: GSO_TCPV6, csumStart: 54, csumOffset: 16 });
      transmit(net, [h, frame(2000, 15)]);
      assert.equal(net.backend.sent.length, 1);
      assert.deepEqual(net.backend.sent[0]?.subarray(0, HDR), h);
      assert.deepEqual(net.backend.sent[0]?.subarray(HDR), frame(2000, 15));
      assert.equal(counter(net, "tx_bytes"), 2000);
      assert.equal(counter(net, "tx_packets"), 1);
    });

    test("vnet-header backend: received offloads the driver did not accept are refused or completed", () => {
      const net = start(packed, {
        vnetHdr: true,
        accept: (f) => f & ~(F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_TSO6),
      });
      for (let i = 0; i < 8; i++) net.rx.addChain([], [2048]);
      net.rig.drv.kick(0);
      const payload = frame(200, 16);
      const input = (h: Uint8Array, p = payload) => {
        const b = new Uint8Array(HDR + p.length);
        b.set(h);
        b.set(p, HDR);
        return b;
      };
      for (const gso of [GSO_TCPV4, GSO_TCPV6, GSO_UDP, 2, GSO_TCPV4 | GSO_ECN]) {
        assert.equal(net.backend.deliver(input(netHdr({ gso }))), true, `gso ${gso} taken`);
      }
      assert.equal(net.backend.deliver(new Uint8Array(HDR - 1)), true, "a runt without a whole header");
      assert.equal(net.rx.usedChains().length, 0, "none of them reached the guest");
      assert.equal(counter(net, "rx_dropped"), 6);
      // A partial checksum the driver cannot take is completed here; the header then says nothing of it.
      const p = payload.slice();
      p[50] = 0;
      p[51] = 0;
      const offered = input(netHdr({ flags: NEEDS_CSUM, csumStart: 34, csumOffset: 16 }), p);
      const copy = offered.slice();
      assert.equal(net.backend.deliver(offered), true);
      assert.deepEqual(offered, copy, "the backend's frame is not changed (it may offer it again)");
      const [u] = net.rx.usedChains();
      assert.ok(u);
      assert.equal(u.written[0], 0, "flags cleared");
      assert.equal(sum16(u.written.subarray(HDR + 34)), 0xffff, "checksum completed");
      // DATA_VALID means nothing to a driver without GUEST_CSUM: cleared.
      net.backend.deliver(input(netHdr({ flags: DATA_VALID })));
      assert.equal(net.rx.usedChains()[0]?.written[0], 0);
      // A partial checksum that cannot be completed, or one on a GSO frame, is dropped.
      net.backend.deliver(input(netHdr({ flags: NEEDS_CSUM, csumStart: 199, csumOffset: 0 })));
      net.backend.deliver(input(netHdr({ flags: NEEDS_CSUM, gso: GSO_ECN, csumStart: 34, csumOffset: 16 })));
      assert.equal(net.rx.usedChains().length, 1, "the ECN-only frame passes, completed");
      assert.equal(counter(net, "rx_dropped"), 7);
    });

    test("vnet-header backend: TSO frames the driver accepted reach it with their GSO type", () => {
      const net = start(packed, { vnetHdr: true, accept: (f) => f });
      for (let i = 0; i < 4; i++) net.rx.addChain([], [2048]);
      net.rig.drv.kick(0);
      for (const gso of [GSO_TCPV6, GSO_TCPV4 | GSO_ECN]) {
        const b = new Uint8Array(HDR + 1500);
        b.set(netHdr({ flags: NEEDS_CSUM, gso, csumStart: 54, csumOffset: 16 }));
        b.set(frame(1500, gso), HDR);
        assert.equal(net.backend.deliver(b), true);
        const used = net.rx.usedChains();
        assert.equal(used.length, 1, `gso ${gso}`);
        assert.equal(used[0]?.written[1], gso);
        assert.deepEqual(used[0]?.written.subarray(HDR), frame(1500, gso));
      }
      assert.equal(counter(net, "rx_dropped"), 0);
    });

    describe("malformed buffers reset the device, and the log says why", () => {
      const receive = (n: Net, readable: Uint8Array[], writable: number[]) => {
        n.rx.addChain(readable, writable);
        n.rig.drv.kick(0);
        assert.doesNotThrow(() => n.backend.deliver(frame(60, 1)));
      };
      const cases: Array<[string, (n: Net) => void, RegExp]> = [
        [
          "transmit buffer with a writable part",
          (n) => {
            n.tx.addChain([netHdr(), frame(60, 1)], [16]);
            n.rig.drv.kick(1);
          },
          /transmit buffer \d+ has 16 device-writable bytes/,
        ],
        [
          "transmit buffer shorter than the header",
          (n) => transmit(n, [new Uint8Array(8)]),
          /transmit buffer \d+ has 8 bytes, shorter than the 12-byte header/,
        ],
        [
          "receive buffer with a readable part",
          (n) => receive(n, [new Uint8Array(4)], [1526]),
          /receive buffer \d+ has 4 device-readable bytes/,
        ],
        [
          "receive buffer shorter than the header",
          (n) => receive(n, [], [11]),
          /receive buffer \d+ has 11 bytes, less than the 12-byte header/,
        ],
      ];
      for (const [what, make, reason] of cases) {
        test(what, () => {
          const net = start(packed);
          make(net);
          assert.ok(net.rig.drv.status & 0x40, "DEVICE_NEEDS_RESET");
          assert.equal(net.rig.logs.length, 1);
          assert.match(net.rig.logs[0] as string, reason);
        });
      }
    });

    test("vnet-header backend: with GUEST_CSUM the header passes through untouched", () => {
      const net = start(packed, { vnetHdr: true, accept: (f) => f & ~F_MRG_RXBUF });
      net.rx.addChain([], [2048]);
      net.rig.drv.kick(0);
      const h = netHdr({ flags: NEEDS_CSUM | DATA_VALID, csumStart: 34, csumOffset: 16 });
      const b = new Uint8Array(HDR + 100);
      b.set(h);
      b.set(frame(100, 17), HDR);
      assert.equal(net.backend.deliver(b), true);
      const [u] = net.rx.usedChains();
      assert.equal(u?.written[0], NEEDS_CSUM | DATA_VALID);
      assert.deepEqual(u?.written.subarray(HDR), frame(100, 17), "the frame is not touched either");
    });
  });
}

describe("virtio-net features, configuration and link", () => {
  test("feature dependencies (5.1.3.1): every guest offload needs GUEST_CSUM, every host offload CSUM", () => {
    const model = new VirtioNet({ backend: new ScriptedBackend(true), mac: MAC });
    for (const bit of [F_GUEST_TSO4, F_GUEST_TSO6, F_GUEST_ECN, F_GUEST_UFO]) {
      assert.match(model.validateFeatures(bit | F_CSUM) ?? "", /needs VIRTIO_NET_F_GUEST_CSUM/, `${bit}`);
      assert.equal(model.validateFeatures(bit | F_GUEST_CSUM), null, `${bit} with GUEST_CSUM`);
    }
    for (const bit of [F_HOST_TSO4, F_HOST_TSO6, F_HOST_ECN, F_HOST_UFO]) {
      assert.match(model.validateFeatures(bit | F_GUEST_CSUM) ?? "", /needs VIRTIO_NET_F_CSUM/, `${bit}`);
      assert.equal(model.validateFeatures(bit | F_CSUM), null, `${bit} with CSUM`);
    }
    assert.equal(model.validateFeatures(0n), null);
  });

  test("offered features: offloads only over a vnet-header backend, never ECN or UFO; MTU only when set", () => {
    const plain = new VirtioNet({ backend: new ScriptedBackend(), mac: MAC }).features;
    for (const bit of [F_GUEST_CSUM, F_GUEST_TSO4, F_GUEST_TSO6, F_HOST_TSO4, F_HOST_TSO6, F_MTU]) {
      assert.equal(plain & bit, 0n);
    }
    const vnet = new VirtioNet({ backend: new ScriptedBackend(true), mac: MAC, mtu: 9000 }).features;
    for (const bit of [F_CSUM, F_GUEST_CSUM, F_GUEST_TSO4, F_GUEST_TSO6, F_HOST_TSO4, F_HOST_TSO6, F_MTU]) {
      assert.notEqual(vnet & bit, 0n);
    }
    for (const bit of [F_GUEST_ECN, F_GUEST_UFO, F_HOST_ECN, F_HOST_UFO]) assert.equal(vnet & bit, 0n);
  });

  test("configuration: MTU 0 when not offered, speed and duplex unknown, one queue pair", () => {
    const rig = makeVirtioPciRig(new VirtioNet({ backend: new ScriptedBackend(), mac: MAC }));
    assert.equal(rig.drv.config(10, 2), 0);
    assert.equal(rig.drv.config(12, 4), 0xffffffff, "speed unknown");
    assert.equal(rig.drv.config(16, 1), 0xff, "duplex unknown");
    assert.equal(rig.drv.config(8, 2), 1);
    assert.deepEqual(
      Array.from({ length: 6 }, (_, i) => rig.drv.config(i, 1)),
      [...MAC],
    );
  });

  test("the MAC is the first 6 bytes given, copied", () => {
    const given = Uint8Array.of(2, 0, 0, 0, 0, 9, 0xee, 0xee);
    const rig = makeVirtioPciRig(new VirtioNet({ backend: new ScriptedBackend(), mac: given }));
    given[5] = 7;
    assert.deepEqual(
      Array.from({ length: 6 }, (_, i) => rig.drv.config(i, 1)),
      [2, 0, 0, 0, 0, 9],
    );
    assert.equal(rig.drv.config(6, 2), 1, "the status field after it is untouched");
  });

  test("without a MAC given, a random locally administered unicast address", () => {
    const seen = new Set<string>();
    for (let i = 0; i < 16; i++) {
      const mac = new VirtioNet({ backend: new ScriptedBackend() }).mac;
      assert.equal(mac.length, 6);
      assert.equal((mac[0] as number) & 1, 0, "unicast");
      assert.equal((mac[0] as number) & 2, 2, "locally administered");
      seen.add(mac.join(":"));
    }
    assert.ok(seen.size > 1, "not the same address every time");
  });

  test("link state: down at creation when asked; a change notifies once, a non-change not at all", () => {
    const rig = makeVirtioPciRig(new VirtioNet({ backend: new ScriptedBackend(), mac: MAC, linkUp: false }));
    assert.ok(rig.drv.negotiate());
    rig.drv.driverOk();
    assert.equal(rig.drv.config(6, 2), 0, "link down");
    assert.equal(rig.model.linkUp, false);
    const gen = rig.drv.common(0x15, 1);
    rig.model.setLinkUp(false);
    assert.equal(rig.drv.common(0x15, 1), gen, "no change, no new generation");
    assert.equal(rig.drv.readIsr() & 2, 0, "and no configuration interrupt");
    rig.model.setLinkUp(true);
    assert.equal(rig.drv.config(6, 2), 1);
    assert.equal(rig.model.linkUp, true);
    assert.notEqual(rig.drv.common(0x15, 1), gen);
    assert.equal(rig.drv.readIsr() & 2, 2);
  });
});
