# The two commands a newcomer needs: `make run` and `make test`. Everything else is a helper.
BUILD_DIR ?= build
BUILD_TYPE ?= Release
JOBS ?= $(shell nproc)

.PHONY: all deps configure build run test bench bench-limits bench-risk bench-cache bench-cluster soak install clean test-asan test-tsan fuzz fuzz-build fuzz-ci

all: build

deps:
	@scripts/install-deps

configure: deps
	@cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) > /dev/null

build: configure
	@cmake --build $(BUILD_DIR) -j $(JOBS)

# Starts the demo storefront on 127.0.0.1:9080 and sluice on 127.0.0.1:8080 (admin 9901).
# `make run CONF=conf/flash-sale.yaml`: the sale-night config (limits, risk, cache, switches).
CONF ?= conf/sluice.yaml
run: build
	@scripts/run-demo $(BUILD_DIR) $(CONF)

test: build
	@cd $(BUILD_DIR) && ctest --output-on-failure -j $(JOBS) --timeout 900

bench: build
	@bench/run $(BUILD_DIR)

# Installs under PREFIX (binary, /etc-style config dir, docs, systemd unit); DESTDIR stages it.
PREFIX ?= /usr/local
install: build
	@cmake --install $(BUILD_DIR) --prefix $(PREFIX)

# The limit phase's cost: sluice without rules, with rules on all six dimensions, and nginx with
# limit_req / limit_conn, side by side (bench/limits, docs/benchmarks.md).
bench-limits: build
	@bench/limits $(BUILD_DIR)

# Proxy CPU per request with the risk phase on vs the same config with risk off (bench/risk-e2e).
bench-risk: build
	@bench/risk-e2e $(BUILD_DIR)

# The micro-cache under a hot-item storm: sluice's cache vs nginx proxy_cache microcaching, side by
# side, with the upstream requests each lets through (bench/cache-storm, docs/benchmarks.md).
bench-cache: build
	@bench/cache-storm $(BUILD_DIR)

# Cluster scope: Redis round trips per request and CPU per request, scope local vs cluster
# (bench/cluster, docs/benchmarks.md).
bench-cluster: build
	@bench/cluster $(BUILD_DIR)

# Soak: humans, scalpers and floods through conf/flash-sale.yaml for SOAK_SECONDS (default 30 min)
# with reloads and Redis restarts; prints errors, RSS over time and latency percentiles
# (bench/soak, docs/benchmarks.md). Not part of `make test`.
SOAK_SECONDS ?= 1800
soak: build
	@SOAK_SECONDS=$(SOAK_SECONDS) bench/soak $(BUILD_DIR)

# Hardening (docs/security.md). Each uses its own build dir, so none disturbs `make test`.
# ASan+UBSan build of everything; ctest runs unit, e2e and fuzz-corpus tests against it, and any
# report fails its test.
ASAN_DIR ?= build-asan
test-asan: deps
	@cmake -S . -B $(ASAN_DIR) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSLUICE_SANITIZE=ON > /dev/null
	@cmake --build $(ASAN_DIR) -j $(JOBS)
	@cd $(ASAN_DIR) && ctest --output-on-failure -j $(JOBS) --timeout 900

# ThreadSanitizer: the unit tests and the e2e suites that run several workers.
TSAN_DIR ?= build-tsan
test-tsan: deps
	@cmake -S . -B $(TSAN_DIR) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSLUICE_TSAN=ON > /dev/null
	@cmake --build $(TSAN_DIR) -j $(JOBS)
	@cd $(TSAN_DIR) && ctest --output-on-failure -j $(JOBS) --timeout 900

# libFuzzer targets (clang); `make fuzz` runs each for FUZZ_SECONDS, `make fuzz-ci` for 20 s.
FUZZ_DIR ?= build-fuzz
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?=
fuzz-build: deps
	@cmake -S . -B $(FUZZ_DIR) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSLUICE_FUZZ=ON \
	  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ > /dev/null
	@cmake --build $(FUZZ_DIR) -j $(JOBS) --target sluice_fuzz

fuzz: fuzz-build
	@scripts/run-fuzz $(FUZZ_DIR) $(FUZZ_SECONDS) $(FUZZ_TARGETS)

fuzz-ci:
	@$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=20

clean:
	rm -rf $(BUILD_DIR) $(ASAN_DIR) $(TSAN_DIR) $(FUZZ_DIR)
