# Thin wrapper around CMake.  `make demo` and `make test` install what is
# missing (scripts/deps.sh), configure and build first.
BUILD ?= build
CMAKE_FLAGS ?= -DCMAKE_BUILD_TYPE=RelWithDebInfo
JOBS ?= $(shell nproc)

.PHONY: all deps configure build test demo bench clean asan

all: build

deps:
	@bash scripts/deps.sh

configure: deps
	@cmake -S . -B $(BUILD) $(CMAKE_FLAGS) >/dev/null

build: configure
	@cmake --build $(BUILD) -j$(JOBS)

test: build
	cd $(BUILD) && ctest --output-on-failure -j$(JOBS)

demo: build
	@bash scripts/demo.sh $(BUILD)

# The benchmarks of issue 8 (bench/run.sh): one table, 3-4 minutes.  What
# only they use (RabbitMQ and its C client, LMDB, RocksDB) is installed
# before CMake runs, which builds bench_rabbitmq only when it finds
# librabbitmq; BENCH_RABBITMQ=0 leaves RabbitMQ out.
bench:
	@if [ "$${BENCH_RABBITMQ:-1}" != 0 ]; then bash scripts/deps.sh bench || \
	  echo "bench: could not install what bench/run.sh uses; RabbitMQ is left out" >&2; fi
	@$(MAKE) --no-print-directory build
	@bash bench/run.sh $(BUILD)

# The whole suite under AddressSanitizer + UndefinedBehaviorSanitizer.
asan:
	@$(MAKE) test BUILD=build-asan CMAKE_FLAGS="-DCMAKE_BUILD_TYPE=Debug -DMR_SANITIZE=ON"

clean:
	rm -rf $(BUILD) build-asan

.PHONY: fuzz valgrind soak soak-links
FUZZ_SECONDS ?= 20
SOAK_SECONDS ?= 300

# The libFuzzer targets of tests/fuzz (clang, in build-fuzz/), each for
# FUZZ_SECONDS seconds on a copy of its seed corpus (scripts/fuzz.sh).
fuzz:
	@FUZZ_SECONDS=$(FUZZ_SECONDS) bash scripts/fuzz.sh

# The unit tests, and medrouted serving medroute-sim, under valgrind.
valgrind: build
	@bash scripts/valgrind.sh $(BUILD)

# medrouted killed with SIGKILL every 2-8 s and restarted on its store while
# medroute-sim plays a county day of SOAK_SECONDS seconds; fails if anything
# acknowledged is lost or anything reaches an application twice (scripts/soak.sh).
soak: build
	@SOAK_SECONDS=$(SOAK_SECONDS) bash scripts/soak.sh $(BUILD)

# The same through scripts/linkchaos.py, a proxy that stalls the clients'
# connections (past the daemon's heartbeat time-out, too) and cuts them.
soak-links: build
	@SOAK_SECONDS=$(SOAK_SECONDS) SOAK_LINKS=1 bash scripts/soak.sh $(BUILD)
