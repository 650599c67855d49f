import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { isMainThread, type MessagePort, parentPort, Worker, workerData } from "node:worker_threads";
import { Bus } from "../../src/bus/bus.ts";
import { I8042, I8042_COMMAND_PORT, I8042_DATA_PORT, I8042Error } from "../../src/devices/legacy/i8042.ts";

// Ports, status bits and commands, spelled out independently of the implementation (IBM AT/PS/2 references).
const DATA = 0x60;
const CMD = 0x64;

const STS_OBF = 0x01;
const STS_IBF = 0x02;
const STS_SYS = 0x04;
const STS_A2 = 0x08;
const STS_INH = 0x10;
const STS_AUX = 0x20;
const STS_TIMEOUT = 0x40;

const CTR_KBDINT = 0x01;
const CTR_AUXINT = 0x02;
const CTR_SYS = 0x04;
const CTR_KBDDIS = 0x10;
const CTR_AUXDIS = 0x20;
const CTR_XLATE = 0x40;

class Harness {
  readonly kbd: boolean[] = [];
  readonly aux: boolean[] = [];
  resets = 0;
  onReset: () => void = () => {};
  readonly kbc: I8042;
  readonly bus = new Bus("pio");
  constructor(readonly state: SharedArrayBuffer = I8042.createState()) {
    this.kbc = new I8042({
      state,
      kbdIrq: { set: (l) => this.kbd.push(l) },
      auxIrq: { set: (l) => this.aux.push(l) },
      onReset: () => {
        this.resets++;
        this.onReset();
      },
    });
    // Registered as an integrator would: two one-port views.
    this.bus.register(I8042_DATA_PORT, 1, this.kbc.dataPort);
    this.bus.register(I8042_COMMAND_PORT, 1, this.kbc.commandPort);
  }
  inb(port: number): number {
    const d = new Uint8Array(1);
    assert.ok(this.bus.read(port, d), `port ${port.toString(16)} is claimed`);
    return d[0] as number;
  }
  outb(port: number, v: number): void {
    assert.ok(this.bus.write(port, Uint8Array.of(v)));
  }
  status(): number {
    return this.inb(CMD);
  }
  /** Linux's i8042_command: command, parameters, then `replies` bytes, each polled for OBF first. */
  command(cmd: number, params: number[] = [], replies = 0): number[] {
    assert.equal(this.status() & STS_IBF, 0);
    this.outb(CMD, cmd);
    for (const p of params) {
      assert.equal(this.status() & STS_IBF, 0);
      this.outb(DATA, p);
    }
    const out: number[] = [];
    for (let i = 0; i < replies; i++) {
      assert.equal(this.status() & STS_OBF, STS_OBF, `reply ${i} to command 0x${cmd.toString(16)} is there`);
      out.push(this.inb(DATA));
    }
    return out;
  }
  /** Everything in the output buffer, as i8042_flush reads it. */
  drain(): number[] {
    const out: number[] = [];
    while (this.status() & STS_OBF && out.length < 64) out.push(this.inb(DATA));
    return out;
  }
}

