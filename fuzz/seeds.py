#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets into fuzz/seeds/<target>/ (not committed: the
committed corpus in fuzz/corpus/ is these seeds and what fuzzing found, minimized with
`cargo fuzz cmin`; fuzz/README.md).

- request: every command line written as string literals in tests/tests/*.rs, tests/src and
  bench/src (ASSET.INCR acct gold 10 ...), plus the forms docs/commands.md and docs/holds.md
  describe, in the target's input format (fuzz/src/request.rs): command code (`0`-`9`, `a`-`k`
  for the hold commands), separator, arguments.
- decimal: the amounts of module/src/domain/decimal.rs's tests, as `a|b|floor|ceil`.
- event_decode: docs/events.md's example, the events of shipper/src/event/decode.rs's
  tests, one event of each type as the module writes it (the twelve hold types included),
  and broken ones.

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
    "ASSET.HOLD", "ASSET.SETTLE", "ASSET.VOID", "ASSET.HOLDS", "ASSET.AVAILABLE",
    "COUPON.RESERVE", "COUPON.CONFIRM", "COUPON.CANCEL",
    "USAGE.RESERVE", "USAGE.COMMIT", "USAGE.CANCEL",
]
# The input's first byte for each command (request.rs, CODES).
CODES = b"0123456789abcdefghijk"


def write(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    name = "seed-" + hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def command_line(cmd, args):
    """The request target's input: command code, separator, arguments."""
    args = [a.encode() if isinstance(a, str) else a for a in args]
    for sep in b" |\x1f":
        if not any(sep in a for a in args):
            break
    body = bytes([sep]).join(args)
    return bytes([CODES[COMMANDS.index(cmd)], sep]) + body


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
    lines |= hold_lines()
    for line in sorted(lines):
        write("request", command_line(line[0], line[1:]))


def hold_lines():
    """docs/holds.md's forms: every option, TTL and id bounds, amounts at and past a hold."""
    big = "99999999999999999999.999999999999999999"
    return {
        ("ASSET.HOLD", "acct", "gold", "30", "TTL", "60000", "FLOOR", "-100", "ID", "h-1",
         "META", "order 7"),
        ("ASSET.HOLD", "acct", "gold", "30.50", "ttl", "1", "NOFLOOR"),
        ("ASSET.HOLD", "acct", "gold", big, "TTL", "2592000000", "FLOOR", "1"),
        ("ASSET.HOLD", "acct", "gold", "1", "TTL", "2592000001"),
        ("ASSET.HOLD", "acct", "gold", "1", "TTL", "0"),
        ("ASSET.HOLD", "acct", "kind", "1", "TTL", "10"),
        ("ASSET.HOLD", "acct", "gold", "0", "TTL", "10"),
        ("ASSET.HOLD", "acct", "gold", "1", "TTL", "10", "FLOOR", "1", "NOFLOOR"),
        ("ASSET.HOLD", "{acct}:1", "gold:eu", "0.000000000000000001", "META", "é", "TTL", "5"),
        ("ASSET.SETTLE", "acct", "1"),
        ("ASSET.SETTLE", "acct", "7", "25", "ID", "s-1", "META", "part"),
        ("ASSET.SETTLE", "acct", "7", "0"),
        ("ASSET.SETTLE", "acct", "7", "-1"),
        ("ASSET.SETTLE", "acct", "7", "id", "s-2"),
        ("ASSET.SETTLE", "acct", "9223372036854775807", big),
        ("ASSET.SETTLE", "acct", "9223372036854775808"),
        ("ASSET.SETTLE", "acct", "9999999999999999999"),
        ("ASSET.SETTLE", "acct", "12345678901234567890"),
        ("ASSET.SETTLE", "acct", "007"),
        ("ASSET.VOID", "acct", "7", "META", "cancelled", "ID", "v-1"),
        ("ASSET.VOID", "acct", "7", "25"),
        ("ASSET.HOLDS", "acct"),
        ("ASSET.AVAILABLE", "acct"),
        ("ASSET.AVAILABLE", "acct", "gold", "gems"),
        ("ASSET.AVAILABLE", "acct", "kind"),
        ("COUPON.RESERVE", "camp", "alice", "TTL", "60000", "ID", "r-1", "META", "cart 9"),
        ("COUPON.RESERVE", "camp", "a,b", "TTL", "60000"),
        ("COUPON.CONFIRM", "camp", "alice", "12", "ID", "c-1"),
        ("COUPON.CONFIRM", "camp", "alice", "1000000000", "META", "paid"),
        ("COUPON.CONFIRM", "camp", "alice", "1000000001"),
        ("COUPON.CANCEL", "camp", "alice", "012"),
        ("COUPON.CANCEL", "camp", "alice", "0"),
        ("USAGE.RESERVE", "quota", "2.5", "TTL", "30000", "ID", "q-1", "META", "job 4"),
        ("USAGE.RESERVE", "quota", "1", "TTL", "30000", "FLOOR", "1"),
        ("USAGE.COMMIT", "quota", "1", "2", "ID", "k-1"),
        ("USAGE.COMMIT", "quota", "1", "0"),
        ("USAGE.COMMIT", "quota", "1", "-0"),
        ("USAGE.COMMIT", "quota", "1", "META", "all"),
        ("USAGE.CANCEL", "quota", "1", "ID", "x-1"),
    }


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
    for e in hold_events(coupon, usage, change):
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


def hold_events(coupon, usage, change):
    """One event of each hold type (docs/holds.md), as commands/holds/*.rs writes it."""
    def hold(kind, status, subject="BDP", amount="30", settled=None):
        # made a minute before the event, due a minute after it (an expiry: at the event)
        expires = 1796579307776 if status == "expired" else 1796579367776
        return {"id": "8" if kind == "coupon" else "3", "kind": kind, "subject": subject,
                "amount": amount, "status": status, "created": 1796579247776,
                "expires": expires, "settled": settled}
    reserved = {**coupon, "issue": 8, "issued": 2, "remaining": 8}
    cancelled = {**coupon, "issue": 8, "issued": 1, "remaining": 9}
    counter = {**usage, "amount": None, "used": "0"}
    c_hold = lambda status, settled=None: hold("coupon", status, "alice", "1", settled)
    u_hold = lambda status, settled=None: hold("usage", status, None, "2.5", settled)
    return [
        event("asset.hold", [("acct", 4)], "h-1", "order 7", hold=hold("asset", "open")),
        event("asset.settle", [("acct", 5)], "s-1", None,
              changes=[change("acct", "-25", "75")], hold=hold("asset", "settled", settled="25")),
        event("asset.void", [("acct", 5)], None, "cancelled", hold=hold("asset", "voided")),
        event("asset.expire", [("acct", 5)], hold=hold("asset", "expired")),
        event("coupon.reserve", [("camp", 3)], "r-1", None, coupon=reserved, hold=c_hold("open")),
        event("coupon.confirm", [("camp", 4)], None, None, coupon=reserved,
              hold=c_hold("settled", "1")),
        event("coupon.cancel", [("camp", 4)], "c-1", None, coupon=cancelled,
              hold=c_hold("voided")),
        event("coupon.expire", [("camp", 4)], coupon=cancelled, hold=c_hold("expired")),
        event("usage.reserve", [("quota", 2)], "q-1", "job 4", usage=counter,
              hold=u_hold("open")),
        event("usage.commit", [("quota", 3)], "k-1", None, usage={**usage, "amount": "2"},
              hold=u_hold("settled", "2")),
        event("usage.commit", [("quota", 3)], None, None, usage={**counter, "amount": "0"},
              hold=u_hold("settled", "0")),
        event("usage.cancel", [("quota", 3)], None, None, usage=counter, hold=u_hold("voided")),
        event("usage.expire", [("quota", 3)], usage=counter, hold=u_hold("expired")),
    ]


if __name__ == "__main__":
    request_seeds()
    decimal_seeds()
    event_seeds()
    for t in sorted(os.listdir(OUT)):
        print(t, len(os.listdir(os.path.join(OUT, t))))
