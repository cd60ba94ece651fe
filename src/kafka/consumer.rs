//! The consumer: a member of a consumer group, with fetch loops per partition,
//! an async handler, and committed offsets.
//!
//! Instances with the same `group_id` share the partitions of their topics; each
//! partition is processed by one live instance at a time, and moves when an
//! instance joins, leaves or dies (see [`group`](super::group) for the protocol).
//!
//! Every partition this instance owns gets a fetcher task that long-polls the
//! partition's leader, and a processing loop that hands records, in offset order,
//! to the [`Handler`]. The fetcher works one batch ahead of the handler, so the
//! network and the handler overlap. `Ok` from the handler means the record is
//! processed; `Err` means it is not, and the same record is offered again after a
//! backoff: a partition never moves past a record its handler did not accept.
//! Wrappers around a handler (bounded retries, dead-letter topics) decide when to
//! give up.
//!
//! Offsets are committed to the coordination topic every `commit_interval`, when
//! a partition is handed over, and on shutdown, and only for records the handler
//! accepted, which makes delivery at-least-once: after a crash, the records handled
//! since the last commit are handled again, and nothing is skipped.
//!
//! Graceful shutdown stops fetching, lets the record in flight finish, commits,
//! hands the partitions over to the remaining members, and returns.

use crate::{health, metrics};
use std::collections::BTreeMap;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use rskafka::chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use super::TopicPartition;
use super::admin::{Admin, AdminError};
use super::backoff::{Backoff, BackoffConfig, sleep_until_or_never};
use super::broker_offsets::BrokerOffsets;
use super::cluster::{Cluster, ClusterError};
use super::fetch::{FetchConfig, Fetcher, OffsetReset, Progress, Stalls, reset_offset};
use super::group::planner::{Plan, Planner};
use super::group::records::OwnerValue;
use super::group::{Coordinator, Lease};
use super::offsets::{DEFAULT_OFFSETS_TOPIC, OffsetError, OffsetStore, offsets_topic_spec};
use super::producer::{ProduceError, Producer, ProducerConfig};
use super::records::FetchedRecord;
use super::task::AbortOnDrop;
use crate::shutdown::{Shutdown, ShutdownTrigger};

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
    /// This member's id in the group; `None` makes a new one for every consumer
    /// (`<host>-<pid>-<random>`). A fixed id makes a restarted process the same
    /// member, which takes its partitions back at once instead of after the
    /// session timeout; two live processes must never share one.
    pub member_id: Option<String>,
    /// A member silent for this long (in log time) is dead, and its partitions
    /// move (Java: `session.timeout.ms` = 45 s).
    pub session_timeout: Duration,
    /// How often a member writes its heartbeat (Java: `heartbeat.interval.ms` = 3 s).
    pub heartbeat_interval: Duration,
    /// How long a member waits before claiming a partition of a dead member, so
    /// that the group settles first (Java: `group.initial.rebalance.delay.ms` = 3 s).
    pub rebalance_grace: Duration,
    /// Also copy commits to the broker's own offsets of a group of this name, so
    /// Kafka UI and `kafka-consumer-groups.sh` show the lag (see `broker_offsets`).
    pub broker_offsets: bool,
    /// A partition this member owns that has had no live task, or records waiting
    /// and no progress, for this long is reported as stalled: in
    /// `eda_consumer_stalled_partitions` and by `/ready`, which answers `503`.
    pub stall_after: Duration,
}

impl ConsumerConfig {
    /// Settings for `group_id` consuming `topics`, every other value at its default.
    pub fn new(
        group_id: impl Into<String>,
        topics: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        // The fetch settings' defaults are the fetcher's own.
        let fetch = FetchConfig::default();
        Self {
            group_id: group_id.into(),
            topics: topics.into_iter().map(Into::into).collect(),
            offsets_topic: DEFAULT_OFFSETS_TOPIC.to_owned(),
            auto_offset_reset: fetch.auto_offset_reset,
            commit_interval: Duration::from_secs(1),
            fetch_max_bytes: fetch.fetch_max_bytes,
            fetch_max_wait: fetch.fetch_max_wait,
            retry_backoff: fetch.retry_backoff,
            shutdown_commit_timeout: Duration::from_secs(10),
            member_id: None,
            session_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(1),
            rebalance_grace: Duration::from_secs(1),
            broker_offsets: true,
            stall_after: Duration::from_secs(60),
        }
    }

    /// The settings its fetchers run with.
    pub fn fetch(&self) -> FetchConfig {
        FetchConfig {
            fetch_max_bytes: self.fetch_max_bytes,
            fetch_max_wait: self.fetch_max_wait,
            retry_backoff: self.retry_backoff,
            auto_offset_reset: self.auto_offset_reset,
        }
    }
}

/// `<host>-<pid>-<random>`: says where a member runs, and never repeats.
fn default_member_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let host = if host.is_empty() {
        "host".to_owned()
    } else {
        host
    };
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &random[..8])
}

/// A consumed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Shared by the messages of a partition: naming the topic costs no copy.
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    /// The key and value share the memory they were fetched in (the fetch
    /// response, up to `fetch_max_bytes`, or a decompressed batch), which stays
    /// allocated while either is alive: a handler that keeps a message for long
    /// should keep a copy (`to_vec`).
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: BTreeMap<String, Vec<u8>>,
    pub timestamp: DateTime<Utc>,
    /// Which delivery of this record to the handler this is, from 1: the consumer
    /// offers a failed record again, and wrappers such as
    /// [`DeadLetter`](super::dead_letter::DeadLetter) give up after a budget.
    pub attempt: u32,
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
    #[error("writing a partition's owner record failed: {0}")]
    Claim(#[from] ProduceError),
    #[error(
        "the coordination topic {topic} has message.timestamp.type={found}, so members' clocks would decide who is alive; set it to LogAppendTime: kafka-configs.sh --bootstrap-server BROKER --alter --entity-type topics --entity-name {topic} --add-config message.timestamp.type=LogAppendTime"
    )]
    CreateTimeCoordination { topic: String, found: String },
}

