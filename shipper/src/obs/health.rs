//! What /healthz reports: deliveries to the next stage (Kafka or Postgres) that keep failing,
//! and requests a peer (Postgres, Redis, a Kafka broker) leaves unanswered for too long.
//!
//! A server that stops answering without closing its connections fails nothing until a
//! client-side deadline passes (a batch transaction's is over a minute by default), so failed
//! deliveries alone do not show it. Every request on the way of an event to Postgres is
//! therefore registered while it waits (`Wait`): a batch transaction (or the retries of one
//! batch) in Postgres, a batch produced to Kafka, a read of the log streams and an XACK in
//! Redis. One that has waited longer than `--unhealthy-after-ms` beyond what the peer may
//! legitimately take (a blocking read: its BLOCK time) makes /healthz answer 503 and names
//! the stage and the peer; /metrics shows the wait per stage (`tally_health_stalled_seconds`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus::{register_gauge_vec, GaugeVec};

use crate::clock::now_ms;

/// 0 when healthy, else the Unix ms since which deliveries to the next stage keep failing.
static FAILING_SINCE_MS: AtomicI64 = AtomicI64::new(0);
/// /healthz turns 503 after deliveries have failed continuously for this long, or a request
/// has waited this long for its peer (`--unhealthy-after-ms`).
static UNHEALTHY_AFTER_MS: AtomicI64 = AtomicI64::new(10_000);

pub(crate) fn set_unhealthy_after_ms(ms: u64) {
    UNHEALTHY_AFTER_MS.store(i64::try_from(ms).unwrap_or(i64::MAX), Relaxed);
}

/// A delivery failed (`true`) or succeeded (`false`).
pub(crate) fn set_failing(failing: bool) {
    if failing {
        let _ = FAILING_SINCE_MS.compare_exchange(0, now_ms(), Relaxed, Relaxed);
    } else {
        FAILING_SINCE_MS.store(0, Relaxed);
    }
}

/// How many seconds deliveries have been failing, once that is longer than
/// `--unhealthy-after-ms`; None while healthy.
fn degraded_for_s() -> Option<i64> {
    let since = FAILING_SINCE_MS.load(Relaxed);
    let after = UNHEALTHY_AFTER_MS.load(Relaxed);
    (since != 0 && now_ms() - since >= after).then(|| (now_ms() - since) / 1000)
}

/// What waits for a peer: the `stage` and `peer` labels of `tally_health_stalled_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Step {
    /// a batch in Postgres: its transaction, and the retries until one commits (the direct
    /// writers, persist)
    Persist,
    /// a batch produced to Kafka, until every message has its delivery report (forward)
    Forward,
    /// reading the log streams of a Redis node (XREADGROUP, XAUTOCLAIM, reconnecting)
    Read,
    /// acknowledging entries in Redis (XACK, retried until it succeeds)
    Ack,
}

impl Step {
    pub(crate) const ALL: [Step; 4] = [Step::Read, Step::Ack, Step::Forward, Step::Persist];

    pub(crate) fn stage(self) -> &'static str {
        match self {
            Step::Persist => "persist",
            Step::Forward => "forward",
            Step::Read => "read",
            Step::Ack => "ack",
        }
    }

    pub(crate) fn peer(self) -> &'static str {
        match self {
            Step::Persist => "postgres",
            Step::Forward => "kafka",
            Step::Read | Step::Ack => "redis",
        }
    }
}

/// One registered wait: since when, and how long the peer may legitimately take.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    step: Step,
    /// None while idle (nothing asked of the peer)
    since: Option<(Instant, Duration)>,
    /// false: left out of /healthz (a reader of a node that is no longer a primary)
    counts: bool,
}

static WAITS: LazyLock<Mutex<HashMap<u64, Waiting>>> = LazyLock::new(Default::default);
static NEXT_WAIT: AtomicU64 = AtomicU64::new(1);

fn waits() -> MutexGuard<'static, HashMap<u64, Waiting>> {
    WAITS.lock().unwrap_or_else(|e| e.into_inner())
}

/// A request (or a series of them) waiting for a peer, registered until dropped.
#[derive(Debug)]
pub(crate) struct Wait {
    id: u64,
}

impl Wait {
    /// Idle: nothing asked yet (`begin` starts a wait).
    pub(crate) fn idle(step: Step) -> Wait {
        let id = NEXT_WAIT.fetch_add(1, Relaxed);
        waits().insert(
            id,
            Waiting {
                step,
                since: None,
                counts: true,
            },
        );
        Wait { id }
    }

    /// Waiting from now on (until `end` or drop).
    pub(crate) fn start(step: Step) -> Wait {
        let w = Wait::idle(step);
        w.begin(Duration::ZERO);
        w
    }

