#!/usr/bin/env bash
# rabbitmq.sh - the bench workload against a local RabbitMQ (issue 8, item 2).
#
#   bench/peers/rabbitmq.sh BUILD_DIR [bench_rabbitmq options...]
#
# Starts Debian's rabbitmq-server as the current user, on loopback only, in
# a temporary directory of its own (node name, mnesia, logs, cookie, config,
# a private epmd on its own port), waits for it (rabbitmqctl await_startup,
# bounded), runs BUILD_DIR/bench/bench_rabbitmq BENCH_RUNS times (1 unless
# set; each declares, purges and deletes its queue) and prints their JSON
# lines on stdout; stops the broker and its epmd on any exit.  Exit status:
# 0 ok, 3 RabbitMQ is not installed or did not start (the reason on
# stderr), 1 a run failed.
set -euo pipefail

BUILD=${1:?usage: rabbitmq.sh BUILD_DIR [options]}
shift
BENCH=$BUILD/bench/bench_rabbitmq
RMQ=/usr/lib/rabbitmq/bin
if [[ ! -x $BENCH ]]; then
  echo "rabbitmq: $BENCH is not built: CMake found no librabbitmq when it configured this build (make bench installs it first; or scripts/deps.sh bench, then configure again)" >&2
  exit 3
fi
if [[ ! -x $RMQ/rabbitmq-server ]]; then
  echo "rabbitmq: rabbitmq-server is not installed (bash scripts/deps.sh bench)" >&2
  exit 3
fi

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

TMP=$(mktemp -d /tmp/mrbench-rabbitmq-XXXXXX)
export HOME=$TMP                                   # the Erlang cookie lives here
export RABBITMQ_CONF_ENV_FILE=$TMP/rabbitmq-env.conf
export RABBITMQ_NODENAME=mrbench$$@localhost
export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
export RABBITMQ_NODE_PORT=$(free_port)
export RABBITMQ_DIST_PORT=$(free_port)
export ERL_EPMD_ADDRESS=127.0.0.1
export ERL_EPMD_PORT=$(free_port)
export RABBITMQ_MNESIA_BASE=$TMP/mnesia
export RABBITMQ_LOG_BASE=$TMP/log
export RABBITMQ_PID_FILE=$TMP/rabbitmq.pid
export RABBITMQ_ENABLED_PLUGINS_FILE=$TMP/enabled_plugins
export RABBITMQ_CONFIG_FILE=$TMP/rabbitmq.conf
export RABBITMQ_ADVANCED_CONFIG_FILE=$TMP/advanced.config
export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
export RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
: >"$RABBITMQ_CONF_ENV_FILE"
echo '[].' >"$RABBITMQ_ENABLED_PLUGINS_FILE"
echo '[].' >"$RABBITMQ_ADVANCED_CONFIG_FILE"
cat >"$RABBITMQ_CONFIG_FILE" <<CONF
listeners.tcp.1 = 127.0.0.1:$RABBITMQ_NODE_PORT
loopback_users.guest = true
log.console = false
log.file.level = warning
CONF
mkdir -p "$RABBITMQ_MNESIA_BASE" "$RABBITMQ_LOG_BASE"

server_pid=
cleanup() {
  if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
    timeout 30 "$RMQ/rabbitmqctl" -n "$RABBITMQ_NODENAME" stop >/dev/null 2>&1 || true
    for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.2; done
    kill -TERM "$server_pid" 2>/dev/null || true
    sleep 0.5
    kill -KILL "$server_pid" 2>/dev/null || true
  fi
  # the epmd started for our node (own port): ask it to go
  epmd -port "$ERL_EPMD_PORT" -kill >/dev/null 2>&1 || true
  rm -rf "$TMP"
}
trap cleanup EXIT

"$RMQ/rabbitmq-server" >"$TMP/server.out" 2>&1 &
server_pid=$!
# Bounded: await_startup fails at once while the node is not up yet, so ask
# again until it answers, the server exits, or 90 s have passed.
started=
deadline=$((SECONDS + 90))
while ((SECONDS < deadline)); do
  kill -0 "$server_pid" 2>/dev/null || break
  if timeout 30 "$RMQ/rabbitmqctl" -n "$RABBITMQ_NODENAME" await_startup --timeout 25 \
      >"$TMP/await.out" 2>&1; then
    started=1
    break
  fi
  sleep 1
done
if [[ -z $started ]]; then
  echo "rabbitmq: the broker did not start within 90 s:" >&2
  tail -n 5 "$TMP/server.out" "$TMP/await.out" "$RABBITMQ_LOG_BASE"/*.log >&2 2>/dev/null || true
  exit 3
fi
rc=0
for ((i = 0; i < ${BENCH_RUNS:-1}; i++)); do
  "$BENCH" --port "$RABBITMQ_NODE_PORT" "$@" || rc=1
done
exit $rc
