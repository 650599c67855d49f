import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, test } from "node:test";
import type { FrameInfo } from "../../src/switch/frame.ts";
import { type PortIo, Switch, SwitchError, type VlanConfig } from "../../src/switch/switch.ts";
import { allocationsDuring, HEAP_SLACK } from "../helpers/switch-frames.ts";

/** A port whose peer is an array: what was delivered, and how many flushes. */
class TestIo implements PortIo {
  readonly kind = "test";
  frames: Uint8Array[] = [];
  flushes = 0;
  room = Number.POSITIVE_INFINITY;
  connected = true;
  closed = false;
  deliver(frame: Uint8Array, _more: boolean): boolean | null {
    if (!this.connected) return null;
    if (this.frames.length >= this.room) return false;
    this.frames.push(frame.slice());
    return true;
  }
  /** Runs of unicast frames come here (as to a vhost-user port): peek, then take once placed, as VirtioNet does. */
  bursts = 0;
  deliverBurst(peek: () => Uint8Array | null, take: () => void): number | null {
    if (!this.connected) return null;
    this.bursts++;
    let n = 0;
    for (;;) {
      const f = peek();
      if (f === null || this.frames.length >= this.room) return n;
      this.frames.push(f.slice());
      take();
      n++;
    }
  }
  flush(): void {
    this.flushes++;
  }
  close(): void {
    this.closed = true;
  }
}

/** A port that takes frames one at a time only (as a TAP port). */
class FrameIo implements PortIo {
  readonly kind = "frame";
  frames: Uint8Array[] = [];
  room = Number.POSITIVE_INFINITY;
  deliver(frame: Uint8Array, _more: boolean): boolean | null {
    if (this.frames.length >= this.room) return false;
    this.frames.push(frame.slice());
    return true;
  }
  flush(): void {}
  close(): void {}
}

function mac(n: number): number[] {
  return [0x52, 0x54, 0, 0, (n >> 8) & 0xff, n & 0xff];
}
const BCAST = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff];

function frame(
  dst: number[],
  src: number[],
  opts: { vlan?: number; pcp?: number; len?: number; fill?: number } = {},
) {
  const head = [...dst, ...src];
  if (opts.vlan !== undefined)
    head.push(0x81, 0x00, ((opts.pcp ?? 0) << 5) | (opts.vlan >> 8), opts.vlan & 0xff);
  head.push(0x08, 0x00);
  const f = new Uint8Array(Math.max(opts.len ?? 60, head.length));
  f.set(head);
  f.fill(opts.fill ?? 0xab, head.length);
  return f;
}

function rig(ports: Array<[string, VlanConfig?]>, now = { t: 0 }) {
  const sw = new Switch({ now: () => now.t, batchFrames: 8 });
  const io: Record<string, TestIo> = {};
  for (const [name, vlan] of ports) {
    io[name] = new TestIo();
    sw.addPort(name, io[name] as TestIo, vlan);
  }
  const send = (name: string, f: Uint8Array) => {
    const p = sw.port(name);
    assert.ok(p);
    sw.receive(p.index, f, 0, f.length);
  };
  return { sw, io, send, now };
}

