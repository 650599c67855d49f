import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { vireo } from "../helpers/cli.ts";
import { buildElf } from "../helpers/elf-builder.ts";

// Bad input gets one clear line on stderr and status 125, never a stack trace.
const dir = mkdtempSync(join(tmpdir(), "vireo-cli-"));

function assertOneLineError(r: { status: number | null; stderr: string }, pattern: RegExp): void {
  assert.equal(r.status, 125, `status 125 expected, stderr: ${r.stderr}`);
  const lines = r.stderr.trim().split("\n");
  assert.equal(lines.length, 1, `one line expected, got:\n${r.stderr}`);
  assert.match(lines[0] ?? "", /^vireo: /);
  assert.match(lines[0] ?? "", pattern);
  assert.doesNotMatch(r.stderr, /\n\s+at /, "no stack trace");
}

test("a missing kernel file", () => {
  assertOneLineError(vireo(["run", "--kernel", join(dir, "nope.elf")]), /kernel not found: .*nope\.elf/);
});

test("a kernel that is not an ELF file", () => {
  const path = join(dir, "text.elf");
  writeFileSync(
    path,
    "this is not an ELF image, just text long enough to have a header's worth of bytes\n".repeat(2),
  );
  assertOneLineError(vireo(["run", "--kernel", path]), /not an ELF file/);
});

test("memory too small for the image", () => {
  const path = join(dir, "big.elf");
  writeFileSync(path, buildElf([{ paddr: 0x100000, code: new Uint8Array([0xf4]), memsz: 8 * 1024 * 1024 }]));
  assertOneLineError(vireo(["run", "--kernel", path, "--mem", "4"]), /MiB/);
});

