/** `vireo ctl`: the command-line client of a running VM's control API (src/vmm/api-server.ts). */
import { request } from "node:http";
import { resolve } from "node:path";
import { parseArgs } from "node:util";
import { ConfigError, VireoError } from "../errors.ts";

export const CTL_HELP = `Usage: vireo ctl --api-socket PATH VERB [ARG] [--json] [--paused] [--downtime-ms N] [--verify]

Talks to a VM started with vireo run --api-socket PATH (HTTP with JSON over a Unix socket; the API is described
in docs/api/openapi.yaml).

Verbs:
  info       state (starting, running, paused, stopping), vCPUs, memory, devices, uptime, host kind
  pause      park every vCPU outside the guest; returns once all of them wait
  resume     let a paused VM run on
  metrics    every counter of the VM's metrics registry (exits, interrupts, device counters)
  shutdown   stop the VM as Ctrl-A x does (vireo run then exits with status 130)
  snapshot DIR
             pause the VM, write DIR/state (vCPUs, irqchip, PIT, clock, devices) and DIR/memory (guest RAM,
             zero pages left as holes), and resume it (--paused: leave it paused). vireo run --restore DIR
             resumes it in a new process, with the same disks (by path) and TAPs (by name). Machines with
             vhost-user or vhost-net devices cannot be snapshotted yet
  migrate tcp:HOST:PORT|unix:PATH
             live-migrate the VM to a vireo run --incoming listening there: guest RAM is copied in rounds while
             the guest runs (KVM's dirty log and the devices' own), then the guest stops, the last pages and
             its state go over, and the destination runs it; this VM's vireo run then exits 0. On a failure
             before that the VM runs on here. Disks must be on storage both hosts reach, at the same path.
             Answers rounds, pages and bytes sent, downtime and total time

Options:
  --api-socket PATH   the socket given to vireo run --api-socket
  --json              print the API's JSON answer as it is
  --paused            snapshot: the VM stays paused afterwards
  --downtime-ms N     migrate: stop the guest once a round's pages would take at most N ms (default 300)
  --max-rounds N      migrate: stop the guest after N rounds whatever remains (default 30)
  --verify            migrate: the destination checks a SHA-256 of all guest RAM before it runs the guest
  -h, --help          this help

Exit status: 0 on success; 1 if the API answered with an error (its message on stderr); 125 if the socket could
not be reached or the command line is wrong.`;

const VERBS: Record<string, { method: string; path: string }> = {
  info: { method: "GET", path: "/v1/vm" },
  metrics: { method: "GET", path: "/v1/metrics" },
  pause: { method: "PUT", path: "/v1/vm/pause" },
  resume: { method: "PUT", path: "/v1/vm/resume" },
  shutdown: { method: "PUT", path: "/v1/vm/shutdown" },
  snapshot: { method: "PUT", path: "/v1/vm/snapshot" },
  migrate: { method: "PUT", path: "/v1/vm/migrate" },
};

export interface ApiAnswer {
  status: number;
  body: unknown;
}

/** One request to the API socket; rejects only when the socket cannot be reached or the answer is not JSON. */
export function callApi(
  socketPath: string,
  method: string,
  path: string,
  timeoutMs = 30_000,
  body?: Record<string, unknown>,
): Promise<ApiAnswer> {
  const payload = body === undefined ? "" : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    // A connection per request (agent: false): Node 20's global agent keeps sockets alive, and a socket the server
    // closed after its 5 s keep-alive timeout would be reused and fail with EPIPE.
    const req = request(
      {
        socketPath,
        method,
        path,
        agent: false,
        headers: {
          "content-length": Buffer.byteLength(payload),
          connection: "close",
          ...(payload ? { "content-type": "application/json" } : {}),
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          try {
            resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) });
          } catch {
            reject(
              new VireoError(
                "VIREO_API_ANSWER",
                `the API answered ${res.statusCode} with no JSON: ${text.slice(0, 200)}`,
              ),
            );
          }
        });
      },
    );
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on("error", (e) =>
      reject(new VireoError("VIREO_API_UNREACHABLE", `cannot reach the API at ${socketPath}: ${e.message}`)),
    );
    req.end(payload);
  });
}

