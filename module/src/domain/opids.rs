//! The bound on op-id records (`tally.max-op-ids`).
//!
//! Every command with `ID` leaves one record (a string key with a TTL of `tally.op-ttl-ms`).
//! This node counts the records it created whose deadline has not passed yet, in buckets of
//! deadlines, and refuses a new op-id (`OPIDS`, nothing changed) while that count is at the
//! bound. A bucket's deadline is the latest deadline of its records, so the count can only be
//! high, never low: a record is counted until after it has expired.
//!
//! What the count does not see (documented in the README): records this node did not create
//! (loaded from RDB/AOF at start, written before a failover by another primary, or by
//! `tally-shipper restore`). They are bounded by the same rate on the node that created them.
//!
//! The node's one window is kept by `host::stats`.

use std::collections::VecDeque;

/// Buckets per op-ttl window: a record may be counted up to ttl/1024 (at least 1 s) late.
const BUCKETS_PER_TTL: i64 = 1024;
const MIN_BUCKET_MS: i64 = 1000;
/// Hard cap on buckets (a shorter TTL set at run time makes narrower buckets): past it, new
/// records join the last bucket, which only makes the count more cautious.
const MAX_BUCKETS: usize = 4 * BUCKETS_PER_TTL as usize;

#[derive(Debug, Default)]
pub struct Window {
    /// (deadline in ms, records), deadlines strictly increasing from front to back.
    buckets: VecDeque<(i64, u64)>,
    live: u64,
}

impl Window {
    pub const fn new() -> Window {
        Window {
            buckets: VecDeque::new(),
            live: 0,
        }
    }

    /// Forgets the buckets whose deadline has passed; returns the records still counted.
    pub fn live(&mut self, now_ms: i64) -> u64 {
        while let Some(&(deadline, n)) = self.buckets.front() {
            if deadline > now_ms {
                break;
            }
            self.live = self.live.saturating_sub(n);
            self.buckets.pop_front();
        }
        self.live
    }

    /// Whether one more record fits under `max` (0: no bound).
    pub fn admits(&mut self, now_ms: i64, max: i64) -> bool {
        let live = self.live(now_ms);
        max <= 0 || live < max.unsigned_abs()
    }

    /// Counts a record created at `now_ms` that expires `ttl_ms` later.
    pub fn record(&mut self, now_ms: i64, ttl_ms: i64) {
        let width = (ttl_ms / BUCKETS_PER_TTL).max(MIN_BUCKET_MS);
        let expires = now_ms.saturating_add(ttl_ms.max(0));
        let deadline = expires
            .checked_add(width - 1)
            .map_or(i64::MAX, |e| e / width * width);
        let full = self.buckets.len() >= MAX_BUCKETS;
        match self.buckets.back_mut() {
            // A deadline at or before the last bucket's (a TTL lowered at run time, a clock
            // step back), or no room: join the last bucket and keep the later deadline.
            Some((last, n)) if deadline <= *last || full => {
                *last = (*last).max(deadline);
                *n += 1;
            }
            _ => self.buckets.push_back((deadline, 1)),
        }
        self.live += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_count_until_their_bucket_deadline() {
        let mut w = Window::new();
        assert!(w.admits(0, 2));
        w.record(0, 1000);
        w.record(500, 1000);
        assert!(!w.admits(600, 2));
        assert_eq!(w.live(999), 2);
        // Both deadlines round up to the bucket boundary: 1000 and 2000 (1500 rounded up).
        assert_eq!(w.live(1000), 1);
        assert!(w.admits(1000, 2));
        assert_eq!(w.live(2000), 0);
        assert!(w.admits(2000, 1));
    }

    #[test]
    fn zero_means_no_bound() {
        let mut w = Window::new();
        for t in 0..100 {
            w.record(t, 86_400_000);
        }
        assert!(w.admits(100, 0));
        assert!(!w.admits(100, 100));
        assert!(w.admits(100, 101));
    }

    #[test]
    fn never_counts_low_when_the_ttl_shrinks_or_the_clock_steps_back() {
        let mut w = Window::new();
        w.record(10_000, 60_000); // deadline 70,000
        w.record(10_000, 1_000); // joins the last bucket
        w.record(5_000, 1_000); // clock stepped back: joins too
        assert_eq!(w.live(69_999), 3);
        assert_eq!(w.live(70_000), 0);
    }

    #[test]
    fn buckets_are_capped() {
        let mut w = Window::new();
        for t in 0..(MAX_BUCKETS as i64 + 500) {
            w.record(t * 1000, 1000);
        }
        assert!(w.buckets.len() <= MAX_BUCKETS);
        let last = MAX_BUCKETS as i64 + 499;
        assert_eq!(
            w.live(last * 1000),
            MAX_BUCKETS as u64 + 500 - (MAX_BUCKETS as u64 - 1)
        );
        assert_eq!(w.live(i64::MAX), 0);
    }

    #[test]
    fn extreme_times_do_not_wrap() {
        let mut w = Window::new();
        w.record(i64::MAX - 10, crate::domain::config::MAX_OP_TTL_MS);
        assert_eq!(w.live(i64::MAX - 1), 1);
    }
}
