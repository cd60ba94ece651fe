//! A deterministic simulation of the group protocol over many seeds.
//!
//! Several members run the real [`GroupState`], [`Planner`] and [`LogCursor`]
//! against a simulated coordination log, on a simulated clock, with the faults
//! the protocol must survive: writes delayed and interleaved between members
//! (each member's own writes stay in order, as Kafka keeps them on one
//! partition), acknowledgements lost after the write landed, members crashed and
//! replaced, paused past their session timeout, leaving gracefully, broker
//! outages, and new members that read a compacted log. The broker stamps
//! records with its own time (`LogAppendTime`), as the coordination topic asks.
//!
//! Each member is modelled the way the consumer is built: a main loop that reads
//! the log and carries out plans, and waits (bounded) for the records a plan
//! writes; a heartbeat of its own that renews the lease; and partition runners
//! that check the lease before every record. After every step the run checks:
//! - **exclusive processing**: once a partition was processed by another run, an
//!   earlier run never processes it again;
//! - **safe commits**: no committed offset of the log (as a reader of the whole
//!   log computes it) passes a record that no member handled;
//! - **progress**: once the faults stop, every record is handled and every
//!   partition is run by a live member that the log names as its owner.
//!
//! `cargo test sim` runs [`CI_SEEDS`] seeds, and as many again in which half
//! of the members that join read a compacted log; `EDA_SIM_SEEDS=N` (and
//! `EDA_SIM_FIRST_SEED`) run more by hand, best with `--release`, and
//! `EDA_SIM_TRACE=1` prints what happens in a seed.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::kafka::seeds::Rng;
use std::time::Duration;

use super::planner::{Handoff, PassOn, Plan, Planner, Start};
use super::protocol::{Key, MemberValue, OffsetValue, OwnerValue, encode};
use super::state::GroupState;
use crate::kafka::fetch::{LogCursor, Read};
use crate::kafka::topic::TopicPartition;

/// Seeds run by `cargo test`.
pub(super) const CI_SEEDS: u64 = 200;

const GROUP: &str = "g";
const TOPIC: &str = "t";
const PARTITIONS: i32 = 4;
const SLOTS: usize = 3;
const SESSION: u64 = 300;
const HEARTBEAT: u64 = 50;
const GRACE: u64 = 50;
const COMMIT: u64 = 60;
const RECONCILE: u64 = 25;
/// The longest a write takes to land (its acknowledgement follows within 6 ms).
const MAX_DELAY: u64 = 450;
const FAULTS_UNTIL: u64 = 15_000;
const SETTLE_UNTIL: u64 = 25_000;
const RECORDS: i64 = 600;
/// Records younger than this are never compacted away: the coordination topic's
/// `min.compaction.lag.ms` (5 minutes) over the default session timeout (10 s).
const COMPACTION_LAG: u64 = 30 * SESSION;

fn ms(t: u64) -> Duration {
    Duration::from_millis(t)
}

#[derive(Debug, Clone)]
struct Entry {
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    ts: i64,
}

#[derive(Debug, Clone)]
enum Purpose {
    Heartbeat {
        sent: u64,
    },
    Owner {
        tp: TopicPartition,
        epoch: i64,
    },
    /// The owner's record written again after a rival one did not count.
    Reassert {
        tp: TopicPartition,
        owner: OwnerValue,
    },
    Claim {
        tp: TopicPartition,
        at: u64,
        early: bool,
    },
    Commit {
        tp: TopicPartition,
        offset: i64,
        run: u64,
    },
    Tombstone,
}

#[derive(Debug)]
struct Write {
    slot: usize,
    incarnation: u64,
    entry: Entry,
    purpose: Purpose,
    deliver_at: u64,
    ack_at: u64,
    ack_lost: bool,
    /// Where it landed once delivered: `Some(offset)`, or `None` if it failed.
    landed: Option<Option<usize>>,
    /// The main loop waits for it.
    awaited: bool,
}

#[derive(Debug)]
struct Run {
    id: u64,
    epoch: i64,
    next: i64,
    committed: i64,
}

