//! The producer: records in, acknowledged `(partition, offset)` out.
//!
//! [`Producer::enqueue`] picks the partition (Java-compatible, see
//! [`partitioner`](super::partitioner)), reserves room in a bounded buffer and hands
//! the record to the queue of its partition, where it joins the newest batch (a new
//! one when it does not fit), as in the Java client's accumulator. The partition's
//! worker task sends a batch once it is full or has waited `linger`, with
//! `acks=all`, and answers all its records at once: they share one outcome, so a
//! record costs no channel or allocation of its own. A worker keeps one request in
//! flight, so a retried batch can never overtake a later one: the order of records
//! within a partition is the order in which they were enqueued. While that request
//! is on its way the next batches fill, and the worker looks at them when the
//! answer comes, so a busy partition sends full batches back to back and its worker
//! wakes once per batch, not once per record.
//!
//! Failures that may pass (a broker restarting, a leader moving, a timeout) are
//! retried with backoff after refreshing the metadata, until the record's delivery
//! timeout; then its caller gets [`ProduceError::DeliveryTimeout`]. A retry after a
//! lost acknowledgement may write a batch twice: delivery is at-least-once, as with
//! the Java client without idempotence (rskafka 0.6 has no idempotent producer).

use crate::kafka::fix::Fix;
use crate::metrics;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use parking_lot::Mutex;
use rskafka::chrono::{DateTime, Utc};
use rskafka::client::partition::{Compression as WireCompression, ProduceBatch};
use rskafka::record::Record;
use tokio::sync::{Notify, Semaphore, TryAcquireError, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::kafka::backoff::{Backoff, BackoffConfig, sleep_until_or_never};
use crate::kafka::conn::{Cluster, ClusterError, Lane};
use crate::kafka::produce::partitioner::{StickyPartitioner, partition_for_key};

/// Bytes added to every record in a batch besides key, value and headers
/// (length, attributes, deltas, header counts), for sizing batches.
const RECORD_OVERHEAD: usize = 24;

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
    /// (Java: `delivery.timeout.ms`). Counted, as there, from the first record of
    /// the record's batch.
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

/// Resolves once the broker acknowledged the record, or it failed for good.
pub struct DeliveryFuture {
    outcome: Arc<BatchOutcome>,
    partition: i32,
    /// The record's place in its batch, and so its offset's.
    index: usize,
    /// Where this future's waker sits among the batch's waiters, once it waited.
    waiter: Option<usize>,
}

impl std::fmt::Debug for DeliveryFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryFuture")
            .field("partition", &self.partition)
            .field("done", &self.outcome.result.get().is_some())
            .finish_non_exhaustive()
    }
}

impl DeliveryFuture {
    fn delivery(&self, result: &Result<Vec<i64>, ProduceError>) -> Result<Delivery, ProduceError> {
        match result {
            Ok(offsets) => Ok(Delivery {
                partition: self.partition,
                // The batch is answered with an error instead when counts differ.
                offset: offsets.get(self.index).copied().unwrap_or(-1),
            }),
            Err(e) => Err(e.clone()),
        }
    }
}

