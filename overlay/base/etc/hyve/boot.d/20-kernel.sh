# The kernel's module autoloader, the profile's modules, and the devices present at boot.
[ -x /sbin/modprobe ] && echo /sbin/modprobe >/proc/sys/kernel/modprobe
# All in one modprobe (one process instead of one per module, which an emulated CPU feels);
# when that fails, one at a time to say which.
modules=$(cat /etc/hyve/modules 2>/dev/null)
loaded=$(echo $modules | wc -w)
if [ -n "$modules" ] && ! modprobe -a $modules 2>/dev/null; then
	loaded=0
	for m in $modules; do
		if modprobe "$m"; then loaded=$((loaded + 1)); else log "modprobe $m failed"; fi
	done
fi
# devtmpfs makes the device nodes; mdev sets their modes now and (02-mdev) on hotplug.
[ -x /sbin/mdev ] && mdev -s
log "kernel $(uname -r): $loaded modules loaded"
# udev's /dev/virtio-ports/NAME links to the named virtio-serial ports (Lima's guest agent
# opens its port by that path).
for name in /sys/class/virtio-ports/*/name; do
	[ -s "$name" ] || continue
	port=${name%/name}
	mkdir -p /dev/virtio-ports && ln -sfn "../${port##*/}" "/dev/virtio-ports/$(cat "$name")"
done
# The memory balloon, where the VMM offers one. With free page reporting (virtio feature bit
# 5, VIRTIO_BALLOON_F_REPORTING; sysfs `features` has one digit per bit) the pages the guest
# frees go back to the host; without it only the host's balloon target takes memory back.
for dev in /sys/bus/virtio/drivers/virtio_balloon/virtio*; do
	[ -r "$dev/features" ] || continue
	if [ "$(cut -c6 "$dev/features")" = 1 ]; then
		log "memory balloon: free page reporting on (memory the guest frees goes back to the host)"
	else
		log "memory balloon: present, without free page reporting (the VMM does not offer it)"
	fi
done
