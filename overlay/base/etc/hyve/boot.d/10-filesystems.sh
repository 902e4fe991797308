# Kernel filesystems (/proc: rc.boot), the unified cgroup hierarchy, and the tmpfs mounts a
# container host needs.
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts -o nosuid,noexec,gid=5,mode=0620,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs -o nosuid,nodev,mode=1777 shm /dev/shm
mount -t tmpfs -o nosuid,nodev,mode=0755 run /run
mount -t tmpfs -o nosuid,nodev,mode=1777 tmp /tmp
mount -t cgroup2 -o nsdelegate,nosuid,nodev,noexec cgroup2 /sys/fs/cgroup
[ -e /sys/kernel/security ] && mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
rm -rf /.hyve-stage1
mkdir -p /run/hyve/services /var/log /var/lib "$HYVE_DATA"
[ -e /var/run ] || ln -s /run /var/run
log "init reached userspace (HYVE-BOOT-OK)"
if [ -n "$HYVE_NORANDMAPS" ]; then
	log "emulated CPU: booting without address-space randomization (the services get it back, dockerd does not)"
elif cmdline_has hyve.emulated; then
	log "emulated CPU, but no $setarch in the image: booting with address-space randomization (slower)"
fi
case $(awk '$2 == "/" {print $3}' /proc/mounts | tail -n 1) in
	tmpfs) log "root on tmpfs ($(df -m / | awk 'NR == 2 {print $2}') MiB)" ;;
	overlay)
		root_compressed=1
		log "root: squashfs image ($(df -m /media/root-ro | awk 'NR == 2 {print $2}') MiB, read-only) under a tmpfs overlay"
		# Docker's overlay2 cannot stack on an overlay: its data (and containerd's) goes to a
		# directory of the overlay's own tmpfs, beside its upper layer (stage 1 keeps it at
		# /media/root-rw), until a data disk is mounted over it (25-data-disk.sh). So all the
		# guest keeps in RAM shares one limit: a write past it fails, rather than two tmpfs
		# of 90% each filling the RAM between them and waking the OOM killer.
		mkdir -p /media/root-rw/data && mount --bind /media/root-rw/data "$HYVE_DATA"
		;;
	*) log "WARNING: root is neither a tmpfs nor an overlay (stage 1 did not switch_root); runc's pivot_root will fail" ;;
esac
