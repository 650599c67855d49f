import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { Bus } from "../../src/bus/bus.ts";
import { DEBUG_EXIT_PORT, DebugExit } from "../../src/devices/legacy/debug-exit.ts";

function setup() {
  const exits: number[] = [];
  const dev = new DebugExit({ onExit: (s) => exits.push(s) });
  const bus = new Bus("pio");
  bus.register(DEBUG_EXIT_PORT, 1, dev);
  return { exits, dev, bus };
}

describe("DebugExit", () => {
  test("sits at I/O 0x501 and is named for the bus", () => {
    const { dev, bus } = setup();
    assert.equal(DEBUG_EXIT_PORT, 0x501);
    assert.equal(dev.name, "debug-exit");
    assert.equal(bus.deviceAt(0x501), dev);
    assert.equal(bus.deviceAt(0x500), undefined);
    assert.equal(bus.deviceAt(0x502), undefined);
  });

  test("a byte write exits with that value", () => {
    const { exits, bus } = setup();
    bus.write(0x501, Uint8Array.of(42));
    bus.write(0x501, Uint8Array.of(0));
    bus.write(0x501, Uint8Array.of(0xff));
    assert.deepEqual(exits, [42, 0, 255]);
  });

  test("2- and 4-byte writes exit with value & 0xff", () => {
    const { exits, bus } = setup();
    bus.write(0x501, Uint8Array.of(0x34, 0x12)); // outw 0x1234
    bus.write(0x501, Uint8Array.of(0x01, 0x02, 0x03, 0x04)); // outl 0x04030201
    bus.write(0x501, Uint8Array.of(0x00, 0xff, 0xff, 0xff)); // low byte 0 even with high bits set
    assert.deepEqual(exits, [0x34, 0x01, 0x00]);
  });

  test("reads return all ones and do not exit", () => {
    const { exits, bus } = setup();
    for (const size of [1, 2, 4]) {
      const d = new Uint8Array(size);
      assert.equal(bus.read(0x501, d), true);
      assert.deepEqual([...d], new Array(size).fill(0xff));
    }
    assert.deepEqual(exits, []);
  });
});
