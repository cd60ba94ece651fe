//! One member's side of the group protocol: reads the coordination log into a
//! [`GroupState`], tails it, writes heartbeats and owner records, and renews the
//! member's [`Lease`] as its heartbeats are acknowledged and read back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::lease::Lease;
use super::log::{CoordinationLog, KafkaLog};
use super::offsets::OffsetError;
use super::protocol::{Key, MemberValue, OwnerValue};
use super::state::GroupState;
use super::{GroupConfig, LOG_PARTITION};
use crate::kafka::codec::FetchedRecord;
use crate::kafka::conn::Cluster;
use crate::kafka::fetch::{LogCursor, Read};
use crate::kafka::produce::{ProduceError, ProducerRecord};
use crate::kafka::task::AbortOnDrop;
use crate::kafka::topic::TopicPartition;
use crate::shutdown::Shutdown;

/// One member's view of its group: the state read from the log, and the means
/// to write to it.
pub(crate) struct Coordinator<L: CoordinationLog = KafkaLog> {
    pub(crate) member: String,
    pub(crate) state: GroupState,
    pub(crate) lease: Arc<Lease>,
    config: GroupConfig,
    group_log: L,
    log: mpsc::Receiver<Vec<FetchedRecord>>,
    /// Where the state stands in the log, and owner records written ahead of it.
    cursor: Mutex<LogCursor<OwnRecord>>,
    leaving: Arc<AtomicBool>,
    /// The log no longer holds what the state was built from (it was truncated):
    /// the state is read again before it is acted on.
    diverged: bool,
    shutdown: Shutdown,
    _tail: AbortOnDrop,
    heartbeat: Option<AbortOnDrop>,
    /// Published after every read, for the partitions' exactly-once runners.
    view: watch::Sender<TransactionView>,
}

/// What an exactly-once partition runner needs of the coordination log: how
/// far this member's state has read it, and the offsets committed in
/// transactions up to there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TransactionView {
    /// The next offset of the log to read.
    pub(crate) read_through: i64,
    /// [`GroupState::transaction_committed`] of every partition.
    pub(crate) commits: BTreeMap<TopicPartition, i64>,
}

/// A state read from the whole coordination log, and the tail that follows it.
struct Reading {
    state: GroupState,
    records: usize,
    high_watermark: i64,
    log: mpsc::Receiver<Vec<FetchedRecord>>,
    tail: AbortOnDrop,
}

/// Reads the coordination log from its start into a state and starts tailing it.
async fn read_log<L: CoordinationLog>(
    group_log: &L,
    config: &GroupConfig,
    shutdown: Shutdown,
) -> Result<Reading, OffsetError> {
    let mut state = GroupState::new(&config.group_id);
    let (records, high_watermark) = group_log.read_all().await?;
    state.apply_all(&records);
    let (tx, log) = mpsc::channel(16);
    let tail = AbortOnDrop(tokio::spawn(group_log.tail(high_watermark, tx, shutdown)));
    Ok(Reading {
        state,
        records: records.len(),
        high_watermark,
        log,
        tail,
    })
}

impl Coordinator {
    /// Announces this member in the coordination topic on `cluster`, reads the
    /// topic, starts tailing it and heartbeating.
    pub(crate) async fn join(
        cluster: Cluster,
        config: GroupConfig,
        member: String,
        shutdown: Shutdown,
    ) -> Result<Self, OffsetError> {
        let group_log = KafkaLog::new(
            cluster,
            &config.offsets_topic,
            config.session_timeout / 3,
            config.fetch.clone(),
        );
        Self::join_log(group_log, config, member, shutdown).await
    }
}

