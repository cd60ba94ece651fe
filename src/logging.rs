//! Structured logging through `log` and `env_logger`.
//!
//! In `json` encoding every line is one JSON object with the time, level, service,
//! module, message and, while a request or an event is being handled, its
//! `correlation_id` ([`crate::correlation`]) and `trace_id` ([`crate::trace`]),
//! so one order's whole journey is one `grep` across the three services, and a
//! tracing system's trace id finds the same lines.

use std::io::Write;

use crate::config::{LogEncoding, LoggerConfig};
use crate::correlation::current as correlation_id;
use crate::trace;

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
                "trace_id": trace::current().map(|t| t.trace_id()),
            });
            writeln!(buf, "{line}")
        }),
        LogEncoding::Console => builder.format(move |buf, record| {
            let id = correlation_id()
                .map(|id| format!(" [{id}]"))
                .unwrap_or_default();
            let trace = trace::current()
                .map(|t| format!(" trace_id={}", t.trace_id()))
                .unwrap_or_default();
            writeln!(
                buf,
                "{} {:<5} {service}{id}{trace} {}",
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