/// Checks that the broker stamps the coordination topic's records
/// (`LogAppendTime`): liveness is measured in those timestamps, and a member
/// whose clock runs ahead would otherwise make every other member look dead.
async fn check_timestamps(admin: &Admin, topic: &str) -> Result<(), ConsumerError> {
    let (name, wanted) = super::offsets::TIMESTAMP_TYPE;
    match admin.topic_configs(topic).await {
        Ok(configs) => match configs.get(name) {
            Some(found) if found == wanted => Ok(()),
            Some(found) => Err(ConsumerError::CreateTimeCoordination {
                topic: topic.to_owned(),
                found: found.clone(),
            }),
            None => {
                log::warn!(
                    "the broker does not report {name} of {topic}; the group protocol assumes {wanted}"
                );
                Ok(())
            }
        },
        Err(e) => {
            log::warn!(
                "could not check {name} of {topic} ({e}); the group protocol assumes {wanted}"
            );
            Ok(())
        }
    }
}

/// A member of a consumer group over a set of topics.
#[derive(Debug)]
pub struct Consumer {
    cluster: Cluster,
    config: ConsumerConfig,
    offsets: OffsetStore,
    member_id: String,
    broker_offsets: Option<BrokerOffsets>,
}

/// A partition this instance is working on.
struct Running {
    epoch: i64,
    progress: Arc<Progress>,
    stop: ShutdownTrigger,
    /// Aborted when dropped: a partition nobody tracks must not go on running.
    task: AbortOnDrop<RunnerExit>,
}

impl Running {
    /// Stops after the record in flight; returns when the task ended.
    async fn finish(mut self) -> Arc<Progress> {
        self.stop.trigger();
        let why = self.exit().await;
        if !matches!(why, ExitReason::Ended(RunnerExit::Stopped)) {
            log::warn!("a partition task ended before it was stopped: {why}");
        }
        self.progress
    }

    /// Why the task ended; waits for it to end.
    async fn exit(&mut self) -> ExitReason {
        match (&mut self.task.0).await {
            Ok(exit) => ExitReason::Ended(exit),
            Err(e) if e.is_panic() => ExitReason::Panicked,
            Err(_) => ExitReason::Aborted,
        }
    }
}

/// Why a partition task returned by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunnerExit {
    /// Its stop signal or the consumer's shutdown fired.
    Stopped,
    /// The member's lease ran out: another member may own the partition by now.
    LeaseLost,
    /// Its fetcher stopped.
    FetchEnded,
}

/// How a partition task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExitReason {
    Ended(RunnerExit),
    Panicked,
    Aborted,
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Ended(RunnerExit::Stopped) => "stopped",
            Self::Ended(RunnerExit::LeaseLost) => "the member's lease ran out",
            Self::Ended(RunnerExit::FetchEnded) => "its fetcher stopped",
            Self::Panicked => "the handler panicked",
            Self::Aborted => "aborted",
        })
    }
}

