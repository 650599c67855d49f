/** `vireo switch`: the software switch process (src/switch) and its control commands. */
import { parseArgs } from "node:util";
import { ConfigError } from "../errors.ts";
import {
  type ControlRequest,
  controlRequest,
  defaultControlPath,
  SWITCH_NAME,
  SwitchControl,
} from "../switch/control.ts";
import { SwitchRunner } from "../switch/runner.ts";
import { Switch } from "../switch/switch.ts";

export const SWITCH_HELP = `Usage: vireo switch NAME [--port SPEC]... [--pcap PORT=FILE[,max=BYTES][,files=N]]... [--control PATH]
       vireo switch show NAME [--json]
       vireo switch attach NAME SPEC            vireo switch detach NAME PORT
       vireo switch filter NAME PORT (--in|--out) [--default allow|deny] [RULE]...   (--off to remove)
       vireo switch rate NAME PORT (--in|--out) [--bytes-per-sec N] [--frames-per-sec N] [--burst-bytes N]
                                                [--burst-frames N]                     (--off to remove)
       vireo switch pcap NAME PORT FILE [--max-bytes N] [--files N]     vireo switch pcap NAME PORT --off
       vireo switch mirror NAME PORT TO|--off

A learning Ethernet switch between vhost-user peers (QEMU, DPDK virtio_user, vireo) and host TAP devices, in
the manner of VALE: frames move in batches, each copied once into each destination; a destination without room
drops (counted), nothing queues. Per port: VLANs, capture to pcap, filter rules, rate limits, mirroring, all
changeable while traffic flows through the control socket.

Port SPEC:
  vhost-user=SOCKET[,name=P][,vlan=N | ,trunk=N+M...[,native=N]][,queue-size=N]
                     the switch serves SOCKET as a vhost-user back-end (one front-end at a time; it may reconnect)
  tap=IFNAME[,name=P][,vlan=...]
                     host TAP device IFNAME (created if missing; needs CAP_NET_ADMIN), plain Ethernet frames
  shm=SOCKET[,name=P][,vlan=...]
                     a peer that connects to SOCKET gets two shared-memory frame rings (one each way) and two
                     eventfds, netmap-style, no virtqueues (protocol: docs/switch.md, "shm ports")
  Ports are named p0, p1, ... unless name= says otherwise; a port is an access port in VLAN 1 unless vlan= or
  trunk= says otherwise (trunk ports carry the listed VLANs tagged, and native=N untagged).

Options:
  --port SPEC        add a port (repeatable)
  --pcap PORT=FILE[,max=BYTES][,files=N]
                     capture PORT's frames, both directions, to FILE (libpcap format), rotating over N files
                     of at most BYTES each (repeatable)
  --control PATH     the control socket (default $VIREO_RUN_DIR/switch/NAME.sock, VIREO_RUN_DIR=/run/vireo)
  --mac-table N      forwarding table entries (default 8192); --mac-per-port N: entries one port may hold
                     (default 1024); --mac-age SECONDS (default 300)
  --json             show: print JSON
  -h, --help         this help

Filter RULE: allow|deny [src-mac=M] [dst-mac=M] [ethertype=0xNNNN|ipv4|ipv6|arp] [vlan=N] [src=PREFIX]
  [dst=PREFIX] [proto=tcp|udp|icmp|icmpv6|N] [src-port=N[-M]] [dst-port=N[-M]]   (first match decides; see
  docs/switch.md). --default deny lets through only what a rule allows (e.g. a guest's own MAC and IP).

The switch logs on stderr; on SIGINT or SIGTERM it stops and prints one JSON line on stdout:
  {"event":"switch-end","ports":[{"name":...,"rx":{"frames","bytes"},"tx":{...},"drops":{...}},...],...}
Counters are from the switch's side: rx = received from the port's peer, tx = delivered to it.`;

