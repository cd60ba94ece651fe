//! Parks records that cannot be processed in a dead-letter topic.
//!
//! [`DeadLetter`] wraps a [`Handler`]. A record is parked in `<topic>.dlq` when the
//! inner handler fails with a [`Poison`] error (it cannot be decoded, or breaks the
//! event schema: retrying cannot help), or when it failed on its last allowed
//! attempt (the consumer offers a failed record again with backoff and jitter;
//! after `max_attempts` a transient failure is treated as permanent, so that one
//! record cannot block its partition forever), or when it is offered after its
//! last allowed attempt, which the consumer cut off at a deadline (a handler
//! that hangs is not called again). The wrapper then returns `Ok`, and the
//! partition moves on. Other errors pass through, to be retried.
//!
//! Parked records keep their key, value and headers, and get headers naming the
//! error, the attempts and where they came from, so that
//! [`replay`](super::replay) can put them back once the cause is fixed.

use crate::metrics;

use crate::kafka::consume::{Handler, HandlerError, Poison};
use crate::kafka::fetch::Message;
use crate::kafka::produce::{Producer, ProducerRecord};

/// Headers added to a dead-lettered record.
pub mod headers {
    /// The error that made the record unprocessable.
    pub const ERROR: &str = "dlq.error";
    /// The topic it came from.
    pub const TOPIC: &str = "dlq.topic";
    /// The partition it came from.
    pub const PARTITION: &str = "dlq.partition";
    /// Its offset there.
    pub const OFFSET: &str = "dlq.offset";
    /// How many times the handler was offered it.
    pub const ATTEMPTS: &str = "dlq.attempts";
    /// When the record was parked (RFC 3339).
    pub const PARKED_AT: &str = "dlq.parked_at";

    /// Every header this module adds.
    pub const ALL: [&str; 6] = [ERROR, TOPIC, PARTITION, OFFSET, ATTEMPTS, PARKED_AT];
}

/// The default of [`DeadLetter::max_attempts`]: with the consumer's default
/// backoff (100 ms doubling to 10 s) the last attempt comes about half a minute
/// after the first, which rides out a broker restart or a short webhook outage.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;

/// The dead-letter topic of `topic`.
pub fn topic_for(topic: &str) -> String {
    format!("{topic}.dlq")
}

/// A handler that dead-letters poison records.
#[derive(Debug, Clone)]
pub struct DeadLetter<H> {
    inner: H,
    producer: Producer,
    max_attempts: u32,
}

impl<H: Handler> DeadLetter<H> {
    /// Parks poison records, and records that failed [`DEFAULT_MAX_ATTEMPTS`] times.
    pub fn new(inner: H, producer: Producer) -> Self {
        Self {
            inner,
            producer,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }

    /// Parks a record once it failed this many times (at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }
}

impl<H: Handler> Handler for DeadLetter<H> {
    async fn handle(&self, message: &Message) -> Result<(), HandlerError> {
        // Past its budget already: its last attempt did not even end (the
        // consumer cut it off at a deadline). Calling the handler again
        // would hang again, so the record is parked without a call.
        if message.attempt > self.max_attempts {
            let error: HandlerError = format!(
                "gave up after {} attempts; the last did not finish in time, or parking the record after it failed",
                message.attempt - 1
            )
            .into();
            return self.park(message, message.attempt - 1, error).await;
        }
        let error = match self.inner.handle(message).await {
            Ok(()) => return Ok(()),
            Err(e) if Poison::is_poison(&e) => e,
            Err(e) if message.attempt >= self.max_attempts => {
                format!("gave up after {} attempts: {e}", message.attempt).into()
            }
            Err(e) => return Err(e),
        };
        self.park(message, message.attempt, error).await
    }
}

impl<H: Handler> DeadLetter<H> {
    /// Copies `message` to its dead-letter topic, with why and after how many
    /// attempts.
    async fn park(
        &self,
        message: &Message,
        attempts: u32,
        error: HandlerError,
    ) -> Result<(), HandlerError> {
        let mut record = ProducerRecord::new(topic_for(&message.topic));
        record.key = message.key.as_deref().map(<[u8]>::to_vec);
        record.value = message.value.as_deref().map(<[u8]>::to_vec);
        record.headers = message.headers.clone();
        record.timestamp = Some(message.timestamp);
        let record = record
            .header(headers::ERROR, error.to_string())
            .header(headers::TOPIC, message.topic.as_bytes())
            .header(headers::PARTITION, message.partition.to_string())
            .header(headers::OFFSET, message.offset.to_string())
            .header(headers::ATTEMPTS, attempts.to_string())
            .header(headers::PARKED_AT, crate::clock::now());
        // If parking fails the error goes back to the consumer, which retries.
        // Under exactly-once, parked in the same transaction as the offset
        // that moves past it.
        let delivery = message.send_output(&self.producer, record).await?;
        metrics::counter(
            "eda_dead_letter_records_total",
            "Records parked in a dead-letter topic, by original topic.",
            &[("topic", &*message.topic)],
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
