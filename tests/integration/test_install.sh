#!/usr/bin/env bash
# test_install.sh - `cmake --install` into a temporary prefix, then use what
# was installed, and only that: the daemon, the CLI, the library through its
# header and pkg-config file, the example config, the unit, the man pages.
#
#   test_install.sh BUILD_DIR SOURCE_DIR
#
# It checks that every file is where docs/operations.md says, that the
# installed daemon accepts the installed example config, starts on it (moved
# to free loopback ports and a temporary data_dir) and answers the installed
# CLI and /healthz, that a small C program built with
# `pkg-config --cflags --libs medroute` connects to it as a facility, that
# the daemon stops with status 0 on SIGTERM, that a second install keeps an
# edited config, and that DESTDIR with prefix /usr gives a system layout.
#
# Every wait is bounded; everything talks to 127.0.0.1.  The last line is
# "N passed, M failed"; the exit status is 0 only when nothing failed.
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 BUILD_DIR SOURCE_DIR" >&2
    exit 2
fi
BUILD_DIR=$1
SOURCE_DIR=$2

PASSED=0
FAILED=0
# ok, bad, check, fatal, finish, stop_pid, free_ports, start_medrouted
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
DAEMON_PID=
TMP=$(mktemp -d "${TMPDIR:-/tmp}/medroute-insttest.XXXXXX")
P=$TMP/prefix

dump_log() {
    local f
    for f in "$TMP/install.log" "$TMP/medrouted.log"; do
        if [ -f "$f" ]; then
            echo "--- last lines of $(basename "$f") ---"
            tail -n 30 "$f" || true
            echo "---"
        fi
    done
}

CLEANUP_PIDS="DAEMON_PID"
lib_traps

for tool in cmake pkg-config python3 timeout cc; do
    command -v "$tool" >/dev/null || fatal "prerequisite: $tool is installed"
done
[ -f "$BUILD_DIR/cmake_install.cmake" ] || fatal "prerequisite: $BUILD_DIR is a configured build tree"
[ -f "$SOURCE_DIR/config/medroute.conf" ] || fatal "prerequisite: $SOURCE_DIR is the source tree"

# ---- install -------------------------------------------------------------------

if cmake --install "$BUILD_DIR" --prefix "$P" >"$TMP/install.log" 2>&1; then
    ok "cmake --install --prefix TMP/prefix"
else
    fatal "cmake --install --prefix TMP/prefix" "see install.log"
fi

# The library directory: lib, lib64 or lib/<multiarch>, whatever GNUInstallDirs chose.
LIB=$(find "$P" -name 'libmedroute.so.*' -type f -printf '%h\n' 2>/dev/null | head -n 1)
PC_DIR=$(find "$P" -name medroute.pc -printf '%h\n' 2>/dev/null | head -n 1)

exists() { [ -e "$P/$1" ]; }
check "sbin/medrouted is installed and executable" "missing" test -x "$P/sbin/medrouted"
check "bin/medroute is installed and executable" "missing" test -x "$P/bin/medroute"
check "libmedroute.so* are installed under lib*" "no libmedroute.so.* below $P" \
    test -n "$LIB" -a -e "$LIB/libmedroute.so" -a -e "$LIB/libmedroute.so.0"
check "include/medroute.h is installed" "missing" exists include/medroute.h
check "medroute.pc is installed in lib*/pkgconfig" "found in '${PC_DIR}'" \
    test -n "$PC_DIR" -a "$PC_DIR" = "$LIB/pkgconfig"
for m in man8/medrouted.8 man1/medroute.1 man5/medroute.conf.5; do
    check "share/man/$m is installed" "missing" exists "share/man/$m"
done
check "etc/medroute/medroute.conf is installed" "missing" exists etc/medroute/medroute.conf
check "lib/systemd/system/medrouted.service is installed" "missing" \
    exists lib/systemd/system/medrouted.service
check "the example config is in the docs too" "missing" \
    exists share/doc/medroute/examples/medroute.conf
check "docs/operations.md is installed" "missing" exists share/doc/medroute/operations.md
check "docs/delivery.md is installed" "missing" exists share/doc/medroute/delivery.md

UNIT=$P/lib/systemd/system/medrouted.service
check "the unit starts the installed daemon with the installed config" \
    "$(grep '^ExecStart=' "$UNIT" 2>/dev/null || echo 'no ExecStart')" \
    grep -qxF "ExecStart=$P/sbin/medrouted --config $P/etc/medroute/medroute.conf --data-dir /var/lib/medroute" "$UNIT"
check "the unit reloads with SIGHUP and keeps its state in StateDirectory" "" \
    grep -q '^ExecReload=/bin/kill -HUP \$MAINPID' "$UNIT"