impl Consumer {
    /// Prepares a consumer: checks the topics exist and creates the coordination
    /// topic (compacted, one partition) if it is missing.
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
        let admin = Admin::new(cluster.config().clone());
        match cluster.partition_count(&config.offsets_topic).await {
            Ok(_) => check_timestamps(&admin, &config.offsets_topic).await?,
            Err(ClusterError::UnknownTopic(_)) => {
                admin
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
        let member_id = config.member_id.clone().unwrap_or_else(default_member_id);
        let broker_offsets = config
            .broker_offsets
            .then(|| BrokerOffsets::start(cluster.config().clone(), config.group_id.clone()));
        Ok(Self {
            cluster,
            config,
            offsets,
            member_id,
            broker_offsets,
        })
    }

    /// This member's id in the group.
    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    /// Consumes as a member of the group until `shutdown` fires, then commits,
    /// hands the partitions over and returns.
    pub async fn run<H: Handler>(
        self,
        handler: H,
        mut shutdown: Shutdown,
    ) -> Result<(), ConsumerError> {
        let handler = Arc::new(handler);
        let mut coordinator = loop {
            match Coordinator::join(
                self.cluster.clone(),
                self.config.clone(),
                self.member_id.clone(),
                shutdown.clone(),
            )
            .await
            {
                Ok(c) => break c,
                Err(ConsumerError::Offsets(OffsetError::Read(e))) if e.is_retriable() => {
                    log::warn!(
                        "joining group {} failed, retrying: {e}",
                        self.config.group_id
                    );
                    tokio::select! {
                        () = tokio::time::sleep(self.config.retry_backoff.max) => {}
                        () = shutdown.recv() => return Ok(()),
                    }
                }
                Err(e) => return Err(e),
            }
        };

        let mut running: BTreeMap<TopicPartition, Running> = BTreeMap::new();
        let mut planner = Planner::new(
            self.member_id.clone(),
            self.config.rebalance_grace,
            (
                self.config.retry_backoff.initial,
                self.config.retry_backoff.max,
            ),
            // The coordination producer gives up after a third of the session
            // timeout; a request in flight then may still land a little later.
            self.config.session_timeout,
        );
        let mut reconcile = tokio::time::interval(
            (self.config.heartbeat_interval / 4)
                .clamp(Duration::from_millis(20), Duration::from_millis(250)),
        );
        reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut commit = tokio::time::interval(self.config.commit_interval);
        commit.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut group_metrics = GroupMetrics::new(&self.config.group_id, &self.member_id);

        loop {
            // Claims wait out the grace and restarts their backoff; wake when the
            // first is due rather than at the next tick.
            let due = planner.next_due(Instant::now());
            let mut react = false;
            tokio::select! {
                records = coordinator.next_records() => match records {
                    // Act on what the log just said about this group (this member
                    // joined, a claim or handoff landed) at once, not a tick later;
                    // the records of the other groups sharing the topic wait for it.
                    Some(records) => react = coordinator.apply(&records),
                    None => break,
                },
                _ = reconcile.tick() => {
                    if coordinator.supervise() {
                        metrics::task_restarted("consumer heartbeat");
                    }
                    react = true;
                }
                () = sleep_until_or_never(due) => react = true,
                _ = commit.tick() => {
                    // Bounded well below the session timeout: while this waits, the
                    // loop reads no coordination record.
                    match tokio::time::timeout(self.main_loop_bound(), self.commit(&coordinator, &running)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => log::warn!("commit failed, will retry: {e}"),
                        Err(_) => log::warn!("commit not acknowledged within {:?}; will retry", self.main_loop_bound()),
                    }
                }
                () = shutdown.recv() => break,
            }
            if coordinator.is_diverged() {
                // Every partition is fenced until the state is a function of the log
                // again (`reconcile` treats a diverged state like a lapsed lease).
                match tokio::time::timeout(self.main_loop_bound(), coordinator.rebuild()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        log::warn!("reading the coordination log again failed, will retry: {e}")
                    }
                    Err(_) => log::warn!(
                        "reading the coordination log again took over {:?}; will retry",
                        self.main_loop_bound()
                    ),
                }
                react = true;
            }
            if react {
                loop {
                    self.reconcile(
                        &mut coordinator,
                        &mut running,
                        &mut planner,
                        &handler,
                        &shutdown,
                    )
                    .await;
                    // Owner records just written may follow the state directly;
                    // then they count now, and what they change is acted on now.
                    if !coordinator.catch_up() {
                        break;
                    }
                }
                group_metrics.update(&coordinator, &running, &self.config);
            }
        }

        self.leave(coordinator, running, &planner).await;
        log::info!(
            "member {} left consumer group {}",
            self.member_id,
            self.config.group_id
        );
        // The commits made while leaving are the ones Kafka tools should show.
        if let Some(copy) = self.broker_offsets {
            copy.finish(self.config.shutdown_commit_timeout).await;
        }
        Ok(())
    }

    /// How long one wait of the main loop may take: while it waits, the member
    /// reads no coordination record, so it stays well below the session timeout.
    fn main_loop_bound(&self) -> Duration {
        self.config.session_timeout / 3
    }

    /// Brings what this member runs in line with the group state: restarts what
    /// ended by itself, stops what it no longer owns, hands over what belongs to
    /// others, starts what it owns, and claims what it should own from dead
    /// members. The decisions are the [`Planner`]'s; this carries them out.
    async fn reconcile<H: Handler>(
        &self,
        coordinator: &mut Coordinator,
        running: &mut BTreeMap<TopicPartition, Running>,
        planner: &mut Planner<Instant>,
        handler: &Arc<H>,
        shutdown: &Shutdown,
    ) {
        let now = Instant::now();
        // Supervision: a partition task that ended by itself (its lease lapsed, its
        // handler panicked) is started again from the last commit, if still ours.
        let ended: Vec<TopicPartition> = running
            .iter()
            .filter(|(_, r)| r.task.0.is_finished())
            .map(|(tp, _)| tp.clone())
            .collect();
        for tp in ended {
            if let Some(mut r) = running.remove(&tp) {
                let why = r.exit().await;
                log::warn!(
                    "{tp}: partition task ended ({why}); it starts again from the last commit while {} owns it",
                    coordinator.member
                );
                PartitionMetrics::restarted(&self.config.group_id, &tp);
                planner.ended(tp, now);
            }
        }

        let epochs: BTreeMap<TopicPartition, i64> = running
            .iter()
            .map(|(tp, r)| (tp.clone(), r.epoch))
            .collect();
        // A state the log no longer backs is as good as none: fence everything.
        let lease_ok = coordinator.lease.is_valid() && !coordinator.is_diverged();
        let joined = coordinator.has_joined();
        let plan = planner.plan(&mut coordinator.state, &epochs, lease_ok, joined, now);
        let group = &*coordinator;
        let me = group.member.as_str();
        let Plan {
            fence,
            hand_over,
            pass_on,
            start,
            claim,
            reassert,
        } = plan;

        for tp in fence {
            if let Some(r) = running.remove(&tp) {
                r.task.0.abort();
                log::warn!(
                    "{tp}: no longer owned by {me} (lease {}); stopped without committing",
                    if lease_ok { "valid" } else { "expired" }
                );
            }
        }

        // All at once, like the claims: each waits for its record in flight, a commit
        // and an owner record, and the new owner waits for the last of them. A
        // handoff that does not finish in time is dropped, which stops its task; the
        // partition is then passed on from its last commit.
        let handoffs = hand_over.into_iter().filter_map(|(tp, to)| {
            let r = running.remove(&tp)?;
            Some(async move {
                let epoch = self.hand_over(group, &tp, r, &to).await;
                (tp, epoch)
            })
        });
        match tokio::time::timeout(
            self.main_loop_bound(),
            futures_util::future::join_all(handoffs),
        )
        .await
        {
            Ok(done) => {
                for (tp, epoch) in done {
                    if let Some(epoch) = epoch {
                        planner.handed(tp, epoch);
                    }
                }
            }
            Err(_) => log::warn!(
                "handoffs did not finish within {:?}; the partitions not handed over are passed on from their last commit",
                self.main_loop_bound()
            ),
        }

        for (tp, owner, to) in pass_on {
            if let Some(epoch) = self.pass_on(group, &tp, &owner, &to).await {
                planner.handed(tp, epoch);
            }
        }

        for (tp, epoch, offset) in start {
            log::info!("{tp}: {me} starts at offset {offset} (epoch {epoch})");
            running.insert(
                tp.clone(),
                self.start_partition(tp, epoch, offset, group, handler, shutdown),
            );
        }

        // All at once: each claim may open a connection and looks up its start, so
        // one after another they kept a starting member idle for milliseconds each.
        let outcomes = futures_util::future::join_all(
            claim
                .iter()
                .map(|tp| async move { (tp, self.claim(group, tp).await) }),
        );
        let outcomes = tokio::time::timeout(self.main_loop_bound(), outcomes)
            .await
            .unwrap_or_else(|_| {
                log::warn!(
                    "claims did not finish within {:?}; they are tried again",
                    self.main_loop_bound()
                );
                Vec::new()
            });
        for (tp, outcome) in outcomes {
            match outcome {
                Ok((epoch, start)) => {
                    log::info!("{tp}: claimed by {me} (epoch {epoch}, from offset {start})");
                    planner.claimed(tp.clone(), now);
                }
                Err(e) => log::warn!("{tp}: claim failed: {e}"),
            }
        }

        // A rival owner record that did not count must not be the one compaction
        // keeps; one that could not be written again is tried at the next plan.
        let mut failed = Vec::new();
        for (tp, owner) in reassert {
            if let Err(e) = group.write_owner(&tp, owner.clone()).await {
                log::warn!("{tp}: writing its owner record again failed, will retry: {e}");
                failed.push((tp, owner));
            }
        }
        for (tp, owner) in failed {
            coordinator.state.contest(tp, &owner);
        }
    }

