//! Reused buffers for decompressed batches.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How much memory [`BufferPool`] keeps for reuse. Enough for a few fetches'
/// worth of batches in flight; a buffer given back beyond it is freed.
const POOL_BYTES: usize = 32 << 20;

/// How long the pool stays full without being drawn on: after that, the next
/// fetch that returns nothing frees it, so an idle process keeps no buffers.
pub const POOL_IDLE: Duration = Duration::from_secs(1);

/// The buffers compressed batches are decompressed into, taken back once every
/// record of theirs is dropped. Allocating each afresh cost more than the
/// decompression: glibc returned a fetch's worth of them to the kernel as soon
/// as its records were handled, and the next fetch faulted every page in again.
/// Reused, a buffer is also not zero-filled again.
#[derive(Debug, Clone, Default)]
pub struct BufferPool(Arc<Mutex<Pool>>);

#[derive(Debug, Default)]
struct Pool {
    free: Vec<Vec<u8>>,
    bytes: usize,
    last_taken: Option<Instant>,
}

impl BufferPool {
    pub(super) fn take(&self) -> Pooled {
        let mut pool = self.0.lock();
        pool.last_taken = Some(Instant::now());
        let buf = pool.free.pop().unwrap_or_default();
        pool.bytes -= buf.capacity();
        Pooled {
            buf,
            pool: Arc::downgrade(&self.0),
        }
    }

    /// Frees the kept buffers if none was taken for `idle` ([`POOL_IDLE`]).
    pub fn release_if_idle(&self, idle: Duration) {
        let mut pool = self.0.lock();
        if pool.last_taken.is_none_or(|at| at.elapsed() >= idle) {
            pool.free = Vec::new();
            pool.bytes = 0;
        }
    }

    /// Bytes kept for reuse.
    #[cfg(test)]
    pub(super) fn kept(&self) -> usize {
        self.0.lock().bytes
    }
}

/// A buffer from a [`BufferPool`], which it goes back to when dropped.
pub(super) struct Pooled {
    pub(super) buf: Vec<u8>,
    pool: Weak<Mutex<Pool>>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let Some(pool) = self.pool.upgrade() else {
            return;
        };
        let mut pool = pool.lock();
        let size = self.buf.capacity();
        if size > 0 && pool.bytes + size <= POOL_BYTES {
            pool.bytes += size;
            pool.free.push(std::mem::take(&mut self.buf));
        }
    }
}
