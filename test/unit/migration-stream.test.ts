/**
 * Live migration without KVM: the stream's reader (whole streams in any chunking, cut at random points, flipped
 * header bits, records out of order or out of range), the device page log (marks only while on, taken once), the
 * queue layer marking every answered chain's writable buffers, and the ring pages a last round resends.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { test } from "node:test";
import { createVirtqueue } from "../../src/devices/virtio/queue/index.ts";
import { VireoError } from "../../src/errors.ts";
import { DevicePageLog, forEachSetBit } from "../../src/memory/device-page-log.ts";
import { GuestMemory } from "../../src/memory/guest-memory.ts";
import { parseEndpoint } from "../../src/vmm/migration/endpoint.ts";
import { ringPages } from "../../src/vmm/migration/ring-pages.ts";
import {
  helloRecord,
  MigrationReceiver,
  PAGE,
  pagesRecord,
  preamble,
  RECORD,
  record,
} from "../../src/vmm/migration/stream.ts";
import { makeTestMemory, VirtioTestDriver } from "../helpers/virtio-driver.ts";

const RAM = 2 << 20;

/** A whole stream: 300 pages of random data (some twice, the later copy wins), a state, END. */
function stream(): { bytes: Buffer; ram: Uint8Array; state: Uint8Array } {
  const src = new Uint8Array(RAM);
  const pages: number[] = [];
  for (let i = 0; i < 300; i++) pages.push((i * 7) % (RAM / PAGE));
  const parts: Buffer[] = [preamble(), ...helloRecord({ ramBytes: RAM, cpus: 2 })];
  for (let i = 0; i < pages.length; i += 100) {
    const batch = pages.slice(i, i + 100).sort((a, b) => a - b);
    for (const p of batch) src.set(randomBytes(PAGE), p * PAGE);
    parts.push(...pagesRecord(src, batch));
  }
  const state = randomBytes(5000);
  parts.push(...record(RECORD.state, state), ...record(RECORD.end, Buffer.alloc(32, 7)));
  return { bytes: Buffer.concat(parts), ram: src, state };
}

function receiver() {
  let ram: Uint8Array | null = null;
  const r = new MigrationReceiver(
    (h) => {
      ram = new Uint8Array(h.ramBytes);
      return ram;
    },
    { maxRamBytes: 64 << 20, maxCpus: 64 },
  );
  return { r, ram: () => ram };
}

const refused = (f: () => unknown, re: RegExp) =>
  assert.throws(f, (e: unknown) => e instanceof VireoError && re.test(e.message), re.source);

test("a whole stream in chunks of any size fills RAM with exactly the pages sent and ends with the state", () => {
  const s = stream();
  for (const chunk of [1, 7, 4096, 65536, 1 << 20, s.bytes.length]) {
    const { r, ram } = receiver();
    for (let at = 0; at < s.bytes.length; at += chunk) r.push(s.bytes.subarray(at, at + chunk));
    const done = r.finish();
    assert.ok(Buffer.from(ram() as Uint8Array).equals(Buffer.from(s.ram)), `chunk ${chunk}`);
    assert.deepEqual(done.hello, { ramBytes: RAM, cpus: 2 });
    assert.ok(Buffer.from(done.state).equals(Buffer.from(s.state)));
    assert.ok(Buffer.from(done.ramSha256 as Uint8Array).equals(Buffer.alloc(32, 7)));
    assert.equal(r.stats.pages, 300);
  }
});

test("a stream cut at any point is incomplete: nothing is done, finish refuses", () => {
  const s = stream();
  const cuts = [0, 1, 8, 15, 16, 23, 24, s.bytes.length - 1, s.bytes.length - 8];
  for (let i = 0; i < 300; i++) cuts.push(Math.floor(Math.random() * s.bytes.length));
  for (const cut of cuts) {
    const { r } = receiver();
    r.push(s.bytes.subarray(0, cut));
    assert.equal(r.done, null, `cut at ${cut}`);
    assert.throws(
      () => r.finish(),
      (e: unknown) => e instanceof VireoError && e.code === "VIREO_MIGRATION_INCOMPLETE",
      `cut at ${cut}`,
    );
  }
});

