#!/usr/bin/env bash
# Mutation testing of the device models with StrykerJS (stryker.config.mjs; docs/mutation-testing.md).
# Not part of `npm test` or .ci/run: run it by hand, e.g. after changing a device or its tests.
#
#   scripts/mutation.sh [FAMILY...]      (npm run mutation -- [FAMILY...])
#
# FAMILY: queue blk net e1000 msix uart (default: all of them, one after the other). Each family mutates its
# device files and runs only its own unit test files. Reports go to reports/mutation/FAMILY/ (index.html,
# mutation.json); the last lines printed are the score table of the families run.
set -uo pipefail
cd "$(dirname "$0")/.."

all=(queue blk net e1000 msix uart)
families=()
for a in "$@"; do
  case "$a" in
    -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "mutation.sh: unknown option $a" >&2; exit 2 ;;
    *)
      if [[ " ${all[*]} " != *" $a "* ]]; then
        echo "mutation.sh: no family '$a' (${all[*]})" >&2
        exit 2
      fi
      families+=("$a") ;;
  esac
done
[ ${#families[@]} -gt 0 ] || families=("${all[@]}")

[ -x node_modules/.bin/stryker ] || { echo "mutation.sh: StrykerJS is not installed (run npm ci)" >&2; exit 1; }

status=0
summary=()
for f in "${families[@]}"; do
  echo "== mutation: $f" >&2
  start=$(date +%s)
  # A run narrowed by VIREO_MUTATION_MUTATE (stryker.config.mjs) reports to reports/mutation/FAMILY-lines/.
  report=$f
  [ -n "${VIREO_MUTATION_MUTATE:-}" ] && report="$f-lines"
  if VIREO_MUTATION_FAMILY="$f" node_modules/.bin/stryker run stryker.config.mjs; then
    summary+=("$report:$(( $(date +%s) - start ))")
  else
    echo "mutation.sh: stryker failed for $f" >&2
    summary+=("$report:$(( $(date +%s) - start )):failed")
    status=1
  fi
done
node scripts/mutation-summary.mjs "${summary[@]}" || status=1
exit $status
