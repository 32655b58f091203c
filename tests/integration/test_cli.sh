#!/usr/bin/env bash
# test_cli.sh - end-to-end test of the `medroute` command line tool against a
# real medrouted, as an operator and two facilities would use them.
#
#   test_cli.sh MEDROUTED_PATH MEDROUTE_CLI_PATH SOURCE_DIR
#
# It writes its own config into a temporary directory (free loopback ports,
# data_dir there, insecure = true, lab_order ttl 2 s), starts the daemon and
# checks: send (payload file, whole envelope on stdin, one in lowerCamelCase),
# listen (online and offline, in order), the CLI's exit statuses for refusals
# and bad input, idempotent resend, a corrected message under an id still
# queued in --state-dir refused, expiry to the dead letters with retry and
# drop, the status table, that no patient data reaches the daemon's log, and
# a clean exit on SIGTERM.
#
# Every wait is bounded; everything talks to 127.0.0.1.  The last line is
# "N passed, M failed"; the exit status is 0 only when nothing failed.
set -euo pipefail

if [ $# -ne 3 ]; then
    echo "usage: $0 MEDROUTED_PATH MEDROUTE_CLI_PATH SOURCE_DIR" >&2
    exit 2
fi
MEDROUTED=$1
CLI=$2
SOURCE_DIR=$3

PASSED=0
FAILED=0
# ok, bad, check, fatal, finish, stop_pid, free_ports, start_medrouted
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
DAEMON_PID=
LISTEN_PID=
TMP=$(mktemp -d "${TMPDIR:-/tmp}/medroute-clitest.XXXXXX")

# For a failure's diagnosis: the daemon's last words, before the summary.
dump_log() {
    if [ -f "$TMP/medrouted.log" ]; then
        echo "--- last lines of medrouted.log ---"
        tail -n 40 "$TMP/medrouted.log" || true
        echo "---"
    fi
}

CLEANUP_PIDS="LISTEN_PID DAEMON_PID"
lib_traps

for tool in python3 timeout; do
    command -v "$tool" >/dev/null || fatal "prerequisite: $tool is installed"
done
[ -x "$MEDROUTED" ] || fatal "prerequisite: $MEDROUTED is executable"
[ -x "$CLI" ] || fatal "prerequisite: $CLI is executable"
[ -f "$SOURCE_DIR/config/medroute.conf" ] || fatal "prerequisite: $SOURCE_DIR is the source tree"

# jget PATH < JSON: the value at a dotted path (list indices are numbers):
# strings bare, booleans true/false, objects and lists as JSON, nothing when
# absent or when the input is not JSON.
JGET_PY='
import json, sys
try:
    d = json.loads(sys.stdin.read())
    for k in [p for p in sys.argv[1].split(".") if p]:
        if isinstance(d, list):
            d = d[int(k)] if int(k) < len(d) else None
        elif isinstance(d, dict):
            d = d.get(k)
        else:
            d = None
        if d is None:
            break
except Exception:
    d = None
if isinstance(d, bool):
    print("true" if d else "false")
elif isinstance(d, (dict, list)):
    print(json.dumps(d))
elif d is not None:
    print(d)
'
jget() { python3 -c "$JGET_PY" "$1"; }

# pending_of FACILITY < STATUS-JSON: the facility's pending count (proto3 JSON
# leaves out zeros), or nothing if the facility is not listed.
PENDING_PY='
import json, sys
try:
    st = json.loads(sys.stdin.read())["status"]
    for f in st.get("facilities", []):
        if f.get("facility_id") == sys.argv[1]:
            print(int(f.get("pending", 0)))
except Exception:
    pass
'
pending_of() { python3 -c "$PENDING_PY" "$1"; }

# field_of_lines PATH < JSON-LINES: jget over each line, space separated.
FIELDS_PY='
import json, sys
out = []
for line in sys.stdin:
    line = line.strip()
    if not line:
        continue
    try:
        d = json.loads(line)
        for k in sys.argv[1].split("."):
            d = d[int(k)] if isinstance(d, list) else d.get(k)
    except Exception:
        d = None
    out.append("?" if d is None else str(d))
print(" ".join(out))
'
field_of_lines() { python3 -c "$FIELDS_PY" "$1"; }

# ---- the broker ----------------------------------------------------------------

# start_daemon: picks two free loopback ports, writes the config, starts
# medrouted and waits (10 s at most) until `medroute status` answers.  0 when
# up; 1 when the daemon exited (e.g. a port was taken meanwhile); 2 when it
# runs but does not answer.
start_daemon() {
    local ports
    ports=$(free_ports 2) || return 1
    FAC_EP="tcp://127.0.0.1:${ports% *}"
    OP_EP="tcp://127.0.0.1:${ports#* }"
    cat >"$TMP/medroute.conf" <<EOF
# written by test_cli.sh
broker_id = "clitest-broker";
facility_endpoint = "$FAC_EP";
operator_endpoint = "$OP_EP";
data_dir = "$TMP/data";
insecure = true;
log_level = "info";
ttl = { lab_order = 2; };
facilities = (
  { id = "yx-lead";    role = "lead";           name = "Yun County People's Hospital"; },
  { id = "yx-imaging"; role = "imaging_centre"; name = "Regional imaging diagnosis centre"; host = "yx-lead"; },
  { id = "yx-lab";     role = "lab_centre";     name = "Regional clinical lab centre"; host = "yx-lead"; },
  { id = "t-aihua";    role = "township";       name = "Aihua town health centre"; },
  { id = "t-lishu";    role = "township";       name = "Lishu township health centre (remote, poor link)"; }
);
EOF
    start_medrouted "$MEDROUTED" "$TMP/medroute.conf" "$TMP/medrouted.log" \
        mr status --timeout 500
}

# The CLI, bounded by timeout(1) in case it hangs, always on our endpoints.
mr() { timeout 30 "$CLI" --endpoint "$FAC_EP" --operator "$OP_EP" "$@"; }

# run NAME COMMAND...: stdout to $TMP/NAME.out, stderr to $TMP/NAME.err,
# exit status in RC.
RC=0
run() {
    local name=$1
    shift
    RC=0
    "$@" >"$TMP/$name.out" 2>"$TMP/$name.err" || RC=$?
}

FAC_EP=
OP_EP=
UP=1
for attempt in 1 2 3; do
    UP=0
    start_daemon || UP=$?
    [ "$UP" -eq 1 ] || break
    echo "# medrouted exited at start (attempt $attempt): $(tail -n 3 "$TMP/medrouted.log" | tr '\n' ' ')"
done
[ "$UP" -ne 1 ] || fatal "medrouted starts" "it exited three times; see its log above"
[ "$UP" -eq 0 ] || fatal "medrouted answers \`medroute status\` within 10 s"
ok "medrouted is up and answers \`medroute status\`"

# ---- payloads ------------------------------------------------------------------

# Patient data that must travel, but never reach the daemon's log.
PATIENT_NAME="Bai Yuzhen"
RESIDENT_ID="53092719580314202X"
INSURANCE_ID="YB5309270042917"
PHONE="13987012345"
SECRETS=("$PATIENT_NAME" "$RESIDENT_ID" "$INSURANCE_ID" "$PHONE")

# referral_json REFERRAL_ID: a Referral payload (ICD-10 I21 up to cardiology).
referral_json() {
    cat <<EOF
{
  "referral_id": "$1",
  "patient": {
    "identifiers": [
      {"system": "cn-resident-id", "value": "$RESIDENT_ID"},
      {"system": "cn-insurance", "value": "$INSURANCE_ID"}
    ],
    "name": "$PATIENT_NAME",
    "birth_date": "1958-03-14",
    "sex": "SEX_FEMALE",
    "phone": "$PHONE"
  },
  "reasons": [{"system": "ICD-10", "code": "I21", "display": "Acute myocardial infarction"}],
  "service": "SERVICE_INPATIENT_BED",
  "department": "cardiology",
  "family_doctor_contract": true,
  "referring_practitioner": "Dr. Township GP",
  "clinical_summary": "chest pain 2 h, ST elevation V1-V4"
}
EOF
}

lab_order_json() {
    cat <<EOF
{
  "placer_order_number": "$1",
  "patient": {
    "identifiers": [{"system": "cn-resident-id", "value": "$RESIDENT_ID"}],
    "name": "$PATIENT_NAME"
  },
  "specimen": {"specimen_id": "SP-$1", "type": "serum"},
  "tests": [{"system": "LOINC", "code": "2345-7", "display": "Glucose"}]
}
EOF
}

referral_json "R-UP-1" >"$TMP/referral.json"

# ---- 1 + 2: a referral up, received by the lead (listening) ---------------------

echo "# 1-2: send a referral from t-aihua to yx-lead, listen at yx-lead"
# Started directly (not through mr) so that $! is timeout(1), which passes a
# SIGTERM on to the CLI.
timeout 30 "$CLI" --endpoint "$FAC_EP" --operator "$OP_EP" listen --as yx-lead --count 1 \
    --timeout 5000 >"$TMP/listen1.out" 2>"$TMP/listen1.err" &
LISTEN_PID=$!
run send1 mr send --as t-aihua --to yx-lead --kind referral --json "$TMP/referral.json"
SEQ1=$(jget seq <"$TMP/send1.out")
MID1=$(jget message_id <"$TMP/send1.out")
check "send --json FILE exits 0" "exit $RC, stderr: $(cat "$TMP/send1.err")" test "$RC" -eq 0
check "send prints one JSON line with \"ack\":true and a seq" "got: $(cat "$TMP/send1.out")" \
    test "$(wc -l <"$TMP/send1.out")" -eq 1 -a "$(jget ack <"$TMP/send1.out")" = true \
    -a -n "$SEQ1" -a -n "$MID1"

# The listener stops by itself after --count 1 or --timeout 5000; give it 10 s.
LRC=
for i in $(seq 100); do
    if ! kill -0 "$LISTEN_PID" 2>/dev/null; then
        LRC=0
        wait "$LISTEN_PID" || LRC=$?
        break
    fi
    sleep 0.1
done
if [ -z "$LRC" ]; then
    stop_pid "$LISTEN_PID"
    LRC=hung
fi
LISTEN_PID=
check "listen --count 1 exits 0 after its delivery" "exit $LRC, stderr: $(cat "$TMP/listen1.err")" \
    test "$LRC" = 0
check "listen prints exactly one JSON line" "got $(wc -l <"$TMP/listen1.out") lines" \
    test "$(wc -l <"$TMP/listen1.out")" -eq 1
check "the delivery has the sent message_id, source t-aihua, kind referral, ICD-10 I21" \
    "got: $(cat "$TMP/listen1.out")" \
    test "$(jget envelope.message_id <"$TMP/listen1.out")" = "$MID1" \
    -a "$(jget envelope.source <"$TMP/listen1.out")" = t-aihua \
    -a "$(jget envelope.kind <"$TMP/listen1.out")" = KIND_REFERRAL \
    -a "$(jget envelope.referral.reasons.0.code <"$TMP/listen1.out")" = I21 \
    -a "$(jget envelope.referral.reasons.0.system <"$TMP/listen1.out")" = ICD-10 \
    -a "$(jget envelope.referral.department <"$TMP/listen1.out")" = cardiology \
    -a "$(jget envelope.referral.family_doctor_contract <"$TMP/listen1.out")" = true \
    -a "$(jget envelope.referral.patient.identifiers.0.value <"$TMP/listen1.out")" = "$RESIDENT_ID" \
    -a "$(jget seq <"$TMP/listen1.out")" = "$SEQ1"

# ---- 3: a whole envelope on stdin ------------------------------------------------

echo "# 3: a second referral (its own referral number) as a whole Envelope on stdin"
python3 -c '
import json, sys
ref = json.load(open(sys.argv[1]))
ref["referral_id"] = "R-UP-2"   # a referral number is used once per sender
env = {"message_id": "env-stdin-1", "source": "t-aihua", "destination": "yx-lead",
       "kind": "KIND_REFERRAL", "priority": "PRIORITY_URGENT",
       "referral": ref}
print(json.dumps(env))
' "$TMP/referral.json" >"$TMP/envelope.json"
RC=0
mr send --as t-aihua --json - <"$TMP/envelope.json" >"$TMP/send3.out" 2>"$TMP/send3.err" || RC=$?
check "send --json - (a whole Envelope on stdin) exits 0 with \"ack\":true and its message_id" \
    "exit $RC, out: $(cat "$TMP/send3.out"), err: $(cat "$TMP/send3.err")" \
    test "$RC" -eq 0 -a "$(jget ack <"$TMP/send3.out")" = true \
    -a "$(jget message_id <"$TMP/send3.out")" = env-stdin-1
run listen3 mr listen --as yx-lead --count 1 --timeout 5000
check "yx-lead receives the stdin envelope (id, urgent, I21)" \
    "exit $RC, got: $(cat "$TMP/listen3.out")" \
    test "$RC" -eq 0 -a "$(wc -l <"$TMP/listen3.out")" -eq 1 \
    -a "$(jget envelope.message_id <"$TMP/listen3.out")" = env-stdin-1 \
    -a "$(jget envelope.priority <"$TMP/listen3.out")" = PRIORITY_URGENT \
    -a "$(jget envelope.referral.reasons.0.code <"$TMP/listen3.out")" = I21

# ---- 3b: an envelope in lowerCamelCase, its kind told by its payload key ----------

echo "# 3b: an Envelope written in lowerCamelCase, without a kind"
# protocol.md 9: input accepts lowerCamelCase keys; "imagingRequest" says the
# kind as "imaging_request" does (it was taken for a bare payload).
cat >"$TMP/camel.json" <<EOF
{"destination": "yx-imaging", "messageId": "env-camel-1",
 "imagingRequest": {"accessionNumber": "A-CAMEL-1", "modality": "DR"}}
EOF
run send3b mr send --as t-aihua --json "$TMP/camel.json"
check "send of a camelCase envelope without \"kind\" exits 0 with \"ack\":true" \
    "exit $RC, out: $(cat "$TMP/send3b.out"), err: $(cat "$TMP/send3b.err")" \
    test "$RC" -eq 0 -a "$(jget ack <"$TMP/send3b.out")" = true \
    -a "$(jget message_id <"$TMP/send3b.out")" = env-camel-1
run listen3b mr listen --as yx-imaging --count 1 --timeout 5000
check "yx-imaging receives it as an imaging request (A-CAMEL-1)" \
    "exit $RC, got: $(cat "$TMP/listen3b.out")" \
    test "$RC" -eq 0 -a "$(jget envelope.message_id <"$TMP/listen3b.out")" = env-camel-1 \
    -a "$(jget envelope.kind <"$TMP/listen3b.out")" = KIND_IMAGING_REQUEST \
    -a "$(jget envelope.imaging_request.accession_number <"$TMP/listen3b.out")" = A-CAMEL-1

# --id and --correlation override the envelope's fields in either spelling
# (both spellings at once were refused as a field given twice).
run send3c mr send --as t-aihua --id env-camel-2 --correlation corr-camel-2 --json - \
    < <(sed -e 's/"messageId": "env-camel-1"/"messageId": "env-camel-1", "correlationId": "x"/' \
        -e 's/A-CAMEL-1/A-CAMEL-2/' "$TMP/camel.json")
check "send --id/--correlation over a camelCase envelope's messageId/correlationId: ack under the new id" \
    "exit $RC, out: $(cat "$TMP/send3c.out"), err: $(cat "$TMP/send3c.err")" \
    test "$RC" -eq 0 -a "$(jget message_id <"$TMP/send3c.out")" = env-camel-2
run listen3c mr listen --as yx-imaging --count 1 --timeout 5000
check "yx-imaging receives it with the overriding id and correlation" \
    "exit $RC, got: $(cat "$TMP/listen3c.out")" \
    test "$RC" -eq 0 -a "$(jget envelope.message_id <"$TMP/listen3c.out")" = env-camel-2 \
    -a "$(jget envelope.correlation_id <"$TMP/listen3c.out")" = corr-camel-2 \
    -a "$(jget envelope.imaging_request.accession_number <"$TMP/listen3c.out")" = A-CAMEL-2

# ---- 4: refusals and bad input ---------------------------------------------------

echo "# 4: error exits"
run err_listen_as mr listen --as t-nowhere --timeout 5000
check "listen as a facility the broker does not know: exit 1, with the refusal" \
    "exit $RC, err: $(cat "$TMP/err_listen_as.err")" \
    test "$RC" -eq 1 -a -n "$(grep UNKNOWN_SOURCE "$TMP/err_listen_as.err")"
run err_dest mr send --as t-aihua --to t-nowhere --kind referral --json "$TMP/referral.json"
check "unknown destination: exit 1, \"ack\":false, code_name UNKNOWN_DESTINATION" \
    "exit $RC, out: $(cat "$TMP/err_dest.out"), err: $(cat "$TMP/err_dest.err")" \
    test "$RC" -eq 1 -a "$(jget ack <"$TMP/err_dest.out")" = false \
    -a "$(jget code_name <"$TMP/err_dest.out")" = UNKNOWN_DESTINATION

printf '{"referral_id": "R-BAD", ' >"$TMP/bad.json"
run err_json mr send --as t-aihua --to yx-lead --kind referral --json "$TMP/bad.json"
check "bad JSON: exit 2" "exit $RC, err: $(cat "$TMP/err_json.err")" test "$RC" -eq 2

run err_kind mr send --as t-aihua --to yx-lead --kind telegram --json "$TMP/referral.json"
check "unknown kind: exit 2" "exit $RC, err: $(cat "$TMP/err_kind.err")" test "$RC" -eq 2

# A kind number past int32 is no kind: 4294967297 is 1 once cut to an int,
# and went out as a referral.
referral_json "R-KIND-WRAP" | python3 -c '
import json, sys
print(json.dumps({"destination": "yx-lead", "kind": 4294967297, "referral": json.load(sys.stdin)}))
' >"$TMP/kind_wrap.json"
run err_kind_wrap mr send --as t-aihua --json "$TMP/kind_wrap.json"
check "an envelope of \"kind\": 4294967297: exit 2, nothing sent" \
    "exit $RC, out: $(cat "$TMP/err_kind_wrap.out"), err: $(cat "$TMP/err_kind_wrap.err")" \
    test "$RC" -eq 2 -a ! -s "$TMP/err_kind_wrap.out"

# --kind (or an envelope's "kind") that is not its payload's kind: --kind
# relabelled the envelope, which the broker refused as INVALID, or as
# FORBIDDEN when the sender may not send that kind, naming neither mistake.
referral_json "R-KIND-MISMATCH" | python3 -c '
import json, sys
print(json.dumps({"destination": "yx-lead", "referral": json.load(sys.stdin)}))
' >"$TMP/kind_mismatch.json"
run err_kind_mm mr send --as t-aihua --kind imaging_request --json "$TMP/kind_mismatch.json"
check "send --kind imaging_request of an envelope with a referral: exit 2, says so, nothing sent" \
    "exit $RC, out: $(cat "$TMP/err_kind_mm.out"), err: $(cat "$TMP/err_kind_mm.err")" \
    test "$RC" -eq 2 -a ! -s "$TMP/err_kind_mm.out" \
    -a -n "$(grep -F -- '--kind imaging_request does not match the envelope'"'"'s payload "referral"' \
             "$TMP/err_kind_mm.err")"
python3 -c '
import json, sys
env = json.load(open(sys.argv[1])); env["kind"] = "lab_order"; print(json.dumps(env))
' "$TMP/kind_mismatch.json" >"$TMP/kind_mismatch2.json"
run err_kind_mm2 mr send --as t-aihua --json "$TMP/kind_mismatch2.json"
check "send of an envelope of \"kind\": lab_order with a referral: exit 2, nothing sent" \
    "exit $RC, out: $(cat "$TMP/err_kind_mm2.out"), err: $(cat "$TMP/err_kind_mm2.err")" \
    test "$RC" -eq 2 -a ! -s "$TMP/err_kind_mm2.out" \
    -a -n "$(grep -F 'kind lab_order does not match' "$TMP/err_kind_mm2.err")"

run err_age mr open --older-than 999999999999999999d
check "open --older-than past any age: exit 2" "exit $RC, err: $(cat "$TMP/err_age.err")" \
    test "$RC" -eq 2

# medroute(1): "giving only one [of --key, --server-key] is a usage error";
# unreadable keys are bad input too (exit 2), for the operator commands as
# for send and listen.
run err_key1 mr --key "$TMP/nokey.key" status --timeout 500
check "status --key without --server-key: exit 2 (usage)" \
    "exit $RC, err: $(cat "$TMP/err_key1.err")" test "$RC" -eq 2
run err_key2 mr --key "$TMP/nokey.key" --server-key "$TMP/nokey.pub" queue ls
check "queue ls with unreadable key files: exit 2" \
    "exit $RC, err: $(cat "$TMP/err_key2.err")" test "$RC" -eq 2
run err_key3 mr --server-key "$TMP/nokey.pub" watch --timeout 500
check "watch --server-key without --key: exit 2 (usage)" \
    "exit $RC, err: $(cat "$TMP/err_key3.err")" test "$RC" -eq 2
run err_key4 mr --key "$TMP/nokey.key" send --as t-aihua --to yx-lead --kind referral \
    --json "$TMP/referral.json"
check "send --key without --server-key: exit 2 (usage)" \
    "exit $RC, err: $(cat "$TMP/err_key4.err")" test "$RC" -eq 2

# keygen writes DIR/NAME.key: a NAME that is no file name is bad usage, and
# a pair that exists already is a failure (the secret is never overwritten).
run err_kg1 mr keygen --out "$TMP/keys" --name ops/oncall
check "keygen --name ops/oncall: exit 2 (usage), nothing written" \
    "exit $RC, err: $(cat "$TMP/err_kg1.err")" test "$RC" -eq 2 -a ! -e "$TMP/keys"
run kg2 mr keygen --out "$TMP/keys" --name oncall
run err_kg3 mr keygen --out "$TMP/keys" --name oncall
check "keygen: a new pair exits 0, the same name again exits 1" \
    "exit $RC, err: $(cat "$TMP/err_kg3.err")" \
    test "$RC" -eq 1 -a -s "$TMP/keys/oncall.key" -a -s "$TMP/keys/oncall.pub"

# Key files mixed up, or a secret key others may read: exit 2, saying so
# (they timed out, exit 3, with a handshake the broker refused).
run err_swap mr --key "$TMP/keys/oncall.pub" --server-key "$TMP/keys/oncall.key" status --timeout 500
check "--key given a .pub: exit 2, named a public key file" \
    "exit $RC, err: $(cat "$TMP/err_swap.err")" \
    test "$RC" -eq 2 -a -n "$(grep 'is a public key file' "$TMP/err_swap.err")"
run err_swap2 mr --key "$TMP/keys/oncall.key" --server-key "$TMP/keys/oncall.key" status --timeout 500
check "--server-key given a .key: exit 2, named a secret key file" \
    "exit $RC, err: $(cat "$TMP/err_swap2.err")" \
    test "$RC" -eq 2 -a -n "$(grep 'is a secret key file' "$TMP/err_swap2.err")"
cp "$TMP/keys/oncall.key" "$TMP/keys/open.key"
chmod 644 "$TMP/keys/open.key"
run err_open mr --key "$TMP/keys/open.key" --server-key "$TMP/keys/oncall.pub" status --timeout 500
check "--key others may read: exit 2, chmod 600" \
    "exit $RC, err: $(cat "$TMP/err_open.err")" \
    test "$RC" -eq 2 -a -n "$(grep 'chmod 600' "$TMP/err_open.err")"
if [ "$(id -u)" -eq 0 ]; then
    # Another user's secret key: the library refuses it (-EPERM) whatever its
    # mode, and the CLI says what to do about an owner too.
    cp "$TMP/keys/oncall.key" "$TMP/keys/theirs.key"
    chmod 600 "$TMP/keys/theirs.key"
    chown 65534 "$TMP/keys/theirs.key"
    run err_owner mr --key "$TMP/keys/theirs.key" --server-key "$TMP/keys/oncall.pub" status --timeout 500
    check "--key another user owns: exit 2, chown" \
        "exit $RC, err: $(cat "$TMP/err_owner.err")" \
        test "$RC" -eq 2 -a -n "$(grep 'chown it' "$TMP/err_owner.err")"
else
    echo "# skip: --key another user owns (needs root to chown)"
fi

run err_src mr send --as t-nobody --to yx-lead --kind referral --json "$TMP/referral.json"
check "--as t-nobody: exit 1" "exit $RC, out: $(cat "$TMP/err_src.out"), err: $(cat "$TMP/err_src.err")" \
    test "$RC" -eq 1
check "--as t-nobody: the refusal is reported as UNKNOWN_SOURCE" \
    "out: $(cat "$TMP/err_src.out"), err: $(cat "$TMP/err_src.err")" \
    grep -q UNKNOWN_SOURCE "$TMP/err_src.out" "$TMP/err_src.err"

# ---- 5: an offline facility gets its messages later, in order ----------------------

echo "# 5: five referrals to t-lishu while it is offline"
sent5=0
for n in 1 2 3 4 5; do
    referral_json "R-$n" >"$TMP/r$n.json"
    run send5_$n mr send --as t-aihua --to t-lishu --kind referral --json "$TMP/r$n.json"
    if [ "$RC" -eq 0 ] && [ "$(jget ack <"$TMP/send5_$n.out")" = true ]; then
        sent5=$((sent5 + 1))
    fi
done
check "5 referrals R-1..R-5 to offline t-lishu are acknowledged" "$sent5 of 5" test "$sent5" -eq 5

run status5 mr status --json
P=$(pending_of t-lishu <"$TMP/status5.out")
check "status --json shows t-lishu pending 5" "exit $RC, pending '$P'" test "$RC" -eq 0 -a "$P" = 5

run queue5 mr queue ls --dest t-lishu
ROWS=$(grep -c -E '^[0-9]+ +[^ ]+ +t-aihua +t-lishu +referral ' "$TMP/queue5.out" || true)
check "queue ls --dest t-lishu lists 5 rows" "exit $RC, got: $(cat "$TMP/queue5.out")" \
    test "$RC" -eq 0 -a "$ROWS" -eq 5 -a "$(tail -n 1 "$TMP/queue5.out")" = "(5 pending)"
# Cut at --limit, the count is not what waits: the last line says so.
run queue5l mr queue ls --dest t-lishu --limit 2
ROWS=$(grep -c -E '^[0-9]+ +[^ ]+ +t-aihua +t-lishu +referral ' "$TMP/queue5l.out" || true)
check "queue ls --limit 2 lists 2 rows and says more may wait" \
    "exit $RC, got: $(cat "$TMP/queue5l.out")" \
    test "$RC" -eq 0 -a "$ROWS" -eq 2 -a \
    "$(tail -n 1 "$TMP/queue5l.out")" = "(first 2 pending: more may wait; raise --limit)"

run listen5 mr listen --as t-lishu --count 5 --timeout 10000
IDS=$(field_of_lines envelope.referral.referral_id <"$TMP/listen5.out")
check "listen --as t-lishu --count 5 prints R-1..R-5 in order" \
    "exit $RC, referral ids: '$IDS'" test "$RC" -eq 0 -a "$IDS" = "R-1 R-2 R-3 R-4 R-5"

# The last Ack may still be on its way when listen exits: poll, bounded.
P=
for i in $(seq 25); do
    P=$(mr status --json 2>/dev/null | pending_of t-lishu || true)
    [ "$P" = 0 ] && break
    sleep 0.2
done
check "status then shows t-lishu pending 0" "pending '$P' after 5 s" test "$P" = 0

# ---- 6: a resend with the same id is routed once ----------------------------------

echo "# 6: resend with --id fixed-1"
referral_json "R-RESEND" >"$TMP/resend.json"
run dup1 mr send --as t-aihua --to yx-imaging --kind referral --id fixed-1 --json "$TMP/resend.json"
RC1=$RC
run dup2 mr send --as t-aihua --to yx-imaging --kind referral --id fixed-1 --json "$TMP/resend.json"
SEQ_D1=$(jget seq <"$TMP/dup1.out")
check "first send --id fixed-1: ack, not a duplicate" "exit $RC1, got: $(cat "$TMP/dup1.out")" \
    test "$RC1" -eq 0 -a "$(jget ack <"$TMP/dup1.out")" = true \
    -a "$(jget duplicate <"$TMP/dup1.out")" = false -a -n "$SEQ_D1"
check "second send --id fixed-1: ack with \"duplicate\":true and the same seq" \
    "exit $RC, first: $(cat "$TMP/dup1.out"), second: $(cat "$TMP/dup2.out")" \
    test "$RC" -eq 0 -a "$(jget ack <"$TMP/dup2.out")" = true \
    -a "$(jget duplicate <"$TMP/dup2.out")" = true -a "$(jget seq <"$TMP/dup2.out")" = "$SEQ_D1"

run listen6 mr listen --as yx-imaging --count 2 --timeout 2000
check "listen --count 2 at yx-imaging gets fixed-1 exactly once" \
    "got: $(cat "$TMP/listen6.out")" \
    test "$(wc -l <"$TMP/listen6.out")" -eq 1 \
    -a "$(field_of_lines envelope.message_id <"$TMP/listen6.out")" = fixed-1
# `medroute help`: "exit status: 0 ok, 1 refused or failed, 2 bad usage or
# input, 3 time-out"; --count 2 was not reached within --timeout 2000.
check "listen that reaches --timeout before --count exits 3 (time-out, as documented)" \
    "exit $RC" test "$RC" -eq 3

# A send that timed out leaves its message in the --state-dir outbox; a
# corrected message under that id must not be dropped silently.
echo "# 6b: a corrected message under an id still queued in --state-dir"
referral_json "R-FIX" >"$TMP/fixa.json"
referral_json "R-FIX-CORRECTED" >"$TMP/fixb.json"
NOWHERE="ipc://$TMP/nobody.sock" # no broker there: nothing is acknowledged
run fix1 mr send --as t-aihua --to yx-imaging --kind referral --id fix-2 --json "$TMP/fixa.json" \
    --state-dir "$TMP/cli-state" --endpoint "$NOWHERE" --timeout 500
check "send --id fix-2 with no broker times out (exit 3)" "exit $RC" test "$RC" -eq 3
run fix2 mr send --as t-aihua --to yx-imaging --kind referral --id fix-2 --json "$TMP/fixb.json" \
    --state-dir "$TMP/cli-state" --endpoint "$NOWHERE" --timeout 500
check "a corrected fix-2 under the queued id: exit 1, and stderr says it was not sent" \
    "exit $RC, err: $(cat "$TMP/fix2.err")" \
    test "$RC" -eq 1 -a -n "$(grep -F 'not sent: message id fix-2' "$TMP/fix2.err" || true)"
run fix3 mr send --as t-aihua --to yx-imaging --kind referral --id fix-2 --json "$TMP/fixa.json" \
    --state-dir "$TMP/cli-state"
check "the first fix-2 again, stamped anew, reaches the broker: ack" \
    "exit $RC, got: $(cat "$TMP/fix3.out"), err: $(cat "$TMP/fix3.err")" \
    test "$RC" -eq 0 -a "$(jget ack <"$TMP/fix3.out")" = true
run listen6b mr listen --as yx-imaging --count 2 --timeout 2000
check "yx-imaging gets fix-2 once, with the queued content (R-FIX)" \
    "got: $(cat "$TMP/listen6b.out")" \
    test "$(wc -l <"$TMP/listen6b.out")" -eq 1 \
    -a "$(field_of_lines envelope.message_id <"$TMP/listen6b.out")" = fix-2 \
    -a "$(field_of_lines envelope.referral.referral_id <"$TMP/listen6b.out")" = R-FIX

# ---- 7: expiry to the dead letters, retry, drop -----------------------------------

echo "# 7: dead letters (lab_order ttl 2 s)"
lab_order_json "LO-EXP-1" >"$TMP/lab1.json"
run lab1 mr send --as t-aihua --to yx-lab --kind lab_order --json "$TMP/lab1.json"
SEQ_L1=$(jget seq <"$TMP/lab1.out")
check "lab_order to offline yx-lab is acknowledged" "exit $RC, got: $(cat "$TMP/lab1.out")" \
    test "$RC" -eq 0 -a -n "$SEQ_L1"
sleep 4
# The expiry sweep runs every second; allow a few more.
DEADROW=
for i in $(seq 20); do
    run dead1 mr queue ls --dead
    DEADROW=$(grep -E "^$SEQ_L1 " "$TMP/dead1.out" || true)
    case "$DEADROW" in *expired*) break ;; esac
    sleep 0.2