    /// Writes this member as the owner of `tp`, from its committed offset or the
    /// reset position; the epoch and start claimed.
    async fn claim(
        &self,
        coordinator: &Coordinator,
        tp: &TopicPartition,
    ) -> Result<(i64, i64), ConsumerError> {
        let state = &coordinator.state;
        let epoch = state.owner(tp).map_or(0, |o| o.epoch + 1);
        let start = match state.committed(tp) {
            Some(offset) => offset,
            None => reset_offset(&self.cluster, tp, self.config.auto_offset_reset).await?,
        };
        let claim = OwnerValue {
            member: coordinator.member.clone(),
            epoch,
            start,
            by: Some(coordinator.member.clone()),
            refutes: Vec::new(),
        };
        coordinator.write_owner(tp, claim).await?;
        Ok((epoch, start))
    }

    fn start_partition<H: Handler>(
        &self,
        tp: TopicPartition,
        epoch: i64,
        start: i64,
        coordinator: &Coordinator,
        handler: &Arc<H>,
        shutdown: &Shutdown,
    ) -> Running {
        let progress = Arc::new(Progress::new(start));
        let (stop, stop_signal) = ShutdownTrigger::new();
        let runner = PartitionRunner {
            cluster: self.cluster.clone(),
            metrics: PartitionMetrics::new(&self.config.group_id, &tp),
            config: self.config.clone(),
            tp,
            progress: Arc::clone(&progress),
            lease: Arc::clone(&coordinator.lease),
        };
        let task = AbortOnDrop(tokio::spawn(runner.run(
            Arc::clone(handler),
            stop_signal,
            shutdown.clone(),
        )));
        Running {
            epoch,
            progress,
            stop,
            task,
        }
    }

    /// Finishes the record in flight, commits, and names the new owner. Returns the
    /// epoch of the owner record written, if one was.
    async fn hand_over(
        &self,
        coordinator: &Coordinator,
        tp: &TopicPartition,
        r: Running,
        to: &str,
    ) -> Option<i64> {
        let epoch = r.epoch;
        let progress = r.finish().await;
        let still_ours = coordinator.lease.is_valid()
            && coordinator
                .state
                .owner(tp)
                .is_some_and(|o| o.member == coordinator.member && o.epoch == epoch);
        if !still_ours {
            log::warn!("{tp}: lost before it could be handed over; nothing committed");
            return None;
        }
        let next = progress.next.load(Ordering::Acquire);
        let mut start = progress.committed.load(Ordering::Acquire);
        match progress.due() {
            None => start = next,
            Some(offset) => match self
                .offsets
                .commit_owned(
                    &self.config.group_id,
                    &coordinator.member,
                    &[(tp.clone(), offset, epoch)],
                )
                .await
            {
                Ok(()) => {
                    start = offset;
                    self.mirror(&[(tp.clone(), offset)]);
                }
                // The new owner then starts from the previous commit: redelivery, no loss.
                Err(e) => log::warn!("{tp}: commit before handoff failed: {e}"),
            },
        }
        let owner = OwnerValue {
            member: to.to_owned(),
            epoch: epoch + 1,
            start,
            by: Some(coordinator.member.clone()),
            refutes: Vec::new(),
        };
        match coordinator.write_owner(tp, owner).await {
            Ok(()) if to.is_empty() => log::info!("{tp}: released at offset {start}"),
            Ok(()) => log::info!("{tp}: handed over to {to} at offset {start}"),
            Err(e) => {
                log::warn!(
                    "{tp}: handoff to {to} failed; it moves after the session timeout instead: {e}"
                );
                return None;
            }
        }
        Some(epoch + 1)
    }

