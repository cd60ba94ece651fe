//! Puts dead-lettered records back on the topic they came from.
//!
//! Once the cause of a failure is fixed (a schema bug deployed, a webhook back up),
//! [`replay`] copies every record of `<topic>.dlq` that was not replayed before to
//! the topic named in its `dlq.topic` header (or to a topic given explicitly), with
//! its key, so it lands on the partition of its order, its value, and its headers
//! without the `dlq.*` ones. How far a dead-letter topic was replayed is committed
//! to the offsets topic under the group [`REPLAY_GROUP`], so running a replay twice
//! copies nothing twice, and a record that fails again is parked again, at a new
//! offset, for the next replay.

use std::collections::BTreeMap;

use crate::kafka::fetch::Message;
use crate::kafka::fetch::{ReadError, read_topic};
use crate::kafka::fix::Fix;
use crate::kafka::group::offsets::{OffsetError, OffsetStore};
use crate::kafka::middleware::dead_letter::headers;
use crate::kafka::produce::{ProduceError, Producer, ProducerRecord};
use crate::kafka::topic::TopicPartition;

/// The offsets group that remembers how far each dead-letter topic was replayed.
pub const REPLAY_GROUP: &str = "eda-dlq-replay";

/// Header added to a replayed record: `<dlq topic>/<partition>@<offset>`.
pub const REPLAYED_FROM: &str = "dlq.replayed_from";

/// Errors of a replay.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The dead-letter topic could not be read.
    #[error("reading the dead-letter topic failed: {0}")]
    Read(#[from] ReadError),
    /// How far it was replayed could not be read or committed.
    #[error(transparent)]
    Offsets(#[from] OffsetError),
    /// A parked record does not say where it came from.
    #[error(
        "{topic}/{partition}@{offset} has no {header} header, so its original topic is unknown; name the target topic explicitly"
    )]
    NoTarget {
        /// The dead-letter topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The record's offset.
        offset: i64,
        /// The header that is missing.
        header: &'static str,
    },
    /// A record would go to a topic the replay may not write.
    #[error(
        "{topic}/{partition}@{offset} would go to {target}, which is not one of the topics a replay may write ({allowed}); nothing was replayed"
    )]
    ForeignTarget {
        /// The dead-letter topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The record's offset.
        offset: i64,
        /// Where it would go.
        target: String,
        /// The topics allowed, for the message.
        allowed: String,
    },
    /// A record could not be put back.
    #[error(
        "copying {topic}/{partition}@{offset} back failed: {source}; nothing after it was marked replayed, so run the replay again"
    )]
    Produce {
        /// The dead-letter topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The record's offset.
        offset: i64,
        /// Why.
        #[source]
        source: ProduceError,
    },
}

impl ReplayError {
    /// What would clear this error, if the failure says.
    pub fn fix(&self) -> Option<Fix> {
        match self {
            Self::Read(e) => e.fix(),
            Self::Offsets(e) => e.fix(),
            Self::Produce { source, .. } => source.fix(),
            Self::NoTarget { .. } | Self::ForeignTarget { .. } => None,
        }
    }
}

/// What a replay did (or, for a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Records copied back, per target topic.
    pub replayed: BTreeMap<String, usize>,
    /// Records skipped because an earlier replay copied them.
    pub already_replayed: usize,
}

impl ReplayReport {
    /// Records copied back in all.
    pub fn total(&self) -> usize {
        self.replayed.values().sum()
    }
}

/// What a replay does.
#[derive(Debug, Clone, Copy)]
pub struct Replay<'a> {
    /// The dead-letter topic read.
    pub dlq_topic: &'a str,
    /// The topic every record goes to; `None`: each record's `dlq.topic`.
    pub to: Option<&'a str>,
    /// Report what would be copied, and change nothing.
    pub dry_run: bool,
    /// The topics a record may go to; `None`: any. A header can name any topic,
    /// and a replay must not become a way to write into one the system does
    /// not own: a record bound elsewhere stops the replay before anything is
    /// copied.
    pub targets: Option<&'a [&'a str]>,
}

