//! The batches of one partition between their first send and their answer:
//! up to `max_in_flight` on their way at once, in the order they were taken,
//! each numbered from the partition's sequence of its producer id.
//!
//! Sending several batches at once is safe with idempotence because the
//! broker writes a producer's batches only in sequence order: a batch that
//! arrives before its predecessor is refused with `OUT_OF_ORDER_SEQUENCE_NUMBER`
//! and written nothing. So the rules, as in the Java client:
//! - A refusal of a batch's id or sequence means something only when no
//!   earlier batch was unanswered as it went (it was *alone*). Otherwise the
//!   batch just waits for its predecessors and goes again.
//! - Once any batch must go again, no new batch is sent: the batches waiting
//!   go again one at a time, oldest first, once nothing else is on its way.
//! - A batch is numbered anew (a new id, from sequence 0) only after the broker
//!   refused it while it was alone, that is, when it was surely not written. A
//!   batch whose fate is unknown goes again as it was, so the broker can
//!   recognise it; the batches after a renumbered one follow it in order.
//!   (A refusal while an earlier batch was unanswered says only that the
//!   earlier one had not landed yet: a new id would be safe, but needless.)
//! - New batches take the current id only when every batch still on its way
//!   carries it too, so a new batch can never be written ahead of an older
//!   one that is still to be renumbered.
//! - The first batch of an id at a partition goes alone. A partition with no
//!   state for a producer id takes its first batch whatever the sequence
//!   (Kafka allows it for producers whose state retention removed), so a
//!   later batch that overtook the first one, say on a new connection after
//!   a lost one, would be written ahead of it.
//!
//! This module holds the bookkeeping alone (no I/O, no clock), so a
//! deterministic simulation against a model of the broker's sequence checks
//! can drive it through lost requests, lost answers, reordering and refusals.

use std::collections::BTreeMap;

use super::producer_id::ProducerIdentity;

/// The most batches the broker remembers per producer and partition to
/// recognise a repeat (Kafka's `ProducerStateEntry.NUM_BATCHES_TO_RETAIN`):
/// more in flight and a retried batch could be written twice.
pub(super) const MAX_IN_FLIGHT: usize = 5;

/// The producer fields a batch was sent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    pub(super) id: ProducerIdentity,
    /// The generation of the id in the producer's [`Identity`](super::producer_id::Identity).
    pub(super) generation: u64,
    pub(super) base: i32,
    /// The first batch of its generation at this partition.
    pub(super) opens: bool,
}

/// What the broker's answer to one send of a batch means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Written: now, or before (a repeat the broker recognised).
    Written,
    /// The broker refused the batch's id, epoch or sequence; nothing written.
    SequenceRefused,
    /// Failed in a way that may pass (a leader moving, a lost connection, a
    /// request timeout); whether it was written is not known.
    Retriable,
    /// Failed for good: refused, or out of delivery time.
    Failed,
}

/// What to do with a batch after an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// Answer the batch's records.
    Answer,
    /// Keep it to send again later (see [`Window::next_retry`]).
    Park,
}

/// How a parked batch goes again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Retry {
    pub(super) key: u64,
    /// Surely not written under its id: it needs a new id and sequence.
    pub(super) renumber: bool,
    /// Its last answer was an error that may take time to pass (not just an
    /// earlier batch missing): wait its backoff first.
    pub(super) backoff: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Sending {
        /// No earlier batch was unanswered when this send went.
        alone: bool,
        /// It goes again: nothing new goes until it is answered.
        again: bool,
    },
    Parked {
        renumber: bool,
        backoff: bool,
    },
    Answered,
}

#[derive(Debug)]
struct Slot {
    records: usize,
    stamp: Option<Stamp>,
    state: State,
}

/// One partition's batches on their way, and its sequence numbering.
#[derive(Debug)]
pub(super) struct Window {
    max_in_flight: usize,
    /// By the order the batches were taken in; answered ones stay until every
    /// earlier one is answered too, so flushes count a contiguous prefix.
    slots: BTreeMap<u64, Slot>,
    next_key: u64,
    /// The generation the next sequence number belongs to, and that number.
    numbering: (u64, i32),
}

impl Window {
    /// A window of up to `max_in_flight` batches (at least 1).
    pub(super) fn new(max_in_flight: usize) -> Self {
        Self {
            max_in_flight: max_in_flight.max(1),
            slots: BTreeMap::new(),
            next_key: 0,
            numbering: (0, 0),
        }
    }

    /// Batches taken and not yet answered (or answered ahead of an earlier one).
    pub(super) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Whether a batch is on its way now.
    pub(super) fn sending(&self) -> bool {
        self.slots
            .values()
            .any(|s| matches!(s.state, State::Sending { .. }))
    }

    /// How many new batches may be sent now under generation `current`
    /// (`None`: without an id). None while a batch waits to go again or is
    /// going again, or one on its way carries another generation; batches without an id go one
    /// at a time, since nothing would stop a retry from overtaking a later one.
    pub(super) fn room(&self, current: Option<u64>) -> usize {
        let limit = if current.is_some() {
            self.max_in_flight
        } else {
            1
        };
        let blocked = self.slots.values().any(|s| match s.state {
            State::Parked { .. } | State::Sending { again: true, .. } => true,
            // Without an id (`None`) nothing opens and nothing is stale.
            State::Sending { again: false, .. } => s.stamp.map_or(current.is_some(), |stamp| {
                stamp.opens || Some(stamp.generation) != current
            }),
            State::Answered => false,
        });
        // The batch that opens a generation here goes alone, also when several
        // are taken at once.
        let limit = if current.is_some_and(|generation| self.opens(generation)) {
            1
        } else {
            limit
        };
        if blocked {
            0
        } else {
            limit.saturating_sub(self.slots.len())
        }
    }

