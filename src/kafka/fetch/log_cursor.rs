//! Where a reader of a one-partition log stands, with the records this process
//! wrote to that log and had acknowledged before the reader got to them.
//!
//! State derived from such a log (the consumer group's coordination log, the
//! inventory ledger) must apply records in log order. A writer learns its record's
//! offset from the acknowledgement, usually before its reader fetches the record
//! back, and on nisshi, which looks at a waiting fetch only now and then, reading
//! it back costs most of a fetch wait. A record acknowledged at exactly the next
//! offset to read is what reading would return next, so applying it at once keeps
//! the state a prefix of the log. One behind a gap waits until the records in the
//! gap are read (or acknowledged), then follows at once.
//!
//! An acknowledged record is not always in the log for good: after an unclean
//! leader election, a failover with `min.insync.replicas=1` or a recreated
//! topic, the log may be truncated and its offsets filled with other records.
//! The cursor keeps what it applied early until the reader gets there, and says
//! when the log holds something else at that offset, or hands out an offset the
//! state is already past ([`Read::Diverged`]): the state is then no function of
//! the log any more, and its owner rebuilds it or stops using it.

use std::collections::BTreeMap;

/// What a record read from the log means for the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// Not applied yet: apply it.
    Fresh,
    /// Applied on its acknowledgement already, and the log holds the same record.
    Applied,
    /// The log no longer holds what the state was built from: a record other than
    /// the one applied on acknowledgement, or an offset the state is past.
    Diverged,
}

/// A log reader's position and the acknowledged records ahead of it.
#[derive(Debug)]
pub struct LogCursor<T> {
    /// The offset of the next record the state has yet to apply.
    next: i64,
    acknowledged: BTreeMap<i64, T>,
    /// Records applied on acknowledgement that the reader has not reached yet.
    applied_early: BTreeMap<i64, T>,
}

impl<T: Clone> LogCursor<T> {
    /// A reader whose state holds every record before `next`.
    pub fn at(next: i64) -> Self {
        Self {
            next,
            acknowledged: BTreeMap::new(),
            applied_early: BTreeMap::new(),
        }
    }

    /// The offset of the next record the state has yet to apply.
    pub fn next(&self) -> i64 {
        self.next
    }

    /// The record at `offset` was read from the log (in order); `same` says
    /// whether it is the record given, which this process applied on its
    /// acknowledgement.
    pub fn read(&mut self, offset: i64, same: impl FnOnce(&T) -> bool) -> Read {
        if offset >= self.next {
            // Records applied early below `offset` were compacted away before the
            // reader got there: nothing is left to compare them with.
            self.applied_early = self.applied_early.split_off(&offset);
            self.next = offset + 1;
            return Read::Fresh;
        }
        match self.applied_early.remove(&offset) {
            Some(own) if same(&own) => Read::Applied,
            _ => Read::Diverged,
        }
    }

    /// This process's `record` was acknowledged at `offset`; [`Self::ready`] hands
    /// it out once it follows what was applied. Dropped if the log was faster.
    pub fn acknowledged(&mut self, offset: i64, record: T) {
        if offset >= self.next {
            self.acknowledged.insert(offset, record);
        }
    }

    /// The acknowledged records that now follow what was applied, in log order
    /// with their offsets; they count as applied.
    pub fn ready(&mut self) -> Vec<(i64, T)> {
        let mut ready = Vec::new();
        while let Some(entry) = self.acknowledged.first_entry() {
            if *entry.key() > self.next {
                break;
            }
            let (offset, record) = entry.remove_entry();
            if offset == self.next {
                self.applied_early.insert(offset, record.clone());
                ready.push((offset, record));
                self.next += 1;
            }
        }
        ready
    }

    /// How many acknowledged records wait for the log to reach them.
    pub fn waiting(&self) -> usize {
        self.acknowledged.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same(c: char) -> impl FnOnce(&char) -> bool {
        move |own| *own == c
    }

    #[test]
    fn a_record_acknowledged_right_after_the_state_counts_at_once() {
        let mut cursor = LogCursor::at(10);
        cursor.acknowledged(10, 'a');
        assert_eq!(cursor.ready(), [(10, 'a')]);
        // The reader delivers it later: nothing of it is applied twice.
        assert_eq!(cursor.read(10, same('a')), Read::Applied);
        assert_eq!(cursor.read(11, same('x')), Read::Fresh);
    }

    #[test]
    fn a_record_behind_a_gap_waits_for_the_log_to_fill_it() {
        let mut cursor = LogCursor::at(10);
        cursor.acknowledged(12, 'b');
        cursor.acknowledged(13, 'c');
        assert!(cursor.ready().is_empty(), "10 and 11 come first");
        assert_eq!(cursor.read(10, same('x')), Read::Fresh);
        assert_eq!(cursor.read(11, same('x')), Read::Fresh);
        assert_eq!(cursor.ready(), [(12, 'b'), (13, 'c')]);
        assert_eq!(cursor.next(), 14);
    }

    #[test]
    fn an_acknowledgement_the_log_delivered_first_is_dropped() {
        let mut cursor = LogCursor::at(10);
        assert!((10..13).all(|offset| cursor.read(offset, same('x')) == Read::Fresh));
        cursor.acknowledged(11, 'a');
        assert!(cursor.ready().is_empty());
        // Read first, then acknowledged while still queued.
        cursor.acknowledged(13, 'c');
        assert_eq!(cursor.read(13, same('c')), Read::Fresh);
        assert!(cursor.ready().is_empty());
        assert_eq!(cursor.waiting(), 0);
    }

    #[test]
    fn a_log_that_holds_another_record_where_ours_was_applied_has_diverged() {
        let mut cursor = LogCursor::at(10);
        cursor.acknowledged(10, 'a');
        assert_eq!(cursor.ready(), [(10, 'a')]);
        // The log was truncated and refilled: offset 10 is someone else's record.
        assert_eq!(cursor.read(10, same('z')), Read::Diverged);
    }

    #[test]
    fn an_offset_the_state_is_past_means_the_log_went_back() {
        let mut cursor = LogCursor::at(0);
        assert!((0..5).all(|offset| cursor.read(offset, same('x')) == Read::Fresh));
        // A fetcher reset to the start of a recreated topic.
        assert_eq!(cursor.read(0, same('x')), Read::Diverged);
    }

    #[test]
    fn records_compacted_away_before_they_were_read_are_not_compared() {
        let mut cursor = LogCursor::at(10);
        cursor.acknowledged(10, 'a');
        assert_eq!(cursor.ready(), [(10, 'a')]);
        assert_eq!(cursor.read(12, same('x')), Read::Fresh);
        assert_eq!(
            cursor.read(10, same('a')),
            Read::Diverged,
            "the state is past it"
        );
    }
}
