//! Runs a handler inside its record's correlation id and trace context, so
//! every line logged while the record is handled (by the handler, by the
//! wrappers inside this one) carries both, and every record it produces
//! continues the trace. Which correlation id a record has is the caller's to
//! say: a header, usually, with whatever fallback the records' format allows.
//! The trace is the record's `traceparent` header continued with a span of
//! this hop's own, or a new trace for a record that came without one.

use crate::correlation;
use crate::kafka::consume::{Handler, HandlerError};
use crate::kafka::fetch::Message;
use crate::trace::{self, TraceContext};

/// A handler that runs `inner` with the correlation id `id_of` finds in each
/// record (records without one are handled without), as a span of the
/// record's trace.
#[derive(Debug, Clone)]
pub struct Correlated<H, F> {
    inner: H,
    id_of: F,
}

impl<H, F> Correlated<H, F>
where
    H: Handler,
    F: Fn(&Message) -> Option<String> + Send + Sync + 'static,
{
    /// Wraps `inner`; `id_of` finds a record's correlation id.
    pub fn new(inner: H, id_of: F) -> Self {
        Self { inner, id_of }
    }
}

impl<H, F> Handler for Correlated<H, F>
where
    H: Handler,
    F: Fn(&Message) -> Option<String> + Send + Sync + 'static,
{
    async fn handle(&self, message: &Message) -> Result<(), HandlerError> {
        let span = TraceContext::continue_or_start(
            message.header_str(trace::TRACEPARENT),
            message.header_str(trace::TRACESTATE),
        );
        let traced = trace::scope(span, self.inner.handle(message));
        match (self.id_of)(message) {
            Some(id) => correlation::scope(id, traced).await,
            None => traced.await,
        }
    }
}

/// The correlation id in the header `name`, if it is there and UTF-8.
pub fn from_header(name: &'static str) -> impl Fn(&Message) -> Option<String> + Clone {
    move |message: &Message| message.header_str(name).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::consume::handler_fn;
    use std::sync::Arc;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn message(header: Option<&str>) -> Message {
        let mut headers = std::collections::BTreeMap::new();
        if let Some(id) = header {
            headers.insert("correlation_id".to_owned(), id.as_bytes().to_vec());
            headers.insert("traceparent".to_owned(), PARENT.as_bytes().to_vec());
        }
        Message {
            topic: Arc::from("t"),
            partition: 0,
            offset: 0,
            key: None,
            value: None,
            headers,
            timestamp: rskafka::chrono::DateTime::from_timestamp_millis(0).unwrap(),
            attempt: 1,
            outbox: None,
        }
    }

    #[tokio::test]
    async fn the_handler_runs_inside_the_records_correlation_id() {
        let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        let handler = Correlated::new(
            handler_fn(move |_| {
                let record = Arc::clone(&record);
                async move {
                    let trace = trace::current().expect("every record is handled in a span");
                    record.lock().push((correlation::current(), trace));
                    Ok(())
                }
            }),
            from_header("correlation_id"),
        );
        handler.handle(&message(Some("order-7"))).await.unwrap();
        handler.handle(&message(None)).await.unwrap();
        let seen = seen.lock();
        assert_eq!(seen[0].0.as_deref(), Some("order-7"));
        assert_eq!(seen[1].0, None);
        // The record's trace continues with a span of this hop; a record
        // without one starts a trace.
        let parent = TraceContext::parse(PARENT, None).unwrap();
        assert_eq!(seen[0].1.trace_id(), parent.trace_id());
        assert_ne!(seen[0].1.span_id(), parent.span_id());
        assert_ne!(seen[1].1.trace_id(), parent.trace_id());
        assert_eq!(correlation::current(), None);
        assert_eq!(trace::current(), None);
    }
}
