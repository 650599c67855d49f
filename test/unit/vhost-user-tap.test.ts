/**
 * `vireo vhost-user net --tap NAME`: the back-end as a process, inside a network namespace with a TAP that has
 * an address (test/helpers/netns.ts), driven over its socket by the test's own front-end
 * (test/helpers/vhost-user-frontend.ts). The "guest" asks the host kernel for its MAC (ARP) and pings it (ICMP);
 * the kernel's answers come back through the TAP onto the receive ring. Both directions are real: the kernel
 * answers only what reached it, and the answers only reach the ring through the back-end's TAP reads. While an
 * answer waits for receive buffers, and while nothing happens, the back-end must sleep (its CPU time is read
 * from /proc). A host flooding the TAP is read one work budget (TAP_RX_SLICE frames) per turn of the loop.
 * Then the command-line errors: no /dev/net/tun, a bad or too long name, no permission.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { zeroCounts } from "../../src/vhost-user/net-backends.ts";
import { openTapNet, TAP_RX_SLICE } from "../../src/vhost-user/tap-net.ts";
import { VIREO_BIN, vireo } from "../helpers/cli.ts";
import { netnsMaker, netnsUnavailable } from "../helpers/netns.ts";
import { NET_HDR, NetFrontend, SocketChannel } from "../helpers/vhost-user-frontend.ts";

const dir = mkdtempSync(join(tmpdir(), "vireo-vhost-user-tap-"));
const children: ChildProcess[] = [];
after(() => {
  for (const c of children) if (c.exitCode === null) c.kill("SIGKILL");
});
const netnsSkip = netnsUnavailable() ?? false;
const makeNs = netnsSkip ? () => assert.fail("no netns") : netnsMaker();

const GUEST_MAC = [0x02, 0x76, 0x69, 0x00, 0x00, 0x02];
const GUEST_IP = [10, 0, 3, 2];
const HOST_IP = [10, 0, 3, 1];

function checksum(b: Uint8Array, from: number, to: number): number {
  let sum = 0;
  for (let i = from; i < to; i += 2) sum += ((b[i] as number) << 8) | (i + 1 < to ? (b[i + 1] as number) : 0);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

/** An ARP request (RFC 826) from the guest: who has HOST_IP? */
function arpRequest(): Uint8Array {
  const f = new Uint8Array(60);
  const v = new DataView(f.buffer);
  f.fill(0xff, 0, 6);
  f.set(GUEST_MAC, 6);
  v.setUint16(12, 0x0806);
  v.setUint16(14, 1); // Ethernet
  v.setUint16(16, 0x0800); // IPv4
  f[18] = 6;
  f[19] = 4;
  v.setUint16(20, 1); // request
  f.set(GUEST_MAC, 22);
  f.set(GUEST_IP, 28);
  f.set(HOST_IP, 38);
  return f;
}

/** An ICMP echo request (RFC 792) from the guest to the host, with `payload`. */
function echoRequest(hostMac: Uint8Array, id: number, seq: number, payload: Uint8Array): Uint8Array {
  const ip = 14;
  const icmp = ip + 20;
  const f = new Uint8Array(icmp + 8 + payload.length);
  const v = new DataView(f.buffer);
  f.set(hostMac, 0);
  f.set(GUEST_MAC, 6);
  v.setUint16(12, 0x0800);
  f[ip] = 0x45;
  v.setUint16(ip + 2, f.length - ip);
  f[ip + 8] = 64;
  f[ip + 9] = 1; // ICMP
  f.set(GUEST_IP, ip + 12);
  f.set(HOST_IP, ip + 16);
  v.setUint16(ip + 10, checksum(f, ip, ip + 20));
  f[icmp] = 8; // echo request
  v.setUint16(icmp + 4, id);
  v.setUint16(icmp + 6, seq);
  f.set(payload, icmp + 8);
  v.setUint16(icmp + 2, checksum(f, icmp, f.length));
  return f;
}

/** utime + stime of a process, in clock ticks (/proc/PID/stat fields 14 and 15). */
function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return Number(fields[11]) + Number(fields[12]);
}

/** Waits until the back-end is idle, then its CPU ticks over `ms` (100 ticks a second on Linux). */
async function idleTicks(pid: number, ms: number): Promise<number> {
  await sleep(200);
  const before = cpuTicks(pid);
  await sleep(ms);
  return cpuTicks(pid) - before;
}

