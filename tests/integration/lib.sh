# lib.sh - what the shell integration tests share: counting checks, the
# summary and clean-up, free ports and starting the daemon.  Sourced by
# test_cli.sh, test_install.sh and test_prometheus.sh, which set PASSED=0 FAILED=0.

ok() {
    PASSED=$((PASSED + 1))
    echo "ok     $1"
}

bad() {
    FAILED=$((FAILED + 1))
    echo "FAILED $1${2:+ -- $2}"
}

# check DESCRIPTION DETAIL-ON-FAILURE COMMAND...: one check, passed when
# COMMAND succeeds.
check() {
    local what=$1 detail=$2
    shift 2
    if "$@"; then ok "$what"; else bad "$what" "$detail"; fi
}

# A failure after which nothing else can be checked.
fatal() {
    bad "$1" "${2:-}"
    finish
}

# ---- processes, the summary, clean-up ------------------------------------------
# A script sets TMP (removed at exit), names in CLEANUP_PIDS the variables
# that hold the processes it starts (e.g. "LISTEN_PID DAEMON_PID"), defines
# dump_log (its logs, printed when something failed) and calls lib_traps.

FINISHED=0

# stop_pid PID: SIGTERM, up to 5 s, then SIGKILL.  STOP_RC: its exit status.
STOP_RC=0
stop_pid() {
    local pid=$1
    STOP_RC=0
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || STOP_RC=$?
}

# The last line, "N passed, M failed"; exit status 0 only when none failed.
finish() {
    FINISHED=1
    [ "$FAILED" -eq 0 ] || dump_log
    echo "$PASSED passed, $FAILED failed"
    [ "$FAILED" -eq 0 ] && exit 0
    exit 1
}

cleanup() {
    local rc=$? v
    for v in ${CLEANUP_PIDS:-}; do
        stop_pid "${!v:-}"
    done
    if [ "$FINISHED" -eq 0 ]; then
        # Stopped by a signal or by an unexpected error under set -e.
        bad "the script ran to its end" "it stopped early with status $rc"
        dump_log
        echo "$PASSED passed, $FAILED failed"
        rc=1
    fi
    rm -rf "$TMP"
    exit "$rc"
}

lib_traps() {
    trap cleanup EXIT
    trap 'exit 130' INT TERM
}

# free_ports N: N free loopback TCP ports, space separated.
free_ports() {
    python3 -c '
import socket, sys
s = [socket.socket() for _ in range(int(sys.argv[1]))]
for x in s: x.bind(("127.0.0.1", 0))
print(" ".join(str(x.getsockname()[1]) for x in s))
for x in s: x.close()
' "$1"
}

# start_medrouted BINARY CONFIG LOG READY-COMMAND...: starts the daemon (its
# output appended to LOG) and waits, 10 s at most, until READY-COMMAND
# succeeds.  DAEMON_PID is its pid.  0 when up; 1 when it exited (a port taken
# meanwhile?), DAEMON_PID then empty; 2 when it runs but is not ready.
start_medrouted() {
    local bin=$1 conf=$2 log=$3
    shift 3
    # Under timeout(1) so that it cannot outlive a test killed from outside
    # (CTest's TIMEOUT); timeout passes our SIGTERM on and exits with the
    # daemon's status.  --foreground: pass it on once, to the daemon only
    # (without it timeout also signals its process group, and a second
    # SIGTERM that lands after the daemon has closed its signal watchers
    # while stopping kills it: exit 143).
    timeout --foreground -k 5 170 "$bin" --config "$conf" >>"$log" 2>&1 &
    DAEMON_PID=$!
    for _ in $(seq 50); do
        if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
            wait "$DAEMON_PID" 2>/dev/null || true
            DAEMON_PID=
            return 1
        fi
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    return 2
}
