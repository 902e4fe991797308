# Lima's boot.sh, as the per-boot script Lima's user-data writes would run it (lima v2.2.0
# pkg/cidata/cidata.TEMPLATE.d/user-data): as root, LIMA_CIDATA_MNT set, once the network is
# up. In the background: the Docker host does not wait for it. Its output goes where Lima
# looks for it (`limactl start`'s hints and progress read /var/log/cloud-init-output.log).
# Its last act writes /run/lima-boot-done, which `limactl start` waits for.
. /usr/libexec/hyve/lima.sh
if grep -q " $LIMA_CIDATA_MNT " /proc/mounts && [ -x "$LIMA_CIDATA_MNT/boot.sh" ]; then
	(
		export LIMA_CIDATA_MNT
		# shellcheck disable=SC2086 # $randomized is a command's words (lib.sh)
		HYVE_NORANDMAPS='' $randomized "$LIMA_CIDATA_MNT/boot.sh" >>/var/log/cloud-init-output.log 2>&1
		log "lima: boot.sh exited with status $? (/var/log/cloud-init-output.log)"
	) </dev/null &
	log "lima: boot.sh started"
fi
