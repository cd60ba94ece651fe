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
//! write epoch E+1, and only the first in the log counts, for every reader alike.
//!
//! Compaction keeps the *latest* record of a key, so a record that did not count
//! could outlive the one that did, and a member that joins later and reads the
//! compacted log would count the rival. The owner therefore writes its record
//! again when it reads a rival one ([`GroupState::take_contested`]), naming the
//! rivals' offsets in `refutes`. Usually that is all: the latest record is again
//! the one that counts. When the cleaner's boundary falls between the rival and
//! the record written again, a reader of the compacted log counts the rival
//! first, then meets the record that refutes exactly the record it counted, and
//! takes it instead. A reader of the whole log never counted a refuted record
//! (its writer read the same log), so for it the rule never fires.

use std::collections::{BTreeMap, BTreeSet};

use crate::kafka::codec::{FetchedRecord, InTransaction};

use super::assignor::assign;
use super::protocol::{Key, MemberValue, OffsetValue, OwnerValue};
use crate::kafka::topic::TopicPartition;

/// A member as the log last described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its latest member record.
    pub value: MemberValue,
    /// Timestamp of its latest record, in milliseconds.
    pub last_seen_ms: i64,
}

/// The state of one group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupState {
    group: String,
    members: BTreeMap<String, Member>,
    owners: BTreeMap<TopicPartition, Owned>,
    commits: BTreeMap<TopicPartition, OffsetValue>,
    log_time_ms: i64,
    /// Partitions for which an owner record did not count since the last
    /// [`GroupState::take_contested`], with the offsets of those records.
    contested: BTreeMap<TopicPartition, BTreeSet<i64>>,
    /// This group's records written in transactions that have not ended
    /// where the state has read to, by producer id: they count when the
    /// producer's commit marker is read, and are dropped at its abort marker.
    pending: BTreeMap<i64, Vec<FetchedRecord>>,
    /// Per partition, the offset committed last in a transaction, by
    /// whichever owner: under exactly-once processing the owner's
    /// transactional id fences every earlier one, so the last transaction
    /// that committed is the truth, whatever the owner epochs say.
    transaction_commits: BTreeMap<TopicPartition, i64>,
    /// Per partition, the log offset of the last reset an operator wrote: a
    /// transaction's commit record written before it does not count, even
    /// when its commit marker comes after it.
    resets: BTreeMap<TopicPartition, i64>,
}

/// The owner record of a partition that counts, and the offset of the record
/// that made it count (a repeat of it leaves the offset as it was).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Owned {
    value: OwnerValue,
    at: i64,
}

/// What an owner record does to the partition's ownership.
enum Counts {
    /// It becomes the partition's owner record.
    Yes,
    /// It repeats the current one: nothing changes.
    Repeat,
    /// It does not count: a rival.
    No,
}

