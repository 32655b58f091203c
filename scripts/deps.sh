#!/usr/bin/env bash
# Installs the Debian packages medroute needs to build, test and run its demo,
# if any is missing.  Safe to run again: it does nothing when all are present.
set -euo pipefail

packages=(
  build-essential cmake pkg-config
  libzmq3-dev libprotobuf-c-dev protobuf-c-compiler libuv1-dev libcmocka-dev
  libjansson-dev libconfig-dev libsqlite3-dev libmicrohttpd-dev libsystemd-dev prometheus
  python3 python3-zmq python3-protobuf protobuf-compiler
  libfaketime tzdata
)
# Extra sets: `deps.sh bench` adds what `make bench` uses.
if [ "${1:-}" = "bench" ]; then
  packages+=(rabbitmq-server librabbitmq-dev liblmdb-dev librocksdb-dev)
fi
# `deps.sh fuzz` adds what scripts/fuzz.sh (clang, libFuzzer and the
# sanitizer runtimes) and scripts/valgrind.sh use.
if [ "${1:-}" = "fuzz" ]; then
  packages+=(clang libclang-rt-14-dev valgrind)
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "deps: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
