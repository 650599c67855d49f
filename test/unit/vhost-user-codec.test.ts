/**
 * The vhost-user message codec (src/vhost-user/protocol.ts): each payload layout decoded, sizes and fd counts
 * checked per request with stable error codes, and a seeded fuzz of the incremental parser (10^5 cases by
 * default; VHOST_USER_FUZZ_CASES to change it) over streams of valid and mutated messages: only
 * VhostUserProtocolError comes out, the outcome does not depend on how the bytes are chunked, a stream of valid
 * messages parses whole, and every fd is either handed over in one message or closed once.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  addrPayload,
  encodeRequest,
  HEADER_SIZE,
  MAX_PAYLOAD,
  memoryPayload,
  type RawMemRegion,
  REQ,
  statePayload,
  u64Payload,
  type VhostUserMessage,
  VhostUserParser,
  VhostUserProtocolError,
} from "../../src/vhost-user/protocol.ts";

function parseAll(bytes: Uint8Array, fds: number[] = [], closed: number[] = []): VhostUserMessage[] {
  const p = new VhostUserParser({ closeFd: (fd) => closed.push(fd) });
  const out: VhostUserMessage[] = [];
  let at = 0;
  let first = true;
  while (at < bytes.length) {
    const n = Math.min(p.wanted, bytes.length - at);
    const m = p.push(bytes.subarray(at, at + n), first ? fds : []);
    first = false;
    at += n;
    if (m) out.push(m);
  }
  return out;
}

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof VhostUserProtocolError, `unexpected ${String(e)}`);
    return e.code;
  }
  return "none";
}

function header(request: number, flags: number, size: number): Uint8Array {
  const h = new Uint8Array(HEADER_SIZE);
  const v = new DataView(h.buffer);
  v.setUint32(0, request, true);
  v.setUint32(4, flags, true);
  v.setUint32(8, size, true);
  return h;
}

const region = (i: number): RawMemRegion => ({
  guestAddr: BigInt(i) << 30n,
  size: 0x100000n,
  userAddr: 0x7f0000000000n + (BigInt(i) << 30n),
  mmapOffset: BigInt(i) * 0x100000n,
});

describe("vhost-user codec", () => {
  test("each layout decodes", () => {
    const [a] = parseAll(encodeRequest(REQ.GET_FEATURES));
    assert.deepEqual(a?.body, { kind: "none" });
    const [b] = parseAll(encodeRequest(REQ.SET_FEATURES, u64Payload(0x1_4000_0000n), true));
    assert.deepEqual(b?.body, { kind: "u64", value: 0x1_4000_0000n });
    assert.equal(b?.needReply, true);
    const [c] = parseAll(encodeRequest(REQ.SET_VRING_NUM, statePayload(1, 256)));
    assert.deepEqual(c?.body, { kind: "state", index: 1, num: 256 });
    const [d] = parseAll(
      encodeRequest(
        REQ.SET_VRING_ADDR,
        addrPayload({ index: 1, flags: 1, desc: 1n, used: 2n, avail: 3n, log: 4n }),
      ),
    );
    assert.deepEqual(d?.body, { kind: "addr", index: 1, flags: 1, desc: 1n, used: 2n, avail: 3n, log: 4n });
    const regions = [region(0), region(1), region(2)];
    const [e] = parseAll(encodeRequest(REQ.SET_MEM_TABLE, memoryPayload(regions)), [10, 11, 12]);
    assert.deepEqual(e?.body, { kind: "memory", regions });
    assert.deepEqual(e?.fds, [10, 11, 12]);
    const [f] = parseAll(encodeRequest(REQ.SET_VRING_KICK, u64Payload(1n)), [7]);
    assert.deepEqual(f?.fds, [7]);
    const [g] = parseAll(encodeRequest(REQ.SET_VRING_CALL, u64Payload(0x101n)));
    assert.deepEqual(g?.fds, []);
  });

  test("several messages in one stream, fed a byte at a time", () => {
    const stream = Buffer.concat([
      encodeRequest(REQ.SET_OWNER),
      encodeRequest(REQ.SET_VRING_BASE, statePayload(0, 5)),
      encodeRequest(REQ.GET_PROTOCOL_FEATURES),
    ]);
    const p = new VhostUserParser();
    const got: number[] = [];
    for (let i = 0; i < stream.length; i++) {
      assert.ok(p.wanted >= 1);
      const m = p.push(stream.subarray(i, i + 1));
      if (m) got.push(m.request);
    }
    assert.deepEqual(got, [REQ.SET_OWNER, REQ.SET_VRING_BASE, REQ.GET_PROTOCOL_FEATURES]);
    assert.equal(p.midMessage, false);
  });

  test("framing errors have stable codes", () => {
    const p = () => new VhostUserParser();
    assert.equal(
      code(() => p().push(header(REQ.SET_OWNER, 0x2, 0))),
      "VHOST_USER_BAD_VERSION",
    );
    assert.equal(
      code(() => p().push(header(REQ.SET_OWNER, 0x5, 0))),
      "VHOST_USER_BAD_FLAGS",
    );
    assert.equal(
      code(() => p().push(header(REQ.SET_OWNER, 0x11, 0))),
      "VHOST_USER_BAD_FLAGS",
    );
    assert.equal(
      code(() => p().push(header(999, 1, 0))),
      "VHOST_USER_UNKNOWN_REQUEST",
    );
    assert.equal(
      code(() => p().push(header(0, 1, 0))),
      "VHOST_USER_UNKNOWN_REQUEST",
    );
    // Short and oversized payloads for their request, refused at the header (no payload byte is read).
    assert.equal(
      code(() => p().push(header(REQ.SET_FEATURES, 1, 4))),
      "VHOST_USER_BAD_SIZE",
    );
    assert.equal(
      code(() => p().push(header(REQ.SET_FEATURES, 1, 16))),
      "VHOST_USER_BAD_SIZE",
    );
    assert.equal(
      code(() => p().push(header(REQ.GET_FEATURES, 1, 8))),
      "VHOST_USER_BAD_SIZE",
    );
    assert.equal(
      code(() => p().push(header(REQ.SET_VRING_ADDR, 1, 32))),
      "VHOST_USER_BAD_SIZE",
    );
    assert.equal(
      code(() => p().push(header(REQ.SET_MEM_TABLE, 1, 8))),
      "VHOST_USER_BAD_SIZE",
    );
    assert.equal(
      code(() => p().push(header(REQ.SET_MEM_TABLE, 1, 8 + 32 * 9))),
      "VHOST_USER_BAD_SIZE",
    );
    assert.equal(
      code(() => p().push(header(REQ.SET_MEM_TABLE, 1, 8 + 33))),
      "VHOST_USER_BAD_SIZE",
    );
    assert.equal(
      code(() => p().push(header(REQ.SET_MEM_TABLE, 1, 0xffffffff))),
      "VHOST_USER_BAD_SIZE",
    );
    assert.equal(
      code(() => p().push(header(REQ.GET_CONFIG, 1, 12 + 257))),
      "VHOST_USER_BAD_SIZE",
    );
    // num regions disagreeing with the size.
    const table = memoryPayload([region(0), region(1)]);
    new DataView(table.buffer).setUint32(0, 3, true);
    assert.equal(
      code(() => parseAll(encodeRequest(REQ.SET_MEM_TABLE, table), [1, 2])),
      "VHOST_USER_BAD_PAYLOAD",
    );
    // More bytes than the message needs.
    assert.equal(
      code(() => p().push(new Uint8Array(HEADER_SIZE + 1))),
      "VHOST_USER_PUSH_TOO_MUCH",
    );
    // A parser that failed stays failed.
    const q = p();
    code(() => q.push(header(999, 1, 0)));
    assert.equal(
      code(() => q.push(encodeRequest(REQ.SET_OWNER))),
      "VHOST_USER_BAD_PAYLOAD",
    );
  });

  test("fds missing or extra are refused, and the parser closes the ones it was given", () => {
    const closed: number[] = [];
    const mem = encodeRequest(REQ.SET_MEM_TABLE, memoryPayload([region(0), region(1)]));
    assert.equal(
      code(() => parseAll(mem, [3], closed)),
      "VHOST_USER_BAD_FDS",
    );
    assert.deepEqual(closed, [3]);
    closed.length = 0;
    assert.equal(
      code(() => parseAll(mem, [3, 4, 5], closed)),
      "VHOST_USER_BAD_FDS",
    );
    assert.deepEqual(closed, [3, 4, 5]);
    closed.length = 0;
    assert.equal(
      code(() => parseAll(encodeRequest(REQ.SET_VRING_KICK, u64Payload(0n)), [], closed)),
      "VHOST_USER_BAD_FDS",
    );
    assert.equal(
      code(() => parseAll(encodeRequest(REQ.SET_VRING_KICK, u64Payload(0x100n)), [9], closed)),
      "VHOST_USER_BAD_FDS",
    );
    assert.equal(
      code(() => parseAll(encodeRequest(REQ.SET_OWNER), [8], closed)),
      "VHOST_USER_BAD_FDS",
    );
    assert.deepEqual(closed, [9, 8]);
    assert.equal(
      code(() => parseAll(encodeRequest(REQ.SET_OWNER), [1, 2, 3, 4, 5, 6, 7, 8, 9], closed)),
      "VHOST_USER_BAD_FDS",
    );
  });
});

// ---- fuzz ------------------------------------------------------------------------------------------------------

/** mulberry32: a small seeded generator, so a failing case is reproduced by its seed. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface GenMessage {
  bytes: Uint8Array;
  fds: number[];
  /** The message as the parser must return it, if it is valid. */
  valid: boolean;
}

