# Host folders (`hyve run --share`): `hyve.shares=TAG:PATH,...` on the kernel command line,
# each PATH with its unusual bytes as %XX, mounted over virtio-fs (vfkit, QEMU). A share that
# cannot be mounted is reported; the boot goes on.
for entry in $(cmdline_value hyve.shares "" | tr ',' ' '); do
	tag=${entry%%:*}
	path=$(printf '%b' "$(echo "${entry#*:}" | sed 's/%\([0-9A-Fa-f][0-9A-Fa-f]\)/\\x\1/g')")
	if mkdir -p "$path" && mount -t virtiofs "$tag" "$path" 2>/run/hyve/share.err; then
		log "share $tag mounted at $path (virtio-fs)"
	else
		log "share $tag: cannot mount it at $path ($(cat /run/hyve/share.err)); is it on the VMM's command line?"
	fi
done
rm -f /run/hyve/share.err
