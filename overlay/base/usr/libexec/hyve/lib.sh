# Shared by hyve's boot, shutdown and service scripts (sourced, never run).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# One line on the console and in /var/log/hyve.log.
log() {
	echo "hyve: $*" >/dev/console
	[ -d /var/log ] && echo "$(date '+%Y-%m-%dT%H:%M:%S') $*" >>/var/log/hyve.log
	return 0
}

# True when the kernel command line holds the word $1 (builtins only, like cmdline_value).
cmdline_has() {
	v=
	read -r v </proc/cmdline
	case " $v " in
		*" $1 "*) return 0 ;;
	esac
	return 1
}

# The value of the last `$1=value` on the kernel command line, else $2. Builtins only: a
# process costs an emulated CPU 40-70 ms, and this runs on the way to the Docker API.
cmdline_value() {
	v=
	read -r v </proc/cmdline
	v=" $v"
	case $v in
		*" $1="*) v=${v##*" $1="} && v=${v%% *} ;;
		*) v= ;;
	esac
	echo "${v:-$2}"
}

# Where the persistent data lives (the data disk, or RAM without one).
HYVE_DATA=/var/lib/hyve

# util-linux's setarch (the `setarch` package), by its path: a busybox `setarch` takes no -R.
setarch=/usr/bin/setarch
# On an emulated CPU rc.boot runs the boot without address-space randomization and exports
# HYVE_NORANDMAPS, the machine (`uname -m`). What outlives the boot starts through
# $randomized, which turns it back on (`setarch MACHINE` sets the plain personality):
# `HYVE_NORANDMAPS='' $randomized COMMAND...`, one simple command, so that `&` and `$!` mean
# COMMAND. Empty otherwise.
randomized=${HYVE_NORANDMAPS:+$setarch $HYVE_NORANDMAPS}
# Whether the boot (rc.boot) and dockerd (services/30-dockerd) run without it: an emulated
# CPU, and util-linux's setarch to do it with.
wants_norandmaps() { cmdline_has hyve.emulated && [ -x "$setarch" ]; }

# start_service NAME RUN [GRACE]: RUN under supervise in the background; rc.shutdown stops
# it (in reverse start order) with GRACE seconds (default 10) before SIGKILL.
start_service() {
	# shellcheck disable=SC2086 # $randomized is a command's words
	HYVE_NORANDMAPS='' $randomized /usr/libexec/hyve/supervise "$1" "$2" &
	echo $! >"/run/hyve/services/$1.pid"
	echo "${3:-10}" >"/run/hyve/services/$1.grace"
}

# The time servers, one per word: `hyve.ntp=HOST[:PORT],...` on the kernel command line
# (`hyve.ntp=off`: none), else the user data's ntp-servers file, else those DHCP offered
# (option 42) and NTP_SERVERS from /etc/hyve/time.conf.
ntp_servers() {
	v=$(cmdline_value hyve.ntp "")
	if [ -n "$v" ]; then
		[ "$v" = off ] || echo "$v" | tr ',' ' '
	elif [ -s "$HYVE_DATA/ntp-servers" ]; then
		tr -s ' \n' '  ' <"$HYVE_DATA/ntp-servers"
	else
		. /etc/hyve/time.conf
		echo $(cat /run/hyve/dhcp-ntp 2>/dev/null) $NTP_SERVERS
	fi
}

# chrony's configuration for those servers in FILE: step any offset over a second at any
# time (a guest whose host slept), and keep the RTC in step for the next boot.
chrony_conf() { # FILE
	for s in $(ntp_servers); do
		case $s in
			\[*\]:*) host=${s%]:*} && echo "server ${host#[} port ${s##*]:} iburst" ;;
			\[*\]) host=${s%]} && echo "server ${host#[} iburst" ;;
			*:*:*) echo "server $s iburst" ;;
			*:*) echo "server ${s%:*} port ${s##*:} iburst" ;;
			*) echo "server $s iburst" ;;
		esac
	done >"$1"
	printf 'makestep 1 -1\nrtcsync\n' >>"$1"
}
