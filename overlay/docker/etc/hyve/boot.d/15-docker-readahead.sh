# containerd and dockerd (started by 27-docker-early.sh) read their binaries from the
# compressed root as they start: their page faults decompress them a block at a time, in
# series, which on an emulated CPU is seconds of their start (dockerd: 4.0-4.7 s from its
# exec to "Starting up", 2.1 s when read beforehand). Read both into the page cache now, in
# the background, on a CPU the module, data disk and clock steps leave idle.
if [ -n "$root_compressed" ]; then
	cat "$(command -v containerd)" "$(command -v dockerd)" >/dev/null 2>&1 &
fi
