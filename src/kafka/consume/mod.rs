//! The consumer: a member of a consumer group, with fetch loops per partition,
//! an async handler, and committed offsets.
//!
//! Instances with the same `group_id` share the partitions of their topics; each
//! partition is processed by one live instance at a time, and moves when an
//! instance joins, leaves or dies (see [`group`](crate::kafka::group) for the protocol).
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

mod config;
mod exactly_once;
mod handler;
mod metrics;
mod runner;
#[cfg(test)]
mod runner_sim;
mod stopwatch;

pub use self::config::{ConsumerConfig, ProcessingGuarantee, handler_budget};
pub use self::handler::{FnHandler, Handler, HandlerError, Poison, handler_fn};
pub use self::runner::DeadlinePassed;
use crate::kafka::fix::Fix;

use self::exactly_once::{FailedAttempts, TransactionalRunner};
use self::metrics::{GroupMetrics, PartitionMetrics};
use self::runner::{PartitionRunner, Running};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use crate::kafka::admin::{Admin, AdminError};
use crate::kafka::backoff::sleep_until_or_never;
use crate::kafka::conn::{Cluster, ClusterError};
use crate::kafka::fetch::{Progress, reset_offset};
use crate::kafka::group::broker_offsets::BrokerOffsets;
use crate::kafka::group::offsets::{OffsetError, OffsetStore, OwnedCommit, offsets_topic_spec};
use crate::kafka::group::planner::{Handoff, PassOn, Plan, Planner, Start};
use crate::kafka::group::protocol::OwnerValue;
use crate::kafka::group::{Coordinator, MemberId};
use crate::kafka::produce::{ProduceError, Producer, ProducerConfig, transactions_supported};
use crate::kafka::task::AbortOnDrop;
use crate::kafka::topic::TopicPartition;
use crate::shutdown::{Shutdown, ShutdownTrigger};

/// Errors that stop a consumer.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// No topic to consume was given.
    #[error("the consumer needs at least one topic")]
    NoTopics,
    /// No group id was given.
    #[error("the consumer needs a group id")]
    NoGroup,
    /// The cluster could not be reached, or a topic is missing.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The coordination topic could not be created or checked.
    #[error("preparing the offsets topic failed: {0}")]
    Admin(#[from] AdminError),
    /// Committed offsets could not be read or written.
    #[error(transparent)]
    Offsets(#[from] OffsetError),
    /// An owner record could not be written.
    #[error("writing a partition's owner record failed: {0}")]
    Claim(#[from] ProduceError),
    /// The coordination topic is stamped by producers' clocks, not the broker's.
    #[error(
        "the coordination topic {topic} has message.timestamp.type={found}, so members' clocks would decide who is alive; it must be LogAppendTime"
    )]
    CreateTimeCoordination {
        /// The coordination topic.
        topic: String,
        /// Its `message.timestamp.type`.
        found: String,
    },
}

impl ConsumerError {
    /// What would clear this error, if the failure says.
    pub fn fix(&self) -> Option<Fix> {
        match self {
            Self::NoGroup => Some(Fix::GroupId),
            Self::CreateTimeCoordination { .. } => Some(Fix::LogAppendTime),
            Self::Cluster(e) => e.fix(),
            Self::Admin(e) => e.fix(),
            Self::Offsets(e) => e.fix(),
            Self::Claim(e) => e.fix(),
            _ => None,
        }
    }
}

