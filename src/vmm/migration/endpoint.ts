/**
 * Where a migration goes: `tcp:HOST:PORT` (HOST a name, an IPv4 address or a bracketed IPv6 one) or
 * `unix:PATH`. The destination listens there (`vireo run --incoming`), the source connects (`migrate`).
 */
import { ConfigError } from "../../errors.ts";

export type Endpoint = { kind: "tcp"; host: string; port: number } | { kind: "unix"; path: string };

export function parseEndpoint(spec: string, what = "migration endpoint"): Endpoint {
  if (spec.startsWith("unix:")) {
    const path = spec.slice(5);
    if (!path || path.includes("\0")) throw new ConfigError(`${what} '${spec}': unix: needs a socket path`);
    if (Buffer.byteLength(path) > 107)
      throw new ConfigError(
        `${what} '${spec}': the socket path is ${Buffer.byteLength(path)} bytes, at most 107`,
      );
    return { kind: "unix", path };
  }
  if (spec.startsWith("tcp:")) {
    const rest = spec.slice(4);
    const colon = rest.lastIndexOf(":");
    let host = colon < 0 ? "" : rest.slice(0, colon);
    const portText = colon < 0 ? "" : rest.slice(colon + 1);
    if (host.startsWith("[") && host.endsWith("]")) host = host.slice(1, -1);
    const port = Number(portText);
    if (!host || !/^[0-9]+$/.test(portText) || port < 1 || port > 65535)
      throw new ConfigError(`${what} '${spec}': want tcp:HOST:PORT with a port from 1 to 65535`);
    return { kind: "tcp", host, port };
  }
  throw new ConfigError(`${what} '${spec}': want tcp:HOST:PORT or unix:PATH`);
}

export function describeEndpoint(e: Endpoint): string {
  return e.kind === "unix"
    ? `unix:${e.path}`
    : `tcp:${e.host.includes(":") ? `[${e.host}]` : e.host}:${e.port}`;
}
