//! What a member does next, decided from the group state alone.
//!
//! The consumer's main loop and the protocol's simulation (`sim.rs`) drive the
//! same [`Planner`]: it owns no clock, no log and no task. It is given the state
//! read from the log, what the member runs, whether its lease holds and the time,
//! and answers with a [`Plan`]: partitions to stop without committing (fenced),
//! to hand over, to pass on without running, to start, to claim, and owner
//! records to write again because a rival record for them did not count. The
//! caller carries the plan out and reports back what it wrote
//! ([`Planner::handed`], [`Planner::claimed`]) and which partition tasks ended by
//! themselves ([`Planner::ended`]), which are started again after a backoff.

use std::collections::{BTreeMap, HashMap};
use std::ops::Add;
use std::time::Duration;

use super::GroupState;
use super::protocol::OwnerValue;
use crate::kafka::topic::TopicPartition;

/// A running partition to hand over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Handoff {
    pub tp: TopicPartition,
    /// The next owner; `None` when the target gives it to nobody.
    pub to: Option<String>,
}

/// A partition owned but not run, whose next owner is to be named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PassOn {
    pub tp: TopicPartition,
    /// Its owner record as the log has it.
    pub owner: OwnerValue,
    /// The next owner; `None` when the target gives it to nobody.
    pub to: Option<String>,
}

/// A partition to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Start {
    pub tp: TopicPartition,
    /// The epoch it is owned in.
    pub epoch: i64,
    /// The offset to start at.
    pub offset: i64,
}

/// What to do now, in this order: fence, hand over, pass on, start, claim.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Running partitions this member no longer owns in their epoch, or all of
    /// them when its lease ran out: stop at once and commit nothing.
    pub fence: Vec<TopicPartition>,
    /// Running partitions the target gives to someone else (or nobody):
    /// finish the record in flight, commit, write the next owner.
    pub hand_over: Vec<Handoff>,
    /// Partitions the log says are ours but that the target gives to someone
    /// else: name the next owner without running them.
    pub pass_on: Vec<PassOn>,
    /// Partitions to start.
    pub start: Vec<Start>,
    /// Partitions to claim now: the grace passed and they are still claimable.
    pub claim: Vec<TopicPartition>,
    /// Owner records of ours to write again: a rival record for the same
    /// partition did not count, and compaction must not keep it instead.
    pub reassert: Vec<(TopicPartition, OwnerValue)>,
}

/// A member's bookkeeping between plans. `T` is the caller's clock: tokio's
/// `Instant` in the consumer, simulated time in the simulation.
#[derive(Debug)]
pub(crate) struct Planner<T> {
    me: String,
    grace: Duration,
    restart_backoff: (Duration, Duration),
    /// Owner records written (handoffs, passes) and not yet read back: the epoch
    /// written, and until when to wait for a record whose outcome is unknown (a
    /// timed-out write may still land). Until the log shows them, acting on the
    /// older state would start the partition, or write a second record, beside
    /// its new owner.
    handed: HashMap<TopicPartition, (i64, Option<T>)>,
    /// How long a write whose outcome is unknown may still land.
    unknown_for: Duration,
    /// Partitions to claim, with when they became claimable for this member.
    claims: HashMap<TopicPartition, T>,
    /// Partitions whose task ended by itself: when they may start again, and the
    /// next wait.
    restarts: HashMap<TopicPartition, (T, Duration)>,
}

