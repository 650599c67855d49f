import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { isMainThread, type MessagePort, parentPort, Worker, workerData } from "node:worker_threads";
import { Uart16550, UartStateError } from "../../src/devices/legacy/uart16550.ts";
import { MetricsSegment } from "../../src/metrics/registry.ts";

// Register offsets and bits, spelled out here independently of the implementation (PC16550D datasheet).
const THR = 0;
const RBR = 0;
const DLL = 0;
const IER = 1;
const DLM = 1;
const IIR = 2;
const FCR = 2;
const LCR = 3;
const MCR = 4;
const LSR = 5;
const MSR = 6;
const SCR = 7;

const LSR_DR = 0x01;
const LSR_OE = 0x02;
const LSR_BI = 0x10;
const LSR_THRE = 0x20;
const LSR_TEMT = 0x40;
const LSR_FIFOERR = 0x80;

const IIR_NONE = 0x01;
const IIR_RLS = 0x06;
const IIR_RDA = 0x04;
const IIR_CTI = 0x0c;
const IIR_THRI = 0x02;
const IIR_MSI = 0x00;

const MCR_DTR = 0x01;
const MCR_RTS = 0x02;
const MCR_OUT1 = 0x04;
const MCR_OUT2 = 0x08;
const MCR_LOOP = 0x10;

class Harness {
  readonly out: number[] = [];
  readonly levels: boolean[] = [];
  readonly metrics = new MetricsSegment(new ArrayBuffer(1024 * 8), 0);
  readonly uart: Uart16550;
  constructor(
    readonly state: SharedArrayBuffer = Uart16550.createState(),
    name = "com1",
  ) {
    this.uart = new Uart16550({
      state,
      name,
      irq: { set: (level) => this.levels.push(level) },
      output: (bytes) => this.out.push(...bytes),
      metrics: this.metrics,
    });
  }
  rd(reg: number): number {
    const d = new Uint8Array(1);
    this.uart.read(reg, d);
    return d[0] as number;
  }
  wr(reg: number, v: number): void {
    this.uart.write(reg, Uint8Array.of(v));
  }
  /** Interrupt ID bits 3-0. Note: reading IIR has side effects (clears a reported THRE interrupt). */
  iid(): number {
    return this.rd(IIR) & 0x0f;
  }
  counter(name: string): number {
    return this.metrics.counter(name).value;
  }
  /** Host input, as a terminal would send it once the guest is ready: the guest asserts RTS first. */
  input(text: string | number[]): number {
    const mcr = this.rd(MCR);
    if (!(mcr & MCR_RTS)) this.wr(MCR, mcr | MCR_RTS);
    return this.uart.receive(
      typeof text === "string" ? new TextEncoder().encode(text) : Uint8Array.from(text),
    );
  }
  drain(): number[] {
    const got: number[] = [];
    while (this.rd(LSR) & LSR_DR) got.push(this.rd(RBR));
    return got;
  }
}

