/**
 * Runs a shell command inside the real-KVM harness and exits with its status:
 *   npm run realkvm -- './bin/vireo bench boot'
 * The command runs from the repository root, chrooted into the host's filesystem, on a QEMU TCG VM with SVM KVM.
 */
import { harnessUnavailable, runInRealKvm } from "./harness.ts";

const command = process.argv.slice(2).join(" ");
if (!command) {
  process.stderr.write("usage: npm run realkvm -- 'COMMAND'\n");
  process.exit(2);
}
const why = harnessUnavailable();
if (why) {
  process.stderr.write(`realkvm: ${why}\n`);
  process.exit(125);
}
process.stderr.write("realkvm: booting the harness VM (QEMU TCG, -cpu max, kvm_amd); this takes a while\n");
const r = await runInRealKvm(command, { timeoutMs: 3_600_000 });
process.stdout.write(r.output);
if (r.status === null) {
  process.stderr.write(
    `realkvm: the harness VM ended without reporting a status; its console ended with:\n${r.console.slice(-2000)}\n`,
  );
  process.exit(125);
}
process.stderr.write(`realkvm: status ${r.status} after ${(r.wallMs / 1000).toFixed(0)} s\n`);
process.exit(r.status);
