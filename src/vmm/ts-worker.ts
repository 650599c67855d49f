/**
 * Starting a worker thread on a TypeScript module. Node 20 does not carry the tsx loader that the main
 * thread was started with (`--import`) into worker threads, so the worker first registers tsx's ESM hooks
 * itself, then imports the module.
 */
import { Worker, type WorkerOptions } from "node:worker_threads";

const TSX_ESM_API = import.meta.resolve("tsx/esm/api");

export function startTsWorker(module: URL, options: Omit<WorkerOptions, "eval"> = {}): Worker {
  const bootstrap = `import(${JSON.stringify(TSX_ESM_API)}).then((tsx) => { tsx.register(); return import(${JSON.stringify(module.href)}); });`;
  return new Worker(bootstrap, { ...options, eval: true });
}