    /// Whether the next batch stamped under `generation` is its first here.
    fn opens(&self, generation: u64) -> bool {
        self.numbering.0 != generation || self.numbering.1 == 0
    }

    /// The producer fields for `records` records under `id` of `generation`:
    /// the sequence goes on from the last batch numbered in that generation,
    /// from 0 in a new one, and wraps past `i32::MAX` to 0 as Kafka's does.
    pub(super) fn stamp(&mut self, id: ProducerIdentity, generation: u64, records: usize) -> Stamp {
        let opens = self.opens(generation);
        if self.numbering.0 != generation {
            self.numbering = (generation, 0);
        }
        let base = self.numbering.1;
        self.numbering.1 = next_sequence(base, records);
        Stamp {
            id,
            generation,
            base,
            opens,
        }
    }

    /// Takes a batch of `records` records sent now with `stamp`; returns its key.
    pub(super) fn admit(&mut self, records: usize, stamp: Option<Stamp>) -> u64 {
        let key = self.next_key;
        self.next_key += 1;
        let alone = self.first_unanswered().is_none();
        self.slots.insert(
            key,
            Slot {
                records,
                stamp,
                state: State::Sending {
                    alone,
                    again: false,
                },
            },
        );
        key
    }

    /// The stamp batch `key` carries.
    pub(super) fn stamp_of(&self, key: u64) -> Option<Stamp> {
        self.slots.get(&key).and_then(|s| s.stamp)
    }

    /// Records the answer to batch `key`'s send. Returns what to do with the
    /// batch, and a generation to retire (its sequence cannot go on).
    pub(super) fn settle(&mut self, key: u64, verdict: &Verdict) -> (Next, Option<u64>) {
        let Some(slot) = self.slots.get_mut(&key) else {
            return (Next::Answer, None);
        };
        let alone = matches!(slot.state, State::Sending { alone: true, .. });
        let generation = slot.stamp.map(|s| s.generation);
        let (state, next, retire) = match verdict {
            Verdict::Written => (State::Answered, Next::Answer, None),
            // Its fate may be unknown, or it left a gap: the next batch under
            // this id could be taken for it and dropped.
            Verdict::Failed => (State::Answered, Next::Answer, generation),
            Verdict::SequenceRefused if alone => (
                State::Parked {
                    renumber: true,
                    backoff: false,
                },
                Next::Park,
                generation,
            ),
            // An earlier batch was not written yet: goes again after it.
            Verdict::SequenceRefused => (
                State::Parked {
                    renumber: false,
                    backoff: false,
                },
                Next::Park,
                None,
            ),
            Verdict::Retriable => (
                State::Parked {
                    renumber: false,
                    backoff: true,
                },
                Next::Park,
                None,
            ),
        };
        slot.state = state;
        (next, retire)
    }

    /// The oldest parked batch, once nothing is on its way; it counts as sent
    /// again (alone, since every earlier batch is answered).
    pub(super) fn next_retry(&mut self) -> Option<Retry> {
        if self.sending() {
            return None;
        }
        let (&key, slot) = self
            .slots
            .iter_mut()
            .find(|(_, s)| matches!(s.state, State::Parked { .. }))?;
        let State::Parked { renumber, backoff } = slot.state else {
            return None;
        };
        slot.state = State::Sending {
            alone: true,
            again: true,
        };
        Some(Retry {
            key,
            renumber,
            backoff,
        })
    }

    /// Batch `key` goes again with `stamp`.
    pub(super) fn restamp(&mut self, key: u64, stamp: Stamp) {
        if let Some(slot) = self.slots.get_mut(&key) {
            slot.stamp = Some(stamp);
        }
    }

    /// Drops the answered batches no earlier batch waits before, returning
    /// how many records they held: what a flush may count as done.
    pub(super) fn take_done(&mut self) -> u64 {
        let mut done = 0;
        while let Some(entry) = self.slots.first_entry() {
            if entry.get().state != State::Answered {
                break;
            }
            done += entry.remove().records as u64;
        }
        done
    }

    fn first_unanswered(&self) -> Option<u64> {
        self.slots
            .iter()
            .find(|(_, s)| s.state != State::Answered)
            .map(|(&k, _)| k)
    }
}

/// The sequence number after `records` records from `base`: Kafka's wrap
/// past `i32::MAX` to 0.
fn next_sequence(base: i32, records: usize) -> i32 {
    let next = (i64::from(base) + records as i64) % (i64::from(i32::MAX) + 1);
    i32::try_from(next).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_wrap_past_i32_max_to_zero() {
        assert_eq!(next_sequence(0, 5), 5);
        assert_eq!(next_sequence(i32::MAX - 1, 1), i32::MAX);
        assert_eq!(next_sequence(i32::MAX, 1), 0);
        assert_eq!(next_sequence(i32::MAX - 1, 3), 1);
    }
}
