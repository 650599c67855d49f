/** vireo's command line. Control only: parse, validate, start a machine or a benchmark, report. */
import { closeSync, openSync, writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { BENCHMARKS, runBenchmark, SERVED_BY, type ServedBy } from "../../bench/index.ts";
import { fileLooksLikeBzImage } from "../arch/x86/linux-loader.ts";
import { ConfigError, VireoError } from "../errors.ts";
import { buildGuestImage } from "../image/guest-image.ts";
import { MAX_CPUS, Machine, type MachineConfig, type RunResult, type SerialConfig } from "../vmm/machine.ts";
import { MICRO_PROGRAMS, microGuest } from "../vmm/micro-guest.ts";
import { parseEndpoint } from "../vmm/migration/endpoint.ts";
import { parseDisk, parseNet } from "../vmm/pci-devices.ts";
import { loadSnapshot, type RestorePlan } from "../vmm/snapshot/snapshot.ts";
import { parseAccel, runEmulated, useEmulatedHost } from "./accel.ts";
import { cmdCtl } from "./ctl.ts";
import { receiveMigration } from "./incoming.ts";
import { attachSwitchNet, detachSwitchNet, isSwitchNet, type SwitchNet } from "./net-switch.ts";
import { formatRunSummary } from "./summary.ts";
import { cmdSwitch } from "./switch.ts";
import { cmdVhostUser } from "./vhost-user.ts";

const MAIN_HELP = `vireo — a VMM in TypeScript on Linux KVM, built around I/O virtualization

Usage:
  vireo run --guest micro:NAME [ARG...] [options]   run a built-in micro guest program
  vireo run --kernel FILE.elf [options]             run a freestanding ELF64 guest (docs/guest-abi.md)
  vireo run --restore DIR [options]                 resume a snapshot taken with vireo ctl snapshot DIR
  vireo run --incoming tcp:HOST:PORT|unix:PATH      wait for a VM that vireo ctl migrate sends, then run it
  vireo demo                                        run the micro guest's tour and show what happened
  vireo ctl --api-socket PATH VERB                  control a running VM (info, pause, resume, metrics, shutdown,
                                                    snapshot, migrate)
  vireo image build [--out DIR] [--force]           fetch Debian's kernel and busybox, build initramfs images
  vireo bench NAME [--json]                         run a benchmark (${Object.keys(BENCHMARKS).join(", ")})
  vireo vhost-user net --socket PATH --tap NAME|--sink|--loopback|--gen SIZE
                                                    a vhost-user back-end process for virtio-net
  vireo vhost-user blk --socket PATH --file IMG [--readonly]
                                                    a vhost-user back-end process for virtio-blk
  vireo switch NAME --port SPEC...                  a learning Ethernet switch between vhost-user peers and
                                                    TAP devices, with capture, filters, rate limits, mirroring

Run 'vireo COMMAND --help' for a command's options.`;

const RUN_HELP = `Usage: vireo run (--kernel FILE | --guest micro:NAME [ARG...] | --restore DIR [--lazy] | --incoming WHERE) [options]

Options:
  --kernel FILE        a Linux bzImage (64-bit boot protocol, ACPI tables built by vireo), or a freestanding
                       ELF64 x86-64 guest loaded per docs/guest-abi.md
  --initrd FILE        initramfs for a Linux kernel (vireo image build makes one)
  --force              boot a Linux kernel even where /dev/kvm is PVM (emulated supervisor mode: very slow)
  --guest micro:NAME   built-in micro guest program; positional ARGs follow NAME on its command line
                       (programs: ${MICRO_PROGRAMS.join(", ")})
  --cmdline STRING     guest command line (with --kernel); for Linux, e.g. 'console=ttyS0 vireo.run="uname -r"' 
  --mem MiB            guest RAM in MiB (default 64 for ELF guests, 512 for Linux; 2 to 3072)
  --cpus N             vCPUs (default 1)
  --serial MODE        COM1 output: stdio (default), none, or file:PATH
  --disk PATH[,readonly][,direct][,iothread]
                       a virtio-blk disk (raw image file) on the PCI bus; repeat for more disks. iothread:
                       its queues are served by a data-plane thread woken by ioeventfds, not in the vCPU's exit
  --disk vhost-user=SOCKET[,readonly]
                       a virtio-blk disk whose requests another process serves over the vhost-user protocol (e.g.
                       vireo vhost-user blk, qemu-storage-daemon --export type=vhost-user-blk); vireo connects at
                       start, reads the disk's configuration (capacity, seg_max, ...) with GET_CONFIG, shares guest
                       RAM and hands the back-end the guest's doorbells (ioeventfds) and interrupts (irqfds). With
                       INFLIGHT_SHMFD vireo keeps the back-end's inflight buffer: if the back-end dies the disk
                       stalls, vireo reconnects every 500 ms, and the next back-end resubmits the requests the
                       dead one had not completed. readonly: the guest is offered VIRTIO_BLK_F_RO (the back-end,
                       which does the I/O, must refuse writes itself: vireo vhost-user blk --readonly)
  --rng                a virtio-rng device on the PCI bus (fed by the host's getrandom)
  --console MODE       where terminal input goes: serial (COM1, default) or virtio (a virtio-console on the PCI
                       bus). Output of both goes where --serial says
  --net tap=NAME[,mac=xx:xx:xx:xx:xx:xx][,model=virtio|e1000]
                       a network card on the PCI bus attached to host TAP interface NAME (created if missing,
                       which needs CAP_NET_ADMIN; vireo does not configure it). model=virtio (default):
                       virtio-net, its queues served by a data-plane thread woken by ioeventfds; model=e1000: an
                       emulated Intel 82540EM (every register access exits; receive and timers on its own
                       thread). Repeat for more cards
  --net tap=NAME,vhost=on[,mac=xx:xx:xx:xx:xx:xx]
                       a virtio-net card whose rings the host kernel serves (/dev/vhost-net): vireo hands it
                       guest memory, the rings, the TAP, the guest's doorbells (KVM ioeventfds) and interrupts
                       (irqfds), so no frame passes through vireo. Needs the vhost_net module (modprobe
                       vhost_net; without /dev/vhost-net it is a one-line error). Split rings
  --net vhost-user=SOCKET[,mac=xx:xx:xx:xx:xx:xx]
                       a virtio-net card whose rings another process serves over the vhost-user protocol (e.g.
                       vireo vhost-user net, vireo switch, DPDK's net_vhost); vireo connects at start (nothing
                       listening there is an error), shares guest RAM with it, and hands it the guest's doorbells
                       (KVM ioeventfds) and interrupts (irqfds), so no frame passes through vireo. Split rings.
                       If the back-end goes away the card stalls and the VM runs on; vireo reconnects when a
                       back-end listens on SOCKET again and the rings go on from where the guest left them
  --net shm=SOCKET[,mac=xx:xx:xx:xx:xx:xx]
                       a virtio-net card whose frames go through the shared-memory rings of a vireo switch shm
                       port listening on SOCKET: the card's queues are served by vireo's own data-plane thread,
                       which copies each frame into or out of the rings (no TAP, no virtio_net_hdr offloads).
                       Not with snapshots or migration
  --net switch=NAME[,vlan=N|,trunk=N+M[,native=N]][,mac=xx:xx:xx:xx:xx:xx][,transport=vhost-user|shm]
                       a virtio-net card on a running vireo switch NAME: vireo attaches a port for it through the
                       switch's control socket (at its default path, $VIREO_RUN_DIR/switch/NAME.sock), runs the
                       card on it (transport=vhost-user, the default: as --net vhost-user=, the switch serving
                       the guest's rings; transport=shm: as --net shm=), and detaches the port when the VM ends
  --restore DIR        resume the snapshot in DIR (vireo ctl snapshot DIR): the machine (memory, vCPUs, devices)
                       is the one recorded there, so --kernel, --guest, --mem, --cpus and the device options
                       are refused with it; --serial, --timeout, --api-socket, --metrics, --stats apply. A state
                       file of another format version, corrupted, or not fitting is refused (its code in the
                       message) before any vCPU runs. Not with the emulated KVM host
  --lazy               with --restore: map the memory file instead of reading it, so the guest starts at once and
                       each page is read when first touched (the file must stay as it is while the VM runs)
  --incoming tcp:HOST:PORT|unix:PATH
                       listen there for one live migration (vireo ctl migrate on the source), receive the guest's
                       RAM and state, and run it: the machine is the source's, with the same disks (same paths:
                       shared storage) and TAPs (by name on this host); run-time options as with --restore. A cut,
                       malformed or mismatched stream is refused and the source runs on. Not with the emulated
                       KVM host
  --metrics FILE       write the metrics registry as JSON to FILE at exit
  --timeout SECONDS    stop the guest after this long (exit status 124)
  --stats SECONDS      print exit and interrupt rates to stderr every SECONDS while the guest runs
  --api-socket PATH    serve the control API (HTTP/JSON, docs/api/openapi.yaml) on this Unix socket while the
                       VM runs; vireo ctl is its client. Not with the emulated KVM host (its sockets are inside
                       that VM)
  --accel MODE         auto (default): this host's /dev/kvm if it has one, else the emulated KVM host; kvm: only
                       /dev/kvm; emulated: inside vireo's emulated KVM host (QEMU TCG with nested KVM, booted
                       for this run: console, exit status, --metrics, --serial file: and --disk work the same;
                       --net cannot cross and is refused). Much slower than real KVM
  -h, --help           this help

Exit status: the guest's debug-exit code (0-255); 0 when the guest powers off or resets (Linux poweroff -f,
reboot -f); 123 if the guest crashed (triple fault);
124 on --timeout; 125 if vireo itself failed (one line on stderr says why); 130 if stopped (Ctrl-A x).`;

const DEMO_HELP = `Usage: vireo demo [--accel auto|kvm|emulated]

Runs the micro guest's tour (UART output, port I/O, MMIO, interrupts, CPL 3 with IOPL 3) on KVM and
prints a table of what happened: exits by reason, interrupts, device accesses. Where this host has no usable
/dev/kvm it runs inside vireo's emulated KVM host (see vireo run --help, --accel).`;

const IMAGE_HELP = `Usage: vireo image build [--out DIR] [--force]

Downloads Debian's linux-image-amd64 kernel and busybox-static with apt-get download (nothing is installed on
the host), and writes to DIR (default .cache/images/debian in the repository, or $VIREO_IMAGE_DIR):
  vmlinuz              the stock kernel (bzImage)
  initrd-guest.img     busybox + virtio/e1000 modules; init runs vireo.run="..." from the kernel command line
                       and powers off
  initrd-harness.img   busybox + kvm_amd and 9p modules, for the real-KVM test harness (test/realkvm)
Re-running with the same package versions reuses the images; --force rebuilds them.`;

const BENCH_HELP = `Usage: vireo bench NAME [--json] [--rounds N] [--iterations N] [--seconds N] [--sizes B,B...] [--pairs N,N...]
                   [--depths N,N...] [--cache page|direct] [--load loop|open] [--served-by WAY,WAY...]
                   [--ring split|packed] [--force] [--accel auto|kvm|emulated]

Benchmarks (each prints a table, or JSON with --json, of ratios against a reference run in the same process):
${Object.entries(BENCHMARKS)
  .map(([name, b]) => `  ${name.padEnd(10)} ${b.description}`)
  .join("\n")}

Options:
  --json            print JSON instead of a table
  --rounds N        interleaved rounds per configuration (default 5; switch, vhost-user-blk, snapshot 1; medians)
  --iterations N    guest loop iterations per round (default depends on the benchmark)
  --seconds N       vhost-user, vhost-user-blk, switch: length of each measured window (default 5)
  --sizes B,B...    switch: frame sizes in bytes, no FCS, 60 to 1518 (default 64,1518); snapshot: guest RAM in
                    MiB, at least 64 (default 128,1024)
  --pairs N,N...    switch: numbers of port pairs (default 1,2,4)
  --depths N,N...   vhost-user-blk: queue depths, requests in flight, 1 to 42 (default 1,32)
  --cache MODE      vhost-user-blk: page (both back-ends through the host page cache, default) or direct (both
                    with O_DIRECT: vireo --direct, qsd cache.direct=on)
  --load loop|open  switch: the vhost-user load, one testpmd looping frames through every pair (default), or a
                    txonly and an rxonly testpmd per pair (on 2 CPUs these measure the scheduler; bench/switch.ts)
  --served-by W,W.. virtio: only rows whose queues are served these ways: vcpu-exit, io-thread, vhost-user (a
                    \`vireo vhost-user\` process), vhost-net (the kernel, where /dev/vhost-net exists); default all
  --ring KIND       vhost-user: the virtio_user driver's rings, split (default) or packed (packed_vq=1)
  --force           boot: run even where /dev/kvm is PVM (very slow; use --accel emulated instead)
  --accel MODE      where to run (see vireo run --help); every table and JSON says which kind of host it ran
                    on (kvm, pvm, emulated): compare figures only within one kind`;

function parseConsole(mode: string): "serial" | "virtio" {
  if (mode === "serial" || mode === "virtio") return mode;
  throw new ConfigError(`--console must be serial or virtio, got '${mode}'`);
}

function parseSerial(value: string): SerialConfig {
  if (value === "stdio") return { kind: "stdio" };
  if (value === "none") return { kind: "none" };
  if (value.startsWith("file:") && value.length > 5) return { kind: "file", path: value.slice(5) };
  throw new ConfigError(`--serial must be stdio, none or file:PATH, got '${value}'`);
}

function parseCount(flag: string, value: string | undefined, fallback: number, min = 1): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(n) || n < min)
    throw new ConfigError(`${flag} must be a whole number >= ${min}, got '${value}'`);
  return n;
}

