#!/usr/bin/env bash
# demo.sh - `make demo`: a simulated county day through a real medrouted.
#
#   scripts/demo.sh [BUILD_DIR]        (run from the repository root; default: build)
#
# Starts medrouted with its embedded defaults (tcp://127.0.0.1:7700 facility,
# :7701 operator) on a fresh store under BUILD_DIR/demo, runs medroute-sim
# for 20 s, shows `medroute status`, the reserved-capacity ledger
# (`medroute slots`) and what is still open (`medroute open`), stops the
# daemon with SIGTERM and exits with the simulator's status (a failing
# `slots` or `open` fails the demo too).  The daemon is killed on any exit.
set -euo pipefail

BUILD=${1:-build}
if [[ ! -d $BUILD ]]; then
  echo "demo: build directory '$BUILD' not found (run 'make build' first)" >&2
  exit 2
fi
BUILD=$(cd "$BUILD" && pwd)
DAEMON=$BUILD/daemon/medrouted
CLI=$BUILD/clients/cli/medroute
SIM=$BUILD/clients/sim/medroute-sim
DEMO=$BUILD/demo
LOG=$DEMO/medrouted.log
for exe in "$DAEMON" "$CLI" "$SIM"; do
  if [[ ! -x $exe ]]; then
    echo "demo: $exe is missing (run 'make build' first)" >&2
    exit 2
  fi
done

daemon_pid=

# alive PID, wait_gone PID TENTHS
source "$(dirname "${BASH_SOURCE[0]}")/proc.sh"

cleanup() {
  if [[ -n $daemon_pid ]] && alive "$daemon_pid"; then
    kill -TERM "$daemon_pid" 2>/dev/null || true
    wait_gone "$daemon_pid" 50 || kill -KILL "$daemon_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT

header() {
  printf '\n=== %s\n' "$*"
}

header "1/6 starting medrouted (embedded defaults, store in ${DEMO#$PWD/}/var, log in ${LOG#$PWD/})"
rm -rf "$DEMO"
mkdir -p "$DEMO"
"$DAEMON" --data-dir "$DEMO/var" >"$LOG" 2>&1 &
daemon_pid=$!

ready=
for ((i = 0; i < 50; i++)); do
  if ! alive "$daemon_pid"; then
    echo "demo: medrouted exited during start-up; its log:" >&2
    tail -n 20 "$LOG" >&2 || true
    exit 1
  fi
  if "$CLI" status --timeout 300 >/dev/null 2>&1; then
    ready=1
    break
  fi
  sleep 0.2
done
if [[ -z $ready ]]; then
  echo "demo: medrouted did not answer within 10 s; its log:" >&2
  tail -n 20 "$LOG" >&2 || true
  exit 1
fi
echo "medrouted is up (pid $daemon_pid)"

header "2/6 medroute-sim: a county day in 20 s (the lead hospital publishes its capacity, then referrals, imaging and lab with 10 townships; one township drops off the network and comes back)"
sim_status=0
"$SIM" --duration 20 --report "$DEMO/sim-report.json" --state-dir "$DEMO/sim-state" || sim_status=$?

header "3/6 medroute status: what the broker holds now"
"$CLI" status || echo "demo: medroute status failed (exit $?)" >&2

header "4/6 medroute slots: the lead hospital's reserved-capacity ledger (CLAIMED = reserve taken by family-doctor referrals, GENERAL = general units taken by referrals, RELEASED = unclaimed reserve given to general use at the cut-off)"
view_status=0
"$CLI" slots || { view_status=$?; echo "demo: medroute slots failed (exit $view_status)" >&2; }

header "5/6 medroute open: referrals, imaging requests and lab orders not yet closed"
"$CLI" open || { view_status=$?; echo "demo: medroute open failed (exit $view_status)" >&2; }

header "6/6 stopping medrouted (SIGTERM)"
kill -TERM "$daemon_pid"
if wait_gone "$daemon_pid" 100; then
  daemon_status=0
  wait "$daemon_pid" || daemon_status=$?
  echo "medrouted stopped (exit $daemon_status)"
else
  echo "demo: medrouted did not stop within 10 s; killing it" >&2
  kill -KILL "$daemon_pid" 2>/dev/null || true
fi
daemon_pid=

if ((sim_status == 0 && view_status == 0)); then
  echo "demo: OK - every acknowledged message reached its destination (report: ${DEMO#$PWD/}/sim-report.json)"
elif ((sim_status != 0)); then
  echo "demo: FAILED - medroute-sim exited $sim_status (see above and ${LOG#$PWD/})" >&2
  exit "$sim_status"
else
  echo "demo: FAILED - medroute slots/open exited $view_status (see above and ${LOG#$PWD/})" >&2
  exit "$view_status"
fi
