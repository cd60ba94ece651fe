//! One partition's worker: sends its batches one request at a time (so a
//! retry never overtakes a later batch), retries what may pass with backoff
//! and fresh metadata, and answers each batch's records at once.

use crate::metrics;
use std::pin::Pin;
use std::sync::Arc;

use rskafka::client::partition::{BatchProducer, ProduceBatch};
use tokio::time::Instant;

use super::accumulator::{OpenBatch, Shared};
use super::producer::ProducerConfig;
use super::producer_id::{Identity, ProducerIdentity};
use super::record::ProduceError;
use crate::kafka::backoff::{Backoff, sleep_until_or_never};
use crate::kafka::conn::{Cluster, ClusterError, Lane};

/// A batch's request, from first attempt to answering its records.
pub(super) type InFlight<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

pub(super) struct PartitionWorker {
    pub(super) cluster: Cluster,
    pub(super) config: ProducerConfig,
    pub(super) metrics: TopicMetrics,
    pub(super) topic: String,
    pub(super) partition: i32,
    /// The producer id its batches carry; `None` with idempotence off.
    pub(super) identity: Option<Arc<Identity>>,
    /// The generation of that id this partition's sequence numbers belong to,
    /// and the next one. One batch is in flight at a time, so the next batch's
    /// sequence is known when it is made.
    pub(super) sequence: parking_lot::Mutex<(u64, i32)>,
}

/// Whether the broker refused a batch because of its producer id, epoch or
/// sequence: it lost the id's state, or a batch before this one never landed.
/// The producer takes a new id and the batch goes again, from sequence 0.
fn needs_new_identity(error: &ClusterError) -> bool {
    use rskafka::client::error::ProtocolError;
    matches!(
        error.protocol_error(),
        Some(
            ProtocolError::OutOfOrderSequenceNumber
                | ProtocolError::UnknownProducerId
                | ProtocolError::InvalidProducerEpoch
                | ProtocolError::ProducerFenced
        )
    )
}

/// Whether the broker says it wrote this batch already
/// (`DUPLICATE_SEQUENCE_NUMBER`): brokers before 2.0 answer a repeat that way,
/// without its offsets, and it counts as delivered, as in the Java client.
fn is_duplicate(error: &ClusterError) -> bool {
    error.protocol_error() == Some(rskafka::client::error::ProtocolError::DuplicateSequenceNumber)
}

/// The sequence number after `records` records from `base`: Kafka's wrap
/// past `i32::MAX` to 0.
fn next_sequence(base: i32, records: usize) -> i32 {
    let next = (i64::from(base) + records as i64) % (i64::from(i32::MAX) + 1);
    i32::try_from(next).unwrap_or(0)
}

/// What a producer reports per topic on `/metrics`.
pub(super) struct TopicMetrics {
    pub(super) records: metrics::Counter,
    pub(super) bytes: metrics::Counter,
    pub(super) errors: metrics::Counter,
    pub(super) retries: metrics::Counter,
    pub(super) latency: metrics::Histogram,
}

impl TopicMetrics {
    pub(super) fn new(topic: &str) -> Self {
        let labels = [("topic", topic)];
        Self {
            records: metrics::counter(
                "eda_producer_records_total",
                "Records the broker acknowledged.",
                &labels,
            ),
            bytes: metrics::counter(
                "eda_producer_bytes_total",
                "Key, value and header bytes of acknowledged records.",
                &labels,
            ),
            errors: metrics::counter(
                "eda_producer_errors_total",
                "Records that failed for good (rejected or out of delivery time).",
                &labels,
            ),
            retries: metrics::counter(
                "eda_producer_retries_total",
                "Produce requests retried after a retriable error.",
                &labels,
            ),
            latency: metrics::histogram(
                "eda_producer_request_seconds",
                "Time from sending a batch to its acknowledgement, retries included.",
                &labels,
            ),
        }
    }
}

/// The producer fields of a batch written by `id` from sequence `base`.
fn batch_producer(identity: &Identity, id: ProducerIdentity, base: i32) -> BatchProducer {
    BatchProducer {
        producer_id: id.id,
        producer_epoch: id.epoch,
        base_sequence: base,
        transactional_id: identity.transactional_id().map(str::to_owned),
    }
}

impl PartitionWorker {
    /// The id, generation and first sequence number of the next batch: 0 when
    /// the id is new to this partition.
    fn start_sequence(
        &self,
        id: ProducerIdentity,
        generation: u64,
    ) -> (ProducerIdentity, u64, i32) {
        let mut sequence = self.sequence.lock();
        if sequence.0 != generation {
            *sequence = (generation, 0);
        }
        (id, generation, sequence.1)
    }

