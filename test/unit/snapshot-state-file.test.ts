/**
 * The state file format (src/vmm/snapshot/state-file.ts): sections with JSON and byte arrays round-trip, and a
 * file that is truncated, bit-flipped, extended, of another format version or not a state file at all is refused
 * with its named error, never with a crash and never with part of the contents. The property tests damage a real
 * state file (every legacy device's saved state, the UART's 8 KiB of buffers as blobs) at random places.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { AcpiPm } from "../../src/devices/legacy/acpi-pm.ts";
import { CmosRtc } from "../../src/devices/legacy/cmos-rtc.ts";
import { I8042 } from "../../src/devices/legacy/i8042.ts";
import { Uart16550 } from "../../src/devices/legacy/uart16550.ts";
import { VirtioRng } from "../../src/devices/virtio/rng.ts";
import {
  restoreComponents,
  SnapshotRestoreError,
  saveComponents,
} from "../../src/vmm/snapshot/components.ts";
import {
  decodeStateFile,
  encodeStateFile,
  FORMAT_VERSION,
  readStateFile,
  SnapshotFileError,
  type StateSection,
  section,
  vireoVersion,
  writeStateFile,
} from "../../src/vmm/snapshot/state-file.ts";
import { makeNic } from "../helpers/e1000-driver.ts";
import { makeVirtioPciRig } from "../helpers/virtio-driver.ts";

/** A small deterministic PRNG (xorshift32), so a failure can be replayed from its seed. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 2 ** 32;
  };
}

function realSections(): StateSection[] {
  const uart = new Uart16550({ state: Uart16550.createState(), irq: { set() {} }, output() {} });
  uart.write(4, Uint8Array.of(0x0b));
  uart.receive(new TextEncoder().encode("a state file with bytes in it"));
  const rtc = new CmosRtc({ state: CmosRtc.createState({ memSize: 64 << 20 }), irq: { set() {} } });
  const kbc = new I8042({
    state: I8042.createState(),
    kbdIrq: { set() {} },
    auxIrq: { set() {} },
    onReset() {},
  });
  kbc.pushKeyboardInput(Uint8Array.of(0x1c, 0xf0, 0x1c));
  const pm = new AcpiPm({ state: AcpiPm.createState(), irq: { set() {} }, onPowerOff() {}, onReset() {} });
  const rng = makeVirtioPciRig(new VirtioRng(), { memSize: 1 << 20 });
  rng.drv.negotiate();
  const q = rng.drv.setupQueue(0, { size: 8, memBytes: 0x10000 });
  rng.drv.driverOk();
  q.addChain([], [16]);
  rng.drv.kick(0);
  const nic = makeNic();
  nic.drv.reset();
  nic.drv.setupTx(16);
  return [
    { name: "virtio-rng0", ...rng.transport.saveState() },
    { name: "e1000", ...nic.dev.saveState() },
    { name: "com1", ...uart.saveState() },
    { name: "rtc", ...rtc.saveState() },
    { name: "i8042", ...kbc.saveState() },
    { name: "acpi-pm", ...pm.saveState() },
  ];
}

const CODES = new Set([
  "VIREO_SNAPSHOT_NOT_STATE_FILE",
  "VIREO_SNAPSHOT_TRUNCATED",
  "VIREO_SNAPSHOT_TRAILING_DATA",
  "VIREO_SNAPSHOT_VERSION",
  "VIREO_SNAPSHOT_CHECKSUM",
  "VIREO_SNAPSHOT_MALFORMED",
]);

function refusedWith(bytes: Uint8Array): string {
  try {
    decodeStateFile(bytes);
  } catch (e) {
    assert.ok(e instanceof SnapshotFileError, `a SnapshotFileError, not ${String(e)}`);
    assert.ok(CODES.has(e.code), e.code);
    assert.ok(e.message.length > 10);
    return e.code;
  }
  assert.fail("a damaged state file was accepted");
}

test("sections round-trip: JSON values, nested objects, arrays and byte arrays, with header fields", () => {
  const createdAt = new Date("2026-12-02T16:00:00.000Z");
  const blob = Uint8Array.from({ length: 300 }, (_, i) => (i * 7) & 0xff);
  const sections: StateSection[] = [
    {
      name: "a",
      kind: "test",
      version: 3,
      data: { n: -1.5, s: "x", t: true, z: null, list: [1, "two", blob, { deep: new Uint8Array(0) }], blob },
    },
    { name: "b", kind: "other", version: 0, data: {} },
  ];
  const file = decodeStateFile(encodeStateFile({ sections, createdAt }));
  assert.equal(file.createdAt, createdAt.toISOString());
  assert.equal(file.vireoVersion, vireoVersion());
  assert.match(file.vireoVersion, /^\d+\.\d+\.\d+/);
  assert.deepEqual(file.sections, sections);
  assert.deepEqual(section(file, "b"), sections[1]);
  assert.throws(() => section(file, "c"), /no section "c" \(the file has a, b\)/);
});

test("writes and reads a file on disk; the real devices' sections come back equal", () => {
  const dir = mkdtempSync(join(tmpdir(), "vireo-state-"));
  try {
    const path = join(dir, "state.bin");
    const sections = realSections();
    const size = writeStateFile(path, { sections });
    assert.ok(size > 8192, "the UART's buffers are in the file");
    assert.deepEqual(readStateFile(path).sections, sections);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("refuses what it cannot encode: non-finite numbers, duplicate names, the reserved $blob key", () => {
  const enc = (data: Record<string, unknown>, name2 = "b") =>
    encodeStateFile({
      sections: [
        { name: "a", kind: "k", version: 1, data: data as never },
        { name: name2, kind: "k", version: 1, data: {} },
      ],
    });
  assert.throws(() => enc({ x: Number.NaN }), { code: "VIREO_SNAPSHOT_MALFORMED" });
  assert.throws(() => enc({ x: { $blob: 0 } }), { code: "VIREO_SNAPSHOT_MALFORMED" });
  assert.throws(() => enc({}, "a"), /two sections are named "a"/);
  assert.throws(() => enc({ f: () => 1 }), { code: "VIREO_SNAPSHOT_MALFORMED" });
});

test("named refusals: not a state file, truncated, trailing data, other format version, checksum", () => {
  const good = encodeStateFile({ sections: realSections() });
  assert.equal(
    refusedWith(new TextEncoder().encode("#!/bin/sh\necho not a snapshot\n")),
    "VIREO_SNAPSHOT_NOT_STATE_FILE",
  );
  assert.equal(refusedWith(new Uint8Array(0)), "VIREO_SNAPSHOT_TRUNCATED");
  assert.equal(refusedWith(good.subarray(0, 5)), "VIREO_SNAPSHOT_TRUNCATED");
  assert.equal(refusedWith(good.subarray(0, good.length - 1)), "VIREO_SNAPSHOT_TRUNCATED");
  const longer = new Uint8Array(good.length + 1);
  longer.set(good);
  assert.equal(refusedWith(longer), "VIREO_SNAPSHOT_TRAILING_DATA");
  const other = good.slice();
  new DataView(other.buffer).setUint32(8, FORMAT_VERSION + 1, true);
  assert.throws(() => decodeStateFile(other), {
    code: "VIREO_SNAPSHOT_VERSION",
    message: new RegExp(
      `format version ${FORMAT_VERSION + 1}; this vireo .* reads version ${FORMAT_VERSION} only`,
    ),
  });
  const flipped = good.slice();
  flipped[good.length - 100] = (flipped[good.length - 100] as number) ^ 0x10;
  assert.throws(() => decodeStateFile(flipped), { code: "VIREO_SNAPSHOT_CHECKSUM", message: /corrupted/ });
  const huge = good.slice();
  new DataView(huge.buffer).setBigUint64(16, 1n << 40n, true);
  assert.equal(refusedWith(huge), "VIREO_SNAPSHOT_MALFORMED");
});

test("a file whose checksum is right but whose header is wrong is refused as malformed (hand-made files)", async () => {
  const { createHash } = await import("node:crypto");
  const build = (header: string, blobArea = new Uint8Array(0)) => {
    const h = new TextEncoder().encode(header);
    const total = 32 + h.length + blobArea.length + 32;
    const out = new Uint8Array(total);
    const v = new DataView(out.buffer);
    out.set(new TextEncoder().encode("VIREOSNP"));
    v.setUint32(8, FORMAT_VERSION, true);
    v.setBigUint64(16, BigInt(total), true);
    v.setUint32(24, h.length, true);
    out.set(h, 32);
    out.set(blobArea, 32 + h.length);
    out.set(
      createHash("sha256")
        .update(out.subarray(0, total - 32))
        .digest(),
      total - 32,
    );
    return out;
  };
  const ok = '{"vireoVersion":"0.1.0","createdAt":"2026-12-02T16:00:00.000Z","sections":[],"blobs":[]}';
  assert.deepEqual(decodeStateFile(build(ok)).sections, []);
  const cases: Array<[string, RegExp]> = [
    ["{not json", /not JSON/],
    ['{"vireoVersion":"0.1.0","createdAt":"yesterday","sections":[],"blobs":[]}', /createdAt/],
    [
      ok.replace('"sections":[]', '"sections":[{"name":"","kind":"k","version":1,"data":{}}]'),
      /sections\.0\.name/,
    ],
    [ok.replace('"sections":[]', '"sections":[{"name":"a","kind":"k","version":-1,"data":{}}]'), /version/],
    [
      ok.replace(
        '"sections":[]',
        '"sections":[{"name":"a","kind":"k","version":1,"data":{"x":{"$blob":0}}}]',
      ),
      /bad blob reference/,
    ],
    [ok.replace('"blobs":[]', '"blobs":[{"offset":0,"length":1}]'), /outside the blob area/],
    [
      ok.replace(
        '"sections":[]',
        '"sections":[{"name":"a","kind":"k","version":1,"data":{}},{"name":"a","kind":"k","version":1,"data":{}}]',
      ),
      /two sections/,
    ],
  ];
  for (const [header, message] of cases) {
    assert.throws(
      () => decodeStateFile(build(header)),
      { code: "VIREO_SNAPSHOT_MALFORMED", message },
      header,
    );
  }
});

test("property: every truncation of a real state file is refused, with a named error", () => {
  const good = encodeStateFile({ sections: realSections() });
  const r = rng(0x5eed1);
  const lengths = new Set<number>([0, 1, 7, 8, 31, 32, 63, 64, good.length - 32, good.length - 1]);
  while (lengths.size < 300) lengths.add(Math.floor(r() * good.length));
  for (const n of lengths) {
    const code = refusedWith(good.slice(0, n));
    assert.equal(code, "VIREO_SNAPSHOT_TRUNCATED", `cut at ${n} of ${good.length}`);
  }
});

test("property: every single and multiple bit flip of a real state file is refused, with a named error", () => {
  const good = encodeStateFile({ sections: realSections() });
  const r = rng(0xb17f11b);
  const seen = new Map<string, number>();
  // Every byte of the preamble and the checksum, then random places anywhere.
  const positions: number[] = [];
  for (let i = 0; i < 32; i++) positions.push(i);
  for (let i = good.length - 32; i < good.length; i++) positions.push(i);
  for (let i = 0; i < 600; i++) positions.push(Math.floor(r() * good.length));
  for (const [k, at] of positions.entries()) {
    const bad = good.slice();
    bad[at] = (bad[at] as number) ^ (1 << Math.floor(r() * 8));
    if (k % 3 === 0) {
      const other = Math.floor(r() * good.length);
      bad[other] = (bad[other] as number) ^ (1 << Math.floor(r() * 8));
    }
    const code = refusedWith(bad);
    seen.set(code, (seen.get(code) ?? 0) + 1);
  }
  // Flips in the body are caught by the checksum; flips in the preamble by the field they land in.
  assert.ok((seen.get("VIREO_SNAPSHOT_CHECKSUM") ?? 0) > 300, JSON.stringify([...seen]));
  assert.ok(
    seen.has("VIREO_SNAPSHOT_NOT_STATE_FILE") && seen.has("VIREO_SNAPSHOT_VERSION"),
    JSON.stringify([...seen]),
  );
  // The untouched file still reads.
  assert.equal(decodeStateFile(good).sections.length, 6);
});

test("a machine's components: saved into sections, restored by name; a file of another machine is refused", () => {
  const make = () => ({
    com1: new Uart16550({ state: Uart16550.createState(), irq: { set() {} }, output() {} }),
    rtc: new CmosRtc({ state: CmosRtc.createState(), irq: { set() {} } }),
  });
  const a = make();
  a.com1.write(7, Uint8Array.of(0x42));
  const file = decodeStateFile(encodeStateFile({ sections: saveComponents(a) }));
  const b = make();
  restoreComponents(file, b);
  assert.deepEqual(b.com1.saveState(), a.com1.saveState());
  assert.deepEqual(b.rtc.saveState(), a.rtc.saveState());
  const { rtc: _rtc, ...onlyUart } = make();
  assert.throws(() => restoreComponents(file, onlyUart), {
    code: "VIREO_SNAPSHOT_MISMATCH",
    message: /has state for rtc, which this machine does not have/,
  });
  assert.throws(() => restoreComponents(file, { ...make(), kbd: make().com1 }), /has no state for kbd/);
  // A device's refusal keeps its code and names the section.
  const swapped = { com1: make().rtc, rtc: make().com1 } as unknown as ReturnType<typeof make>;
  assert.throws(
    () => restoreComponents(file, swapped),
    (e: unknown) =>
      e instanceof SnapshotRestoreError &&
      e.code === "VIREO_DEVICE_STATE" &&
      e.section === "com1" &&
      /section "com1"/.test(e.message),
  );
});
