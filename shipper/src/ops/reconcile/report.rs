//! What reconcile found: per category the keys checked, matching, mismatched and in flight,
//! the mismatches to show, and the verdict.

#[derive(Default, Debug, Clone, Copy)]
pub(crate) struct Tally {
    pub(crate) checked: u64,
    pub(crate) matching: u64,
    pub(crate) mismatched: u64,
    pub(crate) in_flight: u64,
}

#[derive(Default, Debug)]
pub(crate) struct Report {
    pub(crate) balances: Tally,
    pub(crate) coupons: Tally,
    pub(crate) usage: Tally,
    /// keys with holds: their open holds and held totals (docs/holds.md)
    pub(crate) holds: Tally,
    pub(crate) sequences: Tally,
    pub(crate) mismatches: Vec<String>,
    pub(crate) stream_in_flight: u64,
    /// seqs carried by two different events
    pub(crate) forks: u64,
    /// keys with seqs missing after the pipeline drained
    pub(crate) gaps: u64,
    pub(crate) drained: bool,
    pub(crate) waited_ms: u64,
}

impl Report {
    /// Every category with its name, in the order printed.
    fn categories(&self) -> [(&'static str, Tally); 5] {
        [
            ("balances", self.balances),
            ("coupons", self.coupons),
            ("usage", self.usage),
            ("holds", self.holds),
            ("sequences", self.sequences),
        ]
    }
    pub(crate) fn ok(&self) -> bool {
        self.categories().iter().all(|(_, t)| t.mismatched == 0)
            && self.forks == 0
            && self.gaps == 0
    }
    pub(crate) fn in_flight(&self) -> u64 {
        self.categories()
            .iter()
            .map(|(_, t)| t.in_flight)
            .sum::<u64>()
            + self.stream_in_flight
    }
    /// Counts `key`'s seq in Redis against the history's contiguous `pg_seq`. False when its
    /// newest events are still on their way (nothing more of it can be compared yet).
    pub(super) fn compare_seq(
        &mut self,
        show: usize,
        key: &str,
        seq: i64,
        pg_seq: i64,
        events_pending: bool,
    ) -> bool {
        self.sequences.checked += 1;
        let behind = pg_seq < seq;
        if pg_seq == seq {
            self.sequences.matching += 1;
        } else if behind && events_pending {
            self.sequences.in_flight += 1;
            return false;
        } else {
            self.sequences.mismatched += 1;
            let ahead = if behind {
                "redis is ahead of the history"
            } else {
                "the history is ahead of redis"
            };
            self.mismatch(
                show,
                format!(
                    "sequences {key}: redis seq {seq}, postgres contiguous seq {pg_seq} ({ahead})"
                ),
            );
        }
        true
    }

    pub(super) fn mismatch(&mut self, max_shown: usize, text: String) {
        if self.mismatches.len() < max_shown {
            self.mismatches.push(text);
        }
    }

    pub(crate) fn print(&self) {
        println!(
            "{:<10} {:>10} {:>10} {:>11} {:>10}",
            "category", "checked", "matching", "mismatched", "in flight"
        );
        for (name, t) in self.categories() {
            println!(
                "{name:<10} {:>10} {:>10} {:>11} {:>10}",
                t.checked, t.matching, t.mismatched, t.in_flight
            );
        }
        println!(
            "stream entries not yet acknowledged by the shipper: {}",
            self.stream_in_flight
        );
        println!(
            "history: {} forks, {} keys with gaps",
            self.forks, self.gaps
        );
        if self.drained {
            println!(
                "pipeline: drained (waited {} ms); every event appended so far is in Postgres",
                self.waited_ms
            );
        } else {
            println!(
                "pipeline: NOT drained after {} ms; keys behind are counted as in flight",
                self.waited_ms
            );
        }
        for m in &self.mismatches {
            println!("MISMATCH {m}");
        }
        println!(
            "verdict: {}",
            if !self.ok() {
                "MISMATCH"
            } else if self.in_flight() > 0 {
                "MATCH (with events in flight)"
            } else {
                "MATCH"
            }
        );
    }
}
