# muta-proxy: the commands README.md, CI (.ci/run) and operators use.
# Targets named in the issues (demo, test, bench) are contracts: extend, do not rename.

CARGO ?= cargo
DEMO_SECONDS ?= 20
export DEMO_SECONDS

.PHONY: all build release demo test lint doc check bench clean

all: build

build:
	$(CARGO) build --locked

release:
	$(CARGO) build --locked --release

# Runs the system on loopback for DEMO_SECONDS (default 20), then stops it.
demo:
	./scripts/demo.sh

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

clean:
	$(CARGO) clean