impl<L: CoordinationLog> Coordinator<L> {
    /// Announces this member in `group_log`, reads it, starts tailing it and
    /// heartbeating.
    pub(crate) async fn join_log(
        group_log: L,
        config: GroupConfig,
        member: String,
        shutdown: Shutdown,
    ) -> Result<Self, OffsetError> {
        // The member record goes first, so the log read next already holds it: the
        // member can act on the first reading instead of waiting to read itself
        // back, which on brokers that re-check a held fetch only now and then
        // (nisshi) costs most of a fetch wait.
        let lease = Arc::new(Lease::new());
        let record = member_record(
            &config,
            &member,
            &subscription(&group_log, &config).await,
            false,
        );
        let sent = Instant::now();
        let first_beat = match async { group_log.append(record?).await }.await {
            Ok(offset) => {
                lease.grant(offset, sent + lease_span(&config));
                sent + config.heartbeat_interval
            }
            Err(e) => {
                log::warn!("announcing member {member} failed; the heartbeat tries again: {e}");
                sent
            }
        };

        let reading = read_log(&group_log, &config, shutdown.clone()).await?;
        lease.read_through(reading.high_watermark);
        let mut coordinator = Self {
            member,
            state: reading.state,
            lease,
            config,
            group_log,
            log: reading.log,
            cursor: Mutex::new(LogCursor::at(reading.high_watermark)),
            leaving: Arc::new(AtomicBool::new(false)),
            diverged: false,
            shutdown,
            _tail: reading.tail,
            heartbeat: None,
            view: watch::channel(TransactionView::default()).0,
        };
        coordinator.publish_view();
        coordinator.start_heartbeat(first_beat);
        log::info!(
            "member {} joining group {} ({} coordination records read)",
            coordinator.member,
            coordinator.config.group_id,
            reading.records
        );
        Ok(coordinator)
    }

    /// Starts the heartbeat again if its task ended (it loops until dropped,
    /// so only a panic ends it); whether it had to. Without it the lease lapses
    /// and the group declares this member dead while it still runs.
    pub(crate) fn supervise(&mut self) -> bool {
        let ended = self.heartbeat.as_ref().is_some_and(|h| h.0.is_finished());
        if ended {
            log::error!(
                "the heartbeat of member {} ended unexpectedly; starting it again",
                self.member
            );
            self.start_heartbeat(Instant::now());
        }
        ended
    }

    fn start_heartbeat(&mut self, first: Instant) {
        let beat = Heartbeat {
            config: self.config.clone(),
            group_log: self.group_log.clone(),
            member: self.member.clone(),
            lease: Arc::clone(&self.lease),
            leaving: Arc::clone(&self.leaving),
        };
        self.heartbeat = Some(AbortOnDrop(tokio::spawn(beat.run(first))));
    }

    /// The next records of the log; `None` once the tail stopped (shutdown).
    pub(crate) async fn next_records(&mut self) -> Option<Vec<FetchedRecord>> {
        self.log.recv().await
    }

    /// Applies records of the log, skipping those applied already when they were
    /// acknowledged; whether any was one of this group's.
    pub(crate) fn apply(&mut self, records: &[FetchedRecord]) -> bool {
        if self.diverged {
            return false;
        }
        let cursor = self.cursor.get_mut();
        let mut ours = false;
        for r in records {
            let same = |own: &OwnRecord| {
                r.key.as_deref() == Some(&own.key[..]) && r.value.as_deref() == own.value.as_deref()
            };
            match cursor.read(r.offset, same) {
                Read::Fresh => ours |= self.state.apply_read(r),
                Read::Applied => {}
                Read::Diverged => {
                    log::error!(
                        "coordination log {}/{LOG_PARTITION} no longer holds what group {} was read from (at offset {}; truncated after a failover or recreated); reading it again",
                        self.config.offsets_topic,
                        self.config.group_id,
                        r.offset
                    );
                    self.diverged = true;
                    return true;
                }
            }
        }
        let caught_up = self.catch_up();
        self.lease.read_through(self.cursor.get_mut().next());
        self.publish_view();
        ours | caught_up
    }

    /// Where the state has read to, with the transactions' commits there.
    pub(crate) fn transaction_view(&self) -> watch::Receiver<TransactionView> {
        self.view.subscribe()
    }

    fn publish_view(&mut self) {
        let read_through = self.cursor.get_mut().next();
        let commits = self.state.transaction_commits();
        self.view.send_if_modified(|view| {
            if view.read_through == read_through && &view.commits == commits {
                return false;
            }
            view.read_through = read_through;
            view.commits.clone_from(commits);
            true
        });
    }

    /// Applies the owner records this member wrote that directly follow what the
    /// state has read ([`LogCursor`]); whether there were any.
    pub(crate) fn catch_up(&mut self) -> bool {
        let ready = self.cursor.get_mut().ready();
        for (offset, r) in &ready {
            self.state
                .apply(*offset, Some(&r.key), r.value.as_deref(), None);
        }
        !ready.is_empty()
    }