struct Member {
    id: String,
    incarnation: u64,
    down: bool,
    paused_until: u64,
    leaving: bool,
    state: GroupState,
    read: usize,
    cursor: LogCursor<Entry>,
    planner: Planner<Duration>,
    lease_until: u64,
    /// Acknowledged heartbeats not read back yet: their offset and the lease
    /// each grants once the state holds it.
    grants: Vec<(i64, u64)>,
    heartbeat_at: u64,
    heartbeat_out: bool,
    commit_at: u64,
    reconcile_at: u64,
    waiting: usize,
    waiting_until: u64,
    running: BTreeMap<TopicPartition, Run>,
}

impl Member {
    fn new(slot: usize, incarnation: u64, now: u64) -> Self {
        Self {
            id: format!("m{slot}-{incarnation}"),
            incarnation,
            down: false,
            paused_until: 0,
            leaving: false,
            state: GroupState::new(GROUP),
            read: 0,
            cursor: LogCursor::at(0),
            planner: Planner::new(
                format!("m{slot}-{incarnation}"),
                ms(GRACE),
                (ms(10), ms(200)),
                ms(MAX_DELAY),
            ),
            lease_until: 0,
            grants: Vec::new(),
            heartbeat_at: now,
            heartbeat_out: false,
            commit_at: now + COMMIT,
            reconcile_at: now,
            waiting: 0,
            waiting_until: 0,
            running: BTreeMap::new(),
        }
    }

    fn active(&self, now: u64) -> bool {
        !self.down && now >= self.paused_until
    }
}

/// What the checks found; `Err` names the first violation.
struct World {
    rng: Rng,
    now: u64,
    log: Vec<Entry>,
    truth: GroupState,
    writes: Vec<Write>,
    members: Vec<Member>,
    broker_down_until: u64,
    next_run: u64,
    /// Per partition: the run processing it now, and the runs that have stopped.
    current: HashMap<TopicPartition, u64>,
    closed: HashSet<u64>,
    handled: HashMap<TopicPartition, Vec<bool>>,
    /// Faults injected, by kind, for the report.
    faults: BTreeMap<&'static str, u64>,
    /// `EDA_SIM_TRACE=1`: print what happens, to follow a failing seed.
    trace: bool,
    /// New members read a compacted log half the time.
    compaction: bool,
}

fn tp(p: i32) -> TopicPartition {
    TopicPartition::new(TOPIC, p)
}

fn owner_key(tp: &TopicPartition) -> Vec<u8> {
    Key::Owner {
        group: GROUP.into(),
        topic: tp.topic.clone(),
        partition: tp.partition,
    }
    .encode()
}

impl World {
    fn new(seed: u64, compaction: bool) -> Self {
        let mut rng = Rng(seed);
        let members = (0..SLOTS)
            .map(|slot| Member::new(slot, 0, rng.below(100)))
            .collect();
        Self {
            rng,
            now: 0,
            log: Vec::new(),
            truth: GroupState::new(GROUP),
            writes: Vec::new(),
            members,
            broker_down_until: 0,
            next_run: 0,
            current: HashMap::new(),
            closed: HashSet::new(),
            handled: (0..PARTITIONS)
                .map(|p| (tp(p), vec![false; RECORDS as usize]))
                .collect(),
            faults: BTreeMap::new(),
            trace: std::env::var_os("EDA_SIM_TRACE").is_some(),
            compaction,
        }
    }

    fn trace(&self, what: impl FnOnce() -> String) {
        if self.trace {
            eprintln!("{:>6} {}", self.now, what());
        }
    }

    fn faulty(&self) -> bool {
        self.now < FAULTS_UNTIL
    }

    /// Records produced to each partition so far.
    fn produced(&self) -> i64 {
        (RECORDS * self.now.min(FAULTS_UNTIL) as i64 / FAULTS_UNTIL as i64).min(RECORDS)
    }

    fn handled_prefix(&self, tp: &TopicPartition) -> i64 {
        self.handled[tp].iter().take_while(|h| **h).count() as i64
    }

