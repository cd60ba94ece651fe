//! The seam between a member and its coordination log: what the
//! [`Coordinator`](super::Coordinator) needs of the log, and the Kafka topic
//! that provides it. The unit tests put an in-memory log in its place, so
//! joins, handoffs, claims and fencing are tested deterministically, without a
//! broker and on tokio's paused clock.

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;

use super::LOG_PARTITION;
use super::offsets::OffsetError;
use crate::kafka::codec::FetchedRecord;
use crate::kafka::conn::{Cluster, ClusterError, Isolation};
use crate::kafka::fetch::{FetchConfig, Fetcher, read_partition_with};
use crate::kafka::produce::{ProduceError, Producer, ProducerConfig, ProducerRecord};
use crate::kafka::topic::TopicPartition;
use crate::shutdown::Shutdown;

/// The coordination log as a member uses it.
pub(crate) trait CoordinationLog: Clone + Send + Sync + 'static {
    /// Appends `record` (its key and value; where it goes is the log's to
    /// know); its offset once acknowledged.
    fn append(
        &self,
        record: ProducerRecord,
    ) -> impl Future<Output = Result<i64, ProduceError>> + Send;

    /// Every record from the log's start up to its high watermark, and that
    /// high watermark.
    fn read_all(
        &self,
    ) -> impl Future<Output = Result<(Vec<FetchedRecord>, i64), OffsetError>> + Send;

    /// Hands on the records from `from` into `tx` until `shutdown`.
    fn tail(
        &self,
        from: i64,
        tx: mpsc::Sender<Vec<FetchedRecord>>,
        shutdown: Shutdown,
    ) -> impl Future<Output = ()> + Send + 'static;

    /// How many partitions `topic` has, for the member's subscription.
    fn partition_count(
        &self,
        topic: &str,
    ) -> impl Future<Output = Result<i32, ClusterError>> + Send;

    /// Waits until every record appended is delivered.
    fn close(&self) -> impl Future<Output = ()> + Send;
}

/// The coordination topic on the cluster.
#[derive(Debug, Clone)]
pub(crate) struct KafkaLog {
    cluster: Cluster,
    topic: String,
    producer: Producer,
    tail: FetchConfig,
}

impl KafkaLog {
    /// The log in `topic`, appended to within `delivery_timeout` and tailed
    /// with `fetch`'s settings.
    pub(crate) fn new(
        cluster: Cluster,
        topic: &str,
        delivery_timeout: Duration,
        mut fetch: FetchConfig,
    ) -> Self {
        // Coordination records are few and latency matters: send each at once.
        let producer = Producer::new(
            cluster.clone(),
            ProducerConfig {
                linger: Duration::ZERO,
                delivery_timeout,
                ..ProducerConfig::default()
            },
        );
        // Membership and ownership changes are acted on when read back: keep the
        // wait short, and no longer than the consumer's own.
        fetch.fetch_max_wait = fetch.fetch_max_wait.min(Duration::from_millis(100));
        Self {
            cluster,
            topic: topic.to_owned(),
            producer,
            tail: fetch,
        }
    }
}

impl CoordinationLog for KafkaLog {
    async fn append(&self, mut record: ProducerRecord) -> Result<i64, ProduceError> {
        record.topic.clone_from(&self.topic);
        record.partition = Some(LOG_PARTITION);
        Ok(self.producer.send(record).await?.offset)
    }

    async fn read_all(&self) -> Result<(Vec<FetchedRecord>, i64), OffsetError> {
        Ok(read_partition_with(
            &self.cluster,
            &self.topic,
            LOG_PARTITION,
            Isolation::ReadUncommitted,
        )
        .await?)
    }

    fn tail(
        &self,
        from: i64,
        tx: mpsc::Sender<Vec<FetchedRecord>>,
        shutdown: Shutdown,
    ) -> impl Future<Output = ()> + Send + 'static {
        let fetcher = Fetcher {
            cluster: self.cluster.clone(),
            config: self.tail.clone(),
            tp: TopicPartition::new(&self.topic, LOG_PARTITION),
            progress: None,
            lag: None,
            isolation: Isolation::ReadUncommitted,
        };
        fetcher.run(from, tx, shutdown)
    }

    async fn partition_count(&self, topic: &str) -> Result<i32, ClusterError> {
        self.cluster.partition_count(topic).await
    }

    async fn close(&self) {
        self.producer.close().await;
    }
}