impl Future for DeliveryFuture {
    type Output = Result<Delivery, ProduceError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(result) = this.outcome.result.get() {
            return Poll::Ready(this.delivery(result));
        }
        let mut waiters = this.outcome.waiters.lock();
        // Looked at again under the lock the answer takes to wake the waiters.
        if let Some(result) = this.outcome.result.get() {
            return Poll::Ready(this.delivery(result));
        }
        if let Some(waker) = this.waiter.and_then(|i| waiters.get_mut(i)) {
            waker.clone_from(cx.waker());
        } else {
            this.waiter = Some(waiters.len());
            waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// The outcome of one batch, shared by the delivery futures of its records.
#[derive(Default)]
struct BatchOutcome {
    /// The offset of each record, or why the batch failed.
    result: OnceLock<Result<Vec<i64>, ProduceError>>,
    waiters: Mutex<Vec<Waker>>,
}

impl BatchOutcome {
    /// The first outcome set is the one kept.
    fn set(&self, result: Result<Vec<i64>, ProduceError>) {
        if self.result.set(result).is_ok() {
            let waiters = std::mem::take(&mut *self.waiters.lock());
            for waker in waiters {
                waker.wake();
            }
        }
    }
}

/// Answers a batch's records exactly once, and gives back their buffer space.
/// Dropped unanswered (its worker ended or was aborted), it answers `Closed`, so
/// no caller waits on a record nobody sends.
struct Answer {
    outcome: Arc<BatchOutcome>,
    buffer: Arc<Semaphore>,
    /// Buffer space held by the batch's records.
    permits: usize,
}

impl Answer {
    fn send(mut self, result: Result<Vec<i64>, ProduceError>) {
        // Room first, so that the callers woken can enqueue at once.
        self.buffer.add_permits(std::mem::take(&mut self.permits));
        self.outcome.set(result);
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        self.buffer.add_permits(std::mem::take(&mut self.permits));
        self.outcome.set(Err(ProduceError::Closed));
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

/// Records of one partition gathered for one request.
struct OpenBatch {
    records: Vec<Record>,
    /// When its first record came: its linger and delivery timeout count from here.
    created: Instant,
    answer: Answer,
}

impl OpenBatch {
    /// Record sizes summed, as counted against `batch_max_bytes`: the buffer room
    /// its records hold.
    fn bytes(&self) -> usize {
        self.answer.permits
    }
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

        let permit = match self.inner.buffer.try_acquire_many(size as u32) {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => return Err(ProduceError::Closed),
            // The buffer is full: wait for acknowledgements to free room.
            Err(TryAcquireError::NoPermits) => tokio::time::timeout(
                self.inner.config.delivery_timeout,
                self.inner.buffer.acquire_many(size as u32),
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

        let topic = record.topic;
        let record = Record {
            key: record.key,
            value: record.value,
            headers: record.headers,
            timestamp: record
                .timestamp
                .unwrap_or_else(|| DateTime::<Utc>::from(std::time::SystemTime::now())),
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
            let worker = match by_partition.entry(partition) {
                std::collections::hash_map::Entry::Occupied(entry) => {
                    let worker = entry.into_mut();
                    // A worker ends by itself only by panicking; its records were
                    // failed, and the partition must not stay closed for good.
                    if worker.task.is_finished() {
                        log::error!(
                            "the producer worker of {topic}/{partition} ended unexpectedly; starting it again"
                        );
                        crate::metrics::task_restarted("producer worker");
                        *worker = self.spawn_worker(topic, partition);
                    }
                    worker
                }
                std::collections::hash_map::Entry::Vacant(entry) => {
                    entry.insert(self.spawn_worker(topic, partition))
                }
            };
            Arc::clone(&worker.shared)
        };
        let (pushed, wake) = {
            let mut queue = shared.queue.lock();
            if queue.closed {
                return Err(ProduceError::Closed);
            }
            queue.push(
                record,
                size,
                &self.inner.buffer,
                self.inner.config.batch_max_bytes,
            )
        };
        // The batch's answer gives the room back.
        permit.forget();
        if wake {
            shared.wake.notify_one();
        }
        Ok(pushed.into_future(partition))
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
    async fn send_batch(&self, batch: OpenBatch) {
        let deadline = batch.created + self.config.delivery_timeout;
        let records = batch.records.len();
        let size = batch.bytes() as u64;
        let answer = batch.answer;
        // Made into a request once and sent by reference: a retry (or an attempt cut
        // off by a timeout) needs no copy of the records.
        let request = ProduceBatch::new(
            &self.topic,
            self.partition,
            batch.records,
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
struct DrainOnDrop<'a>(&'a Shared);

impl Drop for DrainOnDrop<'_> {
    fn drop(&mut self) {
        let mut queue = self.0.queue.lock();
        queue.closed = true;
        queue.batches.clear();
        queue.flushes.clear();
    }
}

/// Records of one partition waiting for a request, in batches, and flushes
/// waiting for them.
#[derive(Default)]
struct Queue {
    /// Oldest first; only the newest takes more records.
    batches: VecDeque<OpenBatch>,
    /// Flush waiters, with the number of records that must be done before them.
    flushes: VecDeque<(u64, oneshot::Sender<()>)>,
    received: u64,
    done: u64,
    /// Records in the batch taken last: a new batch starts with room for as many.
    last_batch_len: usize,
    /// No more records: the worker sends what it has and ends.
    closed: bool,
}

/// Where `Queue::push` put a record.
struct Pushed {
    outcome: Arc<BatchOutcome>,
    index: usize,
}

impl Pushed {
    /// The record's delivery, once its batch (of `partition`) is answered.
    fn into_future(self, partition: i32) -> DeliveryFuture {
        DeliveryFuture {
            outcome: self.outcome,
            partition,
            index: self.index,
            waiter: None,
        }
    }
}

impl Queue {
    /// Adds a record of `size` bytes, holding as much room of `buffer`, to the
    /// newest batch, or to a new one when it does not fit there. Also says whether
    /// an idle worker must wake for it: for a new batch (the first, or one behind a
    /// full one), or a batch that filled; otherwise its linger or the request in
    /// flight brings it back anyway.
    fn push(
        &mut self,
        record: Record,
        size: usize,
        buffer: &Arc<Semaphore>,
        batch_max_bytes: usize,
    ) -> (Pushed, bool) {
        let fits = self
            .batches
            .back()
            .is_some_and(|b| b.bytes() + size <= batch_max_bytes);
        if !fits {
            self.batches.push_back(OpenBatch {
                records: Vec::with_capacity(self.last_batch_len.max(1)),
                created: Instant::now(),
                answer: Answer {
                    outcome: Arc::default(),
                    buffer: Arc::clone(buffer),
                    permits: 0,
                },
            });
        }
        let last = self.batches.len() - 1;
        let batch = &mut self.batches[last];
        let index = batch.records.len();
        batch.records.push(record);
        batch.answer.permits += size;
        self.received += 1;
        let pushed = Pushed {
            outcome: Arc::clone(&batch.answer.outcome),
            index,
        };
        let filled = batch.bytes() >= batch_max_bytes;
        (pushed, !fits || filled)
    }

    /// Answers `tx` once every record pushed before is done; at once when closed.
    fn flush(&mut self, tx: oneshot::Sender<()>) {
        if !self.closed || !self.batches.is_empty() {
            self.flushes.push_back((self.received, tx));
        }
    }

    /// Whether to send now: a full batch, an oldest batch that waited its
    /// linger, someone flushing, or the producer closing.
    fn ready(&self, now: Instant, config: &ProducerConfig) -> bool {
        let Some(first) = self.batches.front() else {
            return false;
        };
        self.closed
            || !self.flushes.is_empty()
            || self.batches.len() > 1
            || first.bytes() >= config.batch_max_bytes
            || now >= first.created + config.linger
    }

    /// The oldest batch.
    fn take_batch(&mut self) -> Option<OpenBatch> {
        let batch = self.batches.pop_front()?;
        self.last_batch_len = batch.records.len();
        Some(batch)
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

    fn record(size: usize) -> Record {
        Record {
            key: None,
            value: Some(vec![0; size]),
            headers: BTreeMap::new(),
            timestamp: DateTime::<Utc>::from(std::time::SystemTime::UNIX_EPOCH),
        }
    }

    /// Pushes a record the way `enqueue` does, its room taken from `buffer`.
    fn push(queue: &mut Queue, size: usize, buffer: &Arc<Semaphore>) -> (Pushed, bool) {
        buffer.try_acquire_many(size as u32).unwrap().forget();
        queue.push(record(size), size, buffer, 100)
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

        assert!(push(&mut queue, 40, &buffer).1, "wake for the first");
        assert!(!queue.ready(t0, &config), "lingering");
        assert!(
            queue.ready(Instant::now() + config.linger, &config),
            "lingered"
        );

        assert!(push(&mut queue, 60, &buffer).1, "wake for a full batch");
        assert!(queue.ready(t0, &config), "a full batch");
        assert!(push(&mut queue, 1, &buffer).1, "wake for a batch behind");
        assert!(!push(&mut queue, 1, &buffer).1, "the full one woke already");

        let mut queue = Queue::default();
        push(&mut queue, 10, &buffer);
        assert!(!push(&mut queue, 10, &buffer).1, "the linger wakes");
        let (tx, _rx) = oneshot::channel();
        queue.flush(tx);
        assert!(queue.ready(t0, &config), "flushing");

        let mut queue = Queue::default();
        push(&mut queue, 10, &buffer);
        queue.closed = true;
        assert!(queue.ready(t0, &config), "closing");
    }

    #[test]
    fn records_fill_the_newest_batch_up_to_the_limit() {
        let buffer = Arc::new(Semaphore::new(1000));
        let mut queue = Queue::default();
        let places: Vec<usize> = [40, 50, 30, 70, 1]
            .into_iter()
            .map(|size| push(&mut queue, size, &buffer).0.index)
            .collect();
        assert_eq!(places, [0, 1, 0, 1, 0]);
        assert_eq!(buffer.available_permits(), 1000 - 191);

        let first = queue.take_batch().unwrap();
        let sizes: Vec<usize> = first
            .records
            .iter()
            .map(|r| r.value.as_ref().unwrap().len())
            .collect();
        assert_eq!(sizes, [40, 50]);
        assert_eq!(first.answer.permits, 90);
        assert_eq!(queue.batches.len(), 2, "[30, 70] and [1]");

        // The batch's answer gives its room back, answered or dropped.
        first.answer.send(Ok(vec![7, 8]));
        assert_eq!(buffer.available_permits(), 1000 - 101);
        drop(queue.take_batch());
        assert_eq!(buffer.available_permits(), 1000 - 1);
    }

    #[tokio::test]
    async fn a_batch_answers_each_record_with_its_offset_or_closed() {
        let buffer = Arc::new(Semaphore::new(1000));
        let mut queue = Queue::default();
        let futures: Vec<DeliveryFuture> = (0..3)
            .map(|_| push(&mut queue, 10, &buffer).0.into_future(2))
            .collect();
        let waiting = tokio::spawn(futures_util::future::join_all(futures));
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "nothing answered yet");

        queue.take_batch().unwrap().answer.send(Ok(vec![5, 6, 7]));
        let offsets: Vec<i64> = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap()
            .into_iter()
            .map(|d| d.unwrap().offset)
            .collect();
        assert_eq!(offsets, [5, 6, 7]);

        let future = push(&mut queue, 10, &buffer).0.into_future(2);
        queue.batches.clear();
        assert!(matches!(future.await, Err(ProduceError::Closed)));
        assert_eq!(buffer.available_permits(), 1000);
    }

    #[test]
    fn flushes_are_answered_once_their_records_are_done() {
        let buffer = Arc::new(Semaphore::new(1000));
        let mut queue = Queue::default();
        push(&mut queue, 1, &buffer);
        let (first, mut first_rx) = oneshot::channel();
        queue.flush(first);
        push(&mut queue, 1, &buffer);
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
