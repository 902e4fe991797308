# x86_64 programs on an arm64 guest (`docker run --platform linux/amd64`): binfmt_misc hands
# x86_64 ELF files to a translator — Rosetta when the VMM shares it (virtio-fs tag `rosetta`,
# vfkit `--device rosetta`), else QEMU's user-mode emulator when the profile installs it
# (package qemu-x86_64). Flag F: the kernel opens the translator now, so it also works in
# containers, whose root does not have it. The magic and mask match x86_64 executables and
# shared objects (QEMU's scripts/qemu-binfmt-conf.sh; vfkit v0.6.4 doc/usage.md, Rosetta,
# registers Rosetta with the same line).
if [ "$(uname -m)" = aarch64 ]; then
	translator=
	mkdir -p /media/rosetta
	if mount -t virtiofs -o ro rosetta /media/rosetta 2>/dev/null; then
		translator=/media/rosetta/rosetta
	elif [ -x /usr/bin/qemu-x86_64 ]; then
		translator=/usr/bin/qemu-x86_64
	fi
	rmdir /media/rosetta 2>/dev/null
	if [ -n "$translator" ]; then
		binfmt=/proc/sys/fs/binfmt_misc
		[ -e "$binfmt/register" ] || mount -t binfmt_misc binfmt_misc "$binfmt"
		magic='\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x3e\x00'
		mask='\xff\xff\xff\xff\xff\xfe\xfe\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff'
		if printf ':x86_64:M::%s:%s:%s:F\n' "$magic" "$mask" "$translator" >"$binfmt/register"; then
			log "x86_64 programs run through $translator (binfmt_misc)"
		else
			log "x86_64 programs: cannot register $translator with binfmt_misc"
		fi
	fi
fi
