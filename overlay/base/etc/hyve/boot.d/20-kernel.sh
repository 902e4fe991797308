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
