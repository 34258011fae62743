#!/usr/bin/env python3
"""Steady-rate load for scripts/bench-shipper.sh (stdlib only, raw RESP over loopback).

    load.py PORT RATE SECONDS OUT.json

One connection sends `ASSET.INCR acct:<i % 10000> gold 1` one command at a time (no
pipelining: send, wait for the reply), paced to RATE commands/s on a fixed schedule.
A second connection samples the stream every second: XLEN tally:log and, from
XINFO GROUPS tally:log, `pending` (read, not acked) and `lag` (not yet read) of the
first group. Writes the samples and the achieved rate as JSON.
"""
import json, socket, sys, threading, time

def conn(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s, s.makefile("rb")

def enc(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)

def read(f):
    line = f.readline()
    if not line:
        raise EOFError("connection closed")
    t, rest = line[:1], line[1:-2]
    if t == b"+":
        return rest.decode()
    if t == b"-":
        return RuntimeError(rest.decode())
    if t == b":":
        return int(rest)
    if t == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)[:-2]
        return data.decode(errors="replace")
    if t == b"*":
        n = int(rest)
        return None if n < 0 else [read(f) for _ in range(n)]
    raise ValueError("bad RESP: %r" % line)

def cmd(sf, *args):
    s, f = sf
    s.sendall(enc(*args))
    return read(f)

def main():
    port, rate, seconds, out = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    stop = threading.Event()
    samples = []

    def sampler():
        c = conn(port)
        t0 = time.monotonic()
        k = 0
        while not stop.is_set():
            k += 1
            xlen = cmd(c, "XLEN", "tally:log")
            groups = cmd(c, "XINFO", "GROUPS", "tally:log")
            pending = lag = None
            if isinstance(groups, list) and groups:
                g = groups[0]
                d = dict(zip(g[0::2], g[1::2]))
                pending, lag = d.get("pending"), d.get("lag")
            samples.append({"t": round(time.monotonic() - t0, 3), "xlen": xlen,
                            "pending": pending, "lag": lag})
            # next sample on a 1 s grid
            time.sleep(max(0.0, t0 + k - time.monotonic()))

    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    c = conn(port)
    interval = 1.0 / rate
    sent = errors = 0
    late_max = 0.0
    start = time.monotonic()
    end = start + seconds
    nxt = start
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if nxt > now:
            time.sleep(nxt - now)
        else:
            late_max = max(late_max, now - nxt)
        r = cmd(c, "ASSET.INCR", "acct:%d" % (sent % 10000), "gold", "1")
        if isinstance(r, Exception):
            errors += 1
        sent += 1
        nxt += interval
    elapsed = time.monotonic() - start
    # keep sampling a little past the load so the tail is visible
    time.sleep(2.5)
    stop.set()
    th.join(timeout=5)
    json.dump({"target_rate": rate, "seconds": elapsed, "sent": sent, "errors": errors,
               "achieved_rate": sent / elapsed, "max_behind_schedule_s": late_max,
               "samples": samples}, open(out, "w"))

if __name__ == "__main__":
    main()