impl<T> Planner<T>
where
    T: Copy + Ord + Add<Duration, Output = T>,
{
    /// A planner for member `me`, which claims a partition only after it stayed
    /// claimable for `grace`, and starts a partition whose task ended again after
    /// a wait from `restart_backoff.0`, doubling to `restart_backoff.1`.
    /// A handoff written with an unknown outcome blocks the partition for
    /// `unknown_for`, the longest a write may take to land.
    pub(crate) fn new(
        me: impl Into<String>,
        grace: Duration,
        restart_backoff: (Duration, Duration),
        unknown_for: Duration,
    ) -> Self {
        Self {
            me: me.into(),
            grace,
            restart_backoff,
            unknown_for,
            handed: HashMap::new(),
            claims: HashMap::new(),
            restarts: HashMap::new(),
        }
    }

    /// Decides what to do. `running` maps each partition this member has a live
    /// task for to the epoch it runs in; `lease_ok` is whether the lease holds
    /// now; `joined` whether the state holds this member's own record yet.
    pub(crate) fn plan(
        &mut self,
        state: &mut GroupState,
        running: &BTreeMap<TopicPartition, i64>,
        lease_ok: bool,
        joined: bool,
        now: T,
    ) -> Plan {
        let me = self.me.as_str();
        let mut plan = Plan::default();
        // Owner records we wrote count as soon as the log shows them.
        self.handed.retain(|tp, (epoch, expiry)| {
            state.owner(tp).is_some_and(|o| o.epoch < *epoch) && expiry.is_none_or(|e| now < e)
        });

        // Fencing: a partition that moved while we were away stops at once, uncommitted.
        plan.fence = running
            .iter()
            .filter(|(tp, epoch)| {
                !lease_ok
                    || !state
                        .owner(tp)
                        .is_some_and(|o| o.is(me) && o.epoch == **epoch)
            })
            .map(|(tp, _)| tp.clone())
            .collect();
        if !lease_ok || !joined {
            return plan;
        }
        // Taken only now: one that arrived while the lease was out waits for it.
        // Every member that read a rival record states the owner that counts
        // again, not only that owner: it may be dead, and then nobody else
        // would, while a cleaner boundary after the rival leaves a reader of
        // the compacted log with the rival (see `state`).
        plan.reassert = state.take_contested();

        let target = state.target();
        let target_of = |tp: &TopicPartition| target.get(tp).map(String::as_str);
        let live = |tp: &TopicPartition| running.contains_key(tp) && !plan.fence.contains(tp);
        plan.hand_over = running
            .keys()
            .filter(|tp| live(tp) && target_of(tp) != Some(me))
            .map(|tp| Handoff {
                tp: tp.clone(),
                to: target_of(tp).map(str::to_owned),
            })
            .collect();

        // Start what the log says is ours. A partition ours in the log but meant
        // for someone else by now (the group changed between our claim and reading
        // it back) is passed on without running it; its new owner waits for that.
        self.restarts
            .retain(|tp, _| state.owner(tp).is_some_and(|o| o.is(me)));
        for (tp, owner) in state.owned_by(me) {
            if running.contains_key(&tp) || self.handed.contains_key(&tp) {
                continue;
            }
            if target_of(&tp) != Some(me) {
                let to = target_of(&tp).map(str::to_owned);
                plan.pass_on.push(PassOn { tp, owner, to });
                continue;
            }
            if self.restarts.get(&tp).is_some_and(|(at, _)| now < *at) {
                continue;
            }
            let start = state.committed(&tp).unwrap_or(owner.start);
            plan.start.push(Start {
                tp,
                epoch: owner.epoch,
                offset: start,
            });
        }

        // Claim partitions of dead members (or nobody's) that the target gives us,
        // once they stayed claimable for the grace.
        self.claims
            .retain(|tp, _| target_of(tp) == Some(me) && state.is_claimable(tp));
        for (tp, member) in &target {
            if member != me || !state.is_claimable(tp) || running.contains_key(tp) {
                continue;
            }
            let since = *self.claims.entry(tp.clone()).or_insert(now);
            if now >= since + self.grace {
                plan.claim.push(tp.clone());
            }
        }
        // Handoffs and passes count as written from now on: their records may
        // land even if the caller never learns that they did.
        for h in &plan.hand_over {
            self.handing(h.tp.clone(), running[&h.tp] + 1, now);
        }
        for p in &plan.pass_on {
            self.handing(p.tp.clone(), p.owner.epoch + 1, now);
        }
        plan
    }

    /// An owner record naming the next owner of `tp` in `epoch` is about to be
    /// written at `now`: until it is acknowledged, or could no longer land, the
    /// partition is neither started nor passed on again.
    fn handing(&mut self, tp: TopicPartition, epoch: i64, now: T) {
        self.handed
            .insert(tp, (epoch, Some(now + self.unknown_for)));
    }

    /// An owner record naming the next owner of `tp` in `epoch` was acknowledged.
    pub(crate) fn handed(&mut self, tp: TopicPartition, epoch: i64) {
        self.handed.insert(tp, (epoch, None));
    }

    /// Partitions handed over or passed on whose records the log does not show
    /// yet (or, written with an unknown outcome, may still land).
    #[cfg(test)]
    pub(crate) fn handed_partitions(&self) -> impl Iterator<Item = &TopicPartition> {
        self.handed.keys()
    }

    /// What a leaving member passes on besides the partitions it runs: those the
    /// log says it owns that it does not run and did not hand over already. A
    /// handoff the log does not show yet names someone else already: a second
    /// record in the same epoch would restart that partition from an older offset.
    pub(crate) fn left_behind(
        &self,
        state: &GroupState,
        running: impl Fn(&TopicPartition) -> bool,
    ) -> Vec<(TopicPartition, OwnerValue)> {
        state
            .owned_by(&self.me)
            .into_iter()
            .filter(|(tp, _)| !running(tp) && !self.handed.contains_key(tp))
            .collect()
    }

    /// A claim of `tp` was written at `now`: not again until it is read back, or
    /// four graces later if it was lost.
    pub(crate) fn claimed(&mut self, tp: TopicPartition, now: T) {
        self.claims.insert(tp, now + self.grace * 4);
    }

    /// The task of `tp` ended by itself at `now` (its lease lapsed, its fetcher
    /// stopped, its handler panicked): it starts again, if still ours, after a
    /// wait that doubles with every end that follows, so a handler that panics
    /// on every record does not spin.
    pub(crate) fn ended(&mut self, tp: TopicPartition, now: T) {
        let (initial, max) = self.restart_backoff;
        let entry = self.restarts.entry(tp).or_insert((now, Duration::ZERO));
        let wait = if entry.1.is_zero() {
            initial
        } else {
            (entry.1 * 2).min(max)
        };
        *entry = (now + wait, wait);
    }

    /// The earliest time a waiting claim or restart becomes due after `now`.
    pub(crate) fn next_due(&self, now: T) -> Option<T> {
        let claims = self.claims.values().map(|since| *since + self.grace);
        let restarts = self.restarts.values().map(|(at, _)| *at);
        claims.chain(restarts).filter(|at| *at > now).min()
    }
}

