/**
 * The load for `vireo bench switch --ports shm`: what testpmd's io forwarding does between two virtio_user ports,
 * over two shm ports of a switch instead (src/net/shm-channel.ts). Per pair, `burst` frames are sent from each
 * port at the start (A to B's MAC, B to A's), then every frame received on one port is sent out of the other,
 * unchanged, as testpmd's io mode forwards; it never sleeps (a polling peer, as testpmd). Prints a JSON line on
 * stdout when the measured window starts (after the warm-up) and one at the end: frames received in the window
 * and its length.
 *
 *   node bench/shm-loop.ts --pairs N --size BYTES --warmup-ms MS --ms MS SOCKET_A0 SOCKET_B0 [SOCKET_A1 ...]
 */
import { parseArgs } from "node:util";
import { native, signalEventFd } from "../src/native.ts";
import { connectShmChannel, type ShmChannelEnd } from "../src/net/shm-channel.ts";

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    size: { type: "string", default: "64" },
    burst: { type: "string", default: "128" },
    "warmup-ms": { type: "string", default: "1000" },
    ms: { type: "string", default: "3000" },
  },
});
const size = Number(values.size);
const burst = Number(values.burst);
const ends: ShmChannelEnd[] = [];
const conns: number[] = [];
for (const path of positionals) {
  const { channel, conn } = connectShmChannel(path);
  ends.push(channel);
  conns.push(conn);
}
if (ends.length === 0 || ends.length % 2 !== 0)
  throw new Error("give the sockets of whole pairs (A0 B0 A1 B1 ...)");

const mac = (pair: number, side: number) => [0x02, 0, 0, pair, side, 0];
function frame(pair: number, from: number, to: number): Uint8Array {
  const f = new Uint8Array(size);
  f.set(mac(pair, to), 0);
  f.set(mac(pair, from), 6);
  f[12] = 0x08; // IPv4 ethertype; the payload is zeros
  return f;
}
for (let i = 0; i < ends.length; i += 2) {
  const pair = i / 2;
  for (const [me, other] of [
    [0, 1],
    [1, 0],
  ] as const) {
    const end = ends[i + me] as ShmChannelEnd;
    const f = frame(pair, me, other);
    for (let k = 0; k < burst; k++) if (!end.out.push(f, 0, f.length)) break;
    if (end.out.publish()) signalEventFd(end.kickOther);
  }
}

const warmupEnd = performance.now() + Number(values["warmup-ms"]);
/**
 * The window's end, set when counting starts: from that moment, not from the warm-up's planned end. The loop looks
 * at the clock every 64 turns and may be descheduled, so counting can start late; a window ending at a fixed time
 * was then shorter than asked for (689 of 700 ms in one CI run).
 */
let end = Number.POSITIVE_INFINITY;
let received = 0;
let counting = false;
let start = 0;
for (let spin = 0; ; spin++) {
  if ((spin & 63) === 0) {
    const now = performance.now();
    if (!counting && now >= warmupEnd) {
      counting = true;
      received = 0;
      start = now;
      end = now + Number(values.ms);
      process.stdout.write(`${JSON.stringify({ event: "shm-loop-counting" })}\n`);
    }
    if (now >= end) break;
  }
  for (let i = 0; i < ends.length; i++) {
    const rx = (ends[i] as ShmChannelEnd).in;
    const tx = (ends[i ^ 1] as ShmChannelEnd).out;
    let n = rx.available();
    if (n === 0) continue;
    const bytes = rx.bytes;
    let sent = 0;
    while (n-- > 0) {
      const at = rx.frameAt();
      // io forwarding: out of the other port unchanged (dropped, as testpmd's would be, when that ring is full).
      if (tx.push(bytes, at, rx.frameLength)) sent++;
      rx.next();
      received++;
    }
    rx.release();
    if (sent > 0 && tx.publish()) signalEventFd((ends[i ^ 1] as ShmChannelEnd).kickOther);
  }
}
const ms = performance.now() - start;
process.stdout.write(`${JSON.stringify({ event: "shm-loop-end", received, ms })}\n`);
for (const e of ends) e.close();
for (const c of conns) native().close(c);
