#!/usr/bin/env python3
"""Turns the JSON of `tally-bench shipper` (see bench/src/shipper/results.rs for its fields)
into docs/bench-shipper.md. Called by scripts/bench-shipper.sh as `bench/report.py shipper`:

    report.py shipper --results R.json --doc D.md --command C --commit G
"""
import argparse
import datetime


def mib(b):
    return f"{int(b) / 1048576:.1f} MiB"


def per_s(count, seconds):
    return count / seconds if seconds > 0 else 0


def batch(b):
    return "default" if b is None else str(b)


def binary(b):
    when = datetime.datetime.fromtimestamp(b["modified_unix"]).strftime("%Y-%m-%d %H:%M:%S")
    return f"{b['sha256']}  {when}"


def machine(w, res, args):
    run, st = res["run"], res["settings"]
    date = datetime.datetime.fromtimestamp(run["started_unix"]).strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    load = run["load"]
    w("# tally-shipper benchmarks")
    w("")
    w("Written by `scripts/bench-shipper.sh` (unedited output). Numbers are from one run on a shared")
    w("2-core machine where other work may have been running: read them with the load averages")
    w("below, and compare the ratios measured in the same run rather than absolute rates across runs.")
    w("")
    w("## Machine and run")
    w("")
    w(f"- date: {date}, wall time of the whole script: {run['finished_unix'] - run['started_unix']} s")
    w(f"- command: `{args.command}`")
    w(f"- nproc: {run['nproc']}, CPU: {run['cpu']}")
    w(f"- load average (1/5/15 min): start {load['start']}; after the direct drains {load['after_direct']}; "
      f"after the Kafka drains {load['after_kafka']}; end {load['end']}")
    w(f"- {run['redis_version']}")
    started = run.get("postgres_start_settings") or []
    conf = f" but, started with BENCH_PG_CONF, `{' '.join(started)}`" if started else ""
    w(f"- {run['postgres_version']} (initdb defaults{conf}: {run['postgres_settings']})")
    w(f"- tansu: {run['tansu_version'] or 'n/a'}, storage `{st['tansu_storage']}`")
    w(f"- git: {args.commit}; libtally.so sha256 {binary(run['module'])}; tally-shipper sha256 {binary(run['shipper'])}")
    w("- everything on 127.0.0.1: redis-server (no AOF/RDB, `tally.max-backlog 0`), PostgreSQL, tansu and")
    w("  tally-shipper share the 2 cores with the load generator.")
    w("")


