//! How a caller learns a record's fate: each record's delivery future reads
//! the outcome its batch shares, answered exactly once.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;
use tokio::sync::Semaphore;

use super::record::{Delivery, ProduceError};

/// Resolves once the broker acknowledged the record, or it failed for good.
pub struct DeliveryFuture {
    pub(super) outcome: Arc<BatchOutcome>,
    pub(super) partition: i32,
    /// The record's place in its batch, and so its offset's.
    pub(super) index: usize,
    /// Where this future's waker sits among the batch's waiters, once it waited.
    pub(super) waiter: Option<usize>,
}

impl std::fmt::Debug for DeliveryFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryFuture")
            .field("partition", &self.partition)
            .field("done", &self.outcome.result.get().is_some())
            .finish_non_exhaustive()
    }
}

impl DeliveryFuture {
    pub(super) fn delivery(
        &self,
        result: &Result<Vec<i64>, ProduceError>,
    ) -> Result<Delivery, ProduceError> {
        match result {
            Ok(offsets) => Ok(Delivery {
                partition: self.partition,
                // The batch is answered with an error instead when counts differ.
                offset: offsets.get(self.index).copied().unwrap_or(-1),
            }),
            Err(e) => Err(e.clone()),
        }
    }
}

impl Future for DeliveryFuture {
    type Output = Result<Delivery, ProduceError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(result) = this.outcome.result.get() {
            return Poll::Ready(this.delivery(result));
        }
        let mut waiters = this.outcome.waiters.lock();
        // Looked at again under the lock the answer takes to wake the waiters.
        if let Some(result) = this.outcome.result.get() {
            return Poll::Ready(this.delivery(result));
        }
        if let Some(waker) = this.waiter.and_then(|i| waiters.get_mut(i)) {
            waker.clone_from(cx.waker());
        } else {
            this.waiter = Some(waiters.len());
            waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// The outcome of one batch, shared by the delivery futures of its records.
#[derive(Default)]
pub(super) struct BatchOutcome {
    /// The offset of each record, or why the batch failed.
    pub(super) result: OnceLock<Result<Vec<i64>, ProduceError>>,
    pub(super) waiters: Mutex<Vec<Waker>>,
}

impl BatchOutcome {
    /// The first outcome set is the one kept.
    pub(super) fn set(&self, result: Result<Vec<i64>, ProduceError>) {
        if self.result.set(result).is_ok() {
            let waiters = std::mem::take(&mut *self.waiters.lock());
            for waker in waiters {
                waker.wake();
            }
        }
    }
}

/// Answers a batch's records exactly once, and gives back their buffer space.
/// Dropped unanswered (its worker ended or was aborted), it answers `Closed`, so
/// no caller waits on a record nobody sends.
pub(super) struct Answer {
    pub(super) outcome: Arc<BatchOutcome>,
    pub(super) buffer: Arc<Semaphore>,
    /// Buffer space held by the batch's records.
    pub(super) permits: usize,
}

impl Answer {
    pub(super) fn send(mut self, result: Result<Vec<i64>, ProduceError>) {
        // Room first, so that the callers woken can enqueue at once.
        self.buffer.add_permits(std::mem::take(&mut self.permits));
        self.outcome.set(result);
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        self.buffer.add_permits(std::mem::take(&mut self.permits));
        self.outcome.set(Err(ProduceError::Closed));
    }
}
