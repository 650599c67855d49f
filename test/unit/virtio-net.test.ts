/**
 * virtio-net through the virtio-pci transport, against an in-process pair backend (src/net/pair.ts) as the wire:
 * transmit with header stripping and checksum completion, receive into single and mergeable buffers, no loss
 * while the guest has no buffers, link status, a vnet-header backend, and malformed buffers. Both ring layouts.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { VirtioNet, type VirtioNetBackend } from "../../src/devices/virtio/net.ts";
import { createPair, type PairBackend } from "../../src/net/pair.ts";
import { makeVirtioPciRig, type VirtioPciRig, type VirtioTestDriver } from "../helpers/virtio-driver.ts";

// From 5.1 of the specification.
const F_CSUM = 1n << 0n;
const F_GUEST_CSUM = 1n << 1n;
const F_MTU = 1n << 3n;
const F_MAC = 1n << 5n;
const F_GUEST_TSO4 = 1n << 7n;
const F_HOST_TSO4 = 1n << 11n;
const F_MRG_RXBUF = 1n << 15n;
const F_STATUS = 1n << 16n;
const F_PACKED = 1n << 34n;
const HDR = 12;
const NEEDS_RESET = 0x40;
const MAC = Uint8Array.of(0x52, 0x54, 0x00, 0x12, 0x34, 0x56);

function frame(n: number, seed: number): Uint8Array {
  const f = new Uint8Array(n);
  for (let i = 0; i < n; i++) f[i] = (seed * 17 + i) & 0xff;
  f.set(MAC, 0);
  return f;
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

interface Net {
  rig: VirtioPciRig<VirtioNet>;
  rx: VirtioTestDriver;
  tx: VirtioTestDriver;
  wire: PairBackend;
  wireGot: Uint8Array[];
}

function start(
  packed: boolean,
  opts: { mergeable?: boolean; backend?: VirtioNetBackend; wire?: PairBackend; queueSize?: number } = {},
): Net {
  let backend = opts.backend;
  let wire = opts.wire;
  if (!backend) {
    const [dev, w] = createPair({ capacity: 64 });
    backend = dev;
    wire = w;
  }
  const rig = makeVirtioPciRig(new VirtioNet({ backend, mac: MAC, mtu: 1500 }));
  assert.ok(
    rig.drv.negotiate((f) => {
      let a = packed ? f : f & ~F_PACKED;
      if (!opts.mergeable) a &= ~F_MRG_RXBUF;
      return a;
    }),
  );
  const rx = rig.drv.setupQueue(0, { size: opts.queueSize ?? 16 });
  const tx = rig.drv.setupQueue(1, { size: opts.queueSize ?? 16 });
  rig.drv.driverOk();
  const wireGot: Uint8Array[] = [];
  wire?.attach((f) => {
    wireGot.push(f.slice());
    return true;
  });
  return { rig, rx, tx, wire: wire as PairBackend, wireGot };
}

/** Independent RFC 1071 checksum. */
function inetChecksum(b: Uint8Array, initial = 0): number {
  let s = initial;
  for (let i = 0; i < b.length; i += 2) s += ((b[i] as number) << 8) | (b[i + 1] ?? 0);
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return ~s & 0xffff;
}

