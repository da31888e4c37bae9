//! The one ordered log of recent messages that every receiver reads from.
//!
//! Appending is the single point of order: the log's order is the total order all receivers see.
//! Messages are held once (`Bytes` are reference counted), whatever the number of receivers.

use std::collections::VecDeque;
use std::mem::size_of;

use bytes::Bytes;

/// What one entry costs beyond its message bytes with one event loop, counted against
/// `--max-pending` so that a flood of tiny messages is bounded like a few large ones: the entry
/// itself, as much again for the ring's room to grow (it doubles), and the allocator's least
/// chunk for a message that has a buffer of its own (one completed over several reads).
pub const ENTRY_OVERHEAD: usize = entry_overhead(1);

/// What one entry costs beyond its message bytes with `loops` event loops: every loop's log
/// holds its own entry (and room to grow) for each message, so that `--max-pending` bounds the
/// whole server, not each loop.
pub const fn entry_overhead(loops: usize) -> usize {
    loops * 2 * size_of::<Entry>() + 32
}

/// What a message of `len` bytes counts against `--max-pending` when each entry costs
/// `overhead` more (see [`Log::held_for`]).
pub fn counted(len: usize, overhead: usize) -> usize {
    len + len / 4 + overhead
}

/// The top bit of an entry's `meta`: binary for WebSocket clients. Connection ids stay far
/// below it.
const BINARY: u64 = 1 << 63;

/// The ring gives memory back once it is this large and at most a quarter full.
const SHRINK_ABOVE: usize = 1024;

/// One relayed message in wire form, and who sent it.
///
/// The message is a range of `block`, the bytes of one read (or one message assembled over
/// several reads) shared by every message decoded from it, so that a writer can hand the
/// messages that lie back to back in one block to the kernel as one slice, safely (a slice of
/// `block`), and a message never keeps alive more than the block it was read into.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The shared bytes the message lies in; never copied per receiver.
    block: Bytes,
    /// Where in `block` the message starts.
    start: u32,
    /// The message's length in wire form.
    len: u32,
    /// Connection id of the sender (so `--no-echo-self` can leave it out of the sender's
    /// stream), and in the top bit whether WebSocket clients get it as a binary message.
    meta: u64,
}

impl Entry {
    /// The message `block[start..start + len]`. `None` if the range is not inside `block` or
    /// longer than an entry can say (4 GiB; `--max-message` is capped far below).
    pub fn new(block: Bytes, start: usize, len: usize, origin: u64) -> Option<Entry> {
        let end = start.checked_add(len)?;
        if end > block.len() {
            return None;
        }
        Some(Entry {
            block,
            start: u32::try_from(start).ok()?,
            len: u32::try_from(len).ok()?,
            meta: origin & !BINARY,
        })
    }

    /// The origin and, in the top bit, the binary flag, as one word (the cluster's codec).
    pub fn meta(&self) -> u64 {
        self.meta
    }

    /// The connection id of the sender.
    pub fn origin(&self) -> u64 {
        self.meta & !BINARY
    }

    /// Whether WebSocket clients get this message as binary (it came from a WebSocket client
    /// as binary, or from a TCP client and is not UTF-8) rather than as text.
    pub fn is_binary(&self) -> bool {
        self.meta & BINARY != 0
    }

    /// Marks the message binary (or text) for WebSocket clients.
    pub fn set_binary(&mut self, binary: bool) {
        self.meta = self.origin() | if binary { BINARY } else { 0 };
    }

    /// The bytes `from..to` of this message (offsets within it), sharing the block.
    pub fn slice(&self, from: usize, to: usize) -> Bytes {
        let start = self.start as usize;
        self.block.slice(start + from..start + to.min(self.len()))
    }

    /// A message that is a block of its own.
    pub fn whole(bytes: Bytes, origin: u64) -> Option<Entry> {
        let len = bytes.len();
        Entry::new(bytes, 0, len, origin)
    }

