# hyve — see README.md. Every target works from a clean clone.

CARGO ?= cargo
HYVE  := target/release/hyve
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := index_parser package_reader version_parser

.PHONY: all build test lint unit image fuzz clean

all: build

build:
	$(CARGO) build --release --locked

# The test command the README promises: lints, unit and integration tests.
test: lint unit

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

unit:
	$(CARGO) test --locked --workspace

# The main job: build the `minimal` profile for the host arch from Alpine's mirror
# (HYVE_MIRROR overrides it) into out/minimal-<arch>/.
image: build
	$(HYVE) build --profile minimal

# Each fuzz target for FUZZ_SECONDS seconds (needs cargo-fuzz; stable Rust via
# RUSTC_BOOTSTRAP), seeded with the real Alpine files. Findings land in
# builder/fuzz/artifacts/ and fail the target.
fuzz:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	cd builder && for t in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/corpus/$$t && \
		case $$t in \
			index_parser) seeds=../tests/fixtures/alpine/apkindex ;; \
			package_reader) seeds=../tests/fixtures/alpine/packages ;; \
			*) seeds= ;; \
		esac && \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$t fuzz/corpus/$$t $$seeds -- -max_total_time=$(FUZZ_SECONDS) -max_len=1048576 || exit 1; \
	done

clean:
	$(CARGO) clean
