//! Structured logging through `log` and `env_logger`.
//!
//! In `json` encoding every line is one JSON object with the time, level, service,
//! module, message and, while a request or an event is being handled, its
//! `correlation_id`. The id travels as a task-local set by [`with_correlation_id`]
//! around the handling, so code deep in the call stack logs it without passing it
//! along. One order's whole journey is then one `grep` across the three services.

use std::io::Write;

use crate::config::{LogEncoding, LoggerConfig};

tokio::task_local! {
    static CORRELATION_ID: String;
}

/// Runs `fut` with `id` as the correlation id of every line it logs.
pub async fn with_correlation_id<F: Future>(id: String, fut: F) -> F::Output {
    CORRELATION_ID.scope(id, fut).await
}

/// The correlation id of the work in progress, if any.
pub fn correlation_id() -> Option<String> {
    CORRELATION_ID.try_with(Clone::clone).ok()
}

/// Installs the logger for `service`. `RUST_LOG`, when set, refines the level.
pub fn init(service: &'static str, config: &LoggerConfig) {
    let mut builder = env_logger::Builder::new();
    builder.filter_level(config.level);
    // rskafka reports every connection and leader lookup at info; that is noise
    // unless one is debugging the Kafka layer.
    if config.level < log::LevelFilter::Debug {
        builder.filter_module("rskafka", log::LevelFilter::Warn);
    }
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    match config.encoding {
        LogEncoding::Json => builder.format(move |buf, record| {
            let line = serde_json::json!({
                "ts": now(),
                "level": record.level().as_str(),
                "service": service,
                "target": record.target(),
                "msg": record.args().to_string(),
                "correlation_id": correlation_id(),
            });
            writeln!(buf, "{line}")
        }),
        LogEncoding::Console => builder.format(move |buf, record| {
            let id = correlation_id()
                .map(|id| format!(" [{id}]"))
                .unwrap_or_default();
            writeln!(
                buf,
                "{} {:<5} {service}{id} {}",
                now(),
                record.level(),
                record.args()
            )
        }),
    };
    // A second init (tests starting several services in one process) keeps the first.
    let _ = builder.try_init();
}

use crate::clock::now;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn correlation_id_is_scoped_to_the_work() {
        assert_eq!(correlation_id(), None);
        let inner = with_correlation_id("abc".into(), async { correlation_id() }).await;
        assert_eq!(inner.as_deref(), Some("abc"));
        assert_eq!(correlation_id(), None);
    }
}
