/**
 * Issue 13: the hostile-driver fuzzer (test/fuzz/) in the unit suite: a fixed seed and a bounded number of cases
 * for every device family (virtio-blk, -net, -console, -rng through virtio-pci, the transport's registers, the
 * e1000), each case failing on an exception out of a device, an internal error it contained, an access outside
 * guest RAM, a slice over budget, a slow call or a device that keeps owing work. The long campaign is
 * `npm run fuzz` (docs/fuzzing.md). The detectors themselves are tested first, on planted bugs.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import type { VirtioContext } from "../../src/devices/virtio/device.ts";
import { IN_PROGRESS } from "../../src/devices/virtio/work-budget.ts";
import { GuestMemoryError } from "../../src/errors.ts";
import { e1000Family } from "../fuzz/e1000.ts";
import {
  CANARY_BYTES,
  type Family,
  type FamilyReport,
  GuardedRam,
  mergeReports,
  Probe,
  Rng,
  runCampaign,
  threadCpuUs,
} from "../fuzz/engine.ts";
import { type VirtioCase, virtioFamily } from "../fuzz/virtio.ts";

const SEED = 20261202;

/** Busy for `ms` of this thread's CPU time (not wall time: on a busy machine the thread is descheduled). */
function spinCpu(ms: number): void {
  const end = threadCpuUs() + ms * 1000;
  while (threadCpuUs() < end) {}
}

function failuresOf(r: FamilyReport): string {
  return r.failing
    .slice(0, 5)
    .map(
      (f) => `seed 0x${f.seed.toString(16)}: ${f.failures.map((x) => `${x.kind}: ${x.detail}`).join("; ")}`,
    )
    .join("\n");
}

/** Runs `cases` cases of a family; returns the kinds of failure seen (a planted bug must show up in them). */
function kinds(family: Family, cases: number, slowMs = 50): Set<string> {
  const r = runCampaign(family, { seed: SEED, cases, slowMs, confirmTop: 0, maxFailures: 3 });
  return new Set(Object.keys(r.failuresByKind));
}

describe("fuzzer machinery", () => {
  test("the generator replays from its seed", () => {
    const a = new Rng(42);
    const b = new Rng(42);
    const xs = Array.from({ length: 100 }, () => a.u32());
    assert.deepEqual(
      Array.from({ length: 100 }, () => b.u32()),
      xs,
    );
    assert.ok(new Set(xs).size > 95);
    const r = new Rng(7);
    for (let i = 0; i < 1000; i++) {
      const v = r.below(10);
      assert.ok(v >= 0 && v < 10 && Number.isInteger(v));
    }
  });

  test("guarded RAM: the view sits between canaries; refused accesses are counted, unrefused ones caught", () => {
    const ram = new GuardedRam(64 * 1024);
    const { device } = ram.open(0x10000);
    device.writeU32(0x10000, 0xdeadbeef);
    assert.equal(ram.raw[CANARY_BYTES], 0xef);
    assert.equal(device.readU32(0x10000), 0xdeadbeef);
    assert.throws(() => device.readU8(0x10000 + 64 * 1024), GuestMemoryError);
    assert.throws(() => device.write(0xfff0, new Uint8Array(32)), GuestMemoryError);
    assert.throws(() => device.slice(0x10000, 64 * 1024 + 1), GuestMemoryError);
    assert.equal(device.rejected, 3);
    assert.deepEqual(device.escapes, []);
    assert.deepEqual(ram.checkCanaries(), []);
    // A GuestMemory whose bounds are wrong (planted: it believes RAM is 16 bytes longer) lets an access past RAM
    // through: an escape. (Its typed-array views still end at RAM, so the byte goes nowhere.)
    (device as unknown as { size: number }).size += 16;
    device.writeU8(0x10000 + 64 * 1024 + 3, 1);
    assert.equal(device.escapes.length, 1);
    assert.deepEqual(ram.checkCanaries(), []);
    // A raw write through the whole buffer lands on a canary.
    new Uint8Array(ram.sab)[CANARY_BYTES + 64 * 1024 + 3] = 1;
    new Uint8Array(ram.sab)[CANARY_BYTES - 1] = 1;
    assert.deepEqual(ram.checkCanaries().sort(), [-1, 64 * 1024 + 3]);
    assert.deepEqual(ram.checkCanaries(), [], "restored");
  });

  test("the probe catches what escapes and times calls; nested calls are timed with the outer one", () => {
    const p = new Probe({ slowUs: 5000, cpu: true, gcBefore: new Set() });
    assert.equal(
      p.call("ok", () => 7),
      7,
    );
    p.call("outer", () => {
      p.call("inner", () => {
        throw new TypeError("boom");
      });
    });
    p.call("busy", () => {
      spinCpu(20);
    });
    assert.equal(p.calls, 3);
    assert.deepEqual(
      p.failures.map((f) => f.kind),
      ["exception"],
    );
    assert.match(p.failures[0]?.detail ?? "", /inner threw TypeError: boom/);
    assert.equal(p.slowestCall, "busy");
    assert.deepEqual(p.slowCalls, [2], "without a gc before it, a slow call is only a candidate");
    assert.equal(p.slowCandidate, true);
    const q = new Probe({ slowUs: 5000, cpu: true, gcBefore: new Set([0]) });
    q.call("busy", () => {
      spinCpu(20);
    });
    assert.deepEqual(
      q.failures.map((f) => f.kind),
      ["slow"],
    );
  });

  test("merging the reports of a campaign run in parts", () => {
    const fam = virtioFamily("rng");
    const a = runCampaign(fam, { seed: 3, cases: 5, slowMs: 50, confirmTop: 0 });
    const b = runCampaign(fam, { seed: 3, cases: 5, slowMs: 50, confirmTop: 0, startIndex: 5 });
    const [m] = mergeReports([a, b]);
    assert.equal(m?.cases, 10);
    assert.equal(m?.events.chains, (a.events.chains ?? 0) + (b.events.chains ?? 0));
  });
});

