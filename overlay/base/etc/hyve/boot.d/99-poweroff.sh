# `hyve.poweroff` on the command line: power off as soon as boot is done (the boot tests'
# clean, checkable end). poweroff signals init, which runs rc.shutdown first.
if cmdline_has hyve.poweroff; then
	log "powering off (hyve.poweroff)"
	poweroff
fi