    /// A batch's delivery time ran out; `last_error` says what stood in the way.
    fn out_of_time(&self, last_error: impl Into<String>) -> ProduceError {
        ProduceError::DeliveryTimeout {
            topic: self.topic.clone(),
            partition: self.partition,
            timeout: self.config.delivery_timeout,
            last_error: last_error.into(),
        }
    }

    /// Gathers records into batches and sends them, one request in flight. While a
    /// batch is on its way the next one fills, so a busy partition sends full
    /// batches back to back instead of waiting a linger between them.
    pub(super) async fn run(self, shared: Arc<Shared>) {
        // However this task ends, callers must not wait on records nobody sends.
        let _drain = DrainOnDrop(&shared);
        // The batch on its way, with the number of records in it.
        let mut in_flight: Option<(InFlight<'_>, u64)> = None;

        loop {
            let linger_end = {
                let mut queue = shared.queue.lock();
                if in_flight.is_none()
                    && queue.ready(Instant::now(), &self.config)
                    && let Some(batch) = queue.take_batch()
                {
                    let n = batch.records.len() as u64;
                    in_flight = Some((Box::pin(self.send_batch(batch)), n));
                }
                if in_flight.is_none() && queue.batches.is_empty() {
                    // Nothing pending: every earlier flush is satisfied.
                    queue.answer_flushes(u64::MAX);
                    if queue.closed {
                        return;
                    }
                }
                // Only an idle worker with records waits for their linger to end.
                match (&in_flight, queue.batches.front()) {
                    (None, Some(first)) => Some(first.created + self.config.linger),
                    _ => None,
                }
            };
            tokio::select! {
                biased;
                () = async {
                    match in_flight.as_mut() {
                        Some((send, _)) => send.await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Some((_, n)) = in_flight.take() {
                        shared.queue.lock().batch_done(n);
                    }
                }
                // Not while a batch is on its way: records gather in the queue and
                // are looked at when it returns, instead of waking this task for
                // each. A wake sent meanwhile is kept for the next wait.
                () = shared.wake.notified(), if in_flight.is_none() => {}
                () = sleep_until_or_never(linger_end) => {}
            }
        }
    }

    /// Sends one batch until it is acknowledged, fails for good, or runs out of
    /// delivery time; then answers every record in it, and gives back their room.
    pub(super) async fn send_batch(&self, batch: OpenBatch) {
        let deadline = batch.created + self.config.delivery_timeout;
        let records = batch.records.len();
        let size = batch.bytes() as u64;
        let answer = batch.answer;
        // Made into a request once and sent by reference: a retry (or an attempt cut
        // off by a timeout) needs no copy of the records.
        let mut writer = None;
        if let Some(identity) = &self.identity {
            // Bounded by the batch's delivery time like its sends: with the
            // broker out of reach the caller hears so in time.
            let error = match tokio::time::timeout_at(deadline, identity.get()).await {
                Ok(Ok(Some((id, generation)))) => {
                    writer = Some(self.start_sequence(id, generation));
                    None
                }
                Ok(Ok(None)) => None,
                Ok(Err(e)) => Some(ProduceError::ProducerId {
                    reason: e.to_string(),
                }),
                Err(_) => Some(self.out_of_time("no producer id from the broker in time")),
            };
            if let Some(error) = error {
                self.metrics.errors.add(records as u64);
                log::error!("{error}");
                answer.send(Err(error));
                return;
            }
        }
        let mut request = match (&self.identity, &writer) {
            (Some(identity), Some((id, _, base))) => ProduceBatch::with_producer(
                &self.topic,
                self.partition,
                batch.records,
                self.config.compression.into(),
                batch_producer(identity, *id, *base),
            ),
            _ => ProduceBatch::new(
                &self.topic,
                self.partition,
                batch.records,
                self.config.compression.into(),
            ),
        };
        let mut backoff = Backoff::new(self.config.retry_backoff);
        let started = Instant::now();

        let outcome = loop {
            let attempt = async {
                let client = self
                    .cluster
                    .partition_client(&self.topic, self.partition, Lane::Write)
                    .await?;
                self.cluster
                    .timed("produce", client.produce_batch(&request))
                    .await
            };
            let error = match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(offsets)) => break Ok(offsets),
                // Written before; where is not said: each record's offset is -1.
                Ok(Err(e)) if writer.is_some() && is_duplicate(&e) => {
                    log::debug!(
                        "{}/{}: the broker had this batch already ({e})",
                        self.topic,
                        self.partition
                    );
                    break Ok(vec![-1; records]);
                }
                Ok(Err(e)) => e,
                Err(_) => {
                    break Err(self.out_of_time("no acknowledgement from the broker"));
                }
            };
            if let (Some(identity), Some((_, generation, _))) = (&self.identity, writer)
                && needs_new_identity(&error)
            {
                identity.retire(generation);
                match tokio::time::timeout_at(deadline, identity.get()).await {
                    Ok(Ok(Some((id, generation)))) => {
                        log::warn!(
                            "{}/{}: the broker refused the batch's producer id or sequence ({error}); sending it again with a new id",
                            self.topic,
                            self.partition
                        );
                        let (id, generation, base) = self.start_sequence(id, generation);
                        request.set_producer(batch_producer(identity, id, base));
                        writer = Some((id, generation, base));
                        continue;
                    }
                    Ok(Ok(None)) => {
                        break Err(ProduceError::ProducerId {
                            reason: "the cluster stopped allowing idempotent writes".to_owned(),
                        });
                    }
                    Ok(Err(e)) => {
                        break Err(ProduceError::ProducerId {
                            reason: e.to_string(),
                        });
                    }
                    Err(_) => {
                        break Err(self.out_of_time("no new producer id in time"));
                    }
                }
            }
            if !error.is_retriable() {
                break Err(ProduceError::Rejected {
                    topic: self.topic.clone(),
                    partition: self.partition,
                    error: error.to_string(),
                });
            }
            let delay = backoff.next_delay();
            if Instant::now() + delay >= deadline {
                break Err(self.out_of_time(error.to_string()));
            }
            self.metrics.retries.inc();
            log::warn!(
                "produce to {}/{} failed (attempt {}), retrying in {delay:?}: {error}",
                self.topic,
                self.partition,
                backoff.attempts()
            );
            tokio::time::sleep(delay).await;
            self.cluster
                .reset_partition(&self.topic, self.partition)
                .await;
        };

        let outcome = match outcome {
            Ok(offsets) if offsets.len() == records => Ok(offsets),
            Ok(offsets) => Err(ProduceError::Rejected {
                topic: self.topic.clone(),
                partition: self.partition,
                error: format!(
                    "broker acknowledged {} offsets for {records} records",
                    offsets.len(),
                ),
            }),
            Err(error) => Err(error),
        };
        if let (Some(identity), Some((_, generation, base))) = (&self.identity, writer) {
            match &outcome {
                Ok(_) => {
                    let mut sequence = self.sequence.lock();
                    if sequence.0 == generation {
                        sequence.1 = next_sequence(base, records);
                    }
                }
                // Whether the batch landed is unknown (or it did not), so the
                // sequence has a gap the broker would refuse the next batch for:
                // the next batch goes with a new id.
                Err(_) => identity.retire(generation),
            }
        }
        match &outcome {
            Ok(_) => {
                self.metrics.latency.observe(started.elapsed());
                self.metrics.records.add(records as u64);
                self.metrics.bytes.add(size);
            }
            Err(error) => {
                self.metrics.errors.add(records as u64);
                log::error!("{error}");
            }
        }
        answer.send(outcome);
    }
}