export async function cmdSwitch(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      port: { type: "string", multiple: true },
      pcap: { type: "string", multiple: true },
      control: { type: "string" },
      "mac-table": { type: "string" },
      "mac-per-port": { type: "string" },
      "mac-age": { type: "string" },
      json: { type: "boolean" },
      in: { type: "boolean" },
      out: { type: "boolean" },
      off: { type: "boolean" },
      default: { type: "string" },
      "bytes-per-sec": { type: "string" },
      "frames-per-sec": { type: "string" },
      "burst-bytes": { type: "string" },
      "burst-frames": { type: "string" },
      "max-bytes": { type: "string" },
      files: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(SWITCH_HELP);
    return 0;
  }
  const [first, name, ...rest] = positionals;
  const verbs = ["show", "attach", "detach", "filter", "rate", "pcap", "mirror"];
  if (first !== undefined && verbs.includes(first)) {
    if (name === undefined || !SWITCH_NAME.test(name)) {
      throw new ConfigError(`vireo switch ${first}: give the switch's NAME (see --help)`);
    }
    const path = values.control ?? defaultControlPath(name);
    const req = controlFromArgs(first, rest, values);
    const result = await controlRequest(path, req);
    if (first === "show" && !values.json) console.log(showText(result as ShowResult));
    else console.log(JSON.stringify(result, null, values.json ? 2 : undefined));
    return 0;
  }
  if (first === undefined || positionals.length !== 1) {
    throw new ConfigError("usage: vireo switch NAME [--port SPEC]... (see vireo switch --help)");
  }
  if (!SWITCH_NAME.test(first)) {
    throw new ConfigError(`vireo switch ${first}: a switch name is 1 to 32 letters, digits, '_', '.' or '-'`);
  }
  return runSwitch(first, values);
}

type Values = Record<string, string | boolean | string[] | undefined>;

function posNumber(values: Values, key: string): number | undefined {
  const v = values[key];
  if (v === undefined) return undefined;
  const n = Number(v);
  if (typeof v !== "string" || !Number.isFinite(n) || n <= 0) {
    throw new ConfigError(`--${key} ${String(v)} is not a positive number`);
  }
  return n;
}

function direction(values: Values, verb: string): "in" | "out" {
  if (values.in === values.out) throw new ConfigError(`vireo switch ${verb}: give one of --in and --out`);
  return values.in ? "in" : "out";
}

function controlFromArgs(verb: string, rest: string[], values: Values): ControlRequest {
  const need = (n: number, what: string) => {
    if (rest.length < n) throw new ConfigError(`vireo switch ${verb}: ${what} (see --help)`);
  };
  switch (verb) {
    case "show":
      return { op: "show" };
    case "attach":
      need(1, "give the port SPEC");
      return { op: "attach", spec: rest[0] as string };
    case "detach":
      need(1, "give the PORT");
      return { op: "detach", port: rest[0] as string };
    case "filter": {
      need(1, "give the PORT");
      const d = direction(values, verb);
      if (values.off) return { op: "filter", port: rest[0] as string, dir: d, off: true };
      const def = values.default ?? "allow";
      if (def !== "allow" && def !== "deny") throw new ConfigError("--default is allow or deny");
      return { op: "filter", port: rest[0] as string, dir: d, default: def, rules: rest.slice(1) };
    }
    case "rate": {
      need(1, "give the PORT");
      const d = direction(values, verb);
      if (values.off) return { op: "rate", port: rest[0] as string, dir: d, off: true };
      return {
        op: "rate",
        port: rest[0] as string,
        dir: d,
        bytesPerSec: posNumber(values, "bytes-per-sec"),
        framesPerSec: posNumber(values, "frames-per-sec"),
        burstBytes: posNumber(values, "burst-bytes"),
        burstFrames: posNumber(values, "burst-frames"),
      };
    }
    case "pcap": {
      need(1, "give the PORT");
      if (values.off) return { op: "pcap", port: rest[0] as string, off: true };
      need(2, "give the PORT and the FILE");
      return {
        op: "pcap",
        port: rest[0] as string,
        file: rest[1] as string,
        maxBytes: posNumber(values, "max-bytes"),
        files: posNumber(values, "files"),
      };
    }
    default: {
      need(1, "give the PORT");
      if (values.off) return { op: "mirror", port: rest[0] as string, to: null };
      need(2, "give the PORT and the port TO mirror to (or --off)");
      return { op: "mirror", port: rest[0] as string, to: rest[1] as string };
    }
  }
}

