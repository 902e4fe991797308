# Lima's part of the boot, the part cloud-init does on Lima's other guests (lima v2.2.0
# pkg/cidata/cidata.TEMPLATE.d/user-data): Lima's user with its ssh keys and sudo, and
# Lima's mounts. Its boot.sh runs later (85-lima-boot), its guest agent as a service
# (services/55-lima-guestagent). Runs before dockerd starts, so that the docker group its
# socket gets exists. Without a cidata volume (not booted by Lima) it does nothing.
. /usr/libexec/hyve/lima.sh

# The volume labelled cidata: a disk under vz, there at once; a CD-ROM under QEMU, which
# the SCSI scan finds a moment after virtio_scsi loads (up to 5 s when a SCSI host exists).
lima_cidata_device() {
	i=0
	until findfs LABEL=cidata 2>/dev/null; do
		ls /sys/class/scsi_host 2>/dev/null | grep -q . && [ $i -lt 50 ] || return 1
		sleep 0.1
		i=$((i + 1))
	done
}

# The user's public keys: user-data's `ssh-authorized-keys:` list, one Go-quoted ("%q")
# string per `      - ` line.
lima_ssh_keys() {
	awk '/^    ssh-authorized-keys:/ { keys = 1; next }
		keys && /^      - / { sub(/^      - /, ""); print; next }
		{ keys = 0 }' "$LIMA_CIDATA_MNT/user-data" |
		sed -e 's/^"\(.*\)"$/\1/' -e 's/\\"/"/g' -e 's/\\\\/\\/g'
}

# Lima's mounts (user-data `mounts:`, `- [TAG, MOUNTPOINT, TYPE, "OPTIONS", "0", "0"]`):
# virtiofs and 9p, as cloud-init's cc_mounts would mount them. fstab-only options are
# dropped; a mount that fails is logged.
lima_mounts() {
	awk '/^mounts:/ { m = 1; next } m && /^- \[/ { print; next } { m = 0 }' "$LIMA_CIDATA_MNT/user-data" |
		sed -e 's/^- \[//' -e 's/\]$//' |
		while IFS= read -r entry; do
			tag=$(echo "$entry" | awk -F', ' '{print $1}')
			point=$(echo "$entry" | awk -F', ' '{print $2}')
			type=$(echo "$entry" | awk -F', ' '{print $3}')
			options=$(echo "$entry" | awk -F', ' '{print $4}' | tr -d '"' | tr ',' '\n' |
				grep -vE '^(defaults|nofail|comment=.*|x-.*)$' | tr '\n' , | sed 's/,$//')
			case $type in
				virtiofs | 9p) ;;
				*)
					log "lima: mount $tag at $point: type $type is not supported here (virtiofs, 9p)"
					continue
					;;
			esac
			if mkdir -p "$point" && mount -t "$type" ${options:+-o "$options"} "$tag" "$point" 2>/run/hyve/lima-mount.err; then
				log "lima: $tag mounted at $point ($type)"
			else
				log "lima: cannot mount $tag at $point ($type): $(cat /run/hyve/lima-mount.err)"
			fi
		done
	rm -f /run/hyve/lima-mount.err
}

# The lowest id from $2 up that no line of the account file $1 uses.
free_id() {
	awk -F: -v id="$2" '{ used[$3] = 1 } END { while (id in used) id++; print id }' "$1"
}

# Adds user $2 to group $1's member list.
in_group() {
	awk -F: -v OFS=: -v g="$1" -v u="$2" '$1 == g && ("," $4 ",") !~ ("," u ",") { $4 = ($4 == "" ? u : $4 "," u) } { print }' \
		/etc/group >/etc/group.new && cat /etc/group.new >/etc/group && rm /etc/group.new
}

