#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz with clang and runs each for a
# bounded time on a copy of its seed corpus; fails if any target finds a
# crash, a leak, a sanitizer report or a time-out.
#
#   bash scripts/fuzz.sh                 # every target, 20 s each
#   FUZZ_SECONDS=60 bash scripts/fuzz.sh
#   FUZZ_TARGETS="frame dispatch" bash scripts/fuzz.sh
#   BUILD_FUZZ=/tmp/build-fuzz bash scripts/fuzz.sh   # build directory (default build-fuzz)
#
# The repository is not modified: the seeds (tests/fuzz/corpus/<target>/ plus
# those the build writes) are copied to a temporary directory, which is
# removed at the end.  What a target finds is kept in
# $BUILD_FUZZ/fuzz-artifacts/ (crash-*, leak-*, timeout-*, oom-*); replay one
# with `$BUILD_FUZZ/tests/fuzz/fuzz_<target> <file>`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD=${BUILD_FUZZ:-build-fuzz}
SECS=${FUZZ_SECONDS:-20}
read -r -a TARGETS <<<"${FUZZ_TARGETS:-frame envelope payloads json dispatch config}"

bash scripts/deps.sh fuzz
CC=clang cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMR_FUZZ=ON \
  -DMR_BUILD_TESTS=OFF -DMR_BUILD_BENCH=OFF >/dev/null
cmake --build "$BUILD" --target fuzzers -j"$(nproc)"
BUILD=$(cd "$BUILD" && pwd)

work=$(mktemp -d "${TMPDIR:-/tmp}/mr-fuzz-XXXXXX")
trap 'rm -rf "$work"' EXIT
artifacts=$BUILD/fuzz-artifacts
mkdir -p "$artifacts"

export LSAN_OPTIONS="suppressions=$ROOT/tests/fuzz/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_stack_use_after_return=1}"

failed=()
for t in "${TARGETS[@]}"; do
  bin=$BUILD/tests/fuzz/fuzz_$t
  if [ ! -x "$bin" ]; then
    echo "fuzz: no target fuzz_$t" >&2
    failed+=("$t")
    continue
  fi
  corpus=$work/$t
  mkdir -p "$corpus"
  for seeds in "$ROOT/tests/fuzz/corpus/$t" "$BUILD/tests/fuzz/corpus/$t"; do
    if [ -d "$seeds" ]; then
      cp "$seeds"/* "$corpus"/ 2>/dev/null || true
    fi
  done
  log=$work/$t.log
  start=$(date +%s)
  rc=0
  # The first directory gets new inputs; the per-input time-out catches hangs.
  (cd "$work" && TMPDIR=$work "$bin" -max_total_time="$SECS" -rss_limit_mb=2048 \
    -detect_leaks=1 -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$artifacts/$t-" "$corpus") >"$log" 2>&1 || rc=$?
  took=$(($(date +%s) - start))
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  if [ "$rc" -eq 0 ]; then
    echo "fuzz: $t ok (${took}s, ${runs:-?} runs, corpus $(ls "$corpus" | wc -l) files)"
    continue
  fi
  failed+=("$t")
  echo "fuzz: $t FAILED (exit $rc after ${took}s)" >&2
  grep -v '^INFO:\|^#[0-9]' "$log" | tail -60 >&2
  for a in $(sed -n "s/.*Test unit written to \(.*\)$/\1/p" "$log"); do
    echo "fuzz: $t input: $a ($(stat -c %s "$a") bytes):" >&2
    od -An -tx1 -v "$a" | head -16 >&2
  done
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: failed: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz: all ${#TARGETS[@]} targets ran ${SECS}s each without a finding"