/// Copies the records of the dead-letter topic not replayed before back to
/// their topics, as `plan` says.
pub async fn replay(
    producer: &Producer,
    offsets: &OffsetStore,
    plan: Replay<'_>,
) -> Result<ReplayReport, ReplayError> {
    let Replay {
        dlq_topic,
        to,
        dry_run,
        targets,
    } = plan;
    let done = offsets.load(REPLAY_GROUP).await?;
    let records = read_topic(producer.cluster(), dlq_topic).await?;
    let mut report = ReplayReport::default();
    let mut pending = Vec::new();
    for message in records {
        let tp = TopicPartition::new(dlq_topic, message.partition);
        if done.get(&tp).is_some_and(|next| message.offset < *next) {
            report.already_replayed += 1;
            continue;
        }
        let target = match to.or_else(|| message.header_str(headers::TOPIC)) {
            Some(t) => t.to_owned(),
            None => {
                return Err(ReplayError::NoTarget {
                    topic: dlq_topic.to_owned(),
                    partition: message.partition,
                    offset: message.offset,
                    header: headers::TOPIC,
                });
            }
        };
        if let Some(allowed) = targets
            && !allowed.contains(&target.as_str())
        {
            return Err(ReplayError::ForeignTarget {
                topic: dlq_topic.to_owned(),
                partition: message.partition,
                offset: message.offset,
                target,
                allowed: allowed.join(", "),
            });
        }
        *report.replayed.entry(target.clone()).or_default() += 1;
        pending.push((target, message));
    }
    if dry_run || pending.is_empty() {
        return Ok(report);
    }

    // Sent one by one, in log order, with the progress committed after each: a
    // failure half-way leaves an exact mark, and the next run resumes there.
    for (target, message) in pending {
        let (partition, offset) = (message.partition, message.offset);
        let record = replayed(&target, &message, dlq_topic);
        producer
            .send(record)
            .await
            .map_err(|source| ReplayError::Produce {
                topic: dlq_topic.to_owned(),
                partition,
                offset,
                source,
            })?;
        offsets
            .commit(
                REPLAY_GROUP,
                &[(TopicPartition::new(dlq_topic, partition), offset + 1)],
            )
            .await?;
    }
    Ok(report)
}

/// The record that puts `message` back on `target`.
fn replayed(target: &str, message: &Message, dlq_topic: &str) -> ProducerRecord {
    let mut record = ProducerRecord::new(target);
    record.key = message.key.as_deref().map(<[u8]>::to_vec);
    record.value = message.value.as_deref().map(<[u8]>::to_vec);
    record.headers = message
        .headers
        .iter()
        .filter(|(name, _)| !headers::ALL.contains(&name.as_str()) && *name != REPLAYED_FROM)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    record.header(
        REPLAYED_FROM,
        format!("{dlq_topic}/{}@{}", message.partition, message.offset),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rskafka::chrono::DateTime;

    #[test]
    fn a_replayed_record_keeps_key_value_and_own_headers_only() {
        let mut message = Message {
            topic: "orders.dlq".into(),
            partition: 0,
            offset: 7,
            key: Some(bytes::Bytes::from_static(b"k")),
            value: Some(bytes::Bytes::from_static(b"v")),
            headers: BTreeMap::new(),
            timestamp: DateTime::from_timestamp_millis(0).unwrap(),
            attempt: 1,
            outbox: None,
        };
        for h in headers::ALL {
            message.headers.insert(h.to_owned(), b"x".to_vec());
        }
        message.headers.insert("event_id".into(), b"e-1".to_vec());
        let record = replayed("orders", &message, "orders.dlq");
        assert_eq!(record.topic, "orders");
        assert_eq!(record.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(record.value.as_deref(), Some(&b"v"[..]));
        let names: Vec<&str> = record.headers.keys().map(String::as_str).collect();
        assert_eq!(names, ["dlq.replayed_from", "event_id"]);
        assert_eq!(record.headers[REPLAYED_FROM], b"orders.dlq/0@7");
        assert_eq!(record.partition, None);
    }
}
