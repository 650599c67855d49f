/**
 * The self-announcement after a restore or migration (src/net/announce.ts): the RARP request's bytes, field by
 * field against RFC 903 / RFC 826, and the schedule of writes into a TAP (with and without its virtio_net_hdr),
 * cancelled when the VM stops, and a failing TAP dropped without stopping the others.
 */
import assert from "node:assert/strict";
import { closeSync, mkdtempSync, openSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { mock, test } from "node:test";
import { ANNOUNCE_SCHEDULE_MS, announceNics, ETHERTYPE_RARP, rarpFrame } from "../../src/net/announce.ts";
import { TAP_VNET_HDR_SIZE } from "../../src/net/tap.ts";

const MAC = Uint8Array.of(0x02, 0x76, 0x69, 0x0a, 0x0b, 0x0c);

test("a RARP request: broadcast from the MAC, ethertype 0x8035, Ethernet/IPv4, opcode 3, the MAC as sender and target", () => {
  const f = rarpFrame(MAC);
  const v = new DataView(f.buffer);
  assert.equal(f.length, 60, "padded to Ethernet's minimum");
  assert.deepEqual([...f.subarray(0, 6)], [0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
  assert.deepEqual(f.subarray(6, 12), MAC);
  assert.equal(v.getUint16(12), ETHERTYPE_RARP);
  assert.equal(v.getUint16(14), 1, "hardware type Ethernet");
  assert.equal(v.getUint16(16), 0x0800, "protocol type IPv4");
  assert.equal(f[18], 6);
  assert.equal(f[19], 4);
  assert.equal(v.getUint16(20), 3, "request reverse");
  assert.deepEqual(f.subarray(22, 28), MAC, "sender hardware address");
  assert.equal(v.getUint32(28), 0, "sender protocol address unknown");
  assert.deepEqual(f.subarray(32, 38), MAC, "target hardware address");
  assert.equal(v.getUint32(38), 0);
  assert.ok(
    f.subarray(42).every((b) => b === 0),
    "padding is zero",
  );
  assert.throws(() => rarpFrame(new Uint8Array(5)), RangeError);
});

test("each NIC's TAP gets one request per round of the schedule; a vnet-header TAP gets a zeroed header first; cancel stops the rest", () => {
  mock.timers.enable({ apis: ["setTimeout"] });
  const dir = mkdtempSync(join(tmpdir(), "vireo-announce-"));
  const plainPath = join(dir, "plain");
  const hdrPath = join(dir, "hdr");
  const plain = openSync(plainPath, "w");
  const hdr = openSync(hdrPath, "w");
  const logs: string[] = [];
  let frames = 0;
  try {
    const cancel = announceNics(
      [
        { name: "net0", mac: MAC, fd: plain, vnetHdr: false },
        { name: "net1", mac: MAC, fd: hdr, vnetHdr: true },
        { name: "net2", mac: MAC, fd: 987654, vnetHdr: false }, // no such fd: dropped, said once
      ],
      { log: (m) => logs.push(m), onFrame: () => frames++ },
    );
    const rounds = (path: string, size: number) => readFileSync(path).length / size;
    mock.timers.tick(0);
    assert.equal(rounds(plainPath, 60), 1);
    const last = ANNOUNCE_SCHEDULE_MS[ANNOUNCE_SCHEDULE_MS.length - 1] as number;
    mock.timers.tick((ANNOUNCE_SCHEDULE_MS[2] as number) - 1);
    assert.equal(rounds(plainPath, 60), 2, "two rounds before the third's time");
    cancel();
    mock.timers.tick(last);
    assert.equal(rounds(plainPath, 60), 2, "none after cancel");
    assert.equal(rounds(hdrPath, TAP_VNET_HDR_SIZE + 60), 2);
    const h = readFileSync(hdrPath);
    assert.ok(h.subarray(0, TAP_VNET_HDR_SIZE).every((b) => b === 0));
    assert.deepEqual(new Uint8Array(h.subarray(TAP_VNET_HDR_SIZE, TAP_VNET_HDR_SIZE + 60)), rarpFrame(MAC));
    assert.equal(frames, 4);
    assert.equal(logs.length, 1);
    assert.match(logs[0] as string, /net2: announcing its MAC failed/);
    // Uncancelled, all rounds go.
    const full = join(dir, "full");
    const fd = openSync(full, "w");
    announceNics([{ name: "net0", mac: MAC, fd, vnetHdr: false }], { log: () => {} });
    mock.timers.tick(last);
    assert.equal(rounds(full, 60), ANNOUNCE_SCHEDULE_MS.length);
    closeSync(fd);
  } finally {
    mock.timers.reset();
    closeSync(plain);
    closeSync(hdr);
  }
});
