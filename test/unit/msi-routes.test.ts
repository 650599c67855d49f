import assert from "node:assert/strict";
import { test } from "node:test";
import type { Vm } from "../../src/kvm/vm.ts";
import { EFD_CLOEXEC, EFD_NONBLOCK, native } from "../../src/native.ts";
import { FIRST_MSI_GSI, IrqfdMsiSink, MsiRouteTable } from "../../src/vmm/msi-routes.ts";

type Route = { gsi: number; addressLo: number; addressHi: number; data: number };

function fakeVm(): { vm: Vm; tables: Route[][]; irqchipCount: number[] } {
  const tables: Route[][] = [];
  const irqchipCount: number[] = [];
  const vm = {
    setGsiRouting(irqchip: unknown[], msi: Route[]) {
      irqchipCount.push(irqchip.length);
      tables.push(msi.map((r) => ({ ...r })));
    },
  } as unknown as Vm;
  return { vm, tables, irqchipCount };
}

function counter(fd: number): number {
  const v = new BigUint64Array(1);
  return native().readFd(fd, v) === 8 ? Number(v[0]) : 0;
}

test("a message gets a GSI once; later signals only write its eventfd", () => {
  const { vm, tables, irqchipCount } = fakeVm();
  const table = new MsiRouteTable(MsiRouteTable.createState(4), vm);
  const pool = [0, 1].map((i) => ({
    gsi: FIRST_MSI_GSI + i,
    fd: native().eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK),
  }));
  try {
    const sink = new IrqfdMsiSink(table, pool);
    sink.signal(0xfee00000, 0, 0x41);
    sink.signal(0xfee00000, 0, 0x41);
    sink.signal(0xfee00000, 0, 0x41);
    assert.equal(tables.length, 1, "routing installed once");
    assert.deepEqual(tables[0], [{ gsi: 24, addressLo: 0xfee00000, addressHi: 0, data: 0x41 }]);
    assert.ok((irqchipCount[0] ?? 0) > 16, "the PC irqchip routes are kept in the table");
    assert.equal(counter(pool[0]?.fd as number), 3);
    // A second message takes the next GSI; the table now holds both.
    sink.signal(0xfee01000, 0, 0x42);
    assert.deepEqual(
      tables[1]?.map((r) => [r.gsi, r.data]),
      [
        [24, 0x41],
        [25, 0x42],
      ],
    );
    assert.equal(counter(pool[1]?.fd as number), 1);
    // A third message, with the pool full, takes over the oldest GSI (the driver reprogrammed a vector).
    sink.signal(0xfee02000, 0, 0x43);
    assert.deepEqual(
      tables[2]?.map((r) => [r.gsi, r.data]),
      [
        [24, 0x43],
        [25, 0x42],
      ],
    );
    sink.signal(0xfee00000, 0, 0x41);
    assert.equal(tables.length, 4, "the first message lost its GSI and is routed again");
  } finally {
    for (const g of pool) native().close(g.fd);
  }
});

test("the route table is shared: two sinks' routes are installed together", () => {
  const { vm, tables } = fakeVm();
  const state = MsiRouteTable.createState(4);
  const fd = native().eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  try {
    new IrqfdMsiSink(new MsiRouteTable(state, vm), [{ gsi: 30, fd }]).signal(0xfee00000, 0, 1);
    new IrqfdMsiSink(new MsiRouteTable(state, vm), [{ gsi: 31, fd }]).signal(0xfee00000, 0, 2);
    assert.deepEqual(
      tables.at(-1)?.map((r) => r.gsi),
      [30, 31],
    );
    assert.throws(() => new IrqfdMsiSink(new MsiRouteTable(state, vm), []), /needs GSIs/);
    const small = new MsiRouteTable(MsiRouteTable.createState(1), vm);
    small.set(40, 0, 0, 0);
    assert.throws(() => small.set(41, 0, 0, 0), /no room/);
  } finally {
    native().close(fd);
  }
});
