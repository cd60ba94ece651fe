//! One owned partition at work: a fetcher one batch ahead, and a loop that
//! offers each record to the handler in offset order until it is accepted,
//! checking the member's lease before every record and during every call.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::ConsumerConfig;
use super::handler::{Handler, HandlerError};
use super::metrics::{PartitionMetrics, Tally};
use super::stopwatch::Stopwatch;
use crate::kafka::backoff::Backoff;
use crate::kafka::codec::FetchedRecord;
use crate::kafka::conn::{Cluster, Isolation};
use crate::kafka::fetch::{Fetcher, Message, Progress, high_watermark};
use crate::kafka::group::Lease;
use crate::kafka::produce::{
    TransactionConfig, TransactionError, Transactional, TransactionalProducer, TxnFuture,
};
use crate::kafka::task::AbortOnDrop;
use crate::kafka::topic::TopicPartition;
use crate::shutdown::{Shutdown, ShutdownTrigger};

/// A partition this instance is working on.
pub(super) struct Running {
    pub(super) epoch: i64,
    pub(super) progress: Arc<Progress>,
    pub(super) stop: ShutdownTrigger,
    /// Aborted when dropped: a partition nobody tracks must not go on running.
    pub(super) task: AbortOnDrop<RunnerExit>,
}

impl Running {
    /// Stops after the record in flight; returns when the task ended.
    pub(super) async fn finish(mut self) -> Arc<Progress> {
        self.stop.trigger();
        let why = self.exit().await;
        if !matches!(why, ExitReason::Ended(RunnerExit::Stopped)) {
            log::warn!("a partition task ended before it was stopped: {why}");
        }
        self.progress
    }

    /// Why the task ended; waits for it to end.
    pub(super) async fn exit(&mut self) -> ExitReason {
        match (&mut self.task.0).await {
            Ok(exit) => ExitReason::Ended(exit),
            Err(e) if e.is_panic() => ExitReason::Panicked,
            Err(_) => ExitReason::Aborted,
        }
    }
}

/// Why a partition task returned by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RunnerExit {
    /// Its stop signal or the consumer's shutdown fired.
    Stopped,
    /// The member's lease ran out: another member may own the partition by now.
    LeaseLost,
    /// Its fetcher stopped.
    FetchEnded,
    /// Under exactly-once, a transaction could be neither committed nor
    /// aborted: the partition starts again from its last commit.
    TransactionFailed,
}

/// How a partition task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ExitReason {
    Ended(RunnerExit),
    Panicked,
    Aborted,
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Ended(RunnerExit::Stopped) => "stopped",
            Self::Ended(RunnerExit::LeaseLost) => "the member's lease ran out",
            Self::Ended(RunnerExit::FetchEnded) => "its fetcher stopped",
            Self::Ended(RunnerExit::TransactionFailed) => "its transaction failed",
            Self::Panicked => "the handler panicked",
            Self::Aborted => "aborted",
        })
    }
}

/// When a handler call is cut off, and why then.
#[derive(Debug, Clone, Copy)]
pub(super) struct Deadline {
    pub(super) at: Instant,
    /// What the deadline is, for the error: "the transaction's deadline".
    pub(super) what: &'static str,
}

/// A handler call cut off at its [`Deadline`]: a failed attempt like any other,
/// so that retries and dead-lettering apply.
#[derive(Debug, thiserror::Error)]
#[error("the handler did not finish by {0}; the call was abandoned")]
pub struct DeadlinePassed(&'static str);

/// The Kafka requests of a partition's task: [`Cluster`] in service, a
/// simulated broker in the deterministic simulation of the exactly-once
/// runner.
pub(super) trait PartitionIo: Send + Sync + 'static {
    /// Starts reading the runner's partition from its progress, a batch ahead.
    fn fetch(
        &self,
        runner: &PartitionRunner,
        stop: &Shutdown,
    ) -> (AbortOnDrop, mpsc::Receiver<Vec<FetchedRecord>>);

    /// A transactional producer with `config`'s id, which fences every
    /// earlier holder and ends the transaction it left open.
    fn take_transactional_id(
        &self,
        config: TransactionConfig,
    ) -> TxnFuture<'_, Result<Arc<dyn Transactional>, TransactionError>>;

    /// Fences `config`'s id without keeping it.
    fn fence_transactional_id(
        &self,
        config: TransactionConfig,
    ) -> TxnFuture<'_, Result<(), TransactionError>>;

    /// The log end of `topic`/`partition`.
    fn log_end(&self, topic: String, partition: i32) -> TxnFuture<'_, Result<i64, String>>;
}

