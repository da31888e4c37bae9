//! Fan-out: the log, the receivers' membership, and the flush rounds that write them.
//!
//! A round writes every receiver that is behind with [`Connection::flush`]. It is *full* when
//! there is new input (every receiver is behind then) or when asked for one: it visits every
//! member, and when it is over the log is trimmed to what the slowest still needs and to
//! `--max-pending`. Otherwise it visits only the receivers woken since the last round (they
//! became writable or closed their side), so a writable event costs one write, not a walk over
//! everyone. Rounds walk the dense list of members, never the slab's high-water mark.
//!
//! When a round is due is a plain function of the state and the clock
//! ([`Fanout::next_round_at`]), unit-tested without sockets.

use std::time::{Duration, Instant};

use mio::{Interest, Registry, Token};
use slab::Slab;
use tracing::warn;

use super::connection::Connection;
use super::cursor::{Cursor, Flushed};
use super::disconnect::DisconnectReason;
use super::log::Log;
use super::ratelimit::LogLimit;
use super::rendition::Rendition;
use crate::config::SlowConsumerPolicy;
use crate::protocol::Protocol;

/// New input at which a flush round starts at once. Below it, a round may wait (see below) so
/// that each write to each receiver carries several messages rather than one.
const COALESCE_BYTES: u64 = 16 * 1024;
/// A small round waits until this many times the last round's duration has passed since it
/// ended (at most [`MAX_FLUSH_DELAY`]): short rounds that carry little then take at most
/// 1/(1 + this) of the loop's time. A round costs about one write per receiver whatever it
/// carries, so the wait lets each write carry several messages.
const FLUSH_SPACING: u32 = 4;
/// Receivers written per step of a flush round, between which the loop polls and reads.
const WRITES_PER_STEP: usize = 256;
/// The longest a round waits for more input: the latency coalescing may add. The wait is
/// real to the microsecond (the loop's timer is a timerfd, not `epoll_wait`'s milliseconds).
/// On W4 (100 receivers, 10,000 msg/s: a round of 100 writes takes about 400 µs here), the
/// median p99 over 5 runs was 1.02 ms with 250 µs, 0.91 ms with 150 µs and 0.91 ms with
/// 100 µs, for about 63%, 72% and 78% of a core (docs/BENCHMARKS.md).
const MAX_FLUSH_DELAY: Duration = Duration::from_micros(150);

/// What the fan-out is told by the configuration and the server's state.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Whether a sender also receives its own messages.
    pub echo_self: bool,
    /// Bytes the log may hold (as [`Log::held`] counts them).
    pub max_pending: usize,
    /// What happens to a receiver the log leaves behind.
    pub slow_consumer: SlowConsumerPolicy,
    /// Shutting down: half-close each receiver once it is sent all.
    pub draining: bool,
    /// The lowest place in the order at which a connection handed to this loop, not yet
    /// taken in, joins: the trim keeps the log from there (`u64::MAX` when none waits).
    pub join_floor: u64,
}

/// The bookkeeping of one flush round, apart from the writes.
#[derive(Debug)]
pub struct Round {
    /// (slab key, connection id) of the receivers to visit, in order.
    visit: Vec<(usize, u64)>,
    /// Index into `visit` of the next one.
    next: usize,
    started: Instant,
    /// Whether the round visits every member (and so may trim the log when it ends).
    full: bool,
    /// The lowest sequence number a receiver still needs, over those visited and those that
    /// joined while the round was under way.
    oldest_needed: u64,
}

impl Round {
    fn new(visit: Vec<(usize, u64)>, full: bool, started: Instant) -> Self {
        Round {
            visit,
            next: 0,
            started,
            full,
            oldest_needed: u64::MAX,
        }
    }

    /// A receiver was visited and needs the log from `seq` on.
    fn visited(&mut self, seq: u64) {
        self.oldest_needed = self.oldest_needed.min(seq);
    }

    /// A receiver joined during the round at `seq`: the round will not visit it, but the trim
    /// must not take what it needs.
    fn joined(&mut self, seq: u64) {
        self.oldest_needed = self.oldest_needed.min(seq);
    }