    fn send(&mut self, slot: usize, entry: Entry, purpose: Purpose, awaited: bool) {
        let m = &self.members[slot];
        // One member's writes to the partition land in the order it sent them.
        let after = self
            .writes
            .iter()
            .filter(|w| w.slot == slot && w.incarnation == m.incarnation)
            .map(|w| w.deliver_at)
            .max()
            .unwrap_or(0);
        let slow = self.faulty() && self.rng.chance(50_000);
        let delay = if slow {
            30 + self.rng.below(MAX_DELAY - 40)
        } else {
            1 + self.rng.below(8)
        };
        let deliver_at = (self.now + delay).max(after);
        let ack_at = deliver_at + 1 + self.rng.below(5);
        let ack_lost = self.faulty() && self.rng.chance(20_000);
        if ack_lost {
            *self.faults.entry("lost acknowledgement").or_default() += 1;
        }
        let incarnation = m.incarnation;
        self.writes.push(Write {
            slot,
            incarnation,
            entry,
            purpose,
            deliver_at,
            ack_at,
            ack_lost,
            landed: None,
            awaited,
        });
        if awaited {
            let m = &mut self.members[slot];
            m.waiting += 1;
            m.waiting_until = m.waiting_until.max(self.now + SESSION / 3);
        }
    }

    fn step(&mut self) -> Result<(), String> {
        self.now += 1 + self.rng.below(4);
        if self.faulty() {
            self.inject_faults();
        }
        self.deliver()?;
        self.acknowledge()?;
        for slot in 0..SLOTS {
            if self.members[slot].active(self.now) {
                self.heartbeat(slot);
                self.process(slot)?;
                self.main_loop(slot);
            }
        }
        Ok(())
    }

    fn inject_faults(&mut self) {
        let now = self.now;
        let slot = self.rng.below(SLOTS as u64) as usize;
        if self.rng.chance(600) && !self.members[slot].down {
            *self.faults.entry("crash").or_default() += 1;
            self.trace(|| format!("crash of slot {slot}"));
            self.members[slot].down = true;
            self.members[slot].running.clear();
        } else if self.rng.chance(600) && self.members[slot].active(now) {
            *self.faults.entry("pause").or_default() += 1;
            self.members[slot].paused_until = now + SESSION / 2 + self.rng.below(SESSION * 3);
            let until = self.members[slot].paused_until;
            self.trace(|| format!("slot {slot} paused until {until}"));
        } else if self.rng.chance(300) && !self.members[slot].down {
            *self.faults.entry("leave").or_default() += 1;
            self.members[slot].leaving = true;
        } else if self.rng.chance(200) && now >= self.broker_down_until {
            *self.faults.entry("broker outage").or_default() += 1;
            self.broker_down_until = now + self.rng.below(SESSION * 2);
            let until = self.broker_down_until;
            self.trace(|| format!("broker down until {until}"));
        }
        // A crashed or departed member is replaced by a new process.
        for slot in 0..SLOTS {
            if self.members[slot].down && self.rng.chance(2_000) {
                self.restart(slot);
            }
        }
    }

    fn restart(&mut self, slot: usize) {
        let incarnation = self.members[slot].incarnation + 1;
        let mut m = Member::new(slot, incarnation, self.now);
        // A new member reads the log as the broker keeps it: often compacted.
        // Kafka's cleaner looks only at records older than the topic's
        // `min.compaction.lag.ms` (and never at the active segment): among those,
        // it drops every record whose key has a newer one among those too.
        let compacted = self.compaction && self.rng.chance(500_000);
        self.trace(|| {
            format!("slot {slot} restarts as m{slot}-{incarnation}, compacted log: {compacted}")
        });
        if compacted {
            *self.faults.entry("join after compaction").or_default() += 1;
            let lag_start = self.now.saturating_sub(COMPACTION_LAG) as i64;
            let cleanable = self.log.iter().take_while(|e| e.ts < lag_start).count();
            let mut latest: HashMap<&[u8], usize> = HashMap::new();
            for (i, e) in self.log[..cleanable].iter().enumerate() {
                latest.insert(&e.key, i);
            }
            let kept = (0..self.log.len())
                .filter(|i| *i >= cleanable || latest[&self.log[*i].key[..]] == *i);
            for i in kept {
                let e = &self.log[i];
                m.state
                    .apply(i as i64, Some(&e.key), e.value.as_deref(), Some(e.ts));
            }
            m.read = self.log.len();
            m.cursor = LogCursor::at(self.log.len() as i64);
        }
        self.members[slot] = m;
    }

