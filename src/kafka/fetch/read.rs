//! Reading a log to its end once: every record of a partition or a topic up to
//! the high watermark seen when the read started. Offsets, the group state and
//! dead-letter replays are built this way.

use std::sync::Arc;
use std::time::Duration;

use rskafka::client::partition::OffsetAt;

use super::Message;
use crate::kafka::codec::FetchedRecord;
use crate::kafka::conn::{Cluster, ClusterError, Isolation, Lane};
use crate::kafka::fix::Fix;

/// The largest fetch while reading a log back.
const READ_BYTES: i32 = 4 * 1024 * 1024;

/// Errors of reading a log to its end.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The cluster failed to answer.
    #[error("reading {topic:?} failed: {source}")]
    Cluster {
        /// The topic.
        topic: String,
        /// Why.
        #[source]
        source: ClusterError,
    },
    /// The broker returned nothing below the high watermark, several times.
    #[error(
        "reading {topic:?}/{partition} made no progress at offset {offset} (high watermark {high_watermark})"
    )]
    Stuck {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// Where reading stopped.
        offset: i64,
        /// Where it should have got to.
        high_watermark: i64,
    },
}

impl ReadError {
    /// What would clear this error, if the failure says.
    pub fn fix(&self) -> Option<Fix> {
        match self {
            Self::Cluster { source, .. } => source.fix(),
            Self::Stuck { .. } => None,
        }
    }

    /// Whether reading again later may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            Self::Cluster { source, .. } => source.is_retriable(),
            Self::Stuck { .. } => false,
        }
    }
}

/// Every record of every partition of `topic`, up to the high watermarks seen when
/// the read started, in offset order per partition.
pub async fn read_topic(cluster: &Cluster, topic: &str) -> Result<Vec<Message>, ReadError> {
    let partitions = partition_count(cluster, topic).await?;
    let mut messages = Vec::new();
    let name: Arc<str> = Arc::from(topic);
    for p in 0..partitions {
        for record in read_partition(cluster, topic, p).await?.0 {
            messages.push(Message::new(Arc::clone(&name), p, record));
        }
    }
    Ok(messages)
}

/// One partition from its earliest retained record up to the end seen when the
/// read started, as `read_committed` sees it: the records of committed
/// transactions and of none, up to the last stable offset. Returns the records
/// and that end.
pub async fn read_partition(
    cluster: &Cluster,
    topic: &str,
    partition: i32,
) -> Result<(Vec<FetchedRecord>, i64), ReadError> {
    read_partition_with(cluster, topic, partition, Isolation::ReadCommitted).await
}

/// [`read_partition`] with the isolation given: with `ReadUncommitted`, up to
/// the high watermark, transactions tagged (the coordination log's reading,
/// which no open transaction may hold back).
pub(crate) async fn read_partition_with(
    cluster: &Cluster,
    topic: &str,
    partition: i32,
    isolation: Isolation,
) -> Result<(Vec<FetchedRecord>, i64), ReadError> {
    let read_error = |source| ReadError::Cluster {
        topic: topic.to_owned(),
        source,
    };
    let mut offset = list_offset(cluster, topic, partition, OffsetAt::Earliest).await?;
    // ListOffsets answers the last stable offset, as `read_committed` reads;
    // the high watermark comes with the first fetch.
    let mut end = match isolation {
        Isolation::ReadCommitted => {
            Some(list_offset(cluster, topic, partition, OffsetAt::Latest).await?)
        }
        Isolation::ReadUncommitted => None,
    };

    let mut records = Vec::new();
    let mut empty_reads = 0;
    while end.is_none_or(|end| offset < end) {
        let (fetched, high_watermark) = cluster
            .fetch(
                topic,
                partition,
                offset,
                READ_BYTES,
                Duration::from_millis(100),
                isolation,
            )
            .await
            .map_err(read_error)?;
        let high_watermark = *end.get_or_insert(high_watermark);
        if offset >= high_watermark {
            break;
        }
        match fetched.next_offset {
            Some(next) => {
                offset = next;
                empty_reads = 0;
                records.extend(fetched.records);
            }
            // Below the high watermark the broker always returns a whole batch (even
            // one larger than the limit); an empty answer is a leader change, or data
            // not yet replicated, and worth a few more tries.
            None if empty_reads < 3 => {
                empty_reads += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            None => {
                return Err(ReadError::Stuck {
                    topic: topic.to_owned(),
                    partition,
                    offset,
                    high_watermark,
                });
            }
        }
    }
    Ok((records, end.unwrap_or(offset)))
}

/// Waits until every transaction that was open in `topic` when called is
/// decided: each partition's last stable offset reaches the high watermark it
/// had then. A committed transaction's records are not yet visible to
/// `read_committed` readers when its commit returns, because the coordinator
/// answers `EndTxn` once the commit is decided and writes the markers to the
/// partitions after that; so a reader that must see a commit it just made
/// (a check, a replay) waits here first. A transaction whose producer died
/// stays open until its coordinator aborts it (after its timeout, or when
/// the next producer of its transactional id starts): wrap this in a timeout.
pub async fn settled(cluster: &Cluster, topic: &str) -> Result<(), ReadError> {
    let partitions = partition_count(cluster, topic).await?;
    for partition in 0..partitions {
        let end = high_watermark(cluster, topic, partition).await?;
        while list_offset(cluster, topic, partition, OffsetAt::Latest).await? < end {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(())
}

/// Where `partition`'s log ends now, open transactions included: its high
/// watermark, which a `read_uncommitted` fetch reports (`ListOffsets` answers
/// the last stable offset, before the first open transaction).
pub(crate) async fn high_watermark(
    cluster: &Cluster,
    topic: &str,
    partition: i32,
) -> Result<i64, ReadError> {
    let stable = list_offset(cluster, topic, partition, OffsetAt::Latest).await?;
    let (_, high_watermark) = cluster
        .fetch(
            topic,
            partition,
            stable,
            1024,
            Duration::ZERO,
            Isolation::ReadUncommitted,
        )
        .await
        .map_err(|source| ReadError::Cluster {
            topic: topic.to_owned(),
            source,
        })?;
    Ok(high_watermark)
}

pub(crate) async fn partition_count(cluster: &Cluster, topic: &str) -> Result<i32, ReadError> {
    cluster
        .partition_count(topic)
        .await
        .map_err(|source| ReadError::Cluster {
            topic: topic.to_owned(),
            source,
        })
}

/// `ListOffsets` for one partition: its earliest offset, (`Latest`) its last
/// stable offset, or the first offset at or after a time (-1 if none is).
pub(crate) async fn offset_at(
    cluster: &Cluster,
    topic: &str,
    partition: i32,
    at: OffsetAt,
) -> Result<i64, ReadError> {
    list_offset(cluster, topic, partition, at).await
}

async fn list_offset(
    cluster: &Cluster,
    topic: &str,
    partition: i32,
    at: OffsetAt,
) -> Result<i64, ReadError> {
    let read_error = |source| ReadError::Cluster {
        topic: topic.to_owned(),
        source,
    };
    let client = cluster
        .partition_client(topic, partition, Lane::Read)
        .await
        .map_err(read_error)?;
    cluster
        .timed("list offsets", client.get_offset(at))
        .await
        .map_err(read_error)
}
