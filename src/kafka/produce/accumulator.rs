//! The records of one partition waiting to be sent, in batches, as the Java
//! client's accumulator keeps them: a record joins the newest batch while it
//! fits, and a batch is ready once it is full or has waited `linger`.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use rskafka::record::Record;
use tokio::sync::{Notify, Semaphore, oneshot};
use tokio::time::Instant;

use super::delivery::{Answer, BatchOutcome, DeliveryFuture};
use super::producer::ProducerConfig;

/// A partition's queue, filled by callers and drained by its worker.
///
/// A shared queue rather than a channel: a channel allocates a block every few
/// dozen records on the caller's thread and frees it on the worker's, which in a
/// profile cost more than the rest of enqueueing.
pub(super) struct Shared {
    pub(super) queue: Mutex<Queue>,
    /// Wakes an idle worker: for its first record, a full batch, a flush, the close.
    pub(super) wake: Notify,
}

impl Shared {
    pub(super) fn close(&self) {
        self.queue.lock().closed = true;
        self.wake.notify_one();
    }
}

/// Records of one partition gathered for one request.
pub(super) struct OpenBatch {
    pub(super) records: Vec<Record>,
    /// When its first record came: its linger and delivery timeout count from here.
    pub(super) created: Instant,
    pub(super) answer: Answer,
}

impl OpenBatch {
    /// Record sizes summed, as counted against `batch_max_bytes`: the buffer room
    /// its records hold.
    pub(super) fn bytes(&self) -> usize {
        self.answer.permits
    }
}

/// Records of one partition waiting for a request, in batches, and flushes
/// waiting for them.
#[derive(Default)]
pub(super) struct Queue {
    /// Oldest first; only the newest takes more records.
    pub(super) batches: VecDeque<OpenBatch>,
    /// Flush waiters, with the number of records that must be done before them.
    pub(super) flushes: VecDeque<(u64, oneshot::Sender<()>)>,
    pub(super) received: u64,
    pub(super) done: u64,
    /// Records in the batch taken last: a new batch starts with room for as many.
    pub(super) last_batch_len: usize,
    /// No more records: the worker sends what it has and ends.
    pub(super) closed: bool,
}

/// Where `Queue::push` put a record.
pub(super) struct Pushed {
    pub(super) outcome: Arc<BatchOutcome>,
    pub(super) index: usize,
}

impl Pushed {
    /// The record's delivery, once its batch (of `partition`) is answered.
    pub(super) fn into_future(self, partition: i32) -> DeliveryFuture {
        DeliveryFuture {
            outcome: self.outcome,
            partition,
            index: self.index,
            waiter: None,
        }
    }
}

impl Queue {
    /// Adds a record of `size` bytes, holding as much room of `buffer`, to the
    /// newest batch, or to a new one when it does not fit there. Also says whether
    /// an idle worker must wake for it: for a new batch (the first, or one behind a
    /// full one), or a batch that filled; otherwise its linger or the request in
    /// flight brings it back anyway.
    pub(super) fn push(
        &mut self,
        record: Record,
        size: usize,
        buffer: &Arc<Semaphore>,
        batch_max_bytes: usize,
    ) -> (Pushed, bool) {
        let fits = self
            .batches
            .back()
            .is_some_and(|b| b.bytes() + size <= batch_max_bytes);
        if !fits {
            self.batches.push_back(OpenBatch {
                records: Vec::with_capacity(self.last_batch_len.max(1)),
                created: Instant::now(),
                answer: Answer {
                    outcome: Arc::default(),
                    buffer: Arc::clone(buffer),
                    permits: 0,
                },
            });
        }
        let last = self.batches.len() - 1;
        let batch = &mut self.batches[last];
        let index = batch.records.len();
        batch.records.push(record);
        batch.answer.permits += size;
        self.received += 1;
        let pushed = Pushed {
            outcome: Arc::clone(&batch.answer.outcome),
            index,
        };
        let filled = batch.bytes() >= batch_max_bytes;
        (pushed, !fits || filled)
    }

    /// Answers `tx` once every record pushed before is done; at once when closed.
    pub(super) fn flush(&mut self, tx: oneshot::Sender<()>) {
        if !self.closed || !self.batches.is_empty() {
            self.flushes.push_back((self.received, tx));
        }
    }

    /// Whether to send now: a full batch, an oldest batch that waited its
    /// linger, someone flushing, or the producer closing.
    pub(super) fn ready(&self, now: Instant, config: &ProducerConfig) -> bool {
        let Some(first) = self.batches.front() else {
            return false;
        };
        self.closed
            || !self.flushes.is_empty()
            || self.batches.len() > 1
            || first.bytes() >= config.batch_max_bytes
            || now >= first.created + config.linger
    }

    /// The oldest batch.
    pub(super) fn take_batch(&mut self) -> Option<OpenBatch> {
        let batch = self.batches.pop_front()?;
        self.last_batch_len = batch.records.len();
        Some(batch)
    }

    /// Counts `n` more records answered, and answers the flushes waiting for them.
    pub(super) fn batch_done(&mut self, n: u64) {
        self.done += n;
        self.answer_flushes(self.done);
    }

    pub(super) fn answer_flushes(&mut self, done: u64) {
        while self.flushes.front().is_some_and(|(upto, _)| *upto <= done) {
            if let Some((_, tx)) = self.flushes.pop_front() {
                let _ = tx.send(());
            }
        }
    }
}
