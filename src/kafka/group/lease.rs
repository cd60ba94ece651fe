//! The member's lease: how long it may act on what it owns without hearing
//! back from the log. Heartbeats extend it once the state has read past them;
//! the consumer checks it before every record and every commit (fencing).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// A lease on the monotonic clock: valid until a point that heartbeats move.
///
/// An acknowledged heartbeat extends the lease only once the member's state
/// has read the log up to it ([`Lease::read_through`]). A member back from a
/// pause or an outage therefore acts again only on a state that holds every
/// record written before its heartbeat, claims of its partitions included;
/// without that, it could restart a partition from a stale state that still
/// names it the owner.
#[derive(Debug)]
pub(crate) struct Lease {
    origin: Instant,
    valid_until_ns: AtomicU64,
    /// Acknowledged heartbeats the state has not read yet: offset, lease granted.
    granted: Mutex<Vec<(i64, Instant)>>,
}

impl Lease {
    pub(crate) fn new() -> Self {
        Self {
            origin: Instant::now(),
            valid_until_ns: AtomicU64::new(0),
            granted: Mutex::new(Vec::new()),
        }
    }

    /// Extends the lease to `until`, never shortening it.
    fn renew(&self, until: Instant) {
        let ns = until.saturating_duration_since(self.origin).as_nanos() as u64;
        self.valid_until_ns.fetch_max(ns, Ordering::AcqRel);
    }

    /// The heartbeat at `offset` was acknowledged: the lease extends to `until`
    /// once the state has read that far.
    pub(crate) fn grant(&self, offset: i64, until: Instant) {
        self.granted.lock().push((offset, until));
    }

    /// The state holds every record before `next`: the heartbeats among them
    /// extend the lease.
    pub(crate) fn read_through(&self, next: i64) {
        let mut granted = self.granted.lock();
        if granted.is_empty() {
            return;
        }
        let mut until = None;
        granted.retain(|(offset, u)| {
            if *offset < next {
                until = until.max(Some(*u));
                false
            } else {
                true
            }
        });
        if let Some(until) = until {
            self.renew(until);
        }
    }

    pub(crate) fn is_valid(&self) -> bool {
        self.is_valid_at(Instant::now())
    }

    /// When the lease ends unless it is renewed first.
    pub(crate) fn valid_until(&self) -> Instant {
        self.origin + Duration::from_nanos(self.valid_until_ns.load(Ordering::Acquire))
    }

    /// Whether the lease holds at `now`, for callers that have just read the clock.
    pub(crate) fn is_valid_at(&self, now: Instant) -> bool {
        let now = now.saturating_duration_since(self.origin).as_nanos() as u64;
        now < self.valid_until_ns.load(Ordering::Acquire)
    }
}
