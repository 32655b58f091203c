#!/usr/bin/env bash
# valgrind.sh - the unit tests, then medrouted serving the demo simulator,
# under valgrind (memcheck).
#
#   bash scripts/valgrind.sh [BUILD_DIR]     (default: build; configured and built here)
#   VALGRIND_SIM_SECONDS=8                   the simulated day's length
#
# 1. Every unit test binary runs under
#    valgrind --error-exitcode=1 --leak-check=full; any memory error or leak
#    fails it.
# 2. medrouted (the embedded configuration, on free loopback ports, a fresh
#    store) runs under valgrind --error-exitcode=99 --leak-check=full while
#    medroute-sim plays a county day against it; then it gets SIGTERM and
#    must exit 0: 99 means valgrind found errors (its log is printed).
# Exit status 0 when both steps are clean, 1 otherwise.  Work files are kept
# in BUILD_DIR/valgrind/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD=${1:-${BUILD:-build}}
SIM_SECONDS=${VALGRIND_SIM_SECONDS:-8}

bash scripts/deps.sh fuzz
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$BUILD" -j"$(nproc)"
BUILD=$(cd "$BUILD" && pwd)
OUT=$BUILD/valgrind
rm -rf "$OUT"
mkdir -p "$OUT"

VG=(valgrind --error-exitcode=1 --leak-check=full --track-origins=yes --num-callers=30
    --suppressions="$ROOT/scripts/valgrind.supp")
failed=()

# ---- 1. unit tests ----------------------------------------------------------------
for t in "$BUILD"/tests/unit/test_*; do
  [[ -f $t && -x $t ]] || continue
  name=$(basename "$t")
  start=$(date +%s)
  rc=0
  (cd "$BUILD/tests/unit" && "${VG[@]}" --log-file="$OUT/$name.vg.log" "$t") \
    >"$OUT/$name.out" 2>&1 || rc=$?
  took=$(($(date +%s) - start))
  if [[ $rc -eq 0 ]]; then
    echo "valgrind: $name ok (${took}s)"
  else
    failed+=("$name")
    echo "valgrind: $name FAILED (exit $rc, ${took}s); valgrind says:" >&2
    grep -A40 -m3 "ERROR SUMMARY: [1-9]\|definitely lost: [1-9]\|Invalid \|uninitialised" \
      "$OUT/$name.vg.log" | head -80 >&2 || tail -30 "$OUT/$name.out" >&2
  fi
done

# ---- 2. medrouted with the simulator ------------------------------------------------
DAEMON=$BUILD/daemon/medrouted
CLI=$BUILD/clients/cli/medroute
SIM=$BUILD/clients/sim/medroute-sim
read -r fport oport hport < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(3)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')
FAC=tcp://127.0.0.1:$fport
OPS=tcp://127.0.0.1:$oport
sed -e "s|^facility_endpoint = .*|facility_endpoint = \"$FAC\";|" \
    -e "s|^operator_endpoint = .*|operator_endpoint = \"$OPS\";|" \
    -e "s|^http_listen = .*|http_listen = \"127.0.0.1:$hport\";|" \
    config/medroute.conf >"$OUT/medroute.conf"

daemon_pid=
cleanup() {
  if [[ -n $daemon_pid ]] && kill -0 "$daemon_pid" 2>/dev/null; then
    kill -KILL "$daemon_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT

valgrind --error-exitcode=99 --leak-check=full --track-origins=yes --num-callers=30 \
  --suppressions="$ROOT/scripts/valgrind.supp" --log-file="$OUT/medrouted.vg.log" \
  "$DAEMON" --config "$OUT/medroute.conf" --data-dir "$OUT/var" >"$OUT/medrouted.log" 2>&1 &
daemon_pid=$!

ready=
for ((i = 0; i < 150; i++)); do
  kill -0 "$daemon_pid" 2>/dev/null || break
  if "$CLI" --operator "$OPS" status --timeout 1000 >/dev/null 2>&1; then
    ready=1
    break
  fi
  sleep 0.2
done
if [[ -z $ready ]]; then
  echo "valgrind: medrouted did not come up under valgrind; its log:" >&2
  tail -20 "$OUT/medrouted.log" "$OUT/medrouted.vg.log" >&2 || true
  exit 1
fi

start=$(date +%s)
sim_rc=0
"$SIM" --endpoint "$FAC" --operator "$OPS" --duration "$SIM_SECONDS" \
  --report "$OUT/sim-report.json" >"$OUT/sim.out" 2>&1 || sim_rc=$?
"$CLI" --operator "$OPS" status >"$OUT/status.out" 2>&1 || true
kill -TERM "$daemon_pid"
daemon_rc=0
wait "$daemon_pid" || daemon_rc=$?
daemon_pid=
took=$(($(date +%s) - start))

# The simulator may lose the race against a daemon slowed 20-50x; that is
# reported, but only valgrind's verdict and the daemon's exit decide here.
if [[ $sim_rc -ne 0 ]]; then
  echo "valgrind: note: medroute-sim exited $sim_rc under the slowed daemon (see $OUT/sim.out)"
fi
if [[ $daemon_rc -eq 0 ]]; then
  echo "valgrind: medrouted + medroute-sim ok (${took}s; $(grep -c . "$OUT/medrouted.log") log lines)"
else
  failed+=(medrouted)
  if [[ $daemon_rc -eq 99 ]]; then
    echo "valgrind: medrouted: valgrind found errors; $OUT/medrouted.vg.log:" >&2
  else
    echo "valgrind: medrouted exited $daemon_rc after SIGTERM; $OUT/medrouted.vg.log:" >&2
  fi
  grep -v "^==[0-9]*== *$" "$OUT/medrouted.vg.log" | tail -80 >&2
fi

if [[ ${#failed[@]} -gt 0 ]]; then
  echo "valgrind: failed: ${failed[*]}" >&2
  exit 1
fi
echo "valgrind: unit tests and medrouted clean"