done
check "queue ls --dead lists seq $SEQ_L1 with reason expired" \
    "exit $RC, got: $(cat "$TMP/dead1.out")" \
    test "$RC" -eq 0 -a -n "$DEADROW" -a "${DEADROW%expired}" != "$DEADROW"

run retry1 mr queue retry "$SEQ_L1"
check "queue retry $SEQ_L1 succeeds" "exit $RC, out: $(cat "$TMP/retry1.out"), err: $(cat "$TMP/retry1.err")" \
    test "$RC" -eq 0
run listen7 mr listen --as yx-lab --count 1 --timeout 5000
check "listen --as yx-lab receives the retried lab_order" \
    "exit $RC, got: $(cat "$TMP/listen7.out")" \
    test "$RC" -eq 0 -a "$(wc -l <"$TMP/listen7.out")" -eq 1 \
    -a "$(jget seq <"$TMP/listen7.out")" = "$SEQ_L1" \
    -a "$(jget envelope.kind <"$TMP/listen7.out")" = KIND_LAB_ORDER \
    -a "$(jget envelope.lab_order.placer_order_number <"$TMP/listen7.out")" = LO-EXP-1

lab_order_json "LO-DROP-1" >"$TMP/lab2.json"
run lab2 mr send --as t-aihua --to yx-lab --kind lab_order --json "$TMP/lab2.json"
SEQ_L2=$(jget seq <"$TMP/lab2.out")
check "a second lab_order to yx-lab is acknowledged" "exit $RC, got: $(cat "$TMP/lab2.out")" \
    test "$RC" -eq 0 -a -n "$SEQ_L2"
