#!/bin/sh
# `make test-alpine`: hyve against Alpine's own mirror, with Alpine's keys (needs network; what
# .github/workflows/alpine.yml runs on GitHub's runners). For ARCH: every stock profile built,
# then the boot tests of ARCH and the mirror check against the same mirror — the tests `make
# test` runs against the test mirror. Outputs stay in target/alpine/PROFILE-ARCH/, consoles in
# target/boot-logs/.
#
# Locks: by default each profile is resolved afresh (what Alpine serves today: Alpine deletes
# superseded packages, so a committed lock stops building once one of its packages moves on).
# LOCKED=1 tests the locks in profiles/ instead (locks.yml, before it proposes new ones):
# every profile built from its lock with --locked, and the boot tests' builds started from
# those locks (HYVE_TEST_LOCKS).
#
# Environment: HYVE (the binary), MIRROR (default: Alpine's CDN), KEY (a public key file to
# trust besides Alpine's; default: none), ARCH (default: the host's), PROFILES (the stock
# profiles to build, space-separated; default: all), LOCKED, CARGO.
set -eu
: "${HYVE:?set HYVE to the hyve binary}"
MIRROR=${MIRROR:-https://dl-cdn.alpinelinux.org/alpine}
ARCH=${ARCH:-$(uname -m | sed 's/^arm64$/aarch64/')}
CARGO=${CARGO:-cargo}
work=target/alpine
mkdir -p "$work"
# The tests run in builder/: a key file by its absolute path.
[ -n "${KEY:-}" ] && KEY=$(cd "$(dirname "$KEY")" && pwd)/$(basename "$KEY")

set -- --arch "$ARCH" --mirror "$MIRROR" --cache-dir "$work/cache"
[ -n "${KEY:-}" ] && set -- "$@" --key "$KEY"
for toml in profiles/*.toml; do
	profile=$(basename "$toml" .toml)
	case " ${PROFILES:-$profile} " in *" $profile "*) ;; *) continue ;; esac
	if [ "${LOCKED:-}" = 1 ]; then
		lock=--locked
	else
		rm -f "$work/$profile.lock"
		lock=--lockfile=$work/$profile.lock
	fi
	echo "== $profile for $ARCH from $MIRROR ($lock)"
	"$HYVE" build --profile "$toml" "$@" "$lock" --out "$work/$profile-$ARCH"
	cat "$work/$profile-$ARCH/SHA256SUMS"
done

[ "${LOCKED:-}" = 1 ] && HYVE_TEST_LOCKS=$(pwd)/profiles && export HYVE_TEST_LOCKS
echo "== boot tests for $ARCH against $MIRROR"
log=$work/boot-tests-$ARCH.log
status=$work/boot-tests-$ARCH.status
rm -f "$status"
{
	if HYVE_TEST_MIRROR=$MIRROR HYVE_TEST_MIRROR_KEY=${KEY:-alpine} HYVE_REQUIRE_BOOT_TESTS=1 \
		"$CARGO" test --release --locked --test boot -- "_on_$ARCH" mirror_is_alpine_where_the_guest_depends_on_it; then
		echo 0 >"$status"
	fi
} 2>&1 | tee "$log"
[ -f "$status" ] || exit 1
# A filter that matches nothing passes: the tests must have run.
grep -q "^test mirror_is_alpine_where_the_guest_depends_on_it \.\.\. ok" "$log" &&
	grep -q "^test .*_on_$ARCH.* \.\.\. ok" "$log" || {
	echo "tests/alpine.sh: the mirror check or the $ARCH boot tests did not run (renamed?)" >&2
	exit 1
}
