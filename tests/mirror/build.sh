#!/usr/bin/env bash
# TEST FIXTURE — builds an Alpine-layout mirror out of Debian's binaries, for hyve's boot
# tests and `make demo` on machines that cannot reach Alpine's mirrors. Nothing built here
# is Alpine; see tests/mirror/README.md for the package mapping.
#
#   tests/mirror/build.sh ARCH OUT HYVE
#     ARCH  x86_64 | aarch64
#     OUT   mirror root (target/test-mirror); writes OUT/v3.24/main/ARCH/
#     HYVE  the hyve binary (its own `pkg create` / `repo index` do the packing)
set -euo pipefail
trap 'echo "test mirror: $0 failed at line $LINENO (see ${work:-the work dir}/*.log if present)" >&2' ERR

arch=$1
out=$(mkdir -p "$2" && cd "$2" && pwd)
hyve=$(cd "$(dirname "$3")" && pwd)/$(basename "$3")
here=$(cd "$(dirname "$0")" && pwd)
key="$here/../keys/hyve-test-mirror.rsa"
branch=v3.24
repo="$out/$branch/main/$arch"
community="$out/$branch/community/$arch"
work="$out/.work/$arch"
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}

case $arch in
	x86_64) deb_arch=amd64 triplet=x86_64-linux-gnu loader=lib64/ld-linux-x86-64.so.2 ;;
	aarch64) deb_arch=arm64 triplet=aarch64-linux-gnu loader=lib/ld-linux-aarch64.so.1 ;;
	*) echo "unknown arch $arch (x86_64 or aarch64)" >&2; exit 2 ;;
esac

if [ "$deb_arch" != "$(dpkg --print-architecture)" ] && ! dpkg --print-foreign-architectures | grep -qx "$deb_arch"; then
	echo "test mirror: Debian's $deb_arch packages need 'dpkg --add-architecture $deb_arch && apt-get update' (as root)" >&2
	exit 1
fi

