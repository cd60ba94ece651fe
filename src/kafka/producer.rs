//! The producer: records in, acknowledged `(partition, offset)` out.
//!
//! [`Producer::enqueue`] picks the partition (Java-compatible, see
//! [`partitioner`](super::partitioner)), reserves room in a bounded buffer and hands
//! the record to the worker task of its partition. Each worker gathers records into
//! a batch until the batch is full or the oldest record has waited `linger`, then
//! sends it with `acks=all` and answers every record of the batch. A worker keeps
//! one request in flight, so a retried batch can never overtake a later one: the
//! order of records within a partition is the order in which they were enqueued.
//! While that request is on its way the next batch gathers in the channel, and is
//! taken in one step when the answer comes, so a busy partition sends full batches
//! back to back and its worker wakes once per batch, not once per record.
//!
//! Failures that may pass (a broker restarting, a leader moving, a timeout) are
//! retried with backoff after refreshing the metadata, until the record's delivery
//! timeout; then its caller gets [`ProduceError::DeliveryTimeout`]. A retry after a
//! lost acknowledgement may write a batch twice: delivery is at-least-once, as with
//! the Java client without idempotence (rskafka 0.6 has no idempotent producer).

use crate::metrics;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use parking_lot::Mutex;
use rskafka::chrono::{DateTime, Utc};
use rskafka::client::partition::{Compression as WireCompression, ProduceBatch};
use rskafka::record::Record;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::backoff::{Backoff, BackoffConfig, sleep_until_or_never};
use super::cluster::{Cluster, ClusterError, Lane};
use super::partitioner::{StickyPartitioner, partition_for_key};

/// Bytes added to every record in a batch besides key, value and headers
/// (length, attributes, deltas, header counts), for sizing batches.
const RECORD_OVERHEAD: usize = 24;

/// Compression of produced batches. Only pure-Rust codecs are built in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Compression {
    #[default]
    None,
    Gzip,
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

/// Producer settings. Defaults follow the Java client where that makes sense.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// How long a record may wait for more records to fill its batch (Java: `linger.ms` = 5).
    pub linger: Duration,
    /// The largest batch sent in one request; also the largest record accepted.
    pub batch_max_bytes: usize,
    /// Bytes of records accepted but not yet acknowledged; `enqueue` waits when full
    /// (Java: `buffer.memory` = 32 MiB).
    pub buffer_memory: usize,
    /// Codec for batches.
    pub compression: Compression,
    /// From `enqueue` to acknowledgement, retries included; then the record fails
    /// (Java: `delivery.timeout.ms`).
    pub delivery_timeout: Duration,
    /// Waits between retries.
    pub retry_backoff: BackoffConfig,
    /// Keyless records move to the next partition after this many bytes.
    pub sticky_switch_bytes: usize,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            linger: Duration::from_millis(5),
            batch_max_bytes: 1024 * 1024,
            buffer_memory: 32 * 1024 * 1024,
            compression: Compression::None,
            delivery_timeout: Duration::from_secs(30),
            retry_backoff: BackoffConfig {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(2),
            },
            sticky_switch_bytes: 16 * 1024,
        }
    }
}

/// A record to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerRecord {
    pub topic: String,
    /// Chosen by the partitioner when `None`.
    pub partition: Option<i32>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
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

    pub fn key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    pub fn value(mut self, value: impl Into<Vec<u8>>) -> Self {
        self.value = Some(value.into());
        self
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    pub fn partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }

    pub fn timestamp(mut self, timestamp: DateTime<Utc>) -> Self {
        self.timestamp = Some(timestamp);
        self
    }

    fn size(&self) -> usize {
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
    pub partition: i32,
    pub offset: i64,
}

