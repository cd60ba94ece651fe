//! The fetch loop of one partition: fetches from an offset into a channel,
//! retrying with backoff and resetting an offset the broker no longer keeps, and
//! reports its [`Progress`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use rskafka::client::error::ProtocolError;
use rskafka::client::partition::OffsetAt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::kafka::backoff::{Backoff, BackoffConfig};
use crate::kafka::codec::{Fetched, FetchedRecord};
use crate::kafka::conn::{Cluster, ClusterError, Isolation, Lane};
use crate::kafka::topic::TopicPartition;
use crate::metrics;
use crate::shutdown::Shutdown;

/// How a `Fetcher` fetches.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// The most bytes one fetch returns (Java: `fetch.max.bytes`, for one partition).
    pub fetch_max_bytes: i32,
    /// How long a fetch waits for data when there is none (Java: `fetch.max.wait.ms`).
    pub fetch_max_wait: Duration,
    /// The waits between failed fetches.
    pub retry_backoff: BackoffConfig,
    /// Where to go when the offset asked for is no longer kept (retention).
    pub auto_offset_reset: OffsetReset,
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self {
            fetch_max_bytes: 1024 * 1024,
            fetch_max_wait: Duration::from_millis(500),
            retry_backoff: BackoffConfig {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(10),
            },
            auto_offset_reset: OffsetReset::Earliest,
        }
    }
}

/// Where to start a partition that has no committed offset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OffsetReset {
    /// From the oldest record still kept.
    #[default]
    Earliest,
    /// From the next record produced.
    Latest,
}

impl std::str::FromStr for OffsetReset {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "earliest" => Ok(Self::Earliest),
            "latest" => Ok(Self::Latest),
            other => Err(format!(
                "unknown offset reset {other:?}: expected earliest or latest"
            )),
        }
    }
}

/// How far a partition got. `next` is the offset after the last record handled,
/// `committed` the last value stored; `-1` means unknown.
#[derive(Debug)]
pub(crate) struct Progress {
    pub(crate) next: AtomicI64,
    pub(crate) committed: AtomicI64,
    /// The partition's high watermark at the latest fetch; `-1` before the first.
    pub(crate) high_watermark: AtomicI64,
    /// The offset after the last record the fetcher handed on.
    delivered_to: AtomicI64,
    /// Where the fetcher's next fetch starts: past transaction markers and
    /// aborted transactions too, which hand nothing on. Stored after
    /// `delivered_to`, so that a reader of both that sees this one new sees
    /// that one new too.
    fetched_to: AtomicI64,
    /// Why the latest fetch failed, until one succeeds.
    fetch_error: parking_lot::Mutex<Option<String>>,
}

impl Progress {
    /// Starting at `start`, which is committed already.
    pub(crate) fn new(start: i64) -> Self {
        Self {
            next: AtomicI64::new(start),
            committed: AtomicI64::new(start),
            high_watermark: AtomicI64::new(-1),
            delivered_to: AtomicI64::new(start),
            fetched_to: AtomicI64::new(start),
            fetch_error: parking_lot::Mutex::new(None),
        }
    }

    /// The next offset to handle.
    pub(crate) fn next(&self) -> i64 {
        self.next.load(Ordering::Acquire)
    }

    /// Records before `next` were handled.
    pub(crate) fn advance_to(&self, next: i64) {
        self.next.store(next, Ordering::Release);
    }

    /// Where the handler can go on from, once it handled every record before
    /// `next`: past the transaction markers and aborted records the fetcher
    /// stepped over after the last record it handed on, so that the position
    /// committed is the one Kafka's own consumers commit, and a partition
    /// ending in a marker has nothing waiting. `next` when records it handed
    /// on wait for the handler.
    pub(crate) fn settled(&self, next: i64) -> i64 {
        let fetched_to = self.fetched_to.load(Ordering::Acquire);
        if self.delivered_to.load(Ordering::Acquire) <= next {
            next.max(fetched_to)
        } else {
            next
        }
    }

    /// Whether records wait for the handler: handed on and not handled, or
    /// not fetched yet.
    pub(crate) fn is_waiting(&self) -> bool {
        let next = self.next();
        self.settled(next) < self.high_watermark.load(Ordering::Acquire)
            || self.delivered_to.load(Ordering::Acquire) > next
    }

    /// The latest fetch failed with `error`.
    pub(crate) fn fetch_failed(&self, error: String) {
        *self.fetch_error.lock() = Some(error);
    }

    /// Why the latest fetch failed, until one succeeds.
    pub(crate) fn fetch_error(&self) -> Option<String> {
        self.fetch_error.lock().clone()
    }