kernel_deb=$(apt-cache depends "linux-image-cloud-$deb_arch:$deb_arch" 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
kernel_deb=${kernel_deb%%:*}
if [ -z "$kernel_deb" ]; then
	echo "test mirror: apt-cache knows no linux-image-cloud-$deb_arch; run apt-get update" >&2
	exit 1
fi

# The docker host's packages: each Alpine name gets its Debian packages plus every shared
# library package they need (apt's closure of lib* packages and zlib1g, without perl
# modules), minus glibc itself (that is `musl`).
declare -A host_pkgs=(
	[docker-engine]="docker.io tini"
	[containerd]="containerd"
	[runc]="runc"
	[iptables]="iptables"
	[e2fsprogs]="e2fsprogs logsave"
	[e2fsprogs-extra]="e2fsprogs"
	[sfdisk]="fdisk"
	[blkid]="util-linux"
	[partx]="util-linux"
	[setarch]="util-linux"
	[openssh]="openssh-server openssh-client openssh-sftp-server"
	[sudo]="sudo"
	[bash]="bash"
	[docker-cli]="docker.io"
	[curl]="curl"
	[strace]="strace"
	[tcpdump]="tcpdump"
	[openssl]="openssl"
	[socat]="socat"
	[chrony]="chrony"
	[ca-certificates]="ca-certificates"
	[systemd-efistub]="systemd-boot-efi"
	[systemd-boot]="systemd-boot-efi"
)
# x86_64 programs on an arm64 guest: Alpine's qemu-x86_64 (community) is QEMU's user-mode
# emulator built --static (aports community/qemu/APKBUILD, build-static), as Debian's
# qemu-user-static is. Only arm64 guests need it (the download is ~56 MB).
[ "$arch" = aarch64 ] && host_pkgs[qemu-x86_64]="qemu-user-static"
lib_closure() {
	apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces --no-enhances \
		"${@/%/:$deb_arch}" 2>/dev/null | awk '/^[a-z]/{print $1}' | sed 's/:.*//' |
		{ grep -E '^(lib|zlib1g$)' || true; } | { grep -v -- '-perl$' || true; } | { grep -vxE 'libc6|libc-bin|libc-l10n|libc-dev-bin|libdebconfclient0|libaudit-common|libsemanage-common' || true; } |
		LC_ALL=C sort -u
}
declare -A host_libs=()
all_debs=()
for name in "${!host_pkgs[@]}"; do
	host_libs[$name]=$(lib_closure ${host_pkgs[$name]} | tr '\n' ' ')
	all_debs+=(${host_pkgs[$name]} ${host_libs[$name]})
done

rm -rf "$work" "$repo" "$community"
mkdir -p "$work/debs" "$repo" "$community"
mapfile -t debs < <(printf '%s\n' "$kernel_deb" busybox busybox-static libc6 "${all_debs[@]}" | LC_ALL=C sort -u)
# Architecture-specific packages by their :arch name; "Architecture: all" ones (certificates,
# config files) only by their plain name. One apt-cache call sorts them, one apt-get call
# fetches them all (a call per package costs minutes); if that fails, one by one, so the log
# names the package that is missing.
mapfile -t arch_all < <(apt-cache show --no-all-versions "${debs[@]}" 2>/dev/null |
	awk '/^Package:/ {p = $2} /^Architecture: all$/ {print p}' | LC_ALL=C sort -u)
wanted=()
for p in "${debs[@]}"; do
	if printf '%s\n' "${arch_all[@]}" | grep -qx -- "$p"; then wanted+=("$p"); else wanted+=("$p:$deb_arch"); fi
done
(
	cd "$work/debs"
	apt-get download -q "${wanted[@]}" >/dev/null 2>>"$work/apt.log" && exit 0
	for p in "${debs[@]}"; do
		apt-get download -q "$p:$deb_arch" >/dev/null 2>>"$work/apt.log" || apt-get download -q "$p" >/dev/null 2>>"$work/apt.log"
	done
) || {
	cat "$work/apt.log" >&2
	exit 1
}
# The applet list comes from running busybox, so it is taken from the host's own build of
# the same Debian package (identical configuration on every arch).
if [ "$deb_arch" != "$(dpkg --print-architecture)" ]; then
	(cd "$work/debs" && mkdir -p host && cd host && apt-get download -q busybox >/dev/null 2>>"$work/apt.log")
fi

extract() { # deb-name-prefix dir
	mkdir -p "$2"
	dpkg-deb -x "$(ls "$work/debs/$1"_*.deb | head -n1)" "$2"
}

# Debian version -> Alpine version: drop the epoch, keep upstream, -r<leading digits of the revision>.
alpine_version() {
	local v=${1#*:} up rev
	up=${v%-*}
	rev=${v##*-}
	[ "$up" = "$v" ] && rev=0
	rev=$(printf '%s' "$rev" | sed 's/[^0-9].*//')
	up=$(printf '%s' "$up" | sed 's/[+~].*//')
	echo "$up-r${rev:-0}"
}
deb_version() { dpkg-deb -f "$(ls "$work/debs/$1"_*.deb | head -n1)" Version; }

pack() { # name version dir [extra pkg create args...]
	local name=$1 version=$2 dir=$3 dest=$repo
	shift 3
	# Where Alpine keeps them: the docker engine in community, the rest in main.
	case $name in docker-engine | containerd | runc | qemu-x86_64) dest=$community ;; esac
	"$hyve" pkg create "$dir" --name "$name" --version "$version" --arch "$arch" \
		--description "TEST FIXTURE: $name repackaged from Debian by tests/mirror/build.sh" \
		--license "various (Debian)" --url "https://www.debian.org" \
		--sign "$key" -o "$dest/$name-$version.apk" "$@" 2>>"$work/pack.log"
}

# linux-virt: Debian's cloud kernel, at Alpine's path; every module, no modules.dep (hyve
# computes dependencies from .modinfo).
kdir="$work/linux-virt"
extract "$kernel_deb" "$work/kernel-deb"
krel=$(ls "$work/kernel-deb/lib/modules")
mkdir -p "$kdir/boot" "$kdir/lib"
cp "$work/kernel-deb/boot/vmlinuz-$krel" "$kdir/boot/vmlinuz-virt"
cp "$work/kernel-deb/boot/config-$krel" "$kdir/boot/config-virt"
cp -a "$work/kernel-deb/lib/modules" "$kdir/lib/"
pack linux-virt "$(alpine_version "$(deb_version "$kernel_deb")")" "$kdir"

# busybox: Debian's dynamically linked build, like Alpine's (linked against musl, so its
# loader lives in /lib*), and the list of applet paths its post-install would link.
bdir="$work/busybox"
extract busybox "$work/busybox-deb"
mkdir -p "$bdir/bin" "$bdir/etc/busybox-paths.d"
cp "$work/busybox-deb/bin/busybox" "$bdir/bin/busybox"
if [ -d "$work/debs/host" ]; then
	dpkg-deb -x "$(ls "$work/debs/host"/busybox_*.deb)" "$work/busybox-host"
	runner="$work/busybox-host/bin/busybox"
else
	runner="$bdir/bin/busybox"
fi
"$runner" --list-full | sed 's|^|/|' | grep -v '^/bin/sh$' | LC_ALL=C sort >"$bdir/etc/busybox-paths.d/busybox"
printf '#!/bin/sh\n/bin/busybox --install -s\n' >"$work/busybox.post-install"
bb_version=$(alpine_version "$(deb_version busybox)")
pack busybox "$bb_version" "$bdir" --depends "so:libc.musl-$arch.so.1" --provides "cmd:busybox=$bb_version" \
	--post-install "$work/busybox.post-install"

# busybox-static: the statically linked build at Alpine's path, /bin/busybox.static.
sdir="$work/busybox-static"
extract busybox-static "$work/busybox-static-deb"
mkdir -p "$sdir/bin"
cp "$work/busybox-static-deb/bin/busybox" "$sdir/bin/busybox.static"
bbs_version=$(alpine_version "$(deb_version busybox-static)")
pack busybox-static "$bbs_version" "$sdir" --provides "cmd:busybox.static=$bbs_version"

# busybox-binsh: /bin/sh.
shdir="$work/busybox-binsh"
mkdir -p "$shdir/bin"
ln -sf /bin/busybox "$shdir/bin/sh"
pack busybox-binsh "$bb_version" "$shdir" --depends "busybox" --provides "/bin/sh cmd:sh=$bb_version"

# musl: the C library Debian's dynamic binaries need (glibc and its loader).
mdir="$work/musl"
extract libc6 "$work/libc6-deb"
mkdir -p "$mdir/lib/$triplet" "$mdir/$(dirname "$loader")"
cp -a "$work/libc6-deb/lib/$triplet/." "$mdir/lib/$triplet/" 2>/dev/null || cp -a "$work/libc6-deb/usr/lib/$triplet/." "$mdir/lib/$triplet/"
[ -e "$mdir/$loader" ] || ln -sf "/lib/$triplet/$(basename "$loader")" "$mdir/$loader"
pack musl "$(alpine_version "$(deb_version libc6)")" "$mdir" --provides "so:libc.musl-$arch.so.1=1"

# alpine-baselayout-data: the /etc files Alpine's base layout ships.
ldir="$work/alpine-baselayout-data"
mkdir -p "$ldir/etc"
cp -a "$here/baselayout/." "$ldir/etc/"
chmod 640 "$ldir/etc/shadow"
pack alpine-baselayout-data 3.6.8-r1 "$ldir"

# keep_only DIR PATH: delete every file and symlink of DIR but DIR/PATH and the libraries
# (lib/, usr/lib/), for a package Alpine splits out of a bigger Debian one.
keep_only() {
	find "$1" \( -type f -o -type l \) ! -path "$1/$2" ! -path "$1/lib/*" ! -path "$1/usr/lib/*" -delete
}

# The docker host: Debian's binaries and their libraries under Alpine's names.
for name in $(printf '%s\n' "${!host_pkgs[@]}" | LC_ALL=C sort); do
	dir="$work/$name"
	for deb in ${host_pkgs[$name]} ${host_libs[$name]}; do
		extract "$deb" "$dir"
	done
	rm -rf "$dir/usr/share/doc" "$dir/usr/share/man" "$dir/usr/share/lintian" "$dir/usr/share/bug" \
		"$dir/etc/init.d" "$dir/etc/default" "$dir/lib/systemd/system" "$dir/usr/lib/systemd/system" "$dir/etc/logrotate.d"
	first=${host_pkgs[$name]%% *}
	extra=()
	if [ -f "$dir/etc/pam.d/other" ] && [ ! -e "$dir/etc/pam.d/common-auth" ]; then
		# libpam-runtime's /etc/pam.d/other includes the common-* files its postinst writes
		# (pam-auth-update); PAM reads "other" for every service, so write Debian's defaults.
		printf 'auth [success=1 default=ignore] pam_unix.so nullok\nauth requisite pam_deny.so\nauth required pam_permit.so\n' >"$dir/etc/pam.d/common-auth"
		printf 'account [success=1 new_authtok_reqd=done default=ignore] pam_unix.so\naccount requisite pam_deny.so\naccount required pam_permit.so\n' >"$dir/etc/pam.d/common-account"
		printf 'password [success=1 default=ignore] pam_unix.so obscure yescrypt\npassword requisite pam_deny.so\npassword required pam_permit.so\n' >"$dir/etc/pam.d/common-password"
		for f in common-session common-session-noninteractive; do
			printf 'session [default=1] pam_permit.so\nsession requisite pam_deny.so\nsession required pam_permit.so\nsession required pam_unix.so\n' >"$dir/etc/pam.d/$f"
		done
	fi
	case $name in
		# One Debian package holds both: the stub for Unified Kernel Images, the boot manager.
		systemd-efistub) find "$dir" -name 'systemd-boot*.efi' -delete ;;
		systemd-boot) find "$dir" -name 'linux*.efi.stub' -delete ;;
		docker-engine) extra=(--depends "containerd runc iptables") ;;
		docker-cli)
			# Only the client out of docker.io (Alpine splits it the same way).
			keep_only "$dir" usr/bin/docker
			;;
		openssh)
			# Debian's postinst makes the privilege separation user; Alpine's pre-install does.
			printf '#!/bin/sh\naddgroup -S sshd 2>/dev/null\nadduser -S -D -H -h /var/empty -s /sbin/nologin -G sshd -g sshd sshd 2>/dev/null\nexit 0\n' >"$work/openssh.pre-install"
			extra=(--pre-install "$work/openssh.pre-install")
			;;
		iptables)
			# Debian's postinst picks the variant with update-alternatives; Alpine's iptables
			# ships the nftables backend (xtables-nft-multi) under the plain names.
			for t in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
				ln -sf xtables-nft-multi "$dir/usr/sbin/$t"
			done
			;;
		containerd) extra=(--depends "runc") ;;
		sudo)
			# Alpine builds sudo --without-pam (aports main/sudo/APKBUILD); Debian's uses PAM,
			# whose /etc/pam.d/common-* pam-auth-update writes in a postinst. A PAM policy of
			# its own, local accounts only, makes it decide as a PAM-less sudo does.
			for service in sudo sudo-i; do
				printf 'auth required pam_unix.so\naccount required pam_unix.so\nsession required pam_permit.so\n' >"$dir/etc/pam.d/$service"
			done
			;;
		e2fsprogs)
			# Alpine keeps resize2fs (and tune2fs, e2label...) in e2fsprogs-extra.
			rm -f "$dir/sbin/resize2fs" "$dir/sbin/tune2fs" "$dir/sbin/e2label" "$dir/sbin/dumpe2fs" "$dir/sbin/debugfs"
			;;
		e2fsprogs-extra)
			keep_only "$dir" sbin/resize2fs
			extra=(--depends "e2fsprogs")
			;;
		qemu-x86_64)
			# Only the x86_64 emulator, at Alpine's path.
			mv "$dir/usr/bin/qemu-x86_64-static" "$work/qemu-x86_64.bin"
			rm -rf "$dir" && mkdir -p "$dir/usr/bin" && mv "$work/qemu-x86_64.bin" "$dir/usr/bin/qemu-x86_64"
			;;
		partx)
			# Only util-linux's partx (Alpine's partx package), at /usr/bin.
			keep_only "$dir" usr/bin/partx
			;;
		setarch)
			# Only util-linux's setarch (Alpine's setarch package).
			keep_only "$dir" usr/bin/setarch
			;;
		blkid)
			# Only util-linux's blkid (Alpine splits util-linux the same way), at /sbin.
			keep_only "$dir" sbin/blkid
			;;
		chrony)
			# chronyd drops to the user it was built with (Debian: _chrony; Alpine's package
			# adds chrony for its build the same way, in its pre-install).
			printf '#!/bin/sh\naddgroup -S _chrony 2>/dev/null\nadduser -S -D -H -h /var/lib/chrony -s /sbin/nologin -G _chrony -g _chrony _chrony 2>/dev/null\nexit 0\n' >"$work/chrony.pre-install"
			extra=(--pre-install "$work/chrony.pre-install")
			;;
		ca-certificates)
			# Debian assembles the bundle in its postinst; do it here.
			mkdir -p "$dir/etc/ssl/certs"
			find "$dir/usr/share/ca-certificates" -name '*.crt' | LC_ALL=C sort | xargs cat >"$dir/etc/ssl/certs/ca-certificates.crt"
			;;
	esac
	pack "$name" "$(alpine_version "$(deb_version "$first")")" "$dir" "${extra[@]}"
done

for r in "$repo" "$community"; do
	"$hyve" repo index "$r" --sign "$key" --description "hyve TEST FIXTURE mirror from Debian ($arch)" 2>>"$work/pack.log"
done
rm -rf "$work"
echo "test mirror: $repo ($(ls "$repo" | wc -l) files), $community ($(ls "$community" | wc -l) files)"
