# Lima's cidata volume as the lima overlay's boot steps and services read it (sourced).
LIMA_CIDATA_MNT=/mnt/lima-cidata

# A value of Lima's lima.env (KEY=VALUE lines, read as its boot.sh reads them).
lima_env() {
	sed -n "s/^$1=//p" "$LIMA_CIDATA_MNT/lima.env" | head -n 1
}
