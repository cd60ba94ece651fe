//! Parks records that can never be processed in a dead-letter topic.
//!
//! [`DeadLetter`] wraps a [`Handler`]. When the inner handler fails with a
//! [`Poison`] error, the record is copied to `<topic>.dlq` with headers naming the
//! error and where it came from, and the wrapper returns `Ok`, so the partition
//! moves on instead of retrying forever. Other errors pass through untouched, to
//! be retried. Records keep their key, value and headers in the dead-letter topic,
//! so they can be replayed once the cause is fixed.

use crate::metrics;

use super::consumer::{Handler, HandlerError, Message, Poison};
use super::producer::{Producer, ProducerRecord};

/// Headers added to a dead-lettered record.
pub mod headers {
    pub const ERROR: &str = "dlq.error";
    pub const TOPIC: &str = "dlq.topic";
    pub const PARTITION: &str = "dlq.partition";
    pub const OFFSET: &str = "dlq.offset";
}

/// The dead-letter topic of `topic`.
pub fn topic_for(topic: &str) -> String {
    format!("{topic}.dlq")
}

/// A handler that dead-letters poison records.
#[derive(Debug, Clone)]
pub struct DeadLetter<H> {
    inner: H,
    producer: Producer,
}

impl<H: Handler> DeadLetter<H> {
    pub fn new(inner: H, producer: Producer) -> Self {
        Self { inner, producer }
    }
}

impl<H: Handler> Handler for DeadLetter<H> {
    async fn handle(&self, message: &Message) -> Result<(), HandlerError> {
        let error = match self.inner.handle(message).await {
            Ok(()) => return Ok(()),
            Err(e) if Poison::is_poison(&e) => e,
            Err(e) => return Err(e),
        };
        let mut record = ProducerRecord::new(topic_for(&message.topic));
        record.key = message.key.clone();
        record.value = message.value.clone();
        record.headers = message.headers.clone();
        record.timestamp = Some(message.timestamp);
        let record = record
            .header(headers::ERROR, error.to_string())
            .header(headers::TOPIC, message.topic.clone())
            .header(headers::PARTITION, message.partition.to_string())
            .header(headers::OFFSET, message.offset.to_string());
        // If parking fails the error goes back to the consumer, which retries.
        let delivery = self.producer.send(record).await?;
        metrics::counter(
            "eda_dead_letter_records_total",
            "Records parked in a dead-letter topic, by original topic.",
            &[("topic", message.topic.as_str())],
        )
        .inc();
        log::error!(
            "record {}/{}@{} cannot be processed and was moved to {} (partition {}, offset {}): {error}",
            message.topic,
            message.partition,
            message.offset,
            topic_for(&message.topic),
            delivery.partition,
            delivery.offset
        );
        Ok(())
    }
}
