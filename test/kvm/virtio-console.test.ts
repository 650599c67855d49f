/**
 * `--console virtio`: terminal input reaches the guest through virtio-console's receiveq, and what the guest
 * writes to its transmitq comes out on vireo's stdout, next to the UART's output.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { KvmSystem } from "../../src/kvm/system.ts";
import { MICRO_PROGRAMS } from "../../src/vmm/micro-guest.ts";
import { vireo } from "../helpers/cli.ts";

const skip = !KvmSystem.available()
  ? "no usable /dev/kvm on this host: KVM tests skipped"
  : (MICRO_PROGRAMS as readonly string[]).includes("virtio-console")
    ? false
    : "the micro guest has no virtio-console program yet";

test("terminal input and output go through virtio-console with --console virtio", { skip }, () => {
  const line = `typed ${Date.now()} into the terminal`;
  const r = vireo(["run", "--guest", "micro:virtio-console", "--console", "virtio", "--timeout", "60"], {
    input: `${line}\n`,
  });
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /virtio-console: hello\n/, "the guest's transmitq reached stdout");
  assert.ok(r.stdout.includes(`virtio-console: got ${line}\n`), `the typed line came back: ${r.stdout}`);
  assert.match(r.stdout, /virtio-console ok/);
});

test("with --console serial (the default) the same input stays on COM1 and the virtio-console is absent", {
  skip,
}, () => {
  const r = vireo(["run", "--guest", "micro:virtio-console", "--timeout", "60"], { input: "x\n" });
  assert.equal(r.status, 1, r.stdout + r.stderr);
  assert.match(r.stdout, /no virtio-console function \(1af4:1043\) on PCI bus 0/);
  assert.doesNotMatch(r.stdout, /virtio-console ok/);
});
