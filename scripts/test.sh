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
# The unit tier runs one file at a time and leaves the second CPU mostly idle; the emulated tier is one QEMU with
# one vCPU. When both are asked for, the emulated tier runs beside the unit tier (its output is held and printed
# after the unit tier's, so the two do not interleave) and its status joins the others.
emulated_beside=0
if [[ " ${tiers[*]} " == *" unit "* && " ${tiers[*]} " == *" emulated "* ]]; then
  emulated_beside=1
  emulated_log=$(mktemp)
  node --import tsx test/realkvm/tier.ts emulated >"$emulated_log" 2>&1 &
  emulated_pid=$!
fi
for t in "${tiers[@]}"; do
  if [ "$t" = emulated ] && [ "$emulated_beside" = 1 ]; then
    wait "$emulated_pid" || status=1
    cat "$emulated_log"
    rm -f "$emulated_log"
    continue
  fi
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
