//! A deterministic simulation of one partition's idempotent producer with
//! several batches in flight, against a model of the broker's sequence checks
//! (Kafka's `ProducerStateManager`: a producer's batches are written only in
//! sequence order, a repeat of one of its last five batches is answered as
//! written without writing it again, and the first batch of a producer id the
//! partition has no state for is taken whatever its sequence).
//!
//! The network loses requests and answers, delivers requests out of order
//! (as a reconnect and rskafka's own retries can) and answers out of order;
//! the broker sometimes answers `NOT_LEADER_OR_FOLLOWER` or refuses a batch
//! for good. What is checked is ours: the [`Window`]'s rules, driven the way
//! the partition worker drives them. At the end every batch was answered
//! once; every batch answered as written is in the log exactly once; no
//! refused batch is; and the log holds the batches in the order they were
//! taken. `EDA_SIM_SEEDS` and `EDA_SIM_FIRST_SEED` run more seeds;
//! `EDA_SIM_TRACE=1` prints each send and answer, to follow a failing seed.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::kafka::seeds::{Faults, Rng, run_seeds};

use super::producer_id::ProducerIdentity;
use super::window::{MAX_IN_FLIGHT, Next, Stamp, Verdict, Window};

/// One percent, in the chances `Rng::chance` takes (per million).
const PERCENT: u64 = 10_000;

/// Batches the broker remembers per producer id to recognise a repeat.
const BROKER_REMEMBERS: usize = 5;

/// A producer id's state at the broker.
struct ProducerState {
    next_sequence: i32,
    /// `(base, records)` of its last batches written.
    recent: VecDeque<(i32, usize)>,
}

#[derive(Default)]
struct Broker {
    /// Batch keys, in the order written.
    log: Vec<u64>,
    producers: HashMap<i64, ProducerState>,
}

impl Broker {
    fn append(&mut self, key: u64, stamp: Stamp, records: usize) -> Verdict {
        // A producer id the partition has no state for starts wherever its
        // first batch says (Kafka accepts any sequence then, for a producer
        // whose state was removed by retention).
        let state = self
            .producers
            .entry(stamp.id.id)
            .or_insert_with(|| ProducerState {
                next_sequence: stamp.base,
                recent: VecDeque::new(),
            });
        if state
            .recent
            .iter()
            .any(|&(base, n)| base == stamp.base && n == records)
        {
            return Verdict::Written;
        }
        if stamp.base != state.next_sequence {
            return Verdict::SequenceRefused;
        }
        self.log.push(key);
        state.next_sequence += i32::try_from(records).unwrap_or(0);
        state.recent.push_back((stamp.base, records));
        if state.recent.len() > BROKER_REMEMBERS {
            state.recent.pop_front();
        }
        Verdict::Written
    }
}

/// The producer's ids: a generation is retired and the next one takes a new id.
struct Ids {
    current: Option<u64>,
    next: u64,
}

