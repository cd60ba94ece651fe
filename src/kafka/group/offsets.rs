//! Committed consumer offsets, kept in the compacted coordination topic.
//!
//! rskafka has no group coordinator client, so commits are ordinary records in a
//! topic with `cleanup.policy=compact` (default `__eda_offsets`), one partition so
//! that the topic is a single, totally ordered log. It holds the consumer groups'
//! membership and ownership records too (see [`group`](crate::kafka::group)). Each
//! record's key names what it is about, and its value holds the latest state;
//! compaction keeps the latest record per key, so reading the partition from the
//! start and keeping the last value per key always yields the current state.
//!
//! ```text
//! key:   {"type":"offset","group":"inventory","topic":"order.created","partition":3}
//! value: {"offset":1042,"member":"host-1-5c1e","epoch":7,"committed_at":"2026-11-24T10:00:00.000Z"}
//! ```
//!
//! `offset` is the next offset to consume, as in Kafka's own commits. A commit
//! names the partition's owner and its ownership epoch; when offsets are read
//! back, a commit by a former owner does not count (see
//! [`GroupState::committed`](crate::kafka::group::GroupState::committed)).

use crate::kafka::fix::Fix;
use std::collections::HashMap;

use crate::kafka::admin::TopicSpec;
use crate::kafka::conn::{Cluster, Isolation};
use crate::kafka::fetch::{ReadError, read_partition_with};
use crate::kafka::group::protocol::{Key, OffsetValue};
use crate::kafka::group::{GroupState, LOG_PARTITION};
use crate::kafka::produce::{ProduceError, Producer, ProducerRecord};
use crate::kafka::topic::TopicPartition;

/// The default name of the offsets topic.
pub const DEFAULT_OFFSETS_TOPIC: &str = "__eda_offsets";

/// Errors of the offset store.
#[derive(Debug, thiserror::Error)]
pub enum OffsetError {
    /// The coordination topic could not be read.
    #[error("reading committed offsets failed: {0}")]
    Read(#[from] ReadError),
    /// A commit was not acknowledged.
    #[error("committing offsets to {topic:?} failed: {source}")]
    Commit {
        /// The coordination topic.
        topic: String,
        /// Why.
        #[source]
        source: ProduceError,
    },
}

impl OffsetError {
    /// What would clear this error, if the failure says.
    pub fn fix(&self) -> Option<Fix> {
        match self {
            Self::Read(e) => e.fix(),
            Self::Commit { source, .. } => source.fix(),
        }
    }
}

/// A commit by the owner of a partition: the next offset to consume, and the
/// epoch the committer owns the partition in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedCommit {
    /// The partition.
    pub tp: TopicPartition,
    /// The next offset to consume.
    pub offset: i64,
    /// The epoch the committer owns it in.
    pub epoch: i64,
}

/// Who commits: a member, in the epoch it owns the partition in.
#[derive(Debug, Clone, Copy)]
struct Owner<'a> {
    member: &'a str,
    epoch: i64,
}

/// The topic config that makes the broker stamp every record with its own
/// clock, which is what the group protocol measures liveness in.
pub const TIMESTAMP_TYPE: (&str, &str) = ("message.timestamp.type", "LogAppendTime");

/// The spec of an offsets topic named `name`: compacted, one partition, and
/// stamped with the broker's time, so no member's clock decides who is alive.
/// Records stay uncompacted for 5 minutes, many session timeouts: an owner
/// record that did not count is then always followed by the owner's record
/// again before compaction could keep it instead of the one that counts
/// (`docs/consumer-groups.md`).
pub fn offsets_topic_spec(name: &str) -> TopicSpec {
    TopicSpec::new(name, 1)
        .compacted()
        .config(TIMESTAMP_TYPE.0, TIMESTAMP_TYPE.1)
        .config("min.compaction.lag.ms", "300000")
}

/// The state of `group` as the coordination log in `topic` holds it now, open
/// transactions' records included until their markers say.
pub async fn read_group_state(
    cluster: &Cluster,
    topic: &str,
    group: &str,
) -> Result<GroupState, ReadError> {
    let (records, _) =
        read_partition_with(cluster, topic, LOG_PARTITION, Isolation::ReadUncommitted).await?;
    let mut state = GroupState::new(group);
    state.apply_all(&records);
    Ok(state)
}