if command -v man >/dev/null; then
    for m in man8/medrouted.8 man1/medroute.1 man5/medroute.conf.5; do
        out=$(MANWIDTH=80 man -l "$P/share/man/$m" 2>&1 || true)
        check "man -l $m renders" "$(echo "$out" | head -n 3)" grep -q '^NAME' <<<"$out"
    done
else
    echo "skip   man pages render (no man)"
fi

# ---- the installed daemon --------------------------------------------------------

out=$("$P/sbin/medrouted" --check-config "$P/etc/medroute/medroute.conf" 2>&1) && rc=0 || rc=$?
check "installed medrouted --check-config accepts the installed example (exit 0)" \
    "exit $rc: $out" test "$rc" -eq 0
out=$("$P/sbin/medrouted" --version 2>&1) && rc=0 || rc=$?
check "installed medrouted --version" "exit $rc: $out" \
    grep -qE '^medrouted [0-9]+\.[0-9]+\.[0-9]+' <<<"$out"

export LD_LIBRARY_PATH="$LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
CLI=$P/bin/medroute
out=$("$CLI" help 2>&1) && rc=0 || rc=$?
check "installed medroute help (library found)" "exit $rc: $out" grep -q '^commands:' <<<"$out"

# start_daemon: free ports, the example config moved onto them, start, wait
# (10 s at most) until the installed CLI's `status` answers.  0 up; 1 the
# daemon exited (a port was taken meanwhile?); 2 it runs but does not answer.
start_daemon() {
    local ports
    ports=$(free_ports 3) || return 1
    read -r FAC_PORT OP_PORT HTTP_PORT <<<"$ports"
    FAC_EP="tcp://127.0.0.1:$FAC_PORT"
    OP_EP="tcp://127.0.0.1:$OP_PORT"
    sed -e "s|^facility_endpoint = .*|facility_endpoint = \"$FAC_EP\";|" \
        -e "s|^operator_endpoint = .*|operator_endpoint = \"$OP_EP\";|" \
        -e "s|^http_listen = .*|http_listen = \"127.0.0.1:$HTTP_PORT\";|" \
        -e "s|^data_dir = .*|data_dir = \"$TMP/data\";|" \
        "$P/etc/medroute/medroute.conf" >"$TMP/medroute.conf"
    start_medrouted "$P/sbin/medrouted" "$TMP/medroute.conf" "$TMP/medrouted.log" \
        "$CLI" --operator "$OP_EP" status --timeout 500
}

up=1
for _ in 1 2 3; do
    start_daemon && { up=0; break; } || up=$?
    [ "$up" -eq 1 ] || break
done
[ "$up" -eq 0 ] || fatal "the installed daemon starts on the example config" \
    "$([ "$up" -eq 1 ] && echo 'it exited' || echo 'no status reply in 10 s')"
ok "the installed daemon starts on the example config (moved to free ports)"

grep -q "^facility_endpoint = \"$FAC_EP\";" "$TMP/medroute.conf" ||
    bad "sed moved the endpoints" "facility_endpoint not rewritten"

out=$("$CLI" --operator "$OP_EP" status 2>&1) && rc=0 || rc=$?
check "installed medroute status talks to the installed daemon" "exit $rc: $out" \
    grep -q '^broker yx-medroute' <<<"$out"
check "status lists the example's facilities" "$out" grep -q '^t-aihua ' <<<"$out"

health=$(timeout 10 python3 -c '
import sys, urllib.request, urllib.error
try:
    r = urllib.request.urlopen("http://127.0.0.1:%s/healthz" % sys.argv[1], timeout=5)
    print(r.status, r.read().decode().strip())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode().strip())
' "$HTTP_PORT" 2>&1) || true
check "/healthz answers on the moved http_listen" "$health" grep -q '^200 .*"store":"ok"' <<<"$health"

# ---- the library, as an application would build against it ------------------------

export PKG_CONFIG_PATH="$PC_DIR${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
out=$(pkg-config --modversion medroute 2>&1) && rc=0 || rc=$?
check "pkg-config --modversion medroute" "exit $rc: $out" grep -qE '^[0-9]+\.[0-9]+\.[0-9]+$' <<<"$out"
flags=$(pkg-config --cflags --libs medroute 2>&1) && rc=0 || rc=$?
check "pkg-config --cflags --libs medroute points into the prefix" "exit $rc: $flags" \
    grep -qF -- "-I$P/include" <<<"$flags"