const U64_REQS = [
  REQ.SET_FEATURES,
  REQ.SET_PROTOCOL_FEATURES,
  REQ.SEND_RARP,
  REQ.SET_STATUS,
  REQ.NET_SET_MTU,
];
const NONE_REQS = [
  REQ.GET_FEATURES,
  REQ.SET_OWNER,
  REQ.RESET_OWNER,
  REQ.GET_PROTOCOL_FEATURES,
  REQ.GET_QUEUE_NUM,
];
const STATE_REQS = [REQ.SET_VRING_NUM, REQ.SET_VRING_BASE, REQ.GET_VRING_BASE, REQ.SET_VRING_ENABLE];

function genMessage(r: () => number, nextFd: () => number): GenMessage {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)] as T;
  const big = () => (BigInt(Math.floor(r() * 2 ** 32)) << 32n) | BigInt(Math.floor(r() * 2 ** 32));
  const needReply = r() < 0.5;
  let bytes: Uint8Array;
  let nfds = 0;
  const kind = Math.floor(r() * 6);
  if (kind === 0) bytes = encodeRequest(pick(NONE_REQS), undefined, needReply);
  else if (kind === 1) bytes = encodeRequest(pick(U64_REQS), u64Payload(big()), needReply);
  else if (kind === 2)
    bytes = encodeRequest(
      pick(STATE_REQS),
      statePayload(Math.floor(r() * 2 ** 32), Math.floor(r() * 2 ** 32)),
      needReply,
    );
  else if (kind === 3) {
    bytes = encodeRequest(
      REQ.SET_VRING_ADDR,
      addrPayload({ index: Math.floor(r() * 4), desc: big(), used: big(), avail: big(), log: big() }),
      needReply,
    );
  } else if (kind === 4) {
    nfds = 1 + Math.floor(r() * 8);
    const regions = Array.from({ length: nfds }, () => ({
      guestAddr: big(),
      size: big(),
      userAddr: big(),
      mmapOffset: big(),
    }));
    bytes = encodeRequest(REQ.SET_MEM_TABLE, memoryPayload(regions), needReply);
  } else {
    const noFd = r() < 0.3;
    nfds = noFd ? 0 : 1;
    const req = pick([REQ.SET_VRING_KICK, REQ.SET_VRING_CALL, REQ.SET_VRING_ERR]);
    bytes = encodeRequest(req, u64Payload(BigInt(Math.floor(r() * 256)) | (noFd ? 0x100n : 0n)), needReply);
  }
  let valid = true;
  // Mutations: a byte of the header or payload, the size field, the fd count, a truncated payload.
  const m = r();
  if (m < 0.15) {
    const at = Math.floor(r() * bytes.length);
    bytes = bytes.slice();
    bytes[at] = Math.floor(r() * 256);
    valid = false; // may still be valid (same byte, or a payload byte): the oracle then only checks equality
  } else if (m < 0.25) {
    bytes = bytes.slice();
    new DataView(bytes.buffer).setUint32(
      8,
      r() < 0.5 ? Math.floor(r() * (MAX_PAYLOAD + 64)) : Math.floor(r() * 2 ** 32),
      true,
    );
    valid = false;
  } else if (m < 0.32) {
    nfds = Math.max(0, nfds + (r() < 0.5 ? -1 : 1 + Math.floor(r() * 3)));
    valid = false;
  } else if (m < 0.36) {
    bytes = bytes.subarray(0, Math.floor(r() * bytes.length));
    valid = false;
  } else if (m < 0.38) {
    bytes = new Uint8Array(Math.floor(r() * 40)).map(() => Math.floor(r() * 256));
    valid = false;
  }
  return { bytes, fds: Array.from({ length: nfds }, nextFd), valid };
}