def drain_rate(w, res):
    st, ceil = res["settings"], res["ceiling"]
    w("## 1. Drain rate (backlog -> Postgres)")
    w("")
    w("Backlog pre-filled with `redis-benchmark -P 16 -c 50 -n N -r 10000 ASSET.INCR acct:__rand_int__ gold 1`")
    w("(XLEN checked == N), then `tally-shipper run --pg-writers W` (batch size B, `default` = the")
    w("shipper's default; other settings default) started; time = from starting the shipper process until")
    w("`SELECT count(*) FROM events` (polled every 0.5 s) reached N, so it includes shipper start-up")
    w("(and, through Kafka, topic creation). Redis flushed and all tables")
    w(f"truncated before each run; time limit {st['drain_timeout_s']} s per direct run, {st['kafka_timeout_s']} s per Kafka run (a timed-out")
    w("run reports the rows persisted by then divided by the time). WARN = WARN lines in the shipper log.")
    w("")
    ceiling = int(per_s(ceil["rows"], ceil["seconds"]))
    w(f"Server-side ceiling, same server, same run: {ceil['rows']:,} rows of {ceil['raw_len']} bytes (the mean event")
    w("size of the last drain) with a time-ordered uuid primary key, inserted by one")
    w(f"`INSERT ... SELECT ... FROM generate_series` statement: **{ceiling:,} rows/s**. The ratio column is")
    w("the drain rate over that ceiling (what share of the database's raw insert speed the whole")
    w("pipeline reaches, with its history, derived tables and acknowledgements).")
    w("")
    w("| path | writers | batch size | N | fill time (s) | fill rate (ev/s) | drain time (s) | drain rate (ev/s) | ratio to ceiling | first row after (s) | status | WARN |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for d in res["drains"]:
        m, path, b = d["measured"], d["route"], batch(d["batch_size"])
        if m is None:
            w(f"| {path} | | {b} | {d['n']:,} | | | | | | | {d['status']} | |")
            continue
        rate = int(per_s(m["rows"], m["drain_s"]))
        status = d["status"] if d["status"] == "ok" else f"{d['status']} ({m['rows']} rows persisted)"
        ratio = f"{rate / ceiling:.2f}" if ceiling and path == "direct" else ""
        writers = d["writers"] if path == "direct" and d["writers"] is not None else ("default" if path == "direct" else "")
        first = "" if m["first_row_s"] is None else f"{m['first_row_s']:.2f}"
        w(f"| {path} | {writers} | {b} | {d['n']:,} | {m['fill_s']:.2f} | {int(per_s(d['n'], m['fill_s'])):,} | "
          f"{m['drain_s']:.2f} | **{rate:,}** | {ratio} | {first} | {status} | {m['warn_lines']} |")
    if any(d["route"] == "kafka" for d in res["drains"]):
        w("")
        w(f"Kafka runs use N = {st['kafka_n']:,} (BENCH_SHIPPER_KAFKA_N), not the direct path's "
          f"{st['n']:,}: the path goes through a single tansu broker (storage `{st['tansu_storage']}`) on the same")
        w("2 cores, which moves a few hundred to a few thousand messages/s; the rate is what was measured")
        w("at this N; nothing is extrapolated. Section 1b compares each Kafka stage with the broker's own ceiling.")


def kafka_stages(w, ks):
    n = ks["n"]
    fwd, per, plain = ks["forward"], ks["persist"], ks["plain"]
    w("")
    w("### 1b. Kafka stages vs the broker's ceiling (same broker, same run)")
    w("")
    w(f"`forward` drains {n:,} events into a new topic; then `persist` alone moves that topic into Postgres.")
    w("Both are timed warm, as the plain clients are: `forward` first ships 100 events (its idempotent")
    w("producer id, connections and the topic's metadata are then in place; on tansu that start-up alone")
    w(f"takes 0.5-1 s, which timed into a {n:,}-event run would measure the start-up, not the rate), then")
    w(f"the clock runs from the moment Redis appended the first of the {n:,} events (the time in its stream")
    w("id) until a poll every 5 ms sees the group past all of them with nothing pending (acknowledged after")
    w("every delivery report); the harness's start of its writing connection is not counted. `persist` is timed by")
    w("Postgres: the rows of every transaction but the last, over the time from the first transaction's start")
    w("to the last one's (`events.persisted_at`). The ceiling (`shipper/examples/kafka_ceiling.rs`), also")
    w("warm (100 messages first): a plain librdkafka producer (idempotent, acks=all, linger 5 ms, 10,000")
    w(f"outstanding) sends {n:,} messages of {ks['message_bytes']} bytes to a new 3-partition topic, without headers and,")
    w("into another topic, with the two headers `forward` sets (`tally_source`, `event_id`); a plain")
    w("consumer assigned to every partition reads each topic back. `persist` reads messages with those")
    w("headers, and also writes Postgres; the plain consumer does not.")
    w("")
    w("| stage | tally (ev/s) | status | plain client (msg/s) | ratio |")
    w("|---|---:|---|---:|---:|")
    fw, pe = per_s(fwd["events"], fwd["seconds"]), per_s(per["events"], per["seconds"])
    rows = [
        ("forward (stream -> Kafka)", fw, fwd["status"], plain["produce_s"], "producer, no headers"),
        ("forward (stream -> Kafka)", fw, fwd["status"], plain["produce_headers_s"], "producer, forward's 2 headers"),
        ("persist (Kafka -> Postgres)", pe, per["status"], plain["consume_s"], "consumer, no headers"),
        ("persist (Kafka -> Postgres)", pe, per["status"], plain["consume_headers_s"], "consumer, forward's 2 headers"),
    ]
    for stage, tally, status, seconds, what in rows:
        c = per_s(n, seconds)
        w(f"| {stage} | {tally:,.0f} | {status} | {c:,.0f} ({what}) | **{tally / c if c else 0:.2f}** |")


def memory(w, res):
    w("## 2. Memory (Redis)")
    w("")
    w("`used_memory` after FLUSHALL, with the backlog of N unshipped events, and after the drain (the")
    w("shipper XTRIMs acknowledged entries with MINID every second); `MEMORY USAGE tally:log SAMPLES 0`.")
    w("The used_memory delta also contains the 10,000 `acct:*` hashes and the module's `tally:seq` hash;")
    w("the stream column is the stream alone.")
    w("")
    w("| path | batch | N | used_memory empty | with backlog | delta per event | stream with backlog | stream per event | stream after drain (XLEN) | used_memory after drain |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for d in res["drains"]:
        m, n = d["measured"], d["n"]
        if m is None:
            continue
        w(f"| {d['route']} | {batch(d['batch_size'])} | {n:,} | {mib(m['used_memory_empty'])} | {mib(m['used_memory_backlog'])} | "
          f"{(m['used_memory_backlog'] - m['used_memory_empty']) / n:.0f} B | {mib(m['stream_memory_backlog'])} | "
          f"{m['stream_memory_backlog'] / n:.0f} B | {m['stream_memory_after']:,} B ({m['xlen_after']:,}) | {mib(m['used_memory_after'])} |")


def ms(v):
    return "" if v is None else f"{v:.1f}"


def bounded(load, rate):
    """yes when the second half of the load window does not trend above the first half"""
    s, dur = load["samples"], load["seconds"]
    first = [x["xlen"] for x in s if x["t"] < dur / 2 and x["xlen"] is not None]
    second = [x["xlen"] for x in s if dur / 2 <= x["t"] <= dur and x["xlen"] is not None]
    if not (first and second):
        return "n/a"
    return "yes" if max(second) <= 2 * max(first) + 2 * rate else "no (growing)"


def freshness(w, res):
    st = res["settings"]
    w("")
    w("## 3. Sustained freshness (direct path)")
    w("")
    w(f"`tally-shipper run --batch-size {batch(st['fresh_batch_size'])}` running; `tally-bench shipper` sends `ASSET.INCR acct:<i%10000> gold 1`")
    w(f"at a fixed rate on one connection without pipelining for {st['fresh_seconds']:g} s and samples the stream every")
    w("second (XLEN; `pending` = read, not yet acked and `lag` = not yet read, from XINFO GROUPS).")
    w("Freshness per event = commit time of the transaction that stored it (`pg_xact_commit_timestamp(xmin)`,")
    w("with `track_commit_timestamp = on`) - `ts_ms` (module server time), in ms, over all events of the run:")
    w("from the change in Redis to the history row being visible, commit included.")
    w("")
    w("| target rate (ev/s) | achieved rate | events | p50 (ms) | p99 (ms) | max (ms) | mean (ms) | XLEN max / last | pending max | lag (unread) max | bounded? |")
    w("|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|")
    for f in res["freshness"]:
        load, fr = f["load"], f["freshness"]
        s = load["samples"]
        xl = [x["xlen"] for x in s if isinstance(x["xlen"], int)]
        pe = [x["pending"] for x in s if isinstance(x["pending"], int)]
        lg = [x["lag"] for x in s if isinstance(x["lag"], int)]
        ok = "" if fr["events"] == f["expected"] else f" ({fr['events']}/{f['expected']} persisted)"
        w(f"| {int(f['target_rate']):,} | {per_s(load['sent'], load['seconds']):,.0f} | {fr['events']:,}{ok} | "
          f"{ms(fr['p50_ms'])} | {ms(fr['p99_ms'])} | {ms(fr['max_ms'])} | {ms(fr['mean_ms'])} | "
          f"{max(xl) if xl else '-'} / {xl[-1] if xl else '-'} | {max(pe) if pe else '-'} | {max(lg) if lg else '-'} | "
          f"{bounded(load, f['target_rate'])} |")
    w("")
    w("bounded? = yes when the largest XLEN sampled in the second half of the load window is at most")
    w("twice the largest of the first half plus two seconds of load (i.e. the backlog did not keep growing).")
    w("XLEN includes entries already acked but not yet trimmed (XTRIM MINID runs every second).")
    w("")
    w("Per-second samples (t = seconds since the load started; the load stops at the end of the window")
    w("and the last samples show the tail):")
    for f in res["freshness"]:
        s = f["load"]["samples"]
        w("")
        w(f"- {int(f['target_rate']):,} ev/s, XLEN: " + " ".join(str(x["xlen"]) for x in s))
        w("  pending: " + " ".join(str(x["pending"]) for x in s))
    w("")


def main(argv):
    import json

    ap = argparse.ArgumentParser(prog="report.py shipper")
    for a in ["results", "doc", "command", "commit"]:
        ap.add_argument("--" + a, required=True)
    args = ap.parse_args(argv)
    res = json.load(open(args.results))
    out = []
    w = out.append
    machine(w, res, args)
    drain_rate(w, res)
    if res["stages"]:
        kafka_stages(w, res["stages"])
    w("")
    memory(w, res)
    freshness(w, res)
    open(args.doc, "w").write("\n".join(out))
    print("\n".join(out))
