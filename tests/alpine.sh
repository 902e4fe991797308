#!/bin/sh
# `make test-alpine`: hyve against Alpine's own mirror, with Alpine's keys (needs network; what
# .github/workflows/alpine.yml runs on GitHub's runners). For ARCH: every stock profile built
# (from its committed lock, --locked, where profiles/NAME.lock exists), then the boot tests of
# ARCH and the mirror check against the same mirror — the tests `make test` runs against the
# test mirror. Outputs stay in target/alpine/PROFILE-ARCH/, consoles in target/boot-logs/.
#
# Environment: HYVE (the binary), MIRROR (default: Alpine's CDN), KEY (a public key file to
# trust besides Alpine's; default: none), ARCH (default: the host's), PROFILES (the stock
# profiles to build, space-separated; default: all), CARGO.
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
all_locked=1
for toml in profiles/*.toml; do
	profile=$(basename "$toml" .toml)
	case " ${PROFILES:-$profile} " in *" $profile "*) ;; *) continue ;; esac
	if [ -f "profiles/$profile.lock" ]; then
		lock="--locked"
	else
		all_locked=0
		lock="--lockfile=$work/$profile.lock"
	fi
	echo "== $profile for $ARCH from $MIRROR ($lock)"
	"$HYVE" build --profile "$toml" "$@" "$lock" --out "$work/$profile-$ARCH"
	cat "$work/$profile-$ARCH/SHA256SUMS"
done

# The boot tests build their own variants of the profiles; with every lock committed, they
# start from those locks' versions.
[ "$all_locked" = 1 ] && HYVE_TEST_LOCKS=$(pwd)/profiles && export HYVE_TEST_LOCKS
echo "== boot tests for $ARCH against $MIRROR"
HYVE_TEST_MIRROR=$MIRROR HYVE_TEST_MIRROR_KEY=${KEY:-alpine} HYVE_REQUIRE_BOOT_TESTS=1 \
	"$CARGO" test --release --locked --test boot -- "$ARCH" mirror_is_alpine