interface Outcome {
  messages: string[];
  error: string;
  fdsOut: number[];
  closed: number[];
  /** Fds given to the parser. */
  pushed: number[];
}

function describeMessage(m: VhostUserMessage): string {
  return JSON.stringify(m, (_k, v) =>
    typeof v === "bigint" ? `${v}n` : v instanceof Uint8Array ? [...v] : v,
  );
}

/** Feeds the messages' bytes in chunks of at most `wanted` (sizes from `chunk`), each message's fds with its first read. */
function run(gen: GenMessage[], chunk: (wanted: number) => number): Outcome {
  const closed: number[] = [];
  const p = new VhostUserParser({ closeFd: (fd) => closed.push(fd) });
  const out: Outcome = { messages: [], error: "none", fdsOut: [], closed, pushed: [] };
  try {
    for (const g of gen) {
      let at = 0;
      let fds = g.fds;
      out.pushed.push(...fds);
      if (g.bytes.length === 0 && fds.length > 0) p.push(g.bytes, fds);
      while (at < g.bytes.length) {
        const n = Math.min(chunk(p.wanted), g.bytes.length - at);
        const m = p.push(g.bytes.subarray(at, at + n), fds);
        fds = [];
        at += n;
        if (m) {
          out.messages.push(describeMessage(m));
          out.fdsOut.push(...m.fds);
        }
      }
    }
  } catch (e) {
    if (!(e instanceof VhostUserProtocolError)) throw e;
    out.error = e.code;
  }
  p.dispose();
  return out;
}

