# muta-proxy: the commands README.md, CI (.ci/run) and operators use.
# Targets named in the issues (demo, test, bench) are contracts: extend, do not rename.

CARGO ?= cargo
DEMO_SECONDS ?= 20
export DEMO_SECONDS

.PHONY: all build release demo test lint doc check bench bench-smoke perf fuzz clean haproxy systemd-analyze attack soak

all: build

build:
	$(CARGO) build --locked

release:
	$(CARGO) build --locked --release

# The whole system on loopback (login, shard, two proxies, bots) for
# DEMO_SECONDS (default 20) or until Ctrl-C; ends with the bots' JSON summary.
demo:
	python3 scripts/demo.py

# Every test: unit, integration (real sockets on 127.0.0.1), tidy rules. The
# open-file limit is raised to the hard limit first: tests/conn_layer.rs opens
# 4,000 connections, both ends in the test process. tests/forwarders.rs runs
# players through a real HAProxy: Debian's package, installed if missing;
# tests/dist.rs verifies the systemd units with systemd-analyze (Debian's
# systemd package, installed if missing; nothing is started with it).
test: haproxy systemd-analyze
	ulimit -n "$$(ulimit -Hn)" 2>/dev/null; $(CARGO) test --locked

# The proxy under each class of attack beside 100 honest players, through a
# real HAProxy with send-proxy-v2 (scripts/attack.py): writes docs/attack.md
# and target/attack/results.json; fails if a class broke a criterion. About
# 5 minutes on 2 cores, after the release build.
attack: release haproxy
	ulimit -n "$$(ulimit -Hn)" 2>/dev/null; python3 scripts/attack.py

# The system played for 10 minutes while it is operated (scripts/soak.py):
# 1,000 bots that leave and come back through two proxies, the shard
# restarted once a minute, each proxy reloaded (SIGHUP) once a minute, every
# process's RSS every 10 s. Writes target/soak/results.json, docs/soak.md and
# docs/soak-rss.svg; fails if an echo was lost, duplicated or reordered on a
# connection not cut, a bot did not come back, or a proxy's RSS drifted more
# than 5 % after the first minute. About 11 minutes, plus the build.
soak: release
	ulimit -n "$$(ulimit -Hn)" 2>/dev/null; python3 scripts/soak.py

# Debian's HAProxy, for the tests and the benchmarks (as root, or with sudo).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
haproxy:
	@command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || { \
	  echo "== haproxy is not installed: installing Debian's package"; \
	  $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q haproxy; }

systemd-analyze:
	@command -v systemd-analyze >/dev/null 2>&1 || { \
	  echo "== systemd-analyze is not installed: installing Debian's systemd package"; \
	  $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends systemd; }

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --locked --no-deps --document-private-items

check: lint test bench-smoke doc

# The benchmarks (docs/performance.md): micro-benchmarks (event buffer vs
# crossbeam-channel, secpool vs malloc, cryptchan push/pull and the crypto
# floor, loopback TCP and the kernel floor) into target/bench/micro.md, built
# with the release profile the binaries use (no second build), then the load
# benchmark (direct, HAProxy and muta-proxy at 100 to 10,000 clients, a
# connection storm) into target/bench/results.json, docs/benchmarks.md and docs/bench-latency.png,
# then the OTC scenario (scripts/bench_otc.py: OTC bots through two HAProxy
# forwarders into the [otc] listener, against the same bots straight to
# muta-otserv, at 100, 1,000 and 5,000 sessions) into the same two files.
# Installs HAProxy (Debian) and matplotlib (PyPI) if missing. BENCH_LOADS,
# BENCH_SECONDS, BENCH_REPEAT, BENCH_PATHS, BENCH_STORM: see scripts/bench.py.
bench: release
	mkdir -p target/bench
	$(CARGO) bench --locked --profile release --bench event_buf | tee target/bench/micro.md
	$(CARGO) bench --locked --profile release --bench secpool | tee -a target/bench/micro.md
	$(CARGO) bench --locked --profile release --bench cryptchan | tee -a target/bench/micro.md
	$(CARGO) bench --locked --profile release --bench net_floor | tee -a target/bench/micro.md
	@python3 -c "import matplotlib" 2>/dev/null || python3 -m pip install -q matplotlib || echo "matplotlib unavailable: no plot"
	python3 scripts/bench.py
	python3 scripts/bench_otc.py

# The load benchmark's harness, quickly: every path and the storm at 20
# clients with the debug build, strict about failures, its outputs under
# target/bench-smoke. CI runs it so `make bench` cannot rot unnoticed; its
# figures mean nothing.
bench-smoke: build
	mkdir -p target/bench-smoke
	BENCH_BIN=target/debug BENCH_OUT=target/bench-smoke BENCH_DOCS=target/bench-smoke \
	BENCH_LOADS=20 BENCH_FOCUS=0 BENCH_SECONDS=2 BENCH_STORM=20 BENCH_STRICT=1 \
	python3 scripts/bench.py
	BENCH_BIN=target/debug BENCH_OUT=target/bench-smoke BENCH_DOCS=target/bench-smoke \
	OTC_LOADS=20 OTC_SECONDS=2 BENCH_STRICT=1 python3 scripts/bench_otc.py

# The proxy under the benchmark's load (PERF_CLIENTS, default 1000), profiled
# with `perf record -g` (valgrind --tool=callgrind where perf cannot run), from
# a build with frame pointers and full debug info. Reports in target/bench/;
# how to read them: docs/profiling.md.
perf:
	$(CARGO) build --locked --profile profiling
	@command -v perf >/dev/null || command -v valgrind >/dev/null || { \
		echo "installing linux-perf (Debian)"; apt-get install -y -q linux-perf || true; }
	BENCH_BIN=target/profiling python3 scripts/bench.py --perf

# The cargo-fuzz targets, FUZZ_SECONDS (60) each. Needs a nightly toolchain
# and cargo-fuzz (`cargo install cargo-fuzz`); CI runs the seeded stand-in
# (tests/proto_fuzz.rs) instead.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS = proxy_shard_decode client_filter login_decode channel cryptchan_pull config_files proxy_protocol otc
fuzz:
	@command -v cargo-fuzz >/dev/null || { echo "make fuzz needs cargo-fuzz (cargo install cargo-fuzz) and a nightly toolchain"; exit 1; }
	cd fuzz && for t in $(FUZZ_TARGETS); do cargo +nightly fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) || exit 1; done

clean:
	$(CARGO) clean
