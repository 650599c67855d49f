/**
 * The control socket of a running `vireo switch`: a Unix socket taking one JSON request per line and answering
 * each with one JSON line, `{"ok":true,"result":...}` or `{"ok":false,"error":{"code":...,"message":...}}`.
 * Requests are checked with zod; a bad one gets an error reply and changes nothing. Requests run on the process's
 * event loop, between slices of the data-plane loop (src/switch/runner.ts), so a change applies between two
 * batches: no frame sees half a change.
 *
 *   {"op":"show"}
 *   {"op":"attach","spec":"vhost-user=/run/p3.sock,name=p3,vlan=10"}
 *   {"op":"detach","port":"p3"}
 *   {"op":"filter","port":"p1","dir":"in","default":"deny","rules":["allow src-mac=52:54:00:00:00:01", {...}]}
 *   {"op":"filter","port":"p1","dir":"in","off":true}
 *   {"op":"rate","port":"p1","dir":"out","bytesPerSec":1e6,"framesPerSec":1000,"burstBytes":...,"burstFrames":...}
 *   {"op":"rate","port":"p1","dir":"out","off":true}
 *   {"op":"pcap","port":"p1","file":"/tmp/p1.pcap","maxBytes":1e6,"files":3}   {"op":"pcap","port":"p1","off":true}
 *   {"op":"mirror","port":"p1","to":"p2"}   {"op":"mirror","port":"p1","to":null}
 */
import { mkdirSync, unlinkSync } from "node:fs";
import { createConnection, createServer, type Server, type Socket } from "node:net";
import { dirname } from "node:path";
import { z } from "zod";
import { VireoError } from "../errors.ts";
import { type FilterRule, PortFilter, parseRule, parseRuleJson } from "./filter.ts";
import { PcapWriter } from "./pcap.ts";
import { parsePortSpec } from "./port-spec.ts";
import { TokenBucket } from "./rate-limit.ts";
import type { SwitchRunner } from "./runner.ts";
import { SwitchError, type SwitchPort } from "./switch.ts";

/** Where `vireo switch NAME` puts its control socket unless told otherwise. */
export function defaultControlPath(name: string): string {
  return `${process.env.VIREO_RUN_DIR ?? "/run/vireo"}/switch/${name}.sock`;
}

export const SWITCH_NAME = /^[A-Za-z0-9_.-]{1,32}$/;

const portName = z.string().min(1).max(32);
const dir = z.enum(["in", "out"]);
const num = z.number().finite().positive();

export const controlRequestSchema = z.discriminatedUnion("op", [
  z.object({ op: z.literal("show") }).strict(),
  z.object({ op: z.literal("attach"), spec: z.string().min(1).max(512) }).strict(),
  z.object({ op: z.literal("detach"), port: portName }).strict(),
  z
    .object({
      op: z.literal("filter"),
      port: portName,
      dir,
      off: z.literal(true).optional(),
      default: z.enum(["allow", "deny"]).optional(),
      rules: z
        .array(z.union([z.string().max(1024), z.record(z.string(), z.unknown())]))
        .max(10_000)
        .optional(),
    })
    .strict(),
  z
    .object({
      op: z.literal("rate"),
      port: portName,
      dir,
      off: z.literal(true).optional(),
      bytesPerSec: num.optional(),
      framesPerSec: num.optional(),
      burstBytes: num.optional(),
      burstFrames: num.optional(),
    })
    .strict(),
  z
    .object({
      op: z.literal("pcap"),
      port: portName,
      off: z.literal(true).optional(),
      file: z.string().min(1).max(4096).optional(),
      maxBytes: z.number().int().positive().optional(),
      files: z.number().int().min(1).max(1000).optional(),
    })
    .strict(),
  z.object({ op: z.literal("mirror"), port: portName, to: portName.nullable() }).strict(),
]);
export type ControlRequest = z.infer<typeof controlRequestSchema>;

/** A request line longer than this ends the connection (1000 rules of ~100 bytes fit). */
const MAX_LINE = 4 << 20;

export class SwitchControl {
  private server: Server | null = null;
  /** The interposition objects per port, for their statistics in `show`. */
  private readonly extras = new Map<
    string,
    { in?: PortFilter; out?: PortFilter; rateIn?: TokenBucket; rateOut?: TokenBucket; pcap?: PcapWriter }
  >();
  private nextPort = 0;