    /// Whether the state must be read again before it is acted on.
    pub(crate) fn is_diverged(&self) -> bool {
        self.diverged
    }

    /// Reads the coordination log again from its start, after it no longer held
    /// what the state was built from. Owner records written ahead of the old
    /// state are dropped: the log says whether they landed.
    pub(crate) async fn rebuild(&mut self) -> Result<(), OffsetError> {
        let reading = read_log(&self.group_log, &self.config, self.shutdown.clone()).await?;
        self.state = reading.state;
        self.log = reading.log;
        self._tail = reading.tail;
        *self.cursor.get_mut() = LogCursor::at(reading.high_watermark);
        self.lease.read_through(reading.high_watermark);
        self.diverged = false;
        self.publish_view();
        log::warn!(
            "group {} read again from {} coordination records",
            self.config.group_id,
            reading.records
        );
        Ok(())
    }

    /// Whether this member's own record is in the state yet.
    pub(crate) fn has_joined(&self) -> bool {
        self.state.member(&self.member).is_some()
    }

    /// Writes an owner record for `tp`. It counts at once if acknowledged right
    /// after what the state has read, unless it is a claim over another member:
    /// whether that counts depends on log time where it lands (the owner must be
    /// dead there), which only reading it back tells.
    pub(crate) async fn write_owner(
        &self,
        tp: &TopicPartition,
        owner: OwnerValue,
    ) -> Result<(), ProduceError> {
        let early = self.state.settled_by_writer(tp, &self.member);
        let key = Key::Owner {
            group: self.config.group_id.clone(),
            topic: tp.topic.clone(),
            partition: tp.partition,
        }
        .encode();
        let record = ProducerRecord::new(&self.config.offsets_topic)
            .partition(LOG_PARTITION)
            .key(key.clone())
            .json(&owner)?;
        let value = record.value.clone();
        let offset = self.group_log.append(record).await?;
        if early {
            self.cursor
                .lock()
                .acknowledged(offset, OwnRecord { key, value });
        }
        Ok(())
    }

    /// Announces that this member is leaving: it takes nothing new and hands over
    /// what it has.
    pub(crate) async fn announce_leaving(&self) {
        self.leaving.store(true, Ordering::Release);
        let record = member_record(
            &self.config,
            &self.member,
            &subscription(&self.group_log, &self.config).await,
            true,
        );
        if let Err(e) = async { self.group_log.append(record?).await }.await {
            log::warn!(
                "announcing the leave failed; the group will notice the session timeout instead: {e}"
            );
        }
    }

    /// Stops heartbeating and deletes this member's record.
    pub(crate) async fn leave(mut self) {
        self.heartbeat = None;
        let key = Key::Member {
            group: self.config.group_id.clone(),
            member: self.member.clone(),
        };
        let tombstone = ProducerRecord::new(&self.config.offsets_topic)
            .partition(LOG_PARTITION)
            .key(key.encode());
        if let Err(e) = self.group_log.append(tombstone).await {
            log::warn!("removing the member record failed: {e}");
        }
        self.group_log.close().await;
    }

    /// The target assignment as if this member had left already.
    pub(crate) fn target_without_me(&self) -> BTreeMap<TopicPartition, String> {
        let mut state = self.state.clone();
        let key = Key::Member {
            group: self.config.group_id.clone(),
            member: self.member.clone(),
        };
        // Member records do not depend on their offset.
        state.apply(i64::MAX, Some(&key.encode()), None, None);
        state.target()
    }
}

/// An owner record as written, to apply once the state reaches its offset.
#[derive(Debug, Clone)]
struct OwnRecord {
    key: Vec<u8>,
    value: Option<Vec<u8>>,
}

/// How long an acknowledged heartbeat keeps the lease: others call a member dead
/// one session timeout after its record; the lease ends well before, so a member
/// stops before anyone takes over.
fn lease_span(config: &GroupConfig) -> Duration {
    config.session_timeout * 2 / 3
}

/// The subscription as this member sees it: each topic with its partition count.
async fn subscription<L: CoordinationLog>(
    group_log: &L,
    config: &GroupConfig,
) -> BTreeMap<String, i32> {
    let mut topics = BTreeMap::new();
    for topic in &config.topics {
        match group_log.partition_count(topic).await {
            Ok(n) => {
                topics.insert(topic.clone(), n);
            }
            Err(e) => log::warn!("partition count of {topic} unknown: {e}"),
        }
    }
    topics
}

