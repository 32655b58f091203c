#!/usr/bin/env bash
# run.sh - `make bench`: every benchmark of issue 8 in one invocation, one table.
#
#   bench/run.sh [BUILD_DIR]      (from the repository root; default: build)
#
# Runs, one after the other on this machine and only on 127.0.0.1:
#   1. bench_ceiling      raw ZeroMQ forwarder, throughput      } three runs each,
#   2. bench_medroute     medrouted throughput, synchronous=FULL } interleaved;
#                         and once synchronous=NORMAL
#   3. bench_medroute     latency at 20 % and 50 % of the FULL throughput,
#      bench_ceiling      and the ceiling's round trip at the same offered
#                         rates, three runs each, interleaved
#   4. bench_medroute     backlog of BENCH_BACKLOG referrals for an offline facility
#   5. bench_medroute     the same number waiting in the senders' outboxes, flushed
#                         at once when the daemon starts (a burst)
#   6. peers/rabbitmq.sh  the same workload against a local RabbitMQ (if it
#                         starts), three runs
# collects their one-line JSON results in BUILD_DIR/bench-results/results.jsonl
# and prints one table with the ratios and a PASS/MISS mark per target
# (bench/report.py), which takes the median of each figure measured three
# times.  Each run is bounded in time; the whole takes 5-6 minutes on a
# 2-core machine.
#
# Knobs (environment): BENCH_SENDERS (4), BENCH_WINDOW (256), BENCH_SECS
# (10, measured seconds per medroute or RabbitMQ throughput run; half of it
# per latency run), BENCH_BACKLOG (1000000),
# BENCH_FILL_SECS (240), BENCH_DRAIN_SECS (120), BENCH_RABBITMQ (1; 0 skips it).
set -uo pipefail

BUILD=${1:-build}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [[ ! -d $BUILD ]]; then
  echo "bench: build directory '$BUILD' not found (run 'make build' first)" >&2
  exit 2
fi
BUILD=$(cd "$BUILD" && pwd)
B=$BUILD/bench
for exe in "$B/bench_ceiling" "$B/bench_medroute" "$B/bench_fsync"; do
  if [[ ! -x $exe ]]; then
    echo "bench: $exe is missing (configure with -DMR_BUILD_BENCH=ON and build)" >&2
    exit 2
  fi
done

SENDERS=${BENCH_SENDERS:-4}
WINDOW=${BENCH_WINDOW:-256}
SECS=${BENCH_SECS:-10}
BACKLOG=${BENCH_BACKLOG:-1000000}
FILL_SECS=${BENCH_FILL_SECS:-240}
DRAIN_SECS=${BENCH_DRAIN_SECS:-120}
LAT_SECS=$(( SECS / 2 > 3 ? SECS / 2 : 3 )) # each of the three latency runs
OUT=$BUILD/bench-results
mkdir -p "$OUT"
RES=$OUT/results.jsonl
: >"$RES"
NOTES=$OUT/notes.txt
: >"$NOTES"
common=(--senders "$SENDERS" --window "$WINDOW")