test("fuzz: the parser over 10^5 seeded streams of valid and mutated messages", (t) => {
  const cases = Number(process.env.VHOST_USER_FUZZ_CASES ?? 100_000);
  const seed = Number(process.env.VHOST_USER_FUZZ_SEED ?? 0x5eed);
  let messages = 0;
  let errors = 0;
  const started = Date.now();
  for (let i = 0; i < cases; i++) {
    const r = rng(seed + i);
    let fd = 100;
    const gen = Array.from({ length: 1 + Math.floor(r() * 4) }, () => genMessage(r, () => fd++));
    const a = run(gen, (w) => w);
    const r2 = rng(~(seed + i));
    const b = run(gen, (w) => 1 + Math.floor(r2() * w));
    const where = `case ${i} (VHOST_USER_FUZZ_SEED=${seed}, case seed ${seed + i})`;
    // Chunking does not change the outcome.
    assert.deepEqual(b.messages, a.messages, where);
    assert.equal(b.error, a.error, where);
    // Every fd given to the parser is handed over in one message or closed once (on error or at dispose).
    for (const o of [a, b]) {
      const accounted = [...o.fdsOut, ...o.closed].sort((x, y) => x - y);
      assert.deepEqual(
        accounted,
        [...o.pushed].sort((x, y) => x - y),
        `${where}: fds leaked or closed twice`,
      );
    }
    // A stream of valid messages parses whole.
    if (gen.every((g) => g.valid)) {
      assert.equal(a.error, "none", where);
      assert.equal(a.messages.length, gen.length, where);
    }
    messages += a.messages.length;
    if (a.error !== "none") errors++;
  }
  t.diagnostic(
    `vhost-user parser fuzz: ${cases} cases (seed ${seed}), ${messages} messages parsed, ${errors} cases ended in a protocol error, ${Date.now() - started} ms`,
  );
  console.log(`vhost-user parser fuzz: ${cases} cases, ${messages} messages, ${errors} protocol errors`);
});