    fn deliver(&mut self) -> Result<(), String> {
        let up = self.now >= self.broker_down_until;
        let mut appended = false;
        for w in self
            .writes
            .iter_mut()
            .filter(|w| w.landed.is_none() && w.deliver_at <= self.now)
        {
            if !up {
                w.landed = Some(None);
                continue;
            }
            let mut entry = w.entry.clone();
            entry.ts = self.now as i64;
            if self.trace {
                eprintln!(
                    "{:>6} log@{} {} = {}",
                    self.now,
                    self.log.len(),
                    String::from_utf8_lossy(&entry.key),
                    entry
                        .value
                        .as_deref()
                        .map_or("(tombstone)".into(), String::from_utf8_lossy)
                );
            }
            let offset = self.log.len() as i64;
            self.truth.apply(
                offset,
                Some(&entry.key),
                entry.value.as_deref(),
                Some(entry.ts),
            );
            w.landed = Some(Some(self.log.len()));
            self.log.push(entry);
            appended = true;
        }
        if appended {
            self.check_commits()?;
        }
        Ok(())
    }

    /// No committed offset passes a record nobody handled.
    fn check_commits(&self) -> Result<(), String> {
        for p in 0..PARTITIONS {
            let tp = tp(p);
            if let Some(c) = self.truth.committed(&tp)
                && c > self.handled_prefix(&tp)
            {
                return Err(format!(
                    "{tp}: committed offset {c} passes unhandled offset {} at t={}",
                    self.handled_prefix(&tp),
                    self.now
                ));
            }
        }
        Ok(())
    }

    fn acknowledge(&mut self) -> Result<(), String> {
        let now = self.now;
        let mut i = 0;
        while i < self.writes.len() {
            let w = &self.writes[i];
            let m = &self.members[w.slot];
            let stale = m.incarnation != w.incarnation || m.down;
            let due = w.landed.is_some() && w.ack_at <= now && m.active(now);
            if !(stale || due) {
                i += 1;
                continue;
            }
            let w = self.writes.swap_remove(i);
            if stale {
                continue;
            }
            let landed = w.landed.flatten().filter(|_| !w.ack_lost);
            self.on_ack(w, landed);
        }
        Ok(())
    }

    fn on_ack(&mut self, w: Write, landed: Option<usize>) {
        let m = &mut self.members[w.slot];
        if w.awaited {
            m.waiting = m.waiting.saturating_sub(1);
        }
        match w.purpose {
            Purpose::Heartbeat { sent } => {
                m.heartbeat_out = false;
                if let Some(offset) = landed {
                    m.grants.push((offset as i64, sent + SESSION * 2 / 3));
                }
            }
            Purpose::Owner { tp, epoch } => {
                if let Some(offset) = landed {
                    m.cursor.acknowledged(offset as i64, w.entry);
                    m.planner.handed(tp, epoch);
                }
            }
            Purpose::Reassert { tp, owner } => match landed {
                Some(offset) => m.cursor.acknowledged(offset as i64, w.entry),
                None => m.state.contest(tp, &owner),
            },
            Purpose::Claim { tp, at, early } => {
                if let Some(offset) = landed {
                    if early {
                        m.cursor.acknowledged(offset as i64, w.entry);
                    }
                    m.planner.claimed(tp, ms(at));
                }
            }
            Purpose::Commit { tp, offset, run } => {
                if landed.is_some()
                    && let Some(r) = m.running.get_mut(&tp).filter(|r| r.id == run)
                {
                    r.committed = r.committed.max(offset);
                }
            }
            Purpose::Tombstone => {
                m.down = true;
            }
        }
    }