if (!isMainThread) {
  // Worker side of the cross-thread test: read until `want` bytes arrived, echo them back through THR.
  const { state, want } = workerData as { state: SharedArrayBuffer; want: number };
  const port = parentPort as MessagePort;
  const h = new Harness(state);
  const got: number[] = [];
  const deadline = Date.now() + 5000;
  while (got.length < want && Date.now() < deadline) got.push(...h.drain());
  for (const b of got) h.wr(THR, b);
  port.postMessage({ got, out: h.out });
} else {
  describe("Uart16550", () => {
    test("reset state matches the datasheet (Table VII)", () => {
      const h = new Harness();
      assert.equal(h.rd(IER), 0);
      assert.equal(h.rd(IIR), IIR_NONE);
      assert.equal(h.rd(LCR), 0);
      assert.equal(h.rd(MCR), 0);
      assert.equal(h.rd(LSR), LSR_THRE | LSR_TEMT);
      assert.equal(h.rd(MSR) & 0x0f, 0, "no modem status deltas after reset");
      assert.equal(h.rd(SCR), 0);
      assert.deepEqual(h.levels, [], "no IRQ activity at reset");
    });

    test("DLAB switches offsets 0 and 1 to the divisor latch", () => {
      const h = new Harness();
      h.wr(IER, 0x05);
      h.wr(LCR, 0x83);
      h.wr(DLL, 0x01);
      h.wr(DLM, 0x02);
      assert.equal(h.rd(DLL), 0x01);
      assert.equal(h.rd(DLM), 0x02);
      assert.deepEqual(h.out, [], "a DLL write is not a transmit");
      h.wr(LCR, 0x03);
      assert.equal(h.rd(IER), 0x05, "IER was untouched by the DLM write");
      h.wr(THR, 0x41);
      assert.deepEqual(h.out, [0x41]);
      h.wr(LCR, 0x80);
      assert.equal(h.rd(DLL), 0x01, "divisor survives DLAB toggling");
      assert.equal(h.rd(DLM), 0x02);
    });

    test("LCR and SCR hold any value; IER and MCR implement only their defined bits", () => {
      const h = new Harness();
      for (const v of [0x00, 0x5a, 0xa5, 0x7f, 0xff]) {
        h.wr(SCR, v);
        assert.equal(h.rd(SCR), v);
        h.wr(LCR, v);
        assert.equal(h.rd(LCR), v);
      }
      h.wr(LCR, 0x03);
      h.wr(IER, 0xff);
      assert.equal(h.rd(IER), 0x0f);
      h.wr(IER, 0);
      h.wr(MCR, 0xef);
      assert.equal(h.rd(MCR), 0x0f);
    });

    test("transmit hands bytes to the output at once; LSR stays THRE|TEMT", () => {
      const h = new Harness();
      h.wr(LCR, 0x03);
      for (const c of "hi!\n") {
        h.wr(THR, c.charCodeAt(0));
        assert.equal(h.rd(LSR), LSR_THRE | LSR_TEMT);
      }
      assert.equal(Buffer.from(h.out).toString(), "hi!\n");
      assert.equal(h.counter("uart.com1.tx_bytes"), 4);
    });

    test("receive: LSR.DR follows the data, RBR returns it in order", () => {
      const h = new Harness();
      assert.equal(h.input("ab"), 2);
      assert.equal(h.rd(LSR), LSR_DR | LSR_THRE | LSR_TEMT);
      assert.equal(h.rd(RBR), 0x61);
      assert.equal(h.rd(LSR) & LSR_DR, LSR_DR);
      assert.equal(h.rd(RBR), 0x62);
      assert.equal(h.rd(LSR), LSR_THRE | LSR_TEMT);
      assert.equal(h.rd(RBR), 0x62, "an empty RBR reads the last character again");
      assert.equal(h.counter("uart.com1.rx_bytes"), 2, "only real characters count");
    });

    test("multi-byte accesses are split into consecutive registers", () => {
      const h = new Harness();
      h.uart.write(LCR, Uint8Array.of(0x03, MCR_OUT2 | MCR_RTS));
      assert.equal(h.rd(LCR), 0x03);
      assert.equal(h.rd(MCR), MCR_OUT2 | MCR_RTS);
      const d = new Uint8Array(4);
      h.uart.read(6, d);
      assert.equal(d[1], 0, "SCR");
      assert.deepEqual([d[2], d[3]], [0xff, 0xff], "bytes past the window float high");
    });

    describe("interrupt identification", () => {
      test("priorities: line status > data > THRE > modem status", () => {
        const h = new Harness();
        h.wr(MCR, MCR_LOOP); // loopback: our own THR writes are received
        h.rd(MSR); // entering loopback changed the modem inputs; start from clean deltas
        h.wr(IER, 0x0f);
        h.wr(THR, 1);
        h.wr(THR, 2); // 16450 mode: overrun (OE) with data in RBR
        h.wr(MCR, MCR_LOOP | MCR_RTS); // CTS changes: DCTS
        assert.equal(h.iid(), IIR_RLS);
        assert.equal(h.iid(), IIR_RLS, "reading IIR does not clear line status");
        assert.equal(h.rd(LSR) & LSR_OE, LSR_OE);
        assert.equal(h.iid(), IIR_RDA, "reading LSR cleared line status");
        assert.equal(h.rd(RBR), 2, "overrun replaced the character in 16450 mode");
        assert.equal(h.iid(), IIR_THRI);
        assert.equal(h.iid(), IIR_MSI, "reading IIR cleared the THRE interrupt it reported");
        assert.equal(h.rd(MSR) & 0x0f, 0x01);
        assert.equal(h.iid(), IIR_NONE, "reading MSR cleared the deltas");
      });

      test("IER gates each source", () => {
        const h = new Harness();
        h.input("x");
        assert.equal(h.iid(), IIR_NONE);
        h.wr(IER, 0x01);
        assert.equal(h.iid(), IIR_RDA);
        h.wr(IER, 0x00);
        assert.equal(h.iid(), IIR_NONE);
      });

      test("THRE: cleared by an IIR read reporting it, re-armed by a THR write and by enabling ETBEI", () => {
        const h = new Harness();
        h.wr(IER, 0x02);
        assert.equal(h.iid(), IIR_THRI, "enabling ETBEI with THR empty raises THRE");
        assert.equal(h.iid(), IIR_NONE, "the IIR read that reported it cleared it");
        h.wr(THR, 0x20);
        assert.equal(h.iid(), IIR_THRI, "THR emptied again after the write");
        assert.equal(h.iid(), IIR_NONE);
        h.wr(IER, 0x02);
        assert.equal(h.iid(), IIR_NONE, "rewriting an already-set ETBEI is not an enable");
        h.wr(IER, 0x00);
        h.wr(IER, 0x02);
        assert.equal(h.iid(), IIR_THRI, "re-enabling ETBEI re-asserts THRE");
      });

      test("an IIR read reporting a higher-priority source leaves THRE pending", () => {
        const h = new Harness();
        h.wr(IER, 0x03);
        h.input("z");
        assert.equal(h.iid(), IIR_RDA);
        assert.equal(h.rd(RBR), 0x7a);
        assert.equal(h.iid(), IIR_THRI);
        assert.equal(h.iid(), IIR_NONE);
      });

      test("modem status interrupt follows the deltas", () => {
        const h = new Harness();
        h.wr(IER, 0x08);
        assert.equal(h.iid(), IIR_NONE);
        h.uart.setModemInputs({ cts: false, dsr: true, ri: false, dcd: true });
        assert.equal(h.iid(), IIR_MSI);
        h.rd(MSR);
        assert.equal(h.iid(), IIR_NONE);
      });
    });

    describe("FIFOs", () => {
      test("FCR bit 0 enables the FIFOs; IIR bits 6-7 show it", () => {
        const h = new Harness();
        assert.equal(h.rd(IIR) & 0xc0, 0);
        h.wr(FCR, 0x01);
        assert.equal(h.rd(IIR) & 0xc0, 0xc0);
        assert.equal(h.rd(IIR), 0xc1);
        h.wr(FCR, 0x00);
        assert.equal(h.rd(IIR) & 0xc0, 0);
        h.wr(FCR, 0xc6); // other bits without FCR0 are not programmed
        assert.equal(h.rd(IIR) & 0xc0, 0);
      });

      test("the RX FIFO holds 16 characters; 16450 mode holds one", () => {
        const h = new Harness();
        h.wr(MCR, MCR_LOOP);
        h.wr(THR, 1);
        h.wr(THR, 2);
        assert.deepEqual(h.drain(), [2], "16450 mode: one character");
        h.wr(FCR, 0x01);
        for (let i = 0; i < 16; i++) h.wr(THR, i);
        assert.equal(h.rd(LSR) & LSR_OE, 0, "16 characters fit");
        assert.deepEqual(
          h.drain(),
          Array.from({ length: 16 }, (_, i) => i),
        );
      });

      test("trigger levels decide between data available and character timeout", () => {
        const triggers: Array<[number, number]> = [
          [0x01, 1],
          [0x41, 4],
          [0x81, 8],
          [0xc1, 14],
        ];
        for (const [fcr, level] of triggers) {
          const h = new Harness();
          h.wr(FCR, fcr);
          h.wr(IER, 0x01);
          h.input(new Array(level - 1).fill(0x30));
          assert.equal(h.iid(), level === 1 ? IIR_NONE : IIR_CTI, `FCR 0x${fcr.toString(16)}: below trigger`);
          h.input([0x31]);
          assert.equal(h.iid(), IIR_RDA, `FCR 0x${fcr.toString(16)}: at trigger ${level}`);
          if (level > 1) {
            h.rd(RBR);
            assert.equal(h.iid(), IIR_CTI, "dropping below the trigger clears data available");
          }
          h.drain();
          assert.equal(h.iid(), IIR_NONE, "empty FIFO: no receive interrupt");
        }
      });

      test("the trigger level can be changed with data in the FIFO", () => {
        const h = new Harness();
        h.wr(FCR, 0xc1);
        h.wr(IER, 0x01);
        h.input("12345");
        assert.equal(h.iid(), IIR_CTI);
        h.wr(FCR, 0x41);
        assert.equal(h.iid(), IIR_RDA);
        assert.equal(h.drain().length, 5, "changing the trigger does not clear the FIFO");
      });

      test("FCR bit 1 clears the RX FIFO; host input still waiting flows in behind it", () => {
        const h = new Harness();
        h.wr(FCR, 0x01);
        h.input(Array.from({ length: 20 }, (_, i) => i));
        h.wr(FCR, 0x03);
        assert.deepEqual(h.drain(), [16, 17, 18, 19], "the 16 in the FIFO were discarded");
        // In loopback nothing refills it, so the clear empties the receiver.
        h.wr(MCR, MCR_LOOP);
        h.wr(THR, 9);
        h.wr(FCR, 0x03);
        assert.equal(h.rd(LSR) & LSR_DR, 0);
        h.wr(THR, 8);
        h.wr(FCR, 0x05); // clearing only TX leaves RX alone
        assert.deepEqual(h.drain(), [8]);
      });

      test("switching between FIFO and 16450 mode clears the receiver", () => {
        const h = new Harness();
        h.wr(MCR, MCR_LOOP);
        h.wr(FCR, 0x01);
        h.wr(THR, 1);
        h.wr(THR, 2);
        h.wr(FCR, 0x00);
        assert.equal(h.rd(LSR) & LSR_DR, 0);
        h.wr(THR, 3);
        h.wr(FCR, 0x01);
        assert.equal(h.rd(LSR) & LSR_DR, 0);
      });
    });

    describe("loopback", () => {
      test("transmitted bytes are received, not output", () => {
        const h = new Harness();
        h.wr(FCR, 0x07);
        h.wr(MCR, MCR_LOOP);
        for (const b of [0x55, 0xaa, 0x00]) h.wr(THR, b);
        assert.deepEqual(h.out, []);
        assert.equal(h.counter("uart.com1.tx_bytes"), 0);
        assert.deepEqual(h.drain(), [0x55, 0xaa, 0x00]);
        h.wr(MCR, 0);
        h.wr(THR, 0x21);
        assert.deepEqual(h.out, [0x21]);
        assert.equal(h.rd(LSR) & LSR_DR, 0);
      });

      test("modem status reflects MCR: CTS=RTS, DSR=DTR, RI=OUT1, DCD=OUT2", () => {
        const h = new Harness();
        h.wr(MCR, MCR_LOOP);
        h.rd(MSR);
        assert.equal(h.rd(MSR), 0x00);
        const cases: Array<[number, number]> = [
          [MCR_RTS, 0x10],
          [MCR_DTR, 0x20],
          [MCR_OUT1, 0x40],
          [MCR_OUT2, 0x80],
          [MCR_RTS | MCR_OUT2, 0x90], // the combination Linux probes for
          [0x0f, 0xf0],
        ];
        for (const [mcr, msr] of cases) {
          h.wr(MCR, MCR_LOOP | mcr);
          assert.equal(h.rd(MSR) & 0xf0, msr, `MCR 0x${mcr.toString(16)}`);
        }
      });

      test("host input waits while in loopback and arrives after it", () => {
        const h = new Harness();
        h.wr(MCR, MCR_LOOP);
        h.input("q");
        assert.equal(h.rd(LSR) & LSR_DR, 0, "SIN is disconnected in loopback");
        h.wr(MCR, MCR_RTS);
        assert.deepEqual(h.drain(), [0x71]);
      });

      test("overrun in FIFO mode keeps the FIFO and sets OE until LSR is read", () => {
        const h = new Harness();
        h.wr(FCR, 0x01);
        h.wr(MCR, MCR_LOOP);
        for (let i = 0; i < 17; i++) h.wr(THR, i);
        const lsr = h.rd(LSR);
        assert.equal(lsr & (LSR_OE | LSR_DR), LSR_OE | LSR_DR);
        assert.equal(h.rd(LSR) & LSR_OE, 0, "reading LSR cleared OE");
        assert.deepEqual(
          h.drain(),
          Array.from({ length: 16 }, (_, i) => i),
          "the 17th character was lost",
        );
      });

      test("no overrun while there is room", () => {
        const h = new Harness();
        h.wr(MCR, MCR_LOOP);
        h.wr(THR, 1);
        assert.equal(h.rd(LSR) & LSR_OE, 0);
        h.rd(RBR);
        h.wr(THR, 2);
        assert.equal(h.rd(LSR) & LSR_OE, 0, "16450 mode: RBR was read in time");
      });
    });

    test("MSR deltas record changes until MSR is read; TERI only on the trailing edge of RI", () => {
      const h = new Harness();
      assert.equal(h.rd(MSR), 0xb0, "a terminal is attached: DCD, DSR, CTS");
      h.uart.setModemInputs({ cts: false, dsr: true, ri: false, dcd: true });
      assert.equal(h.rd(MSR), 0xa0 | 0x01, "CTS dropped: DCTS");
      assert.equal(h.rd(MSR), 0xa0, "deltas cleared by the read");
      h.uart.setModemInputs({ cts: false, dsr: true, ri: true, dcd: true });
      assert.equal(h.rd(MSR), 0xe0, "RI rising is not TERI");
      h.uart.setModemInputs({ cts: false, dsr: false, ri: false, dcd: false });
      assert.equal(h.rd(MSR), 0x00 | 0x02 | 0x04 | 0x08, "DDSR, TERI, DDCD");
      h.uart.setModemInputs({ cts: true, dsr: false, ri: false, dcd: false });
      h.uart.setModemInputs({ cts: false, dsr: false, ri: false, dcd: false });
      assert.equal(h.rd(MSR), 0x01, "a delta stays set even if the line changed back");
    });

    test("entering loopback changes the modem inputs and records the deltas", () => {
      const h = new Harness();
      h.rd(MSR);
      h.wr(MCR, MCR_LOOP | MCR_RTS); // inputs become CTS only: DSR and DCD dropped
      assert.equal(h.rd(MSR), 0x10 | 0x02 | 0x08);
    });

    test("break: BI and the FIFO error bit, a line status interrupt, a NUL character", () => {
      const h = new Harness();
      h.wr(FCR, 0xc1);
      h.wr(IER, 0x05);
      h.input("a");
      assert.equal(h.uart.receiveBreak(), true);
      h.input("b");
      assert.equal(h.iid(), IIR_CTI, "the break is not at the top yet");
      assert.equal(h.rd(LSR) & (LSR_BI | LSR_FIFOERR), LSR_FIFOERR, "an error sits in the FIFO");
      assert.equal(h.rd(RBR), 0x61);
      assert.equal(h.iid(), IIR_RLS, "the break reached the top");
      assert.equal(h.rd(LSR) & (LSR_BI | LSR_FIFOERR | LSR_DR), LSR_BI | LSR_FIFOERR | LSR_DR);
      assert.equal(h.rd(LSR) & LSR_BI, 0, "BI cleared by the LSR read");
      assert.equal(h.rd(RBR), 0x00);
      assert.equal(h.rd(LSR) & LSR_FIFOERR, 0, "no error left in the FIFO");
      assert.equal(h.rd(RBR), 0x62);
    });

    describe("IRQ line", () => {
      test("is gated by OUT2 and driven only on changes", () => {
        const h = new Harness();
        h.wr(IER, 0x02);
        assert.equal(h.rd(IIR) & 0x0f, IIR_THRI, "pending in IIR...");
        h.wr(IER, 0x00);
        h.wr(IER, 0x02);
        assert.deepEqual(h.levels, [], "...but without OUT2 the line stays low");
        h.wr(MCR, MCR_OUT2);
        assert.deepEqual(h.levels, [true]);
        h.wr(SCR, 1);
        h.rd(LSR);
        assert.deepEqual(h.levels, [true], "no repeated set() for an unchanged level");
        h.rd(IIR);
        assert.deepEqual(h.levels, [true, false], "the IIR read cleared THRE and the line");
        h.wr(THR, 0x41);
        assert.deepEqual(h.levels, [true, false, true]);
        h.wr(IER, 0x00);
        assert.deepEqual(h.levels, [true, false, true, false]);
        assert.equal(h.counter("uart.com1.irqs"), 2, "rising edges");
      });

      test("rises with received data and falls when the guest drains it", () => {
        const h = new Harness();
        h.wr(MCR, MCR_OUT2 | MCR_DTR | MCR_RTS);
        h.wr(FCR, 0xc7);
        h.wr(IER, 0x01);
        assert.deepEqual(h.levels, []);
        h.input("hello");
        assert.deepEqual(h.levels, [true]);
        assert.equal(Buffer.from(h.drain()).toString(), "hello");
        assert.deepEqual(h.levels, [true, false]);
      });

      test("clearing OUT2 lowers the line; loopback keeps it low while IIR reports", () => {
        const h = new Harness();
        h.wr(MCR, MCR_OUT2);
        h.wr(IER, 0x02);
        assert.deepEqual(h.levels, [true]);
        h.wr(MCR, 0);
        assert.deepEqual(h.levels, [true, false]);
        h.wr(MCR, MCR_OUT2 | MCR_LOOP);
        assert.deepEqual(h.levels, [true, false], "OUT2 pin is inactive in loopback");
        assert.equal(h.iid(), IIR_THRI, "the interrupt itself is still identified");
      });
    });

    describe("host input", () => {
      test("receive() accepts what fits and the caller retries the rest; nothing is lost or reordered", () => {
        const h = new Harness();
        h.wr(FCR, 0x07);
        h.wr(MCR, MCR_RTS);
        const total = 10_000;
        const data = Uint8Array.from({ length: total }, (_, i) => (i * 31 + (i >> 8)) & 0xff);
        let sent = 0;
        const got: number[] = [];
        const first = h.uart.receive(data);
        assert.equal(first, Uart16550.INPUT_RING_SIZE, "the ring takes what it can hold");
        sent = first;
        assert.equal(h.uart.inputSpace(), 16, "16 moved on into the FIFO");
        assert.equal(h.uart.receive(data.subarray(sent, sent + 100)), 16);
        sent += 16;
        assert.equal(h.uart.receive(data.subarray(sent)), 0, "full: nothing accepted");
        while (got.length < total) {
          for (let i = 0; i < 700 && h.rd(LSR) & LSR_DR; i++) got.push(h.rd(RBR));
          sent += h.uart.receive(data.subarray(sent));
        }
        assert.equal(sent, total);
        assert.deepEqual(Uint8Array.from(got), data);
        assert.equal(h.rd(LSR) & (LSR_DR | LSR_OE), 0, "no overrun, no leftovers");
        assert.equal(h.counter("uart.com1.rx_bytes"), total);
      });

      test("flow control: input waits until the guest asserts RTS, so initialisation loses nothing", () => {
        const h = new Harness();
        assert.equal(h.uart.receive(new TextEncoder().encode("hi")), 2, "the ring takes it");
        assert.equal(h.rd(LSR) & LSR_DR, 0, "nothing reaches the receiver while RTS is off");
        h.wr(FCR, 0xc7); // what a driver's init does: enable and clear the FIFOs
        h.wr(MCR, MCR_DTR | MCR_RTS | MCR_OUT2);
        assert.deepEqual(h.drain(), [0x68, 0x69]);
        h.wr(MCR, MCR_OUT2);
        h.uart.receive(Uint8Array.of(0x21));
        assert.equal(h.rd(LSR) & LSR_DR, 0, "dropping RTS holds the sender again");
        h.wr(MCR, MCR_RTS | MCR_OUT2);
        assert.deepEqual(h.drain(), [0x21]);
      });

      test("16450 mode moves one byte at a time", () => {
        const h = new Harness();
        assert.equal(h.input("abc"), 3);
        assert.equal(h.uart.inputSpace(), Uart16550.INPUT_RING_SIZE - 2);
        assert.equal(Buffer.from(h.drain()).toString(), "abc");
      });
    });

    describe("shared state", () => {
      test("two instances over one state are one device", () => {
        const state = Uart16550.createState();
        const a = new Harness(state);
        const b = new Harness(state);
        a.wr(LCR, 0x80);
        a.wr(DLL, 0x03);
        a.wr(LCR, 0x03);
        b.wr(LCR, 0x83);
        assert.equal(b.rd(DLL), 0x03, "b sees a's divisor");
        b.wr(LCR, 0x03);
        b.wr(SCR, 0x77);
        assert.equal(a.rd(SCR), 0x77);
        a.input("xy");
        assert.equal(b.rd(RBR), 0x78, "input offered through a is read through b");
        assert.equal(a.rd(RBR), 0x79);
        b.wr(THR, 0x21);
        assert.deepEqual(b.out, [0x21], "the transmitting thread's sink gets the byte");
        assert.deepEqual(a.out, []);
        a.wr(MCR, MCR_OUT2);
        b.wr(IER, 0x02);
        assert.deepEqual(b.levels, [true], "b raised the line");
        a.rd(IIR);
        assert.deepEqual(a.levels, [false], "a lowered it: one line level across instances");
        b.wr(SCR, 0);
        assert.deepEqual(b.levels, [true], "b does not re-drive a level it did not change");
      });

      test("a worker thread and the main thread share one UART", async () => {
        const state = Uart16550.createState();
        const main = new Harness(state);
        main.wr(FCR, 0xc7);
        main.wr(MCR, MCR_RTS);
        const tsx = import.meta.resolve("tsx/esm/api");
        const w = new Worker(
          `import(${JSON.stringify(tsx)}).then((t) => { t.register(); return import(${JSON.stringify(import.meta.url)}); })`,
          { eval: true, workerData: { state, want: 300 } },
        );
        try {
          const result = new Promise<{ got: number[]; out: number[] }>((res, rej) => {
            w.once("message", res);
            w.once("error", rej);
          });
          const data = Uint8Array.from({ length: 300 }, (_, i) => i & 0xff);
          let sent = 0;
          while (sent < data.length) sent += main.uart.receive(data.subarray(sent, sent + 7));
          const { got, out } = await result;
          assert.deepEqual(got, [...data]);
          assert.deepEqual(out, [...data], "the worker's own output sink got its THR writes");
          assert.deepEqual(main.out, []);
        } finally {
          await w.terminate();
        }
      });

      test("attaching requires initialised state of the right kind and size", () => {
        const irq = { set() {} };
        const output = () => {};
        assert.throws(
          () => new Uart16550({ state: new SharedArrayBuffer(Uart16550.STATE_BYTES), irq, output }),
          (e: unknown) => e instanceof UartStateError && e.code === "VIREO_UART_STATE",
        );
        assert.throws(
          () => new Uart16550({ state: new SharedArrayBuffer(64), init: true, irq, output }),
          UartStateError,
        );
        assert.throws(
          () =>
            new Uart16550({
              state: new ArrayBuffer(Uart16550.STATE_BYTES) as unknown as SharedArrayBuffer,
              init: true,
              irq,
              output,
            }),
          UartStateError,
        );
        const state = new SharedArrayBuffer(Uart16550.STATE_BYTES);
        new Uart16550({ state, init: true, irq, output });
        const first = new Harness(state);
        first.wr(SCR, 5);
        assert.equal(new Harness(state).rd(SCR), 5, "a second attach does not reset");
      });
    });
  });
}
