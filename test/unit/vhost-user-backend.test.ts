/**
 * The vhost-user back-end's state machine in this process (no socket): a front-end built on the virtio test
 * driver negotiates, hands over a two-region memfd memory table, starts both rings of a virtio-net, and its
 * frames are counted (sink) or come back (loopback). Then hostile front-ends: every refused request is NACKed
 * with REPLY_ACK (and the connection goes on), or closes the connection without it; nothing throws out of the
 * back-end otherwise and no fd it was given is leaked.
 */
import assert from "node:assert/strict";
import { readdirSync } from "node:fs";
import { describe, test } from "node:test";
import { VirtioNet } from "../../src/devices/virtio/net.ts";
import { EFD_CLOEXEC, native } from "../../src/native.ts";
import { LoopbackBackend, SinkBackend, zeroCounts } from "../../src/vhost-user/net-backends.ts";
import {
  addrPayload,
  memoryPayload,
  PROTOCOL_F,
  type RawMemRegion,
  REQ,
  regionPayload,
  statePayload,
  u64Payload,
  VHOST_USER_F_PROTOCOL_FEATURES,
} from "../../src/vhost-user/protocol.ts";
import { DirectChannel, NET_HDR, NetFrontend, REGION1_GPA } from "../helpers/vhost-user-frontend.ts";

function frame(n: number, seed: number): Uint8Array {
  const f = new Uint8Array(n);
  for (let i = 0; i < n; i++) f[i] = (seed * 31 + i) & 0xff;
  return f;
}

function openFds(): number {
  return readdirSync("/proc/self/fd").length;
}

function rig(mode: "sink" | "loopback" = "sink") {
  const counts = zeroCounts();
  const backend = mode === "sink" ? new SinkBackend(counts) : new LoopbackBackend(counts);
  const channel = new DirectChannel(() => new VirtioNet({ backend, name: "net0", queueSize: 256 }));
  const fe = new NetFrontend(channel);
  return { counts, channel, fe };
}