async function cmdRun(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      kernel: { type: "string" },
      initrd: { type: "string" },
      force: { type: "boolean" },
      guest: { type: "string" },
      cmdline: { type: "string" },
      mem: { type: "string" },
      cpus: { type: "string" },
      serial: { type: "string" },
      metrics: { type: "string" },
      timeout: { type: "string" },
      stats: { type: "string" },
      disk: { type: "string", multiple: true },
      rng: { type: "boolean" },
      net: { type: "string", multiple: true },
      console: { type: "string" },
      accel: { type: "string" },
      "api-socket": { type: "string" },
      restore: { type: "string" },
      incoming: { type: "string" },
      lazy: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(RUN_HELP);
    return 0;
  }
  if (values.restore !== undefined && values.incoming !== undefined)
    throw new ConfigError(
      "--restore and --incoming: give one (a snapshot directory, or a migration to wait for)",
    );
  if (values.lazy && values.restore === undefined) throw new ConfigError("--lazy goes with --restore DIR");
  if (values.restore !== undefined) return cmdRestore(values.restore, values, positionals);
  if (values.incoming !== undefined) return cmdIncoming(values.incoming, values, positionals);
  if ((values.kernel === undefined) === (values.guest === undefined))
    throw new ConfigError("give exactly one of --kernel FILE or --guest micro:NAME (see vireo run --help)");
  let kernel: string;
  let cmdline: string;
  if (values.guest !== undefined) {
    if (!values.guest.startsWith("micro:"))
      throw new ConfigError(`--guest takes micro:NAME, got '${values.guest}'`);
    if (values.cmdline !== undefined)
      throw new ConfigError("--cmdline goes with --kernel; with --guest, put arguments after the name");
    ({ kernel, cmdline } = microGuest(values.guest, positionals));
  } else {
    if (positionals.length) throw new ConfigError(`unexpected argument '${positionals[0]}'`);
    kernel = values.kernel as string;
    cmdline = values.cmdline ?? "";
  }
  const timeout = values.timeout === undefined ? undefined : Number(values.timeout);
  if (timeout !== undefined && !(timeout > 0))
    throw new ConfigError(`--timeout must be a positive number of seconds, got '${values.timeout}'`);
  // --net switch=NAME: a port on the running switch for this VM, used as --net vhost-user= (src/cli/net-switch.ts);
  // detached again however the run ends.
  const netSpecs = [...(values.net ?? [])];
  if (netSpecs.some(isSwitchNet) && useEmulatedHost(parseAccel(values.accel)))
    throw new ConfigError(
      "--net switch=: a switch on this host cannot reach a VM inside the emulated KVM host; run with --accel kvm on a host with KVM",
    );
  const attached: SwitchNet[] = [];
  const run = async (): Promise<number> => {
    const config: MachineConfig = {
      kernel,
      cmdline,
      memMiB: parseCount("--mem", values.mem, fileLooksLikeBzImage(kernel) ? 512 : 64),
      cpus: parseCount("--cpus", values.cpus, 1),
      initrd: values.initrd,
      force: values.force === true,
      serial: parseSerial(values.serial ?? "stdio"),
      stdin: true,
      timeoutMs: timeout === undefined ? undefined : timeout * 1000,
      statsIntervalMs: values.stats === undefined ? undefined : parseCount("--stats", values.stats, 1) * 1000,
      disks: (values.disk ?? []).map(parseDisk),
      rng: values.rng === true,
      nets: netSpecs.map(parseNet),
      console: parseConsole(values.console ?? "serial"),
      apiSocket: values["api-socket"],
    };
    if (config.apiSocket !== undefined && Buffer.byteLength(config.apiSocket) > 107)
      throw new ConfigError(`--api-socket path is ${Buffer.byteLength(config.apiSocket)} bytes, at most 107`);
    const accel = parseAccel(values.accel);
    Machine.check(config);
    if (values.metrics) checkWritable("--metrics", values.metrics);
    if (useEmulatedHost(accel)) {
      if (config.disks?.some((d) => d.vhostUser))
        throw new ConfigError(
          "--disk vhost-user=: a socket on this host cannot reach a VM inside the emulated KVM host; run with --accel kvm on a host with KVM",
        );
      if (config.nets?.length)
        throw new ConfigError(
          "--net: a TAP or vhost-user socket on this host cannot reach a VM inside the emulated KVM host; run with --accel kvm on a host with KVM",
        );
      if (config.apiSocket !== undefined)
        throw new ConfigError(
          "--api-socket: a socket inside the emulated KVM host cannot be reached from this host; run with --accel kvm on a host with KVM",
        );
      return runEmulated({
        argv: ["run", ...withoutAccel(argv), "--accel", "kvm"],
        writes: [
          ...(values.metrics ? [values.metrics] : []),
          ...(config.serial.kind === "file" ? [config.serial.path] : []),
          ...(config.disks ?? []).filter((d) => !d.readOnly).map((d) => d.path),
        ],
        console: config.serial.kind === "stdio",
      });
    }
    const result = await runUntilStopped(new Machine(config));
    if (values.metrics) writeMetrics(values.metrics, result);
    reportOutcome(result);
    return result.status;
  };
  try {
    for (const [i, spec] of netSpecs.entries()) {
      if (!isSwitchNet(spec)) continue;
      const n = await attachSwitchNet(spec, i);
      attached.push(n);
      netSpecs[i] = n.net;
    }
    return await run();
  } finally {
    for (const n of attached) await detachSwitchNet(n);
  }
}

