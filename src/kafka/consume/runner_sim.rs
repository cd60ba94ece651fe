//! A deterministic simulation of the exactly-once runner itself: the real
//! [`TransactionalRunner`] (fencing, resuming, the transaction loop, the
//! handler's deadline, the failure counts), over a simulated broker behind
//! the runner's I/O seams ([`PartitionIo`], [`Transactional`]), on a
//! single-threaded runtime whose clock only moves when every task waits. So a
//! seed replays exactly.
//!
//! The broker keeps Kafka's transaction rules, with the windows where they
//! bite:
//! - `InitProducerId` aborts the open transaction and bumps the epoch; while a
//!   transaction is between `EndTxn` and its markers (`PrepareCommit`,
//!   `PrepareAbort`) it answers `CONCURRENT_TRANSACTIONS`, to be retried;
//! - `EndTxn` moves the transaction to its prepare state and the markers are
//!   written later; its answer may be lost (the outcome is unknown to the
//!   producer, committed at the broker);
//! - a transaction open past its timeout is aborted by the coordinator, which
//!   bumps the epoch: the producer's next request is fenced;
//! - a partition refuses a write of an epoch older than one it has seen.
//!
//! Owners of each of several input partitions follow one another: crashed
//! (the task dropped mid-call), paused (their requests stall, their lease
//! runs out, and they wake up to try on), handed over (stopped). The handler
//! copies each input to an output partition through the transaction, fails
//! now and then, and sometimes outlasts its deadline. At the end, the output
//! read committed holds each input exactly once, in order, and the group state
//! read from the coordination log resumes after the last input.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use parking_lot::Mutex;
use rskafka::chrono::DateTime;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::config::ConsumerConfig;
use super::exactly_once::{FailedAttempts, TransactionalRunner};
use super::handler::{Handler, HandlerError};
use super::metrics::PartitionMetrics;
use super::runner::{PartitionIo, PartitionRunner, RunnerExit};
use crate::kafka::codec::{FetchedRecord, InTransaction};
use crate::kafka::fetch::{Message, Progress};
use crate::kafka::group::{GroupState, Lease, TransactionView};
use crate::kafka::produce::{
    Delivery, ProducerRecord, TransactionConfig, TransactionError, Transactional, TxnFuture,
};
use crate::kafka::seeds::{Faults, Rng, run_seeds};
use crate::kafka::task::AbortOnDrop;
use crate::kafka::topic::TopicPartition;
use crate::shutdown::{Shutdown, ShutdownTrigger};

const GROUP: &str = "g";
const INPUT: &str = "in";
const OUTPUT: &str = "out";
const LOG: &str = "__log";
const PARTITIONS: i32 = 2;
const INPUTS: i64 = 24;
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(3);
const SESSION: Duration = Duration::from_secs(2);

/// A record in a simulated partition: its producer id and epoch when written
/// in a transaction, or a marker.
#[derive(Debug, Clone)]
enum Entry {
    Data {
        producer: Option<(i64, i16)>,
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
    },
    Marker {
        producer_id: i64,
        committed: bool,
    },
}

/// A record's key and value.
type KeyValue = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Where a transaction stands at its coordinator.
#[derive(Debug, Clone)]
enum Txn {
    Empty,
    Ongoing {
        partitions: BTreeSet<(String, i32)>,
        since: Instant,
    },
    /// `EndTxn` answered; the markers are written at `at`.
    Preparing {
        partitions: BTreeSet<(String, i32)>,
        committed: bool,
        at: Instant,
    },
}

#[derive(Debug)]
struct Coordinator {
    producer_id: i64,
    epoch: i16,
    txn: Txn,
}

