//! The consumer's settings, each default written here once.

use std::time::Duration;

use crate::kafka::backoff::BackoffConfig;
use crate::kafka::fetch::{FetchConfig, OffsetReset};
use crate::kafka::group::offsets::DEFAULT_OFFSETS_TOPIC;
use crate::kafka::group::{GroupConfig, MemberId};
use crate::kafka::produce::ProducerConfig;

/// Consumer settings.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Offsets are committed per group.
    pub group_id: String,
    /// The topics to consume.
    pub topics: Vec<String>,
    /// The compacted topic that keeps committed offsets.
    pub offsets_topic: String,
    /// Where partitions without a commit start (Java: `auto.offset.reset`).
    pub auto_offset_reset: OffsetReset,
    /// How often progress is committed (Java: `auto.commit.interval.ms` = 5 s;
    /// shorter here, to keep the redelivered tail after a crash small).
    pub commit_interval: Duration,
    /// The most bytes one fetch returns per partition (Java: `max.partition.fetch.bytes`).
    pub fetch_max_bytes: i32,
    /// How long the broker holds a fetch open waiting for data (Java: `fetch.max.wait.ms`).
    pub fetch_max_wait: Duration,
    /// Waits between retries of a failed fetch or a failed handler call.
    pub retry_backoff: BackoffConfig,
    /// How long the final commit on shutdown may take.
    pub shutdown_commit_timeout: Duration,
    /// This member's id in the group; `None` makes a new one for every consumer
    /// (`<host>-<pid>-<random>`). A fixed id makes a restarted process the same
    /// member, which takes its partitions back at once instead of after the
    /// session timeout; two live processes must never share one.
    pub member_id: Option<MemberId>,
    /// A member silent for this long (in log time) is dead, and its partitions
    /// move (Java: `session.timeout.ms` = 45 s).
    pub session_timeout: Duration,
    /// How often a member writes its heartbeat (Java: `heartbeat.interval.ms` = 3 s).
    pub heartbeat_interval: Duration,
    /// How long a member waits before claiming a partition of a dead member, so
    /// that the group settles first (Java: `group.initial.rebalance.delay.ms` = 3 s).
    pub rebalance_grace: Duration,
    /// Also copy commits to the broker's own offsets of a group of this name, so
    /// Kafka UI and `kafka-consumer-groups.sh` show the lag (see `broker_offsets`).
    pub broker_offsets: bool,
    /// A partition this member owns that has had no live task, or records waiting
    /// and no progress, for this long is reported as stalled: in
    /// `eda_consumer_stalled_partitions` and by `/ready`, which answers `503`.
    pub stall_after: Duration,
    /// Whether a handler's output and its input's offset commit go into one
    /// transaction (Kafka Streams: `processing.guarantee`).
    pub processing_guarantee: ProcessingGuarantee,
    /// Under exactly-once, a partition's open transaction commits once no
    /// more records are at hand, and while they keep coming after this long
    /// at the latest (Kafka Streams: `commit.interval.ms`, 100 ms under
    /// exactly-once): its output becomes visible to `read_committed` readers
    /// then.
    pub transaction_interval: Duration,
    /// Under exactly-once, a transaction commits after this many input
    /// records at the latest; a handler error replays at most these.
    pub transaction_max_records: usize,
    /// Under exactly-once, a transaction open this long is aborted by its
    /// coordinator (`transaction.timeout.ms`): the longest that a crashed
    /// member's open transaction can hold back `read_committed` readers of the
    /// partitions it wrote to, when no new owner fences it sooner. Each handler
    /// call is cut off at the transaction's [`handler_budget`], counted as a
    /// failed attempt, so a handler that hangs reaches the dead-letter topic
    /// instead of having its transaction aborted under it again and again.
    pub transaction_timeout: Duration,
    /// Under exactly-once, whether taking a partition also fences the
    /// transactional id that earlier versions used for it
    /// (`<group>-<topic>-<partition>`), so that a member of an earlier version
    /// still running during a rolling upgrade cannot commit alongside the new
    /// owner. Turn it off once no instance of an earlier version runs.
    pub fence_legacy_transactional_ids: bool,
    /// Under exactly-once, how each partition's transactional producer
    /// batches and compresses the handler's output (its delivery timeout is
    /// at most `transaction_timeout`, and idempotence is always on).
    pub transaction_producer: ProducerConfig,
}

