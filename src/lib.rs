#![recursion_limit = "256"]
//! rust-eda: an event-driven order system in pure Rust on Apache Kafka.
//!
//! Three services talk only through Kafka topics: the order service takes orders
//! over HTTP and publishes `order.created`, the inventory service reserves stock
//! and publishes the outcome, the notification service tells the customer. This
//! crate is the library they share; each binary in `bin/` only loads its
//! configuration, starts logging, builds its service and runs it until SIGINT or
//! SIGTERM.
//!
//! - [`kafka`]: our Kafka layer (producer, consumer, offsets, admin) over rskafka.
//! - [`shutdown`]: the cooperative shutdown signal passed down to every task.
//! - [`health`]: why the process is not ready, as `/ready` reports it.

pub mod app;
pub mod clock;
pub mod config;
pub mod correlation;
pub mod domain;
pub mod events;
pub mod health;
pub mod http;
pub mod http_client;
pub mod kafka;
pub mod logging;
pub mod metrics;
pub mod secret;
pub mod services;
pub mod shutdown;