/// The cluster: partitions, the transaction coordinators, and the faults
/// injected.
struct World {
    partitions: BTreeMap<(String, i32), Vec<Entry>>,
    /// The newest epoch each partition has seen of each producer id.
    seen_epochs: BTreeMap<(String, i32, i64), i16>,
    coordinators: BTreeMap<String, Coordinator>,
    next_producer_id: i64,
    rng: Rng,
    faults: Faults,
    /// Inputs whose handler call hangs on its first attempt, whoever makes it.
    hangs: BTreeSet<(i32, i64)>,
    /// A broker that breaks Kafka's rule: `InitProducerId` neither aborts the
    /// open transaction nor fences its producer. To show the check catches
    /// what follows.
    flawed: bool,
}

impl World {
    fn fault(&mut self, kind: &'static str) {
        *self.faults.entry(kind).or_default() += 1;
    }

    fn append(&mut self, topic: &str, partition: i32, entry: Entry) -> i64 {
        let log = self
            .partitions
            .entry((topic.to_owned(), partition))
            .or_default();
        log.push(entry);
        log.len() as i64 - 1
    }

    fn write_markers(
        &mut self,
        partitions: &BTreeSet<(String, i32)>,
        producer_id: i64,
        epoch: i16,
        committed: bool,
    ) {
        for (topic, partition) in partitions {
            let seen = self
                .seen_epochs
                .entry((topic.clone(), *partition, producer_id))
                .or_insert(epoch);
            *seen = (*seen).max(epoch);
            self.append(
                topic,
                *partition,
                Entry::Marker {
                    producer_id,
                    committed,
                },
            );
        }
    }

    /// What the coordinators do by themselves by `now`: markers of ended
    /// transactions, and the abort of transactions past their timeout.
    fn tick(&mut self, now: Instant) {
        let ids: Vec<String> = self.coordinators.keys().cloned().collect();
        for id in ids {
            let (producer_id, epoch, txn) = {
                let c = &self.coordinators[&id];
                (c.producer_id, c.epoch, c.txn.clone())
            };
            match txn {
                Txn::Preparing {
                    partitions,
                    committed,
                    at,
                } if now >= at => {
                    self.write_markers(&partitions, producer_id, epoch, committed);
                    if let Some(c) = self.coordinators.get_mut(&id) {
                        c.txn = Txn::Empty;
                    }
                }
                Txn::Ongoing { partitions, since } if now >= since + TRANSACTION_TIMEOUT => {
                    // The coordinator aborts it in a new epoch: the producer
                    // that left it open is fenced.
                    self.fault("coordinator timed a transaction out");
                    let epoch = epoch + 1;
                    self.write_markers(&partitions, producer_id, epoch, false);
                    if let Some(c) = self.coordinators.get_mut(&id) {
                        c.epoch = epoch;
                        c.txn = Txn::Empty;
                    }
                }
                _ => {}
            }
        }
    }

    /// `InitProducerId`: ends the open transaction (aborted) and hands out
    /// the next epoch; refused while one is between `EndTxn` and its markers.
    fn init(&mut self, id: &str, now: Instant) -> Result<(i64, i16), TransactionError> {
        self.tick(now);
        if !self.coordinators.contains_key(id) {
            self.next_producer_id += 1;
            let producer_id = self.next_producer_id;
            self.coordinators.insert(
                id.to_owned(),
                Coordinator {
                    producer_id,
                    epoch: -1,
                    txn: Txn::Empty,
                },
            );
        }
        let (producer_id, epoch, txn) = {
            let c = &self.coordinators[id];
            (c.producer_id, c.epoch, c.txn.clone())
        };
        match txn {
            Txn::Preparing { .. } => {
                self.fault("InitProducerId during PrepareCommit or PrepareAbort");
                return Err(refused(
                    "InitProducerId",
                    id,
                    ResponseError::ConcurrentTransactions,
                ));
            }
            Txn::Ongoing { .. } if self.flawed => return Ok((producer_id, epoch)),
            Txn::Ongoing { partitions, .. } => {
                self.fault("InitProducerId aborted an open transaction");
                self.write_markers(&partitions, producer_id, epoch + 1, false);
            }
            Txn::Empty => {}
        }
        let c = self
            .coordinators
            .get_mut(id)
            .unwrap_or_else(|| unreachable!());
        c.epoch = epoch + 1;
        c.txn = Txn::Empty;
        Ok((producer_id, c.epoch))
    }