/// Why a record was not produced.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProduceError {
    /// The producer was closed before the record was accepted.
    #[error("the producer is closed and accepts no more records")]
    Closed,
    /// The record does not fit into one batch.
    #[error("record of {size} bytes exceeds the batch limit of {max} bytes (batch_max_bytes)")]
    RecordTooLarge { size: usize, max: usize },
    /// The topic or partition is unknown, or metadata could not be loaded.
    #[error(transparent)]
    Cluster(Arc<ClusterError>),
    /// No acknowledgement within the delivery timeout.
    #[error(
        "record for {topic}/{partition} not acknowledged within {timeout:?}; last error: {last_error}"
    )]
    DeliveryTimeout {
        topic: String,
        partition: i32,
        timeout: Duration,
        last_error: String,
    },
    /// The broker refused the batch for a reason retrying cannot fix.
    #[error("broker rejected the record for {topic}/{partition}: {error}")]
    Rejected {
        topic: String,
        partition: i32,
        error: String,
    },
}

impl From<ClusterError> for ProduceError {
    fn from(e: ClusterError) -> Self {
        Self::Cluster(Arc::new(e))
    }
}

/// Resolves once the broker acknowledged the record, or it failed for good.
#[derive(Debug)]
pub struct DeliveryFuture {
    rx: oneshot::Receiver<Result<Delivery, ProduceError>>,
}

impl Future for DeliveryFuture {
    type Output = Result<Delivery, ProduceError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(ProduceError::Closed)))
    }
}

/// The producer. Cheap to clone; all clones share batches and connections.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

struct Inner {
    cluster: Cluster,
    config: ProducerConfig,
    sticky: StickyPartitioner,
    buffer: Arc<Semaphore>,
    closed: AtomicBool,
    /// Per topic, then partition: looked up by `&str` so enqueueing copies no name.
    workers: Mutex<HashMap<String, HashMap<i32, Worker>>>,
}

