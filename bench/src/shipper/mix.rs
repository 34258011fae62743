//! The capacity run's workload: the stories' commands from `clients` connections at a fixed
//! total rate, each connection one command at a time on its own schedule (an open loop: a
//! client that falls behind sends at once until it is back on schedule or the step ends).
//!
//! Per 20 commands: 10 `ASSET.INCR acct:<k> gold 1 ID <op-id>`, 4 `ASSET.TRANSFER
//! {u<k>}.wallet {u<k>}.savings gold 1` (hash-tagged: one slot), 3 `COUPON.CLAIM camp:<k%10>
//! <new user>`, 3 `USAGE.CONSUME use:<k> 1`; k uniform over `KEYS`.
//!
//! The clients speak RESP on plain sockets (`resp::Conn`): the load generator shares the
//! cores with what it measures, and redis-rs' multiplexed connection cost a driver task, a
//! channel and a wake-up per command on top of the socket's read and write.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use redis::aio::MultiplexedConnection;

use crate::key;
use crate::resp::Conn;

/// Accounts, wallets and usage counters the commands are spread over.
pub const KEYS: u64 = 10_000;
const CAMPAIGNS: u64 = 10;

/// Campaigns, usage limits and opening wallet balances; returns the events appended.
pub async fn setup(c: &mut MultiplexedConnection) -> Result<u64> {
    let mut pipe = redis::pipe();
    for j in 0..CAMPAIGNS {
        pipe.cmd("COUPON.CREATE")
            .arg(format!("camp:{j}"))
            .arg(1_000_000_000)
            .ignore();
    }
    for i in 0..KEYS {
        pipe.cmd("ASSET.INCR")
            .arg(format!("{{u{i}}}.wallet"))
            .arg(&["gold", "1000000000"])
            .ignore();
        pipe.cmd("USAGE.LIMIT")
            .arg(key("use:", i))
            .arg("1000000000000")
            .ignore();
    }
    pipe.exec_async(c).await?;
    Ok(CAMPAIGNS + 2 * KEYS)
}

/// What the clients of one step did.
#[derive(Default)]
pub struct Done {
    pub sent: u64,
    pub errors: u64,
    pub by_type: [u64; 4],
    pub behind: Duration,
    pub first_error: Option<String>,
}

/// Command number `n` of client `client` in step `step` into `c`'s buffer; returns its type
/// (index of `by_type`).
fn command(c: &mut Conn, step: usize, client: usize, n: u64) -> usize {
    let k = fastrand::u64(..KEYS);
    match n % 20 {
        0..10 => {
            let (acct, op) = (key("acct:", k), format!("op:{step}:{client}:{n}"));
            c.push(&[
                b"ASSET.INCR",
                acct.as_bytes(),
                b"gold",
                b"1",
                b"ID",
                op.as_bytes(),
            ]);
            0
        }
        10..14 => {
            let (from, to) = (format!("{{u{k}}}.wallet"), format!("{{u{k}}}.savings"));
            c.push(&[
                b"ASSET.TRANSFER",
                from.as_bytes(),
                to.as_bytes(),
                b"gold",
                b"1",
            ]);
            1
        }
        14..17 => {
            let camp = format!("camp:{}", k % CAMPAIGNS);
            let user = format!("user:{step}:{client}:{n}");
            c.push(&[b"COUPON.CLAIM", camp.as_bytes(), user.as_bytes()]);
            2
        }
        _ => {
            let counter = key("use:", k);
            c.push(&[b"USAGE.CONSUME", counter.as_bytes(), b"1"]);
            3
        }
    }
}

/// One client: one command every `interval` from `first` until `end` (a client behind
/// schedule sends at once; what it has not sent by `end` is not sent). Returns what it did
/// and its connection, for the next step.
async fn client(
    mut c: Conn,
    step: usize,
    id: usize,
    interval: Duration,
    first: Instant,
    end: Instant,
) -> Result<(Done, Conn)> {
    let mut done = Done::default();
    let mut next = first;
    while next < end {
        let now = Instant::now();
        if now >= end {
            break;
        }
        match next.checked_duration_since(now) {
            Some(wait) => tokio::time::sleep(wait).await,
            None => done.behind = done.behind.max(now - next),
        }
        let kind = command(&mut c, step, id, done.sent);
        c.flush().await?;
        let reply = c.read().await?;
        if reply.is_err() {
            done.errors += 1;
            done.first_error.get_or_insert_with(|| reply.text());
        } else {
            done.by_type[kind] += 1;
        }
        done.sent += 1;
        next += interval;
    }
    Ok((done, c))
}

/// Every client of step `step` at `rate`/s in total for `seconds`, on the runtime's thread,
/// one per connection of `conns`; the task gives the connections back with what they did.
pub fn run(
    conns: Vec<Conn>,
    step: usize,
    rate: f64,
    seconds: f64,
) -> tokio::task::JoinHandle<Result<(Done, Vec<Conn>)>> {
    let clients = conns.len().max(1);
    let interval = Duration::from_secs_f64(clients as f64 / rate);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let handles: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(id, c)| {
            // spread the clients' first commands over one interval
            let first = start + interval.mul_f64(id as f64 / clients as f64);
            tokio::task::spawn_local(client(c, step, id, interval, first, end))
        })
        .collect();
    tokio::task::spawn_local(async move {
        let mut all = Done::default();
        let mut conns = Vec::with_capacity(handles.len());
        for h in handles {
            let Ok(d) = h.await else {
                bail!("a load client panicked")
            };
            let (d, c) = d?;
            conns.push(c);
            all.sent += d.sent;
            all.errors += d.errors;
            for (a, b) in all.by_type.iter_mut().zip(d.by_type) {
                *a += b;
            }
            all.behind = all.behind.max(d.behind);
            all.first_error = all.first_error.or(d.first_error);
        }
        Ok((all, conns))
    })
}