    /// Names the next owner of a partition this member owns but does not run,
    /// from its last valid commit.
    async fn pass_on(
        &self,
        coordinator: &Coordinator,
        tp: &TopicPartition,
        owner: &OwnerValue,
        to: &str,
    ) -> Option<i64> {
        let start = coordinator.state.committed(tp).unwrap_or(owner.start);
        let next = OwnerValue {
            member: to.to_owned(),
            epoch: owner.epoch + 1,
            start,
            by: Some(coordinator.member.clone()),
            refutes: Vec::new(),
        };
        match coordinator.write_owner(tp, next).await {
            Ok(()) => {
                let to = if to.is_empty() { "nobody" } else { to };
                log::info!("{tp}: passed on to {to} at offset {start} without running it");
                Some(owner.epoch + 1)
            }
            Err(e) => {
                log::warn!("{tp}: passing it on to {to} failed, will retry: {e}");
                None
            }
        }
    }

    /// Commits the progress of every partition that moved, if still ours.
    async fn commit(
        &self,
        coordinator: &Coordinator,
        running: &BTreeMap<TopicPartition, Running>,
    ) -> Result<(), OffsetError> {
        if !coordinator.lease.is_valid() {
            return Ok(());
        }
        let due: Vec<(TopicPartition, i64, i64, Arc<Progress>)> = running
            .iter()
            .filter(|(tp, r)| {
                coordinator
                    .state
                    .owner(tp)
                    .is_some_and(|o| o.member == coordinator.member && o.epoch == r.epoch)
            })
            .filter_map(|(tp, r)| {
                r.progress
                    .due()
                    .map(|next| (tp.clone(), next, r.epoch, Arc::clone(&r.progress)))
            })
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        let offsets: Vec<(TopicPartition, i64, i64)> = due
            .iter()
            .map(|(tp, next, epoch, _)| (tp.clone(), *next, *epoch))
            .collect();
        self.offsets
            .commit_owned(&self.config.group_id, &coordinator.member, &offsets)
            .await?;
        for (_, next, _, progress) in due {
            progress.committed.fetch_max(next, Ordering::AcqRel);
        }
        let committed: Vec<(TopicPartition, i64)> = offsets
            .into_iter()
            .map(|(tp, next, _)| (tp, next))
            .collect();
        self.mirror(&committed);
        Ok(())
    }

    /// Hands committed offsets to the copy in the broker's group offsets.
    fn mirror(&self, offsets: &[(TopicPartition, i64)]) {
        if let Some(b) = &self.broker_offsets {
            b.publish(offsets);
        }
    }

    /// Announces the leave, stops every partition after its record in flight,
    /// commits, hands each partition to its next owner, and removes the member.
    async fn leave(
        &self,
        coordinator: Coordinator,
        running: BTreeMap<TopicPartition, Running>,
        planner: &Planner<Instant>,
    ) {
        coordinator.announce_leaving().await;
        let target = coordinator.target_without_me();
        let deadline = Instant::now() + self.config.shutdown_commit_timeout;
        if coordinator.lease.is_valid() {
            for (tp, owner) in
                planner.left_behind(&coordinator.state, |tp| running.contains_key(tp))
            {
                let to = target.get(&tp).cloned().unwrap_or_default();
                self.pass_on(&coordinator, &tp, &owner, &to).await;
            }
        }
        let timeout = self.config.shutdown_commit_timeout;
        let handoffs = running.into_iter().map(|(tp, r)| {
            let to = target.get(&tp).cloned().unwrap_or_default();
            let coordinator = &coordinator;
            async move {
                let handoff = self.hand_over(coordinator, &tp, r, &to);
                if tokio::time::timeout_at(deadline, handoff).await.is_err() {
                    log::error!(
                        "{tp}: handoff did not finish within {timeout:?}; it moves after the session timeout, and records since the last commit are delivered again"
                    );
                }
            }
        });
        futures_util::future::join_all(handoffs).await;
        coordinator.leave().await;
    }
}

struct PartitionRunner {
    cluster: Cluster,
    config: ConsumerConfig,
    tp: TopicPartition,
    progress: Arc<Progress>,
    lease: Arc<Lease>,
    metrics: PartitionMetrics,
}

/// What a member reports about its group on `/metrics` and `/ready`.
struct GroupMetrics {
    members: metrics::Gauge,
    owned: metrics::Gauge,
    generation: metrics::Gauge,
    stalled: metrics::Gauge,
    last_members: Vec<String>,
    stalls: Stalls,
    /// Set while a partition this member owns makes no progress.
    ready: health::Condition,
}

impl GroupMetrics {
    fn new(group: &str, member: &str) -> Self {
        let labels = [("group", group)];
        Self {
            members: metrics::gauge(
                "eda_consumer_group_members",
                "Live members of the group, as this member sees them.",
                &labels,
            ),
            owned: metrics::gauge(
                "eda_consumer_owned_partitions",
                "Partitions this member is working on.",
                &labels,
            ),
            generation: metrics::gauge(
                "eda_consumer_group_generation",
                "Membership changes this member has seen since it joined; like Kafka's generation id, it moves at every rebalance.",
                &labels,
            ),
            stalled: metrics::gauge(
                "eda_consumer_stalled_partitions",
                "Partitions this member owns that have had no live task, or records waiting and no progress, for longer than the stall bound.",
                &labels,
            ),
            last_members: Vec::new(),
            stalls: Stalls::default(),
            ready: health::Condition::new(format!("consumer group {group} member {member}")),
        }
    }

