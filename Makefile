# hyve — see README.md. Every target works from a clean clone.

CARGO ?= cargo
HYVE  := target/release/hyve
# The test mirror is packed with the debug build the tests use anyway.
HYVE_DEV := target/debug/hyve
MIRROR   := target/test-mirror
MIRROR_INPUTS := tests/mirror/build.sh $(wildcard tests/mirror/baselayout/*) $(wildcard tests/keys/*) $(wildcard builder/src/apk/*.rs)
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := index_parser package_reader version_parser manifest_reader disk_reader root_image_reader

.PHONY: all build test test-alpine lint unit installed image mirror demo bench fuzz reproducible clean

all: build

build:
	$(CARGO) build --release --locked

# The test command the README promises: lints, unit, integration and boot tests (the boot
# tests need the test mirror and QEMU; HYVE_REQUIRE_BOOT_TESTS=1 makes a skip a failure).
test: lint mirror unit installed

# The same boot tests against Alpine's own mirror, and every stock profile built from it
# (needs network; what .github/workflows/alpine.yml runs on GitHub's runners): for
# ALPINE_ARCH (default: the host's), from ALPINE_MIRROR, trusting Alpine's keys (and
# ALPINE_KEY, a public key file, if set); ALPINE_PROFILES narrows the stock profiles built
# (default: all); ALPINE_LOCKED=1 builds from profiles/*.lock, --locked. See tests/alpine.sh.
ALPINE_MIRROR ?= https://dl-cdn.alpinelinux.org/alpine
ALPINE_ARCH   ?= $(shell uname -m | sed 's/^arm64$$/aarch64/')
ALPINE_KEY    ?=
ALPINE_PROFILES ?=
ALPINE_LOCKED ?=
test-alpine: build
	HYVE=$(HYVE) CARGO=$(CARGO) MIRROR=$(ALPINE_MIRROR) ARCH=$(ALPINE_ARCH) KEY=$(ALPINE_KEY) PROFILES="$(ALPINE_PROFILES)" \
		LOCKED=$(ALPINE_LOCKED) sh tests/alpine.sh

# hyve installed with `cargo install` and run from an empty directory (tests/installed.sh).
installed: mirror
	sh tests/installed.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

unit:
	$(CARGO) test --locked --workspace

# The main job: build the `minimal` profile for the host arch from Alpine's mirror
# (HYVE_MIRROR overrides it) into out/minimal-<arch>/.
image: build
	$(HYVE) build --profile minimal

# TEST FIXTURE: an Alpine-layout mirror of Debian's binaries (see tests/mirror/README.md).
mirror: $(MIRROR)/.stamp

$(MIRROR)/.stamp: $(MIRROR_INPUTS)
	$(CARGO) build --locked
	tests/mirror/build.sh x86_64 $(MIRROR) $(HYVE_DEV)
	tests/mirror/build.sh aarch64 $(MIRROR) $(HYVE_DEV)
	touch $@

# Offline demo: the test mirror (Debian's binaries, a TEST FIXTURE) -> `hyve build --profile
# minimal` against it -> boot it in QEMU until it powers off. Its lock stays in target/demo.
demo: mirror build
	$(HYVE) build --profile minimal --mirror file://$(CURDIR)/$(MIRROR) --key tests/keys/hyve-test-mirror.rsa.pub \
		--lockfile target/demo/minimal.lock --cache-dir target/demo/cache --out target/demo/minimal
	$(HYVE) run target/demo/minimal --append hyve.poweroff --timeout 600

# Build REPRO_PROFILE, then `hyve verify` it: a second build from the lock in another
# directory, cache, time zone, locale, umask and thread count, compared byte for byte (what the
# release workflow does per profile and arch). Offline by default, against the test mirror;
# REPRO_ARCH picks the arch (default: the host's); for Alpine:
# make reproducible REPRO_MIRROR=https://dl-cdn.alpinelinux.org/alpine REPRO_KEY= REPRO_LOCK=
# (REPRO_LOCKED=1: the lock must exist and be current, as a release's committed lock.)
REPRO_PROFILE ?= minimal
REPRO_MIRROR  ?= file://$(CURDIR)/$(MIRROR)
REPRO_KEY     ?= tests/keys/hyve-test-mirror.rsa.pub
REPRO_LOCK    ?= target/reproducible-locks/$(REPRO_PROFILE).lock
REPRO_ARCH    ?=
REPRO_LOCKED  ?=
reproducible: build $(if $(findstring $(MIRROR),$(REPRO_MIRROR)),mirror)
	HYVE=$(HYVE) PROFILE=$(REPRO_PROFILE) ARCH=$(REPRO_ARCH) MIRROR=$(REPRO_MIRROR) KEY=$(REPRO_KEY) LOCKFILE=$(REPRO_LOCK) LOCKED=$(REPRO_LOCKED) \
		WORK=target/reproducible sh tests/reproducible.sh

# Speed and memory against the classic pipeline, side by side on this machine (never fails on
# a time): prints a table and writes target/bench/results.json. BENCH_RUNS, BENCH_BOOTS.
bench: mirror build
	python3 tests/bench/bench.py

# Each fuzz target for FUZZ_SECONDS seconds (needs cargo-fuzz; stable Rust via
# RUSTC_BOOTSTRAP), seeded with the real Alpine files, a small FAT image (dosfstools,
# mtools) and a small SquashFS image (squashfs-tools). Findings land in
# builder/fuzz/artifacts/ and fail the target.
fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	cd builder && for t in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/corpus/$$t && \
		case $$t in \
			index_parser) seeds=../tests/fixtures/alpine/apkindex ;; \
			package_reader) seeds=../tests/fixtures/alpine/packages ;; \
			disk_reader) seeds=../target/fuzz-seeds/disk_reader && mkdir -p $$seeds && rm -f $$seeds/esp.img && \
				mkfs.fat -C $$seeds/esp.img 256 >/dev/null && echo 'options console=ttyS0' >$$seeds/hyve.conf && \
				MTOOLS_SKIP_CHECK=1 mmd -i $$seeds/esp.img ::/loader && \
				MTOOLS_SKIP_CHECK=1 mcopy -i $$seeds/esp.img $$seeds/hyve.conf ::/loader/hyve.conf ;; \
			root_image_reader) seeds=../target/fuzz-seeds/root_image_reader && rm -rf $$seeds && mkdir -p $$seeds/tree/etc/hyve && \
				echo '{}' >$$seeds/tree/etc/hyve/manifest.json && ln -s manifest.json $$seeds/tree/etc/hyve/link && \
				mksquashfs $$seeds/tree $$seeds/root.squashfs -comp zstd -quiet -no-progress >/dev/null && rm -rf $$seeds/tree ;; \
			*) seeds= ;; \
		esac && \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$t fuzz/corpus/$$t $$seeds -- -max_total_time=$(FUZZ_SECONDS) -max_len=1048576 || exit 1; \
	done

clean:
	$(CARGO) clean
