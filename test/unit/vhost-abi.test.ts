import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { repoPath } from "../../src/paths.ts";
import {
  memoryTable,
  SIZEOF,
  VHOST,
  VHOST_F_LOG_ALL,
  VHOST_NET_F_VIRTIO_NET_HDR,
  vringAddr,
} from "../../src/vhost-net/abi.ts";

// Compile native/vhost-abi-check.c against this system's <linux/vhost.h> and compare every constant vireo encodes.
const binary = join(mkdtempSync(join(tmpdir(), "vireo-vhost-abi-")), "vhost-abi-check");
execFileSync("gcc", ["-o", binary, repoPath("native", "vhost-abi-check.c")]);
const facts = JSON.parse(execFileSync(binary, { encoding: "utf8" })) as Record<string, number>;

function fact(name: string): number {
  const v = facts[name];
  assert.notEqual(v, undefined, `vhost-abi-check prints no ${name}`);
  return v as number;
}

test("vhost ioctl request numbers match <linux/vhost.h>", () => {
  for (const [name, value] of Object.entries(VHOST))
    assert.equal(value, fact(`VHOST_${name}`), `VHOST_${name}`);
});

test("vhost feature bits and struct sizes match", () => {
  assert.equal(VHOST_NET_F_VIRTIO_NET_HDR, fact("VHOST_NET_F_VIRTIO_NET_HDR"));
  assert.equal(VHOST_F_LOG_ALL, fact("VHOST_F_LOG_ALL"));
  for (const [name, size] of Object.entries(SIZEOF)) assert.equal(size, fact(`sizeof.${name}`), name);
});

test("the encoded structs have the header's layout", () => {
  const t = memoryTable([{ guestAddr: 0x1000n, size: 0x2000n, userAddr: 0x7f0000000000n }]);
  assert.equal(t.byteLength, fact("sizeof.vhost_memory") + fact("sizeof.vhost_memory_region"));
  assert.equal(t.getUint32(0, true), 1);
  assert.equal(t.getBigUint64(8, true), 0x1000n);
  assert.equal(t.getBigUint64(16, true), 0x2000n);
  assert.equal(t.getBigUint64(24, true), 0x7f0000000000n);
  const a = vringAddr(1, { desc: 1n, used: 2n, avail: 3n });
  assert.equal(a.byteLength, fact("sizeof.vhost_vring_addr"));
  assert.deepEqual(
    [a.getUint32(0, true), a.getBigUint64(8, true), a.getBigUint64(16, true), a.getBigUint64(24, true)],
    [1, 1n, 2n, 3n],
  );
});
