# lo, then eth0 by DHCP (asking for time servers too). udhcpc waits for the first lease
# (10 tries), then stays in the background to renew it.
ip link set lo up
if ip link show eth0 >/dev/null 2>&1; then
	ip link set eth0 up
	# shellcheck disable=SC2086 # $randomized is a command's words (lib.sh)
	HYVE_NORANDMAPS='' $randomized udhcpc -i eth0 -s /usr/share/udhcpc/default.script -x "hostname:$(hostname)" -O ntpsrv -t 10 -T 1 -b \
		-p /run/udhcpc.eth0.pid >/dev/null 2>&1
	addr=$(ip -4 -o addr show eth0 | awk '{print $4}')
	if [ -n "$addr" ]; then log "eth0 $addr (DHCP)"; else log "eth0: no DHCP answer yet (udhcpc keeps trying)"; fi
else
	log "no eth0"
fi
