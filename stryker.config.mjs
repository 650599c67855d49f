// StrykerJS configuration for vireo's mutation testing (docs/mutation-testing.md). Not part of `npm test`:
// run it through scripts/mutation.sh (`npm run mutation -- FAMILY...`), which sets VIREO_MUTATION_FAMILY.
//
// Each family mutates one group of device files and runs only the unit test files that exercise them. The tap
// runner (@stryker-mutator/tap-runner) runs each test file in its own node process (node:test prints TAP with
// --test-reporter=tap); with coverageAnalysis "perTest" a test file counts as one test, so a mutant runs only the
// files whose run reached it, and a mutant no file reached is "no coverage" without a run.
//
// The test files run compiled, not through tsx: the build command compiles the family's test files and what they
// import (the instrumented sources included) once into the sandbox's .build/, as `npm run build:js` does for the
// emulated host (src/paths.ts knows that layout), without type checking. A process start then costs a third of
// the CPU time it takes with tsx transpiling every module, and there is one per test file per mutant.

/**
 * Families: files to mutate, and the test files for them (a mutant runs the files that reach it in this order and
 * stops at the first that fails, so the most direct come first). Left out on purpose: virtio-budget.test.ts, whose
 * assertions are CPU-time limits (they fail on a loaded machine, and instrumented code is slower) and which takes
 * 25 s.
 */
export const families = {
  queue: {
    what: "virtqueue layer (split and packed rings, chains)",
    mutate: ["src/devices/virtio/queue/**/*.ts"],
    tests: [
      "test/unit/virtqueue-roundtrip.test.ts",
      "test/unit/virtqueue-malformed.test.ts",
      "test/unit/virtqueue-notify.test.ts",
      "test/unit/virtio-queue-state.test.ts",
      "test/unit/virtqueue-accounting.test.ts",
      "test/unit/virtqueue-chain-io.test.ts",
      "test/unit/virtqueue-page-log.test.ts",
      "test/unit/virtqueue-resume.test.ts",
      "test/unit/virtqueue-fuzz.test.ts",
    ],
  },
  blk: {
    what: "virtio-blk",
    mutate: ["src/devices/virtio/blk.ts"],
    tests: [
      "test/unit/virtio-blk.test.ts",
      "test/unit/virtio-blk-outcomes.test.ts",
      "test/unit/virtio-hostile.test.ts",
      "test/unit/virtio-threads.test.ts",
    ],
  },
  net: {
    what: "virtio-net",
    mutate: ["src/devices/virtio/net.ts"],
    tests: [
      "test/unit/virtio-net.test.ts",
      "test/unit/virtio-net-outcomes.test.ts",
      "test/unit/virtio-hostile.test.ts",
    ],
  },
  e1000: {
    what: "e1000 TX and RX (e1000.ts, rx.ts, offload.ts)",
    mutate: ["src/devices/e1000/e1000.ts", "src/devices/e1000/rx.ts", "src/devices/e1000/offload.ts"],
    tests: [
      "test/unit/e1000-tx.test.ts",
      "test/unit/e1000-rx.test.ts",
      "test/unit/e1000-regs.test.ts",
      "test/unit/e1000-hostile.test.ts",
      "test/unit/e1000-shared.test.ts",
      "test/unit/e1000-pci.test.ts",
      "test/unit/e1000-threads.test.ts",
    ],
  },
  msix: {
    what: "MSI-X capability and table",
    mutate: ["src/devices/pci/msix.ts"],
    tests: ["test/unit/pci-msix.test.ts", "test/unit/pci-shared.test.ts"],
  },
  uart: {
    what: "16550A UART",
    mutate: ["src/devices/legacy/uart16550.ts"],
    tests: ["test/unit/uart16550.test.ts"],
  },
};

const name = process.env.VIREO_MUTATION_FAMILY ?? "";
const family = families[name];
if (!family) {
  throw new Error(
    `stryker.config.mjs: set VIREO_MUTATION_FAMILY to one of ${Object.keys(families).join(", ")} ` +
      "(scripts/mutation.sh does)",
  );
}
// VIREO_MUTATION_MUTATE narrows a family's run to some lines, as Stryker's mutate patterns with ranges, e.g.
// "src/devices/virtio/blk.ts:420-436" (comma-separated): to look again at a few mutants, say ones that timed out
// on a busy machine. Its report goes to reports/mutation/FAMILY-lines/.
const lines = process.env.VIREO_MUTATION_MUTATE?.split(",").filter((p) => p !== "");
const out = `reports/mutation/${name}${lines ? "-lines" : ""}`;
/** The family's test files as the build command compiles them (tsconfig.build.json's layout). */
const compiled = family.tests.map((t) => `.build/${t.replace(/\.ts$/, ".js")}`);
// tsc with the options of tsconfig.build.json, given the files (a project would compile every file). No type
// check: instrumented files are not type-correct, and node_modules is linked into the sandbox only after this.
const tscOptions =
  "--noCheck --outDir .build --rootDir . --module nodenext --moduleResolution nodenext --target es2022 " +
  "--rewriteRelativeImportExtensions --skipLibCheck";

/** @type {import('@stryker-mutator/api/core').PartialStrykerOptions} */
export default {
  plugins: ["@stryker-mutator/tap-runner"],
  testRunner: "tap",
  coverageAnalysis: "perTest",
  buildCommand: `tsc ${tscOptions} ${family.tests.join(" ")}`,
  tap: {
    testFiles: compiled,
    nodeArgs: ["--test-reporter=tap", "-r", "{{hookFile}}", "{{testFile}}"],
  },
  mutate: lines ?? family.mutate,
  // Two cores: one test process per core.
  concurrency: 2,
  // A mutant's time limit is 2 x the covering files' dry-run time + 30 s. Generous because a timeout counts as
  // detected: with 10 s, on a machine loaded by other work, mutants that end normally were cut off as timeouts.
  // A mutant that loops is mostly stopped sooner by Stryker's hit limit.
  timeoutFactor: 2,
  timeoutMS: 30000,
  reporters: ["clear-text", "progress", "html", "json"],
  htmlReporter: { fileName: `${out}/index.html` },
  jsonReporter: { fileName: `${out}/mutation.json` },
  clearTextReporter: { allowColor: false, logTests: false, reportScoreTable: true, reportMutants: true },
  // The sandbox needs only the sources, the tests and the package's manifests (node_modules is linked in).
  ignorePatterns: ["/*", "!/src", "!/test", "!/package.json", "!/tsconfig.json"],
  tempDirName: ".cache/stryker-tmp",
  cleanTempDir: "always",
  // Stryker's own log stays in the report folder, not at the repository root.
  fileLogLevel: "off",
};
