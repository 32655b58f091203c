#!/usr/bin/env bash
# soak.sh - `make soak`: medroute-sim's county against a medrouted that is
# killed with SIGKILL at random instants and restarted on the same store.
#
#   scripts/soak.sh [BUILD_DIR]          (run from anywhere; default: build)
#   SOAK_SECONDS=300                     the simulated day's length
#   SOAK_KILL_MIN=2 SOAK_KILL_MAX=8      seconds between two kills (uniform)
#   SOAK_SEED=N                          kill instants and simulator schedule
#                                        (default: random, printed to replay)
#   SOAK_SCALE=N                         the simulator's --scale (default:
#                                        SOAK_SECONDS / 20, the demo's pace)
#   SOAK_SCAN_ROWS=N                     store.restart_scan_rows (default 50,
#                                        so that the restarts rebuild the
#                                        pending set through pinned messages)
#   SOAK_KILLS=0                         no kills (default 1: kill, as above)
#   SOAK_LINKS=1                         link chaos (default 0): the clients
#                                        reach the daemon through
#                                        scripts/linkchaos.py, which stalls
#                                        and cuts their connections
#   SOAK_LINK_GAP=3000-12000             ms between two events of one
#                                        connection (uniform), with SOAK_LINKS
#
# medrouted runs on a generated config (config/medroute.conf with ipc://
# endpoints, no HTTP listener, its store) in a temporary directory; the
# simulator's clients keep their outbox and seen-set on disk (--state-dir).
# Once the lead's capacity notice is acknowledged, the daemon gets SIGKILL
# every SOAK_KILL_MIN..SOAK_KILL_MAX s and is started again on the same store
# (it must answer `medroute status` within 15 s), until 10 s before the day
# ends; then the simulator waits for the last Acks and deliveries and writes
# its report.  The run fails unless, in that report:
#   - lost = 0: every message a sender saw acknowledged reached its
#     destination's application;
#   - duplicates = 0 and redelivered = 0: none reached it twice (only the
#     daemon is killed, never a handler, so not even a marked redelivery);
#   - stale = 0 and errors (with misrouted) = 0: nothing was received that was
#     not sent, or by the wrong facility, and no Error came;
#   - unacked = 0: every message sent was acknowledged in the end;
# and unless the simulator exited 0, at least one kill happened (unless
# SOAK_KILLS=0), and the daemon, after the last restart, stops on SIGTERM
# with status 0.  Every wait is bounded; the processes started here are
# killed on any exit.  The work directory is removed after a pass and kept
# (its path printed) after a failure.
#
# With SOAK_LINKS=1 the daemon listens for facilities on
# tcp://127.0.0.1:<a free port> (insecure, loopback) with heartbeats every
# 500 ms and a time-out of 2000 ms, and the simulator connects to the
# proxy's port instead: per connection, at random instants (SOAK_SEED), the
# proxy stalls it (nothing forwarded both ways, or one way, both sockets
# open) for 0.2-1.8 s or 2.6-10 s, so that the daemon ends sessions for
# silence while their connections stay and what the clients queued arrives
# afterwards, or cuts it (both sides closed at once, sometimes right after
# or in the middle of a burst of bytes).  It calms down 10 s before the day
# ends, when the kills stop.  Same verdict; the run also prints the proxy's
# stalls and cuts, the sessions the daemon ended for heartbeat_timeout
# (medrouted.log) and its late_acks counter (summed over the daemon's lives:
# read before each kill), and says so when no stall outlasted the time-out.
set -euo pipefail

BUILD=${1:-build}
if [[ ! -d $BUILD ]]; then
  echo "soak: build directory '$BUILD' not found (run 'make build' first)" >&2
  exit 2
