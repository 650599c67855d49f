/**
 * Where vireo's own files are. The repository root is found from this module's location, so it is the same
 * whether vireo runs as TypeScript from src/ (through tsx) or as the JavaScript that `npm run build:js`
 * compiles into .build/src/ (what the emulated KVM host runs, because transpiling under TCG is slow).
 */
import { join } from "node:path";
import { fileURLToPath } from "node:url";

/** The folder compiled JavaScript goes to, below the repository root. */
export const BUILD_DIR_NAME = ".build";

const parent = new URL("../", import.meta.url);
const root = parent.pathname.endsWith(`/${BUILD_DIR_NAME}/`) ? new URL("../", parent) : parent;

export const REPO_ROOT = fileURLToPath(root).replace(/\/$/, "");

/** True when this code is the compiled JavaScript in .build, not TypeScript run through tsx. */
export const RUNNING_COMPILED = import.meta.url.endsWith(".js");

/** A path below the repository root. */
export function repoPath(...parts: string[]): string {
  return join(REPO_ROOT, ...parts);
}
