/**
 * `vireo image build`: a Debian kernel and two initramfs images made from Debian packages.
 * - vmlinuz: the stock `linux-image-amd64` kernel (a bzImage), unmodified.
 * - initrd-guest.img: busybox + vireo's device modules + an init that runs vireo.run="..." and powers off.
 * - initrd-harness.img: the same kernel's KVM (SVM) and 9p modules, for the real-KVM harness in QEMU.
 * Cached by package versions; a re-run with nothing new is instant.
 */
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { repoPath } from "../paths.ts";
import { CpioWriter } from "./cpio.ts";
import {
  candidateVersion,
  downloadPackage,
  extractPackage,
  generateModulesDep,
  PackageError,
  resolveKernelPackage,
} from "./debian-packages.ts";
import { GUEST_MODULES, guestInit, HARNESS_MODULES, harnessInit } from "./init-scripts.ts";
import { parseModulesDep, resolveModules } from "./kernel-modules.ts";

/** Bump when what the builder writes changes, so caches are rebuilt. */
const BUILDER_VERSION = 8;

export const DEFAULT_IMAGE_DIR = process.env.VIREO_IMAGE_DIR ?? repoPath(".cache", "images", "debian");

export interface GuestImage {
  dir: string;
  kernel: string;
  guestInitrd: string;
  harnessInitrd: string;
  kernelVersion: string;
  kernelPackage: string;
  packageVersions: Record<string, string>;
}

interface Manifest extends Omit<GuestImage, "dir" | "kernel" | "guestInitrd" | "harnessInitrd"> {
  builderVersion: number;
}

function paths(dir: string) {
  return {
    manifest: join(dir, "image.json"),
    kernel: join(dir, "vmlinuz"),
    guestInitrd: join(dir, "initrd-guest.img"),
    harnessInitrd: join(dir, "initrd-harness.img"),
  };
}

/** The image already built in dir, if complete (no apt access). */
export function findGuestImage(dir = DEFAULT_IMAGE_DIR): GuestImage | undefined {
  const p = paths(dir);
  if (![p.manifest, p.kernel, p.guestInitrd, p.harnessInitrd].every((f) => existsSync(f))) return undefined;
  const m = JSON.parse(readFileSync(p.manifest, "utf8")) as Manifest;
  if (m.builderVersion !== BUILDER_VERSION) return undefined;
  return { dir, kernel: p.kernel, guestInitrd: p.guestInitrd, harnessInitrd: p.harnessInitrd, ...m };
}

export async function buildGuestImage(
  opts: { dir?: string; progress?: (line: string) => void; force?: boolean } = {},
): Promise<GuestImage & { cached: boolean }> {
  const dir = opts.dir ?? DEFAULT_IMAGE_DIR;
  const progress = opts.progress ?? (() => {});
  const kernelPackage = resolveKernelPackage();
  const versions = {
    [kernelPackage]: candidateVersion(kernelPackage),
    "busybox-static": candidateVersion("busybox-static"),
  };
  const existing = findGuestImage(dir);
  if (!opts.force && existing && JSON.stringify(existing.packageVersions) === JSON.stringify(versions)) {
    return { ...existing, cached: true };
  }

  mkdirSync(dir, { recursive: true });
  const work = join(dir, "work");
  rmSync(work, { recursive: true, force: true });
  const debs = join(work, "debs");
  const root = join(work, "root");
  mkdirSync(debs, { recursive: true });
  mkdirSync(root, { recursive: true });
  try {
    for (const pkg of [kernelPackage, "busybox-static"]) {
      const deb = await downloadPackage(pkg, debs, progress);
      progress(`unpacking ${pkg}`);
      extractPackage(deb, root);
    }
    const kernelVersion = readdirSync(join(root, "lib/modules"))[0];
    if (!kernelVersion) throw new PackageError(`${kernelPackage} contains no lib/modules/VERSION`);
    progress(`resolving modules of ${kernelVersion}`);
    generateModulesDep(root, kernelVersion);
    const moduleDir = join(root, "lib/modules", kernelVersion);
    const deps = parseModulesDep(readFileSync(join(moduleDir, "modules.dep"), "utf8"));
    const busybox = readFileSync(join(root, "bin/busybox"));

    const makeInitrd = (modules: readonly string[], init: (files: readonly string[]) => string) => {
      const ordered = resolveModules(deps, modules);
      const cpio = new CpioWriter({ mtime: 0 });
      for (const d of ["/bin", "/dev", "/proc", "/sys", "/tmp", "/lib/modules", "/host"])
        cpio.dir(d, { mode: 0o755 });
      // /dev/console must exist before devtmpfs is mounted, or init's output is lost.
      cpio.charDevice("/dev/console", 5, 1, { mode: 0o600 });
      cpio.charDevice("/dev/null", 1, 3, { mode: 0o666 });
      cpio.file("/bin/busybox", busybox, { mode: 0o755 });
      cpio.symlink("/bin/sh", "busybox");
      for (const m of ordered)
        cpio.file(`/lib/modules/${m.slice(m.lastIndexOf("/") + 1)}`, readFileSync(join(moduleDir, m)), {
          mode: 0o644,
        });
      cpio.file("/init", init(ordered), { mode: 0o755 });
      return cpio.toInitramfs();
    };
    const p = paths(dir);
    progress("writing initramfs images");
    writeFileSync(p.guestInitrd, makeInitrd(GUEST_MODULES, guestInit));
    writeFileSync(p.harnessInitrd, makeInitrd(HARNESS_MODULES, harnessInit));
    copyFileSync(join(root, "boot", `vmlinuz-${kernelVersion}`), p.kernel);
    const manifest: Manifest = {
      builderVersion: BUILDER_VERSION,
      kernelVersion,
      kernelPackage,
      packageVersions: versions,
    };
    writeFileSync(p.manifest, `${JSON.stringify(manifest, null, 2)}\n`);
    return {
      dir,
      kernel: p.kernel,
      guestInitrd: p.guestInitrd,
      harnessInitrd: p.harnessInitrd,
      ...manifest,
      cached: false,
    };
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