describe("vireo switch: learning and flooding", () => {
  test("unknown unicast and broadcast flood to every other port; learned addresses go to one port", () => {
    const { sw, io, send } = rig([["a"], ["b"], ["c"]]);
    send("a", frame(mac(2), mac(1)));
    sw.endBatch();
    assert.equal((io.a as TestIo).frames.length, 0, "never back to the source");
    assert.equal((io.b as TestIo).frames.length, 1);
    assert.equal((io.c as TestIo).frames.length, 1);
    send("b", frame(mac(1), mac(2)));
    sw.endBatch();
    assert.equal((io.a as TestIo).frames.length, 1, "learned: a only");
    assert.equal((io.c as TestIo).frames.length, 1);
    send("c", frame(BCAST, mac(3)));
    sw.endBatch();
    assert.equal((io.a as TestIo).frames.length, 2);
    assert.equal((io.b as TestIo).frames.length, 2);
    // Multicast (group bit) floods too, and a group source address is never learned.
    send("a", frame([0x01, 0x00, 0x5e, 0, 0, 1], [0x01, 0, 0, 0, 0, 9]));
    sw.endBatch();
    assert.equal((io.b as TestIo).frames.length, 3);
    assert.equal((io.c as TestIo).frames.length, 2);
    assert.equal(sw.macs.size, 3);
  });

  test("a frame is delivered byte for byte, and the source's later rewrite of its buffer does not change it", () => {
    const { sw, io, send } = rig([["a"], ["b"]]);
    const f = frame(mac(2), mac(1), { len: 1514, fill: 0x11 });
    const expect = f.slice();
    send("a", f);
    f.fill(0x99); // the guest rewrites its buffer before the batch is forwarded
    sw.endBatch();
    assert.deepEqual((io.b as TestIo).frames[0], expect);
  });

  test("short frames are staged byte for byte from any offset of any source array (word and byte copies)", () => {
    const { sw, io } = rig([["a"], ["b"]]);
    const a = sw.port("a");
    assert.ok(a);
    // Source memories whose arrays start at each offset mod 4 of a SharedArrayBuffer (guest memory is one), and
    // frames at each offset mod 4 inside them, of every length from the minimum up to 64 and a few past it.
    const sab = new SharedArrayBuffer(64 * 1024);
    const sent: Uint8Array[] = [];
    let seed = 1;
    for (let base = 0; base < 4; base++) {
      const mem = new Uint8Array(sab, base, sab.byteLength - 8);
      for (let off = 0; off < 4; off++) {
        for (const len of [14, 15, 16, 17, 60, 61, 62, 63, 64, 65, 67]) {
          const f = frame(mac(2), mac(1), { len });
          for (let i = 14; i < len; i++) f[i] = (seed * 13 + i * 7) & 0xff;
          seed++;
          const at = 128 + off;
          mem.fill(0xee, at - 8, at + len + 8);
          mem.set(f, at);
          sw.receive(a.index, mem, at, len);
          mem.fill(0x55, at, at + len); // rewritten after staging: the copy must already be taken
          sent.push(f);
          sw.endBatch();
        }
      }
    }
    const got = (io.b as TestIo).frames;
    assert.equal(got.length, sent.length);
    for (const [k, f] of sent.entries()) assert.deepEqual(got[k], f, `frame ${k} (length ${f.length})`);
  });

  test("a batch is flushed once per destination, and a full batch forwards before the turn ends", () => {
    const { sw, io, send } = rig([["a"], ["b"], ["c"]]);
    send("b", frame(BCAST, mac(2)));
    send("c", frame(BCAST, mac(3)));
    sw.endBatch();
    const before = { b: (io.b as TestIo).flushes, c: (io.c as TestIo).flushes };
    for (let i = 0; i < 5; i++) send("a", frame(mac(2), mac(1)));
    for (let i = 0; i < 2; i++) send("a", frame(mac(3), mac(1)));
    assert.equal((io.b as TestIo).frames.length, 1, "staged, not yet forwarded");
    sw.endBatch();
    assert.equal((io.b as TestIo).frames.length, 6);
    assert.equal((io.c as TestIo).frames.length, 3);
    assert.equal((io.b as TestIo).flushes, (before.b as number) + 1);
    assert.equal((io.c as TestIo).flushes, (before.c as number) + 1);
    for (let i = 0; i < 8; i++) send("a", frame(mac(2), mac(1)));
    assert.equal((io.b as TestIo).frames.length, 14, "batchFrames (8) reached: forwarded at once");
  });

  test("a full destination drops and counts; nothing queues", () => {
    const { sw, io, send } = rig([["a"], ["b"]]);
    (io.b as TestIo).room = 3;
    for (let i = 0; i < 5; i++) send("a", frame(BCAST, mac(1)));
    sw.endBatch();
    assert.equal((io.b as TestIo).frames.length, 3);
    const b = sw.port("b")?.counters;
    assert.equal(b?.drops.noBuffers, 2);
    assert.equal(b?.txFrames, 3);
    (io.b as TestIo).room = 100;
    sw.endBatch();
    assert.equal((io.b as TestIo).frames.length, 3, "the dropped frames are gone");
  });

  test("runts and oversized frames are dropped as malformed", () => {
    const { sw, send } = rig([["a"], ["b"]]);
    send("a", new Uint8Array(13));
    send("a", new Uint8Array(65535 + 19));
    send("a", frame(mac(2), mac(1), { vlan: 5 }).subarray(0, 17));
    sw.endBatch();
    const a = sw.port("a")?.counters;
    assert.equal(a?.drops.malformed, 3);
    assert.equal(sw.port("b")?.counters.txFrames, 0);
  });

  test("entries age out: after ageMs the station is unknown again and its frames flood", () => {
    const now = { t: 0 };
    const sw = new Switch({ now: () => now.t, macTable: { ageMs: 1000 } });
    const io = [new TestIo(), new TestIo(), new TestIo()];
    for (const [i, x] of io.entries()) sw.addPort(`p${i}`, x);
    sw.receive(1, frame(BCAST, mac(2)), 0, 60);
    sw.endBatch();
    sw.receive(0, frame(mac(2), mac(1)), 0, 60);
    sw.endBatch();
    assert.equal(io[2]?.frames.length, 1, "only the broadcast");
    now.t = 1500;
    sw.receive(0, frame(mac(2), mac(1)), 0, 60);
    sw.endBatch();
    assert.equal(io[2]?.frames.length, 2, "aged out: flooded");
    assert.equal(sw.macs.entries(now.t).length, 1, "only mac(1), refreshed at 1500");
  });
});

