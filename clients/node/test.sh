#!/usr/bin/env bash
# The Node client's checks: npm ci, a type check of src/, test/ and examples/, the build,
# and node --test on the built tests against real redis-servers with the tally module
# (started and stopped by the tests on free 127.0.0.1 ports).
#
#   TALLY_SERVER_BIN  the server binary (default: redis-server)
#   TALLY_MODULE      the module (default: <repo>/target/release/libtally.so, built by
#                     cargo build --release -p tally)
#
# On a machine without node/npm, as root with apt-get, Debian's nodejs and npm are installed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"
here="$(pwd)"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing Debian's nodejs and npm" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm
  else
    echo "test.sh: node and npm are needed (Debian: apt-get install -y nodejs npm)" >&2
    exit 1
  fi
fi

node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 18 ]; then
  echo "test.sh: Node.js 18.19 or later is needed, found $(node --version)" >&2
  exit 1
fi

module="${TALLY_MODULE:-$here/../../target/release/libtally.so}"
if [ ! -f "$module" ]; then
  echo "test.sh: the tally module $module is missing: cargo build --release -p tally (or set TALLY_MODULE)" >&2
  exit 1
fi
server="${TALLY_SERVER_BIN:-redis-server}"
if ! command -v "$server" >/dev/null 2>&1; then
  echo "test.sh: the server binary $server is missing (set TALLY_SERVER_BIN)" >&2
  exit 1
fi

echo "== node $(node --version), npm $(npm --version), $("$server" --version | head -n 1)"
echo "== npm ci"
npm ci --include=dev --no-audit --no-fund

echo "== tsc --noEmit (src, test, examples)"
npx --no-install tsc -p tsconfig.json --noEmit

echo "== build (tsc into dist/)"
rm -rf dist
npx --no-install tsc -p tsconfig.json

echo "== node --test"
tests=(dist/test/*.test.js)
node --test "${tests[@]}"
