import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { lstatSync, mkdtempSync, readFileSync, readlinkSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { gunzipSync } from "node:zlib";
import { CpioError, CpioWriter } from "../../src/image/cpio.ts";

// ---------------------------------------------------------------------------------------------------------------
// An independent newc reader, from man 5 cpio ("New ASCII Format").
// ---------------------------------------------------------------------------------------------------------------

interface Member {
  offset: number;
  ino: number;
  mode: number;
  uid: number;
  gid: number;
  nlink: number;
  mtime: number;
  devmajor: number;
  devminor: number;
  rdevmajor: number;
  rdevminor: number;
  check: number;
  name: string;
  data: Uint8Array;
}

function readNewc(buf: Uint8Array): Member[] {
  const ascii = (o: number, n: number) => String.fromCharCode(...buf.subarray(o, o + n));
  const out: Member[] = [];
  let o = 0;
  for (;;) {
    assert.equal(o % 4, 0, `member at ${o} is 4-byte aligned`);
    assert.equal(ascii(o, 6), "070701", `magic at ${o}`);
    const f = (i: number) => {
      const s = ascii(o + 6 + 8 * i, 8);
      assert.match(s, /^[0-9A-Fa-f]{8}$/);
      return Number.parseInt(s, 16);
    };
    const namesize = f(11);
    const filesize = f(6);
    const nameStart = o + 110;
    assert.equal(buf[nameStart + namesize - 1], 0, "name is NUL-terminated");
    const name = new TextDecoder().decode(buf.subarray(nameStart, nameStart + namesize - 1));
    let dataStart = nameStart + namesize;
    while (dataStart % 4 !== 0) {
      assert.equal(buf[dataStart], 0, "name padding is zero");
      dataStart++;
    }
    const data = buf.slice(dataStart, dataStart + filesize);
    assert.equal(data.length, filesize, `data of ${name} is complete`);
    out.push({
      offset: o,
      ino: f(0),
      mode: f(1),
      uid: f(2),
      gid: f(3),
      nlink: f(4),
      mtime: f(5),
      devmajor: f(7),
      devminor: f(8),
      rdevmajor: f(9),
      rdevminor: f(10),
      check: f(12),
      name,
      data,
    });
    o = dataStart + filesize;
    while (o % 4 !== 0) {
      assert.equal(buf[o], 0, "data padding is zero");
      o++;
    }
    if (name === "TRAILER!!!") break;
  }
  assert.equal(o, buf.length, "nothing follows the trailer");
  return out;
}

// ---------------------------------------------------------------------------------------------------------------

const MTIME = 1_700_000_000; // 2023-11-14 22:13:20 UTC
const INIT = "#!/bin/sh\necho hello from vireo\nexec /bin/sh\n";
const BLOB = Uint8Array.from({ length: 1001 }, (_, i) => (i * 31) & 0xff);

function sample(): CpioWriter {
  return new CpioWriter({ mtime: MTIME })
    .dir("/dev")
    .charDevice("/dev/console", 5, 1)
    .dir("/bin", { mode: 0o755 })
    .file("/bin/busybox", BLOB, { mode: 0o755 })
    .symlink("/bin/sh", "busybox")
    .file("/init", INIT, { mode: 0o755 })
    .file("/etc/hostname", "vireo\n") // parent /etc created automatically
    .file("/empty", new Uint8Array(0), { mode: 0o600, uid: 1000, gid: 100, mtime: 12345 })
    .blockDevice("/dev/vda", 254, 0, { mode: 0o660 })
    .dir("/tmp", { mode: 0o1777 });
}

describe("CpioWriter", () => {
  const archive = sample();
  const members = readNewc(archive.toCpio());

  it("writes members in order with parents first and the trailer last", () => {
    assert.deepEqual(
      members.map((m) => m.name),
      [
        "dev",
        "dev/console",
        "bin",
        "bin/busybox",
        "bin/sh",
        "init",
        "etc",
        "etc/hostname",
        "empty",
        "dev/vda",
        "tmp",
        "TRAILER!!!",
      ],
    );
    assert.equal(archive.size, 11);
  });

  it("numbers inodes uniquely and sets types, modes, owners, mtimes, links", () => {
    const by = new Map(members.map((m) => [m.name, m]));
    const real = members.slice(0, -1);
    assert.deepEqual(
      real.map((m) => m.ino),
      real.map((_, i) => i + 1),
    );
    assert.equal(by.get("dev")?.mode, 0o040755);
    assert.equal(by.get("dev")?.nlink, 2);
    assert.equal(by.get("bin/busybox")?.mode, 0o100755);
    assert.equal(by.get("bin/sh")?.mode, 0o120777);
    assert.equal(by.get("etc")?.mode, 0o040755);
    assert.equal(by.get("etc/hostname")?.mode, 0o100644);
    assert.equal(by.get("tmp")?.mode, 0o041777);
    assert.equal(by.get("init")?.mtime, MTIME);
    const empty = by.get("empty");
    assert.deepEqual([empty?.mode, empty?.uid, empty?.gid, empty?.mtime], [0o100600, 1000, 100, 12345]);
    for (const m of real) assert.equal(m.check, 0);
  });

  it("stores file data, symlink targets and device numbers", () => {
    const by = new Map(members.map((m) => [m.name, m]));
    assert.deepEqual(by.get("bin/busybox")?.data, BLOB);
    assert.equal(new TextDecoder().decode(by.get("init")?.data), INIT);
    assert.equal(new TextDecoder().decode(by.get("bin/sh")?.data), "busybox");
    const con = by.get("dev/console");
    assert.deepEqual([con?.mode, con?.rdevmajor, con?.rdevminor, con?.data.length], [0o020600, 5, 1, 0]);
    const vda = by.get("dev/vda");
    assert.deepEqual([vda?.mode, vda?.rdevmajor, vda?.rdevminor], [0o060660, 254, 0]);
    const trailer = members.at(-1);
    assert.deepEqual([trailer?.ino, trailer?.mode, trailer?.nlink, trailer?.data.length], [0, 0, 1, 0]);
  });

  it("aligns header+name and data to 4 bytes for every name length", () => {
    const w = new CpioWriter();
    for (let n = 1; n <= 8; n++) w.file("f".repeat(n), "x".repeat(n));
    const ms = readNewc(w.toCpio());
    assert.equal(ms.length, 9);
    ms.slice(0, -1).forEach((m, i) => {
      assert.equal(m.data.length, i + 1);
    });
  });

  it("gzips the archive (initramfs) and is deterministic", () => {
    const gz = sample().toInitramfs();
    assert.deepEqual([gz[0], gz[1]], [0x1f, 0x8b]);
    assert.deepEqual(new Uint8Array(gunzipSync(gz)), sample().toCpio());
    assert.deepEqual(sample().toInitramfs(), gz);
  });

  it("rejects duplicates, bad paths, non-directory parents and bad fields", () => {
    const err = (fn: () => unknown, pattern: RegExp) =>
      assert.throws(
        fn,
        (e: unknown) => e instanceof CpioError && e.code === "VIREO_CPIO_INVALID" && pattern.test(e.message),
      );
    err(() => new CpioWriter().file("/a", "").file("a", ""), /already has an entry "a"/);
    err(() => new CpioWriter().file("/", ""), /names no file/);
    err(() => new CpioWriter().file("/a/../b", ""), /contains ".."/);
    err(() => new CpioWriter().file("TRAILER!!!", ""), /reserved/);
    err(() => new CpioWriter().file("/a", "").file("/a/b", ""), /parent "a" of "a\/b" is not a directory/);
    err(() => new CpioWriter({ createParents: false }).file("/x/y", ""), /was not added first/);
    err(() => new CpioWriter().file("/a", "", { mode: 0o10644 }), /permission bits/);
    err(() => new CpioWriter().file("/a", "", { mtime: -1 }), /mtime/);
    err(() => new CpioWriter().charDevice("/c", 2 ** 32, 0), /device major/);
    err(() => new CpioWriter().symlink("/l", ""), /non-empty target/);
  });
});

// ---------------------------------------------------------------------------------------------------------------
// The system's GNU cpio as an independent reader (optional).
// ---------------------------------------------------------------------------------------------------------------

const hasCpio = spawnSync("cpio", ["--version"], { stdio: "ignore" }).status === 0;
const hasGzip = spawnSync("gzip", ["--version"], { stdio: "ignore" }).status === 0;
const skip = hasCpio && hasGzip ? false : "cpio or gzip not installed (apt-get install cpio)";
const env = { ...process.env, LC_ALL: "C", TZ: "UTC" };

describe("round trip through the system cpio", { skip }, () => {
  const gz = sample().toInitramfs();

  it("lists names, modes, owners, sizes and the device node with cpio -itvn", () => {
    const r = spawnSync("sh", ["-c", "gzip -dc | cpio -itvn"], { input: gz, env, encoding: "utf8" });
    assert.equal(r.status, 0, r.stderr);
    const lines = r.stdout.trim().split("\n");
    const entry = (name: string) => {
      const line = lines.find((l) => l.endsWith(` ${name}`) || l.includes(` ${name} -> `));
      assert.ok(line, `${name} listed in:\n${r.stdout}`);
      return line.split(/\s+/);
    };
    assert.equal(lines.length, 11);
    assert.deepEqual(entry("dev").slice(0, 5), ["drwxr-xr-x", "2", "0", "0", "0"]);
    // Device nodes list "major, minor" where the size would be.
    assert.deepEqual(entry("dev/console").slice(0, 6), ["crw-------", "1", "0", "0", "5,", "1"]);
    assert.deepEqual(entry("dev/vda").slice(0, 6), ["brw-rw----", "1", "0", "0", "254,", "0"]);
    assert.deepEqual(entry("bin/busybox").slice(0, 5), ["-rwxr-xr-x", "1", "0", "0", "1001"]);
    assert.deepEqual(entry("init").slice(0, 5), ["-rwxr-xr-x", "1", "0", "0", String(INIT.length)]);
    assert.deepEqual(entry("etc/hostname").slice(0, 5), ["-rw-r--r--", "1", "0", "0", "6"]);
    assert.deepEqual(entry("empty").slice(0, 5), ["-rw-------", "1", "1000", "100", "0"]);
    assert.deepEqual(entry("tmp")[0], "drwxrwxrwt");
    const sh = entry("bin/sh");
    assert.equal(sh[0], "lrwxrwxrwx");
    assert.deepEqual(sh.slice(-3), ["bin/sh", "->", "busybox"]);
    // The given mtime, in UTC.
    assert.deepEqual(entry("init").slice(5, 8), ["Nov", "14", "2023"]);
  });

  it("extracts file contents, modes and symlinks identical to the input", () => {
    const dir = mkdtempSync(join(tmpdir(), "vireo-cpio-"));
    try {
      // Device nodes are left out (-f: extract non-matching): creating them needs privileges.
      const r = spawnSync("sh", ["-c", "gzip -dc | cpio -idm --no-preserve-owner -f 'dev/*'"], {
        input: gz,
        cwd: dir,
        env,
        encoding: "utf8",
      });
      assert.equal(r.status, 0, r.stderr);
      assert.deepEqual(new Uint8Array(readFileSync(join(dir, "bin/busybox"))), BLOB);
      assert.equal(readFileSync(join(dir, "init"), "utf8"), INIT);
      assert.equal(readFileSync(join(dir, "etc/hostname"), "utf8"), "vireo\n");
      assert.equal(readFileSync(join(dir, "empty")).length, 0);
      assert.equal(readlinkSync(join(dir, "bin/sh")), "busybox");
      assert.equal(lstatSync(join(dir, "init")).mode & 0o7777, 0o755);
      assert.equal(lstatSync(join(dir, "etc/hostname")).mode & 0o7777, 0o644);
      assert.equal(lstatSync(join(dir, "empty")).mode & 0o7777, 0o600);
      assert.equal(lstatSync(join(dir, "init")).mtimeMs, MTIME * 1000);
      assert.ok(lstatSync(join(dir, "tmp")).isDirectory());
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
