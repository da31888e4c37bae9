//! The one ordered log of recent messages that every receiver reads from.
//!
//! Appending is the single point of order: the log's order is the total order all receivers see.
//! Messages are held once (`Bytes` are reference counted), whatever the number of receivers.

use std::collections::VecDeque;

use bytes::Bytes;

/// One relayed message in wire form, and who sent it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The bytes every receiver is sent; shared, never copied per receiver.
    pub bytes: Bytes,
    /// Connection id of the sender, so `--no-echo-self` can leave it out of the sender's stream.
    pub origin: u64,
    /// Entries of one batch are consecutive pieces of one buffer, so a writer may hand
    /// adjacent ones to the kernel as one slice (see [`Log::batch`]).
    pub batch: u64,
}

/// A window of the message sequence: entries `first_seq .. end_seq`.
#[derive(Debug, Default)]
pub struct Log {
    /// The held messages, oldest first.
    entries: VecDeque<Entry>,
    /// Sequence number of `entries[0]`; sequence numbers grow by one per message, forever.
    first_seq: u64,
    /// Sum of the held messages' lengths: what `--max-pending` bounds.
    bytes: usize,
    /// Bytes ever appended, so the loop can tell how much arrived since it last flushed.
    appended: u64,
    /// The next batch id to hand out.
    next_batch: u64,
}

impl Log {
    pub fn new() -> Self {
        Log::default()
    }

    /// Sequence number of the oldest message still held.
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// Sequence number the next appended message will get.
    pub fn end_seq(&self) -> u64 {
        self.first_seq + self.entries.len() as u64
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Bytes ever appended.
    pub fn appended(&self) -> u64 {
        self.appended
    }

    /// Appends a message that shares its buffer with no other entry.
    pub fn append(&mut self, bytes: Bytes, origin: u64) {
        let batch = self.batch();
        self.append_in_batch(bytes, origin, batch);
    }

    /// A new batch id, for messages split one after another off one buffer.
    pub fn batch(&mut self) -> u64 {
        self.next_batch += 1;
        self.next_batch
    }

    /// Appends a message of `batch`. All messages of one batch must be pieces of one allocation
    /// (`BytesMut::split_to` of one buffer): a writer merges those that are adjacent in memory
    /// into one slice, which is sound only within one allocation.
    pub fn append_in_batch(&mut self, bytes: Bytes, origin: u64, batch: u64) {
        self.bytes += bytes.len();
        self.appended += bytes.len() as u64;
        self.entries.push_back(Entry {
            bytes,
            origin,
            batch,
        });
    }

    /// The messages from `seq` (clamped to what is held) to the end, oldest first.
    pub fn from(&self, seq: u64) -> impl Iterator<Item = &Entry> {
        let skip = seq.saturating_sub(self.first_seq);
        // `skip` beyond the end yields nothing; usize::MAX saturates the same way.
        self.entries.range(
            usize::try_from(skip)
                .unwrap_or(usize::MAX)
                .min(self.entries.len())..,
        )
    }

    /// Forgets every message before `seq` (those every receiver has been sent).
    pub fn trim_before(&mut self, seq: u64) {
        while self.first_seq < seq {
            if !self.pop_front() {
                break;
            }
        }
    }

    /// Forgets the oldest messages until at most `max_bytes` are held. Receivers whose cursor
    /// was among them have fallen behind: they are slow consumers.
    pub fn trim_to(&mut self, max_bytes: usize) {
        while self.bytes > max_bytes {
            if !self.pop_front() {
                break;
            }
        }
    }

    fn pop_front(&mut self) -> bool {
        match self.entries.pop_front() {
            Some(e) => {
                self.bytes -= e.bytes.len();
                self.first_seq += 1;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_of(msgs: &[&'static str]) -> Log {
        let mut log = Log::new();
        for m in msgs {
            log.append(Bytes::from_static(m.as_bytes()), 0);
        }
        log
    }

    #[test]
    fn sequence_numbers_survive_trimming() {
        let mut log = log_of(&["a", "bb", "ccc"]);
        assert_eq!((log.first_seq(), log.end_seq(), log.bytes()), (0, 3, 6));
        log.trim_before(1);
        assert_eq!((log.first_seq(), log.end_seq(), log.bytes()), (1, 3, 5));
        let rest: Vec<_> = log.from(2).map(|e| e.bytes.clone()).collect();
        assert_eq!(rest, vec![Bytes::from_static(b"ccc")]);
        log.trim_to(3);
        assert_eq!((log.first_seq(), log.end_seq(), log.bytes()), (2, 3, 3));
        log.trim_to(0);
        assert_eq!((log.first_seq(), log.end_seq(), log.bytes()), (3, 3, 0));
        assert_eq!(log.from(0).count(), 0);
        assert_eq!(log.from(99).count(), 0);
    }
}
