#!/usr/bin/env bash
# Stops what scripts/demo.sh (and demo.sh --cluster) started: shippers, broker, redis-server,
# the cluster's six nodes, PostgreSQL. Data is kept in .tally/ and in this stack's Postgres
# directory under /var/tmp, named in .tally/pg_home (see PG_HOME in stack.sh).
set -euo pipefail
# shellcheck source=scripts/stack.sh
source "$(dirname "$0")/stack.sh"
stop_all
