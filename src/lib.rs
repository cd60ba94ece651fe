#![recursion_limit = "256"]
#![warn(missing_docs, unreachable_pub)]
#![warn(
    clippy::doc_markdown,
    clippy::manual_let_else,
    clippy::redundant_closure_for_method_calls,
    clippy::semicolon_if_nothing_returned,
    clippy::single_match_else,
    clippy::format_collect,
    clippy::explicit_iter_loop,
    clippy::implicit_clone,
    clippy::inefficient_to_string,
    clippy::map_unwrap_or
)]
//! rust-eda: an event-driven order system in pure Rust on Apache Kafka.
//!
//! Three services talk only through Kafka topics: the order service takes orders
//! over HTTP and publishes `order.created`, the inventory service reserves stock
//! and publishes the outcome, the notification service tells the customer. This
//! crate is the library they share; each binary in `bin/` only loads its
//! configuration, starts logging, builds its service and runs it until SIGINT or
//! SIGTERM.
//!
//! The modules form layers, each using only those below it (`tests/layers.rs`
//! checks this):
//!
//! - what every layer shares: [`clock`], [`correlation`], [`trace`] (W3C
//!   trace context), [`secret`],
//!   [`shutdown`] (the cooperative shutdown signal), [`health`] (why the
//!   process is not ready), [`metrics`];
//! - [`kafka`]: our Kafka layer over rskafka, by concern (connections, decoding,
//!   admin, producing, fetching, groups, the consumer, middleware);
//! - the system's vocabulary and settings: [`domain`], [`events`],
//!   [`http_client`], [`config`], [`auth`] (who calls the order API),
//!   [`logging`], [`http`];
//! - [`services`]: the three services; [`app`]: the process around one.

pub mod app;
pub mod auth;
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
pub mod trace;
