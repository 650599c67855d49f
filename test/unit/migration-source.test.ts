/**
 * The migration source's rounds (src/vmm/migration/source.ts) without KVM: a fake VM whose vCPUs write nothing, a
 * destination made of the stream reader on a Unix socket, and a "back-end" in another process's place that
 * writes guest RAM between the rounds and marks what it wrote only in its own dirty log (a vhost-user back-end's,
 * src/vhost-user/dirty-log.ts). With that log given to the source as its external log the destination's RAM is
 * the source's, byte for byte; without it (the control) the back-end's later writes are missing, which is what
 * the log is for.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtempSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import type { Vm } from "../../src/kvm/vm.ts";
import { DevicePageLog } from "../../src/memory/device-page-log.ts";
import { VhostUserDirtyLog } from "../../src/vhost-user/dirty-log.ts";
import { migrate } from "../../src/vmm/migration/source.ts";
import { MigrationReceiver, PAGE } from "../../src/vmm/migration/stream.ts";

const RAM = 4 << 20;
const PAGES = RAM / PAGE;

/** A destination: reads one stream into its own RAM and answers ok. */
async function destination(path: string): Promise<{ ram: () => Uint8Array | null; close(): void }> {
  let ram: Uint8Array | null = null;
  const server = createServer((s) => {
    const r = new MigrationReceiver(
      (h) => {
        ram = new Uint8Array(h.ramBytes);
        return ram;
      },
      { maxRamBytes: RAM, maxCpus: 4 },
    );
    s.on("data", (d: Buffer) => {
      r.push(d);
      if (r.done) s.end('{"ok":true}\n');
    });
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  return { ram: () => ram, close: () => server.close() };
}

async function run(withLog: boolean): Promise<{ same: boolean; rounds: number; backendPages: number }> {
  const dir = mkdtempSync(join(tmpdir(), "vireo-mig-src-"));
  const path = join(dir, "dest.sock");
  const dest = await destination(path);
  const ram = new Uint8Array(new SharedArrayBuffer(RAM));
  ram.set(randomBytes(64 * PAGE), 0); // the guest's program and data
  const log = new VhostUserDirtyLog(new Uint8Array(new SharedArrayBuffer(Math.ceil(PAGES / 8))));
  log.enabled = true;
  let backendPages = 0;
  /** The back-end fills a few receive buffers (pages 512..1023, all zero at first) and marks them in its log. */
  const backendWrites = () => {
    for (let i = 0; i < 8; i++) {
      const p = 512 + ((backendPages * 37 + i * 61) % 512);
      ram.set(randomBytes(PAGE), p * PAGE);
      log.markGuest(p * PAGE, PAGE);
    }
    backendPages += 8;
  };
  const fakeVm = {
    setUserMemoryRegion() {},
    getDirtyLog(_slot: number, bitmap: BigUint64Array) {
      bitmap.fill(0n); // the vCPUs write nothing here; the back-end writes between every two looks
      backendWrites();
    },
  } as unknown as Vm;
  try {
    const result = await migrate(
      { kind: "unix", path },
      { downtimeMs: 0, maxRounds: 4, verify: false, replyTimeoutMs: 10_000 },
      {
        ram,
        vm: fakeVm,
        slot: { slot: 0, guestPhysAddr: 0, size: RAM, userspaceAddr: 0n },
        pageLog: new DevicePageLog(DevicePageLog.create(RAM)),
        externalLog: withLog
          ? {
              start: async () => {},
              take: (add) => log.take(add),
              stop: () => {},
            }
          : undefined,
        cpus: 1,
        // The guest stops; the back-end's rings stop too, after its last writes (GET_VRING_BASE).
        stop: async () => {
          backendWrites();
          return { sections: [], ringPages: [] };
        },
        resume: () => {},
      },
    );
    const got = dest.ram();
    assert.ok(got !== null, "the destination got a stream");
    return { same: Buffer.from(got).equals(Buffer.from(ram)), rounds: result.rounds.length, backendPages };
  } finally {
    dest.close();
  }
}

test("the back-ends' dirty log is taken every round and after the stop: the destination's RAM is the source's", async () => {
  const logged = await run(true);
  assert.equal(logged.rounds, 4, "not converged (downtime 0): maxRounds");
  assert.ok(
    logged.backendPages >= 40,
    `the back-end wrote in every round (${logged.backendPages} page writes)`,
  );
  assert.equal(logged.same, true, "every page the back-end wrote reached the destination");
  // The control: without its log, what the back-end wrote after round 1 never goes.
  const unlogged = await run(false);
  assert.equal(unlogged.same, false, "without the back-ends' log the destination misses their writes");
});