    /// Where the log may be trimmed when a full round ends: before the oldest message anyone
    /// still needs, and never past `end_seq` (nothing newer than the log exists).
    fn trim_point(&self, end_seq: u64) -> u64 {
        self.oldest_needed.min(end_seq)
    }
}

/// The log and everything that decides who is written when.
#[derive(Debug)]
pub struct Fanout {
    /// Every message relayed and not yet sent to all receivers, in the one order all see.
    pub log: Log,
    /// (slab key, connection id) of every connection, densely, so rounds and sweeps cost in
    /// proportion to the connections there are, not to the most there ever were.
    members: Vec<(usize, u64)>,
    /// Receivers to visit in the next round even without new input.
    woken: Vec<(usize, u64)>,
    /// The round under way, if any.
    round: Option<Round>,
    /// A visit list kept from the last round, to reuse its allocation.
    spare: Vec<(usize, u64)>,
    /// `log.appended()` when the last full round began: what is new since.
    flushed_up_to: u64,
    /// `log.appended_held()` when the log was last trimmed (the end of the last full round):
    /// what the input since counts against `--max-pending`, which reading keeps within one
    /// round's budget until the next trim.
    trimmed_held_at: u64,
    /// A full round was asked for (shutdown began).
    full_due: bool,
    /// When the last round ended and how long it took, to space small rounds.
    last_round: (Instant, Duration),
    /// Messages skipped for slow consumers under `--slow-consumer drop`.
    pub dropped: u64,
    /// Bytes written to receivers (`--metrics`).
    pub bytes_out: u64,
    /// The log as WebSocket frames, while there are WebSocket receivers.
    rendition: Rendition,
    /// WebSocket receivers among the members.
    ws_members: usize,
    /// The server's event loops: each holds a rendition of its own.
    loops: usize,
    /// `--history`: the log keeps this many messages after everyone has been sent them, and a
    /// receiver that joins is sent them first.
    history: u64,
    /// The oldest message a receiver still needed at the last full round's end.
    oldest_needed: u64,
}

impl Fanout {
    /// The fan-out of one of `loops` event loops whose log holds messages in `wire` form.
    pub fn new(now: Instant, loops: usize, wire: Protocol) -> Self {
        Fanout {
            rendition: Rendition::new(loops, wire),
            ws_members: 0,
            loops,
            log: Log::for_loops(loops),
            members: Vec::new(),
            woken: Vec::new(),
            round: None,
            spare: Vec::new(),
            flushed_up_to: 0,
            trimmed_held_at: 0,
            full_due: false,
            last_round: (now, Duration::ZERO),
            dropped: 0,
            bytes_out: 0,
            history: 0,
            oldest_needed: 0,
        }
    }

    /// About what the slowest receiver had still to be sent at the last full round's end, as
    /// `--max-pending` counts it (the messages it needed, at the log's average; history
    /// everyone was sent does not count).
    pub fn backlog(&self) -> usize {
        let owed = self.log.end_seq().saturating_sub(self.oldest_needed);
        let messages = self.log.end_seq() - self.log.first_seq();
        let each = self.held() / usize::try_from(messages).unwrap_or(usize::MAX).max(1);
        usize::try_from(owed)
            .unwrap_or(usize::MAX)
            .saturating_mul(each)
    }

    /// Keeps the last `history` messages for receivers that join (`--history`).
    pub fn with_history(mut self, history: u64) -> Self {
        self.history = history;
        self
    }

    /// (slab key, connection id) of every connection.
    pub fn members(&self) -> &[(usize, u64)] {
        &self.members
    }

