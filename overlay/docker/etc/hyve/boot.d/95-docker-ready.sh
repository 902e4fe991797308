# In the background, so the console is free at once: wait for the Docker API, say where it
# listens, check the vsock bridge from inside the guest and whether the server CA expires
# soon, then run the user data's bootlocal.sh (as boot2docker did).
. /etc/hyve/docker.conf
docker_api() { # PATH [socat address [seconds to wait for the answer, default 3]]
	printf 'GET %s HTTP/1.0\r\nHost: docker\r\n\r\n' "$1" |
		socat -t "${3:-3}" - "${2:-UNIX-CONNECT:/var/run/docker.sock}" 2>/dev/null
}
# now: $now, whole seconds since boot (a builtin read: no process, not even a fork).
now() { read -r now _ </proc/uptime && now=${now%.*}; }
(
	# Builtins only while dockerd's socket is not there (the tick: read -t on a FIFO no one
	# writes): a socat, grep and sleep a tick would take a third of a second of an emulated
	# CPU each round from dockerd's own start. dockerd makes its socket early and answers on
	# it once initialised, so from then on one request waits for the answer. `sleep` instead
	# when the FIFO cannot be made or the shell's read takes no fraction of a second (busybox
	# without FEATURE_SH_READ_FRAC says "invalid timeout": status 2).
	tick() { sleep 0.2; }
	if mkfifo /run/hyve/docker-ready-tick && command exec 4<>/run/hyve/docker-ready-tick; then
		rm -f /run/hyve/docker-ready-tick
		read -r -t 0.01 _ <&4 2>/dev/null
		[ $? != 2 ] && tick() { read -r -t 0.2 _ <&4; }
	fi
	now
	warn=$((now + 120))
	deadline=$((now + 600))
	# The request waits no longer than the next message is due (warn, then deadline).
	until [ -S /var/run/docker.sock ] && docker_api /_ping "" $((${warn:-$deadline} - now)) | grep -q '200 OK'; do
		now
		if [ "$now" -ge $deadline ]; then
			log "the Docker API is not up after 10 minutes; see /var/log/30-dockerd.log and /var/log/20-containerd.log"
			exit 1
		elif [ -n "$warn" ] && [ "$now" -ge $warn ]; then
			log "the Docker API is not up after 2 minutes; still waiting (see /var/log/30-dockerd.log and /var/log/20-containerd.log)"
			warn=
		fi
		tick
	done
	exec 4<&-
	version=$(docker_api /version | tr ',' '\n' | sed -n 's/^"Version":"\([^"]*\)"$/\1/p' | head -n 1)
	where="unix:///var/run/docker.sock"
	if [ -n "$DOCKER_TLS_PORT" ] && [ -s "$HYVE_DATA/tls/server-cert.pem" ]; then
		where="$where, tcp://$(ip -4 -o addr show eth0 2>/dev/null | awk '{split($4, a, "/"); print a[1]}' | head -n 1):$DOCKER_TLS_PORT (TLS)"
	fi
	if [ -n "$DOCKER_PLAIN_TCP_PORT" ]; then
		where="$where, tcp port $DOCKER_PLAIN_TCP_PORT WITHOUT TLS (the profile asks for it)"
	fi
	log "dockerd $version ready: $where"
	# What the guest holds once booted: MemTotal - MemAvailable, and tmpfs (a root on tmpfs,
	# or a squashfs root's writes) within it.
	log "memory after boot: $(awk '/^MemTotal:/ {t = $2} /^MemAvailable:/ {a = $2} /^Shmem:/ {s = $2}
		END {printf "%d MiB in use of %d MiB, tmpfs %d MiB", (t - a) / 1024, t / 1024, s / 1024}' /proc/meminfo)"
	if [ -n "$DOCKER_VSOCK_PORT" ] && [ -e /dev/vsock ]; then
		modprobe -q vsock_loopback 2>/dev/null
		if docker_api /_ping "VSOCK-CONNECT:1:$DOCKER_VSOCK_PORT" | grep -q '200 OK'; then
			log "Docker API on vsock port $DOCKER_VSOCK_PORT (checked from inside over vsock loopback)"
		else
			log "Docker API on vsock port $DOCKER_VSOCK_PORT: not answering over vsock loopback (see /var/log/40-docker-vsock.log)"
		fi
	fi
	# tls_fresh: 27-docker-early.sh (openssl reads the CA, a second or more of an emulated
	# CPU: in the background, after the boot).
	if [ -n "$DOCKER_TLS_PORT" ] && [ -s "$HYVE_DATA/tls/server-ca.pem" ]; then
		tls_fresh "$HYVE_DATA/tls/server-ca.pem" ||
			log "TLS: the server CA expires within 30 days; make a new disk with \`hyve disk create --docker-certs DIR\`" &
	fi
	if [ -f "$HYVE_DATA/bootlocal.sh" ]; then
		log "running bootlocal.sh from the user data (output in /var/log/bootlocal.log)"
		# shellcheck disable=SC2086 # $randomized is a command's words (lib.sh)
		HYVE_NORANDMAPS='' $randomized sh "$HYVE_DATA/bootlocal.sh" >>/var/log/bootlocal.log 2>&1
	fi
) &
