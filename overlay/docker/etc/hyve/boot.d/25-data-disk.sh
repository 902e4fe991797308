# The persistent data disk, boot2docker's protocol renamed:
#  1. a filesystem labelled hyve-data is grown to the end of its disk when the disk grew,
#     checked (e2fsck -p), mounted at $HYVE_DATA and grown online to its partition;
#  2. else a whole disk that starts with "hyve, please format-me" (what `hyve disk create`
#     writes) and holds no signature blkid -p knows (file system, LUKS, RAID or LVM member,
#     partition table) gets its first 64 KiB (the user-data tar) saved, a GPT with one
#     partition, ext4 labelled hyve-data, and the user data unpacked onto it; a partition
#     that starts with the header (the hyve-data partition of a disk image) is formatted in
#     place the same way;
#  3. else everything stays in RAM, and the console says so.
# Docker's and containerd's state live on it (bind mounts), and so does the TLS material.
HYVE_FORMAT_MAGIC="hyve, please format-me"

disk_text() { # DEV OFFSET COUNT
	dd if="$1" bs=1 skip="$2" count="$3" 2>/dev/null
}

# Why DEV must not be formatted; nothing when it is only the format-me header. util-linux's
# blkid probes for every signature libblkid knows (file systems, LUKS, RAID and LVM members,
# partition tables) without its cache: a TYPE or PTTYPE is data; exit 2 means it found
# nothing, 8 several signatures (a partition alone gives only its PART_ENTRY_ values, exit
# 0). Exit 2 is also what a device blkid cannot open gives, with a warning (util-linux
# misc-utils/blkid.c `lowprobe_device`), so a 2 with a message is not taken for an empty
# disk (a read error while probing may still exit 2 silently: the format-me header, read
# just before, is the other check). Without it (a busybox blkid has no -p) nothing is
# formatted.
disk_holds_data() {
	name=${1#/dev/}
	if ls -d "/sys/block/$name/$name"* >/dev/null 2>&1; then
		echo "the kernel sees partitions on it"
		return
	fi
	found=$(blkid -p -o export "$1" 2>&1)
	status=$?
	signatures=$(echo "$found" | grep -E '^(TYPE|PTTYPE)=' | tr '\n' ' ')
	case $status in
		0) [ -z "$signatures" ] || echo "blkid -p finds ${signatures}on it" ;;
		2) [ -z "$found" ] || echo "blkid -p cannot probe it ($found)" ;;
		8) echo "blkid -p finds several signatures on it" ;;
		*) echo "blkid -p cannot probe it (${found:-no output}; util-linux's blkid is needed)" ;;
	esac
}

# Saves the user-data tar at the start of DEV (readable by root alone: it may hold a CA
# key), then zeroes it there, so no key stays in the gap before the data partition.
save_user_data() { # DEV
	(umask 077 && dd if="$1" of=/run/hyve/userdata.tar bs=65536 count=1 2>/dev/null) &&
		dd if=/dev/zero of="$1" bs=65536 count=1 conv=notrunc 2>/dev/null
}

# ext4 labelled hyve-data on DEV (already checked to hold no file system) -> data_dev
make_data_fs() { # DEV
	mkfs.ext4 -q -F -L hyve-data "$1" >/var/log/mkfs.log 2>&1 || { log "mkfs.ext4 failed on $1 (see /var/log/mkfs.log)"; return 1; }
	data_dev=$1
	data_new=1
}

format_data_disk() { # DEV
	save_user_data "$1" || return 1
	log "$1: formatting for data (GPT, ext4 labelled hyve-data); user data saved"
	printf 'label: gpt\nstart=2048, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="hyve-data"\n' |
		sfdisk --quiet "$1" >/var/log/sfdisk.log 2>&1 || { log "sfdisk failed on $1 (see /var/log/sfdisk.log)"; return 1; }
	case $1 in *[0-9]) part=${1}p1 ;; *) part=${1}1 ;; esac
	i=0
	while [ ! -b "$part" ] && [ $i -lt 50 ]; do
		[ $i = 10 ] && blockdev --rereadpt "$1" 2>/dev/null
		sleep 0.1
		i=$((i + 1))
	done
	[ -b "$part" ] || { log "$part did not appear after partitioning $1"; return 1; }
	make_data_fs "$part"
}