describe("vhost-user back-end: traffic", () => {
  test("sink: frames sent on the transmit ring are counted and their buffers used", () => {
    const { counts, channel, fe } = rig("sink");
    fe.setup();
    fe.startRing(0);
    fe.startRing(1);
    const frames = Array.from({ length: 100 }, (_, i) => frame(60 + i, i));
    fe.transmit(frames);
    channel.pump();
    assert.ok(fe.waitCall(1, 1000), "the transmit ring's call eventfd fired");
    assert.equal(fe.tx.usedChains().length, 100);
    assert.equal(counts.txFrames, 100);
    assert.equal(
      counts.txBytes,
      frames.reduce((a, f) => a + f.length, 0),
    );
    fe.close();
  });

  test("loopback: frames come back on the receive ring, in order, with a zeroed header", () => {
    const { counts, channel, fe } = rig("loopback");
    fe.setup();
    fe.startRing(0);
    fe.startRing(1);
    fe.postReceiveBuffers(32);
    channel.pump();
    const frames = Array.from({ length: 20 }, (_, i) => frame(64 + 10 * i, i));
    fe.transmit(frames);
    channel.pump();
    assert.ok(fe.waitCall(0, 1000), "the receive ring's call eventfd fired");
    const got = fe.rx.usedChains();
    assert.equal(got.length, 20);
    got.forEach((u, i) => {
      const f = frames[i] as Uint8Array;
      assert.equal(u.len, NET_HDR + f.length);
      assert.deepEqual(u.written.subarray(NET_HDR), f);
      // 5.1.6.4: a zeroed header but num_buffers (offset 10), 1 here.
      const hdr = new Uint8Array(NET_HDR);
      hdr[10] = 1;
      assert.deepEqual(u.written.subarray(0, NET_HDR), hdr);
    });
    assert.equal(counts.rxFrames, 20);
    fe.close();
  });

  test("loopback without receive buffers keeps frames until the driver posts some", () => {
    const { counts, channel, fe } = rig("loopback");
    fe.setup();
    fe.startRing(0);
    fe.startRing(1);
    fe.transmit([frame(100, 1), frame(100, 2)]);
    channel.pump();
    assert.equal(counts.rxFrames, 0);
    fe.postReceiveBuffers(4);
    channel.pump();
    assert.equal(fe.rx.usedChains().length, 2);
    fe.close();
  });

  test("more than one slice of frames is served across turns of the loop (work budget)", () => {
    const { counts, channel, fe } = rig("sink");
    fe.setup();
    fe.startRing(0);
    fe.startRing(1);
    let sent = 0;
    // The ring holds 256; the budget serves 256 chains per slice; refill between turns.
    for (let round = 0; round < 8; round++) {
      const batch = Array.from({ length: 200 }, (_, i) => frame(60, round + i));
      fe.transmit(batch);
      sent += batch.length;
      for (let turn = 0; turn < 4; turn++) channel.pump();
      fe.tx.usedChains();
    }
    assert.equal(counts.txFrames, sent);
    fe.close();
  });

  test("GET_VRING_BASE stops a ring and returns its next index; the ring restarts from there", () => {
    const { counts, channel, fe } = rig("sink");
    fe.setup();
    fe.startRing(0);
    fe.startRing(1);
    fe.transmit([frame(60, 1), frame(60, 2), frame(60, 3)]);
    channel.pump();
    fe.tx.usedChains();
    const r = fe.request(REQ.GET_VRING_BASE, statePayload(1, 0));
    assert.ok(r);
    const v = new DataView(r.payload.buffer, r.payload.byteOffset);
    assert.equal(v.getUint32(0, true), 1);
    assert.equal(v.getUint32(4, true), 3);
    // Stopped: a kick is not served.
    fe.transmit([frame(60, 4)]);
    channel.pump();
    assert.equal(counts.txFrames, 3);
    // Restart at base 3 (the front-end gives back what it got), with a fresh kick fd.
    const kick = native().eventfd(0, EFD_CLOEXEC);
    assert.ok(fe.acked(REQ.SET_VRING_BASE, statePayload(1, 3)));
    assert.ok(fe.acked(REQ.SET_VRING_KICK, u64Payload(1n), [kick]));
    channel.pump();
    assert.equal(counts.txFrames, 4, "the frame queued while stopped is served on restart");
    native().close(kick);
    fe.close();
  });

  test("polled mode: no kicks asked for while it lasts; a ring stopped then and restarted after asks again", () => {
    // The receive ring: serving it (the sink has nothing to give) writes no notification state of its own.
    const { channel, fe } = rig("sink");
    fe.setup();
    fe.startRing(0);
    fe.startRing(1);
    fe.rx.addChain([], [1526]);
    channel.pump();
    fe.rx.kickNeeded();
    channel.backend.setPolled(true);
    fe.rx.addChain([], [1526]);
    assert.equal(fe.rx.kickNeeded(), false, "polled: the driver is asked not to kick");
    // The ring stops while polled, and polled mode ends while it is stopped (which reaches started rings only);
    // enabling the ring again writes its notification state afresh.
    assert.ok(fe.request(REQ.GET_VRING_BASE, statePayload(0, 0)));
    channel.backend.setPolled(false);
    const kick = native().eventfd(0, EFD_CLOEXEC);
    assert.ok(fe.acked(REQ.SET_VRING_BASE, statePayload(0, 0)));
    assert.ok(fe.acked(REQ.SET_VRING_KICK, u64Payload(0n), [kick]));
    channel.pump();
    fe.rx.addChain([], [1526]);
    assert.equal(fe.rx.kickNeeded(), true, "restarted outside polled mode: kicks are asked for again");
    native().close(kick);
    fe.close();
  });

  test("without protocol features a ring starts enabled", () => {
    const { counts, channel, fe } = rig("sink");
    fe.request(REQ.SET_OWNER);
    fe.request(REQ.SET_FEATURES, u64Payload(1n << 32n));
    fe.request(REQ.SET_MEM_TABLE, memoryPayload(fe.memory.regions), { fds: [fe.memory.fd, fe.memory.fd] });
    const c = fe.tx.config;
    const m = fe.memory;
    fe.request(REQ.SET_VRING_NUM, statePayload(1, c.size));
    fe.request(
      REQ.SET_VRING_ADDR,
      addrPayload({
        index: 1,
        desc: m.user(c.descAddr),
        used: m.user(c.deviceAddr),
        avail: m.user(c.driverAddr),
      }),
    );
    fe.request(REQ.SET_VRING_KICK, u64Payload(1n), { fds: [fe.kick[1]] });
    fe.transmit([frame(60, 9)]);
    channel.pump();
    assert.equal(counts.txFrames, 1);
    assert.equal(channel.closeReason, null);
    fe.close();
  });
});

