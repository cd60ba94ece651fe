//! One partition's worker: sends its batches, up to `max_in_flight` requests
//! at once with idempotence (one at a time without, so a retry never
//! overtakes a later batch), retries what may pass with backoff and fresh
//! metadata, and answers each batch's records at once. Which batch goes when,
//! and under which sequence numbers, is the [`Window`]'s to say.

use crate::metrics;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use rskafka::client::partition::{BatchProducer, ProduceBatch};
use tokio::time::Instant;

use super::accumulator::{OpenBatch, Shared};
use super::delivery::Answer;
use super::producer::ProducerConfig;
use super::producer_id::Identity;
use super::record::ProduceError;
use super::window::{MAX_IN_FLIGHT, Next, Retry, Stamp, Verdict, Window};
use crate::kafka::backoff::{Backoff, sleep_until_or_never};
use crate::kafka::conn::{Cluster, ClusterError, Lane};

pub(super) struct PartitionWorker {
    pub(super) cluster: Cluster,
    pub(super) config: ProducerConfig,
    pub(super) metrics: TopicMetrics,
    pub(super) topic: String,
    pub(super) partition: i32,
    /// The producer id its batches carry; `None` with idempotence off.
    pub(super) identity: Option<Arc<Identity>>,
}

/// A batch taken from the queue, from its first send to its answer.
struct Flight {
    key: u64,
    /// Made once and sent by reference: a retry needs no copy of the records.
    request: ProduceBatch,
    records: usize,
    size: u64,
    answer: Answer,
    deadline: Instant,
    started: Instant,
    backoff: Backoff,
    /// What the broker said last, for the error when time runs out.
    last_error: String,
}

/// One send of a batch, come back: the offsets, the broker's error, or
/// `None` when the batch's delivery time ran out first.
struct Sent {
    flight: Flight,
    result: Result<Vec<i64>, Option<ClusterError>>,
}

/// Whether the broker refused a batch because of its producer id, epoch or
/// sequence: it lost the id's state, or a batch before this one never landed.
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

/// The producer fields of a batch sent with `stamp`.
fn batch_producer(identity: &Identity, stamp: Stamp) -> BatchProducer {
    BatchProducer {
        producer_id: stamp.id.id,
        producer_epoch: stamp.id.epoch,
        base_sequence: stamp.base,
        transactional_id: identity.transactional_id().map(str::to_owned),
    }
}

/// The id new batches are stamped with: `None` without idempotence or on a
/// cluster that refused it.
type Writer = Option<(super::producer_id::ProducerIdentity, u64)>;

impl PartitionWorker {
    /// A batch's delivery time ran out; `last_error` says what stood in the way.
    fn out_of_time(&self, last_error: impl Into<String>) -> ProduceError {
        ProduceError::DeliveryTimeout {
            topic: self.topic.clone(),
            partition: self.partition,
            timeout: self.config.delivery_timeout,
            last_error: last_error.into(),
        }
    }

    fn rejected(&self, error: impl Into<String>) -> ProduceError {
        ProduceError::Rejected {
            topic: self.topic.clone(),
            partition: self.partition,
            error: error.into(),
        }
    }

    /// The id to stamp new batches with, when known without asking the broker.
    fn writer_now(&self) -> Option<Writer> {
        match &self.identity {
            None => Some(None),
            Some(identity) => identity.known(),
        }
    }

    /// The id to stamp batches with, asked for if need be, by `deadline`: with
    /// the broker out of reach the batch's callers hear so in time.
    async fn writer(&self, deadline: Instant) -> Result<Writer, ProduceError> {
        let Some(identity) = &self.identity else {
            return Ok(None);
        };
        match tokio::time::timeout_at(deadline, identity.get()).await {
            Ok(Ok(writer)) => Ok(writer),
            Ok(Err(e)) => Err(ProduceError::ProducerId {
                reason: e.to_string(),
            }),
            Err(_) => Err(self.out_of_time("no producer id from the broker in time")),
        }
    }