/** Options that describe the machine: a restored or incoming machine is the saved one, so they are refused. */
const MACHINE_OPTIONS = [
  "kernel",
  "guest",
  "cmdline",
  "initrd",
  "force",
  "mem",
  "cpus",
  "disk",
  "rng",
  "net",
  "console",
] as const;

type RunValues = Record<string, string | boolean | string[] | undefined>;

/** The run-time options of a restored (or incoming) machine, checked before anything starts. */
function restoredRunOptions(flag: string, values: RunValues, positionals: string[]) {
  const clash = MACHINE_OPTIONS.find((o) => values[o] !== undefined);
  if (clash) {
    const whose = flag === "--restore" ? "the snapshot's" : "the one the source sends";
    throw new ConfigError(`${flag}: the machine is ${whose}; --${clash} cannot go with it`);
  }
  if (positionals.length) throw new ConfigError(`unexpected argument '${positionals[0]}'`);
  const timeout = values.timeout === undefined ? undefined : Number(values.timeout);
  if (timeout !== undefined && !(timeout > 0))
    throw new ConfigError(`--timeout must be a positive number of seconds, got '${values.timeout}'`);
  const apiSocket = values["api-socket"] as string | undefined;
  if (apiSocket !== undefined && Buffer.byteLength(apiSocket) > 107)
    throw new ConfigError(`--api-socket path is ${Buffer.byteLength(apiSocket)} bytes, at most 107`);
  if (typeof values.metrics === "string") checkWritable("--metrics", values.metrics);
  const serial = parseSerial((values.serial as string | undefined) ?? "stdio");
  const statsIntervalMs =
    values.stats === undefined ? undefined : parseCount("--stats", values.stats as string, 1) * 1000;
  return (plan: RestorePlan): MachineConfig => ({
    kernel: plan.machine.kernel,
    cmdline: plan.machine.cmdline,
    memMiB: plan.machine.memMiB,
    cpus: plan.machine.cpus,
    serial,
    stdin: true,
    timeoutMs: timeout === undefined ? undefined : timeout * 1000,
    statsIntervalMs,
    apiSocket,
    restore: plan,
    // The devices the snapshot's machine had, with the options they had (disks on shared storage, TAPs by name).
    // vhost-user disks and NICs connect to the back-end listening on the saved socket path on this host.
    disks: plan.machine.devices.disks.map((d) => ({
      path: d.path,
      readOnly: d.readOnly,
      direct: d.direct,
      iothread: d.iothread,
      ...(d.vhostUser ? { vhostUser: true } : {}),
    })),
    nets: plan.machine.devices.nets.map((n) => ({
      tap: n.tap,
      model: n.model,
      mac: Uint8Array.from(n.mac.split(":").map((h) => Number.parseInt(h, 16))),
      ...(n.vhostUser !== "" ? { vhostUser: n.vhostUser } : {}),
    })),
    rng: plan.machine.devices.rng,
    console: plan.machine.devices.console,
  });
}

