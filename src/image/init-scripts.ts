/**
 * /init for vireo's initramfs images (busybox sh). Two flavours:
 * - guest: booted by vireo; loads the device modules and runs the command given on the kernel command line as
 *   vireo.run="...", then powers off. Writes boot marker 1 to the debug console port 0xE9 once init starts, for
 *   `vireo bench boot` (the same port under vireo and QEMU's isa-debugcon).
 * - harness: booted by QEMU (TCG, -cpu max) as the emulated KVM host; loads kvm_amd and 9p, mounts the host root
 *   read-only, and sources stage 2 from there (vireo.stage2=PATH), which runs the work chrooted into it.
 */
const common = (modules: readonly string[]) => `#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t devtmpfs dev /dev 2>/dev/null
mount -t proc proc /proc
mount -t sysfs sys /sys
for m in ${modules.map((m) => `/lib/modules/${m.slice(m.lastIndexOf("/") + 1)}`).join(" ")}; do
  insmod "$m" 2>/dev/null || echo "init: insmod $m failed"
done
cmdline_value() { sed -n "s/.*$1=\\"\\([^\\"]*\\)\\".*/\\1/p; t; s/.*$1=\\([^ ]*\\).*/\\1/p" /proc/cmdline; }
`;

export function guestInit(modules: readonly string[]): string {
  return `${common(modules)}
# Marker 1 on the debug console port 0xE9: init is running (vireo bench boot). Harmless where nothing listens.
[ -c /dev/port ] && printf '\\001' | dd of=/dev/port bs=1 seek=$((0xe9)) count=1 2>/dev/null
cmd=$(cmdline_value vireo.run)
if [ -n "$cmd" ]; then
  sh -c "$cmd"
  echo "VIREO-RUN-EXIT=$?"
else
  echo "init: no vireo.run= on the kernel command line; starting a shell"
  setsid cttyhack sh
fi
sync
poweroff -f
`;
}

export function harnessInit(modules: readonly string[]): string {
  // Stage 1 only: the host root over 9p, then stage 2 from there (src/emulated-host/stage2.sh), so what the
  // emulated host does can change without rebuilding this image. cache=loose: the root is read-only and does
  // not change under a run, and without a page cache every process start re-reads node over 9p (seconds
  // under TCG).
  return `${common(modules)}
mkdir -p /host
if ! mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /host; then
  echo "VIREO-HARNESS-ERROR=cannot mount the host root over 9p"
  poweroff -f
fi
stage2=$(cmdline_value vireo.stage2)
if [ -f "/host$stage2" ]; then
  . "/host$stage2"
else
  echo "VIREO-HARNESS-ERROR=no stage 2 script at $stage2"
fi
poweroff -f
`;
}

/** Modules the guest flavour loads: vireo's devices (issue: virtio and e1000) and what they need. */
export const GUEST_MODULES = [
  "virtio_pci",
  "virtio_net",
  "virtio_blk",
  "virtio_console",
  "virtio_rng",
  "e1000",
] as const;

/** Modules the harness flavour loads: SVM KVM inside QEMU's `-cpu max`, 9p over virtio for the host root, tun for
 * TAPs, virtio_console for the ports that carry the script's stdin, stdout and stderr, and vhost_net (with vhost,
 * vhost_iotlb and tap from modules.dep) for `--net tap=NAME,vhost=on`, and veth, which joins the network namespaces
 * that stand for two hosts in the migration tests. A module that fails to load is reported by init and skipped. */
export const HARNESS_MODULES = [
  "kvm_amd",
  "virtio_pci",
  "9pnet_virtio",
  "9p",
  "tun",
  "virtio_console",
  "vhost_net",
  "veth",
] as const;

/**
 * Kernel command line for the guest image where every exit is expensive (nested or emulated KVM): a quiet
 * console, no port-0x80 delays, no TSC recalibration. Add vireo.run="..." for the command.
 */
export const FAST_BOOT_CMDLINE =
  "console=ttyS0 quiet io_delay=none lpj=5000000 tsc=reliable no_timer_check i8042.noaux";