impl GroupState {
    /// The state of `group` before any record is read.
    pub fn new(group: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            ..Self::default()
        }
    }

    /// The group this state is of.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The newest record timestamp seen, in milliseconds.
    pub fn log_time_ms(&self) -> i64 {
        self.log_time_ms
    }

    /// Applies the coordination record at `offset`; whether it was one of this
    /// group's. Records of other groups only advance log time. `timestamp_ms` is
    /// `None` for a record applied on its acknowledgement, before it was read
    /// back: the broker stamps it (`LogAppendTime`) with a time its writer does
    /// not know, and the next record read moves log time past it anyway.
    pub fn apply(
        &mut self,
        offset: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp_ms: Option<i64>,
    ) -> bool {
        self.apply_record(offset, key, value, timestamp_ms, false)
    }

    /// [`Self::apply`]; `committed_in_transaction` for a record whose
    /// transaction's commit marker was just read, which also counts as the
    /// partition's [`Self::transaction_committed`] offset if it is a commit.
    fn apply_record(
        &mut self,
        offset: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp_ms: Option<i64>,
        committed_in_transaction: bool,
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
                    Some(Ok(v)) => match self.owner_record_counts(&tp, &v) {
                        Counts::Repeat => {}
                        Counts::Yes => {
                            self.owners.insert(
                                tp,
                                Owned {
                                    value: v,
                                    at: offset,
                                },
                            );
                        }
                        Counts::No => {
                            self.contested.entry(tp).or_default().insert(offset);
                        }
                    },
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
                        if committed_in_transaction {
                            if self.resets.get(&tp).is_some_and(|reset| *reset > offset) {
                                // Written before the reset, committed after it:
                                // the reset stands.
                                return true;
                            }
                            self.transaction_commits.insert(tp.clone(), v.offset);
                        } else if v.reset {
                            // An operator moved the stopped group: the offset
                            // the last transaction committed no longer stands.
                            self.transaction_commits.remove(&tp);
                            self.resets.insert(tp.clone(), offset);
                        }
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
    /// repeats the current one counts too and changes nothing, and one that
    /// refutes the record the current owner came from replaces it (a reader of a
    /// compacted log, see the module's documentation).
    fn owner_record_counts(&self, tp: &TopicPartition, v: &OwnerValue) -> Counts {
        let Some(Owned { value: current, at }) = self.owners.get(tp) else {
            return Counts::Yes;
        };
        if v.refutes.contains(at) {
            log::debug!(
                "{tp}: owner record of {:?} in epoch {} refutes the one of {:?} at offset {at}",
                v.member,
                v.epoch,
                current.member
            );
            return Counts::Yes;
        }
        if v.same_ownership(current) {
            return Counts::Repeat;
        }
        if v.epoch > current.epoch + 1 {
            // Every writer names at most the epoch after the one it read, so a
            // reader of the whole log never sees this: the record that counted
            // before it was compacted away, and this reader holds one that did
            // not count. The newer epoch is nearer the truth.
            log::debug!(
                "{tp}: owner record of {:?} in epoch {} follows epoch {}: records before it were compacted away",
                v.member,
                v.epoch,
                current.epoch
            );
            return Counts::Yes;
        }
        let counts = v.epoch == current.epoch + 1
            && match current.member.as_deref() {
                None => true,
                Some(owner) => {
                    v.by.as_deref().is_none_or(|by| by == owner) || !self.is_alive(owner)
                }
            };
        if !counts {
            log::debug!(
                "{tp}: owner record for {:?} in epoch {} by {:?} does not count: {:?} owns epoch {}",
                v.member,
                v.epoch,
                v.by,
                current.member,
                current.epoch
            );
            return Counts::No;
        }
        Counts::Yes
    }

    /// Applies coordination records as read from the log, in order.
    /// Whether any of them was one of this group's.
    pub fn apply_all(&mut self, records: &[FetchedRecord]) -> bool {
        let mut ours = false;
        for r in records {
            ours |= self.apply_read(r);
        }
        ours
    }

    /// Applies one record as read from the log: at once, unless it was
    /// written in a transaction, which holds it back until its producer's
    /// marker says whether it counts. Whether it changed this group's state.
    pub fn apply_read(&mut self, r: &FetchedRecord) -> bool {
        let timestamp_ms = r.timestamp.timestamp_millis();
        match r.transaction {
            None => self.apply(
                r.offset,
                r.key.as_deref(),
                r.value.as_deref(),
                Some(timestamp_ms),
            ),
            Some(InTransaction::Record { producer_id }) => {
                self.log_time_ms = self.log_time_ms.max(timestamp_ms);
                let ours = r
                    .key
                    .as_deref()
                    .and_then(Key::decode)
                    .is_some_and(|k| k.group() == self.group);
                if ours {
                    self.pending.entry(producer_id).or_default().push(r.clone());
                }
                false
            }
            Some(InTransaction::End {
                producer_id,
                committed,
            }) => {
                self.log_time_ms = self.log_time_ms.max(timestamp_ms);
                let records = self.pending.remove(&producer_id).unwrap_or_default();
                if !committed {
                    return false;
                }
                let mut ours = false;
                for record in &records {
                    ours |= self.apply_record(
                        record.offset,
                        record.key.as_deref(),
                        record.value.as_deref(),
                        Some(record.timestamp.timestamp_millis()),
                        true,
                    );
                }
                ours
            }
        }
    }

    /// The offset committed last in a transaction for `tp`, whoever committed
    /// it (see the field's documentation).
    pub fn transaction_committed(&self, tp: &TopicPartition) -> Option<i64> {
        self.transaction_commits.get(tp).copied()
    }

    /// Every partition's [`Self::transaction_committed`].
    pub fn transaction_commits(&self) -> &BTreeMap<TopicPartition, i64> {
        &self.transaction_commits
    }

    /// The member `id`, if the log names it.
    pub fn member(&self, id: &str) -> Option<&Member> {
        self.members.get(id)
    }

    /// Every member the log names, alive or not, by id.
    pub fn members(&self) -> &BTreeMap<String, Member> {
        &self.members
    }

    /// Every partition with an owner record, and the record that counts.
    pub fn owners(&self) -> impl Iterator<Item = (&TopicPartition, &OwnerValue)> {
        self.owners.iter().map(|(tp, o)| (tp, &o.value))
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
        self.owners.get(tp).map(|o| &o.value)
    }

    /// Whether a member may claim `tp`: nobody owns it, or its owner is dead.
    pub fn is_claimable(&self, tp: &TopicPartition) -> bool {
        match self.owner(tp) {
            None => true,
            Some(o) => o.member.as_deref().is_none_or(|m| !self.is_alive(m)),
        }
    }

    /// The offset to resume `tp` from. A commit counts only if it was made by the
    /// current owner in its epoch; otherwise (a former owner's late commit) the
    /// owner's start offset stands.
    pub fn committed(&self, tp: &TopicPartition) -> Option<i64> {
        let commit = self.commits.get(tp);
        match self.owner(tp) {
            None => commit.map(|c| c.offset),
            Some(owner) => match commit {
                Some(c)
                    if owner.member.is_some()
                        && c.member == owner.member
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
            .filter_map(|(tp, o)| Some((tp.clone(), o.value.member.clone()?)))
            .collect();
        assign(&members, &self.partitions(), &current)
    }

    /// The partitions whose owner records did not all count since the last call,
    /// with the owner that counts. Whoever that owner is writes its record again,
    /// so that compaction, which keeps the latest record of a key, keeps the one
    /// that counts. The record to write names the rivals' offsets in `refutes`.
    pub fn take_contested(&mut self) -> Vec<(TopicPartition, OwnerValue)> {
        std::mem::take(&mut self.contested)
            .into_iter()
            .filter_map(|(tp, rivals)| {
                let mut owner = self.owners.get(&tp)?.value.clone();
                owner.refutes = rivals.into_iter().collect();
                Some((tp, owner))
            })
            .collect()
    }

    /// Marks `tp` contested again by the rivals `owner` refutes: writing the
    /// owner's record again failed, and the next plan tries once more.
    pub fn contest(&mut self, tp: TopicPartition, owner: &OwnerValue) {
        self.contested
            .entry(tp)
            .or_default()
            .extend(owner.refutes.iter().copied());
    }

    /// The partitions whose latest owner record names `id`.
    pub fn owned_by(&self, id: &str) -> Vec<(TopicPartition, OwnerValue)> {
        self.partitions_of(id)
            .map(|tp| (tp.clone(), self.owners[tp].value.clone()))
            .collect()
    }

    /// The partitions whose latest owner record names `id`, without copying them.
    pub fn partitions_of<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a TopicPartition> {
        self.owners
            .iter()
            .filter(move |(_, o)| o.value.is(id))
            .map(|(tp, _)| tp)
    }

    /// Whether an owner record for `tp` by `writer` counts or not regardless of
    /// where it lands in log time: nobody owns `tp`, or `writer` does. A claim
    /// over another member counts only if that member is dead where it lands,
    /// which its writer learns only by reading it back.
    pub fn settled_by_writer(&self, tp: &TopicPartition, writer: &str) -> bool {
        self.owner(tp)
            .is_none_or(|o| o.member.as_deref().is_none_or(|m| m == writer))
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
        (key.encode(), super::super::protocol::encode(&value))
    }

    fn owner(p: i32, member: &str, epoch: i64, start: i64) -> (Vec<u8>, Vec<u8>) {
        let key = Key::Owner {
            group: "g".into(),
            topic: "t".into(),
            partition: p,
        };
        let value = OwnerValue {
            member: (!member.is_empty()).then(|| member.to_owned()),
            epoch,
            start,
            by: None,
            refutes: Vec::new(),
        };
        (key.encode(), super::super::protocol::encode(&value))
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
            reset: false,
            committed_at: String::new(),
        };
        (key.encode(), super::super::protocol::encode(&value))
    }

    /// Offsets only need to grow within a test.
    fn next_offset() -> i64 {
        static NEXT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn apply(s: &mut GroupState, (k, v): (Vec<u8>, Vec<u8>), ts: i64) {
        s.apply(next_offset(), Some(&k), Some(&v), Some(ts));
    }

    /// `record` as a `read_uncommitted` read hands it on, written by
    /// `producer` in a transaction.
    fn in_transaction(producer_id: i64, (k, v): (Vec<u8>, Vec<u8>)) -> FetchedRecord {
        FetchedRecord {
            offset: next_offset(),
            key: Some(k.into()),
            value: Some(v.into()),
            headers: BTreeMap::new(),
            timestamp: rskafka::chrono::DateTime::from_timestamp_millis(0).unwrap(),
            transaction: Some(InTransaction::Record { producer_id }),
        }
    }

    fn marker(producer_id: i64, committed: bool) -> FetchedRecord {
        FetchedRecord {
            offset: next_offset(),
            key: None,
            value: None,
            headers: BTreeMap::new(),
            timestamp: rskafka::chrono::DateTime::from_timestamp_millis(0).unwrap(),
            transaction: Some(InTransaction::End {
                producer_id,
                committed,
            }),
        }
    }

    #[test]
    fn a_transactional_commit_counts_at_its_commit_marker_and_never_after_an_abort() {
        let tp = TopicPartition::new("t", 0);
        let mut s = GroupState::new("g");
        apply(&mut s, owner(0, "a", 1, 0), 0);
        // Producer 7 commits offset 40 in a transaction; producer 8's open one
        // (another partition's) does not hold it up.
        assert!(!s.apply_read(&in_transaction(7, commit(0, 40, "a", 1))));
        assert!(!s.apply_read(&in_transaction(8, commit(1, 99, "a", 1))));
        assert_eq!(s.committed(&tp), Some(0), "not before the marker");
        assert_eq!(s.transaction_committed(&tp), None);
        assert!(s.apply_read(&marker(7, true)));
        assert_eq!(s.committed(&tp), Some(40));
        assert_eq!(s.transaction_committed(&tp), Some(40));

        // An aborted transaction's commit never counts, marker or not.
        s.apply_read(&in_transaction(7, commit(0, 55, "a", 1)));
        assert!(!s.apply_read(&marker(7, false)));
        assert_eq!(s.committed(&tp), Some(40));
        assert_eq!(s.transaction_committed(&tp), Some(40));
        // A marker of a producer with nothing pending changes nothing.
        assert!(!s.apply_read(&marker(9, true)));

        // b took over in epoch 2; a's transaction that committed after the
        // claim in log order (before b's fence) does not count by epoch, but
        // is the truth of what was processed: b resumes after it.
        apply(&mut s, owner(0, "b", 2, 40), 0);
        s.apply_read(&in_transaction(7, commit(0, 70, "a", 1)));
        s.apply_read(&marker(7, true));
        assert_eq!(s.committed(&tp), Some(40));
        assert_eq!(s.transaction_committed(&tp), Some(70));
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
        let records = [
            (member("a", false), 0),
            (owner(0, "a", 1, 0), 10),
            (commit(0, 5, "a", 1), 20),
            (member("a", false), 30),
            (commit(0, 9, "a", 1), 40),
        ];
        let at = |s: &mut GroupState, i: usize| {
            let ((k, v), ts) = &records[i];
            s.apply(i as i64, Some(k), Some(v), Some(*ts));
        };
        let mut full = GroupState::new("g");
        for i in 0..records.len() {
            at(&mut full, i);
        }
        // Compaction keeps only the latest record per key.
        let mut compacted = GroupState::new("g");
        for i in [1, 3, 4] {
            at(&mut compacted, i);
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
        s.apply(
            next_offset(),
            Some(&other.encode()),
            Some(b"{}"),
            Some(5_000),
        );
        assert!(s.active_members().is_empty());
        assert_eq!(s.log_time_ms(), 5_000);
        apply(&mut s, member("a", false), 5_000);
        let (k, _) = member("a", false);
        s.apply(next_offset(), Some(&k), None, Some(5_001));
        assert!(s.member("a").is_none());
    }

    #[test]
    fn of_two_claims_in_the_same_epoch_the_first_in_the_log_counts() {
        let tp = TopicPartition::new("t", 0);
        let mut s = GroupState::new("g");
        apply(&mut s, owner(0, "a", 3, 10), 0);
        apply(&mut s, owner(0, "b", 4, 12), 0);
        apply(&mut s, owner(0, "c", 4, 12), 0);
        assert_eq!(
            s.owner(&tp)
                .map(|o| o.member.as_deref().unwrap_or_default()),
            Some("b")
        );
        // A record from the past does not count either.
        apply(&mut s, owner(0, "a", 3, 10), 0);
        assert_eq!(
            s.owner(&tp)
                .map(|o| (o.member.as_deref().unwrap_or_default(), o.epoch)),
            Some(("b", 4))
        );
        // Every reader is told, to write the owner that counts again.
        let contested = s.take_contested();
        assert_eq!(contested.len(), 1);
        assert_eq!(contested[0].1.member.as_deref(), Some("b"));
        assert_eq!(contested[0].1.refutes.len(), 2, "the two rivals");
        assert!(s.take_contested().is_empty());
        apply(&mut s, owner(0, "b", 4, 12), 0);
        assert!(s.take_contested().is_empty());
        // Writing it again failed: the partition is contested until it is written.
        s.contest(tp.clone(), &contested[0].1);
        assert_eq!(s.take_contested()[0].1.member.as_deref(), Some("b"));
        apply(&mut s, owner(0, "c", 5, 20), 0);
        assert_eq!(
            s.owner(&tp)
                .map(|o| (o.member.as_deref().unwrap_or_default(), o.epoch)),
            Some(("c", 5))
        );
    }

    #[test]
    fn a_reader_of_a_compacted_log_that_counted_a_rival_is_put_right() {
        let tp = TopicPartition::new("t", 0);
        let at = |s: &mut GroupState, offset: i64, (k, v): (Vec<u8>, Vec<u8>)| {
            s.apply(offset, Some(&k), Some(&v), Some(0));
        };
        let again = |p, member: &str, epoch, start, refutes: Vec<i64>| {
            let (k, v) = owner(p, member, epoch, start);
            let mut value: OwnerValue = serde_json::from_slice(&v).unwrap();
            value.refutes = refutes;
            (k, super::super::protocol::encode(&value))
        };
        // The whole log: b's claim at 3 counts, c's at 5 does not, b writes its
        // record again at 9 refuting 5.
        let mut whole = GroupState::new("g");
        at(&mut whole, 1, owner(0, "a", 3, 10));
        at(&mut whole, 3, owner(0, "b", 4, 12));
        at(&mut whole, 5, owner(0, "c", 4, 12));
        at(&mut whole, 9, again(0, "b", 4, 12, vec![5]));
        // The same log compacted up to 8: only c's record of the key is left
        // before the tail.
        let mut compacted = GroupState::new("g");
        at(&mut compacted, 5, owner(0, "c", 4, 12));
        assert_eq!(compacted.owner(&tp).unwrap().member.as_deref(), Some("c"));
        at(&mut compacted, 9, again(0, "b", 4, 12, vec![5]));
        for s in [&whole, &compacted] {
            let o = s.owner(&tp).unwrap();
            assert_eq!(
                (o.member.as_deref().unwrap_or_default(), o.epoch, o.start),
                ("b", 4, 12)
            );
        }
        // A refutation that arrives after the owner changed for real (it was in
        // flight) changes nothing for either.
        for s in [&mut whole, &mut compacted] {
            at(s, 10, owner(0, "d", 5, 20));
            at(s, 11, again(0, "b", 4, 12, vec![5, 7]));
            assert_eq!(s.owner(&tp).unwrap().member.as_deref(), Some("d"));
        }
    }

    #[test]
    fn a_record_beyond_the_next_epoch_shows_the_reader_missed_records() {
        // Writers name at most the epoch after the one they read, so only a
        // reader whose log was compacted (holding a rival from before the
        // cleaner's boundary) meets one; the newer epoch is taken.
        let tp = TopicPartition::new("t", 0);
        let mut s = GroupState::new("g");
        apply(&mut s, owner(0, "a", 3, 10), 0);
        apply(&mut s, owner(0, "c", 6, 12), 0);
        assert_eq!(
            s.owner(&tp)
                .map(|o| (o.member.as_deref().unwrap_or_default(), o.epoch)),
            Some(("c", 6))
        );
    }

    #[test]
    fn a_record_applied_on_acknowledgement_does_not_move_log_time() {
        let mut s = GroupState::new("g");
        apply(&mut s, member("a", false), 1_000);
        let (k, v) = owner(0, "a", 0, 0);
        s.apply(next_offset(), Some(&k), Some(&v), None);
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
                member: Some(by.into()),
                epoch,
                start: 0,
                by: Some(by.into()),
                refutes: Vec::new(),
            };
            (key.encode(), super::super::protocol::encode(&value))
        };
        let mut s = GroupState::new("g");
        apply(&mut s, member("a", false), 0);
        apply(&mut s, member("b", false), 0);
        apply(&mut s, owner(0, "a", 1, 0), 0);
        // b decided while a looked dead, but a heartbeat of a's landed first.
        apply(&mut s, member("a", false), 900);
        apply(&mut s, claim("b", 2), 1_200);
        assert_eq!(
            s.owner(&tp)
                .map(|o| o.member.as_deref().unwrap_or_default()),
            Some("a")
        );
        // Once a is dead where the claim lands, it counts.
        apply(&mut s, member("b", false), 2_000);
        apply(&mut s, claim("b", 2), 2_000);
        assert_eq!(
            s.owner(&tp)
                .map(|o| o.member.as_deref().unwrap_or_default()),
            Some("b")
        );
    }
}
