#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets into fuzz/seeds/<target>/ (not committed: the
committed corpus in fuzz/corpus/ is these seeds and what fuzzing found, minimized with
`cargo fuzz cmin`; fuzz/README.md).

- request: every command line written as string literals in tests/tests/*.rs, tests/src and
  bench/src (ASSET.INCR acct gold 10 ...), plus the forms docs/commands.md describes, in the
  target's input format (fuzz/src/request.rs): command digit, separator, arguments.
- decimal: the amounts of module/src/domain/decimal.rs's tests, as `a|b|floor|ceil`.
- event_decode: docs/events.md's example, the events of shipper/src/event/decode.rs's
  tests, one event of each type as the module writes it, and broken ones.

Run from anywhere: python3 fuzz/seeds.py
"""
import glob
import hashlib
import json
import os
import re

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
OUT = os.path.join(ROOT, "fuzz", "seeds")
COMMANDS = [
    "ASSET.INCR", "ASSET.GET", "ASSET.TRANSFER", "COUPON.CREATE", "COUPON.CLAIM",
    "COUPON.RELEASE", "COUPON.INFO", "USAGE.LIMIT", "USAGE.CONSUME", "USAGE.GET",
]


def write(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    name = "seed-" + hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def command_line(cmd, args):
    """The request target's input: command digit, separator, arguments."""
    args = [a.encode() if isinstance(a, str) else a for a in args]
    for sep in b" |\x1f":
        if not any(sep in a for a in args):
            break
    body = bytes([sep]).join(args)
    return bytes([ord("0") + COMMANDS.index(cmd), sep]) + body


def request_seeds():
    pat = re.compile(r'"((?:ASSET|COUPON|USAGE)\.[A-Z]+)"((?:\s*,\s*"(?:[^"\\]|\\.)*")*)')
    lines = set()
    files = sorted(
        glob.glob(os.path.join(ROOT, "tests", "tests", "*.rs"))
        + glob.glob(os.path.join(ROOT, "tests", "src", "**", "*.rs"), recursive=True)
        + glob.glob(os.path.join(ROOT, "bench", "src", "**", "*.rs"), recursive=True)
    )
    for f in files:
        for m in pat.finditer(open(f, encoding="utf-8").read()):
            if m.group(1) not in COMMANDS:
                continue
            args = re.findall(r'"((?:[^"\\]|\\.)*)"', m.group(2))
            lines.add((m.group(1),) + tuple(a.encode().decode("unicode_escape") for a in args))
    # docs/commands.md: every option, META with spaces and non-ASCII, bounds of the limits.
    lines |= {
        ("ASSET.INCR", "user.asset.42", "BDP", "10.43", "ID", "grant-42-7", "META", "daily bonus"),
        ("ASSET.INCR", "acct", "gold", "10.5", "gems", "-2", "ID", "op-1", "META", "hello",
         "FLOOR", "-100", "CEIL", "1000"),
        ("ASSET.INCR", "acct", "gold", "1", "META", "m \"q\" é😀\t\\"),
        ("ASSET.INCR", "acct", "gold", "1", "META", "x" * 4096),
        ("ASSET.INCR", "k" * 512, "f" * 512, "1", "ID", "o" * 128),
        ("ASSET.INCR", "acct", *[x for i in range(64) for x in (f"f{i}", str(i))]),
        ("ASSET.INCR", "acct", "gold", "-0", "NOFLOOR", "CEIL", "-0.5"),
        ("ASSET.GET", "acct", "gold", "gems", "kind"),
        ("ASSET.TRANSFER", "a", "b", "gold", "99999999999999999999.999999999999999999",
         "META", "move", "ID", "t-9"),
        ("COUPON.CREATE", "camp", "100", "PERUSER", "2", "START", "10", "END", "20", "META", "x"),
        ("COUPON.CREATE", "camp", "5", "start", "9223372036854775807"),
        ("COUPON.CLAIM", "{camp}", "user-ü", "ID", "c-1", "META", "first"),
        ("COUPON.INFO", "{camp}x"),
        ("USAGE.LIMIT", "quota", "0", "PERIOD", "Month", "META", "reset"),
        ("USAGE.CONSUME", "quota", "0.000000000000000001", "META", "", "ID", "u"),
        ("USAGE.GET", "quota"),
    }
    for line in sorted(lines):
        write("request", command_line(line[0], line[1:]))


def decimal_seeds():
    values = [
        "0.1|0.2", "5200|10.43", "100.50", "-0", "+7", "007.000", "-0.000000000000000001",
        "1.5000000000000000000000", "99999999999999999999.999999999999999999|0.000000000000000001",
        "-99999999999999999999.999999999999999999|-1", "1e5", " 1", "inf", "NaN", ".5", "5.",
        "1.2.3", "0x10", "--1", "0.0000000000000000001", "100000000000000000000",
        "1.5" + "0" * 200, "-" + "0" * 200 + "7.25",
        "5|-5.01|-10", "0|-1000|none", "0.8|0.3||1", "1|1|0|1", "-20|5||10", "3|-1|5",
    ]
    for v in values:
        write("decimal", v)


def event(typ, keys, op=None, meta=None, **body):
    e = {"v": 1, "id": "01a24c78-b100-7d26-a10a-5f6815b9aca7", "type": typ,
         "ts": 1796579307776, "op": op, "meta": meta,
         "keys": [{"key": k, "seq": s} for k, s in keys]}
    e.update(body)
    if op is not None:
        e["fp"] = "3817477cfd6058838715182449c0f43e"
        e["reply"] = {"Array": ["5210.43"]}
    return json.dumps(e, ensure_ascii=False, separators=(",", ":"))


def event_seeds():
    docs = open(os.path.join(ROOT, "docs", "events.md"), encoding="utf-8").read()
    for block in re.findall(r"```json\n(.*?)```", docs, re.S):
        write("event_decode", block.strip())
    decode_rs = open(os.path.join(ROOT, "shipper", "src", "event", "decode.rs"),
                     encoding="utf-8").read()
    for raw in re.findall(r'r#"(\{.*?\})"#', decode_rs, re.S):
        write("event_decode", raw)
    coupon = {"campaign": "camp", "user": "alice", "issue": 1, "total": 10, "issued": 1,
              "remaining": 9, "peruser": 1, "start": 0, "end": 0}
    usage = {"key": "quota", "amount": "2.5", "used": "2.5", "limit": "10", "period": "day",
             "period_id": "2026-12-06"}
    change = lambda k, d, b: {"key": k, "field": "BDP", "delta": d, "balance": b}
    for e in [
        event("asset.incr", [("user.asset.42", 1)], "grant-42-7", "daily bonus",
              changes=[change("user.asset.42", "10.43", "5210.43")]),
        event("asset.incr", [("acct", 3)], None, "m \"q\" é😀\t\\",
              changes=[change("acct", "-0.5", "0"), {**change("acct", "1", "1"), "field": "g"}]),
        event("asset.transfer", [("a", 2), ("b", 5)], "t-1", None,
              changes=[change("a", "-2.5", "7.5"), change("b", "2.5", "2.5")]),
        event("coupon.create", [("camp", 1)], "cc-1", None,
              coupon={**coupon, "user": None, "issue": None, "issued": 0, "remaining": 10}),
        event("coupon.claim", [("camp", 2)], None, None, coupon=coupon),
        event("coupon.release", [("camp", 3)], "rl-1", "back",
              coupon={**coupon, "issued": 0, "remaining": 10}),
        event("usage.limit", [("quota", 1)], None, None,
              usage={**usage, "amount": None, "used": "0", "period": "month",
                     "period_id": "2026-12"}),
        event("usage.consume", [("quota", 2)], "uc-1", None, usage=usage),
        event("usage.consume", [("quota", 2)], None, None,
              usage={**usage, "period": "none", "period_id": "all"}),
    ]:
        write("event_decode", e)
    for broken in [
        "", "{}", "null", "[]", '{"v":2}', "not json",
        event("asset.incr", [("k", 0)], changes=[change("k", "1", "1")]),
        event("asset.incr", [("k", 1), ("k", 2)], changes=[change("k", "1", "1")]),
        event("asset.incr", [("k", 1)], changes=[change("k", "1.50", "1")]),
        event("asset.burn", [("k", 1)], changes=[]),
        event("usage.consume", [("q", 1)], usage={**usage, "amount": None}),
        event("coupon.claim", [("c", 1)], coupon={**coupon, "issue": 0}),
        event("asset.incr", [("k", 1)], meta="a\u0000b", changes=[change("k", "1", "1")]),
    ]:
        write("event_decode", broken)


if __name__ == "__main__":
    request_seeds()
    decimal_seeds()
    event_seeds()
    for t in sorted(os.listdir(OUT)):
        print(t, len(os.listdir(os.path.join(OUT, t))))