    /// The offset to commit, if it moved since the last commit.
    pub(crate) fn due(&self) -> Option<i64> {
        let next = self.settled(self.next.load(Ordering::Acquire));
        (next >= 0 && next > self.committed.load(Ordering::Acquire)).then_some(next)
    }
}

pub(crate) async fn reset_offset(
    cluster: &Cluster,
    tp: &TopicPartition,
    reset: OffsetReset,
) -> Result<i64, ClusterError> {
    let client = cluster
        .partition_client(&tp.topic, tp.partition, Lane::Read)
        .await?;
    let at = match reset {
        OffsetReset::Earliest => OffsetAt::Earliest,
        OffsetReset::Latest => OffsetAt::Latest,
    };
    cluster.timed("list offsets", client.get_offset(at)).await
}

/// Fetches one partition into a channel, batch by batch, until shut down.
pub(crate) struct Fetcher {
    pub(crate) cluster: Cluster,
    pub(crate) config: FetchConfig,
    pub(crate) tp: TopicPartition,
    /// Where fetches report the high watermark and their errors.
    pub(crate) progress: Option<Arc<Progress>>,
    /// A group member's lag gauge: high watermark minus committed offset.
    pub(crate) lag: Option<metrics::Gauge>,
    /// `ReadCommitted` for every consumer; the coordination log reads
    /// uncommitted, with the transaction markers.
    pub(crate) isolation: Isolation,
}

impl Fetcher {
    /// Fetches from `offset` onwards into `tx` until shutdown or the receiver goes.
    pub(crate) async fn run(
        self,
        mut offset: i64,
        tx: mpsc::Sender<Vec<FetchedRecord>>,
        mut shutdown: Shutdown,
    ) {
        let mut backoff = Backoff::new(self.config.retry_backoff);
        while !shutdown.is_shutdown() {
            let result = tokio::select! {
                r = self.fetch(offset) => r,
                () = shutdown.recv() => return,
            };
            match result {
                Ok(fetched) => {
                    backoff = Backoff::new(self.config.retry_backoff);
                    let Some(next) = fetched.next_offset else {
                        continue;
                    };
                    offset = next;
                    if let Some(progress) = &self.progress {
                        if let Some(last) = fetched.records.last() {
                            progress
                                .delivered_to
                                .store(last.offset + 1, Ordering::Release);
                        }
                        progress.fetched_to.store(next, Ordering::Release);
                    }
                    // A fetch of transaction markers only moves the offset on.
                    if !fetched.records.is_empty() && tx.send(fetched.records).await.is_err() {
                        return;
                    }
                }
                Err(e) if e.protocol_error() == Some(ProtocolError::OffsetOutOfRange) => {
                    match reset_offset(&self.cluster, &self.tp, self.config.auto_offset_reset).await
                    {
                        Ok(reset) => {
                            log::warn!(
                                "{}: offset {offset} is no longer on the broker (retention); continuing at {reset} ({:?})",
                                self.tp,
                                self.config.auto_offset_reset
                            );
                            offset = reset;
                        }
                        Err(e) => self.pause(&mut backoff, &e, &mut shutdown).await,
                    }
                }
                Err(e) => self.pause(&mut backoff, &e, &mut shutdown).await,
            }
        }
    }

    async fn fetch(&self, offset: i64) -> Result<Fetched, ClusterError> {
        let (fetched, high_watermark) = self
            .cluster
            .fetch(
                &self.tp.topic,
                self.tp.partition,
                offset,
                self.config.fetch_max_bytes,
                self.config.fetch_max_wait,
                self.isolation,
            )
            .await?;
        if let Some(progress) = &self.progress {
            progress
                .high_watermark
                .store(high_watermark, Ordering::Release);
            let mut error = progress.fetch_error.lock();
            if error.is_some() {
                *error = None;
            }
            drop(error);
            if let Some(gauge) = &self.lag {
                let committed = progress.committed.load(Ordering::Acquire);
                gauge.set((high_watermark - committed).max(0));
            }
        }
        Ok(fetched)
    }

    async fn pause(&self, backoff: &mut Backoff, error: &ClusterError, shutdown: &mut Shutdown) {
        if let Some(progress) = &self.progress {
            progress.fetch_failed(error.to_string());
        }
        let delay = backoff.next_delay();
        let level = if error.is_retriable() {
            log::Level::Warn
        } else {
            log::Level::Error
        };
        log::log!(
            level,
            "fetch from {} failed, retrying in {delay:?}: {error}",
            self.tp
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.recv() => return,
        }
        self.cluster
            .reset_partition(&self.tp.topic, self.tp.partition)
            .await;
    }
}

/// Which partitions make no progress: for longer than the bound, they had no
/// live task, or had records waiting (or a fetch failing, such as a batch that
/// cannot be decoded) and did not move. The consumer watches the partitions a
/// member owns with it, the follower those it reads.
#[derive(Debug, Default)]
pub(crate) struct Stalls {
    /// Per owned partition: where it stood (`None`: no live task) and since when.
    since: HashMap<TopicPartition, (Option<i64>, Instant)>,
}

