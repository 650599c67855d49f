/**
 * PcapWriter: files read back by Debian's tcpdump (scripts/setup.sh installs it), with the exact frames written;
 * the size cap, rotation, snaplen, buffering and allocation.
 */
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { PcapError, PcapWriter } from "../../src/switch/pcap.ts";
import { allocationsDuring, FrameBuilder, HEAP_SLACK } from "../helpers/switch-frames.ts";

const dir = mkdtempSync(join(tmpdir(), "vireo-pcap-"));
after(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
const file = () => join(dir, `cap-${n++}.pcap`);

const hasTcpdump = spawnSync("tcpdump", ["--version"]).status === 0;
const T0 = 1_780_000_000_000; // Unix ms (2026-05-28): with timeOriginMs 0, nowMs is Unix time

interface Packet {
  /** Seconds.microseconds as tcpdump -tt prints them. */
  time: string;
  src: string;
  dst: string;
  /** "length N" on the -e line: the frame's original length. */
  length: number;
  /** The -x hex dump: the captured bytes after the Ethernet header (14 bytes; 18 when 802.1Q tagged). */
  payload: number[];
  line: string;
}

/** Runs tcpdump -r FILE -tt -nn -e -x and parses each packet's first line and hex dump. */
function tcpdump(path: string): Packet[] {
  const r = spawnSync("tcpdump", ["-r", path, "-tt", "-nn", "-e", "-x"], {
    encoding: "utf8",
    maxBuffer: 256 << 20,
  });
  assert.equal(r.status, 0, `tcpdump failed: ${r.stderr}`);
  assert.doesNotMatch(r.stderr, /truncated|bogus|error/i, r.stderr);
  const out: Packet[] = [];
  for (const line of r.stdout.split("\n")) {
    if (line.trim() === "") continue;
    const hex = /^\s+0x[0-9a-f]+:\s+(.*)$/.exec(line);
    if (hex) {
      const last = out.at(-1);
      assert.ok(last, `hex before any packet: ${line}`);
      for (const g of (hex[1] as string).trim().split(/\s+/))
        for (let i = 0; i < g.length; i += 2) last.payload.push(Number.parseInt(g.slice(i, i + 2), 16));
      continue;
    }
    const m = /^(\d+\.\d{6}) ([0-9a-f:]{17}) > ([0-9a-f:]{17}), .*?length (\d+)/.exec(line);
    assert.ok(m, `unexpected tcpdump line: ${line}`);
    out.push({
      time: m[1] as string,
      src: m[2] as string,
      dst: m[3] as string,
      length: Number(m[4]),
      payload: [],
      line,
    });
  }
  return out;
}

const mac = (b: Uint8Array, o: number) =>
  [...b.subarray(o, o + 6)].map((x) => x.toString(16).padStart(2, "0")).join(":");

/** Frames of assorted kinds and sizes, each with a distinct body (its index in the first payload bytes). */
function frames(count: number, size?: (i: number) => number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let i = 0; i < count; i++) {
    const len = size ? size(i) : ([60, 64, 342, 1514, 98][i % 5] as number);
    const kind = i % 3;
    const b = new FrameBuilder();
    if (kind === 0)
      b.eth(
        "ff:ee:dd:cc:bb:aa",
        `52:54:00:00:${(i >> 8).toString(16).padStart(2, "0")}:${(i & 0xff).toString(16).padStart(2, "0")}`,
        0x0800,
      )
        .ipv4("10.0.0.2", "10.0.0.1", 17, len - 34)
        .udp(1000 + i, 53, len - 42);
    else if (kind === 1)
      b.eth("33:33:00:00:00:01", "52:54:00:aa:bb:cc", 0x86dd, { vid: 100 + i, pcp: 3 })
        .ipv6("fe80::1", "ff02::1", 17, len - 58)
        .udp(30000 + i, 547, len - 66); // (not port 520: tcpdump's RIP printer shifts the -x dump)
    else b.eth("ff:ff:ff:ff:ff:ff", "02:00:00:00:00:09", 0x88b5); // local experimental ethertype
    const f = new Uint8Array(len);
    f.set(b.build().subarray(0, len));
    // A body that differs per frame and per byte past the headers we built.
    for (let j = b.length; j < len; j++) f[j] = (i * 7 + j * 13) & 0xff;
    out.push(f);
  }
  return out;
}