test("a flipped bit in the preamble or any record header is refused; data past END too", () => {
  const s = stream();
  // Offsets of the preamble and of every record header (parsed from the stream itself).
  const headers: number[] = [];
  for (let at = 16; at < s.bytes.length; at += 8 + s.bytes.readUInt32LE(at + 4)) headers.push(at);
  const positions = [
    ...Array(16).keys(),
    ...headers.flatMap((h) => [0, 1, 2, 3, 4, 5, 6, 7].map((k) => h + k)),
  ];
  let refusedCount = 0;
  for (const pos of positions) {
    for (let bit = 0; bit < 8; bit++) {
      const bad = Buffer.from(s.bytes);
      bad[pos] = (bad[pos] as number) ^ (1 << bit);
      const { r } = receiver();
      try {
        r.push(bad);
        r.finish();
        // A length's high bit that lands on another valid framing cannot happen here: every flip must be caught.
        assert.fail(`flip of bit ${bit} at ${pos} was not refused`);
      } catch (e) {
        assert.ok(e instanceof VireoError, `flip at ${pos}: ${(e as Error).message}`);
        refusedCount++;
      }
    }
  }
  assert.equal(refusedCount, positions.length * 8);
  const { r } = receiver();
  refused(() => r.push(Buffer.concat([s.bytes, Buffer.from([1])])), /after the end/);
});

test("records out of order or out of range are refused by name", () => {
  const ram = new Uint8Array(RAM);
  const hello = helloRecord({ ramBytes: RAM, cpus: 1 });
  const cases: Array<[Buffer[], RegExp]> = [
    [[preamble(), ...pagesRecord(ram, [0])], /does not start with HELLO/],
    [[preamble(), ...hello, ...hello], /second HELLO/],
    [[preamble(), ...hello, ...record(RECORD.end, Buffer.alloc(0))], /END before STATE/],
    [[preamble(), ...hello, ...record(9, Buffer.alloc(4))], /unknown record type 9/],
    [[preamble(), ...helloRecord({ ramBytes: 1 << 40, cpus: 1 })], /ramBytes/],
    [[preamble(), ...helloRecord({ ramBytes: RAM + 1, cpus: 1 })], /ramBytes/],
    [[preamble(), ...helloRecord({ ramBytes: RAM, cpus: 0 })], /cpus/],
    [[preamble(), ...record(RECORD.hello, Buffer.from("{nope"))], /not JSON/],
    [
      [preamble(), ...hello, ...record(RECORD.state, Buffer.alloc(1)), ...pagesRecord(ram, [1])],
      /PAGES after STATE/,
    ],
    [[Buffer.from("VIREOSNP"), Buffer.alloc(8)], /bad magic/],
  ];
  // A page index past RAM: a well-formed record built for bigger RAM.
  const big = new Uint8Array(RAM * 2);
  cases.push([[preamble(), ...hello, ...pagesRecord(big, [RAM / PAGE])], /outside guest RAM/]);
  const v2 = preamble();
  v2.writeUInt32LE(2, 8);
  cases.push([[v2], /version 2/]);
  for (const [parts, re] of cases) {
    const { r } = receiver();
    refused(() => r.push(Buffer.concat(parts)), re);
  }
});

test("endpoints: tcp:HOST:PORT (IPv6 in brackets) and unix:PATH, anything else refused", () => {
  assert.deepEqual(parseEndpoint("tcp:10.0.0.2:4444"), { kind: "tcp", host: "10.0.0.2", port: 4444 });
  assert.deepEqual(parseEndpoint("tcp:[::1]:5"), { kind: "tcp", host: "::1", port: 5 });
  assert.deepEqual(parseEndpoint("unix:/run/m.sock"), { kind: "unix", path: "/run/m.sock" });
  for (const bad of [
    "10.0.0.2:1",
    "tcp:h",
    "tcp::1",
    "tcp:h:0",
    "tcp:h:65536",
    "tcp:h:1x",
    "unix:",
    `unix:/${"x".repeat(120)}`,
  ])
    assert.throws(() => parseEndpoint(bad), VireoError, bad);
});

