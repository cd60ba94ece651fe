//! One owned partition under exactly-once processing: the handler's output for
//! a batch of input records, and the offset commit after them, go into one
//! Kafka transaction of the partition's own transactional producer.
//!
//! The producer's transactional id names the group and the input partition
//! (`<group>-txn/<topic>/<partition>`, [`transactional_id`]), so every owner
//! of the partition, past or future, shares it. Taking the partition begins with `InitProducerId`, which
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

use super::config::handler_budget;
use super::handler::Handler;
use super::metrics::Tally;
use super::runner::{Deadline, PartitionRunner, RunnerExit};
use super::stopwatch::Stopwatch;
use crate::kafka::backoff::Backoff;
use crate::kafka::codec::FetchedRecord;
use crate::kafka::fetch::Message;
use crate::kafka::group::offsets::{OwnedCommit, owned_commit_record};
use crate::kafka::group::protocol::{legacy_transactional_id, transactional_id};
use crate::kafka::group::{LOG_PARTITION, TransactionView};
use crate::kafka::produce::{Outbox, ProducerConfig, TransactionConfig, Transactional};
use crate::kafka::topic::TopicPartition;
use crate::shutdown::Shutdown;

/// A partition runner that processes in transactions.
pub(super) struct TransactionalRunner {
    pub(super) runner: PartitionRunner,
    pub(super) member: String,
    /// The epoch this member owns the partition in, named by its commits.
    pub(super) epoch: i64,
    /// How far this member's group state has read the coordination log.
    pub(super) view: watch::Receiver<TransactionView>,
    /// Failed attempts of records not yet committed, kept across restarts.
    pub(super) failed: FailedAttempts,
}

/// How often each record not yet committed failed, per partition, in the
/// ownership epoch the counts were made in. The consumer keeps it across
/// restarts of a partition's task: a transaction that failed ends the task,
/// and a count that started again from nothing would offer a record that
/// always fails (or always outlasts its deadline) as its first attempt for
/// ever, never reaching the dead-letter topic. Counts of another epoch (the
/// partition went to another member and came back, or was reset) are not
/// this ownership's, and start again.
#[derive(Debug, Clone, Default)]
pub(super) struct FailedAttempts(Arc<parking_lot::Mutex<HashMap<TopicPartition, Counts>>>);

/// One partition's failed attempts: the epoch, and the count per offset.
type Counts = (i64, HashMap<i64, u32>);

impl FailedAttempts {
    /// The failed attempts of `tp`'s records so far in `epoch`, for a task to
    /// look up locally: the shared table is touched only when a record fails
    /// and when a transaction commits, not for every record.
    fn of_partition(&self, tp: &TopicPartition, epoch: i64) -> HashMap<i64, u32> {
        self.0
            .lock()
            .get(tp)
            .filter(|(counted_in, _)| *counted_in == epoch)
            .map(|(_, counts)| counts.clone())
            .unwrap_or_default()
    }

    /// Failed attempts of `tp`@`offset` so far in `epoch`.
    #[cfg(test)]
    fn of(&self, tp: &TopicPartition, epoch: i64, offset: i64) -> u32 {
        self.of_partition(tp, epoch)
            .get(&offset)
            .copied()
            .unwrap_or(0)
    }

    fn failed(&self, tp: &TopicPartition, epoch: i64, offset: i64, attempts: u32) {
        let mut all = self.0.lock();
        let entry = all
            .entry(tp.clone())
            .or_insert_with(|| (epoch, HashMap::new()));
        if entry.0 != epoch {
            *entry = (epoch, HashMap::new());
        }
        entry.1.insert(offset, attempts);
    }

    /// Forgets the records of `tp` before `next`: committed, they are done.
    fn settled(&self, tp: &TopicPartition, next: i64) {
        let mut all = self.0.lock();
        if let Some((_, counts)) = all.get_mut(tp) {
            counts.retain(|offset, _| *offset >= next);
            if counts.is_empty() {
                all.remove(tp);
            }
        }
    }
}

/// The transaction in progress and the input records handled in it.
struct Open {
    since: Instant,
    inputs: Vec<Message>,
}

