//! One owned partition under exactly-once processing: the handler's output for
//! a batch of input records, and the offset commit after them, go into one
//! Kafka transaction of the partition's own transactional producer.
//!
//! The producer's transactional id names the group and the input partition
//! (`<group>-<topic>-<partition>`), so every owner of the partition, past or
//! future, shares it. Taking the partition begins with `InitProducerId`, which
//! fences every earlier owner's producer and ends the transaction it left
//! open; only then is the resume point read, from the coordination log up to
//! where it stood after the fence: the offset of the last transaction that
//! committed. A former owner that was paused past its session timeout can
//! neither commit nor write anything after that, whatever its own clock and
//! lease say (`docs/transactions.md`).
//!
//! A transaction commits once no more records are at hand, so that a quiet
//! partition's output is visible at once; under load, records gather while a
//! commit is on its way, and a transaction grows up to `transaction_interval`
//! or `transaction_max_records` input records. It also commits when the
//! partition is handed over or the consumer stops. A handler error aborts it: the records handled
//! in it so far are offered again in a new one, then the failed record, with
//! its attempt count carried on, so that retry budgets and dead-lettering work
//! as under at-least-once.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::watch;
use tokio::time::Instant;

use super::handler::Handler;
use super::metrics::Tally;
use super::runner::{PartitionRunner, RunnerExit};
use super::stopwatch::Stopwatch;
use crate::kafka::backoff::Backoff;
use crate::kafka::codec::FetchedRecord;
use crate::kafka::fetch::{Message, high_watermark};
use crate::kafka::group::offsets::{OwnedCommit, owned_commit_record};
use crate::kafka::group::{LOG_PARTITION, TransactionView};
use crate::kafka::produce::{Outbox, ProducerConfig, TransactionConfig, TransactionalProducer};
use crate::shutdown::Shutdown;

/// A partition runner that processes in transactions.
pub(super) struct TransactionalRunner {
    pub(super) runner: PartitionRunner,
    pub(super) member: String,
    /// The epoch this member owns the partition in, named by its commits.
    pub(super) epoch: i64,
    /// How far this member's group state has read the coordination log.
    pub(super) view: watch::Receiver<TransactionView>,
}

/// The transaction in progress and the input records handled in it.
struct Open {
    since: Instant,
    inputs: Vec<Message>,
}

/// The transactional id of the producer that processes `tp` for `group`.
pub(super) fn transactional_id(group: &str, tp: &crate::kafka::topic::TopicPartition) -> String {
    format!("{group}-{}-{}", tp.topic, tp.partition)
}

impl TransactionalRunner {
    /// Fences the partition's former owners, resumes from the last committed
    /// transaction, and processes until stopped, the lease runs out, or a
    /// transaction can be neither committed nor aborted.
    pub(super) async fn run<H: Handler>(
        self,
        handler: Arc<H>,
        mut stop: Shutdown,
        mut shutdown: Shutdown,
    ) -> RunnerExit {
        let producer = match self.fence(&mut stop, &mut shutdown).await {
            Ok(producer) => Arc::new(producer),
            Err(exit) => return exit,
        };
        let exit = self.process(&producer, &*handler, stop, shutdown).await;
        producer.close().await;
        exit
    }

    /// Takes the partition's transactional id, which fences every earlier
    /// owner, then waits until this member's state has read the coordination
    /// log through the markers that ended their transactions, and moves the
    /// start to the last offset committed in one.
    async fn fence(
        &self,
        stop: &mut Shutdown,
        shutdown: &mut Shutdown,
    ) -> Result<TransactionalProducer, RunnerExit> {
        let r = &self.runner;
        let config = TransactionConfig {
            transactional_id: transactional_id(&r.config.group_id, &r.tp),
            transaction_timeout: r.config.transaction_timeout,
            producer: ProducerConfig {
                delivery_timeout: r
                    .config
                    .transaction_producer
                    .delivery_timeout
                    .min(r.config.transaction_timeout),
                ..r.config.transaction_producer.clone()
            },
        };
        let mut backoff = Backoff::new(r.config.retry_backoff);
        let mut view = self.view.clone();
        let producer = loop {
            if !r.lease.is_valid() {
                return Err(RunnerExit::LeaseLost);
            }
            let attempt = async {
                let producer = TransactionalProducer::new(r.cluster.clone(), config.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                let end = high_watermark(&r.cluster, &r.config.offsets_topic, LOG_PARTITION)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>((producer, end))
            };
            let outcome = tokio::select! {
                outcome = attempt => outcome,
                () = stop.recv() => return Err(RunnerExit::Stopped),
                () = shutdown.recv() => return Err(RunnerExit::Stopped),
            };
            match outcome {
                Ok((producer, end)) => {
                    let read = tokio::time::timeout(
                        r.config.session_timeout,
                        view.wait_for(|v| v.read_through >= end),
                    )
                    .await;
                    match read {
                        Ok(Ok(view)) => {
                            let committed = view.commits.get(&r.tp).copied();
                            drop(view);
                            self.resume_from(committed);
                            break producer;
                        }
                        Ok(Err(_)) => return Err(RunnerExit::Stopped),
                        Err(_) => log::warn!(
                            "{}: the coordination log was not read up to offset {end} within {:?}; fencing again",
                            r.tp,
                            r.config.session_timeout
                        ),
                    }
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    log::warn!(
                        "{}: taking the partition's transactional id failed, retrying in {delay:?}: {e}",
                        r.tp
                    );
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = stop.recv() => return Err(RunnerExit::Stopped),
                        () = shutdown.recv() => return Err(RunnerExit::Stopped),
                    }
                }
            }
        };
        Ok(producer)
    }