test("the device page log marks writes only while on, and each mark is taken once", () => {
  const mem = new GuestMemory(new SharedArrayBuffer(1 << 20));
  const log = new DevicePageLog(DevicePageLog.create(1 << 20));
  mem.pageLog = log;
  mem.writeU32(0x5000, 1);
  const taken: number[] = [];
  log.take((p) => taken.push(p));
  assert.equal(taken.length, 0, "off: nothing marked");
  log.start();
  mem.writeU8(0x1fff, 1);
  mem.writeU16(0x2ffe, 1);
  mem.write(0x7ff0, new Uint8Array(0x20)); // spans pages 7 and 8
  mem.writeFrom(0xa000, new Uint8Array(8), 0, 8);
  mem.fill(0xc000, 0x2001, 0); // pages 12, 13, 14
  mem.writeU64(0xff000, 1n);
  mem.read(0x40000, new Uint8Array(16)); // reads mark nothing
  log.take((p) => taken.push(p));
  assert.deepEqual(taken, [1, 2, 7, 8, 10, 12, 13, 14, 255]);
  const again: number[] = [];
  log.take((p) => again.push(p));
  assert.equal(again.length, 0, "taken once");
  log.stop();
  mem.writeU8(0, 1);
  log.take((p) => again.push(p));
  assert.equal(again.length, 0, "stopped: nothing marked");
  const kvm = new BigUint64Array([0b101n | (1n << 63n), 0n, 1n << 32n]);
  const bits: number[] = [];
  forEachSetBit(kvm, (p) => bits.push(p));
  assert.deepEqual(bits, [0, 2, 63, 160]);
});

test("an answered chain's writable buffers are marked (devices write them through views no write method sees)", () => {
  const mem = makeTestMemory();
  const log = new DevicePageLog(DevicePageLog.create(mem.size));
  mem.pageLog = log;
  const drv = new VirtioTestDriver(mem, { kind: "split", size: 8 });
  const q = createVirtqueue("split", mem, drv.config, drv.features);
  drv.addChain([Uint8Array.of(1, 2, 3)], [100, 9000]);
  const c = q.pop();
  assert.ok(c);
  log.start();
  q.pushUsed(c, 0); // written 0 bytes: the buffers are marked all the same
  const marked = new Set<number>();
  log.take((p) => marked.add(p));
  // The log is indexed by offset in guest RAM (this memory starts at mem.base).
  const pagesOf = (addr: number, len: number) => {
    const out: number[] = [];
    for (let p = Math.floor((addr - mem.base) / PAGE); p * PAGE < addr - mem.base + len; p++) out.push(p);
    return out;
  };
  const expected = new Set(c.writable.flatMap((s) => pagesOf(s.addr, s.len)));
  assert.ok(expected.size >= 3, "9000 bytes span at least 3 pages");
  assert.deepEqual(
    marked,
    expected,
    "exactly the writable buffers' pages (the used ring is the last round's)",
  );
});

test("ring pages: every enabled virtio queue's descriptor table, driver and device areas; other sections ignored", () => {
  const q = (enable: boolean, desc: number, driver: number, device: number, size: number) => ({
    enable,
    size,
    desc,
    driver,
    device,
  });
  const pages = ringPages(
    [
      {
        name: "blk0",
        kind: "virtio-pci",
        version: 1,
        data: {
          device: {
            kind: "virtio-device",
            version: 1,
            data: {
              queues: [q(true, 0x10000, 0x11000, 0x12ff0, 256), q(false, 0x50000, 0x51000, 0x52000, 8)],
            },
          },
        },
      },
      { name: "com1", kind: "uart16550", version: 1, data: { queues: [q(true, 0x90000, 0, 0, 8)] } },
    ],
    1 << 20,
  );
  // desc 0x10000 + 4096 bytes: page 16; avail 0x11000 + 518: page 17; used 0x12ff0 + 2054: pages 18, 19.
  assert.deepEqual(pages, [16, 17, 18, 19]);
});
