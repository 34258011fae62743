//! A synthetic history for the growth run, written with COPY as the shipper would have
//! stored it (history format 2, docs/history.md): `asset.incr` events (4 in 5) and
//! `asset.transfer` events (1 in 5) over `accounts` accounts with Zipf-like activity (the
//! account of rank r is picked with probability ~ 1/r; ranks are scattered over the key space),
//! one `events` row each, one `event_keys` row per key, one `event_changes` row per changed
//! balance (both with the event's `ts_ms`, so each lands in its month's partition), and the
//! `balances` and `key_seqs` rows of every account touched. Account keys are
//! `acct:<12 digits>h`: they sort next to the drain's `acct:<12 digits>` keys, so the drain's
//! inserts land all over the history's indexes without reusing its (key, seq) pairs.
//!
//! Each growth spreads its new events over the 12 UTC calendar months ending with the current
//! one, 1/12 of them in each month (uniform within it), in time order, with UUIDv7 ids: every
//! month's partition, the current one included (where the drain writes), holds 1/12 of the
//! history at every size, whatever the date of the run. Some events of the current month are
//! later than now; nothing in the benchmark reads by time. An account's seqs follow the order
//! its events were generated in, so across growths a later seq can have an earlier time.

use std::fmt::Write as _;

use anyhow::Result;
use sqlx::PgPool;

/// A prime that does not divide the account count (scatters the ranks).
const SCATTER: u64 = 999_983;
/// Months the history is spread over: the current UTC month and the 11 before it.
const MONTHS: usize = 12;

/// The bounds (Unix ms) of the `MONTHS` UTC months ending with the current one: the first
/// millisecond of each, then that of the next month.
pub async fn month_bounds(pg: &PgPool) -> Result<Vec<i64>> {
    let bounds: Vec<i64> = sqlx::query_scalar(
        "SELECT (extract(epoch FROM m) * 1000)::bigint FROM generate_series( \
         date_trunc('month', now() AT TIME ZONE 'UTC') - make_interval(months => $1), \
         date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month', \
         interval '1 month') AS m ORDER BY m",
    )
    .bind(MONTHS as i32 - 1)
    .fetch_all(pg)
    .await?;
    anyhow::ensure!(bounds.len() == MONTHS + 1, "month bounds: {bounds:?}");
    Ok(bounds)
}

pub struct History {
    accounts: u64,
    seq: Vec<u32>,
    balance: Vec<i64>,
    last_event: Vec<[u8; 16]>,
    last_ts: Vec<i64>,
    pub events: u64,
    /// `month_bounds`: the months the events are spread over.
    months: Vec<i64>,
    /// The growth under way: the index of its first event and its number of events.
    span: (u64, u64),
}

/// The three tables' COPY text of one chunk.
#[derive(Default)]
struct Chunk {
    events: String,
    keys: String,
    changes: String,
}

fn uuid_v7(ts_ms: i64) -> [u8; 16] {
    let mut b: [u8; 16] = fastrand::u128(..).to_be_bytes();
    b[..6].copy_from_slice(&ts_ms.to_be_bytes()[2..]);
    b[6] = 0x70 | (b[6] & 0x0f);
    b[8] = 0x80 | (b[8] & 0x3f);
    b
}