/** Frames that came back on the receive ring, without their virtio-net headers (which must be 12 bytes). */
function received(fe: NetFrontend): Uint8Array[] {
  return fe.rx.usedChains().map((u) => {
    assert.ok(u.len >= NET_HDR + 14, `receive buffer used for ${u.len} bytes`);
    return u.written.subarray(NET_HDR);
  });
}

async function waitFrames(
  fe: NetFrontend,
  want: (f: Uint8Array) => boolean,
  what: string,
): Promise<Uint8Array> {
  const deadline = Date.now() + 20_000;
  const seen: Uint8Array[] = [];
  for (;;) {
    for (const f of received(fe)) {
      seen.push(f);
      if (want(f)) return f;
    }
    if (Date.now() > deadline) throw new Error(`no ${what} among ${seen.length} frames received`);
    fe.waitCall(0, 100);
    await sleep(0);
  }
}

describe("vireo vhost-user net --tap", () => {
  test("the host kernel answers the guest's ARP and ping through the TAP", { skip: netnsSkip }, async () => {
    const ns = makeNs();
    const addr = spawnSync(ns.exec(["ip"])[0] as string, [
      ...ns.exec(["ip", "addr", "add", "10.0.3.1/24", "dev", ns.tap]).slice(1),
    ]);
    assert.equal(addr.status, 0, String(addr.stderr));
    const socket = join(dir, "tap.sock");
    const argv = ns.exec([VIREO_BIN, "vhost-user", "net", "--socket", socket, "--tap", ns.tap, "--once"]);
    const child = spawn(argv[0] as string, argv.slice(1), { stdio: ["ignore", "pipe", "pipe"] });
    children.push(child);
    let out = "";
    let err = "";
    child.stdout?.on("data", (d) => (out += d));
    child.stderr?.on("data", (d) => (err += d));
    const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
    const deadline = Date.now() + 60_000;
    while (!existsSync(socket)) {
      if (child.exitCode !== null || Date.now() > deadline) throw new Error(`back-end did not start: ${err}`);
      await sleep(50);
    }
    // `ip netns exec` execs the command, so the child's pid is the back-end's.
    const pid = child.pid as number;

    const fe = new NetFrontend(SocketChannel.connect(socket));
    fe.setup();
    fe.startRing(0);
    fe.startRing(1);

    // Guest to host: the kernel answers the ARP request. No receive buffers yet: the answer waits at the
    // back-end, which must not spin meanwhile.
    fe.transmit([arpRequest()]);
    assert.ok(fe.waitCall(1, 10_000), "the transmit buffer came back");
    assert.equal(fe.tx.usedChains().length, 1);
    const waiting = await idleTicks(pid, 1500);
    // A spinning loop would use about 150 ticks; a loaded machine may charge a few to a sleeping one.
    assert.ok(waiting <= 30, `the back-end used ${waiting} ticks in 1.5 s with a frame waiting for buffers`);

    fe.postReceiveBuffers(32);
    const arp = await waitFrames(
      fe,
      (f) => f[12] === 0x08 && f[13] === 0x06 && f[21] === 2,
      "ARP reply from the host",
    );
    assert.deepEqual([...arp.subarray(0, 6)], GUEST_MAC, "the reply is addressed to the guest");
    assert.deepEqual([...arp.subarray(28, 32)], HOST_IP, "the sender is the host's address");
    const hostMac = arp.slice(22, 28);
    const link = JSON.parse(
      String(
        spawnSync(ns.exec(["ip"])[0] as string, ns.exec(["ip", "-j", "link", "show", ns.tap]).slice(1))
          .stdout,
      ),
    ) as Array<{ address: string }>;
    assert.equal(
      [...hostMac].map((b) => b.toString(16).padStart(2, "0")).join(":"),
      link[0]?.address,
      "the ARP answer gives the TAP's MAC",
    );

    // A ping, with a payload that must come back unchanged.
    const payload = Uint8Array.from({ length: 200 }, (_, i) => (i * 7 + 3) & 0xff);
    for (let seq = 1; seq <= 3; seq++) {
      fe.transmit([echoRequest(hostMac, 0x7669, seq, payload)]);
      const reply = await waitFrames(
        fe,
        (f) => f[12] === 0x08 && f[13] === 0x00 && f[23] === 1 && f[34] === 0 && f[40] === 0 && f[41] === seq,
        `echo reply ${seq}`,
      );
      assert.deepEqual([...reply.subarray(26, 30)], HOST_IP);
      assert.deepEqual([...reply.subarray(30, 34)], GUEST_IP);
      assert.deepEqual(reply.subarray(42, 42 + payload.length), payload, `echo reply ${seq} payload`);
      fe.postReceiveBuffers(1);
    }
    fe.tx.usedChains();
    const idle = await idleTicks(pid, 1500);
    assert.ok(idle <= 30, `the back-end used ${idle} ticks in 1.5 s idle`);

    // The host side saw the guest's frames as received on the TAP.
    const stats = JSON.parse(
      String(
        spawnSync(ns.exec(["ip"])[0] as string, ns.exec(["ip", "-j", "-s", "link", "show", ns.tap]).slice(1))
          .stdout,
      ),
    ) as Array<{ stats64: { rx: { packets: number }; tx: { packets: number } } }>;
    const tapRx = stats[0]?.stats64.rx.packets ?? -1;
    const tapTx = stats[0]?.stats64.tx.packets ?? -1;
    assert.equal(tapRx, 4, "the TAP received the guest's ARP request and 3 echo requests");
    fe.close();
    assert.equal(await exited, 0, err);
    const end = JSON.parse(out.trim().split("\n")[0] as string) as Record<string, number | string>;
    assert.equal(end.txFrames, 4, "frames the guest sent, counted by the back-end");
    assert.equal(end.txBytes, 60 + 3 * (14 + 20 + 8 + payload.length));
    assert.equal(end.rxFrames, tapTx, "every frame the host sent on the TAP reached the guest");
    assert.ok((end.rxFrames as number) >= 4, `rxFrames ${end.rxFrames}`);
    assert.equal(end.dropped, 0);
  });

  test("a second front-end gets the TAP after the first leaves", { skip: netnsSkip }, async () => {
    const ns = makeNs();
    const addr = spawnSync("ip", ns.exec(["ip", "addr", "add", "10.0.3.1/24", "dev", ns.tap]).slice(1));
    assert.equal(addr.status, 0, String(addr.stderr));
    const socket = join(dir, "tap-again.sock");
    const argv = ns.exec([VIREO_BIN, "vhost-user", "net", "--socket", socket, "--tap", ns.tap]);
    const child = spawn(argv[0] as string, argv.slice(1), { stdio: ["ignore", "pipe", "pipe"] });
    children.push(child);
    let out = "";
    let err = "";
    child.stdout?.on("data", (d) => (out += d));
    child.stderr?.on("data", (d) => (err += d));
    const deadline = Date.now() + 60_000;
    while (!existsSync(socket)) {
      if (child.exitCode !== null || Date.now() > deadline) throw new Error(`back-end did not start: ${err}`);
      await sleep(50);
    }
    for (let round = 1; round <= 2; round++) {
      const fe = new NetFrontend(SocketChannel.connect(socket));
      fe.setup();
      fe.startRing(0);
      fe.startRing(1);
      fe.postReceiveBuffers(8);
      fe.transmit([arpRequest()]);
      const arp = await waitFrames(
        fe,
        (f) => f[12] === 0x08 && f[13] === 0x06 && f[21] === 2,
        `ARP reply ${round}`,
      );
      assert.deepEqual([...arp.subarray(28, 32)], HOST_IP, `round ${round}`);
      fe.close();
      const deadline2 = Date.now() + 20_000;
      while (out.split("\n").length <= round) {
        if (Date.now() > deadline2) throw new Error(`no connection-end line ${round}: ${err}`);
        await sleep(20);
      }
      const end = JSON.parse(out.split("\n")[round - 1] as string) as Record<string, number>;
      assert.equal(end.txFrames, 1, `round ${round}: ${JSON.stringify(end)}`);
      assert.equal(end.rxFrames, 1, `round ${round}: ${JSON.stringify(end)}`);
    }
    child.kill("SIGTERM");
  });

  test("a flooded TAP is read one slice of frames per turn", { skip: netnsSkip }, () => {
    // A TAP of this process (so it is in this namespace): no address, IPv6 off, only the test's frames on it.
    const name = `vub${process.pid % 100000}`;
    const counts = zeroCounts();
    const { backend, close } = openTapNet(name, counts);
    try {
      for (const args of [
        ["sysctl", "-qw", `net.ipv6.conf.${name}.disable_ipv6=1`],
        ["ip", "link", "set", name, "up"],
      ]) {
        const r = spawnSync(args[0] as string, args.slice(1), { encoding: "utf8" });
        assert.equal(r.status, 0, r.stderr);
      }
      const total = 2 * TAP_RX_SLICE + 88;
      // The host sends frames out of the TAP (AF_PACKET), so they wait on the TAP's fd: 60 bytes, numbered.
      let sent = 0;
      const inject = (n: number) => {
        const py = spawnSync(
          "python3",
          [
            "-c",
            `import socket,sys
s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW)
s.bind((sys.argv[1],0))
for i in range(int(sys.argv[2]),int(sys.argv[3])):
    s.send(b"\\xff"*6+bytes.fromhex("020000000001")+b"\\x88\\xb5"+i.to_bytes(4,"big")+bytes(42))`,
            name,
            String(sent),
            String(sent + n),
          ],
          { encoding: "utf8" },
        );
        assert.equal(py.status, 0, py.stderr);
        sent += n;
      };
      inject(total);
      const got: number[] = [];
      backend.attach((f) => {
        // Each frame behind its 12-byte virtio-net header, in order.
        got.push(new DataView(f.buffer, f.byteOffset).getUint32(NET_HDR + 14));
        return true;
      });
      const input = backend.input();
      assert.ok(input.wants());
      assert.equal(input.onReadable(), true, "a full slice: more is owed");
      assert.equal(got.length, TAP_RX_SLICE);
      backend.rxReady();
      assert.equal(got.length, 2 * TAP_RX_SLICE, "rxReady reads one slice too");
      assert.equal(input.onReadable(), false, "the rest, less than a slice");
      assert.equal(got.length, total);
      assert.deepEqual(
        got,
        Array.from({ length: total }, (_, i) => i),
      );
      assert.equal(counts.rxFrames, total);
      assert.equal(counts.rxBytes, total * 60);
      // A guest with no buffers: the frame waits at the back-end and the TAP is not polled meanwhile.
      let room = false;
      backend.attach((f) => {
        if (!room) return false;
        got.push(new DataView(f.buffer, f.byteOffset).getUint32(NET_HDR + 14));
        return true;
      });
      inject(2);
      assert.equal(input.onReadable(), false);
      assert.equal(input.wants(), false, "a frame waits for buffers: the TAP is not polled");
      room = true;
      backend.rxReady();
      assert.deepEqual(got.slice(total), [total, total + 1], "the waiting frame first, then the next");
      assert.ok(input.wants(), "nothing waits: polled again");
    } finally {
      close();
      spawnSync("ip", ["link", "del", name]);
    }
  });

  test("command-line errors are one clear line", { skip: process.getuid?.() !== 0 && "needs root" }, () => {
    const socket = join(dir, "x.sock");
    const cases: Array<[string[], RegExp, string[]?]> = [
      [["--tap", "a-name-of-17-byte"], /--tap a-name-of-17-byte: the name is 17 bytes, .* at most 15/],
      [["--tap", "a/b"], /--tap a\/b: an interface name is 1 to 15 letters/],
      [["--tap", "t0", "--sink"], /exactly one of --tap NAME, --shm SOCKET, --sink/],
      [
        ["--shm", join(dir, "nobody.sock")],
        /--shm .*nobody\.sock: cannot connect \(ENOENT\): is a vireo switch shm port listening there\?/,
      ],
      [
        ["--tap", "vu-denied"],
        /--tap vu-denied: no permission .*CAP_NET_ADMIN/,
        // Root without CAP_NET_ADMIN (TUNSETIFF's check), rather than another user: that user would also need
        // every directory above the checkout open to it, and a clone in `mktemp -d` is not.
        ["setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin"],
      ],
      [
        ["--tap", "vu-notun"],
        /--tap vu-notun: there is no \/dev\/net\/tun \(load the tun module/,
        // A private mount namespace where /dev/net is an empty tmpfs.
        ["unshare", "-m", "sh", "-c", 'mount -t tmpfs none /dev/net && exec "$0" "$@"'],
      ],
    ];
    for (const [args, re, prefix] of cases) {
      const r = vireo(["vhost-user", "net", "--socket", socket, ...args], { prefix });
      assert.equal(r.status, 125, `${args.join(" ")}: ${r.stderr}`);
      assert.match(r.stderr, re);
      assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
      assert.ok(!existsSync(socket), "nothing listens after a refused TAP");
    }
    const help = vireo(["vhost-user", "--help"]);
    assert.match(help.stdout, /--tap NAME/);
  });
});
