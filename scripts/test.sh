#!/usr/bin/env bash
# Runs vireo's tests with node:test. Tiers:
#   unit  device models, loaders, CLI errors: on this host, always.
#   emulated  the emulated KVM host itself and vireo --accel emulated (boots QEMU; no KVM needed here).
#   kvm   the micro guest on KVM: directly where this host has a usable /dev/kvm, otherwise inside one emulated
#         KVM host (QEMU TCG with kvm_amd) for the whole tier (test/realkvm/tier.ts).
#   slow  stock Linux guests with their own drivers: directly on real (non-PVM) KVM, otherwise emulated.
# An emulated, kvm or slow tier that ran no test, or skipped any, fails (VIREO_ALLOW_SKIPS=1 lets skips pass).
# With no arguments: unit, emulated and kvm, plus slow when VIREO_SLOW=1. With arguments: just those tiers.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ $# -gt 0 ]; then
  tiers=("$@")
else
  tiers=(unit emulated kvm)
  [ "${VIREO_SLOW:-0}" = "1" ] && tiers+=(slow)
fi
status=0
for t in "${tiers[@]}"; do
  case "$t" in
    unit)
      # One file at a time keeps tests that start threads (or QEMU) from competing for the 2 CPUs.
      node --import tsx --test --test-concurrency=1 --test-reporter=spec $(find "test/$t" -name '*.test.ts' | sort) \
        || status=1 ;;
    emulated|kvm|slow)
      node --import tsx test/realkvm/tier.ts "$t" || status=1 ;;
    *)
      echo "test.sh: no tier '$t' (unit, emulated, kvm, slow)" >&2
      exit 2 ;;
  esac
done
exit $status
