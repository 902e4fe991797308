# TLS for the Docker API on TCP. The CAs are the host's: `hyve disk create --docker-certs
# DIR` keeps a root CA and the client certificate in DIR (the host's DOCKER_CERT_PATH) and
# puts into the user data (docker-tls/) the root certificate and a server CA for this disk
# alone, an intermediate that may sign only server certificates. The guest keeps them with
# its data ($HYVE_DATA/tls), issues its own server certificate from the server CA for the
# names and addresses it has (renewed when it expires within 30 days or those changed), and
# dockerd takes client certificates the root signed. No private key for the host is made
# here, and none is ever shown on a console. Without them the API is not on TCP (the unix
# socket and vsock still serve). EC P-256 keys: quick to make even on an emulated CPU.
. /etc/hyve/docker.conf
tls=$HYVE_DATA/tls
given=$HYVE_DATA/docker-tls
mkdir -p "$tls" && chmod 700 "$tls"
# tls_fresh FILE, tls_key FILE, tls_done: 27-docker-early.sh.
if [ -s "$given/ca.pem" ] && [ -s "$given/server-ca.pem" ] && [ -s "$given/server-ca-key.pem" ]; then
	# Fresh user data: these replace whatever the disk had.
	for f in ca.pem server-ca.pem server-ca-key.pem; do mv "$given/$f" "$tls/$f"; done
	chmod 600 "$tls/server-ca-key.pem"
	rmdir "$given" 2>/dev/null
	rm -f "$tls/server-cert.pem"
	log "TLS: the host's CA and this disk's server CA from the user data"
fi
if [ -d "$tls/client" ] || [ -e "$tls/ca-key.pem" ]; then
	# An older hyve made its own CA here and printed a client key on the console.
	rm -rf "$tls/client" "$tls/ca-key.pem" "$tls/server-cert.pem"
	log "TLS: removed the CA and client key an older hyve made on this disk (its key was shown on the console)"
fi
# A server certificate, followed by the server CA (the chain clients check against the
# root), for the names and addresses the guest has now, unless the one it has still fits;
# true when it made one.
tls_server_cert() {
	sans="DNS:localhost,DNS:$(hostname),IP:127.0.0.1,IP:::1"
	for a in $(ip -o addr show | awk '$2 != "lo" && ($3 == "inet" || $3 == "inet6") {split($4, a, "/"); if (a[1] !~ /^fe80/) print a[1]}'); do
		sans="$sans,IP:$a"
	done
	[ -s "$tls/server-key.pem" ] && tls_fresh "$tls/server-cert.pem" && [ "$(cat "$tls/server.sans" 2>/dev/null)" = "$sans" ] &&
		return 1
	printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=%s\n' \
		"$sans" >/run/hyve/tls-ext.cnf
	# The key 27-docker-early.sh started making, once done (it takes a second or two on an
	# emulated CPU, usually less than the wait for DHCP); else, or when that failed, one now.
	i=0
	while [ -e /run/hyve/server-key.making ] && [ $i -lt 300 ]; do
		sleep 0.1
		i=$((i + 1))
	done
	# The new key and certificate replace the old pair only once both are made (.new beside
	# them, renamed), so a failure or a power cut never leaves a key that does not fit.
	key=$tls/server-key.pem.new
	pub=/run/hyve/server-cert-pub.pem
	rm -f "$key" "$pub"
	if ! { [ -s /run/hyve/server-pub.pem ] && mv /run/hyve/server-key.pem "$key" && mv /run/hyve/server-pub.pem "$pub"; }; then
		tls_key "$key" && openssl pkey -in "$key" -pubout -out "$pub" 2>>/var/log/tls.log
	fi
	# One process: x509 -new (OpenSSL 3.0 and later) signs a certificate for the public key
	# without a certificate request. Its end of validity, from a time taken before it (so not
	# later than the certificate's, short of a clock step back in between, which 60 s of
	# slack covers), goes beside it for tls_fresh.
	days=825
	issued=$(($(date +%s) - 60))
	if [ -s "$pub" ] &&
		openssl x509 -new -subj "/CN=$(hostname)" -force_pubkey "$pub" \
			-CA "$tls/server-ca.pem" -CAkey "$tls/server-ca-key.pem" -CAserial "$tls/server-ca.srl" -CAcreateserial \
			-days $days -sha256 -extfile /run/hyve/tls-ext.cnf -out /run/hyve/server-cert.pem 2>>/var/log/tls.log &&
		cat /run/hyve/server-cert.pem "$tls/server-ca.pem" >"$tls/server-cert.pem.new" &&
		mv "$key" "$tls/server-key.pem" && mv "$tls/server-cert.pem.new" "$tls/server-cert.pem"; then
		echo $((issued + days * 86400)) >"$tls/server-cert.pem.expires"
		echo "$sans" >"$tls/server.sans"
		log "TLS: server certificate for $sans, valid $days days"
	else
		rm -f "$key" "$tls/server-cert.pem.new" "$tls/server-cert.pem"
		log "TLS: cannot make the server certificate (see /var/log/tls.log)"
		return 1
	fi
}
# Every case marks the TLS material done (tls_done: 27-docker-early.sh), at once or once the
# certificate is made; containerd and the rest start meanwhile.
if [ -z "$DOCKER_TLS_PORT" ]; then
	tls_done
elif [ ! -s "$tls/ca.pem" ] || [ ! -s "$tls/server-ca.pem" ] || [ ! -s "$tls/server-ca-key.pem" ]; then
	log "TLS: no CA on the data disk, so the Docker API is not on TCP $DOCKER_TLS_PORT (make the disk with \`hyve disk create --docker-certs DIR\`)"
	tls_done
elif [ ! -e /run/hyve/clock-set ]; then
	# A certificate dated from a wrong clock would not be valid for the host: wait for the
	# clock (chronyd's first sync, or the host's time over vsock), then issue it and restart
	# dockerd to listen with it.
	log "TLS: the clock is not set yet; the server certificate waits for the first time sync"
	tls_done
	(
		until [ -e /run/hyve/clock-set ] || chronyc -n waitsync 1 >/dev/null 2>&1; do sleep 5; done
		[ -e /run/hyve/clock-set ] || log "clock set by a time server: $(date -u '+%Y-%m-%dT%H:%M:%SZ')"
		: >/run/hyve/clock-set
		tls_server_cert && kill "$(cat /run/hyve/services/30-dockerd.child 2>/dev/null)" 2>/dev/null
	) &
else
	# In the background: a new certificate takes seconds on an emulated CPU. (Whether the
	# server CA itself expires soon is checked once the Docker API is up: 95-docker-ready.sh.)
	if [ -e /run/hyve/tls-done ]; then
		# dockerd started with the last boot's certificate (27-docker-early.sh): a new one
		# restarts it.
		tls_server_cert && kill "$(cat /run/hyve/services/30-dockerd.child 2>/dev/null)" 2>/dev/null &
	else
		(
			tls_server_cert
			tls_done
		) &
	fi
fi