describe("vireo switch: VLANs", () => {
  test("no frame crosses VLANs, tags are added for trunks and stripped for access ports", () => {
    const { sw, io, send } = rig([
      ["a10", { mode: "access", vlan: 10 }],
      ["b10", { mode: "access", vlan: 10 }],
      ["c20", { mode: "access", vlan: 20 }],
      ["t", { mode: "trunk", vlans: [10, 20] }],
    ]);
    send("a10", frame(BCAST, mac(1), { pcp: 0 }));
    sw.endBatch();
    assert.equal((io.b10 as TestIo).frames.length, 1);
    assert.equal((io.c20 as TestIo).frames.length, 0, "VLAN 20 sees nothing of VLAN 10");
    const tagged = (io.t as TestIo).frames[0] as Uint8Array;
    assert.deepEqual(
      [...tagged.subarray(12, 16)],
      [0x81, 0x00, 0x00, 10],
      "trunk gets it tagged with VLAN 10",
    );
    assert.equal(tagged.length, 64);
    assert.deepEqual(tagged.subarray(16), ((io.b10 as TestIo).frames[0] as Uint8Array).subarray(12));
    // From the trunk, tagged 20, priority 5: only c20 gets it, untagged.
    send("t", frame(BCAST, mac(9), { vlan: 20, pcp: 5 }));
    sw.endBatch();
    assert.equal((io.c20 as TestIo).frames.length, 1);
    assert.equal((io.a10 as TestIo).frames.length, 0);
    assert.deepEqual([...((io.c20 as TestIo).frames[0] as Uint8Array).subarray(12, 14)], [0x08, 0x00]);
    assert.equal((io.c20 as TestIo).frames[0]?.length, 56, "60 bytes with the tag, 56 without");
    // A VLAN the trunk does not carry, and an untagged frame on a trunk without a native VLAN: dropped.
    send("t", frame(BCAST, mac(9), { vlan: 30 }));
    send("t", frame(BCAST, mac(9)));
    sw.endBatch();
    assert.equal(sw.port("t")?.counters.drops.vlan, 2);
    // An access port's peer cannot pick another VLAN with a tag (VLAN hopping).
    send("a10", frame(BCAST, mac(1), { vlan: 20 }));
    sw.endBatch();
    assert.equal((io.c20 as TestIo).frames.length, 1);
    assert.equal(sw.port("a10")?.counters.drops.vlan, 1);
    // A priority tag (VID 0) on an access port is its own VLAN.
    send("a10", frame(BCAST, mac(1), { vlan: 0, pcp: 3 }));
    sw.endBatch();
    assert.equal((io.b10 as TestIo).frames.length, 2);
    assert.deepEqual(
      [...((io.t as TestIo).frames.at(-1) as Uint8Array).subarray(12, 16)],
      [0x81, 0x00, 0x60, 10],
    );
  });

  test("the same MAC in two VLANs is two stations", () => {
    const { sw, io, send } = rig([
      ["a10", { mode: "access", vlan: 10 }],
      ["a20", { mode: "access", vlan: 20 }],
      ["t", { mode: "trunk", vlans: [10, 20] }],
    ]);
    send("a10", frame(BCAST, mac(1)));
    send("a20", frame(BCAST, mac(1)));
    sw.endBatch();
    send("t", frame(mac(1), mac(7), { vlan: 20 }));
    sw.endBatch();
    assert.equal((io.a20 as TestIo).frames.length, 1);
    assert.equal((io.a10 as TestIo).frames.length, 0);
  });

  test("bad VLAN ids are refused", () => {
    const sw = new Switch();
    assert.throws(() => sw.addPort("x", new TestIo(), { mode: "access", vlan: 4095 }), SwitchError);
    assert.throws(() => sw.addPort("y", new TestIo(), { mode: "trunk", vlans: [0] }), SwitchError);
  });
});