    /// Whether `(producer_id, epoch)` is still the coordinator's.
    fn current(&self, id: &str, producer_id: i64, epoch: i16) -> bool {
        self.coordinators
            .get(id)
            .is_some_and(|c| c.producer_id == producer_id && c.epoch == epoch)
    }

    /// The records of `topic`/`partition` that `read_committed` readers see, in
    /// order: plain ones, and those of committed transactions at their marker.
    fn committed(&self, topic: &str, partition: i32) -> Vec<KeyValue> {
        let mut pending: BTreeMap<i64, Vec<KeyValue>> = BTreeMap::new();
        let mut seen = Vec::new();
        for entry in self
            .partitions
            .get(&(topic.to_owned(), partition))
            .into_iter()
            .flatten()
        {
            match entry {
                Entry::Data {
                    producer: None,
                    key,
                    value,
                } => seen.push((key.clone(), value.clone())),
                Entry::Data {
                    producer: Some((producer_id, _)),
                    key,
                    value,
                } => pending
                    .entry(*producer_id)
                    .or_default()
                    .push((key.clone(), value.clone())),
                Entry::Marker {
                    producer_id,
                    committed,
                } => {
                    let records = pending.remove(producer_id).unwrap_or_default();
                    if *committed {
                        seen.extend(records);
                    }
                }
            }
        }
        seen
    }

    /// The coordination log as a member reads it: uncommitted, with markers.
    fn log_records(&self, from: usize) -> Vec<FetchedRecord> {
        let log = self
            .partitions
            .get(&(LOG.to_owned(), 0))
            .map_or(&[][..], Vec::as_slice);
        log.iter()
            .enumerate()
            .skip(from)
            .map(|(offset, entry)| {
                let (key, value, transaction) = match entry {
                    Entry::Data {
                        producer,
                        key,
                        value,
                    } => (
                        key.clone(),
                        value.clone(),
                        producer.map(|(producer_id, _)| InTransaction::Record { producer_id }),
                    ),
                    Entry::Marker {
                        producer_id,
                        committed,
                    } => (
                        None,
                        None,
                        Some(InTransaction::End {
                            producer_id: *producer_id,
                            committed: *committed,
                        }),
                    ),
                };
                FetchedRecord {
                    offset: offset as i64,
                    key: key.map(Bytes::from),
                    value: value.map(Bytes::from),
                    headers: BTreeMap::new(),
                    timestamp: DateTime::from_timestamp_millis(1_000).unwrap_or_default(),
                    transaction,
                }
            })
            .collect()
    }
}

fn refused(request: &'static str, id: &str, error: ResponseError) -> TransactionError {
    TransactionError::Refused {
        request,
        id: id.to_owned(),
        error,
    }
}

fn fenced(id: &str) -> TransactionError {
    TransactionError::Fenced { id: id.to_owned() }
}

/// The broker as one member reaches it: its requests take a random time, and
/// all of them stall while the member is paused.
#[derive(Clone)]
struct Broker {
    world: Arc<Mutex<World>>,
    paused_until: Arc<Mutex<Option<Instant>>>,
}

impl Broker {
    /// A request's trip: up to 40 ms, longer while the member is paused.
    async fn trip(&self) {
        let latency = Duration::from_millis(self.world.lock().rng.below(40));
        tokio::time::sleep(latency).await;
        loop {
            let until = *self.paused_until.lock();
            match until {
                Some(until) if until > Instant::now() => tokio::time::sleep_until(until).await,
                _ => break,
            }
        }
    }
}

