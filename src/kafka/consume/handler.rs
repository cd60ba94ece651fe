//! What a consumer drives: the [`Handler`] trait, with `Ok` committing a record
//! and `Err` offering it again, and [`Poison`] for records that can never succeed.

use std::future::Future;

use crate::kafka::fetch::Message;

/// What a handler returns when it did not process a record.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// A handler error meaning the record can never be processed (it cannot be
/// decoded, or breaks the event schema); retrying it is pointless. The
/// [`DeadLetter`](crate::kafka::middleware::DeadLetter) wrapper parks such records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Poison(String);

impl Poison {
    /// A poison error with `reason`.
    pub fn new(reason: impl Into<String>) -> Self {
        Self(reason.into())
    }

    /// Whether `error` is (or wraps) a `Poison`.
    pub fn is_poison(error: &HandlerError) -> bool {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
        while let Some(e) = source {
            if e.is::<Self>() {
                return true;
            }
            source = e.source();
        }
        false
    }
}

/// Processes records. `Ok` commits the record; `Err` offers it again later.
pub trait Handler: Send + Sync + 'static {
    /// Handles `message`: `Ok` when it is processed, `Err` to be offered it again.
    fn handle(&self, message: &Message) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// A [`Handler`] made from an async closure; see [`handler_fn`].
#[derive(Debug, Clone)]
pub struct FnHandler<F>(F);

/// Turns `f` into a [`Handler`]; `f` gets its own copy of each message.
pub fn handler_fn<F, Fut>(f: F) -> FnHandler<F>
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send,
{
    FnHandler(f)
}

impl<F, Fut> Handler for FnHandler<F>
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send,
{
    fn handle(&self, message: &Message) -> impl Future<Output = Result<(), HandlerError>> + Send {
        (self.0)(message.clone())
    }
}