for (const packed of [false, true]) {
  const layout = packed ? "packed" : "split";

  describe(`virtio-net (${layout})`, () => {
    test("configuration and features: MAC, STATUS (link up), max_virtqueue_pairs, MTU", () => {
      const { rig } = start(packed);
      const f = rig.drv.deviceFeatures();
      for (const bit of [F_MAC, F_STATUS, F_MTU, F_MRG_RXBUF, F_CSUM]) assert.ok(f & bit);
      assert.equal(f & F_HOST_TSO4, 0n, "no TSO over a plain backend");
      const mac = Array.from({ length: 6 }, (_, i) => rig.drv.config(i, 1));
      assert.deepEqual(mac, [...MAC]);
      assert.equal(rig.drv.config(6, 2), 1, "VIRTIO_NET_S_LINK_UP");
      assert.equal(rig.drv.config(8, 2), 1);
      assert.equal(rig.drv.config(10, 2), 1500);
    });

    test("transmit: the header is stripped, the frame reaches the wire, header split across descriptors", () => {
      const net = start(packed);
      const f1 = frame(60, 1);
      net.tx.addChain([netHdr(), f1], []);
      const f2 = frame(1514, 2);
      const h = netHdr();
      net.tx.addChain([h.subarray(0, 5), h.subarray(5), f2.subarray(0, 700), f2.subarray(700)], [], {
        indirect: true,
      });
      net.rig.drv.kick(1);
      assert.deepEqual(net.wireGot, [f1, f2]);
      const used = net.tx.usedChains();
      assert.equal(used.length, 2);
      assert.equal(used[0]?.len, 0);
      const m = net.rig.metrics;
      assert.equal(m.counter("virtio.net0.tx_packets").value, 2);
      assert.equal(m.counter("virtio.net0.tx_bytes").value, 60 + 1514);
    });

    test("transmit: NEEDS_CSUM is completed in software (5.1.6.2)", () => {
      const net = start(packed);
      // Ethernet + IPv4 + UDP with 20 bytes of payload; the driver put the pseudo-header sum in the checksum field.
      const pkt = new Uint8Array(14 + 20 + 8 + 20);
      pkt.set(MAC, 0);
      pkt[12] = 0x08;
      const ip = 14;
      pkt[ip] = 0x45;
      pkt[ip + 9] = 17;
      pkt.set([10, 0, 0, 1, 10, 0, 0, 2], ip + 12);
      const udp = ip + 20;
      const udpLen = 28;
      pkt[udp + 4] = udpLen >> 8;
      pkt[udp + 5] = udpLen & 0xff;
      for (let i = 0; i < 20; i++) pkt[udp + 8 + i] = i * 3;
      const pseudo = Uint8Array.of(10, 0, 0, 1, 10, 0, 0, 2, 0, 17, udpLen >> 8, udpLen & 0xff);
      const pseudoSum = ~inetChecksum(pseudo) & 0xffff;
      pkt[udp + 6] = pseudoSum >> 8;
      pkt[udp + 7] = pseudoSum & 0xff;
      net.tx.addChain([netHdr({ flags: 1, csumStart: udp, csumOffset: 6 }), pkt], []);
      net.rig.drv.kick(1);
      const got = net.wireGot[0];
      assert.ok(got);
      const check = got.slice();
      const sum = (check[udp + 6] as number) * 256 + (check[udp + 7] as number);
      check[udp + 6] = 0;
      check[udp + 7] = 0;
      const expected = inetChecksum(check.subarray(udp), ~inetChecksum(pseudo) & 0xffff);
      assert.equal(sum, expected);
    });

    test("receive into single buffers: header with num_buffers 1, then the frame", () => {
      const net = start(packed);
      for (let i = 0; i < 2; i++) net.rx.addChain([], [1526]);
      net.rig.drv.kick(0);
      const f = frame(200, 3);
      assert.equal(net.wire.send(f), true);
      const [u] = net.rx.usedChains();
      assert.ok(u);
      assert.equal(u.len, HDR + 200);
      const v = new DataView(u.written.buffer);
      assert.equal(v.getUint16(10, true), 1, "num_buffers");
      assert.equal(v.getUint8(0), 0);
      assert.deepEqual(u.written.subarray(HDR), f);
      assert.equal(net.rig.metrics.counter("virtio.net0.rx_packets").value, 1);
    });

    test("mergeable receive buffers: a frame spans several buffers (num_buffers)", () => {
      const net = start(packed, { mergeable: true });
      for (let i = 0; i < 8; i++) net.rx.addChain([], [256]);
      net.rig.drv.kick(0);
      const f = frame(1000, 4);
      net.wire.send(f);
      const used = net.rx.usedChains();
      assert.equal(used.length, 4, "ceil(1012 / 256) buffers");
      const first = used[0];
      assert.ok(first);
      assert.equal(new DataView(first.written.buffer).getUint16(10, true), 4);
      const all = new Uint8Array(used.reduce((n, u) => n + u.len, 0));
      let at = 0;
      for (const u of used) {
        all.set(u.written, at);
        at += u.len;
      }
      assert.equal(all.length, HDR + 1000);
      assert.deepEqual(all.subarray(HDR), f);
      assert.deepEqual(
        used.map((u) => u.len),
        [256, 256, 256, 244],
      );
    });

    test("receive with no buffers, then buffers posted: nothing lost, order kept", () => {
      const net = start(packed);
      const frames = [frame(64, 10), frame(70, 11), frame(80, 12)];
      for (const f of frames) assert.equal(net.wire.send(f), true, "queued at the pair");
      assert.equal(net.rx.usedChains().length, 0);
      for (let i = 0; i < 4; i++) net.rx.addChain([], [1526]);
      net.rig.drv.kick(0);
      const used = net.rx.usedChains();
      assert.deepEqual(
        used.map((u) => u.written.subarray(HDR)),
        frames,
      );
      assert.equal(net.wire.peer.stats().dropped, 0);
      assert.ok(net.rig.metrics.counter("virtio.net0.rx_no_buffers").value >= 1);
    });

    test("mergeable: too few buffers for a frame gives them back until more come", () => {
      const net = start(packed, { mergeable: true });
      net.rx.addChain([], [256]);
      net.rx.addChain([], [256]);
      net.rig.drv.kick(0);
      const f = frame(1000, 5);
      net.wire.send(f);
      assert.equal(net.rx.usedChains().length, 0, "held, buffers untouched");
      net.rx.addChain([], [256]);
      net.rx.addChain([], [256]);
      net.rig.drv.kick(0);
      const used = net.rx.usedChains();
      assert.equal(used.length, 4);
      const payload = new Uint8Array(1000);
      let at = 0;
      used.forEach((u, i) => {
        const part = i === 0 ? u.written.subarray(HDR) : u.written;
        payload.set(part, at);
        at += part.length;
      });
      assert.deepEqual(payload, f);
    });

    test("a frame larger than a single (non-mergeable) buffer is dropped, the buffer kept", () => {
      const net = start(packed);
      net.rx.addChain([], [100]);
      net.rig.drv.kick(0);
      net.wire.send(frame(500, 6));
      assert.equal(net.rx.usedChains().length, 0);
      assert.equal(net.rig.metrics.counter("virtio.net0.rx_dropped").value, 1);
      net.wire.send(frame(60, 7));
      const [u] = net.rx.usedChains();
      assert.deepEqual(u?.written.subarray(HDR), frame(60, 7));
    });

    test("link status change: config status, generation and a configuration interrupt", () => {
      const net = start(packed);
      const gen = net.rig.drv.common(0x15, 1);
      net.rig.model.setLinkUp(false);
      assert.equal(net.rig.drv.config(6, 2), 0);
      assert.notEqual(net.rig.drv.common(0x15, 1), gen);
      assert.equal(net.rig.drv.readIsr() & 2, 2);
    });

    describe("malformed buffers reach DEVICE_NEEDS_RESET", () => {
      const cases: Array<[string, (n: Net) => void]> = [
        ["transmit buffer with a writable part", (n) => n.tx.addChain([netHdr(), frame(60, 1)], [16])],
        ["transmit buffer shorter than the header", (n) => n.tx.addChain([new Uint8Array(8)], [])],
        [
          "transmit descriptor outside guest RAM",
          (n) => {
            if (n.tx.kind === "split") {
              n.tx.writeDesc(0, { addr: 0x1_0000_0000, len: 64, flags: 0 });
              n.tx.pushAvail(0);
            } else n.tx.makeAvailableRaw([{ addr: 0x1_0000_0000, len: 64, flags: 0, id: 0 }]);
          },
        ],
      ];
      for (const [what, make] of cases) {
        test(what, () => {
          const net = start(packed);
          make(net);
          assert.doesNotThrow(() => net.rig.drv.kick(1));
          assert.ok(net.rig.drv.status & NEEDS_RESET);
          assert.equal(net.rig.logs.length, 1);
        });
      }
      test("receive buffer with a readable part", () => {
        const net = start(packed);
        net.rx.addChain([new Uint8Array(4)], [1526]);
        net.rig.drv.kick(0);
        assert.doesNotThrow(() => net.wire.send(frame(60, 1)));
        assert.ok(net.rig.drv.status & NEEDS_RESET);
        assert.equal(net.rig.logs.length, 1);
      });
    });
  });
}

