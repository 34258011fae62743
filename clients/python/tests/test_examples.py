"""The three stories' examples, run as programs against their own server; their results are
checked on the server, not only in what they print."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import redis

from servers import Cluster, Server

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, url: str, via_env: bool = False) -> dict[str, Any]:
    env = dict(os.environ)
    env.pop("TALLY_REDIS_URL", None)
    args = [sys.executable, str(EXAMPLES / name)]
    if via_env:
        env["TALLY_REDIS_URL"] = url
    else:
        args.append(url)
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{name} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_currency(start_server) -> None:
    s: Server = start_server()
    out = run_example("currency.py", s.url, via_env=True)
    with s.client() as raw:
        assert raw.hgetall(out["user_key"]) == {"BDP": "5210.43", "TRAINING": "3.5"}
        assert out["user"] == {"BDP": "5210.43", "TRAINING": "3.5"}
        assert len(out["chat_keys"]) == 500
        for k in out["chat_keys"]:  # two concurrent grants each: 2 x 10.43, 2 x 0.5
            assert raw.hgetall(k) == {"BDP": "20.86", "TRAINING": "1"}, k
        # signup + first grant + 1,000 chat grants; the replayed grant and the refused
        # overspend appended nothing.
        assert raw.xlen("tally:log") == 1002


def test_coupon_race(start_server) -> None:
    s: Server = start_server()
    out = run_example("coupon_race.py", s.url)
    winners: dict[str, int] = out["winners"]
    assert len(winners) == 100
    assert sorted(winners.values()) == list(range(1, 101))
    assert (out["issued"], out["remaining"], out["requests"]) == (100, 0, 1200)
    with s.client() as raw:
        camp = raw.hgetall(out["campaign"])
        assert camp["issued"] == "100" and camp["total"] == "100"
        holders = {f[2:] for f, v in camp.items() if f.startswith("c:")}
        assert holders == set(winners)
        assert all(camp[f"c:{u}"] == "1" for u in holders)
        assert raw.xlen("tally:log") == 101  # the campaign + exactly 100 claims


def test_usage_quota(start_server) -> None:
    s: Server = start_server()
    out = run_example("usage_quota.py", s.url)
    used, limit, units = Decimal(out["used"]), Decimal(out["limit"]), Decimal(out["units"])
    assert used <= limit
    assert used == out["accepted_calls"] * units
    assert limit - used < units  # consumers stopped only when the next call did not fit
    with s.client() as raw:
        reply = raw.execute_command("USAGE.GET", out["key"])
        got = dict(zip(reply[::2], reply[1::2]))
        assert Decimal(got["used"]) == used and Decimal(got["limit"]) == Decimal(1000)
        assert raw.xlen("tally:log") == 1 + out["accepted_calls"]


def test_currency_on_a_cluster(cluster: Cluster) -> None:
    out = run_example("currency.py", cluster.url)
    rc = redis.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port, decode_responses=True)
    try:
        assert rc.hgetall(out["user_key"]) == {"BDP": "5210.43", "TRAINING": "3.5"}
        assert {rc.hget(k, "BDP") for k in out["chat_keys"]} == {"20.86"}
        nodes_used = {cluster.nodes.index(cluster.node_of(k)) for k in out["chat_keys"]}
        assert nodes_used == {0, 1, 2}
    finally:
        rc.close()
