//! Follows topics from their first record on, without committing anything: the way
//! to rebuild in-memory state (a view, a ledger) from the log at every start.
//!
//! [`Follower::start`] reads every partition of the given topics from the earliest
//! record kept and keeps tailing them, passing each record to a callback in offset
//! order per partition. [`Follower::caught_up`] resolves once every partition was
//! read up to the high watermark it had when following began: from then on the
//! state reflects at least everything written before the start.
//!
//! A follower cannot skip a record or apply one twice, so it does not restart a
//! partition by itself; it reports instead. A partition whose fetches have failed
//! for [`STALL_AFTER`] without progress (a batch that cannot be decoded, a topic
//! gone), or whose reading ended (the callback panicked), sets the follower's
//! [`health::Condition`], so `/ready` answers `503` naming it, and shows in
//! `eda_follower_stalled_partitions`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use rskafka::client::partition::OffsetAt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::kafka::conn::{Cluster, ClusterError, Isolation, Lane};
use crate::kafka::fetch::Message;
use crate::kafka::fetch::{FetchConfig, Fetcher, Progress, Stalls};
use crate::kafka::task::AbortOnDrop;
use crate::kafka::topic::TopicPartition;
use crate::shutdown::{Shutdown, ShutdownTrigger};
use crate::{health, metrics};

/// How long a partition may fail to fetch without progress before the follower
/// reports it.
pub const STALL_AFTER: Duration = Duration::from_secs(60);

/// How often the supervisor looks at the partitions.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// How often a follower that has not caught up looks at where its fetcher is.
const CATCH_UP_CHECK: std::time::Duration = std::time::Duration::from_millis(50);

/// A running follower. Dropping it stops the reading.
#[derive(Debug)]
pub struct Follower {
    ready: watch::Receiver<bool>,
    stop: ShutdownTrigger,
    _supervisor: AbortOnDrop,
}

impl Follower {
    /// Starts following `topics`, calling `apply` for every record. Each fetch waits
    /// at most `fetch_max_wait` for new records.
    pub async fn start<F>(
        cluster: &Cluster,
        topics: &[&str],
        fetch_max_wait: std::time::Duration,
        apply: F,
    ) -> Result<Self, ClusterError>
    where
        F: Fn(Message) + Send + Sync + 'static,
    {
        let apply = Arc::new(apply);
        let mut partitions = Vec::new();
        for topic in topics {
            let n = cluster.partition_count(topic).await?;
            for p in 0..n {
                let tp = TopicPartition::new(*topic, p);
                let client = cluster.partition_client(topic, p, Lane::Read).await?;
                let start = cluster
                    .timed("list offsets", client.get_offset(OffsetAt::Earliest))
                    .await?;
                let end = cluster
                    .timed("list offsets", client.get_offset(OffsetAt::Latest))
                    .await?;
                partitions.push((tp, start, end));
            }
        }

        let pending = Arc::new(AtomicUsize::new(
            partitions.iter().filter(|(_, s, e)| s < e).count(),
        ));
        let (ready_tx, ready) = watch::channel(pending.load(Ordering::Acquire) == 0);
        let ready_tx = Arc::new(ready_tx);
        let config = FetchConfig {
            fetch_max_wait,
            ..FetchConfig::default()
        };

        let (stop, shutdown) = ShutdownTrigger::new();
        let mut tasks = JoinSet::new();
        let mut watched = Watched::new(topics);
        for (tp, start, end) in partitions {
            let progress = Arc::new(Progress::new(start));
            let fetcher = Fetcher {
                cluster: cluster.clone(),
                config: config.clone(),
                tp: tp.clone(),
                progress: Some(Arc::clone(&progress)),
                lag: None,
                isolation: Isolation::ReadCommitted,
            };
            let apply = Arc::clone(&apply);
            let pending = Arc::clone(&pending);
            let ready_tx = Arc::clone(&ready_tx);
            let shutdown = shutdown.clone();
            let handled = Arc::clone(&progress);
            let topic: Arc<str> = Arc::from(tp.topic.as_str());
            let partition = tp.partition;
            let id = tasks
                .spawn(async move {
                    let (tx, mut rx) = mpsc::channel(1);
                    let _fetch = AbortOnDrop(tokio::spawn(fetcher.run(start, tx, shutdown)));
                    let mut behind = start < end;
                    loop {
                        // While behind, looked at now and then too: a partition
                        // that ends in a transaction marker hands nothing on
                        // for it, and is caught up once the fetcher steps over it.
                        let batch = if behind {
                            tokio::select! {
                                batch = rx.recv() => batch,
                                () = tokio::time::sleep(CATCH_UP_CHECK) => Some(Vec::new()),
                            }
                        } else {
                            rx.recv().await
                        };
                        let Some(batch) = batch else { break };
                        for record in batch {
                            let offset = record.offset;
                            apply(Message::new(Arc::clone(&topic), partition, record));
                            handled.advance_to(offset + 1);
                        }
                        if behind && handled.settled(handled.next()) >= end {
                            behind = false;
                            if pending.fetch_sub(1, Ordering::AcqRel) == 1 {
                                ready_tx.send_replace(true);
                            }
                        }
                    }
                })
                .id();
            watched.partitions.insert(id, (tp, progress));
        }
        let supervisor = AbortOnDrop(tokio::spawn(watched.run(tasks, shutdown)));
        Ok(Self {
            ready,
            stop,
            _supervisor: supervisor,
        })
    }