    fn heartbeat(&mut self, slot: usize) {
        let m = &mut self.members[slot];
        if m.heartbeat_out || self.now < m.heartbeat_at {
            return;
        }
        m.heartbeat_out = true;
        m.heartbeat_at = self.now + HEARTBEAT;
        let value = MemberValue {
            topics: BTreeMap::from([(TOPIC.to_owned(), PARTITIONS)]),
            session_timeout_ms: SESSION as i64,
            leaving: m.leaving,
        };
        let entry = Entry {
            key: Key::Member {
                group: GROUP.into(),
                member: m.id.clone(),
            }
            .encode(),
            value: Some(encode(&value)),
            ts: 0,
        };
        let sent = self.now;
        self.send(slot, entry, Purpose::Heartbeat { sent }, false);
    }

    /// The partition runners: each handles records while the lease holds.
    fn process(&mut self, slot: usize) -> Result<(), String> {
        let produced = self.produced();
        let now = self.now;
        let m = &mut self.members[slot];
        let lease_ok = m.lease_until > now;
        let tps: Vec<TopicPartition> = m.running.keys().cloned().collect();
        for tp in tps {
            if !lease_ok {
                // The runner sees the lapsed lease before its next record and ends.
                if let Some(r) = m.running.get(&tp)
                    && r.next < produced
                {
                    m.running.remove(&tp);
                    m.planner.ended(tp, ms(now));
                }
                continue;
            }
            let Some(r) = m.running.get_mut(&tp) else {
                continue;
            };
            let n = self.rng.below(4);
            for _ in 0..n {
                if r.next >= produced {
                    break;
                }
                // Exclusive processing.
                let current = self.current.entry(tp.clone()).or_insert(r.id);
                if *current != r.id {
                    if self.closed.contains(&r.id) {
                        return Err(format!(
                            "{tp}: run {} of {} processed offset {} at t={} after another run took over",
                            r.id, m.id, r.next, now
                        ));
                    }
                    self.closed.insert(*current);
                    *current = r.id;
                    if self.trace {
                        eprintln!(
                            "{now:>6} {tp}: run {} of {} processes from {} (lease {})",
                            r.id, m.id, r.next, m.lease_until
                        );
                    }
                }
                self.handled.get_mut(&tp).expect("known partition")[r.next as usize] = true;
                r.next += 1;
            }
        }
        Ok(())
    }

    fn main_loop(&mut self, slot: usize) {
        let now = self.now;
        {
            let m = &mut self.members[slot];
            if m.waiting > 0 && now < m.waiting_until {
                return;
            }
            m.waiting = 0;
        }
        // Read what the broker has (nothing while it is down).
        let mut react = false;
        if now >= self.broker_down_until {
            let n = 1 + self.rng.below(6) as usize;
            let m = &mut self.members[slot];
            let end = (m.read + n).min(self.log.len());
            for offset in m.read..end {
                let e = &self.log[offset];
                let same = |own: &Entry| own.key == e.key && own.value == e.value;
                match m.cursor.read(offset as i64, same) {
                    Read::Fresh => {
                        react |= m.state.apply(
                            offset as i64,
                            Some(&e.key),
                            e.value.as_deref(),
                            Some(e.ts),
                        );
                    }
                    Read::Applied => {}
                    // The simulated log is never truncated.
                    Read::Diverged => panic!("{}: the log diverged at offset {offset}", m.id),
                }
            }
            m.read = end;
        }
        let m = &mut self.members[slot];
        for (offset, e) in m.cursor.ready() {
            react |= m
                .state
                .apply(offset, Some(&e.key), e.value.as_deref(), None);
        }
        let read = m.cursor.next();
        for (_, until) in m.grants.iter().filter(|(offset, _)| *offset < read) {
            m.lease_until = m.lease_until.max(*until);
        }
        m.grants.retain(|(offset, _)| *offset >= read);
        if !react && now < m.reconcile_at {
            self.commit(slot);
            return;
        }
        m.reconcile_at = now + RECONCILE;
        let epochs = m
            .running
            .iter()
            .map(|(tp, r)| (tp.clone(), r.epoch))
            .collect();
        let lease_ok = m.lease_until > now;
        let joined = m.state.member(&m.id).is_some();
        let plan = m
            .planner
            .plan(&mut m.state, &epochs, lease_ok, joined, ms(now));
        if plan != Plan::default() {
            let (id, read, lease) = (m.id.clone(), m.read, m.lease_until);
            self.trace(|| format!("{id} (read {read}, lease {lease}) plans {plan:?}"));
        }
        self.carry_out(slot, plan);
        self.commit(slot);
        self.leave_when_done(slot);
    }

