//! Runs a handler inside its record's correlation id, so every line logged
//! while the record is handled (by the handler, by the wrappers inside this
//! one) carries it. Which id a record has is the caller's to say: a header,
//! usually, with whatever fallback the records' format allows.

use crate::correlation;
use crate::kafka::consume::{Handler, HandlerError};
use crate::kafka::fetch::Message;

/// A handler that runs `inner` with the correlation id `id_of` finds in each
/// record; records without one are handled without.
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
        match (self.id_of)(message) {
            Some(id) => correlation::scope(id, self.inner.handle(message)).await,
            None => self.inner.handle(message).await,
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

    fn message(header: Option<&str>) -> Message {
        let mut headers = std::collections::BTreeMap::new();
        if let Some(id) = header {
            headers.insert("correlation_id".to_owned(), id.as_bytes().to_vec());
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
                    record.lock().push(correlation::current());
                    Ok(())
                }
            }),
            from_header("correlation_id"),
        );
        handler.handle(&message(Some("order-7"))).await.unwrap();
        handler.handle(&message(None)).await.unwrap();
        assert_eq!(*seen.lock(), [Some("order-7".to_owned()), None]);
        assert_eq!(correlation::current(), None);
    }
}
