/**
 * `vireo run --net switch=NAME[,vlan=N|,trunk=...][,mac=...]`: a VM's NIC on a running `vireo switch` directly.
 * vireo asks the switch (over its control socket) to attach a vhost-user port for this VM at a socket of its own,
 * then runs the NIC as `--net vhost-user=SOCKET[,mac=...]` on it; when the VM ends the port is detached.
 *
 * Of the two ways the switch could take a VM's NIC (shared memory rings read by the switch, or vhost-user), only
 * vhost-user is built: the VM's rings are then served by the switch's own virtio-net code, with the guest's
 * kicks and interrupts as eventfds between the two processes and no frame through vireo run.
 */
import { join } from "node:path";
import { ConfigError } from "../errors.ts";
import { controlRequest, defaultControlPath, SWITCH_NAME } from "../switch/control.ts";

/** One `--net` value rewritten for a switch port, and how to undo the attach. */
export interface SwitchNet {
  /** The `--net` value to use instead (vhost-user=SOCKET[,mac=...]). */
  net: string;
  /** The switch's name and the port attached for this VM. */
  switchName: string;
  port: string;
  control: string;
}

/** True if `spec` is a `--net switch=...` value. */
export function isSwitchNet(spec: string): boolean {
  return spec.startsWith("switch=");
}

/**
 * Attaches a vhost-user port for NIC `index` of this VM to the switch `--net switch=NAME,...` names, and returns
 * the `--net vhost-user=` value that uses it. Options other than mac= go to the port (vlan=, trunk=, native=).
 * `runDir` is where the port's socket goes (default: beside the switch's control socket).
 */
export async function attachSwitchNet(spec: string, index: number, runDir?: string): Promise<SwitchNet> {
  const parts = spec.split(",");
  const name = (parts.shift() ?? "").slice("switch=".length);
  if (!SWITCH_NAME.test(name)) {
    throw new ConfigError(
      `--net ${spec}: switch=NAME needs a switch name (1 to 32 letters, digits, '_', '.', '-')`,
    );
  }
  const netOpts: string[] = [];
  const portOpts: string[] = [];
  for (const p of parts) {
    const key = p.split("=")[0];
    if (key === "mac") netOpts.push(p);
    else if (key === "vlan" || key === "trunk" || key === "native") portOpts.push(p);
    else
      throw new ConfigError(`--net ${spec}: unknown option '${key}' for switch= (mac, vlan, trunk, native)`);
  }
  const control = defaultControlPath(name);
  const port = `vm${process.pid}-${index}`;
  const dir = runDir ?? join(control, "..");
  const socket = join(dir, `${name}-${port}.sock`);
  if (Buffer.byteLength(socket) > 107) {
    throw new ConfigError(`--net ${spec}: the port's socket path ${socket} is longer than 107 bytes`);
  }
  try {
    await controlRequest(control, {
      op: "attach",
      spec: [`vhost-user=${socket}`, `name=${port}`, ...portOpts].join(","),
    });
  } catch (e) {
    throw new ConfigError(`--net ${spec}: ${(e as Error).message}`);
  }
  return { net: [`vhost-user=${socket}`, ...netOpts].join(","), switchName: name, port, control };
}

/** Detaches a port attachSwitchNet attached (best effort: the switch may be gone). */
export async function detachSwitchNet(n: SwitchNet): Promise<void> {
  try {
    await controlRequest(n.control, { op: "detach", port: n.port }, 2000);
  } catch {
    // The switch stopped first, or the port went already: nothing left to undo.
  }
}
