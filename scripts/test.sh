#!/usr/bin/env bash
# Runs vireo's test suite with node:test. Tiers: test/unit (always), test/kvm (needs /dev/kvm; skips with a
# message where it is absent), test/slow (only with VIREO_SLOW=1: QEMU/real-KVM harness, minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
dirs=(test/unit test/kvm)
[ "${VIREO_SLOW:-0}" = "1" ] && dirs+=(test/slow)
files=$(find "${dirs[@]}" -name '*.test.ts' 2>/dev/null | sort)
# One file at a time keeps KVM tests from competing for the 2 CPUs and skewing each other.
exec node --import tsx --test --test-concurrency=1 --test-reporter=spec $files "$@"
