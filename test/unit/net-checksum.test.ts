import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { crc32, foldSum, internetChecksum, onesSum } from "../../src/net/checksum.ts";

describe("Internet checksum", () => {
  test("RFC 1071 §3 example: words 0001 f203 f4f5 f6f7 sum to ddf2", () => {
    const b = Uint8Array.of(0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7);
    assert.equal(foldSum(onesSum(b, 0, b.length)), 0xddf2);
    assert.equal(internetChecksum(b), 0x220d);
  });

  test("a real IPv4 header checksums to 0 and its checksum field is reproduced", () => {
    // 192.168.0.1 -> 192.168.0.199, the classic worked example (checksum 0xb861).
    const h = Uint8Array.from([
      0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00, 0x01, 0xc0,
      0xa8, 0x00, 0xc7,
    ]);
    assert.equal(internetChecksum(h), 0);
    h[10] = 0;
    h[11] = 0;
    assert.equal(internetChecksum(h), 0xb861);
  });

  test("odd lengths pad the last byte as a high byte", () => {
    assert.equal(foldSum(onesSum(Uint8Array.of(0x12, 0x34, 0x56), 0, 3)), 0x1234 + 0x5600);
  });

  test("large sums fold more than once", () => {
    const b = new Uint8Array(70000).fill(0xff);
    assert.equal(foldSum(onesSum(b, 0, b.length)), 0xffff);
  });
});

describe("crc32", () => {
  test("the standard check value of '123456789' is cbf43926", () => {
    assert.equal(crc32(new TextEncoder().encode("123456789")), 0xcbf43926);
  });

  test("appending the FCS little endian gives the CRC-32 residue", () => {
    const f = new Uint8Array(64);
    for (let i = 0; i < 60; i++) f[i] = (i * 7) & 0xff;
    const fcs = crc32(f, 0, 60);
    new DataView(f.buffer).setUint32(60, fcs, true);
    // Running the CRC over data + FCS leaves the constant residue 0x2144df1c (after the final XOR).
    assert.equal(crc32(f), 0x2144df1c);
  });
});