#[cfg(test)]
mod tests {
    use super::super::protocol::{Key, MemberValue, encode};
    use super::*;

    const GRACE: Duration = Duration::from_millis(100);

    fn state_with(records: &[(Key, Option<Vec<u8>>)], ts: i64) -> GroupState {
        let mut s = GroupState::new("g");
        for (offset, (k, v)) in (0..).zip(records) {
            s.apply(offset, Some(&k.encode()), v.as_deref(), Some(ts));
        }
        s
    }

    fn member(id: &str) -> (Key, Option<Vec<u8>>) {
        let key = Key::Member {
            group: "g".into(),
            member: id.into(),
        };
        let value = MemberValue {
            topics: BTreeMap::from([("t".into(), 2)]),
            session_timeout_ms: 1_000,
            leaving: false,
        };
        (key, Some(encode(&value)))
    }

    fn owner(p: i32, id: &str, epoch: i64) -> (Key, Option<Vec<u8>>) {
        let key = Key::Owner {
            group: "g".into(),
            topic: "t".into(),
            partition: p,
        };
        let value = OwnerValue {
            member: (!id.is_empty()).then(|| id.to_owned()),
            epoch,
            start: 0,
            by: Some(id.into()),
            refutes: Vec::new(),
        };
        (key, Some(encode(&value)))
    }

    fn tp(p: i32) -> TopicPartition {
        TopicPartition::new("t", p)
    }

    /// Partition `p` to start in `epoch` at `offset`.
    fn start(p: i32, epoch: i64, offset: i64) -> Start {
        Start {
            tp: tp(p),
            epoch,
            offset,
        }
    }

    #[test]
    fn a_lone_member_claims_after_the_grace_and_starts_what_it_owns() {
        let mut s = state_with(&[member("a")], 0);
        let mut planner = Planner::new("a", GRACE, (GRACE, GRACE * 8), GRACE * 10);
        let t0 = Duration::ZERO;
        let plan = planner.plan(&mut s, &BTreeMap::new(), true, true, t0);
        assert!(plan.claim.is_empty(), "not before the grace");
        assert_eq!(planner.next_due(t0), Some(t0 + GRACE));
        let plan = planner.plan(&mut s, &BTreeMap::new(), true, true, t0 + GRACE);
        assert_eq!(plan.claim, [tp(0), tp(1)]);
        planner.claimed(tp(0), t0 + GRACE);

        let mut s = state_with(&[member("a"), owner(0, "a", 0)], 0);
        let plan = planner.plan(&mut s, &BTreeMap::new(), true, true, t0 + GRACE);
        assert_eq!(plan.start, [start(0, 0, 0)]);
    }

    #[test]
    fn an_expired_lease_fences_everything_and_plans_nothing_else() {
        let mut s = state_with(&[member("a"), owner(0, "a", 0), owner(1, "a", 0)], 0);
        let mut planner = Planner::new("a", GRACE, (GRACE, GRACE * 8), GRACE * 10);
        let running = BTreeMap::from([(tp(0), 0), (tp(1), 0)]);
        let plan = planner.plan(&mut s, &running, false, true, Duration::ZERO);
        assert_eq!(
            plan,
            Plan {
                fence: vec![tp(0), tp(1)],
                ..Plan::default()
            }
        );
    }

