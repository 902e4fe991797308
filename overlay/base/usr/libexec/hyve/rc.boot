#!/bin/sh
# Boot (inittab sysinit): each step in /etc/hyve/boot.d in name order, sourced so the steps
# share lib.sh and each other's variables. A failing step is logged; boot goes on, so the
# console shell is always reached.
. /usr/libexec/hyve/lib.sh
# /proc first: the kernel command line says how to boot (10-filesystems mounts the rest).
[ -e /proc/self ] || mount -t proc -o nosuid,nodev,noexec proc /proc
# On an emulated CPU (`hyve.emulated`: `hyve run` under QEMU's TCG) the boot runs without
# address-space randomization. TCG finds the code it translated by virtual address, so every
# process whose loader and libraries land at new random addresses is translated afresh:
# `/bin/true` takes 64 ms so, 16 ms without. What outlives the boot gets it back
# ($randomized in lib.sh: the services, udhcpc, bootlocal.sh, Lima's boot.sh); dockerd alone
# keeps running without it (services/30-dockerd in overlay/docker).
# 10-filesystems says which, once the console is there.
if [ -z "$HYVE_NORANDMAPS" ] && wants_norandmaps; then
	HYVE_NORANDMAPS=$(uname -m) && [ -n "$HYVE_NORANDMAPS" ] && export HYVE_NORANDMAPS &&
		exec "$setarch" -R "$0"
	HYVE_NORANDMAPS=
fi
for step in /etc/hyve/boot.d/*.sh; do
	[ -f "$step" ] || continue
	. "$step" || log "boot step ${step##*/} failed (status $?)"
done