    fn owner_entry(tp: &TopicPartition, value: &OwnerValue) -> Entry {
        Entry {
            key: owner_key(tp),
            value: Some(encode(value)),
            ts: 0,
        }
    }

    /// A handoff or a pass-on: the owner names `to` in `epoch`, from `start`.
    fn name_next_owner(
        &mut self,
        slot: usize,
        tp: TopicPartition,
        to: Option<String>,
        epoch: i64,
        start: i64,
    ) {
        let value = OwnerValue {
            member: to,
            epoch,
            start,
            by: Some(self.members[slot].id.clone()),
            refutes: Vec::new(),
        };
        let entry = Self::owner_entry(&tp, &value);
        self.send(slot, entry, Purpose::Owner { tp, epoch }, true);
    }

    fn carry_out(&mut self, slot: usize, plan: Plan) {
        let now = self.now;
        let me = self.members[slot].id.clone();
        for tp in plan.fence {
            self.members[slot].running.remove(&tp);
        }
        for Handoff { tp, to } in plan.hand_over {
            let m = &mut self.members[slot];
            let Some(r) = m.running.remove(&tp) else {
                continue;
            };
            if r.next > r.committed {
                let entry = commit_entry(&tp, r.next, &me, r.epoch);
                let purpose = Purpose::Commit {
                    tp: tp.clone(),
                    offset: r.next,
                    run: r.id,
                };
                self.send(slot, entry, purpose, true);
            }
            self.name_next_owner(slot, tp, to, r.epoch + 1, r.next);
        }
        for PassOn { tp, owner, to } in plan.pass_on {
            let start = self.members[slot]
                .state
                .committed(&tp)
                .unwrap_or(owner.start);
            self.name_next_owner(slot, tp, to, owner.epoch + 1, start);
        }
        for Start {
            tp,
            epoch,
            offset: start,
        } in plan.start
        {
            let id = self.next_run;
            self.next_run += 1;
            self.members[slot].running.insert(
                tp,
                Run {
                    id,
                    epoch,
                    next: start,
                    committed: start,
                },
            );
        }
        for tp in plan.claim {
            let state = &self.members[slot].state;
            let value = OwnerValue {
                member: Some(me.clone()),
                epoch: state.owner(&tp).map_or(0, |o| o.epoch + 1),
                start: state.committed(&tp).unwrap_or(0),
                by: Some(me.clone()),
                refutes: Vec::new(),
            };
            let early = state.settled_by_writer(&tp, &me);
            let entry = Self::owner_entry(&tp, &value);
            self.send(slot, entry, Purpose::Claim { tp, at: now, early }, true);
        }
        for (tp, value) in plan.reassert {
            let entry = Self::owner_entry(&tp, &value);
            self.send(slot, entry, Purpose::Reassert { tp, owner: value }, true);
        }
    }

    fn commit(&mut self, slot: usize) {
        let now = self.now;
        let m = &mut self.members[slot];
        if now < m.commit_at || m.lease_until <= now || (m.waiting > 0 && now < m.waiting_until) {
            return;
        }
        m.commit_at = now + COMMIT;
        let due: Vec<(TopicPartition, i64, i64, u64)> = m
            .running
            .iter()
            .filter(|(tp, r)| {
                r.next > r.committed
                    && m.state
                        .owner(tp)
                        .is_some_and(|o| o.is(&m.id) && o.epoch == r.epoch)
            })
            .map(|(tp, r)| (tp.clone(), r.next, r.epoch, r.id))
            .collect();
        let me = m.id.clone();
        for (tp, offset, epoch, run) in due {
            let entry = commit_entry(&tp, offset, &me, epoch);
            self.send(slot, entry, Purpose::Commit { tp, offset, run }, true);
        }
    }

