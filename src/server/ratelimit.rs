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
}
