# Shared by hyve's boot, shutdown and service scripts (sourced, never run).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# One line on the console and in /var/log/hyve.log.
log() {
	echo "hyve: $*" >/dev/console
	[ -d /var/log ] && echo "$(date '+%Y-%m-%dT%H:%M:%S') $*" >>/var/log/hyve.log
	return 0
}

# True when the kernel command line holds the word $1.
cmdline_has() {
	grep -qw -- "$1" /proc/cmdline
}

# The value of `$1=value` on the kernel command line, else $2.
cmdline_value() {
	v=$(tr ' ' '\n' </proc/cmdline | sed -n "s/^$1=//p" | tail -n 1)
	echo "${v:-$2}"
}

# Where the persistent data lives (the data disk, or RAM without one).
HYVE_DATA=/var/lib/hyve

# start_service NAME RUN [GRACE]: RUN under supervise in the background; rc.shutdown stops
# it (in reverse start order) with GRACE seconds (default 10) before SIGKILL.
start_service() {
	/usr/libexec/hyve/supervise "$1" "$2" &
	echo $! >"/run/hyve/services/$1.pid"
	echo "${3:-10}" >"/run/hyve/services/$1.grace"
}