fi
BUILD=$(cd "$BUILD" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DAEMON=$BUILD/daemon/medrouted
CLI=$BUILD/clients/cli/medroute
SIM=$BUILD/clients/sim/medroute-sim
for exe in "$DAEMON" "$CLI" "$SIM"; do
  if [[ ! -x $exe ]]; then
    echo "soak: $exe is missing (run 'make build' first)" >&2
    exit 2
  fi
done
command -v python3 >/dev/null || { echo "soak: python3 is needed to read the report" >&2; exit 2; }

SECONDS_=${SOAK_SECONDS:-300}
KILL_MIN=${SOAK_KILL_MIN:-2}
KILL_MAX=${SOAK_KILL_MAX:-8}
SEED=${SOAK_SEED:-$((RANDOM * 32768 + RANDOM))}
SCALE=${SOAK_SCALE:-$((SECONDS_ / 20 > 0 ? SECONDS_ / 20 : 1))}
KILLS=${SOAK_KILLS:-1}
LINKS=${SOAK_LINKS:-0}
if [[ ! $KILLS =~ ^[01]$ || ! $LINKS =~ ^[01]$ ]]; then
  echo "soak: SOAK_KILLS and SOAK_LINKS want 0 or 1" >&2
  exit 2
fi
LINK_GAP=${SOAK_LINK_GAP:-3000-12000}
if [[ ! $LINK_GAP =~ ^([0-9]+)-([0-9]+)$ ]] || ((BASH_REMATCH[1] < 100 ||
    BASH_REMATCH[2] < BASH_REMATCH[1])); then
  echo "soak: SOAK_LINK_GAP wants MIN-MAX milliseconds, 100 <= MIN <= MAX, not '$LINK_GAP'" >&2
  exit 2
fi
for v in SECONDS_ KILL_MIN KILL_MAX SEED SCALE; do
  if [[ ! ${!v} =~ ^[0-9]+$ ]]; then
    echo "soak: ${v%_} wants a whole number, not '${!v}'" >&2
    exit 2
  fi
done
if ((SECONDS_ < 20 || KILL_MIN < 1 || KILL_MAX < KILL_MIN)); then
  echo "soak: want SOAK_SECONDS >= 20 and 1 <= SOAK_KILL_MIN <= SOAK_KILL_MAX" >&2
  exit 2
fi
RANDOM=$SEED # the kill instants: the same for the same seed

WORK=$(mktemp -d "${TMPDIR:-/tmp}/medroute-soak.XXXXXX")
FAC=ipc://$WORK/facility.sock
OPS=ipc://$WORK/operator.sock
LOG=$WORK/medrouted.log
REPORT=$WORK/sim-report.json
HB_INTERVAL_MS=500  # with SOAK_LINKS=1
HB_TIMEOUT_MS=2000

daemon_pid=
sim_pid=
proxy_pid=
passed=

# alive PID, wait_gone PID TENTHS
source "$(dirname "${BASH_SOURCE[0]}")/proc.sh"

cleanup() {
  local pid
  for pid in "$sim_pid" "$proxy_pid" "$daemon_pid"; do
    if [[ -n $pid ]] && alive "$pid"; then
      kill -KILL "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  if [[ -n $passed ]]; then
    rm -rf "$WORK"
  else
    echo "soak: work files kept in $WORK (medrouted.log, sim.out, sim.err, sim-report.json$(
      ((LINKS)) && echo ", linkchaos.log"))" >&2
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() {
  echo "soak: FAILED - $*" >&2
  exit 1
}

# The embedded defaults, on ipc:// endpoints in WORK, without HTTP, with a
# short restart scan.
sed -e "s|^facility_endpoint = .*|facility_endpoint = \"$FAC\";|" \
    -e "s|^  restart_scan_rows = [0-9]*;|  restart_scan_rows = ${SOAK_SCAN_ROWS:-50};|" \
    -e "s|^operator_endpoint = .*|operator_endpoint = \"$OPS\";|" \
    -e "/^http_listen = /d" \
    -e "s|^data_dir = .*|data_dir = \"$WORK/var\";|" \
    "$ROOT/config/medroute.conf" >"$WORK/medroute.conf"