function checkAgainst(pkts: Packet[], sent: Uint8Array[], times: number[], snaplen = 65535): void {
  assert.equal(pkts.length, sent.length, "packet count");
  for (const [i, p] of pkts.entries()) {
    const f = sent[i] as Uint8Array;
    assert.equal(p.dst, mac(f, 0), `packet ${i} dst: ${p.line}`);
    assert.equal(p.src, mac(f, 6), `packet ${i} src`);
    assert.equal(p.length, f.length, `packet ${i} length`);
    const tagged = f[12] === 0x81 && f[13] === 0x00;
    const hdr = tagged ? 18 : 14;
    assert.deepEqual(p.payload, [...f.subarray(hdr, Math.min(f.length, snaplen))], `packet ${i} bytes`);
    const t = T0 + (times[i] as number);
    const want = `${Math.floor(t / 1000)}.${String(Math.floor((t % 1000) * 1000)).padStart(6, "0")}`;
    assert.equal(p.time, want, `packet ${i} time`);
    if (tagged)
      assert.match(p.line, new RegExp(`vlan ${(((f[14] as number) << 8) | (f[15] as number)) & 0xfff}, p 3`));
  }
}

describe("PcapWriter: the file format", () => {
  test("the 24-byte header: magic a1b2c3d4, version 2.4, snaplen, LINKTYPE_ETHERNET; then 16-byte records", () => {
    const path = file();
    const w = new PcapWriter(path, { snaplen: 1500, timeOriginMs: 0 });
    const f = frames(1)[0] as Uint8Array;
    w.write(f, 0, f.length, T0 + 1234.5678);
    w.close();
    const b = readFileSync(path);
    assert.equal(b.length, 24 + 16 + f.length);
    assert.equal(b.readUInt32LE(0), 0xa1b2c3d4);
    assert.equal(b.readUInt16LE(4), 2);
    assert.equal(b.readUInt16LE(6), 4);
    assert.equal(b.readUInt32LE(8), 0);
    assert.equal(b.readUInt32LE(12), 0);
    assert.equal(b.readUInt32LE(16), 1500);
    assert.equal(b.readUInt32LE(20), 1);
    assert.equal(b.readUInt32LE(24), Math.floor((T0 + 1234.5678) / 1000));
    assert.equal(b.readUInt32LE(28), 234567);
    assert.equal(b.readUInt32LE(32), f.length);
    assert.equal(b.readUInt32LE(36), f.length);
    assert.deepEqual([...b.subarray(40)], [...f]);
    assert.deepEqual(w.stats(), { frames: 1, bytes: b.length, files: 1, dropped: 0, error: null });
  });

  test("the default snaplen is 65535 and the time origin is performance.timeOrigin", () => {
    const path = file();
    const w = new PcapWriter(path);
    const f = frames(1)[0] as Uint8Array;
    const now = performance.now();
    w.write(f, 0, f.length, now);
    w.close();
    const b = readFileSync(path);
    assert.equal(b.readUInt32LE(16), 65535);
    const sec = b.readUInt32LE(24);
    assert.ok(Math.abs(sec - Date.now() / 1000) < 5, `record time ${sec} vs now ${Date.now() / 1000}`);
  });
});

describe("PcapWriter: tcpdump reads back the exact frames", {
  skip: !hasTcpdump && "tcpdump is not installed (scripts/setup.sh installs it)",
}, () => {
  test("assorted frames (IPv4, 802.1Q-tagged IPv6, other ethertypes; 60 to 1514 bytes), at offsets in a larger buffer", () => {
    const path = file();
    const w = new PcapWriter(path, { timeOriginMs: 0 });
    const sent = frames(40);
    const times: number[] = [];
    // Write each frame from inside a bigger array (as the switch does from guest memory).
    const big = new Uint8Array(4096);
    for (const [i, f] of sent.entries()) {
      const off = 17 + i * 3;
      big.fill(0xee);
      big.set(f, off);
      times.push(i * 1.25 + 0.001 * i);
      w.write(big, off, f.length, T0 + (times[i] as number));
    }
    w.close();
    checkAgainst(tcpdump(path), sent, times);
  });

  test("more than the buffer holds: 2000 frames of 1514 bytes (written out as the buffer fills)", () => {
    const path = file();
    const w = new PcapWriter(path, { timeOriginMs: 0 });
    const sent = frames(2000, () => 1514);
    const times = sent.map((_, i) => i * 0.01);
    for (const [i, f] of sent.entries()) w.write(f, 0, f.length, T0 + (times[i] as number));
    // Part of it is on disk before any flush.
    const before = statSync(path).size;
    assert.ok(before > 0 && before < 24 + 2000 * (16 + 1514), `${before} bytes on disk before the flush`);
    w.flush();
    assert.equal(statSync(path).size, 24 + 2000 * (16 + 1514));
    checkAgainst(tcpdump(path), sent, times);
    w.close();
  });

  test("flush makes what was written readable while the writer stays open", () => {
    const path = file();
    const w = new PcapWriter(path, { timeOriginMs: 0 });
    const sent = frames(5);
    sent.forEach((f, i) => {
      w.write(f, 0, f.length, T0 + i);
    });
    assert.equal(statSync(path).size, 0, "buffered, not yet written");
    w.flush();
    checkAgainst(tcpdump(path), sent, [0, 1, 2, 3, 4]);
    const more = frames(7).slice(5);
    more.forEach((f, i) => {
      w.write(f, 0, f.length, T0 + 5 + i);
    });
    w.close();
    checkAgainst(tcpdump(path), [...sent, ...more], [0, 1, 2, 3, 4, 5, 6]);
  });

  test("snaplen keeps the head of each frame; the record keeps the original length", () => {
    const path = file();
    const w = new PcapWriter(path, { snaplen: 96, timeOriginMs: 0 });
    const sent = frames(10);
    sent.forEach((f, i) => {
      w.write(f, 0, f.length, T0 + i * 1000);
    });
    w.close();
    checkAgainst(
      tcpdump(path),
      sent,
      sent.map((_, i) => i * 1000),
      96,
    );
    assert.equal(statSync(path).size, 24 + sent.reduce((a, f) => a + 16 + Math.min(96, f.length), 0));
  });
});

