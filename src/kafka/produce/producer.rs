//! The producer: records in, acknowledged `(partition, offset)` out.
//!
//! [`Producer::enqueue`] picks the partition (Java-compatible, see
//! [`partitioner`](super::partitioner)), reserves room in a bounded buffer and hands
//! the record to the queue of its partition, where it joins the newest batch (a new
//! one when it does not fit), as in the Java client's accumulator. The partition's
//! worker task sends a batch once it is full or has waited `linger`, with
//! `acks=all`, and answers all its records at once: they share one outcome, so a
//! record costs no channel or allocation of its own. The order of records within a
//! partition is the order in which they were enqueued: with idempotence a worker
//! keeps up to `max_in_flight` requests on their way and the broker's sequence
//! checks keep them in order (see [`window`](super::window)); without, it keeps
//! one, so a retried batch can never overtake a later one. While requests are on
//! their way the next batches fill, and the worker looks at them when an answer
//! comes, so a busy partition sends full batches back to back and its worker wakes
//! once per batch, not once per record.
//!
//! Failures that may pass (a broker restarting, a leader moving, a timeout) are
//! retried with backoff after refreshing the metadata, until the record's delivery
//! timeout; then its caller gets [`ProduceError::DeliveryTimeout`]. With
//! idempotence (the default, as in the Java client since Kafka 3.0) every batch
//! carries the producer's id and its partition's sequence numbers, so a retry
//! after a lost acknowledgement is not written twice; a batch that fails for good
//! retires the id, and the next batch takes a new one and starts the sequence
//! again. Without it (turned off, or refused by the cluster) delivery is
//! at-least-once.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use rskafka::chrono::{DateTime, Utc};
use rskafka::record::Record;
use tokio::sync::{Notify, Semaphore, TryAcquireError, oneshot};
use tokio::task::JoinHandle;

use super::accumulator::{Queue, Shared};
use super::delivery::DeliveryFuture;
use super::producer_id::Identity;
use super::record::{Compression, Delivery, ProduceError, ProducerRecord};
use super::worker::{PartitionWorker, TopicMetrics};
use crate::kafka::backoff::BackoffConfig;
use crate::kafka::conn::{Cluster, ClusterError};
use crate::kafka::produce::partitioner::{StickyPartitioner, partition_for_key};

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
    /// Batches carry a producer id and sequence numbers, so that the broker
    /// writes a batch once however often a retry sends it (Java:
    /// `enable.idempotence`, on by default since Kafka 3.0).
    pub idempotence: bool,
    /// Requests on their way per partition at once, with idempotence (Java:
    /// `max.in.flight.requests.per.connection` = 5, also the most Kafka allows
    /// with idempotence, and so the most taken here). Without idempotence one
    /// at a time, so that a retry never overtakes a later batch.
    pub max_in_flight: usize,
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
            idempotence: true,
            max_in_flight: 5,
        }
    }
}

/// The producer. Cheap to clone; all clones share batches and connections.
#[derive(Clone)]
pub struct Producer {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) cluster: Cluster,
    pub(super) config: ProducerConfig,
    pub(super) sticky: StickyPartitioner,
    pub(super) buffer: Arc<Semaphore>,
    pub(super) closed: AtomicBool,
    /// Per topic, then partition: looked up by `&str` so enqueueing copies no name.
    pub(super) workers: Mutex<HashMap<String, HashMap<i32, Worker>>>,
    /// The producer id its batches carry, with idempotence on.
    pub(super) identity: Option<Arc<Identity>>,
}

pub(super) struct Worker {
    pub(super) shared: Arc<Shared>,
    pub(super) task: JoinHandle<()>,
}

/// A producer dropped without `close` still delivers what it accepted, and its
/// workers end once they have.
impl Drop for Worker {
    fn drop(&mut self) {
        self.shared.close();
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
        let identity = config.idempotence.then(|| {
            let identity = Arc::new(Identity::new(cluster.config().clone()));
            // Asked for at once, so that the first record does not wait
            // for it; a failure here is asked again by that record.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let early = Arc::clone(&identity);
                runtime.spawn(async move {
                    let _ = early.get().await;
                });
            }
            identity
        });
        Self::build(cluster, config, identity)
    }

    /// A producer whose batches carry `identity`: a transactional producer's.
    pub(super) fn with_identity(
        cluster: Cluster,
        config: ProducerConfig,
        identity: Arc<Identity>,
    ) -> Self {
        Self::build(cluster, config, Some(identity))
    }

    fn build(cluster: Cluster, config: ProducerConfig, identity: Option<Arc<Identity>>) -> Self {
        let permits = config.buffer_memory.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            inner: Arc::new(Inner {
                identity,
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

    pub(super) async fn choose_partition(
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

    pub(super) fn spawn_worker(&self, topic: String, partition: i32) -> Worker {
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
            identity: self.inner.identity.clone(),
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

#[cfg(test)]
mod tests {
    use super::super::accumulator::{Pushed, Queue};
    use super::super::record::RECORD_OVERHEAD;
    use super::*;
    use std::collections::BTreeMap;
    use tokio::time::Instant;

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