impl PartitionIo for Broker {
    fn fetch(
        &self,
        runner: &PartitionRunner,
        stop: &Shutdown,
    ) -> (AbortOnDrop, mpsc::Receiver<Vec<FetchedRecord>>) {
        let (tx, rx) = mpsc::channel(1);
        let broker = self.clone();
        let partition = runner.tp.partition;
        let mut next = runner.progress.next();
        let mut stop = stop.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    () = stop.recv() => return,
                    () = broker.trip() => {}
                }
                let batch: Vec<FetchedRecord> = {
                    let world = broker.world.lock();
                    let input = world
                        .partitions
                        .get(&(INPUT.to_owned(), partition))
                        .map_or(&[][..], Vec::as_slice);
                    let end = input.len().min(next as usize + 5);
                    (next as usize..end)
                        .map(|offset| FetchedRecord {
                            offset: offset as i64,
                            key: None,
                            value: Some(Bytes::from(offset.to_string())),
                            headers: BTreeMap::new(),
                            timestamp: DateTime::from_timestamp_millis(1_000).unwrap_or_default(),
                            transaction: None,
                        })
                        .collect()
                };
                if batch.is_empty() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                next += batch.len() as i64;
                if tx.send(batch).await.is_err() {
                    return;
                }
            }
        });
        (AbortOnDrop(task), rx)
    }

    fn take_transactional_id(
        &self,
        config: TransactionConfig,
    ) -> TxnFuture<'_, Result<Arc<dyn Transactional>, TransactionError>> {
        Box::pin(async move {
            self.trip().await;
            let id = config.transactional_id;
            let (producer_id, epoch) = self.world.lock().init(&id, Instant::now())?;
            Ok(Arc::new(Producer {
                broker: self.clone(),
                id,
                producer_id,
                epoch,
                open: Mutex::new(None),
            }) as Arc<dyn Transactional>)
        })
    }

    fn fence_transactional_id(
        &self,
        config: TransactionConfig,
    ) -> TxnFuture<'_, Result<(), TransactionError>> {
        Box::pin(async move {
            self.trip().await;
            self.world
                .lock()
                .init(&config.transactional_id, Instant::now())
                .map(drop)
        })
    }

    fn log_end(&self, topic: String, partition: i32) -> TxnFuture<'_, Result<i64, String>> {
        Box::pin(async move {
            self.trip().await;
            let world = self.world.lock();
            Ok(world
                .partitions
                .get(&(topic, partition))
                .map_or(0, |p| p.len() as i64))
        })
    }
}

/// A transactional producer of the simulated broker.
struct Producer {
    broker: Broker,
    id: String,
    producer_id: i64,
    epoch: i16,
    /// The open transaction: the partitions it will add with the next one.
    open: Mutex<Option<BTreeSet<(String, i32)>>>,
}

impl Producer {
    /// The coordinator's side of a write: fenced unless this producer's epoch
    /// is current; the partitions join the transaction.
    fn add(
        &self,
        world: &mut World,
        partitions: BTreeSet<(String, i32)>,
    ) -> Result<(), TransactionError> {
        let now = Instant::now();
        world.tick(now);
        if !world.current(&self.id, self.producer_id, self.epoch) {
            return Err(fenced(&self.id));
        }
        let c = world
            .coordinators
            .get_mut(&self.id)
            .unwrap_or_else(|| unreachable!());
        match &mut c.txn {
            Txn::Empty => {
                c.txn = Txn::Ongoing {
                    partitions,
                    since: now,
                }
            }
            Txn::Ongoing { partitions: p, .. } => p.extend(partitions),
            Txn::Preparing { .. } => {
                return Err(refused(
                    "AddPartitionsToTxn",
                    &self.id,
                    ResponseError::ConcurrentTransactions,
                ));
            }
        }
        Ok(())
    }

