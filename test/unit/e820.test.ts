import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  buildE820,
  E820_ACPI,
  E820_RAM,
  E820_RESERVED,
  type E820Entry,
  E820Error,
  GiB,
  KiB,
  MiB,
  normalizeE820,
  ramRegions,
  usableRam,
} from "../../src/arch/x86/e820.ts";

const R = E820_RAM;
const X = E820_RESERVED;

function e(addr: number, size: number, type: E820Entry["type"]): E820Entry {
  return { addr, size, type };
}

/** Sorted, non-overlapping, and no two touching entries of one type. */
function assertWellFormed(map: readonly E820Entry[]): void {
  for (let i = 1; i < map.length; i++) {
    const a = map[i - 1] as E820Entry;
    const b = map[i] as E820Entry;
    assert.ok(a.addr + a.size <= b.addr, `entries ${i - 1} and ${i} overlap or are unsorted`);
    assert.ok(
      !(a.addr + a.size === b.addr && a.type === b.type),
      `entries ${i - 1} and ${i} should be merged`,
    );
  }
}

function ramBytes(map: readonly E820Entry[]): number {
  return usableRam(map).reduce((n, x) => n + x.size, 0);
}

function assertE820Error(fn: () => unknown, pattern: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof E820Error);
    assert.equal(err.code, "VIREO_E820_INVALID");
    assert.match(err.message, pattern);
    return true;
  });
}

