/**
 * The control API of a running VM: HTTP/1.1 with JSON bodies over a Unix socket (`vireo run --api-socket PATH`),
 * served on the main thread, which does control only. docs/api/openapi.yaml describes it; `vireo ctl` is its
 * command-line client.
 *
 * The client is not trusted more than a guest: a request is read up to API_MAX_BODY bytes and API_REQUEST_TIMEOUT_MS,
 * its body must be empty or a JSON object, and whatever it sends, the answer is a JSON error with an HTTP status.
 * Nothing a client sends reaches the VM except through the VmController's verbs.
 */
import { existsSync, lstatSync, unlinkSync } from "node:fs";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { isAbsolute } from "node:path";
import { z } from "zod";
import { VireoError } from "../errors.ts";
import { parseEndpoint } from "./migration/endpoint.ts";
import type { MigrationResult } from "./migration/source.ts";

export const API_VERSION = "v1";
export const API_MAX_BODY = 64 * 1024;
export const API_REQUEST_TIMEOUT_MS = 5000;
/** How long closing the API waits for answers being written before it cuts their connections. */
const API_CLOSE_GRACE_MS = 2000;
/** Connections served at once; more are closed at once (a client cannot exhaust the main thread's fds). */
export const API_MAX_CONNECTIONS = 32;

export type VmState = "starting" | "running" | "paused" | "stopping";

export interface VmInfo {
  state: VmState;
  cpus: number;
  memMiB: number;
  kernel: string;
  cmdline: string;
  /** Milliseconds since the machine started (wall clock, pauses included). */
  uptimeMs: number;
  /** Devices on the machine, one line each ("virtio-blk 0000:00:01.0", "uart16550 0x3f8", ...). */
  devices: string[];
  /** How /dev/kvm behaves here: "kvm" (hardware), "pvm", or "emulated" (vireo's emulated KVM host). */
  host: string;
  pid: number;
}

/** What the API can do to the VM. Machine implements it; tests use fakes. */
export interface VmController {
  info(): VmInfo;
  /** Resolves once every vCPU has left KVM_RUN and waits; rejects with an ApiError if it cannot. */
  pause(): Promise<void>;
  resume(): void;
  metrics(): Record<string, number>;
  /** Asks the VM to stop (as Ctrl-A x); the run ends and the socket closes shortly after. */
  shutdown(): void;
  /** Writes a snapshot directory (docs/snapshot.md); rejects with an ApiError if it cannot. */
  snapshot(req: SnapshotRequest): Promise<SnapshotResult>;
  /** Live migration to a vireo run --incoming (docs/migration.md); rejects with an ApiError if it fails. */
  migrate(req: MigrateRequest): Promise<MigrationResult>;
}

/** PUT /v1/vm/migrate's body: where to (tcp:HOST:PORT or unix:PATH), the downtime limit, rounds, RAM check. */
export const migrateRequestSchema = z
  .object({
    to: z.string().min(1).max(4096),
    downtimeMs: z.number().int().min(1).max(600_000).optional(),
    maxRounds: z.number().int().min(1).max(1000).optional(),
    verify: z.boolean().optional(),
  })
  .strict();
export type MigrateRequest = z.infer<typeof migrateRequestSchema>;

/** PUT /v1/vm/snapshot's body: an absolute directory, and whether the VM stays paused after. */
export const snapshotRequestSchema = z
  .object({
    path: z
      .string()
      .min(1)
      .max(4096)
      .refine((p) => isAbsolute(p) && !p.includes("\0"), "path must be an absolute directory path"),
    paused: z.boolean().optional(),
  })
  .strict();
export type SnapshotRequest = z.infer<typeof snapshotRequestSchema>;

/** What the snapshot verb answers (docs/api/openapi.yaml, SnapshotResult). */
export interface SnapshotResult {
  path: string;
  state: VmState;
  stateFileBytes: number;
  ramBytes: number;
  /** Bytes of the memory file that hold data; the rest of its ramBytes are holes. */
  memoryBytesWritten: number;
  memoryExtents: number;
  /** Milliseconds: pausing the vCPUs, reading their state, writing the memory file, and all of it. */
  pauseMs: number;
  vcpuStateMs: number;
  memoryMs: number;
  totalMs: number;
}

/** An error answered to the client: an HTTP status and a stable code. */
export class ApiError extends VireoError {
  readonly status: number;
  constructor(status: number, code: string, message: string) {
    super(code, message);
    this.status = status;
  }
}

type Handler = (body: Record<string, unknown>) => Promise<{ status: number; body: unknown }>;

function routes(vm: VmController): Map<string, Map<string, Handler>> {
  const ok = (body: unknown) => ({ status: 200, body });
  const table: Array<[string, string, Handler]> = [
    ["GET", "/v1/vm", async () => ok(vm.info())],
    ["GET", "/v1/metrics", async () => ok({ metrics: vm.metrics() })],
    [
      "PUT",
      "/v1/vm/pause",
      async () => {
        await vm.pause();
        return ok({ state: vm.info().state });
      },
    ],
    [
      "PUT",
      "/v1/vm/resume",
      async () => {
        vm.resume();
        return ok({ state: vm.info().state });
      },
    ],
    [
      "PUT",
      "/v1/vm/snapshot",
      async (body) => {
        const parsed = snapshotRequestSchema.safeParse(body);
        if (!parsed.success)
          throw new ApiError(
            400,
            "VIREO_API_BAD_REQUEST",
            `snapshot: ${parsed.error.issues.map((i) => `${i.path.join(".") || "body"}: ${i.message}`).join("; ")}`,
          );
        return ok(await vm.snapshot(parsed.data));
      },
    ],
    [
      "PUT",
      "/v1/vm/migrate",
      async (body) => {
        const parsed = migrateRequestSchema.safeParse(body);
        if (!parsed.success)
          throw new ApiError(
            400,
            "VIREO_API_BAD_REQUEST",
            `migrate: ${parsed.error.issues.map((i) => `${i.path.join(".") || "body"}: ${i.message}`).join("; ")}`,
          );
        try {
          parseEndpoint(parsed.data.to, "migrate: to");
        } catch (e) {
          throw new ApiError(400, "VIREO_API_BAD_REQUEST", (e as Error).message);
        }
        return ok(await vm.migrate(parsed.data));
      },
    ],
    [
      "PUT",
      "/v1/vm/shutdown",
      async () => {
        vm.shutdown();
        return { status: 202, body: { state: "stopping" } };
      },
    ],
  ];
  const byPath = new Map<string, Map<string, Handler>>();
  for (const [method, path, handler] of table) {
    const m = byPath.get(path) ?? new Map<string, Handler>();
    byPath.set(path, m);
    m.set(method, handler);
  }
  return byPath;
}

