# lib.sh - what the shell integration tests share: counting checks.
# Sourced by test_cli.sh, test_install.sh and test_prometheus.sh, which set
# PASSED=0 FAILED=0 and define finish (print the summary, exit).

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