/** A model's private context (the planted bugs reach into it, as a buggy model would). */
function ctxOf(c: VirtioCase): VirtioContext {
  return (c.m.model as unknown as { ctx: VirtioContext }).ctx;
}

describe("the detectors catch planted bugs", () => {
  test("an exception out of a register access", () => {
    const fam = virtioFamily("rng", {
      plant: (c) => {
        const bar = c.transport.bar;
        const write = bar.write.bind(bar);
        (bar as { write: typeof write }).write = (off, data) => {
          if (off === 0x14 && data[0] === 0) throw new RangeError("planted");
          write(off, data);
        };
      },
    });
    assert.ok(kinds(fam, 3).has("exception"));
  });

  test("an internal error the device contained (a TypeError turned into DEVICE_NEEDS_RESET)", () => {
    const fam = virtioFamily("rng", {
      plant: (c) => {
        c.m.model.queueNotified = () => {
          (undefined as unknown as { x: number }).x;
        };
      },
    });
    assert.ok(kinds(fam, 10).has("internal"));
  });

  test("a raw write past guest RAM (canary) and an out-of-range access GuestMemory let through", () => {
    const canary = virtioFamily("rng", {
      plant: (c) => {
        c.m.model.queueNotified = () => {
          const b = c.mem.bytes;
          new Uint8Array(b.buffer)[b.byteOffset + b.length + 100] = 0x77;
        };
      },
    });
    assert.ok(kinds(canary, 10).has("canary"));
    const letThrough = virtioFamily("rng", {
      plant: (c) => {
        (c.mem as unknown as { size: number }).size += 4096;
        // A slice past RAM: the typed array clamps it silently, so nothing throws (the typed accessors' views
        // would throw a RangeError instead, an internal error).
        c.m.model.queueNotified = () => {
          c.mem.slice(c.mem.base + c.ram.size - 4, 8);
        };
      },
    });
    assert.ok(kinds(letThrough, 10).has("escape"));
  });

  test("a slice over budget, a device that owes work forever, a slow notification", () => {
    const overBudget = virtioFamily("rng", {
      plant: (c) => {
        c.m.model.queueNotified = (q) =>
          ctxOf(c).drain(q, (_chain, work) => {
            work.spend(8 << 20);
            return 0;
          });
      },
    });
    assert.ok(kinds(overBudget, 20).has("budget"));
    const forever = virtioFamily("rng", {
      limits: { maxDrainSlices: 50 },
      plant: (c) => {
        c.m.model.queueNotified = (q) => ctxOf(c).drain(q, () => IN_PROGRESS);
      },
    });
    assert.ok(kinds(forever, 20).has("hang"));
    const slow = virtioFamily("rng", {
      plant: (c) => {
        let spun = false;
        c.m.model.queueNotified = () => {
          if (!spun) spinCpu(30);
          spun = true;
        };
      },
    });
    assert.ok(kinds(slow, 3, 10).has("slow"));
  });

  test("e1000: an exception out of a register access, an internal error", () => {
    const throwing = e1000Family({
      plant: (c) => {
        const read = c.dev.read.bind(c.dev);
        c.dev.read = (off, data) => {
          if (off === 0xc0) throw new Error("planted");
          read(off, data);
        };
      },
    });
    assert.ok(kinds(throwing, 10).has("exception"));
    const internal = e1000Family({
      plant: (c) => {
        (c.mem as unknown as { read: unknown }).read = () => {
          throw new TypeError("planted");
        };
      },
    });
    assert.ok(kinds(internal, 5).has("internal"));
  });
});

describe("hostile drivers, fixed seed", () => {
  const families: Array<[Family, number]> = [
    [virtioFamily("blk"), 150],
    [virtioFamily("net"), 150],
    [virtioFamily("console"), 150],
    [virtioFamily("rng"), 150],
    [virtioFamily("pci"), 150],
    [e1000Family(), 80],
  ];
  for (const [family, cases] of families) {
    test(`${family.name}: ${cases} cases, no failure`, () => {
      const r = runCampaign(family, { seed: SEED, cases, slowMs: 50, confirmTop: 0 });
      assert.equal(r.cases, cases);
      assert.equal(
        r.failures,
        0,
        `failing cases (replay with npm run fuzz -- --family ${family.name} --replay SEED):\n${failuresOf(r)}`,
      );
      // The cases reach deep: work is served, and both healthy and broken-driver outcomes occur.
      if (family.name === "e1000") {
        assert.ok((r.events["tx frames"] ?? 0) > 100, JSON.stringify(r.events));
        assert.ok((r.events["rx frames"] ?? 0) > 10, JSON.stringify(r.events));
      } else {
        // The transport family spends most operations on registers, not requests.
        assert.ok(
          (r.events.chains ?? 0) > (family.name === "pci" ? cases / 4 : cases),
          JSON.stringify(r.events),
        );
        assert.ok((r.outcomes.ok ?? 0) > 0 && (r.outcomes.NEEDS_RESET ?? 0) > 0, JSON.stringify(r.outcomes));
      }
    });
  }
});