  constructor(
    private readonly runner: SwitchRunner,
    private readonly log: (m: string) => void,
  ) {}

  /** Attaches a port from a spec string; the default name is p0, p1, ... (the first free). */
  attach(spec: string): SwitchPort {
    const parsed = parsePortSpec(spec);
    let name = parsed.name;
    if (name === undefined) {
      do name = `p${this.nextPort++}`;
      while (this.runner.sw.port(name));
    }
    return this.runner.attach(parsed, name);
  }

  /** Starts capturing port `port`'s frames (both directions) to `file`. */
  capture(port: string, file: string, opts: { maxBytes?: number; files?: number } = {}): void {
    const p = this.need(port);
    const w = new PcapWriter(file, opts);
    p.capture?.close();
    p.capture = w;
    this.extra(port).pcap = w;
  }

  handle(req: ControlRequest): unknown {
    switch (req.op) {
      case "show":
        return this.show();
      case "attach": {
        const p = this.attach(req.spec);
        return { port: p.name, index: p.index };
      }
      case "detach": {
        this.need(req.port);
        this.extras.get(req.port)?.pcap?.close();
        this.extras.delete(req.port);
        this.runner.detach(req.port);
        return { port: req.port };
      }
      case "filter": {
        const p = this.need(req.port);
        const d = req.dir === "in" ? p.ingress : p.egress;
        if (req.off) {
          d.filter = null;
          delete this.extra(req.port)[req.dir];
          return { port: req.port, dir: req.dir, filter: null };
        }
        const rules: FilterRule[] = (req.rules ?? []).map((r) =>
          typeof r === "string" ? parseRule(r) : parseRuleJson(r),
        );
        const f = new PortFilter(rules, req.default ?? "allow");
        d.filter = f;
        this.extra(req.port)[req.dir] = f;
        return { port: req.port, dir: req.dir, filter: f.stats() };
      }
      case "rate": {
        const p = this.need(req.port);
        const d = req.dir === "in" ? p.ingress : p.egress;
        const key = req.dir === "in" ? "rateIn" : "rateOut";
        if (req.off) {
          d.rate = null;
          delete this.extra(req.port)[key];
          return { port: req.port, dir: req.dir, rate: null };
        }
        if (req.bytesPerSec === undefined && req.framesPerSec === undefined) {
          throw new SwitchError(
            "VIREO_SWITCH_BAD_REQUEST",
            "rate: give bytesPerSec, framesPerSec or both (or off)",
          );
        }
        const b = new TokenBucket(
          {
            bytesPerSec: req.bytesPerSec,
            framesPerSec: req.framesPerSec,
            burstBytes: req.burstBytes,
            burstFrames: req.burstFrames,
          },
          performance.now(),
        );
        d.rate = b;
        this.extra(req.port)[key] = b;
        return { port: req.port, dir: req.dir, rate: b.stats() };
      }
      case "pcap": {
        const p = this.need(req.port);
        if (req.off) {
          p.capture?.close();
          p.capture = null;
          delete this.extra(req.port).pcap;
          return { port: req.port, pcap: null };
        }
        if (req.file === undefined)
          throw new SwitchError("VIREO_SWITCH_BAD_REQUEST", "pcap: give file (or off)");
        this.capture(req.port, req.file, { maxBytes: req.maxBytes, files: req.files });
        return { port: req.port, pcap: req.file };
      }
      case "mirror": {
        const p = this.need(req.port);
        if (req.to === null) {
          p.mirrorTo = -1;
          return { port: req.port, mirror: null };
        }
        const to = this.need(req.to);
        if (to === p)
          throw new SwitchError("VIREO_SWITCH_BAD_REQUEST", "mirror: a port cannot mirror to itself");
        p.mirrorTo = to.index;
        return { port: req.port, mirror: req.to };
      }
    }
  }

  show(): unknown {
    const s = this.runner.sw.snapshot();
    return {
      ...s,
      ports: s.ports.map((p) => {
        const x = this.extras.get(p.name) ?? {};
        return {
          ...p,
          filters: { in: x.in?.stats() ?? null, out: x.out?.stats() ?? null },
          rates: { in: x.rateIn?.stats() ?? null, out: x.rateOut?.stats() ?? null },
          pcap: x.pcap?.stats() ?? null,
        };
      }),
    };
  }