/** A front-end through negotiation (REPLY_ACK on) and the memory table. */
function negotiated() {
  const r = rig("sink");
  r.fe.setup();
  return r;
}

describe("vhost-user back-end: hostile front-ends", () => {
  test("refused requests are NACKed with REPLY_ACK and the connection goes on", () => {
    const { channel, fe, counts } = negotiated();
    const m = fe.memory;
    const c = fe.tx.config;
    const nack = (what: string, req: number, payload: Uint8Array, fds: number[] = []) => {
      assert.equal(fe.acked(req, payload, fds), false, `${what} is refused`);
      assert.equal(channel.closed, false, `${what}: the connection stays open`);
    };
    nack("ring index 2 of 2", REQ.SET_VRING_NUM, statePayload(2, 256));
    nack("ring index 255", REQ.SET_VRING_ENABLE, statePayload(255, 1));
    nack("size not a power of 2", REQ.SET_VRING_NUM, statePayload(1, 100));
    nack("size above the maximum", REQ.SET_VRING_NUM, statePayload(1, 4096));
    nack("base above 0xffff", REQ.SET_VRING_BASE, statePayload(1, 0x10000));
    nack("enable 2", REQ.SET_VRING_ENABLE, statePayload(1, 2));
    nack("features not offered", REQ.SET_FEATURES, u64Payload(1n << 63n));
    nack("protocol features not offered", REQ.SET_PROTOCOL_FEATURES, u64Payload(1n << BigInt(PROTOCOL_F.MQ)));
    nack("kick payload with bits above 8", REQ.SET_VRING_KICK, u64Payload(1n | (1n << 12n)), [fe.kick[1]]);
    nack("kick with no fd (polling)", REQ.SET_VRING_KICK, u64Payload(1n | (1n << 8n)));
    nack("an unsupported request", REQ.SET_VRING_ENDIAN, statePayload(0, 1));
    nack(
      "overlapping regions",
      REQ.SET_MEM_TABLE,
      memoryPayload([
        { guestAddr: 0n, size: 0x200000n, userAddr: 0x1000000n, mmapOffset: 0n },
        { guestAddr: 0x100000n, size: 0x100000n, userAddr: 0x2000000n, mmapOffset: 0n },
      ]),
      [m.fd, m.fd],
    );
    nack(
      "regions overlapping in user addresses",
      REQ.SET_MEM_TABLE,
      memoryPayload([
        { guestAddr: 0n, size: 0x100000n, userAddr: 0x1000000n, mmapOffset: 0n },
        { guestAddr: 0x200000n, size: 0x100000n, userAddr: 0x10ff000n, mmapOffset: 0n },
      ]),
      [m.fd, m.fd],
    );
    nack(
      "a region past the end of its file",
      REQ.SET_MEM_TABLE,
      memoryPayload([{ guestAddr: 0n, size: 0x400000n, userAddr: 0n, mmapOffset: 0x200000n }]),
      [m.fd],
    );
    nack(
      "an empty region",
      REQ.SET_MEM_TABLE,
      memoryPayload([{ guestAddr: 0n, size: 0n, userAddr: 0n, mmapOffset: 0n }]),
      [m.fd],
    );
    nack(
      "a misaligned region",
      REQ.SET_MEM_TABLE,
      memoryPayload([{ guestAddr: 0x800n, size: 0x1000n, userAddr: 0n, mmapOffset: 0n }]),
      [m.fd],
    );
    nack(
      "regions spanning more than 4 GiB",
      REQ.SET_MEM_TABLE,
      memoryPayload([
        { guestAddr: 0n, size: 0x1000n, userAddr: 0n, mmapOffset: 0n },
        { guestAddr: 0x1_0000_0000n, size: 0x1000n, userAddr: 0x10000n, mmapOffset: 0n },
      ]),
      [m.fd, m.fd],
    );
    nack(
      "a guest address above 2^53",
      REQ.SET_MEM_TABLE,
      memoryPayload([{ guestAddr: 1n << 60n, size: 0x1000n, userAddr: 0n, mmapOffset: 0n }]),
      [m.fd],
    );
    const ev = native().eventfd(0, EFD_CLOEXEC);
    nack(
      "a region whose fd is an eventfd",
      REQ.SET_MEM_TABLE,
      memoryPayload([{ guestAddr: 0n, size: 0x1000n, userAddr: 0n, mmapOffset: 0n }]),
      [ev],
    );
    native().close(ev);
    // A ring whose used ring lies outside every region: refused when it starts (at the kick).
    assert.ok(fe.acked(REQ.SET_VRING_NUM, statePayload(1, c.size)));
    assert.ok(
      fe.acked(
        REQ.SET_VRING_ADDR,
        addrPayload({ index: 1, desc: m.user(c.descAddr), used: 0xdead_0000n, avail: m.user(c.driverAddr) }),
      ),
    );
    nack("a ring outside the regions", REQ.SET_VRING_KICK, u64Payload(1n), [fe.kick[1]]);
    // A descriptor table straddling the end of region 1.
    assert.ok(
      fe.acked(
        REQ.SET_VRING_ADDR,
        addrPayload({
          index: 1,
          desc: m.user(REGION1_GPA + 2 * 1024 * 1024 - 16),
          used: m.user(c.deviceAddr),
          avail: m.user(c.driverAddr),
        }),
      ),
    );
    nack("a descriptor table past its region", REQ.SET_VRING_KICK, u64Payload(1n), [fe.kick[1]]);
    // After all that, the real configuration still works.
    fe.startRing(0);
    fe.startRing(1);
    fe.transmit([frame(60, 1)]);
    channel.pump();
    assert.equal(counts.txFrames, 1);
    assert.equal(channel.closeReason, null);
    fe.close();
  });

  test("kick and call fds must be eventfds; a new memory table may not move a started ring", () => {
    const { channel, fe, counts } = negotiated();
    const m = fe.memory;
    const c = fe.tx.config;
    assert.ok(fe.acked(REQ.SET_VRING_NUM, statePayload(1, c.size)));
    assert.ok(
      fe.acked(
        REQ.SET_VRING_ADDR,
        addrPayload({
          index: 1,
          desc: m.user(c.descAddr),
          used: m.user(c.deviceAddr),
          avail: m.user(c.driverAddr),
        }),
      ),
    );
    assert.equal(fe.acked(REQ.SET_VRING_KICK, u64Payload(1n), [m.fd]), false, "a memfd as kick fd");
    assert.equal(fe.acked(REQ.SET_VRING_CALL, u64Payload(1n), [m.fd]), false, "a memfd as call fd");
    fe.startRing(0);
    fe.startRing(1);
    // The same table again is fine; one that moves region 1 elsewhere in user addresses is not.
    assert.ok(fe.acked(REQ.SET_MEM_TABLE, memoryPayload(m.regions), [m.fd, m.fd]));
    const moved = m.regions.map((r, i) => (i === 1 ? { ...r, userAddr: r.userAddr + 0x1000_0000n } : r));
    assert.equal(fe.acked(REQ.SET_MEM_TABLE, memoryPayload(moved), [m.fd, m.fd]), false);
    fe.transmit([frame(60, 1)]);
    channel.pump();
    assert.equal(counts.txFrames, 1);
    assert.equal(channel.closeReason, null);
    fe.close();
  });

  test("without REPLY_ACK a refused request closes the connection", () => {
    const { channel, fe } = rig("sink");
    fe.request(REQ.SET_OWNER);
    fe.request(REQ.SET_VRING_NUM, statePayload(7, 256));
    assert.equal(channel.closed, true);
    assert.match(channel.closeReason ?? "", /vring index 7/);
    fe.close();
  });

  test("a buffer in the gap between regions breaks the device, not the back-end", () => {
    const { channel, fe, counts } = negotiated();
    fe.startRing(0);
    fe.startRing(1);
    // Write a descriptor by hand that points at guest address 0x200000 (between region 0 and region 1).
    fe.tx.writeDesc(255, { addr: 0x20_0000, len: 64, flags: 0 });
    fe.tx.pushAvail(255);
    signalTx(fe);
    channel.pump();
    assert.equal(counts.txFrames, 0);
    assert.ok(
      channel.logged.some((l) => /needs reset/.test(l)),
      channel.logged.join("\n"),
    );
    assert.equal(channel.closeReason, null);
    fe.close();
  });

  test("the back-end closes every fd it was given when the connection ends", () => {
    const before = openFds();
    const { fe, channel } = negotiated();
    fe.startRing(0);
    fe.startRing(1);
    channel.pump();
    fe.close();
    assert.equal(openFds(), before);
  });

  test("fds handed with a refused request are closed", () => {
    const before = openFds();
    const { fe, channel } = negotiated();
    const m = fe.memory;
    for (let i = 0; i < 20; i++) {
      fe.acked(
        REQ.SET_MEM_TABLE,
        memoryPayload([{ guestAddr: 0n, size: 0x10_0000_0000n, userAddr: 0n, mmapOffset: 0n }]),
        [m.fd],
      );
    }
    assert.equal(channel.closed, false);
    fe.close();
    assert.equal(openFds(), before);
  });

  test("GET_FEATURES offers VERSION_1, the protocol features bit and packed rings, not RING_RESET", () => {
    const { fe } = rig("sink");
    const f = fe.getU64(REQ.GET_FEATURES);
    assert.ok(f & (1n << 32n));
    assert.ok(f & (1n << BigInt(VHOST_USER_F_PROTOCOL_FEATURES)));
    assert.equal(f & (1n << 34n), 1n << 34n);
    assert.equal(f & (1n << 40n), 0n);
    fe.close();
  });

  test("GET_FEATURES offers only the transport features a model says it serves (transportFeatures)", () => {
    const channel = new DirectChannel(() =>
      Object.assign(new VirtioNet({ backend: new SinkBackend(zeroCounts()), name: "net0", queueSize: 256 }), {
        transportFeatures: 1n << 32n,
      }),
    );
    const fe = new NetFrontend(channel);
    const f = fe.getU64(REQ.GET_FEATURES);
    assert.ok(f & (1n << 32n), "VERSION_1");
    // RING_INDIRECT_DESC (28), RING_EVENT_IDX (29) and RING_PACKED (34) are not the model's.
    for (const bit of [28n, 29n, 34n]) assert.equal(f & (1n << bit), 0n, `bit ${bit}`);
    assert.ok(f & (1n << BigInt(VHOST_USER_F_PROTOCOL_FEATURES)));
    fe.close();
  });
});

