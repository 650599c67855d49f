/**
 * Runs a shell command inside the emulated KVM host and exits with its status:
 *   npm run realkvm -- './bin/vireo bench boot'
 * The command runs from the repository root, chrooted into the host's filesystem, on a QEMU TCG VM with SVM KVM,
 * with VIREO_JS=1 (bin/vireo runs the compiled .build/). Its output comes back as it is printed.
 */
import { emulatedHostUnavailable, runInEmulatedHost } from "../../src/emulated-host/host.ts";
import { repoPath } from "../../src/paths.ts";

const command = process.argv.slice(2).join(" ");
if (!command) {
  process.stderr.write("usage: npm run realkvm -- 'COMMAND'\n");
  process.exit(2);
}
const why = emulatedHostUnavailable();
if (why) {
  process.stderr.write(`realkvm: ${why}\n`);
  process.exit(125);
}
process.stderr.write("realkvm: booting the emulated KVM host (QEMU TCG, -cpu max, kvm_amd)\n");
const r = await runInEmulatedHost({
  script: command,
  cwd: repoPath(),
  onStdout: (d) => process.stdout.write(d),
  onStderr: (d) => process.stderr.write(d),
});
r.cleanup();
if (r.status === null) {
  process.stderr.write(`realkvm: ${r.failure}; the console ended with:\n${r.console.slice(-3000)}\n`);
  process.exit(125);
}
process.stderr.write(
  `realkvm: status ${r.status} after ${(r.wallMs / 1000).toFixed(0)} s (boot ${((r.bootMs ?? 0) / 1000).toFixed(1)} s)\n`,
);
process.exit(r.status);
