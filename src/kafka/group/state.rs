//! A group's state as a deterministic function of the coordination log.
//!
//! Records are applied in log order; the state keeps the latest value per key and
//! the *log time*, the newest record timestamp seen. The coordination topic uses
//! `LogAppendTime`, so log time is the broker's clock and no member's clock can
//! move it. Everything else is derived: who is alive (a record within its session
//! timeout of log time), who takes part in the assignment (alive and not
//! leaving), who owns what, which commits count, and the target assignment. Two
//! members that read the same prefix of the log compute the same answers.
//!
//! Ownership changes by compare-and-set: an owner record counts only if its epoch
//! is the current one plus one and it is a handoff by the current owner or a
//! claim over an owner that is dead where the record lands (or it repeats the
//! current owner record exactly). Two members that claim a partition at once both
//! write epoch E+1, and only the first in the log counts, for every reader alike. Because compaction keeps the
//! *latest* record of a key, a record that did not count could outlive the one
//! that did; the owner therefore writes its record again when it reads a rival
//! one ([`GroupState::take_contested`]), so the latest record is again the one
//! that counts.

use std::collections::{BTreeMap, BTreeSet};

use crate::kafka::records::FetchedRecord;

use super::assignor::assign;
use super::records::{Key, MemberValue, OffsetValue, OwnerValue};
use crate::kafka::TopicPartition;

/// A member as the log last described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub value: MemberValue,
    /// Timestamp of its latest record, in milliseconds.
    pub last_seen_ms: i64,
}

/// The state of one group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupState {
    group: String,
    members: BTreeMap<String, Member>,
    owners: BTreeMap<TopicPartition, OwnerValue>,
    commits: BTreeMap<TopicPartition, OffsetValue>,
    log_time_ms: i64,
    /// Partitions for which an owner record did not count since the last
    /// [`GroupState::take_contested`].
    contested: BTreeSet<TopicPartition>,
}

impl GroupState {
    pub fn new(group: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            ..Self::default()
        }
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    /// The newest record timestamp seen, in milliseconds.
    pub fn log_time_ms(&self) -> i64 {
        self.log_time_ms
    }

    /// Applies one coordination record; whether it was one of this group's.
    /// Records of other groups only advance log time. `timestamp_ms` is `None`
    /// for a record applied on its acknowledgement, before it was read back: the
    /// broker stamps it (`LogAppendTime`) with a time its writer does not know,
    /// and the next record read moves log time past it anyway.
    pub fn apply(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp_ms: Option<i64>,
    ) -> bool {
        if let Some(ts) = timestamp_ms {
            self.log_time_ms = self.log_time_ms.max(ts);
        }
        let timestamp_ms = timestamp_ms.unwrap_or(self.log_time_ms);
        let Some(key) = key.and_then(Key::decode) else {
            return false;
        };
        if key.group() != self.group {
            return false;
        }
        match key {
            Key::Member { member, .. } => match value.map(serde_json::from_slice::<MemberValue>) {
                Some(Ok(value)) => {
                    self.members.insert(
                        member,
                        Member {
                            value,
                            last_seen_ms: timestamp_ms,
                        },
                    );
                }
                None => {
                    self.members.remove(&member);
                }
                Some(Err(e)) => log::warn!("unreadable member record for {member}: {e}"),
            },
            Key::Owner {
                topic, partition, ..
            } => {
                let tp = TopicPartition::new(topic, partition);
                match value.map(serde_json::from_slice::<OwnerValue>) {
                    Some(Ok(v)) => {
                        if self.owner_record_counts(&tp, &v) {
                            self.owners.insert(tp, v);
                        } else {
                            self.contested.insert(tp);
                        }
                    }
                    None => {
                        self.owners.remove(&tp);
                    }
                    Some(Err(e)) => log::warn!("unreadable owner record for {tp}: {e}"),
                }
            }
            Key::Offset {
                topic, partition, ..
            } => {
                let tp = TopicPartition::new(topic, partition);
                match value.map(serde_json::from_slice::<OffsetValue>) {
                    Some(Ok(v)) => {
                        self.commits.insert(tp, v);
                    }
                    None => {
                        self.commits.remove(&tp);
                    }
                    Some(Err(e)) => log::warn!("unreadable offset record for {tp}: {e}"),
                }
            }
        }
        true
    }