interface ShowResult {
  ports: Array<{
    name: string;
    kind: string;
    peer: { connected: boolean; features: string[] } | null;
    vlan: { mode: string; vlan?: number; vlans?: number[]; native?: number };
    macs: number;
    rx: { frames: number; bytes: number };
    tx: { frames: number; bytes: number };
    drops: Record<string, number>;
    mirrorTo: string | null;
  }>;
  macTable: {
    size: number;
    capacity: number;
    entries: Array<{ vlan: number; mac: string; port: number; ageMs: number }>;
  };
}

function showText(r: ShowResult): string {
  const lines = [
    "port        kind        vlan          rx frames     rx bytes  tx frames     tx bytes  drops",
  ];
  for (const p of r.ports) {
    const v = p.vlan.mode === "access" ? `${p.vlan.vlan}` : `trunk ${p.vlan.vlans?.join("+")}`;
    const drops = Object.entries(p.drops)
      .filter(([, n]) => n > 0)
      .map(([k, n]) => `${k} ${n}`)
      .join(", ");
    lines.push(
      `${p.name.padEnd(11)} ${p.kind.padEnd(11)} ${v.padEnd(12)} ${String(p.rx.frames).padStart(10)} ${String(p.rx.bytes).padStart(12)} ${String(p.tx.frames).padStart(10)} ${String(p.tx.bytes).padStart(12)}  ${drops || "-"}${p.mirrorTo ? ` (mirrored to ${p.mirrorTo})` : ""}`,
    );
  }
  for (const p of r.ports) {
    if (p.peer?.connected && p.peer.features.length > 0)
      lines.push(`${p.name}: peer set ${p.peer.features.join(" ")}`);
  }
  lines.push(`MAC table: ${r.macTable.size} of ${r.macTable.capacity} entries`);
  const names = new Map(r.ports.map((p, i) => [i, p.name]));
  for (const e of r.macTable.entries.slice(0, 50)) {
    lines.push(
      `  vlan ${String(e.vlan).padStart(4)}  ${e.mac}  port ${names.get(e.port) ?? e.port}  age ${(e.ageMs / 1000).toFixed(1)} s`,
    );
  }
  return lines.join("\n");
}

async function runSwitch(name: string, values: Values): Promise<number> {
  const int = (key: string, dflt: number) => {
    const v = posNumber(values, key);
    if (v !== undefined && !Number.isInteger(v)) throw new ConfigError(`--${key} must be an integer`);
    return v ?? dflt;
  };
  const log = (m: string) => process.stderr.write(`vireo: switch ${name}: ${m}\n`);
  const sw = new Switch({
    macTable: {
      capacity: int("mac-table", 8192),
      perPortLimit: int("mac-per-port", 1024),
      ageMs: (posNumber(values, "mac-age") ?? 300) * 1000,
    },
  });
  const runner = new SwitchRunner(sw, log);
  const control = new SwitchControl(runner, log);
  const controlPath = (values.control as string | undefined) ?? defaultControlPath(name);
  let stopped = false;
  try {
    for (const spec of (values.port as string[] | undefined) ?? []) control.attach(spec);
    for (const c of (values.pcap as string[] | undefined) ?? []) {
      const m = /^([^=]+)=([^,]+)((?:,(?:max|files)=\d+)*)$/.exec(c);
      if (!m) throw new ConfigError(`--pcap ${c}: expected PORT=FILE[,max=BYTES][,files=N]`);
      const opts: { maxBytes?: number; files?: number } = {};
      for (const kv of (m[3] ?? "").split(",").filter(Boolean)) {
        const [k, v] = kv.split("=");
        if (k === "max") opts.maxBytes = Number(v);
        else opts.files = Number(v);
      }
      control.capture(m[1] as string, m[2] as string, opts);
    }
    await control.listen(controlPath);
  } catch (e) {
    runner.close();
    control.close();
    throw e;
  }
  const stop = () => {
    stopped = true;
  };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
  log(`control socket ${controlPath}`);
  log("ready");
  let lastFlush = performance.now();
  while (!stopped) {
    // The data plane runs in slices; between them the event loop serves the control socket and signals.
    runner.runFor(20);
    const now = performance.now();
    if (now - lastFlush >= 1000) {
      lastFlush = now;
      control.flushCaptures();
    }
    await new Promise((r) => setImmediate(r));
  }
  const show = control.show() as ShowResult;
  runner.close();
  control.close();
  process.stdout.write(`${JSON.stringify({ event: "switch-end", ...show })}\n`);
  return 0;
}
