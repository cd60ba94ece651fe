//! Our Kafka layer, in pure Rust over the `rskafka` crate.
//!
//! rskafka speaks the wire protocol to one partition at a time. This layer adds
//! what services need on top of it, the way the Java client provides it:
//!
//! - [`cluster`]: the shared connection. Every request is bounded by a timeout,
//!   partition counts are cached for the partitioner, and a partition's cached
//!   leader can be dropped when a retry needs fresh metadata.
//! - [`producer`]: Java-compatible key partitioning ([`partitioner`]), batching per
//!   partition with linger and size limits, `acks=all`, gzip/snappy compression,
//!   retries with backoff, and a delivery future per record. Records are at-least-once.
//! - [`fetch`]: reads one partition from an offset into a channel, with backoff
//!   and the reset of an offset the broker no longer keeps; the consumer, the
//!   follower and the group's log tail all read through it. Its tasks, like the
//!   others here, are aborted with their owner (`task`).
//! - [`consumer`]: per-partition fetch loops feeding an async [`Handler`], with
//!   offsets committed only after the handler accepted a record.
//! - [`records`]: decodes fetched record batches; keys and values share the
//!   fetched buffers instead of being copied out one by one.
//! - [`group`]: consumer groups without a broker coordinator: membership,
//!   sticky balanced assignment, handoff and fencing, all as records in the
//!   compacted coordination topic.
//! - [`broker_offsets`]: a copy of every commit in the broker's own group
//!   offsets, so standard Kafka tools show the groups and their lag.
//! - [`offsets`]: where commits live, the same compacted topic (`__eda_offsets`),
//!   because rskafka has no group coordinator client.
//! - [`dead_letter`]: a handler wrapper that parks records that can never be
//!   processed ([`Poison`]) in `<topic>.dlq`, so their partition moves on.
//! - [`follower`]: reads topics from the start without committing, to rebuild
//!   in-memory state (views, ledgers) at every start.
//! - [`log_cursor`]: applies a process's own records to state derived from a log
//!   as soon as the log before them is read, without waiting to read them back.
//! - [`security`]: TLS (rustls with pure-Rust cryptography) and SASL settings;
//!   rskafka's connections are encrypted by a loopback tunnel (`tunnel`), because
//!   rskafka's own TLS feature compiles C.
//! - [`admin`]: creates topics with partition counts and configs, which rskafka's
//!   `create_topic` cannot pass, through a small protocol connection ([`wire`]).
//!
//! `admin` and `cluster` talk to brokers, `fetch` and `producer` build on
//! `cluster`, `offsets` on `producer`, and `consumer` on all of them. The one-way
//! direction is not complete yet: `group` and `offsets` still take the consumer's
//! settings and errors from `consumer`, which uses them.

pub mod admin;
pub mod backoff;
pub mod broker_offsets;
pub mod cluster;
pub mod consumer;
pub mod dead_letter;
pub mod fetch;
pub mod follower;
pub mod group;
pub mod log_cursor;
pub mod offsets;
pub mod partitioner;
pub mod producer;
pub mod records;
pub mod replay;
pub mod security;
mod task;
mod tunnel;
mod wire;

pub use admin::{Admin, AdminError, TopicOutcome, TopicSpec};
pub use cluster::{Cluster, ClusterConfig, ClusterError, Lane};
pub use consumer::{
    Consumer, ConsumerConfig, ConsumerError, Handler, HandlerError, Message, Poison, handler_fn,
};
pub use dead_letter::DeadLetter;
pub use fetch::{FetchConfig, OffsetReset};
pub use follower::{Follower, ReadError, read_topic};
pub use log_cursor::{LogCursor, Read};
pub use offsets::{DEFAULT_OFFSETS_TOPIC, OffsetError, OffsetStore};
pub use producer::{
    Compression, Delivery, DeliveryFuture, ProduceError, Producer, ProducerConfig, ProducerRecord,
};
pub use security::{Sasl, SaslMechanism, Security, SecurityError, Tls};

/// One partition of one topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}