fn uuid_text(b: &[u8; 16]) -> String {
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

pub fn account_key(a: u64) -> String {
    format!("acct:{a:012}h")
}

impl History {
    /// An empty history of `accounts` accounts whose events will be spread over `months`
    /// (`month_bounds`).
    pub fn new(accounts: u64, months: Vec<i64>) -> History {
        let n = usize::try_from(accounts).unwrap_or(usize::MAX);
        History {
            accounts,
            seq: vec![0; n],
            balance: vec![0; n],
            last_event: vec![[0; 16]; n],
            last_ts: vec![0; n],
            events: 0,
            months,
            span: (0, 1),
        }
    }

    /// The time of event `i` of the growth under way: the span's events in order, 1/12 of
    /// them in each month, uniform within it.
    fn ts(&self, i: u64) -> i64 {
        let (from, n) = self.span;
        let pos = u128::from(i - from) * MONTHS as u128;
        let m = (pos / u128::from(n)) as usize;
        let len = (self.months[m + 1] - self.months[m]) as u128;
        self.months[m] + ((pos % u128::from(n)) * len / u128::from(n)) as i64
    }

    /// The account of rank `rank` (0 = the most active).
    pub fn by_rank(&self, rank: u64) -> u64 {
        (rank % self.accounts) * SCATTER % self.accounts
    }

    /// An account drawn with probability ~ 1/rank (continuous Zipf, s = 1).
    fn draw(&self) -> u64 {
        let rank = (self.accounts as f64).powf(fastrand::f64()) as u64;
        self.by_rank(rank.saturating_sub(1))
    }

    pub fn accounts(&self) -> u64 {
        self.accounts
    }

    /// Events stored for an account.
    pub fn seq_of(&self, a: u64) -> u32 {
        self.seq[a as usize]
    }

    /// Appends events until there are `target`, spread over the months (created first),
    /// COPYing every `chunk` events.
    pub async fn grow(&mut self, pg: &PgPool, target: u64, chunk: u64) -> Result<()> {
        if self.events >= target {
            return Ok(());
        }
        let _: i64 = sqlx::query_scalar("SELECT count(*) FROM tally_history_months($1::bigint[])")
            .bind(&self.months[..MONTHS])
            .fetch_one(pg)
            .await?;
        self.span = (self.events, target - self.events);
        while self.events < target {
            let n = chunk.min(target - self.events);
            let mut c = Chunk::default();
            for _ in 0..n {
                self.event(&mut c);
            }
            let mut conn = pg.acquire().await?;
            for (table, columns, text) in [
                (
                    "events",
                    "event_id, type, ts_ms, op, meta, raw, stream, stream_id, source, via",
                    c.events,
                ),
                ("event_keys", "event_id, data_key, seq, ts_ms", c.keys),
                (
                    "event_changes",
                    "event_id, idx, data_key, field, delta, balance, seq, ts_ms",
                    c.changes,
                ),
            ] {
                let sql = format!("COPY {table} ({columns}) FROM STDIN");
                let mut copy = conn.copy_in_raw(&sql).await?;
                copy.send(text.into_bytes()).await?;
                copy.finish().await?;
            }
        }
        Ok(())
    }

    /// One event into the chunk's text.
    fn event(&mut self, c: &mut Chunk) {
        let i = self.events;
        let ts = self.ts(i);
        let id = uuid_v7(ts);
        let idt = uuid_text(&id);
        let a = self.draw();
        let amount = 1 + fastrand::i64(0..100);
        let b = self.draw();
        let transfer = i % 5 == 4 && b != a && self.balance[a as usize] >= amount;
        let moves: Vec<(u64, i64)> = match transfer {
            true => vec![(a, -amount), (b, amount)],
            false => vec![(a, amount)],
        };
        let (mut keys, mut changes, mut reply) = (Vec::new(), Vec::new(), Vec::new());
        for (idx, &(acct, delta)) in moves.iter().enumerate() {
            let u = acct as usize;
            self.seq[u] += 1;
            self.balance[u] += delta;
            self.last_event[u] = id;
            self.last_ts[u] = ts;
            let (k, seq, bal) = (account_key(acct), self.seq[u], self.balance[u]);
            keys.push(format!(r#"{{"key":"{k}","seq":{seq}}}"#));
            changes.push(format!(
                r#"{{"key":"{k}","field":"gold","delta":"{delta}","balance":"{bal}"}}"#
            ));
            reply.push(format!(r#""{bal}""#));
            let _ = writeln!(c.keys, "{idt}\t{k}\t{seq}\t{ts}");
            let _ = writeln!(
                c.changes,
                "{idt}\t{idx}\t{k}\tgold\t{delta}\t{bal}\t{seq}\t{ts}"
            );
        }
        let kind = if transfer {
            "asset.transfer"
        } else {
            "asset.incr"
        };
        let op = i.is_multiple_of(3).then(|| format!("op-h-{i}"));
        let raw = format!(
            r#"{{"v":1,"id":"{idt}","type":"{kind}","ts":{ts},"op":{},"meta":null,"keys":[{}],"changes":[{}],"fp":"{:032x}","reply":{{"Array":[{}]}}}}"#,
            op.as_ref().map_or("null".into(), |o| format!(r#""{o}""#)),
            keys.join(","),
            changes.join(","),
            fastrand::u128(..),
            reply.join(",")
        );
        let sid = format!("{ts}-{}", i % 1000);
        let _ = writeln!(
            c.events,
            "{idt}\t{kind}\t{ts}\t{}\t\\N\t{raw}\ttally:log\t{sid}\tredis:tally:log/{sid}\t\\N",
            op.as_deref().unwrap_or("\\N")
        );
        self.events += 1;
    }

    /// The latest balance and seq of every account touched, replacing earlier ones.
    pub async fn derived(&self, pg: &PgPool) -> Result<()> {
        sqlx::raw_sql(
            "DELETE FROM balances WHERE data_key LIKE 'acct:%h'; \
             DELETE FROM key_seqs WHERE data_key LIKE 'acct:%h'",
        )
        .execute(pg)
        .await?;
        let (mut bal, mut seqs) = (String::new(), String::new());
        for a in 0..self.accounts {
            let u = a as usize;
            if self.seq[u] == 0 {
                continue;
            }
            let (k, s, id) = (account_key(a), self.seq[u], uuid_text(&self.last_event[u]));
            let _ = writeln!(
                bal,
                "{k}\tgold\t{}\t{s}\t{id}\t{}",
                self.balance[u], self.last_ts[u]
            );
            let _ = writeln!(seqs, "{k}\t{s}\t{id}\t{s}");
        }
        let mut conn = pg.acquire().await?;
        for (sql, text) in [
            (
                "COPY balances (data_key, field, balance, seq, event_id, ts_ms) FROM STDIN",
                bal,
            ),
            (
                "COPY key_seqs (data_key, last_seq, event_id, contiguous_seq) FROM STDIN",
                seqs,
            ),
        ] {
            let mut copy = conn.copy_in_raw(sql).await?;
            copy.send(text.into_bytes()).await?;
            copy.finish().await?;
        }
        Ok(())
    }
}