run drop1 mr queue drop "$SEQ_L2" --reason "entered in error"
check "queue drop $SEQ_L2 --reason \"entered in error\" succeeds" \
    "exit $RC, out: $(cat "$TMP/drop1.out"), err: $(cat "$TMP/drop1.err")" test "$RC" -eq 0
run dead2 mr queue ls --dead
check "queue ls --dead shows seq $SEQ_L2 with \"entered in error\"" \
    "exit $RC, got: $(cat "$TMP/dead2.out")" \
    grep -q -E "^$SEQ_L2 .*entered in error\$" "$TMP/dead2.out"
run drop2 mr queue drop "$SEQ_L2" --reason "entered in error"
check "a second drop of seq $SEQ_L2 fails with exit 1" \
    "exit $RC, err: $(cat "$TMP/drop2.err")" test "$RC" -eq 1

# ---- 8: the status table -----------------------------------------------------------

echo "# 8: status table"
run table mr status
check "status (table) exits 0" "exit $RC, err: $(cat "$TMP/table.err")" test "$RC" -eq 0
missing=
for f in yx-lead yx-imaging yx-lab t-aihua t-lishu; do
    grep -q -E "^$f +" "$TMP/table.out" || missing="$missing $f"
done
check "status table lists every facility" "missing:$missing" test -z "$missing"
run statusj mr status --json
COUNTERS=$(python3 -c '
import json, sys
print(" ".join(c["name"] for c in json.load(sys.stdin)["status"]["counters"]))
' <"$TMP/statusj.out" 2>/dev/null || true)
missing=
for c in received stored duplicate delivered expired dead $COUNTERS; do
    grep -q -E "^$c +[0-9]+\$" "$TMP/table.out" || missing="$missing $c"
done
check "status table has a COUNTER section with every counter name" \
    "missing:$missing; table: $(cat "$TMP/table.out")" \
    test -z "$missing" -a -n "$COUNTERS" -a -n "$(grep -E '^COUNTER +VALUE$' "$TMP/table.out")"
# The store's latencies: every message stored went through one PUT (so did
# the resends told as duplicates and the clinical refusals: at least the
# stored, at most the received), and the table shows the same row.
PUTS=$(python3 -c '
import json, sys
ls = {l["name"]: l for l in json.load(sys.stdin)["status"].get("latencies", [])}
p = ls.get("store_put", {})
print(p.get("count", ""), p.get("p99_us", ""), " ".join(sorted(ls)))
' <"$TMP/statusj.out" 2>/dev/null || true)
read -r STORED RECEIVED <<<"$(python3 -c '
import json, sys
c = {c["name"]: c.get("value", 0) for c in json.load(sys.stdin)["status"]["counters"]}
print(c.get("stored", ""), c.get("received", ""))
' <"$TMP/statusj.out" 2>/dev/null || true)"
read -r PUT_N PUT_P99 LAT_NAMES <<<"$PUTS"
check "status --json: latencies store_commit, store_put, store_wait; stored ($STORED) <= store_put count <= received ($RECEIVED)" \
    "got: $PUTS" test "$LAT_NAMES" = "store_commit store_put store_wait" -a -n "$STORED" \
    -a -n "$RECEIVED" -a "${PUT_N:-0}" -ge "${STORED:-1}" -a "${PUT_N:-0}" -le "${RECEIVED:-0}" \
    -a "${PUT_P99:-0}" -gt 0
check "status table has a LATENCY section with the store_put row" \
    "table: $(cat "$TMP/table.out")" \
    grep -q -E "^store_put +$PUT_N +[0-9]+ +[0-9]+ +[0-9]+\$" "$TMP/table.out"

# ---- 8b: slots and open cut at the broker's 1000 rows say so ---------------------------

echo "# 8b: slots and open longer than the broker lists"
python3 -c '
import json
print(json.dumps({"items": [{"resource": "RESOURCE_CLINIC", "unit": "u%04d" % i,
                             "date": "2030-01-%02d" % (1 + i % 28), "capacity": 10,
                             "reserved": 2} for i in range(1001)]}))
' >"$TMP/capacity.json"
run cap1 mr send --as yx-lead --to clitest-broker --kind capacity --json "$TMP/capacity.json"
check "a capacity notice of 1001 resources is acknowledged" \
    "exit $RC, got: $(cat "$TMP/cap1.out") $(cat "$TMP/cap1.err")" test "$RC" -eq 0
run slots1 mr slots
check "slots cut at 1000 rows does not call them all the resources" \
    "exit $RC, last line: $(tail -n 1 "$TMP/slots1.out")" \
    test "$RC" -eq 0 -a "$(tail -n 1 "$TMP/slots1.out")" = \
    "(the latest 1000 resources: earlier ones are not listed; narrow with --date)"
# The broker matches --date as a string: a typo must not read as "nothing
# published that day".
run slots2 mr slots --date 2030/01/02
check "slots --date 2030/01/02: exit 2 (bad input), not an empty ledger" \
    "exit $RC, out: $(tail -n 1 "$TMP/slots2.out")" test "$RC" -eq 2 -a ! -s "$TMP/slots2.out"
run slots3 mr slots --date 2030-01-02
check "slots --date 2030-01-02 lists that day's 36 resources" \
    "exit $RC, out: $(tail -n 1 "$TMP/slots3.out")" \
    test "$RC" -eq 0 -a "$(tail -n 1 "$TMP/slots3.out")" = "(36 resources)"
for i in $(seq 1001); do
    echo "{\"accession_number\": \"A-OPEN-$i\", \"modality\": \"DR\"}" |
        mr send --as t-aihua --to yx-imaging --kind imaging_request --json - >/dev/null 2>&1 ||
        break
done
run open1 mr open
check "open cut at 1000 rows does not call them all that is open" \
    "exit $RC, sent $i, last line: $(tail -n 1 "$TMP/open1.out")" \
    test "$RC" -eq 0 -a "$(tail -n 1 "$TMP/open1.out")" = \
    "(the oldest 1000 open: more may be open; narrow with --facility)"

# ---- 8c: watch ----------------------------------------------------------------------

echo "# 8c: watch"
# The first line confirms the subscription; --count counts the events after
# it: exit 0 with an event besides it, or exit 3 with none in time.
run watch1 mr watch --json --count 1 --timeout 1500
WKINDS=$(field_of_lines watch.kind <"$TMP/watch1.out")
check "watch --count 1 does not count the subscription as its event" \
    "exit $RC, kinds: $WKINDS" \
    test "$WKINDS" = subscribed -a "$RC" -eq 3 -o "$RC" -eq 0 -a "${WKINDS#subscribed }" != "$WKINDS"
# Bad usage is refused (exit 2) and said, as by every other command.
run watch2 mr watch stray --count 1 --timeout 500
check "watch with a stray argument: exit 2 (usage), nothing watched" \
    "exit $RC, out: $(cat "$TMP/watch2.out")" test "$RC" -eq 2 -a ! -s "$TMP/watch2.out"
run watch3 mr watch --count x
check "watch --count x: exit 2 and a message on stderr" \
    "exit $RC, err: $(cat "$TMP/watch3.err")" test "$RC" -eq 2 -a -s "$TMP/watch3.err"
# A watch that ends frees its place among the broker's 16 at once: 17 short
# ones in a row all get in (the 16th failed "too many watchers" for the
# next two minutes, when only the broker's time-out freed them).
WFAILS=0
for i in $(seq 1 17); do
    run watch_short mr watch --timeout 100
    [ "$RC" -eq 0 ] || WFAILS=$((WFAILS + 1))
done
check "17 short watches in a row all get in" \
    "$WFAILS failed, last: $(cat "$TMP/watch_short.err")" test "$WFAILS" -eq 0
# A watch killed (SIGKILL: no goodbye) frees its place as soon as its
# connection closes: with 16 killed, a 17th gets in at once.  Before, the
# broker noticed a dead watcher only when a send to it failed, and events go
# out only on change: the 17th got "too many watchers" until a counter
# changed (its own refusal does), or the two-minute time-out.  Started
# without timeout(1), so that $! is the CLI itself.
WATCH_PIDS=()
for i in $(seq 1 16); do
    "$CLI" --operator "$OP_EP" watch --json >"$TMP/watch_k$i.out" 2>"$TMP/watch_k$i.err" &
    WATCH_PIDS+=("$!")
done
# watch_lines PATTERN: how many of the 16 have printed a line matching it.
watch_lines() {
    local n=0 i
    for i in $(seq 1 16); do
        ! grep -q "$1" "$TMP/watch_k$i.out" || n=$((n + 1))
    done
    echo "$n"
}
# wait_watch_lines PATTERN: until all 16 have (10 s at most).
wait_watch_lines() {
    for _ in $(seq 100); do
        [ "$(watch_lines "$1")" -lt 16 ] || return 0
        sleep 0.1
    done
}
wait_watch_lines '"subscribed"'
WSUBSCRIBED=$(watch_lines '"subscribed"')
run watch_full mr watch --timeout 100
WFULL=$RC
# The next second's counters event (operator_rejected +1) reached them:
# from then on the broker, idle, sends them nothing.
wait_watch_lines 'operator_rejected'
WTOLD=$(watch_lines 'operator_rejected')
{ # (the shell's "Killed" notices: expected)
    kill -KILL "${WATCH_PIDS[@]}" || true
    for pid in "${WATCH_PIDS[@]}"; do
        wait "$pid" || true
    done
} 2>/dev/null
check "16 watches hold the broker's 16 places: a 17th is refused" \
    "$WSUBSCRIBED subscribed, $WTOLD told; the 17th: exit $WFULL, $(cat "$TMP/watch_full.err")" \
    test "$WSUBSCRIBED" -eq 16 -a "$WTOLD" -eq 16 -a "$WFULL" -ne 0
run watch_after mr watch --timeout 100
check "with the 16 killed (SIGKILL), a 17th watch gets in at once" \
    "exit $RC, $(cat "$TMP/watch_after.err")" test "$RC" -eq 0

# ---- 8d: a failed admin backup says why in the log ----------------------------------

echo "# 8d: admin backup to a long path"
# SQLite opens no path over 512 bytes: the backup fails, and the CLI sends
# the operator to the log, whose line must keep the reason however long the
# path (a log line holds 512 bytes).
LONG=$TMP
for i in 1 2 3; do
    LONG=$LONG/$(printf 'd%.0s' $(seq 200))$i
done
mkdir -p "$LONG"
run backup1 mr admin backup "$LONG/copy.db"
BLINE=$(grep -F "event=store.backup_failed" "$TMP/medrouted.log" | tail -n 1 || true)
check "admin backup to a ${#LONG}-byte directory: exit 1, and the log line gives the reason" \
    "exit $RC, err: $(cat "$TMP/backup1.err"), log: ${BLINE:0:200}..." \
    test "$RC" -eq 1 -a -n "$(grep -E 'reason="[^"]+"' <<<"$BLINE" || true)"

# A relative FILE longer than a path may be once made absolute is refused:
# it was cut to 4 KB, and the broker asked to write another file.
REL=.
for i in $(seq 20); do
    REL=$REL/$(printf 'e%.0s' $(seq 220))
done
RC=0
(cd "$TMP" && mr admin backup "$REL/copy.db") >"$TMP/backup2.out" 2>"$TMP/backup2.err" || RC=$?
check "admin backup to a relative ${#REL}-byte FILE: exit 2, saying it is too long" \
    "exit $RC, err: $(cut -c1-200 "$TMP/backup2.err")" \
    test "$RC" -eq 2 -a -n "$(grep -F 'longer than 4095 bytes' "$TMP/backup2.err" || true)"

# ---- 9: no patient data in the log; clean stop ---------------------------------------

echo "# 9: the log, and SIGTERM"
leaks=
for s in "${SECRETS[@]}"; do
    n=$(grep -c -F -- "$s" "$TMP/medrouted.log" || true)
    [ "$n" -eq 0 ] || leaks="$leaks '$s' ($n lines)"
done
check "the daemon's log holds no patient name or identifier" "found:$leaks" test -z "$leaks"

kill -TERM "$DAEMON_PID" 2>/dev/null || true
DRC=
for i in $(seq 100); do
    if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
        DRC=0
        wait "$DAEMON_PID" || DRC=$?
        break
    fi
    sleep 0.1
done
if [ -z "$DRC" ]; then
    stop_pid "$DAEMON_PID"
    DRC="still running after 10 s"
fi
DAEMON_PID=
check "medrouted exits 0 on SIGTERM" "exit $DRC" test "$DRC" = 0

finish
