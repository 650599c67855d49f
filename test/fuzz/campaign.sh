#!/usr/bin/env bash
# The long fuzz campaign (docs/fuzzing.md), in parts taken round robin over the families so that all of them advance
# together; a part is `npm run fuzz -- --family F --cases CHUNK --start I --seed SEED`, written to OUT/F-I.json.
# After every part, OUT/summary.json and OUT/summary.md merge all the parts done so far.
#
#   nohup test/fuzz/campaign.sh [CASES_PER_FAMILY=1000000] [CHUNK=50000] [SEED=1] [OUT=.cache/fuzz] &
#   FAMILIES="blk net" test/fuzz/campaign.sh 100000
set -uo pipefail
cd "$(dirname "$0")/../.."
total=${1:-1000000}
chunk=${2:-50000}
seed=${3:-1}
out=${4:-.cache/fuzz}
families=${FAMILIES:-blk net console rng pci e1000}
mkdir -p "$out"
echo "campaign: $total cases per family in parts of $chunk, seed $seed, families $families, $(date -u +%FT%TZ)," \
  "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src test/fuzz || echo '+dirty')" >> "$out/campaign.log"
for ((start = 0; start < total; start += chunk)); do
  n=$((total - start < chunk ? total - start : chunk))
  for f in $families; do
    part="$out/$f-$start.json"
    if [ -s "$part" ] && ! grep -q '"partial": true' "$part"; then continue; fi
    node --import tsx test/fuzz/run.ts --family "$f" --cases "$n" --start "$start" --seed "$seed" --json "$part" \
      > "$out/$f-$start.txt" 2>&1
    echo "$(date -u +%FT%TZ) $f cases $start..$((start + n)) status $?" >> "$out/campaign.log"
    parts=$(ls "$out"/*-[0-9]*.json 2>/dev/null | grep -v summary)
    # shellcheck disable=SC2086
    node --import tsx test/fuzz/run.ts --merge $parts --json "$out/summary.json" > "$out/summary.txt" 2>&1
    sed -n '/^| family/,/^$/p' "$out/summary.txt" | sed '/^{/,$d' > "$out/summary.md"
  done
done
echo "campaign: done $(date -u +%FT%TZ)" >> "$out/campaign.log"