/** A restored or incoming VM runs on this host's KVM: the emulated KVM host is another machine. */
function refuseEmulatedHost(flag: string, values: RunValues): void {
  if (useEmulatedHost(parseAccel(values.accel as string | undefined)))
    throw new ConfigError(
      `${flag}: a snapshot or migration on this host cannot reach a VM inside the emulated KVM host; run with --accel kvm on a host with KVM`,
    );
}

/** vireo run --restore DIR: the machine from the snapshot, run-time options from the command line. */
async function cmdRestore(dir: string, values: RunValues, positionals: string[]): Promise<number> {
  const configFor = restoredRunOptions("--restore", values, positionals);
  let plan: RestorePlan;
  try {
    plan = loadSnapshot(dir, MAX_CPUS);
  } catch (e) {
    if (e instanceof VireoError)
      throw new VireoError(e.code, `--restore ${dir}: ${e.message} (${e.code})`, { cause: e });
    throw e;
  }
  // After the snapshot's checks, so a bad snapshot gets its refusal on any host.
  refuseEmulatedHost("--restore", values);
  let result: RunResult;
  try {
    result = await runUntilStopped(
      new Machine({
        ...configFor(plan),
        lazyRestore: values.lazy === true,
        // Said when it happens, not at the end: the restored guest may run for long.
        onRestored: (ms, bytesRead) =>
          process.stderr.write(
            `vireo: restored ${dir} in ${ms.toFixed(1)} ms (${values.lazy ? "memory mapped lazily" : `${bytesRead} bytes of RAM read`})\n`,
          ),
      }),
    );
  } catch (e) {
    if (e instanceof VireoError && !e.message.includes(e.code))
      throw new VireoError(e.code, `--restore ${dir}: ${e.message} (${e.code})`, { cause: e });
    throw e;
  }
  if (typeof values.metrics === "string") writeMetrics(values.metrics, result);
  reportOutcome(result);
  return result.status;
}