cat >"$TMP/probe.c" <<'EOF'
/* A facility connecting through the installed libmedroute. */
#include <medroute.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    if (argc != 3)
        return 2;
    mr_client_opts_t o;
    memset(&o, 0, sizeof o);
    o.endpoint = argv[1];
    o.facility = argv[2];
    o.client_name = "test_install probe";
    mr_client_t *c = mr_client_new(&o);
    if (c == NULL) {
        fprintf(stderr, "mr_client_new failed\n");
        return 1;
    }
    int rc = mr_client_wait_connected(c, 10000);
    printf("libmedroute %s: wait_connected %d\n", MR_CLIENT_VERSION, rc);
    mr_client_destroy(&c);
    return rc == 0 ? 0 : 1;
}
EOF
# shellcheck disable=SC2086 # the flags are words
# A sanitizer build's library needs the sanitizer runtime in the program too.
san=""
if grep -q '^MR_SANITIZE:BOOL=ON' "$BUILD_DIR/CMakeCache.txt" 2>/dev/null; then
    san="-fsanitize=address,undefined"
fi
if cc -std=c11 -Wall -Wextra -Werror $san -o "$TMP/probe" "$TMP/probe.c" $flags >"$TMP/cc.log" 2>&1; then
    ok "a C program builds against the installed header and library via pkg-config"
    out=$(timeout 20 "$TMP/probe" "$FAC_EP" t-aihua 2>&1) && rc=0 || rc=$?
    check "it creates an mr_client_t and connects to the installed daemon" "exit $rc: $out" \
        test "$rc" -eq 0
    out=$(ldd "$TMP/probe" 2>&1 || true)
    check "it uses the installed libmedroute" "$out" grep -qF "$LIB/libmedroute.so.0" <<<"$out"
    check "the daemon logged the probe's session" "" \
        grep -q 'event=facility.connected facility=t-aihua client="test_install probe"' "$TMP/medrouted.log"
else
    bad "a C program builds against the installed header and library via pkg-config" \
        "$(head -n 5 "$TMP/cc.log")"
fi

# ---- stop ------------------------------------------------------------------------

kill -TERM "$DAEMON_PID"
rc=0
for _ in $(seq 100); do
    kill -0 "$DAEMON_PID" 2>/dev/null || break
    sleep 0.1
done
if kill -0 "$DAEMON_PID" 2>/dev/null; then
    bad "the installed daemon stops on SIGTERM within 10 s" "still running"
else
    wait "$DAEMON_PID" && rc=0 || rc=$?
    DAEMON_PID=
    check "the installed daemon stops on SIGTERM with status 0" "exit $rc" test "$rc" -eq 0
fi
check "it drained before stopping" "" grep -q 'event=server.stopping' "$TMP/medrouted.log"

# ---- a second install (an upgrade) keeps the operator's config ---------------------

echo "# edited by the operator" >>"$P/etc/medroute/medroute.conf"
if cmake --install "$BUILD_DIR" --prefix "$P" >"$TMP/install2.log" 2>&1; then
    check "a second install keeps an edited etc/medroute/medroute.conf" "it was replaced" \
        grep -q '^# edited by the operator' "$P/etc/medroute/medroute.conf"
else
    bad "a second cmake --install succeeds" "$(tail -n 5 "$TMP/install2.log")"
fi

# ---- a package layout: DESTDIR with prefix /usr -----------------------------------

D=$TMP/destdir
etc_before=$(test -e /etc/medroute/medroute.conf && echo yes || echo no)
if DESTDIR=$D cmake --install "$BUILD_DIR" --prefix /usr >"$TMP/install3.log" 2>&1; then
    check "DESTDIR, prefix /usr: daemon in /usr/sbin" "missing" test -x "$D/usr/sbin/medrouted"
    check "DESTDIR, prefix /usr: config in /etc/medroute" "missing" test -f "$D/etc/medroute/medroute.conf"
    check "DESTDIR, prefix /usr: the unit names /usr/sbin/medrouted and /etc/medroute" \
        "$(grep '^ExecStart=' "$D/usr/lib/systemd/system/medrouted.service" 2>/dev/null || echo 'no unit')" \
        grep -qxF "ExecStart=/usr/sbin/medrouted --config /etc/medroute/medroute.conf --data-dir /var/lib/medroute" \
        "$D/usr/lib/systemd/system/medrouted.service"
    pc=$(find "$D" -name medroute.pc | head -n 1)
    check "DESTDIR, prefix /usr: medroute.pc says prefix=/usr" "$pc" grep -qx 'prefix=/usr' "$pc"
    etc_after=$(test -e /etc/medroute/medroute.conf && echo yes || echo no)
    check "DESTDIR: nothing written outside DESTDIR" "/etc/medroute/medroute.conf appeared" \
        test "$etc_before" = "$etc_after"
else
    bad "DESTDIR=... cmake --install --prefix /usr" "$(tail -n 5 "$TMP/install3.log")"
fi

finish