  /** Serves the control socket at `path` (a stale socket file there is replaced). */
  listen(path: string): Promise<void> {
    mkdirSync(dirname(path), { recursive: true });
    try {
      unlinkSync(path);
    } catch {
      // none there
    }
    const server = createServer((sock) => this.serve(sock));
    this.server = server;
    return new Promise((resolve, reject) => {
      server.once("error", reject);
      server.listen(path, () => resolve());
    });
  }

  close(): void {
    this.server?.close();
    for (const x of this.extras.values()) x.pcap?.close();
  }

  /** Flushes captures (the loop calls it now and then, so a capture file is readable while the switch runs). */
  flushCaptures(): void {
    for (const x of this.extras.values()) x.pcap?.flush();
  }

  private serve(sock: Socket): void {
    let buf = "";
    sock.setEncoding("utf8");
    sock.on("error", () => {});
    sock.on("data", (chunk: string) => {
      buf += chunk;
      if (buf.length > MAX_LINE) {
        sock.end(
          `${JSON.stringify({ ok: false, error: { code: "VIREO_SWITCH_BAD_REQUEST", message: "request too long" } })}\n`,
        );
        sock.destroy();
        return;
      }
      for (let nl = buf.indexOf("\n"); nl >= 0; nl = buf.indexOf("\n")) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line.trim() === "") continue;
        sock.write(`${JSON.stringify(this.answer(line))}\n`);
      }
    });
  }

  private answer(line: string): unknown {
    try {
      let raw: unknown;
      try {
        raw = JSON.parse(line);
      } catch {
        throw new SwitchError("VIREO_SWITCH_BAD_REQUEST", "the request is not JSON");
      }
      const r = controlRequestSchema.safeParse(raw);
      if (!r.success) {
        const i = r.error.issues[0];
        throw new SwitchError(
          "VIREO_SWITCH_BAD_REQUEST",
          `bad request: ${i ? `${i.path.join(".") || "request"}: ${i.message}` : r.error.message}`,
        );
      }
      return { ok: true, result: this.handle(r.data) };
    } catch (e) {
      const code = e instanceof VireoError ? e.code : "VIREO_SWITCH_ERROR";
      const message = e instanceof Error ? e.message : String(e);
      this.log(`control: ${message}`);
      return { ok: false, error: { code, message } };
    }
  }

  private need(name: string): SwitchPort {
    const p = this.runner.sw.port(name);
    if (!p) throw new SwitchError("VIREO_SWITCH_NO_PORT", `no port ${name}`);
    return p;
  }

  private extra(name: string) {
    let x = this.extras.get(name);
    if (!x) {
      x = {};
      this.extras.set(name, x);
    }
    return x;
  }
}

/** Sends one request to a switch's control socket and returns its `result` (throws SwitchError on an error reply). */
export function controlRequest(path: string, req: ControlRequest, timeoutMs = 5000): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const sock = createConnection(path);
    let buf = "";
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new SwitchError("VIREO_SWITCH_TIMEOUT", `no answer from ${path} within ${timeoutMs} ms`));
    }, timeoutMs);
    sock.setEncoding("utf8");
    sock.on("connect", () => sock.write(`${JSON.stringify(req)}\n`));
    sock.on("error", (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(
        new SwitchError(
          "VIREO_SWITCH_UNREACHABLE",
          e.code === "ENOENT" || e.code === "ECONNREFUSED"
            ? `no switch listens on ${path} (${e.code})`
            : `${path}: ${e.message}`,
        ),
      );
    });
    sock.on("data", (chunk: string) => {
      buf += chunk;
      const nl = buf.indexOf("\n");
      if (nl < 0) return;
      clearTimeout(timer);
      sock.end();
      try {
        const reply = JSON.parse(buf.slice(0, nl)) as {
          ok: boolean;
          result?: unknown;
          error?: { code: string; message: string };
        };
        if (reply.ok) resolve(reply.result);
        else
          reject(new SwitchError(reply.error?.code ?? "VIREO_SWITCH_ERROR", reply.error?.message ?? "error"));
      } catch (e) {
        reject(e);
      }
    });
  });
}
