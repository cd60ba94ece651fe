//! Mirrors a group's committed offsets into the broker's own group offsets, so
//! that Kafka UI, `kafka-consumer-groups.sh --describe` and lag exporters show
//! the group and its lag.
//!
//! The offsets that count stay in our compacted topic (`__eda_offsets`); this is
//! a copy for standard tools. It is committed the way a consumer without group
//! membership commits (Java's `assign()` + `commitSync()`): `OffsetCommit` with
//! generation -1 and no member id, which Kafka accepts for a group with no active
//! members. The copy runs in a task of its own and only ever sends the latest
//! offsets, so a slow or refusing broker never holds up the consumer. If the
//! broker refuses, that is logged once and the consumer carries on.

use std::collections::BTreeMap;
use std::time::Duration;

use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
use kafka_protocol::messages::{GroupId, OffsetCommitRequest, OffsetFetchRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::watch;

use crate::kafka::conn::ClusterConfig;
use crate::kafka::conn::wire::{Connection, CoordinatorKind, WireError};
use crate::kafka::task::AbortOnDrop;
use crate::kafka::topic::TopicPartition;

/// Why one copy failed; logged, never returned to the consumer.
#[derive(Debug, thiserror::Error)]
pub enum BrokerOffsetsError {
    /// The connection to a broker failed.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The broker refused a commit.
    #[error(
        "the broker refused OffsetCommit for group {group:?} with error code {code} on {tp}; Kafka tools will not show this group's lag"
    )]
    Refused {
        /// The group.
        group: String,
        /// The partition.
        tp: TopicPartition,
        /// The broker's error code.
        code: i16,
    },
}

impl std::fmt::Debug for BrokerOffsets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerOffsets").finish_non_exhaustive()
    }
}

/// The copy of one group's offsets; stops when dropped.
pub(crate) struct BrokerOffsets {
    latest: watch::Sender<BTreeMap<TopicPartition, i64>>,
    task: parking_lot::Mutex<AbortOnDrop>,
    config: ClusterConfig,
    group: String,
}

impl BrokerOffsets {
    pub(crate) fn start(config: ClusterConfig, group: String) -> Self {
        let (latest, rx) = watch::channel(BTreeMap::new());
        let task = AbortOnDrop(tokio::spawn(run(config.clone(), group.clone(), rx)));
        Self {
            latest,
            task: parking_lot::Mutex::new(task),
            config,
            group,
        }
    }

    /// Lets the copy send what it has not sent yet, waiting up to `within`, then
    /// stops it.
    pub(crate) async fn finish(self, within: Duration) {
        let Self { latest, task, .. } = self;
        let mut task = task.into_inner();
        // With the sender gone, the task copies the last offsets and ends.
        drop(latest);
        if tokio::time::timeout(within, &mut task.0).await.is_err() {
            log::warn!(
                "the last offsets were not copied to the broker's group offsets within {within:?}; Kafka tools show the previous ones"
            );
        }
    }

    /// Offsets just committed to our topic (the next offset to read, per partition).
    pub(crate) fn publish(&self, offsets: &[(TopicPartition, i64)]) {
        if offsets.is_empty() {
            return;
        }
        // The copy runs until its sender goes, so a task that ended panicked:
        // start another, which copies from the offsets published below.
        let mut task = self.task.lock();
        if task.0.is_finished() {
            log::error!(
                "the copy of group {}'s offsets to the broker ended unexpectedly; starting it again",
                self.group
            );
            crate::metrics::task_restarted("broker offsets copy");
            *task = AbortOnDrop(tokio::spawn(run(
                self.config.clone(),
                self.group.clone(),
                self.latest.subscribe(),
            )));
        }
        drop(task);
        self.latest.send_modify(|latest| {
            for (tp, offset) in offsets {
                latest.insert(tp.clone(), *offset);
            }
        });
    }
}

