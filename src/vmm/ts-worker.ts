/**
 * Starting a worker thread on one of vireo's modules. Run as TypeScript, Node 20 does not carry the tsx loader
 * that the main thread was started with (`--import`) into worker threads, so the worker first registers tsx's
 * ESM hooks itself, then imports the module. Run compiled (.build), the worker loads the .js twin directly.
 */
import { Worker, type WorkerOptions } from "node:worker_threads";
import { RUNNING_COMPILED } from "../paths.ts";

export function startTsWorker(module: URL, options: Omit<WorkerOptions, "eval"> = {}): Worker {
  if (RUNNING_COMPILED) return new Worker(new URL(module.href.replace(/\.ts$/, ".js")), options);
  const tsxApi = import.meta.resolve("tsx/esm/api");
  const bootstrap = `import(${JSON.stringify(tsxApi)}).then((tsx) => { tsx.register(); return import(${JSON.stringify(module.href)}); });`;
  return new Worker(bootstrap, { ...options, eval: true });
}