function formatHuman(verb: string, body: Record<string, unknown>): string {
  if (verb === "info") {
    const lines = [
      `state    ${body.state}`,
      `vcpus    ${body.cpus}`,
      `memory   ${body.memMiB} MiB`,
      `uptime   ${((Number(body.uptimeMs) || 0) / 1000).toFixed(1)} s`,
      `host     ${body.host}`,
      `pid      ${body.pid}`,
      `kernel   ${body.kernel}${body.cmdline ? ` (${body.cmdline})` : ""}`,
    ];
    const devices = Array.isArray(body.devices) ? body.devices : [];
    for (const [i, d] of devices.entries()) lines.push(`${i === 0 ? "devices " : "        "} ${d}`);
    return lines.join("\n");
  }
  if (verb === "snapshot") {
    const mib = (n: unknown) => `${(Number(n) / 2 ** 20).toFixed(1)} MiB`;
    return [
      `snapshot: ${body.path} (VM ${body.state})`,
      `state file   ${body.stateFileBytes} bytes`,
      `memory file  ${mib(body.memoryBytesWritten)} written of ${mib(body.ramBytes)} RAM (${body.memoryExtents} runs; the rest are holes)`,
      `took         ${body.totalMs} ms (pause ${body.pauseMs}, vCPU state ${body.vcpuStateMs}, memory ${body.memoryMs})`,
    ].join("\n");
  }
  if (verb === "migrate") {
    const rounds = Array.isArray(body.rounds) ? (body.rounds as Array<{ pages: number }>) : [];
    return [
      `migrated to ${body.to}${body.converged ? "" : " (the dirty set did not shrink below the downtime limit)"}`,
      `rounds       ${rounds.length} (${rounds.map((r) => r.pages).join(", ")} pages), then ${body.finalPages} pages with the guest stopped`,
      `sent         ${body.pagesSent} pages, ${(Number(body.bytesSent) / 2 ** 20).toFixed(1)} MiB in all${body.verified ? ", RAM checked by SHA-256" : ""}`,
      `downtime     ${body.downtimeMs} ms, ${body.totalMs} ms in all`,
    ].join("\n");
  }
  if (verb === "metrics") {
    const m = (body.metrics ?? {}) as Record<string, number>;
    const keys = Object.keys(m).sort();
    const width = Math.max(0, ...keys.map((k) => k.length));
    return keys.map((k) => `${k.padEnd(width)}  ${m[k]}`).join("\n");
  }
  return `${verb}: ${String(body.state ?? "ok")}`;
}

export async function cmdCtl(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      "api-socket": { type: "string" },
      json: { type: "boolean" },
      paused: { type: "boolean" },
      "downtime-ms": { type: "string" },
      "max-rounds": { type: "string" },
      verify: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(CTL_HELP);
    return 0;
  }
  const socketPath = values["api-socket"];
  if (!socketPath) throw new ConfigError("vireo ctl: --api-socket PATH is required (see vireo ctl --help)");
  const [verb, ...extra] = positionals;
  if (verb === undefined) throw new ConfigError(`vireo ctl: give a verb (${Object.keys(VERBS).join(", ")})`);
  const route = VERBS[verb];
  if (!route)
    throw new ConfigError(`vireo ctl: unknown verb '${verb}' (known: ${Object.keys(VERBS).join(", ")})`);
  let body: Record<string, unknown> | undefined;
  if (verb === "snapshot") {
    const dir = extra.shift();
    if (dir === undefined) throw new ConfigError("vireo ctl: snapshot needs a directory (snapshot DIR)");
    // The VMM resolves nothing: it gets an absolute path, relative to this command's directory.
    body = { path: resolve(dir), ...(values.paused ? { paused: true } : {}) };
  } else if (values.paused) throw new ConfigError("vireo ctl: --paused goes with snapshot");
  if (verb === "migrate") {
    const to = extra.shift();
    if (to === undefined)
      throw new ConfigError("vireo ctl: migrate needs a destination (migrate tcp:HOST:PORT or unix:PATH)");
    const count = (flag: string, v: string | undefined) => {
      if (v === undefined) return undefined;
      const n = Number(v);
      if (!Number.isInteger(n) || n < 1)
        throw new ConfigError(`vireo ctl: --${flag} must be a positive whole number, got '${v}'`);
      return n;
    };
    body = {
      to,
      ...(values["downtime-ms"] !== undefined
        ? { downtimeMs: count("downtime-ms", values["downtime-ms"]) }
        : {}),
      ...(values["max-rounds"] !== undefined ? { maxRounds: count("max-rounds", values["max-rounds"]) } : {}),
      ...(values.verify ? { verify: true } : {}),
    };
  } else if (values["downtime-ms"] !== undefined || values["max-rounds"] !== undefined || values.verify)
    throw new ConfigError("vireo ctl: --downtime-ms, --max-rounds and --verify go with migrate");
  if (extra.length) throw new ConfigError(`vireo ctl: unexpected argument '${extra[0]}'`);
  // A snapshot writes all of guest RAM: give it time (minutes for GiBs on a slow disk).
  const answer = await callApi(
    socketPath,
    route.method,
    route.path,
    verb === "snapshot" || verb === "migrate" ? 900_000 : 30_000,
    body,
  );
  const answerBody = (answer.body ?? {}) as Record<string, unknown>;
  if (answer.status >= 400) {
    const err = (answerBody.error ?? {}) as { code?: string; message?: string };
    if (values.json) console.log(JSON.stringify(answerBody));
    process.stderr.write(
      `vireo ctl: ${verb}: ${err.message ?? `HTTP ${answer.status}`} (${err.code ?? answer.status})\n`,
    );
    return 1;
  }
  console.log(values.json ? JSON.stringify(answerBody) : formatHuman(verb, answerBody));
  return 0;
}
