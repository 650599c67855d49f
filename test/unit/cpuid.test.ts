import assert from "node:assert/strict";
import { test } from "node:test";
import { vcpuCpuid } from "../../src/arch/x86/cpuid.ts";
import type { CpuidEntry } from "../../src/kvm/system.ts";

const e = (fn: number, index: number, r: Partial<CpuidEntry> = {}): CpuidEntry => ({
  function: fn,
  index,
  flags: 0,
  eax: 0,
  ebx: 0,
  ecx: 0,
  edx: 0,
  ...r,
});

// What KVM offered inside the emulated host (2026-12-02): XSAVE, AVX, FMA, F16C, AVX2, PKU/OSPKE, XCR0 0x207.
const supported = [
  e(1, 0, {
    ecx: 0xfed83203 | (1 << 26) | (1 << 28) | (1 << 29) | (1 << 12),
    edx: 0x078bfbff,
    ebx: 0x00000800,
  }),
  e(7, 0, { ebx: (1 << 5) | (1 << 0) | (1 << 7), ecx: (1 << 3) | (1 << 4) | (1 << 2) }),
  e(0xd, 0, { eax: 0x207, ebx: 0x240, ecx: 0xa88 }),
  e(0xd, 2, { eax: 0x100, ebx: 0x240 }),
  e(0xb, 0, { ecx: 0x100 }),
];

test("per-vCPU fields: APIC ID and logical processor count in leaf 1, x2APIC ID in leaf 0xb", () => {
  const c = vcpuCpuid(supported, 3, 4);
  const l1 = c.find((x) => x.function === 1);
  assert.equal((l1?.ebx ?? 0) >>> 24, 3);
  assert.equal(((l1?.ebx ?? 0) >>> 16) & 0xff, 4);
  assert.equal(((l1?.edx ?? 0) >>> 28) & 1, 1, "HTT with more than one vCPU");
  assert.equal(c.find((x) => x.function === 0xb)?.edx, 3);
});

test("by default what KVM supports passes through, XSAVE included", () => {
  const c = vcpuCpuid(supported, 0, 1);
  assert.equal(c.length, supported.length);
  assert.equal(((c.find((x) => x.function === 1)?.ecx ?? 0) >>> 26) & 1, 1);
  assert.deepEqual(
    c.find((x) => x.function === 7),
    supported[1],
  );
});

test("hideXsave removes XSAVE, what depends on it, and leaf 0xD; leaves the rest alone", () => {
  const c = vcpuCpuid(supported, 0, 1, { hideXsave: true });
  assert.equal(c.filter((x) => x.function === 0xd).length, 0, "no leaf 0xD");
  const l1 = c.find((x) => x.function === 1)?.ecx ?? 0;
  for (const [bit, name] of [
    [12, "FMA"],
    [26, "XSAVE"],
    [27, "OSXSAVE"],
    [28, "AVX"],
    [29, "F16C"],
  ] as const)
    assert.equal((l1 >>> bit) & 1, 0, name);
  assert.equal(l1 & 1, 1, "SSE3 stays");
  const l7 = c.find((x) => x.function === 7);
  assert.equal(((l7?.ebx ?? 0) >>> 5) & 1, 0, "AVX2");
  assert.equal((l7?.ebx ?? 0) & ((1 << 0) | (1 << 7)), (1 << 0) | (1 << 7), "FSGSBASE and SMEP stay");
  assert.equal((l7?.ecx ?? 0) & ((1 << 3) | (1 << 4)), 0, "PKU, OSPKE");
  assert.equal((l7?.ecx ?? 0) & (1 << 2), 1 << 2, "UMIP stays");
});