function signalTx(fe: NetFrontend): void {
  native().writeFd(fe.kick[1], new BigUint64Array([1n]));
}

describe("vhost-user back-end: memory regions one at a time (CONFIGURE_MEM_SLOTS)", () => {
  test("ADD_MEM_REG builds the table, traffic flows, REM_MEM_REG takes a region out; refusals keep the table; no fd leaks", () => {
    const before = openFds();
    const { channel, fe, counts } = rig("loopback");
    fe.request(REQ.SET_OWNER);
    const offered = fe.getU64(REQ.GET_FEATURES);
    const proto = fe.getU64(REQ.GET_PROTOCOL_FEATURES);
    assert.ok(proto & (1n << BigInt(PROTOCOL_F.CONFIGURE_MEM_SLOTS)), "CONFIGURE_MEM_SLOTS offered");
    fe.request(
      REQ.SET_PROTOCOL_FEATURES,
      u64Payload((1n << BigInt(PROTOCOL_F.REPLY_ACK)) | (1n << BigInt(PROTOCOL_F.CONFIGURE_MEM_SLOTS))),
    );
    assert.equal(fe.getU64(REQ.GET_MAX_MEM_SLOTS), 32n);
    const features = (1n << 32n) | (1n << BigInt(VHOST_USER_F_PROTOCOL_FEATURES));
    assert.ok(offered & features);
    assert.ok(fe.acked(REQ.SET_FEATURES, u64Payload(features)));
    const m = fe.memory;
    const [r0, r1] = m.regions as [RawMemRegion, RawMemRegion];
    // Region 1 holds the rings and buffers; region 0 is added after it.
    assert.ok(fe.acked(REQ.ADD_MEM_REG, regionPayload(r1), [m.fd]));
    assert.ok(fe.acked(REQ.ADD_MEM_REG, regionPayload(r0), [m.fd]));
    const refuse = (what: string, req: number, r: RawMemRegion, fds: number[]) => {
      assert.equal(fe.acked(req, regionPayload(r), fds), false, `${what} is refused`);
      assert.equal(channel.closed, false, `${what}: the connection stays open`);
    };
    refuse("a region overlapping another", REQ.ADD_MEM_REG, { ...r0, guestAddr: r0.guestAddr + 0x1000n }, [
      m.fd,
    ]);
    fe.startRing(0);
    fe.startRing(1);
    const roundTrip = (n: number, seed: number) => {
      fe.postReceiveBuffers(n);
      channel.pump();
      fe.transmit(Array.from({ length: n }, (_, i) => frame(100 + i, seed + i)));
      channel.pump();
      const got = fe.rx.usedChains();
      fe.tx.usedChains();
      assert.equal(got.length, n);
      for (const [i, u] of got.entries())
        assert.deepEqual(u.written.subarray(NET_HDR), frame(100 + i, seed + i));
    };
    roundTrip(10, 1);
    refuse("removing the region the started rings lie in", REQ.REM_MEM_REG, r1, []);
    refuse("removing a region that is not there", REQ.REM_MEM_REG, { ...r0, size: r0.size * 2n }, []);
    roundTrip(10, 20);
    // Region 0 goes (an fd sent with it is closed unused): the rings, in region 1, go on.
    assert.ok(fe.acked(REQ.REM_MEM_REG, regionPayload({ ...r0, mmapOffset: 0x5000n }), [m.fd]));
    roundTrip(10, 40);
    assert.equal(counts.rxFrames, 30);
    fe.close();
    assert.equal(openFds(), before, "every region fd kept for the table was closed with the connection");
  });
});

