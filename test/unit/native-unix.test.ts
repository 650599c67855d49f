/**
 * The addon's Unix-socket and mapping calls that vhost-user needs (native/vireo_native.cc): fds passed with
 * SCM_RIGHTS arrive as working fds, more than the receiver makes room for are reported (the kernel closes them),
 * a memfd maps at an offset both by mmap and by mmapFixed over a reservation, and bad arguments are refused.
 */
import assert from "node:assert/strict";
import { ftruncateSync, unlinkSync } from "node:fs";
import { test } from "node:test";
import {
  EAGAIN,
  EFD_CLOEXEC,
  EFD_NONBLOCK,
  MFD_CLOEXEC,
  native,
  signalEventFd,
  takeEventFd,
} from "../../src/native.ts";

test("sendmsg/recvmsg carry bytes and fds; a non-blocking socket with nothing to read says EAGAIN", () => {
  const n = native();
  const [a, b] = n.socketpair(true);
  const ev = n.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  assert.equal(n.sendmsg(a, Uint8Array.of(1, 2, 3), [ev]), 3);
  const buf = new Uint8Array(8);
  const r = n.recvmsg(b, buf, 8);
  assert.equal(r.bytes, 3);
  assert.equal(r.fds.length, 1);
  assert.equal(r.truncated, false);
  // The received fd is the same eventfd.
  signalEventFd(r.fds[0] as number);
  assert.equal(takeEventFd(ev), 1);
  assert.equal(n.recvmsg(b, buf, 8).bytes, -EAGAIN);
  // Ten fds do not fit in room for one or two: the message says so.
  assert.throws(() => n.sendmsg(a, Uint8Array.of(0), new Array(9).fill(ev)), /at most 8/);
  assert.equal(n.sendmsg(a, Uint8Array.of(0), new Array(8).fill(ev)), 1);
  const t = n.recvmsg(b, buf, 1);
  assert.equal(t.truncated, true);
  assert.ok(t.fds.length < 8);
  for (const fd of [...r.fds, ...t.fds, a, b, ev]) n.close(fd);
});

test("a memfd maps at an offset (mmap) and over a reservation (mmapFixed), sharing its pages", () => {
  const n = native();
  const fd = n.memfdCreate("native-unix-test", MFD_CLOEXEC);
  ftruncateSync(fd, 4 << 20);
  const at = n.mmap(fd, 1 << 20, 2 << 20);
  new Uint8Array(at.buffer)[10] = 77;
  const res = n.mmapReserve(8 << 20, 2 << 20);
  assert.equal(res.address % (2n << 20n), 0n);
  const view = new Uint8Array(res.buffer, 4 << 20, 1 << 20);
  n.mmapFixed(view, fd, 2 << 20);
  assert.equal(view[10], 77);
  view[11] = 5;
  assert.equal(new Uint8Array(at.buffer)[11], 5);
  // The rest of the reservation is private zero pages.
  assert.equal(new Uint8Array(res.buffer)[0], 0);
  assert.throws(() => n.mmapFixed(new Uint8Array(res.buffer, 100, 4096), fd, 0), /page multiples/);
  assert.throws(() => n.mmapFixed(new Uint8Array(res.buffer, 0, 4096), 1 << 20, 0), /EBADF/);
  // A failed mapping leaves the range mapped (zero pages), not a hole.
  assert.equal(new Uint8Array(res.buffer)[5], 0);
  n.close(fd);
});

test("unixListen/unixConnect/accept", () => {
  const n = native();
  const path = `/tmp/vireo-native-unix-${process.pid}.sock`;
  const l = n.unixListen(path, 1);
  assert.equal(n.accept(l), -EAGAIN);
  const c = n.unixConnect(path);
  const s = n.accept(l);
  assert.ok(s >= 0);
  assert.equal(n.sendmsg(c, Uint8Array.of(9)), 1);
  const buf = new Uint8Array(1);
  assert.equal(n.recvmsg(s, buf, 0).bytes, 1);
  assert.equal(buf[0], 9);
  for (const fd of [l, c, s]) n.close(fd);
  unlinkSync(path);
  assert.throws(() => n.unixListen("x".repeat(200)), /1 to 107 bytes/);
});
