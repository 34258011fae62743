#!/usr/bin/env bash
# Checks deploy/prometheus/tally-alerts.yml: the rules load (promtool check rules) and their
# unit tests pass (promtool test rules deploy/prometheus/tally-alerts.test.yml).
#
# promtool comes from Debian's `prometheus` package, installed here when missing (as root).
# Its Prometheus service plays no part: nothing here talks to it, and where the package's
# maintainer scripts honour /usr/sbin/policy-rc.d the install does not start it.
#
# The metric names the rules and deploy/grafana/tally-dashboard.json use are checked against
# a running shipper by `cargo test -p tally-shipper --test metrics_contract`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

install_promtool() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "deploy/test.sh: promtool not found; install Debian's prometheus package (apt-get install prometheus)" >&2
    exit 1
  fi
  local policy=/usr/sbin/policy-rc.d made_policy=0
  if [ ! -e "$policy" ]; then
    # 101 = "action not allowed": keeps invoke-rc.d from starting the package's service
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    made_policy=1
  fi
  local rc=0
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null || rc=$?
  if [ "$made_policy" -eq 1 ]; then
    rm -f "$policy"
  fi
  if [ "$rc" -ne 0 ]; then
    echo "deploy/test.sh: apt-get install prometheus failed (exit $rc)" >&2
    exit "$rc"
  fi
}

if ! command -v promtool >/dev/null 2>&1; then
  install_promtool
fi

promtool --version 2>&1 | head -n 1
promtool check rules "$here/prometheus/tally-alerts.yml"
promtool test rules "$here/prometheus/tally-alerts.test.yml"

# The dashboard's queries parse as PromQL: each one (Grafana variables replaced by sample
# values) becomes a recording rule of a scratch file that promtool checks.
if ! command -v python3 >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "deploy/test.sh: python3 not found (needed to read the dashboard JSON)" >&2
    exit 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 >/dev/null
fi
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
python3 - "$here/grafana/tally-dashboard.json" "$scratch/dashboard-queries.yml" <<'PY'
import json, re, sys

dash = json.load(open(sys.argv[1]))
values = {"job": ".+", "stream": ".+", "__rate_interval": "5m", "max_backlog": "1000000"}

def plain(expr):
    expr = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values[m.group(1) or m.group(2)], expr)
    m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", expr, re.S)
    return "group by (%s) (%s)" % (m.group(2), m.group(1)) if m else expr

exprs, stack = [], list(dash["panels"])
while stack:
    p = stack.pop()
    stack.extend(p.get("panels", []))
    exprs += [t["expr"] for t in p.get("targets", [])]
exprs += [v["query"]["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
with open(sys.argv[2], "w") as out:
    out.write("groups:\n  - name: dashboard-queries\n    rules:\n")
    for i, e in enumerate(exprs):
        out.write("      - record: dashboard_query_%d\n        expr: %s\n" % (i, json.dumps(plain(e))))
print("%d dashboard queries" % len(exprs))
PY
promtool check rules "$scratch/dashboard-queries.yml"
