# Clock from the RTC (the VMM sets it to the host's time); the entropy pool seeded from the
# previous boot when the data disk holds a seed (virtio-rng feeds it too).
[ -e /dev/rtc0 ] && hwclock -s -u 2>/dev/null
if [ -s "$HYVE_DATA/random-seed" ]; then
	cat "$HYVE_DATA/random-seed" >/dev/urandom
fi
log "clock $(date -u '+%Y-%m-%dT%H:%M:%SZ'); entropy $(cat /proc/sys/kernel/random/entropy_avail) bits; rng $(cat /sys/class/misc/hw_random/rng_current 2>/dev/null || echo none)"
