# Stage 2 of the emulated KVM host, sourced by the harness initramfs's /init (busybox sh) once the host's root
# is mounted read-only at /host. It mounts what the run needs, connects the work's stdin, stdout and stderr to
# the virtio-serial ports the launcher (src/emulated-host/host.ts) listens on, runs the work chrooted into the
# host's root, and reports its status on the console. One run per boot: the VM powers off afterwards.
run=$(cmdline_value vireo.rundir)
[ -c /dev/kvm ] || echo "VIREO-HARNESS-ERROR=no /dev/kvm after loading kvm_amd"
# The host's /run is replaced by a tmpfs: ip netns, and TMPDIR for the work (the host's /tmp stays visible,
# read-only, so a checkout or an image there can be used).
mount -t tmpfs run /host/run
mkdir -p /host/run/vireo-tmp /host/run/netns
mount -t proc proc /host/proc
mount -t sysfs sys /host/sys
mount -t devtmpfs dev /host/dev
# The run directory (script, reports) and each directory the work may write are 9p shares of their own, mounted
# read-write at the same path as on the host.
ninep="trans=virtio,version=9p2000.L,msize=512000"
if ! mount -t 9p -o "$ninep" vrun "/host$run"; then
  echo "VIREO-HARNESS-ERROR=cannot mount the run directory $run"
  return 0 2>/dev/null || exit 0
fi
while read -r tag dir; do
  [ -n "$tag" ] || continue
  mount -t 9p -o "$ninep" "$tag" "/host$dir" || echo "VIREO-HARNESS-ERROR=cannot mount $dir read-write"
done < "/host$run/mounts"
# virtio-serial ports by name: vireo.stdin, vireo.stdout, vireo.stderr.
for p in /sys/class/virtio-ports/*; do
  case "$(cat "$p/name" 2>/dev/null)" in
    vireo.stdin) port_in=/dev/${p##*/} ;;
    vireo.stdout) port_out=/dev/${p##*/} ;;
    vireo.stderr) port_err=/dev/${p##*/} ;;
  esac
done
if [ -z "$port_in" ] || [ -z "$port_out" ] || [ -z "$port_err" ]; then
  echo "VIREO-HARNESS-ERROR=virtio-serial ports missing"
  return 0 2>/dev/null || exit 0
fi
echo "VIREO-HARNESS-BEGIN"
# Every minute, the processes inside (state and wait channel) into the run directory: when the launcher kills a
# silent run, it reports the last listing, so a stuck command is named rather than guessed at.
(
  while sleep 60; do
    chroot /host /bin/ps --ppid 2 -p 2 -N -o pid,ppid,stat,etimes,wchan:28,args --forest >"/host$run/ps.new" 2>&1 &&
      mv "/host$run/ps.new" "/host$run/ps.txt"
  done
) &
ps_loop=$!
env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TMPDIR=/run/vireo-tmp \
  VIREO_JS=1 VIREO_EMULATED_HOST=1 \
  chroot /host /bin/sh "$run/script.sh" <"$port_in" >"$port_out" 2>"$port_err"
status=$?
kill "$ps_loop" 2>/dev/null
echo "VIREO-HARNESS-EXIT=$status"
sync