describe("vhost-user back-end: SEND_RARP (PROTOCOL_F_RARP)", () => {
  const RARP = 1n << BigInt(PROTOCOL_F.RARP);
  const REPLY_ACK = 1n << BigInt(PROTOCOL_F.REPLY_ACK);
  const macPayload = (mac: number[]) => {
    const p = new Uint8Array(8);
    p.set(mac);
    return p;
  };

  function rarpRig(withRarp: boolean) {
    const announced: Uint8Array[] = [];
    const counts = zeroCounts();
    const backend = new SinkBackend(counts);
    const channel = new DirectChannel(
      () => new VirtioNet({ backend, name: "net0", queueSize: 256 }),
      withRarp ? { rarp: (mac) => announced.push(mac) } : undefined,
    );
    return { announced, channel, fe: new NetFrontend(channel) };
  }

  test("offered only by a back-end that can announce; the MAC is the payload's first 6 bytes, in order", () => {
    const { announced, channel, fe } = rarpRig(true);
    assert.equal(fe.getU64(REQ.GET_PROTOCOL_FEATURES) & RARP, RARP);
    fe.setup();
    // Negotiated now (setup asked for REPLY_ACK only): the request is refused until then.
    assert.equal(fe.acked(REQ.SEND_RARP, macPayload([2, 0x76, 0x69, 1, 2, 3])), false);
    assert.equal(announced.length, 0);
    fe.request(REQ.SET_PROTOCOL_FEATURES, u64Payload(REPLY_ACK | RARP));
    assert.equal(fe.acked(REQ.SEND_RARP, macPayload([2, 0x76, 0x69, 1, 2, 3])), true);
    assert.deepEqual(
      announced.map((m) => Array.from(m)),
      [[2, 0x76, 0x69, 1, 2, 3]],
    );
    assert.equal(channel.backend.stats.rarps, 1);
    assert.equal(channel.closed, false);
    fe.close();

    const plain = rarpRig(false);
    assert.equal(plain.fe.getU64(REQ.GET_PROTOCOL_FEATURES) & RARP, 0n);
    plain.fe.close();
  });
});

