/** Kernel modules an image needs, with their dependencies, in load order (from modules.dep). */
import { VireoError } from "../errors.ts";

export class ModuleError extends VireoError {
  constructor(message: string) {
    super("VIREO_IMAGE_MODULES", message);
  }
}

/** modules.dep: `path.ko: dep.ko dep2.ko` per line; keys by module name (the file's basename, '-' as '_'). */
export function parseModulesDep(text: string): Map<string, { path: string; deps: string[] }> {
  const modules = new Map<string, { path: string; deps: string[] }>();
  for (const line of text.split("\n")) {
    const colon = line.indexOf(":");
    if (colon <= 0) continue;
    const path = line.slice(0, colon).trim();
    const deps = line
      .slice(colon + 1)
      .trim()
      .split(/\s+/)
      .filter(Boolean);
    modules.set(moduleName(path), { path, deps });
  }
  return modules;
}

export function moduleName(path: string): string {
  const base = path.slice(path.lastIndexOf("/") + 1).replace(/\.ko(\.[a-z]+)?$/, "");
  return base.replace(/-/g, "_");
}

/**
 * The closure of `wanted` over modules.dep, dependencies before dependents. modules.dep lists a module's full
 * dependency set in an order insmod can use when loaded last-first; a depth-first walk gives a valid order
 * regardless.
 */
export function resolveModules(
  deps: Map<string, { path: string; deps: string[] }>,
  wanted: readonly string[],
): string[] {
  const order: string[] = [];
  const visiting = new Set<string>();
  const done = new Set<string>();
  const visit = (name: string, from?: string) => {
    const key = name.replace(/-/g, "_");
    if (done.has(key)) return;
    const entry = deps.get(key);
    if (!entry) throw new ModuleError(`kernel module ${name} not found${from ? ` (needed by ${from})` : ""}`);
    if (visiting.has(key)) throw new ModuleError(`module dependency loop at ${name}`);
    visiting.add(key);
    for (const d of entry.deps) visit(moduleName(d), name);
    visiting.delete(key);
    done.add(key);
    order.push(entry.path);
  };
  for (const w of wanted) visit(w);
  return order;
}