function send(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  if (res.headersSent || res.destroyed) return;
  const text = `${JSON.stringify(body)}\n`;
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(text),
    ...headers,
  });
  res.end(text);
}

function sendError(res: ServerResponse, e: unknown): void {
  const err =
    e instanceof ApiError
      ? e
      : new ApiError(500, "VIREO_API_INTERNAL", `internal error: ${(e as Error)?.message ?? String(e)}`);
  send(res, err.status, { error: { code: err.code, message: err.message } });
}

/** Reads the body up to API_MAX_BODY bytes: empty, or one JSON object. */
function readBody(req: IncomingMessage): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers["content-length"] ?? 0);
    if (declared > API_MAX_BODY) {
      reject(
        new ApiError(
          413,
          "VIREO_API_TOO_LARGE",
          `request body of ${declared} bytes; at most ${API_MAX_BODY}`,
        ),
      );
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    req.on("data", (c: Buffer) => {
      size += c.length;
      if (size > API_MAX_BODY) {
        reject(new ApiError(413, "VIREO_API_TOO_LARGE", `request body over ${API_MAX_BODY} bytes`));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on("error", reject);
    req.on("end", () => {
      const text = Buffer.concat(chunks).toString("utf8").trim();
      if (text === "") return resolve({});
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch (e) {
        return reject(
          new ApiError(400, "VIREO_API_BAD_JSON", `request body is not JSON: ${(e as Error).message}`),
        );
      }
      if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed))
        return reject(new ApiError(400, "VIREO_API_BAD_JSON", "request body must be a JSON object"));
      resolve(parsed as Record<string, unknown>);
    });
  });
}

export interface ApiServer {
  readonly path: string;
  close(): Promise<void>;
}

/**
 * Listens on `path` (a stale socket file there is replaced; any other file is an error) and serves `vm`.
 * `log` gets one line per request that failed on the server's side.
 */
export async function startApiServer(
  path: string,
  vm: VmController,
  log: (line: string) => void = () => {},
): Promise<ApiServer> {
  if (Buffer.byteLength(path) > 107)
    throw new VireoError(
      "VIREO_API_SOCKET",
      `--api-socket path is ${Buffer.byteLength(path)} bytes, at most 107`,
    );
  if (existsSync(path)) {
    if (!lstatSync(path).isSocket())
      throw new VireoError("VIREO_API_SOCKET", `--api-socket ${path} exists and is not a socket`);
    unlinkSync(path);
  }
  const table = routes(vm);
  const server: Server = createServer(async (req, res) => {
    try {
      const url = (req.url ?? "/").split("?")[0] ?? "/";
      const methods = table.get(url);
      if (!methods) throw new ApiError(404, "VIREO_API_NOT_FOUND", `no such resource: ${url}`);
      const handler = methods.get(req.method ?? "");
      if (!handler) {
        res.setHeader("allow", [...methods.keys()].join(", "));
        throw new ApiError(
          405,
          "VIREO_API_METHOD",
          `${req.method} is not allowed on ${url} (allowed: ${[...methods.keys()].join(", ")})`,
        );
      }
      const body = await readBody(req);
      const answer = await handler(body);
      send(res, answer.status, answer.body);
    } catch (e) {
      if (!(e instanceof ApiError)) log(`api: ${req.method} ${req.url}: ${(e as Error).message}`);
      sendError(res, e);
    }
  });
  server.requestTimeout = API_REQUEST_TIMEOUT_MS;
  server.headersTimeout = API_REQUEST_TIMEOUT_MS;
  server.maxHeadersCount = 64;
  server.maxConnections = API_MAX_CONNECTIONS;
  // A request node's parser refuses (garbage, oversized headers): a 400 if the socket can still take it.
  server.on("clientError", (err: NodeJS.ErrnoException, socket) => {
    if (socket.writable && err.code !== "ECONNRESET") {
      const text = `${JSON.stringify({ error: { code: "VIREO_API_BAD_REQUEST", message: `malformed request (${err.code ?? err.message})` } })}\n`;
      socket.end(
        `HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(text)}\r\nconnection: close\r\n\r\n${text}`,
      );
    } else socket.destroy();
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", (e: NodeJS.ErrnoException) =>
      reject(new VireoError("VIREO_API_SOCKET", `--api-socket ${path}: ${e.message}`)),
    );
    server.listen(path, () => resolve());
  });
  return {
    path,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeIdleConnections();
        // An answer still being written (a migrate's, sent as the VM stops) gets a moment; then the rest is cut.
        setTimeout(() => server.closeAllConnections(), API_CLOSE_GRACE_MS).unref();
        try {
          unlinkSync(path);
        } catch {}
      }),
  };
}
