#!/usr/bin/env bash
# Installs everything vireo needs on a fresh Debian 12 machine (as root), then builds the native addon, the
# micro guest and the C reference VMM. Safe to re-run: steps that are already done are quick.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'setup: %s\n' "$*" >&2; }

# Debian packages: compilers for the addon, the micro guest and the reference VMM; Linux headers for <linux/kvm.h>;
# kmod (depmod) and dpkg-deb for guest images; cpio and acpica-tools (iasl) as independent checkers in tests;
# QEMU for the real-KVM harness (test/slow); DPDK's testpmd as a vhost-user front-end vireo did not write
# (test/unit/vhost-user-dpdk.test.ts); tcpdump to read back the switch's pcap captures (test/unit/switch-pcap.test.ts);
# netsniff-ng's trafgen to load a Linux bridge in `vireo bench switch` (bench/switch.ts); qemu-storage-daemon
# (qemu-system-common) as the reference back-end of `vireo bench vhost-user-blk` (bench/vhost-user-blk.ts).
need=()
command -v gcc >/dev/null || need+=(gcc)
command -v g++ >/dev/null || need+=(g++)
command -v make >/dev/null || need+=(make)
command -v python3 >/dev/null || need+=(python3)
[ -f /usr/include/linux/kvm.h ] || need+=(linux-libc-dev)
command -v depmod >/dev/null || need+=(kmod)
command -v cpio >/dev/null || need+=(cpio)
command -v iasl >/dev/null || need+=(acpica-tools)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v qemu-storage-daemon >/dev/null || need+=(qemu-system-common)
command -v dpdk-testpmd >/dev/null || need+=(dpdk-dev)
command -v tcpdump >/dev/null || need+=(tcpdump)
command -v trafgen >/dev/null || need+=(netsniff-ng)
apt_updated=0
if [ ${#need[@]} -gt 0 ]; then
  say "installing Debian packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt_updated=1
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
command -v node >/dev/null || { say "Node.js 20 or newer is required (apt-get install nodejs npm)"; exit 1; }

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "installing npm packages (npm ci: exactly what package-lock.json says)"
  npm ci --no-audit --no-fund --loglevel=error
fi

say "building the native addon"
# Build against the headers of the Node that runs vireo; node-gyp would otherwise try to download them.
nodedir=$(node -p 'require("path").resolve(process.execPath, "../..")')
gyp_args=(rebuild --directory native --loglevel=error)
[ -f "$nodedir/include/node/node_api.h" ] && gyp_args+=(--nodedir "$nodedir")
npx --no-install node-gyp "${gyp_args[@]}" >/dev/null
say "building the micro guest"
make -s -C guest/micro
say "building the C reference VMM"
make -s -C bench/ref
# The guest image (Debian kernel + busybox initramfs) needs apt's package lists.
if ! ./bin/vireo image build >/dev/null 2>&1; then
  [ "$apt_updated" = 1 ] || apt-get update -qq
  say "building the guest image (Debian kernel and busybox via apt-get download)"
  ./bin/vireo image build >/dev/null
fi
# The JavaScript the emulated KVM host runs (tsc; rebuilt later whenever a source is newer).
say "compiling TypeScript for the emulated KVM host"
node --import tsx -e 'import("./src/emulated-host/compile.ts").then((m) => m.ensureCompiled(() => {}))'
say "ready"