    /// Moves the start to `committed` if that is later: a former owner's
    /// transaction that committed after the owner record this member started
    /// from, which the epoch rule of at-least-once commits would not count.
    fn resume_from(&self, committed: Option<i64>) {
        let progress = &self.runner.progress;
        let start = progress.next();
        if let Some(committed) = committed
            && committed > start
        {
            log::info!(
                "{}: resumes at offset {committed}, after the last committed transaction (the owner record said {start})",
                self.runner.tp
            );
            progress.next.store(committed, Ordering::Release);
            progress.committed.store(committed, Ordering::Release);
        }
    }

    async fn process<H: Handler>(
        &self,
        producer: &Arc<TransactionalProducer>,
        handler: &H,
        mut stop: Shutdown,
        mut shutdown: Shutdown,
    ) -> RunnerExit {
        let r = &self.runner;
        let (_fetch_task, mut rx) = r.fetch(&stop);
        let topic: Arc<str> = Arc::from(r.tp.topic.as_str());
        let outbox = Outbox::new(Arc::clone(producer));
        // Records become messages as they arrive, in this partition's
        // transaction, and are kept as such for a replay.
        let as_messages = |batch: Vec<FetchedRecord>| {
            batch.into_iter().map(|record| {
                let mut message = Message::new(Arc::clone(&topic), r.tp.partition, record);
                message.outbox = Some(outbox.clone());
                message
            })
        };
        let mut tally = Tally::default();
        let mut clock = Stopwatch::new(Instant::now());
        let mut pending: VecDeque<Message> = VecDeque::new();
        let mut open: Option<Open> = None;
        // How often each record since the last commit failed: a record
        // offered again after an abort keeps its count, so retry budgets hold.
        let mut failures: HashMap<i64, u32> = HashMap::new();
        let mut backoff = Backoff::new(r.config.retry_backoff);

        loop {
            if pending.is_empty()
                && let Ok(batch) = rx.try_recv()
            {
                pending.extend(as_messages(batch));
                clock.restart(Instant::now());
            }
            // Commit once nothing more is at hand, so that a quiet partition's
            // output is visible at once; under load records gather while a
            // commit is on its way, and a transaction grows by itself up to
            // the interval and the record bound.
            if let Some(o) = &open
                && (pending.is_empty()
                    || o.inputs.len() >= r.config.transaction_max_records
                    || Instant::now() >= o.since + r.config.transaction_interval)
            {
                clock.close_run(Instant::now(), &mut tally.latency);
                r.metrics.add(&mut tally);
                if let Err(exit) = self.commit(producer, &mut open).await {
                    return exit;
                }
                failures.clear();
                continue;
            }
            if stop.is_shutdown() || shutdown.is_shutdown() {
                return self.finish(producer, &mut open).await;
            }
            // No transaction is open here: wait for records.
            let Some(mut message) = pending.pop_front() else {
                clock.close_run(Instant::now(), &mut tally.latency);
                r.metrics.add(&mut tally);
                tokio::select! {
                    batch = rx.recv() => match batch {
                        Some(batch) => {
                            pending.extend(as_messages(batch));
                            clock.restart(Instant::now());
                        }
                        None if stop.is_shutdown() || shutdown.is_shutdown() => {
                            return RunnerExit::Stopped;
                        }
                        None => return RunnerExit::FetchEnded,
                    },
                    () = stop.recv() => {}
                    () = shutdown.recv() => {}
                }
                continue;
            };
            if !r.lease.is_valid_at(clock.last_reading()) {
                log::warn!(
                    "{}: lease expired; not processing offset {}",
                    r.tp,
                    message.offset
                );
                self.abort(producer, &mut open).await;
                return RunnerExit::LeaseLost;
            }
            if open.is_none() {
                // Every transaction ends with the offset commit: its partition
                // joins with the first output's, in one request.
                let begun = async {
                    producer.begin().await?;
                    producer
                        .prepare(&r.config.offsets_topic, LOG_PARTITION)
                        .await
                };
                if let Err(e) = begun.await {
                    log::warn!("{}: beginning a transaction failed: {e}", r.tp);
                    return RunnerExit::TransactionFailed;
                }
                open = Some(Open {
                    since: Instant::now(),
                    inputs: Vec::new(),
                });
            }
            message.attempt = failures.get(&message.offset).map_or(1, |n| n + 1);
            match r.call(handler, &message, &mut clock, &mut tally).await {
                Some(Ok(())) => {
                    if message.attempt > 1 {
                        backoff = Backoff::new(r.config.retry_backoff);
                    }
                    r.progress.advance_to(message.offset + 1);
                    if let Some(open) = &mut open {
                        open.inputs.push(message);
                    }
                }
                None => {
                    self.abort(producer, &mut open).await;
                    return RunnerExit::LeaseLost;
                }
                Some(Err(e)) => {
                    failures.insert(message.offset, message.attempt);
                    let delay = backoff.next_delay();
                    log::warn!(
                        "handler failed on {}@{} (attempt {}), aborting its transaction and retrying in {delay:?}: {e}",
                        r.tp,
                        message.offset,
                        message.attempt,
                    );
                    // The records handled in the aborted transaction lost their
                    // output: they go again, in order, before the failed one.
                    let replay = open.as_mut().map(|o| std::mem::take(&mut o.inputs));
                    if !self.abort(producer, &mut open).await {
                        return RunnerExit::TransactionFailed;
                    }
                    pending.push_front(message);
                    for input in replay.into_iter().flatten().rev() {
                        pending.push_front(input);
                    }
                    if let Some(first) = pending.front() {
                        r.progress.advance_to(first.offset);
                    }
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = stop.recv() => return RunnerExit::Stopped,
                        () = shutdown.recv() => return RunnerExit::Stopped,
                    }
                    clock.restart(Instant::now());
                }
            }
        }
    }

    /// Writes the commit of everything handled so far into the open
    /// transaction and commits it. On failure the transaction is aborted and
    /// the task ends, to start again from the last commit.
    async fn commit(
        &self,
        producer: &TransactionalProducer,
        open: &mut Option<Open>,
    ) -> Result<(), RunnerExit> {
        let r = &self.runner;
        if open.is_none() {
            return Ok(());
        }
        if !r.lease.is_valid() {
            self.abort(producer, open).await;
            return Err(RunnerExit::LeaseLost);
        }
        let next = r.progress.settled(r.progress.next());
        let commit = OwnedCommit {
            tp: r.tp.clone(),
            offset: next,
            epoch: self.epoch,
        };
        let outcome = async {
            let record = owned_commit_record(
                &r.config.offsets_topic,
                &r.config.group_id,
                &self.member,
                &commit,
            )?;
            producer.send(record).await?.await?;
            producer.commit().await
        }
        .await;
        match outcome {
            Ok(()) => {
                *open = None;
                r.progress.committed.fetch_max(next, Ordering::AcqRel);
                Ok(())
            }
            Err(e) => {
                log::warn!(
                    "{}: committing the transaction up to offset {next} failed; it is aborted and the partition starts again from its last commit: {e}",
                    r.tp
                );
                self.abort(producer, open).await;
                Err(if e.is_fenced() {
                    RunnerExit::LeaseLost
                } else {
                    RunnerExit::TransactionFailed
                })
            }
        }
    }

    /// Aborts the open transaction, if any; whether the producer can go on.
    async fn abort(&self, producer: &TransactionalProducer, open: &mut Option<Open>) -> bool {
        if open.take().is_none() {
            return true;
        }
        match producer.abort().await {
            Ok(()) => true,
            Err(e) => {
                log::warn!(
                    "{}: aborting the transaction failed; its coordinator aborts it after {:?}, or when the partition's next owner starts: {e}",
                    self.runner.tp,
                    self.runner.config.transaction_timeout
                );
                false
            }
        }
    }

    /// Stopped: commits what was handled, so the next owner starts after it.
    async fn finish(
        &self,
        producer: &TransactionalProducer,
        open: &mut Option<Open>,
    ) -> RunnerExit {
        // A failed commit was aborted: the next owner starts from the last one.
        let _ = self.commit(producer, open).await;
        RunnerExit::Stopped
    }
}
