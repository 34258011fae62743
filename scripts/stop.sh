#!/usr/bin/env bash
# Stops what scripts/demo.sh started (data is kept in .tally/ and /var/tmp/tally-demo-pg).
set -euo pipefail
source "$(dirname "$0")/stack.sh"
stop_all
