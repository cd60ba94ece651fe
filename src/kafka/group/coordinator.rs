//! One member's side of the group protocol: reads the coordination log into a
//! [`GroupState`], tails it, writes heartbeats and owner records, and renews the
//! member's [`Lease`] as its heartbeats are acknowledged and read back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::lease::Lease;
use super::offsets::OffsetError;
use super::protocol::{Key, MemberValue, OwnerValue};
use super::state::GroupState;
use super::{GroupConfig, LOG_PARTITION};
use crate::kafka::codec::FetchedRecord;
use crate::kafka::conn::Cluster;
use crate::kafka::fetch::{Fetcher, LogCursor, Read, read_partition};
use crate::kafka::produce::{ProduceError, Producer, ProducerConfig, ProducerRecord};
use crate::kafka::task::AbortOnDrop;
use crate::kafka::topic::TopicPartition;
use crate::shutdown::Shutdown;
/// One member's view of its group: the state read from the log, and the means
/// to write to it.
pub(crate) struct Coordinator {
    pub(crate) member: String,
    pub(crate) state: GroupState,
    pub(crate) lease: Arc<Lease>,
    cluster: Cluster,
    config: GroupConfig,
    producer: Producer,
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
async fn read_log(
    cluster: &Cluster,
    config: &GroupConfig,
    shutdown: Shutdown,
) -> Result<Reading, OffsetError> {
    let topic = config.offsets_topic.clone();
    let mut state = GroupState::new(&config.group_id);
    let (records, high_watermark) = read_partition(cluster, &topic, LOG_PARTITION).await?;
    state.apply_all(&records);

    let (tx, log) = mpsc::channel(16);
    let mut tail_config = config.fetch.clone();
    // Membership and ownership changes are acted on when read back: keep the
    // wait short, and no longer than the consumer's own.
    tail_config.fetch_max_wait = config.fetch.fetch_max_wait.min(Duration::from_millis(100));
    let fetcher = Fetcher {
        cluster: cluster.clone(),
        config: tail_config,
        tp: TopicPartition::new(topic, LOG_PARTITION),
        progress: None,
        lag: None,
    };
    let tail = AbortOnDrop(tokio::spawn(fetcher.run(high_watermark, tx, shutdown)));
    Ok(Reading {
        state,
        records: records.len(),
        high_watermark,
        log,
        tail,
    })
}

impl Coordinator {
    /// Announces this member, reads the coordination log, starts tailing it and
    /// heartbeating.
    pub(crate) async fn join(
        cluster: Cluster,
        config: GroupConfig,
        member: String,
        shutdown: Shutdown,
    ) -> Result<Self, OffsetError> {
        // Coordination records are few and latency matters: send each at once.
        let producer = Producer::new(
            cluster.clone(),
            ProducerConfig {
                linger: Duration::ZERO,
                delivery_timeout: config.session_timeout / 3,
                ..ProducerConfig::default()
            },
        );
        // The member record goes first, so the log read next already holds it: the
        // member can act on the first reading instead of waiting to read itself
        // back, which on brokers that re-check a held fetch only now and then
        // (nisshi) costs most of a fetch wait.
        let lease = Arc::new(Lease::new());
        let record = member_record(
            &config,
            &member,
            &subscription(&cluster, &config).await,
            false,
        );
        let sent = Instant::now();
        let first_beat = match async { producer.send(record?).await }.await {
            Ok(delivery) => {
                lease.grant(delivery.offset, sent + lease_span(&config));
                sent + config.heartbeat_interval
            }
            Err(e) => {
                log::warn!("announcing member {member} failed; the heartbeat tries again: {e}");
                sent
            }
        };

        let reading = read_log(&cluster, &config, shutdown.clone()).await?;
        lease.read_through(reading.high_watermark);
        let mut coordinator = Self {
            member,
            state: reading.state,
            lease,
            cluster,
            config,
            producer,
            log: reading.log,
            cursor: Mutex::new(LogCursor::at(reading.high_watermark)),
            leaving: Arc::new(AtomicBool::new(false)),
            diverged: false,
            shutdown,
            _tail: reading.tail,
            heartbeat: None,
        };
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
            cluster: self.cluster.clone(),
            config: self.config.clone(),
            producer: self.producer.clone(),
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
                Read::Fresh => {
                    ours |= self.state.apply(
                        r.offset,
                        r.key.as_deref(),
                        r.value.as_deref(),
                        Some(r.timestamp.timestamp_millis()),
                    );
                }
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
        ours | caught_up
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
        let reading = read_log(&self.cluster, &self.config, self.shutdown.clone()).await?;
        self.state = reading.state;
        self.log = reading.log;
        self._tail = reading.tail;
        *self.cursor.get_mut() = LogCursor::at(reading.high_watermark);
        self.lease.read_through(reading.high_watermark);
        self.diverged = false;
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
        let delivery = self.producer.send(record).await?;
        if early {
            self.cursor
                .lock()
                .acknowledged(delivery.offset, OwnRecord { key, value });
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
            &subscription(&self.cluster, &self.config).await,
            true,
        );
        if let Err(e) = async { self.producer.send(record?).await }.await {
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
        if let Err(e) = self.producer.send(tombstone).await {
            log::warn!("removing the member record failed: {e}");
        }
        self.producer.close().await;
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
async fn subscription(cluster: &Cluster, config: &GroupConfig) -> BTreeMap<String, i32> {
    let mut topics = BTreeMap::new();
    for topic in &config.topics {
        match cluster.partition_count(topic).await {
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
struct Heartbeat {
    cluster: Cluster,
    config: GroupConfig,
    producer: Producer,
    member: String,
    lease: Arc<Lease>,
    leaving: Arc<AtomicBool>,
}

impl Heartbeat {
    async fn run(self, first: Instant) {
        let mut ticker = tokio::time::interval_at(first, self.config.heartbeat_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let lease_span = lease_span(&self.config);
        loop {
            ticker.tick().await;
            let topics = subscription(&self.cluster, &self.config).await;
            let record = member_record(
                &self.config,
                &self.member,
                &topics,
                self.leaving.load(Ordering::Acquire),
            );
            let sent = Instant::now();
            match async { self.producer.send(record?).await }.await {
                Ok(delivery) => self.lease.grant(delivery.offset, sent + lease_span),
                Err(e) => log::warn!("heartbeat of {} failed: {e}", self.member),
            }
        }
    }
}
