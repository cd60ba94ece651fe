//! Committed consumer offsets, kept in a compacted Kafka topic.
//!
//! rskafka has no group coordinator client, so commits are ordinary records in a
//! topic with `cleanup.policy=compact` (default `__eda_offsets`), one partition so
//! that the topic is a single, totally ordered log. Each record's key names what it
//! is about and its value holds the latest state; compaction keeps the latest
//! record per key, so reading the partition from the start and keeping the last
//! value per key always yields the current state, however old the log.
//!
//! Keys and values are JSON, readable in any Kafka tool:
//!
//! ```text
//! key:   {"type":"offset","group":"inventory","topic":"order.created","partition":3}
//! value: {"offset":1042,"committed_at":"2026-11-24T10:00:00Z"}
//! ```
//!
//! `offset` is the next offset to consume, as in Kafka's own commits. A record with
//! no value (a tombstone) deletes the key. Keys of other types are skipped, which
//! leaves room for more kinds of coordination records in the same topic.

use std::collections::HashMap;

use rskafka::chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::TopicPartition;
use super::admin::TopicSpec;
use super::follower::{ReadError, read_partition};
use super::producer::{ProduceError, Producer, ProducerRecord};

/// The default name of the offsets topic.
pub const DEFAULT_OFFSETS_TOPIC: &str = "__eda_offsets";

/// The partition of the offsets topic that holds every record.
const LOG_PARTITION: i32 = 0;

/// Errors of the offset store.
#[derive(Debug, thiserror::Error)]
pub enum OffsetError {
    #[error("reading committed offsets failed: {0}")]
    Read(#[from] ReadError),
    #[error("committing offsets to {topic:?} failed: {source}")]
    Commit {
        topic: String,
        #[source]
        source: ProduceError,
    },
}

/// The key of a record in the offsets topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum CoordinationKey {
    Offset {
        group: String,
        topic: String,
        partition: i32,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct OffsetValue {
    offset: i64,
    committed_at: String,
}

/// The spec of an offsets topic named `name`.
pub fn offsets_topic_spec(name: &str) -> TopicSpec {
    TopicSpec::new(name, 1).compacted()
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

    /// The committed offsets of `group`: for each partition, the next offset to consume.
    pub async fn load(&self, group: &str) -> Result<HashMap<TopicPartition, i64>, OffsetError> {
        let records = read_partition(self.producer.cluster(), &self.topic, LOG_PARTITION).await?;
        let mut offsets = HashMap::new();
        for r in records {
            let Some(key) = r.record.key.as_deref() else {
                continue;
            };
            let Ok(CoordinationKey::Offset {
                group: g,
                topic,
                partition,
            }) = serde_json::from_slice(key)
            else {
                continue;
            };
            if g != group {
                continue;
            }
            let tp = TopicPartition::new(topic, partition);
            match r
                .record
                .value
                .as_deref()
                .map(serde_json::from_slice::<OffsetValue>)
            {
                Some(Ok(v)) => {
                    offsets.insert(tp, v.offset);
                }
                None => {
                    offsets.remove(&tp);
                }
                Some(Err(e)) => {
                    log::warn!(
                        "skipping unreadable offset record at {}/{LOG_PARTITION}@{}: {e}",
                        self.topic,
                        r.offset
                    );
                }
            }
        }
        Ok(offsets)
    }

    /// Commits `offsets` (the next offset to consume per partition) for `group`,
    /// returning once the broker acknowledged every one of them.
    pub async fn commit(
        &self,
        group: &str,
        offsets: &[(TopicPartition, i64)],
    ) -> Result<(), OffsetError> {
        let committed_at = DateTime::<Utc>::from(std::time::SystemTime::now())
            .to_rfc3339_opts(SecondsFormat::Millis, true);
        let mut deliveries = Vec::with_capacity(offsets.len());
        for (tp, offset) in offsets {
            let record = ProducerRecord::new(&self.topic)
                .partition(LOG_PARTITION)
                .key(offset_key(group, tp))
                .value(encode(&OffsetValue {
                    offset: *offset,
                    committed_at: committed_at.clone(),
                }));
            deliveries.push(self.producer.enqueue(record).await.map_err(|source| {
                OffsetError::Commit {
                    topic: self.topic.clone(),
                    source,
                }
            })?);
        }
        for delivery in deliveries {
            delivery.await.map_err(|source| OffsetError::Commit {
                topic: self.topic.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

fn offset_key(group: &str, tp: &TopicPartition) -> Vec<u8> {
    encode(&CoordinationKey::Offset {
        group: group.to_owned(),
        topic: tp.topic.clone(),
        partition: tp.partition,
    })
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising plain structs of strings and integers cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_json() {
        let key = offset_key("g", &TopicPartition::new("order.created", 3));
        assert_eq!(
            String::from_utf8(key).unwrap(),
            r#"{"type":"offset","group":"g","topic":"order.created","partition":3}"#
        );
    }

    #[test]
    fn other_key_types_are_not_offsets() {
        let other = br#"{"type":"member","group":"g","member":"m"}"#;
        assert!(serde_json::from_slice::<CoordinationKey>(other).is_err());
    }

    #[test]
    fn offsets_topic_is_compacted_with_one_partition() {
        let spec = offsets_topic_spec(DEFAULT_OFFSETS_TOPIC);
        assert_eq!(spec.partitions, 1);
        assert_eq!(spec.configs["cleanup.policy"], "compact");
    }
}
