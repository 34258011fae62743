#!/usr/bin/env bash
# Stops what scripts/demo.sh (and demo.sh --cluster) started: shippers, broker, redis-server,
# the cluster's six nodes, PostgreSQL. Data is kept in .tally/ and /var/tmp/tally-demo-pg.
set -euo pipefail
source "$(dirname "$0")/stack.sh"
stop_all