struct Worker {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

/// A partition's queue, filled by callers and drained by its worker.
///
/// A shared queue rather than a channel: a channel allocates a block every few
/// dozen records on the caller's thread and frees it on the worker's, which in a
/// profile cost more than the rest of enqueueing.
struct Shared {
    queue: Mutex<Queue>,
    /// Wakes an idle worker: for its first record, a full batch, a flush, the close.
    wake: Notify,
}

impl Shared {
    fn close(&self) {
        self.queue.lock().closed = true;
        self.wake.notify_one();
    }
}

/// A producer dropped without `close` still delivers what it accepted, and its
/// workers end once they have.
impl Drop for Worker {
    fn drop(&mut self) {
        self.shared.close();
    }
}

/// Where a record's caller waits for its delivery.
type Reply = oneshot::Sender<Result<Delivery, ProduceError>>;

struct Pending {
    record: Record,
    size: usize,
    enqueued: Instant,
    reply: Reply,
    /// Buffer space, given back when the record's batch is answered.
    permit: Option<OwnedSemaphorePermit>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Producer {
    /// A producer over `cluster`.
    pub fn new(cluster: Cluster, config: ProducerConfig) -> Self {
        let permits = config.buffer_memory.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            inner: Arc::new(Inner {
                sticky: StickyPartitioner::new(config.sticky_switch_bytes),
                buffer: Arc::new(Semaphore::new(permits)),
                cluster,
                config,
                closed: AtomicBool::new(false),
                workers: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The cluster this producer writes to.
    pub fn cluster(&self) -> &Cluster {
        &self.inner.cluster
    }

    /// Sends a record and waits for the broker's acknowledgement.
    pub async fn send(&self, record: ProducerRecord) -> Result<Delivery, ProduceError> {
        self.enqueue(record).await?.await
    }

    /// Accepts a record for sending and returns at once with a future of its
    /// delivery; waits only while the buffer is full. Records enqueued one after
    /// the other for the same partition are written in that order.
    pub async fn enqueue(&self, record: ProducerRecord) -> Result<DeliveryFuture, ProduceError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(ProduceError::Closed);
        }
        let size = record.size();
        let max = self.inner.config.batch_max_bytes;
        if size > max {
            return Err(ProduceError::RecordTooLarge { size, max });
        }
        let partition = self.choose_partition(&record, size).await?;

        let permit = match Arc::clone(&self.inner.buffer).try_acquire_many_owned(size as u32) {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => return Err(ProduceError::Closed),
            // The buffer is full: wait for acknowledgements to free room.
            Err(TryAcquireError::NoPermits) => tokio::time::timeout(
                self.inner.config.delivery_timeout,
                Arc::clone(&self.inner.buffer).acquire_many_owned(size as u32),
            )
            .await
            .map_err(|_| ProduceError::DeliveryTimeout {
                topic: record.topic.clone(),
                partition,
                timeout: self.inner.config.delivery_timeout,
                last_error: "the producer buffer stayed full (buffer_memory)".to_owned(),
            })?
            .map_err(|_| ProduceError::Closed)?,
        };

        let (reply, rx) = oneshot::channel();
        let topic = record.topic;
        let pending = Pending {
            record: Record {
                key: record.key,
                value: record.value,
                headers: record.headers,
                timestamp: record
                    .timestamp
                    .unwrap_or_else(|| DateTime::<Utc>::from(std::time::SystemTime::now())),
            },
            size,
            enqueued: Instant::now(),
            reply,
            permit: Some(permit),
        };

        let shared = {
            let mut workers = self.inner.workers.lock();
            // Checked again under the lock: `close` takes the same lock to drain workers.
            if self.inner.closed.load(Ordering::Acquire) {
                return Err(ProduceError::Closed);
            }
            let by_partition = match workers.get_mut(topic.as_str()) {
                Some(by_partition) => by_partition,
                None => workers.entry(topic.clone()).or_default(),
            };
            let worker = by_partition
                .entry(partition)
                .or_insert_with(|| self.spawn_worker(topic, partition));
            Arc::clone(&worker.shared)
        };
        let wake = {
            let mut queue = shared.queue.lock();
            if queue.closed {
                return Err(ProduceError::Closed);
            }
            queue.push(pending, self.inner.config.batch_max_bytes)
        };
        if wake {
            shared.wake.notify_one();
        }
        Ok(DeliveryFuture { rx })
    }

    async fn choose_partition(
        &self,
        record: &ProducerRecord,
        size: usize,
    ) -> Result<i32, ProduceError> {
        let partitions = self.inner.cluster.partition_count(&record.topic).await?;
        Ok(match (record.partition, &record.key) {
            (Some(p), _) if (0..partitions).contains(&p) => p,
            (Some(p), _) => {
                return Err(ClusterError::UnknownPartition {
                    topic: record.topic.clone(),
                    partition: p,
                    partitions,
                }
                .into());
            }
            (None, Some(key)) => partition_for_key(key, partitions),
            (None, None) => self.inner.sticky.partition(&record.topic, partitions, size),
        })
    }

    fn spawn_worker(&self, topic: String, partition: i32) -> Worker {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
        });
        let worker = PartitionWorker {
            cluster: self.inner.cluster.clone(),
            config: self.inner.config.clone(),
            metrics: TopicMetrics::new(&topic),
            topic,
            partition,
        };
        Worker {
            task: tokio::spawn(worker.run(Arc::clone(&shared))),
            shared,
        }
    }

    /// Waits until every record enqueued before this call is acknowledged or failed.
    pub async fn flush(&self) {
        let waits: Vec<_> = {
            let workers = self.inner.workers.lock();
            workers
                .values()
                .flat_map(HashMap::values)
                .map(|w| {
                    let (tx, rx) = oneshot::channel();
                    // A closed queue drops `tx` at once: nothing is pending there.
                    w.shared.queue.lock().flush(tx);
                    w.shared.wake.notify_one();
                    rx
                })
                .collect()
        };
        for rx in waits {
            // An error means the worker is gone, which also means nothing is pending.
            let _ = rx.await;
        }
    }

    /// Stops accepting records, delivers everything already accepted (each record
    /// within its delivery timeout), and stops the workers.
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        let workers: Vec<Worker> = self
            .inner
            .workers
            .lock()
            .drain()
            .flat_map(|(_, by_partition)| by_partition.into_values())
            .collect();
        // Every worker first, so that they finish their queues side by side.
        for worker in &workers {
            worker.shared.close();
        }
        for mut worker in workers {
            if let Err(e) = (&mut worker.task).await {
                log::error!("producer worker ended abnormally: {e}");
            }
        }
    }
}

/// A batch's request, from first attempt to answering its records.
type InFlight<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

