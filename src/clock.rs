//! The wall clock as every record and log line writes it: RFC 3339 in UTC, to
//! the millisecond, so that timestamps from all services sort and compare alike.

use rskafka::chrono::{DateTime, SecondsFormat, Utc};

/// Now, as `2026-11-24T06:36:00.123Z`.
pub fn now() -> String {
    DateTime::<Utc>::from(std::time::SystemTime::now()).to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Now, in milliseconds since the Unix epoch, as Kafka's timestamps count.
pub fn now_millis() -> i64 {
    DateTime::<Utc>::from(std::time::SystemTime::now()).timestamp_millis()
}
