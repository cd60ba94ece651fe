//! What an operator asks of an emulated group, as `kafka-consumer-groups`
//! answers it for Kafka's own: who is in the group, who owns each partition,
//! how far the group got and how far behind it is ([`describe`]), and moving a
//! stopped group's committed offsets to the earliest, the latest or a point in
//! time ([`reset_offsets`]).
//!
//! A reset first writes, for each partition with an owner record, an owner
//! record that passes it on to nobody, starting at the new offset. That record
//! is a claim like any other: it counts only if the owner it replaces is dead
//! where it lands in the log, so a member that started meanwhile keeps its
//! partition and its commits, and the reset reads the log back and stops
//! there. Only then does it write, per partition, a commit marked `reset`: the
//! offset for partitions nobody ever owned, and the mark that overrides the
//! offset an earlier transaction committed, which exactly-once members
//! otherwise resume after.

use std::collections::{BTreeMap, BTreeSet};

use rskafka::chrono::{DateTime, SecondsFormat, Utc};
use rskafka::client::partition::OffsetAt;
use serde::Serialize;

use super::LOG_PARTITION;
use super::offsets::read_group_state;
use super::protocol::{Key, OffsetValue, OwnerValue, legacy_transactional_id, transactional_id};
use super::state::GroupState;
use crate::kafka::conn::Cluster;
use crate::kafka::fetch::{ReadError, high_watermark, offset_at, partition_count};
use crate::kafka::produce::{
    ProduceError, Producer, ProducerConfig, ProducerRecord, TransactionConfig, TransactionError,
    TransactionalProducer,
};
use crate::kafka::topic::TopicPartition;

/// Who a reset's owner records name as their writer.
pub const RESET_WRITER: &str = "reset-offsets";

/// Errors of the operator's group commands.
#[derive(Debug, thiserror::Error)]
pub enum GroupCommandError {
    /// The coordination log, or a topic's offsets, could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Members still run.
    #[error(
        "group {group} has members that are alive or not yet timed out ({}): stop every instance of the service, wait {wait_s} s for their sessions to time out, and run the reset again",
        members.join(", ")
    )]
    Active {
        /// The group.
        group: String,
        /// The members still alive.
        members: Vec<String>,
        /// Seconds until the last of them times out, if it is stopped.
        wait_s: i64,
    },
    /// Nothing to reset.
    #[error(
        "group {group} has no partitions of {topics} to reset: name a topic it consumes with --topic, or use --all-topics"
    )]
    NoPartitions {
        /// The group.
        group: String,
        /// The topics asked for.
        topics: String,
    },
    /// The new offsets were not written.
    #[error("writing the new offsets to {topic} failed: {source}")]
    Write {
        /// The coordination topic.
        topic: String,
        /// Why.
        #[source]
        source: ProduceError,
    },
    /// A transactional id of the group could not be fenced.
    #[error(
        "fencing the transactional id {id} of group {group} failed, so a transaction its last member left open could still commit over the reset; nothing was written: {source}"
    )]
    Fence {
        /// The group.
        group: String,
        /// The transactional id.
        id: String,
        /// Why.
        #[source]
        source: Box<TransactionError>,
    },
    /// A member took a partition while the reset was written.
    #[error(
        "a member of group {group} took {tp} while the reset was written, so the reset did not apply there: stop every instance and run the reset again"
    )]
    Raced {
        /// The group.
        group: String,
        /// The partition.
        tp: TopicPartition,
    },
}

/// A member as `describe-group` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberDescription {
    /// Its id (host and a random suffix).
    pub member: String,
    /// `active`, `leaving` (handing its partitions over) or `dead` (no record
    /// within its session timeout).
    pub state: &'static str,
    /// When it last wrote a record (the broker's time).
    pub last_seen: String,
    /// How long it may stay silent.
    pub session_timeout_ms: i64,
    /// The topics it subscribes to.
    pub topics: Vec<String>,
    /// How many partitions it owns.
    pub partitions: usize,
}

/// A partition as `describe-group` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionDescription {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The member that owns it, if any.
    pub owner: Option<String>,
    /// The ownership epoch, if it was ever owned.
    pub epoch: Option<i64>,
    /// The next offset the group consumes.
    pub committed: Option<i64>,
    /// The partition's log end (high watermark).
    pub log_end: Option<i64>,
    /// Records between the two.
    pub lag: Option<i64>,
}

