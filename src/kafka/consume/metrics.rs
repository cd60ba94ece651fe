//! What a consumer reports on `/metrics` and `/ready`: per group (members,
//! owned and stalled partitions) and per partition (records, bytes, errors,
//! handler latency, lag).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::ConsumerConfig;
use super::runner::Running;
use super::stopwatch::HANDLER_SECONDS_HELP;
use crate::kafka::fetch::Stalls;
use crate::kafka::group::Coordinator;
use crate::kafka::topic::TopicPartition;
use crate::{health, metrics};

/// What a member reports about its group on `/metrics` and `/ready`.
pub(super) struct GroupMetrics {
    pub(super) members: metrics::Gauge,
    pub(super) owned: metrics::Gauge,
    pub(super) generation: metrics::Gauge,
    pub(super) stalled: metrics::Gauge,
    pub(super) last_members: Vec<String>,
    pub(super) stalls: Stalls,
    /// Set while a partition this member owns makes no progress.
    pub(super) ready: health::Condition,
}

impl GroupMetrics {
    pub(super) fn new(group: &str, member: &str) -> Self {
        let labels = [("group", group)];
        Self {
            members: metrics::gauge(
                "eda_consumer_group_members",
                "Live members of the group, as this member sees them.",
                &labels,
            ),
            owned: metrics::gauge(
                "eda_consumer_owned_partitions",
                "Partitions this member is working on.",
                &labels,
            ),
            generation: metrics::gauge(
                "eda_consumer_group_generation",
                "Membership changes this member has seen since it joined; like Kafka's generation id, it moves at every rebalance.",
                &labels,
            ),
            stalled: metrics::gauge(
                "eda_consumer_stalled_partitions",
                "Partitions this member owns that have had no live task, or records waiting and no progress, for longer than the stall bound.",
                &labels,
            ),
            last_members: Vec::new(),
            stalls: Stalls::default(),
            ready: health::Condition::new(format!("consumer group {group} member {member}")),
        }
    }

    pub(super) fn update(
        &mut self,
        coordinator: &Coordinator,
        running: &BTreeMap<TopicPartition, Running>,
        config: &ConsumerConfig,
    ) {
        // Runs at every reconcile tick: allocate only when membership changed.
        let members = coordinator.state.active_members();
        if !members
            .iter()
            .copied()
            .eq(self.last_members.iter().map(String::as_str))
        {
            self.generation.add(1);
            self.last_members = members.into_iter().map(str::to_owned).collect();
        }
        self.members.set(self.last_members.len() as i64);
        self.owned.set(running.len() as i64);

        let now = Instant::now();
        let me = coordinator.member.as_str();
        let state = &coordinator.state;
        self.stalls
            .keep(|tp| state.owner(tp).is_some_and(|o| o.is(me)));
        let mut stalled = Vec::new();
        for tp in state.partitions_of(me) {
            let r = running.get(tp).filter(|r| !r.task.0.is_finished());
            let seen = r.map(|r| {
                let next = r.progress.next.load(Ordering::Acquire);
                let waiting = r.progress.is_waiting();
                (next, waiting, r.progress.fetch_error())
            });
            if let Some(why) = self.stalls.observe(tp, seen, now, config.stall_after) {
                stalled.push(why);
            }
        }
        self.stalled.set(stalled.len() as i64);
        self.ready.set((!stalled.is_empty()).then(|| {
            format!(
                "no progress for {:?} on {}",
                config.stall_after,
                stalled.join(", ")
            )
        }));
    }
}

/// What a consumer reports per partition on `/metrics`.
pub(super) struct PartitionMetrics {
    pub(super) group: String,
    pub(super) tp: TopicPartition,
    pub(super) records: metrics::Counter,
    pub(super) bytes: metrics::Counter,
    pub(super) errors: metrics::Counter,
    pub(super) latency: metrics::Histogram,
    pub(super) lag: metrics::Gauge,
}

pub(super) const LAG: &str = "eda_consumer_lag";

/// What a partition's handler did in one batch, added to the shared series (one
/// per topic) once per batch rather than with an atomic add per record.
#[derive(Debug, Default)]
pub(super) struct Tally {
    pub(super) records: u64,
    pub(super) bytes: u64,
    pub(super) latency: metrics::LocalHistogram,
}

impl PartitionMetrics {
    /// Counts a partition task that ended by itself and is started again.
    pub(super) fn restarted(group: &str, tp: &TopicPartition) {
        metrics::counter(
            "eda_consumer_partition_restarts_total",
            "Partition tasks that ended by themselves (lease lapsed, fetcher stopped, handler panicked) and were started again from the last commit.",
            &[("group", group), ("topic", tp.topic.as_str())],
        )
        .inc();
    }

    /// Adds what `tally` counted, and empties it.
    pub(super) fn add(&self, tally: &mut Tally) {
        let Tally {
            records,
            bytes,
            mut latency,
        } = std::mem::take(tally);
        if records > 0 {
            self.records.add(records);
            self.bytes.add(bytes);
        }
        self.latency.add(&mut latency);
    }

    pub(super) fn new(group: &str, tp: &TopicPartition) -> Self {
        let labels = [("group", group), ("topic", tp.topic.as_str())];
        let partition = tp.partition.to_string();
        Self {
            group: group.to_owned(),
            tp: tp.clone(),
            records: metrics::counter(
                "eda_consumer_records_total",
                "Records the handler accepted.",
                &labels,
            ),
            bytes: metrics::counter(
                "eda_consumer_bytes_total",
                "Key and value bytes of records the handler accepted.",
                &labels,
            ),
            errors: metrics::counter(
                "eda_consumer_handler_errors_total",
                "Handler failures; the record is offered again after a backoff.",
                &labels,
            ),
            latency: metrics::histogram(
                "eda_consumer_handler_seconds",
                &HANDLER_SECONDS_HELP,
                &labels,
            ),
            lag: metrics::gauge(
                LAG,
                "High watermark minus committed offset, per owned partition.",
                &[
                    ("group", group),
                    ("topic", tp.topic.as_str()),
                    ("partition", &partition),
                ],
            ),
        }
    }
}

impl Drop for PartitionMetrics {
    /// A partition this member no longer runs is reported by its new owner.
    fn drop(&mut self) {
        let partition = self.tp.partition.to_string();
        metrics::remove(
            LAG,
            &[
                ("group", self.group.as_str()),
                ("topic", self.tp.topic.as_str()),
                ("partition", &partition),
            ],
        );
    }
}