    /// A new connection: it receives the messages from `join_at` on (where the order ended
    /// when it joined, which with several loops may be ahead of this log's end, or behind
    /// it), after the `--history` messages before that, or from the oldest this log still
    /// holds.
    pub fn join(&mut self, key: usize, conn: &mut Connection, join_at: u64) {
        let seq = join_at
            .saturating_sub(self.history)
            .max(self.log.first_seq());
        conn.cursor = Cursor::at(seq);
        conn.live_from = join_at;
        conn.member_index = self.members.len();
        self.members.push((key, conn.id));
        if conn.is_websocket() {
            self.ws_members += 1;
            // Its history may lie before what the rendition still holds: rendered again.
            self.rendition.reach_back(seq);
        }
        if let Some(round) = &mut self.round {
            round.joined(seq);
        }
        if conn.cursor.is_behind(&self.log) {
            // Owed what this log took in before it: the round under way will not visit it
            // and no new input may follow to start a full one.
            self.wake(key, conn);
        }
    }

    /// A connection stops receiving: it was removed from the slab, or is no receiver any more
    /// (a WebSocket client being sent its close frame). `member` is its `(member_index, id)`,
    /// `websocket` whether it was a WebSocket receiver.
    pub fn leave(&mut self, member: (usize, u64), websocket: bool, conns: &mut Slab<Connection>) {
        let (i, id) = member;
        if websocket {
            self.ws_members -= 1;
            if self.ws_members == 0 {
                self.rendition.clear(&self.log);
            }
        }
        debug_assert_eq!(self.members.get(i).map(|m| m.1), Some(id));
        self.members.swap_remove(i);
        if let Some(&(moved, _)) = self.members.get(i) {
            if let Some(c) = conns.get_mut(moved) {
                c.member_index = i;
            }
        }
    }

    /// Asks for `conn` to be visited in the next round although there may be no new input.
    pub fn wake(&mut self, key: usize, conn: &mut Connection) {
        if !conn.woken {
            conn.woken = true;
            self.woken.push((key, conn.id));
        }
    }

    /// Asks for the next round to visit everyone.
    pub fn visit_all_soon(&mut self) {
        self.full_due = true;
    }

    /// Input taken since the last full round began.
    pub fn unflushed(&self) -> u64 {
        self.log.appended() - self.flushed_up_to
    }

    /// What the log and its rendition hold, as `--max-pending` counts it.
    pub fn held(&self) -> usize {
        self.log.held() + self.rendition.log.held()
    }

    /// Input since the last trim, as `--max-pending` counts it.
    pub fn untrimmed_held(&self) -> u64 {
        self.log.appended_held() - self.trimmed_held_at
    }

    /// [`Log::appended_held`] when the log was last trimmed.
    pub fn trimmed_at(&self) -> u64 {
        self.trimmed_held_at
    }

    pub fn in_round(&self) -> bool {
        self.round.is_some()
    }

    /// When the next flush round should start; `None` while nothing waits to be written. A
    /// round is due at once when much is new, a full round was asked for or a receiver was
    /// woken; a round that would carry little waits until [`FLUSH_SPACING`] times the last
    /// round's duration has passed since it ended (at most [`MAX_FLUSH_DELAY`]), so that rounds
    /// carry several messages.
    pub fn next_round_at(&self) -> Option<Instant> {
        let new = self.unflushed();
        let (ended, took) = self.last_round;
        if self.full_due || !self.woken.is_empty() || new >= COALESCE_BYTES {
            Some(ended)
        } else if new > 0 {
            Some(ended + (took * FLUSH_SPACING).min(MAX_FLUSH_DELAY))
        } else {
            None
        }
    }

