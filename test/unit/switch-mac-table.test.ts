import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { MacTable } from "../../src/switch/mac-table.ts";

describe("switch MAC table", () => {
  test("learns, answers per VLAN, and follows a station that moves", () => {
    const t = new MacTable({ capacity: 64 });
    assert.equal(t.lookup(1, 0x5254, 0x12345678, 0), -1);
    t.learn(1, 0x5254, 0x12345678, 3, 0);
    assert.equal(t.lookup(1, 0x5254, 0x12345678, 1), 3);
    assert.equal(t.lookup(2, 0x5254, 0x12345678, 1), -1, "another VLAN does not see it");
    assert.equal(t.lookup(1, 0x5254, 0x12345679, 1), -1);
    t.learn(1, 0x5254, 0x12345678, 5, 2);
    assert.equal(t.lookup(1, 0x5254, 0x12345678, 3), 5);
    assert.equal(t.stats.moved, 1);
    assert.equal(t.portEntries(3), 0);
    assert.equal(t.portEntries(5), 1);
    assert.equal(t.size, 1);
  });

  test("high MAC bits (lo >= 2^31) are keys like any other", () => {
    const t = new MacTable({ capacity: 64 });
    t.learn(4095, 0xffff, 0xfffffffe, 1, 0);
    assert.equal(t.lookup(4095, 0xffff, 0xfffffffe, 0), 1);
    assert.equal(t.lookup(4095, 0xffff, 0xffffffff, 0), -1);
    assert.deepEqual(
      t.entries(0).map((e) => [e.vlan, e.mac, e.port]),
      [[4095, "ff:ff:ff:ff:ff:fe", 1]],
    );
  });

  test("an entry ages out after ageMs, its slot is reused, sweep frees the rest", () => {
    const t = new MacTable({ capacity: 64, ageMs: 1000 });
    t.learn(1, 0, 1, 0, 0);
    t.learn(1, 0, 2, 0, 500);
    assert.equal(t.lookup(1, 0, 1, 1000), 0, "still live at exactly ageMs");
    assert.equal(t.lookup(1, 0, 1, 1001), -1, "aged out");
    t.learn(1, 0, 2, 0, 1200); // refreshed
    assert.equal(t.sweep(1400), 1);
    assert.equal(t.size, 1);
    assert.equal(t.lookup(1, 0, 2, 2100), 0);
    assert.equal(t.portEntries(0), 1);
  });

  test("a random-MAC flood fills only the flooding port's quota; other ports' stations stay and still learn", () => {
    // Every seed (the bucket hash's key): the bound must not depend on where the flood's addresses happen to land.
    for (let seed = 1; seed <= 200; seed++) {
      const t = new MacTable({ capacity: 1024, perPortLimit: 100, seed });
      for (let i = 0; i < 10; i++) t.learn(1, 0x0200, i, 1, 0);
      let x = 12345 + seed;
      for (let i = 0; i < 20_000; i++) {
        x = (Math.imul(x, 1103515245) + 12345) | 0;
        t.learn(1, x & 0xffff, Math.imul(x, 7) ^ i, 0, i / 20);
      }
      assert.ok(t.portEntries(0) <= 100, `seed ${seed}: flooder holds ${t.portEntries(0)}`);
      assert.ok(t.size <= 110, `seed ${seed}: size ${t.size}`);
      for (let i = 0; i < 10; i++)
        assert.equal(t.lookup(1, 0x0200, i, 1000), 1, `seed ${seed}: station ${i} kept`);
      // A port under its quota learns during the flood whatever the flood filled: every address it learns in a
      // table without the flood (the same seed, so the same buckets) it learns here too.
      const calm = new MacTable({ capacity: 1024, perPortLimit: 100, seed });
      for (let i = 0; i < 10; i++) calm.learn(1, 0x0200, i, 1, 0);
      for (let i = 0; i < 20; i++) {
        t.learn(1, 0x0200, 100 + i, 2, 1000);
        calm.learn(1, 0x0200, 100 + i, 2, 1000);
      }
      for (let i = 0; i < 20; i++)
        if (calm.lookup(1, 0x0200, 100 + i, 1000) === 2)
          assert.equal(t.lookup(1, 0x0200, 100 + i, 1000), 2, `seed ${seed}: port 2 learns during the flood`);
      assert.ok(t.stats.refusedPortLimit + t.stats.refusedFull > 19_800, `seed ${seed}`);
    }
  });

  test("a full bucket gives the oldest entry of a heavy port to a light one, and nothing else", () => {
    // capacity 4 = one bucket of 4 ways: every address lands in it. Heavy: at least 3 entries (half of 6) and
    // more than twice the learner's.
    const t = new MacTable({ capacity: 4, perPortLimit: 6, seed: 7 });
    t.learn(1, 0, 1, 0, 10);
    t.learn(1, 0, 2, 0, 5); // oldest of port 0
    t.learn(1, 0, 3, 0, 20);
    t.learn(1, 0, 4, 1, 30); // port 1: one entry
    assert.equal(t.size, 4);
    t.learn(1, 0, 5, 1, 35); // port 0 (3) is heavy against port 1 (1)
    assert.equal(t.lookup(1, 0, 5, 35), 1, "port 1 takes a slot from port 0");
    assert.equal(t.lookup(1, 0, 2, 35), -1, "port 0's oldest entry was given up");
    assert.equal(t.stats.evictedFlooder, 1);
    t.learn(1, 0, 6, 2, 50); // port 0 holds 2, port 1 holds 2: neither is heavy, so refused
    assert.equal(t.lookup(1, 0, 6, 50), -1);
    assert.equal(t.stats.refusedFull, 1);
    for (const [mac, port] of [
      [1, 0],
      [3, 0],
      [4, 1],
      [5, 1],
    ] as const)
      assert.equal(t.lookup(1, 0, mac, 50), port);
    assert.equal(t.portEntries(0), 2);
    assert.equal(t.size, 4);
  });

  test("the table never holds more than its capacity and a full bucket refuses rather than evicts", () => {
    const t = new MacTable({ capacity: 16, perPortLimit: 1 << 20 });
    for (let i = 0; i < 10_000; i++) t.learn(1, 0, i, i % 4, 0);
    assert.equal(t.size, 16);
    const kept = t.entries(0);
    assert.equal(kept.length, 16);
    for (const e of kept)
      assert.equal(t.lookup(1, 0, Number.parseInt(e.mac.replaceAll(":", "").slice(4), 16), 0), e.port);
    assert.ok(t.stats.refusedFull >= 10_000 - 16);
  });

  test("removePort forgets the port's stations only", () => {
    const t = new MacTable({ capacity: 64 });
    t.learn(1, 0, 1, 0, 0);
    t.learn(1, 0, 2, 1, 0);
    t.removePort(0);
    assert.equal(t.lookup(1, 0, 1, 0), -1);
    assert.equal(t.lookup(1, 0, 2, 0), 1);
    assert.equal(t.portEntries(0), 0);
    assert.equal(t.size, 1);
  });
});