    fn update(
        &mut self,
        coordinator: &Coordinator,
        running: &BTreeMap<TopicPartition, Running>,
        config: &ConsumerConfig,
    ) {
        // Runs at every reconcile tick: allocate only when membership changed.
        let members = coordinator.state.active_members();
        if !members
            .iter()
            .copied()
            .eq(self.last_members.iter().map(String::as_str))
        {
            self.generation.add(1);
            self.last_members = members.into_iter().map(str::to_owned).collect();
        }
        self.members.set(self.last_members.len() as i64);
        self.owned.set(running.len() as i64);

        let now = Instant::now();
        let me = coordinator.member.as_str();
        let state = &coordinator.state;
        self.stalls
            .keep(|tp| state.owner(tp).is_some_and(|o| o.member == me));
        let mut stalled = Vec::new();
        for tp in state.partitions_of(me) {
            let r = running.get(tp).filter(|r| !r.task.0.is_finished());
            let seen = r.map(|r| {
                let next = r.progress.next.load(Ordering::Acquire);
                let waiting = r.progress.high_watermark.load(Ordering::Acquire) > next;
                (next, waiting, r.progress.fetch_error())
            });
            if let Some(why) = self.stalls.observe(tp, seen, now, config.stall_after) {
                stalled.push(why);
            }
        }
        self.stalled.set(stalled.len() as i64);
        self.ready.set((!stalled.is_empty()).then(|| {
            format!(
                "no progress for {:?} on {}",
                config.stall_after,
                stalled.join(", ")
            )
        }));
    }
}

/// What a consumer reports per partition on `/metrics`.
struct PartitionMetrics {
    group: String,
    tp: TopicPartition,
    records: metrics::Counter,
    bytes: metrics::Counter,
    errors: metrics::Counter,
    latency: metrics::Histogram,
    lag: metrics::Gauge,
}

const LAG: &str = "eda_consumer_lag";

/// What a partition's handler did in one batch, added to the shared series (one
/// per topic) once per batch rather than with an atomic add per record.
#[derive(Debug, Default)]
struct Tally {
    records: u64,
    bytes: u64,
    latency: metrics::LocalHistogram,
}

impl PartitionMetrics {
    /// Counts a partition task that ended by itself and is started again.
    fn restarted(group: &str, tp: &TopicPartition) {
        metrics::counter(
            "eda_consumer_partition_restarts_total",
            "Partition tasks that ended by themselves (lease lapsed, fetcher stopped, handler panicked) and were started again from the last commit.",
            &[("group", group), ("topic", tp.topic.as_str())],
        )
        .inc();
    }

    /// Adds what `tally` counted, and empties it.
    fn add(&self, tally: &mut Tally) {
        let Tally {
            records,
            bytes,
            mut latency,
        } = std::mem::take(tally);
        if records > 0 {
            self.records.add(records);
            self.bytes.add(bytes);
        }
        self.latency.add(&mut latency);
    }

    fn new(group: &str, tp: &TopicPartition) -> Self {
        let labels = [("group", group), ("topic", tp.topic.as_str())];
        let partition = tp.partition.to_string();
        Self {
            group: group.to_owned(),
            tp: tp.clone(),
            records: metrics::counter(
                "eda_consumer_records_total",
                "Records the handler accepted.",
                &labels,
            ),
            bytes: metrics::counter(
                "eda_consumer_bytes_total",
                "Key and value bytes of records the handler accepted.",
                &labels,
            ),
            errors: metrics::counter(
                "eda_consumer_handler_errors_total",
                "Handler failures; the record is offered again after a backoff.",
                &labels,
            ),
            latency: metrics::histogram(
                "eda_consumer_handler_seconds",
                &HANDLER_SECONDS_HELP,
                &labels,
            ),
            lag: metrics::gauge(
                LAG,
                "High watermark minus committed offset, per owned partition.",
                &[
                    ("group", group),
                    ("topic", tp.topic.as_str()),
                    ("partition", &partition),
                ],
            ),
        }
    }
}

impl Drop for PartitionMetrics {
    /// A partition this member no longer runs is reported by its new owner.
    fn drop(&mut self) {
        let partition = self.tp.partition.to_string();
        metrics::remove(
            LAG,
            &[
                ("group", self.group.as_str()),
                ("topic", self.tp.topic.as_str()),
                ("partition", &partition),
            ],
        );
    }
}

