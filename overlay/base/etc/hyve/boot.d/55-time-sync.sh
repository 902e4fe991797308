# When 35-clock-entropy could not vouch for the clock, wait for a first answer from a time
# server before anything depends on the date (TLS certificates): chronyd -q steps the clock
# once and exits, bounded by NTP_BOOT_WAIT so an offline guest still boots. The chronyd
# service keeps the clock right afterwards, also when it starts wrong.
. /etc/hyve/time.conf
servers=$(ntp_servers)
if [ -e /run/hyve/clock-set ]; then
	:
elif [ -z "$servers" ]; then
	log "clock: no time servers (time.conf, user data, DHCP or hyve.ntp) to set it from"
elif ! command -v chronyd >/dev/null; then
	log "clock: no chronyd in the image to set it with"
else
	chrony_conf /run/hyve/chrony-boot.conf
	if chronyd -q -t "${NTP_BOOT_WAIT:-20}" -f /run/hyve/chrony-boot.conf >/var/log/chrony-boot.log 2>&1; then
		: >/run/hyve/clock-set
		log "clock set by a time server ($servers): $(date -u '+%Y-%m-%dT%H:%M:%SZ')"
	else
		log "clock: no time server answered within ${NTP_BOOT_WAIT:-20} s ($servers); chronyd keeps trying (see /var/log/chrony-boot.log)"
	fi
fi
