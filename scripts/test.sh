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
# Each tier's verdict, printed again at the very end: the kvm and slow tiers run after the unit tier and their
# output pushes its failures out of a log's tail (what CI shows), so the end names every failed test.
summary=()
unit_log=$(mktemp)
trap 'rm -f "$unit_log"' EXIT
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
    if wait "$emulated_pid"; then summary+=("emulated: passed"); else status=1; summary+=("emulated: FAILED"); fi
    cat "$emulated_log"
    rm -f "$emulated_log"
    continue
  fi
  case "$t" in
    unit)
      # One file at a time keeps tests that start threads (or QEMU) from competing for the 2 CPUs.
      if node --import tsx --test --test-concurrency=1 --test-reporter=spec $(find "test/$t" -name '*.test.ts' | sort) \
        | tee "$unit_log"; then
        summary+=("unit: passed")
      else
        status=1
        summary+=("unit: FAILED; its failed tests (✖):")
        while IFS= read -r line; do summary+=("  $line"); done < <(grep -E '^ *✖ ' "$unit_log" | grep -v 'failing tests:' | sort -u | head -40)
      fi ;;
    emulated|kvm|slow)
      if node --import tsx test/realkvm/tier.ts "$t"; then summary+=("$t: passed"); else status=1; summary+=("$t: FAILED"); fi ;;
    *)
      echo "test.sh: no tier '$t' (unit, emulated, kvm, slow)" >&2
      exit 2 ;;
  esac
done
echo "test.sh: tiers run:"
printf '  %s\n' "${summary[@]}"
exit $status
