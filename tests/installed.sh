#!/bin/sh
# hyve as an installed tool, run by `make test` after the test mirror is built: `cargo
# install` into a scratch root, then from an empty directory: the built-in profiles listed,
# `base` built from them (its lock in the working directory), a profile of the user's own
# elsewhere that extends the built-in `minimal` with an overlay of its own, clones of this
# repository under umask 022 and 077 building the same bytes, the completion script
# accepted by bash. Against the test mirror (a TEST FIXTURE, tests/mirror/README.md).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() {
	echo "installed hyve: $*" >&2
	exit 1
}

# The workspace's target dir, so the install reuses what the tests already compiled.
cargo install --quiet --locked --debug --path "$root/builder" --root "$work/install" --target-dir "$root/target"
hyve=$work/install/bin/hyve
mirror="--mirror file://$root/target/test-mirror --key $root/tests/keys/hyve-test-mirror.rsa.pub"
export HYVE_CACHE_DIR="$work/cache" HOME="$work/home" XDG_CONFIG_HOME= SOURCE_DATE_EPOCH=
unset HYVE_MIRROR HYVE_PROFILE_PATH

mkdir "$work/empty" && cd "$work/empty"
listed=$("$hyve" profiles)
for p in base minimal dev lima; do
	echo "$listed" | grep -q "^$p  *built in " || fail "hyve profiles does not list $p as built in: $listed"
done
# shellcheck disable=SC2086 # $mirror is two options
"$hyve" build --profile base --arch x86_64 $mirror --out out/base 2>"$work/base.log" || fail "building base: $(cat "$work/base.log")"
grep -q "profile base (built into hyve" "$work/base.log" || fail "the build did not say where base came from"
[ -s base.lock ] && [ -s out/base/initrd.img ] && [ -s out/base/kernel ] || fail "no base.lock or outputs in $(pwd): $(ls -R)"
# shellcheck disable=SC2086
"$hyve" build --profile base --arch x86_64 $mirror --locked --out out/base >/dev/null 2>"$work/base.log" ||
	fail "--locked with the built-in profile's lock in the working directory: $(cat "$work/base.log")"

mkdir -p "$work/mine/extra/etc"
echo mine >"$work/mine/extra/etc/mine.txt"
printf 'extends = "minimal"\noverlays = ["extra"]\n[output]\nlevel = 1\n' >"$work/mine/mine.toml"
# shellcheck disable=SC2086
"$hyve" build --profile "$work/mine/mine.toml" --arch x86_64 $mirror --out out/mine 2>"$work/mine.log" ||
	fail "building a profile that extends minimal: $(cat "$work/mine.log")"
[ -s "$work/mine/mine.lock" ] || fail "the lock of a profile file goes beside it"
# minimal's files are in its root image (output.root = "squashfs").
files=$("$hyve" inspect out/mine/root.squashfs)
for f in etc/mine.txt etc/hyve/docker.conf etc/hyve/boot.d/10-filesystems.sh; do
	echo "$files" | grep -q " $f\$" || fail "out/mine/root.squashfs has no $f"
done

# The same commit cloned under umask 022 and 077 (git applies the cloner's umask) builds the
# same bytes, and the same as the built-in profile: modes are normalised as git records them.
for mask in 022 077; do
	(umask $mask && git clone --quiet "$root" "$work/clone-$mask")
	# shellcheck disable=SC2086
	"$hyve" build --profile "$work/clone-$mask/profiles/base.toml" --arch x86_64 $mirror --lockfile base.lock \
		--out "out/clone-$mask" >/dev/null 2>"$work/clone.log" || fail "building base from a umask $mask clone: $(cat "$work/clone.log")"
done
for f in kernel initrd.img cmdline disk.img manifest.json sbom.spdx.json SHA256SUMS; do
	cmp -s out/clone-022/$f out/clone-077/$f || fail "$f differs between clones made under umask 022 and 077"
	cmp -s out/base/$f out/clone-022/$f || fail "$f differs between the built-in base and a clone's"
done

"$hyve" completions bash | bash -n || fail "bash rejects the completion script"
"$hyve" man | grep -q '^\.TH hyve 1' || fail "no manual page"
echo "installed hyve: built-in profiles, a user profile extending minimal, clones under umask 022 and 077, completions: ok"