    /// A request is sent; the peer may take `allowance` (a blocking read's BLOCK time). A wait
    /// already running (the request before failed and this is its retry, or it follows a
    /// connect) keeps its start, and the larger allowance.
    pub(crate) fn begin(&self, allowance: Duration) {
        if let Some(w) = waits().get_mut(&self.id) {
            match &mut w.since {
                Some((_, a)) => *a = (*a).max(allowance),
                None => w.since = Some((Instant::now(), allowance)),
            }
        }
    }

    /// The peer answered and the next request is sent (progress restarts the clock); the
    /// peer may take `allowance`.
    pub(crate) fn again(&self, allowance: Duration) {
        if let Some(w) = waits().get_mut(&self.id) {
            w.since = Some((Instant::now(), allowance));
        }
    }

    /// The peer answered and nothing is outstanding.
    pub(crate) fn end(&self) {
        if let Some(w) = waits().get_mut(&self.id) {
            w.since = None;
        }
    }

    /// Whether this wait counts for /healthz (false: its peer is not expected to answer).
    pub(crate) fn counts(&self, counts: bool) {
        if let Some(w) = waits().get_mut(&self.id) {
            w.counts = counts;
        }
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        waits().remove(&self.id);
    }
}

/// Per step, how long its longest-waiting counted request has waited beyond its allowance
/// (zero when none), in the order of `Step::ALL`.
fn stalls() -> [(Step, Duration); 4] {
    let now = Instant::now();
    let mut out = Step::ALL.map(|s| (s, Duration::ZERO));
    for w in waits().values().filter(|w| w.counts) {
        let Some((since, allowance)) = w.since else {
            continue;
        };
        let over = now
            .saturating_duration_since(since)
            .saturating_sub(allowance);
        if let Some(slot) = out.iter_mut().find(|(s, _)| *s == w.step) {
            slot.1 = slot.1.max(over);
        }
    }
    out
}

/// The one metric of this module (the others are in `metrics`, whose rules for names and
/// help texts it follows): set at every scrape by `export`, so exported for every stage from
/// the start.
static HEALTH_STALLED: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!(
        "tally_health_stalled_seconds",
        "How long the longest-waiting request of a stage has waited for its peer beyond what the peer may take (a blocking read: its BLOCK time), 0 when none; /healthz answers 503 once it reaches --unhealthy-after-ms",
        &["stage", "peer"]
    )
    .unwrap()
});

/// Sets `tally_health_stalled_seconds` for every stage (before a scrape).
pub(crate) fn export() {
    for (step, over) in stalls() {
        HEALTH_STALLED
            .with_label_values(&[step.stage(), step.peer()])
            .set(over.as_secs_f64());
    }
}

/// The body of a 503, one `degraded: ...` line per reason (deliveries failing first, in its
/// established wording); None while healthy.
pub(crate) fn report() -> Option<String> {
    let after = Duration::from_millis(u64::try_from(UNHEALTHY_AFTER_MS.load(Relaxed)).unwrap_or(0));
    let mut body = String::new();
    if let Some(secs) = degraded_for_s() {
        body.push_str(&format!("degraded: deliveries failing for {secs}s\n"));
    }
    for (step, over) in stalls() {
        if over >= after && !over.is_zero() {
            body.push_str(&format!(
                "degraded: {} stalled: waiting for {} for {}s\n",
                step.stage(),
                step.peer(),
                over.as_secs()
            ));
        }
    }
    (!body.is_empty()).then_some(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    // one test: the registry and the threshold are process-wide
    #[test]
    fn a_wait_past_the_threshold_is_reported_until_answered() {
        set_unhealthy_after_ms(50);
        let before = report();
        let w = Wait::start(Step::Persist);
        let idle = Wait::idle(Step::Read);
        let blocking = Wait::idle(Step::Ack);
        blocking.begin(Duration::from_secs(3_600));
        let retired = Wait::start(Step::Forward);
        retired.counts(false);
        std::thread::sleep(Duration::from_millis(80));
        let body = report().expect("a stalled wait");
        assert!(
            body.contains("degraded: persist stalled: waiting for postgres for 0s"),
            "{body}"
        );
        assert!(!body.contains("redis") && !body.contains("kafka"), "{body}");
        // a retry keeps the first request's start
        w.begin(Duration::ZERO);
        assert!(report().is_some());
        // progress restarts the clock; an answer with nothing outstanding ends the wait
        w.again(Duration::ZERO);
        assert_eq!(report(), before);
        w.end();
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(report(), before);
        let stalled: Vec<Step> = stalls()
            .iter()
            .filter(|(_, d)| !d.is_zero())
            .map(|(s, _)| *s)
            .collect();
        assert!(!stalled.contains(&Step::Persist), "{stalled:?}");
        drop((w, idle, blocking, retired));
        set_unhealthy_after_ms(10_000);
    }
}