/**
 * vireo run --incoming tcp:HOST:PORT|unix:PATH: waits for one migration (src/cli/incoming.ts), then runs the
 * machine it brought; run-time options from the command line.
 */
async function cmdIncoming(spec: string, values: RunValues, positionals: string[]): Promise<number> {
  const configFor = restoredRunOptions("--incoming", values, positionals);
  const endpoint = parseEndpoint(spec, "--incoming");
  refuseEmulatedHost("--incoming", values);
  const incoming = await receiveMigration(endpoint, {
    maxCpus: MAX_CPUS,
    log: (line) => process.stderr.write(`vireo: ${line}\n`),
  });
  let result: RunResult;
  try {
    result = await runUntilStopped(
      new Machine({
        ...configFor(incoming.plan),
        incoming: { ram: incoming.ram, onStarted: incoming.accept },
        onRestored: (ms) =>
          process.stderr.write(
            `vireo: took the migration from ${incoming.from} (${incoming.stats.pages} pages in ${incoming.stats.records} records); running ${ms.toFixed(1)} ms after the stream ended\n`,
          ),
      }),
    );
  } catch (e) {
    incoming.refuse((e as Error).message);
    if (e instanceof VireoError && !e.message.includes(e.code))
      throw new VireoError(e.code, `--incoming: ${e.message} (${e.code})`, { cause: e });
    throw e;
  }
  // A run that ended before its vCPUs were let go never said ok: the source runs the guest on.
  incoming.refuse(result.message ?? `the machine ended before it ran (${result.outcome})`);
  if (typeof values.metrics === "string") writeMetrics(values.metrics, result);
  reportOutcome(result);
  return result.status;
}