impl Ids {
    fn get(&mut self) -> (ProducerIdentity, u64) {
        let generation = *self.current.get_or_insert_with(|| {
            self.next += 1;
            self.next
        });
        let id = ProducerIdentity {
            id: 1000 + i64::try_from(generation).unwrap_or(0),
            epoch: 0,
        };
        (id, generation)
    }
    fn retire(&mut self, generation: u64) {
        if self.current == Some(generation) {
            self.current = None;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Written,
    Failed,
}

fn run(seed: u64, max_in_flight: usize) -> Result<Faults, String> {
    let trace = std::env::var_os("EDA_SIM_TRACE").is_some();
    let mut rng = Rng(seed);
    let batches = 20 + rng.below(40) as usize;
    let records: Vec<usize> = (0..batches).map(|_| 1 + rng.below(4) as usize).collect();
    // Some seeds are calm, some stormy.
    let loss = rng.below(25);
    let reorder = rng.below(40);
    let not_leader = rng.below(15);
    // A batch the broker refuses for good (too large, corrupt) is refused on
    // every attempt.
    let reject = if rng.chance(30 * PERCENT) { 5 } else { 0 };
    let refused: Vec<bool> = (0..batches).map(|_| rng.chance(reject * PERCENT)).collect();

    let mut window = Window::new(max_in_flight);
    let mut ids = Ids {
        current: None,
        next: 0,
    };
    // The producer asks for its id as it starts, and other partitions' workers
    // take a new one after a retirement: this partition may find an id ready.
    let id_ready = rng.chance(50 * PERCENT);
    if id_ready {
        ids.get();
    }
    let mut broker = Broker::default();
    let mut taken = 0;
    let mut requests: Vec<(u64, Stamp)> = Vec::new();
    let mut answers: Vec<(u64, Verdict)> = Vec::new();
    let mut outcomes: BTreeMap<u64, Outcome> = BTreeMap::new();
    let mut faults = Faults::new();

    for _step in 0..200_000 {
        if outcomes.len() == batches && window.is_empty() {
            return check(&broker, &outcomes, batches).map(|()| faults);
        }
        // The worker: a parked batch goes again first, else a new one.
        if let Some(retry) = window.next_retry() {
            if retry.renumber {
                let (id, generation) = ids.get();
                let n = records[usize::try_from(retry.key).unwrap_or(0)];
                let stamp = window.stamp(id, generation, n);
                window.restamp(retry.key, stamp);
            }
            let stamp = window
                .stamp_of(retry.key)
                .ok_or("a parked batch has no stamp")?;
            requests.push((retry.key, stamp));
            *faults.entry("retries").or_default() += 1;
            continue;
        }
        // As many as there is room for, taken at once as the worker takes
        // them; a worker with no id asks for one with nothing on its way.
        let room = match ids.current {
            Some(_) => window.room(ids.current),
            None => usize::from(window.is_empty()),
        };
        if taken < batches && room > 0 {
            for _ in 0..room.min(batches - taken) {
                let (id, generation) = ids.get();
                let stamp = window.stamp(id, generation, records[taken]);
                let key = window.admit(records[taken], Some(stamp));
                if key != taken as u64 {
                    return Err(format!("batch {taken} got key {key}"));
                }
                requests.push((key, stamp));
                taken += 1;
            }
            continue;
        }
        // The network.
        let deliver_request =
            !requests.is_empty() && (answers.is_empty() || rng.chance(50 * PERCENT));
        if deliver_request {
            let i = if rng.chance(reorder * PERCENT) {
                *faults.entry("reordered").or_default() += 1;
                rng.below(requests.len() as u64) as usize
            } else {
                0
            };
            let (key, stamp) = requests.remove(i);
            let n = records[usize::try_from(key).unwrap_or(0)];
            let verdict = if rng.chance(loss * PERCENT) {
                *faults.entry("request lost").or_default() += 1;
                Verdict::Retriable
            } else if rng.chance(not_leader * PERCENT) {
                *faults.entry("not leader").or_default() += 1;
                Verdict::Retriable
            } else if refused[usize::try_from(key).unwrap_or(0)] {
                *faults.entry("refused for good").or_default() += 1;
                Verdict::Failed
            } else {
                let verdict = broker.append(key, stamp, n);
                if rng.chance(loss * PERCENT) {
                    *faults.entry("answer lost").or_default() += 1;
                    Verdict::Retriable
                } else {
                    verdict
                }
            };
            if trace {
                eprintln!("batch {key} sent with {stamp:?}: {verdict:?}");
            }
            answers.push((key, verdict));
        } else if !answers.is_empty() {
            let i = if rng.chance(reorder * PERCENT) {
                rng.below(answers.len() as u64) as usize
            } else {
                0
            };
            let (key, verdict) = answers.remove(i);
            if trace {
                eprintln!("batch {key}: the producer hears {verdict:?}");
            }
            let (next, retire) = window.settle(key, &verdict);
            if let Some(generation) = retire {
                ids.retire(generation);
                if id_ready {
                    ids.get();
                }
            }
            if next == Next::Answer {
                let outcome = if verdict == Verdict::Written {
                    Outcome::Written
                } else {
                    Outcome::Failed
                };
                if outcomes.insert(key, outcome).is_some() {
                    return Err(format!("batch {key} was answered twice"));
                }
            }
            window.take_done();
        } else {
            return Err(format!(
                "stuck: {} of {batches} answered, nothing on its way",
                outcomes.len()
            ));
        }
    }
    Err(format!(
        "no end after 200,000 steps: {} of {batches} answered",
        outcomes.len()
    ))
}

fn check(broker: &Broker, outcomes: &BTreeMap<u64, Outcome>, batches: usize) -> Result<(), String> {
    if outcomes.len() != batches {
        return Err(format!("{} of {batches} batches answered", outcomes.len()));
    }
    let mut seen = BTreeMap::new();
    for &key in &broker.log {
        *seen.entry(key).or_insert(0) += 1;
    }
    for (&key, &outcome) in outcomes {
        let copies = seen.get(&key).copied().unwrap_or(0);
        match outcome {
            Outcome::Written if copies != 1 => {
                return Err(format!(
                    "batch {key} was answered as written and is in the log {copies} times"
                ));
            }
            Outcome::Failed if copies != 0 => {
                return Err(format!(
                    "batch {key} was answered as failed and is in the log {copies} times"
                ));
            }
            _ => {}
        }
    }
    if let Some(pair) = broker.log.windows(2).find(|pair| pair[0] >= pair[1]) {
        return Err(format!(
            "the log holds batch {} before batch {}",
            pair[0], pair[1]
        ));
    }
    Ok(())
}

#[test]
fn batches_in_flight_are_written_once_and_in_order_over_many_seeds() {
    run_seeds("produce window simulation", 20_000, |seed| {
        run(seed, MAX_IN_FLIGHT)
    });
}

#[test]
fn one_batch_in_flight_passes_too() {
    for seed in 1..=500 {
        if let Err(e) = run(seed, 1) {
            panic!("seed {seed}: {e}");
        }
    }
}

#[test]
fn more_in_flight_than_the_broker_remembers_would_be_caught() {
    // With eight batches on their way, a retry of one the broker wrote but
    // no longer remembers is refused as out of order, taken for unwritten,
    // and written again under a new id: the simulation sees the duplicate.
    let caught = (1..=500).filter(|&seed| run(seed, 8).is_err()).count();
    eprintln!("{caught} of 500 seeds caught a window wider than the broker's memory");
    assert!(caught > 0, "no seed of 500 caught a window of 8");
}

#[test]
fn the_same_seed_runs_the_same_way() {
    assert_eq!(run(11, MAX_IN_FLIGHT), run(11, MAX_IN_FLIGHT));
}
