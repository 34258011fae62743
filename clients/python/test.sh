#!/usr/bin/env bash
# Tests of the Python client (tally-client): makes a venv, installs the package (editable)
# with its dev extras from PyPI, runs mypy --strict on the package and the examples, then
# pytest, whose fixtures start and stop their own redis-server processes with the module on
# free 127.0.0.1 ports (standalone and a 3-node cluster). Exits non-zero on any failure.
#
#   TALLY_PY_VENV     the venv (default /opt/tally/py-client-venv)
#   PYTHON            the interpreter that makes it (default python3; Debian's needs python3-venv)
#   TALLY_SERVER_BIN  the server (default redis-server; installed with apt-get if missing and root)
#   TALLY_MODULE      the module (default <repo>/target/release/libtally.so, built if missing)
#   extra arguments go to pytest, e.g.  bash clients/python/test.sh -k cluster
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${TALLY_PY_VENV:-/opt/tally/py-client-venv}"
python="${PYTHON:-python3}"

say() { echo "[py-client] $*"; }

# The venv: made once, made again when its interpreter no longer runs.
if ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
  say "creating the venv $venv with $("$python" --version 2>&1)"
  mkdir -p "$(dirname "$venv")"
  rm -rf "$venv"
  "$python" -m venv "$venv"
fi
say "installing tally-client[dev] into $venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "${here}[dev]"

# The server and the module the tests start.
server="${TALLY_SERVER_BIN:-redis-server}"
if ! command -v "$server" >/dev/null 2>&1; then
  if [ -z "${TALLY_SERVER_BIN:-}" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing redis-server (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server >/dev/null; }
  else
    say "FAIL: no server binary '$server' (set TALLY_SERVER_BIN)" >&2
    exit 1
  fi
fi
if [ -z "${TALLY_MODULE:-}" ]; then
  export TALLY_MODULE="$repo/target/release/libtally.so"
  if [ ! -f "$TALLY_MODULE" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
    if ! command -v cargo >/dev/null 2>&1; then
      say "FAIL: no module at $TALLY_MODULE and no cargo to build it (bash scripts/setup.sh)" >&2
      exit 1
    fi
    say "building the module: cargo build --release -p tally"
    (cd "$repo" && cargo build --release --locked -p tally)
  fi
fi
if [ ! -f "$TALLY_MODULE" ]; then
  say "FAIL: no module at $TALLY_MODULE" >&2
  exit 1
fi

cd "$here"
say "mypy --strict on the package and the examples"
"$venv/bin/python" -m mypy --strict src/tally_client examples
say "pytest on $("$server" --version | cut -d' ' -f1-3) with $TALLY_MODULE"
"$venv/bin/python" -m pytest "$@"