/** Runs the machine to its end; SIGINT and SIGTERM meanwhile ask it to stop. */
async function runUntilStopped(machine: Machine): Promise<RunResult> {
  const onSignal = () => machine.requestStop();
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  try {
    return await machine.run();
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}

function writeMetrics(path: string, result: RunResult): void {
  writeFileSync(path, `${JSON.stringify(metricsDocument(result), null, 2)}\n`);
}

/**
 * Refuses an output file vireo could not write, before the run rather than after it (the run's figures would be
 * lost). The file is created, or truncated, now; the run fills it at the end.
 */
function checkWritable(option: string, path: string): void {
  try {
    closeSync(openSync(path, "w"));
  } catch (e) {
    throw new ConfigError(
      `${option} ${path}: cannot write it (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`,
    );
  }
}

function metricsDocument(result: RunResult) {
  return {
    outcome: result.outcome,
    status: result.status,
    wallMs: Math.round(result.wallMs),
    stopMs: result.stopMs === undefined ? undefined : Math.round(result.stopMs * 10) / 10,
    metrics: result.metrics,
  };
}

function reportOutcome(result: RunResult): void {
  for (const e of result.deviceErrors) process.stderr.write(`vireo: device error: ${e}\n`);
  if (result.outcome !== "guest-exit" && result.message) process.stderr.write(`vireo: ${result.message}\n`);
  else if (result.outcome === "stop-requested") process.stderr.write("vireo: stopped\n");
}

async function cmdDemo(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: { accel: { type: "string" }, help: { type: "boolean", short: "h" } },
  });
  if (values.help) {
    console.log(DEMO_HELP);
    return 0;
  }
  if (useEmulatedHost(parseAccel(values.accel)))
    return runEmulated({ argv: ["demo", "--accel", "kvm"], writes: [], console: false });
  const { kernel, cmdline } = microGuest("micro:tour");
  console.log("vireo demo: running the micro guest's tour on KVM\n");
  const result = await new Machine({ kernel, cmdline, memMiB: 64, cpus: 1, serial: { kind: "stdio" } }).run();
  reportOutcome(result);
  console.log(`\n${formatRunSummary(result)}`);
  return result.status;
}

