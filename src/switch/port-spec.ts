/**
 * Port specifications of `vireo switch --port SPEC` and `vireo switch attach NAME SPEC`:
 *
 *   vhost-user=SOCKET[,name=P][,vlan=N | ,trunk=N+M+...[,native=N]][,queue-size=N]
 *   tap=IFNAME[,name=P][,vlan=N | ,trunk=N+M+...[,native=N]]
 *   shm=SOCKET[,name=P][,vlan=N | ,trunk=N+M+...[,native=N]]
 *
 * A port is an access port in VLAN 1 unless it says otherwise.
 */
import type { VlanConfig } from "./switch.ts";
import { SwitchError } from "./switch.ts";

export interface PortSpec {
  kind: "vhost-user" | "tap" | "shm";
  /** The socket path (vhost-user, shm) or interface name (tap). */
  target: string;
  name?: string;
  vlan: VlanConfig;
  queueSize?: number;
}

const NAME = /^[A-Za-z0-9_.-]{1,32}$/;

function bad(spec: string, why: string): never {
  throw new SwitchError("VIREO_SWITCH_PORT_SPEC", `port ${spec}: ${why}`);
}

function vid(spec: string, key: string, v: string): number {
  const n = Number(v);
  if (!/^\d+$/.test(v) || n < 1 || n > 4094) bad(spec, `${key}=${v} is not a VLAN ID from 1 to 4094`);
  return n;
}

export function parsePortSpec(spec: string): PortSpec {
  const parts = spec.split(",");
  const first = parts.shift() ?? "";
  const eq = first.indexOf("=");
  const kind = eq < 0 ? first : first.slice(0, eq);
  const target = eq < 0 ? "" : first.slice(eq + 1);
  if (kind !== "vhost-user" && kind !== "tap" && kind !== "shm")
    bad(spec, `the kind is vhost-user=SOCKET, tap=IFNAME or shm=SOCKET, not ${kind}`);
  if (target === "") bad(spec, `${kind}= needs a ${kind === "tap" ? "interface name" : "socket path"}`);
  if (kind !== "tap" && Buffer.byteLength(target) > 107) {
    bad(spec, `the socket path is ${Buffer.byteLength(target)} bytes, at most 107`);
  }
  const out: PortSpec = { kind, target, vlan: { mode: "access", vlan: 1 } };
  let access: number | undefined;
  let trunk: number[] | undefined;
  let native: number | undefined;
  const seen = new Set<string>();
  for (const kv of parts) {
    const i = kv.indexOf("=");
    const key = i < 0 ? kv : kv.slice(0, i);
    const v = i < 0 ? "" : kv.slice(i + 1);
    if (seen.has(key)) bad(spec, `${key} is given twice`);
    seen.add(key);
    if (i < 0 || v === "") bad(spec, `${key} needs a value (${key}=...)`);
    switch (key) {
      case "name":
        if (!NAME.test(v)) bad(spec, `name=${v}: a port name is 1 to 32 letters, digits, '_', '.' or '-'`);
        out.name = v;
        break;
      case "vlan":
        access = vid(spec, key, v);
        break;
      case "trunk":
        trunk = v.split("+").map((x) => vid(spec, key, x));
        break;
      case "native":
        native = vid(spec, key, v);
        break;
      case "queue-size": {
        const q = Number(v);
        if (kind !== "vhost-user") bad(spec, "queue-size is for vhost-user ports");
        if (!Number.isInteger(q) || q < 1 || q > 32768 || (q & (q - 1)) !== 0) {
          bad(spec, `queue-size=${v} is not a power of 2 up to 32768`);
        }
        out.queueSize = q;
        break;
      }
      default:
        bad(
          spec,
          `unknown option ${key} (name, vlan, trunk, native${kind === "vhost-user" ? ", queue-size" : ""})`,
        );
    }
  }
  if (access !== undefined && trunk !== undefined)
    bad(spec, "a port is vlan=N (access) or trunk=..., not both");
  if (native !== undefined && trunk === undefined) bad(spec, "native=N is for trunk ports");
  if (trunk !== undefined)
    out.vlan =
      native === undefined ? { mode: "trunk", vlans: trunk } : { mode: "trunk", vlans: trunk, native };
  else if (access !== undefined) out.vlan = { mode: "access", vlan: access };
  return out;
}
