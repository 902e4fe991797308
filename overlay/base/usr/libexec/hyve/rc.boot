#!/bin/sh
# Boot (inittab sysinit): each step in /etc/hyve/boot.d in name order, sourced so the steps
# share lib.sh and each other's variables. A failing step is logged; boot goes on, so the
# console shell is always reached.
. /usr/libexec/hyve/lib.sh
for step in /etc/hyve/boot.d/*.sh; do
	[ -f "$step" ] || continue
	. "$step" || log "boot step ${step##*/} failed (status $?)"
done
