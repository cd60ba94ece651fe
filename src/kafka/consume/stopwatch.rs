//! Times handler calls with as few clock readings as it can. The partition
//! runner checks the member's lease against the same reading: one clock read
//! serves both, because reading the clock cost as much as the rest of a quick
//! call's bookkeeping, and a reading at most [`QUICK_RUN`] quick calls old is
//! fresh enough for the lease (Kafka's consumer hands out 500 records between
//! looks at its membership).

use std::sync::LazyLock;
use std::time::Duration;

use tokio::time::Instant;

use crate::metrics;

/// How many handler calls that finish without waiting share one clock reading.
/// It also bounds how many such calls can run on a reading older than the lease
/// check would like: Kafka's own consumer hands out up to 500 fetched records
/// (`max.poll.records`) without looking at its membership.
pub(super) const QUICK_RUN: u32 = 16;

/// How long calls may take on average and still share a reading. Slower ones are
/// timed one by one: the clock costs them little, and the reading the lease is
/// checked against stays at most one call old.
pub(super) const QUICK_CALL: Duration = Duration::from_micros(10);

/// The handler-latency metric's help, which says how the [`Stopwatch`] times.
pub(super) static HANDLER_SECONDS_HELP: LazyLock<String> = LazyLock::new(|| {
    format!(
        "Time the handler took per record, successful or not; calls that finish without waiting in under {} µs are timed in runs of up to {QUICK_RUN}, each at the run's mean.",
        QUICK_CALL.as_micros()
    )
});

/// Times handler calls with as few clock readings as it can. A call that waits
/// (for the network, a lock, a timer) is timed on its own. Calls that finish on
/// their first poll are timed in runs of up to [`QUICK_RUN`], each placed in the
/// histogram at the run's mean, as long as that mean stays under [`QUICK_CALL`]:
/// reading the clock took as long as the rest of such a call's bookkeeping.
#[derive(Debug)]
pub(super) struct Stopwatch {
    /// The latest clock reading: when the calls not timed yet began.
    mark: Instant,
    /// Calls since `mark` that finished without waiting.
    quick: u32,
    /// How many of them share a reading: [`QUICK_RUN`] while they are quick, 1
    /// once a run of them was not.
    run: u32,
}

impl Stopwatch {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            mark: now,
            quick: 0,
            run: QUICK_RUN,
        }
    }

    /// Starts timing again at `now`, after a time that was not the handler's.
    pub(super) fn restart(&mut self, now: Instant) {
        debug_assert_eq!(self.quick, 0, "a run is closed before a pause");
        self.mark = now;
    }

    /// The latest clock reading, at most [`QUICK_RUN`] calls of under
    /// [`QUICK_CALL`] each on average old.
    pub(super) fn last_reading(&self) -> Instant {
        self.mark
    }

    /// A call finished; `waited_at` is when it first waited, if it did.
    pub(super) fn finished(
        &mut self,
        waited_at: Option<Instant>,
        latency: &mut metrics::LocalHistogram,
    ) {
        let Some(waited_at) = waited_at else {
            self.quick += 1;
            if self.quick >= self.run {
                self.close_run(Instant::now(), latency);
            }
            return;
        };
        // The quick calls before this one are taken to end when it first waited;
        // what it did before that is counted with them, a small share of a call
        // that waits.
        let started = if self.quick > 0 {
            self.close_run(waited_at, latency);
            waited_at
        } else {
            self.mark
        };
        let now = Instant::now();
        latency.observe(now.saturating_duration_since(started));
        self.mark = now;
    }

    /// Times the quick calls not timed yet as ending at `now`.
    pub(super) fn close_run(&mut self, now: Instant, latency: &mut metrics::LocalHistogram) {
        if self.quick > 0 {
            let took = now.saturating_duration_since(self.mark);
            latency.observe_run(took, self.quick);
            self.run = if took <= QUICK_CALL * self.quick {
                QUICK_RUN
            } else {
                1
            };
        }
        self.mark = now;
        self.quick = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stopwatch whose last reading was 10 s ago, and an empty histogram.
    pub(super) fn read_ten_seconds_ago() -> (Instant, Stopwatch, metrics::LocalHistogram) {
        let start = Instant::now() - Duration::from_secs(10);
        (
            start,
            Stopwatch::new(start),
            metrics::LocalHistogram::default(),
        )
    }

    #[test]
    pub(super) fn quick_calls_share_a_clock_reading() {
        let (start, mut clock, mut latency) = read_ten_seconds_ago();
        for _ in 1..QUICK_RUN {
            clock.finished(None, &mut latency);
        }
        assert_eq!(latency.count(), 0, "a run is timed when it is full");
        assert_eq!(clock.last_reading(), start);
        clock.finished(None, &mut latency);
        assert_eq!(latency.count(), u64::from(QUICK_RUN));
        assert!(clock.last_reading() > start);
        assert!(latency.sum() >= Duration::from_secs(10));
    }

    #[test]
    pub(super) fn a_call_that_waits_is_timed_from_when_the_quick_ones_before_it_ended() {
        let (start, mut clock, mut latency) = read_ten_seconds_ago();
        clock.finished(None, &mut latency);
        clock.finished(None, &mut latency);
        clock.finished(Some(start + Duration::from_secs(4)), &mut latency);
        // The two quick calls: 4 s together. The one that waited: the other 6 s.
        assert_eq!(latency.count(), 3);
        let sum = latency.sum();
        assert!(sum >= Duration::from_secs(10) && sum < Duration::from_secs(11));

        // With no quick calls before it, a call is timed from the last reading.
        let before = clock.last_reading();
        let mut latency = metrics::LocalHistogram::default();
        clock.finished(Some(Instant::now()), &mut latency);
        assert_eq!(latency.count(), 1);
        assert!(clock.last_reading() >= before);
        clock.close_run(Instant::now(), &mut latency);
        assert_eq!(latency.count(), 1, "closing an empty run observes nothing");
    }

    #[test]
    pub(super) fn calls_that_finish_without_waiting_but_slowly_are_timed_one_by_one() {
        let (_, mut clock, mut latency) = read_ten_seconds_ago();
        for _ in 0..QUICK_RUN {
            clock.finished(None, &mut latency);
        }
        // 16 calls in 10 s: far slower than QUICK_CALL, so the next is timed alone.
        assert_eq!(latency.count(), u64::from(QUICK_RUN));
        // A mark ahead of the clock makes the next call take no time: measured
        // quick, it lets runs grow back.
        clock.restart(Instant::now() + Duration::from_secs(60));
        clock.finished(None, &mut latency);
        assert_eq!(latency.count(), u64::from(QUICK_RUN) + 1, "timed at once");
        for _ in 1..QUICK_RUN {
            clock.finished(None, &mut latency);
        }
        assert_eq!(latency.count(), u64::from(QUICK_RUN) + 1, "a run again");
        clock.finished(None, &mut latency);
        assert_eq!(latency.count(), 2 * u64::from(QUICK_RUN) + 1);
    }

    #[test]
    pub(super) fn the_latency_help_names_the_stopwatch_limits() {
        assert!(HANDLER_SECONDS_HELP.contains("in under 10 µs are timed in runs of up to 16,"));
    }
}