/// An in-memory coordination log for the unit tests: appends are stamped
/// with a log time the test sets (as `LogAppendTime` would be by the broker),
/// and can be made to fail, as when the broker is out of reach.
#[cfg(test)]
pub(crate) mod memory {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

    use parking_lot::Mutex;
    use rskafka::chrono::DateTime;
    use tokio::sync::{Notify, mpsc};

    use super::CoordinationLog;
    use crate::kafka::codec::FetchedRecord;
    use crate::kafka::conn::ClusterError;
    use crate::kafka::group::offsets::OffsetError;
    use crate::kafka::produce::{ProduceError, ProducerRecord};
    use crate::shutdown::Shutdown;

    #[derive(Debug, Default)]
    struct Inner {
        records: Mutex<Vec<FetchedRecord>>,
        log_time_ms: AtomicI64,
        failing: AtomicBool,
        appended: Notify,
    }

    #[derive(Debug, Clone, Default)]
    pub(crate) struct MemoryLog(Arc<Inner>);

    impl MemoryLog {
        /// Sets the log time later appends are stamped with.
        pub(crate) fn set_log_time(&self, ms: i64) {
            self.0.log_time_ms.store(ms, Ordering::Release);
        }

        /// Makes appends fail (or succeed again).
        pub(crate) fn set_failing(&self, failing: bool) {
            self.0.failing.store(failing, Ordering::Release);
        }

        /// Every record, in log order.
        pub(crate) fn records(&self) -> Vec<FetchedRecord> {
            self.0.records.lock().clone()
        }

        /// Drops every record from `offset` on, as a failover onto a replica
        /// that had not caught up does.
        pub(crate) fn truncate(&self, offset: i64) {
            self.0.records.lock().truncate(offset as usize);
        }
    }

    impl CoordinationLog for MemoryLog {
        async fn append(&self, record: ProducerRecord) -> Result<i64, ProduceError> {
            if self.0.failing.load(Ordering::Acquire) {
                return Err(ProduceError::DeliveryTimeout {
                    topic: record.topic,
                    partition: 0,
                    timeout: std::time::Duration::ZERO,
                    last_error: "the log is out of reach".to_owned(),
                });
            }
            let mut records = self.0.records.lock();
            let offset = records.len() as i64;
            let ms = self.0.log_time_ms.load(Ordering::Acquire);
            records.push(FetchedRecord {
                offset,
                key: record.key.map(Into::into),
                value: record.value.map(Into::into),
                headers: record.headers,
                timestamp: DateTime::from_timestamp_millis(ms).unwrap_or_default(),
                transaction: None,
            });
            self.0.appended.notify_waiters();
            Ok(offset)
        }

        async fn read_all(&self) -> Result<(Vec<FetchedRecord>, i64), OffsetError> {
            let records = self.records();
            let high_watermark = records.len() as i64;
            Ok((records, high_watermark))
        }

        fn tail(
            &self,
            mut from: i64,
            tx: mpsc::Sender<Vec<FetchedRecord>>,
            mut shutdown: Shutdown,
        ) -> impl Future<Output = ()> + Send + 'static {
            let inner = Arc::clone(&self.0);
            async move {
                loop {
                    let appended = inner.appended.notified();
                    let batch: Vec<FetchedRecord> = {
                        let records = inner.records.lock();
                        records.iter().skip(from as usize).cloned().collect()
                    };
                    if let Some(last) = batch.last() {
                        from = last.offset + 1;
                        if tx.send(batch).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    tokio::select! {
                        () = appended => {}
                        () = shutdown.recv() => return,
                    }
                }
            }
        }

        async fn partition_count(&self, _topic: &str) -> Result<i32, ClusterError> {
            Ok(4)
        }

        async fn close(&self) {}
    }
}
