//! The integrity check one subscriber runs on what it receives: every publisher's messages must
//! arrive once each, in the order sent. For servers that promise one order to everyone (mob,
//! one node or a cluster), [`OrderDigest`] also lets the subscribers' orders be compared at
//! the end: [`diverged`] counts those whose order differs from the most common one.

use std::collections::HashMap;
use std::ops::Range;

/// How one received message relates to what came before from the same publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The next one expected.
    InOrder,
    /// Later than expected: the ones in between are missing (for now).
    AfterGap(u64),
    /// Earlier than one already received, filling a gap: out of order.
    Late,
    /// Received before.
    Duplicate,
}

/// One subscriber's view of each publisher's sequence.
#[derive(Debug, Clone)]
pub struct Checker {
    /// Per publisher: the sequence number expected next.
    expected: Vec<u64>,
    /// Per publisher: ranges skipped over and not (yet) received. Usually empty.
    gaps: Vec<Vec<Range<u64>>>,
    pub out_of_order: u64,
    pub duplicated: u64,
}

impl Checker {
    pub fn new(publishers: usize) -> Self {
        Checker {
            expected: vec![0; publishers],
            gaps: vec![Vec::new(); publishers],
            out_of_order: 0,
            duplicated: 0,
        }
    }

    /// Records message `seq` of `publisher`. A publisher id out of range is a duplicate-free
    /// foreign message and must be filtered by the caller.
    pub fn record(&mut self, publisher: usize, seq: u64) -> Arrival {
        let expected = &mut self.expected[publisher];
        if seq == *expected {
            *expected += 1;
            return Arrival::InOrder;
        }
        if seq > *expected {
            let missing = seq - *expected;
            self.gaps[publisher].push(*expected..seq);
            *expected = seq + 1;
            return Arrival::AfterGap(missing);
        }
        let gaps = &mut self.gaps[publisher];
        match gaps.iter().position(|g| g.contains(&seq)) {
            Some(i) => {
                let g = gaps.swap_remove(i);
                if g.start < seq {
                    gaps.push(g.start..seq);
                }
                if seq + 1 < g.end {
                    gaps.push(seq + 1..g.end);
                }
                self.out_of_order += 1;
                Arrival::Late
            }
            None => {
                self.duplicated += 1;
                Arrival::Duplicate
            }
        }
    }

    /// Messages from `publisher` received so far counting gaps as not received: the next
    /// expected sequence number.
    pub fn next_expected(&self, publisher: usize) -> u64 {
        self.expected[publisher]
    }

    /// Whether everything `sent[p]` by each publisher has arrived.
    pub fn has_all(&self, sent: &[u64]) -> bool {
        self.expected.iter().zip(sent).all(|(e, s)| e >= s)
            && self.gaps.iter().all(|g| g.is_empty())
    }

    /// Messages sent but never received: the gaps, plus what never came after the last one.
    pub fn lost(&self, sent: &[u64]) -> u64 {
        let in_gaps: u64 = self.gaps.iter().flatten().map(|g| g.end - g.start).sum();
        let tail: u64 = self
            .expected
            .iter()
            .zip(sent)
            .map(|(e, s)| s.saturating_sub(*e))
            .sum();
        in_gaps + tail
    }
}

/// A fingerprint of the whole sequence of messages one subscriber received, in the order it
/// received them: two subscribers that got the same messages in the same order have the same
/// digest, and (but for a 2^-64 chance) no others. One multiply per delivery, so cheap enough
/// for the bench's hot path; what it cannot say is *where* two orders part.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct OrderDigest(u64);

impl OrderDigest {
    /// Folds in message `seq` of `publisher`, received next.
    pub fn record(&mut self, publisher: usize, seq: u64) {
        let message = (publisher as u64).rotate_right(24) ^ seq;
        self.0 = (self.0.rotate_left(23) ^ message).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// How many of `digests` differ from the most common one: 0 when every subscriber saw one
/// order. A subscriber that lost or got a duplicate also differs (its sequence is another).
pub fn diverged<'a>(digests: impl IntoIterator<Item = &'a OrderDigest>) -> u64 {
    let mut count: HashMap<OrderDigest, u64> = HashMap::new();
    let mut all = 0;
    for d in digests {
        *count.entry(*d).or_default() += 1;
        all += 1;
    }
    all - count.values().max().copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(order: &[(usize, u64)]) -> OrderDigest {
        let mut d = OrderDigest::default();
        for &(p, seq) in order {
            d.record(p, seq);
        }
        d
    }

    #[test]
    fn one_order_everywhere_is_no_divergence() {
        let order = [(0, 0), (1, 0), (0, 1), (1, 1)];
        let ds = vec![digest(&order); 5];
        assert_eq!(diverged(&ds), 0);
    }

    #[test]
    fn interleavings_that_keep_each_publisher_in_order_still_diverge() {
        // Per-publisher order holds in both (the Checker is content), but the two subscribers
        // saw the publishers interleaved differently: no one order.
        let a = digest(&[(0, 0), (1, 0), (0, 1), (1, 1)]);
        let b = digest(&[(1, 0), (0, 0), (0, 1), (1, 1)]);
        assert_ne!(a, b);
        assert_eq!(diverged(&[a, a, b]), 1);
        assert_eq!(diverged(&[a, b, b, b]), 1);
    }

    #[test]
    fn a_missing_message_diverges() {
        let a = digest(&[(0, 0), (0, 1), (0, 2)]);
        let b = digest(&[(0, 0), (0, 2)]);
        assert_eq!(diverged(&[a, b, a]), 1);
    }

    #[test]
    fn publisher_and_seq_do_not_alias() {
        assert_ne!(digest(&[(1, 0)]), digest(&[(0, 1)]));
        assert_ne!(digest(&[(0, 0), (0, 1)]), digest(&[(0, 1), (0, 0)]));
    }

    #[test]
    fn no_subscribers_no_divergence() {
        assert_eq!(diverged(&[]), 0);
    }

    #[test]
    fn in_order_delivery_is_clean() {
        let mut c = Checker::new(2);
        for s in 0..5 {
            assert_eq!(c.record(0, s), Arrival::InOrder);
            assert_eq!(c.record(1, s), Arrival::InOrder);
        }
        assert!(c.has_all(&[5, 5]));
        assert_eq!((c.lost(&[5, 5]), c.out_of_order, c.duplicated), (0, 0, 0));
    }

    #[test]
    fn gaps_are_lost_until_filled() {
        let mut c = Checker::new(1);
        c.record(0, 0);
        assert_eq!(c.record(0, 3), Arrival::AfterGap(2));
        assert_eq!(c.lost(&[4]), 2);
        assert_eq!(c.record(0, 1), Arrival::Late);
        assert_eq!(c.lost(&[4]), 1);
        assert_eq!(c.record(0, 2), Arrival::Late);
        assert!(c.has_all(&[4]));
        assert_eq!((c.lost(&[4]), c.out_of_order), (0, 2));
    }

    #[test]
    fn repeats_are_duplicates() {
        let mut c = Checker::new(1);
        c.record(0, 0);
        c.record(0, 1);
        assert_eq!(c.record(0, 0), Arrival::Duplicate);
        assert_eq!(c.duplicated, 1);
    }

    #[test]
    fn messages_never_received_at_the_end_are_lost() {
        let mut c = Checker::new(2);
        c.record(0, 0);
        assert_eq!(c.lost(&[3, 2]), 2 + 2);
        assert!(!c.has_all(&[3, 2]));
    }
}