struct PartitionWorker {
    cluster: Cluster,
    config: ProducerConfig,
    metrics: TopicMetrics,
    topic: String,
    partition: i32,
}

/// What a producer reports per topic on `/metrics`.
struct TopicMetrics {
    records: metrics::Counter,
    bytes: metrics::Counter,
    errors: metrics::Counter,
    retries: metrics::Counter,
    latency: metrics::Histogram,
}

impl TopicMetrics {
    fn new(topic: &str) -> Self {
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

impl PartitionWorker {
    /// Gathers records into batches and sends them, one request in flight. While a
    /// batch is on its way the next one fills, so a busy partition sends full
    /// batches back to back instead of waiting a linger between them.
    async fn run(self, shared: Arc<Shared>) {
        // However this task ends, callers must not wait on records nobody sends.
        let _drain = DrainOnDrop(&shared);
        // The batch on its way, with the number of records in it.
        let mut in_flight: Option<(InFlight<'_>, u64)> = None;

        loop {
            let linger_end = {
                let mut queue = shared.queue.lock();
                if in_flight.is_none() && queue.ready(Instant::now(), &self.config) {
                    let (batch, permit) = queue.take_batch(self.config.batch_max_bytes);
                    let n = batch.len() as u64;
                    in_flight = Some((Box::pin(self.send_batch(batch, permit)), n));
                }
                if in_flight.is_none() && queue.records.is_empty() {
                    // Nothing pending: every earlier flush is satisfied.
                    queue.answer_flushes(u64::MAX);
                    if queue.closed {
                        return;
                    }
                }
                // Only an idle worker with records waits for their linger to end.
                match (&in_flight, queue.records.front()) {
                    (None, Some(first)) => Some(first.enqueued + self.config.linger),
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

    /// Sends one batch until it is acknowledged, fails for good, or its oldest
    /// record runs out of delivery time; then answers every record in it.
    ///
    /// The buffer space of the whole batch (`_permit`) is given back at the end.
    async fn send_batch(&self, batch: Vec<Pending>, _permit: Option<OwnedSemaphorePermit>) {
        let Some(first) = batch.first() else { return };
        let deadline = first.enqueued + self.config.delivery_timeout;
        let size: u64 = batch.iter().map(|p| p.size as u64).sum();
        let (records, replies): (Vec<Record>, Vec<Reply>) =
            batch.into_iter().map(|p| (p.record, p.reply)).unzip();
        // Made into a request once and sent by reference: a retry (or an attempt cut
        // off by a timeout) needs no copy of the records.
        let request = ProduceBatch::new(
            &self.topic,
            self.partition,
            records,
            self.config.compression.into(),
        );
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
                Ok(Err(e)) => e,
                Err(_) => {
                    break Err(ProduceError::DeliveryTimeout {
                        topic: self.topic.clone(),
                        partition: self.partition,
                        timeout: self.config.delivery_timeout,
                        last_error: "no acknowledgement from the broker".to_owned(),
                    });
                }
            };
            if !error.is_retriable() {
                break Err(ProduceError::Rejected {
                    topic: self.topic.clone(),
                    partition: self.partition,
                    error: error.to_string(),
                });
            }
            let delay = backoff.next_delay();
            if Instant::now() + delay >= deadline {
                break Err(ProduceError::DeliveryTimeout {
                    topic: self.topic.clone(),
                    partition: self.partition,
                    timeout: self.config.delivery_timeout,
                    last_error: error.to_string(),
                });
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

        match outcome {
            Ok(offsets) if offsets.len() == replies.len() => {
                self.metrics.latency.observe(started.elapsed());
                self.metrics.records.add(replies.len() as u64);
                self.metrics.bytes.add(size);
                for (reply, offset) in replies.into_iter().zip(offsets) {
                    let _ = reply.send(Ok(Delivery {
                        partition: self.partition,
                        offset,
                    }));
                }
            }
            Ok(offsets) => {
                let error = ProduceError::Rejected {
                    topic: self.topic.clone(),
                    partition: self.partition,
                    error: format!(
                        "broker acknowledged {} offsets for {} records",
                        offsets.len(),
                        replies.len()
                    ),
                };
                self.metrics.errors.add(replies.len() as u64);
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
            Err(error) => {
                self.metrics.errors.add(replies.len() as u64);
                log::error!("{error}");
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}

/// Empties a partition's queue when its worker ends, dropping the replies, so
/// every caller still waiting hears `Closed` (also when the task is aborted).
struct DrainOnDrop<'a>(&'a Shared);

impl Drop for DrainOnDrop<'_> {
    fn drop(&mut self) {
        let mut queue = self.0.queue.lock();
        queue.closed = true;
        queue.records.clear();
        queue.flushes.clear();
    }
}

/// Records of one partition waiting for a request, and flushes waiting for them.
#[derive(Default)]
struct Queue {
    records: VecDeque<Pending>,
    bytes: usize,
    /// Flush waiters, with the number of records that must be done before them.
    flushes: VecDeque<(u64, oneshot::Sender<()>)>,
    received: u64,
    done: u64,
    /// No more records: the worker sends what it has and ends.
    closed: bool,
}

impl Queue {
    /// Adds a record; whether an idle worker must wake for it (the first record,
    /// or the one that fills a batch). Otherwise its linger or the request in
    /// flight brings the worker back anyway.
    fn push(&mut self, p: Pending, batch_max_bytes: usize) -> bool {
        let was_empty = self.records.is_empty();
        let was_full = self.bytes >= batch_max_bytes;
        self.bytes += p.size;
        self.received += 1;
        self.records.push_back(p);
        was_empty || (!was_full && self.bytes >= batch_max_bytes)
    }

    /// Answers `tx` once every record pushed before is done; at once when closed.
    fn flush(&mut self, tx: oneshot::Sender<()>) {
        if !self.closed || !self.records.is_empty() {
            self.flushes.push_back((self.received, tx));
        }
    }

    /// Whether to send now: a full batch, an oldest record that waited its
    /// linger, someone flushing, or the producer closing.
    fn ready(&self, now: Instant, config: &ProducerConfig) -> bool {
        let Some(first) = self.records.front() else {
            return false;
        };
        self.closed
            || !self.flushes.is_empty()
            || self.bytes >= config.batch_max_bytes
            || now >= first.enqueued + config.linger
    }

    /// The oldest records up to `max_bytes` (at least one), with their buffer
    /// space merged into one permit so it is given back in one step.
    fn take_batch(&mut self, max_bytes: usize) -> (Vec<Pending>, Option<OwnedSemaphorePermit>) {
        let mut batch = Vec::new();
        let mut permit: Option<OwnedSemaphorePermit> = None;
        let mut bytes = 0;
        while let Some(p) = self.records.front() {
            if !batch.is_empty() && bytes + p.size > max_bytes {
                break;
            }
            bytes += p.size;
            let Some(mut p) = self.records.pop_front() else {
                break;
            };
            if let Some(taken) = p.permit.take() {
                match permit.as_mut() {
                    Some(all) => all.merge(taken),
                    None => permit = Some(taken),
                }
            }
            batch.push(p);
        }
        self.bytes -= bytes;
        (batch, permit)
    }

    /// Counts `n` more records answered, and answers the flushes waiting for them.
    fn batch_done(&mut self, n: u64) {
        self.done += n;
        self.answer_flushes(self.done);
    }

    fn answer_flushes(&mut self, done: u64) {
        while self.flushes.front().is_some_and(|(upto, _)| *upto <= done) {
            if let Some((_, tx)) = self.flushes.pop_front() {
                let _ = tx.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_names() {
        assert_eq!("gzip".parse::<Compression>(), Ok(Compression::Gzip));
        assert_eq!("SNAPPY".parse::<Compression>(), Ok(Compression::Snappy));
        assert_eq!("none".parse::<Compression>(), Ok(Compression::None));
        let err = "zstd".parse::<Compression>().unwrap_err();
        assert!(err.contains("none, gzip or snappy"), "{err}");
    }

    fn pending(size: usize, enqueued: Instant, buffer: &Arc<Semaphore>) -> Pending {
        let (reply, _) = oneshot::channel();
        Pending {
            record: Record {
                key: None,
                value: Some(vec![0; size]),
                headers: BTreeMap::new(),
                timestamp: DateTime::<Utc>::from(std::time::SystemTime::UNIX_EPOCH),
            },
            size,
            enqueued,
            reply,
            permit: Some(
                Arc::clone(buffer)
                    .try_acquire_many_owned(size as u32)
                    .unwrap(),
            ),
        }
    }

    #[test]
    fn a_queue_sends_when_full_lingered_flushed_or_closed() {
        let buffer = Arc::new(Semaphore::new(1000));
        let config = ProducerConfig {
            linger: Duration::from_millis(5),
            batch_max_bytes: 100,
            ..ProducerConfig::default()
        };
        let t0 = Instant::now();
        let mut queue = Queue::default();
        assert!(!queue.ready(t0, &config), "nothing to send");

        assert!(
            queue.push(pending(40, t0, &buffer), 100),
            "wake for the first"
        );
        assert!(!queue.ready(t0, &config), "lingering");
        assert!(queue.ready(t0 + config.linger, &config), "lingered");

        assert!(
            queue.push(pending(60, t0, &buffer), 100),
            "wake for a full batch"
        );
        assert!(queue.ready(t0, &config), "a full batch");
        assert!(!queue.push(pending(1, t0, &buffer), 100), "full already");

        let mut queue = Queue::default();
        queue.push(pending(10, t0, &buffer), 100);
        assert!(
            !queue.push(pending(10, t0, &buffer), 100),
            "the linger wakes"
        );
        let (tx, _rx) = oneshot::channel();
        queue.flush(tx);
        assert!(queue.ready(t0, &config), "flushing");

        let mut queue = Queue::default();
        queue.push(pending(10, t0, &buffer), 100);
        queue.closed = true;
        assert!(queue.ready(t0, &config), "closing");
    }

    #[test]
    fn a_batch_takes_the_oldest_records_up_to_the_limit_and_one_permit() {
        let buffer = Arc::new(Semaphore::new(1000));
        let t0 = Instant::now();
        let mut queue = Queue::default();
        for size in [150, 40, 50, 30] {
            queue.push(pending(size, t0, &buffer), 100);
        }
        assert_eq!(buffer.available_permits(), 1000 - 270);

        // An oversized first record still goes alone rather than blocking the queue.
        let (batch, permit) = queue.take_batch(100);
        assert_eq!(batch.iter().map(|p| p.size).collect::<Vec<_>>(), [150]);
        assert_eq!(permit.as_ref().map(|p| p.num_permits()), Some(150));

        let (batch, permit) = queue.take_batch(100);
        assert_eq!(batch.iter().map(|p| p.size).collect::<Vec<_>>(), [40, 50]);
        assert_eq!(permit.as_ref().map(|p| p.num_permits()), Some(90));
        assert_eq!(queue.bytes, 30);

        drop(permit);
        assert_eq!(buffer.available_permits(), 1000 - 180);
    }

    #[test]
    fn flushes_are_answered_once_their_records_are_done() {
        let buffer = Arc::new(Semaphore::new(1000));
        let mut queue = Queue::default();
        queue.push(pending(1, Instant::now(), &buffer), 100);
        let (first, mut first_rx) = oneshot::channel();
        queue.flush(first);
        queue.push(pending(1, Instant::now(), &buffer), 100);
        let (second, mut second_rx) = oneshot::channel();
        queue.flush(second);

        queue.answer_flushes(1);
        assert!(first_rx.try_recv().is_ok());
        assert!(second_rx.try_recv().is_err());
        queue.answer_flushes(2);
        assert!(second_rx.try_recv().is_ok());

        // A closed, empty queue has nothing to wait for.
        let mut queue = Queue {
            closed: true,
            ..Queue::default()
        };
        let (tx, mut rx) = oneshot::channel();
        queue.flush(tx);
        assert!(rx.try_recv().is_err() && queue.flushes.is_empty());
    }

    #[test]
    fn record_size_counts_every_part() {
        let r = ProducerRecord::new("t")
            .key("kk")
            .value("vvvv")
            .header("h", "x");
        assert_eq!(r.size(), RECORD_OVERHEAD + 2 + 4 + (1 + 1 + 8));
    }
}
