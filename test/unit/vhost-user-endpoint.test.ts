/**
 * VhostUserEndpoint's loop state, turned by hand on this thread (as serveVhostUser and the switch's runner turn
 * it): busy polling starts when a ring moves and asks the driver not to kick; it ends with the connection, so a
 * back-end without a front-end sleeps instead of spinning.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { VirtioNet } from "../../src/devices/virtio/net.ts";
import { native } from "../../src/native.ts";
import { VhostUserEndpoint } from "../../src/vhost-user/endpoint.ts";
import { SinkBackend, zeroCounts } from "../../src/vhost-user/net-backends.ts";
import { NetFrontend, SocketChannel } from "../helpers/vhost-user-frontend.ts";

test("busy polling ends with the connection: the endpoint then lets its loop sleep", () => {
  const dir = mkdtempSync(join(tmpdir(), "vireo-endpoint-"));
  const counts = zeroCounts();
  const sink = new SinkBackend(counts);
  const logs: string[] = [];
  // A busy window far longer than the test: only the connection's end can stop the polling.
  const ep = new VhostUserEndpoint({
    socketPath: join(dir, "sock"),
    model: () => new VirtioNet({ backend: sink, name: "net0", queueSize: 256 }),
    log: (m) => logs.push(m),
    busyPollMs: 60_000,
  });
  const pollfds = new Int32Array(3 * 20);
  const turn = () => {
    const used = ep.addPollFds(pollfds, 0);
    native().poll(pollfds.subarray(0, 3 * used), 0);
    ep.handlePoll(pollfds);
  };
  try {
    ep.listen();
    const fe = new NetFrontend(new SocketChannel(native().unixConnect(ep.socketPath), turn));
    turn(); // accept
    assert.ok(ep.connected);
    fe.setup();
    fe.startRing(0);
    fe.startRing(1);
    fe.transmit([new Uint8Array(60), new Uint8Array(60)]);
    for (let i = 0; i < 100 && counts.txFrames < 2; i++) turn();
    assert.equal(counts.txFrames, 2);
    assert.equal(ep.wantsImmediate(), true, "busy: the loop does not sleep");
    fe.rx.addChain([], [1526]);
    assert.equal(fe.rx.kickNeeded(), false, "busy: the driver is asked not to kick");
    fe.close();
    for (let i = 0; i < 100 && ep.connected; i++) turn();
    assert.equal(ep.connected, false);
    assert.equal(ep.wantsImmediate(), false, "no front-end: the loop may sleep");
  } finally {
    ep.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