/// A group as `describe-group` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupDescription {
    /// The group.
    pub group: String,
    /// Every member the coordination log names.
    pub members: Vec<MemberDescription>,
    /// Every partition the group owns, committed, or subscribes to.
    pub partitions: Vec<PartitionDescription>,
}

impl GroupDescription {
    /// The sum of the partitions' lags.
    pub fn total_lag(&self) -> i64 {
        self.partitions.iter().filter_map(|p| p.lag).sum()
    }
}

/// Where [`reset_offsets`] moves a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    /// Each partition's earliest retained record.
    Earliest,
    /// Each partition's end: only records written from now on are consumed.
    Latest,
    /// The first record at or after this time; the end if there is none.
    Timestamp(DateTime<Utc>),
}

/// One partition's move.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionReset {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The committed offset before.
    pub from: Option<i64>,
    /// The committed offset after.
    pub to: i64,
}

fn millis_to_rfc3339(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Until when (log time, ms) `member` counts as alive. Callers compare it with
/// the later of the log's time and the clock's: nobody writes to a stopped
/// group, so its log time stands still where its last member stopped.
fn alive_until(state: &GroupState, member: &str) -> Option<i64> {
    state
        .member(member)
        .map(|m| m.last_seen_ms + m.value.session_timeout_ms)
}

/// Describes `group` as the coordination log in `offsets_topic` holds it now,
/// with each partition's lag against its log end.
pub async fn describe(
    cluster: &Cluster,
    offsets_topic: &str,
    group: &str,
    now_ms: i64,
) -> Result<GroupDescription, GroupCommandError> {
    let state = read_group_state(cluster, offsets_topic, group).await?;
    Ok(description(&state, now_ms, |tp| {
        let tp = tp.clone();
        let cluster = cluster.clone();
        async move { high_watermark(&cluster, &tp.topic, tp.partition).await.ok() }
    })
    .await)
}

async fn description<F, Fut>(state: &GroupState, now_ms: i64, log_end: F) -> GroupDescription
where
    F: Fn(&TopicPartition) -> Fut,
    Fut: std::future::Future<Output = Option<i64>>,
{
    let now_ms = now_ms.max(state.log_time_ms());
    let mut owned: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, o) in state.owners() {
        if let Some(m) = o.member.as_deref() {
            *owned.entry(m).or_default() += 1;
        }
    }
    let members = state
        .members()
        .iter()
        .map(|(id, m)| MemberDescription {
            member: id.clone(),
            state: if alive_until(state, id).is_none_or(|until| until < now_ms) {
                "dead"
            } else if m.value.leaving {
                "leaving"
            } else {
                "active"
            },
            last_seen: millis_to_rfc3339(m.last_seen_ms),
            session_timeout_ms: m.value.session_timeout_ms,
            topics: m.value.topics.keys().cloned().collect(),
            partitions: owned.get(id.as_str()).copied().unwrap_or(0),
        })
        .collect();
    let committed = state.committed_offsets();
    let mut tps: BTreeSet<TopicPartition> = committed.keys().cloned().collect();
    tps.extend(state.owners().map(|(tp, _)| tp.clone()));
    for m in state.members().values() {
        for (topic, n) in &m.value.topics {
            tps.extend((0..*n).map(|p| TopicPartition::new(topic.clone(), p)));
        }
    }
    let mut partitions = Vec::with_capacity(tps.len());
    for tp in tps {
        let owner = state.owner(&tp);
        let committed = committed.get(&tp).copied();
        let log_end = log_end(&tp).await;
        partitions.push(PartitionDescription {
            owner: owner.and_then(|o| o.member.clone()),
            epoch: owner.map(|o| o.epoch),
            lag: log_end.map(|end| (end - committed.unwrap_or(0)).max(0)),
            committed,
            log_end,
            topic: tp.topic,
            partition: tp.partition,
        });
    }
    GroupDescription {
        group: state.group().to_owned(),
        members,
        partitions,
    }
}

/// The members of `state` that may still be running `now_ms`, and how long
/// until the last of them times out.
fn still_running(state: &GroupState, now_ms: i64) -> (Vec<String>, i64) {
    let now_ms = now_ms.max(state.log_time_ms());
    let mut running = Vec::new();
    let mut wait_ms = 0;
    for id in state.members().keys() {
        if let Some(until) = alive_until(state, id)
            && until >= now_ms
        {
            running.push(id.clone());
            wait_ms = wait_ms.max(until - now_ms + 1);
        }
    }
    (running, (wait_ms + 999) / 1000)
}