describe("PcapWriter: size cap and rotation", () => {
  test("files=1: frames past maxBytes are dropped whole; the file stays a valid capture under the cap", () => {
    const path = file();
    const cap = 24 + 3 * (16 + 100) + 50; // room for three 100-byte records and part of a fourth
    const w = new PcapWriter(path, { maxBytes: cap, timeOriginMs: 0 });
    const sent = frames(6, () => 100);
    sent.forEach((f, i) => {
      w.write(f, 0, f.length, T0 + i);
    });
    // Not even a 60-byte frame fits in the 50 bytes left (16 + 60).
    const small = frames(1, () => 60)[0] as Uint8Array;
    w.write(small, 0, 60, T0 + 10);
    w.close();
    assert.equal(statSync(path).size, 24 + 3 * 116);
    assert.deepEqual(w.stats(), { frames: 3, bytes: 24 + 3 * 116, files: 1, dropped: 4, error: null });
    if (hasTcpdump) checkAgainst(tcpdump(path), sent.slice(0, 3), [0, 1, 2]);
  });

  test("files=3: FILE is the newest, FILE.1 and FILE.2 older, nothing past FILE.2; every frame of the last files is intact", () => {
    const path = file();
    const rec = 16 + 200;
    const cap = 24 + 4 * rec; // four 200-byte frames per file
    const w = new PcapWriter(path, { maxBytes: cap, files: 3, timeOriginMs: 0 });
    const sent = frames(19, () => 200);
    sent.forEach((f, i) => {
      w.write(f, 0, f.length, T0 + i * 10);
    });
    w.close();
    // 19 frames = files of 4,4,4,4,3: five started, the three newest kept.
    assert.deepEqual(w.stats(), { frames: 19, bytes: 24 * 5 + 19 * rec, files: 5, dropped: 0, error: null });
    assert.equal(existsSync(`${path}.3`), false);
    assert.equal(statSync(path).size, 24 + 3 * rec);
    assert.equal(statSync(`${path}.1`).size, cap);
    assert.equal(statSync(`${path}.2`).size, cap);
    if (hasTcpdump) {
      const times = sent.map((_, i) => i * 10);
      checkAgainst(tcpdump(`${path}.2`), sent.slice(8, 12), times.slice(8, 12));
      checkAgainst(tcpdump(`${path}.1`), sent.slice(12, 16), times.slice(12, 16));
      checkAgainst(tcpdump(path), sent.slice(16), times.slice(16));
    }
  });

  test("a frame bigger than an empty file allows is dropped, even with rotation; later small ones go on", () => {
    const path = file();
    const w = new PcapWriter(path, { maxBytes: 24 + 16 + 500, files: 2, timeOriginMs: 0 });
    const a = frames(1, () => 450)[0] as Uint8Array;
    const big = frames(1, () => 1514)[0] as Uint8Array;
    const c = frames(1, () => 60)[0] as Uint8Array;
    w.write(a, 0, a.length, T0);
    w.write(big, 0, big.length, T0 + 1);
    w.write(c, 0, c.length, T0 + 2);
    w.close();
    assert.deepEqual({ ...w.stats(), bytes: 0 }, { frames: 2, bytes: 0, files: 2, dropped: 1, error: null });
    if (hasTcpdump) {
      checkAgainst(tcpdump(`${path}.1`), [a], [0]);
      checkAgainst(tcpdump(path), [c], [2]);
    }
  });

  test("files=2 and one frame per file: only FILE and FILE.1 remain, with the last two frames", () => {
    const path = file();
    const w = new PcapWriter(path, { maxBytes: 24 + 16 + 60, files: 2, timeOriginMs: 0 });
    const sent = frames(5, () => 60);
    sent.forEach((f, i) => {
      w.write(f, 0, f.length, T0 + i);
    });
    w.close();
    assert.equal(w.stats().files, 5);
    assert.equal(existsSync(`${path}.2`), false);
    if (hasTcpdump) {
      checkAgainst(tcpdump(`${path}.1`), [sent[3] as Uint8Array], [3]);
      checkAgainst(tcpdump(path), [sent[4] as Uint8Array], [4]);
    }
  });
});

