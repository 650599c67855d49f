/**
 * Debian packages for guest images, fetched with apt (`apt-get download`: no root install, nothing on the host
 * changes) and unpacked with dpkg-deb. Long downloads report progress.
 */
import { spawn, spawnSync } from "node:child_process";
import { readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { VireoError } from "../errors.ts";

export class PackageError extends VireoError {
  constructor(message: string) {
    super("VIREO_IMAGE_PACKAGES", message);
  }
}

function run(cmd: string, args: string[], what: string): string {
  const r = spawnSync(cmd, args, { encoding: "utf8" });
  if (r.error) throw new PackageError(`${what}: cannot run ${cmd}: ${r.error.message}`);
  if (r.status !== 0)
    throw new PackageError(`${what}: ${cmd} ${args.join(" ")} failed: ${r.stderr.trim().split("\n").pop()}`);
  return r.stdout;
}

/** The versioned kernel package behind Debian's `linux-image-amd64` metapackage. */
export function resolveKernelPackage(meta = "linux-image-amd64"): string {
  const out = run("apt-cache", ["depends", meta], `resolving ${meta}`);
  const dep = /Depends: (linux-image-[^\s]+)/.exec(out)?.[1];
  if (!dep) throw new PackageError(`apt-cache knows no kernel behind ${meta} (run apt-get update first)`);
  return dep;
}

/** Candidate version apt would download, for cache keys. */
export function candidateVersion(pkg: string): string {
  const out = run("apt-cache", ["policy", pkg], `looking up ${pkg}`);
  const v = /Candidate: (\S+)/.exec(out)?.[1];
  if (!v || v === "(none)")
    throw new PackageError(`no installable version of ${pkg} (run apt-get update first)`);
  return v;
}

/**
 * `apt-get download` into dir; returns the .deb path. Progress goes to `progress` every second (the size the
 * file has reached), since apt prints nothing useful when not on a terminal.
 */
export async function downloadPackage(
  pkg: string,
  dir: string,
  progress: (line: string) => void,
): Promise<string> {
  const before = new Set(readdirSync(dir));
  const child = spawn("apt-get", ["download", "-q", pkg], { cwd: dir, stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (d: Buffer) => {
    stderr += d.toString();
  });
  const started = Date.now();
  const timer = setInterval(() => {
    const partial = readdirSync(dir).filter((f) => !before.has(f));
    const bytes = partial.reduce((n, f) => n + statSync(join(dir, f)).size, 0);
    progress(
      `downloading ${pkg}: ${(bytes / 1e6).toFixed(1)} MB, ${((Date.now() - started) / 1000).toFixed(0)} s`,
    );
  }, 1000);
  const status = await new Promise<number | null>((resolve) => child.on("close", resolve));
  clearInterval(timer);
  if (status !== 0) {
    const why =
      stderr
        .split("\n")
        .filter((l) => l.startsWith("E:"))
        .join(" ") || stderr.trim();
    throw new PackageError(`apt-get download ${pkg} failed: ${why}`);
  }
  const deb = readdirSync(dir).find((f) => !before.has(f) && f.endsWith(".deb"));
  if (!deb) throw new PackageError(`apt-get download ${pkg} produced no .deb`);
  return join(dir, deb);
}

export function extractPackage(deb: string, dir: string): void {
  run("dpkg-deb", ["-x", deb, dir], `unpacking ${deb}`);
}

/** depmod -b: Debian's kernel package ships no modules.dep. */
export function generateModulesDep(root: string, kernelVersion: string): void {
  run("depmod", ["-b", root, kernelVersion], "generating modules.dep");
}
