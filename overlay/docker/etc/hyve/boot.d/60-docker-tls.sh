# TLS for the Docker API on TCP. The CA is the host's: `hyve disk create --docker-certs DIR`
# makes it with the client certificate (kept in DIR, the host's DOCKER_CERT_PATH) and puts
# the CA in the user data (docker-tls/). No private key for the host is made here, and none
# is ever shown on a console. The guest keeps the CA with its data ($HYVE_DATA/tls) and
# issues its own server certificate from it for the names and addresses it has; renewed when
# it expires within 30 days or those changed. Without a CA the API is not on TCP (the unix
# socket and vsock still serve). EC P-256 keys: quick to make even on an emulated CPU.
. /etc/hyve/docker.conf
export OPENSSL_CONF=/etc/hyve/openssl.cnf
tls=$HYVE_DATA/tls
given=$HYVE_DATA/docker-tls
mkdir -p "$tls" && chmod 700 "$tls"
tls_fresh() { [ -s "$1" ] && openssl x509 -in "$1" -noout -checkend 2592000 >/dev/null 2>&1; }
tls_key() { (umask 077 && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>>/var/log/tls.log); }
tls_sign() { # SUBJECT KEY OUT EXTENSIONS
	printf '%s\n' "$4" >/run/hyve/tls-ext.cnf
	openssl req -new -key "$2" -subj "$1" 2>>/var/log/tls.log |
		openssl x509 -req -CA "$tls/ca.pem" -CAkey "$tls/ca-key.pem" -CAserial "$tls/ca.srl" -CAcreateserial \
			-days 825 -sha256 -extfile /run/hyve/tls-ext.cnf -out "$3" 2>>/var/log/tls.log
}
if [ -s "$given/ca.pem" ] && [ -s "$given/ca-key.pem" ]; then
	# Fresh user data: this CA replaces whatever the disk had.
	(umask 077 && mv "$given/ca-key.pem" "$tls/ca-key.pem") && mv "$given/ca.pem" "$tls/ca.pem" && rmdir "$given" 2>/dev/null
	rm -f "$tls/server-cert.pem"
	log "TLS: the host's CA from the user data"
fi
# A server certificate for the names and addresses the guest has now, unless the one it has
# still fits; true when it made one.
tls_server_cert() {
	sans="DNS:localhost,DNS:$(hostname),IP:127.0.0.1,IP:::1"
	for a in $(ip -o addr show | awk '$2 != "lo" && ($3 == "inet" || $3 == "inet6") {split($4, a, "/"); if (a[1] !~ /^fe80/) print a[1]}'); do
		sans="$sans,IP:$a"
	done
	tls_fresh "$tls/server-cert.pem" && [ "$(cat "$tls/server.sans" 2>/dev/null)" = "$sans" ] && return 1
	if tls_key "$tls/server-key.pem" && tls_sign "/CN=$(hostname)" "$tls/server-key.pem" "$tls/server-cert.pem" \
		"basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$sans"; then
		echo "$sans" >"$tls/server.sans"
		log "TLS: server certificate for $sans, valid 825 days"
	else
		log "TLS: cannot make the server certificate (see /var/log/tls.log)"
		return 1
	fi
}
if [ -z "$DOCKER_TLS_PORT" ]; then
	:
elif [ ! -s "$tls/ca.pem" ] || [ ! -s "$tls/ca-key.pem" ]; then
	log "TLS: no CA on the data disk, so the Docker API is not on TCP $DOCKER_TLS_PORT (make the disk with \`hyve disk create --docker-certs DIR\`)"
elif [ ! -e /run/hyve/clock-set ]; then
	# A certificate dated from a wrong clock would not be valid for the host: wait for the
	# first time sync (chronyd), then issue it and restart dockerd to listen with it.
	log "TLS: the clock is not set yet; the server certificate waits for the first time sync"
	(
		until chronyc -n waitsync 1 >/dev/null 2>&1; do sleep 5; done
		: >/run/hyve/clock-set
		log "clock set by a time server: $(date -u '+%Y-%m-%dT%H:%M:%SZ')"
		tls_server_cert && kill "$(cat /run/hyve/services/30-dockerd.child 2>/dev/null)" 2>/dev/null
	) &
else
	tls_fresh "$tls/ca.pem" || log "TLS: the CA expires within 30 days; make a new disk with \`hyve disk create --docker-certs NEWDIR\`"
	tls_server_cert
fi
