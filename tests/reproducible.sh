#!/bin/sh
# `make reproducible`: build PROFILE, then `hyve verify` it — a second build from the lock in
# other conditions (another directory, cold cache, time zone, locale, umask, thread count)
# compared byte for byte with the first. Exits non-zero, naming the file, on any difference.
#
# Environment: HYVE (the binary), PROFILE (name or path), WORK (scratch directory, replaced),
# and optionally ARCH, MIRROR, KEY (a public key file), LOCKFILE (default: the profile's),
# LOCKED=1 (the first build must not create or refresh the lock either), SOURCE_DATE_EPOCH,
# REPRO_TAMPER (a file name: flip one byte of it in the first build before
# verifying, to see the check fail).
set -eu

: "${HYVE:?set HYVE to the hyve binary}" "${PROFILE:?set PROFILE}" "${WORK:?set WORK}"
rm -rf "$WORK"
mkdir -p "$WORK/first" "$WORK/elsewhere"
WORK=$(cd "$WORK" && pwd)
HYVE=$(cd "$(dirname "$HYVE")" && pwd)/$(basename "$HYVE")
# The second build runs elsewhere, so a profile name becomes the path it names here.
case $PROFILE in
*/*) PROFILE=$(cd "$(dirname "$PROFILE")" && pwd)/$(basename "$PROFILE") ;;
*) [ -f "profiles/$PROFILE.toml" ] && PROFILE=$(pwd)/profiles/$PROFILE.toml ;;
esac

set -- --profile "$PROFILE"
[ -n "${ARCH:-}" ] && set -- "$@" --arch "$ARCH"
[ -n "${MIRROR:-}" ] && set -- "$@" --mirror "$MIRROR"
[ -n "${KEY:-}" ] && set -- "$@" --key "$(cd "$(dirname "$KEY")" && pwd)/$(basename "$KEY")"
if [ -n "${LOCKFILE:-}" ]; then
    mkdir -p "$(dirname "$LOCKFILE")"
    set -- "$@" --lockfile "$(cd "$(dirname "$LOCKFILE")" && pwd)/$(basename "$LOCKFILE")"
fi
[ "${LOCKED:-}" = 1 ] && set -- "$@" --locked

echo "== first build: cold cache, 1 thread, UTC, C locale, umask 022"
(umask 022 && TZ=UTC LANG=C "$HYVE" build "$@" --cache-dir "$WORK/cache-1" --jobs 1 --out "$WORK/first/out")

if [ -n "${REPRO_TAMPER:-}" ]; then
    echo "== REPRO_TAMPER: flipping one byte of $REPRO_TAMPER in the first build"
    python3 - "$WORK/first/out/$REPRO_TAMPER" <<'EOF'
import sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
b[len(b) // 2] ^= 1
open(p, "wb").write(b)
EOF
fi

echo "== second build and comparison: another directory, cold cache, 8 threads, another zone, locale and umask"
cd "$WORK/elsewhere"
umask 077
TZ=Pacific/Kiritimati LANG=de_DE.UTF-8 "$HYVE" verify "$@" --cache-dir "$WORK/cache-2" --jobs 8 \
    --against "$WORK/first/out" --keep "$WORK/second"
echo "== the second build is in $WORK/second"