# A hyve-data partition that ends before its disk does (the disk file was enlarged with
# truncate, qemu-img resize or a VMM's disk setting — Lima enlarges disk.img to its `disk:`
# size) is grown to the end of the disk, with GPT's backup moved to the new end first. Only
# the last partition grows; nothing is ever shrunk or moved, and a disk the partition table
# of which sfdisk cannot read is left alone. The kernel re-reads the whole table when no
# partition of the disk is in use, else (disk.img's own root partition is mounted) partx
# tells it about this one partition (util-linux's partx, package partx in minimal).
grow_data_partition() { # DEV
	part=${1#/dev/}
	[ -e "/sys/class/block/$part/partition" ] || return 0
	disk=$(basename "$(readlink -f "/sys/class/block/$part/..")")
	start=$(cat "/sys/class/block/$part/start")
	end=$((start + $(cat "/sys/class/block/$part/size")))
	# 33 sectors at the end hold GPT's backup table and header; under 1 MiB is not worth it.
	[ $(($(cat "/sys/class/block/$disk/size") - 33 - end)) -ge 2048 ] || return 0
	for p in "/sys/class/block/$disk/$disk"*; do
		[ "$(cat "$p/start")" -gt "$start" ] && return 0
	done
	number=$(cat "/sys/class/block/$part/partition")
	{ sfdisk --relocate gpt-bak-std "/dev/$disk" &&
		echo ", +" | sfdisk --no-reread -N "$number" "/dev/$disk" &&
		{ blockdev --rereadpt "/dev/$disk" || partx -u -n "$number" "/dev/$disk"; }; } >/var/log/grow.log 2>&1 ||
		{ log "$1: could not grow it to the end of /dev/$disk (see /var/log/grow.log)"; return 0; }
	log "$1: partition grown to the end of /dev/$disk ($(($(cat "/sys/class/block/$part/size") / 2048)) MiB)"
}

format_data_partition() { # DEV
	save_user_data "$1" || return 1
	grow_data_partition "$1"
	log "$1: formatting for data in place (ext4 labelled hyve-data); user data saved"
	make_data_fs "$1"
}

data_dev=$(findfs LABEL=hyve-data 2>/dev/null)
data_new=
if [ -z "$data_dev" ]; then
	# Whole disks and partitions alike.
	for b in /sys/class/block/*; do
		dev=/dev/${b##*/}
		case ${b##*/} in loop* | ram* | sr* | zram* | nbd*) continue ;; esac
		[ "$(disk_text "$dev" 0 22)" = "$HYVE_FORMAT_MAGIC" ] || continue
		why=$(disk_holds_data "$dev")
		if [ -n "$why" ]; then
			log "$dev starts with \"$HYVE_FORMAT_MAGIC\" but $why: not formatting it"
			continue
		fi
		if [ -e "$b/partition" ]; then
			format_data_partition "$dev" && break
		else
			format_data_disk "$dev" && break
		fi
	done
fi
if [ -n "$data_dev" ]; then
	[ -z "$data_new" ] && grow_data_partition "$data_dev"
	e2fsck -p "$data_dev" >/var/log/e2fsck.log 2>&1
	fsck=$?
	if [ $fsck -ge 4 ]; then
		log "e2fsck found errors on $data_dev it cannot fix (status $fsck, /var/log/e2fsck.log); not mounting it"
		data_dev=
	elif ! mount -t ext4 -o noatime "$data_dev" "$HYVE_DATA"; then
		log "cannot mount $data_dev at $HYVE_DATA"
		data_dev=
	fi
fi
if [ -n "$data_dev" ]; then
	if [ -n "$data_new" ]; then
		tar -xf /run/hyve/userdata.tar -C "$HYVE_DATA" 2>/var/log/userdata.log || log "user data: tar failed (/var/log/userdata.log)"
		rm -f "$HYVE_DATA/$HYVE_FORMAT_MAGIC"
		[ -d "$HYVE_DATA/.ssh" ] && chmod -R go-rwx "$HYVE_DATA/.ssh"
		log "user data unpacked: $(cd "$HYVE_DATA" && find . -type f | sed 's|^\./||' | tr '\n' ' ')"
	else
		# The file system grows online to fill its partition (or whole disk) when that grew.
		before=$(df -m "$HYVE_DATA" | awk 'NR == 2 {print $2}')
		resize2fs "$data_dev" >/var/log/resize2fs.log 2>&1 || log "resize2fs $data_dev failed (see /var/log/resize2fs.log)"
		after=$(df -m "$HYVE_DATA" | awk 'NR == 2 {print $2}')
		[ "$after" -gt "$before" ] && log "data file system grown from $before to $after MiB"
	fi
	log "data disk $data_dev mounted at $HYVE_DATA ($(df -m "$HYVE_DATA" | awk 'NR == 2 {print $4}') MiB free)"
else
	log "no data disk (none labelled hyve-data or starting with \"$HYVE_FORMAT_MAGIC\"): Docker's data lives in RAM and is lost at power-off"
fi
rm -f /run/hyve/userdata.tar
for d in docker containerd; do
	mkdir -p "$HYVE_DATA/$d" "/var/lib/$d"
	mount --bind "$HYVE_DATA/$d" "/var/lib/$d"
done
