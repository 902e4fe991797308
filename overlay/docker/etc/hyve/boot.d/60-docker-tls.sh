# TLS for the Docker API on TCP: a CA, a server and a client certificate made on first boot
# and kept with the data ($HYVE_DATA/tls). Each is renewed when it expires within 30 days;
# the server's also when the guest's names or addresses (its SANs) changed. EC P-256 keys:
# quick to make even on an emulated CPU.
. /etc/hyve/docker.conf
export OPENSSL_CONF=/etc/hyve/openssl.cnf
tls=$HYVE_DATA/tls
mkdir -p "$tls/client" && chmod 700 "$tls"
tls_fresh() { [ -s "$1" ] && openssl x509 -in "$1" -noout -checkend 2592000 >/dev/null 2>&1; }
tls_key() { (umask 077 && openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>>/var/log/tls.log); }
tls_sign() { # SUBJECT KEY OUT EXTENSIONS
	printf '%s\n' "$4" >/run/hyve/tls-ext.cnf
	openssl req -new -key "$2" -subj "$1" 2>>/var/log/tls.log |
		openssl x509 -req -CA "$tls/ca.pem" -CAkey "$tls/ca-key.pem" -CAserial "$tls/ca.srl" -CAcreateserial \
			-days 825 -sha256 -extfile /run/hyve/tls-ext.cnf -out "$3" 2>>/var/log/tls.log
}
if ! tls_fresh "$tls/ca.pem"; then
	if tls_key "$tls/ca-key.pem" && openssl req -x509 -new -key "$tls/ca-key.pem" -sha256 -days 3650 \
		-subj "/CN=hyve Docker CA ($(hostname))" -addext basicConstraints=critical,CA:TRUE \
		-addext keyUsage=critical,keyCertSign,cRLSign -out "$tls/ca.pem" 2>>/var/log/tls.log; then
		log "TLS: new CA, valid 10 years"
	else
		log "TLS: cannot make a CA (see /var/log/tls.log)"
	fi
	rm -f "$tls/server-cert.pem" "$tls/client/cert.pem"
fi
sans="DNS:localhost,DNS:$(hostname),IP:127.0.0.1,IP:::1"
for a in $(ip -o addr show | awk '$2 != "lo" && ($3 == "inet" || $3 == "inet6") {split($4, a, "/"); if (a[1] !~ /^fe80/) print a[1]}'); do
	sans="$sans,IP:$a"
done
if ! tls_fresh "$tls/server-cert.pem" || [ "$(cat "$tls/server.sans" 2>/dev/null)" != "$sans" ]; then
	if tls_key "$tls/server-key.pem" && tls_sign "/CN=$(hostname)" "$tls/server-key.pem" "$tls/server-cert.pem" \
		"basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$sans"; then
		echo "$sans" >"$tls/server.sans"
		log "TLS: server certificate for $sans, valid 825 days"
	else
		log "TLS: cannot make the server certificate (see /var/log/tls.log)"
	fi
fi
if ! tls_fresh "$tls/client/cert.pem"; then
	if tls_key "$tls/client/key.pem" && tls_sign "/CN=hyve docker client" "$tls/client/key.pem" "$tls/client/cert.pem" \
		"basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"; then
		log "TLS: new client certificate, valid 825 days"
	else
		log "TLS: cannot make the client certificate (see /var/log/tls.log)"
	fi
fi
cp "$tls/ca.pem" "$tls/client/ca.pem" 2>/dev/null