describe("PcapWriter: options, errors, hostile arguments, cost", () => {
  test("bad options and an unwritable path throw PcapError", () => {
    const bad: Array<[object, RegExp]> = [
      [{ snaplen: 0 }, /snaplen must be an integer from 1 to 262144/],
      [{ snaplen: 300000 }, /snaplen/],
      [{ maxBytes: 50 }, /maxBytes must be an integer from 100/],
      [{ maxBytes: 1.5e3 + 0.5 }, /maxBytes/],
      [{ files: 0 }, /files must be an integer from 1 to 1000/],
      [{ timeOriginMs: Number.NaN }, /timeOriginMs/],
    ];
    for (const [opts, re] of bad)
      assert.throws(
        () => new PcapWriter(file(), opts),
        (e: unknown) => e instanceof PcapError && e.code === "VIREO_SWITCH_PCAP" && re.test(e.message),
        JSON.stringify(opts),
      );
    assert.throws(
      () => new PcapWriter(join(dir, "no-such-dir", "x.pcap")),
      (e: unknown) => e instanceof PcapError && /cannot create .*no-such-dir/.test(e.message),
    );
  });

  test("a length past the array captures what the array holds (orig length as given); writes after close are dropped", () => {
    const path = file();
    const w = new PcapWriter(path, { timeOriginMs: 0 });
    const f = frames(1, () => 100)[0] as Uint8Array;
    w.write(f, 40, 1000, T0);
    w.write(f, 500, 60, T0);
    w.write(f, -5, 60, T0);
    w.close();
    w.write(f, 0, 100, T0);
    const b = readFileSync(path);
    assert.equal(b.readUInt32LE(32), 60);
    assert.equal(b.readUInt32LE(36), 1000);
    assert.deepEqual([...b.subarray(40, 100)], [...f.subarray(40)]);
    // Nothing readable at a bad offset: empty records.
    assert.equal(b.readUInt32LE(100 + 8), 0);
    assert.equal(b.length, 24 + 16 + 60 + 16 + 16);
    assert.equal(w.stats().dropped, 1);
  });

  test("an I/O error stops the capture without throwing into the data path", () => {
    if (!existsSync("/dev/full")) return;
    const w = new PcapWriter("/dev/full");
    const f = frames(1, () => 1514)[0] as Uint8Array;
    for (let i = 0; i < 400; i++) w.write(f, 0, f.length, i);
    w.flush();
    w.close();
    const s = w.stats();
    assert.match(s.error ?? "", /ENOSPC/);
    assert.ok(s.dropped > 0, JSON.stringify(s));
  });

  test("write allocates nothing (frames from one slab, as the switch writes them)", async () => {
    const path = file();
    const w = new PcapWriter(path, { maxBytes: 1 << 20, files: 2 });
    // Eight frames of 60 to 1110 bytes laid out in one shared slab, at unaligned offsets.
    const slab = new Uint8Array(new SharedArrayBuffer(16384));
    const offs: number[] = [];
    const lens: number[] = [];
    frames(8, (i) => 60 + i * 150).forEach((f, i) => {
      offs.push(i * 1999 + 3);
      lens.push(f.length);
      slab.set(f, i * 1999 + 3);
    });
    const times: unknown[] = [];
    for (let i = 0; i < 230_000; i++) times.push(1000.25 + i * 0.003);
    times.push({});
    let k = 0;
    const { gcs, heapGrowth } = await allocationsDuring((i) => {
      w.write(slab, offs[i & 7] as number, lens[i & 7] as number, times[k++] as number);
    }, 100_000);
    w.close();
    // Rotation (a rename and an open per MiB) may allocate; it runs about 70 times over 100k frames of ~600 B.
    assert.equal(gcs, 0);
    assert.ok(heapGrowth < HEAP_SLACK, `heap grew ${heapGrowth} bytes`);
    assert.ok(w.stats().files > 10, JSON.stringify(w.stats()));
    if (hasTcpdump) execFileSync("tcpdump", ["-r", path, "-nn", "-c", "1"], { stdio: "ignore" });
  });
});
