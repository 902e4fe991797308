# In the background, so the console is free at once: wait for the Docker API, say where it
# listens, check the vsock bridge from inside the guest, then run the user data's
# bootlocal.sh (as boot2docker did).
. /etc/hyve/docker.conf
docker_api() { # PATH [socat address]
	printf 'GET %s HTTP/1.0\r\nHost: docker\r\n\r\n' "$1" | socat -t 3 - "${2:-UNIX-CONNECT:/var/run/docker.sock}" 2>/dev/null
}
(
	i=0
	until docker_api /_ping | grep -q '200 OK'; do
		i=$((i + 1))
		if [ $i -ge 600 ]; then
			log "the Docker API is not up after 2 minutes; see /var/log/30-dockerd.log and /var/log/20-containerd.log"
			exit 1
		fi
		sleep 0.2
	done
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
	if [ -f "$HYVE_DATA/bootlocal.sh" ]; then
		log "running bootlocal.sh from the user data (output in /var/log/bootlocal.log)"
		sh "$HYVE_DATA/bootlocal.sh" >>/var/log/bootlocal.log 2>&1
	fi
) &