describe("buildE820", () => {
  it("lays out 64 MiB: conventional RAM, the legacy hole, extended RAM", () => {
    const map = buildE820({ memSize: 64 * MiB });
    assert.deepEqual(map, [e(0, 0xa0000, R), e(0xa0000, 0x60000, X), e(0x100000, 63 * MiB, R)]);
    assertWellFormed(map);
  });

  it("carves reserved ranges out of RAM and keeps their type", () => {
    const map = buildE820({
      memSize: 64 * MiB,
      reserved: [
        { addr: 0, size: 0x1000 },
        { addr: 0x9000, size: 0x3000 },
        { addr: 0x9f000, size: 0x1000, type: E820_ACPI },
      ],
    });
    assert.deepEqual(map, [
      e(0, 0x1000, X),
      e(0x1000, 0x8000, R),
      e(0x9000, 0x3000, X),
      e(0xc000, 0x9f000 - 0xc000, R),
      e(0x9f000, 0x1000, E820_ACPI),
      e(0xa0000, 0x60000, X),
      e(0x100000, 63 * MiB, R),
    ]);
    assertWellFormed(map);
  });

  it("merges a reserved range that touches the legacy hole", () => {
    const map = buildE820({ memSize: 64 * MiB, reserved: [{ addr: 0x9fc00, size: 0x400 }] });
    assert.deepEqual(map, [e(0, 0x9fc00, R), e(0x9fc00, 0x60400, X), e(0x100000, 63 * MiB, R)]);
  });

  it("accepts a reserved range inside the legacy hole (e.g. ACPI tables at 0xe0000)", () => {
    const map = buildE820({
      memSize: 64 * MiB,
      reserved: [{ addr: 0xe0000, size: 0x1000, type: E820_ACPI }],
    });
    assert.deepEqual(map.slice(1, 4), [
      e(0xa0000, 0x40000, X),
      e(0xe0000, 0x1000, E820_ACPI),
      e(0xe1000, 0x1f000, X),
    ]);
  });

  it("splits 6 GiB around the 32-bit hole", () => {
    const map = buildE820({ memSize: 6 * GiB, mmio: [{ addr: 0xe0000000, size: 256 * MiB }] });
    assert.deepEqual(map, [
      e(0, 0xa0000, R),
      e(0xa0000, 0x60000, X),
      e(0x100000, 3 * GiB - MiB, R),
      e(0xe0000000, 256 * MiB, X),
      e(4 * GiB, 3 * GiB, R),
    ]);
    assertWellFormed(map);
    assert.equal(ramBytes(map), 6 * GiB - 0x60000);
  });

  it("honours a custom low-memory end", () => {
    const map = buildE820({ memSize: 4 * GiB, lowMemEnd: 2 * GiB });
    assert.deepEqual(map.slice(2), [e(MiB, 2 * GiB - MiB, R), e(4 * GiB, 2 * GiB, R)]);
  });

  it("handles edge sizes", () => {
    // Exactly 1 MiB: no extended memory at all.
    assert.deepEqual(buildE820({ memSize: MiB }), [e(0, 0xa0000, R), e(0xa0000, 0x60000, X)]);
    // 1 MiB + one page.
    assert.deepEqual(buildE820({ memSize: MiB + 4 * KiB }).at(-1), e(MiB, 4 * KiB, R));
    // Exactly the low-memory end: nothing above 4 GiB.
    const at3g = buildE820({ memSize: 3 * GiB });
    assert.deepEqual(at3g.at(-1), e(MiB, 3 * GiB - MiB, R));
    // One page past it: that page moves to 4 GiB.
    const past = buildE820({ memSize: 3 * GiB + 4 * KiB });
    assert.deepEqual(past.at(-1), e(4 * GiB, 4 * KiB, R));
    assert.equal(ramBytes(past), 3 * GiB + 4 * KiB - 0x60000);
  });

  it("rejects bad sizes", () => {
    assertE820Error(() => buildE820({ memSize: 512 * KiB }), /at least 1 MiB/);
    assertE820Error(() => buildE820({ memSize: 64 * MiB + 1 }), /4 KiB pages/);
    assertE820Error(() => buildE820({ memSize: 64 * MiB, lowMemEnd: 5 * GiB }), /low memory end/);
    assertE820Error(
      () => buildE820({ memSize: 64 * MiB, reserved: [{ addr: 0x1000, size: 0 }] }),
      /positive size/,
    );
  });

  it("rejects overlapping reserved ranges", () => {
    assertE820Error(
      () =>
        buildE820({
          memSize: 64 * MiB,
          reserved: [
            { addr: 0x1000, size: 0x2000 },
            { addr: 0x2000, size: 0x1000 },
          ],
        }),
      /reserved range 0x1000-0x3000 overlaps reserved range 0x2000-0x3000/,
    );
  });

  it("rejects MMIO overlapping RAM, MMIO overlapping MMIO, and reserved outside RAM", () => {
    assertE820Error(
      () => buildE820({ memSize: 6 * GiB, mmio: [{ addr: 0xb0000000, size: 256 * MiB }] }),
      /MMIO range 0xb0000000-0xc0000000 overlaps guest RAM/,
    );
    assertE820Error(
      () => buildE820({ memSize: 5 * GiB, mmio: [{ addr: 4 * GiB + MiB, size: MiB }] }),
      /overlaps guest RAM/,
    );
    assertE820Error(
      () =>
        buildE820({
          memSize: 64 * MiB,
          mmio: [
            { addr: 0xe0000000, size: 256 * MiB },
            { addr: 0xefff0000, size: 0x20000 },
          ],
        }),
      /MMIO range .* overlaps MMIO range/,
    );
    assertE820Error(
      () => buildE820({ memSize: 64 * MiB, reserved: [{ addr: 64 * MiB - 0x1000, size: 0x2000 }] }),
      /not inside guest RAM/,
    );
    assertE820Error(
      () => buildE820({ memSize: 64 * MiB, reserved: [{ addr: 0x1000, size: 0x1000, type: E820_RAM }] }),
      /not a reserved type/,
    );
  });
});

describe("normalizeE820", () => {
  it("sorts and merges touching same-type entries, keeps different types apart", () => {
    assert.deepEqual(
      normalizeE820([e(0x2000, 0x1000, R), e(0, 0x1000, R), e(0x1000, 0x1000, R), e(0x3000, 0x1000, X)]),
      [e(0, 0x3000, R), e(0x3000, 0x1000, X)],
    );
  });

  it("rejects overlap", () => {
    assertE820Error(() => normalizeE820([e(0, 0x2000, R), e(0x1000, 0x2000, X)]), /overlap/);
  });
});

describe("ramRegions", () => {
  it("maps RAM below the hole and the rest at 4 GiB, with backing offsets", () => {
    assert.deepEqual(ramRegions(64 * MiB), [{ gpa: 0, size: 64 * MiB, offset: 0 }]);
    assert.deepEqual(ramRegions(6 * GiB), [
      { gpa: 0, size: 3 * GiB, offset: 0 },
      { gpa: 4 * GiB, size: 3 * GiB, offset: 3 * GiB },
    ]);
  });
});
