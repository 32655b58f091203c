#!/usr/bin/env bash
# test_unit.sh - the systemd unit passes `systemd-analyze verify` and keeps a
# low exposure in `systemd-analyze security` (the figure is in
# docs/operations.md).  Usage: test_unit.sh MEDROUTED SOURCE_DIR
set -euo pipefail
medrouted=$1
src=$2
pass=0
fail=0
check() { if eval "$2"; then pass=$((pass + 1)); echo "ok   $1"; else fail=$((fail + 1)); echo "FAIL $1"; fi; }
if ! command -v systemd-analyze >/dev/null; then
    echo "systemd-analyze missing: skipped"
    echo "0 passed, 0 failed"
    exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The unit names the installed binary: point it at the built one.
sed "s|/usr/sbin/medrouted|$medrouted|g" "$src/systemd/medrouted.service" >"$tmp/medrouted.service"
out=$(systemd-analyze verify "$tmp/medrouted.service" 2>&1 || true)
echo "$out"
check "systemd-analyze verify reports nothing" '[ -z "$out" ]'
check "Type=notify with a watchdog" 'grep -q "^Type=notify" "$tmp/medrouted.service" && grep -q "^WatchdogSec=" "$tmp/medrouted.service"'
check "reload sends SIGHUP" 'grep -q "^ExecReload=.*-HUP" "$tmp/medrouted.service"'
score=$(systemd-analyze security --offline=true "$tmp/medrouted.service" 2>/dev/null |
    sed -n 's/.*Overall exposure level for medrouted.service: \([0-9.]*\).*/\1/p')
echo "exposure: $score"
check "exposure score at most 2.0 (got ${score:-none})" '[ -n "$score" ] && awk "BEGIN{exit !($score <= 2.0)}"'
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
