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

use std::collections::BTreeMap;

/// A log reader's position and the acknowledged records ahead of it.
#[derive(Debug)]
pub struct LogCursor<T> {
    /// The offset of the next record the state has yet to apply.
    next: i64,
    acknowledged: BTreeMap<i64, T>,
}

impl<T> LogCursor<T> {
    /// A reader whose state holds every record before `next`.
    pub fn at(next: i64) -> Self {
        Self {
            next,
            acknowledged: BTreeMap::new(),
        }
    }

    /// The offset of the next record the state has yet to apply.
    pub fn next(&self) -> i64 {
        self.next
    }

    /// The record at `offset` was read from the log (in order): whether to apply
    /// it, that is, whether it was not applied on its acknowledgement already.
    pub fn read(&mut self, offset: i64) -> bool {
        let fresh = offset >= self.next;
        self.next = self.next.max(offset + 1);
        fresh
    }

    /// This process's `record` was acknowledged at `offset`; [`Self::ready`] hands
    /// it out once it follows what was applied. Dropped if the log was faster.
    pub fn acknowledged(&mut self, offset: i64, record: T) {
        if offset >= self.next {
            self.acknowledged.insert(offset, record);
        }
    }

    /// The acknowledged records that now follow what was applied, in log order;
    /// they count as applied.
    pub fn ready(&mut self) -> Vec<T> {
        let mut ready = Vec::new();
        while let Some(entry) = self.acknowledged.first_entry() {
            if *entry.key() > self.next {
                break;
            }
            let (offset, record) = entry.remove_entry();
            if offset == self.next {
                ready.push(record);
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

    #[test]
    fn a_record_acknowledged_right_after_the_state_counts_at_once() {
        let mut cursor = LogCursor::at(10);
        cursor.acknowledged(10, 'a');
        assert_eq!(cursor.ready(), ['a']);
        // The reader delivers it later: nothing of it is applied twice.
        assert!(!cursor.read(10));
        assert!(cursor.read(11));
    }

    #[test]
    fn a_record_behind_a_gap_waits_for_the_log_to_fill_it() {
        let mut cursor = LogCursor::at(10);
        cursor.acknowledged(12, 'b');
        cursor.acknowledged(13, 'c');
        assert!(cursor.ready().is_empty(), "10 and 11 come first");
        assert!(cursor.read(10) && cursor.read(11));
        assert_eq!(cursor.ready(), ['b', 'c']);
        assert_eq!(cursor.next(), 14);
    }

    #[test]
    fn an_acknowledgement_the_log_delivered_first_is_dropped() {
        let mut cursor = LogCursor::at(10);
        assert!((10..13).all(|offset| cursor.read(offset)));
        cursor.acknowledged(11, 'a');
        assert!(cursor.ready().is_empty());
        // Read first, then acknowledged while still queued.
        cursor.acknowledged(13, 'c');
        assert!(cursor.read(13));
        assert!(cursor.ready().is_empty());
        assert_eq!(cursor.waiting(), 0);
    }
}
