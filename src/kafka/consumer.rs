//! The consumer: fetch loops per partition, an async handler, committed offsets.
//!
//! Every assigned partition gets a fetcher task that long-polls the partition's
//! leader, and a processing loop that hands records, in offset order, to the
//! [`Handler`]. The fetcher works one batch ahead of the handler, so the network
//! and the handler overlap. `Ok` from the handler means the record is processed;
//! `Err` means it is not, and the same record is offered again after a backoff:
//! a partition never moves past a record its handler did not accept. Wrappers
//! around a handler (bounded retries, dead-letter topics) decide when to give up.
//!
//! Offsets are committed to the [`OffsetStore`] (a compacted topic) every
//! `commit_interval` and on shutdown, and only for records the handler accepted,
//! which makes delivery at-least-once: after a crash, the records handled since
//! the last commit are handled again, and nothing is skipped.
//!
//! Graceful shutdown stops fetching, lets the record in flight finish, commits,
//! and returns. Which partitions this instance consumes is decided in one place,
//! [`Consumer::assignment`]; this version takes every partition of the subscribed
//! topics.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use rskafka::chrono::{DateTime, Utc};
use rskafka::client::error::ProtocolError;
use rskafka::client::partition::OffsetAt;
use rskafka::record::RecordAndOffset;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::TopicPartition;
use super::admin::{Admin, AdminError};
use super::backoff::{Backoff, BackoffConfig};
use super::cluster::{Cluster, ClusterError};
use super::offsets::{DEFAULT_OFFSETS_TOPIC, OffsetError, OffsetStore, offsets_topic_spec};
use super::producer::{Producer, ProducerConfig};
use crate::shutdown::Shutdown;

/// Where to start a partition that has no committed offset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OffsetReset {
    /// From the oldest record still kept.
    #[default]
    Earliest,
    /// From the next record produced.
    Latest,
}

impl std::str::FromStr for OffsetReset {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "earliest" => Ok(Self::Earliest),
            "latest" => Ok(Self::Latest),
            other => Err(format!(
                "unknown offset reset {other:?}: expected earliest or latest"
            )),
        }
    }
}

/// Consumer settings.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Offsets are committed per group.
    pub group_id: String,
    /// The topics to consume.
    pub topics: Vec<String>,
    /// The compacted topic that keeps committed offsets.
    pub offsets_topic: String,
    /// Where partitions without a commit start (Java: `auto.offset.reset`).
    pub auto_offset_reset: OffsetReset,
    /// How often progress is committed (Java: `auto.commit.interval.ms` = 5 s;
    /// shorter here, to keep the redelivered tail after a crash small).
    pub commit_interval: Duration,
    /// The most bytes one fetch returns per partition (Java: `max.partition.fetch.bytes`).
    pub fetch_max_bytes: i32,
    /// How long the broker holds a fetch open waiting for data (Java: `fetch.max.wait.ms`).
    pub fetch_max_wait: Duration,
    /// Waits between retries of a failed fetch or a failed handler call.
    pub retry_backoff: BackoffConfig,
    /// How long the final commit on shutdown may take.
    pub shutdown_commit_timeout: Duration,
}

impl ConsumerConfig {
    /// Settings for `group_id` consuming `topics`, every other value at its default.
    pub fn new(
        group_id: impl Into<String>,
        topics: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            group_id: group_id.into(),
            topics: topics.into_iter().map(Into::into).collect(),
            offsets_topic: DEFAULT_OFFSETS_TOPIC.to_owned(),
            auto_offset_reset: OffsetReset::Earliest,
            commit_interval: Duration::from_secs(1),
            fetch_max_bytes: 1024 * 1024,
            fetch_max_wait: Duration::from_millis(500),
            retry_backoff: BackoffConfig {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(10),
            },
            shutdown_commit_timeout: Duration::from_secs(10),
        }
    }
}

/// A consumed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: BTreeMap<String, Vec<u8>>,
    pub timestamp: DateTime<Utc>,
}