    /// Gathers records into batches and sends them, up to the window's limit
    /// at once. While batches are on their way the next ones fill, so a busy
    /// partition sends full batches back to back instead of waiting a linger
    /// between them.
    pub(super) async fn run(self, shared: Arc<Shared>) {
        // However this task ends, callers must not wait on records nobody sends.
        let _drain = DrainOnDrop(&shared);
        let limit = if self.identity.is_some() {
            self.config.max_in_flight.clamp(1, MAX_IN_FLIGHT)
        } else {
            1
        };
        let mut window = Window::new(limit);
        let mut sending = FuturesUnordered::new();
        let mut parked: BTreeMap<u64, Flight> = BTreeMap::new();

        loop {
            // A batch that must go again goes first, once nothing is on its way.
            if let Some(retry) = window.next_retry() {
                if let Some(flight) = parked.remove(&retry.key)
                    && let Some((flight, delay)) = self.retry(&mut window, retry, flight).await
                {
                    sending.push(self.send(flight, delay, retry.backoff));
                }
                self.count_done(&mut window, &shared);
                continue;
            }
            let writer = self.writer_now();
            let (taken, room, linger_end) = {
                let mut queue = shared.queue.lock();
                let room = match writer {
                    Some(writer) => window.room(writer.map(|(_, generation)| generation)),
                    // The id is asked for with nothing else on its way.
                    None => usize::from(window.is_empty()),
                };
                let now = Instant::now();
                let mut taken = Vec::new();
                while taken.len() < room
                    && queue.ready(now, &self.config)
                    && let Some(batch) = queue.take_batch()
                {
                    taken.push(batch);
                }
                if taken.is_empty() && window.is_empty() && queue.batches.is_empty() {
                    // Nothing pending: every earlier flush is satisfied.
                    queue.answer_flushes(u64::MAX);
                    if queue.closed {
                        return;
                    }
                }
                // Records wait for their linger only while a batch could go;
                // otherwise they gather in the queue and are looked at when a
                // send comes back, instead of waking this task for each.
                let linger_end = match queue.batches.front() {
                    Some(first) if room > 0 => Some(first.created + self.config.linger),
                    _ => None,
                };
                (taken, room, linger_end)
            };
            if !taken.is_empty() {
                for batch in taken {
                    if let Some(flight) = self.take_off(&mut window, writer, batch).await {
                        sending.push(self.send(flight, Duration::ZERO, false));
                    }
                    self.count_done(&mut window, &shared);
                }
                // A batch that found no id was answered instead of sent:
                // the state is looked at again before waiting on anything.
                continue;
            }
            // With no room, something is on its way: an unanswered batch is
            // sending or parked, and a parked one goes again above once
            // nothing is sending.
            tokio::select! {
                biased;
                Some(sent) = sending.next(), if !sending.is_empty() => {
                    self.settle(&mut window, &mut parked, sent);
                    self.count_done(&mut window, &shared);
                }
                // A wake sent while not listening is kept for the next wait.
                () = shared.wake.notified(), if room > 0 => {}
                () = sleep_until_or_never(linger_end) => {}
            }
        }
    }

    /// Lets flushes count the batches answered in order so far.
    fn count_done(&self, window: &mut Window, shared: &Shared) {
        let done = window.take_done();
        if done > 0 {
            shared.queue.lock().batch_done(done);
        }
    }

    /// Stamps a batch taken from the queue and takes it into the window; the
    /// flight to send, or `None` when no id could be had (then it is answered).
    async fn take_off(
        &self,
        window: &mut Window,
        writer: Option<Writer>,
        batch: OpenBatch,
    ) -> Option<Flight> {
        let deadline = batch.created + self.config.delivery_timeout;
        let records = batch.records.len();
        let writer = match writer {
            Some(writer) => writer,
            None => match self.writer(deadline).await {
                Ok(writer) => writer,
                Err(error) => {
                    // Nothing else is in the window, so this is its turn.
                    let key = window.admit(records, None);
                    window.settle(key, &Verdict::Failed);
                    self.answer_failed(batch.answer, records, error);
                    return None;
                }
            },
        };
        let stamp = writer.map(|(id, generation)| window.stamp(id, generation, records));
        let key = window.admit(records, stamp);
        let size = batch.bytes() as u64;
        let compression = self.config.compression.into();
        let request = match (&self.identity, stamp) {
            (Some(identity), Some(stamp)) => ProduceBatch::with_producer(
                &self.topic,
                self.partition,
                batch.records,
                compression,
                batch_producer(identity, stamp),
            ),
            _ => ProduceBatch::new(&self.topic, self.partition, batch.records, compression),
        };
        Some(Flight {
            key,
            request,
            records,
            size,
            answer: batch.answer,
            deadline,
            started: Instant::now(),
            backoff: Backoff::new(self.config.retry_backoff),
            last_error: String::new(),
        })
    }

    /// One send of `flight`, after `delay` and, when `refresh`, after looking
    /// the partition's leader up again.
    async fn send(&self, flight: Flight, delay: Duration, refresh: bool) -> Sent {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if refresh {
            self.cluster
                .reset_partition(&self.topic, self.partition)
                .await;
        }
        let attempt = async {
            let client = self
                .cluster
                .partition_client(&self.topic, self.partition, Lane::Write)
                .await?;
            self.cluster
                .timed("produce", client.produce_batch(&flight.request))
                .await
        };
        let result = match tokio::time::timeout_at(flight.deadline, attempt).await {
            Ok(result) => result.map_err(Some),
            Err(_) => Err(None),
        };
        Sent { flight, result }
    }