    /// `EndTxn`: the transaction moves to its prepare state; the markers come
    /// later. The answer is lost now and then.
    async fn end(&self, committed: bool) -> Result<(), TransactionError> {
        let Some(_) = self.open.lock().take() else {
            return Err(TransactionError::NotOpen);
        };
        self.broker.trip().await;
        let mut world = self.broker.world.lock();
        let now = Instant::now();
        world.tick(now);
        if !world.current(&self.id, self.producer_id, self.epoch) {
            return Err(fenced(&self.id));
        }
        let window = Duration::from_millis(world.rng.below(400));
        let lost = world.rng.chance(50_000);
        let c = world
            .coordinators
            .get_mut(&self.id)
            .unwrap_or_else(|| unreachable!());
        match std::mem::replace(&mut c.txn, Txn::Empty) {
            Txn::Empty => return Ok(()),
            Txn::Ongoing { partitions, .. } => {
                c.txn = Txn::Preparing {
                    partitions,
                    committed,
                    at: now + window,
                };
            }
            preparing @ Txn::Preparing { .. } => {
                c.txn = preparing;
                return Err(refused(
                    "EndTxn",
                    &self.id,
                    ResponseError::ConcurrentTransactions,
                ));
            }
        }
        if lost {
            world.fault("EndTxn answer lost");
            return Err(refused("EndTxn", &self.id, ResponseError::RequestTimedOut));
        }
        Ok(())
    }
}

impl Transactional for Producer {
    fn begin(&self) -> TxnFuture<'_, Result<(), TransactionError>> {
        Box::pin(async move {
            let mut open = self.open.lock();
            if open.is_some() {
                return Err(TransactionError::AlreadyOpen);
            }
            *open = Some(BTreeSet::new());
            Ok(())
        })
    }

    fn prepare<'a>(
        &'a self,
        topic: &'a str,
        partition: i32,
    ) -> TxnFuture<'a, Result<(), TransactionError>> {
        Box::pin(async move {
            match &mut *self.open.lock() {
                Some(prepared) => {
                    prepared.insert((topic.to_owned(), partition));
                    Ok(())
                }
                None => Err(TransactionError::NotOpen),
            }
        })
    }

    fn send_and_wait(
        &self,
        record: ProducerRecord,
    ) -> TxnFuture<'_, Result<Delivery, TransactionError>> {
        Box::pin(async move {
            let partition = record.partition.unwrap_or(0);
            let mut adding = match &*self.open.lock() {
                Some(prepared) => prepared.clone(),
                None => return Err(TransactionError::NotOpen),
            };
            adding.insert((record.topic.clone(), partition));
            self.broker.trip().await;
            let mut world = self.broker.world.lock();
            self.add(&mut world, adding)?;
            let key = (record.topic.clone(), partition, self.producer_id);
            if world.seen_epochs.get(&key).is_some_and(|e| *e > self.epoch) {
                return Err(fenced(&self.id));
            }
            world.seen_epochs.insert(key, self.epoch);
            let offset = world.append(
                &record.topic,
                partition,
                Entry::Data {
                    producer: Some((self.producer_id, self.epoch)),
                    key: record.key,
                    value: record.value,
                },
            );
            Ok(Delivery { partition, offset })
        })
    }

    fn commit(&self) -> TxnFuture<'_, Result<(), TransactionError>> {
        Box::pin(self.end(true))
    }

    fn abort(&self) -> TxnFuture<'_, Result<(), TransactionError>> {
        Box::pin(self.end(false))
    }

    fn close(&self) -> TxnFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// Copies each input to the output partition of the same number through the
/// transaction; now and then fails a first attempt, and for some inputs the
/// first attempt never ends: only the deadline, and an attempt count that
/// outlives it, get those inputs through.
struct Copier {
    world: Arc<Mutex<World>>,
}

