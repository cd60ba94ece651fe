//! What a caller hands the producer and gets back: the record, where it was
//! written, and why it was not.

use crate::kafka::fix::Fix;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rskafka::chrono::{DateTime, Utc};
use rskafka::client::partition::Compression as WireCompression;

use crate::kafka::conn::ClusterError;

/// Bytes added to every record in a batch besides key, value and headers
/// (length, attributes, deltas, header counts), for sizing batches.
pub(super) const RECORD_OVERHEAD: usize = 24;

/// Compression of produced batches. Only pure-Rust codecs are built in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Compression {
    /// No compression.
    #[default]
    None,
    /// gzip, pure Rust.
    Gzip,
    /// snappy, pure Rust.
    Snappy,
}

impl std::str::FromStr for Compression {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "none" | "" => Ok(Self::None),
            "gzip" => Ok(Self::Gzip),
            "snappy" => Ok(Self::Snappy),
            other => Err(format!(
                "unknown compression {other:?}: expected none, gzip or snappy (lz4 and zstd need C libraries and are not built in)"
            )),
        }
    }
}

impl From<Compression> for WireCompression {
    fn from(c: Compression) -> Self {
        match c {
            Compression::None => WireCompression::NoCompression,
            Compression::Gzip => WireCompression::Gzip,
            Compression::Snappy => WireCompression::Snappy,
        }
    }
}

/// A record to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerRecord {
    /// The topic.
    pub topic: String,
    /// Chosen by the partitioner when `None`.
    pub partition: Option<i32>,
    /// The key; records with the same key go to the same partition.
    pub key: Option<Vec<u8>>,
    /// The value; `None` writes a tombstone.
    pub value: Option<Vec<u8>>,
    /// The headers.
    pub headers: BTreeMap<String, Vec<u8>>,
    /// Set to the enqueue time when `None` (Kafka's `CreateTime`).
    pub timestamp: Option<DateTime<Utc>>,
}

impl ProducerRecord {
    /// An empty record for `topic`.
    pub fn new(topic: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            partition: None,
            key: None,
            value: None,
            headers: BTreeMap::new(),
            timestamp: None,
        }
    }

    /// Sets the key.
    pub fn key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the value.
    pub fn value(mut self, value: impl Into<Vec<u8>>) -> Self {
        self.value = Some(value.into());
        self
    }

    /// The value as JSON. A value serde cannot encode (a map with keys that are
    /// not strings, a `Serialize` that fails) is an error, never an empty record.
    pub fn json<T: serde::Serialize + ?Sized>(self, value: &T) -> Result<Self, ProduceError> {
        match serde_json::to_vec(value) {
            Ok(bytes) => Ok(self.value(bytes)),
            Err(e) => Err(ProduceError::Encode {
                topic: self.topic,
                reason: e.to_string(),
            }),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Sends to `partition` instead of the partitioner's choice.
    pub fn partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Sets the timestamp instead of the enqueue time.
    pub fn timestamp(mut self, timestamp: DateTime<Utc>) -> Self {
        self.timestamp = Some(timestamp);
        self
    }

    pub(super) fn size(&self) -> usize {
        RECORD_OVERHEAD
            + self.key.as_ref().map_or(0, Vec::len)
            + self.value.as_ref().map_or(0, Vec::len)
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len() + 8)
                .sum::<usize>()
    }
}

/// Where an acknowledged record was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Delivery {
    /// Where it was written.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
}

/// Why a record was not produced.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProduceError {
    /// The producer was closed before the record was accepted.
    #[error("the producer is closed and accepts no more records")]
    Closed,
    /// The record's value could not be encoded; nothing was sent.
    #[error("the record for {topic} could not be encoded: {reason}")]
    Encode {
        /// The topic.
        topic: String,
        /// The encoder's error.
        reason: String,
    },
    /// No producer id could be had for an idempotent producer.
    #[error("the producer has no producer id from the broker: {reason}")]
    ProducerId {
        /// Why.
        reason: String,
    },
    /// The record does not fit into one batch.
    #[error("record of {size} bytes exceeds the batch limit of {max} bytes (batch_max_bytes)")]
    RecordTooLarge {
        /// The record's size in bytes.
        size: usize,
        /// The batch limit.
        max: usize,
    },
    /// The topic or partition is unknown, or metadata could not be loaded.
    #[error(transparent)]
    Cluster(Arc<ClusterError>),
    /// No acknowledgement within the delivery timeout.
    #[error(
        "record for {topic}/{partition} not acknowledged within {timeout:?}; last error: {last_error}"
    )]
    DeliveryTimeout {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The delivery timeout.
        timeout: Duration,
        /// The last error before it ran out.
        last_error: String,
    },
    /// The record was to go into a transaction that cannot take it (fenced,
    /// failed, or its coordinator out of reach).
    #[error("the record's transaction cannot take it: {reason}")]
    Transaction {
        /// Why.
        reason: String,
    },
    /// The broker refused the batch for a reason retrying cannot fix.
    #[error("broker rejected the record for {topic}/{partition}: {error}")]
    Rejected {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The broker's error.
        error: String,
    },
}

impl ProduceError {
    /// What would clear this error, if the failure says.
    pub fn fix(&self) -> Option<Fix> {
        match self {
            Self::Cluster(e) => e.fix(),
            _ => None,
        }
    }
}

impl From<ClusterError> for ProduceError {
    fn from(e: ClusterError) -> Self {
        Self::Cluster(Arc::new(e))
    }
}