    /// Compare-and-set: an owner record counts if it names the next epoch, and
    /// either its writer is the current owner (a handoff), or the current owner
    /// is nobody or dead at this point of the log (a claim). A record that only
    /// repeats the current one counts too and changes nothing.
    fn owner_record_counts(&self, tp: &TopicPartition, v: &OwnerValue) -> bool {
        let Some(current) = self.owners.get(tp) else {
            return true;
        };
        if v == current {
            return true;
        }
        let counts = v.epoch == current.epoch + 1
            && (current.member.is_empty()
                || v.by.as_deref().is_none_or(|by| by == current.member)
                || !self.is_alive(&current.member));
        if !counts {
            log::debug!(
                "{tp}: owner record for {:?} in epoch {} by {:?} does not count: {:?} owns epoch {}",
                v.member,
                v.epoch,
                v.by,
                current.member,
                current.epoch
            );
        }
        counts
    }

    /// Applies coordination records as read from the log, in order.
    /// Whether any of them was one of this group's.
    pub fn apply_all(&mut self, records: &[FetchedRecord]) -> bool {
        let mut ours = false;
        for r in records {
            ours |= self.apply(
                r.key.as_deref(),
                r.value.as_deref(),
                Some(r.timestamp.timestamp_millis()),
            );
        }
        ours
    }

    pub fn member(&self, id: &str) -> Option<&Member> {
        self.members.get(id)
    }

    /// Whether `id` wrote a record within its session timeout of log time. A
    /// leaving member stays alive until it times out: it still owns what it has
    /// not handed over.
    pub fn is_alive(&self, id: &str) -> bool {
        self.members
            .get(id)
            .is_some_and(|m| m.last_seen_ms + m.value.session_timeout_ms >= self.log_time_ms)
    }

    /// Members that take part in the assignment: alive and not leaving, sorted.
    pub fn active_members(&self) -> Vec<&str> {
        self.members
            .iter()
            .filter(|(id, m)| !m.value.leaving && self.is_alive(id))
            .map(|(id, _)| id.as_str())
            .collect()
    }

    /// The latest ownership record of a partition.
    pub fn owner(&self, tp: &TopicPartition) -> Option<&OwnerValue> {
        self.owners.get(tp)
    }

    /// Whether a member may claim `tp`: nobody owns it, or its owner is dead.
    pub fn is_claimable(&self, tp: &TopicPartition) -> bool {
        match self.owners.get(tp) {
            None => true,
            Some(o) => o.member.is_empty() || !self.is_alive(&o.member),
        }
    }

    /// The offset to resume `tp` from. A commit counts only if it was made by the
    /// current owner in its epoch; otherwise (a former owner's late commit) the
    /// owner's start offset stands.
    pub fn committed(&self, tp: &TopicPartition) -> Option<i64> {
        let commit = self.commits.get(tp);
        match self.owners.get(tp) {
            None => commit.map(|c| c.offset),
            Some(owner) => match commit {
                Some(c)
                    if c.member.as_deref() == Some(owner.member.as_str())
                        && c.epoch == Some(owner.epoch) =>
                {
                    Some(c.offset)
                }
                _ => Some(owner.start),
            },
        }
    }

    /// Committed offsets of every partition with one.
    pub fn committed_offsets(&self) -> BTreeMap<TopicPartition, i64> {
        self.commits
            .keys()
            .chain(self.owners.keys())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter_map(|tp| self.committed(tp).map(|o| (tp.clone(), o)))
            .collect()
    }

    /// The partitions to share: every partition of the topics active members
    /// subscribe to, with the largest partition count any of them announced.
    pub fn partitions(&self) -> Vec<TopicPartition> {
        let mut counts: BTreeMap<&str, i32> = BTreeMap::new();
        for id in self.active_members() {
            for (topic, n) in &self.members[id].value.topics {
                let c = counts.entry(topic.as_str()).or_default();
                *c = (*c).max(*n);
            }
        }
        counts
            .into_iter()
            .flat_map(|(t, n)| (0..n).map(move |p| TopicPartition::new(t, p)))
            .collect()
    }

    /// Who should own each partition.
    pub fn target(&self) -> BTreeMap<TopicPartition, String> {
        let members = self.active_members();
        let current: BTreeMap<TopicPartition, String> = self
            .owners
            .iter()
            .filter(|(_, o)| !o.member.is_empty())
            .map(|(tp, o)| (tp.clone(), o.member.clone()))
            .collect();
        assign(&members, &self.partitions(), &current)
    }

    /// The partitions whose owner records did not all count since the last call,
    /// with the owner that counts. Whoever that owner is writes its record again,
    /// so that compaction, which keeps the latest record of a key, keeps the one
    /// that counts.
    pub fn take_contested(&mut self) -> Vec<(TopicPartition, OwnerValue)> {
        std::mem::take(&mut self.contested)
            .into_iter()
            .filter_map(|tp| self.owners.get(&tp).map(|o| (tp, o.clone())))
            .collect()
    }