    /// What a send came back with: the batch is answered, or parked to go again.
    fn settle(&self, window: &mut Window, parked: &mut BTreeMap<u64, Flight>, sent: Sent) {
        let Sent { mut flight, result } = sent;
        let stamped = window.stamp_of(flight.key).is_some();
        let (verdict, outcome) = match result {
            Ok(offsets) if offsets.len() == flight.records => (Verdict::Written, Ok(offsets)),
            Ok(offsets) => (
                Verdict::Failed,
                Err(self.rejected(format!(
                    "broker acknowledged {} offsets for {} records",
                    offsets.len(),
                    flight.records
                ))),
            ),
            Err(None) => (
                Verdict::Failed,
                Err(self.out_of_time("no acknowledgement from the broker")),
            ),
            // Written before; where is not said: each record's offset is -1.
            Err(Some(e)) if stamped && is_duplicate(&e) => {
                log::debug!(
                    "{}/{}: the broker had this batch already ({e})",
                    self.topic,
                    self.partition
                );
                (Verdict::Written, Ok(vec![-1; flight.records]))
            }
            Err(Some(e)) => {
                let verdict = if stamped && needs_new_identity(&e) {
                    Verdict::SequenceRefused
                } else if e.is_retriable() {
                    Verdict::Retriable
                } else {
                    Verdict::Failed
                };
                flight.last_error = e.to_string();
                (verdict, Err(self.rejected(flight.last_error.clone())))
            }
        };
        match self.record(window, flight.key, &verdict) {
            Next::Answer => self.answer(flight, outcome),
            Next::Park => {
                parked.insert(flight.key, flight);
            }
        }
    }

    /// Makes a parked batch ready to go again: a new id and sequence when the
    /// broker surely did not write it, its backoff when the error may take
    /// time to pass. `None` when it failed for good instead (then answered).
    async fn retry(
        &self,
        window: &mut Window,
        retry: Retry,
        mut flight: Flight,
    ) -> Option<(Flight, Duration)> {
        if retry.renumber
            && let Some(identity) = &self.identity
        {
            let failure = match self.writer(flight.deadline).await {
                Ok(Some((id, generation))) => {
                    log::warn!(
                        "{}/{}: the broker refused the batch's producer id or sequence ({}); sending it again with a new id",
                        self.topic,
                        self.partition,
                        flight.last_error
                    );
                    let stamp = window.stamp(id, generation, flight.records);
                    window.restamp(flight.key, stamp);
                    flight.request.set_producer(batch_producer(identity, stamp));
                    None
                }
                Ok(None) => Some(ProduceError::ProducerId {
                    reason: "the cluster stopped allowing idempotent writes".to_owned(),
                }),
                Err(error) => Some(error),
            };
            if let Some(error) = failure {
                self.fail(window, flight, error);
                return None;
            }
        }
        let delay = if retry.backoff {
            flight.backoff.next_delay()
        } else {
            Duration::ZERO
        };
        if Instant::now() + delay >= flight.deadline {
            let error = self.out_of_time(flight.last_error.clone());
            self.fail(window, flight, error);
            return None;
        }
        self.metrics.retries.inc();
        if retry.backoff {
            log::warn!(
                "produce to {}/{} failed (attempt {}), retrying in {delay:?}: {}",
                self.topic,
                self.partition,
                flight.backoff.attempts(),
                flight.last_error
            );
        } else {
            log::debug!(
                "{}/{}: a batch refused while an earlier one was unanswered goes again ({})",
                self.topic,
                self.partition,
                flight.last_error
            );
        }
        Some((flight, delay))
    }

    /// Answers a batch in the window with an error, for good.
    fn fail(&self, window: &mut Window, flight: Flight, error: ProduceError) {
        self.record(window, flight.key, &Verdict::Failed);
        self.answer(flight, Err(error));
    }

    /// Tells the window what became of batch `key`, and retires the id when
    /// its sequence cannot go on; says whether to answer or park the batch.
    fn record(&self, window: &mut Window, key: u64, verdict: &Verdict) -> Next {
        let (next, retire) = window.settle(key, verdict);
        if let (Some(identity), Some(generation)) = (&self.identity, retire) {
            identity.retire(generation);
        }
        next
    }

    /// Answers every record of a batch, and gives back their room.
    fn answer(&self, flight: Flight, outcome: Result<Vec<i64>, ProduceError>) {
        match outcome {
            Ok(offsets) => {
                self.metrics.latency.observe(flight.started.elapsed());
                self.metrics.records.add(flight.records as u64);
                self.metrics.bytes.add(flight.size);
                flight.answer.send(Ok(offsets));
            }
            Err(error) => self.answer_failed(flight.answer, flight.records, error),
        }
    }

    /// Answers every record of a batch that failed for good.
    fn answer_failed(&self, answer: Answer, records: usize, error: ProduceError) {
        self.metrics.errors.add(records as u64);
        log::error!("{error}");
        answer.send(Err(error));
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
}
