import assert from "node:assert/strict";
import { test } from "node:test";
import { Bus } from "../../src/bus/bus.ts";
import { DEBUGCON_PORT, DebugCon } from "../../src/devices/legacy/debugcon.ts";

test("port 0xE9: bytes written reach the sink in order, reads return 0xE9", () => {
  const bytes: number[] = [];
  const pio = new Bus("pio");
  pio.register(DEBUGCON_PORT, 1, new DebugCon({ onByte: (b) => bytes.push(b) }));
  pio.write(DEBUGCON_PORT, Uint8Array.of(1));
  pio.write(DEBUGCON_PORT, Uint8Array.of(0x68, 0x69)); // a 2-byte access: both bytes, low first
  assert.deepEqual(bytes, [1, 0x68, 0x69]);
  const r = new Uint8Array(1);
  assert.equal(pio.read(DEBUGCON_PORT, r), true);
  assert.equal(r[0], 0xe9);
});