grep -q "^facility_endpoint = \"$FAC\"" "$WORK/medroute.conf" &&
  grep -q "^  restart_scan_rows = ${SOAK_SCAN_ROWS:-50};" "$WORK/medroute.conf" ||
  fail "could not rewrite config/medroute.conf's endpoints and restart_scan_rows"

# Link chaos: the facility endpoint on a free loopback port (kept over the
# restarts), short heartbeats, and the proxy in front of it.
if ((LINKS)); then
  port=$(python3 -c '
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')
  FAC=tcp://127.0.0.1:$port
  sed -i -e "s|^facility_endpoint = .*|facility_endpoint = \"$FAC\";|" \
      -e "s|^  heartbeat_interval_ms = [0-9]*;|  heartbeat_interval_ms = $HB_INTERVAL_MS;|" \
      -e "s|^  heartbeat_timeout_ms = [0-9]*;|  heartbeat_timeout_ms = $HB_TIMEOUT_MS;|" \
      "$WORK/medroute.conf"
  grep -q "^facility_endpoint = \"$FAC\"" "$WORK/medroute.conf" &&
    grep -q "^  heartbeat_interval_ms = $HB_INTERVAL_MS;" "$WORK/medroute.conf" &&
    grep -q "^  heartbeat_timeout_ms = $HB_TIMEOUT_MS;" "$WORK/medroute.conf" ||
    fail "could not rewrite config/medroute.conf's facility endpoint and heartbeats"
  python3 "$ROOT/scripts/linkchaos.py" --upstream "127.0.0.1:$port" --seed "$SEED" \
    --hb-interval-ms "$HB_INTERVAL_MS" --hb-timeout-ms "$HB_TIMEOUT_MS" \
    --gap-min-ms "${LINK_GAP%-*}" --gap-max-ms "${LINK_GAP#*-}" \
    --port-file "$WORK/linkchaos.port" --stats "$WORK/linkchaos.json" \
    >"$WORK/linkchaos.log" 2>&1 &
  proxy_pid=$!
  for ((i = 0; i < 50; i++)); do
    [[ -s $WORK/linkchaos.port ]] && break
    alive "$proxy_pid" || break
    sleep 0.1
  done
  [[ -s $WORK/linkchaos.port ]] || fail "linkchaos.py did not listen within 5 s:
$(tail -n 20 "$WORK/linkchaos.log")"
  SIM_FAC=tcp://127.0.0.1:$(<"$WORK/linkchaos.port")
else
  SIM_FAC=$FAC
fi

# The daemon's late_acks counter (0 if it does not answer within 1 s).
late_acks_now() {
  "$CLI" --operator "$OPS" status --json --timeout 1000 2>/dev/null | python3 -c '
import json, sys
try:
    cs = json.load(sys.stdin)["status"]["counters"]
    print(sum(int(c.get("value", 0)) for c in cs if c["name"] == "late_acks"))
except Exception:
    print(0)' || true
}

# Starts medrouted on the store and waits (15 s at most) until it answers.
start_daemon() {
  local i
  echo "--- soak: start $((kills + 1)) at $(date +%T.%N)" >>"$LOG"
  "$DAEMON" --config "$WORK/medroute.conf" >>"$LOG" 2>&1 &
  daemon_pid=$!
  for ((i = 0; i < 75; i++)); do
    alive "$daemon_pid" || fail "medrouted exited during start-up (after $kills kills); last lines of $LOG:
$(tail -n 20 "$LOG")"
    if "$CLI" --operator "$OPS" status --timeout 300 >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.2
  done
  fail "medrouted did not answer within 15 s (after $kills kills); last lines of $LOG:
$(tail -n 20 "$LOG")"
}

kills=0
start_daemon
echo "soak: medrouted up (pid $daemon_pid, work dir $WORK); seed $SEED, scale $SCALE," \
  "$( ((KILLS)) && echo "SIGKILL every ${KILL_MIN}-${KILL_MAX} s" || echo "no kills")" \
  "for ${SECONDS_} s$( ((LINKS)) &&
    echo ", link chaos every $LINK_GAP ms (linkchaos.py pid $proxy_pid, $SIM_FAC -> $FAC)")"