impl PartitionIo for Cluster {
    fn fetch(
        &self,
        runner: &PartitionRunner,
        stop: &Shutdown,
    ) -> (AbortOnDrop, mpsc::Receiver<Vec<FetchedRecord>>) {
        let (tx, rx) = mpsc::channel::<Vec<FetchedRecord>>(1);
        let fetcher = Fetcher {
            cluster: self.clone(),
            config: runner.config.fetch(),
            tp: runner.tp.clone(),
            progress: Some(Arc::clone(&runner.progress)),
            lag: Some(runner.metrics.lag.clone()),
            isolation: Isolation::ReadCommitted,
        };
        let start = runner.progress.next();
        (
            AbortOnDrop(tokio::spawn(fetcher.run(start, tx, stop.clone()))),
            rx,
        )
    }

    fn take_transactional_id(
        &self,
        config: TransactionConfig,
    ) -> TxnFuture<'_, Result<Arc<dyn Transactional>, TransactionError>> {
        Box::pin(async move {
            let producer = TransactionalProducer::new(self.clone(), config).await?;
            Ok(Arc::new(producer) as Arc<dyn Transactional>)
        })
    }

    fn fence_transactional_id(
        &self,
        config: TransactionConfig,
    ) -> TxnFuture<'_, Result<(), TransactionError>> {
        Box::pin(async move { TransactionalProducer::fence(self, &config).await })
    }

    fn log_end(&self, topic: String, partition: i32) -> TxnFuture<'_, Result<i64, String>> {
        Box::pin(async move {
            high_watermark(self, &topic, partition)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

pub(super) struct PartitionRunner {
    pub(super) io: Arc<dyn PartitionIo>,
    pub(super) config: ConsumerConfig,
    pub(super) tp: TopicPartition,
    pub(super) progress: Arc<Progress>,
    pub(super) lease: Arc<Lease>,
    pub(super) metrics: PartitionMetrics,
}

impl PartitionRunner {
    /// Hands the partition's records to `handler` in order until stopped, or
    /// until the lease runs out or the fetcher stops; says which.
    pub(super) async fn run<H: Handler>(
        self,
        handler: Arc<H>,
        mut stop: Shutdown,
        mut shutdown: Shutdown,
    ) -> RunnerExit {
        let mut next = self.progress.next.load(Ordering::Acquire);
        let (_fetch_task, mut rx) = self.fetch(&stop);
        // Handed from each message to the next rather than cloned for each: counting
        // an Arc up and down per record showed in the profile.
        let mut topic: Arc<str> = Arc::from(self.tp.topic.as_str());
        let mut tally = Tally::default();
        let mut clock = Stopwatch::new(Instant::now());

        loop {
            let batch = tokio::select! {
                batch = rx.recv() => match batch {
                    Some(b) => b,
                    None if stop.is_shutdown() || shutdown.is_shutdown() => return RunnerExit::Stopped,
                    None => return RunnerExit::FetchEnded,
                },
                () = stop.recv() => return RunnerExit::Stopped,
                () = shutdown.recv() => return RunnerExit::Stopped,
            };
            // Handler time starts now that the batch is in hand: waiting for it is
            // the fetcher's time.
            clock.restart(Instant::now());
            let mut lease_held_at = None;
            let exit = 'records: {
                for record in batch {
                    if stop.is_shutdown() || shutdown.is_shutdown() {
                        break 'records Some(RunnerExit::Stopped);
                    }
                    // A member whose lease ran out (a long pause, a lost broker) may
                    // have been replaced: it must not touch another record. Asked once
                    // per clock reading: a lease is only ever extended, so it still
                    // holds at a reading it held at.
                    let reading = clock.last_reading();
                    if lease_held_at != Some(reading) {
                        if !self.lease.is_valid_at(reading) {
                            log::warn!(
                                "{}: lease expired; not processing offset {}",
                                self.tp,
                                record.offset
                            );
                            break 'records Some(RunnerExit::LeaseLost);
                        }
                        lease_held_at = Some(reading);
                    }
                    let mut message = Message::new(topic, self.tp.partition, record);
                    let handled = self
                        .handle(&*handler, &mut message, &mut clock, &mut stop, &mut tally)
                        .await;
                    topic = message.topic;
                    if let Some(exit) = handled {
                        break 'records Some(exit);
                    }
                    // This task is the only writer: a plain store, not a
                    // read-modify-write, which cost as much as the rest of the
                    // record's bookkeeping.
                    if message.offset >= next {
                        next = message.offset + 1;
                        self.progress.next.store(next, Ordering::Release);
                    }
                }
                None
            };
            clock.close_run(Instant::now(), &mut tally.latency);
            self.metrics.add(&mut tally);
            if let Some(exit) = exit {
                return exit;
            }
        }
    }

    /// Starts fetching from where the partition's progress stands, one batch
    /// ahead of the handler, into the receiver returned; the fetcher is
    /// aborted with the handle, when the partition is fenced or the consumer
    /// dropped.
    pub(super) fn fetch(
        &self,
        stop: &Shutdown,
    ) -> (AbortOnDrop, mpsc::Receiver<Vec<FetchedRecord>>) {
        self.io.fetch(self, stop)
    }

    /// Offers `message` until the handler accepts it (`None`), or says why it
    /// stopped first: the stop signal, or the lease ran out during a call or
    /// while waiting to retry.
    pub(super) async fn handle<H: Handler>(
        &self,
        handler: &H,
        message: &mut Message,
        clock: &mut Stopwatch,
        stop: &mut Shutdown,
        tally: &mut Tally,
    ) -> Option<RunnerExit> {
        let mut backoff = Backoff::new(self.config.retry_backoff);
        loop {
            message.attempt = backoff.attempts() + 1;
            match self.call(handler, message, clock, tally, None).await {
                Some(Ok(())) => return None,
                None => return Some(RunnerExit::LeaseLost),
                Some(Err(e)) => {
                    let delay = backoff.next_delay();
                    log::warn!(
                        "handler failed on {}@{} (attempt {}), retrying in {delay:?}: {e}",
                        self.tp,
                        message.offset,
                        backoff.attempts()
                    );
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = stop.recv() => return Some(RunnerExit::Stopped),
                    }
                    // The backoff is not handler time.
                    clock.restart(Instant::now());
                    if !self.lease.is_valid_at(clock.last_reading()) {
                        return Some(RunnerExit::LeaseLost);
                    }
                }
            }
        }
    }

    /// Offers `message` to the handler once, and counts the outcome. `None`
    /// when the lease ran out first: a call still waiting then is dropped
    /// there, so a member cut off from the group never finishes a record
    /// that another member may have taken over by then. A call still waiting
    /// at `deadline` is dropped too, and fails with [`DeadlinePassed`].
    pub(super) async fn call<H: Handler>(
        &self,
        handler: &H,
        message: &Message,
        clock: &mut Stopwatch,
        tally: &mut Tally,
        deadline: Option<Deadline>,
    ) -> Option<Result<(), HandlerError>> {
        let mut waited_at = None;
        let outcome = {
            let mut call = pin!(handler.handle(message));
            // Made only for a call that waits: most finish on their first poll.
            let mut lease_end: Option<Pin<Box<tokio::time::Sleep>>> = None;
            let mut cut_off: Option<Pin<Box<tokio::time::Sleep>>> = None;
            poll_fn(|cx| {
                if let Poll::Ready(outcome) = call.as_mut().poll(cx) {
                    return Poll::Ready(Some(outcome));
                }
                if waited_at.is_none() {
                    waited_at = Some(Instant::now());
                }
                if let Some(deadline) = deadline {
                    let cut = cut_off
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.at)));
                    if cut.as_mut().poll(cx).is_ready() {
                        let passed: HandlerError = Box::new(DeadlinePassed(deadline.what));
                        return Poll::Ready(Some(Err(passed)));
                    }
                }
                loop {
                    let until = self.lease.valid_until();
                    let end =
                        lease_end.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
                    if end.deadline() != until {
                        end.as_mut().reset(until);
                    }
                    if end.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    if !self.lease.is_valid() {
                        return Poll::Ready(None);
                    }
                }
            })
            .await
        };
        clock.finished(waited_at, &mut tally.latency);
        match &outcome {
            Some(Ok(())) => {
                tally.records += 1;
                tally.bytes += (message.key.as_ref().map_or(0, Bytes::len)
                    + message.value.as_ref().map_or(0, Bytes::len))
                    as u64;
            }
            None => log::warn!(
                "{}: lease expired while the handler worked on offset {}; the call was abandoned",
                self.tp,
                message.offset
            ),
            Some(Err(_)) => {
                clock.close_run(Instant::now(), &mut tally.latency);
                self.metrics.errors.inc();
            }
        }
        outcome
    }
}