test("an unknown micro guest program", () => {
  assertOneLineError(
    vireo(["run", "--guest", "micro:no-such-thing"]),
    /unknown micro guest program 'no-such-thing' \(known: hello/,
  );
});

test("no KVM device, with --accel kvm", () => {
  const r = vireo(["run", "--guest", "micro:hello", "--accel", "kvm"], {
    env: { VIREO_KVM_DEVICE: join(dir, "no-kvm") },
  });
  assertOneLineError(r, /does not exist: this host has no KVM/);
});

test("--accel: a bad value, and --net refused for the emulated host before it boots", () => {
  assertOneLineError(
    vireo(["run", "--guest", "micro:hello", "--accel", "tcg"]),
    /--accel must be auto, kvm or emulated, got 'tcg'/,
  );
  assertOneLineError(vireo(["demo", "--accel", "fast"]), /--accel must be auto, kvm or emulated/);
  const started = Date.now();
  assertOneLineError(
    vireo(["run", "--guest", "micro:hello", "--accel", "emulated", "--net", "tap=vt0"]),
    /--net: a TAP or vhost-user socket on this host cannot reach a VM inside the emulated KVM host/,
  );
  assert.ok(Date.now() - started < 20_000, "refused without booting anything");
});

test("input errors come before the choice of host: a bad kernel with --accel emulated", () => {
  assertOneLineError(
    vireo(["run", "--kernel", join(dir, "nope.elf"), "--accel", "emulated"]),
    /kernel not found: .*nope\.elf/,
  );
});

test("a KVM device path that is not KVM", () => {
  const path = join(dir, "not-kvm");
  writeFileSync(path, "");
  assertOneLineError(
    vireo(["run", "--guest", "micro:hello"], { env: { VIREO_KVM_DEVICE: path } }),
    /is not a KVM device/, // auto uses a /dev/kvm that is there, even a broken one, and says what is wrong
  );
});

test("bad option values", () => {
  assertOneLineError(
    vireo(["run", "--guest", "micro:hello", "--mem", "lots"]),
    /--mem must be a whole number/,
  );
  assertOneLineError(
    vireo(["run", "--guest", "micro:hello", "--serial", "tty"]),
    /--serial must be stdio, none or file:PATH/,
  );
  assertOneLineError(
    vireo(["run", "--guest", "micro:hello", "--cpus", "0"]),
    /--cpus must be a whole number/,
  );
  assertOneLineError(vireo(["run"]), /give exactly one of --kernel FILE or --guest micro:NAME/);
  assertOneLineError(vireo(["run", "--guest", "micro:hello", "--bogus"]), /Unknown option '--bogus'/);
  assertOneLineError(vireo(["frobnicate"]), /unknown command 'frobnicate'/);
  assertOneLineError(vireo(["bench", "nothing"]), /unknown benchmark 'nothing'/);
});

test("bad --net and --console values", () => {
  const run = (...extra: string[]) => vireo(["run", "--guest", "micro:hello", ...extra]);
  assertOneLineError(run("--net", "tap=vt0,mac=zz"), /bad MAC 'zz'/);
  assertOneLineError(run("--net", "tap=vt0,mac=03:00:00:00:00:01"), /multicast address/);
  assertOneLineError(
    run("--net", "tap=vt0,model=rtl8139"),
    /unknown model 'rtl8139' \(known: virtio, e1000\)/,
  );
  assertOneLineError(run("--net", "vt0"), /unknown option 'vt0'/);
  assertOneLineError(
    run("--net", "mac=02:00:00:00:00:01"),
    /which backend\? \(--net tap=NAME, --net vhost-user=SOCKET or --net shm=SOCKET\)/,
  );
  assertOneLineError(run("--net", "shm=/tmp/x.sock,model=e1000"), /shm= serves virtio-net only/);
  assertOneLineError(
    run("--net", "shm=/tmp/x.sock,tap=vt0"),
    /give one of tap=NAME, vhost-user=SOCKET or shm=SOCKET/,
  );
  assertOneLineError(run("--net", "shm="), /shm= needs a socket path/);
  assertOneLineError(run("--net", "tap=vt0,vhost-user=/tmp/x.sock"), /either tap=NAME or vhost-user=SOCKET/);
  assertOneLineError(run("--net", "vhost-user=/tmp/x.sock,model=e1000"), /serves virtio-net only/);
  assertOneLineError(run("--net", "vhost-user="), /vhost-user= needs a socket path/);
  assertOneLineError(run("--net", "tap=this-name-is-too-long"), /1 to 15 letters/);
  assertOneLineError(run("--disk", "vhost-user="), /--disk vhost-user=: vhost-user= needs a socket path/);
  assertOneLineError(
    run("--disk", "vhost-user=/tmp/x.sock,direct"),
    /unknown option 'direct' \(known with vhost-user=: readonly/,
  );
  assertOneLineError(
    run("--disk", "vhost-user=/tmp/x.sock", "--accel", "emulated"),
    /--disk vhost-user=: a socket on this host cannot reach a VM inside the emulated KVM host/,
  );
  assertOneLineError(run("--console", "hvc"), /--console must be serial or virtio/);
});

test("--metrics to a file vireo cannot write is refused before the run, with the reason", () => {
  const r = vireo(["run", "--guest", "micro:hello", "--metrics", "/proc/vireo-metrics.json"]);
  assert.equal(r.status, 125, r.stderr);
  assert.match(r.stderr, /^vireo: --metrics \/proc\/vireo-metrics\.json: cannot write it \(E[A-Z]+\)$/m);
  assert.doesNotMatch(r.stderr, /internal error/);
});

test("--help works for every command and names every option the code accepts", () => {
  for (const cmd of [[], ["run"], ["demo"], ["bench"]]) {
    const r = vireo([...cmd, "--help"]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /Usage:/);
  }
  const run = vireo(["run", "--help"]).stdout;
  for (const flag of [
    "--kernel",
    "--guest",
    "--cmdline",
    "--mem",
    "--cpus",
    "--serial",
    "--metrics",
    "--timeout",
    "--accel",
  ]) {
    assert.ok(run.includes(flag), `run --help mentions ${flag}`);
  }
});

test("--restore, --lazy and --incoming: wrong combinations and endpoints are one line each, before anything runs", () => {
  assertOneLineError(vireo(["run", "--guest", "micro:hello", "--lazy"]), /--lazy goes with --restore DIR/);
  assertOneLineError(
    vireo(["run", "--restore", dir, "--incoming", "tcp:127.0.0.1:1"]),
    /--restore and --incoming: give one/,
  );
  assertOneLineError(vireo(["run", "--incoming", "127.0.0.1:4444"]), /want tcp:HOST:PORT or unix:PATH/);
  assertOneLineError(vireo(["run", "--incoming", "tcp:127.0.0.1:99999"]), /port from 1 to 65535/);
  assertOneLineError(
    vireo(["run", "--incoming", "tcp:127.0.0.1:4444", "--mem", "64"]),
    /--incoming: the machine is the one the source sends; --mem cannot go with it/,
  );
});
