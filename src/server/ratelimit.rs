//! At most one log line a second per kind of event, with a count of those not logged.
//!
//! A population of hostile or broken clients can cause a failure line per connection; logging
//! each would let them flood the log (and the disk). The first of each kind is always logged.

use std::time::{Duration, Instant};

/// How often a line of one kind may be logged.
pub const LOG_EVERY: Duration = Duration::from_secs(1);

/// When each kind was last logged and how many of it were not logged since.
#[derive(Debug, Default)]
pub struct LogLimit {
    kinds: Vec<(&'static str, Instant, u64)>,
}

impl LogLimit {
    /// Whether a line of `kind` may be logged at `now`: `Some(n)` with the number of lines of
    /// that kind suppressed since the last one logged, or `None` to suppress this one.
    pub fn allow(&mut self, kind: &'static str, now: Instant) -> Option<u64> {
        match self.kinds.iter_mut().find(|(k, _, _)| *k == kind) {
            None => {
                self.kinds.push((kind, now, 0));
                Some(0)
            }
            Some((_, last, suppressed)) => {
                if now.saturating_duration_since(*last) >= LOG_EVERY {
                    *last = now;
                    Some(std::mem::take(suppressed))
                } else {
                    *suppressed += 1;
                    None
                }
            }
        }
    }

    /// The kinds with lines suppressed since their last line, once a second has passed since
    /// it (or all of them, with `all`, at exit), each with the count, which is then cleared:
    /// a burst's count is reported even when no later line of its kind comes to carry it.
    pub fn overdue(&mut self, now: Instant, all: bool) -> Vec<(&'static str, u64)> {
        let mut due = Vec::new();
        for (kind, last, suppressed) in &mut self.kinds {
            if *suppressed > 0 && (all || now.saturating_duration_since(*last) >= LOG_EVERY) {
                due.push((*kind, std::mem::take(suppressed)));
                *last = now;
            }
        }
        due
    }

    /// When [`overdue`](Self::overdue) will next have something to say.
    pub fn next_due(&self) -> Option<Instant> {
        self.kinds
            .iter()
            .filter(|(_, _, suppressed)| *suppressed > 0)
            .map(|(_, last, _)| *last + LOG_EVERY)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_of_each_kind_then_one_a_second_with_a_count() {
        let t0 = Instant::now();
        let mut limit = LogLimit::default();
        assert_eq!(limit.allow("reset", t0), Some(0));
        assert_eq!(
            limit.allow("protocol", t0),
            Some(0),
            "kinds are limited apart"
        );
        for _ in 0..5 {
            assert_eq!(limit.allow("reset", t0 + Duration::from_millis(10)), None);
        }
        assert_eq!(limit.allow("reset", t0 + LOG_EVERY), Some(5));
        assert_eq!(limit.allow("reset", t0 + LOG_EVERY), None);
        assert_eq!(limit.allow("reset", t0 + 3 * LOG_EVERY), Some(1));
    }

    #[test]
    fn a_suppressed_count_is_reported_even_if_no_line_of_its_kind_follows() {
        let t0 = Instant::now();
        let mut limit = LogLimit::default();
        limit.allow("idle", t0);
        limit.allow("idle", t0);
        limit.allow("idle", t0);
        assert_eq!(limit.next_due(), Some(t0 + LOG_EVERY));
        assert!(limit.overdue(t0, false).is_empty(), "not a second yet");
        assert_eq!(limit.overdue(t0 + LOG_EVERY, false), vec![("idle", 2)]);
        assert_eq!(limit.next_due(), None, "reported once");
        limit.allow("idle", t0 + LOG_EVERY);
        assert_eq!(
            limit.overdue(t0 + LOG_EVERY, true),
            vec![("idle", 1)],
            "all, at exit"
        );
    }
}