/// Empties a partition's queue when its worker ends, dropping the batches' answers,
/// so every caller still waiting hears `Closed` (also when the task is aborted).
pub(super) struct DrainOnDrop<'a>(&'a Shared);

impl Drop for DrainOnDrop<'_> {
    fn drop(&mut self) {
        let mut queue = self.0.queue.lock();
        queue.closed = true;
        queue.batches.clear();
        queue.flushes.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rskafka::client::error::{Error, ProtocolError, RequestContext};

    fn refused(protocol_error: ProtocolError) -> ClusterError {
        ClusterError::kafka(
            "produce",
            Error::ServerError {
                protocol_error,
                error_message: None,
                request: RequestContext::Partition("t".to_owned(), 0),
                response: None,
                is_virtual: false,
            },
        )
    }

    #[test]
    fn the_broker_answers_that_take_a_new_id_or_count_as_written() {
        for e in [
            ProtocolError::OutOfOrderSequenceNumber,
            ProtocolError::UnknownProducerId,
            ProtocolError::InvalidProducerEpoch,
            ProtocolError::ProducerFenced,
        ] {
            assert!(needs_new_identity(&refused(e)), "{e:?}");
            assert!(!is_duplicate(&refused(e)), "{e:?}");
        }
        assert!(is_duplicate(&refused(
            ProtocolError::DuplicateSequenceNumber
        )));
        assert!(!needs_new_identity(&refused(
            ProtocolError::NotLeaderOrFollower
        )));
    }

    #[test]
    fn sequence_numbers_wrap_past_i32_max_to_zero() {
        assert_eq!(next_sequence(0, 5), 5);
        assert_eq!(next_sequence(i32::MAX - 1, 1), i32::MAX);
        assert_eq!(next_sequence(i32::MAX, 1), 0);
        assert_eq!(next_sequence(i32::MAX - 1, 3), 1);
    }
}
