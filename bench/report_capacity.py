#!/usr/bin/env python3
"""Turns the JSON of `tally-bench capacity` and `tally-bench growth` (their fields:
bench/src/shipper/results.rs, CapacityResults and GrowthResults) into docs/bench-capacity.md
and a chart (docs/bench-capacity.png). Called by scripts/bench-capacity.sh:

    report_capacity.py [--capacity C.json] [--growth G.json] --doc D.md --chart P.png \
                       --command CMD --commit GIT

Either input may be missing (that section then says it was not run). The chart needs
matplotlib (the wrapper runs this script with a venv that has it); without it the report is
written without the chart.
"""
import argparse
import datetime
import json
import os
import sys


def when(unix):
    return datetime.datetime.fromtimestamp(unix, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def num(v, digits=0):
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


def mib(b):
    return f"{b / 1048576:,.0f} MiB"


def pg_settings(run):
    """The run's `name=value, ...` Postgres settings as a dict."""
    return dict(kv.split("=", 1) for kv in run["postgres_settings"].split(", ") if "=" in kv)


def machine(w, res, what):
    run = res["run"]
    w(f"- {what}: started {when(run['started_unix'])}, took {run['finished_unix'] - run['started_unix']} s")
    w("- load average (1/5/15 min): " + "; ".join(f"{l['at']} {l['loadavg']}" for l in run["load"]))
    w(f"- nproc {run['nproc']}, {run['cpu']}; {run['redis_version']}; {run['postgres_version']}")
    started = run.get("postgres_start_settings") or []
    conf = f" and, started with BENCH_PG_CONF, `{' '.join(started)}`" if started else ""
    w(f"- PostgreSQL: initdb defaults but `track_commit_timestamp = on`{conf} ({run['postgres_settings']})")
    w(f"- libtally.so sha256 {run['module']['sha256']}, tally-shipper sha256 {run['shipper']['sha256']}")


def section(w, res, title):
    w(f"## {title}")
    w("")
    machine(w, res, "run")
    w("")


def capacity(w, res):
    st, steps = res["settings"], res["steps"]
    kafka = st.get("path") == "kafka"
    section(w, res, "1. Capacity through Kafka" if kafka else "1. Capacity on the direct path")
    w(f"Mixed workload from {st['clients']} connections, each sending one command at a time on its own")
    w("fixed schedule (open loop: a client behind schedule sends at once, until the step ends). Per 20 commands: 10")
    w("`ASSET.INCR acct:<k> gold 1 ID <op-id>`, 4 `ASSET.TRANSFER {u<k>}.wallet {u<k>}.savings gold 1`,")
    w("3 `COUPON.CLAIM camp:<k%10> <new user>`, 3 `USAGE.CONSUME use:<k> 1`, k uniform over 10,000.")
    writers = st["writers"] if st["writers"] is not None else "default (4)"
    if kafka:
        w("One `tally-shipper run` with `--kafka-brokers` (forward into a new topic on one tansu broker")
        w("on the same machine, persist from it into Postgres, in one process; default batch) runs through every")
    else:
        w(f"One `tally-shipper run` (direct path, `--pg-writers` {writers}, default batch) runs through every")
    w(f"step; each step lasts {st['step_seconds']:g} s and starts once the previous step's backlog is")
    w(f"down to {st['slack_min']} (or after 30 s). The setup appended {res['setup_events']:,} events, shipped before step 1.")
    w("")
    cpu_head = "redis / shipper / postgres / bench" + (" / broker" if kafka else "")
    w(f"| target cmd/s | achieved cmd/s | errors | shipped ev/s | backlog start -> end | freshness p50 / p99 / max ms | events with ts in the step / ok cmds | CPU s {cpu_head} | behind schedule s | passed |")
    w("|---:|---:|---:|---:|---|---|---|---|---:|---|")
    for s in steps:
        f = s["freshness"]
        ok = s["sent"] - s["errors"]
        c = s["cpu"]
        cpu = f"{c['redis']:.1f} / {c['shipper']:.1f} / {c['postgres']:.1f} / {c['bench']:.1f}"
        cpu += f" / {c.get('broker', 0):.1f}" if kafka else ""
        w(f"| {num(s['target_rate'])} | {num(ok / s['seconds'])} | {s['errors']:,} | {num(s['shipped'] / s['seconds'])} "
          f"| {s['backlog_start']:,} -> {s['backlog_end']:,} | {num(f['p50_ms'], 1)} / {num(f['p99_ms'], 1)} / {num(f['max_ms'], 1)} "
          f"| {f['events']:,} / {ok:,} | {cpu} "
          f"| {s['max_behind_schedule_s']:.2f} | {'yes' if s['passed'] else '**no**'} |")
    w("")
    t = res.get("stored")
    if t:
        whole = "every one" if t["stored"] == t["expected"] and t["failed_events"] == 0 else "**NOT every one**"
        w(f"Whole run, once drained: {t['stored']:,} events stored of the {t['expected']:,} the setup and every")
        w(f"successful command produced ({whole}); {t['failed_events']:,} rows in failed_events.")
        w("")
    cap = res["capacity"]
    d = res["drain"]
    m = d.get("measured")
    ceiling = m["rows"] / m["drain_s"] if m and m["drain_s"] > 0 else None
    w(f"**Capacity: {num(cap)} commands/s** (the highest step that achieved >= {st['achieved_min']:g} x its target")
    if kafka:
        w("rate with a bounded backlog and p99 freshness < 1 s, in a run that stored every event). The issue")
        w("sets no goal for this path: the broker here is tansu on the same 2 cores, not a Kafka cluster.")
    else:
        w("rate with a bounded backlog and p99 freshness < 1 s, in a run that stored every event). Goal >= 20,000:")
        w(f"**{'MET' if cap and cap >= 20000 else 'MISS'}**.")
    w("")
    name = "Kafka" if kafka else "Direct"
    if m:
        w(f"{name} drain ceiling of the same run (bench/src/shipper/drain.rs): a backlog of {d['n']:,}")
        w(f"`ASSET.INCR` events drained in {m['drain_s']:.2f} s = **{num(ceiling)} events/s** ({d['status']}),")
        w("after the steps, on the same servers (an ASSET.INCR-only backlog: one key and one change per")
        w("event, like 14 of the mix's 20 commands; a transfer writes two of each).")
    else:
        w(f"{name} drain ceiling: not measured ({d['status']}).")
    w("")
    w("- achieved = commands that succeeded / step seconds; shipped = events whose transaction committed")
    w("  while the step ran (`pg_xact_commit_timestamp(xmin)`) / step seconds.")
    w("- freshness = commit time of the transaction that stored the event - the event's `ts` (its time in")
    w("  Redis), over the events whose `ts` falls in the step, measured after the whole run drained.")
    w("  (`events.persisted_at` is `now()` = the transaction's start, not its commit, so the commit timestamp")
    w("  is used.)")
    if kafka:
        w("- backlog = events appended to the stream (XINFO STREAM `entries-added`) - rows of `events`: every")
        w("  event not yet in Postgres, in Redis, in the producer or in the topic; bounded = end <= start + max(")
    else:
        w("- backlog = the shipper group's `lag` + `pending` (XINFO GROUPS); bounded = end <= start + max(")
    w(f"  {st['slack_min']}, {st['slack_seconds']:g} s x target rate).")
    w("- CPU s = user + system seconds during the step from /proc/<pid>/stat: redis-server; tally-shipper;")
    w("  the postmaster with every backend (live children, plus children it reaped); tally-bench, which")
    w("  generates the load on the same 2 cores" + ("; tansu, the broker." if kafka else "."))
    w("")


def lat(q):
    return f"{q['p50_ms']:.2f} / {q['p99_ms']:.2f} ({q['mean_rows']:.0f})"


def drain_rate(d):
    """Events/s of a growth drain (None: not measured, as in results from before `again`)."""
    if not d:
        return None
    return d["n"] / d["drain_s"] if d["drain_s"] > 0 else 0


def wal_per_event(d, i):
    """pg_stat_wal's `wal[i]` (0 records, 1 full-page images, 2 bytes) per drained event."""
    return d["wal"][i] / d["n"]


def drain_status(d):
    if not d:
        return ""
    status = "" if d["status"] == "ok" else f" ({d['status']})"
    if d.get("stored") is not None and d["stored"] != d["n"]:
        status += f" ({d['stored']:,} of {d['n']:,} stored)"
    return status


def ratio_cell(rate, base):
    return f"{rate / base:.2f}x" if rate is not None and base else "-"


def month_cell(p):
    m = p.get("drain_month")
    if not m:
        return "-"
    return f"{m['month']}: {m['event_keys']:,} / {m['event_changes']:,}"


def growth(w, res, link):
    st, pts = res["settings"], res["points"]
    section(w, res, "2. Growth: drain rate and the statement query as the history grows")
    w(f"A synthetic history written with COPY (bench/src/shipper/history.rs): {st['growth_accounts']:,} accounts,")
    w("the account of rank r drawn with probability ~1/r (continuous Zipf, s = 1; ranks scattered over the")
    w("key space), 4 in 5 events `asset.incr`, 1 in 5 `asset.transfer` (two keys, two changes), one in 3")
    w("with an op-id; rows of `events`, `event_keys` and `event_changes` as the shipper writes them, in")
    w(f"history format 2 ([docs/history.md]({link}): the last two partitioned by the UTC month of the")
    w("event's `ts_ms`), and each account's `balances` and `key_seqs` row. Each point's new events are")
    w("spread over the 12 UTC calendar months ending with the current one (from the first day of the month")
    w("11 months back to the end of the current month), 1/12 of them in each month: every month's partition,")
    w("the current one the drain writes into included, holds 1/12 of the history at every point whatever the")
    w("date of the run, as at the end of a month (the worst case for the drain). The current month's share")
    w("runs to the month's end, so some history events are later than the run: harmless here, nothing reads")
    w("by time (and across points an account's later seqs can have earlier times; the statement reads by")
    w("seq). The months are created first (`tally_history_months`); the indexes, `events`' (as in migration")
    w("0004) and the per-key `event_keys (data_key, seq)` and `event_changes (data_key, field, seq)` (as in")
    w("migration 0007: on the partitioned tables, so every month's partition has its own) are dropped during")
    w("COPY and rebuilt after it, then VACUUM ANALYZE and CHECKPOINT. At each size: a backlog of")
    w(f"{st['growth_backlog']:,} `ASSET.INCR acct:<random of {st['growth_backlog_accounts']:,}> gold 1` (their keys sort")
    w("next to the history's `acct:<n>h`, so the inserts land all over the current month's indexes), drained")
    w("by `tally-shipper run` (direct, default batch and writers), timed from its start until its group has")
    w("nothing pending or unread, right after the CHECKPOINT (the drain; the worst moment: the first change")
    w("to each page after a checkpoint writes the whole page to the WAL), then the same backlog again at")
    w("once, in the same checkpoint cycle (again: most pages it changes are imaged already, as in a")
    w("pipeline that has run for minutes); then the account statement of docs/operations.md, `tally_statement(key,")
    w(f"'gold')` (the newest 50 changes; it plans for each key and merges every month's index), {st['growth_queries']} times")
    w("each on hot accounts (the 100 most active) and cold ones (1 to 3 events), one connection, prepared")
    w("as drivers do, timed at the client. Earlier points' drained")
    w("events stay in the database, in the current month. On the empty database the history accounts do not")
    w("exist yet, so its statement queries return no rows (mean rows in brackets).")
    if st.get("pg_set"):
        w(f"Postgres settings changed for this run (ALTER SYSTEM): `{' '.join(st['pg_set'])}`.")
    w("")
    w("| history events | rows events / event_keys / event_changes | of which in the drain's month: event_keys / event_changes | database | bytes per event | drain ev/s | vs empty | again ev/s | vs empty's again | statement hot p50 / p99 ms (mean rows) | cold p50 / p99 ms (mean rows) | load at the point |")
    w("|---:|---|---|---:|---:|---:|---:|---:|---:|---|---|---|")
    base, base_again = None, None
    for p in pts:
        rate, again = drain_rate(p.get("drain")), drain_rate(p.get("again"))
        base, base_again = base or rate, base_again or again
        r = p["rows"]
        per = p["database_bytes"] / r["events"] if r["events"] else None
        w(f"| {p['history_events']:,} | {r['events']:,} / {r['event_keys']:,} / {r['event_changes']:,} | {month_cell(p)} "
          f"| {mib(p['database_bytes'])} | {num(per)} | {num(rate)}{drain_status(p['drain'])} | {ratio_cell(rate, base)} "
          f"| {num(again)}{drain_status(p.get('again'))} | {ratio_cell(again, base_again)} | {lat(p['hot'])} "
          f"| {lat(p['cold'])} | {p['loadavg']} |")
    w("")
    if len(pts) > 1:
        last = pts[-1]
        ratio = drain_rate(last["drain"]) / base if base else 0
        p99 = max(last["hot"]["p99_ms"], last["cold"]["p99_ms"])
        w(f"At the largest size measured here ({last['history_events']:,} events; the issue asks for 20M): drain rate")
        w(f"{ratio:.2f}x the empty database (goal >= 0.8x: **{'MET' if ratio >= 0.8 else 'MISS'}** at this size,")
        w("judged on the drain right after the checkpoint), statement")
        w(f"p99 {p99:.2f} ms, hot and cold (goal < 10 ms: **{'MET' if p99 < 10 else 'MISS'}** at this size).")
        again = drain_rate(last.get("again"))
        if again and base_again:
            w(f"The second drain, in the same checkpoint cycle: {again / base_again:.2f}x the empty database's second drain.")
        w("")
    shared_buffers = pg_settings(res["run"]).get("shared_buffers", "?")
    findings(w, pts, link, shared_buffers)
    w("- copy / index rebuild seconds per point: " + "; ".join(
        f"{p['history_events']:,}: {p['copy_s']:.0f} s / {p['index_s']:.0f} s" for p in pts))
    w("- WAL written during each drain (pg_stat_wal, up to the shipper's exit): " + "; ".join(
        f"{p['history_events']:,}: {wal_per_event(p['drain'], 2):,.0f} bytes and "
        f"{wal_per_event(p['drain'], 1):.2f} full-page images per event"
        for p in pts))
    if all(p.get("again") for p in pts):
        w("- WAL written during each second drain (again): " + "; ".join(
            f"{p['history_events']:,}: {wal_per_event(p['again'], 2):,.0f} bytes and "
            f"{wal_per_event(p['again'], 1):.2f} full-page images per event, Postgres "
            f"{p['again']['cpu']['postgres']:.1f} CPU s" for p in pts))
    w("- CPU seconds during each drain (redis / shipper / postgres): " + "; ".join(
        f"{p['history_events']:,}: {p['drain']['cpu']['redis']:.1f} / {p['drain']['cpu']['shipper']:.1f} / "
        f"{p['drain']['cpu']['postgres']:.1f}" for p in pts))
    w("- table sizes (events / event_keys / event_changes, with indexes and every partition): " + "; ".join(
        f"{p['history_events']:,}: " + " / ".join(mib(b) for b in p["table_bytes"]) for p in pts))
    if all(p.get("drain_month") for p in pts):
        w("- the drain's month's partitions before the drain (event_keys / event_changes, with indexes): " + "; ".join(
            f"{p['history_events']:,}: " + " / ".join(mib(b) for b in p["drain_month"]["table_bytes"]) for p in pts))
    w("- the machine has 24 GB of RAM: at these sizes the whole database fits in the OS page cache")
    w(f"  (shared_buffers is {shared_buffers}), so this measures B-tree and WAL work, not disk reads.")
    w("")
    redis_memory(w, res.get("redis_memory") or [])


def redis_memory(w, mem):
    if not mem:
        return
    w("### Redis memory per account")
    w("")
    w("After FLUSHALL, `ASSET.INCR acct:<i> gold 1` for i = 0 .. N-1 (pipelined), the stream trimmed to")
    w("nothing (`XTRIM MAXLEN 0`); per account = (used_memory - used_memory after FLUSHALL) / N, which")
    w("includes the account's hash and its entry in the module's `tally:seq` hash.")
    w("")
    w("| accounts | used_memory | per account |")
    w("|---:|---:|---:|")
    for m in mem:
        per = (m["used_memory"] - m["used_memory_empty"]) / m["accounts"]
        w(f"| {m['accounts']:,} | {mib(m['used_memory'])} | {per:,.0f} bytes |")
    w("")


def findings(w, pts, link, shared_buffers):
    """What the growth figures say about the drain, from the figures themselves."""
    if len(pts) < 2:
        return
    rate = lambda p: drain_rate(p["drain"])  # noqa: E731
    per = lambda p, i, which="drain": wal_per_event(p[which], i)  # noqa: E731
    first, last = pts[0], pts[-1]
    ratio = rate(last) / rate(first)
    w("### Reading the drain figures")
    w("")
    w(f"From the empty database to {last['history_events']:,} events the drain rate went from {rate(first):,.0f} to")
    w(f"{rate(last):,.0f} events/s ({ratio:.2f}x); WAL per drained event from {per(first, 2):,.0f} to {per(last, 2):,.0f} bytes,")
    w(f"full-page images per event from {per(first, 1):.2f} to {per(last, 1):.2f}; Postgres CPU seconds for the drain from")
    w(f"{first['drain']['cpu']['postgres']:.1f} to {last['drain']['cpu']['postgres']:.1f}.")
    month = last.get("drain_month")
    held = f" ({month['event_changes']:,} `event_changes` rows at the largest size)" if month else ""
    w(f"The history is partitioned by month (history format 2, [docs/history.md]({link})): `event_keys` and")
    w("`event_changes` have one partition per UTC month of `ts_ms`, each with its own per-key index (not")
    w("unique: the shipper finds forks under a lock of each key's `key_seqs` row). A drained event inserts")
    w("into the current month's indexes only, which hold one month of history, not all of it: here 1/12 of")
    w(f"the history plus the earlier points' drains{held}, the most a month holds, at its end.")
    if ratio < 0.8:
        w("The drain still slows as that month grows. Each drained event inserts into those indexes at a random")
        w(f"place: once they are larger than shared_buffers ({shared_buffers} here) nearly every insert reads a leaf page")
        w("into shared_buffers and dirties it (CPU, and evictions that write), and the first change to a page")
        w("after a checkpoint writes the whole 8 kB page to the WAL (full_page_writes). The drain here starts")
        w("right after a CHECKPOINT, the worst moment for the page images; in production every checkpoint")
        w("(checkpoint_timeout, 5 min by default) starts that cycle again.")
        if last.get("again") and first.get("again"):
            w(f"The second drain at the largest size, in the same cycle, wrote {per(last, 1, 'again'):.2f} full-page images per event")
            w(f"(the first {per(last, 1):.2f}) and ran at {drain_rate(last['again']):,.0f} events/s, "
              f"{drain_rate(last['again']) / drain_rate(first['again']):.2f}x the empty database's second drain:")
            w("what is left is the B-tree work of inserting at random into larger indexes.")
        w("What could still help (each to be")
        w("measured with this benchmark; the settings of this run are listed above):")
        w("- `wal_compression = lz4` (GROWTH_PG_SET=\"wal_compression=lz4\"): smaller page images; it does not")
        w("  remove the page reads and the CPU.")
        w("- a larger `shared_buffers` (BENCH_PG_CONF=\"shared_buffers=...\" starts Postgres with it): more of")
        w("  the current month's indexes stays in Postgres.")
        w("- a longer `checkpoint_timeout` and larger `max_wal_size`: fewer cycles, each page's image paid once")
        w("  per cycle for more inserts (longer crash recovery).")
        w("- shorter partitions than a month: smaller current indexes, more partitions for the statement query")
        w("  to merge; a change of history format 2, not a setting.")
        w("- a lower fillfactor on those indexes only delays page splits; it does not avoid the page images.")
    w("")


def chart(cap, gro, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (1 if cap else 0) + (1 if gro else 0)
    fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.8), squeeze=False)
    axes = list(axes[0])
    if cap:
        ax = axes.pop(0)
        steps = cap["steps"]
        x = [s["target_rate"] for s in steps]
        ax.plot(x, [s["freshness"]["p99_ms"] or 0 for s in steps], "o-", color="#d62728", label="p99 freshness")
        ax.plot(x, [s["freshness"]["p50_ms"] or 0 for s in steps], "o--", color="#ff9896", label="p50 freshness")
        ax.axhline(1000, color="#d62728", lw=0.8, ls=":")
        ax.set_yscale("log")
        ax.set_xlabel("target command rate (commands/s)")
        ax.set_ylabel("freshness (ms, log)")
        ax2 = ax.twinx()
        ax2.bar(x, [s["backlog_end"] for s in steps], width=max(x) / 40, color="#1f77b4", alpha=0.5,
                label="backlog at step end")
        ax2.set_ylabel("backlog (entries)")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, loc="upper left", fontsize=8)
        route = "through Kafka" if cap["settings"].get("path") == "kafka" else "direct path"
        ax.set_title(f"capacity: {num(cap['capacity'])} cmd/s ({route})")
    if gro:
        ax = axes.pop(0)
        pts = gro["points"]
        x = [p["rows"]["events"] / 1e6 for p in pts]
        ax.plot(x, [drain_rate(p["drain"]) for p in pts], "o-", color="#2f6fb0",
                label="drain events/s (after a checkpoint)")
        if all(p.get("again") for p in pts):
            ax.plot(x, [drain_rate(p["again"]) for p in pts], "o:", color="#7fa7d6",
                    label="again, same checkpoint cycle")
        ax.set_xlabel("events stored before the drain (millions)")
        ax.set_ylabel("drain rate (events/s)")
        ax.set_ylim(bottom=0)
        ax2 = ax.twinx()
        ax2.plot(x, [p["hot"]["p99_ms"] for p in pts], "s--", color="#d62728", label="statement p99 hot")
        ax2.plot(x, [p["cold"]["p99_ms"] for p in pts], "^--", color="#ff7f0e", label="statement p99 cold")
        ax2.set_ylabel("statement query p99 (ms)")
        ax2.set_ylim(bottom=0)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, loc="lower left", fontsize=8)
        ax.set_title("growth: drain rate and statement latency")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--capacity")
    ap.add_argument("--growth")
    ap.add_argument("--doc", required=True)
    ap.add_argument("--chart", required=True)
    ap.add_argument("--command", required=True)
    ap.add_argument("--commit", required=True)
    args = ap.parse_args()
    load = lambda p: json.load(open(p)) if p and os.path.exists(p) else None  # noqa: E731
    cap, gro = load(args.capacity), load(args.growth)
    out = []
    w = out.append
    w("# Capacity and growth")
    w("")
    w("Written by `scripts/bench-capacity.sh` (unedited output; issue 27). One run on a shared 2-core")
    w("machine where other engineers' builds and tests may run at the same time: read every figure with")
    w("the load averages next to it. Everything runs on 127.0.0.1: redis-server with the module (no AOF/RDB,")
    w("`tally.max-backlog 0`), PostgreSQL 15, tally-shipper and the load generator share the 2 cores.")
    w("")
    w(f"- command: `{args.command}`; git {args.commit}")
    w("")
    w(f"![capacity and growth]({os.path.basename(args.chart)})")
    w("")
    if cap:
        capacity(w, cap)
    else:
        w("## 1. Capacity on the direct path\n\nNot run.\n")
    if gro:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        link = os.path.relpath(os.path.join(root, "docs", "history.md"), os.path.dirname(os.path.abspath(args.doc)))
        growth(w, gro, link)
    else:
        w("## 2. Growth\n\nNot run.\n")
    os.makedirs(os.path.dirname(os.path.abspath(args.doc)), exist_ok=True)
    with open(args.doc, "w") as f:
        f.write("\n".join(out) + "\n")
    try:
        chart(cap, gro, args.chart)
    except Exception as e:  # the report is still useful without the chart
        print(f"chart not written: {e}", file=sys.stderr)


if __name__ == "__main__":
    main()
