/**
 * The emulated KVM host itself (src/emulated-host): what crosses between this host and the script inside, and the
 * watchdog. Boots QEMU (TCG), so each test takes tens of seconds; needs no KVM on this host.
 */
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, realpathSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { test } from "node:test";
import { emulatedHostUnavailable, runInEmulatedHost } from "../../src/emulated-host/host.ts";

const skip = emulatedHostUnavailable() ?? false;

test("stdin, stdout, stderr and the status cross separately, and a writable directory is written in place", {
  skip,
  timeout: 300_000,
}, async () => {
  const dir = realpathSync(mkdtempSync(join(tmpdir(), "vireo-emu-test-")));
  let out = "";
  let err = "";
  const r = await runInEmulatedHost({
    script: `read line; echo "out:$line"; echo "err:$line" >&2; echo "kvm:$(test -c /dev/kvm && echo yes)"; echo "$line" > ${dir}/written; exit 7`,
    writable: [dir],
    stdin: Readable.from(["hello there\n"]),
    onStdout: (d) => {
      out += d;
    },
    onStderr: (d) => {
      err += d;
    },
  });
  r.cleanup();
  assert.equal(r.status, 7, `${r.failure}\n${r.console.slice(-2000)}`);
  assert.equal(out, "out:hello there\nkvm:yes\n");
  assert.equal(err, "err:hello there\n");
  assert.equal(readFileSync(join(dir, "written"), "utf8"), "hello there\n");
  assert.ok((r.bootMs ?? 0) > 0 && (r.bootMs ?? 0) < r.wallMs, "the boot time is measured");
});

test("kernel messages on the console do not keep a silent script alive: the watchdog ends it", {
  skip,
  timeout: 300_000,
}, async () => {
  const r = await runInEmulatedHost({
    // <2>: critical, so it reaches the console despite `quiet`.
    script: "while :; do echo '<2>vireo-tick' > /dev/kmsg; sleep 1; done",
    idleTimeoutMs: 30_000,
  });
  r.cleanup();
  assert.equal(r.status, null);
  assert.match(r.failure ?? "", /the script printed nothing for 30 s \(kernel messages do not count\)/);
  assert.ok((r.console.match(/vireo-tick/g) ?? []).length >= 5, "the console kept printing meanwhile");
});
