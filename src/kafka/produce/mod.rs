//! Producing: the [`Producer`] (batching per partition, `acks=all`,
//! compression, retries, a delivery future per record) and the Java-compatible
//! [`partitioner`] that picks a record's partition.

pub mod partitioner;
mod producer;

pub use self::producer::{
    Compression, Delivery, DeliveryFuture, ProduceError, Producer, ProducerConfig, ProducerRecord,
};