    /// Takes the next step of the flush round (starting one if none is under way): writes up to
    /// [`WRITES_PER_STEP`] receivers that are behind and not blocked. A round over many
    /// receivers thus spans several turns of the loop, so input keeps being read and receivers
    /// not visited yet get what arrived meanwhile in the same round. Connections to close are
    /// pushed onto `closing`.
    pub fn step(
        &mut self,
        now: Instant,
        conns: &mut Slab<Connection>,
        registry: &Registry,
        policy: Policy,
        log_limit: &mut LogLimit,
        closing: &mut Vec<(usize, DisconnectReason)>,
    ) {
        if self.round.is_none() {
            self.start_round(conns, now);
        }
        let Fanout {
            log,
            round,
            dropped,
            rendition,
            bytes_out,
            ..
        } = self;
        let Some(round) = round else { return };
        let mut writes = 0;
        while round.next < round.visit.len() && writes < WRITES_PER_STEP {
            let (key, id) = round.visit[round.next];
            round.next += 1;
            let Some(conn) = conns.get_mut(key).filter(|c| c.id == id && c.is_member()) else {
                continue; // closed (or being closed) since the round began
            };
            if !round.full {
                // Its entry in the woken list is this one. (A full round leaves the flag: the
                // receiver's entry, if any, is still in the list for the next round.)
                conn.woken = false;
            }
            if conn.cursor.has_fallen_off(log) {
                if let Some(reason) = fall_behind(conn, log, policy, dropped, log_limit, now) {
                    closing.push((key, reason));
                    continue;
                }
            }
            if !conn.blocked && conn.wants_write(log) {
                writes += 1;
                if conn.is_websocket() {
                    rendition.catch_up(log);
                }
                let result = conn
                    .flush(log, &rendition.log, policy.echo_self, bytes_out)
                    .and_then(|flushed| set_writable_interest(registry, key, conn, flushed));
                if let Err(e) = result {
                    closing.push((key, DisconnectReason::Reset(e)));
                    continue;
                }
            }
            if conn.is_finished() {
                closing.push((key, conn.end_reason()));
                continue;
            }
            if policy.draining && !conn.write_shut && !conn.blocked && !conn.cursor.is_behind(log) {
                let shut = conn.shut_write().and_then(|shut| {
                    // Not shut yet: a close frame waits for the socket to take it.
                    let flushed = if shut {
                        Flushed::CaughtUp
                    } else {
                        Flushed::Blocked
                    };
                    set_writable_interest(registry, key, conn, flushed)
                });
                if let Err(e) = shut {
                    closing.push((key, DisconnectReason::Reset(e)));
                    continue;
                }
            }
            round.visited(conn.cursor.next_seq());
        }
        if round.next < round.visit.len() {
            return;
        }
        if round.full {
            self.end_full_round(conns, policy, log_limit, closing, now);
        }
        let Some(round) = self.round.take() else {
            return;
        };
        // The writes took real time: the round ends now, not when the turn began.
        let ended = Instant::now();
        self.last_round = (ended, ended.saturating_duration_since(round.started));
        tracing::trace!(
            took_us = self.last_round.1.as_micros() as u64,
            full = round.full,
            "flush round"
        );
        self.spare = round.visit;
    }

    fn start_round(&mut self, conns: &mut Slab<Connection>, now: Instant) {
        let mut visit = std::mem::take(&mut self.spare);
        visit.clear();
        let full = self.full_due || self.unflushed() > 0;
        if full {
            // Everyone is visited: the woken need no list of their own.
            for &(key, id) in &self.woken {
                if let Some(c) = conns.get_mut(key).filter(|c| c.id == id) {
                    c.woken = false;
                }
            }
            self.woken.clear();
            visit.extend_from_slice(&self.members);
            self.flushed_up_to = self.log.appended();
            self.full_due = false;
        } else {
            std::mem::swap(&mut visit, &mut self.woken);
        }
        self.round = Some(Round::new(visit, full, now));
    }

    /// Forgets the frames every WebSocket receiver has been sent (the log keeps what slower
    /// TCP receivers still need, the rendition need not), never past where a connection
    /// handed to this loop joins.
    fn trim_rendition(&mut self, conns: &Slab<Connection>, join_floor: u64) {
        let mut keep_from = self.log.first_seq().max(join_floor.min(self.log.end_seq()));
        if self.ws_members > 0 {
            let oldest = self
                .members
                .iter()
                .filter_map(|&(key, id)| conns.get(key).filter(|c| c.id == id))
                .filter(|c| c.is_websocket())
                .map(|c| c.cursor.next_seq())
                .min();
            keep_from = keep_from.min(oldest.unwrap_or(u64::MAX));
        }
        self.rendition.trim(keep_from.max(self.log.first_seq()));
    }

