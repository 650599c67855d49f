/**
 * `vireo run --incoming`: the destination of a live migration (docs/migration.md). Listens on the endpoint, takes
 * one connection, reads the stream into freshly allocated guest RAM (src/vmm/migration/stream.ts checks every
 * byte), then checks the state file and the RAM hash the source sent. What it returns lets `vireo run` build and
 * start the machine, and answer the source: `accept` once the vCPUs are ready to run, `refuse` otherwise (the
 * source then runs the guest on). Nothing starts on a stream that is cut, malformed or does not add up.
 */
import { createHash } from "node:crypto";
import { closeSync, existsSync, lstatSync, unlinkSync } from "node:fs";
import { createServer, type Socket } from "node:net";
import { VireoError } from "../errors.ts";
import { allocateGuestRam, type GuestRam, MAX_MEM_MIB } from "../memory/guest-ram.ts";
import { describeEndpoint, type Endpoint } from "../vmm/migration/endpoint.ts";
import { MigrationReceiver, MigrationStreamError } from "../vmm/migration/stream.ts";
import { planFromStateFile, type RestorePlan } from "../vmm/snapshot/snapshot.ts";
import { decodeStateFile } from "../vmm/snapshot/state-file.ts";

const MiB = 1 << 20;

export interface IncomingMigration {
  plan: RestorePlan;
  ram: GuestRam;
  from: string;
  stats: MigrationReceiver["stats"];
  /** Tells the source the destination runs the guest now (it stops). Once; later calls do nothing. */
  accept(): void;
  /** Tells the source to run the guest on, with the reason. Does nothing after accept. */
  refuse(reason: string): void;
}

function listen(endpoint: Endpoint): Promise<ReturnType<typeof createServer>> {
  const server = createServer();
  if (endpoint.kind === "unix" && existsSync(endpoint.path) && lstatSync(endpoint.path).isSocket())
    unlinkSync(endpoint.path); // a socket file a previous vireo left behind
  return new Promise((resolve, reject) => {
    server.once("error", (e) =>
      reject(
        new VireoError("VIREO_MIGRATION_LISTEN", `--incoming ${describeEndpoint(endpoint)}: ${e.message}`),
      ),
    );
    server.once("listening", () => resolve(server));
    if (endpoint.kind === "unix") server.listen(endpoint.path);
    else server.listen(endpoint.port, endpoint.host);
  });
}

export async function receiveMigration(
  endpoint: Endpoint,
  o: { maxCpus: number; log(line: string): void },
): Promise<IncomingMigration> {
  const server = await listen(endpoint);
  o.log(`waiting for a migration on ${describeEndpoint(endpoint)}`);
  const sock = await new Promise<Socket>((resolve) => server.once("connection", resolve));
  server.close();
  if (endpoint.kind === "unix") {
    try {
      unlinkSync(endpoint.path);
    } catch {
      // already gone
    }
  }
  const from = endpoint.kind === "unix" ? "a unix socket" : `${sock.remoteAddress}:${sock.remotePort}`;
  o.log(`migration from ${from}: receiving`);
  let ram: GuestRam | null = null;
  let answered = false;
  const answer = (body: { ok: boolean; error?: string }) => {
    if (answered) return;
    answered = true;
    sock.end(`${JSON.stringify(body)}\n`);
  };
  const receiver = new MigrationReceiver(
    (hello) => {
      ram = allocateGuestRam(hello.ramBytes / MiB);
      return new Uint8Array(ram.buffer);
    },
    { maxRamBytes: MAX_MEM_MIB * MiB, maxCpus: o.maxCpus },
  );
  try {
    const done = await new Promise<NonNullable<MigrationReceiver["done"]>>((resolve, reject) => {
      sock.on("data", (chunk: Buffer) => {
        try {
          receiver.push(chunk);
          if (receiver.done) {
            sock.pause();
            resolve(receiver.done);
          }
        } catch (e) {
          reject(e);
        }
      });
      sock.on("error", (e) =>
        reject(new MigrationStreamError(`the migration connection failed: ${e.message}`)),
      );
      sock.on("close", () => {
        try {
          resolve(receiver.finish());
        } catch (e) {
          reject(e);
        }
      });
    });
    const plan = planFromStateFile(decodeStateFile(done.state), "(migration stream)", o.maxCpus);
    if (plan.machine.memMiB * MiB !== done.hello.ramBytes || plan.machine.cpus !== done.hello.cpus)
      throw new MigrationStreamError(
        `the state is of a machine with ${plan.machine.memMiB} MiB and ${plan.machine.cpus} vCPU(s), but HELLO said ${done.hello.ramBytes / MiB} MiB and ${done.hello.cpus}`,
      );
    const got = ram as unknown as GuestRam;
    if (done.ramSha256 !== null) {
      const sha = createHash("sha256").update(new Uint8Array(got.buffer)).digest();
      if (!sha.equals(done.ramSha256))
        throw new MigrationStreamError(
          "guest RAM received does not match the source's SHA-256",
          "VIREO_MIGRATION_RAM_MISMATCH",
        );
      o.log("guest RAM matches the source's SHA-256");
    }
    o.log(`migration from ${from}: ${receiver.stats.pages} pages, ${receiver.stats.bytes} bytes received`);
    return {
      plan,
      ram: got,
      from,
      stats: receiver.stats,
      accept: () => answer({ ok: true }),
      refuse: (reason) => answer({ ok: false, error: reason }),
    };
  } catch (e) {
    const message = (e as Error).message;
    answer({ ok: false, error: message });
    const held = ram as GuestRam | null;
    if (held !== null) closeSync(held.fd);
    if (e instanceof VireoError)
      throw new VireoError(e.code, `--incoming: ${message} (${e.code})`, { cause: e });
    throw e;
  }
}
