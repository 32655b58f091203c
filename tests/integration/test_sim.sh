#!/usr/bin/env bash
# test_sim.sh - medroute-sim's report against a real medrouted: the counts
# that scripts/soak.sh judges a run by.
#
#   test_sim.sh MEDROUTED_PATH MEDROUTE_SIM_PATH MEDROUTE_CLI_PATH SOURCE_DIR
#
# The daemon runs on config/medroute.conf with ipc:// endpoints in a
# temporary directory and no HTTP listener.  Before the simulator starts,
# `medroute send` (as t-aihua) queues one imaging request for yx-imaging,
# which the simulator plays but never sent.  Then a 3 s simulated day with
# --state-dir must exit 0, and its report must count that one delivery as
# stale (received, not sent), and no loss, duplicate, unmarked duplicate,
# redelivery or unacknowledged message, with every message it sent
# delivered.  Every wait is bounded.  The last line is "N passed, M failed".
set -euo pipefail

if [ $# -ne 4 ]; then
    echo "usage: $0 MEDROUTED_PATH MEDROUTE_SIM_PATH MEDROUTE_CLI_PATH SOURCE_DIR" >&2
    exit 2
fi
MEDROUTED=$1
SIM=$2
CLI=$3
SOURCE_DIR=$4

PASSED=0
FAILED=0
# ok, bad, check, fatal, finish, stop_pid, start_medrouted
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
DAEMON_PID=
TMP=$(mktemp -d "${TMPDIR:-/tmp}/medroute-simtest.XXXXXX")
FAC_EP=ipc://$TMP/f.sock
OP_EP=ipc://$TMP/o.sock

dump_log() {
    local f
    for f in medrouted.log sim.out sim.err send.err; do
        if [ -f "$TMP/$f" ]; then
            echo "--- last lines of $f ---"
            tail -n 30 "$TMP/$f" || true
            echo "---"
        fi
    done
}

CLEANUP_PIDS="DAEMON_PID"
lib_traps

command -v python3 >/dev/null || fatal "prerequisite: python3 is installed"
[ -x "$MEDROUTED" ] || fatal "prerequisite: $MEDROUTED is executable"
[ -x "$SIM" ] || fatal "prerequisite: $SIM is executable"
[ -x "$CLI" ] || fatal "prerequisite: $CLI is executable"

sed -e "s|^facility_endpoint = .*|facility_endpoint = \"$FAC_EP\";|" \
    -e "s|^operator_endpoint = .*|operator_endpoint = \"$OP_EP\";|" \
    -e "/^http_listen = /d" \
    -e "s|^data_dir = .*|data_dir = \"$TMP/var\";|" \
    "$SOURCE_DIR/config/medroute.conf" >"$TMP/medroute.conf"

mr() { timeout 30 "$CLI" --endpoint "$FAC_EP" --operator "$OP_EP" "$@"; }

start_medrouted "$MEDROUTED" "$TMP/medroute.conf" "$TMP/medrouted.log" \
    mr status --timeout 300 || fatal "medrouted starts and answers status"

cat >"$TMP/img.json" <<JSON
{
  "accession_number": "NOT-FROM-THE-SIM-1",
  "patient": {"identifiers": [{"system": "cn-resident-id", "value": "530927195803142020"}]},
  "modality": "MODALITY_CT",
  "body_part": "CHEST",
  "clinical_question": "nodule?"
}
JSON
send_rc=0
mr send --as t-aihua --to yx-imaging --kind imaging_request --json "$TMP/img.json" \
    >"$TMP/send.out" 2>"$TMP/send.err" || send_rc=$?
check "a message the simulator did not send is acknowledged" "exit $send_rc, see send.err" \
    [ "$send_rc" -eq 0 ]

SIM_RC=0
timeout 60 "$SIM" --endpoint "$FAC_EP" --operator "$OP_EP" --duration 3 \
    --state-dir "$TMP/state" --report "$TMP/report.json" >"$TMP/sim.out" 2>"$TMP/sim.err" ||
    SIM_RC=$?
check "medroute-sim exits 0" "exit $SIM_RC" [ "$SIM_RC" -eq 0 ]

# summary KEY: the report's summary.KEY ("none" when absent).
summary() {
    python3 -c '
import json, sys
print(json.load(open(sys.argv[1]))["summary"].get(sys.argv[2], "none"))' "$TMP/report.json" "$1" \
        2>/dev/null || echo none
}
check_eq() {
    if [ "$2" = "$3" ]; then ok "$1"; else bad "$1" "expected '$2', got '$3'"; fi
}

check_eq "the delivery nobody in the run sent counts as stale" 1 "$(summary stale)"
for key in lost duplicates duplicates_unmarked redelivered unacked errors; do
    check_eq "the report counts $key = 0" 0 "$(summary "$key")"
done
SENT=$(summary sent)
check "the simulator sent messages" "sent = $SENT" [ "${SENT//[!0-9]/}" = "$SENT" -a "$SENT" != 0 ]
check_eq "every message it sent was delivered" "$SENT" "$(summary delivered)"
check "its output names unmarked duplicates and redeliveries" "see sim.out" \
    grep -q "duplicates 0 (0 not marked redelivered), redelivered 0, stale 1," "$TMP/sim.out"

stop_pid "$DAEMON_PID"
DAEMON_PID=
check_eq "medrouted stops with status 0 on SIGTERM" 0 "$STOP_RC"
finish
