//! Background tasks tied to the value that owns them.
//!
//! A task spawned for a partition, a heartbeat or a copy must not outlive what
//! started it: a partition nobody tracks would go on running. [`AbortOnDrop`]
//! aborts its task when dropped, and still lets its owner ask whether the task
//! ended by itself (a panic), to start it again or report it.

/// A task that is aborted when its handle is dropped.
#[derive(Debug)]
pub(crate) struct AbortOnDrop<T = ()>(pub(crate) tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