impl Handler for Copier {
    async fn handle(&self, message: &Message) -> Result<(), HandlerError> {
        let (fail, hang) = {
            let mut world = self.world.lock();
            let fail = message.attempt == 1 && world.rng.chance(50_000);
            let hang =
                message.attempt == 1 && world.hangs.contains(&(message.partition, message.offset));
            if fail {
                world.fault("handler failed");
            }
            if hang {
                world.fault("handler outlasted its deadline");
            }
            (fail, hang)
        };
        let outbox = message
            .outbox
            .as_ref()
            .ok_or("the simulated runner hands every record an outbox")?;
        let record = ProducerRecord::new(OUTPUT)
            .partition(message.partition)
            .value(message.value.as_deref().unwrap_or_default().to_vec());
        outbox.send(record).await?;
        if hang {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        if fail {
            return Err("a failure after the output was sent".into());
        }
        Ok(())
    }
}

/// One owner of one partition: its task, its lease and how to stop it.
struct Owner {
    epoch: i64,
    lease: Arc<Lease>,
    broker: Broker,
    stop: ShutdownTrigger,
    task: AbortOnDrop<RunnerExit>,
    /// Its state's reading of the coordination log, for as long as it lives.
    _view: AbortOnDrop,
}

/// Keeps `state` in step with the coordination log, as a member's state reads
/// it, and publishes what the runner needs of it.
fn follow_log(world: Arc<Mutex<World>>, view: watch::Sender<TransactionView>) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        let mut state = GroupState::new(GROUP);
        let mut read = 0;
        loop {
            let lag = Duration::from_millis(world.lock().rng.below(60) + 5);
            tokio::time::sleep(lag).await;
            let records = world.lock().log_records(read);
            for record in &records {
                state.apply_read(record);
            }
            read += records.len();
            let commits = state.transaction_commits().clone();
            view.send_if_modified(|v| {
                let changed = v.read_through != read as i64 || v.commits != commits;
                v.read_through = read as i64;
                v.commits = commits;
                changed
            });
        }
    }))
}

fn config() -> ConsumerConfig {
    let mut config = ConsumerConfig::new(GROUP, [INPUT]);
    config.offsets_topic = LOG.to_owned();
    config.session_timeout = SESSION;
    config.transaction_timeout = TRANSACTION_TIMEOUT;
    config.transaction_interval = Duration::from_millis(100);
    config.transaction_max_records = 4;
    config.retry_backoff.initial = Duration::from_millis(20);
    config.retry_backoff.max = Duration::from_millis(200);
    config
}

/// Starts an owner of `partition` in `epoch`, its lease good for `SESSION`.
fn start_owner(
    world: &Arc<Mutex<World>>,
    partition: i32,
    epoch: i64,
    failed: &FailedAttempts,
    shutdown: &Shutdown,
) -> Owner {
    let lease = Arc::new(Lease::new());
    lease.grant(0, Instant::now() + SESSION);
    lease.read_through(1);
    let broker = Broker {
        world: Arc::clone(world),
        paused_until: Arc::default(),
    };
    let (view_tx, view) = watch::channel(TransactionView::default());
    let view_task = follow_log(Arc::clone(world), view_tx);
    let tp = TopicPartition::new(INPUT, partition);
    let config = config();
    let runner = TransactionalRunner {
        runner: PartitionRunner {
            io: Arc::new(broker.clone()),
            metrics: PartitionMetrics::new(GROUP, &tp),
            config,
            tp,
            progress: Arc::new(Progress::new(0)),
            lease: Arc::clone(&lease),
        },
        member: format!("m{partition}-{epoch}"),
        epoch,
        view,
        failed: failed.clone(),
    };
    let (stop, stop_signal) = ShutdownTrigger::new();
    let handler = Arc::new(Copier {
        world: Arc::clone(world),
    });
    let task = AbortOnDrop(tokio::spawn(runner.run(
        handler,
        stop_signal,
        shutdown.clone(),
    )));
    Owner {
        epoch,
        lease,
        broker,
        stop,
        task,
        _view: view_task,
    }
}

/// Whether every input of every partition is in the output, read committed.
fn done(world: &World) -> bool {
    (0..PARTITIONS).all(|p| world.committed(OUTPUT, p).len() as i64 >= INPUTS)
}

