#!/usr/bin/env bash
# Runs vireo's tests with node:test. Tiers: unit (always), kvm (needs /dev/kvm; skips with a message where it
# is absent), slow (the real-KVM harness in QEMU, minutes). With no arguments: unit and kvm, plus slow when
# VIREO_SLOW=1. With arguments: just those tiers, e.g. `scripts/test.sh slow`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -gt 0 ]; then
  tiers=("$@")
else
  tiers=(unit kvm)
  [ "${VIREO_SLOW:-0}" = "1" ] && tiers+=(slow)
fi
dirs=()
for t in "${tiers[@]}"; do
  [ -d "test/$t" ] || { echo "test.sh: no tier '$t' (unit, kvm, slow)" >&2; exit 2; }
  dirs+=("test/$t")
done
files=$(find "${dirs[@]}" -name '*.test.ts' | sort)
# One file at a time keeps KVM tests from competing for the 2 CPUs and skewing each other.
exec node --import tsx --test --test-concurrency=1 --test-reporter=spec $files