    /// A leaving member that owns nothing any more writes its tombstone.
    fn leave_when_done(&mut self, slot: usize) {
        let m = &self.members[slot];
        if !m.leaving
            || m.waiting > 0
            || !m.running.is_empty()
            || !m.state.member(&m.id).is_some_and(|r| r.value.leaving)
            || !m.state.owned_by(&m.id).is_empty()
            || m.planner.handed_partitions().next().is_some()
        {
            return;
        }
        let entry = Entry {
            key: Key::Member {
                group: GROUP.into(),
                member: m.id.clone(),
            }
            .encode(),
            value: None,
            ts: 0,
        };
        self.send(slot, entry, Purpose::Tombstone, true);
    }

    fn dump(&self, tp: &TopicPartition) {
        for m in &self.members {
            self.trace(|| {
                format!(
                    "{}: read {} cursor {} lease {} grants {:?} owner of {tp} {:?} alive {:?}",
                    m.id,
                    m.read,
                    m.cursor.next(),
                    m.lease_until,
                    m.grants,
                    m.state.owner(tp),
                    m.state.active_members()
                )
            });
        }
    }

    /// Once the faults stopped and the group settled: every record handled, every
    /// partition run by the live member the log names.
    fn check_progress(&self) -> Result<(), String> {
        for p in 0..PARTITIONS {
            let tp = tp(p);
            let prefix = self.handled_prefix(&tp);
            if prefix < RECORDS {
                let owner = self.truth.owner(&tp);
                self.dump(&tp);
                return Err(format!(
                    "{tp}: only {prefix} of {RECORDS} records handled after the faults stopped; owner {owner:?}"
                ));
            }
            let owner = self.truth.owner(&tp).and_then(|o| o.member.clone());
            let runs = self
                .members
                .iter()
                .filter(|m| !m.down && m.running.contains_key(&tp))
                .map(|m| m.id.clone())
                .collect::<Vec<_>>();
            if runs.len() != 1 || owner.as_ref() != runs.first() {
                self.dump(&tp);
                return Err(format!(
                    "{tp}: owned by {owner:?} in the log but run by {runs:?} after the faults stopped"
                ));
            }
        }
        Ok(())
    }
}

fn commit_entry(tp: &TopicPartition, offset: i64, member: &str, epoch: i64) -> Entry {
    let value = OffsetValue {
        offset,
        member: Some(member.to_owned()),
        epoch: Some(epoch),
        reset: false,
        committed_at: String::new(),
    };
    Entry {
        key: Key::Offset {
            group: GROUP.into(),
            topic: tp.topic.clone(),
            partition: tp.partition,
        }
        .encode(),
        value: Some(encode(&value)),
        ts: 0,
    }
}

/// Runs one seed to the end; the faults injected, or the first violation.
fn run(seed: u64, compaction: bool) -> Result<BTreeMap<&'static str, u64>, String> {
    let mut world = World::new(seed, compaction);
    while world.now < SETTLE_UNTIL {
        world.step().map_err(|e| format!("seed {seed}: {e}"))?;
        // Every slot is filled again once the faults stop.
        if !world.faulty() {
            for slot in 0..SLOTS {
                if world.members[slot].down {
                    world.restart(slot);
                }
            }
        }
    }
    world
        .check_progress()
        .map_err(|e| format!("seed {seed}: {e}"))?;
    Ok(world.faults)
}

/// Runs the seeds `EDA_SIM_FIRST_SEED` (1) onwards, `EDA_SIM_SEEDS` of them
/// ([`CI_SEEDS`]), and fails with every failing seed.
fn run_seeds(compaction: bool) {
    crate::kafka::seeds::run_seeds(
        &format!("group simulation (compaction: {compaction})"),
        CI_SEEDS,
        |seed| run(seed, compaction),
    );
}

#[test]
fn the_protocol_is_safe_and_live_over_many_seeds() {
    run_seeds(false);
}

#[test]
fn the_protocol_is_safe_and_live_when_new_members_read_a_compacted_log() {
    run_seeds(true);
}

#[test]
fn the_same_seed_runs_the_same_way() {
    assert_eq!(run(7, true), run(7, true));
}