describe("vireo switch: ports and interposition hooks", () => {
  test("a detached port gets nothing more, even with frames staged for it, and its stations are forgotten", () => {
    const { sw, io, send } = rig([["a"], ["b"], ["c"]]);
    send("b", frame(BCAST, mac(2)));
    sw.endBatch();
    send("a", frame(mac(2), mac(1)));
    const removed = sw.removePort("b");
    assert.equal((io.b as TestIo).frames.length, 1, "the staged frame went out before the detach");
    assert.ok((io.b as TestIo).closed);
    send("a", frame(mac(2), mac(1)));
    sw.endBatch();
    assert.equal((io.b as TestIo).frames.length, 1);
    assert.equal((io.c as TestIo).frames.length, 2, "unknown again: flooded to the ports left");
    assert.equal(sw.macs.lookup(1, 0x5254, 2, 0), -1);
    assert.equal(removed.name, "b");
    assert.throws(() => sw.removePort("b"), /no port b/);
  });

  test("a unicast frame to a port whose peer is gone counts noConnection; floods do not", () => {
    const { sw, io, send } = rig([["a"], ["b"]]);
    send("b", frame(BCAST, mac(2)));
    sw.endBatch();
    (io.b as TestIo).connected = false;
    send("a", frame(mac(2), mac(1)));
    send("a", frame(BCAST, mac(1)));
    sw.endBatch();
    assert.equal(sw.port("b")?.counters.drops.noConnection, 1);
  });

  test("ingress and egress filters see the parsed frame with its VLAN; rate limits and capture are applied", () => {
    const { sw, io, send } = rig([
      ["a", { mode: "access", vlan: 7 }],
      ["b", { mode: "access", vlan: 7 }],
    ]);
    const seen: Array<[number, number]> = [];
    const a = sw.port("a");
    const b = sw.port("b");
    assert.ok(a && b);
    a.ingress.filter = {
      check: (info: FrameInfo) => {
        seen.push([info.srcLo & 0xffff, info.vlan]);
        return (info.srcLo & 0xffff) === 1;
      },
    };
    let budget = 2;
    b.egress.rate = { admit: () => budget-- > 0 };
    const captured: number[] = [];
    a.capture = { write: (_b, _o, len) => captured.push(len), flush() {}, close() {} };
    send("a", frame(BCAST, mac(1)));
    send("a", frame(BCAST, mac(66)));
    send("a", frame(BCAST, mac(1), { len: 100 }));
    send("a", frame(BCAST, mac(1), { len: 70 }));
    sw.endBatch();
    assert.deepEqual(seen, [
      [1, 7],
      [66, 7],
      [1, 7],
      [1, 7],
    ]);
    assert.equal(a.counters.drops.filter, 1);
    assert.equal((io.b as TestIo).frames.length, 2);
    assert.equal(b.counters.drops.rateLimit, 1);
    assert.deepEqual(captured, [60, 60, 100, 70], "ingress capture sees every frame as received");
  });

  test("mirroring copies what a port receives and is sent to the mirror port", () => {
    const { sw, io, send } = rig([["a"], ["b"], ["m", { mode: "access", vlan: 99 }]]);
    const a = sw.port("a");
    assert.ok(a);
    a.mirrorTo = sw.port("m")?.index as number;
    send("a", frame(BCAST, mac(1)));
    send("b", frame(mac(1), mac(2)));
    sw.endBatch();
    assert.equal((io.m as TestIo).frames.length, 2, "one in, one out");
    assert.equal((io.b as TestIo).frames.length, 1);
  });
});

/** CPU time this thread has run, ns (/proc/thread-self/schedstat): load from other processes does not count. */
function threadCpuNs(): number {
  return Number(readFileSync("/proc/thread-self/schedstat", "utf8").split(" ")[0]);
}