    #[test]
    fn a_task_that_ended_by_itself_starts_again_after_a_growing_wait() {
        let mut s = state_with(&[member("a"), owner(0, "a", 0), owner(1, "a", 0)], 0);
        let mut planner = Planner::new("a", GRACE, (GRACE, GRACE * 3), GRACE * 10);
        let running = BTreeMap::from([(tp(1), 0)]);
        let t0 = Duration::from_secs(1);
        planner.ended(tp(0), t0);
        let plan = planner.plan(&mut s, &running, true, true, t0);
        assert!(plan.start.is_empty(), "waits first");
        let plan = planner.plan(&mut s, &running, true, true, t0 + GRACE);
        assert_eq!(plan.start, [start(0, 0, 0)]);
        // It ends again at once: the wait doubles, up to the cap.
        planner.ended(tp(0), t0 + GRACE);
        assert_eq!(planner.next_due(t0 + GRACE), Some(t0 + GRACE * 3));
        planner.ended(tp(0), t0 + GRACE * 3);
        assert_eq!(planner.next_due(t0 + GRACE * 3), Some(t0 + GRACE * 6));
    }

    #[test]
    fn records_written_and_not_read_back_are_not_written_again() {
        // a owns both partitions in the log, b joined: one of them moves to b.
        let mut s = state_with(
            &[member("a"), member("b"), owner(0, "a", 0), owner(1, "a", 0)],
            0,
        );
        let mut planner = Planner::new("a", GRACE, (GRACE, GRACE * 8), GRACE * 10);
        let plan = planner.plan(&mut s, &BTreeMap::new(), true, true, Duration::ZERO);
        assert_eq!(plan.pass_on.len(), 1);
        let PassOn { tp: moved, to, .. } = &plan.pass_on[0];
        assert_eq!(to.as_deref(), Some("b"));
        planner.handed(moved.clone(), 1);
        let plan = planner.plan(&mut s, &BTreeMap::new(), true, true, Duration::ZERO);
        assert!(plan.pass_on.is_empty());
        assert_eq!(planner.handed_partitions().count(), 1);
    }

    #[test]
    fn a_leaving_member_passes_on_only_what_it_neither_runs_nor_handed_over() {
        let s = state_with(
            &[
                member("a"),
                owner(0, "a", 0),
                owner(1, "a", 0),
                owner(2, "a", 0),
            ],
            0,
        );
        let mut planner: Planner<Duration> =
            Planner::new("a", GRACE, (GRACE, GRACE * 8), GRACE * 10);
        // 0 runs (handed over with its commit), 1 was passed on and not read back.
        planner.handed(tp(1), 1);
        let left = planner.left_behind(&s, |p| *p == tp(0));
        assert_eq!(
            left.into_iter().map(|(p, _)| p).collect::<Vec<_>>(),
            [tp(2)]
        );
    }

    #[test]
    fn a_handoff_of_unknown_outcome_blocks_the_partition_until_it_could_no_longer_land() {
        let mut s = state_with(&[member("a"), owner(0, "a", 0), owner(1, "a", 0)], 0);
        let mut planner = Planner::new("a", GRACE, (GRACE, GRACE * 8), GRACE * 10);
        let t0 = Duration::from_secs(1);
        planner.handing(tp(0), 1, t0);
        let plan = planner.plan(
            &mut s,
            &BTreeMap::from([(tp(1), 0)]),
            true,
            true,
            t0 + GRACE,
        );
        assert!(plan.start.is_empty(), "the record may still land");
        let later = t0 + GRACE * 10;
        let plan = planner.plan(&mut s, &BTreeMap::from([(tp(1), 0)]), true, true, later);
        assert_eq!(plan.start, [start(0, 0, 0)]);
    }

    #[test]
    fn every_reader_of_a_rival_record_writes_the_owner_that_counts_again() {
        let mut s = state_with(&[member("a"), member("b"), owner(0, "a", 1)], 0);
        let (k, v) = owner(0, "b", 1);
        s.apply(100, Some(&k.encode()), v.as_deref(), Some(0));
        for me in ["a", "b"] {
            let mut planner = Planner::new(me, GRACE, (GRACE, GRACE * 8), GRACE * 10);
            let mut state = s.clone();
            let plan = planner.plan(&mut state, &BTreeMap::new(), true, true, Duration::ZERO);
            assert_eq!(plan.reassert.len(), 1, "{me}");
            assert_eq!(plan.reassert[0].1.member.as_deref(), Some("a"));
            assert_eq!(plan.reassert[0].1.refutes, [100]);
            let again = planner.plan(&mut state, &BTreeMap::new(), true, true, Duration::ZERO);
            assert!(again.reassert.is_empty(), "written once");
        }
    }
}
