//! Our Kafka layer, in pure Rust over the `rskafka` crate.
//!
//! rskafka speaks the wire protocol to one partition at a time. This layer adds
//! what services need on top of it, the way the Java client provides it. Its
//! folders are its concerns, listed from the bottom up; each uses only those
//! listed before it, which `tests/layers.rs` checks:
//!
//! - [`fix`], [`topic`], [`backoff`], `task`: the small pieces everything shares
//!   (what an operator can change to clear an error, a partition's name, retry
//!   waits, tasks aborted with their owner).
//! - [`conn`]: connections to brokers. The shared [`Cluster`] bounds every request
//!   by a timeout and caches leaders and partition counts; TLS and SASL
//!   ([`conn::security`]) run through a loopback tunnel, because rskafka's own TLS
//!   compiles C; a small protocol connection speaks what rskafka does not.
//! - [`codec`]: decodes fetched record batches (every compression Kafka writes),
//!   with keys and values sharing the fetched buffers.
//! - [`admin`]: creates topics with partition counts and configs, and reads configs.
//! - [`produce`]: the [`Producer`]: Java-compatible key partitioning, batching per
//!   partition with linger and size limits, `acks=all`, compression, retries with
//!   backoff, and a delivery future per record.
//! - [`fetch`]: reading partitions: the fetch loop with backoff and offset reset,
//!   the [`Message`] handed on, reading a log to its end once, the [`Follower`]
//!   that rebuilds state from topics at every start, and the [`LogCursor`] that
//!   applies a process's own records as soon as the log before them is read.
//! - [`group`]: consumer groups without a broker coordinator: the protocol's
//!   records, the state derived from the compacted coordination topic, sticky
//!   assignment, handoff, claims and fencing by lease, committed offsets, and a
//!   copy of the commits in the broker's own group offsets for Kafka's tools.
//! - [`consume`]: the [`Consumer`], a group member: its settings, the [`Handler`]
//!   API (`Ok` commits, `Err` offers the record again), the membership loop and
//!   one runner per owned partition.
//! - [`middleware`]: wrappers around a handler (dead-lettering poison records,
//!   the correlation id) and the replay of dead-lettered records.
//!
//! Errors here carry data (a topic, a broker, a mechanism); which setting or
//! command fixes them is the services' to say.

pub mod admin;
pub mod backoff;
pub mod codec;
pub mod conn;
pub mod consume;
pub mod fetch;
pub mod fix;
pub mod group;
pub mod middleware;
pub mod produce;
#[cfg(test)]
mod seeds;
mod task;
pub mod topic;

pub use admin::{Admin, AdminError, PartitionState, TopicOutcome, TopicSpec};
pub use conn::security::{Sasl, SaslMechanism, Security, SecurityError, Tls};
pub use conn::{Cluster, ClusterConfig, ClusterError, Lane};
pub use consume::{
    Consumer, ConsumerConfig, ConsumerError, Handler, HandlerError, Poison, ProcessingGuarantee,
    handler_budget, handler_fn,
};
pub use fetch::{
    FetchConfig, Follower, LogCursor, Message, OffsetReset, Read, ReadError, read_topic, settled,
};
pub use fix::Fix;
pub use group::offsets::{DEFAULT_OFFSETS_TOPIC, OffsetError, OffsetStore};
pub use middleware::DeadLetter;
pub use produce::{
    Compression, Delivery, DeliveryFuture, Outbox, ProduceError, Producer, ProducerConfig,
    ProducerRecord, TransactionConfig, TransactionError, TransactionalProducer,
};
pub use topic::TopicPartition;
