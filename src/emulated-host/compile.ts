/**
 * The JavaScript the emulated host runs. Under TCG every process start that transpiles TypeScript (tsx) costs
 * tens of seconds, so the tree is compiled once, on the host, into .build/ (tsconfig.build.json), and rebuilt
 * from scratch whenever a source file is newer than the last build (so a deleted test does not linger there).
 */
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, renameSync, rmSync, statSync, utimesSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { VireoError } from "../errors.ts";
import { BUILD_DIR_NAME, repoPath } from "../paths.ts";

const STAMP = repoPath(BUILD_DIR_NAME, ".stamp");
const SOURCES = ["src", "test", "bench"];

function newestSource(dir: string): number {
  let newest = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) newest = Math.max(newest, newestSource(p));
    else if (e.name.endsWith(".ts")) newest = Math.max(newest, statSync(p).mtimeMs);
  }
  return newest;
}

/** True when .build/ is missing or older than some source file. */
export function compiledIsStale(): boolean {
  if (!existsSync(STAMP)) return true;
  const built = statSync(STAMP).mtimeMs;
  const config = Math.max(
    statSync(repoPath("tsconfig.json")).mtimeMs,
    statSync(repoPath("tsconfig.build.json")).mtimeMs,
  );
  return config > built || SOURCES.some((d) => newestSource(repoPath(d)) > built);
}

/** Compiles src/, test/ and bench/ into .build/ unless it is up to date. */
export function ensureCompiled(log: (line: string) => void = (l) => process.stderr.write(`${l}\n`)): void {
  if (!compiledIsStale()) return;
  log("vireo: compiling TypeScript to .build/ for the emulated host (npm run build:js)");
  // Built beside .build and swapped in at the end, so an emulated host still running from the old tree (another
  // terminal) loses it only for that moment, not for the whole compile.
  const fresh = repoPath(`${BUILD_DIR_NAME}.new-${process.pid}`);
  rmSync(fresh, { recursive: true, force: true });
  // The stamp carries the time the compile started: a source saved while tsc runs may not be in this build, and
  // must make the next check see the build as stale.
  const startedAt = new Date();
  const tsc = repoPath("node_modules", "typescript", "bin", "tsc");
  const r = spawnSync(process.execPath, [tsc, "-p", repoPath("tsconfig.build.json"), "--outDir", fresh], {
    encoding: "utf8",
    cwd: repoPath(),
  });
  if (r.status !== 0) {
    rmSync(fresh, { recursive: true, force: true });
    throw new VireoError(
      "VIREO_COMPILE",
      `compiling to .build/ failed (npm run build:js):\n${(r.stdout + r.stderr).trim().split("\n").slice(0, 20).join("\n")}`,
    );
  }
  writeFileSync(join(fresh, ".stamp"), `${startedAt.toISOString()}\n`);
  utimesSync(join(fresh, ".stamp"), startedAt, startedAt);
  rmSync(repoPath(BUILD_DIR_NAME), { recursive: true, force: true });
  renameSync(fresh, repoPath(BUILD_DIR_NAME));
}