/// The coordination records that move `group`'s partitions to the offsets in
/// `targets`: for each partition an owner record passing it to nobody in the
/// next epoch, starting there (to be written first); and a commit marked
/// `reset`.
pub fn reset_records(
    offsets_topic: &str,
    state: &GroupState,
    targets: &[(TopicPartition, i64)],
) -> Result<(Vec<ProducerRecord>, Vec<ProducerRecord>), ProduceError> {
    let group = state.group();
    let (mut owners, mut records) = (Vec::new(), Vec::new());
    for (tp, offset) in targets {
        let commit = OffsetValue {
            offset: *offset,
            member: None,
            epoch: None,
            reset: true,
            committed_at: crate::clock::now(),
        };
        records.push(
            ProducerRecord::new(offsets_topic)
                .partition(LOG_PARTITION)
                .key(
                    Key::Offset {
                        group: group.to_owned(),
                        topic: tp.topic.clone(),
                        partition: tp.partition,
                    }
                    .encode(),
                )
                .json(&commit)?,
        );
        // Every partition, owned before or not: a member claiming one while
        // the reset is written then races it on the owner record's
        // compare-and-set, and one of the two does not count.
        let passed = OwnerValue {
            member: None,
            epoch: state.owner(tp).map_or(0, |current| current.epoch + 1),
            start: *offset,
            by: Some(RESET_WRITER.to_owned()),
            refutes: Vec::new(),
        };
        owners.push(
            ProducerRecord::new(offsets_topic)
                .partition(LOG_PARTITION)
                .key(
                    Key::Owner {
                        group: group.to_owned(),
                        topic: tp.topic.clone(),
                        partition: tp.partition,
                    }
                    .encode(),
                )
                .json(&passed)?,
        );
    }
    Ok((owners, records))
}

/// Where `to` puts `tp`: a `ListOffsets` answer; Kafka answers -1 for a time
/// after the last record, which means the end.
async fn target_offset(
    cluster: &Cluster,
    tp: &TopicPartition,
    to: ResetTo,
) -> Result<i64, ReadError> {
    let at = match to {
        ResetTo::Earliest => OffsetAt::Earliest,
        ResetTo::Latest => return high_watermark(cluster, &tp.topic, tp.partition).await,
        ResetTo::Timestamp(t) => OffsetAt::Timestamp(t),
    };
    match offset_at(cluster, &tp.topic, tp.partition, at).await? {
        o if o >= 0 => Ok(o),
        _ => high_watermark(cluster, &tp.topic, tp.partition).await,
    }
}

/// Moves the committed offsets of stopped `group` on `topics` (every topic it
/// has offsets or owners on, when empty) to `to`. With `execute` false, only
/// says what it would do. Refuses while a member may still run.
pub async fn reset_offsets(
    cluster: &Cluster,
    offsets_topic: &str,
    group: &str,
    topics: &[String],
    to: ResetTo,
    execute: bool,
    now_ms: i64,
) -> Result<Vec<PartitionReset>, GroupCommandError> {
    let state = read_group_state(cluster, offsets_topic, group).await?;
    let (running, wait_s) = still_running(&state, now_ms);
    if !running.is_empty() {
        return Err(GroupCommandError::Active {
            group: group.to_owned(),
            members: running,
            wait_s,
        });
    }
    let committed = state.committed_offsets();
    let topics: BTreeSet<String> = if topics.is_empty() {
        committed
            .keys()
            .map(|tp| tp.topic.clone())
            .chain(state.owners().map(|(tp, _)| tp.topic.clone()))
            .collect()
    } else {
        topics.iter().cloned().collect()
    };
    let mut targets = Vec::new();
    let mut plan = Vec::new();
    for topic in &topics {
        let partitions = partition_count(cluster, topic).await?;
        for p in 0..partitions {
            let tp = TopicPartition::new(topic.clone(), p);
            let offset = target_offset(cluster, &tp, to).await?;
            plan.push(PartitionReset {
                topic: topic.clone(),
                partition: p,
                from: committed.get(&tp).copied(),
                to: offset,
            });
            targets.push((tp, offset));
        }
    }
    if targets.is_empty() {
        return Err(GroupCommandError::NoPartitions {
            group: group.to_owned(),
            topics: if topics.is_empty() {
                "any topic".to_owned()
            } else {
                topics.into_iter().collect::<Vec<_>>().join(", ")
            },
        });
    }
    if !execute {
        return Ok(plan);
    }

    let (owners, commits) = reset_records(offsets_topic, &state, &targets).map_err(|source| {
        GroupCommandError::Write {
            topic: offsets_topic.to_owned(),
            source,
        }
    })?;
    fence_transactions(cluster, &state, &targets).await?;
    let producer = Producer::new(cluster.clone(), ProducerConfig::default());
    let written = async {
        // The owner records count only where their owners were dead (or
        // none claimed the partition meanwhile): read back before any commit
        // is written over a live member's.
        write_all(&producer, offsets_topic, owners).await?;
        let passed = read_group_state(cluster, offsets_topic, group).await?;
        check_applied(&passed, &targets, |o| o.member.is_none())?;
        write_all(&producer, offsets_topic, commits).await?;
        let after = read_group_state(cluster, offsets_topic, group).await?;
        check_applied(&after, &targets, |o| o.member.is_none())
    }
    .await;
    producer.close().await;
    written.map(|()| plan)
}