/// Reads and writes committed offsets.
#[derive(Debug, Clone)]
pub struct OffsetStore {
    producer: Producer,
    topic: String,
}

impl OffsetStore {
    /// A store over `topic`, writing with `producer`.
    pub fn new(producer: Producer, topic: impl Into<String>) -> Self {
        Self {
            producer,
            topic: topic.into(),
        }
    }

    /// The topic holding the offsets.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The state of `group` as the coordination log holds it now.
    pub async fn group_state(&self, group: &str) -> Result<GroupState, OffsetError> {
        Ok(read_group_state(self.producer.cluster(), &self.topic, group).await?)
    }

    /// The committed offsets of `group`: for each partition, the next offset to consume.
    pub async fn load(&self, group: &str) -> Result<HashMap<TopicPartition, i64>, OffsetError> {
        Ok(self
            .group_state(group)
            .await?
            .committed_offsets()
            .into_iter()
            .collect())
    }

    /// Commits `offsets` (the next offset to consume per partition) for `group`
    /// outside any ownership, returning once the broker acknowledged every one.
    pub async fn commit(
        &self,
        group: &str,
        offsets: &[(TopicPartition, i64)],
    ) -> Result<(), OffsetError> {
        let records = offsets
            .iter()
            .map(|(tp, offset)| self.record(group, tp, *offset, None))
            .collect();
        self.send_all(records).await
    }

    /// Commits as `member`, owner of each partition in the epoch given with it.
    pub async fn commit_owned(
        &self,
        group: &str,
        member: &str,
        offsets: &[OwnedCommit],
    ) -> Result<(), OffsetError> {
        let records = offsets
            .iter()
            .map(|c| {
                let owner = Owner {
                    member,
                    epoch: c.epoch,
                };
                self.record(group, &c.tp, c.offset, Some(owner))
            })
            .collect();
        self.send_all(records).await
    }

    fn record(
        &self,
        group: &str,
        tp: &TopicPartition,
        offset: i64,
        owner: Option<Owner<'_>>,
    ) -> Result<ProducerRecord, ProduceError> {
        offset_record(&self.topic, group, tp, offset, owner)
    }

    async fn send_all(
        &self,
        records: Vec<Result<ProducerRecord, ProduceError>>,
    ) -> Result<(), OffsetError> {
        let error = |source| OffsetError::Commit {
            topic: self.topic.clone(),
            source,
        };
        let mut deliveries = Vec::with_capacity(records.len());
        for record in records {
            deliveries.push(
                self.producer
                    .enqueue(record.map_err(error)?)
                    .await
                    .map_err(error)?,
            );
        }
        for delivery in deliveries {
            delivery.await.map_err(error)?;
        }
        Ok(())
    }
}

/// The record of a commit by `member`, owner of `commit.tp` in `commit.epoch`,
/// for `group` in coordination topic `topic`: what an exactly-once partition
/// runner writes in the transaction of the records it committed.
pub fn owned_commit_record(
    topic: &str,
    group: &str,
    member: &str,
    commit: &OwnedCommit,
) -> Result<ProducerRecord, ProduceError> {
    let owner = Owner {
        member,
        epoch: commit.epoch,
    };
    offset_record(topic, group, &commit.tp, commit.offset, Some(owner))
}

fn offset_record(
    topic: &str,
    group: &str,
    tp: &TopicPartition,
    offset: i64,
    owner: Option<Owner<'_>>,
) -> Result<ProducerRecord, ProduceError> {
    let key = Key::Offset {
        group: group.to_owned(),
        topic: tp.topic.clone(),
        partition: tp.partition,
    };
    let value = OffsetValue {
        offset,
        member: owner.map(|o| o.member.to_owned()),
        epoch: owner.map(|o| o.epoch),
        reset: false,
        committed_at: crate::clock::now(),
    };
    ProducerRecord::new(topic)
        .partition(LOG_PARTITION)
        .key(key.encode())
        .json(&value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_topic_is_compacted_with_one_partition() {
        let spec = offsets_topic_spec(DEFAULT_OFFSETS_TOPIC);
        assert_eq!(spec.partitions, 1);
        assert_eq!(spec.configs["cleanup.policy"], "compact");
        assert_eq!(spec.configs["message.timestamp.type"], "LogAppendTime");
    }
}
