# Clock from the RTC (the VMM sets it to the host's time), or from `hyve.time=SECONDS` on
# the kernel command line for VMMs without one (Virtualization.framework's direct kernel boot
# has no RTC). A time before this image was built (BUILD_ID in os-release, its
# SOURCE_DATE_EPOCH) is certainly wrong: the clock then starts at the build time and waits
# for a time server (55-time-sync) before anything depends on the date. The entropy pool is
# seeded from the previous boot when the data disk holds a seed (virtio-rng feeds it too).
[ -e /dev/rtc0 ] && hwclock -s -u 2>/dev/null
given=$(cmdline_value hyve.time "")
case $given in
	'' | *[!0-9]*) ;;
	*) [ "$given" -gt "$(date +%s)" ] && date -u -s "@$given" >/dev/null && log "clock from the kernel command line (hyve.time)" ;;
esac
built=$(. /etc/os-release && echo "${BUILD_ID:-0}")
if [ "$(date +%s)" -ge "$built" ]; then
	: >/run/hyve/clock-set
else
	log "clock $(date -u '+%Y-%m-%dT%H:%M:%SZ') is before this image was built; starting from its build time until a time server answers"
	date -u -s "@$built" >/dev/null
fi
if [ -s "$HYVE_DATA/random-seed" ]; then
	cat "$HYVE_DATA/random-seed" >/dev/urandom
fi
log "clock $(date -u '+%Y-%m-%dT%H:%M:%SZ'); entropy $(cat /proc/sys/kernel/random/entropy_avail) bits; rng $(cat /sys/class/misc/hw_random/rng_current 2>/dev/null || echo none)"