/// Under exactly-once a paused former member may still hold a transaction
/// open with an offset commit in it, which would land over the reset: every
/// partition that committed in transactions gets its transactional ids (and
/// those of earlier versions) taken, which aborts such a transaction and
/// keeps its producer from writing again. Done before anything is written.
async fn fence_transactions(
    cluster: &Cluster,
    state: &GroupState,
    targets: &[(TopicPartition, i64)],
) -> Result<(), GroupCommandError> {
    let group = state.group();
    for (tp, _) in targets {
        if state.transaction_committed(tp).is_none() {
            continue;
        }
        for id in [
            transactional_id(group, tp),
            legacy_transactional_id(group, tp),
        ] {
            TransactionalProducer::fence(cluster, &TransactionConfig::new(id.clone()))
                .await
                .map_err(|source| GroupCommandError::Fence {
                    group: group.to_owned(),
                    id,
                    source: Box::new(source),
                })?;
        }
    }
    Ok(())
}

async fn write_all(
    producer: &Producer,
    offsets_topic: &str,
    records: Vec<ProducerRecord>,
) -> Result<(), GroupCommandError> {
    let error = |source| GroupCommandError::Write {
        topic: offsets_topic.to_owned(),
        source,
    };
    let mut deliveries = Vec::with_capacity(records.len());
    for record in records {
        deliveries.push(producer.enqueue(record).await.map_err(error)?);
    }
    for delivery in deliveries {
        delivery.await.map_err(error)?;
    }
    Ok(())
}

