# containerd and dockerd start as soon as their data is mounted (25-data-disk.sh), while the
# clock, network and TLS steps run: on an emulated CPU starting them is most of the time to
# the Docker API. dockerd waits for the TLS material (60-docker-tls.sh marks it done), and
# itself for containerd's socket; 90-services.sh skips them.
. /etc/hyve/docker.conf
# A later boot: the server certificate the last one made is still valid for 30 days, so
# dockerd need not wait for the network. 60-docker-tls.sh replaces it, and restarts dockerd,
# if the guest's names or addresses changed. (Not with new CAs in the user data, nor after
# an older hyve's CA, which 60-docker-tls.sh takes care of first.)
tls=$HYVE_DATA/tls
# Whether the certificate in FILE is valid for 30 more days (60-docker-tls.sh uses it too).
tls_fresh() { [ -s "$1" ] && openssl x509 -in "$1" -noout -checkend 2592000 >/dev/null 2>&1; }
if [ -n "$DOCKER_TLS_PORT" ] && tls_fresh "$tls/server-cert.pem" && [ -s "$tls/server-key.pem" ] &&
	[ ! -d "$HYVE_DATA/docker-tls" ] && [ ! -e "$tls/ca-key.pem" ]; then
	: >/run/hyve/tls-done
fi
for name in 20-containerd 30-dockerd; do
	start_service "$name" "/etc/hyve/services/$name" "$(cat "/etc/hyve/services/$name.grace" 2>/dev/null)"
done