    /// Stops reading (as dropping does), for a follower that others still hold:
    /// [`caught_up`](Self::caught_up) then resolves for everyone waiting on it.
    pub fn stop(&self) {
        self.stop.trigger();
    }

    /// Whether everything written before the start was applied.
    pub fn is_caught_up(&self) -> bool {
        *self.ready.borrow()
    }

    /// Resolves once everything written before the start was applied.
    pub async fn caught_up(&self) {
        let mut ready = self.ready.clone();
        // The sender lives as long as the tasks; an error means they are gone.
        let _ = ready.wait_for(|r| *r).await;
    }
}

/// The partitions of a follower, watched for tasks that ended and fetches that
/// keep failing.
struct Watched {
    partitions: BTreeMap<tokio::task::Id, (TopicPartition, Arc<Progress>)>,
    stalls: Stalls,
    ended: BTreeMap<TopicPartition, String>,
    ready: health::Condition,
    stalled: metrics::Gauge,
}

impl Watched {
    fn new(topics: &[&str]) -> Self {
        let name = topics.join(",");
        Self {
            partitions: BTreeMap::new(),
            stalls: Stalls::default(),
            ended: BTreeMap::new(),
            ready: health::Condition::new(format!("follower of {name}")),
            stalled: metrics::gauge(
                "eda_follower_stalled_partitions",
                "Partitions a follower (order view, inventory ledger) no longer reads, or whose fetches have failed without progress for over a minute.",
                &[("topics", name.as_str())],
            ),
        }
    }

    async fn run(mut self, mut tasks: JoinSet<()>, mut shutdown: Shutdown) {
        let mut check = tokio::time::interval(CHECK_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some(ended) = tasks.join_next_with_id() => {
                    if shutdown.is_shutdown() {
                        continue;
                    }
                    let (id, why) = match ended {
                        Ok((id, ())) => (id, "its fetcher stopped".to_owned()),
                        Err(e) if e.is_panic() => (e.id(), "the code applying its records panicked".to_owned()),
                        Err(e) => (e.id(), e.to_string()),
                    };
                    if let Some((tp, progress)) = self.partitions.remove(&id) {
                        log::error!("follower: reading {tp} stopped at offset {}: {why}", progress.next());
                        self.ended.insert(tp, format!("at offset {}: {why}", progress.next()));
                    }
                }
                _ = check.tick() => {}
                () = shutdown.recv() => return,
            }
            self.report(Instant::now());
        }
    }

    /// Sets the condition and the gauge from what each partition looks like now.
    fn report(&mut self, now: Instant) {
        let mut problems: Vec<String> = self
            .ended
            .iter()
            .map(|(tp, why)| format!("{tp}: reading stopped: {why}"))
            .collect();
        for (tp, progress) in self.partitions.values() {
            // A follower applies what it fetched at once: only failing fetches
            // hold it up, so no partition counts as waiting on its own.
            let seen = Some((progress.next(), false, progress.fetch_error()));
            if let Some(why) = self.stalls.observe(tp, seen, now, STALL_AFTER) {
                problems.push(format!("no progress for {}s: {why}", STALL_AFTER.as_secs()));
            }
        }
        self.stalled.set(problems.len() as i64);
        self.ready
            .set((!problems.is_empty()).then(|| problems.join("; ")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_failing_without_progress_or_stopped_is_reported() {
        let mut watched = Watched::new(&["test-follower-topic"]);
        let tp = TopicPartition::new("test-follower-topic", 2);
        let progress = Arc::new(Progress::new(10));
        let id = tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(async { tokio::spawn(async {}).id() });
        watched
            .partitions
            .insert(id, (tp.clone(), Arc::clone(&progress)));
        let t0 = Instant::now();
        watched.report(t0);
        assert_eq!(watched.ready.reason(), None);

        progress.fetch_failed("record batch at offset 10: CRC mismatch".into());
        watched.report(t0 + STALL_AFTER / 2);
        assert_eq!(watched.ready.reason(), None, "not for long enough yet");
        watched.report(t0 + STALL_AFTER);
        let reason = watched.ready.reason().unwrap();
        assert!(reason.contains("test-follower-topic/2") && reason.contains("CRC mismatch"));

        // Progress clears it; an ended reader sets it for good.
        progress.advance_to(11);
        watched.report(t0 + STALL_AFTER * 2);
        assert_eq!(watched.ready.reason(), None);
        watched
            .ended
            .insert(tp, "the code applying its records panicked".into());
        watched.report(t0 + STALL_AFTER * 2);
        assert!(watched.ready.reason().unwrap().contains("panicked"));
    }
}
