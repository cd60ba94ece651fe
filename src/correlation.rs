//! The correlation id of the work in progress: one order's id across the
//! request that created it, the events it caused and every log line about it.
//!
//! It travels as a task-local, set around a request or a record's handling
//! ([`scope`]), so code deep in the call stack reads it ([`current`]) without
//! passing it along. The log format and the Kafka layer's correlation
//! middleware both sit on it, which is why it is its own module at the bottom.

use std::future::Future;

tokio::task_local! {
    static CORRELATION_ID: String;
}

/// Runs `fut` with `id` as the correlation id of the work it does.
pub async fn scope<F: Future>(id: String, fut: F) -> F::Output {
    CORRELATION_ID.scope(id, fut).await
}

/// The correlation id of the work in progress, if any.
pub fn current() -> Option<String> {
    CORRELATION_ID.try_with(Clone::clone).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_id_is_scoped_to_the_work() {
        assert_eq!(current(), None);
        let inner = scope("abc".into(), async { current() }).await;
        assert_eq!(inner.as_deref(), Some("abc"));
        assert_eq!(current(), None);
    }
}