/// Checks that the broker stamps the coordination topic's records
/// (`LogAppendTime`): liveness is measured in those timestamps, and a member
/// whose clock runs ahead would otherwise make every other member look dead.
async fn check_timestamps(admin: &Admin, topic: &str) -> Result<(), ConsumerError> {
    let (name, wanted) = crate::kafka::group::offsets::TIMESTAMP_TYPE;
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
    /// Under exactly-once, failed attempts of records not yet committed.
    failed: FailedAttempts,
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
        let mut config = config;
        if config.processing_guarantee == ProcessingGuarantee::ExactlyOnce {
            match transactions_supported(cluster.config()).await {
                Ok(true) => {}
                Ok(false) => {
                    log::warn!(
                        "group {}: the cluster does not offer transactions; processing is at-least-once, so a record handled again after a crash writes its output again",
                        config.group_id
                    );
                    config.processing_guarantee = ProcessingGuarantee::AtLeastOnce;
                }
                Err(e) => log::warn!(
                    "group {}: could not ask the cluster whether it offers transactions ({e}); processing exactly-once",
                    config.group_id
                ),
            }
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
        let member_id = config
            .member_id
            .clone()
            .unwrap_or_else(MemberId::generate)
            .to_string();
        let broker_offsets = config
            .broker_offsets
            .then(|| BrokerOffsets::start(cluster.config().clone(), config.group_id.clone()));
        Ok(Self {
            cluster,
            config,
            offsets,
            member_id,
            broker_offsets,
            failed: FailedAttempts::default(),
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
                self.config.group(),
                self.member_id.clone(),
                shutdown.clone(),
            )
            .await
            {
                Ok(c) => break c,
                Err(OffsetError::Read(e)) if e.is_retriable() => {
                    log::warn!(
                        "joining group {} failed, retrying: {e}",
                        self.config.group_id
                    );
                    tokio::select! {
                        () = tokio::time::sleep(self.config.retry_backoff.max) => {}
                        () = shutdown.recv() => return Ok(()),
                    }
                }
                Err(e) => return Err(e.into()),
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
                        crate::metrics::task_restarted("consumer heartbeat");
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
                        log::warn!("reading the coordination log again failed, will retry: {e}");
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

    /// Whether partitions are processed in transactions.
    fn exactly_once(&self) -> bool {
        self.config.processing_guarantee == ProcessingGuarantee::ExactlyOnce
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
        let handoffs = hand_over.into_iter().filter_map(|Handoff { tp, to }| {
            let r = running.remove(&tp)?;
            Some(async move {
                let epoch = self.hand_over(group, &tp, r, to.as_deref()).await;
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

        for PassOn { tp, owner, to } in pass_on {
            if let Some(epoch) = self.pass_on(group, &tp, &owner, to.as_deref()).await {
                planner.handed(tp, epoch);
            }
        }

        for Start { tp, epoch, offset } in start {
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
                    log::info!("{tp}: {me} wrote its claim (epoch {epoch}, from offset {start})");
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
            member: Some(coordinator.member.clone()),
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
            io: Arc::new(self.cluster.clone()),
            metrics: PartitionMetrics::new(&self.config.group_id, &tp),
            config: self.config.clone(),
            tp,
            progress: Arc::clone(&progress),
            lease: Arc::clone(&coordinator.lease),
        };
        let handler = Arc::clone(handler);
        let task = AbortOnDrop(if self.exactly_once() {
            let runner = TransactionalRunner {
                runner,
                member: coordinator.member.clone(),
                epoch,
                view: coordinator.transaction_view(),
                failed: self.failed.clone(),
            };
            tokio::spawn(runner.run(handler, stop_signal, shutdown.clone()))
        } else {
            tokio::spawn(runner.run(handler, stop_signal, shutdown.clone()))
        });
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
        to: Option<&str>,
    ) -> Option<i64> {
        let epoch = r.epoch;
        let progress = r.finish().await;
        let still_ours = coordinator.lease.is_valid()
            && coordinator
                .state
                .owner(tp)
                .is_some_and(|o| o.is(&coordinator.member) && o.epoch == epoch);
        if !still_ours {
            log::warn!("{tp}: lost before it could be handed over; nothing committed");
            return None;
        }
        let mut start = progress.committed.load(Ordering::Acquire);
        if self.exactly_once() {
            // The task committed its last transaction as it stopped; what it
            // handled after that has no output, and is the next owner's. A
            // task stopped while it still fenced never read how far the last
            // transaction got: the group state knows.
            if let Some(committed) = coordinator.state.transaction_committed(tp) {
                start = start.max(committed);
            }
            self.mirror(&[(tp.clone(), start)]);
        } else {
            start = self
                .commit_before_handoff(coordinator, tp, epoch, &progress, start)
                .await;
        }
        let owner = OwnerValue {
            member: to.map(str::to_owned),
            epoch: epoch + 1,
            start,
            by: Some(coordinator.member.clone()),
            refutes: Vec::new(),
        };
        let to = to.unwrap_or("nobody");
        match coordinator.write_owner(tp, owner).await {
            Ok(()) if to == "nobody" => log::info!("{tp}: released at offset {start}"),
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

    /// Commits what the task handled before a handoff under at-least-once;
    /// where the next owner starts: the commit (where the task got to, when
    /// nothing was left to commit), or `committed` if it failed.
    async fn commit_before_handoff(
        &self,
        coordinator: &Coordinator,
        tp: &TopicPartition,
        epoch: i64,
        progress: &Progress,
        committed: i64,
    ) -> i64 {
        let Some(offset) = progress.due() else {
            return progress.settled(progress.next());
        };
        let commit = OwnedCommit {
            tp: tp.clone(),
            offset,
            epoch,
        };
        match self
            .offsets
            .commit_owned(&self.config.group_id, &coordinator.member, &[commit])
            .await
        {
            Ok(()) => {
                self.mirror(&[(tp.clone(), offset)]);
                offset
            }
            // The new owner then starts from the previous commit: redelivery, no loss.
            Err(e) => {
                log::warn!("{tp}: commit before handoff failed: {e}");
                committed
            }
        }
    }

    /// Names the next owner of a partition this member owns but does not run,
    /// from its last valid commit.
    async fn pass_on(
        &self,
        coordinator: &Coordinator,
        tp: &TopicPartition,
        owner: &OwnerValue,
        to: Option<&str>,
    ) -> Option<i64> {
        let start = coordinator.state.committed(tp).unwrap_or(owner.start);
        let next = OwnerValue {
            member: to.map(str::to_owned),
            epoch: owner.epoch + 1,
            start,
            by: Some(coordinator.member.clone()),
            refutes: Vec::new(),
        };
        match coordinator.write_owner(tp, next).await {
            Ok(()) => {
                let to = to.unwrap_or("nobody");
                log::info!("{tp}: passed on to {to} at offset {start} without running it");
                Some(owner.epoch + 1)
            }
            Err(e) => {
                log::warn!(
                    "{tp}: passing it on to {} failed, will retry: {e}",
                    to.unwrap_or("nobody")
                );
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
        if self.exactly_once() {
            // The partitions' transactions commit; Kafka's tools still get a copy.
            let committed: Vec<(TopicPartition, i64)> = running
                .iter()
                .map(|(tp, r)| (tp.clone(), r.progress.committed.load(Ordering::Acquire)))
                .collect();
            self.mirror(&committed);
            return Ok(());
        }
        let due: Vec<(TopicPartition, i64, i64, Arc<Progress>)> = running
            .iter()
            .filter(|(tp, r)| {
                coordinator
                    .state
                    .owner(tp)
                    .is_some_and(|o| o.is(&coordinator.member) && o.epoch == r.epoch)
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
        let offsets: Vec<OwnedCommit> = due
            .iter()
            .map(|(tp, next, epoch, _)| OwnedCommit {
                tp: tp.clone(),
                offset: *next,
                epoch: *epoch,
            })
            .collect();
        self.offsets
            .commit_owned(&self.config.group_id, &coordinator.member, &offsets)
            .await?;
        for (_, next, _, progress) in due {
            progress.committed.fetch_max(next, Ordering::AcqRel);
        }
        let committed: Vec<(TopicPartition, i64)> =
            offsets.into_iter().map(|c| (c.tp, c.offset)).collect();
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
                let to = target.get(&tp).map(String::as_str);
                self.pass_on(&coordinator, &tp, &owner, to).await;
            }
        }
        let timeout = self.config.shutdown_commit_timeout;
        let handoffs = running.into_iter().map(|(tp, r)| {
            let to = target.get(&tp).cloned();
            let coordinator = &coordinator;
            async move {
                let handoff = self.hand_over(coordinator, &tp, r, to.as_deref());
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
