/** A real Debian kernel for tests: VIREO_TEST_KERNEL, else the one `vireo image build` fetched, else /boot. */
import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { findGuestImage } from "../../src/image/guest-image.ts";

export const NO_REAL_KERNEL =
  "no real kernel: run ./bin/vireo image build (scripts/setup.sh does), or set VIREO_TEST_KERNEL";

export function findRealKernel(): string | undefined {
  const env = process.env.VIREO_TEST_KERNEL;
  if (env) return existsSync(env) ? env : undefined;
  const image = findGuestImage();
  if (image) return image.kernel;
  if (!existsSync("/boot")) return undefined;
  const k = readdirSync("/boot")
    .filter((f) => f.startsWith("vmlinuz-"))
    .sort()
    .pop();
  return k ? join("/boot", k) : undefined;
}