    /// After a full round: forget what everyone has been sent, and beyond `--max-pending` the
    /// oldest, dealing at once with the receivers that trim overtakes (slow consumers).
    fn end_full_round(
        &mut self,
        conns: &mut Slab<Connection>,
        policy: Policy,
        log_limit: &mut LogLimit,
        closing: &mut Vec<(usize, DisconnectReason)>,
        now: Instant,
    ) {
        let Some(round) = &self.round else { return };
        let needed = round.trim_point(self.log.end_seq()).min(policy.join_floor);
        self.oldest_needed = needed;
        // The last `--history` messages stay for those who join, in at most half of
        // --max-pending: a joiner sent them from the oldest keeps room to fall behind.
        let history_from = self.log.end_seq().saturating_sub(self.history);
        self.log.trim_before(needed.min(history_from));
        // The rendition counts too (its frames are near copies of the log's messages), once
        // per loop (each loop renders its own).
        let held = |f: &Self| f.log.held() + f.rendition.log.held() * f.loops;
        while self.log.first_seq() < needed && held(self) > policy.max_pending / 2 {
            self.log.trim_before(self.log.first_seq() + 1);
            self.rendition.trim(self.log.first_seq());
        }
        self.trim_rendition(conns, policy.join_floor);
        self.trimmed_held_at = self.log.appended_held();
        // Beyond --max-pending the log and rendition are trimmed together, oldest first,
        // until both fit. Not past where a connection handed to this loop joins: it is taken
        // in this turn or the next, so the log passes --max-pending for that long at most.
        if held(self) <= policy.max_pending {
            return;
        }
        while held(self) > policy.max_pending
            && self.log.first_seq() < policy.join_floor.min(self.log.end_seq())
        {
            self.log.trim_before(self.log.first_seq() + 1);
            self.rendition.trim(self.log.first_seq());
        }
        for &(key, id) in &self.members {
            let Some(conn) = conns.get_mut(key).filter(|c| c.id == id) else {
                continue;
            };
            if conn.cursor.has_fallen_off(&self.log) {
                if let Some(reason) =
                    fall_behind(conn, &self.log, policy, &mut self.dropped, log_limit, now)
                {
                    closing.push((key, reason));
                }
            }
        }
    }
}

/// Applies `--slow-consumer` to a receiver the log has left behind. Returns the reason to
/// close it, or `None` when it was skipped ahead instead.
fn fall_behind(
    conn: &mut Connection,
    log: &Log,
    policy: Policy,
    dropped: &mut u64,
    log_limit: &mut LogLimit,
    now: Instant,
) -> Option<DisconnectReason> {
    // History is sent as far as the log still holds it: a joiner still being sent messages
    // from before it joined starts its history later, quietly (it has fallen behind nothing
    // it was promised). Not inside a message: its history stays one run.
    let seq = conn.cursor.next_seq();
    if seq < conn.live_from && log.first_seq() <= conn.live_from && !conn.cursor.in_message() {
        conn.cursor = Cursor::at(log.first_seq());
        return None;
    }
    match policy.slow_consumer {
        SlowConsumerPolicy::Disconnect => Some(DisconnectReason::SlowConsumer {
            max_pending: policy.max_pending,
        }),
        SlowConsumerPolicy::Drop => {
            let skipped = conn.cursor.skip_to_newest(log);
            if conn.dropped == 0 {
                if let Some(suppressed) = log_limit.allow("slow_consumer_drop", now) {
                    warn!(
                        peer = %conn.peer,
                        skipped,
                        suppressed,
                        "slow consumer: fell more than {} bytes behind, skipping to the newest message (--slow-consumer drop)",
                        policy.max_pending
                    );
                }
            }
            conn.dropped += skipped;
            *dropped += skipped;
            None
        }
    }
}

/// Keeps WRITABLE in the registered interest exactly while the receiver is blocked.
fn set_writable_interest(
    registry: &Registry,
    key: usize,
    conn: &mut Connection,
    flushed: Flushed,
) -> std::io::Result<()> {
    let blocked = flushed == Flushed::Blocked;
    conn.blocked = blocked;
    if conn.wants_writable != blocked {
        let interest = if blocked {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        registry.reregister(&mut conn.socket, Token(key), interest)?;
        conn.wants_writable = blocked;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