test("PROTOCOL_F_MQ on a net back-end: GET_QUEUE_NUM answers queue pairs (one), and only once negotiated", () => {
  const MQ = 1n << BigInt(PROTOCOL_F.MQ);
  const open = () => {
    const counts = zeroCounts();
    const channel = new DirectChannel(
      () => new VirtioNet({ backend: new SinkBackend(counts), name: "net0", queueSize: 256 }),
      { mq: true },
    );
    return { channel, fe: new NetFrontend(channel) };
  };
  const a = open();
  assert.equal(a.fe.getU64(REQ.GET_PROTOCOL_FEATURES) & MQ, MQ);
  a.fe.setup();
  a.fe.request(REQ.SET_PROTOCOL_FEATURES, u64Payload((1n << BigInt(PROTOCOL_F.REPLY_ACK)) | MQ));
  assert.equal(a.fe.getU64(REQ.GET_QUEUE_NUM), 1n);
  assert.equal(a.channel.closed, false);
  a.fe.close();
  // Not negotiated: a request whose reply has a body cannot be NACKed, so the connection closes.
  const b = open();
  b.fe.setup();
  assert.throws(() => b.fe.getU64(REQ.GET_QUEUE_NUM));
  assert.equal(b.channel.closed, true);
  assert.match(b.channel.closeReason ?? "", /GET_QUEUE_NUM/);
  b.fe.close();
});