    /// The message's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.block[self.range()]
    }

    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The message's bytes from `offset` on, sharing the block (no copy).
    pub fn tail_from(&self, offset: usize) -> Bytes {
        let range = self.range();
        self.block
            .slice(range.start + offset.min(range.len())..range.end)
    }

    /// If `next` lies right after `upto` (an offset in this entry's block) in the same block,
    /// the offset where `next` ends.
    pub fn continued_by(&self, upto: usize, next: &Entry) -> Option<usize> {
        let same_block =
            self.block.as_ptr() == next.block.as_ptr() && self.block.len() == next.block.len();
        (same_block && next.start as usize == upto).then(|| next.range().end)
    }

    /// The bytes `from..to` of this entry's block: several messages when
    /// [`continued_by`](Self::continued_by) said so.
    pub fn block_slice(&self, from: usize, to: usize) -> &[u8] {
        &self.block[from..to]
    }

    /// This message's range in its block.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.start as usize..self.start as usize + self.len as usize
    }
}

/// A window of the message sequence: entries `first_seq .. end_seq`.
#[derive(Debug)]
pub struct Log {
    /// The held messages, oldest first.
    entries: VecDeque<Entry>,
    /// Sequence number of `entries[0]`; sequence numbers grow by one per message, forever.
    first_seq: u64,
    /// The held messages' lengths plus [`ENTRY_OVERHEAD`] each: what `--max-pending` bounds.
    held: usize,
    /// Message bytes ever appended, so the loop can tell how much arrived since it last flushed.
    appended: u64,
    /// Bytes ever appended as `--max-pending` counts them, to bound the input of one round.
    appended_held: u64,
    /// What each entry counts beyond its bytes: [`entry_overhead`] of the server's loops.
    overhead: usize,
}

impl Default for Log {
    fn default() -> Self {
        Log::for_loops(1)
    }
}

impl Log {
    pub fn new() -> Self {
        Log::default()
    }

    /// A log of one of `loops` event loops (each holds an entry for every message).
    pub fn for_loops(loops: usize) -> Self {
        Log {
            entries: VecDeque::new(),
            first_seq: 0,
            held: 0,
            appended: 0,
            appended_held: 0,
            overhead: entry_overhead(loops),
        }
    }

    /// What a message of `len` bytes counts against `--max-pending`: its length, a quarter
    /// more for the parts of its block no message uses (the room left when a fresh block was
    /// started, and up to a sixteenth between messages; see `Inbox`), and the bookkeeping
    /// ([`entry_overhead`]).
    pub fn held_for(&self, len: usize) -> usize {
        counted(len, self.overhead)
    }

    /// Sequence number of the oldest message still held.
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// Sequence number the next appended message will get.
    pub fn end_seq(&self) -> u64 {
        self.first_seq + self.entries.len() as u64
    }

    /// Bytes held, as `--max-pending` counts them: messages plus [`ENTRY_OVERHEAD`] each.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Message bytes ever appended.
    pub fn appended(&self) -> u64 {
        self.appended
    }

    /// Bytes ever appended, as [`held`](Self::held) counts them.
    pub fn appended_held(&self) -> u64 {
        self.appended_held
    }

    /// Appends one message at the end of the order.
    pub fn push(&mut self, entry: Entry) {
        let held = self.held_for(entry.len());
        self.held += held;
        self.appended += entry.len() as u64;
        self.appended_held += held as u64;
        self.entries.push_back(entry);
    }

