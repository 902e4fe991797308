# containerd and dockerd start as soon as their data is mounted (25-data-disk.sh), while the
# clock, network and TLS steps run: on an emulated CPU starting them is most of the time to
# the Docker API. dockerd waits for the TLS material (tls_done), and itself for containerd's
# socket; 90-services.sh skips them.
. /etc/hyve/docker.conf
tls=$HYVE_DATA/tls
# Whether the certificate in FILE is valid for 30 more days (60-docker-tls.sh and
# 95-docker-ready.sh use it too). FILE.expires, written when 60-docker-tls.sh made FILE,
# holds its end of validity in seconds since the epoch: reading a certificate takes openssl
# over a second of an emulated CPU (OpenSSL 3.0), `date` a twentieth of that. Without it, or
# when FILE is newer (replaced since; by whole seconds in busybox's test), openssl reads FILE.
tls_fresh() {
	[ -s "$1" ] || return 1
	if [ -s "$1.expires" ] && [ ! "$1" -nt "$1.expires" ]; then
		read -r expires <"$1.expires"
		[ "$expires" -gt $(($(date +%s) + 2592000)) ] 2>/dev/null
		return
	fi
	openssl x509 -in "$1" -noout -checkend 2592000 >/dev/null 2>&1
}
# tls_key FILE: a new EC P-256 private key (quick to make even on an emulated CPU).
tls_key() { (umask 077 && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>>/var/log/tls.log); }
# The TLS material is as ready as it gets this boot: dockerd (services/30-dockerd) waits for
# /run/hyve/tls-done, and is woken by a line on the FIFO tls-wake (instead of polling, which
# costs a process a tick on an emulated CPU). Opened read-write, the FIFO never blocks its
# writer, with or without a reader.
mkfifo /run/hyve/tls-wake || log "cannot make /run/hyve/tls-wake: dockerd starts without waiting for its TLS certificate"
tls_done() {
	: >/run/hyve/tls-done
	echo done 1<>/run/hyve/tls-wake
}
if [ -z "$DOCKER_TLS_PORT" ] || { [ ! -s "$tls/server-ca-key.pem" ] &&
	[ ! -s "$HYVE_DATA/docker-tls/server-ca-key.pem" ] && [ ! -e "$tls/server-cert.pem" ]; }; then
	# No TLS, or neither a server CA to issue a certificate from (60-docker-tls.sh says so)
	# nor a certificate dockerd would take (an older hyve's, which 60-docker-tls.sh removes).
	tls_done
elif tls_fresh "$tls/server-cert.pem" && [ -s "$tls/server-key.pem" ] && [ ! -d "$HYVE_DATA/docker-tls" ] &&
	[ ! -e "$tls/ca-key.pem" ]; then
	# A later boot: the server certificate the last one made is still valid for 30 days, so
	# dockerd need not wait for the network. 60-docker-tls.sh replaces it, and restarts
	# dockerd, if the guest's names or addresses changed. (Not with new CAs in the user data,
	# nor after an older hyve's CA, which 60-docker-tls.sh takes care of first.)
	tls_done
else
	# 60-docker-tls.sh issues a server certificate this boot. It needs the guest's addresses
	# (DHCP, later), its key does not: make the key and its public half (x509 -new takes the
	# public key from a file of its own) now, while the clock and network come up
	# (server-key.making: not done yet).
	: >/run/hyve/server-key.making
	(
		tls_key /run/hyve/server-key.pem &&
			openssl pkey -in /run/hyve/server-key.pem -pubout -out /run/hyve/server-pub.pem 2>>/var/log/tls.log
		rm -f /run/hyve/server-key.making
	) &
fi
for name in 20-containerd 30-dockerd; do
	start_service "$name" "/etc/hyve/services/$name" "$(cat "/etc/hyve/services/$name.grace" 2>/dev/null)"
done