fn member_record(
    config: &GroupConfig,
    member: &str,
    topics: &BTreeMap<String, i32>,
    leaving: bool,
) -> Result<ProducerRecord, ProduceError> {
    let key = Key::Member {
        group: config.group_id.clone(),
        member: member.to_owned(),
    };
    let value = MemberValue {
        topics: topics.clone(),
        session_timeout_ms: config.session_timeout.as_millis() as i64,
        leaving,
    };
    ProducerRecord::new(&config.offsets_topic)
        .partition(LOG_PARTITION)
        .key(key.encode())
        .json(&value)
}

/// Writes the member record every heartbeat interval and renews the lease with
/// each acknowledgement.
struct Heartbeat<L> {
    config: GroupConfig,
    group_log: L,
    member: String,
    lease: Arc<Lease>,
    leaving: Arc<AtomicBool>,
}

impl<L: CoordinationLog> Heartbeat<L> {
    async fn run(self, first: Instant) {
        let mut ticker = tokio::time::interval_at(first, self.config.heartbeat_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let lease_span = lease_span(&self.config);
        loop {
            ticker.tick().await;
            let topics = subscription(&self.group_log, &self.config).await;
            let record = member_record(
                &self.config,
                &self.member,
                &topics,
                self.leaving.load(Ordering::Acquire),
            );
            let sent = Instant::now();
            match async { self.group_log.append(record?).await }.await {
                Ok(offset) => self.lease.grant(offset, sent + lease_span),
                Err(e) => log::warn!("heartbeat of {} failed: {e}", self.member),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The coordinator over an in-memory log, on tokio's paused clock: what a
    //! member writes, when its lease holds, and how handoffs, claims and a
    //! truncated log come out, each the same on every run.

    use super::super::log::memory::MemoryLog;
    use super::*;
    use crate::kafka::fetch::FetchConfig;
    use crate::shutdown::ShutdownTrigger;

    fn config() -> GroupConfig {
        GroupConfig {
            group_id: "g".into(),
            topics: vec!["t".into()],
            offsets_topic: "__eda_offsets".into(),
            session_timeout: Duration::from_secs(3),
            heartbeat_interval: Duration::from_secs(1),
            fetch: FetchConfig::default(),
        }
    }

    fn tp() -> TopicPartition {
        TopicPartition::new("t", 0)
    }

    fn owner(member: &str, epoch: i64, by: &str) -> OwnerValue {
        OwnerValue {
            member: Some(member.into()),
            epoch,
            start: 0,
            by: Some(by.into()),
            refutes: Vec::new(),
        }
    }

    async fn join(log: &MemoryLog, member: &str, shutdown: &Shutdown) -> Coordinator<MemoryLog> {
        Coordinator::join_log(log.clone(), config(), member.into(), shutdown.clone())
            .await
            .expect("an in-memory log always reads")
    }

    /// Applies whatever the tail has delivered, until it is quiet.
    async fn read_on(c: &mut Coordinator<MemoryLog>) {
        while let Ok(Some(records)) =
            tokio::time::timeout(Duration::from_millis(1), c.next_records()).await
        {
            c.apply(&records);
            if c.is_diverged() {
                return;
            }
        }
    }

    fn owner_of(c: &Coordinator<MemoryLog>) -> Option<(String, i64)> {
        c.state
            .owner(&tp())
            .map(|o| (o.member.clone().unwrap_or_default(), o.epoch))
    }

    #[tokio::test(start_paused = true)]
    async fn a_member_announces_itself_first_and_holds_a_lease_once_that_is_read() {
        let (_stop, shutdown) = ShutdownTrigger::new();
        let log = MemoryLog::default();
        let a = join(&log, "a", &shutdown).await;
        let first = log.records()[0].key.clone().unwrap();
        assert_eq!(
            Key::decode(&first),
            Some(Key::Member {
                group: "g".into(),
                member: "a".into()
            })
        );
        assert!(a.has_joined());
        assert!(a.lease.is_valid());
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeats_extend_the_lease_only_once_read_back_and_never_when_they_fail() {
        let (_stop, shutdown) = ShutdownTrigger::new();
        let log = MemoryLog::default();
        let mut a = join(&log, "a", &shutdown).await;
        // Acknowledged heartbeats that the state has not read do not count: a
        // member that stopped reading the log (a stuck tail) is fenced.
        tokio::time::sleep(lease_span(&config()) + Duration::from_millis(10)).await;
        assert!(log.records().len() >= 3, "heartbeats were written");
        assert!(!a.lease.is_valid(), "the lease outlived what was read");
        read_on(&mut a).await;
        assert!(a.lease.is_valid(), "reading the heartbeats back renews it");

        // Out of reach of the log, the lease runs out two thirds into the
        // session timeout: before any other member may take over.
        log.set_failing(true);
        tokio::time::sleep(lease_span(&config())).await;
        read_on(&mut a).await;
        assert!(!a.lease.is_valid());
        assert!(lease_span(&config()) < config().session_timeout);
    }

    #[tokio::test(start_paused = true)]
    async fn a_handoff_counts_at_once_for_the_writer_and_when_read_for_the_next_owner() {
        let (_stop, shutdown) = ShutdownTrigger::new();
        let log = MemoryLog::default();
        let mut a = join(&log, "a", &shutdown).await;
        let mut b = join(&log, "b", &shutdown).await;
        read_on(&mut a).await;

        // Nobody owns the partition: a's claim is settled where it lands.
        a.write_owner(&tp(), owner("a", 1, "a")).await.unwrap();
        assert!(a.catch_up(), "applied on its acknowledgement");
        assert_eq!(owner_of(&a), Some(("a".into(), 1)));

        a.write_owner(&tp(), owner("b", 2, "a")).await.unwrap();
        a.catch_up();
        assert_eq!(owner_of(&a), Some(("b".into(), 2)));
        read_on(&mut b).await;
        assert_eq!(owner_of(&b), Some(("b".into(), 2)));
        // Reading its own records back later changes nothing for a.
        read_on(&mut a).await;
        assert_eq!(owner_of(&a), Some(("b".into(), 2)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_claim_counts_only_where_the_owner_it_replaces_is_dead_in_log_time() {
        let (_stop, shutdown) = ShutdownTrigger::new();
        let log = MemoryLog::default();
        let a = join(&log, "a", &shutdown).await;
        a.write_owner(&tp(), owner("a", 1, "a")).await.unwrap();
        let mut b = join(&log, "b", &shutdown).await;
        read_on(&mut b).await;
        assert_eq!(owner_of(&b), Some(("a".into(), 1)));

        // a is alive where the claim lands: it does not count, and b, which
        // could not know that when it wrote, learns it by reading it back.
        log.set_log_time(1_000);
        b.write_owner(&tp(), owner("b", 2, "b")).await.unwrap();
        assert!(
            !b.catch_up(),
            "a claim over another member waits to be read"
        );
        read_on(&mut b).await;
        assert_eq!(owner_of(&b), Some(("a".into(), 1)));

        // a stops (its heartbeat with it); a session timeout of log time later
        // it is dead, and the same claim counts.
        drop(a);
        log.set_log_time(10_000);
        b.write_owner(&tp(), owner("b", 2, "b")).await.unwrap();
        read_on(&mut b).await;
        assert_eq!(owner_of(&b), Some(("b".into(), 2)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_log_that_lost_an_own_record_is_read_again() {
        let (_stop, shutdown) = ShutdownTrigger::new();
        let log = MemoryLog::default();
        let mut a = join(&log, "a", &shutdown).await;
        a.write_owner(&tp(), owner("a", 1, "a")).await.unwrap();
        a.catch_up();
        assert_eq!(owner_of(&a), Some(("a".into(), 1)));

        // A failover drops the owner record, and another takes its offset.
        log.truncate(1);
        log.append(member_record(&config(), "x", &BTreeMap::new(), false).unwrap())
            .await
            .unwrap();
        read_on(&mut a).await;
        assert!(
            a.is_diverged(),
            "the state is no longer a function of the log"
        );
        a.rebuild().await.unwrap();
        assert!(!a.is_diverged());
        assert_eq!(owner_of(&a), None, "the lost claim is gone from the state");
        assert!(a.state.member("x").is_some());
    }
}
