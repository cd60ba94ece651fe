//! A record as consumers and followers hand it on: where it was read, its key,
//! value, headers and timestamp, sharing the fetched buffers.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use rskafka::chrono::{DateTime, Utc};

use crate::kafka::codec::FetchedRecord;
use crate::kafka::produce::{Delivery, Outbox, ProduceError, Producer, ProducerRecord};

/// A consumed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Shared by the messages of a partition: naming the topic costs no copy.
    pub topic: Arc<str>,
    /// The partition it was read from.
    pub partition: i32,
    /// Its offset in the partition.
    pub offset: i64,
    /// The key and value share the memory they were fetched in (the fetch
    /// response, up to `fetch_max_bytes`, or a decompressed batch), which stays
    /// allocated while either is alive: a handler that keeps a message for long
    /// should keep a copy (`to_vec`).
    pub key: Option<Bytes>,
    /// Its value; `None` for a tombstone.
    pub value: Option<Bytes>,
    /// Its headers.
    pub headers: BTreeMap<String, Vec<u8>>,
    /// Its timestamp: the broker's with `LogAppendTime`, the producer's otherwise.
    pub timestamp: DateTime<Utc>,
    /// Which delivery of this record to the handler this is, from 1: the consumer
    /// offers a failed record again, and wrappers such as
    /// [`DeadLetter`](crate::kafka::middleware::DeadLetter) give up after a budget.
    pub attempt: u32,
    /// Under exactly-once processing, the transaction it is handled in.
    pub(crate) outbox: Option<Outbox>,
}

impl Message {
    pub(crate) fn new(topic: Arc<str>, partition: i32, r: FetchedRecord) -> Self {
        Self {
            topic,
            partition,
            offset: r.offset,
            key: r.key,
            value: r.value,
            headers: r.headers,
            timestamp: r.timestamp,
            attempt: 1,
            outbox: None,
        }
    }

    /// Under exactly-once processing, the transaction this record is handled
    /// in: records sent there are committed together with the record's
    /// offset, or not at all. `None` under at-least-once processing.
    pub fn outbox(&self) -> Option<&Outbox> {
        self.outbox.as_ref()
    }

    /// Sends `record` as output of handling this record: into its
    /// transaction under exactly-once processing, through `producer`
    /// otherwise. Waits until the broker has it.
    pub async fn send_output(
        &self,
        producer: &Producer,
        record: ProducerRecord,
    ) -> Result<Delivery, ProduceError> {
        match &self.outbox {
            Some(outbox) => outbox.send(record).await,
            None => producer.send(record).await,
        }
    }

    /// A header as UTF-8 text, if present and valid.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }
}