if (!isMainThread) {
  // Worker side of the cross-thread test: read `want` keyboard bytes through this thread's own I8042.
  const { state, want } = workerData as { state: SharedArrayBuffer; want: number };
  const port = parentPort as MessagePort;
  const h = new Harness(state);
  const got: number[] = [];
  // The main thread starts sending when this arrives: a worker that took seconds to start (tsx on a loaded
  // machine) must not eat into either side's deadline.
  port.postMessage({ ready: true });
  const deadline = Date.now() + 5000;
  while (got.length < want && Date.now() < deadline) got.push(...h.drain());
  port.postMessage({ got });
} else {
  describe("I8042", () => {
    test("power-on status and command byte", () => {
      const h = new Harness();
      assert.equal(h.status(), STS_SYS | STS_INH, "empty buffers, system flag, keyboard not inhibited");
      const [ctr] = h.command(0x20, [], 1);
      assert.equal(ctr, CTR_KBDINT | CTR_SYS | CTR_AUXDIS, "translation off: Linux drives set 2 directly");
      assert.equal((ctr as number) & CTR_XLATE, 0);
      assert.deepEqual(h.kbd, [true, false], "the command reply raised IRQ 1 (KBDINT is set) until read");
    });

    test("Linux probe sequence: A20, self test, CTR, interface test, keyboard enable and identify", () => {
      const h = new Harness();
      // i8042_platform_init: write output port 0xdf (A20 on), then the no-op pulse command 0xff.
      h.command(0xd1, [0xdf]);
      h.command(0xff);
      assert.equal(h.resets, 0, "neither resets the machine");
      assert.deepEqual(h.drain(), [], "i8042_flush finds nothing");
      assert.deepEqual(h.command(0xaa, [], 1), [0x55], "controller self test passes");
      const ctr = h.command(0x20, [], 1)[0] as number;
      assert.deepEqual(h.command(0x20, [], 1), [ctr], "a stable CTR");
      assert.equal(h.status() & STS_INH, STS_INH, "no keylock warning");
      // i8042_controller_init: keyboard disabled, its interrupt off.
      h.command(0x60, [(ctr | CTR_KBDDIS) & ~CTR_KBDINT]);
      assert.deepEqual(h.command(0x20, [], 1), [(ctr | CTR_KBDDIS) & ~CTR_KBDINT]);
      assert.deepEqual(h.command(0xab, [], 1), [0x00], "keyboard interface test");
      assert.deepEqual(h.command(0xa9, [], 1), [0x00], "aux interface test");
      // i8042_enable_kbd_port
      h.command(0x60, [(ctr & ~CTR_KBDDIS) | CTR_KBDINT]);
      h.kbd.length = 0;
      // atkbd: identify, reading the reply in the IRQ 1 handler, one byte per edge.
      h.outb(DATA, 0xf2);
      const got: number[] = [];
      while (h.kbd.at(-1) === true) {
        const st = h.status();
        assert.equal(st & (STS_OBF | STS_AUX), STS_OBF);
        got.push(h.inb(DATA));
      }
      assert.deepEqual(got, [0xfa, 0xab, 0x83]);
      assert.deepEqual(h.kbd, [true, false, true, false, true, false], "a fresh edge for every byte");
    });

    test("keyboard commands: reset, LEDs, scan code set, typematic, enable/disable, echo, resend", () => {
      const h = new Harness();
      h.outb(DATA, 0xff);
      assert.deepEqual(h.drain(), [0xfa, 0xaa], "reset: ACK then BAT passed");
      h.outb(DATA, 0xed);
      assert.deepEqual(h.drain(), [0xfa]);
      h.outb(DATA, 0x05);
      assert.deepEqual(h.drain(), [0xfa]);
      assert.equal(h.kbc.leds, 0x05);
      h.outb(DATA, 0xf0);
      h.outb(DATA, 0x00);
      assert.deepEqual(h.drain(), [0xfa, 0xfa, 0x02], "scan code set 2 by default");
      h.outb(DATA, 0xf0);
      h.outb(DATA, 0x03);
      h.outb(DATA, 0xf0);
      h.outb(DATA, 0x00);
      assert.deepEqual(h.drain(), [0xfa, 0xfa, 0xfa, 0xfa, 0x03]);
      h.outb(DATA, 0xf3);
      h.outb(DATA, 0x20);
      assert.deepEqual(h.drain(), [0xfa, 0xfa]);
      h.outb(DATA, 0xf5);
      assert.deepEqual(h.drain(), [0xfa]);
      assert.equal(h.kbc.pushKeyboardInput(Uint8Array.of(0x1c)), 0, "no scanning after 0xf5");
      h.outb(DATA, 0xf4);
      assert.deepEqual(h.drain(), [0xfa]);
      assert.equal(h.kbc.pushKeyboardInput(Uint8Array.of(0x1c, 0xf0, 0x1c)), 3);
      assert.deepEqual(h.drain(), [0x1c, 0xf0, 0x1c]);
      h.outb(DATA, 0xee);
      assert.deepEqual(h.drain(), [0xee], "echo is answered without ACK");
      h.outb(DATA, 0xfe);
      assert.deepEqual(h.drain(), [0xee], "resend repeats the last byte");
      h.outb(DATA, 0x42);
      assert.deepEqual(h.drain(), [0xfe], "not a command: resend request");
      h.outb(DATA, 0xed);
      h.outb(DATA, 0xf2); // a command where the LED parameter should be
      assert.deepEqual(h.drain(), [0xfa, 0xfa, 0xab, 0x83]);
      assert.equal(h.kbc.leds, 0x05, "LEDs unchanged");
      h.outb(DATA, 0xff);
      assert.deepEqual(h.drain(), [0xfa, 0xaa]);
      assert.equal(h.kbc.leds, 0, "reset turns the LEDs off");
    });

    test("IRQ 1 needs CTR bit 0; the keyboard interface disable holds keyboard bytes back", () => {
      const h = new Harness();
      h.command(0x60, [CTR_SYS]); // no interrupts
      h.kbd.length = 0;
      h.kbc.pushKeyboardInput(Uint8Array.of(0x1c));
      assert.equal(h.status() & STS_OBF, STS_OBF);
      assert.deepEqual(h.kbd, [], "OBF without KBDINT raises nothing");
      h.command(0x60, [CTR_SYS | CTR_KBDINT]);
      assert.deepEqual(h.kbd, [true], "enabling the interrupt with a byte waiting raises it");
      assert.equal(h.inb(DATA), 0x1c);
      assert.deepEqual(h.kbd, [true, false]);
      h.command(0xad); // disable the keyboard interface
      assert.equal((h.command(0x20, [], 1)[0] as number) & CTR_KBDDIS, CTR_KBDDIS);
      h.kbd.length = 0;
      h.kbc.pushKeyboardInput(Uint8Array.of(0x32, 0x33));
      assert.equal(h.status() & STS_OBF, 0, "the keyboard's bytes wait while its interface is disabled");
      assert.deepEqual(h.command(0xaa, [], 1), [0x55], "controller replies still come");
      h.command(0xae);
      assert.deepEqual(h.drain(), [0x32, 0x33], "re-enabled: the keyboard's bytes come in");
      assert.equal((h.command(0x20, [], 1)[0] as number) & CTR_KBDDIS, 0);
    });

    test("controller RAM, input and output ports, keyboard output buffer write", () => {
      const h = new Harness();
      h.command(0x65, [0x99]); // RAM byte 5
      assert.deepEqual(h.command(0x25, [], 1), [0x99]);
      assert.deepEqual(h.command(0xc0, [], 1), [0x80]);
      h.command(0xd1, [0xdd]); // A20 off, not reset
      assert.equal(h.resets, 0);
      assert.equal((h.command(0xd0, [], 1)[0] as number) & 0x03, 0x01);
      h.command(0xdf);
      assert.equal((h.command(0xd0, [], 1)[0] as number) & 0x03, 0x03, "0xdf turns A20 back on");
      h.command(0xd2, [0x5b]);
      assert.equal(h.status() & (STS_OBF | STS_AUX), STS_OBF);
      assert.equal(h.inb(DATA), 0x5b);
      assert.deepEqual(h.command(0xa4, [], 1), [0xf1], "no password installed");
    });

    test("A2 tells whether the last write went to the command or the data port", () => {
      const h = new Harness();
      h.outb(CMD, 0xa7);
      assert.equal(h.status() & STS_A2, STS_A2);
      h.outb(DATA, 0xf4);
      assert.equal(h.status() & STS_A2, 0);
    });

    test("aux port: enable/disable bits, loopback on IRQ 12, and no device answering", () => {
      const h = new Harness();
      h.command(0xa8);
      assert.equal((h.command(0x20, [], 1)[0] as number) & CTR_AUXDIS, 0);
      h.command(0xa7);
      assert.equal((h.command(0x20, [], 1)[0] as number) & CTR_AUXDIS, CTR_AUXDIS);
      h.command(0x60, [CTR_SYS | CTR_KBDINT | CTR_AUXINT]);
      h.kbd.length = 0;
      h.command(0xd3, [0x5a]);
      assert.equal(h.status(), STS_OBF | STS_AUX | STS_SYS | STS_INH);
      assert.deepEqual(h.aux, [true]);
      assert.deepEqual(h.kbd, [], "an aux byte is not a keyboard interrupt");
      assert.equal(h.inb(DATA), 0x5a);
      assert.deepEqual(h.aux, [true, false]);
      h.command(0xd4, [0xff]); // reset the mouse: nobody there
      assert.equal(h.status() & (STS_OBF | STS_AUX | STS_TIMEOUT), STS_OBF | STS_AUX | STS_TIMEOUT);
      assert.equal(h.inb(DATA), 0xfe);
      assert.equal(h.status() & (STS_OBF | STS_TIMEOUT), 0);
      h.command(0x60, [CTR_SYS]);
      h.aux.length = 0;
      h.command(0xd3, [0x11]);
      assert.deepEqual(h.aux, [], "AUXINT clear: no IRQ 12");
      assert.equal(h.inb(DATA), 0x11);
    });

    test("reset: command 0xfe, other pulse commands with bit 0 clear, output port bit 0 clear", () => {
      const h = new Harness();
      h.outb(CMD, 0xfe);
      assert.equal(h.resets, 1);
      h.outb(CMD, 0xfd); // pulses line 1 only
      h.outb(CMD, 0xff);
      assert.equal(h.resets, 1);
      h.outb(CMD, 0xf0);
      assert.equal(h.resets, 2);
      h.command(0xd1, [0xde]);
      assert.equal(h.resets, 3);
      assert.equal((h.command(0xd0, [], 1)[0] as number) & 0x01, 0x01, "the reset line is released again");
      h.command(0xd1, [0x03]);
      assert.equal(h.resets, 3);
    });

    test("onReset runs after the device lock is released", () => {
      const h = new Harness();
      let status = -1;
      h.onReset = () => {
        status = h.status(); // would throw LockError if called with this instance's lock held
      };
      h.outb(CMD, 0xfe);
      assert.equal(status, STS_SYS | STS_A2 | STS_INH);
    });

    test("host input: the keyboard holds 16 bytes; the rest is offered again later", () => {
      const h = new Harness();
      const bytes = Uint8Array.from({ length: 40 }, (_, i) => i + 1);
      assert.equal(h.kbc.pushKeyboardInput(bytes), 16);
      assert.equal(h.kbc.pushKeyboardInput(bytes.subarray(16)), 0, "full, counting the output buffer");
      const got: number[] = [];
      for (let i = 0; i < 16; i++) got.push(h.inb(DATA)); // i8042_flush reads at most 16 ...
      assert.equal(h.status() & STS_OBF, 0, "... and then finds the controller empty");
      assert.equal(h.kbc.pushKeyboardInput(bytes.subarray(16)), 16);
      assert.deepEqual([...got, ...h.drain()], [...bytes.subarray(0, 32)]);
    });

    test("wider accesses: only the first byte is the register", () => {
      const h = new Harness();
      h.command(0xd2, [0x77]);
      const d = new Uint8Array(2);
      h.bus.read(DATA, d);
      assert.deepEqual([...d], [0x77, 0xff]);
      h.bus.write(CMD, Uint8Array.of(0xaa, 0xfe));
      assert.equal(h.resets, 0, "the second byte is not a command");
      assert.deepEqual(h.drain(), [0x55]);
      assert.equal(h.kbc.dataPort.name, "i8042-data");
      assert.equal(h.kbc.commandPort.name, "i8042-cmd");
    });

    test("two instances over one state are one controller", () => {
      const a = new Harness();
      const b = new Harness(a.state);
      a.outb(CMD, 0x60); // command through a ...
      b.outb(DATA, CTR_SYS | CTR_KBDINT); // ... its data byte through b
      assert.deepEqual(b.command(0x20, [], 1), [CTR_SYS | CTR_KBDINT]);
      b.outb(DATA, 0xf2);
      assert.equal(a.inb(DATA), 0xfa);
      assert.equal(b.inb(DATA), 0xab);
      assert.equal(a.inb(DATA), 0x83);
      assert.equal(a.status() & STS_OBF, 0);
      a.outb(CMD, 0xfe);
      assert.deepEqual([a.resets, b.resets], [1, 0], "the instance that trapped the write reports the reset");
    });

    test("cross-thread: a worker's instance reads what the main thread's instance receives", async () => {
      const state = I8042.createState();
      const main = new Harness(state);
      const tsx = import.meta.resolve("tsx/esm/api");
      const w = new Worker(
        `import(${JSON.stringify(tsx)}).then((t) => { t.register(); return import(${JSON.stringify(import.meta.url)}); })`,
        { eval: true, workerData: { state, want: 200 } },
      );
      try {
        const messages: Array<{ ready?: boolean; got?: number[] }> = [];
        const waiters: Array<() => void> = [];
        w.on("message", (m) => {
          messages.push(m);
          for (const f of waiters.splice(0)) f();
        });
        const failed = new Promise<never>((_, rej) => w.once("error", rej));
        const next = async () => {
          while (messages.length === 0)
            await Promise.race([new Promise<void>((r) => waiters.push(r)), failed]);
          return messages.shift() as { ready?: boolean; got?: number[] };
        };
        assert.equal((await next()).ready, true);
        const data = Uint8Array.from({ length: 200 }, (_, i) => (i * 13) & 0x7f);
        let sent = 0;
        const deadline = Date.now() + 5000;
        while (sent < data.length && Date.now() < deadline) {
          sent += main.kbc.pushKeyboardInput(data.subarray(sent, sent + 5));
        }
        const { got } = await next();
        assert.deepEqual(got, [...data]);
      } finally {
        await w.terminate();
      }
    });

    test("attaching requires initialised state of the right kind and size", () => {
      const irq = { set() {} };
      const base = { kbdIrq: irq, auxIrq: irq, onReset() {} };
      assert.throws(
        () => new I8042({ ...base, state: new SharedArrayBuffer(I8042.STATE_BYTES) }),
        (e: unknown) => e instanceof I8042Error && e.code === "VIREO_I8042",
      );
      assert.throws(() => new I8042({ ...base, state: new SharedArrayBuffer(8), init: true }), I8042Error);
      const kbc = new I8042({ ...base, state: new SharedArrayBuffer(I8042.STATE_BYTES), init: true });
      assert.equal(kbc.name, "i8042");
    });
  });
}