impl Message {
    pub(crate) fn new(tp: &TopicPartition, r: RecordAndOffset) -> Self {
        Self {
            topic: tp.topic.clone(),
            partition: tp.partition,
            offset: r.offset,
            key: r.record.key,
            value: r.record.value,
            headers: r.record.headers,
            timestamp: r.record.timestamp,
        }
    }

    /// A header as UTF-8 text, if present and valid.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// What a handler returns when it did not process a record.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// A handler error meaning the record can never be processed (it cannot be
/// decoded, or breaks the event schema); retrying it is pointless. The
/// [`DeadLetter`](super::dead_letter::DeadLetter) wrapper parks such records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Poison(String);

impl Poison {
    pub fn new(reason: impl Into<String>) -> Self {
        Self(reason.into())
    }

    /// Whether `error` is (or wraps) a `Poison`.
    pub fn is_poison(error: &HandlerError) -> bool {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
        while let Some(e) = source {
            if e.is::<Self>() {
                return true;
            }
            source = e.source();
        }
        false
    }
}

/// Processes records. `Ok` commits the record; `Err` offers it again later.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, message: &Message) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// A [`Handler`] made from an async closure; see [`handler_fn`].
#[derive(Debug, Clone)]
pub struct FnHandler<F>(F);

/// Turns `f` into a [`Handler`]; `f` gets its own copy of each message.
pub fn handler_fn<F, Fut>(f: F) -> FnHandler<F>
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send,
{
    FnHandler(f)
}

impl<F, Fut> Handler for FnHandler<F>
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send,
{
    fn handle(&self, message: &Message) -> impl Future<Output = Result<(), HandlerError>> + Send {
        (self.0)(message.clone())
    }
}

/// Errors that stop a consumer.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("the consumer needs at least one topic")]
    NoTopics,
    #[error("the consumer needs a group id (APP_KAFKA_GROUP_ID)")]
    NoGroup,
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("preparing the offsets topic failed: {0}")]
    Admin(#[from] AdminError),
    #[error(transparent)]
    Offsets(#[from] OffsetError),
}

/// A consumer of one group over a set of topics.
#[derive(Debug)]
pub struct Consumer {
    cluster: Cluster,
    config: ConsumerConfig,
    offsets: OffsetStore,
}

impl Consumer {
    /// Prepares a consumer: checks the topics exist and creates the offsets topic
    /// (compacted, one partition) if it does not.
    pub async fn new(cluster: Cluster, config: ConsumerConfig) -> Result<Self, ConsumerError> {
        if config.group_id.is_empty() {
            return Err(ConsumerError::NoGroup);
        }
        if config.topics.is_empty() {
            return Err(ConsumerError::NoTopics);
        }
        for topic in &config.topics {
            cluster.partition_count(topic).await?;
        }
        // Created only when missing: an account that may not create topics can still
        // consume from a prepared cluster.
        match cluster.partition_count(&config.offsets_topic).await {
            Ok(_) => {}
            Err(ClusterError::UnknownTopic(_)) => {
                Admin::new(cluster.config().clone())
                    .ensure_topics(&[offsets_topic_spec(&config.offsets_topic)])
                    .await?;
            }
            Err(e) => return Err(e.into()),
        }
        // Commits are few and small: send each at once.
        let producer = Producer::new(
            cluster.clone(),
            ProducerConfig {
                linger: Duration::ZERO,
                ..ProducerConfig::default()
            },
        );
        let offsets = OffsetStore::new(producer, config.offsets_topic.clone());
        Ok(Self {
            cluster,
            config,
            offsets,
        })
    }

    /// The partitions this instance consumes: all partitions of every subscribed topic.
    async fn assignment(&self) -> Result<Vec<TopicPartition>, ClusterError> {
        let mut partitions = Vec::new();
        for topic in &self.config.topics {
            let n = self.cluster.partition_count(topic).await?;
            partitions.extend((0..n).map(|p| TopicPartition::new(topic.clone(), p)));
        }
        Ok(partitions)
    }

    /// Consumes until `shutdown` fires, then commits and returns.
    pub async fn run<H: Handler>(
        self,
        handler: H,
        mut shutdown: Shutdown,
    ) -> Result<(), ConsumerError> {
        let handler = Arc::new(handler);
        let Some(committed) = self.load_committed(&mut shutdown).await? else {
            return Ok(());
        };
        let assignment = self.assignment().await?;
        log::info!(
            "consumer group {} starting on {} partitions of {}",
            self.config.group_id,
            assignment.len(),
            self.config.topics.join(", ")
        );

        let mut partitions = PartitionSet::new();
        for tp in assignment {
            let start = committed.get(&tp).copied();
            partitions.start(
                PartitionRunner {
                    cluster: self.cluster.clone(),
                    config: self.config.clone(),
                    tp,
                    progress: Arc::new(Progress::new(start)),
                },
                Arc::clone(&handler),
                shutdown.clone(),
            );
        }

        let mut ticker = tokio::time::interval(self.config.commit_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    if let Err(e) = self.commit(&partitions).await {
                        log::warn!("commit failed, will retry: {e}");
                    }
                }
                () = shutdown.recv() => break,
            }
        }

        partitions.join().await;
        self.final_commit(&partitions).await;
        log::info!("consumer group {} stopped", self.config.group_id);
        Ok(())
    }

    /// Committed offsets, retried while the broker is unreachable; `None` if
    /// shutdown came first.
    async fn load_committed(
        &self,
        shutdown: &mut Shutdown,
    ) -> Result<Option<HashMap<TopicPartition, i64>>, ConsumerError> {
        let mut backoff = Backoff::new(self.config.retry_backoff);
        loop {
            match self.offsets.load(&self.config.group_id).await {
                Ok(offsets) => return Ok(Some(offsets)),
                Err(OffsetError::Read(source)) if source.is_retriable() => {
                    let delay = backoff.next_delay();
                    log::warn!("loading committed offsets failed, retrying in {delay:?}: {source}");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shutdown.recv() => return Ok(None),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn commit(&self, partitions: &PartitionSet) -> Result<(), OffsetError> {
        let due: Vec<(TopicPartition, i64, Arc<Progress>)> = partitions
            .progress()
            .filter_map(|(tp, p)| p.due().map(|next| (tp.clone(), next, Arc::clone(p))))
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let offsets: Vec<(TopicPartition, i64)> = due
            .iter()
            .map(|(tp, next, _)| (tp.clone(), *next))
            .collect();
        self.offsets.commit(&self.config.group_id, &offsets).await?;
        for (_, next, progress) in due {
            progress.committed.fetch_max(next, Ordering::AcqRel);
        }
        Ok(())
    }

    async fn final_commit(&self, partitions: &PartitionSet) {
        let deadline = tokio::time::Instant::now() + self.config.shutdown_commit_timeout;
        let mut backoff = Backoff::new(self.config.retry_backoff);
        loop {
            match tokio::time::timeout_at(deadline, self.commit(partitions)).await {
                Ok(Ok(())) => return,
                Ok(Err(e)) if tokio::time::Instant::now() + backoff.next_delay() < deadline => {
                    log::warn!("final commit failed, retrying: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Ok(Err(e)) => {
                    log::error!(
                        "final commit failed; records since the last commit will be delivered again: {e}"
                    );
                    return;
                }
                Err(_) => {
                    log::error!(
                        "final commit did not finish within {:?}; records since the last commit will be delivered again",
                        self.config.shutdown_commit_timeout
                    );
                    return;
                }
            }
        }
    }
}

/// How far a partition got. `next` is the offset after the last record handled,
/// `committed` the last value stored; `-1` means unknown.
#[derive(Debug)]
struct Progress {
    next: AtomicI64,
    committed: AtomicI64,
}

impl Progress {
    fn new(committed: Option<i64>) -> Self {
        let c = committed.unwrap_or(-1);
        Self {
            next: AtomicI64::new(c),
            committed: AtomicI64::new(c),
        }
    }

    /// The offset to commit, if it moved since the last commit.
    fn due(&self) -> Option<i64> {
        let next = self.next.load(Ordering::Acquire);
        (next >= 0 && next > self.committed.load(Ordering::Acquire)).then_some(next)
    }
}

/// The partitions running in this instance. Tasks end with the set: dropping it
/// (or the consumer's future) stops them all.
struct PartitionSet {
    tasks: JoinSet<()>,
    progress: HashMap<TopicPartition, Arc<Progress>>,
}

impl PartitionSet {
    fn new() -> Self {
        Self {
            tasks: JoinSet::new(),
            progress: HashMap::new(),
        }
    }

    fn start<H: Handler>(&mut self, runner: PartitionRunner, handler: Arc<H>, shutdown: Shutdown) {
        self.progress
            .insert(runner.tp.clone(), Arc::clone(&runner.progress));
        self.tasks.spawn(runner.run(handler, shutdown));
    }

    fn progress(&self) -> impl Iterator<Item = (&TopicPartition, &Arc<Progress>)> {
        self.progress.iter()
    }

    /// Waits for every partition to stop (after shutdown fired).
    async fn join(&mut self) {
        while let Some(r) = self.tasks.join_next().await {
            if let Err(e) = r {
                log::error!("a partition task ended abnormally: {e}");
            }
        }
    }
}

struct PartitionRunner {
    cluster: Cluster,
    config: ConsumerConfig,
    tp: TopicPartition,
    progress: Arc<Progress>,
}

impl PartitionRunner {
    async fn run<H: Handler>(self, handler: Arc<H>, mut shutdown: Shutdown) {
        let Some(start) = self.start_offset(&mut shutdown).await else {
            return;
        };
        // Persist where a reset put us, so a restart does not reset again and skip
        // what arrived in between.
        self.progress.next.fetch_max(start, Ordering::AcqRel);
        log::debug!("{} starts at offset {start}", self.tp);

        let (tx, mut rx) = mpsc::channel::<Vec<RecordAndOffset>>(1);
        let fetcher = Fetcher {
            cluster: self.cluster.clone(),
            config: self.config.clone(),
            tp: self.tp.clone(),
        };
        // Aborted with this task too, when the consumer is dropped without a shutdown.
        let _fetch_task = AbortOnDrop(tokio::spawn(fetcher.run(start, tx, shutdown.clone())));

        'batches: loop {
            let batch = tokio::select! {
                batch = rx.recv() => match batch {
                    Some(b) => b,
                    None => break,
                },
                () = shutdown.recv() => break,
            };
            for record in batch {
                if shutdown.is_shutdown() {
                    break 'batches;
                }
                let message = Message::new(&self.tp, record);
                if !self.handle(&*handler, &message, &mut shutdown).await {
                    break 'batches;
                }
                self.progress
                    .next
                    .fetch_max(message.offset + 1, Ordering::AcqRel);
            }
        }
    }

    /// Offers `message` until the handler accepts it; `false` if shutdown came first.
    async fn handle<H: Handler>(
        &self,
        handler: &H,
        message: &Message,
        shutdown: &mut Shutdown,
    ) -> bool {
        let mut backoff = Backoff::new(self.config.retry_backoff);
        loop {
            match handler.handle(message).await {
                Ok(()) => return true,
                Err(e) => {
                    let delay = backoff.next_delay();
                    log::warn!(
                        "handler failed on {}@{} (attempt {}), retrying in {delay:?}: {e}",
                        self.tp,
                        message.offset,
                        backoff.attempts()
                    );
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shutdown.recv() => return false,
                    }
                }
            }
        }
    }

    /// The committed offset, or where `auto_offset_reset` says.
    async fn start_offset(&self, shutdown: &mut Shutdown) -> Option<i64> {
        let committed = self.progress.next.load(Ordering::Acquire);
        if committed >= 0 {
            return Some(committed);
        }
        let mut backoff = Backoff::new(self.config.retry_backoff);
        loop {
            match reset_offset(&self.cluster, &self.tp, self.config.auto_offset_reset).await {
                Ok(offset) => return Some(offset),
                Err(e) => {
                    let delay = backoff.next_delay();
                    log::warn!(
                        "cannot look up the start of {}, retrying in {delay:?}: {e}",
                        self.tp
                    );
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shutdown.recv() => return None,
                    }
                    self.cluster
                        .reset_partition(&self.tp.topic, self.tp.partition)
                        .await;
                }
            }
        }
    }
}

pub(crate) async fn reset_offset(
    cluster: &Cluster,
    tp: &TopicPartition,
    reset: OffsetReset,
) -> Result<i64, ClusterError> {
    let client = cluster.partition_client(&tp.topic, tp.partition).await?;
    let at = match reset {
        OffsetReset::Earliest => OffsetAt::Earliest,
        OffsetReset::Latest => OffsetAt::Latest,
    };
    cluster.timed("list offsets", client.get_offset(at)).await
}

pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(crate) struct Fetcher {
    pub(crate) cluster: Cluster,
    pub(crate) config: ConsumerConfig,
    pub(crate) tp: TopicPartition,
}

impl Fetcher {
    /// Fetches from `offset` onwards into `tx` until shutdown or the receiver goes.
    pub(crate) async fn run(
        self,
        mut offset: i64,
        tx: mpsc::Sender<Vec<RecordAndOffset>>,
        mut shutdown: Shutdown,
    ) {
        let mut backoff = Backoff::new(self.config.retry_backoff);
        while !shutdown.is_shutdown() {
            let result = tokio::select! {
                r = self.fetch(offset) => r,
                () = shutdown.recv() => return,
            };
            match result {
                Ok(records) => {
                    backoff = Backoff::new(self.config.retry_backoff);
                    let Some(last) = records.last() else { continue };
                    offset = last.offset + 1;
                    if tx.send(records).await.is_err() {
                        return;
                    }
                }
                Err(e) if e.protocol_error() == Some(ProtocolError::OffsetOutOfRange) => {
                    match reset_offset(&self.cluster, &self.tp, self.config.auto_offset_reset).await
                    {
                        Ok(reset) => {
                            log::warn!(
                                "{}: offset {offset} is no longer on the broker (retention); continuing at {reset} ({:?})",
                                self.tp,
                                self.config.auto_offset_reset
                            );
                            offset = reset;
                        }
                        Err(e) => self.pause(&mut backoff, &e, &mut shutdown).await,
                    }
                }
                Err(e) => self.pause(&mut backoff, &e, &mut shutdown).await,
            }
        }
    }

    async fn fetch(&self, offset: i64) -> Result<Vec<RecordAndOffset>, ClusterError> {
        let client = self
            .cluster
            .partition_client(&self.tp.topic, self.tp.partition)
            .await?;
        let wait_ms = self.config.fetch_max_wait.as_millis().min(i32::MAX as u128) as i32;
        let (records, _high_watermark) = self
            .cluster
            .timed(
                "fetch",
                client.fetch_records(offset, 1..self.config.fetch_max_bytes, wait_ms),
            )
            .await?;
        Ok(records)
    }

    async fn pause(&self, backoff: &mut Backoff, error: &ClusterError, shutdown: &mut Shutdown) {
        let delay = backoff.next_delay();
        let level = if error.is_retriable() {
            log::Level::Warn
        } else {
            log::Level::Error
        };
        log::log!(
            level,
            "fetch from {} failed, retrying in {delay:?}: {error}",
            self.tp
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.recv() => return,
        }
        self.cluster
            .reset_partition(&self.tp.topic, self.tp.partition)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_reset_names() {
        assert_eq!("earliest".parse(), Ok(OffsetReset::Earliest));
        assert_eq!("LATEST".parse(), Ok(OffsetReset::Latest));
        assert!(
            "newest"
                .parse::<OffsetReset>()
                .unwrap_err()
                .contains("earliest or latest")
        );
    }

    #[test]
    fn progress_is_due_only_after_moving() {
        let p = Progress::new(Some(10));
        assert_eq!(p.due(), None);
        p.next.store(12, Ordering::Release);
        assert_eq!(p.due(), Some(12));
        p.committed.store(12, Ordering::Release);
        assert_eq!(p.due(), None);
        assert_eq!(Progress::new(None).due(), None);
    }
}