    /// Appends a message that is a block of its own (for tests and benches).
    pub fn append(&mut self, bytes: Bytes, origin: u64) {
        if let Some(entry) = Entry::whole(bytes, origin) {
            self.push(entry);
        }
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

    /// Forgets every message and makes `seq` the next one's number (a rendition that was not
    /// kept up while nobody needed it; see `Rendition`).
    pub fn restart_at(&mut self, seq: u64) {
        self.entries.clear();
        self.entries.shrink_to(SHRINK_ABOVE);
        self.held = 0;
        self.first_seq = seq;
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
        self.trim_to_keeping(max_bytes, u64::MAX);
    }

    /// [`trim_to`](Self::trim_to), but never past `keep_from`.
    pub fn trim_to_keeping(&mut self, max_bytes: usize, keep_from: u64) {
        while self.held > max_bytes && self.first_seq < keep_from {
            if !self.pop_front() {
                break;
            }
        }
    }

    fn pop_front(&mut self) -> bool {
        match self.entries.pop_front() {
            Some(e) => {
                self.held -= self.held_for(e.len());
                self.first_seq += 1;
                // A burst of tiny messages grew the ring; once it has drained, give the memory
                // back so what the log uses stays within what it counts.
                let cap = self.entries.capacity();
                if cap > SHRINK_ABOVE && self.entries.len() * 4 < cap {
                    self.entries.shrink_to(self.entries.len() * 2);
                }
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
        let o = ENTRY_OVERHEAD;
        let mut log = log_of(&["a", "bb", "ccc"]);
        assert_eq!(
            (log.first_seq(), log.end_seq(), log.held()),
            (0, 3, 6 + 3 * o)
        );
        log.trim_before(1);
        assert_eq!(
            (log.first_seq(), log.end_seq(), log.held()),
            (1, 3, 5 + 2 * o)
        );
        let rest: Vec<_> = log.from(2).map(|e| e.bytes().to_vec()).collect();
        assert_eq!(rest, vec![b"ccc".to_vec()]);
        log.trim_to(3 + o);
        assert_eq!((log.first_seq(), log.end_seq(), log.held()), (2, 3, 3 + o));
        log.trim_to(0);
        assert_eq!((log.first_seq(), log.end_seq(), log.held()), (3, 3, 0));
        assert_eq!(log.from(0).count(), 0);
        assert_eq!(log.from(99).count(), 0);
    }

    #[test]
    fn a_message_counts_a_quarter_more_for_its_block_and_its_bookkeeping() {
        let mut log = Log::new();
        log.append(Bytes::from(vec![b'x'; 400]), 0);
        assert_eq!(log.held(), 400 + 100 + ENTRY_OVERHEAD);
    }

    #[test]
    fn a_flood_of_tiny_messages_counts_their_bookkeeping() {
        let mut log = Log::new();
        for _ in 0..5000 {
            log.append(Bytes::from_static(b"\n"), 0);
        }
        assert_eq!(log.held(), 5000 * (1 + ENTRY_OVERHEAD));
        let grown = log.entries.capacity();
        log.trim_before(4999);
        assert!(
            log.entries.capacity() < grown / 4,
            "a drained ring keeps {} slots",
            log.entries.capacity()
        );
        const {
            assert!(
                ENTRY_OVERHEAD >= 40,
                "an entry is at least a Bytes and an origin"
            )
        };
    }

    #[test]
    fn entries_say_when_they_continue_each_other() {
        let block = Bytes::from_static(b"ab\ncd\nef\n");
        let a = Entry::new(block.clone(), 0, 3, 1).unwrap();
        let b = Entry::new(block.clone(), 3, 3, 1).unwrap();
        let c = Entry::new(block.clone(), 6, 3, 1).unwrap();
        assert_eq!(a.continued_by(3, &b), Some(6));
        assert_eq!(a.continued_by(6, &c), Some(9));
        assert_eq!(a.continued_by(3, &c), None, "a gap");
        let other = Entry::whole(Bytes::from_static(b"cd\n"), 1).unwrap();
        assert_eq!(a.continued_by(3, &other), None, "another block");
        assert_eq!(a.block_slice(0, 9), b"ab\ncd\nef\n");
        assert_eq!(&b.tail_from(1)[..], b"d\n");
        assert!(Entry::new(block.clone(), 7, 3, 1).is_none());
        assert!(Entry::new(block, usize::MAX, 2, 1).is_none());
    }
}