describe("vireo switch: a random-MAC flood", () => {
  test("the table stays bounded, a well-behaved pair keeps unicast forwarding, and its rate is measured", (t) => {
    const sw = new Switch({ macTable: { capacity: 4096, perPortLimit: 256 } });
    const io = [new TestIo(), new TestIo(), new TestIo()];
    // The flooder's peer takes nothing (its own flood comes back to nobody); a and b count frames only.
    for (const x of io)
      x.deliver = function (this: TestIo) {
        this.frames.length++;
        return true;
      };
    sw.addPort("a", io[0] as TestIo);
    sw.addPort("b", io[1] as TestIo);
    sw.addPort("flooder", io[2] as TestIo);
    const fa = frame(mac(2), mac(1));
    const fb = frame(mac(1), mac(2));
    sw.receive(1, fb, 0, fb.length);
    sw.receive(0, fa, 0, fa.length);
    sw.endBatch();
    const pairRate = (rounds: number, flood: boolean) => {
      const f = frame(BCAST, [0x02, 0, 0, 0, 0, 0]);
      let x = 1;
      let cpu = 0;
      for (let r = 0; r < rounds; r++) {
        if (flood) {
          for (let k = 0; k < 256; k++) {
            x = (Math.imul(x, 1664525) + 1013904223) | 0;
            f[8] = x & 0xff;
            f[9] = (x >>> 8) & 0xff;
            f[10] = (x >>> 16) & 0xff;
            f[11] = x >>> 24;
            f[0] = 0x02; // unicast to random unknown stations: flooded
            sw.receive(2, f, 0, f.length);
          }
          sw.endBatch();
        }
        const t0 = threadCpuNs();
        for (let k = 0; k < 256; k++) sw.receive(0, fa, 0, fa.length);
        sw.endBatch();
        cpu += threadCpuNs() - t0;
      }
      return (rounds * 256) / (cpu / 1e9);
    };
    const before = io[1]?.frames.length as number;
    const quiet = pairRate(400, false);
    const aBefore = io[2]?.frames.length as number;
    const during = pairRate(400, true);
    // Every frame of the pair reached b and none was flooded to the flooder's port: b's entry survived the flood.
    // b got the pair's frames (both runs) and the flood's (flooded to every port but its source).
    assert.equal((io[1]?.frames.length as number) - before, 2 * 400 * 256 + 400 * 256);
    assert.equal(sw.port("flooder")?.counters.txFrames, aBefore, "the pair's frames never flooded");
    assert.ok(sw.macs.size <= 256 + 2, `table ${sw.macs.size} entries`);
    assert.equal(sw.macs.portEntries(2), 256);
    assert.ok(sw.macs.stats.refusedPortLimit > 100_000);
    t.diagnostic(
      `pair forwarding ${(quiet / 1e6).toFixed(2)} Mpps quiet, ${(during / 1e6).toFixed(2)} Mpps during a ` +
        `${400 * 256} random-MAC flood (thread CPU); table ${sw.macs.size} of ${sw.macs.capacity}`,
    );
    // Generous: the pair's own work per frame does not grow with the flood (only the flood's own frames cost).
    assert.ok(
      during > quiet / 3,
      `pair rate ${during.toFixed(0)}/s during the flood vs ${quiet.toFixed(0)}/s`,
    );
  });
});