/// Whether every partition of `targets` is passed on to nobody and resumes
/// at its target offset in `state`.
fn check_applied(
    state: &GroupState,
    targets: &[(TopicPartition, i64)],
    passed_on: impl Fn(&OwnerValue) -> bool,
) -> Result<(), GroupCommandError> {
    for (tp, offset) in targets {
        let owner_ok = state.owner(tp).is_none_or(&passed_on);
        if !owner_ok || state.committed(tp) != Some(*offset) {
            return Err(GroupCommandError::Raced {
                group: state.group().to_owned(),
                tp: tp.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::group::protocol::MemberValue;

    fn apply(state: &mut GroupState, offset: i64, key: Key, value: &impl Serialize, ts: i64) {
        let value = serde_json::to_vec(value).unwrap();
        state.apply(offset, Some(&key.encode()), Some(&value), Some(ts));
    }

    fn member_key(m: &str) -> Key {
        Key::Member {
            group: "g".into(),
            member: m.into(),
        }
    }

    fn owner_key(p: i32) -> Key {
        Key::Owner {
            group: "g".into(),
            topic: "t".into(),
            partition: p,
        }
    }

    fn member(topics: i32) -> MemberValue {
        MemberValue {
            topics: BTreeMap::from([("t".to_owned(), topics)]),
            session_timeout_ms: 10_000,
            leaving: false,
        }
    }

    fn owned(m: &str, epoch: i64, start: i64) -> OwnerValue {
        OwnerValue {
            member: Some(m.into()),
            epoch,
            start,
            by: Some(m.into()),
            refutes: Vec::new(),
        }
    }

    fn commit(offset: i64, owner: Option<(&str, i64)>) -> (Key, OffsetValue) {
        let key = Key::Offset {
            group: "g".into(),
            topic: "t".into(),
            partition: 0,
        };
        let value = OffsetValue {
            offset,
            member: owner.map(|(m, _)| m.to_owned()),
            epoch: owner.map(|(_, e)| e),
            reset: false,
            committed_at: String::new(),
        };
        (key, value)
    }

    /// A group whose member `a` owns partition 0 (epoch 3) and committed 40,
    /// last seen at 1000 ms of log time.
    fn group_of_a() -> GroupState {
        let mut s = GroupState::new("g");
        apply(&mut s, 0, member_key("a"), &member(2), 1_000);
        apply(&mut s, 1, owner_key(0), &owned("a", 3, 10), 1_000);
        let (key, value) = commit(40, Some(("a", 3)));
        apply(&mut s, 2, key, &value, 1_000);
        s
    }

    fn apply_records(state: &mut GroupState, records: &[ProducerRecord], from: i64, ts: i64) {
        for (i, r) in records.iter().enumerate() {
            state.apply(
                from + i as i64,
                r.key.as_deref(),
                r.value.as_deref(),
                Some(ts),
            );
        }
    }

    #[tokio::test]
    async fn a_description_names_members_owners_commits_and_lag() {
        let s = group_of_a();
        let d = description(&s, 2_000, |tp| {
            let end = if tp.partition == 0 { Some(50) } else { None };
            async move { end }
        })
        .await;
        assert_eq!(d.members.len(), 1);
        assert_eq!((d.members[0].state, d.members[0].partitions), ("active", 1));
        assert_eq!(d.partitions.len(), 2, "both subscribed partitions");
        let p0 = &d.partitions[0];
        assert_eq!(
            (
                p0.owner.as_deref(),
                p0.epoch,
                p0.committed,
                p0.log_end,
                p0.lag
            ),
            (Some("a"), Some(3), Some(40), Some(50), Some(10))
        );
        assert_eq!(
            (d.partitions[1].committed, d.partitions[1].lag),
            (None, None)
        );
        assert_eq!(d.total_lag(), 10);

        // On the clock, past its session: dead, though nobody wrote since.
        let later = description(&s, 20_000, |_| async { None }).await;
        assert_eq!(later.members[0].state, "dead");
    }

    #[test]
    fn a_running_member_blocks_a_reset_until_its_session_ends() {
        let s = group_of_a();
        let (running, wait_s) = still_running(&s, 5_000);
        assert_eq!((running, wait_s), (vec!["a".to_owned()], 7));
        assert!(still_running(&s, 11_001).0.is_empty());
    }

    #[test]
    fn a_reset_moves_the_committed_offset_and_the_next_owner_starts_there() {
        let mut s = group_of_a();
        let tp = TopicPartition::new("t", 0);
        let (owners, commits) = reset_records("__eda_offsets", &s, &[(tp.clone(), 5)]).unwrap();
        assert_eq!((owners.len(), commits.len()), (1, 1));
        apply_records(&mut s, &owners, 10, 20_000);
        assert_eq!(
            s.committed(&tp),
            Some(5),
            "the passed-on owner record decides"
        );
        check_applied(&s, &[(tp.clone(), 5)], |o| o.member.is_none()).unwrap();
        apply_records(&mut s, &commits, 11, 20_000);
        assert_eq!(s.committed(&tp), Some(5));
        let o = s.owner(&tp).unwrap();
        assert_eq!((o.member.as_deref(), o.epoch, o.start), (None, 4, 5));
        assert!(s.is_claimable(&tp));

        // A member that claims it next starts from the reset offset.
        apply(&mut s, 20, member_key("b"), &member(2), 21_000);
        apply(&mut s, 21, owner_key(0), &owned("b", 5, 5), 21_000);
        assert_eq!(s.committed(&tp), Some(5));
    }

    /// A partition nobody ever owned gets an owner record too: the check
    /// between the owner records and the commits passes it (the reset is not
    /// refused half-way), and a member claiming it meanwhile races the reset
    /// on that record instead of being skipped.
    #[test]
    fn a_reset_of_owned_and_never_owned_partitions_applies_whole() {
        let mut s = group_of_a();
        let (owned_tp, never) = (TopicPartition::new("t", 0), TopicPartition::new("t", 1));
        let key = Key::Offset {
            group: "g".into(),
            topic: "t".into(),
            partition: 1,
        };
        apply(&mut s, 3, key, &commit(50, None).1, 1_000);
        let targets = [(owned_tp.clone(), 5), (never.clone(), 5)];
        let (owners, commits) = reset_records("__eda_offsets", &s, &targets).unwrap();
        assert_eq!((owners.len(), commits.len()), (2, 2));
        let mut raced = s.clone();
        apply_records(&mut s, &owners, 10, 20_000);
        check_applied(&s, &targets, |o| o.member.is_none()).unwrap();
        apply_records(&mut s, &commits, 12, 20_000);
        check_applied(&s, &targets, |o| o.member.is_none()).unwrap();
        assert_eq!(s.committed(&never), Some(5));
        assert_eq!(s.committed(&owned_tp), Some(5));

        // A member claims the never-owned partition first: the reset's
        // record does not count there, and the check stops before commits.
        apply(&mut raced, 9, member_key("c"), &member(2), 20_000);
        let mut claim = owned("c", 0, 50);
        claim.by = Some("c".into());
        apply(&mut raced, 10, owner_key(1), &claim, 20_000);
        apply_records(&mut raced, &owners, 11, 20_000);
        assert_eq!(raced.owner(&never).unwrap().member.as_deref(), Some("c"));
        let refused = check_applied(&raced, &targets, |o| o.member.is_none());
        assert!(
            matches!(&refused, Err(GroupCommandError::Raced { tp, .. }) if *tp == never),
            "{refused:?}"
        );
    }

    /// A transaction written before the reset whose commit marker lands after
    /// it does not move the partition back.
    #[test]
    fn a_transaction_that_commits_after_a_reset_does_not_undo_it() {
        use crate::kafka::codec::{FetchedRecord, InTransaction};
        let mut s = GroupState::new("g");
        let tp = TopicPartition::new("t", 0);
        let (key, value) = commit(70, None);
        let fetched = |offset, value: Option<Vec<u8>>, transaction| FetchedRecord {
            offset,
            key: value.as_ref().map(|_| key.encode().into()),
            value: value.map(Into::into),
            headers: BTreeMap::new(),
            timestamp: DateTime::from_timestamp_millis(1_000).unwrap(),
            transaction: Some(transaction),
        };
        s.apply_read(&fetched(
            0,
            Some(serde_json::to_vec(&value).unwrap()),
            InTransaction::Record { producer_id: 7 },
        ));
        let (_, commits) = reset_records("__eda_offsets", &s, &[(tp.clone(), 5)]).unwrap();
        apply_records(&mut s, &commits, 1, 20_000);
        s.apply_read(&fetched(
            2,
            None,
            InTransaction::End {
                producer_id: 7,
                committed: true,
            },
        ));
        assert_eq!(s.committed(&tp), Some(5));
        assert_eq!(s.transaction_committed(&tp), None);
    }

    #[test]
    fn a_reset_written_while_the_owner_lives_does_not_count() {
        let mut s = group_of_a();
        let tp = TopicPartition::new("t", 0);
        let (owners, _) = reset_records("__eda_offsets", &s, &[(tp.clone(), 5)]).unwrap();
        // Lands within a's session: the owner record is a rival; the reset
        // sees so and writes no commit over a's.
        apply_records(&mut s, &owners, 10, 2_000);
        assert_eq!(s.owner(&tp).unwrap().member.as_deref(), Some("a"));
        assert_eq!(s.committed(&tp), Some(40));
        let raced = check_applied(&s, &[(tp.clone(), 5)], |o| o.member.is_none());
        assert!(
            matches!(raced, Err(GroupCommandError::Raced { .. })),
            "{raced:?}"
        );
    }

    #[test]
    fn a_reset_overrides_the_offset_a_transaction_committed() {
        use crate::kafka::codec::{FetchedRecord, InTransaction};
        let mut s = GroupState::new("g");
        let tp = TopicPartition::new("t", 0);
        let (key, value) = commit(70, None);
        let key = key.encode();
        let fetched = |offset, value: Option<Vec<u8>>, transaction| FetchedRecord {
            offset,
            key: value.as_ref().map(|_| key.clone().into()),
            value: value.map(Into::into),
            headers: BTreeMap::new(),
            timestamp: DateTime::from_timestamp_millis(1_000).unwrap(),
            transaction: Some(transaction),
        };
        let value = serde_json::to_vec(&value).unwrap();
        s.apply_read(&fetched(
            0,
            Some(value),
            InTransaction::Record { producer_id: 7 },
        ));
        s.apply_read(&fetched(
            1,
            None,
            InTransaction::End {
                producer_id: 7,
                committed: true,
            },
        ));
        assert_eq!(s.transaction_committed(&tp), Some(70));
        let (owners, commits) = reset_records("__eda_offsets", &s, &[(tp.clone(), 5)]).unwrap();
        assert_eq!(
            owners.len(),
            1,
            "an owner record even where nobody owned it"
        );
        apply_records(&mut s, &commits, 2, 20_000);
        assert_eq!(s.transaction_committed(&tp), None);
        assert_eq!(s.committed(&tp), Some(5));
    }
}
