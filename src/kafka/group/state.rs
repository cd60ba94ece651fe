//! A group's state as a deterministic function of the coordination log.
//!
//! Records are applied in log order; the state keeps the latest value per key and
//! the *log time*, the newest record timestamp seen. Everything else is derived:
//! who is alive (a record within its session timeout of log time), who takes part
//! in the assignment (alive and not leaving), who owns what, which commits count,
//! and the target assignment. Two members that read the same prefix of the log
//! compute the same answers, and because only the latest record per key matters,
//! compaction does not change them.

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
    /// Records of other groups only advance log time.
    pub fn apply(&mut self, key: Option<&[u8]>, value: Option<&[u8]>, timestamp_ms: i64) -> bool {
        self.log_time_ms = self.log_time_ms.max(timestamp_ms);
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
                        self.owners.insert(tp, v);
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

    /// Applies coordination records as read from the log, in order.
    /// Whether any of them was one of this group's.
    pub fn apply_all(&mut self, records: &[FetchedRecord]) -> bool {
        let mut ours = false;
        for r in records {
            ours |= self.apply(
                r.key.as_deref(),
                r.value.as_deref(),
                r.timestamp.timestamp_millis(),
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

    /// The partitions whose latest owner record names `id`.
    pub fn owned_by(&self, id: &str) -> Vec<(TopicPartition, OwnerValue)> {
        self.owners
            .iter()
            .filter(|(_, o)| o.member == id)
            .map(|(tp, o)| (tp.clone(), o.clone()))
            .collect()
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
        s.apply(Some(&k), Some(&v), ts);
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
        s.apply(Some(&other.encode()), Some(b"{}"), 5_000);
        assert!(s.active_members().is_empty());
        assert_eq!(s.log_time_ms(), 5_000);
        apply(&mut s, member("a", false), 5_000);
        let (k, _) = member("a", false);
        s.apply(Some(&k), None, 5_001);
        assert!(s.member("a").is_none());
    }
}