async function cmdImage(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: { out: { type: "string" }, force: { type: "boolean" }, help: { type: "boolean", short: "h" } },
  });
  if (values.help) {
    console.log(IMAGE_HELP);
    return 0;
  }
  if (positionals[0] !== "build" || positionals.length > 1)
    throw new ConfigError("usage: vireo image build [--out DIR] [--force]");
  const tty = process.stderr.isTTY;
  let last = 0;
  const image = await buildGuestImage({
    dir: values.out,
    force: values.force === true,
    progress: (line) => {
      // On a terminal, one line rewritten in place; in logs, at most one line every 5 s per kind of step.
      if (tty) process.stderr.write(`\r\x1b[K${line}`);
      else if (!line.startsWith("downloading") || Date.now() - last > 5000) {
        last = Date.now();
        process.stderr.write(`${line}\n`);
      }
    },
  });
  if (tty) process.stderr.write("\r\x1b[K");
  console.log(
    `${image.cached ? "up to date" : "built"}: Linux ${image.kernelVersion} (${image.kernelPackage})`,
  );
  console.log(`  kernel          ${image.kernel}`);
  console.log(`  guest initrd    ${image.guestInitrd}`);
  console.log(`  harness initrd  ${image.harnessInitrd}`);
  return 0;
}

async function cmdBench(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      json: { type: "boolean" },
      rounds: { type: "string" },
      iterations: { type: "string" },
      seconds: { type: "string" },
      sizes: { type: "string" },
      pairs: { type: "string" },
      depths: { type: "string" },
      cache: { type: "string" },
      load: { type: "string" },
      "served-by": { type: "string" },
      ring: { type: "string" },
      force: { type: "boolean" },
      accel: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(BENCH_HELP);
    return 0;
  }
  const name = positionals[0];
  if (!name) throw new ConfigError(`name a benchmark: ${Object.keys(BENCHMARKS).join(", ")}`);
  if (!(name in BENCHMARKS))
    throw new ConfigError(`unknown benchmark '${name}' (known: ${Object.keys(BENCHMARKS).join(", ")})`);
  parseCount("--rounds", values.rounds, 5);
  if (values.iterations !== undefined) parseCount("--iterations", values.iterations, 0);
  if (values.seconds !== undefined) parseCount("--seconds", values.seconds, 0);
  parseServedBy(values["served-by"]);
  parseRing(values.ring);
  // A benchmark that needs no KVM (vhost-user) runs natively whatever --accel says.
  if (!BENCHMARKS[name]?.native && useEmulatedHost(parseAccel(values.accel)))
    return runEmulated({
      argv: ["bench", ...withoutAccel(argv), "--accel", "kvm"],
      writes: [],
      console: false,
    });
  await runBenchmark(name, {
    json: values.json === true,
    rounds: parseCount("--rounds", values.rounds, BENCHMARKS[name]?.defaultRounds ?? 5),
    iterations:
      values.iterations === undefined ? undefined : parseCount("--iterations", values.iterations, 0),
    seconds: values.seconds === undefined ? undefined : parseCount("--seconds", values.seconds, 0),
    sizes: parseList("--sizes", values.sizes, 60),
    pairs: parseList("--pairs", values.pairs, 1),
    depths: parseList("--depths", values.depths, 1),
    cache: parseCache(values.cache),
    load: parseLoad(values.load),
    servedBy: parseServedBy(values["served-by"]),
    ring: parseRing(values.ring),
  });
  return 0;
}

