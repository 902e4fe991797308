# The kernel's module autoloader, the profile's modules, and the devices present at boot.
[ -x /sbin/modprobe ] && echo /sbin/modprobe >/proc/sys/kernel/modprobe
loaded=0
for m in $(cat /etc/hyve/modules 2>/dev/null); do
	if modprobe "$m"; then loaded=$((loaded + 1)); else log "modprobe $m failed"; fi
done
# devtmpfs makes the device nodes; mdev sets their modes now and (02-mdev) on hotplug.
[ -x /sbin/mdev ] && mdev -s
log "kernel $(uname -r): $loaded modules loaded"