describe("virtio-net with a vnet-header backend", () => {
  class VnetBackend implements VirtioNetBackend {
    readonly name = "vnet";
    readonly vnetHdr = true;
    sent: Uint8Array[] = [];
    offloads: unknown;
    receiver: ((f: Uint8Array) => boolean) | undefined;
    send(f: Uint8Array): boolean {
      this.sent.push(f.slice());
      return true;
    }
    attach(r: (f: Uint8Array) => boolean): void {
      this.receiver = r;
    }
    rxReady(): void {}
    close(): void {}
    setOffloads(o: unknown): void {
      this.offloads = o;
    }
  }

  test("offloads offered; TSO without CSUM refused at FEATURES_OK", () => {
    const backend = new VnetBackend();
    const rig = makeVirtioPciRig(new VirtioNet({ backend }));
    const f = rig.drv.deviceFeatures();
    for (const bit of [F_GUEST_CSUM, F_GUEST_TSO4, F_HOST_TSO4]) assert.ok(f & bit);
    assert.equal(
      rig.drv.negotiate((o) => o & ~F_CSUM),
      false,
      "HOST_TSO4 needs CSUM",
    );
    assert.equal(
      rig.drv.negotiate((o) => o & ~F_GUEST_CSUM),
      false,
      "GUEST_TSO4 needs GUEST_CSUM",
    );
    assert.equal(rig.drv.negotiate(), true);
  });

  test("headers pass through both ways; num_buffers filled in; offloads reported", () => {
    const backend = new VnetBackend();
    const rig = makeVirtioPciRig(new VirtioNet({ backend }));
    assert.ok(rig.drv.negotiate());
    const rx = rig.drv.setupQueue(0, { size: 8 });
    const tx = rig.drv.setupQueue(1, { size: 8 });
    rig.drv.driverOk();
    assert.deepEqual(backend.offloads, { csum: true, tso4: true, tso6: true, ecn: false });
    const hdr = netHdr({ flags: 1, gso: 1, csumStart: 34, csumOffset: 16 });
    const f = frame(3000, 9);
    tx.addChain([hdr, f], []);
    rig.drv.kick(1);
    const sent = backend.sent[0];
    assert.ok(sent);
    assert.deepEqual(sent.subarray(0, HDR), hdr);
    assert.deepEqual(sent.subarray(HDR), f);
    for (let i = 0; i < 4; i++) rx.addChain([], [2048]);
    rig.drv.kick(0);
    const input = new Uint8Array(HDR + 3000);
    input.set(hdr);
    input.set(f, HDR);
    assert.equal(backend.receiver?.(input), true);
    const used = rx.usedChains();
    assert.equal(used.length, 2);
    const h = used[0]?.written.subarray(0, HDR);
    assert.ok(h);
    assert.equal(h[0], 1);
    assert.equal(h[1], 1);
    assert.equal(new DataView(h.buffer, h.byteOffset).getUint16(10, true), 2);
  });
});