/// Waits until `view` has read the coordination log up to `end`, for at most
/// `within`: `Some` with `tp`'s offset of the last committed transaction, or
/// `None` when the time ran out. A hand-over or a shutdown during the wait
/// ends it at once, instead of costing a session timeout.
async fn read_through(
    view: &mut watch::Receiver<TransactionView>,
    end: i64,
    tp: &TopicPartition,
    within: std::time::Duration,
    stop: &mut Shutdown,
    shutdown: &mut Shutdown,
) -> Result<Option<Option<i64>>, RunnerExit> {
    let read = tokio::select! {
        biased;
        read = tokio::time::timeout(within, view.wait_for(|v| v.read_through >= end)) => read,
        () = stop.recv() => return Err(RunnerExit::Stopped),
        () = shutdown.recv() => return Err(RunnerExit::Stopped),
    };
    match read {
        Ok(Ok(view)) => Ok(Some(view.commits.get(tp).copied())),
        Ok(Err(_)) => Err(RunnerExit::Stopped),
        Err(_) => Ok(None),
    }
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
            Ok(producer) => producer,
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
    ) -> Result<Arc<dyn Transactional>, RunnerExit> {
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
                if r.config.fence_legacy_transactional_ids {
                    let legacy = TransactionConfig {
                        transactional_id: legacy_transactional_id(&r.config.group_id, &r.tp),
                        ..config.clone()
                    };
                    // Best effort: an ACL that covers only the new ids must
                    // not stall the partition.
                    if let Err(e) = r.io.fence_transactional_id(legacy.clone()).await {
                        log::warn!(
                            "{}: fencing the earlier versions' transactional id {:?} failed; an instance of an earlier version still running could commit alongside this one (turn fence_legacy_transactional_ids off once none runs): {e}",
                            r.tp,
                            legacy.transactional_id
                        );
                    }
                }
                let producer =
                    r.io.take_transactional_id(config.clone())
                        .await
                        .map_err(|e| e.to_string())?;
                let end =
                    r.io.log_end(r.config.offsets_topic.clone(), LOG_PARTITION)
                        .await?;
                Ok::<_, String>((producer, end))
            };
            let outcome = tokio::select! {
                biased;
                outcome = attempt => outcome,
                () = stop.recv() => return Err(RunnerExit::Stopped),
                () = shutdown.recv() => return Err(RunnerExit::Stopped),
            };
            match outcome {
                Ok((producer, end)) => {
                    let within = r.config.session_timeout;
                    match read_through(&mut view, end, &r.tp, within, stop, shutdown).await? {
                        Some(committed) => {
                            self.resume_from(committed);
                            break producer;
                        }
                        None => log::warn!(
                            "{}: the coordination log was not read up to offset {end} within {within:?}; fencing again",
                            r.tp,
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
                        biased;
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
        producer: &Arc<dyn Transactional>,
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
        // This ownership's failed attempts so far, kept in step with the
        // consumer's table.
        let mut failures = self.failed.of_partition(&r.tp, self.epoch);
        let budget = handler_budget(r.config.transaction_timeout);
        let mut backoff = Backoff::new(r.config.retry_backoff);

        loop {
            // A batch already at hand cost no wait: the clock runs on (a
            // restart here would drop a run of quick calls still open).
            if pending.is_empty()
                && let Ok(batch) = rx.try_recv()
            {
                pending.extend(as_messages(batch));
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
                if let Err(exit) = self.commit(producer.as_ref(), &mut open).await {
                    return exit;
                }
                let committed = r.progress.committed.load(Ordering::Acquire);
                failures.retain(|offset, _| *offset >= committed);
                // The commit may have taken long: the lease is checked against
                // a fresh reading before the next record.
                clock.restart(Instant::now());
                continue;
            }
            if stop.is_shutdown() || shutdown.is_shutdown() {
                return self.finish(producer.as_ref(), &mut open).await;
            }
            // No transaction is open here: wait for records.
            let Some(mut message) = pending.pop_front() else {
                clock.close_run(Instant::now(), &mut tally.latency);
                r.metrics.add(&mut tally);
                tokio::select! {
                    biased;
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
                self.abort(producer.as_ref(), &mut open).await;
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
            // A record offered again after an abort (or a restart) keeps its
            // count, so retry budgets hold; each call ends by the
            // transaction's deadline, before the coordinator aborts it.
            message.attempt = failures.get(&message.offset).map_or(1, |n| n + 1);
            let deadline = Deadline {
                at: open.as_ref().map_or_else(Instant::now, |o| o.since) + budget,
                what: "its transaction's deadline (four fifths of the transaction timeout)",
            };
            match r
                .call(handler, &message, &mut clock, &mut tally, Some(deadline))
                .await
            {
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
                    self.abort(producer.as_ref(), &mut open).await;
                    return RunnerExit::LeaseLost;
                }
                Some(Err(e)) => {
                    failures.insert(message.offset, message.attempt);
                    self.failed
                        .failed(&r.tp, self.epoch, message.offset, message.attempt);
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
                    if !self.abort(producer.as_ref(), &mut open).await {
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
                        biased;
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
        producer: &dyn Transactional,
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
            producer.send_and_wait(record).await?;
            producer.commit().await
        }
        .await;
        match outcome {
            Ok(()) => {
                *open = None;
                r.progress.committed.fetch_max(next, Ordering::AcqRel);
                self.failed.settled(&r.tp, next);
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
    async fn abort(&self, producer: &dyn Transactional, open: &mut Option<Open>) -> bool {
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
    async fn finish(&self, producer: &dyn Transactional, open: &mut Option<Open>) -> RunnerExit {
        // A failed commit was aborted: the next owner starts from the last one.
        let _ = self.commit(producer, open).await;
        RunnerExit::Stopped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts hold across restarts within an ownership epoch, and start
    /// again in another one.
    #[test]
    fn failed_attempts_belong_to_their_epoch() {
        let failed = FailedAttempts::default();
        let tp = TopicPartition::new("t", 0);
        failed.failed(&tp, 3, 100, 2);
        assert_eq!(failed.of(&tp, 3, 100), 2);
        assert_eq!(failed.of(&tp, 5, 100), 0, "the partition came back later");
        failed.failed(&tp, 5, 100, 1);
        assert_eq!(failed.of(&tp, 5, 100), 1);
        assert_eq!(failed.of(&tp, 3, 100), 0);
        failed.settled(&tp, 101);
        assert_eq!(failed.of(&tp, 5, 100), 0, "committed: done");
    }

    /// A stop while the member's view catches up ends the wait at once.
    #[tokio::test(start_paused = true)]
    async fn a_stop_ends_the_wait_for_the_view() {
        let (_sender, mut view) = watch::channel(TransactionView::default());
        let (stop_trigger, mut stop) = crate::shutdown::ShutdownTrigger::new();
        let (_shutdown_trigger, mut shutdown) = crate::shutdown::ShutdownTrigger::new();
        let started = Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            stop_trigger.trigger();
        });
        let tp = TopicPartition::new("t", 0);
        let within = std::time::Duration::from_secs(30);
        let read = read_through(&mut view, 10, &tp, within, &mut stop, &mut shutdown).await;
        assert_eq!(read, Err(RunnerExit::Stopped));
        assert!(started.elapsed() < within, "waited {:?}", started.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn the_view_reading_through_gives_the_last_commit() {
        let (sender, mut view) = watch::channel(TransactionView::default());
        let (_a, mut stop) = crate::shutdown::ShutdownTrigger::new();
        let (_b, mut shutdown) = crate::shutdown::ShutdownTrigger::new();
        let tp = TopicPartition::new("t", 0);
        sender.send_modify(|v| {
            v.read_through = 12;
            v.commits.insert(tp.clone(), 7);
        });
        let within = std::time::Duration::from_secs(30);
        let read = read_through(&mut view, 10, &tp, within, &mut stop, &mut shutdown).await;
        assert_eq!(read, Ok(Some(Some(7))));
        let read = read_through(&mut view, 20, &tp, within, &mut stop, &mut shutdown).await;
        assert_eq!(read, Ok(None), "not read through: the time runs out");
    }
}