/// How long a handler call may take within a transaction of `transaction_timeout`:
/// four fifths of it, leaving the rest for writing the offsets and committing.
pub fn handler_budget(transaction_timeout: Duration) -> Duration {
    transaction_timeout - transaction_timeout / 5
}

/// What a consumer promises about the effects of each record it consumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessingGuarantee {
    /// Offsets are committed every `commit_interval`, apart from the
    /// handler's output: after a crash, the records handled since the last
    /// commit are handled again, and their output is written again.
    AtLeastOnce,
    /// Per partition, a batch of input records' output (sent through
    /// [`Message::outbox`](crate::kafka::Message::outbox)) and the offset
    /// commit after them go into one Kafka transaction: a `read_committed`
    /// reader of the output sees each input's effects exactly once, whatever
    /// crashes, pauses or rebalances happen (`docs/transactions.md`).
    ExactlyOnce,
}

impl std::str::FromStr for ProcessingGuarantee {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "at_least_once" => Ok(Self::AtLeastOnce),
            "exactly_once" => Ok(Self::ExactlyOnce),
            other => Err(format!(
                "unknown processing guarantee {other:?}: expected at_least_once or exactly_once"
            )),
        }
    }
}

impl std::fmt::Display for ProcessingGuarantee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::AtLeastOnce => "at_least_once",
            Self::ExactlyOnce => "exactly_once",
        })
    }
}

impl ConsumerConfig {
    /// Settings for `group_id` consuming `topics`, every other value at its default.
    pub fn new(
        group_id: impl Into<String>,
        topics: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        // The fetch settings' defaults are the fetcher's own.
        let fetch = FetchConfig::default();
        Self {
            group_id: group_id.into(),
            topics: topics.into_iter().map(Into::into).collect(),
            offsets_topic: DEFAULT_OFFSETS_TOPIC.to_owned(),
            auto_offset_reset: fetch.auto_offset_reset,
            commit_interval: Duration::from_secs(1),
            fetch_max_bytes: fetch.fetch_max_bytes,
            fetch_max_wait: fetch.fetch_max_wait,
            retry_backoff: fetch.retry_backoff,
            shutdown_commit_timeout: Duration::from_secs(10),
            member_id: None,
            session_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(1),
            rebalance_grace: Duration::from_secs(1),
            broker_offsets: true,
            stall_after: Duration::from_secs(60),
            processing_guarantee: ProcessingGuarantee::AtLeastOnce,
            transaction_interval: Duration::from_millis(100),
            transaction_max_records: 1000,
            transaction_timeout: Duration::from_secs(60),
            fence_legacy_transactional_ids: true,
            // Output goes as soon as the handler sends it: the handler waits
            // for each record, and the commit for all of them.
            transaction_producer: ProducerConfig {
                linger: Duration::ZERO,
                ..ProducerConfig::default()
            },
        }
    }

    /// The part of the settings the group protocol reads.
    pub fn group(&self) -> GroupConfig {
        GroupConfig {
            group_id: self.group_id.clone(),
            topics: self.topics.clone(),
            offsets_topic: self.offsets_topic.clone(),
            session_timeout: self.session_timeout,
            heartbeat_interval: self.heartbeat_interval,
            fetch: self.fetch(),
        }
    }

    /// The settings its fetchers run with.
    pub fn fetch(&self) -> FetchConfig {
        FetchConfig {
            fetch_max_bytes: self.fetch_max_bytes,
            fetch_max_wait: self.fetch_max_wait,
            retry_backoff: self.retry_backoff,
            auto_offset_reset: self.auto_offset_reset,
        }
    }
}