function parseRing(value: string | undefined): "split" | "packed" | undefined {
  if (value === undefined || value === "split" || value === "packed") return value;
  throw new ConfigError(`--ring must be split or packed, got '${value}'`);
}

function parseServedBy(value: string | undefined): ServedBy[] | undefined {
  if (value === undefined) return undefined;
  return value.split(",").map((v) => {
    const way = SERVED_BY.find((w) => w === v);
    if (way === undefined) throw new ConfigError(`--served-by takes ${SERVED_BY.join(", ")}; got '${v}'`);
    return way;
  });
}

function parseCache(value: string | undefined): "page" | "direct" | undefined {
  if (value === undefined || value === "page" || value === "direct") return value;
  throw new ConfigError(`--cache must be page or direct, got '${value}'`);
}

function parseLoad(value: string | undefined): "loop" | "open" | undefined {
  if (value === undefined || value === "loop" || value === "open") return value;
  throw new ConfigError(`--load must be loop or open, got '${value}'`);
}

/** A comma-separated list of whole numbers of at least `min` (--sizes 64,1518), or undefined when not given. */
function parseList(flag: string, value: string | undefined, min: number): number[] | undefined {
  if (value === undefined) return undefined;
  return value.split(",").map((v) => parseCount(flag, v, 0, min));
}

/** argv without --accel and its value (the inside of the emulated host gets --accel kvm instead). */
function withoutAccel(argv: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (a === "--accel") i++;
    else if (!a.startsWith("--accel=")) out.push(a);
  }
  return out;
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case "run":
      return cmdRun(rest);
    case "demo":
      return cmdDemo(rest);
    case "bench":
      return cmdBench(rest);
    case "image":
      return cmdImage(rest);
    case "vhost-user":
      return cmdVhostUser(rest);
    case "ctl":
      return cmdCtl(rest);
    case "switch":
      return cmdSwitch(rest);
    case undefined:
    case "help":
    case "-h":
    case "--help":
      console.log(MAIN_HELP);
      return command === undefined ? 2 : 0;
    default:
      throw new ConfigError(`unknown command '${command}' (see vireo --help)`);
  }
}

// Output piped into something that stops reading (`vireo ... | head`) is not an error worth a stack trace.
process.stdout.on("error", (e: NodeJS.ErrnoException) => {
  if (e.code === "EPIPE") process.exit(process.exitCode ?? 0);
  throw e;
});

try {
  process.exitCode = await main(process.argv.slice(2));
} catch (e) {
  if (e instanceof VireoError) {
    process.stderr.write(`vireo: ${e.message}\n`);
  } else if (e instanceof TypeError && (e as NodeJS.ErrnoException).code?.startsWith("ERR_PARSE_ARGS")) {
    process.stderr.write(`vireo: ${e.message} (see --help)\n`);
  } else {
    process.stderr.write(`vireo: internal error: ${(e as Error).message}\n`);
    if (process.env.VIREO_DEBUG) process.stderr.write(`${(e as Error).stack}\n`);
  }
  process.exitCode = 125;
}