    /// Marks `tp` contested again: writing the owner's record again failed, and
    /// the next plan tries once more.
    pub fn contest(&mut self, tp: TopicPartition) {
        self.contested.insert(tp);
    }

    /// The partitions whose latest owner record names `id`.
    pub fn owned_by(&self, id: &str) -> Vec<(TopicPartition, OwnerValue)> {
        self.partitions_of(id)
            .map(|tp| (tp.clone(), self.owners[tp].clone()))
            .collect()
    }

    /// The partitions whose latest owner record names `id`, without copying them.
    pub fn partitions_of<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a TopicPartition> {
        self.owners
            .iter()
            .filter(move |(_, o)| o.member == id)
            .map(|(tp, _)| tp)
    }

    /// Whether an owner record for `tp` by `writer` counts or not regardless of
    /// where it lands in log time: nobody owns `tp`, or `writer` does. A claim
    /// over another member counts only if that member is dead where it lands,
    /// which its writer learns only by reading it back.
    pub fn settled_by_writer(&self, tp: &TopicPartition, writer: &str) -> bool {
        self.owners
            .get(tp)
            .is_none_or(|o| o.member.is_empty() || o.member == writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, leaving: bool) -> (Vec<u8>, Vec<u8>) {
        let key = Key::Member {
            group: "g".into(),
            member: id.into(),
        };
        let value = MemberValue {
            topics: BTreeMap::from([("t".into(), 6)]),
            session_timeout_ms: 1_000,
            leaving,
        };
        (key.encode(), super::super::records::encode(&value))
    }

    fn owner(p: i32, member: &str, epoch: i64, start: i64) -> (Vec<u8>, Vec<u8>) {
        let key = Key::Owner {
            group: "g".into(),
            topic: "t".into(),
            partition: p,
        };
        let value = OwnerValue {
            member: member.into(),
            epoch,
            start,
            by: None,
        };
        (key.encode(), super::super::records::encode(&value))
    }

    fn commit(p: i32, offset: i64, member: &str, epoch: i64) -> (Vec<u8>, Vec<u8>) {
        let key = Key::Offset {
            group: "g".into(),
            topic: "t".into(),
            partition: p,
        };
        let value = OffsetValue {
            offset,
            member: Some(member.into()),
            epoch: Some(epoch),
            committed_at: String::new(),
        };
        (key.encode(), super::super::records::encode(&value))
    }

    fn apply(s: &mut GroupState, (k, v): (Vec<u8>, Vec<u8>), ts: i64) {
        s.apply(Some(&k), Some(&v), Some(ts));
    }

    #[test]
    fn members_die_after_their_session_timeout_in_log_time() {
        let mut s = GroupState::new("g");
        apply(&mut s, member("a", false), 0);
        apply(&mut s, member("b", false), 500);
        assert_eq!(s.active_members(), ["a", "b"]);
        // b's heartbeat at 1200 moves log time past a's timeout (0 + 1000).
        apply(&mut s, member("b", false), 1_200);
        assert_eq!(s.active_members(), ["b"]);
        assert!(!s.is_alive("a"));
    }

    #[test]
    fn a_leaving_member_is_alive_but_not_assigned() {
        let mut s = GroupState::new("g");
        apply(&mut s, member("a", false), 0);
        apply(&mut s, member("b", true), 0);
        apply(&mut s, owner(0, "b", 1, 0), 0);
        assert_eq!(s.active_members(), ["a"]);
        assert!(s.is_alive("b"));
        assert!(
            !s.is_claimable(&TopicPartition::new("t", 0)),
            "b must hand it over"
        );
        assert!(s.target().values().all(|m| m == "a"));
    }

    #[test]
    fn a_late_commit_of_a_former_owner_does_not_count() {
        let tp = TopicPartition::new("t", 0);
        let mut s = GroupState::new("g");
        apply(&mut s, owner(0, "a", 1, 0), 0);
        apply(&mut s, commit(0, 40, "a", 1), 0);
        assert_eq!(s.committed(&tp), Some(40));
        // b takes over from 40, then a's delayed commit lands.
        apply(&mut s, owner(0, "b", 2, 40), 0);
        assert_eq!(s.committed(&tp), Some(40));
        apply(&mut s, commit(0, 55, "a", 1), 0);
        assert_eq!(s.committed(&tp), Some(40), "a's late commit is fenced");
        apply(&mut s, commit(0, 60, "b", 2), 0);
        assert_eq!(s.committed(&tp), Some(60));
    }

    #[test]
    fn the_same_records_give_the_same_state_whatever_was_compacted() {
        let records = vec![
            (member("a", false), 0),
            (owner(0, "a", 1, 0), 10),
            (commit(0, 5, "a", 1), 20),
            (member("a", false), 30),
            (commit(0, 9, "a", 1), 40),
        ];
        let mut full = GroupState::new("g");
        for (r, ts) in records.clone() {
            apply(&mut full, r, ts);
        }
        // Compaction keeps only the latest record per key.
        let mut compacted = GroupState::new("g");
        for i in [1, 3, 4] {
            let (r, ts) = records[i].clone();
            apply(&mut compacted, r, ts);
        }
        assert_eq!(full, compacted);
        assert_eq!(compacted.committed(&TopicPartition::new("t", 0)), Some(9));
    }

    #[test]
    fn other_groups_and_tombstones() {
        let mut s = GroupState::new("g");
        let other = Key::Member {
            group: "h".into(),
            member: "x".into(),
        };
        s.apply(Some(&other.encode()), Some(b"{}"), Some(5_000));
        assert!(s.active_members().is_empty());
        assert_eq!(s.log_time_ms(), 5_000);
        apply(&mut s, member("a", false), 5_000);
        let (k, _) = member("a", false);
        s.apply(Some(&k), None, Some(5_001));
        assert!(s.member("a").is_none());
    }

    #[test]
    fn of_two_claims_in_the_same_epoch_the_first_in_the_log_counts() {
        let tp = TopicPartition::new("t", 0);
        let mut s = GroupState::new("g");
        apply(&mut s, owner(0, "a", 3, 10), 0);
        apply(&mut s, owner(0, "b", 4, 12), 0);
        apply(&mut s, owner(0, "c", 4, 12), 0);
        assert_eq!(s.owner(&tp).map(|o| o.member.as_str()), Some("b"));
        // Neither a record from the past nor one that skips an epoch counts.
        apply(&mut s, owner(0, "a", 3, 10), 0);
        apply(&mut s, owner(0, "c", 6, 12), 0);
        assert_eq!(
            s.owner(&tp).map(|o| (o.member.as_str(), o.epoch)),
            Some(("b", 4))
        );
        // The owner that counts is told, and writing its record again changes nothing.
        let contested = s.take_contested();
        assert_eq!(contested.len(), 1);
        assert_eq!(contested[0].1.member, "b");
        assert!(s.take_contested().is_empty());
        apply(&mut s, owner(0, "b", 4, 12), 0);
        assert!(s.take_contested().is_empty());
        // Writing it again failed: the partition is contested until it is written.
        s.contest(tp.clone());
        assert_eq!(s.take_contested()[0].1.member, "b");
        apply(&mut s, owner(0, "c", 5, 20), 0);
        assert_eq!(
            s.owner(&tp).map(|o| (o.member.as_str(), o.epoch)),
            Some(("c", 5))
        );
    }

    #[test]
    fn a_record_applied_on_acknowledgement_does_not_move_log_time() {
        let mut s = GroupState::new("g");
        apply(&mut s, member("a", false), 1_000);
        let (k, v) = owner(0, "a", 0, 0);
        s.apply(Some(&k), Some(&v), None);
        assert_eq!(s.log_time_ms(), 1_000);
        assert!(s.owner(&TopicPartition::new("t", 0)).is_some());
    }

    #[test]
    fn a_claim_counts_only_while_the_owner_it_replaces_is_dead_where_it_lands() {
        let tp = TopicPartition::new("t", 0);
        let claim = |by: &str, epoch| {
            let key = Key::Owner {
                group: "g".into(),
                topic: "t".into(),
                partition: 0,
            };
            let value = OwnerValue {
                member: by.into(),
                epoch,
                start: 0,
                by: Some(by.into()),
            };
            (key.encode(), super::super::records::encode(&value))
        };
        let mut s = GroupState::new("g");
        apply(&mut s, member("a", false), 0);
        apply(&mut s, member("b", false), 0);
        apply(&mut s, owner(0, "a", 1, 0), 0);
        // b decided while a looked dead, but a heartbeat of a's landed first.
        apply(&mut s, member("a", false), 900);
        apply(&mut s, claim("b", 2), 1_200);
        assert_eq!(s.owner(&tp).map(|o| o.member.as_str()), Some("a"));
        // Once a is dead where the claim lands, it counts.
        apply(&mut s, member("b", false), 2_000);
        apply(&mut s, claim("b", 2), 2_000);
        assert_eq!(s.owner(&tp).map(|o| o.member.as_str()), Some("b"));
    }
}