"$SIM" --endpoint "$SIM_FAC" --operator "$OPS" --duration "$SECONDS_" --scale "$SCALE" \
  --seed "$SEED" --state-dir "$WORK/sim-state" --report "$REPORT" \
  >"$WORK/sim.out" 2>"$WORK/sim.err" &
sim_pid=$!

# The day starts when the broker has acknowledged the lead's capacity notice
# (the simulator waits 5 s for its clients and 5 s for that Ack).
for ((i = 0; i < 150; i++)); do
  grep -q "published capacity" "$WORK/sim.out" 2>/dev/null && break
  alive "$sim_pid" || break
  sleep 0.1
done
grep -q "published capacity" "$WORK/sim.out" ||
  fail "medroute-sim did not start its day within 15 s; sim.err:
$(tail -n 20 "$WORK/sim.err")"
day_start=$(date +%s)
# The last 10 s of the day and the simulator's 10 s drain are for catching up.
stop_kills_at=$((day_start + SECONDS_ - 10))

# ---- the kills ---------------------------------------------------------------
late_acks=0 # the daemon's late_acks, summed over its lives
while ((KILLS)) && alive "$sim_pid"; do
  nap=$((KILL_MIN * 10 + RANDOM % ((KILL_MAX - KILL_MIN) * 10 + 1))) # tenths
  (($(date +%s) + nap / 10 < stop_kills_at)) || break
  sleep "$((nap / 10)).$((nap % 10))"
  alive "$sim_pid" || break
  ((LINKS)) && late_acks=$((late_acks + $(late_acks_now)))
  kill -KILL "$daemon_pid" 2>/dev/null || true
  wait "$daemon_pid" 2>/dev/null || true
  kills=$((kills + 1))
  start_daemon
  echo "soak: [$(($(date +%s) - day_start))s] kill $kills: SIGKILL, restarted (pid $daemon_pid)"
done
# Without kills, the chaos of the links goes on until the same instant.
while ((LINKS)) && alive "$sim_pid" && (($(date +%s) < stop_kills_at)); do
  sleep 0.5
done
if ((LINKS)); then
  kill -USR1 "$proxy_pid" 2>/dev/null || true
  echo "soak: [$(($(date +%s) - day_start))s] the links calm down"
fi

# ---- the drain: the simulator waits up to 10 s after its day ------------------
limit=$((day_start + SECONDS_ + 60))
while alive "$sim_pid" && (($(date +%s) < limit)); do
  sleep 0.5
done
if alive "$sim_pid"; then
  fail "medroute-sim still runs 60 s after its day ended; last lines of sim.err:
$(tail -n 20 "$WORK/sim.err")"
fi
sim_rc=0
wait "$sim_pid" || sim_rc=$?
sim_pid=
((LINKS)) && late_acks=$((late_acks + $(late_acks_now)))

# The daemon that served the drain must stop cleanly.
kill -TERM "$daemon_pid"
if ! wait_gone "$daemon_pid" 100; then
  fail "medrouted did not stop within 10 s of SIGTERM"
fi
daemon_rc=0
wait "$daemon_pid" || daemon_rc=$?
daemon_pid=

# The proxy writes its tallies when it stops.
proxy_rc=0
if ((LINKS)); then
  if alive "$proxy_pid"; then
    kill -TERM "$proxy_pid"
    wait_gone "$proxy_pid" 50 || fail "linkchaos.py did not stop within 5 s of SIGTERM"
    wait "$proxy_pid" || proxy_rc=$?
  else
    wait "$proxy_pid" || proxy_rc=$?
    proxy_rc="$proxy_rc (before it was told to stop)"
  fi
  proxy_pid=
fi