impl Stalls {
    /// Keeps only the partitions for which `owned` holds.
    pub(crate) fn keep(&mut self, owned: impl Fn(&TopicPartition) -> bool) {
        self.since.retain(|tp, _| owned(tp));
    }

    /// Notes what `tp` looks like at `now`: `None` without a live task, else its
    /// next offset, whether records wait beyond it, and the fetch error if its
    /// fetches fail. Says why it is stalled, if it is.
    pub(crate) fn observe(
        &mut self,
        tp: &TopicPartition,
        seen: Option<(i64, bool, Option<String>)>,
        now: Instant,
        bound: Duration,
    ) -> Option<String> {
        let at = seen.as_ref().map(|(next, _, _)| *next);
        let entry = match self.since.get_mut(tp) {
            Some(entry) => entry,
            None => self.since.entry(tp.clone()).or_insert((at, now)),
        };
        if entry.0 != at {
            *entry = (at, now);
        }
        if now.saturating_duration_since(entry.1) < bound {
            return None;
        }
        match seen {
            None => Some(format!("{tp} (no live task)")),
            Some((next, _, Some(error))) => Some(format!("{tp} (at offset {next}: {error})")),
            Some((next, true, None)) => Some(format!("{tp} (at offset {next})")),
            Some((_, false, None)) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_reset_names() {
        assert_eq!("earliest".parse(), Ok(OffsetReset::Earliest));
        assert_eq!("LATEST".parse(), Ok(OffsetReset::Latest));
        assert!(
            "newest"
                .parse::<OffsetReset>()
                .unwrap_err()
                .contains("earliest or latest")
        );
    }

    #[test]
    fn progress_is_due_only_after_moving() {
        let p = Progress::new(10);
        assert_eq!(p.due(), None);
        p.next.store(12, Ordering::Release);
        assert_eq!(p.due(), Some(12));
        p.committed.store(12, Ordering::Release);
        assert_eq!(p.due(), None);
    }

    #[test]
    fn a_handler_steps_over_markers_only_once_it_handled_every_record_before() {
        let p = Progress::new(10);
        // The fetcher handed on records 10..=11, then stepped over a marker at 12.
        p.delivered_to.store(12, Ordering::Release);
        p.fetched_to.store(13, Ordering::Release);
        p.high_watermark.store(13, Ordering::Release);
        assert_eq!(p.settled(10), 10, "records wait");
        assert!(p.is_waiting());
        p.advance_to(12);
        assert_eq!(p.settled(12), 13, "only the marker is left");
        assert!(
            !p.is_waiting(),
            "a partition ending in a marker has nothing waiting"
        );
        assert_eq!(
            p.due(),
            Some(13),
            "commits past the marker, as Kafka's consumers do"
        );
        // More records arrive: waiting again.
        p.high_watermark.store(20, Ordering::Release);
        assert!(p.is_waiting());
    }

    #[test]
    fn a_partition_is_stalled_after_the_bound_without_a_task_or_progress() {
        let bound = Duration::from_secs(60);
        let t0 = Instant::now();
        let later = t0 + bound;
        let tp = TopicPartition::new("t", 3);
        let mut stalls = Stalls::default();
        // No live task: stalled once the bound passed.
        assert_eq!(stalls.observe(&tp, None, t0, bound), None);
        assert_eq!(
            stalls.observe(&tp, None, later, bound).as_deref(),
            Some("t/3 (no live task)")
        );
        // Started again: a fresh bound; caught up, it is never stalled.
        assert_eq!(
            stalls.observe(&tp, Some((5, false, None)), later, bound),
            None
        );
        assert_eq!(
            stalls.observe(&tp, Some((5, false, None)), later + bound, bound),
            None
        );
        // Records waiting and no move: stalled; moving clears it.
        assert_eq!(
            stalls
                .observe(&tp, Some((5, true, None)), later + bound, bound)
                .as_deref(),
            Some("t/3 (at offset 5)")
        );
        let t1 = later + bound * 2;
        assert_eq!(stalls.observe(&tp, Some((6, true, None)), t1, bound), None);
        // A batch that cannot be decoded: the fetch error is the reason.
        let error = Some("record batch at offset 6: CRC mismatch".to_owned());
        assert_eq!(
            stalls
                .observe(&tp, Some((6, false, error)), t1 + bound, bound)
                .as_deref(),
            Some("t/3 (at offset 6: record batch at offset 6: CRC mismatch)")
        );
        stalls.keep(|_| false);
        assert_eq!(stalls.observe(&tp, None, t1 + bound, bound), None);
    }
}
