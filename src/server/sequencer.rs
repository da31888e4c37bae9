//! The single point of order: where decoded input becomes log entries.
//!
//! Input from a client is handed over as one batch per read visit (never one call per
//! message). With one event loop, sequencing is appending to the loop's log in the order the
//! batches come; several loops or a Redis backplane give this seam other implementations, in
//! which "sequenced" means "given its place in the one order".

use super::log::{Entry, Log};

/// Sequences for a single event loop: a plain append.
#[derive(Debug, Default)]
pub struct Sequencer;

impl Sequencer {
    /// Gives every message of `batch` (emptied) its place at the end of the order.
    pub fn sequence(&mut self, batch: &mut Vec<Entry>, log: &mut Log) {
        for entry in batch.drain(..) {
            log.push(entry);
        }
    }
}
