/**
 * A stop that ends. Every vCPU and data-plane thread is asked to stop by the machine (a flag, a kick, an eventfd)
 * and their device work is bounded per slice, so they normally leave within milliseconds. If one does not (a bug:
 * a loop without a budget, a wait nobody wakes), waiting for it forever would leave `vireo run` hanging after
 * its --timeout, Ctrl-A x or SIGTERM with nothing said. Instead, once a grace period from the stop request has
 * passed, the threads still running are ended (Worker.terminate) and named, so the run ends with an error that
 * says which thread did not stop.
 */

/** One thread a stop waits for. */
export interface StoppingThread {
  /** Says what it is in the error, e.g. "vCPU 1" or "the data-plane thread of net0". */
  readonly name: string;
  /** Settles when the thread has ended. */
  readonly ended: Promise<unknown>;
  /** Ends it now (Worker.terminate). */
  terminate(): Promise<unknown>;
}

export interface BoundedStopOptions {
  /** How long after the stop request a thread may take to end. */
  graceMs: number;
  /** performance.now() of the stop request, or undefined while none was made (the wait then has no bound). */
  requestedAt(): number | undefined;
  /** How long a terminated thread may take to end (one blocked in a system call cannot be ended at once). */
  terminateMs?: number;
  /** How often the deadline is looked at. */
  pollMs?: number;
}

/** What a stop that had to end threads reports; empty when every thread ended by itself. */
export interface BoundedStopResult {
  /** Threads that had not ended `graceMs` after the stop request and were terminated. */
  terminated: string[];
  /** Of those, the ones that had still not ended `terminateMs` after it (the wait gave up on them). */
  unresponsive: string[];
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * Waits until every thread has ended: without a bound before the stop request, and at most `graceMs` after it,
 * when the rest are terminated.
 */
export async function awaitThreadsStopped(
  threads: readonly StoppingThread[],
  o: BoundedStopOptions,
): Promise<BoundedStopResult> {
  const ended = new Set<StoppingThread>();
  for (const t of threads)
    void t.ended.then(
      () => ended.add(t),
      () => ended.add(t),
    );
  const all = Promise.allSettled(threads.map((t) => t.ended));
  const poll = o.pollMs ?? 100;
  for (;;) {
    const done = await Promise.race([all.then(() => true), sleep(poll).then(() => false)]);
    if (done) return { terminated: [], unresponsive: [] };
    const at = o.requestedAt();
    if (at !== undefined && performance.now() - at > o.graceMs) break;
  }
  const late = threads.filter((t) => !ended.has(t));
  const terminateMs = o.terminateMs ?? 5000;
  const gone = await Promise.all(
    late.map((t) =>
      Promise.race([
        t.terminate().then(
          () => true,
          () => true,
        ),
        sleep(terminateMs).then(() => false),
      ]),
    ),
  );
  return {
    terminated: late.map((t) => t.name),
    unresponsive: late.filter((_, i) => !gone[i]).map((t) => t.name),
  };
}

/** One line for a run's error: which threads did not stop, and what became of them. */
export function describeLateStop(r: BoundedStopResult, graceMs: number): string {
  const stuck = r.unresponsive.length ? `; still running after that: ${r.unresponsive.join(", ")}` : "";
  return `${r.terminated.join(", ")} did not stop within ${graceMs / 1000} s of the stop request and ${r.terminated.length === 1 ? "was" : "were"} ended (a vireo bug: please report it with this log)${stuck}`;
}