impl PartitionRunner {
    /// Hands the partition's records to `handler` in order until stopped, or
    /// until the lease runs out or the fetcher stops; says which.
    async fn run<H: Handler>(
        self,
        handler: Arc<H>,
        mut stop: Shutdown,
        mut shutdown: Shutdown,
    ) -> RunnerExit {
        let start = self.progress.next.load(Ordering::Acquire);
        let mut next = start;
        let (tx, mut rx) = mpsc::channel::<Vec<FetchedRecord>>(1);
        let fetcher = Fetcher {
            cluster: self.cluster.clone(),
            config: self.config.fetch(),
            tp: self.tp.clone(),
            progress: Some(Arc::clone(&self.progress)),
            lag: Some(self.metrics.lag.clone()),
        };
        // Aborted with this task too, when the partition is fenced or the consumer dropped.
        let _fetch_task = AbortOnDrop(tokio::spawn(fetcher.run(start, tx, stop.clone())));
        // Handed from each message to the next rather than cloned for each: counting
        // an Arc up and down per record showed in the profile.
        let mut topic: Arc<str> = Arc::from(self.tp.topic.as_str());
        let mut tally = Tally::default();
        let mut clock = Stopwatch::new(Instant::now());

        loop {
            let batch = tokio::select! {
                batch = rx.recv() => match batch {
                    Some(b) => b,
                    None if stop.is_shutdown() || shutdown.is_shutdown() => return RunnerExit::Stopped,
                    None => return RunnerExit::FetchEnded,
                },
                () = stop.recv() => return RunnerExit::Stopped,
                () = shutdown.recv() => return RunnerExit::Stopped,
            };
            // Handler time starts now that the batch is in hand: waiting for it is
            // the fetcher's time.
            clock.restart(Instant::now());
            let mut lease_held_at = None;
            let exit = 'records: {
                for record in batch {
                    if stop.is_shutdown() || shutdown.is_shutdown() {
                        break 'records Some(RunnerExit::Stopped);
                    }
                    // A member whose lease ran out (a long pause, a lost broker) may
                    // have been replaced: it must not touch another record. Asked once
                    // per clock reading: a lease is only ever extended, so it still
                    // holds at a reading it held at.
                    let reading = clock.last_reading();
                    if lease_held_at != Some(reading) {
                        if !self.lease.is_valid_at(reading) {
                            log::warn!(
                                "{}: lease expired; not processing offset {}",
                                self.tp,
                                record.offset
                            );
                            break 'records Some(RunnerExit::LeaseLost);
                        }
                        lease_held_at = Some(reading);
                    }
                    let mut message = Message::new(topic, self.tp.partition, record);
                    let handled = self
                        .handle(&*handler, &mut message, &mut clock, &mut stop, &mut tally)
                        .await;
                    topic = message.topic;
                    if let Some(exit) = handled {
                        break 'records Some(exit);
                    }
                    // This task is the only writer: a plain store, not a
                    // read-modify-write, which cost as much as the rest of the
                    // record's bookkeeping.
                    if message.offset >= next {
                        next = message.offset + 1;
                        self.progress.next.store(next, Ordering::Release);
                    }
                }
                None
            };
            clock.close_run(Instant::now(), &mut tally.latency);
            self.metrics.add(&mut tally);
            if let Some(exit) = exit {
                return exit;
            }
        }
    }

    /// Offers `message` until the handler accepts it (`None`), or says why it
    /// stopped first: the stop signal, or the lease ran out during a call or
    /// while waiting to retry. A call still waiting when the lease runs out is
    /// dropped there, so a member cut off from the group never finishes a record
    /// that another member may have taken over by then.
    async fn handle<H: Handler>(
        &self,
        handler: &H,
        message: &mut Message,
        clock: &mut Stopwatch,
        stop: &mut Shutdown,
        tally: &mut Tally,
    ) -> Option<RunnerExit> {
        let mut backoff = Backoff::new(self.config.retry_backoff);
        loop {
            message.attempt = backoff.attempts() + 1;
            let mut waited_at = None;
            let outcome = {
                let mut call = pin!(handler.handle(message));
                // Made only for a call that waits: most finish on their first poll.
                let mut lease_end: Option<Pin<Box<tokio::time::Sleep>>> = None;
                poll_fn(|cx| {
                    if let Poll::Ready(outcome) = call.as_mut().poll(cx) {
                        return Poll::Ready(Some(outcome));
                    }
                    if waited_at.is_none() {
                        waited_at = Some(Instant::now());
                    }
                    loop {
                        let until = self.lease.valid_until();
                        let end = lease_end
                            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
                        if end.deadline() != until {
                            end.as_mut().reset(until);
                        }
                        if end.as_mut().poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                        if !self.lease.is_valid() {
                            return Poll::Ready(None);
                        }
                    }
                })
                .await
            };
            clock.finished(waited_at, &mut tally.latency);
            match outcome {
                Some(Ok(())) => {
                    tally.records += 1;
                    tally.bytes += (message.key.as_ref().map_or(0, Bytes::len)
                        + message.value.as_ref().map_or(0, Bytes::len))
                        as u64;
                    return None;
                }
                None => {
                    log::warn!(
                        "{}: lease expired while the handler worked on offset {}; the call was abandoned",
                        self.tp,
                        message.offset
                    );
                    return Some(RunnerExit::LeaseLost);
                }
                Some(Err(e)) => {
                    clock.close_run(Instant::now(), &mut tally.latency);
                    self.metrics.errors.inc();
                    let delay = backoff.next_delay();
                    log::warn!(
                        "handler failed on {}@{} (attempt {}), retrying in {delay:?}: {e}",
                        self.tp,
                        message.offset,
                        backoff.attempts()
                    );
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = stop.recv() => return Some(RunnerExit::Stopped),
                    }
                    // The backoff is not handler time.
                    clock.restart(Instant::now());
                    if !self.lease.is_valid_at(clock.last_reading()) {
                        return Some(RunnerExit::LeaseLost);
                    }
                }
            }
        }
    }
}

/// How many handler calls that finish without waiting share one clock reading.
/// It also bounds how many such calls can run on a reading older than the lease
/// check would like: Kafka's own consumer hands out up to 500 fetched records
/// (`max.poll.records`) without looking at its membership.
const QUICK_RUN: u32 = 16;

/// How long calls may take on average and still share a reading. Slower ones are
/// timed one by one: the clock costs them little, and the reading the lease is
/// checked against stays at most one call old.
const QUICK_CALL: Duration = Duration::from_micros(10);

/// The handler-latency metric's help, which says how the [`Stopwatch`] times.
static HANDLER_SECONDS_HELP: LazyLock<String> = LazyLock::new(|| {
    format!(
        "Time the handler took per record, successful or not; calls that finish without waiting in under {} µs are timed in runs of up to {QUICK_RUN}, each at the run's mean.",
        QUICK_CALL.as_micros()
    )
});