describe("vhost-user back-end: packed rings (VIRTIO_F_RING_PACKED)", () => {
  const PACKED = 1n << 34n;

  function packedRig(mode: "sink" | "loopback", queueSize = 256) {
    const counts = zeroCounts();
    const backend = mode === "sink" ? new SinkBackend(counts) : new LoopbackBackend(counts);
    const channel = new DirectChannel(() => new VirtioNet({ backend, name: "net0", queueSize: 256 }));
    const fe = new NetFrontend(channel, queueSize, "packed");
    return { counts, channel, fe };
  }

  test("offered with the net device; frames go out and come back in order over packed rings", () => {
    const { counts, channel, fe } = packedRig("loopback");
    assert.equal(fe.setup() & PACKED, PACKED);
    fe.startRing(0);
    fe.startRing(1);
    fe.postReceiveBuffers(64);
    channel.pump();
    const frames = Array.from({ length: 50 }, (_, i) => frame(60 + 7 * i, i));
    fe.transmit(frames);
    channel.pump();
    assert.ok(fe.waitCall(0, 1000), "the receive ring's call eventfd fired");
    assert.equal(fe.tx.usedChains().length, 50);
    const got = fe.rx.usedChains();
    assert.equal(got.length, 50);
    for (const [i, u] of got.entries()) assert.deepEqual(u.written.subarray(NET_HDR), frames[i]);
    assert.equal(counts.txFrames, 50);
    assert.equal(channel.backend.stats.packedRingStarts, 2);
    fe.close();
  });

  test("GET_VRING_BASE answers the ring's positions with their wrap counters; the ring resumes from them", () => {
    // A ring of 100 (not a power of 2: packed rings need not be) and 130 frames: the driver's wrap counter has
    // flipped once, so the next slot is 30 with wrap 0, in bit 15, and the same for the used side above.
    const { counts, channel, fe } = packedRig("sink", 100);
    fe.setup();
    fe.startRing(0);
    fe.startRing(1);
    for (let round = 0; round < 13; round++) {
      fe.transmit(Array.from({ length: 10 }, (_, i) => frame(64, round * 10 + i)));
      channel.pump();
      assert.equal(fe.tx.usedChains().length, 10);
    }
    const r = fe.request(REQ.GET_VRING_BASE, statePayload(1, 0));
    assert.ok(r !== null && r.payload.length === 8);
    const base = new DataView(r.payload.buffer, r.payload.byteOffset).getUint32(4, true);
    assert.equal(base, 30 | (0 << 15) | (30 << 16) | (0 << 31), `base 0x${base.toString(16)}`);
    // Started again from that base (a new kick fd starts it), the next frames are taken from slot 30 on.
    fe.startRing(1, { base });
    fe.transmit(Array.from({ length: 5 }, (_, i) => frame(64, 200 + i)));
    channel.pump();
    assert.equal(fe.tx.usedChains().length, 5);
    assert.equal(counts.txFrames, 135);
    // A base whose upper half names a used position apart from the available one (as Linux's vhost gives it, with
    // buffers still out): the ring is seeded with both, and stopped at once it answers both back unchanged.
    const apart = (5 | (1 << 15) | (3 << 16) | (1 << 31)) >>> 0;
    fe.request(REQ.GET_VRING_BASE, statePayload(0, 0));
    fe.startRing(0, { base: apart });
    const r0 = fe.request(REQ.GET_VRING_BASE, statePayload(0, 0));
    assert.ok(r0 !== null && r0.payload.length === 8);
    assert.equal(new DataView(r0.payload.buffer, r0.payload.byteOffset).getUint32(4, true), apart);
    fe.close();
  });

  test("a base naming a slot past the ring is refused when the ring starts; inflight back-ends offer no packed rings", () => {
    const { channel, fe } = packedRig("sink", 64);
    fe.setup();
    assert.throws(() => fe.startRing(1, { base: 0x8000 | 64 }), /refused/);
    assert.ok(
      channel.logged.some((l) => /names slot 64 of a packed ring of 64/.test(l)),
      channel.logged.join("\n"),
    );
    assert.equal(channel.closed, false);
    fe.close();

    const counts = zeroCounts();
    const blkLike = new DirectChannel(
      () => new VirtioNet({ backend: new SinkBackend(counts), name: "net0", queueSize: 256 }),
      { inflight: true },
    );
    const plain = new NetFrontend(blkLike);
    assert.equal(plain.getU64(REQ.GET_FEATURES) & PACKED, 0n);
    plain.close();
  });
});