/// One seed: owners come and go while the inputs are processed; then the
/// last owners finish, and the output is checked.
async fn run(seed: u64, flawed: bool) -> Result<Faults, String> {
    crate::kafka::backoff::SIMULATION_SEED.with(|s| s.set(seed));
    let mut world = World {
        partitions: BTreeMap::new(),
        seen_epochs: BTreeMap::new(),
        coordinators: BTreeMap::new(),
        next_producer_id: 0,
        rng: Rng(seed),
        faults: Faults::new(),
        hangs: BTreeSet::new(),
        flawed,
    };
    for p in 0..PARTITIONS {
        for offset in 0..INPUTS {
            if world.rng.chance(30_000) {
                world.hangs.insert((p, offset));
            }
        }
    }
    for p in 0..PARTITIONS {
        for _ in 0..INPUTS {
            world.append(
                INPUT,
                p,
                Entry::Data {
                    producer: None,
                    key: None,
                    value: None,
                },
            );
        }
    }
    let world = Arc::new(Mutex::new(world));
    // The coordinators act on their own too: markers after `EndTxn`, and
    // the abort of a transaction past its timeout.
    let _coordinators = {
        let world = Arc::clone(&world);
        AbortOnDrop(tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                world.lock().tick(Instant::now());
            }
        }))
    };
    let (_shutdown_trigger, shutdown) = ShutdownTrigger::new();
    let failed = FailedAttempts::default();
    let mut owners: Vec<Owner> = (0..PARTITIONS)
        .map(|p| start_owner(&world, p, 0, &failed, &shutdown))
        .collect();
    // Former owners that were paused: they wake up later and try on.
    let mut paused: Vec<Owner> = Vec::new();
    let started = Instant::now();
    let mut step = 0;
    loop {
        step += 1;
        let (pause_for, action, partition) = {
            let mut w = world.lock();
            (
                Duration::from_millis(50 + w.rng.below(400)),
                w.rng.below(100),
                w.rng.below(PARTITIONS as u64) as i32,
            )
        };
        tokio::time::sleep(pause_for).await;
        let faults_over = step > 40;
        if faults_over && done(&world.lock()) {
            break;
        }
        if Instant::now() > started + Duration::from_secs(900) {
            let w = world.lock();
            let counts: Vec<usize> = (0..PARTITIONS)
                .map(|p| w.committed(OUTPUT, p).len())
                .collect();
            let coordinators: Vec<String> = w
                .coordinators
                .iter()
                .map(|(id, c)| format!("{id}: epoch {} {:?}", c.epoch, c.txn))
                .collect();
            let tasks: Vec<String> = owners
                .iter()
                .map(|o| {
                    format!(
                        "epoch {} finished {} lease {} paused {:?}",
                        o.epoch,
                        o.task.0.is_finished(),
                        o.lease.is_valid(),
                        o.broker.paused_until.lock()
                    )
                })
                .collect();
            return Err(format!(
                "stalled: after 900 s of simulated time the output holds {counts:?} of {INPUTS} per partition; coordinators {coordinators:?}; owners {tasks:?}"
            ));
        }
        let i = partition as usize;
        // A task that ended by itself is started again while still owned,
        // as the consumer's supervision does.
        if owners[i].task.0.is_finished() {
            let epoch = owners[i].epoch;
            owners[i] = start_owner(&world, partition, epoch, &failed, &shutdown);
            continue;
        }
        // Keep the owner's lease alive, as its heartbeats do.
        owners[i].lease.grant(0, Instant::now() + SESSION);
        owners[i].lease.read_through(1);
        if faults_over {
            continue;
        }
        let epoch = owners[i].epoch + 1;
        match action {
            // A crash: the task is dropped wherever it is.
            0..=5 => {
                world.lock().fault("owner crashed");
                owners[i] = start_owner(&world, partition, epoch, &failed, &shutdown);
            }
            // A pause past the session: the owner's requests stall, its
            // lease runs out, and a new owner takes over meanwhile.
            6..=9 => {
                world.lock().fault("owner paused past its session");
                let until = Instant::now() + SESSION + Duration::from_millis(500 + (action * 300));
                *owners[i].broker.paused_until.lock() = Some(until);
                let new = start_owner(&world, partition, epoch, &failed, &shutdown);
                paused.push(std::mem::replace(&mut owners[i], new));
            }
            // The owner's requests stall past the transaction timeout while
            // it stays the owner (a slow broker, not a dead member): the
            // coordinator aborts its open transaction in a new epoch.
            15..=17 => {
                world
                    .lock()
                    .fault("owner's requests stalled past the transaction timeout");
                let until =
                    Instant::now() + TRANSACTION_TIMEOUT + Duration::from_millis(action * 50);
                *owners[i].broker.paused_until.lock() = Some(until);
            }
            // A hand-over: stopped, and the next owner starts after it.
            10..=14 => {
                world.lock().fault("owner handed over");
                owners[i].stop.trigger();
                let _ = tokio::time::timeout(SESSION * 2, &mut owners[i].task.0).await;
                owners[i] = start_owner(&world, partition, epoch, &failed, &shutdown);
            }
            _ => {}
        }
    }
    // Paused former owners wake up and try to go on: whatever they still
    // had open must come to nothing.
    for owner in &paused {
        *owner.broker.paused_until.lock() = None;
    }
    tokio::time::sleep(SESSION * 2).await;
    drop(paused);
    for owner in &owners {
        owner.stop.trigger();
    }
    let mut faults = world.lock().faults.clone();
    tokio::time::sleep(SESSION).await;
    drop(owners);
    // The coordinators finish what is left: the markers of ended
    // transactions, and the abort of open ones, past their timeout.
    let mut w = world.lock();
    let later = Instant::now() + TRANSACTION_TIMEOUT * 2;
    w.tick(later);
    for p in 0..PARTITIONS {
        let seen: Vec<i64> = w
            .committed(OUTPUT, p)
            .into_iter()
            .map(|(_, v)| {
                String::from_utf8_lossy(&v.unwrap_or_default())
                    .parse()
                    .unwrap_or(-1)
            })
            .collect();
        let want: Vec<i64> = (0..INPUTS).collect();
        if seen != want {
            return Err(format!(
                "partition {p}: the output read committed is {seen:?}, not each of {INPUTS} inputs once in order"
            ));
        }
    }
    let mut state = GroupState::new(GROUP);
    for record in w.log_records(0) {
        state.apply_read(&record);
    }
    for p in 0..PARTITIONS {
        let resume = state.transaction_committed(&TopicPartition::new(INPUT, p));
        if resume != Some(INPUTS) {
            return Err(format!(
                "partition {p}: the group state resumes at {resume:?}, not {INPUTS}"
            ));
        }
    }
    faults.insert("steps", step);
    Ok(faults)
}

/// One seed on a runtime of its own: one thread, a clock that moves only when
/// every task waits.
fn simulate(seed: u64, flawed: bool) -> Result<Faults, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| e.to_string())?
        .block_on(run(seed, flawed))
}

#[test]
fn the_exactly_once_runner_holds_through_broker_windows_crashes_pauses_and_handoffs() {
    run_seeds("exactly-once runner simulation", 50, |seed| {
        simulate(seed, false)
    });
}

/// A broker whose `InitProducerId` fences nothing lets a former owner's open
/// transaction commit after its successor redid its inputs: the simulation
/// sees the doubled output (or the stall that follows).
#[test]
fn a_broker_that_fences_nothing_would_be_caught() {
    let caught = (1..=100)
        .filter(|&seed| simulate(seed, true).is_err())
        .count();
    eprintln!("{caught} of 100 seeds caught a broker that fences nothing");
    assert!(
        caught > 0,
        "no seed of 100 caught a broker that fences nothing"
    );
}