describe("vireo switch: runs of unicast frames go to a port in one burst", () => {
  test("a batch for one learned port is one burst, in order; a full peer drops the rest as noBuffers", () => {
    const { sw, io, send } = rig([["a"], ["b"]]);
    send("a", frame(mac(2), mac(1))); // a learns mac(1)
    sw.endBatch();
    const b = io.b as TestIo;
    const a = io.a as TestIo;
    const before = a.bursts;
    for (let k = 0; k < 5; k++) send("b", frame(mac(1), mac(2), { fill: k }));
    sw.endBatch();
    assert.equal(a.bursts - before, 1, "one burst for the run");
    assert.deepEqual(
      a.frames.slice(-5).map((f) => f[20]),
      [0, 1, 2, 3, 4],
    );
    a.room = a.frames.length + 2;
    for (let k = 0; k < 5; k++) send("b", frame(mac(1), mac(2), { fill: 10 + k }));
    sw.endBatch();
    assert.deepEqual(
      a.frames.slice(-2).map((f) => f[20]),
      [10, 11],
    );
    const pa = sw.port("a");
    assert.ok(pa);
    assert.equal(pa.counters.drops.noBuffers, 3, "the refused frame and the two after it");
    assert.equal(pa.counters.txFrames, 5 + 2 + 0, "delivered frames counted once each");
    assert.equal(b.frames.length, 1, "only the learning frame, flooded");
  });

  test("an egress filter inside a run drops only what it denies; a disconnected peer counts noConnection", () => {
    const { sw, io, send } = rig([["a"], ["b"]]);
    send("a", frame(mac(2), mac(1))); // a learns mac(1)
    sw.endBatch();
    const pa = sw.port("a");
    assert.ok(pa);
    // Deny frames whose 21st byte is odd (a filter that sees the frame through its parsed info is in
    // switch-filter; here one that looks at the length is enough): deny the 61-byte ones.
    pa.egress.filter = { check: (info: FrameInfo) => info.length !== 61 };
    const a = io.a as TestIo;
    const had = a.frames.length;
    for (const len of [60, 61, 62, 61, 63]) send("b", frame(mac(1), mac(2), { len }));
    sw.endBatch();
    assert.deepEqual(
      a.frames.slice(had).map((f) => f.length),
      [60, 62, 63],
    );
    assert.equal(pa.counters.drops.filter, 2);
    pa.egress.filter = null;
    a.connected = false;
    for (let k = 0; k < 3; k++) send("b", frame(mac(1), mac(2)));
    sw.endBatch();
    assert.equal(pa.counters.drops.noConnection, 3);
  });

  test("a port without bursts gets the same frames one by one", () => {
    const sw = new Switch({ now: () => 0, batchFrames: 8 });
    const a = new FrameIo();
    const b = new FrameIo();
    sw.addPort("a", a);
    sw.addPort("b", b);
    const pb = sw.port("b");
    const pa = sw.port("a");
    assert.ok(pa && pb);
    const f0 = frame(mac(2), mac(1)); // a learns mac(1)
    sw.receive(pa.index, f0, 0, f0.length);
    sw.endBatch();
    a.room = a.frames.length + 2;
    for (let k = 0; k < 4; k++) {
      const f = frame(mac(1), mac(2), { fill: k });
      sw.receive(pb.index, f, 0, f.length);
    }
    sw.endBatch();
    assert.deepEqual(
      a.frames.slice(-2).map((f) => f[20]),
      [0, 1],
    );
    assert.equal(pa.counters.drops.noBuffers, 2);
  });
});

describe("vireo switch: nothing allocated per frame", () => {
  /** A peer that checks each frame's sequence byte (offset 14) in place and keeps nothing. */
  class CheckingIo implements PortIo {
    readonly kind = "checking";
    next = 0;
    wrong = 0;
    got = 0;
    constructor(readonly bursts: boolean) {
      if (!bursts) this.deliverBurst = undefined;
    }
    private check(f: Uint8Array): void {
      if (f[14] !== (this.next & 0xff) || f.length !== 64) this.wrong++;
      this.next++;
      this.got++;
    }
    deliver(f: Uint8Array): boolean {
      this.check(f);
      return true;
    }
    deliverBurst?: PortIo["deliverBurst"] = (peek, take) => {
      let n = 0;
      for (let f = peek(); f !== null; f = peek()) {
        this.check(f);
        take();
        n++;
      }
      return n;
    };
    flush(): void {}
    close(): void {}
  }

  for (const bursts of [true, false]) {
    test(`frames of one size to a port ${bursts ? "taking bursts" : "taking frames one by one"}: no allocation, each view its frame`, async () => {
      const sw = new Switch({ batchFrames: 32 });
      const a = sw.addPort("a", new CheckingIo(bursts));
      const bio = new CheckingIo(bursts);
      const b = sw.addPort("b", bio);
      // b's station is learned first, so that a's frames go to b alone.
      const hello = frame(mac(1), mac(2), { len: 64 });
      sw.receive(b.index, hello, 0, hello.length);
      sw.endBatch();
      const f = frame(mac(2), mac(1), { len: 64 });
      let seq = 0;
      const loop = (i: number) => {
        f[14] = seq++ & 0xff;
        sw.receive(a.index, f, 0, f.length);
        if ((i & 31) === 31) sw.endBatch();
      };
      // The first clean of several measurements (allocationsDuring): an allocation per frame shows in each.
      const m = await allocationsDuring(loop);
      sw.endBatch();
      assert.equal(bio.wrong, 0, "every frame delivered was the one sent, in order");
      assert.equal(bio.got, seq);
      assert.equal(m.gcs, 0, "no garbage collection during the loop");
      assert.ok(m.heapGrowth < HEAP_SLACK, `heap grew ${m.heapGrowth} bytes`);
    });
  }
});
