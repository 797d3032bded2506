# muta-proxy: the commands README.md, CI (.ci/run) and operators use.
# Targets named in the issues (demo, test, bench) are contracts: extend, do not rename.

CARGO ?= cargo
DEMO_SECONDS ?= 20
export DEMO_SECONDS

.PHONY: all build release demo test lint doc check bench fuzz clean

all: build

build:
	$(CARGO) build --locked

release:
	$(CARGO) build --locked --release

# The whole system on loopback (login, shard, two proxies, bots) for
# DEMO_SECONDS (default 20) or until Ctrl-C; ends with the bots' JSON summary.
demo:
	python3 scripts/demo.py

# Every test: unit, integration (real sockets on 127.0.0.1), tidy rules.
test:
	$(CARGO) test --locked

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --locked --no-deps --document-private-items

check: lint test doc

# Micro-benchmarks (event buffer vs crossbeam-channel, secpool vs malloc);
# tables in target/bench/micro.md. Figures in docs/performance.md come from here.
bench:
	mkdir -p target/bench
	$(CARGO) bench --locked --bench event_buf | tee target/bench/micro.md
	$(CARGO) bench --locked --bench secpool | tee -a target/bench/micro.md

# The cargo-fuzz targets, FUZZ_SECONDS (60) each. Needs a nightly toolchain
# and cargo-fuzz (`cargo install cargo-fuzz`); CI runs the seeded stand-in
# (tests/proto_fuzz.rs) instead.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS = proxy_shard_decode client_filter login_decode channel cryptchan_pull config_files
fuzz:
	@command -v cargo-fuzz >/dev/null || { echo "make fuzz needs cargo-fuzz (cargo install cargo-fuzz) and a nightly toolchain"; exit 1; }
	cd fuzz && for t in $(FUZZ_TARGETS); do cargo +nightly fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) || exit 1; done

clean:
	$(CARGO) clean