/// Times handler calls with as few clock readings as it can. A call that waits
/// (for the network, a lock, a timer) is timed on its own. Calls that finish on
/// their first poll are timed in runs of up to [`QUICK_RUN`], each placed in the
/// histogram at the run's mean, as long as that mean stays under [`QUICK_CALL`]:
/// reading the clock took as long as the rest of such a call's bookkeeping.
#[derive(Debug)]
struct Stopwatch {
    /// The latest clock reading: when the calls not timed yet began.
    mark: Instant,
    /// Calls since `mark` that finished without waiting.
    quick: u32,
    /// How many of them share a reading: [`QUICK_RUN`] while they are quick, 1
    /// once a run of them was not.
    run: u32,
}

impl Stopwatch {
    fn new(now: Instant) -> Self {
        Self {
            mark: now,
            quick: 0,
            run: QUICK_RUN,
        }
    }

    /// Starts timing again at `now`, after a time that was not the handler's.
    fn restart(&mut self, now: Instant) {
        debug_assert_eq!(self.quick, 0, "a run is closed before a pause");
        self.mark = now;
    }

    /// The latest clock reading, at most [`QUICK_RUN`] calls of under
    /// [`QUICK_CALL`] each on average old.
    fn last_reading(&self) -> Instant {
        self.mark
    }

    /// A call finished; `waited_at` is when it first waited, if it did.
    fn finished(&mut self, waited_at: Option<Instant>, latency: &mut metrics::LocalHistogram) {
        let Some(waited_at) = waited_at else {
            self.quick += 1;
            if self.quick >= self.run {
                self.close_run(Instant::now(), latency);
            }
            return;
        };
        // The quick calls before this one are taken to end when it first waited;
        // what it did before that is counted with them, a small share of a call
        // that waits.
        let started = if self.quick > 0 {
            self.close_run(waited_at, latency);
            waited_at
        } else {
            self.mark
        };
        let now = Instant::now();
        latency.observe(now.saturating_duration_since(started));
        self.mark = now;
    }

    /// Times the quick calls not timed yet as ending at `now`.
    fn close_run(&mut self, now: Instant, latency: &mut metrics::LocalHistogram) {
        if self.quick > 0 {
            let took = now.saturating_duration_since(self.mark);
            latency.observe_run(took, self.quick);
            self.run = if took <= QUICK_CALL * self.quick {
                QUICK_RUN
            } else {
                1
            };
        }
        self.mark = now;
        self.quick = 0;
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

    /// A stopwatch whose last reading was 10 s ago, and an empty histogram.
    fn read_ten_seconds_ago() -> (Instant, Stopwatch, metrics::LocalHistogram) {
        let start = Instant::now() - Duration::from_secs(10);
        (
            start,
            Stopwatch::new(start),
            metrics::LocalHistogram::default(),
        )
    }

    #[test]
    fn quick_calls_share_a_clock_reading() {
        let (start, mut clock, mut latency) = read_ten_seconds_ago();
        for _ in 1..QUICK_RUN {
            clock.finished(None, &mut latency);
        }
        assert_eq!(latency.count(), 0, "a run is timed when it is full");
        assert_eq!(clock.last_reading(), start);
        clock.finished(None, &mut latency);
        assert_eq!(latency.count(), u64::from(QUICK_RUN));
        assert!(clock.last_reading() > start);
        assert!(latency.sum() >= Duration::from_secs(10));
    }

    #[test]
    fn a_call_that_waits_is_timed_from_when_the_quick_ones_before_it_ended() {
        let (start, mut clock, mut latency) = read_ten_seconds_ago();
        clock.finished(None, &mut latency);
        clock.finished(None, &mut latency);
        clock.finished(Some(start + Duration::from_secs(4)), &mut latency);
        // The two quick calls: 4 s together. The one that waited: the other 6 s.
        assert_eq!(latency.count(), 3);
        let sum = latency.sum();
        assert!(sum >= Duration::from_secs(10) && sum < Duration::from_secs(11));

        // With no quick calls before it, a call is timed from the last reading.
        let before = clock.last_reading();
        let mut latency = metrics::LocalHistogram::default();
        clock.finished(Some(Instant::now()), &mut latency);
        assert_eq!(latency.count(), 1);
        assert!(clock.last_reading() >= before);
        clock.close_run(Instant::now(), &mut latency);
        assert_eq!(latency.count(), 1, "closing an empty run observes nothing");
    }

    #[test]
    fn calls_that_finish_without_waiting_but_slowly_are_timed_one_by_one() {
        let (_, mut clock, mut latency) = read_ten_seconds_ago();
        for _ in 0..QUICK_RUN {
            clock.finished(None, &mut latency);
        }
        // 16 calls in 10 s: far slower than QUICK_CALL, so the next is timed alone.
        assert_eq!(latency.count(), u64::from(QUICK_RUN));
        // A mark ahead of the clock makes the next call take no time: measured
        // quick, it lets runs grow back.
        clock.restart(Instant::now() + Duration::from_secs(60));
        clock.finished(None, &mut latency);
        assert_eq!(latency.count(), u64::from(QUICK_RUN) + 1, "timed at once");
        for _ in 1..QUICK_RUN {
            clock.finished(None, &mut latency);
        }
        assert_eq!(latency.count(), u64::from(QUICK_RUN) + 1, "a run again");
        clock.finished(None, &mut latency);
        assert_eq!(latency.count(), 2 * u64::from(QUICK_RUN) + 1);
    }

    #[test]
    fn the_latency_help_names_the_stopwatch_limits() {
        assert!(HANDLER_SECONDS_HELP.contains("in under 10 µs are timed in runs of up to 16,"));
    }

    #[test]
    fn progress_is_due_only_after_moving() {
        let p = Progress::new(10);
        assert_eq!(p.due(), None);
        p.next.store(12, Ordering::Release);
        assert_eq!(p.due(), Some(12));
        p.committed.store(12, Ordering::Release);
        assert_eq!(p.due(), None);
    }
}
