# sshd's host keys: made once, kept with the data (so the host's known_hosts stays valid);
# logins only with the keys from the user data (`hyve disk create --ssh-key`).
mkdir -p "$HYVE_DATA/ssh" && chmod 700 "$HYVE_DATA/ssh"
for type in ed25519 ecdsa rsa; do
	key=$HYVE_DATA/ssh/ssh_host_${type}_key
	[ -s "$key" ] || ssh-keygen -q -t "$type" -N "" -C "hyve host key" -f "$key" || log "ssh: cannot make the $type host key"
done
# /var/empty for privilege separation (Alpine's sshd), /run/sshd (Debian-built ones).
mkdir -p /var/empty /run/sshd /root
ln -sfn "$HYVE_DATA/.ssh" /root/.ssh
if [ -s "$HYVE_DATA/.ssh/authorized_keys" ]; then
	log "ssh: root login with the $(grep -c . "$HYVE_DATA/.ssh/authorized_keys") key(s) from the user data; host key $(ssh-keygen -l -f "$HYVE_DATA/ssh/ssh_host_ed25519_key.pub" | awk '{print $2}')"
else
	log "ssh: no authorized_keys in the user data (hyve disk create --ssh-key): root cannot log in over ssh"
fi
