/**
 * `vireo run --net switch=NAME[,vlan=N|,trunk=...][,mac=...][,transport=vhost-user|shm]`: a VM's NIC on a
 * running `vireo switch` directly. vireo asks the switch (over its control socket) to attach a port for this VM
 * at a socket of its own, runs the NIC on it, and detaches the port when the VM ends. Two transports:
 *
 * - vhost-user (the default): the port is a vhost-user back-end; the NIC runs as `--net vhost-user=SOCKET` and the
 *   switch serves the guest's rings itself, with the guest's kicks and interrupts as eventfds between the two
 *   processes and no frame through vireo run (one copy a frame into the switch, one out).
 * - shm: the port is an shm port (shared-memory frame rings, src/switch/ports/shm-port.ts); the NIC runs as
 *   `--net shm=SOCKET`: the VM's own data-plane thread serves the guest's rings and copies frames through the
 *   rings (one copy more a frame, on the VM's thread; less work on the switch's). docs/switch.md measures both.
 */
import { join } from "node:path";
import { ConfigError } from "../errors.ts";
import { controlRequest, defaultControlPath, SWITCH_NAME } from "../switch/control.ts";

/** One `--net` value rewritten for a switch port, and how to undo the attach. */
export interface SwitchNet {
  /** The `--net` value to use instead (vhost-user=SOCKET[,mac=...] or shm=SOCKET[,mac=...]). */
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
  let transport: "vhost-user" | "shm" = "vhost-user";
  for (const p of parts) {
    const [key, value] = p.split("=") as [string, string | undefined];
    if (key === "mac") netOpts.push(p);
    else if (key === "vlan" || key === "trunk" || key === "native") portOpts.push(p);
    else if (key === "transport") {
      if (value !== "vhost-user" && value !== "shm")
        throw new ConfigError(
          `--net ${spec}: transport=${value ?? ""}: want transport=vhost-user or transport=shm`,
        );
      transport = value;
    } else
      throw new ConfigError(
        `--net ${spec}: unknown option '${key}' for switch= (mac, vlan, trunk, native, transport)`,
      );
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
      spec: [`${transport}=${socket}`, `name=${port}`, ...portOpts].join(","),
    });
  } catch (e) {
    throw new ConfigError(`--net ${spec}: ${(e as Error).message}`);
  }
  return { net: [`${transport}=${socket}`, ...netOpts].join(","), switchName: name, port, control };
}

/** Detaches a port attachSwitchNet attached (best effort: the switch may be gone). */
export async function detachSwitchNet(n: SwitchNet): Promise<void> {
  try {
    await controlRequest(n.control, { op: "detach", port: n.port }, 2000);
  } catch {
    // The switch stopped first, or the port went already: nothing left to undo.
  }
}
