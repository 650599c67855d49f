/**
 * The switch process's data-plane loop: one poll(2) over every port's fds (a vhost-user port's socket, its
 * connection and its rings' kick eventfds; a TAP's fd), then each port's turn, each turn one batch of the switch
 * (Switch.endBatch after every source port). The loop runs in slices (`runFor`) so that the process's event loop
 * (the control socket, signals) gets the thread between them: the engine is touched only between whole turns.
 */
import { native, POLLIN } from "../native.ts";
import { PollPacer } from "../vhost-user/endpoint.ts";
import type { PortSpec } from "./port-spec.ts";
import { ShmPort } from "./ports/shm-port.ts";
import { TapPort } from "./ports/tap-port.ts";
import { VhostUserPort } from "./ports/vhost-user-port.ts";
import { type Switch, SwitchError, type SwitchPort } from "./switch.ts";

/** poll(2) takes at most 64 fds (the native wrapper's bound). */
const MAX_POLL = 64;
/** Slots a vhost-user port takes: listen or connection, input (unused), and 3 kicks (rx, tx, control queue). */
const VHOST_USER_SLOTS = 5;
/** Slots an shm port takes: listen or connection, and the kick. */
const SHM_SLOTS = 2;

type Io = VhostUserPort | TapPort | ShmPort;

function slotsOf(kind: PortSpec["kind"]): number {
  return kind === "tap" ? 1 : kind === "shm" ? SHM_SLOTS : VHOST_USER_SLOTS;
}

export class SwitchRunner {
  private readonly pollfds = new Int32Array(3 * MAX_POLL);
  private readonly views: Int32Array[] = [];
  private readonly ios = new Map<string, Io>();
  /** Per port, its first slot in the last poll. */
  private readonly slots = new Map<string, number>();
  /** Ports (TAP, shm) left with frames to read after their budget: their next turn comes without sleeping. */
  private readonly owed = new Set<string>();
  private readonly pacer = new PollPacer();

  constructor(
    readonly sw: Switch,
    private readonly log: (m: string) => void,
  ) {}

  /** Opens the port's io (listening socket, TAP) and adds it to the switch. */
  attach(spec: PortSpec, defaultName: string): SwitchPort {
    const name = spec.name ?? defaultName;
    if (this.sw.port(name)) throw new SwitchError("VIREO_SWITCH_PORT_EXISTS", `port ${name} exists`);
    if (this.slotsNeeded() + slotsOf(spec.kind) > MAX_POLL) {
      throw new SwitchError("VIREO_SWITCH_FULL", `no room for port ${name}: poll(2) slots are spent`);
    }
    for (const [n, io] of this.ios) {
      if (
        spec.kind === "vhost-user" &&
        io instanceof VhostUserPort &&
        io.endpoint.socketPath === spec.target
      ) {
        throw new SwitchError("VIREO_SWITCH_PORT_EXISTS", `port ${n} already serves ${spec.target}`);
      }
      if (spec.kind === "shm" && io instanceof ShmPort && io.socketPath === spec.target) {
        throw new SwitchError("VIREO_SWITCH_PORT_EXISTS", `port ${n} already serves ${spec.target}`);
      }
      if (spec.kind === "tap" && io instanceof TapPort && io.ifname === spec.target) {
        throw new SwitchError("VIREO_SWITCH_PORT_EXISTS", `port ${n} already has TAP ${spec.target}`);
      }
    }
    let io: Io;
    if (spec.kind === "tap") {
      io = new TapPort(this.sw, spec.target);
    } else if (spec.kind === "shm") {
      io = new ShmPort(this.sw, { name, socketPath: spec.target, log: this.log });
      io.listen();
    } else {
      io = new VhostUserPort(this.sw, {
        name,
        socketPath: spec.target,
        log: this.log,
        queueSize: spec.queueSize,
      });
      io.endpoint.listen();
    }
    let port: SwitchPort;
    try {
      port = this.sw.addPort(name, io, spec.vlan);
    } catch (e) {
      io.close();
      throw e;
    }
    io.bind(port.index);
    this.ios.set(name, io);
    this.log(
      `port ${name} (${spec.kind}) ${spec.kind === "tap" ? `on TAP ${spec.target}` : `listening on ${spec.target}`}`,
    );
    return port;
  }

  detach(name: string): void {
    this.sw.removePort(name);
    this.ios.delete(name);
    this.slots.delete(name);
    this.owed.delete(name);
    this.log(`port ${name} detached`);
  }

  private slotsNeeded(): number {
    let n = 0;
    for (const io of this.ios.values()) n += slotsOf(io.kind);
    return n;
  }

  /**
   * Serves the ports for about `ms` milliseconds (at least one turn): sleeps in poll(2) while nothing is due, up to
   * the end of the slice.
   */
  runFor(ms: number): void {
    const n = native();
    const end = performance.now() + ms;
    const p = this.pollfds;
    for (;;) {
      let used = 0;
      let immediate = this.owed.size > 0;
      for (const [name, io] of this.ios) {
        const first = used;
        if (io instanceof TapPort) {
          p[3 * used] = this.owed.has(name) ? -1 : io.fd;
          p[3 * used + 1] = POLLIN;
          p[3 * used + 2] = 0;
          used++;
        } else if (io instanceof ShmPort) {
          used += io.addPollFds(p, used);
          if (io.wantsImmediate()) immediate = true;
        } else {
          used += io.endpoint.addPollFds(p, used);
          if (io.endpoint.wantsImmediate()) immediate = true;
        }
        this.slots.set(name, first);
      }
      const left = end - performance.now();
      if (used === 0) {
        if (left > 0) n.poll(this.view(1, -1), Math.ceil(left));
        return;
      }
      // While traffic flows most turns skip poll(2) (PollPacer); the rings are served whether or not their kicks
      // were read, and every TURNS_PER_POLL-th turn still polls, for kicks, control messages and TAPs.
      if (this.pacer.due(immediate)) n.poll(this.view(used), immediate || left <= 0 ? 0 : Math.ceil(left));
      for (const [name, io] of this.ios) {
        const s = this.slots.get(name);
        if (s === undefined) continue;
        if (io instanceof TapPort) {
          if (this.owed.has(name) || p[3 * s + 2] !== 0) {
            if (io.read()) this.owed.add(name);
            else this.owed.delete(name);
          }
        } else if (io instanceof ShmPort) {
          io.handlePoll(p, s);
          // The rings are read every turn, kicked or not (as vhost-user rings are served); a port with more
          // than its budget is owed a turn without sleeping.
          if (io.read()) this.owed.add(name);
          else this.owed.delete(name);
        } else {
          io.endpoint.handlePoll(p);
        }
        this.sw.endBatch();
      }
      if (performance.now() >= end) return;
    }
  }

  /** The first `k` triples of pollfds (made once per k); with fd -1 for an empty poll that only sleeps. */
  private view(k: number, fd?: number): Int32Array {
    if (fd !== undefined) {
      this.pollfds[0] = fd;
      this.pollfds[2] = 0;
    }
    let v = this.views[k];
    if (v === undefined) {
      v = this.pollfds.subarray(0, 3 * k);
      this.views[k] = v;
    }
    return v;
  }

  /** Detaches every port (closing sockets and TAPs). */
  close(): void {
    for (const name of [...this.ios.keys()]) this.detach(name);
  }
}