lima_setup() {
	user=$(lima_env LIMA_CIDATA_USER)
	uid=$(lima_env LIMA_CIDATA_UID)
	home=$(lima_env LIMA_CIDATA_HOME)
	shell=$(lima_env LIMA_CIDATA_SHELL)
	case $user in
		'' | root | *[!a-z0-9_.-]*)
			log "lima: lima.env names no usable user (LIMA_CIDATA_USER=$user)"
			return 1
			;;
	esac
	case $uid in '' | *[!0-9]*)
		log "lima: LIMA_CIDATA_UID=$uid is not a number"
		return 1
		;;
	esac
	case $home in '' | [!/]* | *:*)
		log "lima: LIMA_CIDATA_HOME=$home is not a usable home directory"
		return 1
		;;
	esac
	[ -x "${shell:-/nonexistent}" ] || shell=/bin/sh
	# Homes live with the data (the data disk when there is one), so they survive reboots.
	if ! grep -q ' /home ' /proc/mounts; then
		mkdir -p "$HYVE_DATA/home" /home && mount --bind "$HYVE_DATA/home" /home
	fi
	# The account, written into the files directly: busybox builds differ in their adduser
	# (Debian's, the test mirror's, has none).
	if ! grep -q "^$user:" /etc/group; then
		gid=$uid
		awk -F: -v g="$gid" '$3 == g { found = 1 } END { exit !found }' /etc/group && gid=$(free_id /etc/group 1000)
		echo "$user:x:$gid:" >>/etc/group
	fi
	gid=$(awk -F: -v u="$user" '$1 == u { print $3 }' /etc/group)
	if ! grep -q "^$user:" /etc/passwd; then
		comment=$(lima_env LIMA_CIDATA_COMMENT | tr -d ':')
		echo "$user:x:$uid:$gid:$comment:$home:$shell" >>/etc/passwd
		# Public-key logins need an account that is not locked ("!"): "*" matches no password.
		echo "$user:*:$(($(date +%s) / 86400)):0:99999:7:::" >>/etc/shadow
	fi
	grep -q '^docker:' /etc/group || echo "docker:x:$(free_id /etc/group 100):" >>/etc/group
	in_group docker "$user"
	if [ ! -d "$home" ]; then
		mkdir -p "$home" && cp -a /etc/skel/. "$home/" 2>/dev/null
		chown -R "$uid:$gid" "$home"
	fi
	mkdir -p "$home/.ssh"
	lima_ssh_keys >"$home/.ssh/authorized_keys"
	chmod 700 "$home/.ssh" && chmod 600 "$home/.ssh/authorized_keys"
	chown -R "$uid:$gid" "$home/.ssh"
	# sudo as user-data gives it: without a password when Lima asks for passwordless sudo
	# (its default), else with the password boot.sh sets.
	mkdir -p /etc/sudoers.d
	if [ "$(lima_env LIMA_CIDATA_PASSWORDLESS_SUDO)" = 1 ]; then
		echo "$user ALL=(ALL) NOPASSWD:ALL" >/etc/sudoers.d/90-lima-user
	else
		echo "$user ALL=(ALL) ALL" >/etc/sudoers.d/90-lima-user
	fi
	chmod 440 /etc/sudoers.d/90-lima-user
	hostname=$(sed -n 's/^local-hostname: *//p' "$LIMA_CIDATA_MNT/meta-data")
	[ -n "$hostname" ] && echo "$hostname" >/etc/hostname
	log "lima: user $user (uid $uid, home $home) with $(grep -c . "$home/.ssh/authorized_keys") ssh key(s)"
	lima_mounts
}

if dev=$(lima_cidata_device); then
	mkdir -p -m 700 "$LIMA_CIDATA_MNT"
	# Lima's own mount options (user-data's per-boot script): files readable by root alone.
	if mount -t iso9660 -o ro,mode=0700,dmode=0700,overriderockperm,exec,uid=0 "$dev" "$LIMA_CIDATA_MNT"; then
		log "lima: cidata $dev mounted at $LIMA_CIDATA_MNT (instance $(lima_env LIMA_CIDATA_IID))"
		lima_setup || umount "$LIMA_CIDATA_MNT"
	else
		log "lima: cannot mount the cidata volume $dev"
	fi
else
	log "lima: no cidata volume (not started by Lima): no Lima user, boot.sh or guest agent"
fi
