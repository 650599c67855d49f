/**
 * `vireo run --net switch=NAME`: the port attached on the running switch for the VM, the `--net vhost-user=` value
 * that uses it (checked by parseNet, which `vireo run` applies next), traffic through that port, and the detach.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { attachSwitchNet, detachSwitchNet, isSwitchNet } from "../../src/cli/net-switch.ts";
import { ConfigError } from "../../src/errors.ts";
import { native } from "../../src/native.ts";
import { connectShmChannel } from "../../src/net/shm-channel.ts";
import { controlRequest, defaultControlPath } from "../../src/switch/control.ts";
import { parseNet } from "../../src/vmm/pci-devices.ts";
import { VIREO_BIN, vireo } from "../helpers/cli.ts";
import { NET_HDR, NetFrontend, SocketChannel } from "../helpers/vhost-user-frontend.ts";

const dir = mkdtempSync(join(tmpdir(), "vireo-net-switch-"));
process.env.VIREO_RUN_DIR = dir;
let child: ChildProcess | null = null;
after(() => {
  if (child && child.exitCode === null) child.kill("SIGKILL");
});

test("--net switch=NAME attaches a vhost-user port for the VM, frames flow through it, and it is detached", async () => {
  const other = join(dir, "other.sock");
  child = spawn(VIREO_BIN, ["switch", "ns1", "--port", `vhost-user=${other},name=other,vlan=5`], {
    stdio: ["ignore", "ignore", "pipe"],
    env: { ...process.env, VIREO_RUN_DIR: dir },
  });
  let err = "";
  child.stderr?.on("data", (d) => {
    err += d;
  });
  const deadline = Date.now() + 60_000;
  while (!err.includes("ready")) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`switch did not start: ${err}`);
    await sleep(50);
  }
  assert.ok(existsSync(defaultControlPath("ns1")), "the switch's control socket is where vireo run looks");
  assert.ok(isSwitchNet("switch=ns1") && !isSwitchNet("tap=x"));

  const n = await attachSwitchNet("switch=ns1,vlan=5,mac=02:00:00:00:00:07", 0);
  assert.equal(n.port, `vm${process.pid}-0`);
  const cfg = parseNet(n.net);
  assert.equal(cfg.mac?.join(","), [2, 0, 0, 0, 0, 7].join(","));
  const sock = n.net.split(",")[0]?.slice("vhost-user=".length) as string;
  assert.ok(existsSync(sock), "the switch listens on the VM's socket");
  const show = (await controlRequest(defaultControlPath("ns1"), { op: "show" })) as {
    ports: Array<{ name: string; vlan: { vlan?: number } }>;
  };
  assert.deepEqual(
    show.ports.map((p) => [p.name, p.vlan.vlan]),
    [
      ["other", 5],
      [n.port, 5],
    ],
  );

  // The VM's side (here the test's front-end on the socket vireo run would use) reaches the other port.
  const vm = new NetFrontend(SocketChannel.connect(sock));
  vm.setup();
  vm.startRing(0);
  vm.startRing(1);
  const peer = new NetFrontend(SocketChannel.connect(other));
  peer.setup();
  peer.startRing(0);
  peer.startRing(1);
  peer.postReceiveBuffers(8);
  const f = new Uint8Array(64).fill(0x5a);
  f.set([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 7, 0x08, 0x00]);
  vm.transmit([f]);
  let got: Uint8Array[] = [];
  for (let i = 0; i < 200 && got.length === 0; i++) {
    peer.waitCall(0, 20);
    got = peer.rx.usedChains().map((u) => u.written.slice(NET_HDR, u.len));
  }
  assert.deepEqual(got, [f]);

  await detachSwitchNet(n);
  const after2 = (await controlRequest(defaultControlPath("ns1"), { op: "show" })) as {
    ports: Array<{ name: string }>;
  };
  assert.deepEqual(
    after2.ports.map((p) => p.name),
    ["other"],
  );
  vm.close();
  peer.close();

  // transport=shm: an shm port for the VM, `--net shm=` on it, and the VM's end (ShmNetBackend's channel, here
  // the test's) gets the other port's frames through the rings.
  const s = await attachSwitchNet("switch=ns1,vlan=5,transport=shm,mac=02:00:00:00:00:08", 1);
  assert.match(s.net, /^shm=.*,mac=02:00:00:00:00:08$/);
  const shmCfg = parseNet(s.net);
  assert.equal(shmCfg.shm, s.net.split(",")[0]?.slice("shm=".length));
  const shmKinds = (await controlRequest(defaultControlPath("ns1"), { op: "show" })) as {
    ports: Array<{ name: string; kind: string }>;
  };
  assert.deepEqual(
    shmKinds.ports.map((p) => [p.name, p.kind]),
    [
      ["other", "vhost-user"],
      [s.port, "shm"],
    ],
  );
  const { channel, conn } = connectShmChannel(shmCfg.shm as string);
  const peer2 = new NetFrontend(SocketChannel.connect(other));
  peer2.setup();
  peer2.startRing(0);
  peer2.startRing(1);
  const g = new Uint8Array(64).fill(0x33);
  g.set([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 9, 0x08, 0x00]);
  peer2.transmit([g]);
  let shmGot: Uint8Array | null = null;
  for (let i = 0; i < 400 && shmGot === null; i++) {
    if (channel.in.available() > 0) {
      const at = channel.in.frameAt();
      shmGot = channel.in.bytes.slice(at, at + channel.in.frameLength);
    } else await sleep(5);
  }
  assert.deepEqual(shmGot, g, "the broadcast reached the VM's shm port");
  channel.close();
  native().close(conn);
  peer2.close();
  await detachSwitchNet(s);
  await assert.rejects(
    attachSwitchNet("switch=ns1,transport=tcp", 2),
    /want transport=vhost-user or transport=shm/,
  );

  await assert.rejects(attachSwitchNet("switch=nosuch", 0), (e: unknown) => {
    return e instanceof ConfigError && /no switch listens on/.test(e.message);
  });
  await assert.rejects(attachSwitchNet("switch=ns1,model=e1000", 0), /unknown option 'model'/);
  await assert.rejects(attachSwitchNet("switch=ns1,vlan=9999", 1), /vlan=9999 is not a VLAN ID/);
  // vireo run itself: the port is attached, the run fails (no KVM here, or the emulated host refuses a switch
  // NIC), and the port is gone again.
  for (const accel of ["kvm", "emulated"]) {
    const r = vireo(["run", "--guest", "micro:hello", "--net", "switch=ns1", "--accel", accel], {
      env: { VIREO_RUN_DIR: dir },
    });
    assert.equal(r.status, 125, r.stderr);
    if (accel === "emulated")
      assert.match(r.stderr, /--net switch=: a switch on this host cannot reach a VM/);
    const left = (await controlRequest(defaultControlPath("ns1"), { op: "show" })) as {
      ports: Array<{ name: string }>;
    };
    assert.deepEqual(
      left.ports.map((p) => p.name),
      ["other"],
      `no port left behind (${accel}): ${r.stderr}`,
    );
  }
  child.kill("SIGTERM");
});
