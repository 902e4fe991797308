# After the services have stopped: keep an entropy seed for the next boot, unmount whatever
# containers left below the data, then the data disk itself (read-only if it is busy).
data_dev=$(awk -v m="$HYVE_DATA" '$2 == m && $3 == "ext4" {print $1}' /proc/mounts)
if [ -n "$data_dev" ]; then
	(umask 077 && dd if=/dev/urandom of="$HYVE_DATA/random-seed" bs=512 count=1 2>/dev/null)
fi
for m in $(awk '{print $2}' /proc/mounts | grep -E "^(/var/lib/docker|/var/lib/containerd|/run/docker|/run/containerd)(/|$)" | sort -r); do
	umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
done
if [ -n "$data_dev" ]; then
	sync
	if umount "$HYVE_DATA"; then
		log "data disk $data_dev unmounted"
	elif mount -o remount,ro "$HYVE_DATA"; then
		log "data disk $data_dev busy: remounted read-only"
	else
		log "data disk $data_dev busy and cannot be remounted read-only"
	fi
fi