# ---- the verdict ---------------------------------------------------------------
[[ -s $REPORT ]] || fail "medroute-sim (exit $sim_rc) wrote no report; last lines of sim.err:
$(tail -n 20 "$WORK/sim.err")"
read -r sent acked delivered lost unacked dups unmarked redelivered stale errors < <(
  python3 -c '
import json, sys
s = json.load(open(sys.argv[1]))["summary"]
print(*(s[k] for k in ("sent", "acked", "delivered", "lost", "unacked", "duplicates",
                       "duplicates_unmarked", "redelivered", "stale", "errors")))' "$REPORT") ||
  fail "cannot read the summary of $REPORT"

# Starts whose pending set came partly from pinned messages.
pinned_starts=$(grep "event=store.opened" "$LOG" | grep -vc " pinned=0") || true
echo "soak: ${SECONDS_} s, $kills kills (every restart answered; $pinned_starts starts" \
  "read pinned messages), $sent messages sent," \
  "$acked acked, $delivered delivered; lost $lost, duplicates $dups ($unmarked unmarked)," \
  "redelivered $redelivered, received but not sent $stale, errors $errors, unacked $unacked"
if ((LINKS)); then
  read -r conns stalls short long between longest one_way cuts cuts_now cuts_burst cuts_mid < <(
    python3 -c '
import json, sys
s = json.load(open(sys.argv[1]))
s["one_way"] = s["stalls_up"] + s["stalls_down"]
print(*(s[k] for k in ("connections", "stalls", "stalls_short", "stalls_long", "stalls_between",
                       "longest_stall_ms", "one_way", "cuts", "cuts_now", "cuts_after_burst",
                       "cuts_mid_burst")))' "$WORK/linkchaos.json" 2>/dev/null) ||
    fail "linkchaos.py (exit $proxy_rc) wrote no tallies; last lines of linkchaos.log:
$(tail -n 20 "$WORK/linkchaos.log")"
  hb_timeouts=$(grep -c "event=facility.disconnected .* why=heartbeat_timeout" "$LOG") || true
  echo "soak: links: $conns connections; $stalls stalls ($short shorter than the" \
    "${HB_TIMEOUT_MS} ms time-out, $long longer than it and the ${HB_INTERVAL_MS} ms check," \
    "$between between; longest $longest ms; $one_way one way), $cuts cuts" \
    "($cuts_now at an instant, $cuts_burst after a burst, $cuts_mid in one);" \
    "the daemon ended $hb_timeouts sessions" \
    "for heartbeat_timeout and counted $late_acks late_acks"
  ((long > 0)) || echo "soak: note: no stall outlasted the daemon's heartbeat time-out" \
    "(${HB_TIMEOUT_MS} ms + ${HB_INTERVAL_MS} ms): the late acks were not put to the test"
fi

violations=()
((lost == 0)) || violations+=("$lost acknowledged messages never reached their destination")
((dups == 0)) || violations+=("$dups messages reached an application twice ($unmarked unmarked)")
((redelivered == 0)) || violations+=("$redelivered deliveries marked redelivered though no handler crashed")
((stale == 0)) || violations+=("$stale deliveries of messages nobody sent")
((errors == 0)) || violations+=("$errors Error events or misrouted deliveries (see sim.err)")
((unacked == 0)) || violations+=("$unacked messages never acknowledged")
((sim_rc == 0)) || violations+=("medroute-sim exited $sim_rc")
((kills > 0 || !KILLS)) || violations+=("no kill happened (SOAK_SECONDS too short for SOAK_KILL_MIN?)")
((daemon_rc == 0)) || violations+=("medrouted exited $daemon_rc after SIGTERM")
[[ $proxy_rc == 0 ]] || violations+=("linkchaos.py exited $proxy_rc (see linkchaos.log)")
if ((${#violations[@]} > 0)); then
  for v in "${violations[@]}"; do
    echo "soak: violation: $v" >&2
  done
  echo "soak: last lines of sim.err:" >&2
  grep -v "\] sent [0-9]*, acked" "$WORK/sim.err" | tail -n 15 >&2 || true
  fail "${#violations[@]} violations (replay with SOAK_SEED=$SEED)"
fi
passed=1
echo "soak: OK - nothing acknowledged was lost, nothing came twice, nothing came that was not sent"