async fn run(
    config: ClusterConfig,
    group: String,
    mut rx: watch::Receiver<BTreeMap<TopicPartition, i64>>,
) {
    let mut conn: Option<Connection> = None;
    let mut warned = false;
    let mut sent: BTreeMap<TopicPartition, i64> = BTreeMap::new();
    // Set while the latest offsets could not be copied: they are tried again
    // after it, or sooner with a new commit. A broker that just started answers
    // FindCoordinator and OffsetCommit with "not available" for a few seconds,
    // and a consumer at rest commits nothing new to carry the copy on.
    let mut retry: Option<Duration> = None;
    let mut closed = false;
    loop {
        match retry {
            None if closed => return,
            None => {
                if rx.changed().await.is_err() {
                    closed = true;
                }
            }
            Some(delay) if closed => tokio::time::sleep(delay).await,
            Some(delay) => tokio::select! {
                () = tokio::time::sleep(delay) => {}
                changed = rx.changed() => closed = changed.is_err(),
            },
        }
        let latest = rx.borrow_and_update().clone();
        let changed: BTreeMap<TopicPartition, i64> = latest
            .into_iter()
            .filter(|(tp, offset)| sent.get(tp) != Some(offset))
            .collect();
        if changed.is_empty() {
            retry = None;
            continue;
        }
        match commit(&config, &group, &mut conn, &changed).await {
            Ok(()) => {
                if warned {
                    log::info!("group {group}: offsets are visible to Kafka tools again");
                    warned = false;
                }
                sent.extend(changed);
                retry = None;
            }
            Err(e) => {
                conn = None;
                if !warned {
                    log::warn!(
                        "group {group}: copying offsets to the broker's group offsets failed, will retry; consuming goes on, offsets stay in our topic: {e}"
                    );
                    warned = true;
                } else {
                    log::debug!("group {group}: copying offsets failed again: {e}");
                }
                retry = Some(retry.map_or(RETRY_FIRST, |d| (d * 2).min(RETRY_MAX)));
            }
        }
    }
}

/// The first wait before copying offsets again after a failure; it doubles up to
/// [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);

async fn commit(
    config: &ClusterConfig,
    group: &str,
    conn: &mut Option<Connection>,
    offsets: &BTreeMap<TopicPartition, i64>,
) -> Result<(), BrokerOffsetsError> {
    if conn.is_none() {
        *conn = Some(coordinator(config, group).await?);
    }
    let Some(connection) = conn.as_mut() else {
        return Ok(());
    };
    let mut topics: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
    for (tp, offset) in offsets {
        topics.entry(tp.topic.as_str()).or_default().push(
            OffsetCommitRequestPartition::default()
                .with_partition_index(tp.partition)
                .with_committed_offset(*offset)
                .with_committed_leader_epoch(-1)
                .with_committed_metadata(Some(StrBytes::from_static_str("rust-eda"))),
        );
    }
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_owned())))
        .with_generation_id_or_member_epoch(-1)
        .with_member_id(StrBytes::default())
        .with_retention_time_ms(-1)
        .with_topics(
            topics
                .into_iter()
                .map(|(name, partitions)| {
                    OffsetCommitRequestTopic::default()
                        .with_name(TopicName(StrBytes::from_string(name.to_owned())))
                        .with_partitions(partitions)
                })
                .collect(),
        );
    let response = connection.request(&request).await?;
    for topic in response.topics {
        for partition in topic.partitions {
            if partition.error_code != 0 {
                return Err(BrokerOffsetsError::Refused {
                    group: group.to_owned(),
                    tp: TopicPartition::new(topic.name.0.to_string(), partition.partition_index),
                    code: partition.error_code,
                });
            }
        }
    }
    Ok(())
}

/// A connection to the group's coordinator.
async fn coordinator(config: &ClusterConfig, group: &str) -> Result<Connection, WireError> {
    Connection::coordinator(config, CoordinatorKind::Group, group).await
}

/// The offsets the broker holds for `group` (`OffsetFetch`), as standard Kafka tools
/// see them: the next offset to read, per partition with a commit.
pub async fn read(
    config: &ClusterConfig,
    group: &str,
) -> Result<BTreeMap<TopicPartition, i64>, BrokerOffsetsError> {
    let mut conn = coordinator(config, group).await?;
    let group_id = GroupId(StrBytes::from_string(group.to_owned()));
    // Versions before 8 name one group at the top, 8 and later a list; `None`
    // topics means all of them.
    let request = if conn.version::<OffsetFetchRequest>()? < 8 {
        OffsetFetchRequest::default()
            .with_group_id(group_id)
            .with_topics(None)
    } else {
        OffsetFetchRequest::default().with_groups(vec![
            OffsetFetchRequestGroup::default()
                .with_group_id(group_id)
                .with_topics(None),
        ])
    };
    let response = conn.request(&request).await?;
    let top = response.topics.into_iter().flat_map(|t| {
        let name = t.name.0.to_string();
        t.partitions
            .into_iter()
            .map(move |p| (name.clone(), p.partition_index, p.committed_offset))
    });
    let grouped = response
        .groups
        .into_iter()
        .flat_map(|g| g.topics)
        .flat_map(|t| {
            let name = t.name.0.to_string();
            t.partitions
                .into_iter()
                .map(move |p| (name.clone(), p.partition_index, p.committed_offset))
        });
    let offsets = top
        .chain(grouped)
        // -1: the group has no commit for the partition.
        .filter(|(_, _, offset)| *offset >= 0)
        .map(|(topic, partition, offset)| (TopicPartition::new(topic, partition), offset))
        .collect();
    Ok(offsets)
}