# Runs one benchmark under a time limit; appends its JSON line, or a note.
run() {
  local name=$1 limit=$2
  shift 2
  echo "bench: $name ..." >&2
  local line
  if line=$(timeout "$limit" "$@" 2>>"$OUT/$name.err" | tail -n 1) && [[ $line == \{* ]]; then
    echo "$line" | sed "s/^{/{\"run\":\"$name\",/" >>"$RES"
  else
    echo "$name: failed or timed out after ${limit}s (stderr: $OUT/$name.err)" >>"$NOTES"
    [[ $line == \{* ]] && echo "$line" | sed "s/^{/{\"run\":\"$name\",/" >>"$RES"
  fi
}

# Median of a field over the runs NAME_a, NAME_b, NAME_c, from results.jsonl.
median() {
  python3 - "$RES" "$1" "$2" <<'PY'
import json, sys
v = sorted(r[sys.argv[3]] for r in map(json.loads, open(sys.argv[1]))
           if r.get("run", "")[:-2] == sys.argv[2] and r["run"][-2:] in ("_a", "_b", "_c")
           and r.get(sys.argv[3]))
print(v[(len(v) - 1) // 2] if v else "")  # of two (a run failed), the lower
PY
}

if [[ ${BENCH_RABBITMQ:-1} != 0 ]]; then
  bash "$ROOT/scripts/deps.sh" bench >&2 ||
    echo "deps: could not install rabbitmq-server/librabbitmq-dev" >>"$NOTES"
fi

# the disk's fdatasync before and after: its stalls decide the tails
run fsync_before 30 "$B/bench_fsync" --duration-s 5
# three runs of the ceiling and of medroute FULL, interleaved: the table takes
# the median of each (the ceiling alone moved from 313 k to 417 k msg/s within
# minutes on this shared machine, and one run of each decided the ratio)
for k in a b c; do
  run "ceiling_$k" 60 "$B/bench_ceiling" --mode throughput --duration-s 5 "${common[@]}"
  run "medroute_full_$k" 120 "$B/bench_medroute" --mode throughput --sync full \
    --duration-s "$SECS" "${common[@]}"
done
run medroute_normal 120 "$B/bench_medroute" --mode throughput --sync normal --duration-s "$SECS" "${common[@]}"

max=$(median medroute_full msgs_per_s)
if [[ -n $max && $max != 0 ]]; then
  for pct in 20 50; do
    rate=$((max * pct / 100))
    # three runs of each, interleaved: the table takes the run with the
    # median p99 of each (one noisy neighbour on a shared 2-core machine
    # would otherwise decide the ratio)
    for k in a b c; do
      run "medroute_lat${pct}_$k" 120 "$B/bench_medroute" --mode latency --sync full \
        --rate "$rate" --duration-s "$LAT_SECS" "${common[@]}"
      run "ceiling_lat${pct}_$k" 60 "$B/bench_ceiling" --mode latency --rate "$rate" \
        --duration-s 3 "${common[@]}"
    done
  done
else
  echo "latency runs skipped: no medroute throughput to take 20 %/50 % of" >>"$NOTES"
fi

run backlog $((FILL_SECS + DRAIN_SECS + 180)) "$B/bench_medroute" --mode backlog --count "$BACKLOG" \
  --fill-s "$FILL_SECS" --drain-s "$DRAIN_SECS" "${common[@]}"
run outbox $((DRAIN_SECS + 120)) "$B/bench_medroute" --mode outbox --count "$BACKLOG" \
  --drain-s "$DRAIN_SECS" "${common[@]}"

if [[ ${BENCH_RABBITMQ:-1} != 0 ]]; then
  echo "bench: rabbitmq ..." >&2
  rc=0
  # three runs against one broker, as for medroute; the table takes the median
  lines=$(BENCH_RUNS=3 timeout 400 bash "$ROOT/bench/peers/rabbitmq.sh" "$BUILD" \
    --duration-s "$SECS" "${common[@]}" 2>"$OUT/rabbitmq.err" | grep '^{') || rc=$?
  if [[ -n $lines ]]; then
    k=0
    tags=(a b c)
    while IFS= read -r line && ((k < 3)); do
      echo "$line" | sed "s/^{/{\"run\":\"rabbitmq_${tags[k]}\",/" >>"$RES"
      k=$((k + 1))
    done <<<"$lines"
    [[ $rc == 0 ]] ||
      echo "rabbitmq: exit $rc after $k run(s) (stderr: $OUT/rabbitmq.err)" >>"$NOTES"
  else
    echo "rabbitmq: no result (exit $rc): $(tail -n 3 "$OUT/rabbitmq.err" | tr '\n' ' ')" >>"$NOTES"
  fi
else
  echo "rabbitmq: skipped (BENCH_RABBITMQ=0)" >>"$NOTES"
fi

run fsync_after 30 "$B/bench_fsync" --duration-s 5

python3 "$ROOT/bench/report.py" "$RES" "$NOTES" | tee "$OUT/table.md"
