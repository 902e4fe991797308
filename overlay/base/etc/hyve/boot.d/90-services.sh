# Every service in /etc/hyve/services (after syslogd and klogd) not started yet, in name
# order, supervised.
# A service's grace period at shutdown is in /etc/hyve/services/NAME.grace (default 10 s).
for run in /etc/hyve/services/*; do
	name=${run##*/}
	case $name in 00-syslogd | 01-klogd | *.grace) continue ;; esac
	[ -x "$run" ] || continue
	# A boot step may have started it earlier (overlay/docker's 27-docker-early.sh).
	[ -e "/run/hyve/services/$name.pid" ] && continue
	start_service "$name" "$run" "$(cat "$run.grace" 2>/dev/null)"
done
